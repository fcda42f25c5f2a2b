//! Taking snapshots off the tracker's loop (issue 13), in both modes.
//!
//! Copying the cache ([`crate::snapshot::copy`]: about 2 s for a 144 MB state)
//! runs on a thread of its own while the loop goes on serving; the loop polls
//! the [`SnapshotJob`] once a turn and, when the copy is done, installs it and
//! rewrites the log ([`crate::snapshot::install`]: a rename and the tail since
//! the copy). At most one copy is in flight:
//!
//! ```text
//! idle --start--> in flight --poll--> Finished(copy) --> idle
//!                     |        \--poll--> Failed(why) --> idle, no start
//!                     |                                   before retry_after
//!                     \--discard--> its copy is deleted when it arrives
//! ```
//! A failed install is reported with [`SnapshotJob::failed`] and waits out the
//! same delay. Nothing here blocks: `poll` only looks at a channel.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::snapshot::CacheCopy;

/// How long after a failure no new copy starts.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Tests' gate: how often the copy looks for the gate file, and for how long.
const GATE_POLL: Duration = Duration::from_millis(10);
const GATE_LIMIT: Duration = Duration::from_secs(120);

/// What a copy's thread hands back.
type Outcome = Result<CacheCopy, String>;

/// Where the job is, as [`SnapshotJob::poll`] sees it.
#[derive(Debug)]
pub enum Progress {
    /// No copy in flight (one may be started).
    Idle,
    /// A copy is being made.
    InFlight,
    /// A copy is done: the caller installs it (or deletes its file).
    Finished(CacheCopy),
    /// The copy failed (why, as one line); no new one before the retry delay.
    Failed(String),
}

struct Running {
    result: Receiver<Outcome>,
    /// Set by [`SnapshotJob::discard`]: the copy is deleted when it arrives.
    discard: bool,
}

/// The one snapshot copy a tracker may have in flight.
pub struct SnapshotJob {
    running: Option<Running>,
    retry_at: Option<Instant>,
    retry_after: Duration,
    /// Tests only (`--test-snapshot-gate`): each copy, once made, is held until
    /// this file exists (at most [`GATE_LIMIT`]): a copy that takes long.
    gate: Option<PathBuf>,
}

impl SnapshotJob {
    pub fn new(retry_after: Duration, gate: Option<PathBuf>) -> Self {
        SnapshotJob {
            running: None,
            retry_at: None,
            retry_after,
            gate,
        }
    }

    /// Whether a copy may start now: none in flight and no failure waiting out
    /// its delay.
    pub fn can_start(&self, now: Instant) -> bool {
        self.running.is_none() && self.retry_at.is_none_or(|at| now >= at)
    }

    /// Starts `copy` on a thread if [`Self::can_start`]; returns whether it did.
    /// A thread that cannot be spawned counts as a failed copy.
    pub fn start<F>(&mut self, now: Instant, copy: F) -> bool
    where
        F: FnOnce() -> Outcome + Send + 'static,
    {
        if !self.can_start(now) {
            return false;
        }
        let gate = self.gate.clone();
        let rx = match spawn_gated("snapshot", gate, "the snapshot copy is made", copy) {
            Ok(rx) => rx,
            Err(e) => {
                log::error!("cannot start the snapshot thread: {e}");
                self.retry_at = Some(now + self.retry_after);
                return false;
            }
        };
        self.running = Some(Running {
            result: rx,
            discard: false,
        });
        true
    }

    /// Whether a copy is in flight.
    pub fn in_flight(&self) -> bool {
        self.running.is_some()
    }

    /// What became of the copy in flight; never blocks.
    pub fn poll(&mut self, now: Instant) -> Progress {
        let Some(running) = &self.running else {
            return Progress::Idle;
        };
        let outcome = match running.result.try_recv() {
            Err(TryRecvError::Empty) => return Progress::InFlight,
            Ok(outcome) => outcome,
            Err(TryRecvError::Disconnected) => {
                Err("the snapshot thread ended without a result".to_string())
            }
        };
        let discard = running.discard;
        self.running = None;
        match outcome {
            Ok(copy) if discard => {
                let _ = std::fs::remove_file(&copy.tmp);
                Progress::Idle
            }
            Ok(copy) => Progress::Finished(copy),
            Err(_) if discard => Progress::Idle,
            Err(why) => {
                self.retry_at = Some(now + self.retry_after);
                Progress::Failed(why)
            }
        }
    }

    /// The copy [`Self::poll`] handed over could not be installed: no new one
    /// before the retry delay.
    pub fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry_after);
    }

    /// The copy in flight is of a state that was replaced: it is deleted when it
    /// arrives (the thread is not interrupted; no new copy starts before).
    pub fn discard(&mut self) {
        if let Some(running) = &mut self.running {
            running.discard = true;
        }
    }
}

/// Runs `work` on a thread named `name` and hands its one result to the
/// returned receiver; with a test gate, the result is held until the gate file
/// exists (`what` names it in the log). Snapshot copies and restores.
pub(crate) fn spawn_gated<T, F>(
    name: &str,
    gate: Option<PathBuf>,
    what: &'static str,
    work: F,
) -> std::io::Result<Receiver<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let outcome = work();
            if let Some(gate) = gate {
                wait_for_gate(&gate, what);
            }
            let _ = tx.send(outcome);
        })?;
    Ok(rx)
}

/// Tests' gate: logs that `what` is held, then waits (bounded) for `gate` to exist.
fn wait_for_gate(gate: &std::path::Path, what: &str) {
    log::info!("test gate: {what}, held until {} exists", gate.display());
    let mut waited = Duration::ZERO;
    while !gate.exists() && waited < GATE_LIMIT {
        std::thread::sleep(GATE_POLL);
        waited += GATE_POLL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync_log::CachePos;

    fn copy_of(lines: u64, tmp: PathBuf) -> CacheCopy {
        CacheCopy {
            tmp,
            pos: CachePos {
                generation: None,
                offset: 100 * lines,
                lines,
            },
            raft_index: lines,
            raft_data: None,
        }
    }

    /// A copy that waits for `go` and then returns what it is sent.
    fn held(job: &mut SnapshotJob, now: Instant) -> mpsc::Sender<Outcome> {
        let (tx, rx) = mpsc::channel::<Outcome>();
        let started = job.start(now, move || {
            rx.recv().unwrap_or_else(|_| Err("test ended".into()))
        });
        assert!(started);
        tx
    }

    /// Polls until the copy's thread has reported (bounded; a hung thread fails).
    fn settled(job: &mut SnapshotJob, now: Instant) -> Progress {
        for _ in 0..10_000 {
            match job.poll(now) {
                Progress::InFlight => std::thread::sleep(Duration::from_millis(1)),
                other => return other,
            }
        }
        panic!("the copy never finished");
    }

    #[test]
    fn one_copy_in_flight_then_handed_over_once() {
        let t0 = Instant::now();
        let mut job = SnapshotJob::new(RETRY_AFTER, None);
        assert!(matches!(job.poll(t0), Progress::Idle));
        let go = held(&mut job, t0);
        assert!(job.in_flight());
        assert!(matches!(job.poll(t0), Progress::InFlight));
        assert!(
            !job.start(t0, || Err("a second copy".into())),
            "one at a time"
        );
        go.send(Ok(copy_of(7, PathBuf::from("x")))).unwrap();
        match settled(&mut job, t0) {
            Progress::Finished(copy) => assert_eq!(copy.raft_index, 7),
            other => panic!("{other:?}"),
        }
        assert!(!job.in_flight());
        assert!(matches!(job.poll(t0), Progress::Idle), "handed over once");
        assert!(job.can_start(t0));
    }

    #[test]
    fn a_failed_copy_is_reported_and_retried_only_after_the_delay() {
        let t0 = Instant::now();
        let mut job = SnapshotJob::new(Duration::from_secs(60), None);
        let go = held(&mut job, t0);
        go.send(Err("disk full".into())).unwrap();
        match settled(&mut job, t0) {
            Progress::Failed(why) => assert_eq!(why, "disk full"),
            other => panic!("{other:?}"),
        }
        assert!(!job.can_start(t0 + Duration::from_secs(59)));
        assert!(!job.start(t0 + Duration::from_secs(59), || Err("early".into())));
        assert!(job.can_start(t0 + Duration::from_secs(60)));
        // A thread that dies without a word (a panic) is a failure too.
        let t1 = t0 + Duration::from_secs(60);
        assert!(job.start(t1, || panic!("test: the copy panicked")));
        assert!(matches!(settled(&mut job, t1), Progress::Failed(_)));
        // So is an install that failed after a good copy.
        let t2 = t1 + Duration::from_secs(60);
        job.failed(t2);
        assert!(!job.can_start(t2));
    }

    #[test]
    fn a_discarded_copy_is_deleted_when_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tracker1.db.snapshot-tmp");
        std::fs::write(&tmp, b"copy").unwrap();
        let t0 = Instant::now();
        let mut job = SnapshotJob::new(RETRY_AFTER, None);
        let go = held(&mut job, t0);
        job.discard();
        assert!(!job.can_start(t0), "still in flight until it ends");
        go.send(Ok(copy_of(3, tmp.clone()))).unwrap();
        assert!(matches!(settled(&mut job, t0), Progress::Idle));
        assert!(!tmp.exists());
        assert!(job.can_start(t0), "a discarded copy is no failure");
    }

    #[test]
    fn the_gate_holds_the_finished_copy_until_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let t0 = Instant::now();
        let mut job = SnapshotJob::new(RETRY_AFTER, Some(gate.clone()));
        let (ran_tx, ran_rx) = mpsc::channel();
        assert!(job.start(t0, move || {
            let _ = ran_tx.send(());
            Ok(copy_of(4, PathBuf::from("x")))
        }));
        ran_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the copy ran");
        for _ in 0..20 {
            assert!(
                matches!(job.poll(t0), Progress::InFlight),
                "held at the gate"
            );
        }
        std::fs::write(&gate, b"").unwrap();
        assert!(matches!(settled(&mut job, t0), Progress::Finished(_)));
    }
}
