//! Start-up of `--replication raft`: the cluster key, Raft's storage `raft<N>.db`,
//! lines the cache replayed matched to their Raft entries, the node opened over the
//! state machine, and the driver that dials the other trackers.

use std::path::Path;
use std::time::Instant;

use raft::{GetEntriesContext, Storage};

use super::cluster_key;
use super::driver::{RaftDriver, ELECTION_TICKS, HEARTBEAT_TICKS, PROPOSAL_DEADLINE};
use super::machine::{self, LogMachine, MachineFault};
use super::node::{NodeConfig, RaftNode};
use super::peer_frame::LinkLimits;
use super::restore::RestoreJob;
use super::storage::RaftStorage;
use super::tracker_list::TrackerList;
use crate::snapshot_job::SnapshotJob;
use crate::store::Store;
use crate::sync_log::SyncLog;
use crate::{Options, TrackerError};

fn raft_err(e: impl std::fmt::Display) -> TrackerError {
    TrackerError::Raft(e.to_string())
}

/// Everything the driver needs, over the storage [`open_storage`] opened: the
/// trackers of tracker_info.txt, numbered by their lines, are the membership the
/// leader brings the cluster to (the committed one is in the storage).
pub fn start(
    dir: &Path,
    opts: &Options,
    trackers: &[String],
    storage: RaftStorage,
    log: &mut SyncLog,
    store: &mut Store,
) -> Result<RaftDriver, TrackerError> {
    let (tracker_no, fsync) = (opts.tracker_no, opts.fsync);
    let snapshot_every = opts.snapshot_every.max(1);
    let limits = LinkLimits {
        max_frame: opts.raft_max_frame,
        ..LinkLimits::default()
    };
    let me = tracker_no as u64;
    let listed: Vec<u64> = (1..=trackers.len() as u64).collect();
    let (key, created) = cluster_key::load_or_create(dir).map_err(raft_err)?;
    if created {
        log::warn!(
            "created the cluster key {}: copy it (mode 0600) into every other tracker's data dir \
             before it starts, or they cannot talk to this one",
            cluster_key::key_path(dir).display()
        );
    }
    machine::reconcile(store, |from, _| changes_from(&storage, from)).map_err(raft_err)?;
    // (Opening only restores a snapshot; none is taken here.)
    let mut snapshots = SnapshotJob::new(crate::snapshot_job::RETRY_AFTER, None);
    let mut restores = RestoreJob::new(None);
    let mut machine = LogMachine {
        dir,
        tracker_no: tracker_no as u32,
        fsync,
        log,
        store,
        snapshots: &mut snapshots,
        restores: &mut restores,
    };
    let mut config = NodeConfig::new(me, listed);
    config.proposal_deadline = PROPOSAL_DEADLINE;
    config.election_tick = ELECTION_TICKS;
    config.heartbeat_tick = HEARTBEAT_TICKS;
    config.snapshot_every = snapshot_every;
    config.keep_entries = config.keep_entries.min(snapshot_every);
    let boot = u64::from_le_bytes(super::peer_frame::fresh_nonce()[..8].try_into().expect("8"));
    let node = RaftNode::open(config, storage, &mut machine, boot)?;
    let peers = trackers
        .iter()
        .enumerate()
        .map(|(i, addr)| (i as u64 + 1, addr.clone()))
        .filter(|(no, _)| *no != me)
        .collect();
    log::info!(
        "tracker {me}: raft replication, {} trackers listed, voters {:?} (term {})",
        trackers.len(),
        node.progress().voters,
        node.term()
    );
    let now = Instant::now();
    let mut driver = RaftDriver::new(node, key.bytes(), limits, peers, now);
    let taken = std::fs::read_to_string(&opts.tracker_info).unwrap_or_default();
    driver.watch_list(TrackerList::new(opts.tracker_info.clone(), taken, now));
    Ok(driver)
}

/// Raft's storage, `raft<N>.db` in the data dir; a new one starts with every
/// tracker of tracker_info.txt as a voter (numbered by its line), an existing one
/// keeps the membership Raft committed.
pub fn open_storage(
    dir: &Path,
    tracker_no: usize,
    trackers: usize,
) -> Result<RaftStorage, TrackerError> {
    let voters: Vec<u64> = (1..=trackers as u64).collect();
    RaftStorage::open(&dir.join(format!("raft{tracker_no}.db")), &voters).map_err(raft_err)
}

/// Before the log is checked against the cache: a `sync_log.txt` tail lost with
/// the OS written again from Raft's log ([`super::log_tail`]).
pub fn rebuild_log_tail(
    storage: &RaftStorage,
    log: &mut SyncLog,
    store: &Store,
) -> Result<(), TrackerError> {
    let done = super::log_tail::rebuild(log, store, storage).map_err(|e| {
        raft_err(format!(
            "sync_log.txt could not be made whole from Raft's log: {e}"
        ))
    })?;
    if done.lines > 0 {
        log::warn!(
            "sync_log.txt: wrote {} lines the OS had lost again from Raft's log",
            done.lines
        );
    }
    Ok(())
}

/// (index, is a change) of the stored Raft entries from `from` on.
fn changes_from(storage: &RaftStorage, from: u64) -> Result<Vec<(u64, bool)>, MachineFault> {
    let last = storage.last_index().unwrap_or(0);
    if from > last {
        return Ok(Vec::new());
    }
    let entries = storage
        .entries(from, last + 1, None, GetEntriesContext::empty(false))
        .map_err(|e| MachineFault::BadEntry {
            index: from,
            reason: format!("the Raft log no longer holds it: {e}"),
        })?;
    Ok(entries
        .iter()
        .map(|e| (e.index, super::log_tail::is_change(e)))
        .collect())
}
