//! The server's hook for `--replication raft`: a turn's changes are validated
//! against the local state, proposed to the Raft log, and answered once this
//! tracker applied them ([`crate::replication::driver`] drives the node and applies
//! committed entries through [`crate::replication::machine`]).
//!
//! - Reads are answered at once from the local state, never from changes in flight.
//! - Changes are validated against the applied state only, not against each other:
//!   two of one turn that conflict (two connections creating the same group) are
//!   both proposed, and the re-check below answers the second with the error. (An
//!   earlier version applied each change to a transaction it then rolled back, so
//!   that later changes of the turn saw it: it cost the leader's loop about 15% of
//!   its time per change, BENCHMARKS.md "What bounds a raft change".)
//! - A connection with a change in flight answers nothing else until it is done,
//!   so replies keep their order and a client reads its own writes.
//! - The proposer checks its change once more just before it applies it (in the
//!   apply transaction, so against exactly the state the committed entry meets): a
//!   change that lost a race (two trackers, or two connections of one turn, creating
//!   the same user) gets the error it would get now, `store::apply`'s preconditions
//!   make its entry a no-op, and its request id is not recorded (a retry gets the
//!   error too).
//! - A change not committed within the deadline gets `ERR no quorum: the change was
//!   not made`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use wire::tracker_msg::Reply;

use super::{handle, Server, Work};
use crate::commands::{self, Ctx, Outcome};
use crate::limits::OutBudget;
use crate::replication::driver::RaftDriver;
use crate::replication::machine::LogMachine;
use crate::replication::node::ProposalId;
use crate::replication::restore::RestoreJob;
use crate::sync_log::{FsyncMode, LogEntry};
use crate::TrackerError;

/// The refusal of a change without a majority (SPEC).
pub const NO_QUORUM: &str = "no quorum: the change was not made";

/// A change proposed for a client, waiting to be applied here.
struct Proposed {
    key: usize,
    conn_id: u64,
    work: Work,
    ctx: Ctx,
    reply: Reply,
    at: Instant,
}

/// What the server keeps in raft mode.
pub struct RaftMode {
    driver: RaftDriver,
    dir: PathBuf,
    fsync: FsyncMode,
    waiting: HashMap<ProposalId, Proposed>,
    /// This turn's proposals: (work index, proposal, the reply if it commits).
    proposed_now: Vec<(usize, ProposalId, Reply)>,
    /// The restore of a received snapshot in flight off the loop.
    restores: RestoreJob,
}

impl RaftMode {
    /// `restore_gate`: tests only (`--test-restore-gate`).
    pub fn new(
        driver: RaftDriver,
        dir: PathBuf,
        fsync: FsyncMode,
        restore_gate: Option<PathBuf>,
    ) -> Self {
        RaftMode {
            driver,
            dir,
            fsync,
            waiting: HashMap::new(),
            proposed_now: Vec::new(),
            restores: RestoreJob::new(restore_gate),
        }
    }

    pub fn driver(&self) -> &RaftDriver {
        &self.driver
    }

    pub fn driver_mut(&mut self) -> &mut RaftDriver {
        &mut self.driver
    }
}

/// Requests of an inbox to answer this turn in raft mode: up to and including the
/// first that may change state.
pub(super) fn cut_at_change<'a, T: 'a>(
    items: impl Iterator<Item = &'a (T, Result<wire::tracker_msg::Request, String>)>,
    n: usize,
) -> usize {
    let mut taken = 0;
    for (_, item) in items.take(n) {
        taken += 1;
        if matches!(item, Ok(r) if commands::may_mutate(&r.command)) {
            break;
        }
    }
    taken
}

impl Server {
    /// Raft mode's answer to a batch with changes: reads answered from the local
    /// state, changes validated against it and proposed (`None`, recorded in
    /// `proposed_now`).
    pub(super) fn propose_batch(
        &mut self,
        work: &[Work],
        ctx: &Ctx,
        budget: &mut OutBudget,
    ) -> Vec<Option<Reply>> {
        let err = |e: &dyn std::fmt::Display| Reply::err(format!("internal error: {e}"));
        let Some(mode) = self.raft.as_mut() else {
            return work
                .iter()
                .map(|_| Some(err(&"not in raft mode")))
                .collect();
        };
        let tx = match self.store.read_transaction() {
            Ok(tx) => tx,
            Err(e) => return work.iter().map(|_| Some(err(&e))).collect(),
        };
        let now = Instant::now();
        let mut out: Vec<Option<Reply>> = vec![None; work.len()];
        for (i, w) in work.iter().enumerate() {
            if !budget.admits(w.key) {
                continue;
            }
            let reply = match handle(&tx, w, ctx) {
                Outcome::Reply(r) => r,
                Outcome::Mutate { op, reply } => {
                    let entry = LogEntry {
                        ms: ctx.now_ms,
                        tracker: self.cfg.tracker_no,
                        request_id: w.item.as_ref().ok().and_then(|r| r.request_id.clone()),
                        op,
                    };
                    match mode.driver.propose(entry.encode(0).into_bytes(), now) {
                        Ok(id) => {
                            mode.proposed_now.push((i, id, reply));
                            continue;
                        }
                        Err(e) => Reply::err(format!("change not made: {e}")),
                    }
                }
            };
            budget.charge(w.key, &reply);
            out[i] = Some(reply);
        }
        out
    }

    /// This turn's proposals by work index (taken).
    pub(super) fn take_proposed(&mut self) -> HashMap<usize, (ProposalId, Reply)> {
        match self.raft.as_mut() {
            Some(mode) => mode
                .proposed_now
                .drain(..)
                .map(|(i, id, reply)| (i, (id, reply)))
                .collect(),
            None => HashMap::new(),
        }
    }

    /// Parks a proposed request until its entry is applied (or fails).
    pub(super) fn await_commit(
        &mut self,
        id: ProposalId,
        w: Work,
        ctx: &Ctx,
        reply: Reply,
        at: Instant,
    ) {
        let Some(c) = self.conns.get_mut(w.key) else {
            return;
        };
        c.awaiting = true;
        let conn_id = c.id;
        if let Some(mode) = self.raft.as_mut() {
            let key = w.key;
            mode.waiting.insert(
                id,
                Proposed {
                    key,
                    conn_id,
                    work: w,
                    ctx: *ctx,
                    reply,
                    at,
                },
            );
        }
    }

    /// The driver's turn; then replies to the changes it finished.
    pub(super) fn raft_turn(&mut self, buf: &mut [u8]) -> Result<(), TrackerError> {
        let Some(mode) = self.raft.as_mut() else {
            return Ok(());
        };
        let mut machine = LogMachine {
            dir: &mode.dir,
            tracker_no: self.cfg.tracker_no,
            fsync: mode.fsync,
            log: &mut self.log,
            store: &mut self.store,
            snapshots: &mut self.snapshots,
            restores: &mut mode.restores,
        };
        let waiting = &mut mode.waiting;
        let mut recheck = |db: &rusqlite::Connection, id: ProposalId| {
            if let Some(p) = waiting.get_mut(&id) {
                if let Outcome::Reply(r) = handle(db, &p.work, &p.ctx) {
                    p.reply = r; // no longer valid (or already applied: its recorded reply)
                }
            }
        };
        let registry = self.poll.registry();
        let now = Instant::now();
        let finished = mode
            .driver
            .turn(registry, &mut machine, &mut recheck, buf, now)?;
        self.metrics.raft.publish(mode.driver.node().progress());
        let done = finished.committed.into_iter().map(|id| (id, None));
        let failed = finished
            .failed
            .into_iter()
            .map(|id| (id, Some(Reply::err(NO_QUORUM))));
        let mut replies = Vec::new();
        for (id, refusal) in done.chain(failed) {
            if let Some(p) = mode.waiting.remove(&id) {
                replies.push((p, refusal));
            }
        }
        let now = Instant::now();
        for (p, refusal) in replies {
            let reply = refusal.unwrap_or(p.reply);
            if matches!(reply, Reply::Ok { .. }) {
                self.metrics.changes_appended.inc();
            }
            self.count_request(&p.work.item, &reply, now.saturating_duration_since(p.at));
            self.note_login(&p.work, &reply);
            let Some(c) = self.conns.get_mut(p.key).filter(|c| c.id == p.conn_id) else {
                continue; // the client left meanwhile
            };
            c.awaiting = false;
            c.idle.logged_in |= super::logs_in(&p.work.item, &reply);
            c.out.extend_from_slice(&reply.encode());
        }
        Ok(())
    }

    /// Hands connections whose first line was a tracker's greeting to the driver
    /// (in shared-log mode they are told this tracker does not speak Raft).
    pub(super) fn hand_over_peers(&mut self) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.greeting.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let mut c = self.conns.remove(key);
            self.caps.release(c.ip);
            let first = c.greeting.take().unwrap_or_default();
            match self.raft.as_mut() {
                Some(mode) => {
                    let registry = self.poll.registry();
                    mode.driver
                        .adopt(registry, c.stream, &first, Instant::now());
                }
                None => {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                    log::warn!(
                        "a tracker at {:?} speaks Raft to this tracker, which runs --replication shared-log",
                        c.peer
                    );
                }
            }
        }
    }
}
