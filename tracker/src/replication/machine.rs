//! `LogMachine`: the Raft state machine of `--replication raft`, over this tracker's
//! own `sync_log.txt` and SQLite cache.
//!
//! A committed Raft entry's data is one sync-log line (a [`LogEntry`] encoded with
//! sequence number 0; the exactly-once request id rides inside it). Applying a run of
//! committed entries: each gets its real sequence number (the next line of this
//! tracker's log), all are appended to `sync_log.txt` with one write, and only
//! then applied through [`store::apply`] (the one apply path) in the cache's open
//! apply batch (one SQLite transaction, committed every [`BATCH_HOLD`]: see
//! [`Store`]), which also records the Raft index of the last line
//! ([`store::RaftApplied`]). So the log is written before the cache, as in shared-log
//! mode, and every tracker's log holds the same lines in the same order. The append
//! is not fsynced: the entries are durable in Raft's log already, and a tail the OS
//! lost is written again from there at start ([`super::log_tail`]).
//!
//! A crash between the append and the batch's commit leaves lines the cache replays at
//! start ([`crate::replay`]) without their Raft index: [`reconcile`] matches them to the
//! Raft entries they came from, so they are never appended twice.
//!
//! # Snapshots
//! `snapshot` = this tracker's `snapshot.db` (a consistent copy of the cache whose
//! `applied_log` row names the generation, entries and log offset it covers, and whose
//! `raft_index` is the snapshot's index), in one blob: `"swarmshare-snapshot v2\n"` and
//! the db. It is taken off the loop ([`crate::snapshot_job`]): the first call starts a
//! copy of the cache on a thread ([`crate::snapshot::copy`], which also reads the blob
//! there) and returns `None`; a call after it finished installs it and compacts this
//! tracker's `sync_log.txt` to start after it ([`crate::snapshot::install`], the same
//! code as shared-log mode) and returns it. Meanwhile raft-rs gets the snapshot stored
//! before, or `SnapshotTemporarilyUnavailable` (and asks again) when a follower needs a
//! newer one. A restore keeps the blob as `snapshot.db`, makes it the cache and writes a
//! log of the same generation that starts after it (no entry yet): the entries after
//! the snapshot then come from Raft and get the same numbers and lines as on the
//! others; a copy in flight then is of a replaced state and is dropped. The files are
//! written off the loop ([`super::restore`]: `start_restore`, then `poll_restore`
//! each turn and `install_restore` once they are done); [`StateMachine::restore`]
//! (the start) does the same steps and waits. So a snapshot is the size of the
//! state, not of the history (one larger than a peer frame travels in parts,
//! [`super::peer_frame`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;

use super::node::{Committed, MachineError, ProposalId, StateMachine};
use super::restore::{self, Prepared, RestoreJob, RestoreProgress, SNAPSHOT_MAGIC};
use crate::snapshot::{CacheCopy, Step};
use crate::snapshot_job::{Progress, SnapshotJob};
use crate::store::{self, Applied, RaftApplied, Store};
use crate::sync_log::{FsyncMode, LogEntry, SyncLog};

/// How long applied entries may wait in the cache's open apply batch before it is
/// committed (see [`Store`]'s apply batches): committing about ten times a second
/// instead of once per `Ready` (~150 a second at 10,000 changes/s) cut the commit's
/// cost from 9-10 us to about 2 us per change (BENCHMARKS.md, stop 15).
/// Other connections (the snapshot copy, `/status`) see a change at most this late.
pub const BATCH_HOLD: Duration = Duration::from_millis(100);

/// Why the machine could not apply, snapshot or restore.
#[derive(Debug, thiserror::Error)]
pub enum MachineFault {
    #[error("committed entry {index} is not a sync log line: {reason}")]
    BadEntry { index: u64, reason: String },
    #[error("sync_log.txt ends at byte {len} but the cache applied up to byte {applied}: refusing to append")]
    LogCacheMismatch { len: u64, applied: u64 },
    #[error("the snapshot is malformed")]
    BadSnapshot,
    #[error("taking a snapshot: {0}")]
    Snapshot(String),
    #[error("restoring a snapshot: {0}")]
    Restore(String),
    #[error("the restored cache covers Raft index {found}, the snapshot says {expected}")]
    SnapshotIndex { found: u64, expected: u64 },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Log(#[from] crate::sync_log::LogError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> MachineFault + '_ {
    move |source| MachineFault::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The proposer's last word on its own change, called inside the apply transaction
/// just before the entry is applied (so it sees exactly the state the entry meets).
pub type Recheck<'r> = dyn FnMut(&Connection, ProposalId) + 'r;

/// The state machine, borrowing the server's log and cache for one call.
pub struct LogMachine<'a> {
    pub dir: &'a Path,
    pub tracker_no: u32,
    pub fsync: FsyncMode,
    pub log: &'a mut SyncLog,
    pub store: &'a mut Store,
    /// The snapshot copy in flight off the loop.
    pub snapshots: &'a mut SnapshotJob,
    /// The restore of a received snapshot in flight off the loop.
    pub restores: &'a mut RestoreJob,
}

impl LogMachine<'_> {
    fn db_path(&self) -> PathBuf {
        self.dir.join(format!("tracker{}.db", self.tracker_no))
    }

    /// Appends and applies the entries not applied yet (see the module doc).
    pub fn apply_committed(
        &mut self,
        entries: &[Committed],
        recheck: &mut Recheck<'_>,
    ) -> Result<(), MachineFault> {
        let done = store::raft_applied(self.store.conn())?.index;
        let fresh: Vec<&Committed> = entries.iter().filter(|c| c.index > done).collect();
        if fresh.is_empty() {
            return Ok(()); // most turns: nothing newly committed
        }
        let before = self.store.applied()?;
        let mut todo = Vec::new();
        let mut lines = Vec::new();
        for (c, seq) in fresh.into_iter().zip(before.lines + 1..) {
            let (line, entry) =
                LogEntry::decode_renumbered(&c.data, seq).map_err(|e| MachineFault::BadEntry {
                    index: c.index,
                    reason: e.to_string(),
                })?;
            todo.push((c, entry));
            lines.push(line);
        }
        let last = todo.last().map_or(done, |(c, _)| c.index);
        let base;
        {
            // (Follows the file a snapshot compacted.)
            let _lock = self.log.lock_current(true)?;
            base = before.offset.max(self.log.first_entry());
            let len = self.log.file_len()?;
            if len != base {
                return Err(MachineFault::LogCacheMismatch { len, applied: base });
            }
            if let Err(e) = self.log.append_unsynced(&lines) {
                let _ = self.log.truncate(base);
                return Err(e.into());
            }
        }
        let applied = self.apply_in_batch(&todo, &lines, base, before, last, recheck);
        if applied.is_err() {
            self.store.abort_batch();
        }
        applied
    }

    /// [`Self::apply_committed`]'s entries applied in the open batch, the line at
    /// `base` first, and the new position recorded.
    fn apply_in_batch(
        &mut self,
        todo: &[(&Committed, LogEntry)],
        lines: &[String],
        base: u64,
        before: Applied,
        last: u64,
        recheck: &mut Recheck<'_>,
    ) -> Result<(), MachineFault> {
        let tx = self.store.batch()?;
        let mut offset = base;
        for ((c, entry), line) in todo.iter().zip(lines) {
            if let Some(p) = c.proposal {
                recheck(tx, p);
            }
            store::apply(tx, offset, entry)?;
            offset += line.len() as u64;
        }
        let after = before.lines + lines.len() as u64;
        store::set_applied(
            tx,
            Applied {
                offset,
                lines: after,
            },
        )?;
        store::set_raft_applied(
            tx,
            RaftApplied {
                index: last,
                lines: after,
            },
        )?;
        Ok(())
    }

    /// Commits the apply batch once it is [`BATCH_HOLD`] old (each turn).
    pub fn commit_due(&mut self, now: Instant) -> Result<(), MachineFault> {
        if let Some(opened_by) = now.checked_sub(BATCH_HOLD) {
            self.store.commit_batch_opened_before(opened_by)?;
        }
        Ok(())
    }

    /// Raft's snapshot, taken off the loop (see the module doc): `None` until a
    /// copy is done and installed. A failure is logged and retried a minute later.
    fn poll_snapshot(&mut self) -> Option<(u64, Vec<u8>)> {
        let now = Instant::now();
        let why = match self.snapshots.poll(now) {
            Progress::InFlight => return None,
            Progress::Idle => {
                self.start_snapshot(now);
                return None;
            }
            Progress::Failed(why) => why,
            Progress::Finished(copy) => match self.install_snapshot(copy) {
                Ok(taken) => return taken,
                Err(e) => {
                    self.snapshots.failed(now);
                    e.to_string()
                }
            },
        };
        let no = self.tracker_no;
        log::error!("tracker {no}: the snapshot failed (retried in a minute): {why}");
        None
    }

    fn start_snapshot(&mut self, now: Instant) {
        // The copy reads what is committed: all that is applied, then.
        if let Err(e) = self.store.commit_batch() {
            log::error!(
                "tracker {}: committing the cache before a snapshot: {e}",
                self.tracker_no
            );
            return;
        }
        let cache = self.db_path();
        self.snapshots.start(now, move || {
            let mut copy = crate::snapshot::copy(&cache).map_err(|e| e.to_string())?;
            copy.raft_data = Some(snapshot_data(&copy.tmp).map_err(|e| e.to_string())?);
            Ok(copy)
        });
    }

    /// Installs a finished copy and compacts the log; `None` when the log has
    /// moved past it (a restored snapshot).
    fn install_snapshot(
        &mut self,
        copy: CacheCopy,
    ) -> Result<Option<(u64, Vec<u8>)>, MachineFault> {
        let installed = crate::snapshot::install(self.log, &copy, Step::Done)
            .map_err(|e| MachineFault::Snapshot(e.to_string()))?;
        let (Some(_), Some(data)) = (installed, copy.raft_data) else {
            return Ok(None);
        };
        Ok(Some((copy.raft_index, data)))
    }

    /// Starts writing the files of a received snapshot off the loop (see
    /// [`super::restore`]); a copy in flight is of the state replaced here.
    pub fn start_restore(&mut self, index: u64, data: Bytes) -> Result<(), MachineFault> {
        self.snapshots.discard();
        let (dir, no) = (self.dir.to_path_buf(), self.tracker_no);
        let work = move || restore::prepare(&dir, no, index, &data).map_err(|e| e.to_string());
        if !self.restores.start(work) {
            return Err(MachineFault::Restore(
                "a restore is already in flight".into(),
            ));
        }
        Ok(())
    }

    /// The restore in flight, once its files are written; never blocks. A failed
    /// one is logged and written again later (see [`super::restore`]).
    pub fn poll_restore(&mut self) -> Option<Prepared> {
        match self.restores.poll(Instant::now()) {
            RestoreProgress::Idle | RestoreProgress::InFlight => None,
            RestoreProgress::Done(prepared) => Some(prepared),
            RestoreProgress::Failed { why, retry_in } => {
                log::error!(
                    "tracker {}: the snapshot restore failed (written again in {} s): {why}",
                    self.tracker_no,
                    retry_in.as_secs()
                );
                None
            }
        }
    }

    /// Puts a written restore in place (renames in the order of the module doc
    /// of [`super::restore`], a directory fsync) and reopens the log and cache.
    pub fn install_restore(&mut self, prepared: Prepared) -> Result<(), MachineFault> {
        let started = Instant::now();
        let snap = crate::snapshot::path(self.dir);
        std::fs::rename(&prepared.snapshot, &snap).map_err(io_at(&snap))?;
        let db_path = self.db_path();
        // Close the cache before its file is replaced.
        self.store.commit_batch()?;
        *self.store = Store::open_in_memory()?;
        for suffix in ["-wal", "-shm"] {
            let mut side = db_path.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
        std::fs::rename(&prepared.cache, &db_path).map_err(io_at(&db_path))?;
        std::fs::rename(&prepared.log, self.log.path()).map_err(io_at(self.log.path()))?;
        crate::sync_log::sync_dir(self.dir).map_err(io_at(self.dir))?;
        *self.log = SyncLog::open(self.dir, self.fsync)?;
        *self.store = Store::open(&db_path)?;
        let found = store::raft_applied(self.store.conn())?.index;
        if found != prepared.index {
            return Err(MachineFault::SnapshotIndex {
                found,
                expected: prepared.index,
            });
        }
        log::info!(
            "tracker {}: restored a snapshot at Raft index {} ({} bytes; the log now \
             starts after entry {}; installed in {} ms)",
            self.tracker_no,
            prepared.index,
            prepared.bytes,
            prepared.base.lines,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// [`Self::start_restore`], waited for, then installed (the start's way).
    fn restore_now(&mut self, index: u64, data: Bytes) -> Result<(), MachineFault> {
        self.start_restore(index, data)?;
        match self.restores.wait() {
            RestoreProgress::Done(prepared) => self.install_restore(prepared),
            RestoreProgress::Failed { why, .. } => Err(MachineFault::Restore(why)),
            RestoreProgress::Idle | RestoreProgress::InFlight => {
                Err(MachineFault::Restore("the restore was lost".into()))
            }
        }
    }
}

/// The snapshot as Raft carries it: the magic line and the db file at `path`.
fn snapshot_data(path: &Path) -> Result<Vec<u8>, MachineFault> {
    let mut file = std::fs::File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_or(0, |m| m.len());
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + len as usize);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    file.read_to_end(&mut out).map_err(io_at(path))?;
    Ok(out)
}

impl StateMachine for LogMachine<'_> {
    fn applied_index(&self) -> u64 {
        store::raft_applied(self.store.conn()).map_or(0, |a| a.index)
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        let one = Committed {
            index,
            term: 0,
            data: data.to_vec(),
            proposal: None,
        };
        Ok(self.apply_committed(&[one], &mut |_, _| {})?)
    }

    fn snapshot(&mut self) -> Result<Option<(u64, Vec<u8>)>, MachineError> {
        Ok(self.poll_snapshot())
    }

    fn restore(&mut self, index: u64, data: Bytes) -> Result<(), MachineError> {
        Ok(self.restore_now(index, data)?)
    }
}

/// At start: lines the cache replayed from `sync_log.txt` after the last recorded
/// Raft index (an append whose cache commit did not happen) are matched, in order, to
/// the next normal entries of the Raft log, and that index is recorded.
pub fn reconcile(
    store: &mut Store,
    entries: impl FnOnce(u64, u64) -> Result<Vec<(u64, bool)>, MachineFault>,
) -> Result<(), MachineFault> {
    let lines = store.applied()?.lines;
    let mut raft = store::raft_applied(store.conn())?;
    if lines <= raft.lines {
        return Ok(());
    }
    let extra = lines - raft.lines;
    // (index, is a change) of the entries after the recorded index.
    let after = entries(raft.index + 1, extra)?;
    let changes: Vec<u64> = after.iter().filter(|e| e.1).map(|e| e.0).collect();
    let Some(&index) = changes.get(extra as usize - 1) else {
        return Err(MachineFault::LogCacheMismatch {
            len: lines,
            applied: raft.lines,
        });
    };
    raft = RaftApplied { index, lines };
    let tx = store.transaction()?;
    store::set_raft_applied(&tx, raft)?;
    tx.commit()?;
    log::info!("{extra} log lines matched to Raft entries up to index {index}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync_log::{Op, FIRST_ENTRY};

    fn line(user: &str) -> Vec<u8> {
        LogEntry {
            ms: 1,
            tracker: 1,
            request_id: None,
            op: Op::CreateUser {
                user: user.into(),
                password_hash: "h".into(),
            },
        }
        .encode(0)
        .into_bytes()
    }

    fn committed(index: u64, user: &str) -> Committed {
        Committed {
            index,
            term: 1,
            data: line(user),
            proposal: Some(ProposalId(index)),
        }
    }

    /// Asks for a snapshot until the copy made off the loop is done (bounded).
    fn snapshot_now(m: &mut LogMachine<'_>) -> (u64, Vec<u8>) {
        for _ in 0..10_000 {
            if let Some(taken) = m.snapshot().unwrap() {
                return taken;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the snapshot copy never finished");
    }

    fn job() -> SnapshotJob {
        SnapshotJob::new(crate::snapshot_job::RETRY_AFTER, None)
    }

    #[test]
    fn applies_once_in_order_and_snapshot_restores_elsewhere() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut log = SyncLog::open(a.path(), FsyncMode::Batch).unwrap();
        let mut st = Store::open(&a.path().join("tracker1.db")).unwrap();
        st.set_generation(log.generation()).unwrap();
        let (mut job_a, mut job_b) = (job(), job());
        let mut m = LogMachine {
            dir: a.path(),
            tracker_no: 1,
            fsync: FsyncMode::Batch,
            log: &mut log,
            store: &mut st,
            snapshots: &mut job_a,
            restores: &mut RestoreJob::new(None),
        };
        let mut seen = Vec::new();
        let batch = [committed(2, "ann"), committed(4, "bob")];
        m.apply_committed(&batch, &mut |_, p| seen.push(p)).unwrap();
        // Delivered again (e.g. after a restart): nothing is appended twice.
        m.apply_committed(&batch, &mut |_, p| seen.push(p)).unwrap();
        assert_eq!(seen, vec![ProposalId(2), ProposalId(4)]);
        assert_eq!(m.applied_index(), 4);
        let text = std::fs::read_to_string(m.log.path()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(m.snapshot().unwrap(), None, "the first call starts a copy");
        let (index, snap) = snapshot_now(&mut m);
        assert_eq!(index, 4);
        // The snapshot is the db alone, and it compacted this tracker's log.
        assert!(!snap.windows(4).any(|w| w == b"ann "), "no log lines in it");
        let compacted = std::fs::read_to_string(m.log.path()).unwrap();
        assert_eq!(compacted.lines().count(), 1, "{compacted}");
        assert!(compacted.contains(" after 2 "), "{compacted}");

        let mut log_b = SyncLog::open(b.path(), FsyncMode::Batch).unwrap();
        let mut st_b = Store::open(&b.path().join("tracker2.db")).unwrap();
        let mut mb = LogMachine {
            dir: b.path(),
            tracker_no: 2,
            fsync: FsyncMode::Batch,
            log: &mut log_b,
            store: &mut st_b,
            snapshots: &mut job_b,
            restores: &mut RestoreJob::new(None),
        };
        mb.restore(index, snap.into()).unwrap();
        mb.apply_committed(&[committed(5, "cy")], &mut |_, _| {})
            .unwrap();
        let users = store::table_rows(mb.store.conn(), "users").unwrap();
        assert_eq!(users.len(), 3, "{users:?}");
        // The same entry on the first tracker (whose log a snapshot replaced):
        // both logs are the same file, base and lines after it.
        m.apply_committed(&[committed(5, "cy")], &mut |_, _| {})
            .unwrap();
        let text_a = std::fs::read_to_string(m.log.path()).unwrap();
        let text_b = std::fs::read_to_string(mb.log.path()).unwrap();
        assert_eq!(text_a, text_b);
        assert_eq!(text_b.lines().count(), 2, "{text_b}");
        assert!(text.lines().count() == 3);
        assert!(mb.restore(9, Bytes::from_static(b"junk")).is_err());
    }

    #[test]
    fn reconcile_matches_replayed_lines_to_entries() {
        let mut st = Store::open_in_memory().unwrap();
        let e = LogEntry::decode(&line("ann")).unwrap().1;
        st.apply_entries(&[(FIRST_ENTRY, e)], 100).unwrap();
        // Entry 1 is a leader's empty entry, 2 the change.
        reconcile(&mut st, |from, _| {
            assert_eq!(from, 1);
            Ok(vec![(1, false), (2, true)])
        })
        .unwrap();
        assert_eq!(
            store::raft_applied(st.conn()).unwrap(),
            RaftApplied { index: 2, lines: 1 }
        );
        assert!(reconcile(&mut st, |_, _| panic!("nothing to match")).is_ok());
    }
}
