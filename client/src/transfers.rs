//! `Transfers`: everything peer-to-peer, behind one narrow interface that the
//! client's event loop calls. It owns the peer server's accepted connections,
//! the outgoing download connections, every `Download`, the shared files and
//! the hashing/disk thread pool.
//!
//! The event loop owns the `mio::Poll`, the peer-server listener and the tracker
//! link; it hands Transfers every event whose token is `>= PEER_TOKEN_BASE`,
//! every accepted peer socket, a call after each wake of the shared `Waker`
//! (pool results), and a periodic `tick`. Transfers never talks to the tracker
//! itself: it queues [`TrackerJob`]s that the loop sends, and the loop reports
//! the outcome of those it must know about.
//!
//! # How a piece travels
//!
//! Downloader: the picker chooses a piece for a peer (rarest first), a whole-piece
//! `Request` is queued (up to `--threads` pieces in flight per download), the
//! `Piece` data is read from the socket straight into a piece buffer, a pool job
//! checks its SHA-1 and writes it at its offset, and back on the loop the piece is
//! marked verified, announced with `Have` to our own downloaders (partial seeding),
//! and fed — in order — to the whole-file hash (jobs on a thread of its own; buffers of the
//! pieces just ahead of the hash cursor stay in memory, others are re-read from
//! the page cache). When the last piece is hashed and the whole-file SHA-1 matches,
//! a pool job fsyncs and renames the file into place.
//!
//! Server: a `Request` is checked (file by hash, piece held, range inside the
//! piece), a pool job reads the range into a buffer that already holds the
//! message header, and the loop writes that buffer to the socket.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;
use wire::file_meta::FileMeta;
use wire::peer_msg::{
    self, bitfield_len, set_bit, Handshake, PeerMsg, RejectCode, PIECE_HEADER_LEN,
};

use crate::downloads::{DlState, Download};
use crate::hasher::{self, Completion, Pool};
use crate::peer_conn::{ConnEvent, PeerConn, Role};
use crate::picker::PieceState;
use crate::registry::{Check, UploadRegistry};
use crate::storage::{self, ResumeState, WholeHash};

/// Tokens at or above this value belong to Transfers (peer connections).
pub const PEER_TOKEN_BASE: usize = 1 << 20;

/// Disk reads plus queued answers per serving connection before its requests wait.
const MAX_SERVE_INFLIGHT: usize = 16;
/// Connections per download.
const MAX_PEERS_PER_DOWNLOAD: usize = 16;
/// A fetch connection with requests outstanding and no bytes for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// With no usable peer, ask the tracker for fresh ones this often...
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// While peers are connected, the first refresh (to find partial seeders) comes
/// this soon after the start, later ones this often.
const FIRST_REFRESH: Duration = Duration::from_millis(500);
const REFRESH_WHILE_RUNNING: Duration = Duration::from_secs(3);
/// ...and fail the download after this long.
const NO_PEERS_LIMIT: Duration = Duration::from_secs(20);
/// A download that makes no progress for this long fails.
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Verified pieces this far ahead of the whole-file hash stay in memory.
const READY_WINDOW: usize = 8;
/// Pieces per whole-file hash job.
const WHOLE_RUN: usize = 8;
/// Resume state is saved at most this often while pieces verify.
const RESUME_SAVE_EVERY: Duration = Duration::from_millis(200);
/// `tick` does its periodic work at most this often.
const TICK_EVERY: Duration = Duration::from_millis(20);
/// Spare piece buffers kept for reuse.
const MAX_FREE_BUFS: usize = 12;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// `--threads`: concurrent piece fetches per download.
    pub threads: usize,
    /// `--retries`: attempts per piece.
    pub retries: u32,
    /// `--state-dir`: resume state and `.uploads_registry` live here.
    pub state_dir: PathBuf,
}

/// Identifies one hashing job started by [`Transfers::start_hash`].
pub type HashJobId = u64;

/// A request Transfers wants sent to the tracker (the loop adds the session token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerJob {
    /// Tell the tracker this client now holds (part of) the file and serves it:
    /// `add_seeder group name file_sha1 peer_addr`.
    AddSeeder {
        group: String,
        name: String,
        file_sha1: String,
    },
    /// A download has no usable peer: ask `file_info group name` and pass the
    /// seeder addresses of the reply to [`Transfers::update_peers`].
    RefreshPeers { group: String, name: String },
}

/// A file served in full.
struct Share {
    meta: Arc<FileMeta>,
    file: Arc<File>,
    path: PathBuf,
    /// (group, name) pairs it is shared as.
    names: Vec<(String, String)>,
}

/// Results of pool jobs.
enum PoolMsg {
    Hashed {
        job: HashJobId,
        result: Result<FileMeta, String>,
    },
    Read {
        key: usize,
        id: u64,
        piece: u32,
        offset: u32,
        result: Result<Vec<u8>, Vec<u8>>,
    },
    Verified(Verified),
    Whole {
        dl: usize,
        whole: WholeHash,
        bufs: Vec<Vec<u8>>,
        err: Option<String>,
    },
    ResumeChecked {
        dl: usize,
        good: Vec<usize>,
    },
    Finished {
        dl: usize,
        result: Result<(), String>,
    },
}

/// A piece checked (and, when good, written) on the pool.
struct Verified {
    dl: usize,
    piece: usize,
    ok: bool,
    data: Vec<u8>,
    /// The peer that sent it.
    from: SocketAddr,
    write_err: Option<String>,
}

/// What [`Transfers::reannounce_list`] found in `.uploads_registry`.
#[derive(Debug, Default)]
pub struct Reannounce {
    /// Unchanged files: announce each (`upload_file` with this metadata) and `add_share` it.
    pub unchanged: Vec<(String, FileMeta, PathBuf)>,
    /// One line per file that changed or vanished (dropped from the registry).
    pub reports: Vec<String>,
}

/// The peer-to-peer side of the client.
pub struct Transfers {
    config: TransferConfig,
    #[allow(dead_code)]
    waker: Arc<Waker>,
    pool: Pool,
    /// Whole-file hash jobs: sequential by nature, so they get their own thread
    /// and never queue behind piece checks.
    whole_pool: Pool,
    done: Completion<PoolMsg>,
    results: Receiver<PoolMsg>,
    peer_id: [u8; 8],
    next_conn_id: u64,
    conns: Slab<PeerConn>,
    shares: HashMap<[u8; 20], Share>,
    downloads: Vec<Download>,
    next_hash_job: HashJobId,
    finished_hashes: Vec<(HashJobId, Result<FileMeta, String>)>,
    tracker_jobs: Vec<TrackerJob>,
    registry: Option<UploadRegistry>,
    free_bufs: Vec<Vec<u8>>,
    rng: u64,
    /// When `tick` last did its periodic work.
    last_tick: Instant,
}

/// A buffer of exactly `len` bytes (contents unspecified), reusing a spare one when possible.
fn take_buf(free: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    let mut v = match free.iter().position(|b| b.capacity() >= len) {
        Some(i) => free.swap_remove(i),
        None => {
            Vec::with_capacity(len.max(wire::file_meta::PIECE_SIZE as usize + PIECE_HEADER_LEN))
        }
    };
    // Old contents are left in place (every user overwrites the whole buffer):
    // no memset per piece.
    v.truncate(len);
    v.resize(len, 0);
    v
}

fn recycle(free: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if free.len() < MAX_FREE_BUFS && buf.capacity() >= 256 * 1024 {
        free.push(buf);
    }
}

fn full_bits(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; bitfield_len(n)];
    for i in 0..n {
        set_bit(&mut b, i);
    }
    b
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl Transfers {
    pub fn new(config: TransferConfig, waker: Arc<Waker>) -> std::io::Result<Transfers> {
        std::fs::create_dir_all(&config.state_dir)?;
        let registry = match UploadRegistry::load(&config.state_dir) {
            Ok(r) => Some(r),
            Err(e) => {
                log::error!("uploads registry not usable (left untouched): {e}");
                None
            }
        };
        let (done, results) = Completion::new(Some(waker.clone()));
        let seed = random_seed();
        Ok(Transfers {
            config,
            waker,
            pool: Pool::for_machine(),
            whole_pool: Pool::sequential("whole-hash"),
            done,
            results,
            peer_id: seed.to_le_bytes(),
            next_conn_id: 1,
            conns: Slab::new(),
            shares: HashMap::new(),
            downloads: Vec::new(),
            next_hash_job: 1,
            finished_hashes: Vec::new(),
            tracker_jobs: Vec::new(),
            registry,
            free_bufs: Vec::new(),
            rng: seed,
            last_tick: Instant::now() - TICK_EVERY,
        })
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    // ------------------------------------------------------------------
    // Connections
    // ------------------------------------------------------------------

    fn insert_conn(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        addr: SocketAddr,
        role: Role,
        connecting: bool,
    ) -> Option<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = registry.register(
            &mut stream,
            Token(PEER_TOKEN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("register peer {addr}: {e}");
            return None;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        entry.insert(PeerConn::new(stream, addr, id, role, connecting));
        Some(key)
    }

    /// A connection accepted by the peer server.
    pub fn accept(&mut self, registry: &Registry, stream: TcpStream, from: SocketAddr) {
        let role = Role::Serve {
            file_sha1: None,
            pending_reads: 0,
        };
        if self
            .insert_conn(registry, stream, from, role, false)
            .is_some()
        {
            log::debug!("peer {from} connected");
        }
    }

    /// An event for a token `>= PEER_TOKEN_BASE`.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) {
        let Some(key) = event.token().0.checked_sub(PEER_TOKEN_BASE) else {
            return;
        };
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        self.conn_ready(registry, key, readable, event.is_writable());
    }

    fn serve_budget(&self, key: usize) -> usize {
        match self.conns.get(key) {
            Some(c) => match c.role {
                Role::Serve { pending_reads, .. } => {
                    MAX_SERVE_INFLIGHT.saturating_sub(pending_reads + c.queued())
                }
                Role::Fetch { .. } => usize::MAX,
            },
            None => 0,
        }
    }

    fn conn_ready(&mut self, registry: &Registry, key: usize, readable: bool, writable: bool) {
        let budget = self.serve_budget(key);
        let mut events = Vec::new();
        {
            let free = &mut self.free_bufs;
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.on_ready(
                readable,
                writable,
                budget,
                &mut |len| take_buf(free, len),
                &mut events,
            );
        }
        self.after_conn_io(registry, key, events);
    }

    /// Re-parses buffered requests of a serving connection after back-pressure eased.
    fn reparse(&mut self, registry: &Registry, key: usize) {
        let budget = self.serve_budget(key);
        if budget == 0 {
            return;
        }
        let mut events = Vec::new();
        {
            let free = &mut self.free_bufs;
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.parse(budget, &mut |len| take_buf(free, len), &mut events);
        }
        self.after_conn_io(registry, key, events);
    }

    fn after_conn_io(&mut self, registry: &Registry, key: usize, events: Vec<ConnEvent>) {
        let mut saw_close = false;
        for ev in events {
            if !self.conns.contains(key) {
                break;
            }
            if let ConnEvent::Closed(reason) = &ev {
                log::debug!("peer conn {key}: {reason}");
                saw_close = true;
                continue;
            }
            self.conn_event(registry, key, ev);
        }
        self.drain_written(key);
        let closed = self.conns.get(key).is_some_and(|c| c.closed);
        if saw_close || closed {
            self.close_conn(registry, key);
        }
    }

    fn drain_written(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            for b in std::mem::take(&mut c.written) {
                recycle(&mut self.free_bufs, b);
            }
        }
    }

    fn close_conn(&mut self, registry: &Registry, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = registry.deregister(&mut conn.stream);
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

    fn close_peer_of(&mut self, registry: &Registry, dl: usize, addr: SocketAddr) {
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

    fn conn_event(&mut self, registry: &Registry, key: usize, ev: ConnEvent) {
        let is_serve = matches!(self.conns[key].role, Role::Serve { .. });
        if is_serve {
            self.serve_event(key, ev);
        } else {
            self.fetch_event(registry, key, ev);
        }
    }

    // ------------------------------------------------------------------
    // Serving
    // ------------------------------------------------------------------

    /// The file to serve for `sha1`: its handle, metadata, and which pieces we hold
    /// (`None` = all).
    fn source(&self, sha1: &[u8; 20]) -> Option<(Arc<File>, Arc<FileMeta>, Option<usize>)> {
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

    fn serve_event(&mut self, key: usize, ev: ConnEvent) {
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
                let bits = match self.source(&h.file_sha1) {
                    None => {
                        self.conns[key].send_error_and_close("unknown file");
                        return;
                    }
                    Some((_, meta, None)) => full_bits(meta.piece_count()),
                    Some((_, _, Some(dl))) => self.downloads[dl].bits(),
                };
                let hs = Handshake::new(h.file_sha1, self.peer_id).encode().to_vec();
                let conn = &mut self.conns[key];
                if let Role::Serve { file_sha1, .. } = &mut conn.role {
                    *file_sha1 = Some(h.file_sha1);
                }
                let mut out = hs;
                PeerMsg::Bitfield(bits).encode_into(&mut out);
                conn.send(out);
            }
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
                recycle(&mut self.free_bufs, data);
                self.conns[key].send_error_and_close("unexpected piece data");
            }
            ConnEvent::Closed(_) => {}
        }
    }

    fn serve_request(&mut self, key: usize, piece: u32, offset: u32, len: u32) {
        let Role::Serve {
            file_sha1: Some(sha1),
            ..
        } = self.conns[key].role
        else {
            self.conns[key].send_error_and_close("request before handshake");
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
        let p = piece as usize;
        if p >= meta.piece_count()
            || len == 0
            || len > peer_msg::MAX_REQUEST_LEN
            || offset as u64 + len as u64 > meta.piece_len(p)
        {
            reject(self, RejectCode::OutOfRange);
            return;
        }
        if let Some(dl) = partial {
            if self.downloads[dl].picker.state(p) != Some(PieceState::Have) {
                reject(self, RejectCode::NotHave);
                return;
            }
        }
        let mut buf = take_buf(&mut self.free_bufs, PIECE_HEADER_LEN + len as usize);
        peer_msg::write_piece_header(&mut buf, piece, offset, len as usize);
        let at = meta.piece_offset(p) + offset as u64;
        let conn = &mut self.conns[key];
        if let Role::Serve { pending_reads, .. } = &mut conn.role {
            *pending_reads += 1;
        }
        let id = conn.id;
        let done = self.done.clone();
        self.pool.spawn(move || {
            let result = match storage::read_at(&file, &mut buf[PIECE_HEADER_LEN..], at) {
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
            });
        });
    }

    fn on_read(
        &mut self,
        registry: &Registry,
        key: usize,
        id: u64,
        piece: u32,
        offset: u32,
        result: Result<Vec<u8>, Vec<u8>>,
    ) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
            let (Ok(b) | Err(b)) = result;
            recycle(&mut self.free_bufs, b);
            return;
        };
        if let Role::Serve { pending_reads, .. } = &mut conn.role {
            *pending_reads = pending_reads.saturating_sub(1);
        }
        match result {
            Ok(buf) => {
                conn.piece_bytes += (buf.len() - PIECE_HEADER_LEN) as u64;
                conn.send(buf);
            }
            Err(buf) => {
                recycle(&mut self.free_bufs, buf);
                conn.send_msg(&PeerMsg::Reject {
                    piece,
                    offset,
                    code: RejectCode::ReadFailed,
                });
            }
        }
        self.reparse(registry, key);
        self.drain_written(key);
        if self.conns.get(key).is_some_and(|c| c.closed) {
            self.close_conn(registry, key);
        }
    }

    fn broadcast_have(&mut self, sha1: &[u8; 20], piece: usize) {
        let msg = PeerMsg::Have(piece as u32).encode();
        for (_, c) in self.conns.iter_mut() {
            if let Role::Serve {
                file_sha1: Some(s), ..
            } = &c.role
            {
                if s == sha1 && !c.closed {
                    c.send(msg.clone());
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Fetching
    // ------------------------------------------------------------------

    fn fetch_event(&mut self, registry: &Registry, key: usize, ev: ConnEvent) {
        let Role::Fetch { dl, .. } = self.conns[key].role else {
            return;
        };
        if self.downloads[dl].state != DlState::Running {
            if let ConnEvent::Piece { data, .. } = ev {
                recycle(&mut self.free_bufs, data);
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

    fn on_piece(
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
            recycle(&mut self.free_bufs, data);
            log::warn!("{addr} sent piece {p} that was not requested; dropping it");
            self.conns[key].closed = true;
            return;
        };
        inflight.remove(pos);
        if offset != 0 || data.len() != expected_len {
            recycle(&mut self.free_bufs, data);
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
            recycle(&mut self.free_bufs, data);
            self.refill_conn(key);
            return;
        }
        d.verifying += 1;
        let Some(file) = d.file.clone() else {
            return;
        };
        let expected = d.meta.piece_hashes[p];
        let at = d.meta.piece_offset(p);
        let done = self.done.clone();
        self.pool.spawn(move || {
            let ok = hasher::sha1(&data) == expected;
            let write_err = if ok {
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

    fn on_verified(&mut self, registry: &Registry, v: Verified) {
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
            recycle(&mut self.free_bufs, data);
            return;
        }
        if let Some(e) = write_err {
            recycle(&mut self.free_bufs, data);
            let msg = format!(
                "cannot write {}: {e}",
                storage::temp_path(&d.dest).display()
            );
            self.fail(registry, dl, msg);
            return;
        }
        if !ok {
            recycle(&mut self.free_bufs, data);
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
            recycle(&mut self.free_bufs, data);
        }
        self.broadcast_have(&sha1, p);
        self.advance_whole(dl);
        self.refill(registry, dl);
    }

    /// Starts a whole-file hash job over the next run of verified pieces, or
    /// completes the download when every piece is hashed.
    fn advance_whole(&mut self, dl: usize) {
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
            let digest = whole.finalize();
            if digest != d.meta.file_sha1 {
                ResumeState::remove(&self.config.state_dir, &d.meta.file_sha1);
                d.state = DlState::Failed("whole-file SHA-1 does not match".into());
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
        d.whole_next = b;
        let Some(file) = d.file.clone() else {
            return;
        };
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
            // Start writing this run back now, so the final fsync has little left.
            storage::start_writeback(&file, run_start, run_len);
            done.send(PoolMsg::Whole {
                dl,
                whole,
                bufs,
                err,
            });
        });
    }

    fn on_whole(
        &mut self,
        registry: &Registry,
        dl: usize,
        whole: WholeHash,
        bufs: Vec<Vec<u8>>,
        err: Option<String>,
    ) {
        for b in bufs {
            recycle(&mut self.free_bufs, b);
        }
        let d = &mut self.downloads[dl];
        if let Some(e) = err {
            self.fail(registry, dl, format!("cannot read back the download: {e}"));
            return;
        }
        d.whole_next = whole.next;
        d.whole = Some(whole);
        self.advance_whole(dl);
    }

    fn on_finished(&mut self, registry: &Registry, dl: usize, result: Result<(), String>) {
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
        log::info!("download of {} complete: {}", meta.name, dest.display());
        let mut by: Vec<_> = self.downloads[dl].served_by.iter().collect();
        by.sort();
        for (addr, n) in by {
            log::info!("transfer stats: {}: {addr} served {n} pieces", meta.name);
        }
        self.add_share_with(&group, meta, dest, file);
    }

    fn fail(&mut self, registry: &Registry, dl: usize, reason: String) {
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
            recycle(&mut self.free_bufs, b);
        }
        let keys = self.downloads[dl].conns.clone();
        for k in keys {
            self.close_conn(registry, k);
        }
    }

    /// Keeps requests flowing on every connection of a download.
    fn refill(&mut self, _registry: &Registry, dl: usize) {
        let keys = self.downloads[dl].conns.clone();
        for k in keys {
            self.refill_conn(k);
        }
    }

    fn refill_conn(&mut self, key: usize) {
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
        }
    }

    fn connect_peers(&mut self, registry: &Registry, dl: usize) {
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

    // ------------------------------------------------------------------
    // Loop entry points
    // ------------------------------------------------------------------

    /// Called after the shared Waker fired: collect thread-pool results.
    pub fn poll_pool(&mut self, registry: &Registry) {
        while let Ok(msg) = self.results.try_recv() {
            match msg {
                PoolMsg::Hashed { job, result } => self.finished_hashes.push((job, result)),
                PoolMsg::Read {
                    key,
                    id,
                    piece,
                    offset,
                    result,
                } => self.on_read(registry, key, id, piece, offset, result),
                PoolMsg::Verified(v) => self.on_verified(registry, v),
                PoolMsg::Whole {
                    dl,
                    whole,
                    bufs,
                    err,
                } => self.on_whole(registry, dl, whole, bufs, err),
                PoolMsg::ResumeChecked { dl, good } => self.on_resume_checked(registry, dl, good),
                PoolMsg::Finished { dl, result } => self.on_finished(registry, dl, result),
            }
        }
    }

    /// Called every loop turn (at least every 100 ms): timeouts, retries, endgame.
    pub fn tick(&mut self, registry: &Registry) {
        let now = Instant::now();
        // The loop may call this far more often than needed; the work is periodic.
        if now.duration_since(self.last_tick) < TICK_EVERY {
            return;
        }
        self.last_tick = now;
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (c.connecting && now.duration_since(c.started) > CONNECT_TIMEOUT)
                    || matches!(&c.role, Role::Fetch { inflight, .. }
                        if !inflight.is_empty() && now.duration_since(c.last_rx) > REQUEST_TIMEOUT)
                    || (!c.handshake_done && now.duration_since(c.started) > REQUEST_TIMEOUT)
                    // Marked closed by a failed write outside of its own event.
                    || c.closed
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            log::debug!("peer {} timed out or closed", self.conns[k].addr);
            self.close_conn(registry, k);
        }
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
            if d.state != DlState::Running {
                continue;
            }
            let live = d
                .conns
                .iter()
                .any(|k| self.conns.get(*k).is_some_and(|c| c.handshake_done));
            if live {
                d.no_peers_since = None;
                // Learn about other leechers (partial seeders) now and then.
                let every = if d.refreshes == 0 {
                    FIRST_REFRESH
                } else {
                    REFRESH_WHILE_RUNNING
                };
                if now.duration_since(d.last_refresh) >= every {
                    d.last_refresh = now;
                    d.refreshes += 1;
                    self.tracker_jobs.push(TrackerJob::RefreshPeers {
                        group: d.group.clone(),
                        name: d.meta.name.clone(),
                    });
                }
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
                if now.duration_since(d.last_refresh) >= REFRESH_EVERY {
                    d.last_refresh = now;
                    self.tracker_jobs.push(TrackerJob::RefreshPeers {
                        group: d.group.clone(),
                        name: d.meta.name.clone(),
                    });
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

    /// Starts hashing `path` for an upload (pieces + whole file) on its own threads.
    pub fn start_hash(&mut self, path: PathBuf) -> HashJobId {
        let job = self.next_hash_job;
        self.next_hash_job += 1;
        let done = self.done.clone();
        let spawned = std::thread::Builder::new()
            .name("upload-hash".into())
            .spawn(move || {
                let result =
                    hasher::hash_file(&path).map_err(|e| format!("{}: {e}", path.display()));
                done.send(PoolMsg::Hashed { job, result });
            });
        if let Err(e) = spawned {
            self.finished_hashes
                .push((job, Err(format!("cannot start hashing: {e}"))));
        }
        job
    }

    /// Hash jobs that finished since the last call: the metadata, or an error line.
    pub fn take_finished_hashes(&mut self) -> Vec<(HashJobId, Result<FileMeta, String>)> {
        std::mem::take(&mut self.finished_hashes)
    }

    fn add_share_with(
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
                file,
                path,
                names: vec![key],
            },
        );
    }

    /// Serve `path` as the file described by `meta` (after a successful upload or
    /// re-announce), and record it in `.uploads_registry`.
    pub fn add_share(&mut self, group: &str, meta: FileMeta, path: PathBuf) {
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        self.add_share_with(group, meta, path, None);
    }

    /// Stop serving a file of a group (and drop it from `.uploads_registry`).
    pub fn remove_share(&mut self, group: &str, name: &str) {
        if let Some(reg) = self.registry.as_mut() {
            if let Err(e) = reg.remove(group, name) {
                log::warn!("cannot update the uploads registry: {e}");
            }
        }
        self.shares.retain(|_, s| {
            s.names.retain(|(g, n)| !(g == group && n == name));
            !s.names.is_empty()
        });
    }

    /// Paths of the files served in full, with their group and name.
    pub fn shared_files(&self) -> Vec<(String, String, PathBuf)> {
        let mut v: Vec<_> = self
            .shares
            .values()
            .flat_map(|s| {
                s.names
                    .iter()
                    .map(move |(g, n)| (g.clone(), n.clone(), s.path.clone()))
            })
            .collect();
        v.sort();
        v
    }

    /// After login/failover: checks `.uploads_registry` against the disk. Unchanged
    /// files are returned for re-announcing; changed or vanished ones are dropped
    /// from the registry (and from sharing) and reported, one line each.
    pub fn reannounce_list(&mut self) -> Reannounce {
        let mut out = Reannounce::default();
        let Some(reg) = self.registry.as_ref() else {
            return out;
        };
        let mut drop_list = Vec::new();
        for (e, c) in reg.check() {
            match c {
                Check::Unchanged(meta) => {
                    out.unchanged.push((e.group.clone(), meta, e.path.clone()))
                }
                Check::Changed => {
                    out.reports.push(format!(
                        "{} changed since it was shared; no longer sharing {} in {}",
                        e.path.display(),
                        e.name,
                        e.group
                    ));
                    drop_list.push((e.group, e.name));
                }
                Check::Vanished => {
                    out.reports.push(format!(
                        "{} is gone; no longer sharing {} in {}",
                        e.path.display(),
                        e.name,
                        e.group
                    ));
                    drop_list.push((e.group, e.name));
                }
            }
        }
        for (g, n) in drop_list {
            self.remove_share(&g, &n);
        }
        out
    }

    /// Interrupted downloads recorded in the state dir that are not running now
    /// (the loop may restart them after login with `file_info` + `start_download`).
    pub fn pending_resumes(&self) -> Vec<ResumeState> {
        ResumeState::all(&self.config.state_dir)
            .into_iter()
            .filter(|r| {
                !self
                    .downloads
                    .iter()
                    .any(|d| d.is_active() && d.meta.file_sha1 == r.file_sha1)
            })
            .collect()
    }

    /// Starts a download in the background; the error is one line for the user.
    /// `dest` is a directory (the file keeps its name) or a new file path. A
    /// download interrupted earlier (same file, same destination) resumes from the
    /// pieces it had verified.
    pub fn start_download(
        &mut self,
        registry: &Registry,
        group: &str,
        meta: FileMeta,
        peers: Vec<SocketAddr>,
        dest: PathBuf,
    ) -> Result<(), String> {
        let dest = if dest.is_dir() {
            dest.join(&meta.name)
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
        let seed = self.next_rand();
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
            self.advance_whole(dl);
        }
        Ok(())
    }

    fn on_resume_checked(&mut self, registry: &Registry, dl: usize, good: Vec<usize>) {
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
        self.advance_whole(dl);
    }

    /// Fresh seeder addresses for a running download (the loop asks the tracker periodically).
    pub fn update_peers(
        &mut self,
        registry: &Registry,
        group: &str,
        name: &str,
        peers: Vec<SocketAddr>,
    ) {
        for dl in 0..self.downloads.len() {
            let d = &mut self.downloads[dl];
            if d.is_active() && d.group == group && d.meta.name == name {
                d.add_peers(&peers);
                for p in &peers {
                    if let Some(kp) = d.peers.get_mut(p) {
                        if !kp.banned && !kp.connected {
                            kp.next_try = Instant::now();
                        }
                    }
                }
                self.connect_peers(registry, dl);
            }
        }
    }

    /// Requests for the tracker queued since the last call.
    pub fn take_tracker_jobs(&mut self) -> Vec<TrackerJob> {
        std::mem::take(&mut self.tracker_jobs)
    }

    /// One `show_downloads` line per download.
    pub fn status_lines(&self) -> Vec<String> {
        self.downloads
            .iter()
            .map(|d| {
                let peers = d
                    .conns
                    .iter()
                    .filter(|k| self.conns.get(**k).is_some_and(|c| c.handshake_done))
                    .count();
                d.status_line(peers)
            })
            .collect()
    }

    /// Downloads still running (end of input waits for them).
    pub fn active_downloads(&self) -> usize {
        self.downloads.iter().filter(|d| d.is_active()).count()
    }

    /// Pieces each peer address served, per download (for logs and tests).
    pub fn served_by(&self) -> Vec<HashMap<SocketAddr, u64>> {
        self.downloads.iter().map(|d| d.served_by.clone()).collect()
    }
}

fn single_bit(n: usize, i: usize) -> Vec<u8> {
    let mut b = vec![0u8; bitfield_len(n)];
    set_bit(&mut b, i);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::TcpListener;
    use mio::{Events, Poll};
    use std::io::{Read, Write};
    use std::path::Path;

    const LISTENER: Token = Token(0);
    const WAKER: Token = Token(1);

    /// A minimal event loop around one `Transfers`, like the client's.
    struct Node {
        poll: Poll,
        listener: TcpListener,
        t: Transfers,
        addr: SocketAddr,
        _state: tempfile::TempDir,
        jobs: Vec<TrackerJob>,
    }

    impl Node {
        fn new(threads: usize, retries: u32) -> Node {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
            let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
                .unwrap();
            let state = tempfile::tempdir().unwrap();
            let t = Transfers::new(
                TransferConfig {
                    threads,
                    retries,
                    state_dir: state.path().to_path_buf(),
                },
                waker,
            )
            .unwrap();
            let addr = listener.local_addr().unwrap();
            Node {
                poll,
                listener,
                t,
                addr,
                _state: state,
                jobs: Vec::new(),
            }
        }

        fn turn(&mut self) {
            let mut events = Events::with_capacity(256);
            self.poll
                .poll(&mut events, Some(Duration::from_millis(1)))
                .unwrap();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => {
                        while let Ok((s, a)) = self.listener.accept() {
                            self.t.accept(self.poll.registry(), s, a);
                        }
                    }
                    WAKER => self.t.poll_pool(self.poll.registry()),
                    _ => self.t.handle_event(self.poll.registry(), ev),
                }
            }
            self.t.poll_pool(self.poll.registry());
            self.t.tick(self.poll.registry());
            self.jobs.extend(self.t.take_tracker_jobs());
        }

        fn share(&mut self, path: &Path) -> FileMeta {
            let meta = hasher::hash_file(path).unwrap();
            self.t.add_share("g", meta.clone(), path.to_path_buf());
            meta
        }
    }

    fn run_until(nodes: &mut [&mut Node], secs: u64, mut done: impl FnMut(&[&mut Node]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(nodes) {
            assert!(Instant::now() < deadline, "timed out");
            for n in nodes.iter_mut() {
                n.turn();
            }
        }
    }

    fn write_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..len)
            .map(|i| ((i * 31 + i / 777) as u8) ^ seed)
            .collect();
        std::fs::File::create(path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        data
    }

    fn finished(n: &Node) -> bool {
        n.t.active_downloads() == 0
    }

    #[test]
    fn one_to_one_all_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = wire::file_meta::PIECE_SIZE as usize;
        for (i, len) in [0, 1, p, p + 1, 5 * p + 17].into_iter().enumerate() {
            let mut seeder = Node::new(8, 5);
            let mut leecher = Node::new(8, 5);
            let src = dir.path().join(format!("src{i}"));
            let data = write_file(&src, len, 0);
            let meta = seeder.share(&src);
            let out = dir.path().join(format!("out{i}"));
            leecher
                .t
                .start_download(
                    leecher.poll.registry(),
                    "g",
                    meta.clone(),
                    vec![seeder.addr],
                    out.clone(),
                )
                .unwrap();
            run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
            assert_eq!(leecher.t.status_lines(), vec![format!("[C] [g] src{i}")]);
            assert_eq!(std::fs::read(&out).unwrap(), data, "len {len}");
            assert!(!storage::temp_path(&out).exists());
            assert!(leecher.jobs.contains(&TrackerJob::AddSeeder {
                group: "g".into(),
                name: meta.name.clone(),
                file_sha1: meta.file_sha1_hex()
            }));
            // The completed download is now a full share.
            assert_eq!(leecher.t.shared_files().len(), 1);
        }
    }

    #[test]
    fn several_seeders_and_a_liar() {
        let dir = tempfile::tempdir().unwrap();
        let p = wire::file_meta::PIECE_SIZE as usize;
        let src = dir.path().join("f");
        let data = write_file(&src, 64 * p + 5, 1);
        let mut s1 = Node::new(8, 5);
        let mut s2 = Node::new(8, 5);
        let mut liar = Node::new(8, 5);
        let meta = s1.share(&src);
        s2.share(&src);
        // The liar shares different bytes under the same metadata.
        let bad = dir.path().join("bad");
        write_file(&bad, data.len(), 99);
        liar.t.add_share("g", meta.clone(), bad);
        let mut leecher = Node::new(8, 5);
        let out = dir.path().join("out");
        leecher
            .t
            .start_download(
                leecher.poll.registry(),
                "g",
                meta,
                vec![s1.addr, s2.addr, liar.addr],
                out.clone(),
            )
            .unwrap();
        run_until(&mut [&mut s1, &mut s2, &mut liar, &mut leecher], 30, |n| {
            finished(n[3])
        });
        assert!(
            leecher.t.status_lines()[0].starts_with("[C]"),
            "{:?}",
            leecher.t.status_lines()
        );
        assert_eq!(std::fs::read(&out).unwrap(), data);
        let served = &leecher.t.served_by()[0];
        assert!(served.get(&s1.addr).copied().unwrap_or(0) > 0, "{served:?}");
        assert!(served.get(&s2.addr).copied().unwrap_or(0) > 0, "{served:?}");
        assert!(leecher.t.downloads[0].peers[&liar.addr].banned);
    }

    #[test]
    fn partial_seeding_and_no_peers_failure_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = wire::file_meta::PIECE_SIZE as usize;
        let src = dir.path().join("f");
        let data = write_file(&src, 40 * p, 2);
        let mut seeder = Node::new(8, 5);
        let meta = seeder.share(&src);
        let mut a = Node::new(8, 5);
        let mut b = Node::new(8, 5);
        a.t.start_download(
            a.poll.registry(),
            "g",
            meta.clone(),
            vec![seeder.addr],
            dir.path().join("a"),
        )
        .unwrap();
        b.t.start_download(
            b.poll.registry(),
            "g",
            meta,
            vec![seeder.addr, a.addr],
            dir.path().join("b"),
        )
        .unwrap();
        run_until(&mut [&mut seeder, &mut a, &mut b], 30, |n| {
            finished(n[1]) && finished(n[2])
        });
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), data);
    }

    #[test]
    fn resume_after_restart_skips_verified_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let p = wire::file_meta::PIECE_SIZE as usize;
        let src = dir.path().join("f");
        let data = write_file(&src, 10 * p, 3);
        let mut seeder = Node::new(8, 5);
        let meta = seeder.share(&src);
        // Pretend an earlier run verified pieces 0..4 (and wrote a wrong piece 4).
        let state = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        {
            let f = storage::open_part(&out, meta.size).unwrap();
            storage::write_at(&f, &data[..4 * p], 0).unwrap();
            storage::write_at(&f, &vec![0u8; p], 4 * p as u64).unwrap();
            let mut bits = vec![0u8; 2];
            for i in 0..5 {
                set_bit(&mut bits, i);
            }
            ResumeState {
                file_sha1: meta.file_sha1,
                group: "g".into(),
                name: meta.name.clone(),
                dest: out.clone(),
                size: meta.size,
                bits,
            }
            .save(state.path())
            .unwrap();
        }
        let mut leecher = Node::new(8, 5);
        leecher.t.config.state_dir = state.path().to_path_buf();
        assert_eq!(leecher.t.pending_resumes().len(), 1);
        leecher
            .t
            .start_download(
                leecher.poll.registry(),
                "g",
                meta,
                vec![seeder.addr],
                out.clone(),
            )
            .unwrap();
        run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        let served: u64 = leecher.t.served_by()[0].values().sum();
        assert_eq!(served, 6, "pieces 4..10 fetched, 0..4 kept");
        assert!(leecher.t.pending_resumes().is_empty());
    }

    #[test]
    fn no_peers_fails_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        write_file(&src, 1000, 3);
        let meta = hasher::hash_file(&src).unwrap();
        let mut leecher = Node::new(8, 5);
        let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
        leecher
            .t
            .start_download(
                leecher.poll.registry(),
                "g",
                meta.clone(),
                vec![dead],
                dir.path().join("o"),
            )
            .unwrap();
        assert!(leecher
            .t
            .start_download(
                leecher.poll.registry(),
                "g",
                meta,
                vec![],
                dir.path().join("o2")
            )
            .unwrap_err()
            .contains("already downloading"));
        // Fast-forward the failure bound.
        leecher.t.downloads[0].no_peers_since =
            Some(Instant::now() - NO_PEERS_LIMIT - Duration::from_secs(1));
        run_until(&mut [&mut leecher], 5, |n| finished(n[0]));
        assert!(leecher.t.status_lines()[0].starts_with("[F] [g] f: no peer"));
        // With no usable peer, fresh peers are asked for.
        leecher.t.downloads[0].state = DlState::Running;
        leecher.t.downloads[0].no_peers_since = Some(Instant::now());
        leecher.t.downloads[0].last_refresh = Instant::now() - Duration::from_secs(5);
        leecher.jobs.clear();
        leecher.t.last_tick = Instant::now() - Duration::from_secs(1);
        leecher.turn();
        assert!(leecher
            .jobs
            .iter()
            .any(|j| matches!(j, TrackerJob::RefreshPeers { .. })));
    }

    /// A raw protocol client: unknown file and out-of-range requests get answers
    /// and the server keeps serving.
    #[test]
    fn server_rejects_bad_requests_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        let data = write_file(&src, 1000, 4);
        let mut seeder = Node::new(8, 5);
        let meta = seeder.share(&src);
        let addr = seeder.addr;
        let client = std::thread::spawn(move || {
            let read_msg = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| -> PeerMsg {
                loop {
                    if let Some((m, used)) = peer_msg::decode(buf).unwrap() {
                        buf.drain(..used);
                        return m;
                    }
                    let mut tmp = [0u8; 4096];
                    let n = s.read(&mut tmp).unwrap();
                    assert!(n > 0, "closed");
                    buf.extend_from_slice(&tmp[..n]);
                }
            };
            // Unknown file: an error, then the connection closes.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&Handshake::new([7; 20], [1; 8]).encode())
                .unwrap();
            let mut buf = Vec::new();
            assert_eq!(
                read_msg(&mut s, &mut buf),
                PeerMsg::Error("unknown file".into())
            );
            // The right file: handshake, bitfield, then answers.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&Handshake::new(meta.file_sha1, [1; 8]).encode())
                .unwrap();
            let mut hs = [0u8; peer_msg::HANDSHAKE_LEN];
            s.read_exact(&mut hs).unwrap();
            let mut buf = Vec::new();
            assert_eq!(read_msg(&mut s, &mut buf), PeerMsg::Bitfield(vec![0x80]));
            for (piece, offset, len) in [(1, 0, 10), (0, 990, 11), (0, 0, 0)] {
                s.write_all(&PeerMsg::Request { piece, offset, len }.encode())
                    .unwrap();
                assert_eq!(
                    read_msg(&mut s, &mut buf),
                    PeerMsg::Reject {
                        piece,
                        offset,
                        code: RejectCode::OutOfRange
                    }
                );
            }
            s.write_all(
                &PeerMsg::Request {
                    piece: 0,
                    offset: 990,
                    len: 10,
                }
                .encode(),
            )
            .unwrap();
            assert_eq!(
                read_msg(&mut s, &mut buf),
                PeerMsg::Piece {
                    piece: 0,
                    offset: 990,
                    data: data[990..].to_vec()
                }
            );
        });
        run_until(&mut [&mut seeder], 10, |_| client.is_finished());
        client.join().unwrap();
    }
}
