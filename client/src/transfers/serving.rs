//! The serving side of [`Transfers`]: files shared in full, the handshake's
//! lookup of a file by its hash (full shares, or a download that serves the
//! pieces it has verified), request validation, disk reads on the pool with
//! per-connection back-pressure, and `Have` broadcast to our downloaders (ahead
//! of queued piece data). The ticket check between handshake and bitfield lives
//! in `auth`. Under an upload limit a full share answers requests through
//! [`crate::super_seed::SuperSeed`], so each piece leaves about once. A whole
//! piece of a shared file is checked against its SHA-1 as it is read; a
//! mismatch (the file changed on disk) ends the sharing of that file.
//!
//! `Have`s to a downloader that does not read are bounded: once
//! [`MAX_QUEUED_MSGS`] messages wait in a connection's write queue, further
//! `Have`s are dropped and one whole `Bitfield` replaces them when the queue
//! has drained.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use mio::Registry;
use wire::file_meta::FileMeta;
use wire::peer_msg::{self, PeerMsg, RejectCode, PIECE_HEADER_LEN};
use wire::pieces::{Bitfield, PieceIndex};

use super::{PoolMsg, TrackerJob, Transfers};
use crate::limits::Direction;
use crate::peer_conn::{ConnEvent, PeerConn, Role, ServeState};
use crate::registry::{stamp_of, FileStamp};
use crate::storage;
use crate::super_seed::{hold_for, Verdict};

/// Disk reads plus queued answers per serving connection before its requests wait.
const MAX_SERVE_INFLIGHT: usize = 4;
/// Messages waiting in a serving connection's write queue beyond which `Have`s
/// are coalesced into a later `Bitfield`.
pub const MAX_QUEUED_MSGS: usize = 64;
/// The super-seeding counters are logged at most this often.
const SEED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A file served in full.
pub(super) struct Share {
    pub(super) meta: Arc<FileMeta>,
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    /// Size, mtime, ctime and inode when it was shared (`None`: unknown, not checked).
    pub(super) stamp: Option<FileStamp>,
    /// (group, name) pairs it is shared as.
    pub(super) names: Vec<(String, String)>,
    /// Whether requests go through [`crate::super_seed::SuperSeed`] under an
    /// upload limit: a file shared by upload, not one this client just
    /// downloaded (the swarm has it already). A finished leecher withholding
    /// what it sent once (its own first round, which never ends when every
    /// other peer has pieces too) leaves the leechers still missing a piece
    /// with one peer fewer to get it from.
    pub(super) super_seed: bool,
}

/// A serving connection closed: what it sent, the longest its piece data
/// waited for the upload limit, and the pieces it leaves unsent (a seeder
/// counted those as sent; the swarm benchmark reads this).
pub(super) fn log_closed(conn: &PeerConn, pending_reads: usize) {
    let w = &conn.write_stats;
    let unsent = conn.data_queued() + pending_reads;
    log::info!(
        "served {}: {:.1} MiB, longest wait for the upload {:.1} s, {unsent} pieces unsent at close",
        conn.addr,
        w.data_bytes as f64 / (1 << 20) as f64,
        w.longest_wait_until(std::time::Instant::now()),
    );
}

/// Whether a serving connection has piece data queued or being read.
fn sends_data(c: &PeerConn) -> bool {
    let reading = match c.role {
        Role::Serve(ServeState::Serving { pending_reads, .. }) => pending_reads > 0,
        _ => false,
    };
    reading || c.data_queued() > 0
}

impl Transfers {
    pub(super) fn serve_budget(&self, key: usize) -> usize {
        match self.conns.get(key) {
            Some(c) => match &c.role {
                Role::Serve(ServeState::Serving { pending_reads, .. }) => {
                    MAX_SERVE_INFLIGHT.saturating_sub(pending_reads + c.queued())
                }
                Role::Serve(ServeState::AwaitHandshake | ServeState::AwaitAuth { .. }) => {
                    MAX_SERVE_INFLIGHT.saturating_sub(c.queued())
                }
                Role::Fetch(_) => usize::MAX,
            },
            None => 0,
        }
    }

    /// The file to serve for `sha1`: its handle, metadata, and which pieces we hold
    /// (`None` = all).
    pub(super) fn source(
        &self,
        sha1: &[u8; 20],
    ) -> Option<(Arc<File>, Arc<FileMeta>, Option<usize>)> {
        if let Some(s) = self.shares.get(sha1) {
            return Some((s.file.clone(), s.meta.clone(), None));
        }
        let (i, d) = self
            .downloads
            .iter()
            .enumerate()
            .find(|(_, d)| d.meta.file_sha1 == *sha1 && d.can_serve())?;
        Some((d.file.clone()?, d.meta.clone(), Some(i)))
    }

    pub(super) fn serve_event(&mut self, key: usize, ev: ConnEvent) {
        match ev {
            ConnEvent::Handshake(h) => {
                if h.version != peer_msg::VERSION {
                    self.conns[key].send_error_and_close(&format!(
                        "unsupported protocol version {} (this peer speaks {})",
                        h.version,
                        peer_msg::VERSION
                    ));
                    return;
                }
                if self.source(&h.file_sha1).is_none() {
                    self.conns[key].send_error_and_close("unknown file");
                    return;
                }
                self.send_challenge(key, &h);
            }
            ConnEvent::Msg(PeerMsg::Auth { ticket, sig }) => self.on_auth(key, &ticket, &sig),
            ConnEvent::Msg(PeerMsg::Request { piece, offset, len }) => {
                self.serve_request(key, piece, offset, len)
            }
            ConnEvent::Msg(PeerMsg::KeepAlive) => {}
            ConnEvent::Msg(PeerMsg::Error(text)) => {
                log::debug!("peer {} says: {text}", self.conns[key].addr);
            }
            ConnEvent::Msg(other) => {
                log::debug!("peer {}: unexpected {other:?}", self.conns[key].addr);
            }
            ConnEvent::Piece { data, .. } => {
                self.bufs.recycle(data);
                self.conns[key].send_error_and_close("unexpected piece data");
            }
            ConnEvent::Closed(_) => {}
        }
    }

    pub(super) fn serve_request(&mut self, key: usize, piece: u32, offset: u32, len: u32) {
        if !self.ticket_in_force(key) {
            return;
        }
        let Role::Serve(ServeState::Serving {
            file_sha1: sha1, ..
        }) = self.conns[key].role
        else {
            return;
        };
        let reject = |t: &mut Transfers, code: RejectCode| {
            t.conns[key].send_msg(&PeerMsg::Reject {
                piece,
                offset,
                code,
            });
        };
        let Some((file, meta, partial)) = self.source(&sha1) else {
            reject(self, RejectCode::NotHave);
            return;
        };
        let Some(p) = PieceIndex::new(piece, meta.piece_count()).filter(|p| {
            len != 0
                && len <= peer_msg::MAX_REQUEST_LEN
                && offset as u64 + len as u64 <= meta.piece_len(p.get())
        }) else {
            reject(self, RejectCode::OutOfRange);
            return;
        };
        if let Some(dl) = partial {
            if !self.downloads[dl].picker.has(p) {
                reject(self, RejectCode::NotHave);
                return;
            }
        } else if self.gate.is_limited(Direction::Up)
            && self.shares.get(&sha1).is_some_and(|s| s.super_seed)
        {
            let (n, conn) = (meta.piece_count(), self.conns[key].id);
            let serving = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.role, Role::Serve(ServeState::Serving { .. })))
                .count();
            let hold = hold_for(
                meta.piece_len(p.get()),
                serving,
                self.gate.limit(Direction::Up),
            );
            let now = std::time::Instant::now();
            let conns = &self.conns;
            let sending = |id: u64| conns.iter().any(|(_, c)| c.id == id && sends_data(c));
            if self
                .super_seed
                .request(sha1, n, conn, p, now, hold, sending)
                == Verdict::Withhold
            {
                reject(self, RejectCode::NotHave);
                return;
            }
        }
        // A shared file's stamp (size, mtime, ctime, inode, by `fstat` on the
        // open file) is checked at every read against the one taken when it was
        // shared: a file changed on disk is never served (`share_corrupted`).
        // Not a hash of each served piece: that cost the seeder ~1.2 CPU-s per
        // 256 MiB and made 1->1 1.5x slower on 2 cores; the downloader checks
        // every piece anyway, and a user cannot set ctime back.
        let stamp = match partial {
            None => self.shares.get(&sha1).and_then(|s| s.stamp),
            Some(_) => None,
        };
        let mut buf = self.bufs.take(PIECE_HEADER_LEN + len as usize);
        peer_msg::write_piece_header(&mut buf, piece, offset, len as usize);
        let at = meta.piece_offset(p.get()) + offset as u64;
        let conn = &mut self.conns[key];
        if let Role::Serve(ServeState::Serving { pending_reads, .. }) = &mut conn.role {
            *pending_reads += 1;
        }
        let id = conn.id;
        let done = self.done.clone();
        self.pool.spawn(move || {
            let mut corrupt = None;
            let changed = |s: FileStamp| file.metadata().map_or(true, |m| stamp_of(&m) != s);
            let result = match storage::read_at(&file, &mut buf[PIECE_HEADER_LEN..], at) {
                Ok(()) if stamp.is_some_and(changed) => {
                    corrupt = Some(sha1);
                    Err(buf)
                }
                Ok(()) => Ok(buf),
                Err(e) => {
                    log::warn!("read piece {piece}: {e}");
                    Err(buf)
                }
            };
            done.send(PoolMsg::Read {
                key,
                id,
                piece,
                offset,
                result,
                corrupt,
            });
        });
    }

    pub(super) fn on_read(
        &mut self,
        registry: &Registry,
        key: usize,
        id: u64,
        piece: u32,
        offset: u32,
        result: Result<Vec<u8>, Vec<u8>>,
    ) {
        if self.conns.get(key).is_none_or(|c| c.id != id) {
            let (Ok(b) | Err(b)) = result;
            self.bufs.recycle(b);
            return;
        }
        let grant = self.grant(key);
        if let Ok(buf) = &result {
            self.uploaded += (buf.len() - PIECE_HEADER_LEN) as u64;
        }
        let conn = &mut self.conns[key];
        if let Role::Serve(ServeState::Serving { pending_reads, .. }) = &mut conn.role {
            *pending_reads = pending_reads.saturating_sub(1);
        }
        match result {
            Ok(buf) => conn.send(buf),
            Err(buf) => {
                self.bufs.recycle(buf);
                conn.send_msg(&PeerMsg::Reject {
                    piece,
                    offset,
                    code: RejectCode::ReadFailed,
                });
            }
        }
        self.settle(grant);
        self.reparse(registry, key);
        self.drain_written(key);
        if self.conns.get(key).is_some_and(|c| c.is_closed()) {
            self.close_conn(registry, key);
        }
    }

    /// The shared file `sha1` changed on disk (its stamp differs when a piece was
    /// read for serving). It is shared no more (every group it was shared in,
    /// the registry, and the tracker), with a note on stderr.
    pub(super) fn share_corrupted(&mut self, sha1: &[u8; 20], piece: u32) {
        let Some(share) = self.shares.get(sha1) else {
            return;
        };
        let (path, names) = (share.path.clone(), share.names.clone());
        for (group, name) in names {
            self.remove_share(&group, &name);
            self.tracker_jobs.push(TrackerJob::Withdraw {
                group: group.clone(),
                name: name.clone(),
            });
            self.notes.push(format!(
                "note: {} changed on disk (found serving piece {piece}); no longer sharing {name} in {group}",
                path.display()
            ));
        }
    }

    pub(super) fn broadcast_have(&mut self, sha1: &[u8; 20], piece: PieceIndex) {
        let msg = PeerMsg::Have(piece.raw()).encode();
        for (_, c) in self.conns.iter_mut() {
            let full = c.queued() >= MAX_QUEUED_MSGS;
            if c.is_closed() {
                continue;
            }
            let send = match &mut c.role {
                Role::Serve(ServeState::Serving {
                    file_sha1: s,
                    bitfield_stale,
                    ..
                }) if s == sha1 => {
                    *bitfield_stale |= full;
                    !*bitfield_stale
                }
                _ => false,
            };
            if send {
                c.send_urgent(msg.clone());
            }
        }
    }

    /// A serving connection whose `Have`s were dropped gets one whole
    /// `Bitfield` once its write queue has drained.
    pub(super) fn catch_up_bitfield(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        let Role::Serve(ServeState::Serving {
            file_sha1,
            bitfield_stale: true,
            ..
        }) = &c.role
        else {
            return;
        };
        if c.queued() > 0 {
            return;
        }
        let bits = match self.source(file_sha1) {
            Some((_, meta, None)) => Bitfield::full(meta.piece_count()),
            Some((_, _, Some(dl))) => self.downloads[dl].bits(),
            None => return,
        };
        let conn = &mut self.conns[key];
        if let Role::Serve(ServeState::Serving { bitfield_stale, .. }) = &mut conn.role {
            *bitfield_stale = false;
        }
        conn.send_msg(&PeerMsg::Bitfield(bits.into_bytes()));
    }

    /// Offers withheld pieces again (see [`crate::super_seed`]): a `Have` each.
    pub(super) fn offer_withheld(&mut self, now: std::time::Instant) {
        for (conn, piece) in self.super_seed.due(now) {
            if let Some((_, c)) = self.conns.iter_mut().find(|(_, c)| c.id == conn) {
                c.send_urgent(PeerMsg::Have(piece).encode());
            }
        }
        self.log_seed_stats(now);
    }

    /// At most every [`SEED_LOG_EVERY`], when anything changed: what the
    /// super-seeding did so far (info level; the swarm benchmark reads it).
    fn log_seed_stats(&mut self, now: std::time::Instant) {
        let (s, waiting) = self.super_seed.stats();
        let (at, last) = self.seed_logged;
        if s == last || now.duration_since(at) < SEED_LOG_EVERY {
            return;
        }
        self.seed_logged = (now, s);
        let mean = s.wait_sum / s.offers.max(1) as f64;
        log::info!(
            "super-seed: served {} first copies, {} new-round copies, {} copies on offer; \
             withheld {} ({} in turn behind first copies), offered again {} \
             (waited {mean:.1} s mean, {:.1} s max), {waiting} waiting",
            s.first_copies,
            s.round_copies,
            s.offered_copies,
            s.withheld,
            s.behind_first,
            s.offers,
            s.wait_max
        );
    }

    pub(super) fn add_share_with(
        &mut self,
        group: &str,
        meta: FileMeta,
        path: PathBuf,
        file: Option<Arc<File>>,
    ) {
        if let Some(reg) = self.registry.as_mut() {
            if let Err(e) = reg.upsert(group, &meta, &path) {
                log::warn!(
                    "cannot record {} in the uploads registry: {e}",
                    path.display()
                );
            }
        }
        let key = (group.to_string(), meta.name.clone());
        if let Some(s) = self.shares.get_mut(&meta.file_sha1) {
            if !s.names.contains(&key) {
                s.names.push(key);
            }
            return;
        }
        // A file handed over by a finished download: the swarm has it already.
        let super_seed = file.is_none();
        let file = match file {
            Some(f) => f,
            None => match File::open(&path) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    log::error!("cannot share {}: {e}", path.display());
                    return;
                }
            },
        };
        self.shares.insert(
            meta.file_sha1,
            Share {
                meta: Arc::new(meta),
                stamp: file.metadata().ok().map(|m| stamp_of(&m)),
                file,
                path,
                names: vec![key],
                super_seed,
            },
        );
    }
}
