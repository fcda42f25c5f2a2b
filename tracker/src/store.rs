//! The SQLite cache `tracker<N>.db`: state derived from `sync_log.txt`.
//!
//! [`apply`] is the one place state changes; live writes, start-up replay and
//! the watcher all go through it. Every apply is idempotent, and the applied log
//! offset is stored in the same transaction as the changes it covers.

use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension, Savepoint, Transaction};

use crate::sync_log::{CachePos, Generation, LogEntry, Op};
use crate::wal_checkpointer::{WalCheckpointer, LOOP_CHECKPOINT_PAGES};

/// Migrations, applied in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_log_generation.sql"),
    include_str!("../../migrations/0003_applied_requests.sql"),
    include_str!("../../migrations/0004_raft_index.sql"),
    include_str!("../../migrations/0005_partial_seeders.sql"),
];

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this tracker knows ({known})")]
    TooNew { found: i64, known: usize },
    #[error("snapshot {path}: {why}")]
    Snapshot { path: String, why: String },
}

/// How much of the log the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Bytes of `sync_log.txt` applied (0 = nothing yet).
    pub offset: u64,
    /// Log lines applied.
    pub lines: u64,
}

/// The open cache.
///
/// # Apply batches (raft mode)
/// A raft tracker applies committed entries into one open write transaction, the
/// *apply batch* ([`Store::batch`]), and commits it every so often
/// ([`Store::commit_batch_opened_before`]) instead of once per `Ready`: each commit
/// writes every page it dirtied to the WAL, and random-key inserts dirty pages all
/// over the b-trees, so fewer, larger commits write far fewer pages per change. The
/// loop's own reads (validation, queries, replies) run on this connection and see the
/// batch at once; other connections (the snapshot copy, `/status`) see it when it
/// is committed. Nothing is lost on a crash: the entries are durable in Raft's log,
/// and their lines in `sync_log.txt` (written before apply) are replayed at start,
/// as after any crash between an append and a commit. A write transaction of
/// another kind ([`Store::transaction`]) commits the batch first, and so does
/// dropping the store (a batch holds whole applies only: an apply that fails
/// mid-way drops the batch with [`Store::abort_batch`]).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// When the open apply batch began (none open: `None`).
    batch_opened: Option<Instant>,
    /// Checkpoints a database file's WAL off the loop (none in memory).
    checkpointer: Option<WalCheckpointer>,
}

impl Drop for Store {
    /// Commits an open apply batch (a stop, or a cache replaced by a snapshot).
    fn drop(&mut self) {
        if let Err(e) = self.commit_batch() {
            log::warn!(
                "the cache's last applies were not committed ({e}); they are replayed at start"
            );
        }
    }
}

/// The loop connection's page cache: 32 MiB (negative: KiB, SQLite's convention).
const CACHE_KIB: i64 = -32 * 1024;

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // The log is the durable truth; the cache may lose its last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // The loop's page cache (SQLite's default is 2 MB): random-key inserts touch
        // leaves all over the b-trees, and each miss is a read from the WAL or the file.
        conn.pragma_update(None, "cache_size", CACHE_KIB)
            .map_err(open_err)?;
        // Every query and apply statement stays prepared (there are about 40).
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "wal_autocheckpoint", LOOP_CHECKPOINT_PAGES)
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            batch_opened: None,
            checkpointer: None,
        };
        store.migrate()?;
        store.checkpointer = WalCheckpointer::start(path);
        Ok(store)
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let mut store = Store {
            conn: Connection::open_in_memory()?,
            batch_opened: None,
            checkpointer: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            log::info!("database migrated to schema version {}", i + 1);
        }
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO applied_log (id, offset, lines) VALUES (1, 0, 0)",
            )?
            .execute([])?;
        Ok(())
    }

    /// The connection, for queries.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Starts a write transaction (committing an open apply batch first).
    pub fn transaction(&mut self) -> Result<Transaction<'_>, StoreError> {
        self.commit_batch()?;
        Ok(self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    /// Starts a read transaction: one consistent snapshot for all the reads of a
    /// loop turn, instead of one implicit transaction per statement. Inside an
    /// open apply batch it is a savepoint of the batch (it sees the batch).
    pub fn read_transaction(&mut self) -> Result<Savepoint<'_>, StoreError> {
        Ok(self.conn.savepoint()?)
    }

    /// The open apply batch (see the type's doc), begun now if none is open.
    pub fn batch(&mut self) -> Result<&Connection, StoreError> {
        if self.batch_opened.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.batch_opened = Some(Instant::now());
        }
        Ok(&self.conn)
    }

    /// Commits the open apply batch, if any.
    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        if self.batch_opened.is_some() {
            self.conn.execute_batch("COMMIT")?;
            self.batch_opened = None;
        }
        Ok(())
    }

    /// Commits the open apply batch if it began at or before `at`, or at once while
    /// the WAL checkpointer waits for the write lock (to restart a long WAL).
    pub fn commit_batch_opened_before(&mut self, at: Instant) -> Result<(), StoreError> {
        let wanted = self
            .checkpointer
            .as_ref()
            .is_some_and(WalCheckpointer::wants_the_write_lock);
        match self.batch_opened {
            Some(opened) if opened <= at || wanted => self.commit_batch(),
            _ => Ok(()),
        }
    }

    /// Drops the open apply batch (an apply failed inside it). Its entries are
    /// replayed from `sync_log.txt` at the next start.
    pub fn abort_batch(&mut self) {
        if self.batch_opened.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// How much of the log is applied.
    pub fn applied(&self) -> Result<Applied, StoreError> {
        Ok(applied(&self.conn)?)
    }

    /// Applies log entries (each with its line's offset) and records `end` as the
    /// applied offset, all in one transaction.
    pub fn apply_entries(
        &mut self,
        entries: &[(u64, LogEntry)],
        end: u64,
    ) -> Result<Applied, StoreError> {
        let tx = self.transaction()?;
        let before = applied(&tx)?;
        for (offset, entry) in entries {
            apply(&tx, *offset, entry)?;
        }
        let now = Applied {
            offset: end,
            lines: before.lines + entries.len() as u64,
        };
        set_applied(&tx, now)?;
        tx.commit()?;
        Ok(now)
    }

    /// Forgets all state (before rebuilding from the start of the log).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        let tx = self.transaction()?;
        tx.execute_batch(
            "DELETE FROM users; DELETE FROM sessions; DELETE FROM groups;
             DELETE FROM group_members; DELETE FROM join_requests; DELETE FROM files;
             DELETE FROM file_seeders; DELETE FROM applied_requests; UPDATE applied_log SET offset = 0, lines = 0, generation = '', raft_index = 0, raft_lines = 0;",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The cache's file (`None` for an in-memory cache).
    pub fn path(&self) -> Option<&Path> {
        self.conn.path().filter(|p| !p.is_empty()).map(Path::new)
    }

    /// Replaces every table's rows by the snapshot's at `path` (a copy made by
    /// [`vacuum_into`]) in one transaction, if `accept` agrees to how far
    /// the snapshot applied the log; returns that. The snapshot must have this
    /// tracker's schema version. On any error the cache is left as it was.
    pub fn load_snapshot(
        &mut self,
        path: &Path,
        accept: impl FnOnce(CachePos) -> Result<(), String>,
    ) -> Result<CachePos, StoreError> {
        let fail = |why: String| StoreError::Snapshot {
            path: path.display().to_string(),
            why,
        };
        let name = path
            .to_str()
            .ok_or_else(|| fail("the path is not UTF-8".into()))?;
        self.conn.execute("ATTACH DATABASE ?1 AS snap", [name])?;
        let loaded = self.copy_from_snap(path).and_then(|pos| {
            accept(pos).map_err(fail)?;
            Ok(pos)
        });
        let loaded = match loaded {
            Ok(pos) => self.conn.execute_batch("COMMIT").map(|()| pos),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                let _ = self.conn.execute_batch("DETACH DATABASE snap");
                return Err(e);
            }
        };
        self.conn.execute_batch("DETACH DATABASE snap")?;
        Ok(loaded?)
    }

    /// [`Store::load_snapshot`]'s copy, left in an open transaction.
    fn copy_from_snap(&mut self, path: &Path) -> Result<CachePos, StoreError> {
        let theirs: i64 = self
            .conn
            .query_row("PRAGMA snap.user_version", [], |r| r.get(0))?;
        if theirs != MIGRATIONS.len() as i64 {
            return Err(StoreError::Snapshot {
                path: path.display().to_string(),
                why: format!(
                    "schema version {theirs}, this tracker's is {}",
                    MIGRATIONS.len()
                ),
            });
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        for t in STATE_TABLES.iter().chain(&["applied_log"]) {
            self.conn.execute_batch(&format!(
                "DELETE FROM main.{t}; INSERT INTO main.{t} SELECT * FROM snap.{t};"
            ))?;
        }
        self.cache_pos()
    }

    /// How far the cache applied which log generation, for [`crate::sync_log::SyncLog::recover`].
    pub fn cache_pos(&self) -> Result<CachePos, StoreError> {
        Ok(cache_pos(&self.conn)?)
    }

    /// Records the log generation the cache applies (after a reset, or on a new cache).
    pub fn set_generation(&mut self, generation: Generation) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE applied_log SET generation = ?1 WHERE id = 1")?
            .execute(params![generation.to_string()])?;
        Ok(())
    }
}

/// How much of the log is applied, read inside a transaction or not.
pub fn applied(db: &Connection) -> rusqlite::Result<Applied> {
    db.prepare_cached("SELECT offset, lines FROM applied_log WHERE id = 1")?
        .query_row([], |r| {
            Ok(Applied {
                offset: r.get::<_, i64>(0)? as u64,
                lines: r.get::<_, i64>(1)? as u64,
            })
        })
}

/// How far the cache (or a snapshot of it) applied which log generation.
pub fn cache_pos(db: &Connection) -> rusqlite::Result<CachePos> {
    let a = applied(db)?;
    let generation: String = db
        .prepare_cached("SELECT generation FROM applied_log WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    Ok(CachePos {
        generation: Generation::parse(&generation),
        offset: a.offset,
        lines: a.lines,
    })
}

/// Records the applied offset; call in the transaction that applied the lines.
pub fn set_applied(db: &Connection, a: Applied) -> rusqlite::Result<()> {
    db.prepare_cached("UPDATE applied_log SET offset = ?1, lines = ?2 WHERE id = 1")?
        .execute(params![a.offset as i64, a.lines as i64])?;
    Ok(())
}

/// Writes a consistent copy of the database `db` to `to` (`VACUUM INTO`, a new
/// file; one read transaction, so it is the state at one applied offset).
pub fn vacuum_into(db: &Connection, to: &Path) -> Result<(), StoreError> {
    let to = to.to_str().ok_or_else(|| StoreError::Snapshot {
        path: to.display().to_string(),
        why: "the path is not UTF-8".into(),
    })?;
    db.execute("VACUUM INTO ?1", [to])?;
    Ok(())
}

/// Raft mode: the Raft index of the entry that became line `lines` of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftApplied {
    pub index: u64,
    pub lines: u64,
}

/// The Raft index of the last line recorded (raft mode), read in a transaction or not.
pub fn raft_applied(db: &Connection) -> rusqlite::Result<RaftApplied> {
    db.prepare_cached("SELECT raft_index, raft_lines FROM applied_log WHERE id = 1")?
        .query_row([], |r| {
            Ok(RaftApplied {
                index: r.get::<_, i64>(0)? as u64,
                lines: r.get::<_, i64>(1)? as u64,
            })
        })
}

/// Records the Raft index of line `lines`, in the transaction that applied it.
pub fn set_raft_applied(db: &Connection, a: RaftApplied) -> rusqlite::Result<()> {
    db.prepare_cached("UPDATE applied_log SET raft_index = ?1, raft_lines = ?2 WHERE id = 1")?
        .execute(params![a.index as i64, a.lines as i64])?;
    Ok(())
}

/// Applies one log entry, whose line starts at `offset`. THE one place state
/// changes. Idempotent: applying the same entry again changes nothing, and an
/// entry whose preconditions no longer hold is a no-op. An entry's request id is
/// recorded with it ([`crate::dedup::record`]) when it changed something: one that
/// changed nothing lost a race (two trackers, or two connections in one turn,
/// creating the same group: its proposer answered the error), so a retry of it
/// is judged afresh and gets that error again, not the `OK` of a change never made.
pub fn apply(db: &Connection, offset: u64, entry: &LogEntry) -> rusqlite::Result<()> {
    let before = db.total_changes();
    apply_op(db, offset, entry)?;
    match &entry.request_id {
        Some(id) if db.total_changes() != before => {
            crate::dedup::record(db, offset, entry.ms, id, &entry.op)
        }
        _ => Ok(()),
    }
}

fn apply_op(db: &Connection, offset: u64, entry: &LogEntry) -> rusqlite::Result<()> {
    let ms = entry.ms as i64;
    match &entry.op {
        Op::CreateUser { .. } | Op::Login { .. } | Op::Logout { .. } => {
            apply_account(db, &entry.op, ms)
        }
        Op::CreateGroup { .. }
        | Op::RequestJoin { .. }
        | Op::AcceptRequest { .. }
        | Op::RejectRequest { .. } => apply_membership(db, &entry.op, offset, ms),
        Op::LeaveGroup { group, user } => apply_leave(db, group, user),
        Op::UploadFile { .. }
        | Op::AddSeeder { .. }
        | Op::StopShare { .. }
        | Op::Heartbeat { .. } => apply_sharing(db, &entry.op, ms),
    }
}

/// Users and sessions.
fn apply_account(db: &Connection, op: &Op, ms: i64) -> rusqlite::Result<()> {
    match op {
        Op::CreateUser {
            user,
            password_hash,
        } => {
            db.prepare_cached(
                "INSERT OR IGNORE INTO users (user_id, password_hash, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![user, password_hash, ms])?;
        }
        Op::Login { token_hash, user } => {
            db.prepare_cached(
                "INSERT OR IGNORE INTO sessions (token_hash, user_id, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![token_hash, user, ms])?;
        }
        Op::Logout { token_hash } => end_session(db, token_hash)?,
        _ => {}
    }
    Ok(())
}

/// Ends a session and its seeding (logout, and a login superseded by its replay).
pub fn end_session(db: &Connection, token_hash: &str) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
        .execute(params![token_hash])?;
    db.prepare_cached("DELETE FROM file_seeders WHERE token_hash = ?1")?
        .execute(params![token_hash])?;
    Ok(())
}

/// Groups, join requests and joining (leaving is [`apply_leave`]). A member's
/// `joined_seq` is the offset of the line that made them one.
fn apply_membership(db: &Connection, op: &Op, offset: u64, ms: i64) -> rusqlite::Result<()> {
    let add_member = |group: &str, user: &str| -> rusqlite::Result<()> {
        db.prepare_cached(
            "INSERT OR IGNORE INTO group_members (group_id, user_id, joined_seq) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![group, user, offset as i64])?;
        Ok(())
    };
    let drop_request = |group: &str, user: &str| -> rusqlite::Result<usize> {
        db.prepare_cached("DELETE FROM join_requests WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group, user])
    };
    match op {
        Op::CreateGroup { group, owner } => {
            let created = db
                .prepare_cached(
                    "INSERT OR IGNORE INTO groups (group_id, owner, created_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![group, owner, ms])?;
            if created == 1 {
                add_member(group, owner)?;
            }
        }
        Op::RequestJoin { group, user } => {
            db.prepare_cached(
                "INSERT OR IGNORE INTO join_requests (group_id, user_id, requested_ms)
                 SELECT ?1, ?2, ?3
                 WHERE EXISTS (SELECT 1 FROM groups WHERE group_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2)",
            )?
            .execute(params![group, user, ms])?;
        }
        Op::AcceptRequest { group, user } => {
            let had_request = drop_request(group, user)? > 0;
            if had_request {
                add_member(group, user)?;
            }
        }
        Op::RejectRequest { group, user } => {
            drop_request(group, user)?;
        }
        _ => {}
    }
    Ok(())
}

/// A member leaves: their seeding ends; an owner's group passes to the longest
/// member, or disappears with everything in it when nobody is left.
fn apply_leave(db: &Connection, group: &str, user: &str) -> rusqlite::Result<()> {
    let was_member = db
        .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group, user])?;
    if was_member == 0 {
        return Ok(());
    }
    db.prepare_cached("DELETE FROM file_seeders WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group, user])?;
    if group_owner(db, group)?.as_deref() != Some(user) {
        return Ok(());
    }
    let heir: Option<String> = db
        .query_row(
            "SELECT user_id FROM group_members WHERE group_id = ?1
             ORDER BY joined_seq, user_id LIMIT 1",
            params![group],
            |r| r.get(0),
        )
        .optional()?;
    match heir {
        Some(heir) => {
            db.prepare_cached("UPDATE groups SET owner = ?2 WHERE group_id = ?1")?
                .execute(params![group, heir])?;
        }
        None => {
            for table in ["groups", "join_requests", "files", "file_seeders"] {
                db.execute(
                    &format!("DELETE FROM {table} WHERE group_id = ?1"),
                    params![group],
                )?;
            }
        }
    }
    Ok(())
}

/// Files and their seeders.
fn apply_sharing(db: &Connection, op: &Op, ms: i64) -> rusqlite::Result<()> {
    match op {
        Op::UploadFile {
            group,
            name,
            size,
            piece_size,
            file_sha1,
            piece_hashes,
            token_hash,
            user,
            peer_addr,
        } => {
            db.prepare_cached(
                "INSERT OR IGNORE INTO files
                   (group_id, name, size, piece_size, file_sha1, piece_hashes, uploader, created_ms)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
                 WHERE EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?7)",
            )?
            .execute(params![
                group,
                name,
                *size as i64,
                *piece_size as i64,
                file_sha1,
                piece_hashes,
                user,
                ms
            ])?;
            let seeder = Seeder {
                token_hash,
                user,
                peer_addr,
                partial: false,
            };
            upsert_seeder(db, group, name, file_sha1, &seeder, ms)?;
        }
        Op::AddSeeder {
            group,
            name,
            token_hash,
            user,
            peer_addr,
            partial,
        } => {
            let sha1: Option<String> = db
                .query_row(
                    "SELECT file_sha1 FROM files WHERE group_id = ?1 AND name = ?2",
                    params![group, name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(sha1) = sha1 {
                let seeder = Seeder {
                    token_hash,
                    user,
                    peer_addr,
                    partial: *partial,
                };
                upsert_seeder(db, group, name, &sha1, &seeder, ms)?;
            }
        }
        Op::StopShare {
            group,
            name,
            token_hash,
        } => {
            db.prepare_cached(
                "DELETE FROM file_seeders WHERE group_id = ?1 AND name = ?2 AND token_hash = ?3",
            )?
            .execute(params![group, name, token_hash])?;
        }
        Op::Heartbeat {
            token_hash,
            peer_addr,
        } => {
            db.prepare_cached(
                "UPDATE file_seeders SET last_seen_ms = max(last_seen_ms, ?2), peer_addr = ?3
                 WHERE token_hash = ?1",
            )?
            .execute(params![token_hash, ms, peer_addr])?;
        }
        _ => {}
    }
    Ok(())
}

/// Who seeds, for [`upsert_seeder`].
struct Seeder<'a> {
    token_hash: &'a str,
    user: &'a str,
    peer_addr: &'a str,
    /// Holds only some pieces (a download in progress).
    partial: bool,
}

/// Makes a session a seeder of a file, if the file (with that hash) exists, the
/// session is live and its user is a member of the group. A seeder row says
/// the latest of complete or partial (a finished download turns complete).
fn upsert_seeder(
    db: &Connection,
    group: &str,
    name: &str,
    file_sha1: &str,
    s: &Seeder,
    ms: i64,
) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO file_seeders
           (group_id, name, token_hash, user_id, peer_addr, last_seen_ms, partial)
         SELECT ?1, ?2, ?4, ?5, ?6, ?7, ?8
         WHERE EXISTS (SELECT 1 FROM files WHERE group_id = ?1 AND name = ?2 AND file_sha1 = ?3)
           AND EXISTS (SELECT 1 FROM sessions WHERE token_hash = ?4 AND user_id = ?5)
           AND EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?5)
         ON CONFLICT (group_id, name, token_hash) DO UPDATE
           SET peer_addr = excluded.peer_addr,
               last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
               partial = excluded.partial",
    )?
    .execute(params![
        group,
        name,
        file_sha1,
        s.token_hash,
        s.user,
        s.peer_addr,
        ms,
        s.partial
    ])?;
    Ok(())
}

// ---- queries for the commands -------------------------------------------------

/// A file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub name: String,
    pub size: u64,
    pub piece_size: u64,
    pub file_sha1: String,
    pub piece_hashes: String,
}

pub fn user_password_hash(db: &Connection, user: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT password_hash FROM users WHERE user_id = ?1")?
        .query_row(params![user], |r| r.get(0))
        .optional()
}

/// A session's user and when it was last used as far as the log knows (ms):
/// its login, or the latest logged heartbeat, upload or `add_seeder` of a
/// file it seeds (an active seeder's heartbeat is logged every
/// `seeder_timeout / 3`). Reads are not logged, so they do not count.
/// A session created at or after `unused_since_ms` is fresh enough without
/// looking at its seeders: that keeps the common case to one primary-key read
/// (this runs on every request that needs a session).
pub fn session_last_use(
    db: &Connection,
    token_hash: &str,
    unused_since_ms: u64,
) -> rusqlite::Result<Option<(String, u64)>> {
    let row = db
        .prepare_cached("SELECT user_id, created_ms FROM sessions WHERE token_hash = ?1")?
        .query_row(params![token_hash], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .optional()?;
    let Some((user, created)) = row else {
        return Ok(None);
    };
    if created >= unused_since_ms {
        return Ok(Some((user, created)));
    }
    let seen: Option<i64> = db
        .prepare_cached("SELECT max(last_seen_ms) FROM file_seeders WHERE token_hash = ?1")?
        .query_row(params![token_hash], |r| r.get(0))?;
    Ok(Some((user, created.max(seen.unwrap_or(0) as u64))))
}

pub fn session_user(db: &Connection, token_hash: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT user_id FROM sessions WHERE token_hash = ?1")?
        .query_row(params![token_hash], |r| r.get(0))
        .optional()
}

pub fn group_owner(db: &Connection, group: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT owner FROM groups WHERE group_id = ?1")?
        .query_row(params![group], |r| r.get(0))
        .optional()
}

pub fn is_member(db: &Connection, group: &str, user: &str) -> rusqlite::Result<bool> {
    db.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2)",
    )?
    .query_row(params![group, user], |r| r.get(0))
}

pub fn has_request(db: &Connection, group: &str, user: &str) -> rusqlite::Result<bool> {
    db.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM join_requests WHERE group_id = ?1 AND user_id = ?2)",
    )?
    .query_row(params![group, user], |r| r.get(0))
}

/// Every group as `group owner members status` for `asker`.
pub fn list_groups(db: &Connection, asker: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = db.prepare_cached(
        "SELECT g.group_id, g.owner,
                (SELECT count(*) FROM group_members m WHERE m.group_id = g.group_id),
                CASE WHEN g.owner = ?1 THEN 'owner'
                     WHEN EXISTS (SELECT 1 FROM group_members m
                                  WHERE m.group_id = g.group_id AND m.user_id = ?1) THEN 'member'
                     WHEN EXISTS (SELECT 1 FROM join_requests r
                                  WHERE r.group_id = g.group_id AND r.user_id = ?1) THEN 'pending'
                     ELSE '-' END
         FROM groups g ORDER BY g.group_id",
    )?;
    let rows = stmt.query_map(params![asker], |r| {
        Ok(vec![
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?.to_string(),
            r.get::<_, String>(3)?,
        ])
    })?;
    rows.collect()
}

pub fn list_requests(db: &Connection, group: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = db.prepare_cached(
        "SELECT user_id FROM join_requests WHERE group_id = ?1 ORDER BY requested_ms, user_id",
    )?;
    let rows = stmt.query_map(params![group], |r| Ok(vec![r.get::<_, String>(0)?]))?;
    rows.collect()
}

/// Every file of a group as `name size seeders_online partial_seeders_online`
/// (complete copies and downloads in progress counted apart).
pub fn list_files(
    db: &Connection,
    group: &str,
    online_since_ms: u64,
) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = db.prepare_cached(
        "SELECT f.name, f.size,
                (SELECT count(*) FROM file_seeders s
                 WHERE s.group_id = f.group_id AND s.name = f.name AND s.last_seen_ms >= ?2
                   AND s.partial = 0),
                (SELECT count(*) FROM file_seeders s
                 WHERE s.group_id = f.group_id AND s.name = f.name AND s.last_seen_ms >= ?2
                   AND s.partial != 0)
         FROM files f WHERE f.group_id = ?1 ORDER BY f.name",
    )?;
    let rows = stmt.query_map(params![group, online_since_ms as i64], |r| {
        Ok(vec![
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?.to_string(),
            r.get::<_, i64>(2)?.to_string(),
            r.get::<_, i64>(3)?.to_string(),
        ])
    })?;
    rows.collect()
}

pub fn file(db: &Connection, group: &str, name: &str) -> rusqlite::Result<Option<FileRow>> {
    db.prepare_cached(
        "SELECT name, size, piece_size, file_sha1, piece_hashes FROM files
         WHERE group_id = ?1 AND name = ?2",
    )?
    .query_row(params![group, name], |r| {
        Ok(FileRow {
            name: r.get(0)?,
            size: r.get::<_, i64>(1)? as u64,
            piece_size: r.get::<_, i64>(2)? as u64,
            file_sha1: r.get(3)?,
            piece_hashes: r.get(4)?,
        })
    })
    .optional()
}

/// Peer addresses of a file's seeders seen since `online_since_ms`.
pub fn online_seeders(
    db: &Connection,
    group: &str,
    name: &str,
    online_since_ms: u64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db.prepare_cached(
        "SELECT DISTINCT peer_addr FROM file_seeders
         WHERE group_id = ?1 AND name = ?2 AND last_seen_ms >= ?3 ORDER BY peer_addr",
    )?;
    let rows = stmt.query_map(params![group, name, online_since_ms as i64], |r| r.get(0))?;
    rows.collect()
}

pub fn is_seeder(
    db: &Connection,
    group: &str,
    name: &str,
    token_hash: &str,
) -> rusqlite::Result<bool> {
    db.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM file_seeders
                        WHERE group_id = ?1 AND name = ?2 AND token_hash = ?3)",
    )?
    .query_row(params![group, name, token_hash], |r| r.get(0))
}

/// For `heartbeat`: (number of the session's seeder rows, how many of them were
/// seen since `since_ms` at `peer_addr`).
pub fn session_seeding(
    db: &Connection,
    token_hash: &str,
    since_ms: u64,
    peer_addr: &str,
) -> rusqlite::Result<(u64, u64)> {
    db.prepare_cached(
        "SELECT count(*), coalesce(sum(last_seen_ms >= ?2 AND peer_addr = ?3), 0)
         FROM file_seeders WHERE token_hash = ?1",
    )?
    .query_row(params![token_hash, since_ms as i64, peer_addr], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
}

/// The tables that hold the tracker's state. `applied_log` (how much of the log
/// the cache holds) is bookkeeping and not among them; `applied_requests` (the
/// request ids of applied changes, [`crate::dedup`]) decides replies, so it is.
pub const STATE_TABLES: [&str; 8] = [
    "users",
    "sessions",
    "groups",
    "group_members",
    "join_requests",
    "files",
    "file_seeders",
    "applied_requests",
];

/// Every row of `table` as text, each row its values' `Debug` forms joined by
/// spaces, the rows sorted: two tables hold the same rows exactly when these are
/// equal. `table` must be one of [`STATE_TABLES`] or `applied_log`.
pub fn table_rows(db: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    if !STATE_TABLES.contains(&table) && table != "applied_log" {
        return Err(rusqlite::Error::InvalidParameterName(table.to_string()));
    }
    let mut stmt = db.prepare(&format!("SELECT * FROM {table}"))?;
    let n = stmt.column_count();
    let mut rows = stmt
        .query_map([], |r| {
            let mut cols = Vec::with_capacity(n);
            for c in 0..n {
                let v: rusqlite::types::Value = r.get(c)?;
                cols.push(format!("{v:?}"));
            }
            Ok(cols.join(" "))
        })?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    rows.sort();
    Ok(rows)
}

/// A canonical text dump of every state table, a line `table v1 v2 ...` per row,
/// table by table: equal dumps, equal state. Tests compare caches with it.
pub fn dump(db: &Connection) -> rusqlite::Result<String> {
    let mut out = String::new();
    for table in STATE_TABLES {
        for row in table_rows(db, table)? {
            out.push_str(table);
            out.push(' ');
            out.push_str(&row);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(op: Op) -> LogEntry {
        LogEntry {
            ms: 1000,
            tracker: 1,
            request_id: None,
            op,
        }
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn script() -> Vec<(u64, LogEntry)> {
        let ops = vec![
            Op::CreateUser {
                user: s("alice"),
                password_hash: s("h1"),
            },
            Op::CreateUser {
                user: s("bob"),
                password_hash: s("h2"),
            },
            Op::Login {
                token_hash: s("ta"),
                user: s("alice"),
            },
            Op::Login {
                token_hash: s("tb"),
                user: s("bob"),
            },
            Op::CreateGroup {
                group: s("g"),
                owner: s("alice"),
            },
            Op::RequestJoin {
                group: s("g"),
                user: s("bob"),
            },
            Op::AcceptRequest {
                group: s("g"),
                user: s("bob"),
            },
            Op::UploadFile {
                group: s("g"),
                name: s("f 1"),
                size: 3,
                piece_size: 512,
                file_sha1: "a".repeat(40),
                piece_hashes: "b".repeat(40),
                token_hash: s("ta"),
                user: s("alice"),
                peer_addr: s("127.0.0.1:1"),
            },
            Op::AddSeeder {
                group: s("g"),
                name: s("f 1"),
                token_hash: s("tb"),
                user: s("bob"),
                peer_addr: s("127.0.0.1:2"),
                partial: false,
            },
            Op::Heartbeat {
                token_hash: s("tb"),
                peer_addr: s("127.0.0.1:3"),
            },
            Op::LeaveGroup {
                group: s("g"),
                user: s("alice"),
            },
            Op::CreateGroup {
                group: s("h"),
                owner: s("bob"),
            },
            Op::LeaveGroup {
                group: s("h"),
                user: s("bob"),
            },
            Op::Logout {
                token_hash: s("ta"),
            },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| (i as u64 * 100, e(op)))
            .collect()
    }

    #[test]
    fn apply_is_idempotent_and_ownership_passes_on() {
        let entries = script();
        let mut once = Store::open_in_memory().unwrap();
        once.apply_entries(&entries, 5000).unwrap();
        let d1 = dump(once.conn()).unwrap();
        assert_eq!(
            group_owner(once.conn(), "g").unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(group_owner(once.conn(), "h").unwrap(), None);
        assert!(!is_member(once.conn(), "g", "alice").unwrap());
        assert_eq!(
            online_seeders(once.conn(), "g", "f 1", 0).unwrap(),
            vec!["127.0.0.1:3"]
        );

        // Every entry applied twice in a row.
        let mut twice = Store::open_in_memory().unwrap();
        let doubled: Vec<_> = entries
            .iter()
            .flat_map(|x| [x.clone(), x.clone()])
            .collect();
        twice.apply_entries(&doubled, 5000).unwrap();
        assert_eq!(dump(twice.conn()).unwrap(), d1);

        // Every prefix applied again (as a restart from an older cache offset
        // does) before the rest: the same state as applying the log once.
        for k in 0..=entries.len() {
            let mut st = Store::open_in_memory().unwrap();
            st.apply_entries(&entries[..k], 1).unwrap();
            st.apply_entries(&entries[..k], 1).unwrap();
            st.apply_entries(&entries[k..], 2).unwrap();
            assert_eq!(
                dump(st.conn()).unwrap(),
                d1,
                "prefix of {k} entries reapplied"
            );
        }
        // The comparison can fail: a state missing one entry differs.
        let mut short = Store::open_in_memory().unwrap();
        short
            .apply_entries(&entries[..entries.len() - 1], 1)
            .unwrap();
        assert_ne!(dump(short.conn()).unwrap(), d1);
        assert_eq!(once.applied().unwrap().lines, entries.len() as u64);
        assert_eq!(once.applied().unwrap().offset, 5000);
    }

    fn normalise(sql: &str) -> String {
        let no_comments: Vec<&str> = sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""))
            .collect();
        no_comments
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(")
            .replace(" )", ")")
            .replace(" ,", ",")
    }

    fn schema_of(db: &Connection) -> Vec<(String, String)> {
        let mut stmt = db
            .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, normalise(&r.get::<_, String>(1)?))))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn schema_sql_matches_migrations() {
        let migrated = Store::open_in_memory().unwrap();
        let plain = Connection::open_in_memory().unwrap();
        plain
            .execute_batch(include_str!("../../schema.sql"))
            .unwrap();
        assert_eq!(schema_of(migrated.conn()), schema_of(&plain));
        let v: i64 = migrated
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    /// Migration 0005 rebuilds file_seeders: the seeders of an older cache stay,
    /// as complete seeders.
    #[test]
    fn partial_seeders_migration_keeps_seeders() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch("INSERT INTO file_seeders VALUES ('g', 'f', 't', 'u', '1.2.3.4:5', 7)")
            .unwrap();
        let mut st = Store {
            conn,
            batch_opened: None,
            checkpointer: None,
        };
        st.migrate().unwrap();
        let row: (String, i64, i64) = st
            .conn()
            .query_row(
                "SELECT peer_addr, last_seen_ms, partial FROM file_seeders WHERE token_hash = 't'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, ("1.2.3.4:5".to_string(), 7, 0));
    }

    #[test]
    fn reopen_keeps_state_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut st = Store::open(&path).unwrap();
            st.apply_entries(&script()[..3], 300).unwrap();
        }
        let st = Store::open(&path).unwrap();
        assert_eq!(
            st.applied().unwrap(),
            Applied {
                offset: 300,
                lines: 3
            }
        );
        assert!(user_password_hash(st.conn(), "bob").unwrap().is_some());
        assert_eq!(
            session_user(st.conn(), "ta").unwrap().as_deref(),
            Some("alice")
        );
    }

    /// Applies in a batch: seen at once on the store's connection, by another
    /// connection only once committed (when due, before another write transaction,
    /// or when the store is dropped); an aborted batch leaves nothing.
    #[test]
    fn an_apply_batch_is_seen_by_others_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut st = Store::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        let users = |db: &Connection| {
            db.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let entries = script();
        let add = |st: &mut Store, i: usize| {
            let (offset, entry) = &entries[i];
            apply(st.batch().unwrap(), *offset, entry).unwrap();
        };
        let opened = Instant::now();
        add(&mut st, 0);
        assert_eq!((users(st.conn()), users(&other)), (1, 0));
        st.commit_batch_opened_before(opened - std::time::Duration::from_millis(1))
            .unwrap();
        assert_eq!(users(&other), 0, "not due yet");
        st.commit_batch_opened_before(Instant::now()).unwrap();
        assert_eq!(users(&other), 1, "due");
        add(&mut st, 1);
        st.abort_batch();
        assert_eq!((users(st.conn()), users(&other)), (1, 1), "aborted");
        add(&mut st, 1);
        st.apply_entries(&entries[2..3], 300).unwrap();
        assert_eq!(users(&other), 2, "committed before another transaction");
        add(&mut st, 3); // a login
        let read = st.read_transaction().unwrap();
        let in_batch = dump(&read).unwrap();
        drop(read);
        assert!(
            !st.conn().is_autocommit(),
            "the read ended, the batch did not"
        );
        assert_ne!(dump(&other).unwrap(), in_batch);
        drop(st);
        assert_eq!(dump(&other).unwrap(), in_batch, "committed when dropped");
    }

    /// Apply batches held for a tenth of a second, begun again at once, leave the WAL
    /// checkpointer no moment to restart the WAL; it asks for one, and the WAL stays
    /// near the restart size instead of growing to the loop's valve (80 MB).
    #[test]
    fn held_apply_batches_let_the_wal_restart() {
        use crate::wal_checkpointer::RESTART_PAGES;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut st = Store::open(&path).unwrap();
        let wal = dir.path().join("t.db-wal");
        let page = 4096 + 24;
        let hold = std::time::Duration::from_millis(100);
        // About 3 x RESTART_PAGES pages, a few per apply, as the loop applies.
        let applies = 3 * RESTART_PAGES / 4;
        let mut largest = 0;
        for i in 0..applies {
            st.batch()
                .unwrap()
                .execute(
                    "INSERT INTO users (user_id, password_hash, created_ms) \
                     SELECT ?1 || '-' || value, hex(randomblob(1750)), 0 \
                     FROM (SELECT 1 AS value UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4)",
                    [i],
                )
                .unwrap();
            st.commit_batch_opened_before(Instant::now() - hold)
                .unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
        st.commit_batch().unwrap();
        let rows: i64 = st
            .conn()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, applies * 4);
        let limit = (2 * RESTART_PAGES) as u64 * page;
        assert!(
            largest <= limit,
            "the WAL grew to {largest} bytes (limit {limit})"
        );
    }
}
