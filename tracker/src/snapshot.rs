//! Snapshots and log compaction, the same in both replication modes.
//!
//! A snapshot is `<data-dir>/snapshot.db`: a consistent copy of a tracker's
//! cache (`VACUUM INTO`), whose `applied_log` row names the log generation, the
//! entries (`lines`), the logical log offset and (raft mode) the Raft index it
//! covers. Taking one has two halves, so that the long one runs off the loop
//! ([`crate::snapshot_job`]):
//!
//! 0. [`copy`], on a thread: `VACUUM INTO <cache>.snapshot-tmp` from a read-only
//!    connection of its own (the cache is WAL: one read transaction sees one
//!    committed state, and the copy's `applied_log` row says exactly which),
//!    switched to a plain rollback journal, fsynced. Nothing else is touched,
//!    so the loop goes on applying and answering meanwhile.
//!
//! Then [`install`], on the loop, under the log's exclusive lock:
//!
//! 1. rename the copy over `snapshot.db`, fsync the directory;
//! 2. write `sync_log.txt.compact-tmp`: a version line
//!    `swarmshare-sync-log v2 <generation> after <lines> <offset>` and the log's
//!    bytes from that offset on (the tail appended since the copy), fsync
//!    ([`SyncLog::write_compacted`]);
//! 3. rename it over `sync_log.txt`, fsync the directory
//!    ([`SyncLog::install_compacted`]). The history before the base is dropped
//!    (the snapshot holds its effect); nothing else is kept.
//!
//! A copy the log has moved past meanwhile (another tracker compacted further,
//! a snapshot from the Raft leader replaced the state) or of another generation
//! is deleted instead. [`compact`] runs both halves in a row (tests, tools).
//!
//! A crash before step 1's rename leaves the old snapshot (or none) and the old
//! log; between 1 and 3 a snapshot newer than the log's base, which is fine (its
//! offset is a line of the log); after 3 the new pair. The generation is kept:
//! sequence numbers and offsets keep running, so every check (checksum, sequence
//! run, generation) holds across a compaction, and a cache of this generation
//! that is past the base simply goes on. A cache behind the base (a new or
//! deleted `.db`, a tracker that was stopped or slow while another compacted)
//! is loaded from the snapshot ([`load`]) and replays only the tail.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::store::{Store, StoreError};
use crate::sync_log::{io_err, sync_dir, Base, CachePos, Generation, LogError, SyncLog};
use crate::TrackerError;

/// File name of the snapshot inside the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot.db";

/// The step a compaction stops after (tests simulate a crash with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `snapshot.db` is in place; the log is untouched.
    Snapshot,
    /// The compacted log is written beside the log, not renamed yet.
    LogWritten,
    /// The compacted log replaced the old one.
    Done,
}

/// A copy of the cache made by [`copy`]: durable beside the snapshot, not
/// installed yet.
#[derive(Debug)]
pub struct CacheCopy {
    /// The copy's file ([`copy_path`]).
    pub tmp: PathBuf,
    /// What it covers: the cache's `applied_log` row as it was copied.
    pub pos: CachePos,
    /// The Raft index it covers (raft mode; 0 in shared-log mode).
    pub raft_index: u64,
    /// Raft mode: the snapshot as Raft carries it, read on the copy's thread.
    pub raft_data: Option<Vec<u8>>,
}

impl CacheCopy {
    /// The log base the copy covers.
    pub fn base(&self) -> Base {
        Base {
            lines: self.pos.lines,
            offset: self.pos.offset,
        }
    }
}

/// The snapshot's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Where [`copy`] writes the copy of the cache at `cache`: beside it, named
/// after it (trackers sharing a data dir never write the same file).
pub fn copy_path(cache: &Path) -> PathBuf {
    let mut name = cache.as_os_str().to_os_string();
    name.push(".snapshot-tmp");
    PathBuf::from(name)
}

/// Makes `tmp` durable, then renames it to `to` in `dir` and makes that durable.
fn install_file(tmp: &Path, to: &Path, dir: &Path) -> Result<(), LogError> {
    sync_file(tmp)?;
    std::fs::rename(tmp, to).map_err(io_err(to))?;
    sync_dir(dir).map_err(io_err(dir))
}

fn sync_file(path: &Path) -> Result<(), LogError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Step 0 (any thread): copies the cache at `cache` to [`copy_path`] from a
/// read-only connection of its own, durably; returns what the copy covers.
pub fn copy(cache: &Path) -> Result<CacheCopy, TrackerError> {
    let tmp = copy_path(cache);
    let _ = std::fs::remove_file(&tmp);
    {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let src = Connection::open_with_flags(cache, flags).map_err(StoreError::from)?;
        src.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(StoreError::from)?;
        crate::store::vacuum_into(&src, &tmp)?;
    }
    let (pos, raft_index) = {
        let conn = Connection::open(&tmp).map_err(StoreError::from)?;
        // A plain rollback-journal file: no -wal beside a file that is renamed.
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(StoreError::from)?;
        let pos = crate::store::cache_pos(&conn).map_err(StoreError::from)?;
        let raft = crate::store::raft_applied(&conn).map_err(StoreError::from)?;
        (pos, raft.index)
    };
    sync_file(&tmp)?;
    Ok(CacheCopy {
        tmp,
        pos,
        raft_index,
        raft_data: None,
    })
}

/// Steps 1-3 (the loop, under the log's exclusive lock): installs `copy` as
/// `snapshot.db` and rewrites the log to start after it, stopping after
/// `stop` (tests); `log` is the new file afterwards. Returns the new base, or
/// `None` when the copy is of another generation or behind the log's base
/// (then it is deleted). A copy at the base is installed, the log kept.
pub fn install(
    log: &mut SyncLog,
    copy: &CacheCopy,
    stop: Step,
) -> Result<Option<Base>, TrackerError> {
    let dir = log.path().parent().unwrap_or(Path::new(".")).to_path_buf();
    let lock = log.lock_current(true)?;
    let base = copy.base();
    if copy.pos.generation != Some(log.generation()) || base.lines < log.base().lines {
        let _ = std::fs::remove_file(&copy.tmp);
        return Ok(None);
    }
    install_file(&copy.tmp, &path(&dir), &dir)?;
    if stop == Step::Snapshot || base.lines == log.base().lines {
        return Ok(Some(base));
    }
    let tmp = log.write_compacted(base)?;
    if stop == Step::LogWritten {
        return Ok(Some(base));
    }
    let new = log.install_compacted(&tmp)?;
    *log = new;
    drop(lock); // the old file's lock: nobody appended to it meanwhile
    Ok(Some(base))
}

/// Whether the log holds at least `min_entries` (at least 1) entries past its
/// base that the cache applied: catches the cache up first and stamps it with
/// the log's generation (which the copy then names).
pub fn due(log: &mut SyncLog, store: &mut Store, min_entries: u64) -> Result<bool, TrackerError> {
    let _lock = log.lock_current(false)?;
    crate::server::catch_up(log, store)?;
    // The cache holds this log (the catch-up checked it): the snapshot says so.
    store.set_generation(log.generation())?;
    let applied = store.applied()?;
    Ok(applied.lines >= log.base().lines.saturating_add(min_entries.max(1)))
}

/// The cache's file, which [`copy`] reads.
pub fn cache_file(store: &Store) -> Result<PathBuf, TrackerError> {
    store.path().map(Path::to_path_buf).ok_or_else(|| {
        TrackerError::from(StoreError::Snapshot {
            path: "(memory)".into(),
            why: "an in-memory cache has no file to copy".into(),
        })
    })
}

/// Compacts the log in one go on this thread ([`due`], [`copy`], [`install`]),
/// stopping after `stop` (tests); `log` is the new file afterwards. Returns the
/// new base, or `None` when the log (maybe just compacted by another tracker)
/// holds fewer than `min_entries` entries past its base.
pub fn compact(
    log: &mut SyncLog,
    store: &mut Store,
    min_entries: u64,
    stop: Step,
) -> Result<Option<Base>, TrackerError> {
    if !due(log, store, min_entries)? {
        return Ok(None);
    }
    let copy = copy(&cache_file(store)?)?;
    install(log, &copy, stop)
}

/// Loads `snapshot.db` into a cache that is behind the log's base. The snapshot
/// must be of the log's generation and cover at least the base (it may cover
/// more: a compaction that stopped between its steps); the catch-up then
/// checks that its offset is a line of the log numbered right.
pub fn load(store: &mut Store, log: &SyncLog) -> Result<Base, TrackerError> {
    let dir = log.path().parent().unwrap_or(Path::new("."));
    let snap = path(dir);
    let base = log.base();
    let refuse = |why: String| LogError::Snapshot {
        path: log.path().to_path_buf(),
        base: base.lines,
        snapshot: snap.clone(),
        why,
    };
    if !snap.exists() {
        return Err(refuse("that file is missing".into()).into());
    }
    let loaded = store.load_snapshot(&snap, |pos| {
        if pos.generation != Some(log.generation()) {
            return Err(format!(
                "it holds generation {}, the log is generation {}",
                pos.generation
                    .map_or("(none)".to_string(), |g| g.to_string()),
                log.generation()
            ));
        }
        if pos.lines < base.lines || pos.offset < base.offset {
            return Err(format!(
                "it covers only {} entries (up to offset {})",
                pos.lines, pos.offset
            ));
        }
        Ok(())
    });
    let pos = loaded.map_err(|e| match e {
        StoreError::Snapshot { why, .. } => TrackerError::from(refuse(why)),
        other => other.into(),
    })?;
    log::info!(
        "loaded the snapshot {} ({} entries, up to log offset {})",
        snap.display(),
        pos.lines,
        pos.offset
    );
    Ok(Base {
        lines: pos.lines,
        offset: pos.offset,
    })
}

/// Salvage of a compacted log ([`crate::log_repair::salvage`]): makes
/// `snapshot.db` name the new log's `generation`. It must cover exactly `base`
/// (where the salvaged log starts). Written to a copy, made durable, renamed.
pub fn restamp(dir: &Path, base: Base, generation: Generation) -> Result<(), LogError> {
    let snap = path(dir);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let refuse = |why: String| LogError::Snapshot {
        path: dir.join(crate::sync_log::LOG_FILE),
        base: base.lines,
        snapshot: snap.clone(),
        why,
    };
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(&snap, &tmp).map_err(|e| refuse(format!("it cannot be copied ({e})")))?;
    let stamp = || -> rusqlite::Result<crate::store::Applied> {
        let conn = rusqlite::Connection::open(&tmp)?;
        let pos = crate::store::applied(&conn)?;
        conn.execute(
            "UPDATE applied_log SET generation = ?1 WHERE id = 1",
            [generation.to_string()],
        )?;
        Ok(pos)
    };
    let pos = stamp().map_err(|e| refuse(format!("it cannot be read ({e})")))?;
    let (lines, offset) = (pos.lines, pos.offset);
    if (lines, offset) != (base.lines, base.offset) {
        let _ = std::fs::remove_file(&tmp);
        return Err(refuse(format!(
            "it covers {lines} entries (up to offset {offset}), not exactly the log's base \
             (offset {}): salvage needs the snapshot of the base",
            base.offset
        )));
    }
    install_file(&tmp, &snap, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dump;
    use crate::sync_log::{CachePos, FsyncMode, Header, LogEntry, Op, FIRST_ENTRY, LOG_FILE};

    fn entry(i: u64) -> LogEntry {
        let op = match i % 3 {
            0 => Op::CreateUser {
                user: format!("user{i}"),
                password_hash: format!("h{i}"),
            },
            1 => Op::CreateGroup {
                group: format!("g{i}"),
                owner: format!("user{}", i - 1),
            },
            _ => Op::RequestJoin {
                group: format!("g{}", i - 1),
                user: format!("user{}", i - 2),
            },
        };
        LogEntry {
            ms: 1_700_000_000_000 + i,
            tracker: 1,
            request_id: Some(format!("c r {i}")),
            op,
        }
    }

    /// Appends entries `from..to` (numbered `from + 1 ..`) and applies them.
    fn append(log: &mut SyncLog, store: &mut Store, from: u64, to: u64) {
        let lines: Vec<String> = (from..to).map(|i| entry(i).encode(i + 1)).collect();
        let _lock = log.lock_current(true).unwrap();
        log.append(&lines).unwrap();
        crate::server::catch_up(log, store).unwrap();
    }

    /// A fresh data dir with a cache (`tracker1.db`) and a log.
    fn fresh() -> (tempfile::TempDir, PathBuf, Store, SyncLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tracker1.db");
        let store = Store::open(&db).unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        (dir, db, store, log)
    }

    /// Entries `0..at`, a compaction, then entries `at..end`.
    fn compacted_between(log: &mut SyncLog, store: &mut Store, at: u64, end: u64) {
        append(log, store, 0, at);
        compact(log, store, 1, Step::Done).unwrap();
        append(log, store, at, end);
    }

    /// What a restart does: open the log, check it against the cache, replay.
    fn restart(dir: &Path, db: &Path) -> (SyncLog, Store) {
        let mut store = Store::open(db).unwrap();
        let mut log = SyncLog::open(dir, FsyncMode::Batch).unwrap();
        let rec = log.recover(store.cache_pos().unwrap()).unwrap();
        if rec.rebuild_cache {
            store.reset().unwrap();
        }
        store.set_generation(log.generation()).unwrap();
        let _lock = log.lock_current(false).unwrap();
        let done = crate::server::catch_up(&log, &mut store).unwrap();
        assert!(done.stop.is_none(), "{:?}", done.stop);
        drop(_lock);
        (log, store)
    }

    /// A reference cache: every entry `0..n` applied from scratch, in memory.
    fn reference(n: u64) -> String {
        let mut st = Store::open_in_memory().unwrap();
        let mut off = FIRST_ENTRY;
        let entries: Vec<(u64, LogEntry)> = (0..n)
            .map(|i| {
                let e = entry(i);
                let at = off;
                off += e.encode(i + 1).len() as u64;
                (at, e)
            })
            .collect();
        st.apply_entries(&entries, off).unwrap();
        dump(st.conn()).unwrap()
    }

    #[test]
    fn compacted_headers_parse_in_one_spelling() {
        let g = crate::sync_log::Generation(0xab);
        let base = Base {
            lines: 12,
            offset: 3456,
        };
        let line = Header::v2_line(g, base);
        assert_eq!(
            line,
            "swarmshare-sync-log v2 00000000000000ab after 12 3456\n"
        );
        assert_eq!(
            Header::parse(line.trim_end().as_bytes()),
            Some(Header::V2(g, base))
        );
        assert_eq!(Header::v2_line(g, Base::START), g.header_line());
        for bad in [
            "swarmshare-sync-log v2 00000000000000ab after 012 3456",
            "swarmshare-sync-log v2 00000000000000ab after 12 3456 7",
            "swarmshare-sync-log v2 00000000000000ab after 12",
            "swarmshare-sync-log v2 00000000000000ab after 0 3456",
            "swarmshare-sync-log v2 00000000000000ab after 12 3",
            "swarmshare-sync-log v2 00000000000000ab before 12 3456",
            "swarmshare-sync-log v2 00000000000000ab ",
        ] {
            assert_eq!(Header::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn compaction_then_restart_with_and_without_the_cache() {
        let (dir, db, mut store, mut log) = fresh();
        append(&mut log, &mut store, 0, 30);
        let before = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        let base = compact(&mut log, &mut store, 1, Step::Done)
            .unwrap()
            .unwrap();
        assert_eq!(base.lines, 30);
        assert_eq!(log.base(), base);
        assert_eq!(
            log.file_len().unwrap(),
            base.offset,
            "logical end unchanged"
        );
        let after = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(
            after < 100 && after < before,
            "{after} bytes left of {before}"
        );
        // Appends after the compaction keep the numbers and offsets running.
        append(&mut log, &mut store, 30, 45);
        assert_eq!(dump(store.conn()).unwrap(), reference(45));
        drop((log, store));
        // Restart with the cache: only the tail is read.
        let (log, store) = restart(dir.path(), &db);
        assert_eq!(store.applied().unwrap().lines, 45);
        assert_eq!(log.base(), base);
        drop((log, store));
        // The cache deleted: rebuilt from snapshot + tail.
        for f in ["tracker1.db", "tracker1.db-wal", "tracker1.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let (_log, store) = restart(dir.path(), &db);
        assert_eq!(dump(store.conn()).unwrap(), reference(45));
        assert_eq!(store.applied().unwrap().lines, 45);
        // Nothing past the base: nothing to compact.
        let (mut log, mut store) = restart(dir.path(), &db);
        let again = compact(&mut log, &mut store, 100, Step::Done).unwrap();
        assert_eq!(again, None);
    }

    #[test]
    fn a_crash_at_any_step_of_a_compaction_loses_nothing() {
        for stop in [Step::Snapshot, Step::LogWritten, Step::Done] {
            for keep_cache in [true, false] {
                let (dir, db, mut store, mut log) = fresh();
                compacted_between(&mut log, &mut store, 20, 40);
                // The second compaction "crashes" after `stop`.
                compact(&mut log, &mut store, 1, stop).unwrap();
                drop((log, store));
                if !keep_cache {
                    std::fs::remove_file(&db).unwrap();
                    let _ = std::fs::remove_file(dir.path().join("tracker1.db-wal"));
                    let _ = std::fs::remove_file(dir.path().join("tracker1.db-shm"));
                }
                let (mut log, mut store) = restart(dir.path(), &db);
                let want_base = if stop == Step::Done { 40 } else { 20 };
                assert_eq!(log.base().lines, want_base, "{stop:?}");
                assert_eq!(dump(store.conn()).unwrap(), reference(40), "{stop:?}");
                // And it goes on: more changes, another compaction, a restart.
                append(&mut log, &mut store, 40, 50);
                compact(&mut log, &mut store, 1, Step::Done).unwrap();
                drop((log, store));
                let (log, store) = restart(dir.path(), &db);
                assert_eq!(log.base().lines, 50);
                assert_eq!(dump(store.conn()).unwrap(), reference(50), "{stop:?}");
            }
        }
    }

    #[test]
    fn damage_after_a_compaction_is_still_found_and_a_torn_tail_cut() {
        let (dir, _db, mut store, mut log) = fresh();
        compacted_between(&mut log, &mut store, 10, 14);
        let applied = store.cache_pos().unwrap();
        drop((log, store));
        let path = dir.path().join(LOG_FILE);
        let good = std::fs::read(&path).unwrap();
        // A torn last line is cut.
        let mut torn = good.clone();
        torn.extend_from_slice(b"0badc0de 15 17");
        std::fs::write(&path, &torn).unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let rec = log.recover(applied).unwrap();
        assert_eq!(rec.valid_len, applied.offset);
        assert_eq!(std::fs::read(&path).unwrap(), good);
        // A flipped byte in a line the cache applied is damage, named by its
        // place in the file.
        let mut bad = good.clone();
        let second = bad.iter().position(|&b| b == b'\n').unwrap() + 1;
        let third = second + bad[second..].iter().position(|&b| b == b'\n').unwrap() + 1;
        bad[third + 12] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = log.recover(applied).unwrap_err();
        match &err {
            LogError::Damaged { line, offset, .. } => {
                assert_eq!((*line, *offset), (3, third as u64), "{err}")
            }
            other => panic!("{other}"),
        }
        // A cache behind the base with the snapshot gone: refused, clearly.
        std::fs::write(&path, &good).unwrap();
        std::fs::remove_file(super::path(dir.path())).unwrap();
        let mut store = Store::open_in_memory().unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let err = crate::server::catch_up(&log, &mut store).unwrap_err();
        assert!(err.to_string().contains("snapshot.db"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        let fresh = CachePos::default();
        assert!(!log.recover(fresh).unwrap().rebuild_cache);
    }

    #[test]
    fn a_compacted_log_is_salvaged_with_its_base_and_the_snapshot_follows() {
        let (dir, db, mut store, mut log) = fresh();
        compacted_between(&mut log, &mut store, 12, 16);
        drop((log, store));
        // A byte flipped in entry 14 (the file's third line), good lines after it.
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let starts: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        bytes[starts[2] + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let s = crate::log_repair::salvage(dir.path()).unwrap();
        assert_eq!((s.kept, s.dropped.len()), (3, 1), "{:?}", s.dropped);
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        assert_eq!(log.generation(), s.generation);
        assert_eq!(log.base().lines, 12, "the base is kept");
        // A cache rebuilt after the salvage starts from the restamped snapshot.
        for f in ["tracker1.db", "tracker1.db-wal", "tracker1.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        drop(log);
        let (log, store) = restart(dir.path(), &db);
        assert_eq!(store.applied().unwrap().lines, 15);
        assert_eq!(log.base().lines, 12);
        let v = crate::log_repair::verify(dir.path()).unwrap();
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.good, 3);
    }
}
