//! In-memory cluster tests of `RaftNode`: 3 and 5 nodes over real `RaftStorage` files
//! in a temp dir, messages passed through queues the test controls (so crashes and
//! partitions are just dropped messages), and an injected clock of 100 ms per tick.
//! The `written_behind` ones run each node with its writer thread (as the tracker
//! does) and check at every send that what a message promises is on disk.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use super::*;
use crate::replication::peer_frame::{LinkEvent, LinkLimits, PeerLink};

const TICK: Duration = Duration::from_millis(100);

/// A list of byte strings, snapshotted as length-prefixed records.
#[derive(Default)]
struct Machine {
    applied: u64,
    entries: Vec<Vec<u8>>,
    restores: usize,
}

impl StateMachine for Machine {
    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        assert!(
            index > self.applied,
            "applied {index} after {}",
            self.applied
        );
        self.applied = index;
        self.entries.push(data.to_vec());
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Option<(u64, Vec<u8>)>, MachineError> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e);
        }
        Ok(Some((self.applied, out)))
    }

    fn restore(&mut self, index: u64, data: bytes::Bytes) -> Result<(), MachineError> {
        let mut data = &data[..];
        self.entries.clear();
        while data.len() >= 4 {
            let len = u32::from_le_bytes(data[..4].try_into()?) as usize;
            self.entries.push(data[4..4 + len].to_vec());
            data = &data[4 + len..];
        }
        self.applied = index;
        self.restores += 1;
        Ok(())
    }
}

struct Member {
    node: Option<RaftNode>,
    sm: Machine,
    inbox: VecDeque<Message>,
    done: Vec<ProposalId>,
    failed: Vec<(ProposalId, Instant)>,
    proposed: Vec<(ProposalId, Instant, Vec<u8>)>,
    roles: Vec<RoleChange>,
    /// A received snapshot the test holds instead of restoring it (a restore
    /// still being written off the loop), with `Cluster::hold_restores`.
    held_restore: Option<ReceivedSnapshot>,
}

impl Member {
    fn new() -> Self {
        Member {
            node: None,
            sm: Machine::default(),
            inbox: VecDeque::new(),
            done: Vec::new(),
            failed: Vec::new(),
            proposed: Vec::new(),
            roles: Vec::new(),
            held_restore: None,
        }
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    template: NodeConfig,
    members: Vec<Member>,
    now: Instant,
    cut: HashSet<(u64, u64)>,
    boots: u64,
    /// Each node writes its log through a `RaftWriter` thread.
    behind: bool,
    /// Received snapshots are held, not restored (`Member::held_restore`).
    hold_restores: bool,
    /// Every conf change a leader proposed, in order.
    conf_changes: Vec<(ConfChangeType, u64)>,
}

/// What one node's `raft<N>.db` holds on disk, read through a connection of its own.
#[derive(Debug)]
struct OnDisk {
    last_index: u64,
    term: u64,
    vote: u64,
}

impl Cluster {
    fn new(n: u64, tweak: impl Fn(&mut NodeConfig)) -> Self {
        Self::with_writers(n, tweak, false)
    }

    fn with_writers(n: u64, tweak: impl Fn(&mut NodeConfig), behind: bool) -> Self {
        let mut template = NodeConfig::new(0, (1..=n).collect());
        tweak(&mut template);
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            template,
            members: Vec::new(),
            now: Instant::now(),
            cut: HashSet::new(),
            boots: 0,
            behind,
            hold_restores: false,
            conf_changes: Vec::new(),
        };
        for _ in 1..=n {
            c.members.push(Member::new());
        }
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    /// tracker_info.txt now lists `n` trackers: a new one (empty data dir) is
    /// started for each number past the members, and the others are restarted
    /// with the new list one at a time, each once a leader is known again.
    fn relist(&mut self, n: u64) {
        self.template.voters = (1..=n).collect();
        let old = self.members.len() as u64;
        let kept: Vec<u64> = (1..=old.min(n)).filter(|&id| self.running(id)).collect();
        let running: Vec<u64> = (1..=old).filter(|&id| self.running(id)).collect();
        for &id in &kept {
            self.crash(id);
            self.start(id);
            self.wait_leader(&running);
        }
        for id in old + 1..=n {
            self.members.push(Member::new());
            self.start(id);
        }
    }

    /// Ticks until every running node among `among` has applied `voters`.
    fn wait_voters(&mut self, among: &[u64], voters: &[u64]) {
        for _ in 0..300 {
            if among
                .iter()
                .all(|&i| self.node(i).progress().voters == voters)
            {
                return;
            }
            self.tick();
        }
        panic!("the membership never became {voters:?}");
    }

    fn db(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("raft{id}.db"))
    }

    fn m(&mut self, id: u64) -> &mut Member {
        &mut self.members[id as usize - 1]
    }

    fn node(&mut self, id: u64) -> &mut RaftNode {
        self.m(id).node.as_mut().expect("node is running")
    }

    fn start(&mut self, id: u64) {
        let mut config = self.template.clone();
        config.id = id;
        let storage = RaftStorage::open(&self.db(id), &config.voters).unwrap();
        self.boots += 1;
        let boot = self.boots;
        let behind = self.behind;
        let m = self.m(id);
        let mut node = RaftNode::open(config, storage, &mut m.sm, boot).unwrap();
        if behind {
            node.start_writer(None).unwrap();
        }
        m.node = Some(node);
    }

    fn on_disk(&self, id: u64) -> OnDisk {
        let db = rusqlite::Connection::open(self.db(id)).unwrap();
        let last: Option<u64> = db
            .query_row("SELECT MAX(idx) FROM raft_entries", [], |r| r.get(0))
            .unwrap();
        let snap: Option<u64> = db
            .query_row("SELECT MAX(idx) FROM raft_snapshot", [], |r| r.get(0))
            .unwrap();
        let (term, vote) = db
            .query_row("SELECT term, vote FROM raft_state", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        OnDisk {
            last_index: last.unwrap_or(0).max(snap.unwrap_or(0)),
            term,
            vote,
        }
    }

    /// What `msg` from `id` promises (an acknowledged append, a granted vote) is on
    /// `id`'s disk already.
    fn check_durable_before_send(&self, id: u64, msg: &Message) {
        let disk = self.on_disk(id);
        match msg.get_msg_type() {
            MessageType::MsgAppendResponse if !msg.reject => assert!(
                disk.last_index >= msg.index,
                "tracker {id} acknowledged entries up to {} with {disk:?}",
                msg.index
            ),
            MessageType::MsgRequestVoteResponse if !msg.reject => assert!(
                disk.term >= msg.term && disk.vote == msg.to,
                "tracker {id} granted its vote in term {} with {disk:?}",
                msg.term
            ),
            _ => {}
        }
    }

    /// An entry reported committed to its proposer is on the disks of a majority
    /// of `voters` (the membership as the proposer applied it).
    fn check_committed_on_majority(&self, index: u64, voters: &[u64]) {
        let on = voters
            .iter()
            .filter(|&&i| self.on_disk(i).last_index >= index)
            .count();
        assert!(
            on > voters.len() / 2,
            "entry {index} reported committed but on {on} disks"
        );
    }

    /// Stops stepping the node and drops what was on its way to it; its storage and
    /// its (durable) state machine stay.
    fn crash(&mut self, id: u64) {
        let m = self.m(id);
        m.node = None;
        m.inbox.clear();
    }

    /// Crashes the node and deletes its whole data dir: Raft storage and state.
    fn wipe(&mut self, id: u64) {
        self.crash(id);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db(id).display()));
        }
        self.m(id).sm = Machine::default();
    }

    fn partition(&mut self, side: &[u64]) {
        let n = self.members.len() as u64;
        for a in side {
            for b in (1..=n).filter(|b| !side.contains(b)) {
                self.cut.insert((*a, b));
                self.cut.insert((b, *a));
            }
        }
    }

    fn running(&self, id: u64) -> bool {
        self.members[id as usize - 1].node.is_some()
    }

    /// One tick on every running node, and the leader's step toward the listed
    /// membership (a tracker is reachable while it runs).
    fn tick(&mut self) {
        self.now += TICK;
        let running: Vec<bool> = self.members.iter().map(|m| m.node.is_some()).collect();
        let reachable = |id: u64| running.get(id as usize - 1) == Some(&true);
        for m in &mut self.members {
            if let Some(n) = m.node.as_mut() {
                n.tick();
                self.conf_changes.extend(n.reconcile_membership(&reachable));
            }
        }
        self.settle();
    }

    /// Runs every node's loop turn until no message is in flight.
    fn settle(&mut self) {
        for _ in 0..5000 {
            let mut progress = false;
            for id in 1..=self.members.len() as u64 {
                progress |= self.turn(id);
            }
            if !progress {
                return;
            }
            let persisting = self.members.iter().filter_map(|m| m.node.as_ref());
            if persisting.filter(|n| n.persisting()).count() > 0 {
                std::thread::sleep(Duration::from_millis(1)); // a writer's fsync
            }
        }
        panic!("the cluster did not settle");
    }

    /// One loop turn of one node, in the order the module doc prescribes.
    fn turn(&mut self, id: u64) -> bool {
        let now = self.now;
        let Some(mut node) = self.m(id).node.take() else {
            return false;
        };
        let inbox = std::mem::take(&mut self.m(id).inbox);
        let mut progress = !inbox.is_empty();
        for msg in inbox {
            let _ = node.step(msg);
        }
        let mut actions = node.handle_ready(now).unwrap();
        if self.behind {
            for msg in &actions.messages {
                self.check_durable_before_send(id, msg);
            }
            let voters = node.progress().voters;
            for c in actions.committed.iter().filter(|c| c.proposal.is_some()) {
                self.check_committed_on_majority(c.index, &voters);
            }
        }
        for msg in std::mem::take(&mut actions.messages) {
            let (to, snap) = (msg.to, msg.get_msg_type() == MessageType::MsgSnapshot);
            let delivered = self.running(to) && !self.cut.contains(&(id, to));
            if delivered {
                self.m(to).inbox.push_back(msg);
                progress = true;
            } else {
                node.report_unreachable(to);
            }
            if snap {
                node.report_snapshot(to, delivered);
            }
        }
        let hold = self.hold_restores;
        let m = self.m(id);
        let mut snapshot = actions.snapshot.take();
        if hold && snapshot.is_some() {
            assert!(m.held_restore.is_none(), "one restore at a time");
            m.held_restore = snapshot.take();
        }
        node.apply(&mut m.sm, snapshot, &actions.committed).unwrap();
        m.done
            .extend(actions.committed.iter().filter_map(|c| c.proposal));
        m.failed.extend(actions.failed.iter().map(|&p| (p, now)));
        m.roles.extend(actions.role);
        progress |= !actions.committed.is_empty() || node.has_ready() || node.persisting();
        m.node = Some(node);
        progress
    }

    fn propose(&mut self, id: u64, data: &str) -> ProposalId {
        let now = self.now;
        let p = self
            .node(id)
            .propose(data.as_bytes().to_vec(), now)
            .unwrap();
        self.m(id).proposed.push((p, now, data.as_bytes().to_vec()));
        p
    }

    /// Ticks until one of `among` leads with every other of them following it.
    fn wait_leader(&mut self, among: &[u64]) -> u64 {
        for _ in 0..300 {
            self.tick();
            let leader = among.iter().copied().find(|&i| self.node(i).is_leader());
            if let Some(l) = leader {
                if among.iter().all(|&i| self.node(i).leader() == Some(l)) {
                    return l;
                }
            }
        }
        let views: Vec<_> = self
            .members
            .iter()
            .filter_map(|m| m.node.as_ref().map(|n| (n.id(), n.progress())))
            .collect();
        panic!("no leader among {among:?}: {views:#?}");
    }

    /// Ticks until `id` saw `p` committed and applied.
    fn wait_done(&mut self, id: u64, p: ProposalId) {
        for _ in 0..100 {
            if self.m(id).done.contains(&p) {
                return;
            }
            self.tick();
        }
        panic!("proposal {p:?} at tracker {id} never completed");
    }

    fn entries(&self, id: u64) -> Vec<String> {
        let m = &self.members[id as usize - 1];
        m.sm.entries
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }

    /// Restores the snapshot held for `id` (its restore is done).
    fn install_held(&mut self, id: u64) {
        let m = self.m(id);
        let held = m.held_restore.take().expect("a held restore");
        let node = m.node.as_mut().expect("node is running");
        node.apply(&mut m.sm, Some(held), &[]).unwrap();
    }

    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }
}

fn elect_and_commit_in_order(n: u64, behind: bool) {
    let mut c = Cluster::with_writers(n, |_| {}, behind);
    let leader = c.wait_leader(&(1..=n).collect::<Vec<_>>());
    let role = *c.m(leader).roles.last().unwrap();
    assert_eq!(role.role, StateRole::Leader);
    assert_eq!(role.term, c.node(leader).term());
    // Thirty changes through every tracker in one loop turn: many per Ready, the
    // followers' ones forwarded to the leader.
    let mut proposals = Vec::new();
    for i in 0..30 {
        let id = i % n + 1;
        proposals.push((id, c.propose(id, &format!("change {i}"))));
    }
    for (id, p) in proposals {
        c.wait_done(id, p);
    }
    c.ticks(3);
    let reference = c.entries(leader);
    assert_eq!(reference.len(), 30);
    let mut sorted = reference.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 30, "each change once");
    for id in 1..=n {
        assert_eq!(
            c.entries(id),
            reference,
            "tracker {id} applied another order"
        );
        assert!(c.m(id).failed.is_empty());
    }
}

#[test]
fn three_nodes_elect_a_leader_and_commit_in_the_same_order() {
    elect_and_commit_in_order(3, false);
}

#[test]
fn written_behind_three_nodes_commit_in_order_and_promise_only_what_is_on_disk() {
    elect_and_commit_in_order(3, true);
}

#[test]
fn five_nodes_elect_a_leader_and_commit_in_the_same_order() {
    elect_and_commit_in_order(5, false);
}

#[test]
fn after_the_leader_crashes_a_new_one_is_elected_and_the_old_one_rejoins() {
    leader_crash_and_rejoin(false);
}

#[test]
fn written_behind_after_the_leader_crashes_a_new_one_is_elected_and_the_old_one_rejoins() {
    leader_crash_and_rejoin(true);
}

fn leader_crash_and_rejoin(behind: bool) {
    let mut c = Cluster::with_writers(3, |_| {}, behind);
    let old = c.wait_leader(&[1, 2, 3]);
    for i in 0..5 {
        let p = c.propose(old, &format!("before {i}"));
        c.wait_done(old, p);
    }
    c.crash(old);
    let survivors: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let new = c.wait_leader(&survivors);
    assert_ne!(new, old);
    for (i, &id) in survivors.iter().cycle().take(6).enumerate() {
        let p = c.propose(id, &format!("after {i}"));
        c.wait_done(id, p);
    }
    assert_eq!(c.entries(survivors[0]).len(), 5 + 6);
    assert_eq!(c.entries(survivors[0]), c.entries(survivors[1]));
    // Restarted from its persisted storage (and its durable state machine), the old
    // leader catches up with what was committed without it.
    c.start(old);
    c.ticks(20);
    assert_eq!(c.entries(old), c.entries(new));
    assert_eq!(c.entries(old).len(), 11);
}

#[test]
fn a_partitioned_minority_fails_its_proposals_in_time_while_the_majority_goes_on() {
    let mut c = Cluster::new(5, |_| {});
    let leader = c.wait_leader(&[1, 2, 3, 4, 5]);
    let buddy = (1..=5).find(|&i| i != leader).unwrap();
    let majority: Vec<u64> = (1..=5).filter(|&i| i != leader && i != buddy).collect();
    c.partition(&[leader, buddy]);
    let lost_at_leader = c.propose(leader, "lost at old leader");
    let lost_forwarded = c.propose(buddy, "lost forwarded");
    // A change forwarded to the old leader just before the cut would be lost with
    // that message (and fail at its deadline); once the majority has a leader of its
    // own, changes through it commit.
    let new = c.wait_leader(&majority);
    assert!(majority.contains(&new));
    let kept = c.propose(majority[0], "kept by majority");
    c.wait_done(majority[0], kept);
    c.ticks(55);
    for (id, p) in [(leader, lost_at_leader), (buddy, lost_forwarded)] {
        let failed_at = c.m(id).failed.iter().find(|f| f.0 == p).map(|f| f.1);
        let proposed_at = c.m(id).proposed.iter().find(|q| q.0 == p).unwrap().1;
        let failed_at = failed_at.unwrap_or_else(|| panic!("{p:?} at {id} not failed"));
        assert!(failed_at - proposed_at <= Duration::from_secs(5) + TICK);
    }
    assert!(
        !c.node(leader).is_leader(),
        "check_quorum stepped the old leader down"
    );
    // Heal: the minority catches up; the failed changes were never committed.
    c.cut.clear();
    let new = c.wait_leader(&[1, 2, 3, 4, 5]);
    let p = c.propose(leader, "after heal");
    c.wait_done(leader, p);
    c.ticks(5);
    let reference = c.entries(new);
    assert_eq!(reference, ["kept by majority", "after heal"]);
    for id in 1..=5 {
        assert_eq!(c.entries(id), reference, "tracker {id}");
    }
}

#[test]
fn a_restart_with_an_empty_state_machine_replays_the_log() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..10 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.ticks(3);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    c.crash(follower);
    c.m(follower).sm = Machine::default();
    c.start(follower);
    c.ticks(5);
    assert_eq!(c.entries(follower), c.entries(leader));
    assert_eq!(c.m(follower).sm.restores, 0, "no snapshot was needed");
}

#[test]
fn a_wiped_node_catches_up_by_snapshot_and_log_tail() {
    wiped_node_catches_up(false);
}

#[test]
fn written_behind_a_wiped_node_catches_up_by_snapshot_and_log_tail() {
    wiped_node_catches_up(true);
}

fn wiped_node_catches_up(behind: bool) {
    let tweak = |cfg: &mut NodeConfig| {
        cfg.snapshot_every = 10;
        cfg.keep_entries = 2;
    };
    let mut c = Cluster::with_writers(3, tweak, behind);
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..35 {
        let p = c.propose(leader, &format!("e{i}"));
        if i % 5 == 4 {
            c.wait_done(leader, p);
        }
    }
    c.ticks(3);
    assert!(c.node(leader).storage().snapshot_index() >= 30);
    assert!(
        raft::Storage::first_index(c.node(leader).storage()).unwrap() > 1,
        "compacted"
    );
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    c.wipe(follower);
    c.start(follower);
    c.ticks(10);
    assert!(c.m(follower).sm.restores >= 1, "caught up by snapshot");
    assert_eq!(c.entries(follower).len(), 35);
    assert_eq!(c.entries(follower), c.entries(leader));
    // And it keeps up with new changes after the snapshot.
    let p = c.propose(follower, "tail");
    c.wait_done(follower, p);
    c.ticks(2);
    assert_eq!(c.entries(follower), c.entries(leader));
}

/// While a received snapshot's restore is in flight (held by the test), the follower
/// acknowledges the snapshot and the entries after it (they are durable in its Raft
/// storage) but applies none of them, and campaigns for nothing; once the restore
/// is installed it applies them in order on top of the snapshot.
#[test]
fn written_behind_a_restore_in_flight_holds_back_applying_only() {
    let tweak = |cfg: &mut NodeConfig| {
        cfg.snapshot_every = 10;
        cfg.keep_entries = 2;
    };
    let mut c = Cluster::with_writers(3, tweak, true);
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..25 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.ticks(3);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    c.wipe(follower);
    c.hold_restores = true;
    c.start(follower);
    c.ticks(10);
    let index = c.node(follower).restoring().expect("a restore in flight");
    assert!(index >= 20, "{index}");
    assert!(c.m(follower).held_restore.is_some());
    assert_eq!(c.m(follower).sm.restores, 0);
    for i in 0..5 {
        let p = c.propose(leader, &format!("during {i}"));
        c.wait_done(leader, p);
    }
    // Well past an election timeout without the restore: no campaign, no apply.
    c.ticks(50);
    assert_eq!(c.node(leader).term(), c.node(follower).term());
    assert!(c.node(leader).is_leader());
    assert!(c.entries(follower).is_empty());
    let last = c.node(leader).progress().last_index;
    let matched = c.node(leader).progress().matched;
    assert!(
        matched.contains(&(follower, last)),
        "acknowledged up to {last}: {matched:?}"
    );
    c.install_held(follower);
    c.ticks(3);
    assert_eq!(c.node(follower).restoring(), None);
    assert_eq!(c.m(follower).sm.restores, 1);
    assert_eq!(c.entries(follower).len(), 30);
    assert_eq!(c.entries(follower), c.entries(leader));
}

/// A vote at term 100, as a frame a peer would send: stepping it would bump the term.
fn forged_vote() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.from = 1;
    m.to = 2;
    m.term = 100;
    m.log_term = 100;
    m.index = 100;
    m
}

fn step_events(node: &mut RaftNode, events: Vec<LinkEvent>) {
    for e in events {
        if let LinkEvent::Message(m) = e {
            node.step(*m).unwrap();
        }
    }
}

const LIMITS: LinkLimits = LinkLimits {
    max_frame: 1 << 16,
    max_message: 1 << 20,
};

#[test]
fn a_forged_vote_from_an_unauthenticated_peer_changes_nothing() {
    let key = [5; 32];
    let mut c = Cluster::new(3, |_| {});
    let term = c.node(2).term();
    // Raw frame bytes, then a greeting with a wrong key followed by frames.
    let mut outsider = PeerLink::connect([6; 32], 1, 2, [1; 32], LIMITS);
    let payload = protobuf::Message::write_to_bytes(&forged_vote()).unwrap();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(&[0; 32]);
    let mut link = PeerLink::accept(key, 2, vec![1, 2, 3], [2; 32], LIMITS);
    let events = link.receive(&frame).unwrap_or_default();
    step_events(c.node(2), events);
    let mut link = PeerLink::accept(key, 2, vec![1, 2, 3], [2; 32], LIMITS);
    let mut events = link.receive(&outsider.take_output()).unwrap();
    events.extend(link.receive(&frame).unwrap_or_default());
    step_events(c.node(2), events);
    c.settle();
    assert_eq!(c.node(2).term(), term, "nothing reached the node");
    // Control: the same vote over an authenticated link does reach it.
    let mut insider = PeerLink::connect(key, 1, 2, [1; 32], LIMITS);
    let mut link = PeerLink::accept(key, 2, vec![1, 2, 3], [2; 32], LIMITS);
    link.receive(&insider.take_output()).unwrap();
    insider.receive(&link.take_output()).unwrap();
    insider.send(&forged_vote()).unwrap();
    let events = link.receive(&insider.take_output()).unwrap();
    step_events(c.node(2), events);
    assert_eq!(c.node(2).term(), 100);
}

#[test]
fn a_conf_change_adds_a_tracker_that_catches_up_and_the_changes_never_reach_the_machine() {
    grow_and_shrink(false);
}

#[test]
fn written_behind_a_conf_change_adds_a_tracker_that_catches_up_and_is_removed_again() {
    grow_and_shrink(true);
}

/// 3 -> 4 trackers (the new one catches up by a snapshot taken before it was
/// added), changes then commit with one original down, and 4 -> 3 again.
fn grow_and_shrink(behind: bool) {
    let tweak = |cfg: &mut NodeConfig| {
        cfg.snapshot_every = 10;
        cfg.keep_entries = 2;
    };
    let mut c = Cluster::with_writers(3, tweak, behind);
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..25 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.ticks(3);
    assert!(c.node(leader).storage().snapshot_index() >= 20);
    c.relist(4);
    // Added as a learner, it catches up first (a voter only then).
    for _ in 0..2000 {
        if c.entries(4).len() == 25 {
            break;
        }
        c.tick();
        // (The restarted leader reads its stored snapshot on a thread to serve it.)
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(c.m(4).sm.restores >= 1, "caught up by snapshot");
    c.wait_voters(&[1, 2, 3], &[1, 2, 3, 4]);
    let expected: Vec<String> = (0..25).map(|i| format!("e{i}")).collect();
    for id in 1..=4 {
        assert_eq!(
            c.entries(id),
            expected,
            "tracker {id}: only the changes, in order"
        );
    }
    // Quorum is 3 of 4: with one original down, changes through the new one commit.
    let down = (1..=3).find(|&i| !c.node(i).is_leader()).unwrap();
    c.crash(down);
    let p = c.propose(4, "with four");
    c.wait_done(4, p);
    c.start(down);
    c.ticks(5);
    // Back to three: the others restarted with the shorter list, tracker 4 is
    // stopped (a leader never removes itself) and removed; the rest go on.
    c.relist(3);
    c.crash(4);
    c.wait_voters(&[1, 2, 3], &[1, 2, 3]);
    let leader = c.wait_leader(&[1, 2, 3]);
    // Started again with its old list, it does not disturb them.
    let term = c.node(leader).term();
    c.start(4);
    c.ticks(60);
    assert_eq!(c.node(leader).term(), term);
    assert!(c.node(leader).is_leader());
    let p = c.propose(leader, "with three");
    c.wait_done(leader, p);
    c.ticks(3);
    let mut all = expected;
    all.extend(["with four".to_string(), "with three".to_string()]);
    for id in 1..=3 {
        assert_eq!(c.entries(id), all, "tracker {id}");
    }
    // The membership is durable: restarted, a tracker still has it.
    c.crash(1);
    c.start(1);
    assert_eq!(c.node(1).progress().voters, [1, 2, 3]);
}

/// A tracker the leader removes while it runs learns it (the removal's commit
/// reaches it) and refuses changes from then on; the others go on without it.
#[test]
fn a_removed_tracker_refuses_changes_and_the_rest_commit_without_it() {
    let mut c = Cluster::new(4, |_| {});
    let mut leader = c.wait_leader(&[1, 2, 3, 4]);
    if leader == 4 {
        c.crash(4);
        leader = c.wait_leader(&[1, 2, 3]);
        c.start(4);
    }
    // The leader's tracker_info.txt lost its last line.
    c.node(leader).config.voters = vec![1, 2, 3];
    c.wait_voters(&[1, 2, 3, 4], &[1, 2, 3]);
    let now = c.now;
    assert_eq!(
        c.node(4).propose(b"x".to_vec(), now),
        Err(ProposeError::Removed)
    );
    c.crash(4);
    c.start(4);
    assert_eq!(
        c.node(4).propose(b"x".to_vec(), now),
        Err(ProposeError::Removed),
        "also after a restart"
    );
    let p = c.propose(leader, "after the removal");
    c.wait_done(leader, p);
    c.ticks(3);
    let other = (1..=3).find(|&i| i != leader).unwrap();
    c.crash(other);
    let p = c.propose(leader, "two of three");
    c.wait_done(leader, p);
    // Had the stored membership not reached the disk before a crash (it is
    // written behind the state machine's apply), the start applies the conf
    // change again from the log.
    let db = rusqlite::Connection::open(c.db(other)).unwrap();
    let removal: u64 = db
        .query_row(
            "SELECT MAX(idx) FROM raft_entries WHERE kind = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(c.m(other).sm.applied > removal);
    db.execute(
        "UPDATE raft_state SET voters = '1,2,3,4', conf_index = ?1",
        [removal - 1],
    )
    .unwrap();
    drop(db);
    c.start(other);
    assert_eq!(c.node(other).progress().voters, [1, 2, 3]);
}

/// A leader that tracker_info.txt no longer lists hands the lead to a listed
/// tracker, which removes it: shrinking does not need the leader stopped first.
#[test]
fn an_unlisted_leader_hands_over_the_lead_and_is_removed() {
    let mut c = Cluster::new(4, |_| {});
    let old = c.wait_leader(&[1, 2, 3, 4]);
    for i in 0..5 {
        let p = c.propose(old, &format!("e{i}"));
        c.wait_done(old, p);
    }
    // Every tracker_info.txt lost the leader's line (the others keep theirs).
    let rest: Vec<u64> = (1..=4).filter(|&i| i != old).collect();
    for id in 1..=4 {
        c.node(id).config.voters = rest.clone();
    }
    c.wait_voters(&rest, &rest);
    let new = c.wait_leader(&rest);
    assert_ne!(new, old);
    assert!(c.conf_changes.contains(&(ConfChangeType::RemoveNode, old)));
    c.ticks(5);
    let now = c.now;
    assert_eq!(
        c.node(old).propose(b"x".to_vec(), now),
        Err(ProposeError::Removed),
        "it learnt of its removal"
    );
    // 2 of the 3 left commit.
    let other = rest.iter().copied().find(|&i| i != new).unwrap();
    c.crash(other);
    let p = c.propose(new, "without the old leader");
    c.wait_done(new, p);
    let mut expected: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    expected.push("without the old leader".into());
    assert_eq!(c.entries(new), expected);
}

/// 3 -> 5 at once, with no snapshot (the new trackers replay the whole log, conf
/// changes included): one conf change at a time, the smallest missing first.
#[test]
fn growing_by_two_adds_one_tracker_at_a_time_and_replays_the_log() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..5 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.relist(5);
    c.wait_voters(&[1, 2, 3], &[1, 2, 3, 4, 5]);
    c.ticks(5);
    // Each as a learner first, then a voter once caught up.
    let added: Vec<(ConfChangeType, u64)> = [4, 5]
        .into_iter()
        .flat_map(|n| {
            [
                (ConfChangeType::AddLearnerNode, n),
                (ConfChangeType::AddNode, n),
            ]
        })
        .collect();
    assert_eq!(c.conf_changes, added);
    let expected: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    for id in 1..=5 {
        assert_eq!(c.entries(id), expected, "tracker {id}");
        assert_eq!(c.m(id).sm.restores, 0, "tracker {id} replayed the log");
        assert_eq!(c.node(id).progress().voters, [1, 2, 3, 4, 5]);
    }
    // Two of the five down: three of five commit.
    c.crash(4);
    c.crash((1..=3).find(|&i| i != leader).unwrap());
    let p = c.propose(5, "three of five");
    c.wait_done(5, p);
}

/// 1 -> 3: the two new trackers start blank with all three listed as voters. Cut
/// off from tracker 1 for longer than an election, they must not elect one of
/// themselves (an empty log would then overwrite tracker 1's history): they wait
/// for tracker 1 to add them, and end up with its whole log.
#[test]
fn two_blank_trackers_joining_a_one_tracker_cluster_wait_to_be_added() {
    let mut c = Cluster::new(1, |_| {});
    let leader = c.wait_leader(&[1]);
    for i in 0..5 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.relist(3);
    c.partition(&[1]);
    c.ticks(100);
    for id in [2, 3] {
        assert!(!c.node(id).is_leader(), "blank tracker {id} took the lead");
        assert_eq!(c.node(id).term(), 0, "blank tracker {id} campaigned");
    }
    c.cut.clear();
    c.wait_voters(&[1, 2, 3], &[1, 2, 3]);
    c.ticks(5);
    let expected: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    for id in 1..=3 {
        assert_eq!(c.entries(id), expected, "tracker {id}");
    }
    let p = c.propose(3, "after the growth");
    c.wait_done(3, p);
}

/// A tracker being added is a learner until its log has caught up: cut off right
/// after it was added, it does not count toward the quorum, so with one of the
/// original three down the other two still commit (as a voter at once it would
/// make the quorum 3 of 4, and nothing would commit). Healed, it catches up and
/// becomes a voter.
#[test]
fn a_new_tracker_votes_only_once_it_has_caught_up() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.wait_leader(&[1, 2, 3]);
    for i in 0..5 {
        let p = c.propose(leader, &format!("e{i}"));
        c.wait_done(leader, p);
    }
    c.relist(4);
    c.partition(&[4]);
    c.ticks(20);
    let leader = c.wait_leader(&[1, 2, 3]);
    let progress = c.node(leader).progress();
    assert_eq!(
        (progress.voters, progress.learners),
        (vec![1, 2, 3], vec![4])
    );
    let down = (1..=3).find(|&i| i != leader).unwrap();
    c.crash(down);
    let p = c.propose(leader, "two of three voters");
    c.wait_done(leader, p);
    c.start(down);
    c.cut.clear();
    c.wait_voters(&[1, 2, 3, 4], &[1, 2, 3, 4]);
    c.ticks(5);
    assert_eq!(c.entries(4), c.entries(leader));
    assert_eq!(c.entries(4).len(), 6);
}
