//! `RaftWriter`: the thread that makes staged Raft entries and hard state durable in
//! `raft<N>.db`, so the tracker's mio loop goes on reading, proposing and applying
//! while the fsync runs (raft-rs's async ready: `advance_append_async`, then
//! `on_persist_ready` once the write is durable).
//!
//! The loop stages a `Ready` ([`RaftStorage::stage`](super::storage::RaftStorage::stage))
//! and [`RaftWriter::send`]s the job. The thread takes every job queued by then and
//! commits them in one transaction (one fsync, [`write_jobs`]), then publishes the
//! number of the last one as durable and wakes the loop. The node reads it with
//! [`RaftWriter::durable`] and only then sends the messages that promise durability
//! (votes, append acknowledgements) and lets raft-rs count its own log (see `node.rs`).
//! A write error stops the thread; the loop sees it with the next `durable` and
//! stops the tracker (nothing after a failed write is ever reported durable).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;

use super::storage::{open_connection, write_jobs, StorageError, WriteJob};

/// What the thread has made durable, or why it stopped.
#[derive(Default)]
struct Progress {
    durable: u64,
    failed: Option<String>,
}

struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

/// Why the writer cannot go on: its storage failed or it is gone.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("raft writer: {0}")]
    Failed(String),
    #[error("raft writer: no write became durable within {0:?}")]
    Timeout(Duration),
}

/// The writer thread's handle, owned by the node.
pub struct RaftWriter {
    jobs: Option<Sender<WriteJob>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RaftWriter {
    /// Opens its own connection to `path` and starts the thread; `waker` (the loop's)
    /// is woken after each durable write.
    pub fn start(path: &std::path::Path, waker: Option<Arc<Waker>>) -> Result<Self, StorageError> {
        let conn = open_connection(path)?;
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
        });
        let (tx, rx) = channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("raft-writer".into())
            .spawn(move || run(conn, rx, &thread_shared, waker.as_deref()))
            .map_err(|e| StorageError::Corrupt(format!("cannot start the raft writer: {e}")))?;
        Ok(RaftWriter {
            jobs: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a job (jobs are written in the order sent).
    pub fn send(&self, job: WriteJob) -> Result<(), WriterError> {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// The number of the last job known durable (every earlier one is too).
    pub fn durable(&self) -> Result<u64, WriterError> {
        let p = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &p.failed {
            Some(why) => Err(WriterError::Failed(why.clone())),
            None => Ok(p.durable),
        }
    }

    /// Blocks until job `number` is durable (bounded by `limit`).
    pub fn wait_durable(&self, number: u64, limit: Duration) -> Result<u64, WriterError> {
        let end = Instant::now() + limit;
        let mut p = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(why) = &p.failed {
                return Err(WriterError::Failed(why.clone()));
            }
            if p.durable >= number {
                return Ok(p.durable);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WriterError::Timeout(limit));
            }
            p = self
                .shared
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn failure(&self) -> WriterError {
        match self.durable() {
            Err(e) => e,
            Ok(_) => WriterError::Failed("the thread is gone".into()),
        }
    }
}

impl Drop for RaftWriter {
    /// Lets the thread finish what was queued (one transaction), then joins it.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut conn: rusqlite::Connection,
    jobs: Receiver<WriteJob>,
    shared: &Shared,
    waker: Option<&Waker>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        let result = write_jobs(&mut conn, &batch);
        let mut p = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => p.durable = batch.last().map_or(p.durable, |j| j.number),
            Err(e) => p.failed = Some(e.to_string()),
        }
        let stop = p.failed.is_some();
        drop(p);
        shared.changed.notify_all();
        if let Some(w) = waker {
            let _ = w.wake();
        }
        if stop {
            return;
        }
    }
}
