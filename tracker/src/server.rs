//! The mio event loop: the listener, client connections in a [`Slab`], the
//! group-commit mutation path and the watcher that applies other trackers' lines.
//!
//! One loop turn: accept, read what the sockets have (bounded per connection),
//! apply lines other trackers appended (the watcher: at least every 50 ms, and
//! before answering, so a request sent after another tracker's reply sees that
//! tracker's change), answer every complete request (mutations: lock the log,
//! catch up, validate and apply in one SQLite transaction, append all lines with
//! one write + fsync, commit, unlock, and only then queue the replies), flush.
//!
//! With `--replication raft` ([`RaftMode`], `server_raft.rs`) a turn's changes are
//! proposed to the Raft log instead and answered once applied here, connections
//! that greet as a tracker go to the Raft driver, and there is no watcher.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use wire::command::CommandKind;
use wire::tracker_msg::{LineFramer, Reply, Request, MAX_REQUEST_LINE};

use crate::commands::{self, Ctx, Outcome};
use crate::limits::{ConnCaps, Idle, Limits, OutBudget, OUT_HIGH};
use crate::login_limits::{LoginLimiter, LoginLimits};
use crate::login_pool::{Done, Job, LoginPool};
use crate::metrics::{self, Metrics};
use crate::replication::driver::PEER_TOKEN_BASE;
use crate::replication::peer_frame::is_peer_greeting;
use crate::snapshot::{CacheCopy, Step};
use crate::snapshot_job::{Progress, SnapshotJob};
use crate::store::{self, Applied, Store};
use crate::sync_log::{LogEntry, LogError, Stop, SyncLog};
use crate::TrackerError;

#[path = "server_raft.rs"]
mod raft_hook;
pub use raft_hook::{RaftMode, NO_QUORUM};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// The watcher's period: the poll timeout when nothing else is pending.
const TICK: Duration = Duration::from_millis(50);
/// Bytes read from one socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per loop turn, so one busy client cannot
/// starve the others.
const READ_BUDGET: usize = 1024 * 1024;
/// Capacity an idle connection's output buffer keeps after it drained.
const OUT_KEEP: usize = 64 * 1024;
/// Parsed requests waiting per connection before reading pauses.
const INBOX_HIGH: usize = 1024;
/// Requests answered per connection per loop turn: bounds the reply bytes a
/// turn can queue on a connection that does not read them.
const MAX_ANSWERS_PER_TURN: usize = 64;
/// Threads of the login pool (each argon2 hash holds 19 MiB while it runs).
const LOGIN_THREADS: usize = 2;
/// Log bytes read and applied per transaction when catching up.
const CATCH_UP_CHUNK: usize = 16 * 1024 * 1024;
/// Free space the data dir must have for a change to be appended to the log, so
/// that the SQLite cache (same dir) can still commit what the log acknowledges.
const MIN_FREE_BYTES: u64 = 1024 * 1024;

/// Fault injection (`--test-exit-after-apply`): the process ends when this turn
/// applied a change of `kind`, after the log append and before any reply is sent.
fn exit_if_applied(kind: CommandKind, work: &[Work], replies: &[Option<Reply>]) {
    let applied = work.iter().zip(replies).any(|(w, reply)| {
        matches!(&w.item, Ok(r) if r.command == kind.name())
            && matches!(reply, Some(Reply::Ok { .. }))
    });
    if applied {
        log::warn!("test fault injection: exiting after applying {kind}, before replying");
        std::process::exit(86);
    }
}

/// One request to answer this turn: the connection's key, the request (or a
/// framing error to report) and, for `login`/`create_user`, what the login
/// pool's argon2 found.
struct Work {
    key: usize,
    /// The connection's source IP (seeder addresses use it).
    ip: IpAddr,
    item: Result<Request, String>,
    argon2: Option<Done>,
}

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub tracker_no: u32,
    pub seeder_timeout_ms: u64,
    /// Tests only: exit right after applying a change of this command, unanswered.
    pub test_exit_after_apply: Option<CommandKind>,
    /// Connection caps and idle timeouts.
    pub limits: Limits,
    /// Wrong-password back-off.
    pub login_limits: LoginLimits,
    /// Sessions unused this long are refused.
    pub session_idle_ms: u64,
    /// The ticket signing key `file_info` uses (issue 12).
    pub tickets: Option<&'static crate::tickets::TicketIssuer>,
    /// Shared-log mode: compact the log ([`crate::snapshot`]) once it holds
    /// this many entries (0: never).
    pub snapshot_every: u64,
    /// Tests only: each snapshot copy, once made, is held until this file
    /// exists ([`SnapshotJob`]'s gate).
    pub test_snapshot_gate: Option<&'static std::path::Path>,
}

/// One client connection's state.
struct Conn {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    /// The source IP the connection is counted under in [`ConnCaps`].
    ip: IpAddr,
    /// Last request and whether it logged in (for the idle timeout).
    idle: Idle,
    /// Unique for the tracker's lifetime (slab keys are reused): the login
    /// pool's ticket.
    id: u64,
    /// A `login`/`create_user` at the login pool; later requests wait.
    at_pool: Option<(Instant, Request)>,
    /// It came back: answered first next turn.
    from_pool: Option<(Instant, Request, Done)>,
    framer: LineFramer,
    /// Requests (or framing errors to report) in arrival order, each with
    /// when its line was complete.
    inbox: VecDeque<(Instant, Result<Request, String>)>,
    out: Vec<u8>,
    out_pos: usize,
    /// The socket may hold unread bytes (edge-triggered: read until WouldBlock).
    more_to_read: bool,
    /// The peer closed its side; answer what is queued, then close.
    eof: bool,
    /// A socket error: drop the connection.
    dead: bool,
    /// Its first line was read (a tracker's greeting can only be the first).
    first_line_seen: bool,
    /// Its first line was a tracker's Raft greeting: handed to the Raft driver.
    greeting: Option<Vec<u8>>,
    /// Raft mode: a change of it is proposed; nothing else is answered meanwhile.
    awaiting: bool,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Requests are waiting and replies may be queued.
    fn can_answer(&self) -> bool {
        (!self.inbox.is_empty() || self.from_pool.is_some())
            && self.at_pool.is_none()
            && !self.awaiting
            && !self.dead
            && self.unsent() < OUT_HIGH
    }

    fn can_read(&self) -> bool {
        self.more_to_read
            && self.greeting.is_none()
            && !self.eof
            && !self.dead
            && self.unsent() < OUT_HIGH
            && self.inbox.len() < INBOX_HIGH
    }

    /// Reads up to the per-turn budget and frames complete lines into requests.
    fn read_some(&mut self, buf: &mut [u8]) {
        let mut budget = READ_BUDGET;
        while budget > 0 && self.inbox.len() < INBOX_HIGH {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    self.more_to_read = false;
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.framer.push(&buf[..n]);
                    let now = Instant::now();
                    self.idle.last_active = now;
                    while let Some(line) = self.framer.next_line() {
                        if !std::mem::replace(&mut self.first_line_seen, true) {
                            if let Some(l) = line.as_ref().ok().filter(|l| is_peer_greeting(l)) {
                                self.greeting = Some(l.clone());
                                self.more_to_read = false;
                                return;
                            }
                        }
                        let item = line
                            .and_then(|l| Request::decode(&l))
                            .map_err(|e| e.to_string());
                        self.inbox.push_back((now, item));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.more_to_read = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read from {:?}: {e}", self.peer);
                    self.dead = true;
                    return;
                }
            }
        }
    }

    /// Writes queued reply bytes until done or the socket is full.
    fn flush(&mut self) {
        while self.unsent() > 0 && !self.dead {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => self.dead = true,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("write to {:?}: {e}", self.peer);
                    self.dead = true;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new(); // a big reply's buffer is not kept
            }
        } else if self.out_pos > OUT_HIGH {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn finished(&self) -> bool {
        let idle = self.inbox.is_empty()
            && self.at_pool.is_none()
            && self.from_pool.is_none()
            && !self.awaiting;
        self.dead || (self.eof && idle && self.unsent() == 0)
    }
}

/// The tracker's event loop and everything it owns.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    log: SyncLog,
    store: Store,
    cfg: Config,
    shutdown: Arc<AtomicBool>,
    /// Log length at the watcher's last look.
    watched_len: u64,
    /// Offset of a torn tail already reported by the watcher.
    reported_torn: Option<u64>,
    /// The log is damaged or changed under this tracker (why, as one line):
    /// every change is refused until an operator repairs it and restarts.
    log_fault: Option<String>,
    /// The cache failed to commit lines the log holds (e.g. the disk filled up
    /// between the two): reads are refused, not answered stale, and the watcher
    /// retries the catch-up every turn until it succeeds.
    cache_behind: bool,
    /// Counters the operator view reads ([`crate::operator_view`]).
    metrics: Arc<Metrics>,
    /// Open connections in total and per source IP.
    caps: ConnCaps,
    /// argon2 for `login` and `create_user`, off the loop.
    pool: LoginPool,
    /// Wrong-password back-off per user and per source IP.
    login_limiter: LoginLimiter,
    /// The next connection's [`Conn::id`].
    next_conn_id: u64,
    /// `--replication raft`: the Raft driver and the changes in flight.
    raft: Option<RaftMode>,
    /// The snapshot copy in flight off the loop (both modes).
    snapshots: SnapshotJob,
}

impl Server {
    /// Registers the listener; `shutdown` is set by signals or `quit` on stdin.
    pub fn new(
        listener: std::net::TcpListener,
        log: SyncLog,
        store: Store,
        cfg: Config,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(Server, Arc<Waker>), TrackerError> {
        let poll = Poll::new().map_err(TrackerError::Poll)?;
        listener.set_nonblocking(true).map_err(TrackerError::Poll)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(TrackerError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(TrackerError::Poll)?);
        let pool = LoginPool::start(LOGIN_THREADS, Arc::clone(&waker))?;
        Ok((
            Server {
                poll,
                listener,
                conns: Slab::new(),
                log,
                store,
                cfg,
                shutdown,
                watched_len: 0,
                reported_torn: None,
                log_fault: None,
                cache_behind: false,
                metrics: Arc::new(Metrics::new(&commands::names())),
                caps: ConnCaps::new(cfg.limits.max_conns, cfg.limits.max_conns_per_ip),
                pool,
                login_limiter: LoginLimiter::new(cfg.login_limits),
                next_conn_id: 0,
                raft: None,
                snapshots: SnapshotJob::new(
                    crate::snapshot_job::RETRY_AFTER,
                    cfg.test_snapshot_gate.map(std::path::Path::to_path_buf),
                ),
            },
            waker,
        ))
    }

    /// The loop's counters, for the operator view.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Switches to `--replication raft` (before [`Server::run`]).
    /// `waker` (the one [`Server::new`] returned) wakes the loop when the Raft
    /// writer thread made a write durable.
    pub fn enable_raft(
        &mut self,
        mut mode: RaftMode,
        waker: Arc<Waker>,
    ) -> Result<(), TrackerError> {
        mode.driver_mut()
            .start_writer(waker)
            .map_err(|e| TrackerError::Raft(e.to_string()))?;
        self.raft = Some(mode);
        Ok(())
    }

    /// Runs until the shutdown flag is set.
    pub fn run(&mut self) -> Result<(), TrackerError> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_CHUNK];
        while !self.shutdown.load(Ordering::SeqCst) {
            let busy = self
                .conns
                .iter()
                .any(|(_, c)| c.can_read() || c.can_answer());
            let mut timeout = if busy { Duration::ZERO } else { TICK };
            if let Some(mode) = &self.raft {
                timeout = timeout.min(mode.driver().timeout(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(TrackerError::Poll(e));
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) if key >= PEER_TOKEN_BASE => {
                        if let Some(mode) = &mut self.raft {
                            mode.driver_mut()
                                .on_event(event.token(), event, Instant::now());
                        }
                    }
                    Token(key) => {
                        if let Some(c) = self.conns.get_mut(key) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                c.more_to_read = true;
                            }
                            if event.is_writable() {
                                c.flush();
                            }
                        }
                    }
                }
            }
            for (_, c) in self.conns.iter_mut() {
                if c.can_read() {
                    c.read_some(&mut buf);
                }
            }
            self.hand_over_peers();
            // Apply other trackers' new lines before answering: a request sent
            // after another tracker's reply then sees that tracker's change.
            if self.raft.is_none() {
                self.watch();
            }
            self.collect_from_pool();
            self.send_to_pool();
            self.answer();
            self.raft_turn(&mut buf)?;
            self.flush_and_reap();
            if self.raft.is_none() {
                self.maybe_compact();
            }
        }
        log::info!("tracker {} shutting down", self.cfg.tracker_no);
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if let Err(why) = self.caps.admit(peer.ip()) {
                        // Closed at once, so one address's idle sockets never
                        // keep a client from another address out.
                        log::debug!("connection from {peer} refused: {why}");
                        let _ = stream.write(&Reply::err(why).encode());
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register connection from {peer}: {e}");
                        self.caps.release(peer.ip());
                        continue;
                    }
                    log::debug!("connection from {peer}");
                    self.next_conn_id += 1;
                    self.metrics.connections_accepted.inc();
                    entry.insert(Conn {
                        stream,
                        peer: Some(peer),
                        ip: peer.ip(),
                        idle: Idle::new(Instant::now()),
                        id: self.next_conn_id,
                        at_pool: None,
                        from_pool: None,
                        framer: LineFramer::new(MAX_REQUEST_LINE),
                        inbox: VecDeque::new(),
                        out: Vec::new(),
                        out_pos: 0,
                        more_to_read: true,
                        eof: false,
                        dead: false,
                        first_line_seen: false,
                        greeting: None,
                        awaiting: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of file descriptors: keep serving the others.
                    log::warn!("accept: {e}");
                    break;
                }
            }
        }
        self.metrics.open_connections.set(self.conns.len() as u64);
    }

    fn flush_and_reap(&mut self) {
        let mut gone = Vec::new();
        let now = Instant::now();
        for (key, c) in self.conns.iter_mut() {
            if c.unsent() > 0 {
                c.flush();
            }
            if !c.dead && c.idle.expired(&self.cfg.limits, now) {
                log::debug!("connection from {:?} idle too long: closed", c.peer);
                c.dead = true;
            }
            if c.finished() {
                gone.push(key);
            }
        }
        for key in gone {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.caps.release(c.ip);
            log::debug!("connection from {:?} closed", c.peer);
        }
        self.metrics.open_connections.set(self.conns.len() as u64);
    }

    /// Answers every request that arrived this turn, in order per connection.
    /// A connection's next request waits (back in its inbox) once its queued
    /// replies reach [`OUT_HIGH`], checked before each request is handled.
    fn answer(&mut self) {
        let mut work: Vec<Work> = Vec::new();
        let mut arrived: Vec<Instant> = Vec::new();
        let mut budget = OutBudget::new(OUT_HIGH);
        let raft = self.raft.is_some();
        for (key, c) in self.conns.iter_mut() {
            if c.dead {
                c.inbox.clear();
                continue;
            }
            if c.unsent() >= OUT_HIGH || c.at_pool.is_some() || c.awaiting {
                continue; // backpressure, or a login at the pool comes first
            }
            budget.start(key, c.unsent());
            let mut after_change = false;
            if let Some((at, req, done)) = c.from_pool.take() {
                after_change = raft; // login/create_user: a change
                arrived.push(at);
                work.push(Work {
                    key,
                    ip: c.ip,
                    item: Ok(req),
                    argon2: Some(done),
                });
            }
            // Up to the next login/create_user: it goes to the pool next turn.
            let n = c
                .inbox
                .iter()
                .take(MAX_ANSWERS_PER_TURN)
                .take_while(
                    |(_, item)| !matches!(item, Ok(r) if commands::needs_argon2(&r.command)),
                )
                .count();
            let n = match (raft, after_change) {
                (false, _) => n,
                (true, true) => 0,
                (true, false) => raft_hook::cut_at_change(c.inbox.iter(), n),
            };
            let ip = c.ip;
            work.extend(c.inbox.drain(..n).map(|(at, item)| {
                arrived.push(at);
                Work {
                    key,
                    ip,
                    item,
                    argon2: None,
                }
            }));
        }
        if work.is_empty() {
            return;
        }
        let ctx = Ctx {
            now_ms: crate::unix_ms(),
            seeder_timeout_ms: self.cfg.seeder_timeout_ms,
            peer_ip: None,
            session_idle_ms: self.cfg.session_idle_ms,
            tickets: self.cfg.tickets,
        };
        let replies = self.replies(&work, &ctx, &mut budget);
        if let Some(kind) = self.cfg.test_exit_after_apply {
            exit_if_applied(kind, &work, &replies);
        }
        let now = Instant::now();
        let mut proposed = self.take_proposed();
        let mut waiting: Vec<(Instant, Work)> = Vec::new();
        for (i, ((w, reply), at)) in work.into_iter().zip(replies).zip(arrived).enumerate() {
            let Some(reply) = reply else {
                match proposed.remove(&i) {
                    Some((id, reply)) => self.await_commit(id, w, &ctx, reply, at),
                    None => waiting.push((at, w)),
                }
                continue;
            };
            self.count_request(&w.item, &reply, now.saturating_duration_since(at));
            self.note_login(&w, &reply);
            if let Some(c) = self.conns.get_mut(w.key) {
                c.idle.logged_in |= logs_in(&w.item, &reply);
                c.out.extend_from_slice(&reply.encode());
            }
        }
        for (at, w) in waiting.into_iter().rev() {
            if let Some(c) = self.conns.get_mut(w.key) {
                match (w.item, w.argon2) {
                    (Ok(req), Some(done)) => c.from_pool = Some((at, req, done)),
                    (item, _) => c.inbox.push_front((at, item)),
                }
            }
        }
    }

    /// Feeds the login limiter with a login's outcome.
    fn note_login(&mut self, w: &Work, reply: &Reply) {
        let (Ok(req), Some(Done::Verified(_))) = (&w.item, &w.argon2) else {
            return;
        };
        let (Some(c), Some(user)) = (self.conns.get(w.key), req.args.first()) else {
            return;
        };
        match reply {
            Reply::Ok { .. } => self.login_limiter.succeeded(user),
            Reply::Err(_) => self.login_limiter.failed(user, c.ip, Instant::now()),
        }
    }

    /// Takes what the login pool finished: each answered next (first) for its
    /// connection, if that is still open.
    fn collect_from_pool(&mut self) {
        while let Some((ticket, done)) = self.pool.finished() {
            let Some((key, c)) = self.conns.iter_mut().find(|(_, c)| c.id == ticket) else {
                continue; // the connection closed meanwhile
            };
            let _ = key;
            if let Some((at, req)) = c.at_pool.take() {
                c.from_pool = Some((at, req, done));
            }
        }
    }

    /// Sends each connection's next `login`/`create_user` (if it is next) to
    /// the login pool, or answers it at once: a usage error, a taken name, or
    /// a login backed off after wrong passwords (no argon2 for those).
    fn send_to_pool(&mut self) {
        let now = Instant::now();
        let mut answered: Vec<(Request, Reply)> = Vec::new();
        for (_, c) in self.conns.iter_mut() {
            for _ in 0..MAX_ANSWERS_PER_TURN {
                if c.dead || c.at_pool.is_some() || c.from_pool.is_some() || c.unsent() >= OUT_HIGH
                {
                    break;
                }
                let Some((at, Ok(req))) = c.inbox.front() else {
                    break;
                };
                if !commands::needs_argon2(&req.command) {
                    break;
                }
                let at = *at;
                let Some((_, Ok(req))) = c.inbox.pop_front() else {
                    break;
                };
                match to_pool(self.store.conn(), &self.login_limiter, c.ip, &req, now) {
                    Ok(job) => {
                        self.pool.submit(c.id, job);
                        c.at_pool = Some((at, req));
                    }
                    Err(reply) => {
                        c.out.extend_from_slice(&reply.encode());
                        answered.push((req, reply));
                    }
                }
            }
        }
        for (req, reply) in answered {
            if matches!(&reply, Reply::Err(e) if e.starts_with(TOO_MANY_FAILED)) {
                self.metrics.rate_limited_logins.inc();
            }
            self.count_request(&Ok(req), &reply, Duration::ZERO);
        }
    }

    /// One reply per work item, `None` for a request that waits for its
    /// connection's replies to drain (it was not handled).
    fn replies(&mut self, work: &[Work], ctx: &Ctx, budget: &mut OutBudget) -> Vec<Option<Reply>> {
        let mutates = work
            .iter()
            .any(|w| matches!(&w.item, Ok(r) if commands::may_mutate(&r.command)));
        let all = |reply: Reply| work.iter().map(|_| Some(reply.clone())).collect();
        if mutates && self.raft.is_some() {
            return self.propose_batch(work, ctx, budget);
        }
        if mutates {
            return match self.commit_batch(work, ctx, budget) {
                Ok(replies) => replies,
                Err(e) if self.note_log_fault(&e) => {
                    all(Reply::err(format!("change not made: {e}")))
                }
                Err(e) => {
                    log::error!("batch of {} requests failed: {e}", work.len());
                    all(Reply::err(format!("internal error, nothing changed: {e}")))
                }
            };
        }
        if self.cache_behind {
            let behind = "nothing read: this tracker's cache is behind its log \
                          (is the data dir full?); try again";
            return work
                .iter()
                .map(|w| match &w.item {
                    Err(msg) => Some(Reply::err(msg)),
                    Ok(_) => Some(Reply::err(behind)),
                })
                .collect();
        }
        match self.store.read_transaction() {
            Ok(snapshot) => work
                .iter()
                .map(|w| {
                    if !budget.admits(w.key) {
                        return None;
                    }
                    let reply = match handle(&snapshot, w, ctx) {
                        Outcome::Reply(r) => r,
                        Outcome::Mutate { .. } => Reply::err("internal error: unexpected change"),
                    };
                    budget.charge(w.key, &reply);
                    Some(reply)
                })
                .collect(),
            Err(e) => all(Reply::err(format!("internal error, nothing read: {e}"))),
        }
    }

    /// Requests by command and outcome, their latency, failed logins.
    fn count_request(&self, item: &Result<Request, String>, reply: &Reply, took: Duration) {
        let command = match item {
            Ok(req) => req.command.as_str(),
            Err(_) => metrics::INVALID_COMMAND,
        };
        let outcome = match reply {
            Reply::Err(_) => metrics::Outcome::Error,
            _ => metrics::Outcome::Ok,
        };
        if command == "login" && outcome == metrics::Outcome::Error {
            self.metrics.failed_logins.inc();
        }
        self.metrics.requests.record(command, outcome);
        self.metrics.request_seconds.observe(took);
    }

    /// The mutation path: one lock, one transaction, one write + fsync for the
    /// whole turn. Returns one reply per work item, sent only after this returns.
    fn commit_batch(
        &mut self,
        work: &[Work],
        ctx: &Ctx,
        budget: &mut OutBudget,
    ) -> Result<Vec<Option<Reply>>, TrackerError> {
        if let Some(why) = &self.log_fault {
            let reply = Reply::err(format!("change not made: {why}"));
            return Ok(work.iter().map(|_| Some(reply.clone())).collect());
        }
        let _lock = self.log.lock_current(true)?;
        let caught = catch_up(&self.log, &mut self.store)?;
        if let Some(stop) = caught.stop {
            // Only a torn tail is cut; damage is an error (and a fault).
            let at = self.log.judge_stop(&stop)?;
            self.log
                .cut_torn_tail(at, "a line left by an append that did not finish")?;
        }
        let before = self.store.applied()?;
        let base = before.offset.max(self.log.first_entry());
        let len = self.log.file_len()?;
        if len != base {
            return Err(TrackerError::Behind { applied: base, len });
        }
        let tx = self.store.transaction()?;
        let first_seq = before.lines + 1;
        let staged = stage(
            &tx,
            work,
            ctx,
            budget,
            self.cfg.tracker_no,
            (base, first_seq),
        )?;
        if staged.lines.is_empty() {
            return Ok(staged.replies);
        }
        let fsync = &self.metrics.log_fsync_seconds;
        if let Err(refusal) = append_durably(&self.log, &staged.lines, base, fsync) {
            drop(tx); // rolls back
            return Ok(work.iter().map(|_| Some(refusal.clone())).collect());
        }
        log::debug!(
            "appended {} log lines, made durable together",
            staged.lines.len()
        );
        self.metrics.changes_appended.add(staged.lines.len() as u64);
        let after = Applied {
            offset: staged.end,
            lines: before.lines + staged.lines.len() as u64,
        };
        let committed = store::set_applied(&tx, after).and_then(|()| tx.commit());
        if let Err(e) = &committed {
            // The lines are durable in the log; the watcher's catch-up applies them.
            log::error!("cache commit failed (the log has the change): {e}");
        }
        self.cache_behind = committed.is_err();
        self.watched_len = staged.end;
        Ok(staged.replies)
    }

    /// The watcher: applies lines other trackers appended since the last look,
    /// and notices a log that shrank, changed or is damaged under this tracker.
    fn watch(&mut self) {
        if self.log_fault.is_some() || !self.log_moved() {
            return; // (with a fault, changes are refused; reads go on from the cache as it is)
        }
        let result = self
            .log
            .lock_current(false)
            .map_err(TrackerError::from)
            .and_then(|_lock| {
                let caught = catch_up(&self.log, &mut self.store)?;
                match &caught.stop {
                    Some(stop) => Ok((caught.lines, Some(self.log.judge_stop(stop)?))),
                    None => Ok((caught.lines, None)),
                }
            });
        match result {
            Ok((_, Some(torn_at))) => {
                if self.reported_torn != Some(torn_at) {
                    log::warn!(
                        "sync log: a torn tail at byte offset {torn_at} (an append that did not \
                         finish); not applied, cut by the next change"
                    );
                    self.reported_torn = Some(torn_at);
                }
            }
            Ok((lines, None)) if lines > 0 => {
                self.metrics.changes_applied_from_others.add(lines);
                log::debug!("applied {lines} lines from other trackers")
            }
            Ok(_) => {}
            Err(e) if self.note_log_fault(&e) => return,
            Err(e) => {
                if !self.cache_behind {
                    log::error!("applying new log lines: {e}");
                }
                self.cache_behind = true;
                return;
            }
        }
        if self.cache_behind {
            log::info!("the cache caught up with the log again");
            self.cache_behind = false;
        }
    }

    /// Shared-log mode: once the log holds `snapshot_every` entries past its
    /// base, starts a copy of the cache off the loop ([`SnapshotJob`]); a turn
    /// after it finished, installs it and compacts the log
    /// ([`crate::snapshot::install`]). A failure leaves the log as it was and
    /// is retried a minute later.
    fn maybe_compact(&mut self) {
        let every = self.cfg.snapshot_every;
        let now = Instant::now();
        match self.snapshots.poll(now) {
            Progress::InFlight => return,
            // A log found damaged meanwhile is not rewritten.
            Progress::Finished(copy) if self.log_fault.is_some() => {
                let _ = std::fs::remove_file(&copy.tmp);
                return;
            }
            Progress::Finished(copy) => return self.install_snapshot(&copy, now),
            Progress::Failed(why) => {
                log::error!("the snapshot failed, the log is kept as it is: {why}");
                return;
            }
            Progress::Idle => {}
        }
        if every == 0 || self.log_fault.is_some() || self.cache_behind {
            return;
        }
        let due = self.snapshots.can_start(now)
            && self
                .store
                .applied()
                .is_ok_and(|a| a.lines >= self.log.base().lines.saturating_add(every));
        if due {
            self.start_snapshot(every, now);
        }
    }

    /// Starts the copy of the cache if the log (maybe just compacted by
    /// another tracker) still holds `every` entries past its base.
    fn start_snapshot(&mut self, every: u64, now: Instant) {
        let cache = match crate::snapshot::due(&mut self.log, &mut self.store, every) {
            Ok(false) => return,
            Ok(true) => crate::snapshot::cache_file(&self.store),
            Err(e) => Err(e),
        };
        match cache {
            Ok(cache) => {
                let applied = self.store.applied().map_or(0, |a| a.lines);
                log::info!(
                    "tracker {}: snapshot of the cache started off the loop ({applied} entries)",
                    self.cfg.tracker_no
                );
                self.snapshots.start(now, move || {
                    crate::snapshot::copy(&cache).map_err(|e| e.to_string())
                });
            }
            Err(e) if self.note_log_fault(&e) => {}
            Err(e) => {
                log::error!("compaction failed, the log is kept as it is: {e}");
                self.snapshots.failed(now);
            }
        }
    }

    /// Installs a finished copy as the snapshot and compacts the log after it.
    fn install_snapshot(&mut self, copy: &CacheCopy, started: Instant) {
        match crate::snapshot::install(&mut self.log, copy, Step::Done) {
            Ok(Some(base)) => {
                self.metrics.snapshots_taken.inc();
                log::info!(
                    "tracker {}: snapshot taken and log compacted: it now starts after entry {} \
                     (installed in {} ms)",
                    self.cfg.tracker_no,
                    base.lines,
                    started.elapsed().as_millis()
                );
            }
            Ok(None) => log::info!("the snapshot was overtaken by a newer one: dropped"),
            Err(e) if self.note_log_fault(&e) => {}
            Err(e) => {
                log::error!("compaction failed, the log is kept as it is: {e}");
                self.snapshots.failed(started);
            }
        }
    }

    /// For the watcher: whether the log may hold lines the cache lacks: it grew
    /// since the last look, the cache is behind, or another tracker compacted
    /// it (a new file at its path, whose length says nothing yet).
    fn log_moved(&mut self) -> bool {
        let looked = self.log.replaced().and_then(|replaced| {
            let len = self.log.file_len()?;
            Ok((replaced, len))
        });
        let (replaced, len) = match looked {
            Ok(found) => found,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        if replaced {
            self.watched_len = 0;
            return true;
        }
        if len == self.watched_len && !self.cache_behind {
            return false;
        }
        self.watched_len = len;
        match self.store.applied() {
            Ok(a) if len == a.offset.max(self.log.first_entry()) => {
                self.cache_behind = false;
                false
            }
            Ok(_) => true,
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    /// If `e` says the log is damaged or changed under this tracker, records it
    /// (changes are refused from now on), logs it once and returns true.
    fn note_log_fault(&mut self, e: &TrackerError) -> bool {
        if !matches!(
            e,
            TrackerError::Log(LogError::Damaged { .. } | LogError::Changed { .. })
        ) {
            return false;
        }
        if self.log_fault.is_none() {
            log::error!("{e}");
            log::error!(
                "tracker {}: refusing every change from now on",
                self.cfg.tracker_no
            );
            self.log_fault = Some(e.to_string());
        }
        true
    }
}

/// Handles one work item against `db`: a framing error is its reply; a
/// `login`/`create_user` needs the pool's result (argon2 never runs here).
fn handle(db: &rusqlite::Connection, w: &Work, ctx: &Ctx) -> Outcome {
    match (&w.item, &w.argon2) {
        (Err(msg), _) => Outcome::Reply(Reply::err(msg)),
        (Ok(req), Some(done)) => commands::finish(db, ctx, req, done),
        (Ok(req), None) if commands::needs_argon2(&req.command) => {
            Outcome::Reply(Reply::err("internal error: login not checked"))
        }
        (Ok(req), None) => {
            let ctx = Ctx {
                peer_ip: Some(w.ip),
                ..*ctx
            };
            commands::handle(db, req, &ctx)
        }
    }
}

/// Start of the refusal of a backed-off login.
const TOO_MANY_FAILED: &str = "too many failed logins";

/// The pool's job for a `login`/`create_user`, or the reply it gets at once.
fn to_pool(
    db: &rusqlite::Connection,
    limiter: &LoginLimiter,
    ip: IpAddr,
    req: &Request,
    now: Instant,
) -> Result<Job, Reply> {
    use wire::command::TrackerCommand;
    match req.parse_command().map_err(Reply::err)? {
        TrackerCommand::Login { user, password } => {
            if let Err(wait) = limiter.check(&user, ip, now) {
                let secs = wait.as_secs_f64().ceil().max(1.0);
                return Err(Reply::err(format!(
                    "{TOO_MANY_FAILED}; try again in {secs} s"
                )));
            }
            let phc = crate::store::user_password_hash(db, &user)
                .map_err(|e| Reply::err(format!("internal error, nothing read: {e}")))?;
            Ok(Job::Verify { password, phc })
        }
        TrackerCommand::CreateUser { user, password } => {
            if req.request_id.is_none() {
                // (A retried change with an id is judged after hashing: it
                // may be one applied already, answered with its reply.)
                commands::check_new_user(db, &user, &password)?;
            }
            Ok(Job::Hash { password })
        }
        _ => Err(Reply::err("internal error: not a login")),
    }
}

/// Whether answering `item` with `reply` shows the connection is logged in (a
/// successful login, or any request with a session that succeeded).
fn logs_in(item: &Result<Request, String>, reply: &Reply) -> bool {
    matches!(reply, Reply::Ok { .. })
        && matches!(item, Ok(r) if r.token.is_some() || r.command == CommandKind::Login.name())
}

/// A turn's requests handled inside the write transaction, before the append.
struct Staged {
    /// One reply per work item (`None`: not handled, it waits).
    replies: Vec<Option<Reply>>,
    /// The encoded log lines of the changes, in order.
    lines: Vec<String>,
    /// The log offset just after the last line, once appended.
    end: u64,
}

/// Handles each request of a batch in `tx`; a change is applied at once (so later
/// requests of the batch see it) and its line queued for the append at `base`,
/// numbered from `seq` on.
fn stage(
    tx: &rusqlite::Transaction<'_>,
    work: &[Work],
    ctx: &Ctx,
    budget: &mut OutBudget,
    tracker_no: u32,
    (base, mut seq): (u64, u64),
) -> Result<Staged, TrackerError> {
    let mut staged = Staged {
        replies: Vec::with_capacity(work.len()),
        lines: Vec::new(),
        end: base,
    };
    for w in work {
        if !budget.admits(w.key) {
            staged.replies.push(None);
            continue;
        }
        let outcome = handle(tx, w, ctx);
        let reply = match &outcome {
            Outcome::Reply(r) | Outcome::Mutate { reply: r, .. } => r,
        };
        budget.charge(w.key, reply);
        match outcome {
            Outcome::Reply(r) => staged.replies.push(Some(r)),
            Outcome::Mutate { op, reply } => {
                let entry = LogEntry {
                    ms: ctx.now_ms,
                    tracker: tracker_no,
                    request_id: w.item.as_ref().ok().and_then(|r| r.request_id.clone()),
                    op,
                };
                let line = entry.encode(seq);
                seq += 1;
                store::apply(tx, staged.end, &entry).map_err(store::StoreError::from)?;
                staged.end += line.len() as u64;
                staged.lines.push(line);
                staged.replies.push(Some(reply));
            }
        }
    }
    Ok(staged)
}

/// Appends `lines` at `base` and makes them durable, or says why not as the
/// reply every request of the batch gets (nothing changed). Refuses while the
/// data dir is nearly full: a line the log holds but the cache cannot commit
/// would be acknowledged yet invisible to reads. Needs the exclusive lock.
fn append_durably(
    log: &SyncLog,
    lines: &[String],
    base: u64,
    fsync: &metrics::Histogram,
) -> Result<(), Reply> {
    let free = log.free_bytes().unwrap_or(u64::MAX);
    if free < MIN_FREE_BYTES {
        log::error!("data dir nearly full ({free} bytes free): changes refused");
        return Err(Reply::err(format!(
            "change not made, the data dir is full ({free} bytes free)"
        )));
    }
    let started = Instant::now();
    let appended = log.append(lines);
    fsync.observe(started.elapsed());
    if let Err(e) = appended {
        if let Err(e2) = log.truncate(base) {
            log::error!("could not cut the failed append back off the log: {e2}");
        }
        log::error!("sync log append failed: {e}");
        return Err(Reply::err(format!(
            "change not made, the log write failed: {e}"
        )));
    }
    Ok(())
}

/// What a catch-up did.
#[derive(Debug, Default)]
pub struct CatchUp {
    pub lines: u64,
    pub stop: Option<Stop>,
}

/// Applies every complete, valid line after the store's applied offset, which
/// must still be a line start of the same log ([`SyncLog::check_position`]); the
/// first line read must carry the number after the cache's line count. Stops at
/// the end or at the first line that does not check out (`stop`): the caller
/// judges it ([`SyncLog::judge_stop`]). Needs a lock on the log.
pub fn catch_up(log: &SyncLog, store: &mut Store) -> Result<CatchUp, TrackerError> {
    let mut done = CatchUp::default();
    let mut applied = store.applied()?;
    if applied.lines < log.base().lines {
        crate::snapshot::load(store, log)?;
        applied = store.applied()?;
    }
    let mut from = applied.offset.max(log.first_entry());
    let mut seq = applied.lines + 1;
    log.check_position(from)?;
    loop {
        let batch = log.read_from(from, seq, CATCH_UP_CHUNK)?;
        if !batch.entries.is_empty() {
            store.apply_entries(&batch.entries, batch.end)?;
            done.lines += batch.entries.len() as u64;
        }
        (from, seq) = (batch.end, batch.next_seq);
        match batch.stop {
            None if batch.entries.is_empty() => return Ok(done),
            None => {}
            Some(stop) => {
                done.stop = Some(stop);
                return Ok(done);
            }
        }
    }
}
