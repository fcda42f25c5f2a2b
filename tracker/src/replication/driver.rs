//! `RaftDriver`: runs this tracker's [`RaftNode`] on the server's mio loop
//! (`--replication raft`): the peer links' sockets, the tick, and each `Ready` in
//! raft-rs's order (persist, send, apply, advance).
//!
//! # Links
//! Every tracker dials every other one ([`PeerLink::connect`]) and sends its Raft
//! messages only on the link it dialled; links the others dialled to it (handed over
//! by the server when a connection's first line is the greeting,
//! [`RaftDriver::adopt`]) only receive. So each direction has one TCP connection,
//! and neither side has to agree with the other on who keeps which. A dialled link
//! that fails (refused, reset, or bytes not moving for [`STALL`]: a partition) is
//! closed and dialled again after a back-off that doubles from 100 ms to 1 s.
//! A message for a tracker whose link is down, or whose send queue holds more than
//! [`MAX_QUEUE`] bytes, is dropped and raft-rs is told (`report_unreachable`): Raft
//! itself retransmits. A message is checked against the queue before it is added, so
//! the queue holds at most `MAX_QUEUE` plus one message: a snapshot larger than a
//! frame is queued whole, as parts the link writes (and MACs) as the socket drains,
//! at most [`WRITE_BUDGET`] bytes per link per loop turn. An accepted connection must authenticate within
//! [`HANDSHAKE_TIME`]; at most [`MAX_ACCEPTED`] accepted links exist at once.
//!
//! # Membership
//! Each tick the leader takes one step toward the trackers of tracker_info.txt
//! ([`RaftNode::reconcile_membership`]); a listed tracker counts as reachable, so
//! worth adding, once a Raft message from it arrived within [`SILENCE`] or a link
//! with it is authenticated.
//!
//! # Time
//! One Raft tick every [`TICK`] (50 ms): an election after [`ELECTION_TICKS`] to
//! twice that without a leader (0.8-1.6 s), a heartbeat every [`HEARTBEAT_TICKS`]
//! (100 ms: two small messages per follower per 100 ms); a follower whose link to the
//! leader breaks (a killed leader's sockets close at once) campaigns after the rest
//! of its randomised timeout instead ([`RaftNode::link_lost`]). A change not committed within
//! [`PROPOSAL_DEADLINE`] fails with `ERR no quorum: the change was not made`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use raft::prelude::{Message, MessageType};
use slab::Slab;

use super::machine::{LogMachine, MachineFault, Recheck};
use super::node::{NodeError, ProposalId, ProposeError, RaftNode, ReceivedSnapshot, StateMachine};
use super::peer_frame::{fresh_nonce, LinkEvent, LinkLimits, PeerLink};
use super::tracker_list::TrackerList;

/// Tokens at and above this are peer links (the server's are below).
pub const PEER_TOKEN_BASE: usize = usize::MAX / 2;
/// Raft's logical clock.
pub const TICK: Duration = Duration::from_millis(50);
/// Ticks without a leader before a follower campaigns (randomised up to twice this).
pub const ELECTION_TICKS: usize = 16;
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// SPEC: a change without quorum is refused within 5 s (margin for the loop turn).
pub const PROPOSAL_DEADLINE: Duration = Duration::from_millis(4500);
/// Unsent bytes per link beyond which messages are dropped.
pub const MAX_QUEUE: usize = 8 << 20;
/// A dialled link whose unsent bytes do not move for this long is closed.
pub const STALL: Duration = Duration::from_secs(3);
/// A dialled link that carried messages while nothing came back from its tracker
/// (on any link) for this long is closed and dialled again: after a partition
/// heals, a fresh connection beats waiting out TCP's retransmission back-off.
pub const SILENCE: Duration = Duration::from_secs(3);
/// An accepted link must authenticate within this.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// Accepted links at once (authenticated or not).
pub const MAX_ACCEPTED: usize = 64;
const READ_BUDGET: usize = 8 << 20;
/// Bytes written to one link per flush: a snapshot (whose frames are MACed as they
/// are written) goes out over several loop turns, clients answered between them.
const WRITE_BUDGET: usize = 8 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One tracker-to-tracker connection.
struct PeerConn {
    stream: TcpStream,
    link: PeerLink,
    /// Set on a link this tracker dialled: the tracker at the other end.
    dialled: Option<u64>,
    /// A dialled connection completed (its first writable event said so).
    connected: bool,
    readable: bool,
    /// The last flush stopped at its budget, not at a full socket: write more
    /// next turn without waiting for an event.
    more_to_write: bool,
    opened: Instant,
    /// Last time unsent bytes moved (or there were none).
    progress: Instant,
    /// Last time a message was queued on it.
    last_send: Option<Instant>,
    dead: bool,
}

impl PeerConn {
    fn unsent(&self) -> usize {
        self.link.unsent()
    }

    fn flush(&mut self, now: Instant) {
        self.more_to_write = false;
        if self.dialled.is_some() && !self.connected {
            return;
        }
        let mut budget = WRITE_BUDGET;
        while self.unsent() > 0 && !self.dead {
            if budget == 0 {
                self.more_to_write = true;
                break;
            }
            match self.link.write_to(&mut self.stream) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
        if self.unsent() == 0 {
            self.progress = now;
        }
    }

    /// Reads what the socket has (up to a budget) into the link; its Raft messages.
    fn read(&mut self, buf: &mut [u8]) -> Vec<Message> {
        let mut msgs = Vec::new();
        let mut budget = READ_BUDGET;
        while budget > 0 && !self.dead {
            match self.stream.read(buf) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    match self.link.receive(&buf[..n]) {
                        Ok(events) => msgs.extend(events.into_iter().filter_map(|e| match e {
                            LinkEvent::Message(m) => Some(*m),
                            LinkEvent::Authenticated { peer } => {
                                log::info!("raft link with tracker {peer} authenticated");
                                None
                            }
                        })),
                        Err(e) => {
                            log::warn!("raft link {:?}: {e}; closed", self.stream.peer_addr());
                            self.dead = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
        msgs
    }
}

/// Where to dial one other tracker, and the state of that link.
struct Dial {
    addr: String,
    conn: Option<usize>,
    next_try: Instant,
    backoff: Duration,
}

/// What a turn finished: proposals committed and applied here, and failed ones.
#[derive(Debug, Default)]
pub struct Finished {
    pub committed: Vec<ProposalId>,
    pub failed: Vec<ProposalId>,
}

/// The node, its links and its clock.
pub struct RaftDriver {
    node: RaftNode,
    me: u64,
    voters: Vec<u64>,
    key: [u8; 32],
    limits: LinkLimits,
    links: Slab<PeerConn>,
    dials: BTreeMap<u64, Dial>,
    next_tick: Instant,
    /// When a message from each tracker last arrived.
    last_heard: BTreeMap<u64, Instant>,
    /// tracker_info.txt, read again while the tracker runs ([`Self::relist`]).
    list: Option<TrackerList>,
}

impl RaftDriver {
    /// `peers`: every other tracker's number and `HOST:PORT`; `limits` for every link.
    pub fn new(
        node: RaftNode,
        key: [u8; 32],
        limits: LinkLimits,
        peers: Vec<(u64, String)>,
        now: Instant,
    ) -> Self {
        let me = node.id();
        let mut voters: Vec<u64> = peers.iter().map(|p| p.0).chain([me]).collect();
        voters.sort_unstable();
        let dials = peers
            .into_iter()
            .map(|(no, addr)| {
                let dial = Dial {
                    addr,
                    conn: None,
                    next_try: now,
                    backoff: BACKOFF_MIN,
                };
                (no, dial)
            })
            .collect();
        RaftDriver {
            node,
            me,
            voters,
            key,
            limits,
            links: Slab::new(),
            dials,
            next_tick: now + TICK,
            last_heard: BTreeMap::new(),
            list: None,
        }
    }

    /// Reads tracker_info.txt again while the tracker runs (see `tracker_list`).
    pub fn watch_list(&mut self, list: TrackerList) {
        self.list = Some(list);
    }

    /// tracker_info.txt now lists `trackers` (addresses, numbered by their place):
    /// the leader steps toward it, and every listed tracker is dialled at its
    /// address (a link to a changed one is closed and dialled again). No dial is
    /// dropped: a tracker no longer listed may still be a member, which the leader
    /// must reach to tell it that it was removed.
    pub fn relist(&mut self, trackers: Vec<String>, now: Instant) {
        let me = self.me;
        let listed: Vec<u64> = (1..=trackers.len() as u64).collect();
        log::info!(
            "tracker {me}: tracker_info.txt now lists {} trackers",
            listed.len()
        );
        if !listed.contains(&me) {
            log::warn!(
                "tracker {me} is not listed in tracker_info.txt any more: the leader removes it"
            );
        }
        for (no, addr) in listed.iter().copied().zip(trackers) {
            if no == me {
                continue;
            }
            let dial = self.dials.entry(no).or_insert_with(|| Dial {
                addr: addr.clone(),
                conn: None,
                next_try: now,
                backoff: BACKOFF_MIN,
            });
            if dial.addr != addr {
                dial.addr = addr;
                dial.next_try = now;
                dial.backoff = BACKOFF_MIN;
                if let Some(c) = dial.conn.and_then(|k| self.links.get_mut(k)) {
                    c.dead = true;
                }
            }
            if !self.voters.contains(&no) {
                self.voters.push(no);
                self.voters.sort_unstable();
            }
        }
        self.node.relist(listed);
    }

    /// Hands the Raft log's writes to a thread of their own (see `raft_writer`);
    /// `waker` wakes this loop when one became durable.
    pub fn start_writer(&mut self, waker: std::sync::Arc<mio::Waker>) -> Result<(), NodeError> {
        self.node.start_writer(Some(waker))
    }

    /// This tracker's replica (status and tests).
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Proposes one sync-log line; the outcome comes from a later [`Self::turn`].
    pub fn propose(&mut self, line: Vec<u8>, now: Instant) -> Result<ProposalId, ProposeError> {
        self.node.propose(line, now)
    }

    /// Takes over a client-port connection whose first line was the greeting.
    pub fn adopt(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        first: &[u8],
        now: Instant,
    ) {
        if self
            .links
            .iter()
            .filter(|(_, l)| l.dialled.is_none())
            .count()
            >= MAX_ACCEPTED
        {
            log::warn!(
                "too many raft links; one from {:?} closed",
                stream.peer_addr()
            );
            return;
        }
        let entry = self.links.vacant_entry();
        let token = Token(PEER_TOKEN_BASE + entry.key());
        if let Err(e) =
            registry.reregister(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot register a raft link: {e}");
            return;
        }
        let link = PeerLink::accept(
            self.key,
            self.me,
            self.voters.clone(),
            fresh_nonce(),
            self.limits,
        );
        let mut conn = PeerConn {
            stream,
            link,
            dialled: None,
            connected: true,
            readable: true,
            more_to_write: false,
            opened: now,
            progress: now,
            last_send: None,
            dead: false,
        };
        if let Err(e) = conn.link.receive(first) {
            log::warn!("raft link {:?}: {e}; closed", conn.stream.peer_addr());
            return;
        }
        entry.insert(conn);
    }

    /// A readiness event for one of this driver's tokens.
    pub fn on_event(&mut self, token: Token, event: &Event, now: Instant) {
        let Some(c) = self.links.get_mut(token.0 - PEER_TOKEN_BASE) else {
            return;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            c.readable = true;
        }
        if event.is_writable() {
            if !c.connected {
                match (c.stream.take_error(), c.stream.peer_addr()) {
                    (Ok(None), Ok(_)) => c.connected = true,
                    _ => c.dead = true,
                }
            }
            c.flush(now);
        }
    }

    /// How long the loop may sleep before the driver needs a turn.
    pub fn timeout(&self, now: Instant) -> Duration {
        let io_left = |c: &PeerConn| (c.readable || c.more_to_write) && !c.dead;
        if self.node.has_ready() || self.links.iter().any(|(_, c)| io_left(c)) {
            return Duration::ZERO;
        }
        let dial = self
            .dials
            .values()
            .filter(|d| d.conn.is_none())
            .map(|d| d.next_try);
        let at = [self.next_tick]
            .into_iter()
            .chain(self.node.next_deadline())
            .chain(dial)
            .min()
            .unwrap_or(self.next_tick);
        at.saturating_duration_since(now)
    }

    /// One loop turn: dial, read and step, tick, handle the `Ready` (apply through
    /// `machine`, calling `recheck` on this tracker's own changes), flush, reap.
    pub fn turn(
        &mut self,
        registry: &Registry,
        machine: &mut LogMachine<'_>,
        recheck: &mut Recheck<'_>,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Finished, NodeError> {
        self.dial_due(registry, now);
        self.read_links(buf, now);
        if now >= self.next_tick {
            self.node.tick();
            self.next_tick = now + TICK;
            if let Some(trackers) = self.list.as_mut().and_then(|l| l.poll(now)) {
                self.relist(trackers, now);
            }
            self.reconcile_membership(now);
        }
        let mut finished = Finished::default();
        if self.node.has_ready() || self.node.next_deadline().is_some_and(|d| d <= now) {
            let mut actions = self.node.handle_ready(now)?;
            for msg in std::mem::take(&mut actions.messages) {
                self.send(msg, now);
            }
            if let Some(snap) = actions.snapshot.take() {
                self.start_restore(machine, snap)?;
            }
            machine
                .apply_committed(&actions.committed, recheck)
                .map_err(|e| NodeError::Machine(Box::new(e)))?;
            self.node.maybe_snapshot(machine)?;
            finished.committed = actions
                .committed
                .iter()
                .filter_map(|c| c.proposal)
                .collect();
            finished.failed = actions.failed;
        } else if self.node.snapshot_awaited() {
            // A snapshot made off the loop is picked up when it is done.
            self.node.maybe_snapshot(machine)?;
        }
        self.finish_restore(machine)?;
        machine
            .commit_due(now)
            .map_err(|e| NodeError::Machine(Box::new(e)))?;
        self.flush_and_reap(registry, now);
        Ok(finished)
    }

    /// On the leader, one conf change toward the trackers of tracker_info.txt
    /// ([`RaftNode::reconcile_membership`]): a tracker is added only once it runs
    /// and holds the key: a Raft message from it arrived within [`SILENCE`], or a
    /// link with it is authenticated (a blank tracker sends nothing before a
    /// leader reaches it: [`RaftNode::waits_to_join`]).
    fn reconcile_membership(&mut self, now: Instant) {
        let heard = &self.last_heard;
        let links = &self.links;
        let reachable = |n: u64| {
            heard
                .get(&n)
                .is_some_and(|&at| now.duration_since(at) < SILENCE)
                || links
                    .iter()
                    .any(|(_, c)| !c.dead && c.link.is_open() && c.link.peer() == Some(n))
        };
        self.node.reconcile_membership(&reachable);
    }

    /// A received snapshot: restored off the loop when the node waits for it
    /// (written behind), else at once.
    fn start_restore(
        &mut self,
        machine: &mut LogMachine<'_>,
        snap: ReceivedSnapshot,
    ) -> Result<(), NodeError> {
        if self.node.restoring().is_some() {
            log::info!(
                "tracker {}: restoring a snapshot at Raft index {} ({} bytes) off the loop",
                self.me,
                snap.index,
                snap.data.len()
            );
            machine
                .start_restore(snap.index, snap.data)
                .map_err(|e| NodeError::Machine(Box::new(e)))
        } else {
            machine
                .restore(snap.index, snap.data)
                .map_err(NodeError::Machine)
        }
    }

    /// Installs the restore in flight once its files are written and Raft's
    /// storage holds the snapshot, and tells the node (see `node.rs`).
    fn finish_restore(&mut self, machine: &mut LogMachine<'_>) -> Result<(), NodeError> {
        if self.node.restoring().is_none() || !self.node.restore_written()? {
            return Ok(());
        }
        let machine_err = |e: MachineFault| NodeError::Machine(Box::new(e));
        if let Some(prepared) = machine.poll_restore() {
            machine.install_restore(prepared).map_err(machine_err)?;
            self.node.restore_installed();
        }
        Ok(())
    }

    fn read_links(&mut self, buf: &mut [u8], now: Instant) {
        let mut inbox = Vec::new();
        for (_, c) in self.links.iter_mut() {
            if c.readable && !c.dead {
                inbox.extend(c.read(buf));
            }
        }
        for msg in inbox {
            self.last_heard.insert(msg.from, now);
            if let Err(e) = self.node.step(msg) {
                log::debug!("tracker {}: raft message not stepped: {e}", self.me);
            }
        }
    }

    /// Queues `msg` on the link to `msg.to`, or tells raft-rs it could not.
    fn send(&mut self, msg: Message, now: Instant) {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let conn = self
            .dials
            .get(&to)
            .and_then(|d| d.conn)
            .and_then(|k| self.links.get_mut(k))
            .filter(|c| c.link.is_open() && !c.dead && c.unsent() < MAX_QUEUE);
        let sent = match conn {
            Some(c) => match c.link.send(&msg) {
                Ok(()) => {
                    c.last_send = Some(now);
                    true
                }
                Err(e) => {
                    log::warn!("raft link to tracker {to}: {e}");
                    c.dead = true;
                    false
                }
            },
            None => false,
        };
        if !sent {
            self.node.report_unreachable(to);
        }
        if snapshot {
            self.node.report_snapshot(to, sent);
        }
    }

    fn dial_due(&mut self, registry: &Registry, now: Instant) {
        for (&no, dial) in self.dials.iter_mut() {
            if dial.conn.is_some() || dial.next_try > now {
                continue;
            }
            dial.next_try = now + dial.backoff;
            dial.backoff = (dial.backoff * 2).min(BACKOFF_MAX);
            let Some(addr) = dial.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
                log::warn!("tracker {no}: cannot resolve {}", dial.addr);
                continue;
            };
            let mut stream = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("dialling tracker {no} at {addr}: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let entry = self.links.vacant_entry();
            let token = Token(PEER_TOKEN_BASE + entry.key());
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            let link = PeerLink::connect(self.key, self.me, no, fresh_nonce(), self.limits);
            let conn = PeerConn {
                stream,
                link,
                dialled: Some(no),
                connected: false,
                readable: false,
                more_to_write: false,
                opened: now,
                progress: now,
                last_send: None,
                dead: false,
            };
            dial.conn = Some(entry.key());
            entry.insert(conn);
        }
    }

    fn flush_and_reap(&mut self, registry: &Registry, now: Instant) {
        let mut gone = Vec::new();
        for (key, c) in self.links.iter_mut() {
            c.flush(now);
            let stalled = c.unsent() > 0 && now.duration_since(c.progress) > STALL;
            let unproven = !c.link.is_open() && now.duration_since(c.opened) > HANDSHAKE_TIME;
            let unanswered = c.dialled.is_some_and(|no| {
                let heard = self
                    .last_heard
                    .get(&no)
                    .copied()
                    .unwrap_or(c.opened)
                    .max(c.opened);
                c.last_send.is_some_and(|s| now.duration_since(s) < SILENCE)
                    && now.duration_since(heard) > SILENCE
            });
            if stalled || unproven || unanswered {
                c.dead = true;
            }
            if c.dead {
                gone.push(key);
            }
        }
        for key in gone {
            let mut c = self.links.remove(key);
            let _ = registry.deregister(&mut c.stream);
            if let Some(no) = c.dialled {
                log::debug!("tracker {}: link to tracker {no} closed", self.me);
                if let Some(d) = self.dials.get_mut(&no) {
                    d.conn = None;
                }
                self.node.report_unreachable(no);
                if c.link.is_open() {
                    self.node.link_lost(no);
                }
            }
        }
        for d in self.dials.values_mut() {
            let open = d
                .conn
                .and_then(|k| self.links.get(k))
                .is_some_and(|c| c.link.is_open());
            if open {
                d.backoff = BACKOFF_MIN;
            }
        }
    }
}
