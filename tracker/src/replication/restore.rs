//! Restoring a received Raft snapshot off the tracker's loop (issue 13).
//!
//! A follower that receives a snapshot (a state the size of the whole cache) must
//! write it twice, each copy fsynced: as `snapshot.db` (the copy the log is
//! compacted against) and as the cache `tracker<N>.db`, plus a new `sync_log.txt`
//! that starts after it. [`prepare`] writes all three as `*.restore` files on a
//! thread of its own ([`RestoreJob`]) while the loop goes on answering clients
//! (reads from the old state) and peers (heartbeats, votes). The loop then installs
//! them ([`super::machine::LogMachine`]: renames, a directory fsync, reopen), which
//! is cheap. At most one restore is in flight:
//!
//! ```text
//! idle --start--> in flight --poll--> Done(prepared) --> idle (the loop installs)
//!                     \--------poll--> Failed(why) ----> idle (the tracker stops)
//! ```
//!
//! # Crash safety
//! The `*.restore` files are complete and fsynced before any rename; the renames go
//! `snapshot.db`, cache, log, then one fsync of the directory; and the loop installs
//! only after Raft's storage holds the snapshot durably (see `node.rs`). So a crash
//! at any point leaves the old state, the new one, or the old cache behind a stored
//! Raft snapshot that the start restores again (`RaftNode::open`); stale `*.restore`
//! files are overwritten by the next restore.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use bytes::Bytes;
use rusqlite::Connection;

use super::machine::MachineFault;
use crate::store;
use crate::sync_log::{Base, Generation, Header, FIRST_ENTRY};

/// The first line of a snapshot as Raft carries it; the db file follows.
pub const SNAPSHOT_MAGIC: &[u8] = b"swarmshare-snapshot v2\n";

/// The fsynced files of a restore, ready to be renamed into place.
#[derive(Debug)]
pub struct Prepared {
    /// The Raft index the snapshot covers.
    pub index: u64,
    /// The new `snapshot.db`, cache and log, each written and fsynced.
    pub snapshot: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    /// Where the new log starts (after the snapshot's entries).
    pub base: Base,
    /// Size of the state restored, in bytes.
    pub bytes: usize,
}

/// Where a restore is, as [`RestoreJob::poll`] sees it.
#[derive(Debug)]
pub enum RestoreProgress {
    /// None in flight.
    Idle,
    /// The files are being written.
    InFlight,
    /// Written: the caller installs them.
    Done(Prepared),
    /// Writing failed (why, as one line).
    Failed(String),
}

/// The one restore a tracker may have in flight.
pub struct RestoreJob {
    running: Option<Receiver<Result<Prepared, String>>>,
    /// Tests only (`--test-restore-gate`): each restore, once written, is held
    /// until this file exists (a restore that takes long).
    gate: Option<PathBuf>,
}

impl RestoreJob {
    pub fn new(gate: Option<PathBuf>) -> Self {
        RestoreJob {
            running: None,
            gate,
        }
    }

    /// Starts `work` on a thread unless a restore is in flight (then: false). A
    /// thread that cannot be spawned is reported by the next [`Self::poll`].
    pub fn start<F>(&mut self, work: F) -> bool
    where
        F: FnOnce() -> Result<Prepared, String> + Send + 'static,
    {
        if self.running.is_some() {
            return false;
        }
        let gate = self.gate.clone();
        let what = "the snapshot restore is written";
        let rx =
            crate::snapshot_job::spawn_gated("restore", gate, what, work).unwrap_or_else(|e| {
                // Reported by the next poll.
                let (tx, rx) = mpsc::sync_channel(1);
                let _ = tx.send(Err(format!("cannot start the restore thread: {e}")));
                rx
            });
        self.running = Some(rx);
        true
    }

    /// Whether a restore is in flight.
    pub fn in_flight(&self) -> bool {
        self.running.is_some()
    }

    /// What became of the restore in flight; never blocks.
    pub fn poll(&mut self) -> RestoreProgress {
        let Some(rx) = &self.running else {
            return RestoreProgress::Idle;
        };
        let outcome = match rx.try_recv() {
            Err(TryRecvError::Empty) => return RestoreProgress::InFlight,
            Ok(outcome) => outcome,
            Err(TryRecvError::Disconnected) => {
                Err("the restore thread ended without a result".into())
            }
        };
        self.running = None;
        match outcome {
            Ok(prepared) => RestoreProgress::Done(prepared),
            Err(why) => RestoreProgress::Failed(why),
        }
    }

    /// Waits for the restore in flight (bounded by the thread's own work): for
    /// the start, where nothing else is served yet.
    pub fn wait(&mut self) -> RestoreProgress {
        let Some(rx) = self.running.take() else {
            return RestoreProgress::Idle;
        };
        match rx.recv() {
            Ok(Ok(prepared)) => RestoreProgress::Done(prepared),
            Ok(Err(why)) => RestoreProgress::Failed(why),
            Err(_) => RestoreProgress::Failed("the restore thread ended without a result".into()),
        }
    }
}

/// Writes the `*.restore` files of the snapshot `data` (magic line + db) covering
/// Raft index `index` in `dir`, each fsynced (see the module doc).
pub fn prepare(
    dir: &Path,
    tracker_no: u32,
    index: u64,
    data: &Bytes,
) -> Result<Prepared, MachineFault> {
    let db = data
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or(MachineFault::BadSnapshot)?;
    let snapshot = dir.join("snapshot.db.restore");
    write_synced(&snapshot, db)?;
    let (generation, base) = snapshot_base(&snapshot)?;
    let cache = dir.join(format!("tracker{tracker_no}.db.restore"));
    write_synced(&cache, db)?;
    let log = dir.join("sync_log.txt.restore");
    write_synced(&log, Header::v2_line(generation, base).as_bytes())?;
    Ok(Prepared {
        index,
        snapshot,
        cache,
        log,
        base,
        bytes: db.len(),
    })
}

/// The generation and base a snapshot db covers (its `applied_log` row).
fn snapshot_base(path: &Path) -> Result<(Generation, Base), MachineFault> {
    let pos = store::cache_pos(&Connection::open(path)?)?;
    let generation = pos.generation.ok_or(MachineFault::BadSnapshot)?;
    let base = match (pos.lines, pos.offset) {
        (0, _) => Base::START,
        (lines, offset) if offset >= FIRST_ENTRY => Base { lines, offset },
        _ => return Err(MachineFault::BadSnapshot),
    };
    Ok((generation, base))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), MachineFault> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(super::machine::io_at(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(super::machine::io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn prepared(index: u64) -> Prepared {
        Prepared {
            index,
            snapshot: PathBuf::from("s"),
            cache: PathBuf::from("c"),
            log: PathBuf::from("l"),
            base: Base::START,
            bytes: 0,
        }
    }

    /// Polls until the thread has reported (bounded; a hung thread fails).
    fn settled(job: &mut RestoreJob) -> RestoreProgress {
        for _ in 0..10_000 {
            match job.poll() {
                RestoreProgress::InFlight => std::thread::sleep(Duration::from_millis(1)),
                other => return other,
            }
        }
        panic!("the restore never finished");
    }

    #[test]
    fn one_restore_in_flight_then_handed_over_once() {
        let mut job = RestoreJob::new(None);
        assert!(matches!(job.poll(), RestoreProgress::Idle));
        let (go, wait) = mpsc::channel::<()>();
        assert!(job.start(move || {
            let _ = wait.recv();
            Ok(prepared(7))
        }));
        assert!(job.in_flight());
        assert!(matches!(job.poll(), RestoreProgress::InFlight));
        assert!(!job.start(|| Ok(prepared(8))), "one at a time");
        go.send(()).unwrap();
        match settled(&mut job) {
            RestoreProgress::Done(p) => assert_eq!(p.index, 7),
            other => panic!("{other:?}"),
        }
        assert!(!job.in_flight());
        assert!(
            matches!(job.poll(), RestoreProgress::Idle),
            "handed over once"
        );
    }

    #[test]
    fn a_failed_or_panicked_restore_is_reported() {
        let mut job = RestoreJob::new(None);
        assert!(job.start(|| Err("disk full".into())));
        match settled(&mut job) {
            RestoreProgress::Failed(why) => assert_eq!(why, "disk full"),
            other => panic!("{other:?}"),
        }
        assert!(job.start(|| panic!("test: the restore panicked")));
        assert!(matches!(settled(&mut job), RestoreProgress::Failed(_)));
        assert!(matches!(job.wait(), RestoreProgress::Idle));
    }

    #[test]
    fn the_gate_holds_the_written_restore_until_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let mut job = RestoreJob::new(Some(gate.clone()));
        let (ran_tx, ran_rx) = mpsc::channel();
        assert!(job.start(move || {
            let _ = ran_tx.send(());
            Ok(prepared(4))
        }));
        ran_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the restore ran");
        for _ in 0..20 {
            assert!(
                matches!(job.poll(), RestoreProgress::InFlight),
                "held at the gate"
            );
        }
        std::fs::write(&gate, b"").unwrap();
        assert!(matches!(settled(&mut job), RestoreProgress::Done(_)));
    }

    #[test]
    fn prepare_refuses_what_is_not_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let junk = Bytes::from_static(b"junk");
        assert!(matches!(
            prepare(dir.path(), 1, 3, &junk),
            Err(MachineFault::BadSnapshot)
        ));
        let not_a_db = Bytes::from([SNAPSHOT_MAGIC, b"not sqlite"].concat());
        assert!(prepare(dir.path(), 1, 3, &not_a_db).is_err());
    }
}
