//! `RaftNode`: one tracker's Raft replica, sans-IO (in the style of quinn-proto).
//!
//! The node wraps raft-rs's `RawNode` over [`RaftStorage`]. It never touches a socket
//! or a clock: the owner feeds it ticks, received messages, proposals and the current
//! time, and carries out the [`Actions`] it returns. The one I/O it does itself is its
//! own storage (the fsync of a `Ready`), because raft-rs reads that storage back.
//!
//! # Driving it (the tracker's mio loop)
//! ```text
//! every tick interval:   node.tick()
//! per received message:  node.step(msg)        (only from an authenticated peer link)
//! per client change:     id = node.propose(data, now)?   (remember id -> client)
//! once per loop turn:    let mut a = node.handle_ready(now)?;   // persisted + fsynced
//!                        send every a.messages[i] to tracker a.messages[i].to
//!                        node.apply(&mut state_machine, a.snapshot.take(), &a.committed)?
//!                        reply OK to the client of each a.committed[i].proposal
//!                        reply `ERR no quorum: the change was not made` to each a.failed
//!                        log/act on a.role
//! poll timeout:          min(next tick, node.next_deadline()), 0 if node.has_ready()
//! ```
//! This is raft-rs's order: persist, send, apply, advance (the node advances raft-rs
//! inside `handle_ready`; the caller must apply `committed` before the next call).
//! Many proposals may be made between two `handle_ready` calls: they share one fsync.
//!
//! # Written behind (`start_writer`, what the tracker does)
//! With a [`RaftWriter`] the fsync leaves the loop (raft-rs's async ready): each
//! `Ready`'s entries and hard state are staged in [`RaftStorage`] (raft-rs reads them
//! back from memory) and queued for the thread, and `advance_append_async` lets
//! raft-rs go on. What may go before the write goes at once: a leader's appends
//! (Raft thesis 10.2.1: the leader's own write and its followers' run in parallel).
//! What promises the write (a follower's append acknowledgement, a granted vote) is
//! held and sent by the first `handle_ready` after the thread reports that `Ready`
//! durable, which is also when raft-rs learns it (`on_persist_ready`): so a leader
//! counts its own log toward a commit only once it is on disk, and committed entries
//! handed out to apply (raft-rs gives only ones up to its persisted index) are on
//! this tracker's disk and a majority's. A `Ready` carrying a received snapshot is
//! staged and written behind the same way (its row replaces the log), and the state
//! machine restores it off the loop too. Its messages (the acknowledgement of the
//! snapshot) and later ones go out as the writer makes them durable, as always; but
//! raft-rs is told that `Ready` is persisted (`on_persist_ready`) only once the owner
//! also reports the restored state installed ([`RaftNode::restore_installed`]), so it
//! hands out no entry after the snapshot before the state it applies to is there.
//! Meanwhile the node does not campaign, and further snapshots from the leader are
//! dropped (one restore at a time; the leader sends it again).
//! `has_ready` is true when the thread finished a write; it wakes the loop through
//! the waker it was given.
//!
//! # Proposals through any tracker
//! Each proposal's entry carries a 24-byte context: proposer tracker, boot nonce (random
//! per process start) and sequence number. A follower's `propose` is forwarded to the
//! leader by raft-rs (`MsgPropose`); while no leader is known proposals wait in a
//! bounded queue. When an entry commits, the tracker that proposed it recognises its own
//! context and reports the proposal done (`Committed::proposal`) as it applies it, so
//! it replies only after applying locally. A proposal not committed within
//! `proposal_deadline` (SPEC: 5 s) is reported in `Actions::failed`. Caveat: "failed"
//! means "not committed as far as this tracker knew at the deadline"; an entry already
//! handed to a leader may still commit later if a quorum returns before it is
//! overwritten, so changes must stay safe to retry (the exactly-once request ids).
//!
//! # Snapshots
//! [`StateMachine::snapshot`] is asked for every `snapshot_every` applied entries (and
//! each turn after, until the machine, which makes it off the loop, has it) and
//! stored with the log before it compacted; a lagging or empty tracker receives it
//! from the leader and restores it ([`StateMachine::restore`] through
//! [`RaftNode::apply`], or off the loop by the owner: see "Written behind"). While a newer one is being made,
//! raft-rs gets the stored one, or `SnapshotTemporarilyUnavailable` (it asks again).
//!
//! # Membership (conf changes)
//! The membership is the ConfState Raft committed, kept in [`RaftStorage`]; a new
//! storage starts with every tracker of tracker_info.txt (`NodeConfig::voters`).
//! The leader brings the cluster to the listed trackers one simple conf change at
//! a time ([`RaftNode::reconcile_membership`]: make a learner that has caught up
//! a voter, else add the smallest listed tracker missing once it is reachable, as
//! a learner, else remove the largest one not listed, never itself; the next only
//! after the previous is applied). Committed conf change
//! entries are applied in `collect` (raft-rs's `apply_conf_change`, then the
//! storage keeps the new ConfState, written like the hard state) and never reach
//! the state machine. The stored ConfState is written behind the state machine's
//! apply, so at open the conf changes up to the applied index are applied again
//! from the log. A removed tracker refuses changes ([`ProposeError::Removed`]);
//! the leader sends it the entries up to its removal, committed, since raft-rs
//! sends it nothing more; changes a non-member forwards are dropped.
//!
//! # Limits (known, for the integration step)
//! - Membership changes are simple (one tracker at a time, no joint consensus); a
//!   new tracker is a learner until its log is within `PROMOTE_WITHIN` entries of
//!   the commit index. The leader never removes itself: a tracker being removed
//!   that leads must be stopped first (then another leader removes it).
//! - A tracker whose data dir was wiped rejoins under its old id with no memory of its
//!   vote; raft-rs assumes votes are durable, so in theory it could vote twice in one
//!   term (only if it restarts within the very election it voted in). The node copes
//!   with the rest of a wipe (`guard_lost_log`): it catches up by snapshot.
//! - A change forwarded to a leader that just became unreachable is lost with that
//!   message and fails at its deadline; the owner should keep proposals from a tracker
//!   whose link to the leader is down, or let the client retry (request ids dedupe).
//! - `check_quorum` and `pre_vote` are on: a leader cut off from the majority steps
//!   down after an election timeout; a rejoining tracker does not disrupt the leader.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use raft::prelude::*;
use raft::{GetEntriesContext, SnapshotStatus, StateRole, Storage, INVALID_ID};

use super::raft_log;
use super::raft_writer::{RaftWriter, WriterError};
use super::storage::{RaftStorage, StorageError, SNAPSHOT_IDLE};

/// How long [`RaftNode::apply`] waits for a received snapshot to be durable.
const RESTORE_WRITE_LIMIT: Duration = Duration::from_secs(30);

/// The error a state machine reports; it stops the node's loop.
pub type MachineError = Box<dyn std::error::Error + Send + Sync>;

/// What the replicated log drives: the tracker's store plugs in here.
pub trait StateMachine {
    /// The index of the last entry applied (0: none); durable with the state.
    fn applied_index(&self) -> u64;
    /// Applies one committed entry's data; `index` only grows.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<(), MachineError>;
    /// A consistent copy of the whole state and the index it covers, made
    /// without blocking: starts one if none is being made, and returns one once
    /// it is done (`None` meanwhile: the node asks again next turn).
    fn snapshot(&mut self) -> Result<Option<(u64, Vec<u8>)>, MachineError>;
    /// Replaces the whole state by a snapshot covering `index` (shared bytes: a
    /// received snapshot is not copied).
    fn restore(&mut self, index: u64, data: bytes::Bytes) -> Result<(), MachineError>;
}

/// Tuning of a node; [`NodeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This tracker's number (1-based line of tracker_info.txt), its Raft id.
    pub id: u64,
    /// Every tracker of tracker_info.txt, this one included: the voters of a
    /// brand-new storage, and the membership a leader brings the cluster to
    /// ([`RaftNode::reconcile_membership`]).
    pub voters: Vec<u64>,
    /// Ticks without a leader before an election (randomised up to twice this).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// A proposal not committed within this is reported failed (SPEC: 5 s).
    pub proposal_deadline: Duration,
    /// Take a state machine snapshot (and compact) every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept before a snapshot, so a slightly lagging follower needs none.
    pub keep_entries: u64,
    /// Proposals waiting at once, beyond which `propose` refuses.
    pub max_pending: usize,
    /// Largest append message (bytes of entries), and in-flight appends per follower.
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Committed entries handed out per `Ready` (bytes; at least one entry): a
    /// tracker catching up applies a long tail over several loop turns, answering
    /// clients between them.
    pub max_apply_per_ready: u64,
}

impl NodeConfig {
    /// Defaults for a tick of 100 ms: election after 1-2 s, heartbeat every 200 ms
    /// (the tracker's driver sets its own, `driver::ELECTION_TICKS`).
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        NodeConfig {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 2,
            proposal_deadline: Duration::from_secs(5),
            snapshot_every: 10_000,
            keep_entries: 1_000,
            max_pending: 100_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_apply_per_ready: 1 << 20,
        }
    }
}

/// Names one proposal made through this node, unique for the process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalId(pub u64);

/// A committed entry to apply, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
    /// Set when this node proposed it and still waits for it: reply once applied.
    pub proposal: Option<ProposalId>,
}

/// A snapshot received from the leader, to restore before applying `committed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSnapshot {
    pub index: u64,
    /// Shared with the message it came in (no copy).
    pub data: bytes::Bytes,
}

/// This node's role after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    pub role: StateRole,
    pub leader: Option<u64>,
    pub term: u64,
}

/// What an operator sees of this replica (`/metrics`, `/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftProgress {
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: &'static str,
    pub term: u64,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    /// On the leader, each tracker's match index (its own included); empty elsewhere.
    pub matched: Vec<(u64, u64)>,
    /// Times this node saw a new leader (or lost the one it had).
    pub leader_changes: u64,
    /// Snapshots this node took (each compacts Raft's log).
    pub snapshots_taken: u64,
    /// The voters Raft committed (as applied here).
    pub voters: Vec<u64>,
    /// The learners: trackers being added, catching up before they vote.
    pub learners: Vec<u64>,
}

/// What one `handle_ready` asks of the owner; storage is already persisted.
#[derive(Debug, Default)]
pub struct Actions {
    /// To send, each to tracker `msg.to`.
    pub messages: Vec<Message>,
    pub snapshot: Option<ReceivedSnapshot>,
    pub committed: Vec<Committed>,
    pub role: Option<RoleChange>,
    /// Proposals that missed their deadline: `ERR no quorum: the change was not made`.
    pub failed: Vec<ProposalId>,
}

/// Why the node stopped: its storage or state machine failed, or raft-rs refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("state machine: {0}")]
    Machine(MachineError),
    #[error("the state machine has applied up to {applied} but the Raft log ends at {last}: its data dir is inconsistent (remove the cache db to rebuild it)")]
    MachineAhead { applied: u64, last: u64 },
}

/// Why a message from a peer was not stepped (the link may log and go on).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("message for tracker {to} reached tracker {me}")]
    NotForMe { to: u64, me: u64 },
    #[error("raft refused the message: {0}")]
    Refused(raft::Error),
}

/// Why a proposal was refused at once (nothing was proposed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("busy: {0} changes are waiting for the cluster")]
    TooManyPending(usize),
    #[error("this tracker was removed from the cluster: the change was not made")]
    Removed,
}

const CONTEXT_LEN: usize = 24;

/// A learner within this many entries of the commit index is made a voter.
const PROMOTE_WITHIN: u64 = 100;
/// Ticks (5 s) an unlisted leader waits after handing over the lead before it may
/// try again ([`RaftNode::reconcile_membership`]).
const HAND_OVER_TICKS: usize = 100;

/// A proposal handed to raft-rs: kept until it commits or its deadline passes, so
/// it can be handed to a new leader if the one it went to is gone.
struct Pending {
    deadline: Instant,
    data: Vec<u8>,
    /// The leader it was handed to.
    via: u64,
}

/// One tracker's Raft replica.
pub struct RaftNode {
    raw: RawNode<RaftStorage>,
    config: NodeConfig,
    boot: u64,
    next_seq: u64,
    /// Handed to raft-rs, waiting to commit (seq and deadline both ascending).
    pending: BTreeMap<u64, Pending>,
    /// Waiting for a leader to be known: (seq, data, deadline).
    queued: VecDeque<(u64, Vec<u8>, Instant)>,
    /// (is leader, leader) last logged at info level.
    logged_role: (bool, u64),
    /// Messages of the node's own making, sent with the next `handle_ready`.
    outbox: Vec<Message>,
    /// See [`RaftProgress`].
    leader_changes: u64,
    snapshots_taken: u64,
    /// A snapshot was due and the state machine is making it off the loop: it is
    /// asked again every turn ([`RaftNode::snapshot_awaited`]) until it has it.
    snapshot_awaited: bool,
    /// Set: entries and hard state are written behind by this thread.
    writer: Option<RaftWriter>,
    /// The newest `Ready` handed to the writer, the newest it made durable, and
    /// the newest raft-rs was told is persisted (`on_persist_ready`; behind
    /// `durable_ready` while a snapshot is restored).
    staged_ready: u64,
    durable_ready: u64,
    persisted_ready: u64,
    /// Messages that promise durability, each held until that `Ready` is durable.
    held: VecDeque<(u64, Vec<Message>)>,
    /// The staged `Ready` carrying a received snapshot whose restore the state
    /// machine has not installed yet (its number and the snapshot's index):
    /// nothing from it on counts as persisted.
    restoring: Option<(u64, u64)>,
    /// A conf change that removed this tracker was applied (and none added it back).
    removed: bool,
    /// Ticks before an unlisted leader may hand over the lead again.
    hand_over_wait: usize,
}

impl RaftNode {
    /// Opens the node over its storage; a state machine behind the stored snapshot
    /// is first restored from it. `boot` must differ on every process start.
    pub fn open(
        config: NodeConfig,
        mut storage: RaftStorage,
        sm: &mut dyn StateMachine,
        boot: u64,
    ) -> Result<Self, NodeError> {
        if sm.applied_index() < storage.snapshot_index() {
            if let Some(snap) = storage.load_snapshot()? {
                sm.restore(snap.get_metadata().index, snap.data)
                    .map_err(NodeError::Machine)?;
            }
        }
        let applied = sm.applied_index();
        let last = storage.last_index()?;
        if applied > last {
            return Err(NodeError::MachineAhead { applied, last });
        }
        storage.raise_commit(applied)?;
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            max_committed_size_per_ready: config.max_apply_per_ready,
            ..Config::default()
        };
        let raw = RawNode::new(&raft_config, storage, &raft_log::logger(config.id))?;
        let mut node = RaftNode {
            raw,
            config,
            boot,
            next_seq: 1,
            pending: BTreeMap::new(),
            queued: VecDeque::new(),
            logged_role: (false, INVALID_ID),
            outbox: Vec::new(),
            leader_changes: 0,
            snapshots_taken: 0,
            snapshot_awaited: false,
            writer: None,
            staged_ready: 0,
            durable_ready: 0,
            persisted_ready: 0,
            held: VecDeque::new(),
            restoring: None,
            removed: false,
            hand_over_wait: 0,
        };
        node.replay_conf_changes(applied)?;
        node.warn_unlisted_members();
        // (A new storage holds this tracker, and so does any snapshot it restored.)
        node.removed = !node.is_member(node.config.id);
        if node.removed {
            log::warn!(
                "tracker {} was removed from the cluster: it refuses changes and can be stopped",
                node.config.id
            );
        }
        Ok(node)
    }

    /// The conf changes up to `applied` that the stored membership may lack (it is
    /// written behind the state machine's apply): applied again from Raft's log.
    /// Later ones come again from raft-rs, as every entry after `applied` does.
    fn replay_conf_changes(&mut self, applied: u64) -> Result<(), NodeError> {
        let from = self.raw.store().conf_index() + 1;
        if from > applied {
            return Ok(());
        }
        let ctx = GetEntriesContext::empty(false);
        let entries = self.raw.store().entries(from, applied + 1, None, ctx)?;
        for e in entries.iter().filter(|e| is_conf_change(e)) {
            self.apply_conf_entry(e);
        }
        if self.raw.store().conf_unwritten() {
            self.raw.mut_store().persist(None, &[], None)?;
        }
        Ok(())
    }

    /// From now on, entries and hard state are made durable by a writer thread while
    /// the loop goes on; `waker` is woken each time a write became durable.
    pub fn start_writer(
        &mut self,
        waker: Option<std::sync::Arc<mio::Waker>>,
    ) -> Result<(), NodeError> {
        if self.writer.is_none() {
            self.writer = Some(RaftWriter::start(self.raw.store().path(), waker)?);
        }
        Ok(())
    }

    /// Whether staged writes are still on their way to disk.
    pub fn persisting(&self) -> bool {
        self.staged_ready > self.durable_ready
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&l| l != INVALID_ID)
    }

    /// Advances Raft's logical clock by one tick. A node restoring a snapshot
    /// does not campaign (raft-rs may not lead with a snapshot not yet persisted;
    /// it still votes for others), nor does a blank one ([`Self::waits_to_join`]).
    pub fn tick(&mut self) {
        self.hand_over_wait = self.hand_over_wait.saturating_sub(1);
        if self.restoring.is_some() || self.waits_to_join() {
            self.raw.raft.election_elapsed = 0;
        }
        self.raw.tick();
    }

    /// A tracker with nothing in its Raft log (no entry, no snapshot) other than
    /// tracker 1 never campaigns: it waits for a leader to reach it. Its brand-new
    /// storage lists every tracker of tracker_info.txt as a voter, which is right
    /// for a brand-new cluster (tracker 1 bootstraps it: the blank others vote for
    /// it) but not for a tracker joining a running one: two blank trackers added
    /// to a one-tracker cluster (1 -> 3) would otherwise elect one of themselves
    /// with an empty log and overwrite the history. A wiped tracker waits the same
    /// way (it catches up by snapshot). A brand-new cluster therefore starts once
    /// tracker 1 runs.
    pub fn waits_to_join(&self) -> bool {
        let store = self.raw.store();
        self.config.id != 1
            && !self.is_leader()
            && store.snapshot_index() == 0
            && store.last_index().unwrap_or(0) == 0
    }

    /// Steps a message received from an authenticated peer.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        if msg.to != self.config.id {
            return Err(StepError::NotForMe {
                to: msg.to,
                me: self.config.id,
            });
        }
        if self.restoring.is_some() && msg.get_msg_type() == MessageType::MsgSnapshot {
            log::debug!(
                "tracker {}: a snapshot arrived during a restore: dropped",
                msg.to
            );
            return Ok(());
        }
        if msg.get_msg_type() == MessageType::MsgPropose && !self.is_member(msg.from) {
            log::debug!(
                "tracker {}: a change forwarded by tracker {}, not a member: dropped",
                msg.to,
                msg.from
            );
            return Ok(());
        }
        let msg = self.guard_lost_log(msg);
        self.raw.step(msg).map_err(StepError::Refused)
    }

    /// Copes with a tracker whose data dir was wiped (it rejoins with an empty log
    /// while the leader remembers it as caught up), which raft-rs would otherwise
    /// panic on (a heartbeat committing past its log) or stall on (its rejections
    /// look stale). As follower: such a heartbeat commits nothing. As leader: a
    /// follower reporting a log shorter than it had acknowledged is probed afresh,
    /// from where it really is, which ends in a snapshot.
    fn guard_lost_log(&mut self, mut msg: Message) -> Message {
        let id = self.config.id;
        let log = &self.raw.raft.raft_log;
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > log.last_index() {
            log::warn!(
                "tracker {id}: the leader counts on entries up to {} but this log ends at {}: it was lost; catching up",
                msg.commit,
                log.last_index()
            );
            // Tell the leader where this log really ends (a rejection it can act on).
            let mut reply = Message::default();
            reply.set_msg_type(MessageType::MsgAppendResponse);
            (reply.to, reply.from, reply.term) = (msg.from, id, msg.term);
            (reply.reject, reply.index, reply.reject_hint) = (true, msg.commit, log.last_index());
            self.outbox.push(reply);
            msg.commit = log.committed;
        }
        let lost =
            msg.get_msg_type() == MessageType::MsgAppendResponse && msg.reject && self.is_leader();
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(msg.from).filter(|_| lost) {
            if msg.reject_hint < pr.matched {
                log::warn!(
                    "tracker {id}: tracker {} lost its log (had {}, has {}); sending it a snapshot",
                    msg.from,
                    pr.matched,
                    msg.reject_hint
                );
                pr.matched = msg.reject_hint;
                pr.become_probe();
            }
        }
        msg
    }

    /// This tracker's link to `peer` broke. If `peer` is the leader, its process may
    /// be gone (a kill closes its sockets at once): its lease ends now, so this node
    /// campaigns after the rest of its randomised timeout (0 to `election_tick`
    /// ticks) instead of a whole one, and grants pre-votes to another follower that
    /// saw the same. A leader that is alive resets it with its next heartbeat.
    pub fn link_lost(&mut self, peer: u64) {
        let raft = &mut self.raw.raft;
        if raft.state == StateRole::Follower && raft.leader_id == peer {
            raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
        }
    }

    /// The transport could not reach `peer` (raft-rs slows down replication to it).
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    /// A snapshot message to `peer` was delivered (`true`) or lost.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(peer, status);
    }

    /// Proposes `data` for the replicated log. The outcome comes from a later
    /// `handle_ready`: `Committed::proposal` or `Actions::failed`.
    pub fn propose(&mut self, data: Vec<u8>, now: Instant) -> Result<ProposalId, ProposeError> {
        if self.removed {
            return Err(ProposeError::Removed);
        }
        let waiting = self.pending.len() + self.queued.len();
        if waiting >= self.config.max_pending {
            return Err(ProposeError::TooManyPending(waiting));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + self.config.proposal_deadline;
        if self.queued.is_empty() && self.try_submit(seq, &data) {
            self.track(seq, data, deadline);
        } else {
            self.queued.push_back((seq, data, deadline));
        }
        Ok(ProposalId(seq))
    }

    /// Hands a proposal to raft-rs if a leader is known; false if it must wait.
    fn try_submit(&mut self, seq: u64, data: &[u8]) -> bool {
        if self.leader().is_none() {
            return false;
        }
        let mut context = Vec::with_capacity(CONTEXT_LEN);
        context.extend_from_slice(&self.config.id.to_le_bytes());
        context.extend_from_slice(&self.boot.to_le_bytes());
        context.extend_from_slice(&seq.to_le_bytes());
        self.raw.propose(context, data.to_vec()).is_ok()
    }

    fn submit_queued(&mut self) {
        while let Some((seq, data, deadline)) = self.queued.pop_front() {
            if !self.try_submit(seq, &data) {
                self.queued.push_front((seq, data, deadline));
                return;
            }
            self.track(seq, data, deadline);
        }
    }

    /// A proposal handed to raft-rs (through the leader known now) waits to commit.
    fn track(&mut self, seq: u64, data: Vec<u8>, deadline: Instant) {
        let via = self.raw.raft.leader_id;
        self.pending.insert(
            seq,
            Pending {
                deadline,
                data,
                via,
            },
        );
    }

    /// Hands proposals that went to another leader to the current one: a leader
    /// that died or stepped down may have dropped them (forwarded proposals are not
    /// retried by raft-rs). One that did commit after all commits twice; entries
    /// are idempotent ([`crate::store::apply`]) and the second is not reported.
    fn resubmit_to_new_leader(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == INVALID_ID {
            return;
        }
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.via != leader)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in stale {
            let data = std::mem::take(&mut self.pending.get_mut(&seq).expect("listed").data);
            let submitted = self.try_submit(seq, &data);
            let p = self.pending.get_mut(&seq).expect("listed");
            p.data = data;
            if submitted {
                p.via = leader;
            }
        }
    }

    fn expire(&mut self, now: Instant, failed: &mut Vec<ProposalId>) {
        while let Some((&seq, p)) = self.pending.first_key_value() {
            if p.deadline > now {
                break;
            }
            self.pending.remove(&seq);
            failed.push(ProposalId(seq));
        }
        while self.queued.front().is_some_and(|q| q.2 <= now) {
            let (seq, ..) = self.queued.pop_front().expect("front checked");
            failed.push(ProposalId(seq));
        }
        failed.sort_unstable();
    }

    /// Whether `handle_ready` has work now (then the loop should not block).
    pub fn has_ready(&self) -> bool {
        let written = self.persisting()
            && self
                .writer
                .as_ref()
                .is_some_and(|w| w.durable().map_or(true, |d| d > self.durable_ready));
        let restored = self.persisted_cap(self.durable_ready) > self.persisted_ready;
        written
            || restored
            || self.raw.has_ready()
            || !self.outbox.is_empty()
            || (!self.queued.is_empty() && self.leader().is_some())
    }

    /// The earliest proposal deadline, for the loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.first_key_value().map(|(_, p)| p.deadline);
        let queued = self.queued.front().map(|q| q.2);
        pending.into_iter().chain(queued).min()
    }

    /// Persists what Raft needs (one fsync, or staged for the writer thread), then
    /// returns what to send, apply and report. See the module doc for the order the
    /// caller follows.
    pub fn handle_ready(&mut self, now: Instant) -> Result<Actions, NodeError> {
        let mut actions = Actions::default();
        self.note_durable(&mut actions.messages)?;
        self.submit_queued();
        self.resubmit_to_new_leader();
        self.expire(now, &mut actions.failed);
        actions.messages.append(&mut self.outbox);
        self.raw.mut_store().drop_idle_snapshot(now, SNAPSHOT_IDLE);
        if !self.raw.has_ready() {
            return Ok(actions);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            actions.role = self.note_role(ss.raft_state, ss.leader_id);
        }
        // A leader's appends may go before its own write (raft-rs puts them here).
        actions.messages.extend(rd.take_messages());
        if self.writer.is_some() {
            self.stage_ready(rd, &mut actions)?;
        } else {
            self.persist_ready(rd, &mut actions)?;
        }
        if self.restoring.is_none() {
            // (raft-rs's applied index may not pass its persisted one: a snapshot
            // being restored counts as applied once it is persisted.)
            self.raw.advance_apply();
        }
        Ok(actions)
    }

    /// The synchronous way: one fsync here, then what depends on it.
    fn persist_ready(&mut self, mut rd: Ready, actions: &mut Actions) -> Result<(), NodeError> {
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let committed = rd.take_committed_entries();
        self.raw
            .mut_store()
            .persist(snapshot.as_ref(), rd.entries(), rd.hs())?;
        actions.messages.extend(rd.take_persisted_messages());
        actions.snapshot = snapshot.map(|s| ReceivedSnapshot {
            index: s.get_metadata().index,
            data: s.data,
        });
        self.collect(committed, &mut actions.committed);
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        actions.messages.extend(light.take_messages());
        self.collect(light.take_committed_entries(), &mut actions.committed);
        if self.raw.store().conf_unwritten() {
            // A conf change applied above: its membership made durable now.
            self.raw.mut_store().persist(None, &[], None)?;
        }
        Ok(())
    }

    /// The written-behind way: the entries and hard state are staged (raft-rs reads
    /// them from memory) and queued for the writer; the messages that promise they are
    /// durable (votes, append acknowledgements) are held until the writer says so.
    /// Committed entries are ones this node already has durable (raft-rs hands out
    /// only entries up to its persisted index), so they may be applied at once.
    fn stage_ready(&mut self, mut rd: Ready, actions: &mut Actions) -> Result<(), NodeError> {
        let committed = rd.take_committed_entries();
        self.collect(committed, &mut actions.committed);
        let persisted = rd.take_persisted_messages();
        let number = rd.number();
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let store = self.raw.mut_store();
        if let Some(job) = store.stage(number, snapshot.as_ref(), rd.entries(), rd.hs()) {
            self.writer.as_ref().expect("checked").send(job)?;
            self.staged_ready = number;
        }
        if let Some(snap) = snapshot {
            // Restored off the loop by the owner; see `restore_installed`.
            let index = snap.get_metadata().index;
            self.restoring = Some((number, index));
            actions.snapshot = Some(ReceivedSnapshot {
                index,
                data: snap.data,
            });
        }
        if self.persisting() {
            // A heartbeat's answer promises nothing durable: it goes at once, so a
            // leader hears from a follower whose long write (a snapshot) is on its way.
            let (now, held): (Vec<_>, Vec<_>) = persisted
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse);
            actions.messages.extend(now);
            if !held.is_empty() {
                self.held.push_back((self.staged_ready, held));
            }
        } else {
            actions.messages.extend(persisted);
        }
        self.raw.advance_append_async(rd);
        if !self.persisting() && self.restoring.is_none() {
            self.raw.on_persist_ready(number);
            self.persisted_ready = number;
        }
        Ok(())
    }

    /// Takes in what the writer made durable since the last call.
    fn note_durable(&mut self, out: &mut Vec<Message>) -> Result<(), NodeError> {
        if let Some(w) = &self.writer {
            let durable = w.durable()?;
            self.release(durable, out);
        }
        Ok(())
    }

    /// What of `durable` counts as persisted: not the `Ready` carrying a snapshot
    /// being restored, nor any after it.
    fn persisted_cap(&self, durable: u64) -> u64 {
        self.restoring.map_or(durable, |(n, _)| durable.min(n - 1))
    }

    /// The index of the received snapshot being restored, if one is.
    pub fn restoring(&self) -> Option<u64> {
        self.restoring.map(|(_, index)| index)
    }

    /// Whether the snapshot being restored is durable in Raft's storage (the
    /// owner installs the restored state only then: a crash after that restarts
    /// from the stored snapshot if the state was not replaced yet).
    pub fn restore_written(&self) -> Result<bool, NodeError> {
        let (Some((n, _)), Some(w)) = (self.restoring, &self.writer) else {
            return Ok(false);
        };
        Ok(w.durable()? >= n)
    }

    /// The owner installed the restored state: the snapshot's `Ready` (and the
    /// ones after it) may count as persisted with the next `handle_ready`.
    pub fn restore_installed(&mut self) {
        self.restoring = None;
    }

    /// `Ready`s up to `durable` are on disk: the messages held for them go out,
    /// and raft-rs may count them (unless a snapshot among them is still being
    /// restored: see [`Self::persisted_cap`]).
    fn release(&mut self, durable: u64, out: &mut Vec<Message>) {
        if durable > self.durable_ready {
            self.durable_ready = durable;
            self.raw.mut_store().written(durable);
            while self.held.front().is_some_and(|(n, _)| *n <= durable) {
                out.extend(self.held.pop_front().expect("front checked").1);
            }
        }
        let persisted = self.persisted_cap(self.durable_ready);
        if persisted > self.persisted_ready {
            self.persisted_ready = persisted;
            self.raw.on_persist_ready(persisted);
        }
    }

    /// Turns raft entries into `Committed`, matching this node's own proposals.
    /// Conf changes are applied here (to raft-rs and the stored membership), and
    /// never reach the state machine.
    fn collect(&mut self, entries: Vec<Entry>, out: &mut Vec<Committed>) {
        for e in entries {
            if is_conf_change(&e) {
                self.apply_conf_entry(&e);
                continue;
            }
            if e.context.len() != CONTEXT_LEN {
                continue; // a new leader's empty entry
            }
            let word = |i: usize| u64::from_le_bytes(e.context[i..i + 8].try_into().expect("8"));
            let mine = word(0) == self.config.id && word(8) == self.boot;
            let proposal = mine
                .then(|| word(16))
                .filter(|seq| self.pending.remove(seq).is_some())
                .map(ProposalId);
            out.push(Committed {
                index: e.index,
                term: e.term,
                data: e.data.to_vec(),
                proposal,
            });
        }
    }

    /// Applies a committed conf change entry, unless the stored membership is
    /// already as of it; a change raft-rs refuses (the same on every tracker) is
    /// logged and skipped.
    fn apply_conf_entry(&mut self, e: &Entry) {
        let id = self.config.id;
        if e.index <= self.raw.store().conf_index() {
            return;
        }
        let cc = match decode_conf_change(e) {
            Ok(cc) => cc,
            Err(err) => {
                log::warn!(
                    "tracker {id}: the conf change at index {} is unreadable ({err}): skipped",
                    e.index
                );
                return;
            }
        };
        let removed_matched = self.removed_progress(&cc);
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.raw.mut_store().set_conf_state(e.index, cs);
                self.note_conf_change(&cc);
                if let Some((n, matched)) = removed_matched {
                    self.tell_removed(n, matched.min(e.index), e.index);
                }
            }
            Err(err) => log::warn!(
                "tracker {id}: the conf change at index {} was not applied: {err}",
                e.index
            ),
        }
    }

    /// On the leader, a tracker `cc` removes (not this one) and how far its log
    /// matches: raft-rs forgets both when the change is applied.
    fn removed_progress(&self, cc: &ConfChangeV2) -> Option<(u64, u64)> {
        if !self.is_leader() {
            return None;
        }
        let single = cc
            .get_changes()
            .iter()
            .find(|c| c.get_change_type() == ConfChangeType::RemoveNode)?;
        let n = single.node_id;
        let pr = self.raw.raft.prs().get(n).filter(|_| n != self.config.id)?;
        Some((n, pr.matched))
    }

    /// A last append to removed tracker `n`, whose log matches up to `matched`:
    /// the entries up to its removal at `index`, committed. raft-rs sends it
    /// nothing more, so without this it might never apply its own removal.
    fn tell_removed(&mut self, n: u64, matched: u64, index: u64) {
        let log = &self.raw.raft.raft_log;
        let max = self.config.max_size_per_msg;
        let ctx = GetEntriesContext::empty(false);
        let (Ok(log_term), Ok(mut entries)) =
            (log.term(matched), log.entries(matched + 1, max, ctx))
        else {
            return; // (compacted: it stays out, unaware; pre-vote keeps it harmless)
        };
        entries.retain(|e| e.index <= index);
        if matched + entries.len() as u64 != index {
            return; // (too far behind for one message: the same)
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.to, m.from, m.term) = (n, self.config.id, self.term());
        (m.index, m.log_term, m.commit) = (matched, log_term, index);
        m.set_entries(entries.into());
        self.outbox.push(m);
    }

    /// Logs an applied conf change at info level (a warning for this tracker's own
    /// removal, after which it refuses changes).
    fn note_conf_change(&mut self, cc: &ConfChangeV2) {
        let id = self.config.id;
        let voters = self.raw.store().conf_state().voters.clone();
        for single in cc.get_changes() {
            let n = single.node_id;
            let added = single.get_change_type() != ConfChangeType::RemoveNode;
            if n == id {
                self.removed = !added;
            }
            let learner = single.get_change_type() == ConfChangeType::AddLearnerNode;
            match (added, n == id) {
                (false, true) => log::warn!(
                    "tracker {id} was removed from the cluster (voters {voters:?}): it refuses \
                     changes from now on and can be stopped"
                ),
                (true, _) if learner => log::info!(
                    "tracker {id}: tracker {n} catches up as a learner (voters {voters:?})"
                ),
                (true, _) => {
                    log::info!("tracker {id}: tracker {n} joined the cluster (voters {voters:?})")
                }
                (false, false) => {
                    log::info!("tracker {id}: tracker {n} left the cluster (voters {voters:?})")
                }
            }
        }
        self.warn_unlisted_members();
    }

    /// Warns about members of the cluster this tracker's tracker_info.txt lacks.
    fn warn_unlisted_members(&self) {
        let id = self.config.id;
        let members = self.raw.store().conf_state();
        let all = members.voters.iter().chain(&members.learners);
        for n in all.filter(|n| !self.config.voters.contains(n)) {
            log::warn!(
                "tracker {id}: tracker {n} is a member of the cluster but not in this tracker's \
                 tracker_info.txt: it cannot be reached from here"
            );
        }
    }

    /// Whether `tracker` is a voter or a learner of the committed membership.
    fn is_member(&self, tracker: u64) -> bool {
        let members = self.raw.store().conf_state();
        members.voters.contains(&tracker) || members.learners.contains(&tracker)
    }

    /// On the leader, whether learner `n`'s log holds the conf change that added
    /// it and is within [`PROMOTE_WITHIN`] entries of the commit index: it can
    /// vote without weakening the quorum.
    fn caught_up(&self, n: u64) -> bool {
        let committed = self.raw.raft.raft_log.committed;
        let added_at = self.raw.store().conf_index();
        self.raw
            .raft
            .prs()
            .get(n)
            .is_some_and(|pr| pr.matched >= added_at && pr.matched + PROMOTE_WITHIN >= committed)
    }

    /// The leader's step toward the membership tracker_info.txt lists
    /// (`NodeConfig::voters`), one conf change at a time: when none is pending, it
    /// makes a listed learner that has caught up a voter; else adds the smallest
    /// listed tracker missing from the cluster that is `reachable` as a learner (a
    /// learner receives the log but does not count toward the quorum, so a new
    /// tracker catching up by a large snapshot weakens nothing); else removes the
    /// largest member not listed other than itself; else, if it is not listed
    /// itself, hands the lead to a listed voter, which then removes it
    /// ([`Self::hand_over_lead`]). Returns the change proposed, if one was.
    /// Followers do nothing.
    pub fn reconcile_membership(
        &mut self,
        reachable: &dyn Fn(u64) -> bool,
    ) -> Option<(ConfChangeType, u64)> {
        if !self.is_leader() || self.raw.raft.has_pending_conf() || self.restoring.is_some() {
            return None;
        }
        let (me, wanted) = (self.config.id, &self.config.voters);
        let members = self.raw.store().conf_state();
        let listed_learner = |n: &u64| wanted.contains(n) && self.caught_up(*n);
        let promote = members.learners.iter().copied().find(listed_learner);
        let add = || {
            wanted
                .iter()
                .copied()
                .filter(|n| !self.is_member(*n) && reachable(*n))
                .min()
        };
        let remove = || {
            members
                .voters
                .iter()
                .chain(&members.learners)
                .copied()
                .filter(|n| !wanted.contains(n) && *n != me)
                .max()
        };
        let (kind, n) = match (promote, add()) {
            (Some(n), _) => (ConfChangeType::AddNode, n),
            (None, Some(n)) => (ConfChangeType::AddLearnerNode, n),
            (None, None) => match remove() {
                Some(n) => (ConfChangeType::RemoveNode, n),
                None => {
                    self.hand_over_lead();
                    return None;
                }
            },
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = n;
        if let Err(e) = self.raw.propose_conf_change(Vec::new(), cc) {
            log::warn!("tracker {me}: the conf change for tracker {n} was not proposed: {e}");
            return None;
        }
        match kind {
            ConfChangeType::AddNode => log::info!("tracker {me} adds tracker {n} to the cluster"),
            ConfChangeType::AddLearnerNode => log::info!(
                "tracker {me} adds tracker {n} as a learner (a voter once it has caught up)"
            ),
            _ => log::info!("tracker {me} removes tracker {n} from the cluster"),
        }
        Some((kind, n))
    }

    /// tracker_info.txt was read again: the membership the leader steps toward.
    pub fn relist(&mut self, voters: Vec<u64>) {
        self.config.voters = voters;
    }

    /// A leader that tracker_info.txt no longer lists hands the lead to the listed
    /// voter whose log is furthest along (raft-rs's leader transfer: it catches
    /// that tracker up, then tells it to campaign at once); the new leader removes
    /// this one. At most once per [`HAND_OVER_TICKS`], so that while two trackers'
    /// lists differ (mid-restart) the lead is not passed back and forth quickly.
    fn hand_over_lead(&mut self) {
        let me = self.config.id;
        if self.config.voters.contains(&me) || self.hand_over_wait > 0 {
            return;
        }
        let members = self.raw.store().conf_state();
        let matched = |n: u64| self.raw.raft.prs().get(n).map_or(0, |pr| pr.matched);
        let to = members
            .voters
            .iter()
            .copied()
            .filter(|n| *n != me && self.config.voters.contains(n))
            .max_by_key(|&n| (matched(n), std::cmp::Reverse(n)));
        let Some(to) = to else {
            return;
        };
        self.hand_over_wait = HAND_OVER_TICKS;
        log::info!(
            "tracker {me} is not listed in tracker_info.txt: it hands the lead to tracker {to}"
        );
        self.raw.transfer_leader(to);
    }

    /// Logs a change of role at info level, once per (leader?, leader id) change.
    fn note_role(&mut self, role: StateRole, leader: u64) -> Option<RoleChange> {
        let (id, term) = (self.config.id, self.term());
        let key = (role == StateRole::Leader, leader);
        if key != self.logged_role {
            match (role, leader) {
                (StateRole::Leader, _) => log::info!("tracker {id} is leader (term {term})"),
                (_, INVALID_ID) => log::info!("tracker {id} has no leader (term {term})"),
                (_, l) => log::info!("tracker {id} follows tracker {l} (term {term})"),
            }
            if key.1 != self.logged_role.1 {
                self.leader_changes += 1;
            }
            self.logged_role = key;
        } else {
            log::debug!("tracker {id} is {role:?} (term {term})");
        }
        Some(RoleChange {
            role,
            leader: Some(leader).filter(|&l| l != INVALID_ID),
            term,
        })
    }

    /// Applies what `handle_ready` returned to the state machine, in order (a
    /// snapshot first, restored here once the writer made it durable: the simple,
    /// blocking way; the tracker's driver restores off the loop instead), skipping
    /// what it already holds, then snapshots and compacts if due.
    pub fn apply(
        &mut self,
        sm: &mut dyn StateMachine,
        snapshot: Option<ReceivedSnapshot>,
        committed: &[Committed],
    ) -> Result<(), NodeError> {
        if let Some(snap) = snapshot {
            if let (Some((number, _)), Some(w)) = (self.restoring, &self.writer) {
                w.wait_durable(number, RESTORE_WRITE_LIMIT)?;
            }
            sm.restore(snap.index, snap.data)
                .map_err(NodeError::Machine)?;
            self.restore_installed();
        }
        for c in committed {
            if c.index > sm.applied_index() {
                sm.apply(c.index, &c.data).map_err(NodeError::Machine)?;
            }
        }
        self.maybe_snapshot(sm)
    }

    /// Once `snapshot_every` entries were applied, asks the state machine for a
    /// snapshot (every turn until it has one) and keeps it, compacting the log.
    pub fn maybe_snapshot(&mut self, sm: &mut dyn StateMachine) -> Result<(), NodeError> {
        let store = self.raw.store();
        self.snapshot_awaited = false;
        if sm.applied_index() < store.snapshot_index() + self.config.snapshot_every {
            return Ok(());
        }
        let Some((index, data)) = sm.snapshot().map_err(NodeError::Machine)? else {
            self.snapshot_awaited = true;
            return Ok(());
        };
        let keep = self.config.keep_entries;
        let store = self.raw.mut_store();
        match &self.writer {
            // Written behind, after the staged `Ready`s (a 144 MB row is no fsync
            // for the loop to wait on).
            Some(writer) => {
                let data = data.into();
                if let Some(job) = store.stage_snapshot(self.staged_ready, index, data, keep)? {
                    writer.send(job)?;
                }
            }
            None => store.store_snapshot(index, data.into(), keep)?,
        }
        self.snapshots_taken += 1;
        log::debug!(
            "tracker {}: snapshot at {index}, log compacted",
            self.config.id
        );
        Ok(())
    }

    /// Whether [`Self::maybe_snapshot`] waits for a snapshot being made: the caller
    /// then calls it every turn, not only after applying entries.
    pub fn snapshot_awaited(&self) -> bool {
        self.snapshot_awaited
    }

    /// Role, term, indexes and (on the leader) each tracker's match index.
    pub fn progress(&self) -> RaftProgress {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let mut matched: Vec<(u64, u64)> = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect()
        } else {
            Vec::new()
        };
        matched.sort_unstable();
        RaftProgress {
            role,
            term: raft.term,
            leader: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            matched,
            leader_changes: self.leader_changes,
            snapshots_taken: self.snapshots_taken,
            voters: self.raw.store().conf_state().voters.clone(),
            learners: self.raw.store().conf_state().learners.clone(),
        }
    }

    /// The storage, read-only (for status pages and tests).
    pub fn storage(&self) -> &RaftStorage {
        self.raw.store()
    }
}

fn is_conf_change(e: &Entry) -> bool {
    e.get_entry_type() != EntryType::EntryNormal
}

/// A conf change entry's change, as raft-rs applies it.
fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, protobuf::ProtobufError> {
    use protobuf::Message as _;
    match e.get_entry_type() {
        EntryType::EntryConfChange => {
            let v1 = ConfChange::parse_from_bytes(&e.data)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            Ok(v2)
        }
        _ => ConfChangeV2::parse_from_bytes(&e.data),
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod cluster_tests;
