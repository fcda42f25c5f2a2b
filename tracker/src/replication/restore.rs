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
//! idle --start--> in flight --poll--> Done(prepared) ----> idle (the loop installs)
//!                   ^   \-----poll--> Failed(why, wait) -> waiting
//!                   \------------poll, once the wait is over-----/
//! ```
//!
//! A restore that fails (a full disk, a file in the way) is logged and written again
//! after a wait that doubles from [`RETRY_MIN`] to [`RETRY_MAX`]: the tracker keeps
//! serving reads from its old state and catches up once the cause is gone, without
//! a restart (the node drops snapshots that arrive meanwhile: `RaftNode::step`).
//! At start ([`RestoreJob::wait`]) a failure is not retried: the tracker stops
//! with the reason, as nothing is served yet.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;

use super::machine::MachineFault;
use crate::store;
use crate::sync_log::{Base, Generation, Header, FIRST_ENTRY};

/// The wait before a failed restore is written again; doubled after each failure.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two attempts of one restore.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// The files are being written, or will be again after a failure.
    InFlight,
    /// Written: the caller installs them.
    Done(Prepared),
    /// Writing failed (why, as one line); written again after `retry_in`.
    Failed { why: String, retry_in: Duration },
}

/// A restore's work: written again until it succeeds, so shared with each thread.
type Work = Arc<dyn Fn() -> Result<Prepared, String> + Send + Sync>;

/// The one restore a tracker may have in flight (see the module doc).
pub struct RestoreJob {
    /// The thread writing a restore.
    running: Option<Receiver<Result<Prepared, String>>>,
    /// The restore's work, kept until its files are handed over.
    work: Option<Work>,
    /// A failed restore is written again at this time.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
    /// Tests only (`--test-restore-gate`): each restore, once written, is held
    /// until this file exists (a restore that takes long).
    gate: Option<PathBuf>,
}

impl RestoreJob {
    pub fn new(gate: Option<PathBuf>) -> Self {
        RestoreJob {
            running: None,
            work: None,
            retry_at: None,
            backoff: RETRY_MIN,
            gate,
        }
    }

    /// Starts writing a restore on a thread unless one is in flight (then: false).
    /// A thread that cannot be spawned is reported by the next [`Self::poll`].
    pub fn start<F>(&mut self, work: F) -> bool
    where
        F: Fn() -> Result<Prepared, String> + Send + Sync + 'static,
    {
        if self.in_flight() {
            return false;
        }
        self.work = Some(Arc::new(work));
        self.backoff = RETRY_MIN;
        self.spawn();
        true
    }

    fn spawn(&mut self) {
        let Some(work) = self.work.clone() else {
            return;
        };
        let gate = self.gate.clone();
        let what = "the snapshot restore is written";
        let rx = crate::snapshot_job::spawn_gated("restore", gate, what, move || work())
            .unwrap_or_else(|e| {
                // Reported by the next poll.
                let (tx, rx) = mpsc::sync_channel(1);
                let _ = tx.send(Err(format!("cannot start the restore thread: {e}")));
                rx
            });
        self.running = Some(rx);
    }

    /// Whether a restore is in flight (being written, or waiting to be again).
    pub fn in_flight(&self) -> bool {
        self.work.is_some()
    }

    /// What became of the restore in flight; never blocks. A failed one is
    /// started again here once its wait is over.
    pub fn poll(&mut self, now: Instant) -> RestoreProgress {
        if let Some(rx) = &self.running {
            let outcome = match rx.try_recv() {
                Err(TryRecvError::Empty) => return RestoreProgress::InFlight,
                Ok(outcome) => outcome,
                Err(TryRecvError::Disconnected) => {
                    Err("the restore thread ended without a result".into())
                }
            };
            self.running = None;
            return match outcome {
                Ok(prepared) => {
                    self.work = None;
                    RestoreProgress::Done(prepared)
                }
                Err(why) => {
                    let retry_in = self.backoff;
                    self.retry_at = Some(now + retry_in);
                    self.backoff = (retry_in * 2).min(RETRY_MAX);
                    RestoreProgress::Failed { why, retry_in }
                }
            };
        }
        match self.retry_at {
            None => RestoreProgress::Idle,
            Some(at) if at > now => RestoreProgress::InFlight,
            Some(_) => {
                self.retry_at = None;
                self.spawn();
                RestoreProgress::InFlight
            }
        }
    }

    /// Waits for the restore in flight (bounded by the thread's own work): for
    /// the start, where nothing else is served yet. A failure is not retried.
    pub fn wait(&mut self) -> RestoreProgress {
        self.work = None;
        self.retry_at = None;
        let Some(rx) = self.running.take() else {
            return RestoreProgress::Idle;
        };
        let failed = |why| RestoreProgress::Failed {
            why,
            retry_in: Duration::ZERO,
        };
        match rx.recv() {
            Ok(Ok(prepared)) => RestoreProgress::Done(prepared),
            Ok(Err(why)) => failed(why),
            Err(_) => failed("the restore thread ended without a result".into()),
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

    /// Polls at `now` until the thread has reported (bounded; a hung thread fails).
    fn settled(job: &mut RestoreJob, now: Instant) -> RestoreProgress {
        for _ in 0..10_000 {
            match job.poll(now) {
                RestoreProgress::InFlight => std::thread::sleep(Duration::from_millis(1)),
                other => return other,
            }
        }
        panic!("the restore never finished");
    }

    #[test]
    fn one_restore_in_flight_then_handed_over_once() {
        let now = Instant::now();
        let mut job = RestoreJob::new(None);
        assert!(matches!(job.poll(now), RestoreProgress::Idle));
        let (go, wait) = mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        assert!(job.start(move || {
            let _ = wait.lock().unwrap().recv();
            Ok(prepared(7))
        }));
        assert!(job.in_flight());
        assert!(matches!(job.poll(now), RestoreProgress::InFlight));
        assert!(!job.start(|| Ok(prepared(8))), "one at a time");
        go.send(()).unwrap();
        match settled(&mut job, now) {
            RestoreProgress::Done(p) => assert_eq!(p.index, 7),
            other => panic!("{other:?}"),
        }
        assert!(!job.in_flight());
        assert!(
            matches!(job.poll(now), RestoreProgress::Idle),
            "handed over once"
        );
    }

    #[test]
    fn a_failed_restore_is_written_again_after_a_doubling_wait() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&tries);
        let mut job = RestoreJob::new(None);
        assert!(
            job.start(move || match counted.fetch_add(1, Ordering::SeqCst) {
                0 => Err("disk full".into()),
                1 => panic!("test: the restore panicked"),
                _ => Ok(prepared(5)),
            })
        );
        let t0 = Instant::now();
        match settled(&mut job, t0) {
            RestoreProgress::Failed { why, retry_in } => {
                assert_eq!(why, "disk full");
                assert_eq!(retry_in, RETRY_MIN);
            }
            other => panic!("{other:?}"),
        }
        assert!(job.in_flight(), "still pending");
        assert!(
            !job.start(|| Ok(prepared(8))),
            "one at a time, also when waiting"
        );
        for _ in 0..20 {
            assert!(matches!(
                job.poll(t0 + RETRY_MIN / 2),
                RestoreProgress::InFlight
            ));
        }
        assert_eq!(
            tries.load(Ordering::SeqCst),
            1,
            "not before the wait is over"
        );
        let t1 = t0 + RETRY_MIN;
        match settled(&mut job, t1) {
            RestoreProgress::Failed { retry_in, .. } => assert_eq!(retry_in, 2 * RETRY_MIN),
            other => panic!("{other:?}"),
        }
        match settled(&mut job, t1 + 2 * RETRY_MIN) {
            RestoreProgress::Done(p) => assert_eq!(p.index, 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert!(!job.in_flight());
    }

    #[test]
    fn the_wait_at_start_does_not_retry() {
        let mut job = RestoreJob::new(None);
        assert!(job.start(|| Err("disk full".into())));
        match job.wait() {
            RestoreProgress::Failed { why, .. } => assert_eq!(why, "disk full"),
            other => panic!("{other:?}"),
        }
        assert!(!job.in_flight());
        assert!(matches!(job.poll(Instant::now()), RestoreProgress::Idle));
    }

    #[test]
    fn the_gate_holds_the_written_restore_until_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let mut job = RestoreJob::new(Some(gate.clone()));
        let (ran_tx, ran_rx) = mpsc::channel();
        let ran_tx = std::sync::Mutex::new(ran_tx);
        assert!(job.start(move || {
            let _ = ran_tx.lock().unwrap().send(());
            Ok(prepared(4))
        }));
        ran_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the restore ran");
        let now = Instant::now();
        for _ in 0..20 {
            assert!(
                matches!(job.poll(now), RestoreProgress::InFlight),
                "held at the gate"
            );
        }
        std::fs::write(&gate, b"").unwrap();
        assert!(matches!(settled(&mut job, now), RestoreProgress::Done(_)));
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
