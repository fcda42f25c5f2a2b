//! The download side of [`Transfers`]: connecting to a download's peers, keeping
//! whole-piece requests in flight on each connection (`refill`), received
//! pieces (`on_piece`), verification results from the pool (`on_verified`), the
//! in-order whole-file hash (`advance_whole`), finishing and failing a download,
//! resume checks, and the periodic per-download work of `tick`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Registry;
use wire::file_meta::FileMeta;
use wire::peer_msg::{self, bitfield_len, set_bit, Handshake, PeerMsg};

use super::{PoolMsg, TrackerJob, Transfers};
use crate::downloads::{DlState, Download};
use crate::hasher;
use crate::peer_conn::{ConnEvent, PeerConn, Role};
use crate::picker::PieceState;
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
    piece: usize,
    ok: bool,
    data: Vec<u8>,
    /// The peer that sent it.
    from: SocketAddr,
    write_err: Option<String>,
}

impl Transfers {
    /// Cleans up after a download connection closed: its requests go back to
    /// the picker, its pieces leave the availability counts.
    pub(super) fn fetch_conn_closed(&mut self, registry: &Registry, key: usize, conn: PeerConn) {
        if let Role::Fetch {
            dl,
            bits,
            got_bitfield,
            inflight,
        } = conn.role
        {
            let Some(d) = self.downloads.get_mut(dl) else {
                return;
            };
            d.conns.retain(|k| *k != key);
            for p in inflight {
                d.picker.release(p);
            }
            if got_bitfield {
                d.picker.remove_bitfield(&bits);
            }
            if let Some(kp) = d.peers.get_mut(&conn.addr) {
                kp.connected = false;
                kp.next_try = Instant::now() + Duration::from_millis(500);
            }
            if !d
                .conns
                .iter()
                .any(|k| self.conns.get(*k).is_some_and(|c| c.handshake_done))
            {
                d.no_peers_since.get_or_insert_with(Instant::now);
            }
            self.refill(registry, dl);
        }
    }

    /// The periodic per-download work: rate samples, resume saves, peer
    /// refreshes, failure bounds, new connections and requests.
    pub(super) fn tick_downloads(&mut self, registry: &Registry, now: Instant) {
        for dl in 0..self.downloads.len() {
            let d = &mut self.downloads[dl];
            if !d.is_active() {
                continue;
            }
            d.rate.sample(d.bytes_done);
            if d.resume_dirty && now.duration_since(d.last_resume_save) >= RESUME_SAVE_EVERY {
                d.resume_dirty = false;
                d.last_resume_save = now;
                if let Err(e) = d.resume_state().save(&self.config.state_dir) {
                    log::warn!("cannot save resume state: {e}");
                }
            }
            // Every piece verified: only the whole-file hash is left, which needs
            // no peer and may take long on a slow disk; never fail it for that.
            if d.state != DlState::Running || d.picker.is_complete() {
                continue;
            }
            let live = d
                .conns
                .iter()
                .any(|k| self.conns.get(*k).is_some_and(|c| c.handshake_done));
            // Fresh peers come from the controller's peer refresh (`update_peers`).
            if live {
                d.no_peers_since = None;
            } else {
                let since = *d.no_peers_since.get_or_insert(now);
                if now.duration_since(since) > NO_PEERS_LIMIT {
                    self.fail(
                        registry,
                        dl,
                        "no peer could serve the file (all seeders gone)".into(),
                    );
                    continue;
                }
            }
            let d = &self.downloads[dl];
            if now.duration_since(d.last_progress) > STALL_LIMIT && d.verifying == 0 {
                self.fail(registry, dl, "no progress for two minutes".into());
                continue;
            }
            self.connect_peers(registry, dl);
            self.refill(registry, dl);
        }
    }

    pub(super) fn close_peer_of(&mut self, registry: &Registry, dl: usize, addr: SocketAddr) {
        let keys: Vec<usize> = self
            .downloads
            .get(dl)
            .map(|d| d.conns.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|k| self.conns.get(*k).is_some_and(|c| c.addr == addr))
            .collect();
        for k in keys {
            self.close_conn(registry, k);
        }
    }

    pub(super) fn fetch_event(&mut self, registry: &Registry, key: usize, ev: ConnEvent) {
        let Role::Fetch { dl, .. } = self.conns[key].role else {
            return;
        };
        if self.downloads[dl].state != DlState::Running {
            if let ConnEvent::Piece { data, .. } = ev {
                self.bufs.recycle(data);
            }
            self.conns[key].closed = true;
            return;
        }
        let addr = self.conns[key].addr;
        match ev {
            ConnEvent::Handshake(h) => {
                let d = &mut self.downloads[dl];
                if h.peer_id == self.peer_id {
                    log::debug!("{addr} is this client; not downloading from it");
                    if let Some(kp) = d.peers.get_mut(&addr) {
                        kp.banned = true;
                    }
                    self.conns[key].closed = true;
                } else if h.file_sha1 != d.meta.file_sha1 || h.version != peer_msg::VERSION {
                    self.conns[key].closed = true;
                }
            }
            ConnEvent::Msg(PeerMsg::Bitfield(bits)) => {
                let d = &mut self.downloads[dl];
                let n = d.meta.piece_count();
                if bits.len() != bitfield_len(n) {
                    self.conns[key].closed = true;
                    return;
                }
                // A repeated bitfield replaces the earlier one in the counts.
                if let Role::Fetch {
                    bits: old,
                    got_bitfield: true,
                    ..
                } = &self.conns[key].role
                {
                    d.picker.remove_bitfield(old);
                }
                d.picker.add_bitfield(&bits);
                d.no_peers_since = None;
                if let Some(kp) = d.peers.get_mut(&addr) {
                    kp.failures = 0;
                }
                if let Role::Fetch {
                    bits: b,
                    got_bitfield,
                    ..
                } = &mut self.conns[key].role
                {
                    *b = bits;
                    *got_bitfield = true;
                }
                self.refill(registry, dl);
            }
            ConnEvent::Msg(PeerMsg::Have(i)) => {
                let i = i as usize;
                let d = &mut self.downloads[dl];
                if i >= d.meta.piece_count() {
                    return;
                }
                if let Role::Fetch {
                    bits, got_bitfield, ..
                } = &mut self.conns[key].role
                {
                    if *got_bitfield && !peer_msg::bit(bits, i) {
                        set_bit(bits, i);
                        d.picker.add_have(i);
                    }
                }
                self.refill_conn(key);
            }
            ConnEvent::Msg(PeerMsg::Reject { piece, code, .. }) => {
                let p = piece as usize;
                let d = &mut self.downloads[dl];
                if let Role::Fetch { bits, inflight, .. } = &mut self.conns[key].role {
                    if let Some(pos) = inflight.iter().position(|x| *x == p) {
                        inflight.remove(pos);
                        d.picker.release(p);
                        // Do not ask this peer for it again.
                        if let Some(b) = bits.get_mut(p / 8) {
                            if *b & (0x80 >> (p % 8)) != 0 {
                                *b &= !(0x80 >> (p % 8));
                                d.picker
                                    .remove_bitfield(&single_bit(d.meta.piece_count(), p));
                            }
                        }
                    }
                }
                log::debug!("{addr} rejected piece {piece}: {code:?}");
                self.refill(registry, dl);
            }
            ConnEvent::Msg(PeerMsg::Error(text)) => {
                log::info!("peer {addr}: {text}");
                if let Some(kp) = self.downloads[dl].peers.get_mut(&addr) {
                    kp.failures += 1;
                }
                self.conns[key].closed = true;
            }
            ConnEvent::Msg(PeerMsg::KeepAlive) => {}
            ConnEvent::Msg(other) => {
                log::debug!("{addr}: unexpected {other:?}");
                self.conns[key].closed = true;
            }
            ConnEvent::Piece {
                piece,
                offset,
                data,
            } => self.on_piece(registry, key, dl, piece as usize, offset, data),
            ConnEvent::Closed(_) => {}
        }
    }

    pub(super) fn on_piece(
        &mut self,
        registry: &Registry,
        key: usize,
        dl: usize,
        p: usize,
        offset: u32,
        data: Vec<u8>,
    ) {
        let addr = self.conns[key].addr;
        let d = &mut self.downloads[dl];
        let expected_len = d.meta.piece_len(p) as usize;
        let Role::Fetch { inflight, .. } = &mut self.conns[key].role else {
            return;
        };
        let Some(pos) = inflight.iter().position(|x| *x == p) else {
            // Data we did not ask for: a broken or hostile peer.
            self.bufs.recycle(data);
            log::warn!("{addr} sent piece {p} that was not requested; dropping it");
            self.conns[key].closed = true;
            return;
        };
        inflight.remove(pos);
        if offset != 0 || data.len() != expected_len {
            self.bufs.recycle(data);
            d.picker.release(p);
            log::warn!("{addr} sent a malformed piece {p}; dropping it");
            if let Some(kp) = d.peers.get_mut(&addr) {
                kp.banned = true;
            }
            self.conns[key].closed = true;
            return;
        }
        *d.served_by.entry(addr).or_default() += 1;
        if !d.picker.received(p) {
            self.bufs.recycle(data);
            self.refill_conn(key);
            return;
        }
        d.verifying += 1;
        let Some(file) = d.file.clone() else {
            return;
        };
        let expected = d.meta.piece_hashes[p];
        let at = d.meta.piece_offset(p);
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
                from: addr,
                write_err,
            }));
        });
        self.refill(registry, dl);
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
            d.picker.failed(p);
            let n = d.retries.entry(p).or_insert(0);
            *n += 1;
            let n = *n;
            log::warn!(
                "piece {p} of {} from {from} failed verification; dropping that peer",
                d.meta.name
            );
            if let Some(kp) = d.peers.get_mut(&from) {
                kp.banned = true;
            }
            if n >= self.config.retries.max(1) {
                self.fail(
                    registry,
                    dl,
                    format!("piece {p} failed verification {n} times"),
                );
                return;
            }
            self.close_peer_of(registry, dl, from);
            self.refill(registry, dl);
            return;
        }
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
            });
        }
        if p >= d.whole_next && p < d.whole_next + READY_WINDOW {
            d.ready.insert(p, data);
        } else {
            self.bufs.recycle(data);
        }
        self.broadcast_have(&sha1, p);
        self.advance_whole(registry, dl);
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
            log::info!(
                "{}: whole-file hash done after {:.3} s",
                d.meta.name,
                d.started.elapsed().as_secs_f64()
            );
            let digest = whole.finalize();
            if digest != d.meta.file_sha1 {
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
            self.pool.spawn(move || {
                let result = storage::finish(&file, &dest)
                    .map_err(|e| format!("cannot rename into place: {e}"));
                done.send(PoolMsg::Finished { dl, result });
            });
            return;
        }
        let mut b = a;
        while b < n && b - a < WHOLE_RUN && d.picker.state(b) == Some(PieceState::Have) {
            b += 1;
        }
        if b == a {
            d.whole = Some(whole);
            return;
        }
        let run_start = d.meta.piece_offset(a);
        let run_len = d.meta.piece_offset(b - 1) + d.meta.piece_len(b - 1) - run_start;
        let pieces: Vec<(u64, u64, Option<Vec<u8>>)> = (a..b)
            .map(|i| {
                (
                    d.meta.piece_offset(i),
                    d.meta.piece_len(i),
                    d.ready.remove(&i),
                )
            })
            .collect();
        d.reread += pieces.iter().filter(|p| p.2.is_none()).count() as u64;
        d.whole_next = b;
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
            let mut whole = whole;
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
                        if let Err(e) = whole.feed_from_file(&file, off, len, &mut scratch) {
                            err = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            if scratch.capacity() > 0 {
                bufs.push(scratch);
            }
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
        if !d.announced {
            d.announced = true;
            self.tracker_jobs.push(TrackerJob::AddSeeder {
                group: group.clone(),
                name: meta.name.clone(),
                file_sha1: meta.file_sha1_hex(),
            });
        }
        ResumeState::remove(&self.config.state_dir, &meta.file_sha1);
        let keys = d.conns.clone();
        for k in keys {
            self.close_conn(registry, k);
        }
        log::info!(
            "download of {} complete: {} ({:.2} s; whole-file hash re-read {} pieces)",
            meta.name,
            dest.display(),
            self.downloads[dl].started.elapsed().as_secs_f64(),
            self.downloads[dl].reread
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
        let _ = d.resume_state().save(&self.config.state_dir);
        d.resume_dirty = false;
        let bufs: Vec<Vec<u8>> = std::mem::take(&mut d.ready).into_values().collect();
        for b in bufs {
            self.bufs.recycle(b);
        }
        let keys = self.downloads[dl].conns.clone();
        for k in keys {
            self.close_conn(registry, k);
        }
    }

    /// Keeps requests flowing on every connection of a download.
    pub(super) fn refill(&mut self, _registry: &Registry, dl: usize) {
        let keys = self.downloads[dl].conns.clone();
        for k in keys {
            self.refill_conn(k);
        }
    }

    pub(super) fn refill_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Role::Fetch {
            dl, got_bitfield, ..
        } = conn.role
        else {
            return;
        };
        if !got_bitfield || conn.closed {
            return;
        }
        // Each of the --threads fetch slots keeps two whole-piece requests in
        // flight, so the next piece is already on the wire when one arrives.
        let threads = self.config.threads.max(1) * 2;
        let d = &self.downloads[dl];
        if d.state != DlState::Running {
            return;
        }
        let mut total = 0;
        let mut active = 0;
        for k in &d.conns {
            if let Some(Role::Fetch {
                inflight,
                got_bitfield,
                ..
            }) = self.conns.get(*k).map(|c| &c.role)
            {
                total += inflight.len();
                if *got_bitfield {
                    active += 1;
                }
            }
        }
        let per_peer = threads.div_ceil(active.max(1)).max(2);
        // Requests in flight are bounded by --threads; pieces waiting for the pool
        // are bounded separately (memory), so hashing never starves the network.
        if d.verifying >= threads {
            return;
        }
        let cap = threads;
        let d = &mut self.downloads[dl];
        let conn = &mut self.conns[key];
        let Role::Fetch { bits, inflight, .. } = &mut conn.role else {
            return;
        };
        let mut out = Vec::new();
        while inflight.len() < per_peer && total < cap {
            let Some(p) = d.picker.pick(bits, |i| inflight.contains(&i)) else {
                break;
            };
            inflight.push(p);
            total += 1;
            PeerMsg::Request {
                piece: p as u32,
                offset: 0,
                len: d.meta.piece_len(p) as u32,
            }
            .encode_into(&mut out);
        }
        if !out.is_empty() {
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
    }

    pub(super) fn connect_peers(&mut self, registry: &Registry, dl: usize) {
        if self.downloads[dl].state != DlState::Running {
            return;
        }
        let now = Instant::now();
        let mut candidates: Vec<SocketAddr> = self.downloads[dl]
            .peers
            .iter()
            .filter(|(_, kp)| !kp.banned && !kp.connected && kp.next_try <= now)
            .map(|(a, _)| *a)
            .collect();
        candidates.sort();
        for addr in candidates {
            if self.downloads[dl].conns.len() >= MAX_PEERS_PER_DOWNLOAD {
                break;
            }
            let sha1 = self.downloads[dl].meta.file_sha1;
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    let role = Role::Fetch {
                        dl,
                        bits: Vec::new(),
                        got_bitfield: false,
                        inflight: Vec::new(),
                    };
                    let Some(key) = self.insert_conn(registry, stream, addr, role, true) else {
                        continue;
                    };
                    self.conns[key].send(Handshake::new(sha1, self.peer_id).encode().to_vec());
                    let d = &mut self.downloads[dl];
                    d.conns.push(key);
                    if let Some(kp) = d.peers.get_mut(&addr) {
                        kp.connected = true;
                    }
                }
                Err(e) => {
                    log::debug!("connect {addr}: {e}");
                    if let Some(kp) = self.downloads[dl].peers.get_mut(&addr) {
                        kp.failures += 1;
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
            return Err(format!("{} already exists", dest.display()));
        }
        let file = storage::open_part(&dest, meta.size)
            .map_err(|e| format!("cannot create {}: {e}", storage::temp_path(&dest).display()))?;
        let file = Arc::new(file);
        let resume = ResumeState::load(&self.config.state_dir, &meta.file_sha1)
            .filter(|r| r.dest == dest && r.size == meta.size && r.bits.iter().any(|b| *b != 0));
        let seed = self.rng.next_u64();
        let mut d = Download::new(group, meta, dest, seed);
        d.file = Some(file.clone());
        d.add_peers(&peers);
        let dl = self.downloads.len();
        if let Some(r) = resume {
            d.state = DlState::Checking;
            let meta = d.meta.clone();
            let done = self.done.clone();
            self.pool.spawn(move || {
                let mut good = Vec::new();
                let mut buf = Vec::new();
                for i in 0..meta.piece_count() {
                    if !peer_msg::bit(&r.bits, i) {
                        continue;
                    }
                    let len = meta.piece_len(i) as usize;
                    buf.resize(len, 0);
                    if storage::read_at(&file, &mut buf, meta.piece_offset(i)).is_ok()
                        && hasher::sha1(&buf) == meta.piece_hashes[i]
                    {
                        good.push(i);
                    }
                }
                done.send(PoolMsg::ResumeChecked { dl, good });
            });
        } else if let Err(e) = d.resume_state().save(&self.config.state_dir) {
            log::warn!("cannot save resume state: {e}");
        }
        self.downloads.push(d);
        if self.downloads[dl].state == DlState::Running {
            self.connect_peers(registry, dl);
            self.advance_whole(registry, dl);
        }
        Ok(())
    }

    pub(super) fn on_resume_checked(&mut self, registry: &Registry, dl: usize, good: Vec<usize>) {
        let d = &mut self.downloads[dl];
        if d.state != DlState::Checking {
            return;
        }
        for &i in &good {
            d.picker.mark_have(i);
            d.bytes_done += d.meta.piece_len(i);
        }
        log::info!(
            "resuming {}: {} of {} pieces already verified",
            d.meta.name,
            good.len(),
            d.meta.piece_count()
        );
        d.state = DlState::Running;
        d.resume_dirty = true;
        if !good.is_empty() && !d.announced {
            d.announced = true;
            self.tracker_jobs.push(TrackerJob::AddSeeder {
                group: d.group.clone(),
                name: d.meta.name.clone(),
                file_sha1: d.meta.file_sha1_hex(),
            });
        }
        self.connect_peers(registry, dl);
        self.advance_whole(registry, dl);
    }
}

fn single_bit(n: usize, i: usize) -> Vec<u8> {
    let mut b = vec![0u8; bitfield_len(n)];
    set_bit(&mut b, i);
    b
}
