//! `sync_log.txt`'s tail written again from Raft's log at start (raft mode).
//!
//! In raft mode the apply writes `sync_log.txt` without an fsync
//! ([`SyncLog::append_unsynced`]): a committed entry is already durable in Raft's
//! own log (`raft<N>.db`, fsynced before the entry counts toward a commit), so a
//! change waits for one disk flush on a majority, not for a second one on the
//! tracker that applies it. An OS crash (not a `kill -9`: the page cache survives
//! that) can then leave the log shorter than the cache, whose commits may have
//! reached the disk first, with a torn last line, or with a hole where one page
//! of it never reached the disk. [`rebuild`] makes the log whole before it is
//! checked against the cache:
//! 1. the intact prefix is found: every line from the base, by its checksum and
//!    number ([`SyncLog::intact_prefix`]);
//! 2. whatever follows it is cut (and kept beside the log as
//!    `sync_log.txt.corrupt-<ms>`);
//! 3. the lines the cache applied after that prefix are written again from their
//!    Raft entries (a line is its entry encoded with its number, the same bytes
//!    on every tracker) and fsynced. They must end exactly where the cache says it
//!    applied up to, or the start is refused.
//!
//! Lines after what the cache applied are not written here: the cache's Raft
//! index is before their entries, so Raft hands those to the machine again.
//! Every entry a rebuild can need is still in Raft's log: the log file begins at
//! the last snapshot (taking one rewrites it, with an fsync), and Raft's log keeps
//! every entry after a snapshot's index.

use raft::prelude::{Entry, EntryType};
use raft::{GetEntriesContext, Storage};

use super::machine::MachineFault;
use super::storage::RaftStorage;
use crate::store::{self, Store};
use crate::sync_log::{LogEntry, SyncLog};

/// Entries read from Raft's log at a time.
const WINDOW: u64 = 1024;

/// What [`rebuild`] did, for the start-up log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Bytes cut after the intact prefix.
    pub cut: u64,
    /// Lines written again from Raft's log.
    pub lines: u64,
}

/// Makes `log` whole up to what `store` applied (see the module doc). A cache
/// of another generation, or behind the log's base, is left to the usual
/// start-up (it is rebuilt from the log or loaded from the snapshot).
pub fn rebuild(
    log: &mut SyncLog,
    store: &Store,
    raft: &RaftStorage,
) -> Result<Rebuilt, MachineFault> {
    let cache = store.cache_pos()?;
    if cache.generation != Some(log.generation()) || cache.lines < log.base().lines {
        return Ok(Rebuilt::default());
    }
    let _lock = log.lock_current(true)?;
    let (end, intact) = log.intact_prefix()?;
    let mut done = Rebuilt::default();
    let len = log.file_len()?;
    if len > end {
        log.cut_torn_tail(
            end,
            "not intact lines; raft mode writes them again from Raft's log",
        )?;
        done.cut = len - end;
    }
    if intact >= cache.lines {
        return Ok(done);
    }
    let first = entry_of_line(raft, store, intact + 1)?;
    let mut lines = Vec::new();
    let mut seq = intact + 1;
    for_data_entries(raft, first, |e| {
        let (line, _) =
            LogEntry::decode_renumbered(&e.data, seq).map_err(|err| MachineFault::BadEntry {
                index: e.index,
                reason: err.to_string(),
            })?;
        lines.push(line);
        seq += 1;
        if lines.len() >= WINDOW as usize || seq > cache.lines {
            log.append_unsynced(&std::mem::take(&mut lines))?;
        }
        Ok(seq <= cache.lines)
    })?;
    let now = log.file_len()?;
    if seq <= cache.lines || now != cache.offset {
        log.truncate(end)?;
        return Err(MachineFault::LogCacheMismatch {
            len: now,
            applied: cache.offset,
        });
    }
    log.sync()?;
    done.lines = cache.lines - intact;
    Ok(done)
}

/// The Raft index of the entry that became line `line`: counted back from, or
/// on from, the line the cache last recorded with its index.
fn entry_of_line(raft: &RaftStorage, store: &Store, line: u64) -> Result<u64, MachineFault> {
    let known = store::raft_applied(store.conn())?;
    let missing = || MachineFault::BadEntry {
        index: known.index,
        reason: format!("the Raft log no longer holds the entry of sync log line {line}"),
    };
    if line > known.lines {
        // Lines the cache replayed after its last recorded index: the next entries.
        let mut skip = line - known.lines - 1;
        let mut found = None;
        for_data_entries(raft, known.index + 1, |e| {
            if skip == 0 {
                found = Some(e.index);
                return Ok(false);
            }
            skip -= 1;
            Ok(true)
        })?;
        return found.ok_or_else(missing);
    }
    // Line `known.lines` is the entry at `known.index`; count back.
    let mut back = known.lines - line;
    let mut hi = known.index + 1;
    let low = raft.first_index().map_err(|_| missing())?;
    while hi > low {
        let lo = hi.saturating_sub(WINDOW).max(low);
        let window = read(raft, lo, hi)?;
        for e in window.iter().rev().filter(|e| is_change(e)) {
            if back == 0 {
                return Ok(e.index);
            }
            back -= 1;
        }
        hi = lo;
    }
    Err(missing())
}

/// Calls `each` with every change entry from index `from` on, in order, until
/// it returns false or the log ends.
fn for_data_entries(
    raft: &RaftStorage,
    from: u64,
    mut each: impl FnMut(&Entry) -> Result<bool, MachineFault>,
) -> Result<(), MachineFault> {
    let last = raft.last_index().unwrap_or(0);
    let mut lo = from.max(raft.first_index().unwrap_or(1));
    while lo <= last {
        let hi = (lo + WINDOW).min(last + 1);
        for e in read(raft, lo, hi)?.iter().filter(|e| is_change(e)) {
            if !each(e)? {
                return Ok(());
            }
        }
        lo = hi;
    }
    Ok(())
}

fn read(raft: &RaftStorage, lo: u64, hi: u64) -> Result<Vec<Entry>, MachineFault> {
    raft.entries(lo, hi, None, GetEntriesContext::empty(false))
        .map_err(|e| MachineFault::BadEntry {
            index: lo,
            reason: format!("reading Raft's log: {e}"),
        })
}

/// A committed entry that is a sync log line (not a leader's empty entry).
pub fn is_change(e: &Entry) -> bool {
    e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::machine::LogMachine;
    use crate::replication::node::Committed;
    use crate::snapshot_job::SnapshotJob;
    use crate::store::RaftApplied;
    use crate::sync_log::{FsyncMode, Op};

    fn line(user: &str) -> Vec<u8> {
        let op = Op::CreateUser {
            user: user.into(),
            password_hash: "h".into(),
        };
        let entry = LogEntry {
            ms: 1,
            tracker: 1,
            request_id: None,
            op,
        };
        entry.encode(0).into_bytes()
    }

    /// Raft's log (entry 1 a leader's empty entry, 2..=13 changes) applied by the
    /// machine, as a tracker would: the dir, its log file's bytes, the storage.
    fn applied_tracker() -> (tempfile::TempDir, Vec<u8>, RaftStorage) {
        let dir = tempfile::tempdir().unwrap();
        let mut raft = RaftStorage::open(&dir.path().join("raft1.db"), &[1]).unwrap();
        let mut ents = vec![Entry::default()];
        for i in 2..=13u64 {
            let mut e = Entry::default();
            e.data = line(&format!("user{i}")).into();
            ents.push(e);
        }
        for (i, e) in ents.iter_mut().enumerate() {
            (e.index, e.term) = (i as u64 + 1, 1);
        }
        raft.persist(None, &ents, None).unwrap();
        let mut log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let mut store = Store::open(&dir.path().join("tracker1.db")).unwrap();
        store.set_generation(log.generation()).unwrap();
        let mut job = SnapshotJob::new(crate::snapshot_job::RETRY_AFTER, None);
        let mut m = LogMachine {
            dir: dir.path(),
            tracker_no: 1,
            fsync: FsyncMode::Batch,
            log: &mut log,
            store: &mut store,
            snapshots: &mut job,
            restores: &mut crate::replication::restore::RestoreJob::new(None),
        };
        let committed: Vec<Committed> = ents
            .iter()
            .filter(|e| is_change(e))
            .map(|e| Committed {
                index: e.index,
                term: 1,
                data: e.data.to_vec(),
                proposal: None,
            })
            .collect();
        m.apply_committed(&committed, &mut |_, _| {}).unwrap();
        let bytes = std::fs::read(log.path()).unwrap();
        (dir, bytes, raft)
    }

    fn reopen(dir: &tempfile::TempDir) -> (SyncLog, Store) {
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let store = Store::open(&dir.path().join("tracker1.db")).unwrap();
        (log, store)
    }

    /// Start of each line of `bytes` (the version line is line 0).
    fn line_starts(bytes: &[u8]) -> Vec<usize> {
        let ends = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n');
        std::iter::once(0).chain(ends.map(|(i, _)| i + 1)).collect()
    }

    #[test]
    fn a_lost_tail_and_a_hole_are_written_again_byte_for_byte() {
        let (dir, bytes, raft) = applied_tracker();
        let starts = line_starts(&bytes);
        // Line 9 zeroed, lines 11-12 gone, half of line 11 left (torn).
        let mut damaged = bytes[..starts[11] + 7].to_vec();
        damaged[starts[9]..starts[10] - 1].fill(0);
        std::fs::write(dir.path().join("sync_log.txt"), &damaged).unwrap();
        let (mut log, store) = reopen(&dir);
        let done = rebuild(&mut log, &store, &raft).unwrap();
        assert_eq!(done.lines, 4, "lines 9-12");
        assert_eq!(done.cut, (starts[11] + 7 - starts[9]) as u64);
        assert_eq!(std::fs::read(log.path()).unwrap(), bytes);
        // A whole log is left alone.
        assert_eq!(
            rebuild(&mut log, &store, &raft).unwrap(),
            Rebuilt::default()
        );
    }

    #[test]
    fn lines_replayed_after_the_recorded_index_are_found_by_counting_on() {
        let (dir, bytes, raft) = applied_tracker();
        let (mut log, mut store) = reopen(&dir);
        // As after a replay whose Raft index was not recorded yet: line 5 at index 6.
        let tx = store.transaction().unwrap();
        store::set_raft_applied(&tx, RaftApplied { index: 6, lines: 5 }).unwrap();
        tx.commit().unwrap();
        let starts = line_starts(&bytes);
        std::fs::write(log.path(), &bytes[..starts[8]]).unwrap();
        let done = rebuild(&mut log, &store, &raft).unwrap();
        assert_eq!(done.lines, 5, "lines 8-12");
        assert_eq!(std::fs::read(log.path()).unwrap(), bytes);
    }

    #[test]
    fn entries_raft_no_longer_holds_refuse_the_start_and_cut_nothing_good() {
        let (dir, bytes, _) = applied_tracker();
        let empty = RaftStorage::open(&dir.path().join("raft9.db"), &[1]).unwrap();
        let (mut log, store) = reopen(&dir);
        let starts = line_starts(&bytes);
        std::fs::write(log.path(), &bytes[..starts[10]]).unwrap();
        assert!(rebuild(&mut log, &store, &empty).is_err());
        assert_eq!(std::fs::read(log.path()).unwrap(), &bytes[..starts[10]]);
    }
}
