//! `WalCheckpointer`: copies the cache's WAL back into `tracker<N>.db` on a thread
//! of its own, so the loop's commits never wait for it.
//!
//! SQLite's default is an automatic checkpoint inside the commit that finds 1,000
//! pages in the WAL: the loop then writes those pages into the database file and
//! fsyncs both, several milliseconds in which it answers nobody. Here the loop's
//! connection checkpoints only past [`LOOP_CHECKPOINT_PAGES`] (a safety valve: it
//! runs only if this thread falls far behind), and this thread runs a `PASSIVE`
//! checkpoint from its own connection every [`EVERY`]: it never blocks the loop's
//! reads or writes, and the loop's next write transaction starts the WAL over once
//! all of it is copied back.
//!
//! The thread is the [`crate::store::Store`]'s: started when a database file is
//! opened and stopped (joined, its connection closed) when the store is dropped,
//! so nothing checkpoints a file that a snapshot restore is replacing.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the thread checkpoints.
pub const EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which the loop's own commit checkpoints (SQLite's default is
/// 1,000; 4 KiB pages, so this is about 80 MB).
pub const LOOP_CHECKPOINT_PAGES: i64 = 20_000;

/// The checkpointing thread of one database file; stopped on drop.
#[derive(Debug)]
pub struct WalCheckpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WalCheckpointer {
    /// Starts the thread for the database at `path` (opened in WAL mode by the
    /// caller). `None` if the thread cannot be started: SQLite's own automatic
    /// checkpoint then does the work, on the loop.
    pub fn start(path: &Path) -> Option<WalCheckpointer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                let conn = match Connection::open(&path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        log::warn!("{}: no checkpoint thread: {e}", path.display());
                        return;
                    }
                };
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                    if let Err(e) = checkpoint(&conn) {
                        log::debug!("{}: checkpoint: {e}", path.display());
                    }
                }
            })
            .ok()?;
        Some(WalCheckpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// One passive checkpoint: copies what it can without waiting for anyone.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        drop(self.stop.take()); // the thread's recv ends at once
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_copies_the_wal_into_the_database_and_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let checkpointer = WalCheckpointer::start(&path).unwrap();
        for _ in 0..200 {
            conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
        }
        // The writer never checkpoints, so only the thread can have moved the
        // 600 KB into the database file (bounded wait).
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let mut copied = false;
        for _ in 0..200 {
            if db_len() > 600_000 {
                copied = true;
                break;
            }
            std::thread::sleep(EVERY);
        }
        assert!(copied, "the database file is still {} bytes", db_len());
        drop(checkpointer);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 200);
    }
}
