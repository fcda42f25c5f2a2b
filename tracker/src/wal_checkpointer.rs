//! `WalCheckpointer`: copies the cache's WAL back into `tracker<N>.db` on a thread
//! of its own, so the loop's commits never wait for it.
//!
//! SQLite's default is an automatic checkpoint inside the commit that finds 1,000
//! pages in the WAL: the loop then writes those pages into the database file and
//! fsyncs both, several milliseconds in which it answers nobody. Here the loop's
//! connection checkpoints only past [`LOOP_CHECKPOINT_PAGES`] (a safety valve: it
//! runs only if this thread falls far behind), and this thread runs a `PASSIVE`
//! checkpoint from its own connection every [`EVERY`]: it never blocks the loop's
//! reads or writes.
//!
//! A passive checkpoint alone lets the WAL grow without end under steady writes:
//! SQLite starts the WAL over only when a write transaction begins with all of it
//! copied back, and the loop commits again before each pass finishes. Every new
//! frame then lands in a freshly allocated block (the kernel zeroes each page
//! first), and the file grows to the loop's valve, tens of MB. So once the WAL holds
//! [`RESTART_PAGES`] the thread asks for a `RESTART` checkpoint instead: it holds the
//! write lock while it copies the few frames the last pass left and syncs (the
//! loop's next write waits that long, a millisecond or two), so the next write
//! starts the WAL over, in blocks the file already has. The thread's connection
//! never waits for a lock (busy timeout 0): if the loop is mid-transaction or a
//! reader (a snapshot copy, an operator's `sqlite3`) still needs the WAL, the
//! checkpoint goes on as a passive one and the restart is tried at the next pass,
//! so a long reader never makes the loop wait.
//!
//! A raft tracker's loop holds its write transaction open for a tenth of a second
//! at a time (the apply batch, see [`crate::store::Store`]) and begins the next one
//! at once, so a restart would almost never find the write lock free. While the WAL
//! is past [`RESTART_PAGES`] the thread therefore asks for it
//! ([`WalCheckpointer::wants_the_write_lock`]): the loop then commits each apply at
//! once, leaving gaps between its transactions as it did before batches, until a
//! restart has been done.
//!
//! The thread is the [`crate::store::Store`]'s: started when a database file is
//! opened and stopped (joined, its connection closed) when the store is dropped,
//! so nothing checkpoints a file that a snapshot restore is replacing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the thread checkpoints.
pub const EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which the loop's own commit checkpoints (SQLite's default is
/// 1,000; 4 KiB pages, so this is about 80 MB).
pub const LOOP_CHECKPOINT_PAGES: i64 = 20_000;
/// WAL pages after which the thread's checkpoint restarts the WAL (16 MB).
pub const RESTART_PAGES: i64 = 4_096;

/// The checkpointing thread of one database file; stopped on drop.
#[derive(Debug)]
pub struct WalCheckpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set while the WAL is past [`RESTART_PAGES`]: a restart needs the write lock.
    wants_lock: Arc<AtomicBool>,
}

impl WalCheckpointer {
    /// Starts the thread for the database at `path` (opened in WAL mode by the
    /// caller). `None` if the thread cannot be started: SQLite's own automatic
    /// checkpoint then does the work, on the loop.
    pub fn start(path: &Path) -> Option<WalCheckpointer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let path: PathBuf = path.to_path_buf();
        let wants_lock = Arc::new(AtomicBool::new(false));
        let asks = wants_lock.clone();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                let conn = match open(&path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        log::warn!("{}: no checkpoint thread: {e}", path.display());
                        return;
                    }
                };
                let mut wal_pages = 0;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                    let restart = wal_pages >= RESTART_PAGES;
                    match checkpoint(&conn, restart) {
                        Ok(pages) => wal_pages = pages,
                        Err(e) => log::debug!("{}: checkpoint: {e}", path.display()),
                    }
                    asks.store(wal_pages >= RESTART_PAGES, Ordering::Relaxed);
                }
            })
            .ok()?;
        Some(WalCheckpointer {
            stop: Some(stop),
            thread: Some(thread),
            wants_lock,
        })
    }

    /// Whether the thread waits for a moment without a write transaction, to
    /// restart the WAL (see the module doc).
    pub fn wants_the_write_lock(&self) -> bool {
        self.wants_lock.load(Ordering::Relaxed)
    }
}

/// The thread's connection: it never waits for a lock.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// One checkpoint, passive or (`restart`) one that makes the next write start the
/// WAL over; copies what it can without waiting for anyone. Returns the pages the
/// WAL held.
fn checkpoint(conn: &Connection, restart: bool) -> rusqlite::Result<i64> {
    let sql = if restart {
        "PRAGMA wal_checkpoint(RESTART)"
    } else {
        "PRAGMA wal_checkpoint(PASSIVE)"
    };
    conn.query_row(sql, [], |r| r.get(1))
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

    #[test]
    fn steady_writes_do_not_grow_the_wal_past_the_restart_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", LOOP_CHECKPOINT_PAGES)
            .unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let _checkpointer = WalCheckpointer::start(&path).unwrap();
        let wal = dir.path().join("t.db-wal");
        let page = 4096 + 24;
        // About 3 x RESTART_PAGES pages, written in small commits with short gaps
        // (as the loop writes): a passive checkpoint never finds the WAL all copied
        // back, so without restarts the file would grow by all of them.
        let commits = 3 * RESTART_PAGES / 4;
        let mut largest = 0;
        for _ in 0..commits {
            conn.execute(
                "INSERT INTO t SELECT randomblob(3500) FROM (SELECT 1 UNION ALL SELECT 2 \
                 UNION ALL SELECT 3 UNION ALL SELECT 4)",
                [],
            )
            .unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
            std::thread::sleep(Duration::from_micros(300));
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, commits * 4);
        let limit = (2 * RESTART_PAGES) as u64 * page;
        assert!(
            largest <= limit,
            "the WAL grew to {largest} bytes (limit {limit}) over {} bytes of pages",
            commits * 4 * page as i64
        );
    }
}
