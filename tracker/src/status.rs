//! The operator's view of one tracker: what `/status`, `/status.json` and the
//! state gauges of `/metrics` show, gathered read-only by the HTTP thread.
//!
//! Sources, none of them shared with the event loop: this tracker's cache
//! `tracker<N>.db` through its own read-only SQLite connection; the length and
//! the tail of `sync_log.txt` (read without a lock: a line being written is
//! simply not shown yet); and, for every other tracker of `tracker_info.txt`, a
//! TCP connect to its address (reachable or not) and its cache `tracker<M>.db`
//! in the same data dir, opened read-only, for the log offset it has applied
//! (shared-log mode: all trackers share the data dir and so the log).
//!
//! No secrets: no token or password hash is ever selected, and seeders' IP
//! addresses are shown only when the operator asked for them.
//!
//! A tracker's progress is a [`Progress`] in the terms of its replication mode:
//! the shared log (applied offset, bytes behind, read from each tracker's cache
//! in the shared data dir) or Raft (role, term, commit and applied index, and
//! each tracker's match index, which only the leader knows: a follower shows the
//! others as "unknown" except the leader it follows).

use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use wire::tracker_info::TrackerAddr;

use crate::metrics::StateGauges;
use crate::replication::node::RaftProgress;
use crate::sync_log::{LogEntry, Op, FIRST_ENTRY, LOG_FILE};

/// Groups listed on the page (the biggest first).
pub const MAX_GROUPS: usize = 50;
/// Swarms listed as the busiest.
pub const MAX_SWARMS: usize = 10;
/// Recent changes listed.
pub const MAX_CHANGES: usize = 25;
/// Bytes of the log's tail read for the recent changes.
const TAIL_BYTES: u64 = 512 * 1024;
/// How long a connect to another tracker may take before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Everything the status page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The tracker serving this page (1-based, as in `tracker_info.txt`).
    pub tracker: u32,
    /// `shared-log` (Raft adds `raft`).
    pub replication: &'static str,
    pub generated_unix_ms: u64,
    /// Length of `sync_log.txt` in bytes.
    pub log_bytes: u64,
    pub trackers: Vec<TrackerView>,
    pub totals: Totals,
    /// The groups with the most members, at most [`MAX_GROUPS`].
    pub groups: Vec<GroupView>,
    /// Swarms with the most seeders online, at most [`MAX_SWARMS`].
    pub busiest_swarms: Vec<SwarmView>,
    /// The latest changes, newest first, heartbeats left out.
    pub recent_changes: Vec<ChangeView>,
    /// Whether seeders' addresses are shown (the operator's `--http-show-peer-addrs`).
    pub peer_addrs_shown: bool,
}

/// One tracker of `tracker_info.txt` as this tracker sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackerView {
    pub no: u32,
    pub addr: String,
    /// The tracker serving this page.
    pub this: bool,
    /// A TCP connect to its address succeeded (always true for this tracker).
    pub reachable: bool,
    pub progress: Progress,
}

/// How far a tracker has come, in the terms of the replication mode.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Progress {
    /// All trackers share one `sync_log.txt`; each applies it to its own cache.
    SharedLog {
        /// Log offset its cache has applied; `None` if its cache cannot be read.
        applied_offset: Option<u64>,
        /// Log bytes it has not applied yet.
        behind_bytes: Option<u64>,
        /// Why the applied offset is unknown.
        unknown_because: Option<String>,
    },
    /// Raft: this tracker's own replica, or another as this tracker sees it.
    Raft {
        /// `leader`, `follower`, `candidate`, `pre-candidate`, or `unknown`
        /// (another tracker, seen from a tracker that is not the leader).
        role: String,
        /// This tracker's term (for another tracker: the term it is seen in).
        term: u64,
        /// The highest index this tracker knows committed (cluster-wide).
        commit_index: u64,
        /// The tracker's applied index (this tracker) or match index (another
        /// tracker, known on the leader only).
        index: Option<u64>,
        /// Committed entries the tracker does not have yet (known on the leader,
        /// and for this tracker itself).
        behind_entries: Option<u64>,
    },
}

impl Progress {
    /// Whether the tracker is known to be behind.
    pub fn is_behind(&self) -> bool {
        match self {
            Progress::SharedLog { behind_bytes, .. } => behind_bytes.is_some_and(|b| b > 0),
            Progress::Raft { behind_entries, .. } => behind_entries.is_some_and(|b| b > 0),
        }
    }
}

/// Each tracker's [`Progress::Raft`] as the replica `me` (whose progress is `r`) sees it.
pub fn raft_progress(r: &RaftProgress, me: u32, others: u32) -> Vec<Progress> {
    (1..=others)
        .map(|no| {
            let id = u64::from(no);
            let matched = r.matched.iter().find(|(p, _)| *p == id).map(|(_, m)| *m);
            let learner = r.learners.contains(&id);
            let member = r.voters.is_empty() || r.voters.contains(&id) || learner;
            let (role, index) = if !member {
                // (Removed, or not added yet: see `RaftNode::reconcile_membership`.)
                ("not a member".to_string(), None)
            } else if learner {
                // (Catching up before it votes.)
                let index = if no == me {
                    Some(r.applied_index)
                } else {
                    matched
                };
                ("learner".to_string(), index)
            } else if no == me {
                (r.role.to_string(), Some(r.applied_index))
            } else if id == r.leader {
                ("leader".to_string(), matched)
            } else if r.role == "leader" {
                ("follower".to_string(), matched)
            } else {
                ("unknown".to_string(), None)
            };
            Progress::Raft {
                role,
                term: r.term,
                commit_index: r.commit_index,
                index,
                behind_entries: index.map(|i| r.commit_index.saturating_sub(i)),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub users: u64,
    pub groups: u64,
    pub group_members: u64,
    pub pending_join_requests: u64,
    pub files: u64,
    pub seeders_online: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub owner: String,
    pub members: u64,
    pub files: u64,
    pub pending_join_requests: u64,
}

/// One file's swarm: complete seeders and partial seeders (downloads that
/// serve the pieces they have) online, counted apart as `list_files` does.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmView {
    pub group: String,
    pub file: String,
    pub size_bytes: u64,
    pub seeders_online: u64,
    pub partial_seeders_online: u64,
    /// Present only with `--http-show-peer-addrs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeder_addrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub unix_ms: u64,
    /// The tracker that appended it.
    pub tracker: u32,
    /// In plain words, e.g. `alice created group "g"`.
    pub text: String,
}

/// A status that could not be gathered at all.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read this tracker's cache {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Settings of the view.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub tracker_no: u32,
    pub trackers: Vec<TrackerAddr>,
    pub data_dir: PathBuf,
    pub seeder_timeout_ms: u64,
    pub show_peer_addrs: bool,
    /// `shared-log` or `raft` (`--replication`).
    pub replication: &'static str,
    /// Raft mode: tracker_info.txt, read again for each view (a raft tracker takes
    /// a changed list while it runs); `trackers` when it cannot be used.
    pub listed_from: Option<PathBuf>,
}

/// Path of tracker `no`'s cache in `dir`.
pub fn db_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("tracker{no}.db"))
}

/// Opens a cache read-only (it never writes, checkpoints or creates tables).
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let db = Connection::open_with_flags(path, flags)?;
    db.busy_timeout(Duration::from_millis(500))?;
    Ok(db)
}

/// The HTTP thread's read-only view of the tracker.
pub struct StatusSource {
    cfg: StatusConfig,
    db: Option<Connection>,
}

impl StatusSource {
    pub fn new(cfg: StatusConfig) -> StatusSource {
        StatusSource { cfg, db: None }
    }

    fn db(&mut self) -> Result<&Connection, StatusError> {
        let path = db_path(&self.cfg.data_dir, self.cfg.tracker_no);
        if self.db.is_none() {
            let db = open_read_only(&path).map_err(|source| StatusError::Db {
                path: path.display().to_string(),
                source,
            })?;
            self.db = Some(db);
        }
        self.db.as_ref().ok_or_else(|| unreachable_db(&path))
    }

    /// Runs `f` in one read transaction, so all its numbers agree.
    fn read<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StatusError> {
        let path = db_path(&self.cfg.data_dir, self.cfg.tracker_no);
        let db = self.db()?;
        let result = db
            .execute_batch("BEGIN")
            .and_then(|()| f(db))
            .and_then(|v| db.execute_batch("COMMIT").map(|()| v));
        if result.is_err() {
            let _ = db.execute_batch("ROLLBACK");
            self.db = None; // reopened next time
        }
        result.map_err(|source| StatusError::Db {
            path: path.display().to_string(),
            source,
        })
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(self.cfg.data_dir.join(LOG_FILE)).map_or(0, |m| m.len())
    }

    /// The gauges `/metrics` adds to the event loop's counters.
    pub fn gauges(&mut self, now_ms: u64) -> Result<StateGauges, StatusError> {
        let since = now_ms.saturating_sub(self.cfg.seeder_timeout_ms);
        let (applied, totals) = self.read(|db| Ok((applied(db)?, totals(db, since)?)))?;
        Ok(StateGauges {
            tracker_no: self.cfg.tracker_no,
            replication: self.cfg.replication,
            log_bytes: self.log_bytes(),
            log_end_offset: crate::sync_log::end_offset(&self.cfg.data_dir.join(LOG_FILE)),
            applied_offset: applied.0,
            applied_lines: applied.1,
            users: totals.users,
            groups: totals.groups,
            group_members: totals.group_members,
            files: totals.files,
            seeders_online: totals.seeders_online,
        })
    }

    /// Everything `/status` shows.
    /// `raft`: this tracker's replica in raft mode (`None` in shared-log mode).
    pub fn gather(
        &mut self,
        now_ms: u64,
        raft: Option<&RaftProgress>,
    ) -> Result<Status, StatusError> {
        let since = now_ms.saturating_sub(self.cfg.seeder_timeout_ms);
        let show = self.cfg.show_peer_addrs;
        let (own_applied, totals, groups, swarms) = self.read(|db| {
            Ok((
                applied(db)?.0,
                totals(db, since)?,
                groups(db)?,
                swarms(db, since, show)?,
            ))
        })?;
        let log_bytes = self.log_bytes();
        let log_end = crate::sync_log::end_offset(&self.cfg.data_dir.join(LOG_FILE));
        let trackers = self.trackers(own_applied, log_end, raft);
        Ok(Status {
            tracker: self.cfg.tracker_no,
            replication: self.cfg.replication,
            generated_unix_ms: now_ms,
            log_bytes,
            trackers,
            totals,
            groups,
            busiest_swarms: swarms,
            recent_changes: recent_changes(&self.cfg.data_dir.join(LOG_FILE), show),
            peer_addrs_shown: show,
        })
    }

    fn trackers(
        &self,
        own_applied: u64,
        log_end: u64,
        raft: Option<&RaftProgress>,
    ) -> Vec<TrackerView> {
        let listed = self.listed();
        let count = listed.len() as u32;
        let mut raft_views = raft.map(|r| raft_progress(r, self.cfg.tracker_no, count).into_iter());
        let progress = |applied: Result<u64, String>| match applied {
            Ok(a) => Progress::SharedLog {
                applied_offset: Some(a),
                behind_bytes: Some(log_end.saturating_sub(a.max(FIRST_ENTRY))),
                unknown_because: None,
            },
            Err(why) => Progress::SharedLog {
                applied_offset: None,
                behind_bytes: None,
                unknown_because: Some(why),
            },
        };
        let mut views = Vec::with_capacity(listed.len());
        for (i, addr) in listed.iter().enumerate() {
            let no = i as u32 + 1;
            let this = no == self.cfg.tracker_no;
            let progress = match raft_views.as_mut().and_then(|v| v.next()) {
                Some(raft) => raft,
                None if this => progress(Ok(own_applied)),
                None => progress(other_applied(&db_path(&self.cfg.data_dir, no))),
            };
            views.push(TrackerView {
                no,
                addr: addr.to_string(),
                this,
                reachable: this || probe(addr),
                progress,
            });
        }
        views
    }

    /// The trackers listed now (see [`StatusConfig::listed_from`]).
    fn listed(&self) -> Vec<TrackerAddr> {
        self.cfg
            .listed_from
            .as_deref()
            .and_then(|path| wire::tracker_info::load(path).ok())
            .unwrap_or_else(|| self.cfg.trackers.clone())
    }
}

fn unreachable_db(path: &Path) -> StatusError {
    StatusError::Db {
        path: path.display().to_string(),
        source: rusqlite::Error::InvalidQuery,
    }
}

/// Whether a TCP connection to the tracker can be opened within [`PROBE_TIMEOUT`].
fn probe(addr: &TrackerAddr) -> bool {
    addr.resolve()
        .and_then(|a| TcpStream::connect_timeout(&a, PROBE_TIMEOUT))
        .is_ok()
}

/// The applied offset recorded in another tracker's cache.
fn other_applied(path: &Path) -> Result<u64, String> {
    if !path.exists() {
        return Err(format!("no cache at {}", path.display()));
    }
    open_read_only(path)
        .and_then(|db| applied(&db))
        .map(|a| a.0)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn count(db: &Connection, sql: &str, since: Option<u64>) -> rusqlite::Result<u64> {
    let mut stmt = db.prepare_cached(sql)?;
    let n: i64 = match since {
        Some(s) => stmt.query_row(params![s as i64], |r| r.get(0))?,
        None => stmt.query_row([], |r| r.get(0))?,
    };
    Ok(n.max(0) as u64)
}

/// (offset, lines) applied.
fn applied(db: &Connection) -> rusqlite::Result<(u64, u64)> {
    db.prepare_cached("SELECT offset, lines FROM applied_log WHERE id = 1")?
        .query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })
}

fn totals(db: &Connection, since: u64) -> rusqlite::Result<Totals> {
    Ok(Totals {
        users: count(db, "SELECT count(*) FROM users", None)?,
        groups: count(db, "SELECT count(*) FROM groups", None)?,
        group_members: count(db, "SELECT count(*) FROM group_members", None)?,
        pending_join_requests: count(db, "SELECT count(*) FROM join_requests", None)?,
        files: count(db, "SELECT count(*) FROM files", None)?,
        seeders_online: count(
            db,
            "SELECT count(DISTINCT token_hash) FROM file_seeders WHERE last_seen_ms >= ?1",
            Some(since),
        )?,
    })
}

fn groups(db: &Connection) -> rusqlite::Result<Vec<GroupView>> {
    let mut stmt = db.prepare_cached(
        "SELECT g.group_id, g.owner,
                (SELECT count(*) FROM group_members m WHERE m.group_id = g.group_id) AS members,
                (SELECT count(*) FROM files f WHERE f.group_id = g.group_id),
                (SELECT count(*) FROM join_requests j WHERE j.group_id = g.group_id)
         FROM groups g ORDER BY members DESC, g.group_id LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![MAX_GROUPS as i64], |r| {
        Ok(GroupView {
            name: r.get(0)?,
            owner: r.get(1)?,
            members: r.get::<_, i64>(2)?.max(0) as u64,
            files: r.get::<_, i64>(3)?.max(0) as u64,
            pending_join_requests: r.get::<_, i64>(4)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

fn swarms(db: &Connection, since: u64, show_addrs: bool) -> rusqlite::Result<Vec<SwarmView>> {
    let mut stmt = db.prepare_cached(
        "SELECT s.group_id, s.name, f.size,
                count(DISTINCT CASE WHEN s.partial = 0 THEN s.token_hash END) AS n,
                group_concat(DISTINCT s.peer_addr),
                count(DISTINCT CASE WHEN s.partial != 0 THEN s.token_hash END) AS p
         FROM file_seeders s JOIN files f ON f.group_id = s.group_id AND f.name = s.name
         WHERE s.last_seen_ms >= ?1
         GROUP BY s.group_id, s.name ORDER BY n + p DESC, n DESC, s.group_id, s.name LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since as i64, MAX_SWARMS as i64], |r| {
        let addrs: Option<String> = r.get(4)?;
        Ok(SwarmView {
            group: r.get(0)?,
            file: r.get(1)?,
            size_bytes: r.get::<_, i64>(2)?.max(0) as u64,
            seeders_online: r.get::<_, i64>(3)?.max(0) as u64,
            partial_seeders_online: r.get::<_, i64>(5)?.max(0) as u64,
            seeder_addrs: show_addrs.then(|| {
                let mut v: Vec<String> = addrs
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect();
                v.sort();
                v
            }),
        })
    })?;
    rows.collect()
}

/// The latest changes in the last [`TAIL_BYTES`] of the log, newest first.
/// Lines that do not decode (the version line, a line being written) are skipped.
pub fn recent_changes(log: &Path, show_addrs: bool) -> Vec<ChangeView> {
    let Ok(file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL_BYTES);
    let mut buf = vec![0u8; (len - start) as usize];
    if file.read_exact_at(&mut buf, start).is_err() {
        return Vec::new();
    }
    // Unless the tail is the whole file, its first line is probably cut.
    let skip_first = start > 0;
    buf.split(|&b| b == b'\n')
        .skip(usize::from(skip_first))
        .filter_map(|line| LogEntry::decode(line).ok())
        .filter_map(|(_seq, e)| {
            describe(&e.op, show_addrs).map(|text| ChangeView {
                unix_ms: e.ms,
                tracker: e.tracker,
                text,
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(MAX_CHANGES)
        .collect()
}

/// A change in plain words; `None` for heartbeats (too many to be news).
/// Names are quoted with Rust's string escapes, so none can fake another line.
pub fn describe(op: &Op, show_addrs: bool) -> Option<String> {
    let from = |addr: &str| {
        if show_addrs {
            format!(" from {addr}")
        } else {
            String::new()
        }
    };
    Some(match op {
        Op::CreateUser { user, .. } => format!("new user {user:?}"),
        Op::Login { user, .. } => format!("{user:?} logged in"),
        Op::Logout { .. } => "a session logged out".to_string(),
        Op::CreateGroup { group, owner } => format!("{owner:?} created group {group:?}"),
        Op::RequestJoin { group, user } => format!("{user:?} asked to join {group:?}"),
        Op::AcceptRequest { group, user } => format!("{user:?} was accepted into {group:?}"),
        Op::RejectRequest { group, user } => {
            format!("{user:?} was refused membership of {group:?}")
        }
        Op::LeaveGroup { group, user } => format!("{user:?} left {group:?}"),
        Op::UploadFile {
            group,
            name,
            size,
            user,
            peer_addr,
            ..
        } => format!(
            "{user:?} shared {name:?} ({}) in {group:?}{}",
            human_bytes(*size),
            from(peer_addr)
        ),
        Op::AddSeeder {
            group,
            name,
            user,
            peer_addr,
            ..
        } => format!(
            "{user:?} now seeds {name:?} in {group:?}{}",
            from(peer_addr)
        ),
        Op::StopShare { group, name, .. } => {
            format!("a seeder stopped sharing {name:?} in {group:?}")
        }
        Op::Heartbeat { .. } => return None,
    })
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn entry(op: Op) -> LogEntry {
        LogEntry {
            ms: 1_700_000_000_000,
            tracker: 1,
            request_id: None,
            op,
        }
    }

    #[test]
    fn plain_words_hide_hashes_and_addresses_unless_asked() {
        let up = Op::UploadFile {
            group: "g".into(),
            name: "a \"b\"\nc.txt".into(),
            size: 3 * 1024 * 1024,
            piece_size: 512 * 1024,
            file_sha1: "f".repeat(40),
            piece_hashes: "e".repeat(240),
            token_hash: "d".repeat(64),
            user: "alice".into(),
            peer_addr: "10.1.2.3:4000".into(),
        };
        let text = describe(&up, false).unwrap();
        assert_eq!(text, r#""alice" shared "a \"b\"\nc.txt" (3.0 MiB) in "g""#);
        assert!(!text.contains("ddd") && !text.contains("10.1.2.3"));
        assert!(describe(&up, true)
            .unwrap()
            .ends_with(" from 10.1.2.3:4000"));
        let user = Op::CreateUser {
            user: "bob".into(),
            password_hash: "$argon2id$secret".into(),
        };
        assert_eq!(describe(&user, true).unwrap(), r#"new user "bob""#);
        let beat = Op::Heartbeat {
            token_hash: "x".into(),
            peer_addr: "y".into(),
        };
        assert_eq!(describe(&beat, false), None);
    }

    #[test]
    fn recent_changes_are_newest_first_and_skip_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let mut text = crate::sync_log::Generation::new().header_line();
        for (seq, g) in (1..).zip(["g1", "g2", "g3"]) {
            text += &entry(Op::CreateGroup {
                group: g.into(),
                owner: "o".into(),
            })
            .encode(seq);
        }
        text += "0badc0de 1 1 create_gro"; // being written
        std::fs::write(&log, text).unwrap();
        let changes = recent_changes(&log, false);
        let texts: Vec<_> = changes.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                r#""o" created group "g3""#,
                r#""o" created group "g2""#,
                r#""o" created group "g1""#
            ]
        );
        assert!(recent_changes(&dir.path().join("missing"), false).is_empty());
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    /// A cache with one group, two members, a file seeded by two sessions (bob's
    /// is stale) and a pending request; the other tracker is down, its cache missing.
    #[test]
    fn gather_reads_counts_swarms_and_other_trackers() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(&db_path(dir.path(), 1)).unwrap();
        let now: u64 = 1_700_000_100_000;
        st.conn()
            .execute_batch(&format!(
                "INSERT INTO groups VALUES ('g', 'alice', 1);
                 INSERT INTO group_members VALUES ('g', 'alice', 1), ('g', 'bob', 2);
                 INSERT INTO join_requests VALUES ('g', 'carol', 3);
                 INSERT INTO files VALUES ('g', 'f.bin', 10, 524288, 'aa', 'aa', 'alice', 4);
                 INSERT INTO file_seeders VALUES
                   ('g', 'f.bin', 't1', 'alice', '10.0.0.1:1', {fresh}, 0),
                   ('g', 'f.bin', 't2', 'bob', '10.0.0.2:2', 0, 0);
                 UPDATE applied_log SET offset = 500, lines = 6;",
                fresh = now - 1000
            ))
            .unwrap();
        std::fs::write(dir.path().join(LOG_FILE), vec![b'x'; 800]).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let addr = |port| TrackerAddr {
            host: "127.0.0.1".into(),
            port,
        };
        let mut src = StatusSource::new(StatusConfig {
            tracker_no: 1,
            trackers: vec![addr(1), addr(closed_port)],
            data_dir: dir.path().to_path_buf(),
            seeder_timeout_ms: 45_000,
            replication: "shared-log",
            show_peer_addrs: false,
            listed_from: None,
        });
        let s = src.gather(now, None).unwrap();
        assert_eq!(s.totals.groups, 1);
        assert_eq!(s.totals.group_members, 2);
        assert_eq!(s.totals.pending_join_requests, 1);
        assert_eq!(s.totals.files, 1);
        assert_eq!(s.totals.seeders_online, 1);
        assert_eq!(s.groups[0].name, "g");
        assert_eq!(s.groups[0].members, 2);
        assert_eq!(s.busiest_swarms[0].file, "f.bin");
        assert_eq!(s.busiest_swarms[0].seeders_online, 1);
        assert!(s.busiest_swarms[0].seeder_addrs.is_none());
        assert!(s.trackers[0].this && s.trackers[0].reachable);
        let Progress::SharedLog {
            applied_offset,
            behind_bytes,
            ..
        } = &s.trackers[0].progress
        else {
            panic!("shared-log progress expected");
        };
        assert_eq!((*applied_offset, *behind_bytes), (Some(500), Some(300)));
        assert!(!s.trackers[1].reachable);
        let Progress::SharedLog {
            applied_offset,
            unknown_because,
            ..
        } = &s.trackers[1].progress
        else {
            panic!("shared-log progress expected");
        };
        assert_eq!(*applied_offset, None);
        assert!(unknown_because.as_deref().unwrap().contains("tracker2.db"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("t1") && !json.contains("10.0.0.1"), "{json}");
        let g = src.gauges(now).unwrap();
        assert_eq!(
            (
                g.applied_offset,
                g.log_bytes,
                g.log_end_offset,
                g.seeders_online
            ),
            (500, 800, 800, 1)
        );
    }

    /// In raft mode the view lists the trackers tracker_info.txt holds now (a
    /// raft tracker takes an edited list while it runs); the start's list when
    /// the file cannot be used.
    #[test]
    fn the_trackers_shown_are_the_ones_listed_now() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(&db_path(dir.path(), 1)).unwrap();
        let info = dir.path().join("tracker_info.txt");
        std::fs::write(&info, "127.0.0.1:1\n127.0.0.1:2\n127.0.0.1:3\n").unwrap();
        let mut src = StatusSource::new(StatusConfig {
            tracker_no: 1,
            trackers: vec![TrackerAddr {
                host: "127.0.0.1".into(),
                port: 1,
            }],
            data_dir: dir.path().to_path_buf(),
            seeder_timeout_ms: 45_000,
            replication: "raft",
            show_peer_addrs: false,
            listed_from: Some(info.clone()),
        });
        let now = 1_700_000_000_000;
        let shown = |src: &mut StatusSource| -> Vec<String> {
            let s = src.gather(now, None).unwrap();
            s.trackers.iter().map(|t| t.addr.clone()).collect()
        };
        assert_eq!(
            shown(&mut src),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );
        std::fs::write(&info, "not an address\n").unwrap();
        assert_eq!(shown(&mut src), ["127.0.0.1:1"], "the start's list");
    }

    /// After a compaction the file holds only the tail: its length is below the
    /// cache's (logical) applied offset, and the logical end is on the same scale.
    #[test]
    fn gauges_put_the_log_end_on_the_applied_scale_after_a_compaction() {
        use crate::sync_log::{Base, Generation, Header};
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(&db_path(dir.path(), 1)).unwrap();
        st.conn()
            .execute_batch("UPDATE applied_log SET offset = 90150, lines = 1001;")
            .unwrap();
        let base = Base {
            lines: 1000,
            offset: 90_000,
        };
        let mut text = Header::v2_line(Generation::new(), base).into_bytes();
        text.extend_from_slice(&[b'x'; 200]);
        std::fs::write(dir.path().join(LOG_FILE), &text).unwrap();
        let mut src = StatusSource::new(StatusConfig {
            tracker_no: 1,
            trackers: Vec::new(),
            data_dir: dir.path().to_path_buf(),
            seeder_timeout_ms: 45_000,
            replication: "shared-log",
            show_peer_addrs: false,
            listed_from: None,
        });
        let g = src.gauges(1_700_000_000_000).unwrap();
        assert_eq!(g.log_bytes, text.len() as u64);
        assert!(g.log_bytes < g.applied_offset);
        assert_eq!(g.log_end_offset, 90_200);
        assert_eq!(
            g.log_end_offset - g.applied_offset,
            50,
            "50 bytes not applied yet"
        );
    }

    #[test]
    fn raft_progress_as_the_leader_and_as_a_follower_sees_it() {
        let leader_view = RaftProgress {
            role: "leader",
            term: 4,
            leader: 2,
            commit_index: 10,
            applied_index: 10,
            last_index: 10,
            matched: vec![(1, 7), (2, 10), (3, 10)],
            ..RaftProgress::default()
        };
        let p = raft_progress(&leader_view, 2, 3);
        let behind: Vec<Option<u64>> = p
            .iter()
            .map(|p| match p {
                Progress::Raft { behind_entries, .. } => *behind_entries,
                _ => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(behind, [Some(3), Some(0), Some(0)]);
        assert!(p[0].is_behind() && !p[1].is_behind());
        let follower_view = RaftProgress {
            role: "follower",
            term: 4,
            leader: 2,
            commit_index: 10,
            applied_index: 9,
            ..RaftProgress::default()
        };
        let roles: Vec<(String, Option<u64>)> = raft_progress(&follower_view, 3, 3)
            .into_iter()
            .map(|p| match p {
                Progress::Raft { role, index, .. } => (role, index),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            roles,
            [
                ("unknown".to_string(), None),
                ("leader".to_string(), None),
                ("follower".to_string(), Some(9)),
            ]
        );
        // Tracker 3 of tracker_info.txt is not (or no longer) in the membership.
        let roles = |view: &RaftProgress| -> Vec<String> {
            raft_progress(view, 2, 3)
                .into_iter()
                .map(|p| match p {
                    Progress::Raft { role, .. } => role,
                    _ => panic!(),
                })
                .collect()
        };
        let grown = RaftProgress {
            voters: vec![1, 2],
            ..follower_view.clone()
        };
        assert_eq!(roles(&grown), ["unknown", "follower", "not a member"]);
        // Tracker 3 is being added: a learner catching up.
        let growing = RaftProgress {
            voters: vec![1, 2],
            learners: vec![3],
            ..follower_view
        };
        assert_eq!(roles(&growing), ["unknown", "follower", "learner"]);
    }
}
