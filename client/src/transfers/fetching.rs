//! The download side of [`Transfers`]: connecting to a download's peers, keeping
//! whole-piece requests in flight on each connection (`refill`), received
//! pieces (`on_piece`), verification results from the pool (`on_verified`), the
//! in-order whole-file hash (`advance_whole`), finishing and failing a download,
//! resume checks, and the periodic per-download work of `tick`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Registry;
use wire::file_meta::FileMeta;
use wire::peer_msg::{self, Handshake, PeerMsg, RejectCode};
use wire::pieces::{Bitfield, PieceIndex};

use super::{PoolMsg, TrackerJob, Transfers};
use crate::downloads::{DlState, Download};
use crate::fetch_peer::{request_slots, Disconnect, FetchPeer};
use crate::hasher;
use crate::peer_conn::{ConnEvent, Role};
use crate::storage::{self, ResumeState, WholeHash};

/// Connections per download.
const MAX_PEERS_PER_DOWNLOAD: usize = 16;
/// With no usable peer, fail the download after this long.
pub(super) const NO_PEERS_LIMIT: Duration = Duration::from_secs(20);
/// A download that makes no progress for this long fails.
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Verified pieces this far ahead of the whole-file hash stay in memory.
const READY_WINDOW: usize = 8;
/// Pieces per whole-file hash job.
const WHOLE_RUN: usize = 8;
/// Resume state is saved at most this often while pieces verify.
const RESUME_SAVE_EVERY: Duration = Duration::from_millis(200);

/// A piece checked (and, when good, written) on the pool.
pub(super) struct Verified {
    dl: usize,
    piece: PieceIndex,
    ok: bool,
    data: Vec<u8>,
    /// The peer that sent it.
    from: SocketAddr,
    write_err: Option<String>,
}

impl Transfers {
    /// Cleans up after a download connection closed: the fetch state gives its
    /// requests back to the picker and takes its pieces out of the availability
    /// counts, and the peer may be tried again a little later. When the peer
    /// was at fault (`lost`), each outstanding request is a failure of its piece.
    pub(super) fn fetch_conn_closed(
        &mut self,
        registry: &Registry,
        key: usize,
        addr: SocketAddr,
        fetch: FetchPeer,
    ) {
        let dl = fetch.dl;
        let Some(d) = self.downloads.get_mut(dl) else {
            return;
        };
        let lost: Vec<PieceIndex> = match &fetch.lost {
            Some(_) => fetch.inflight_pieces().to_vec(),
            None => Vec::new(),
        };
        let why = fetch.lost.clone().unwrap_or_default();
        fetch.close(&mut d.picker);
        for p in lost {
            if self.piece_failure(registry, dl, p, &format!("{addr}: {why}")) {
                return;
            }
        }
        let d = &mut self.downloads[dl];
        if let Some(kp) = d.peers.get_mut(&addr).filter(|kp| kp.conn == Some(key)) {
            kp.conn = None;
            kp.next_try = Instant::now() + Duration::from_millis(500);
        }
        if self.live_peers(&self.downloads[dl]) == 0 {
            self.downloads[dl]
                .no_peers_since
                .get_or_insert_with(Instant::now);
        }
        self.refill(dl);
    }

    /// The periodic per-download work: rate samples, resume saves, failure
    /// bounds, new connections and requests.
    pub(super) fn tick_downloads(&mut self, registry: &Registry, now: Instant) {
        for dl in 0..self.downloads.len() {
            if !self.downloads[dl].is_active() {
                continue;
            }
            self.save_resume_if_due(dl, now);
            let d = &self.downloads[dl];
            // Every piece verified: only the whole-file hash is left, which needs
            // no peer and may take long on a slow disk; never fail it for that.
            if d.state != DlState::Running || d.picker.is_complete() {
                continue;
            }
            if let Err(reason) = self.check_live_peers(dl, now) {
                self.fail(registry, dl, reason);
                continue;
            }
            let d = &self.downloads[dl];
            if now.duration_since(d.last_progress) > STALL_LIMIT && d.verifying == 0 {
                self.fail(registry, dl, "no progress for two minutes".into());
                continue;
            }
            self.connect_peers(registry, dl);
            self.renew_auth(dl);
            self.refill(dl);
            let inflight = self.inflight(dl);
            self.downloads[dl].load.sample(inflight, now);
        }
    }

    /// Requests in flight over all of a download's connections.
    fn inflight(&self, dl: usize) -> usize {
        let fetch = |k: usize| match self.conns.get(k).map(|c| &c.role) {
            Some(Role::Fetch(f)) => f.inflight(),
            _ => 0,
        };
        self.downloads[dl].conn_keys().map(fetch).sum()
    }

    fn save_resume_if_due(&mut self, dl: usize, now: Instant) {
        let d = &mut self.downloads[dl];
        d.rate.sample(d.bytes_done);
        if d.resume_dirty && now.duration_since(d.last_resume_save) >= RESUME_SAVE_EVERY {
            d.resume_dirty = false;
            d.last_resume_save = now;
            if let Err(e) = d.resume_state().save(&self.config.state_dir) {
                log::warn!("cannot save resume state: {e}");
            }
        }
    }

    /// Fails a download that has had no live peer for [`NO_PEERS_LIMIT`]. Fresh
    /// peers come from the controller's peer refresh (`update_peers`).
    fn check_live_peers(&mut self, dl: usize, now: Instant) -> Result<(), String> {
        let live = self.live_peers(&self.downloads[dl]) > 0;
        let d = &mut self.downloads[dl];
        if live {
            d.no_peers_since = None;
            return Ok(());
        }
        let since = *d.no_peers_since.get_or_insert(now);
        if now.duration_since(since) > NO_PEERS_LIMIT {
            return Err("no peer could serve the file (all seeders gone)".into());
        }
        Ok(())
    }

    pub(super) fn close_peer_of(&mut self, registry: &Registry, dl: usize, addr: SocketAddr) {
        let key = self
            .downloads
            .get(dl)
            .and_then(|d| d.peers.get(&addr))
            .and_then(|kp| kp.conn);
        if let Some(k) = key {
            self.close_conn(registry, k);
        }
    }

    /// An event of a download connection: its fetch state handles it, and a
    /// [`Disconnect`] it answers with closes the connection (and may ban the peer).
    pub(super) fn fetch_event(&mut self, registry: &Registry, key: usize, ev: ConnEvent) {
        let Role::Fetch(FetchPeer { dl, .. }) = self.conns[key].role else {
            return;
        };
        let addr = self.conns[key].addr;
        if self.downloads[dl].state != DlState::Running {
            if let ConnEvent::Piece { data, .. } = ev {
                self.bufs.recycle(data);
            }
            self.close_conn(registry, key);
            return;
        }
        let verdict = match ev {
            ConnEvent::Handshake(h) => {
                let want = self.downloads[dl].meta.file_sha1;
                match &mut self.conns[key].role {
                    Role::Fetch(f) => f.on_handshake(&h, &want, &self.peer_id),
                    Role::Serve(_) => Ok(()),
                }
            }
            ConnEvent::Msg(msg) => self.fetch_msg(registry, key, dl, msg),
            ConnEvent::Piece {
                piece,
                offset,
                data,
            } => self.on_piece(key, dl, piece, offset, data),
            ConnEvent::Closed(_) => Ok(()),
        };
        if let Err(e) = verdict {
            self.disconnect(registry, key, dl, addr, e);
        }
    }

    fn fetch_msg(
        &mut self,
        registry: &Registry,
        key: usize,
        dl: usize,
        msg: PeerMsg,
    ) -> Result<(), Disconnect> {
        if let PeerMsg::Challenge(c) = msg {
            if let Role::Fetch(f) = &mut self.conns[key].role {
                f.on_challenge(c)?;
            }
            return self.answer_challenge(key, dl);
        }
        let addr = self.conns[key].addr;
        let d = &mut self.downloads[dl];
        let Role::Fetch(f) = &mut self.conns[key].role else {
            return Ok(());
        };
        match msg {
            PeerMsg::Bitfield(bits) => {
                if !f.is_active() {
                    log::info!(
                        "{}: {addr} active after {:.2} s",
                        d.meta.name,
                        d.started.elapsed().as_secs_f64()
                    );
                }
                f.on_bitfield(bits, &mut d.picker)?;
                d.no_peers_since = None;
                self.refill(dl);
            }
            PeerMsg::Have(i) => {
                f.on_have(i, &mut d.picker);
                self.refill_conn(key);
            }
            PeerMsg::Reject { piece, code, .. } => {
                let rejected = f.on_reject(piece, &mut d.picker);
                log::debug!("{addr} rejected piece {piece}: {code:?}");
                // `NotHave` says "not here (yet)": the piece only leaves this
                // peer's list (a super-seeding seeder withholds pieces that way).
                // Any other refusal is a failure of the piece.
                if let Some(p) = rejected.filter(|_| code != RejectCode::NotHave) {
                    let why = format!("{addr} rejected it ({code:?})");
                    if self.piece_failure(registry, dl, p, &why) {
                        return Ok(());
                    }
                }
                self.refill(dl);
            }
            PeerMsg::Error(text) => {
                log::info!("peer {addr}: {text}");
                return Err(Disconnect::close("sent an error"));
            }
            PeerMsg::KeepAlive => {}
            other => return Err(Disconnect::close(format!("unexpected {other:?}"))),
        }
        Ok(())
    }

    /// Ends a download connection for `why`, banning the address when it asks to.
    fn disconnect(
        &mut self,
        registry: &Registry,
        key: usize,
        dl: usize,
        addr: SocketAddr,
        why: Disconnect,
    ) {
        if why.ban {
            log::warn!("{addr}: {}; not using that peer again", why.reason);
            if let Some(kp) = self.downloads[dl].peers.get_mut(&addr) {
                kp.banned = true;
            }
        } else {
            log::debug!("{addr}: {}; closing", why.reason);
        }
        self.close_conn(registry, key);
    }

    /// A whole piece arrived: checked against our requests by the fetch state,
    /// then verified and written on the pool.
    fn on_piece(
        &mut self,
        key: usize,
        dl: usize,
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    ) -> Result<(), Disconnect> {
        let addr = self.conns[key].addr;
        let d = &mut self.downloads[dl];
        let checked = match &mut self.conns[key].role {
            Role::Fetch(f) => f.on_piece(piece, offset, data.len(), &d.meta, &mut d.picker),
            Role::Serve(_) => Err(Disconnect::close("piece data on a serving connection")),
        };
        let p = match checked {
            Ok(p) => p,
            Err(e) => {
                self.bufs.recycle(data);
                return Err(e);
            }
        };
        *d.served_by.entry(addr).or_default() += 1;
        if !d.picker.received(p) {
            self.bufs.recycle(data);
            self.refill_conn(key);
            return Ok(());
        }
        d.verifying += 1;
        self.spawn_verify(dl, p, addr, data);
        self.refill(dl);
        Ok(())
    }

    /// Checks piece `p`'s SHA-1 on the pool and, when good, writes it at its offset.
    fn spawn_verify(&mut self, dl: usize, p: PieceIndex, from: SocketAddr, data: Vec<u8>) {
        let d = &self.downloads[dl];
        let Some(file) = d.file.clone() else {
            return;
        };
        let expected = d.meta.piece_hashes[p.get()];
        let at = d.meta.piece_offset(p.get());
        let lock = d.write_lock.clone();
        let done = self.done.clone();
        self.pool.spawn(move || {
            let ok = hasher::sha1(&data) == expected;
            let write_err = if ok {
                let _one_writer = lock.lock().unwrap_or_else(|e| e.into_inner());
                storage::write_at(&file, &data, at)
                    .err()
                    .map(|e| e.to_string())
            } else {
                None
            };
            done.send(PoolMsg::Verified(Verified {
                dl,
                piece: p,
                ok,
                data,
                from,
                write_err,
            }));
        });
    }

    pub(super) fn on_verified(&mut self, registry: &Registry, v: Verified) {
        let Verified {
            dl,
            piece: p,
            ok,
            data,
            from,
            write_err,
        } = v;
        let d = &mut self.downloads[dl];
        d.verifying = d.verifying.saturating_sub(1);
        if d.state != DlState::Running {
            self.bufs.recycle(data);
            return;
        }
        if let Some(e) = write_err {
            self.bufs.recycle(data);
            let msg = format!(
                "cannot write {}: {e}",
                storage::temp_path(&d.dest).display()
            );
            self.fail(registry, dl, msg);
            return;
        }
        if !ok {
            self.bufs.recycle(data);
            self.piece_failed(registry, dl, p, from);
            return;
        }
        self.piece_verified(dl, p, data);
        self.advance_whole(registry, dl);
    }

    /// Piece `p` from `from` did not match its hash: that peer is banned, and the
    /// failure counts like any other (`piece_failure`).
    fn piece_failed(&mut self, registry: &Registry, dl: usize, p: PieceIndex, from: SocketAddr) {
        let d = &mut self.downloads[dl];
        d.picker.failed(p);
        log::warn!(
            "piece {p} of {} from {from} failed verification; dropping that peer",
            d.meta.name
        );
        if let Some(kp) = d.peers.get_mut(&from) {
            kp.banned = true;
        }
        let why = format!("{from} sent data that does not match its SHA-1");
        if self.piece_failure(registry, dl, p, &why) {
            return;
        }
        self.close_peer_of(registry, dl, from);
        self.refill(dl);
    }

    /// One failure of piece `p`: a bad hash, a rejection, a peer that went
    /// silent (no answer within the request timeout) or closed with the
    /// request outstanding. The download fails once a piece failed `--retries`
    /// times, as `piece K failed N times: <why, the last time>`. Returns whether
    /// the download is no longer running.
    fn piece_failure(&mut self, registry: &Registry, dl: usize, p: PieceIndex, why: &str) -> bool {
        let d = &mut self.downloads[dl];
        if d.state != DlState::Running {
            return true;
        }
        let n = d.retries.entry(p).or_insert(0);
        *n += 1;
        let n = *n;
        log::info!("piece {p} of {} failed ({n}): {why}", d.meta.name);
        if n >= self.config.retries.max(1) {
            self.fail(registry, dl, format!("piece {p} failed {n} times: {why}"));
            return true;
        }
        false
    }

    /// Piece `p` is verified and on disk: progress, resume state, partial
    /// seeding (`AddSeeder` partial once, `Have` to our downloaders), and its buffer kept
    /// for the whole-file hash when that is about to reach it.
    fn piece_verified(&mut self, dl: usize, p: PieceIndex, data: Vec<u8>) {
        let d = &mut self.downloads[dl];
        d.picker.verified(p);
        if d.picker.is_complete() {
            log::info!(
                "{}: all pieces verified after {:.3} s; whole-file hash at piece {} of {}",
                d.meta.name,
                d.started.elapsed().as_secs_f64(),
                d.whole_next,
                d.meta.piece_count()
            );
        }
        d.last_progress = Instant::now();
        d.bytes_done += data.len() as u64;
        d.resume_dirty = true;
        let sha1 = d.meta.file_sha1;
        if !d.announced {
            d.announced = true;
            self.tracker_jobs.push(TrackerJob::AddSeeder {
                group: d.group.clone(),
                name: d.meta.name.clone(),
                file_sha1: d.meta.file_sha1_hex(),
                partial: true,
            });
        }
        if p.get() >= d.whole_next && p.get() < d.whole_next + READY_WINDOW {
            d.ready.insert(p, data);
        } else {
            self.bufs.recycle(data);
        }
        self.broadcast_have(&sha1, p);
    }

    /// Starts a whole-file hash job over the next run of verified pieces, or
    /// completes the download when every piece is hashed.
    pub(super) fn advance_whole(&mut self, registry: &Registry, dl: usize) {
        let d = &mut self.downloads[dl];
        if d.state != DlState::Running {
            return;
        }
        let Some(whole) = d.whole.take() else {
            return;
        };
        let n = d.meta.piece_count();
        let a = whole.next;
        if a == n {
            self.whole_done(registry, dl, whole);
            return;
        }
        let verified = |i: usize| PieceIndex::from_usize(i, n).is_some_and(|p| d.picker.has(p));
        let mut b = a;
        while b < n && b - a < WHOLE_RUN && verified(b) {
            b += 1;
        }
        if b == a {
            d.whole = Some(whole);
            return;
        }
        self.spawn_whole_run(dl, whole, a..b);
    }

    /// Every piece went through the whole-file hash: a match moves the file into
    /// place (on the pool), a mismatch fails the download and drops its state.
    fn whole_done(&mut self, registry: &Registry, dl: usize, whole: WholeHash) {
        let d = &mut self.downloads[dl];
        log::info!(
            "{}: whole-file hash done after {:.3} s",
            d.meta.name,
            d.started.elapsed().as_secs_f64()
        );
        if whole.finalize() != d.meta.file_sha1 {
            // No piece can be trusted for a resume: drop the state and the
            // temporary file, and close the connections like any failure.
            let (sha1, part) = (d.meta.file_sha1, storage::temp_path(&d.dest));
            self.fail(registry, dl, "whole-file SHA-1 does not match".into());
            ResumeState::remove(&self.config.state_dir, &sha1);
            let _ = std::fs::remove_file(part);
            return;
        }
        d.state = DlState::Finishing;
        let (Some(file), dest) = (d.file.clone(), d.dest.clone()) else {
            return;
        };
        let done = self.done.clone();
        let t0 = Instant::now();
        self.pool.spawn(move || {
            let result = match storage::finish(&file, &dest) {
                Ok(fsync) => {
                    log::info!(
                        "{}: final fsync {:.1} ms; {:.1} ms from the whole-file hash to the file in place",
                        dest.display(),
                        fsync.as_secs_f64() * 1e3,
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    Ok(())
                }
                Err(e) => Err(format!("cannot rename into place: {e}")),
            };
            done.send(PoolMsg::Finished { dl, result });
        });
    }

    /// Feeds the verified pieces `run` to the whole-file hash on its own thread:
    /// from memory where their buffers were kept, else read back from the file.
    fn spawn_whole_run(&mut self, dl: usize, whole: WholeHash, run: std::ops::Range<usize>) {
        let d = &mut self.downloads[dl];
        let n = d.meta.piece_count();
        let run_start = d.meta.piece_offset(run.start);
        let run_len = d.meta.piece_offset(run.end - 1) + d.meta.piece_len(run.end - 1) - run_start;
        let pieces: Vec<(u64, u64, Option<Vec<u8>>)> = run
            .clone()
            .map(|i| {
                let kept = PieceIndex::from_usize(i, n).and_then(|p| d.ready.remove(&p));
                (d.meta.piece_offset(i), d.meta.piece_len(i), kept)
            })
            .collect();
        d.reread += pieces.iter().filter(|p| p.2.is_none()).count() as u64;
        d.whole_next = run.end;
        let Some(file) = d.file.clone() else {
            return;
        };
        // Start writing this run (verified, so written) back to disk now, so the
        // final fsync has little left. Submitting the I/O costs CPU, so it runs
        // on the pool, not on the sequential whole-hash thread.
        let wb_file = file.clone();
        self.pool
            .spawn(move || storage::start_writeback(&wb_file, run_start, run_len));
        let done = self.done.clone();
        self.whole_pool.spawn(move || {
            let (whole, bufs, err) = feed_whole(whole, &file, pieces);
            done.send(PoolMsg::Whole {
                dl,
                whole,
                bufs,
                err,
            });
        });
    }

    pub(super) fn on_whole(
        &mut self,
        registry: &Registry,
        dl: usize,
        whole: WholeHash,
        bufs: Vec<Vec<u8>>,
        err: Option<String>,
    ) {
        for b in bufs {
            self.bufs.recycle(b);
        }
        let d = &mut self.downloads[dl];
        if let Some(e) = err {
            self.fail(registry, dl, format!("cannot read back the download: {e}"));
            return;
        }
        d.whole_next = whole.next;
        d.whole = Some(whole);
        self.advance_whole(registry, dl);
    }

    pub(super) fn on_finished(
        &mut self,
        registry: &Registry,
        dl: usize,
        result: Result<(), String>,
    ) {
        if let Err(e) = result {
            self.fail(registry, dl, e);
            return;
        }
        let d = &mut self.downloads[dl];
        d.state = DlState::Complete;
        d.bytes_done = d.meta.size;
        let (group, meta, dest) = (d.group.clone(), (*d.meta).clone(), d.dest.clone());
        let file = d.file.take();
        // A complete seeder now (a partial one until here).
        d.announced = true;
        self.tracker_jobs.push(TrackerJob::AddSeeder {
            group: group.clone(),
            name: meta.name.clone(),
            file_sha1: meta.file_sha1_hex(),
            partial: false,
        });
        ResumeState::remove(&self.config.state_dir, &meta.file_sha1);
        let keys: Vec<usize> = d.conn_keys().collect();
        for k in keys {
            self.close_conn(registry, k);
        }
        let d = &self.downloads[dl];
        log::info!(
            "download of {} complete: {} ({:.2} s; whole-file hash re-read {} pieces; \
             no request in flight for {:.2} s, {:.1} in flight on average; \
             this client served {:.1} MiB so far)",
            meta.name,
            dest.display(),
            d.started.elapsed().as_secs_f64(),
            d.reread,
            d.load.idle(Instant::now()).as_secs_f64(),
            d.load.mean(),
            self.uploaded as f64 / (1 << 20) as f64
        );
        let mut by: Vec<_> = self.downloads[dl].served_by.iter().collect();
        by.sort();
        for (addr, n) in by {
            log::info!("transfer stats: {}: {addr} served {n} pieces", meta.name);
        }
        self.add_share_with(&group, meta, dest, file);
    }

    pub(super) fn fail(&mut self, registry: &Registry, dl: usize, reason: String) {
        let d = &mut self.downloads[dl];
        if !d.is_active() {
            return;
        }
        log::warn!("download of {} failed: {reason}", d.meta.name);
        d.state = DlState::Failed(reason);
        if d.adopted {
            // There is nothing to resume into: the destination is taken.
            ResumeState::remove(&self.config.state_dir, &d.meta.file_sha1);
        }
        if d.announced {
            // It serves nothing any more: no longer listed as a partial seeder.
            d.announced = false;
            self.tracker_jobs.push(TrackerJob::Withdraw {
                group: d.group.clone(),
                name: d.meta.name.clone(),
            });
        }
        let d = &mut self.downloads[dl];
        if !d.adopted {
            let _ = d.resume_state().save(&self.config.state_dir);
        }
        d.resume_dirty = false;
        let bufs: Vec<Vec<u8>> = std::mem::take(&mut d.ready).into_values().collect();
        for b in bufs {
            self.bufs.recycle(b);
        }
        let keys: Vec<usize> = self.downloads[dl].conn_keys().collect();
        for k in keys {
            self.close_conn(registry, k);
        }
    }

    /// Keeps requests flowing on every connection of a download.
    pub(super) fn refill(&mut self, dl: usize) {
        let keys: Vec<usize> = self.downloads[dl].conn_keys().collect();
        for k in keys {
            self.refill_conn(k);
        }
    }

    /// Tops up the requests of one download connection, within the download's
    /// [`request_slots`] (from `--threads` and its active peers).
    pub(super) fn refill_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Role::Fetch(f) = &conn.role else {
            return;
        };
        if !f.is_active() || conn.is_closed() {
            return;
        }
        let dl = f.dl;
        let cap = self.config.threads.max(1);
        let d = &self.downloads[dl];
        // Pieces waiting for the pool are bounded by --threads (memory, CPU);
        // requests in flight separately, so hashing never starves the network.
        if d.state != DlState::Running || d.verifying >= 2 * cap {
            return;
        }
        let (mut total, mut active, mut seeders) = (0, 0, 0);
        for k in d.conn_keys() {
            if let Some(Role::Fetch(f)) = self.conns.get(k).map(|c| &c.role) {
                total += f.inflight();
                active += usize::from(f.is_active());
                seeders += u32::from(f.is_active() && f.seeder);
            }
        }
        let slots = request_slots(cap, active);
        // Seen from here only part of the swarm (more peers known than
        // connected; this client, once listed, is banned at its first try): a
        // seeder is asked only for what no connected peer has.
        let known = d.peers.values().filter(|p| !p.banned).count();
        let seeders = (known > MAX_PEERS_PER_DOWNLOAD).then_some(seeders);
        let d = &mut self.downloads[dl];
        let conn = &mut self.conns[key];
        let Role::Fetch(f) = &mut conn.role else {
            return;
        };
        let mut out = Vec::new();
        f.fill(
            &mut d.picker,
            &d.meta,
            slots.per_peer,
            slots.total.saturating_sub(total),
            seeders,
            &mut out,
        );
        if out.is_empty() {
            return;
        }
        conn.send(out);
        if !d.requested {
            d.requested = true;
            log::info!(
                "{}: first request {:.1} ms after the download started",
                d.meta.name,
                d.started.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    pub(super) fn connect_peers(&mut self, registry: &Registry, dl: usize) {
        if self.downloads[dl].state != DlState::Running {
            return;
        }
        let now = Instant::now();
        let mut candidates: Vec<SocketAddr> = self.downloads[dl]
            .peers
            .iter()
            .filter(|(_, kp)| !kp.banned && kp.conn.is_none() && kp.next_try <= now)
            .map(|(a, _)| *a)
            .collect();
        // Sorted, then started at a random place: with more peers than
        // connections, leechers spread over the swarm instead of all picking the
        // same lowest addresses.
        candidates.sort();
        if !candidates.is_empty() {
            let start = (self.rng.next_u64() % candidates.len() as u64) as usize;
            candidates.rotate_left(start);
        }
        for addr in candidates {
            if self.downloads[dl].conn_keys().count() >= MAX_PEERS_PER_DOWNLOAD {
                break;
            }
            let sha1 = self.downloads[dl].meta.file_sha1;
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    let role = Role::Fetch(FetchPeer::new(dl));
                    let Some(key) = self.insert_conn(registry, stream, addr, role, true) else {
                        continue;
                    };
                    self.conns[key].send(Handshake::new(sha1, self.peer_id).encode().to_vec());
                    if let Some(kp) = self.downloads[dl].peers.get_mut(&addr) {
                        kp.conn = Some(key);
                    }
                }
                Err(e) => {
                    log::debug!("connect {addr}: {e}");
                    if let Some(kp) = self.downloads[dl].peers.get_mut(&addr) {
                        kp.next_try = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }
    /// Starts a download in the background; the error is one line for the user.
    /// `dest` is a directory (the file keeps its name) or a new file path. A
    /// download interrupted earlier (same file, same destination) resumes from the
    /// pieces it had verified.
    pub(super) fn begin_download(
        &mut self,
        registry: &Registry,
        group: &str,
        meta: FileMeta,
        peers: Vec<SocketAddr>,
        dest: PathBuf,
        ticket: Option<&str>,
    ) -> Result<(), String> {
        let dest = if dest.is_dir() {
            // The name comes from the tracker: it must stay a plain file name.
            let n = meta.name.as_str();
            if n.is_empty() || n == "." || n == ".." || n.contains('/') {
                return Err(format!("cannot use file name {n:?} in a directory"));
            }
            dest.join(n)
        } else {
            dest
        };
        if meta.piece_size == 0 || meta.piece_size > peer_msg::MAX_REQUEST_LEN as u64 {
            return Err(format!("unsupported piece size {}", meta.piece_size));
        }
        if meta.piece_count() != FileMeta::piece_count_for(meta.size, meta.piece_size) {
            return Err("inconsistent file metadata".into());
        }
        if let Some(d) = self
            .downloads
            .iter()
            .find(|d| d.is_active() && (d.meta.file_sha1 == meta.file_sha1 || d.dest == dest))
        {
            return Err(format!(
                "already downloading {} to {}",
                d.meta.name,
                d.dest.display()
            ));
        }
        if dest.exists() {
            return self.adopt_finished(group, meta, dest);
        }
        let file = storage::open_part(&dest, meta.size)
            .map_err(|e| format!("cannot create {}: {e}", storage::temp_path(&dest).display()))?;
        let file = Arc::new(file);
        let resume = ResumeState::load(&self.config.state_dir, &meta.file_sha1)
            .filter(|r| r.dest == dest && r.size == meta.size)
            .and_then(|r| Bitfield::from_bytes(r.bits, meta.piece_count()).ok())
            .filter(|bits| !bits.is_empty());
        let seed = self.rng.next_u64();
        let mut d = Download::new(group, meta, dest, seed);
        d.file = Some(file.clone());
        d.add_peers(&peers);
        let dl = self.downloads.len();
        if let Some(bits) = resume {
            d.state = DlState::Checking;
            let meta = d.meta.clone();
            let done = self.done.clone();
            self.pool.spawn(move || {
                let good = recheck(&file, &meta, &bits);
                done.send(PoolMsg::ResumeChecked { dl, good });
            });
        } else if let Err(e) = d.resume_state().save(&self.config.state_dir) {
            log::warn!("cannot save resume state: {e}");
        }
        self.downloads.push(d);
        self.set_ticket(dl, ticket);
        if self.downloads[dl].state == DlState::Running {
            self.connect_peers(registry, dl);
            self.advance_whole(registry, dl);
        }
        Ok(())
    }

    /// `dest` exists. If this client's resume state says it was downloading this
    /// very file there, an earlier run crashed between moving the finished file
    /// into place and recording that: the file is hashed whole (on the pool) and,
    /// when it is the file, completes like any download (shared, resume state
    /// dropped). Anything else at `dest` is never touched.
    fn adopt_finished(&mut self, group: &str, meta: FileMeta, dest: PathBuf) -> Result<(), String> {
        let exists = || format!("{} already exists", dest.display());
        let ours = ResumeState::load(&self.config.state_dir, &meta.file_sha1)
            .is_some_and(|r| r.dest == dest && r.size == meta.size);
        if !ours {
            return Err(exists());
        }
        let file = File::open(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        let mut d = Download::new(group, meta, dest, self.rng.next_u64());
        d.state = DlState::Finishing;
        d.adopted = true;
        d.file = Some(Arc::new(file));
        let dl = self.downloads.len();
        let (want, size, dest) = (d.meta.file_sha1, d.meta.size, d.dest.clone());
        self.downloads.push(d);
        let done = self.done.clone();
        self.whole_pool.spawn(move || {
            let result = match hasher::hash_file(&dest).map(|m| (m.file_sha1, m.size)) {
                Ok(found) if found == (want, size) => {
                    // The temporary name may still be there (a crash between
                    // the link and the unlink): the same data, drop it.
                    let _ = std::fs::remove_file(storage::temp_path(&dest));
                    Ok(())
                }
                Ok(_) => Err(format!(
                    "{} already exists and is another file",
                    dest.display()
                )),
                Err(e) => Err(format!("cannot check {}: {e}", dest.display())),
            };
            done.send(PoolMsg::Finished { dl, result });
        });
        Ok(())
    }

    pub(super) fn on_resume_checked(
        &mut self,
        registry: &Registry,
        dl: usize,
        good: Vec<PieceIndex>,
    ) {
        let d = &mut self.downloads[dl];
        if d.state != DlState::Checking {
            return;
        }
        for &i in &good {
            d.picker.mark_have(i);
            d.bytes_done += d.meta.piece_len(i.get());
        }
        log::info!(
            "resuming {}: {} of {} pieces already verified",
            d.meta.name,
            good.len(),
            d.meta.piece_count()
        );
        d.state = DlState::Running;
        d.resume_dirty = true;
        // Re-verified bytes are not download speed: the rate starts from here.
        d.rate = Default::default();
        if !good.is_empty() && !d.announced {
            d.announced = true;
            self.tracker_jobs.push(TrackerJob::AddSeeder {
                group: d.group.clone(),
                name: d.meta.name.clone(),
                file_sha1: d.meta.file_sha1_hex(),
                partial: true,
            });
        }
        self.connect_peers(registry, dl);
        self.advance_whole(registry, dl);
    }
}

/// Feeds pieces `(offset, len, kept buffer)` in order to the whole-file hash;
/// returns it with the buffers to recycle and the first read error.
fn feed_whole(
    mut whole: WholeHash,
    file: &File,
    pieces: Vec<(u64, u64, Option<Vec<u8>>)>,
) -> (WholeHash, Vec<Vec<u8>>, Option<String>) {
    let mut bufs = Vec::new();
    let mut scratch = Vec::new();
    let mut err = None;
    for (off, len, buf) in pieces {
        match buf {
            Some(b) => {
                whole.feed(&b);
                bufs.push(b);
            }
            None => {
                if let Err(e) = whole.feed_from_file(file, off, len, &mut scratch) {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
    }
    if scratch.capacity() > 0 {
        bufs.push(scratch);
    }
    (whole, bufs, err)
}

/// The pieces of `bits` whose data in `file` still matches its hash (resume).
fn recheck(file: &File, meta: &FileMeta, bits: &Bitfield) -> Vec<PieceIndex> {
    let mut buf = Vec::new();
    bits.ones()
        .filter(|i| {
            let len = meta.piece_len(i.get()) as usize;
            buf.resize(len, 0);
            storage::read_at(file, &mut buf, meta.piece_offset(i.get())).is_ok()
                && hasher::sha1(&buf) == meta.piece_hashes[i.get()]
        })
        .collect()
}
