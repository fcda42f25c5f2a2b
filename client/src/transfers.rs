//! `Transfers`: everything peer-to-peer, behind one narrow interface that the
//! client's event loop calls. This module is the facade: the public methods the
//! loop calls, the slab of peer connections and the dispatch of their events and
//! of thread-pool results. The work itself lives in two submodules:
//!
//! - [`serving`]: the peer-server side (handshake lookup by file hash, request
//!   validation, disk reads on the pool, `Have` broadcast, the shared files);
//! - [`fetching`]: the download side (connecting to peers, keeping requests in
//!   flight, received pieces, verification results, the in-order whole-file hash,
//!   finishing and failing, resume);
//! - [`metering`]: the bandwidth limits (`--upload-limit`, `--download-limit`,
//!   `rate_limit`): quotas granted to connections from the `RateGate`, held
//!   connections resumed when the buckets refill.
//!
//! Piece buffers are recycled through [`crate::buffers::PieceBuffers`].
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
//! Server: a `Request` is checked (a ticket in force, file by hash, piece held,
//! range inside the piece), a pool job reads the range into a buffer that
//! already holds the message header, and the loop writes that buffer to the
//! socket.
//!
//! # Peer-server limits
//!
//! - Serving only while logged in with a pinned tracker key
//!   ([`Transfers::start_serving`] / [`Transfers::stop_serving`]): otherwise an
//!   accepted connection is closed at once.
//! - At most [`TransferConfig::max_serving`] serving connections in all, and
//!   [`TransferConfig::max_serving_per_ip`] from one IP address.
//! - A connection that has not finished its handshake and ticket check within
//!   15 s, or that sent nothing for [`SERVE_IDLE_TIMEOUT`] after it, is closed;
//!   our own download connections send a `KeepAlive` after
//!   [`KEEPALIVE_EVERY`] of silence, so an idle downloader stays.
//! - Queued `Have`s are bounded per connection (`serving::MAX_QUEUED_MSGS`).

mod auth;
mod fetching;
mod metering;
mod serving;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;
use wire::file_meta::FileMeta;

use crate::buffers::PieceBuffers;
use crate::downloads::Download;
use crate::hasher::{self, Completion, Pool, Results};
use crate::limits::RateGate;
use crate::peer_conn::{ConnEvent, PeerConn, Role, ServeState};
use crate::registry::{Check, UploadRegistry};
use crate::storage::{ResumeState, WholeHash};
use crate::super_seed::{SeedStats, SuperSeed};
use crate::xorshift::XorShift;

use fetching::Verified;
use serving::Share;

/// Tokens at or above this value belong to Transfers (peer connections).
pub const PEER_TOKEN_BASE: usize = 1 << 20;

/// A fetch connection with requests outstanding and no bytes for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A serving connection past its ticket check that sends nothing for this long is closed.
pub const SERVE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A download connection that sent nothing for this long sends a `KeepAlive`.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
/// `tick` does its periodic work at most this often.
const TICK_EVERY: Duration = Duration::from_millis(20);

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// `--threads`: concurrent piece fetches per download.
    pub threads: usize,
    /// `--retries`: attempts per piece.
    pub retries: u32,
    /// Where resume state and `.uploads_registry` live: `--state-dir` until a
    /// user logs in, then that user's directory in it ([`Transfers::use_user`]).
    pub state_dir: PathBuf,
    /// Accepted (serving) connections kept at once; a peer connecting beyond this
    /// is closed at once, so no one can exhaust this client's file descriptors.
    pub max_serving: usize,
    /// Serving connections kept at once from one IP address, so one host cannot
    /// take every slot.
    pub max_serving_per_ip: usize,
}

/// The default of [`TransferConfig::max_serving`].
pub const MAX_SERVING_CONNS: usize = 1024;
/// The default of [`TransferConfig::max_serving_per_ip`].
pub const MAX_SERVING_PER_IP: usize = 64;

/// Identifies one hashing job started by [`Transfers::start_hash`].
pub type HashJobId = u64;

/// A request Transfers wants sent to the tracker (the controller decides; the
/// link adds the session token). Peer refreshes are the controller's to decide:
/// see [`Transfers::running_downloads`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerJob {
    /// Tell the tracker this client now holds (part of) the file and serves it:
    /// `add_seeder group name file_sha1 peer_addr [partial]`.
    AddSeeder {
        group: String,
        name: String,
        file_sha1: String,
        /// Only some pieces (the download is still running).
        partial: bool,
    },
    /// A download that announced itself failed: end its (partial) seeding,
    /// `stop_share group name`.
    Withdraw { group: String, name: String },
}

/// A download Transfers is still working on (checking, running or finishing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningDownload {
    pub group: String,
    pub name: String,
    /// Still missing pieces: fresh seeders from the tracker help it
    /// ([`Transfers::update_peers`]).
    pub needs_peers: bool,
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
        /// The shared file (by hash) found changed on disk as the piece was read.
        corrupt: Option<[u8; 20]>,
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
        good: Vec<wire::pieces::PieceIndex>,
    },
    Finished {
        dl: usize,
        result: Result<(), String>,
    },
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
    /// Wakes the loop when a connection has more to read than one turn's budget.
    waker: Arc<Waker>,
    pool: Pool,
    /// Whole-file hash jobs: sequential by nature, so they get their own thread
    /// and never queue behind piece checks.
    whole_pool: Pool,
    done: Completion<PoolMsg>,
    results: Results<PoolMsg>,
    peer_id: [u8; 8],
    next_conn_id: u64,
    conns: Slab<PeerConn>,
    shares: HashMap<[u8; 20], Share>,
    downloads: Vec<Download>,
    next_hash_job: HashJobId,
    finished_hashes: Vec<(HashJobId, Result<FileMeta, String>)>,
    tracker_jobs: Vec<TrackerJob>,
    /// Lines for stderr since the last [`Transfers::take_notes`].
    notes: Vec<String>,
    registry: Option<UploadRegistry>,
    /// `--state-dir` (the user directories live in it).
    state_root: PathBuf,
    /// The user whose state is in use ([`Transfers::use_user`]).
    user: Option<String>,
    bufs: PieceBuffers,
    rng: XorShift,
    /// When `tick` last did its periodic work.
    last_tick: Instant,
    /// This process's ticket key pair: tickets are bound to its public half.
    /// One per process is enough: tickets live minutes and a restarted client
    /// asks for new ones (`file_info` on resume), so nothing needs it on disk.
    key_pair: wire::ticket::KeyPair,
    /// The trackers' pinned keys that downloaders' tickets must be signed with.
    tracker_keys: Vec<wire::ticket::PublicKey>,
    /// Whether the peer server serves (logged in, tracker key pinned).
    serving: bool,
    /// The bandwidth limits (see [`metering`]).
    gate: RateGate,
    /// Rotates the order in which held connections resume.
    resume_turn: usize,
    /// Which requests a full share answers first under an upload limit.
    super_seed: SuperSeed,
    /// When the super-seeding counters were last logged, and what they were.
    seed_logged: (Instant, SeedStats),
    /// Bytes of piece data handed to serving connections (for the logs).
    uploaded: u64,
}

impl Transfers {
    pub fn new(config: TransferConfig, waker: Arc<Waker>) -> std::io::Result<Transfers> {
        std::fs::create_dir_all(&config.state_dir)?;
        let state_root = config.state_dir.clone();
        let (done, results) = Completion::new(Some(waker.clone()));
        let mut rng = XorShift::from_entropy();
        Ok(Transfers {
            config,
            waker,
            pool: Pool::for_machine(),
            whole_pool: Pool::sequential("whole-hash"),
            done,
            results,
            peer_id: rng.next_u64().to_le_bytes(),
            next_conn_id: 1,
            conns: Slab::new(),
            shares: HashMap::new(),
            downloads: Vec::new(),
            next_hash_job: 1,
            finished_hashes: Vec::new(),
            tracker_jobs: Vec::new(),
            notes: Vec::new(),
            registry: None,
            state_root,
            user: None,
            bufs: PieceBuffers::new(),
            rng,
            last_tick: Instant::now() - TICK_EVERY,
            key_pair: wire::ticket::new_key_pair()?,
            tracker_keys: Vec::new(),
            serving: false,
            gate: RateGate::new(0, 0, Instant::now()),
            resume_turn: 0,
            super_seed: SuperSeed::new(),
            seed_logged: (Instant::now(), SeedStats::default()),
            uploaded: 0,
        })
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
        let conn = entry.insert(PeerConn::new(stream, addr, id, role, connecting));
        metering::meter_new(&self.gate, conn);
        Some(key)
    }

    /// A connection accepted by the peer server.
    pub fn accept(&mut self, registry: &Registry, stream: TcpStream, from: SocketAddr) {
        if !self.serving {
            log::debug!("peer {from} refused: not serving (logged out)");
            drop(stream);
            return;
        }
        let (mut serving, mut same_ip) = (0, 0);
        for (_, c) in self.conns.iter() {
            if matches!(c.role, Role::Serve(_)) {
                serving += 1;
                same_ip += usize::from(c.addr.ip() == from.ip());
            }
        }
        if serving >= self.config.max_serving || same_ip >= self.config.max_serving_per_ip {
            log::warn!(
                "peer {from} refused: serving {serving} connections, {same_ip} from its address"
            );
            drop(stream);
            return;
        }
        let role = Role::Serve(ServeState::AwaitHandshake);
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
        if self.conns.get(key).is_some_and(|c| c.more_to_read) {
            // Read on next turn (`tick`) without sleeping in poll first.
            let _ = self.waker.wake();
        }
    }

    fn conn_ready(&mut self, registry: &Registry, key: usize, readable: bool, writable: bool) {
        let grant = self.grant(key);
        self.conn_io(registry, key, readable, writable);
        self.settle(grant);
    }

    fn conn_io(&mut self, registry: &Registry, key: usize, readable: bool, writable: bool) {
        let budget = self.serve_budget(key);
        let mut events = Vec::new();
        {
            let bufs = &mut self.bufs;
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.on_ready(
                readable,
                writable,
                budget,
                &mut |len| bufs.take(len),
                &mut events,
            );
        }
        self.after_conn_io(registry, key, events);
        // The budget above was taken before the write queue drained, and
        // refused requests took none of it: requests left buffered are parsed
        // now, or nothing (no new bytes arrive while the downloader waits for
        // answers) would wake them.
        if self
            .conns
            .get(key)
            .is_some_and(|c| matches!(c.role, Role::Serve(_)))
        {
            self.reparse(registry, key);
            self.catch_up_bitfield(key);
        }
    }

    /// Continues reading the connections that stopped at their per-call read
    /// budget, and wakes the loop again while any still has more, so a flooding
    /// peer gets its share of turns and no more.
    fn read_more(&mut self, registry: &Registry) {
        let pending: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.more_to_read && !c.is_closed())
            .map(|(k, _)| k)
            .collect();
        for key in pending {
            self.conn_ready(registry, key, true, false);
        }
        if self
            .conns
            .iter()
            .any(|(_, c)| c.more_to_read && !c.is_closed())
        {
            let _ = self.waker.wake();
        }
    }

    /// Parses a serving connection's buffered requests while its budget
    /// allows: after back-pressure eased, and again after requests that took
    /// none of it (a refused one is answered at once, e.g. a piece a
    /// super-seeding seeder withholds). Else the rest would wait for bytes that
    /// never come: the downloader waits for answers (at 1 -> 16, 3-5 of a
    /// leecher's requests to the seeder timed out after 15 s that way).
    fn reparse(&mut self, registry: &Registry, key: usize) {
        loop {
            let budget = self.serve_budget(key);
            let Some(before) = self.conns.get(key).map(|c| c.buffered()) else {
                return;
            };
            if budget == 0 || before == 0 {
                return;
            }
            let mut events = Vec::new();
            {
                let bufs = &mut self.bufs;
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                conn.parse(budget, &mut |len| bufs.take(len), &mut events);
            }
            self.after_conn_io(registry, key, events);
            if self.conns.get(key).is_none_or(|c| c.buffered() == before) {
                return;
            }
        }
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
                self.mark_lost(key, format!("connection lost ({reason})"));
                continue;
            }
            self.conn_event(registry, key, ev);
        }
        self.drain_written(key);
        let closed = self.conns.get(key).is_some_and(|c| c.is_closed());
        if saw_close || closed {
            self.close_conn(registry, key);
        }
    }

    fn drain_written(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            for b in std::mem::take(&mut c.written) {
                self.bufs.recycle(b);
            }
        }
    }

    fn close_conn(&mut self, registry: &Registry, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = registry.deregister(&mut conn.stream);
        self.super_seed.forget_conn(conn.id);
        if let Role::Serve(ServeState::Serving { pending_reads, .. }) = conn.role {
            serving::log_closed(&conn, pending_reads);
        }
        if let Role::Fetch(fetch) = conn.role {
            self.fetch_conn_closed(registry, key, conn.addr, fetch);
        }
    }

    /// The download connection `key` is ending by the peer's fault: its
    /// outstanding requests count as failures of their pieces (`why`).
    fn mark_lost(&mut self, key: usize, why: String) {
        if let Some(Role::Fetch(f)) = self.conns.get_mut(key).map(|c| &mut c.role) {
            f.lost.get_or_insert(why);
        }
    }

    fn conn_event(&mut self, registry: &Registry, key: usize, ev: ConnEvent) {
        let is_serve = matches!(self.conns[key].role, Role::Serve(_));
        if is_serve {
            self.serve_event(key, ev);
        } else {
            self.fetch_event(registry, key, ev);
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
                    corrupt,
                } => {
                    if let Some(sha1) = corrupt {
                        self.share_corrupted(&sha1, piece);
                    }
                    self.on_read(registry, key, id, piece, offset, result)
                }
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

    /// Called every loop turn (at least every 100 ms) with the current time:
    /// timeouts, retries, endgame.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        self.read_more(registry);
        self.resume_held(registry, now);
        // The loop may call this far more often than needed; the work is periodic.
        if now.duration_since(self.last_tick) < TICK_EVERY {
            return;
        }
        self.last_tick = now;
        let silent = |c: &PeerConn| {
            matches!(&c.role, Role::Fetch(f)
                if f.inflight() > 0 && now.duration_since(c.last_rx) > REQUEST_TIMEOUT)
        };
        self.offer_withheld(now);
        let stale: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (c.is_connecting() && now.duration_since(c.started) > CONNECT_TIMEOUT)
                    || silent(c)
                    || (!c.handshake_done() && now.duration_since(c.started) > REQUEST_TIMEOUT)
                    || serve_stale(c, now)
                    // Marked closed by a failed write outside of its own event.
                    || c.is_closed()
            })
            .map(|(k, c)| (k, silent(c)))
            .collect();
        for (k, silent) in stale {
            log::debug!("peer {} timed out or closed", self.conns[k].addr);
            let why = if silent {
                format!("no answer in {} s", REQUEST_TIMEOUT.as_secs())
            } else {
                "connection lost".to_string()
            };
            self.mark_lost(k, why);
            self.close_conn(registry, k);
        }
        for (_, c) in self.conns.iter_mut() {
            let fetching = matches!(c.role, Role::Fetch(_)) && c.handshake_done();
            if fetching && now.duration_since(c.last_tx) > KEEPALIVE_EVERY {
                c.send_msg(&wire::peer_msg::PeerMsg::KeepAlive);
            }
        }
        self.tick_downloads(registry, now);
    }

    /// This process's ticket public key (hex), which `file_info` sends.
    pub fn ticket_key_hex(&self) -> String {
        wire::ticket::public_key_hex(&self.key_pair.verifying_key())
    }

    /// The trackers' keys that downloaders' tickets must be signed with.
    pub fn set_tracker_keys(&mut self, keys: Vec<wire::ticket::PublicKey>) {
        self.tracker_keys = keys;
    }

    /// Serves peers (after a login whose tracker key is pinned).
    pub fn start_serving(&mut self) {
        self.serving = true;
    }

    /// Serves no one (logout): every serving connection closes now and new
    /// ones are refused until [`Transfers::start_serving`].
    pub fn stop_serving(&mut self, registry: &Registry) {
        self.serving = false;
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Serve(_)))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.close_conn(registry, k);
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

    /// A user logged in: from now on `.uploads_registry` and resume state are
    /// that user's ([`crate::user_state`]). Another user than before stops
    /// sharing what the previous one shared (the re-announce after the login
    /// shares this user's files). Returns notes for stderr (a migration).
    pub fn use_user(&mut self, user: &str) -> Vec<String> {
        if self.user.as_deref() == Some(user) {
            return Vec::new();
        }
        if self.user.is_some() {
            self.shares.clear();
        }
        self.user = Some(user.to_string());
        self.registry = None;
        let mut notes = Vec::new();
        match crate::user_state::open(&self.state_root, user) {
            Ok((dir, note)) => {
                notes.extend(note);
                self.config.state_dir = dir;
            }
            Err(e) => {
                let dir = crate::user_state::user_dir(&self.state_root, user);
                notes.push(format!("note: cannot use {}: {e}", dir.display()));
                return notes;
            }
        }
        match UploadRegistry::load(&self.config.state_dir) {
            Ok(r) => self.registry = Some(r),
            Err(e) => notes.push(format!(
                "note: uploads registry not usable (left untouched): {e}"
            )),
        }
        notes
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
            let what = match c {
                Check::Unchanged(meta) => {
                    out.unchanged.push((e.group.clone(), meta, e.path.clone()));
                    continue;
                }
                Check::Changed => "changed since it was shared",
                Check::Vanished => "is gone",
            };
            out.reports.push(format!(
                "{} {what}; no longer sharing {} in {}",
                e.path.display(),
                e.name,
                e.group
            ));
            drop_list.push((e.group, e.name));
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
        peers: Vec<std::net::SocketAddr>,
        dest: PathBuf,
        ticket: Option<&str>,
    ) -> Result<(), String> {
        self.begin_download(registry, group, meta, peers, dest, ticket)
    }

    /// Fresh seeder addresses for a running download (the loop asks the tracker periodically).
    pub fn update_peers(
        &mut self,
        registry: &Registry,
        group: &str,
        name: &str,
        peers: Vec<SocketAddr>,
        ticket: Option<&str>,
    ) {
        for dl in 0..self.downloads.len() {
            let d = &self.downloads[dl];
            if d.is_active() && d.group == group && d.meta.name == name {
                self.set_ticket(dl, ticket);
                self.renew_auth(dl);
                let d = &mut self.downloads[dl];
                d.add_peers(&peers);
                for p in &peers {
                    if let Some(kp) = d.peers.get_mut(p) {
                        if !kp.banned && kp.conn.is_none() {
                            kp.next_try = Instant::now();
                        }
                    }
                }
                self.connect_peers(registry, dl);
            }
        }
    }

    /// After a login (typed or automatic): every running download that already
    /// announced itself does so again (partial), since the old session's seeding
    /// is gone.
    pub fn reannounce_downloads(&mut self) {
        for d in self
            .downloads
            .iter()
            .filter(|d| d.is_active() && d.announced)
        {
            self.tracker_jobs.push(TrackerJob::AddSeeder {
                group: d.group.clone(),
                name: d.meta.name.clone(),
                file_sha1: d.meta.file_sha1_hex(),
                partial: true,
            });
        }
    }

    /// Informational lines for the user (stderr) since the last call.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Requests for the tracker queued since the last call.
    pub fn take_tracker_jobs(&mut self) -> Vec<TrackerJob> {
        std::mem::take(&mut self.tracker_jobs)
    }

    /// One `show_downloads` line per download.
    pub fn status_lines(&self) -> Vec<String> {
        self.downloads
            .iter()
            .map(|d| d.status_line(self.live_peers(d)))
            .collect()
    }

    /// Connections of a download whose server answered the handshake.
    fn live_peers(&self, d: &Download) -> usize {
        d.conn_keys()
            .filter(|k| self.conns.get(*k).is_some_and(|c| c.handshake_done()))
            .count()
    }

    /// Downloads still running (end of input waits for them).
    pub fn active_downloads(&self) -> usize {
        self.downloads.iter().filter(|d| d.is_active()).count()
    }

    /// The downloads still running (end of input waits for them), for the
    /// controller's peer refresh.
    pub fn running_downloads(&self) -> Vec<RunningDownload> {
        self.downloads
            .iter()
            .filter(|d| d.is_active())
            .map(|d| RunningDownload {
                group: d.group.clone(),
                name: d.meta.name.clone(),
                needs_peers: d.state == crate::downloads::DlState::Running
                    && !d.picker.is_complete(),
            })
            .collect()
    }

    /// Pieces each peer address served, per download (for logs and tests).
    pub fn served_by(&self) -> Vec<HashMap<SocketAddr, u64>> {
        self.downloads.iter().map(|d| d.served_by.clone()).collect()
    }
}

/// Whether a serving connection is past its time: no valid `Auth` within
/// `REQUEST_TIMEOUT` of connecting, or silent for longer than
/// [`SERVE_IDLE_TIMEOUT`] after its ticket check.
fn serve_stale(c: &PeerConn, now: Instant) -> bool {
    match c.role {
        Role::Serve(ServeState::AwaitAuth { .. }) => {
            now.duration_since(c.started) > REQUEST_TIMEOUT
        }
        Role::Serve(ServeState::Serving { .. }) => {
            now.duration_since(c.last_rx) > SERVE_IDLE_TIMEOUT
        }
        _ => false,
    }
}
