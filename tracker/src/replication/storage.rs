//! `RaftStorage`: raft-rs's [`Storage`] kept durably in `raft<N>.db`, a SQLite file of
//! its own in the tracker's data dir (never the cache db: deleting the cache must not
//! touch Raft's promises).
//!
//! # On-disk format, version 2 (`PRAGMA user_version = 2`)
//!
//! ```sql
//! -- one row: Raft's hard state and the membership (the ConfState) as of the
//! -- conf change entry at conf_index (0: the bootstrap list or a snapshot's)
//! CREATE TABLE raft_state (id INTEGER PRIMARY KEY CHECK (id = 1),
//!     term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_index INTEGER NOT NULL,
//!     voters TEXT NOT NULL,                  -- tracker numbers, e.g. '1,2,3'; learners after
//!                                            -- a ';' ('1,2,3;4': 4 catches up before it votes)
//!     conf_index INTEGER NOT NULL DEFAULT 0);
//! -- the log entries this tracker holds, contiguous, idx ascending
//! CREATE TABLE raft_entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
//!     kind INTEGER NOT NULL,                 -- eraftpb.EntryType: 0 normal, 1 conf change
//!     data BLOB NOT NULL, context BLOB NOT NULL);
//! -- at most one row: the newest snapshot (state machine bytes + what it covers)
//! CREATE TABLE raft_snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
//!     idx INTEGER NOT NULL, term INTEGER NOT NULL, voters TEXT NOT NULL, data BLOB NOT NULL);
//! ```
//! Version 1 (no `conf_index`) is upgraded in place at open.
//!
//! # Membership
//! A brand-new file holds every tracker of tracker_info.txt as a voter (the
//! bootstrap of a fresh cluster); from then on the membership is what Raft
//! committed: [`RaftStorage::set_conf_state`] keeps the ConfState after each
//! applied conf change (written with the next persist, or staged for the writer
//! like the hard state), and a received snapshot brings the sender's. A snapshot
//! is served with the current ConfState (a tracker added after the snapshot was
//! taken must find itself in it, or raft-rs refuses it; the conf changes after the
//! snapshot's index are committed, and the receiver applies them again, which
//! leaves a simple change's result as it is).
//!
//! The file runs in WAL mode with `synchronous = FULL`: every [`RaftStorage::persist`]
//! is one transaction whose commit fsyncs the WAL before it returns, so one `Ready`
//! costs one fsync however many entries it carries. Entries before a snapshot may be
//! dropped ([`RaftStorage::store_snapshot`] keeps a configurable tail for slow
//! followers); the entry at the snapshot index keeps its term in `raft_snapshot`.
//!
//! # Written behind (the raft writer thread)
//! With a [`super::raft_writer::RaftWriter`], a `Ready`'s entries and hard state are
//! *staged* ([`RaftStorage::stage`]): kept in memory, where raft-rs reads them back at
//! once (its async-ready contract), and handed to the writer thread as a [`WriteJob`]
//! that it commits ([`write_jobs`], one fsynced transaction for every job it finds
//! queued) on a connection of its own. [`RaftStorage::written`] then drops the
//! in-memory copies. A snapshot this tracker took goes the same way
//! ([`RaftStorage::stage_snapshot`]: its row and the entries it drops are written
//! behind the staged `Ready`s, so the loop never waits on a state-sized write), and
//! so does a snapshot received from the leader ([`RaftStorage::stage`] with a
//! snapshot: its row replaces the whole log). Nothing here is durable until the
//! writer says so; the node holds back whatever depends on it (see `node.rs`).
//!
//! # Serving snapshots
//! [`Storage::snapshot`] never reads the blob on the loop: the newest snapshot is
//! kept in memory ([`SnapshotCache`], one blob the size of the state, shared by
//! reference with the messages that carry it) from when it is staged until it has
//! not been asked for during [`SNAPSHOT_IDLE`]. When it is not in memory, the ask
//! starts one read of the row on a thread and gets `SnapshotTemporarilyUnavailable`;
//! raft-rs asks again (with the follower's next response) and gets it once read.
//!
//! The commit index learned from a `LightReady` is kept in memory and written with the
//! next persist (not fsynced on its own): after a crash it may lag, which Raft tolerates;
//! [`RaftStorage::raise_commit`] lifts it to what the state machine had applied.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, Storage};
use rusqlite::{params, Connection, OptionalExtension};

/// How long a writer waits for the other connection's write lock (the loop's
/// snapshot and the writer thread's appends may meet).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A snapshot kept in memory for serving is dropped after this long unasked.
pub const SNAPSHOT_IDLE: Duration = Duration::from_secs(60);

/// The format version this code reads and writes.
pub const FORMAT_VERSION: i64 = 2;

/// Why the Raft storage cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("raft storage: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "raft storage {path}: unknown format version {found} (this tracker reads {FORMAT_VERSION})"
    )]
    Version { path: String, found: i64 },
    #[error("raft storage: {0}")]
    Corrupt(String),
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

/// Raft's durable state: hard state, membership, log entries and the newest snapshot.
pub struct RaftStorage {
    conn: Connection,
    path: PathBuf,
    /// Staged entries not yet durable, each with the number of the `Ready` (and
    /// [`WriteJob`]) that wrote it: contiguous, ending at `last_index`.
    unsynced: Vec<(u64, Entry)>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The conf change entry `conf_state` is as of (see the module doc).
    conf_index: u64,
    /// `conf_state` changed since it was last written or staged.
    conf_unwritten: bool,
    snapshot_index: u64,
    snapshot_term: u64,
    first_index: u64,
    last_index: u64,
    /// The newest snapshot for serving, or its read in flight.
    cache: RefCell<SnapshotCache>,
}

/// What [`Storage::snapshot`] serves from: at most one snapshot in memory and one
/// read of the stored row in flight (see the module doc).
#[derive(Default)]
pub struct SnapshotCache {
    held: Option<Snapshot>,
    /// When `held` was put or last served.
    used: Option<Instant>,
    reading: Option<Receiver<Result<Snapshot, String>>>,
}

impl SnapshotCache {
    /// Keeps `snap` as the newest (an older one is never put over a newer).
    fn put(&mut self, snap: Snapshot, now: Instant) {
        let index = |s: &Snapshot| s.get_metadata().index;
        if self.held.as_ref().is_none_or(|h| index(h) <= index(&snap)) {
            self.held = Some(snap);
            self.used = Some(now);
        }
    }

    /// Takes in a finished read; a failed one is logged (the next ask retries).
    fn poll_read(&mut self, now: Instant) {
        let Some(rx) = &self.reading else { return };
        let outcome = match rx.try_recv() {
            Err(TryRecvError::Empty) => return,
            Ok(outcome) => outcome,
            Err(TryRecvError::Disconnected) => Err("the read thread ended".into()),
        };
        self.reading = None;
        match outcome {
            Ok(snap) => self.put(snap, now),
            Err(why) => log::warn!("reading the raft snapshot to serve it: {why}"),
        }
    }

    /// The held snapshot if it covers `request_index`.
    fn serve(&mut self, request_index: u64, now: Instant) -> Option<Snapshot> {
        let snap = self
            .held
            .as_ref()
            .filter(|s| s.get_metadata().index >= request_index)?
            .clone();
        self.used = Some(now);
        Some(snap)
    }

    /// Starts reading the row at `path` on a thread, unless a snapshot covering
    /// `stored_index` is held or a read is in flight.
    fn start_read(&mut self, path: &Path, stored_index: u64) {
        let covered = |s: &Snapshot| s.get_metadata().index >= stored_index;
        if self.held.as_ref().is_some_and(covered) || self.reading.is_some() {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn(move || {
                let read = open_connection(&path)
                    .and_then(|c| read_snapshot(&c))
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.ok_or_else(|| "no snapshot stored".to_string()));
                let _ = tx.send(read);
            });
        match spawned {
            Ok(_) => self.reading = Some(rx),
            Err(e) => log::warn!("cannot start the snapshot read: {e}"),
        }
    }

    /// Drops the held snapshot when unasked for `idle`.
    fn drop_idle(&mut self, now: Instant, idle: Duration) {
        if self
            .used
            .is_some_and(|u| now.saturating_duration_since(u) >= idle)
        {
            self.held = None;
            self.used = None;
        }
    }

    /// Whether a snapshot is in memory.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }
}

const SCHEMA: &str = "
CREATE TABLE raft_state (id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_index INTEGER NOT NULL,
    voters TEXT NOT NULL, conf_index INTEGER NOT NULL DEFAULT 0);
CREATE TABLE raft_entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
    kind INTEGER NOT NULL, data BLOB NOT NULL, context BLOB NOT NULL);
CREATE TABLE raft_snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, voters TEXT NOT NULL, data BLOB NOT NULL);
";

/// A membership as stored: the voters, then `;` and the learners if there are
/// any (`1,2,3` or `1,2,3;4`).
fn membership_text(members: &ConfState) -> String {
    let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    match members.learners.is_empty() {
        true => list(&members.voters),
        false => format!("{};{}", list(&members.voters), list(&members.learners)),
    }
}

fn parse_membership(text: &str) -> Result<ConfState, StorageError> {
    let list = |part: &str| -> Result<Vec<u64>, StorageError> {
        part.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| StorageError::Corrupt(format!("bad membership {text:?}")))
            })
            .collect()
    };
    let (voters, learners) = text.split_once(';').unwrap_or((text, ""));
    let mut members = ConfState::default();
    members.voters = list(voters)?;
    members.learners = list(learners)?;
    Ok(members)
}

impl RaftStorage {
    /// Opens the storage at `path`, or creates it with `bootstrap` (every tracker
    /// of tracker_info.txt) as the voters; an existing file keeps the membership
    /// Raft committed, whatever `bootstrap` says.
    pub fn open(path: &Path, bootstrap: &[u64]) -> Result<Self, StorageError> {
        let conn = open_connection(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 => create(&conn, bootstrap)?,
            1 => upgrade_from_1(&conn)?,
            FORMAT_VERSION => {}
            found => {
                return Err(StorageError::Version {
                    path: path.display().to_string(),
                    found,
                })
            }
        }
        let mut storage = RaftStorage {
            conn,
            path: path.to_path_buf(),
            unsynced: Vec::new(),
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            conf_index: 0,
            conf_unwritten: false,
            snapshot_index: 0,
            snapshot_term: 0,
            first_index: 1,
            last_index: 0,
            cache: RefCell::default(),
        };
        storage.load()?;
        Ok(storage)
    }

    /// Reads the state row, the snapshot's coverage and the entry range into memory.
    fn load(&mut self) -> Result<(), StorageError> {
        let (term, vote, commit, voters, conf_index): (u64, u64, u64, String, u64) =
            self.conn.query_row(
                "SELECT term, vote, commit_index, voters, conf_index FROM raft_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
        self.hard_state.term = term;
        self.hard_state.vote = vote;
        self.hard_state.commit = commit;
        self.conf_state = parse_membership(&voters)?;
        self.conf_index = conf_index;
        let snap: Option<(u64, u64, String)> = self
            .conn
            .query_row(
                "SELECT idx, term, voters FROM raft_snapshot WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((index, term, voters)) = snap {
            (self.snapshot_index, self.snapshot_term) = (index, term);
            if index > self.conf_index {
                // (A version 1 file: its state row never changed membership.)
                self.conf_state = parse_membership(&voters)?;
                self.conf_index = index;
            }
        }
        let (min, max): (Option<u64>, Option<u64>) =
            self.conn
                .query_row("SELECT MIN(idx), MAX(idx) FROM raft_entries", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        self.first_index = min.unwrap_or(self.snapshot_index + 1);
        self.last_index = max.unwrap_or(self.snapshot_index);
        Ok(())
    }

    /// Persists what a `Ready` asks for, in one fsynced transaction: a received
    /// snapshot (which replaces the whole log), new entries (which replace any
    /// conflicting suffix) and the hard state. A `Ready` that changes only the
    /// commit index costs no transaction (see the module doc on the commit index).
    pub fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if snapshot.is_none() && self.only_commit_moved(entries, hard_state) {
            return Ok(());
        }
        let mut hs = self.next_hard_state(hard_state);
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            hs.term = hs.term.max(meta.term);
            hs.commit = hs.commit.max(meta.index);
            self.set_conf_state(meta.index, meta.get_conf_state().clone());
        }
        let conf = self.take_unwritten_conf();
        let tx = self.conn.transaction()?;
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            write_snapshot(
                &tx,
                meta.index,
                meta.term,
                meta.get_conf_state(),
                &snap.data,
            )?;
            tx.execute("DELETE FROM raft_entries", [])?;
        }
        write_entries(&tx, entries)?;
        write_hard_state(&tx, &hs)?;
        if let Some(conf) = &conf {
            write_conf(&tx, conf)?;
        }
        tx.commit()?;
        if let Some(snap) = snapshot {
            self.cache.get_mut().put(snap.clone(), Instant::now());
        }
        self.apply_in_memory(snapshot, entries, hs);
        Ok(())
    }

    /// Whether a `Ready` with these entries and hard state (and no snapshot) asks
    /// for nothing durable: at most the commit index moved, which is then kept in
    /// memory and written with the next persist (a restart lifts it to what the
    /// state machine applied, `raise_commit`). Saves an fsync per such `Ready`.
    fn only_commit_moved(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> bool {
        let same_vote =
            |h: &HardState| h.term == self.hard_state.term && h.vote == self.hard_state.vote;
        if !entries.is_empty() || !hard_state.is_none_or(same_vote) || self.conf_unwritten {
            return false;
        }
        if let Some(h) = hard_state {
            self.set_commit(h.commit);
        }
        true
    }

    /// The hard state to write for a `Ready`: its own (or the current one), never
    /// with a lower commit index than already known.
    fn next_hard_state(&self, hard_state: Option<&HardState>) -> HardState {
        let mut hs = hard_state
            .cloned()
            .unwrap_or_else(|| self.hard_state.clone());
        hs.commit = hs.commit.max(self.hard_state.commit);
        hs
    }

    /// Stages a `Ready`'s received snapshot, entries and hard state (numbered
    /// `number`) for the writer thread: in memory at once, where raft-rs reads them,
    /// and returned as the job that makes them durable (the snapshot's row replaces
    /// the whole log, as in [`Self::persist`]). `None` when nothing needs writing (at
    /// most the commit index moved, kept as in [`Self::persist`]).
    pub fn stage(
        &mut self,
        number: u64,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Option<WriteJob> {
        if snapshot.is_none() && self.only_commit_moved(entries, hard_state) {
            return None;
        }
        let mut hs = self.next_hard_state(hard_state);
        let received = snapshot.map(|snap| {
            let meta = snap.get_metadata();
            hs.term = hs.term.max(meta.term);
            hs.commit = hs.commit.max(meta.index);
            self.set_conf_state(meta.index, meta.get_conf_state().clone());
            self.unsynced.clear();
            self.cache.get_mut().put(snap.clone(), Instant::now());
            SnapshotWrite {
                index: meta.index,
                term: meta.term,
                members: meta.get_conf_state().clone(),
                data: snap.data.clone(),
                compact_to: None,
            }
        });
        if let Some(first) = entries.first() {
            self.unsynced.retain(|(_, e)| e.index < first.index);
            self.unsynced
                .extend(entries.iter().map(|e| (number, e.clone())));
        }
        self.apply_in_memory(snapshot, entries, hs.clone());
        Some(WriteJob {
            number,
            entries: entries.to_vec(),
            hard_state: Some(hs),
            snapshot: received,
            conf: self.take_unwritten_conf(),
        })
    }

    /// Drops the snapshot kept for serving once unasked for `idle` (see the
    /// module doc); `now` is the loop's clock.
    pub fn drop_idle_snapshot(&mut self, now: Instant, idle: Duration) {
        self.cache.get_mut().drop_idle(now, idle);
    }

    /// Whether a snapshot is kept in memory for serving.
    pub fn holds_snapshot(&self) -> bool {
        self.cache.borrow().holds()
    }

    /// The writer made every job up to `number` durable: their in-memory copies go.
    pub fn written(&mut self, number: u64) {
        let durable = self
            .unsynced
            .iter()
            .take_while(|(n, _)| *n <= number)
            .count();
        self.unsynced.drain(..durable);
    }

    /// Whether staged entries are still waiting for the writer.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// The file this storage lives in (the writer thread opens its own connection).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first index held in memory only (`last_index + 1` when none is).
    fn unsynced_from(&self) -> u64 {
        self.unsynced
            .first()
            .map_or(self.last_index + 1, |(_, e)| e.index)
    }

    fn apply_in_memory(&mut self, snapshot: Option<&Snapshot>, entries: &[Entry], hs: HardState) {
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            self.snapshot_index = meta.index;
            self.snapshot_term = meta.term;
            self.first_index = meta.index + 1;
            self.last_index = meta.index;
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if self.last_index < self.first_index {
                self.first_index = first.index;
            }
            self.last_index = last.index;
        }
        self.hard_state = hs;
    }

    /// The membership after the conf change entry at `index` was applied (or as a
    /// received snapshot at `index` says): in memory at once, written with the
    /// next [`Self::persist`] or staged with the next [`Self::stage`].
    pub fn set_conf_state(&mut self, index: u64, mut conf_state: ConfState) {
        conf_state.voters.sort_unstable();
        conf_state.learners.sort_unstable();
        self.conf_state = conf_state;
        self.conf_index = index;
        self.conf_unwritten = true;
    }

    /// The membership Raft committed (as applied here), see the module doc.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The conf change entry (or snapshot) [`Self::conf_state`] is as of: a conf
    /// change entry at or before it is in it already.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// Whether a changed membership waits for the next persist or stage.
    pub fn conf_unwritten(&self) -> bool {
        self.conf_unwritten
    }

    fn take_unwritten_conf(&mut self) -> Option<ConfWrite> {
        std::mem::take(&mut self.conf_unwritten).then(|| ConfWrite {
            index: self.conf_index,
            members: self.conf_state.clone(),
        })
    }

    /// Notes a newer commit index (from a `LightReady`); written with the next persist.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Lifts the commit index to `applied` (at restart: what the state machine had
    /// applied was committed, even if the commit index on disk lagged behind it).
    pub fn raise_commit(&mut self, applied: u64) -> Result<(), StorageError> {
        let applied = applied.min(self.last_index);
        if applied > self.hard_state.commit {
            self.hard_state.commit = applied;
            self.conn.execute(
                "UPDATE raft_state SET commit_index = ?1 WHERE id = 1",
                [applied],
            )?;
        }
        Ok(())
    }

    /// Keeps the state machine's snapshot taken at `index` (which must be applied,
    /// so committed and in the log) and drops the entries before it, but for the last
    /// `keep_entries` ones (so a slightly lagging follower needs no snapshot), in one
    /// transaction here. The node with a writer thread uses [`Self::stage_snapshot`].
    pub fn store_snapshot(
        &mut self,
        index: u64,
        data: Bytes,
        keep_entries: u64,
    ) -> Result<(), StorageError> {
        match self.stage_snapshot(0, index, data, keep_entries)? {
            Some(job) => write_jobs(&mut self.conn, &[job]),
            None => Ok(()),
        }
    }

    /// [`Self::store_snapshot`] written behind: in memory at once (raft-rs then no
    /// longer reads the dropped entries; [`Storage::snapshot`] serves the stored one,
    /// or `SnapshotTemporarilyUnavailable`, until the row is written) and returned as
    /// the job (numbered `number`, the last staged `Ready`'s) that writes the row and
    /// drops the entries. `None`: not newer than the snapshot kept.
    pub fn stage_snapshot(
        &mut self,
        number: u64,
        index: u64,
        data: Bytes,
        keep_entries: u64,
    ) -> Result<Option<WriteJob>, StorageError> {
        if index <= self.snapshot_index {
            return Ok(None);
        }
        let term = self.term(index).map_err(|e| {
            StorageError::Corrupt(format!("snapshot at {index}: no term for it ({e})"))
        })?;
        let compact_to = (index + 1)
            .saturating_sub(keep_entries)
            .max(self.first_index);
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.first_index = compact_to;
        let mut snap = Snapshot::default();
        snap.data = data.clone();
        let meta = snap.mut_metadata();
        (meta.index, meta.term) = (index, term);
        *meta.mut_conf_state() = self.conf_state.clone();
        self.cache.get_mut().put(snap, Instant::now());
        Ok(Some(WriteJob {
            number,
            entries: Vec::new(),
            hard_state: None,
            conf: None,
            snapshot: Some(SnapshotWrite {
                index,
                term,
                members: self.conf_state.clone(),
                data,
                compact_to: Some(compact_to),
            }),
        }))
    }

    /// The index the newest snapshot covers (0: none yet).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// The newest snapshot stored, with its state machine bytes, if there is one
    /// (read here: for the start, not the loop).
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        read_snapshot(&self.conn)
    }

    /// The hard state as last persisted (or noted, for the commit index).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, term, kind, data, context FROM raft_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )?;
        let mut rows = stmt.query([low, high])?;
        let (mut out, mut size) = (Vec::new(), 0u64);
        while let Some(r) = rows.next()? {
            let mut e = Entry::default();
            e.index = r.get(0)?;
            e.term = r.get(1)?;
            let kind: i32 = r.get(2)?;
            e.set_entry_type(match kind {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                k => {
                    return Err(StorageError::Corrupt(format!(
                        "entry {}: kind {k}",
                        e.index
                    )))
                }
            });
            e.data = r.get::<_, Vec<u8>>(3)?.into();
            e.context = r.get::<_, Vec<u8>>(4)?.into();
            if e.index != low + out.len() as u64 {
                return Err(StorageError::Corrupt(format!(
                    "gap in the log before {}",
                    e.index
                )));
            }
            size += u64::from(protobuf::Message::compute_size(&e));
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }
}

/// The `raft_snapshot` row on `conn`, if there is one.
fn read_snapshot(conn: &Connection) -> Result<Option<Snapshot>, StorageError> {
    let row: Option<(u64, u64, String, Vec<u8>)> = conn
        .query_row(
            "SELECT idx, term, voters, data FROM raft_snapshot WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((index, term, voters, data)) = row else {
        return Ok(None);
    };
    let mut snap = Snapshot::default();
    snap.data = data.into();
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    *meta.mut_conf_state() = parse_membership(&voters)?;
    Ok(Some(snap))
}

/// A version 1 file gets the `conf_index` column (0: its membership is the
/// bootstrap list or its snapshot's).
fn upgrade_from_1(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(
        "BEGIN; ALTER TABLE raft_state ADD COLUMN conf_index INTEGER NOT NULL DEFAULT 0;",
    )?;
    conn.pragma_update(None, "user_version", FORMAT_VERSION)?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

fn create(conn: &Connection, voters: &[u64]) -> Result<(), StorageError> {
    let mut members = ConfState::default();
    members.voters = voters.to_vec();
    members.voters.sort_unstable();
    conn.execute_batch(&format!("BEGIN; {SCHEMA}"))?;
    conn.execute(
        "INSERT INTO raft_state (id, term, vote, commit_index, voters) VALUES (1, 0, 0, 0, ?1)",
        [membership_text(&members)],
    )?;
    conn.pragma_update(None, "user_version", FORMAT_VERSION)?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// What the writer thread makes durable for one staged `Ready`.
#[derive(Debug)]
pub struct WriteJob {
    /// The `Ready`'s number (raft-rs's `on_persist_ready` takes it).
    pub number: u64,
    /// New entries; they replace any stored suffix from the first one's index.
    pub entries: Vec<Entry>,
    /// The hard state as of this `Ready` (`None`: a snapshot's job, which leaves
    /// it as it is).
    pub hard_state: Option<HardState>,
    /// A snapshot this tracker took, with the entries it lets go.
    pub snapshot: Option<SnapshotWrite>,
    /// The membership, when a conf change or a received snapshot changed it.
    pub conf: Option<ConfWrite>,
}

/// The membership as of the conf change (or snapshot) at `index`.
#[derive(Debug)]
pub struct ConfWrite {
    index: u64,
    members: ConfState,
}

/// The `raft_snapshot` row of a snapshot, and the first entry kept after it (the
/// ones before are deleted in the same transaction); `None`: a received snapshot,
/// which replaces the whole log.
#[derive(Debug)]
pub struct SnapshotWrite {
    index: u64,
    term: u64,
    members: ConfState,
    data: Bytes,
    compact_to: Option<u64>,
}

/// Opens a connection to `raft<N>.db`: WAL, `synchronous = FULL` (a commit is
/// durable when it returns), and a busy timeout (two connections write it).
pub fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Writes `jobs` in order in one transaction (one fsync): the writer thread's work.
pub fn write_jobs(conn: &mut Connection, jobs: &[WriteJob]) -> Result<(), StorageError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for job in jobs {
        if let Some(snap) = &job.snapshot {
            write_snapshot(&tx, snap.index, snap.term, &snap.members, &snap.data)?;
            match snap.compact_to {
                Some(to) => tx.execute("DELETE FROM raft_entries WHERE idx < ?1", [to])?,
                None => tx.execute("DELETE FROM raft_entries", [])?,
            };
        }
        write_entries(&tx, &job.entries)?;
    }
    if let Some(hs) = jobs.iter().rev().find_map(|j| j.hard_state.as_ref()) {
        write_hard_state(&tx, hs)?;
    }
    if let Some(conf) = jobs.iter().rev().find_map(|j| j.conf.as_ref()) {
        write_conf(&tx, conf)?;
    }
    tx.commit()?;
    Ok(())
}

/// Stores `entries` (contiguous), replacing the stored suffix from the first one's
/// index (a new leader's entries overwrite a conflicting tail).
fn write_entries(tx: &rusqlite::Transaction<'_>, entries: &[Entry]) -> Result<(), StorageError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    tx.execute("DELETE FROM raft_entries WHERE idx >= ?1", [first.index])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO raft_entries (idx, term, kind, data, context) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for e in entries {
        let kind = e.get_entry_type() as i64;
        insert.execute(params![e.index, e.term, kind, &e.data[..], &e.context[..]])?;
    }
    Ok(())
}

/// Stores Raft's hard state (term, vote, commit index).
fn write_hard_state(tx: &rusqlite::Transaction<'_>, hs: &HardState) -> Result<(), StorageError> {
    tx.execute(
        "UPDATE raft_state SET term = ?1, vote = ?2, commit_index = ?3 WHERE id = 1",
        params![hs.term, hs.vote, hs.commit],
    )?;
    Ok(())
}

/// Stores the membership and the conf change it is as of.
fn write_conf(tx: &rusqlite::Transaction<'_>, conf: &ConfWrite) -> Result<(), StorageError> {
    tx.execute(
        "UPDATE raft_state SET voters = ?1, conf_index = ?2 WHERE id = 1",
        params![membership_text(&conf.members), conf.index],
    )?;
    Ok(())
}

fn write_snapshot(
    tx: &rusqlite::Transaction<'_>,
    index: u64,
    term: u64,
    members: &ConfState,
    data: &[u8],
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT OR REPLACE INTO raft_snapshot (id, idx, term, voters, data) VALUES (1, ?1, ?2, ?3, ?4)",
        params![index, term, membership_text(members), data],
    )?;
    Ok(())
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let split = self.unsynced_from().clamp(low, high);
        let mut out = self.read_entries(low, split, max_size)?;
        if out.len() as u64 == split - low && split < high {
            let mut size: u64 = out
                .iter()
                .map(|e| u64::from(protobuf::Message::compute_size(e)))
                .sum();
            let skip = (split - self.unsynced_from()) as usize;
            for (_, e) in self
                .unsynced
                .iter()
                .skip(skip)
                .take((high - split) as usize)
            {
                size += u64::from(protobuf::Message::compute_size(e));
                if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.first_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let from = self.unsynced_from();
        if idx >= from {
            return Ok(self.unsynced[(idx - from) as usize].1.term);
        }
        let term = self
            .conn
            .prepare_cached("SELECT term FROM raft_entries WHERE idx = ?1")
            .and_then(|mut s| s.query_row([idx], |r| r.get(0)))
            .map_err(StorageError::from)?;
        Ok(term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// Served from memory, never read on the loop, with the current membership
    /// (see the module doc).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let now = Instant::now();
        let mut cache = self.cache.borrow_mut();
        cache.poll_read(now);
        if let Some(mut snap) = cache.serve(request_index, now) {
            snap.mut_metadata().set_conf_state(self.conf_state.clone());
            return Ok(snap);
        }
        if self.snapshot_index >= request_index && self.snapshot_index > 0 {
            cache.start_read(&self.path, self.snapshot_index);
        }
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e.context = b"ctx".to_vec().into();
        e
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    /// Asks for a snapshot until the read started off the loop is done (bounded).
    fn served(s: &RaftStorage, request_index: u64) -> Snapshot {
        for _ in 0..10_000 {
            match s.snapshot(request_index, 2) {
                Ok(snap) => return snap,
                Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the snapshot read never finished");
    }

    #[test]
    fn entries_hard_state_and_snapshot_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft1.db");
        {
            let mut s = RaftStorage::open(&path, &[3, 1, 2]).unwrap();
            let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &[i as u8])).collect();
            let mut hs = HardState::default();
            hs.term = 1;
            hs.vote = 2;
            hs.commit = 4;
            s.persist(None, &ents, Some(&hs)).unwrap();
            // A conflicting suffix from a newer leader replaces 8..=10.
            s.persist(None, &[entry(8, 2, b"x")], None).unwrap();
            s.set_commit(8);
            s.store_snapshot(6, b"state at 6".to_vec().into(), 2)
                .unwrap();
        }
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!(s.hard_state().vote, 2);
        assert_eq!(
            s.hard_state().commit,
            4,
            "set_commit alone is not persisted"
        );
        assert_eq!(s.first_index().unwrap(), 5, "kept 2 entries before index 7");
        assert_eq!(s.last_index().unwrap(), 8);
        assert_eq!(s.term(8).unwrap(), 2);
        assert_eq!(s.term(6).unwrap(), 1);
        assert!(s.term(3).is_err());
        let got = s.entries(5, 9, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [5, 6, 7, 8]
        );
        assert_eq!(&got[3].data[..], b"x");
        assert_eq!(&got[0].context[..], b"ctx");
        let snap = served(&s, 0);
        assert_eq!(
            (snap.get_metadata().index, &snap.data[..]),
            (6, &b"state at 6"[..])
        );
        assert_eq!(snap.get_metadata().get_conf_state().voters, [1, 2, 3]);
        assert!(
            s.snapshot(7, 2).is_err(),
            "a newer snapshot than stored is not faked"
        );
        assert!(s.entries(4, 6, None, ctx()).is_err(), "compacted");
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft2.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        s.persist(None, &[entry(1, 1, b"a"), entry(2, 1, b"b")], None)
            .unwrap();
        let mut snap = Snapshot::default();
        snap.data = b"remote".to_vec().into();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.persist(Some(&snap), &[], None).unwrap();
        drop(s);
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (51, 50)
        );
        assert_eq!(s.term(50).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 50);
        assert_eq!(s.hard_state().term, 3);
        assert_eq!(&s.load_snapshot().unwrap().unwrap().data[..], b"remote");
    }

    #[test]
    fn a_staged_snapshot_is_served_from_memory_until_idle_then_read_off_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut s = RaftStorage::open(&path, &[1, 2]).unwrap();
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"a")).collect();
        s.persist(None, &ents, None).unwrap();
        let job = s
            .stage_snapshot(1, 4, Bytes::from_static(b"state at 4"), 1)
            .unwrap()
            .expect("newer than none");
        // Not written yet, and served at the first ask all the same.
        let snap = s.snapshot(4, 2).unwrap();
        assert_eq!(&snap.data[..], b"state at 4");
        assert!(s.snapshot(5, 2).is_err(), "a newer one is not faked");
        write_jobs(&mut open_connection(&path).unwrap(), &[job]).unwrap();
        let later = Instant::now() + SNAPSHOT_IDLE;
        s.drop_idle_snapshot(later, SNAPSHOT_IDLE);
        assert!(!s.holds_snapshot());
        // The next ask starts a read and is told to ask again; then it is served.
        assert!(matches!(
            s.snapshot(4, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert_eq!(&served(&s, 4).data[..], b"state at 4");
        assert!(s.holds_snapshot());
    }

    #[test]
    fn a_received_snapshot_staged_for_the_writer_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        let ents: Vec<Entry> = (1..=9).map(|i| entry(i, 1, b"a")).collect();
        s.persist(None, &ents, None).unwrap();
        let mut snap = Snapshot::default();
        snap.data = Bytes::from_static(b"remote");
        snap.mut_metadata().index = 6;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let job = s.stage(1, Some(&snap), &[entry(7, 2, b"b")], None).unwrap();
        // In memory at once: raft-rs reads the new log before it is written.
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 7));
        assert_eq!(s.term(6).unwrap(), 2);
        assert_eq!(&s.snapshot(6, 1).unwrap().data[..], b"remote");
        assert_eq!(s.hard_state().commit, 6);
        write_jobs(&mut open_connection(&path).unwrap(), &[job]).unwrap();
        drop(s);
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 7));
        assert_eq!(s.entries(7, 8, None, ctx()).unwrap()[0].term, 2);
        assert_eq!(&s.load_snapshot().unwrap().unwrap().data[..], b"remote");
    }

    #[test]
    fn max_size_limits_but_returns_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(&dir.path().join("r.db"), &[1]).unwrap();
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &[0; 100])).collect();
        s.persist(None, &ents, None).unwrap();
        assert_eq!(s.entries(1, 6, Some(0), ctx()).unwrap().len(), 1);
        assert_eq!(s.entries(1, 6, Some(250), ctx()).unwrap().len(), 2);
        assert_eq!(s.entries(1, 6, None, ctx()).unwrap().len(), 5);
    }

    #[test]
    fn another_tracker_list_keeps_the_committed_membership_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(RaftStorage::open(&path, &[3, 1, 2]).unwrap());
        let s = RaftStorage::open(&path, &[1, 2, 3, 4]).unwrap();
        assert_eq!(s.conf_state().voters, [1, 2, 3], "bootstrap only when new");
        drop(s);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        let err = RaftStorage::open(&path, &[1, 2, 3]).err().unwrap();
        assert!(err.to_string().contains("version 7"), "{err}");
    }

    #[test]
    fn an_applied_conf_change_is_durable_by_persist_and_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let four = |s: &RaftStorage| (s.conf_state().voters.clone(), s.conf_index());
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3, 4];
        // Synchronously: with the next persist, even one with nothing else to write.
        let path = dir.path().join("sync.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        s.persist(None, &[entry(1, 1, b"a")], None).unwrap();
        s.set_conf_state(1, cs.clone());
        s.persist(None, &[], None).unwrap();
        drop(s);
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!(four(&s), (vec![1, 2, 3, 4], 1));
        // Written behind: staged with the next `Ready`, durable once written.
        let path = dir.path().join("behind.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        s.set_conf_state(7, cs);
        let job = s
            .stage(1, None, &[], None)
            .expect("the membership to write");
        assert_eq!(four(&RaftStorage::open(&path, &[1]).unwrap()).0, [1, 2, 3]);
        write_jobs(&mut open_connection(&path).unwrap(), &[job]).unwrap();
        assert_eq!(
            four(&RaftStorage::open(&path, &[1]).unwrap()),
            (vec![1, 2, 3, 4], 7)
        );
    }

    #[test]
    fn learners_are_stored_after_the_voters_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        let mut cs = ConfState::default();
        (cs.voters, cs.learners) = (vec![3, 1, 2], vec![5, 4]);
        s.set_conf_state(2, cs);
        s.persist(None, &[entry(1, 1, b"a"), entry(2, 1, b"b")], None)
            .unwrap();
        s.store_snapshot(2, Bytes::from_static(b"state"), 1)
            .unwrap();
        drop(s);
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        let members = s.conf_state();
        assert_eq!(
            (&members.voters[..], &members.learners[..]),
            (&[1, 2, 3][..], &[4, 5][..])
        );
        let snap = s.load_snapshot().unwrap().expect("stored");
        assert_eq!(snap.get_metadata().get_conf_state().learners, [4, 5]);
        assert_eq!(membership_text(members), "1,2,3;4,5");
        assert!(parse_membership("1,x").is_err());
    }

    #[test]
    fn a_received_snapshot_brings_its_membership_and_is_served_with_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut s = RaftStorage::open(&path, &[1, 2, 3, 4]).unwrap();
        let mut snap = Snapshot::default();
        snap.data = Bytes::from_static(b"remote");
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 4];
        s.persist(Some(&snap), &[], None).unwrap();
        drop(s);
        let mut s = RaftStorage::open(&path, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            (s.conf_state().voters.clone(), s.conf_index()),
            (vec![1, 2, 4], 9)
        );
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 4, 5];
        s.set_conf_state(10, cs);
        assert_eq!(
            served(&s, 9).get_metadata().get_conf_state().voters,
            [1, 2, 4, 5]
        );
    }

    #[test]
    fn a_version_1_file_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let v1 = SCHEMA.replace(", conf_index INTEGER NOT NULL DEFAULT 0", "");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&v1).unwrap();
        conn.execute(
            "INSERT INTO raft_state (id, term, vote, commit_index, voters) VALUES (1, 3, 2, 0, '1,2,3')",
            [],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let s = RaftStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!((s.hard_state().term, s.hard_state().vote), (3, 2));
        assert_eq!(
            (s.conf_state().voters.clone(), s.conf_index()),
            (vec![1, 2, 3], 0)
        );
        drop(s);
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, FORMAT_VERSION);
    }

    #[test]
    fn staged_entries_are_read_back_before_they_are_written_and_only_written_ones_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut s = RaftStorage::open(&path, &[1]).unwrap();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.vote = 1;
        let first: Vec<Entry> = (1..=4).map(|i| entry(i, 1, b"a")).collect();
        let job1 = s
            .stage(1, None, &first, Some(&hs))
            .expect("entries to write");
        // A new leader's entries replace the staged suffix from index 3 on.
        hs.term = 2;
        let second: Vec<Entry> = (3..=5).map(|i| entry(i, 2, b"b")).collect();
        let job2 = s
            .stage(2, None, &second, Some(&hs))
            .expect("entries to write");
        assert!(
            s.stage(3, None, &[], Some(&hs)).is_none(),
            "nothing new to write"
        );
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.term(2).unwrap(), 1);
        assert_eq!(s.term(4).unwrap(), 2);
        let read = s.entries(1, 6, None, ctx()).unwrap();
        let terms: Vec<u64> = read.iter().map(|e| e.term).collect();
        assert_eq!(terms, [1, 1, 2, 2, 2]);
        // Nothing is on disk yet: a crash now keeps none of it.
        let other = RaftStorage::open(&path, &[1]).unwrap();
        assert_eq!(other.last_index().unwrap(), 0);
        // The writer commits the first job: entries 1-2 leave memory, 3-5 stay.
        let mut conn = open_connection(&path).unwrap();
        write_jobs(&mut conn, &[job1]).unwrap();
        s.written(1);
        assert!(s.has_unsynced());
        assert_eq!(s.entries(1, 6, None, ctx()).unwrap(), read);
        write_jobs(&mut conn, &[job2]).unwrap();
        s.written(2);
        assert!(!s.has_unsynced());
        assert_eq!(s.entries(1, 6, None, ctx()).unwrap(), read);
        let reopened = RaftStorage::open(&path, &[1]).unwrap();
        assert_eq!(reopened.entries(1, 6, None, ctx()).unwrap(), read);
        assert_eq!(reopened.hard_state().term, 2);
    }
}
