//! Exactly-once changes: the table of applied request ids (`applied_requests`).
//!
//! A client sends a request id `<client>:<seq>` with every change (see
//! [`wire::tracker_msg`]) and the same id when it resends the change to another
//! tracker after a failover. The log entry of the change carries the id, and
//! [`record`] (called by [`crate::store::apply`], so in the same transaction as
//! the change itself, on every tracker that applies the log, on replay after a
//! restart too) remembers it. Before a change is validated, [`replay`] looks its
//! id up: an id already applied gets the change's original outcome, and nothing
//! is appended again. A change refused with `ERR` appended nothing and recorded
//! nothing, so its retry is judged afresh; so is one whose entry changed nothing
//! when it was applied (it lost a race: another change made first took what it
//! wanted, and its proposer answered the error; see [`crate::store::apply`]).
//!
//! The original outcome of every applied change except `login` is a bare `OK`.
//! A login's reply holds a session token, which the tracker never stores (only
//! its hash). A replayed login is therefore carried out again (the password is
//! checked again and a new session made), and applying it ends the session the
//! first attempt made, whose token never reached the client: the user is left
//! with exactly one session from one `login`, as if no tracker had failed.
//!
//! Bounds: for each client instance only its last [`KEEP_PER_CLIENT`] ids are
//! kept (a client has one request in flight at a time and resends only that
//! one), and no id is kept past [`KEEP_MS`] of log time after it was applied (a
//! client gives up on a request within a minute). Both are decided by the log
//! lines alone (their sequence numbers and times), so every tracker holds the same
//! table.

use rusqlite::{params, Connection, OptionalExtension};
use wire::command::{CommandKind, TrackerCommand};

use crate::sync_log::Op;

/// Ids kept per client instance.
pub const KEEP_PER_CLIENT: i64 = 16;
/// How long (log time) an applied id is remembered.
pub const KEEP_MS: i64 = 60 * 60 * 1000;

/// An applied id, as [`replay`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    command: String,
}

/// What to do with a change that carries `request_id`: `Ok(None)` to carry it out,
/// `Ok(Some(reply))` to answer with the original outcome of its first attempt,
/// `Err(reason)` when the id was used for another command.
pub fn replay(
    db: &Connection,
    request_id: &str,
    cmd: &TrackerCommand,
) -> rusqlite::Result<Result<Option<wire::tracker_msg::Reply>, String>> {
    let applied: Option<Applied> = db
        .prepare_cached("SELECT command FROM applied_requests WHERE request_id = ?1")?
        .query_row(params![request_id], |r| Ok(Applied { command: r.get(0)? }))
        .optional()?;
    let Some(applied) = applied else {
        return Ok(Ok(None));
    };
    let kind = cmd.kind();
    if applied.command != kind.name() {
        return Ok(Err(format!(
            "request id {request_id} was already used for {}",
            applied.command
        )));
    }
    log::info!("request {request_id}: {kind} was applied already; its outcome is sent again");
    if kind == CommandKind::Login {
        return Ok(Ok(None)); // a new session; applying it ends the first one
    }
    Ok(Ok(Some(wire::tracker_msg::Reply::ok())))
}

/// Records that the line at `offset` (log time `ms`) applied `op` for
/// `request_id`. Idempotent: applying the same line again changes nothing, and
/// an earlier line with the same id applied again (a replayed prefix) leaves the
/// later line's record in place.
pub fn record(
    db: &Connection,
    offset: u64,
    ms: u64,
    request_id: &str,
    op: &Op,
) -> rusqlite::Result<()> {
    let offset = offset as i64;
    let session = match op {
        Op::Login { token_hash, .. } => Some(token_hash.as_str()),
        _ => None,
    };
    let earlier: Option<(i64, Option<String>)> = db
        .prepare_cached("SELECT offset, session FROM applied_requests WHERE request_id = ?1")?
        .query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match earlier {
        Some((at, _)) if at == offset => return Ok(()),
        Some((at, _)) if at > offset => {
            // A later line replayed this request: the session made here is superseded.
            return match session {
                Some(superseded) => crate::store::end_session(db, superseded),
                None => Ok(()),
            };
        }
        Some((_, Some(first))) if session.is_some_and(|s| s != first) => {
            crate::store::end_session(db, &first)?;
        }
        _ => {}
    }
    let (client, seq) = split(request_id);
    let ms = ms.min(i64::MAX as u64) as i64;
    db.prepare_cached(
        "INSERT OR REPLACE INTO applied_requests
         (request_id, client, seq, command, session, offset, applied_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        request_id,
        client,
        seq,
        command_of(op).name(),
        session,
        offset,
        ms
    ])?;
    db.prepare_cached("DELETE FROM applied_requests WHERE client = ?1 AND seq <= ?2")?
        .execute(params![client, seq.saturating_sub(KEEP_PER_CLIENT)])?;
    db.prepare_cached("DELETE FROM applied_requests WHERE applied_ms < ?1")?
        .execute(params![ms.saturating_sub(KEEP_MS)])?;
    Ok(())
}

/// `<client>:<seq>` -> (client, seq); an id of another form is all client, seq 0.
fn split(request_id: &str) -> (&str, i64) {
    request_id
        .rsplit_once(':')
        .and_then(|(client, seq)| Some((client, seq.parse::<i64>().ok().filter(|n| *n >= 0)?)))
        .unwrap_or((request_id, 0))
}

/// The wire command whose change `op` is.
fn command_of(op: &Op) -> CommandKind {
    match op {
        Op::CreateUser { .. } => CommandKind::CreateUser,
        Op::Login { .. } => CommandKind::Login,
        Op::Logout { .. } => CommandKind::Logout,
        Op::CreateGroup { .. } => CommandKind::CreateGroup,
        Op::RequestJoin { .. } => CommandKind::JoinGroup,
        Op::AcceptRequest { .. } => CommandKind::AcceptRequest,
        Op::RejectRequest { .. } => CommandKind::RejectRequest,
        Op::LeaveGroup { .. } => CommandKind::LeaveGroup,
        Op::UploadFile { .. } => CommandKind::UploadFile,
        Op::AddSeeder { .. } => CommandKind::AddSeeder,
        Op::StopShare { .. } => CommandKind::StopShare,
        Op::Heartbeat { .. } => CommandKind::Heartbeat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{handle, Ctx, Outcome};
    use crate::store::{self, Store};
    use crate::sync_log::LogEntry;
    use wire::tracker_msg::{Reply, Request};

    /// Runs a request like the server does; returns the reply and whether a
    /// line was appended (applied).
    fn run(
        st: &mut Store,
        rid: &str,
        token: Option<&str>,
        cmd: &str,
        args: &[&str],
    ) -> (Reply, bool) {
        let (reply, line) = run_logged(st, rid, token, cmd, args);
        (reply, line.is_some())
    }

    /// [`run`], returning the applied log entry (with its offset) if any.
    fn run_logged(
        st: &mut Store,
        rid: &str,
        token: Option<&str>,
        cmd: &str,
        args: &[&str],
    ) -> (Reply, Option<(u64, LogEntry)>) {
        let (reply, entry) = validate(st, rid, token, cmd, args);
        let Some(entry) = entry else {
            return (reply, None);
        };
        let off = st.applied().unwrap().offset + 100;
        st.apply_entries(&[(off, entry.clone())], off).unwrap();
        (reply, Some((off, entry)))
    }

    /// Validates a request against the state like the server does: its reply,
    /// and the log entry to append if it is a change (nothing is applied).
    fn validate(
        st: &Store,
        rid: &str,
        token: Option<&str>,
        cmd: &str,
        args: &[&str],
    ) -> (Reply, Option<LogEntry>) {
        let ctx = Ctx {
            now_ms: 10_000,
            seeder_timeout_ms: 45_000,
            peer_ip: None,
            session_idle_ms: 30 * 86_400_000,
            tickets: None,
        };
        let mut req = Request::new(token, cmd, args);
        req.request_id = Some(rid.to_string());
        match handle(st.conn(), &req, &ctx) {
            Outcome::Reply(r) => (r, None),
            Outcome::Mutate { op, reply } => {
                let entry = LogEntry {
                    ms: ctx.now_ms,
                    tracker: 1,
                    request_id: req.request_id.clone(),
                    op,
                };
                (reply, Some(entry))
            }
        }
    }

    fn sessions(st: &Store) -> i64 {
        st.conn()
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_repeated_id_gets_the_original_outcome_and_changes_nothing() {
        let mut st = Store::open_in_memory().unwrap();
        assert_eq!(
            run(&mut st, "c:1", None, "create_user", &["a", "pw"]),
            (Reply::ok(), true)
        );
        assert_eq!(
            run(&mut st, "c:1", None, "create_user", &["a", "pw"]),
            (Reply::ok(), false)
        );
        // Without the id the same request is judged against the state.
        let (r, _) = run(&mut st, "c:2", None, "create_user", &["a", "pw"]);
        assert!(matches!(r, Reply::Err(e) if e.contains("already exists")));
        // A refused request recorded nothing: its retry is judged afresh.
        let (r, _) = run(&mut st, "c:2", None, "create_user", &["a", "pw"]);
        assert!(matches!(r, Reply::Err(_)));
        // The id of another command is refused, not mistaken for it.
        let (r, applied) = run(&mut st, "c:1", None, "login", &["a", "pw"]);
        assert!(matches!(r, Reply::Err(e) if e.contains("already used for create_user")));
        assert!(!applied);
    }

    #[test]
    fn a_replayed_login_leaves_one_valid_session() {
        let mut st = Store::open_in_memory().unwrap();
        run(&mut st, "c:1", None, "create_user", &["a", "pw"]);
        let (first, _) = run(&mut st, "c:2", None, "login", &["a", "pw"]);
        let (second, applied) = run(&mut st, "c:2", None, "login", &["a", "pw"]);
        assert!(applied);
        assert_eq!(sessions(&st), 1);
        let token = |r: &Reply| match r {
            Reply::Ok { head, .. } => head[0].clone(),
            Reply::Err(e) => panic!("{e}"),
        };
        let (t1, t2) = (token(&first), token(&second));
        assert_ne!(t1, t2);
        assert_eq!(
            run(&mut st, "c:3", Some(&t2), "create_group", &["g"]).0,
            Reply::ok()
        );
        let (r, _) = run(&mut st, "c:4", Some(&t1), "create_group", &["h"]);
        assert!(matches!(r, Reply::Err(e) if e.starts_with(wire::tracker_msg::ERR_SESSION)));
        // A wrong password is still refused on a replay.
        let (r, _) = run(&mut st, "c:2", None, "login", &["a", "bad"]);
        assert!(matches!(r, Reply::Err(_)));
    }

    #[test]
    fn reapplying_the_log_gives_the_same_sessions_and_ids() {
        let mut st = Store::open_in_memory().unwrap();
        let mut log = Vec::new();
        log.extend(run_logged(&mut st, "c:1", None, "create_user", &["a", "pw"]).1);
        log.extend(run_logged(&mut st, "c:2", None, "login", &["a", "pw"]).1);
        log.extend(run_logged(&mut st, "c:2", None, "login", &["a", "pw"]).1);
        log.extend(run_logged(&mut st, "c:3", None, "login", &["a", "pw"]).1);
        assert_eq!(log.len(), 4);
        let dump = |st: &Store| {
            let mut rows = store::table_rows(st.conn(), "sessions").unwrap();
            rows.extend(store::table_rows(st.conn(), "applied_requests").unwrap());
            rows
        };
        let before = dump(&st);
        assert_eq!(sessions(&st), 2);
        // Every prefix applied again leaves the state of the whole log.
        for n in 1..=log.len() {
            let end = log[n - 1].0;
            st.apply_entries(&log[..n], end).unwrap();
            st.apply_entries(&log[n..], log.last().unwrap().0).unwrap();
            assert_eq!(dump(&st), before, "prefix of {n}");
        }
    }

    /// Two changes validated against the same state (two trackers, or two
    /// connections in one raft turn) that create the same group: both entries
    /// are applied, the second changes nothing. Its id is not recorded, so its
    /// retry (a failover that lost the reply) gets the error, not `OK`.
    #[test]
    fn the_id_of_a_change_that_lost_a_race_is_not_recorded() {
        let mut st = Store::open_in_memory().unwrap();
        let mut token = |user: &str, rid: &str| {
            run(
                &mut st,
                &format!("{rid}:1"),
                None,
                "create_user",
                &[user, "pw"],
            );
            match run(&mut st, &format!("{rid}:2"), None, "login", &[user, "pw"]).0 {
                Reply::Ok { head, .. } => head[0].clone(),
                Reply::Err(e) => panic!("{e}"),
            }
        };
        let (ta, tb) = (token("a", "ca"), token("b", "cb"));
        let base = st.applied().unwrap().offset;
        let mut entries = Vec::new();
        for (rid, token) in [("ca:3", &ta), ("cb:3", &tb)] {
            let (_, entry) = validate(&st, rid, Some(token), "create_group", &["g"]);
            let entry = entry.expect("both valid against the state before either");
            entries.push((base + 100 * (entries.len() as u64 + 1), entry));
        }
        let end = entries[1].0;
        st.apply_entries(&entries, end).unwrap();
        let (won, applied) = run(&mut st, "ca:3", Some(&ta), "create_group", &["g"]);
        assert_eq!(
            (won, applied),
            (Reply::ok(), false),
            "the winner's retry: OK"
        );
        let (lost, applied) = run(&mut st, "cb:3", Some(&tb), "create_group", &["g"]);
        assert!(matches!(lost, Reply::Err(e) if e.contains("already exists")));
        assert!(!applied);
    }

    #[test]
    fn the_table_keeps_the_last_ids_per_client_and_forgets_old_ones() {
        let st = Store::open_in_memory().unwrap();
        let op = Op::CreateGroup {
            group: "g".into(),
            owner: "o".into(),
        };
        for seq in 1..=40u64 {
            record(st.conn(), seq * 10, 1_000, &format!("c:{seq}"), &op).unwrap();
        }
        record(st.conn(), 1_000, 1_000, "other:1", &op).unwrap();
        let count = |sql: &str| -> i64 { st.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM applied_requests WHERE client = 'c'"),
            KEEP_PER_CLIENT
        );
        assert_eq!(
            count("SELECT min(seq) FROM applied_requests WHERE client = 'c'"),
            25
        );
        record(st.conn(), 2_000, 1_000 + KEEP_MS as u64 + 1, "late:1", &op).unwrap();
        assert_eq!(count("SELECT count(*) FROM applied_requests"), 1);
    }

    #[test]
    fn ids_split_into_client_and_seq() {
        assert_eq!(split("0123456789abcdef:7"), ("0123456789abcdef", 7));
        assert_eq!(split("a:b:9"), ("a:b", 9));
        assert_eq!(split("opaque"), ("opaque", 0));
        assert_eq!(split("x:-1"), ("x:-1", 0));
    }
}
