//! Requests -> (authorize, validate against the store) -> a reply to send, or a
//! log entry to append (and then apply) before its reply is sent.
//!
//! The command table is [`wire::command`]: a request is parsed into a typed
//! [`TrackerCommand`] once, then each command has its own short handler.
//! The reply rows are those of [`wire::tracker_msg`].

use std::net::{IpAddr, SocketAddr};

use rusqlite::Connection;
use wire::command::{CommandKind, TrackerCommand, Upload};
use wire::tracker_msg::{Reply, Request, ERR_SESSION};

use crate::auth;
use crate::dedup;
use crate::store;
use crate::sync_log::Op;
use crate::tickets::TicketIssuer;

/// Longest user or group name, in bytes.
pub const MAX_NAME: usize = 256;
/// Longest file name, in bytes.
pub const MAX_FILE_NAME: usize = 1024;
/// The one reply to a failed login, whether the user exists or not.
pub const LOGIN_FAILED: &str = "wrong user name or password";

/// What the tracker needs to know besides the request and the store.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now_ms: u64,
    /// Seeders not seen for this long are not online.
    pub seeder_timeout_ms: u64,
    /// The source IP of the request's connection: a seeder's address is this
    /// IP with the port the client announces (`None`: keep the announced IP).
    pub peer_ip: Option<IpAddr>,
    /// A session unused this long is refused (see [`store::session_last_use`]).
    pub session_idle_ms: u64,
    /// The ticket signing key (`None`: no tickets, `login` sends no key).
    pub tickets: Option<&'static TicketIssuer>,
}

impl Ctx {
    fn online_since(&self) -> u64 {
        self.now_ms.saturating_sub(self.seeder_timeout_ms)
    }
}

/// The result of handling one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer at once; nothing changes.
    Reply(Reply),
    /// Append `op` to the log and apply it; send `reply` once it is durable.
    Mutate { op: Op, reply: Reply },
}

/// Why a request is refused: one clear line for the `ERR` reply.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Refused(String),
    #[error("internal error: database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("internal error: {0}")]
    Auth(#[from] auth::AuthError),
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, CommandError> {
    Err(CommandError::Refused(msg.into()))
}

/// Every command's name (the operator view counts requests by these).
pub fn names() -> Vec<&'static str> {
    wire::command::COMMANDS.iter().map(|c| c.name).collect()
}

/// Whether a command may change state (and so goes through the log path): the
/// `mutates` column of [`wire::command::COMMANDS`].
pub fn may_mutate(command: &str) -> bool {
    CommandKind::from_name(command).is_some_and(|k| k.spec().mutates)
}

/// Handles one request against the current state (inside the write transaction
/// for commands that [`may_mutate`]). Never panics; errors become `ERR` replies.
pub fn handle(db: &Connection, req: &Request, ctx: &Ctx) -> Outcome {
    match dispatch(db, req, ctx) {
        Ok(outcome) => outcome,
        Err(e) => {
            if matches!(e, CommandError::Db(_) | CommandError::Auth(_)) {
                log::error!("{} failed: {e}", req.command);
            }
            Outcome::Reply(Reply::err(e))
        }
    }
}

fn ok_head(head: Vec<String>) -> Reply {
    Reply::Ok {
        head,
        rows: Vec::new(),
    }
}

fn ok_rows(rows: Vec<Vec<String>>) -> Reply {
    Reply::Ok {
        head: Vec::new(),
        rows,
    }
}

fn mutate(op: Op) -> Result<Outcome, CommandError> {
    Ok(Outcome::Mutate {
        op,
        reply: Reply::ok(),
    })
}

fn answer(reply: Reply) -> Result<Outcome, CommandError> {
    Ok(Outcome::Reply(reply))
}

fn dispatch(db: &Connection, req: &Request, ctx: &Ctx) -> Result<Outcome, CommandError> {
    let cmd = req
        .parse_command()
        .map_err(|e| CommandError::Refused(e.to_string()))?;
    if let (Some(id), true) = (&req.request_id, cmd.kind().spec().mutates) {
        // Before any validation: a change applied already is not judged again.
        match dedup::replay(db, id, &cmd)? {
            Ok(Some(original)) => return answer(original),
            Ok(None) => {}
            Err(reason) => return refuse(reason),
        }
    }
    match cmd {
        TrackerCommand::CreateUser { user, password } => create_user(db, &user, &password),
        TrackerCommand::Login { user, password } => login(db, ctx, &user, &password),
        cmd => dispatch_logged_in(db, ctx, &session(db, req, ctx)?, cmd),
    }
}

/// Whether `command` needs argon2 (the server runs it on the login pool).
pub fn needs_argon2(command: &str) -> bool {
    command == CommandKind::Login.name() || command == CommandKind::CreateUser.name()
}

/// Checks a `create_user` before its password is hashed: `Err` is the reply.
pub fn check_new_user(db: &Connection, user: &str, password: &str) -> Result<(), Reply> {
    let checked = check_name("user", user, MAX_NAME)
        .and_then(|()| check_password(password))
        .and_then(|()| match store::user_password_hash(db, user)? {
            Some(_) => refuse(format!("user already exists: {user}")),
            None => Ok(()),
        });
    checked.map_err(Reply::err)
}

/// Handles a `login` or `create_user` whose argon2 part the pool did:
/// `verified` for a login, the new PHC string for a user.
pub fn finish(
    db: &Connection,
    ctx: &Ctx,
    req: &Request,
    argon2: &crate::login_pool::Done,
) -> Outcome {
    finish_checked(db, ctx, req, argon2).unwrap_or_else(|e| Outcome::Reply(Reply::err(e)))
}

fn finish_checked(
    db: &Connection,
    ctx: &Ctx,
    req: &Request,
    argon2: &crate::login_pool::Done,
) -> Result<Outcome, CommandError> {
    use crate::login_pool::Done;
    let cmd = req
        .parse_command()
        .map_err(|e| CommandError::Refused(e.to_string()))?;
    if let Some(id) = &req.request_id {
        match dedup::replay(db, id, &cmd)? {
            Ok(Some(original)) => return answer(original),
            Ok(None) => {}
            Err(reason) => return refuse(reason),
        }
    }
    match (cmd, argon2) {
        (TrackerCommand::Login { user, .. }, Done::Verified(ok)) => {
            finish_login(db, ctx, &user, *ok)
        }
        (TrackerCommand::CreateUser { user, password }, Done::Hashed(Ok(phc))) => {
            check_new_user(db, &user, &password)
                .map_err(|r| CommandError::Refused(reply_reason(r)))?;
            mutate(Op::CreateUser {
                user,
                password_hash: phc.clone(),
            })
        }
        (_, Done::Hashed(Err(e))) => Err(CommandError::Auth(auth::AuthError::Hash(e.clone()))),
        _ => refuse("internal error: argon2 result does not fit the request"),
    }
}

fn reply_reason(r: Reply) -> String {
    match r {
        Reply::Err(e) => e,
        Reply::Ok { .. } => String::new(),
    }
}

fn create_user(db: &Connection, user: &str, password: &str) -> Result<Outcome, CommandError> {
    check_new_user(db, user, password).map_err(|r| CommandError::Refused(reply_reason(r)))?;
    mutate(Op::CreateUser {
        user: user.to_string(),
        password_hash: auth::hash_password(password)?,
    })
}

/// The inline login (unit tests; the server uses the pool and [`finish`]).
fn login(db: &Connection, ctx: &Ctx, user: &str, password: &str) -> Result<Outcome, CommandError> {
    let verified = store::user_password_hash(db, user)?
        .is_some_and(|phc| auth::verify_password(password, &phc));
    finish_login(db, ctx, user, verified)
}

fn finish_login(
    db: &Connection,
    ctx: &Ctx,
    user: &str,
    verified: bool,
) -> Result<Outcome, CommandError> {
    if !verified || store::user_password_hash(db, user)?.is_none() {
        return refuse(LOGIN_FAILED);
    }
    let token = auth::new_token()?;
    Ok(Outcome::Mutate {
        op: Op::Login {
            token_hash: auth::token_hash(&token),
            user: user.to_string(),
        },
        // The second field is the trackers' ticket key, which clients pin.
        reply: ok_head(match ctx.tickets {
            Some(t) => vec![token, t.public_hex()],
            None => vec![token],
        }),
    })
}

/// A live session: the token's hash and its user.
struct Session {
    token_hash: String,
    user: String,
}

fn session(db: &Connection, req: &Request, ctx: &Ctx) -> Result<Session, CommandError> {
    let Some(token) = &req.token else {
        return refuse(format!("{ERR_SESSION}: log in first"));
    };
    let token_hash = auth::token_hash(token);
    let unused_since = ctx.now_ms.saturating_sub(ctx.session_idle_ms);
    match store::session_last_use(db, &token_hash, unused_since)? {
        Some((_, used)) if ctx.now_ms.saturating_sub(used) > ctx.session_idle_ms => refuse(
            format!("{ERR_SESSION}: session expired after a long time unused; log in again"),
        ),
        Some((user, _)) => Ok(Session { token_hash, user }),
        None => refuse(format!("{ERR_SESSION}: unknown or ended session")),
    }
}

/// The commands that need a session (`needs_session` in the table).
fn dispatch_logged_in(
    db: &Connection,
    ctx: &Ctx,
    s: &Session,
    cmd: TrackerCommand,
) -> Result<Outcome, CommandError> {
    use TrackerCommand as C;
    let me = s.user.as_str();
    match cmd {
        C::CreateUser { .. } | C::Login { .. } => refuse("internal error: no session needed"),
        C::Whoami => answer(ok_head(vec![me.to_string()])),
        C::Logout => mutate(Op::Logout {
            token_hash: s.token_hash.clone(),
        }),
        C::CreateGroup { group } => create_group(db, me, group),
        C::JoinGroup { group } => join_group(db, me, group),
        C::LeaveGroup { group } => {
            member_of(db, &group, me)?;
            mutate(Op::LeaveGroup {
                group,
                user: me.to_string(),
            })
        }
        C::ListGroups => answer(ok_rows(store::list_groups(db, me)?)),
        C::ListRequests { group } => {
            owner_of(db, &group, me, "list requests")?;
            answer(ok_rows(store::list_requests(db, &group)?))
        }
        C::AcceptRequest { group, user } => {
            pending_request(db, me, &group, &user, "accept requests")?;
            mutate(Op::AcceptRequest { group, user })
        }
        C::RejectRequest { group, user } => {
            pending_request(db, me, &group, &user, "reject requests")?;
            mutate(Op::RejectRequest { group, user })
        }
        C::ListFiles { group } => {
            member_of(db, &group, me)?;
            let since = ctx.online_since();
            answer(ok_rows(store::list_files(db, &group, since)?))
        }
        C::UploadFile(upload) => upload_file(db, ctx, s, upload),
        C::FileInfo { group, name, key } => file_info(db, ctx, me, &group, &name, key.as_deref()),
        C::AddSeeder {
            group,
            name,
            file_sha1,
            peer_addr,
            partial,
        } => add_seeder(db, ctx, s, (group, name), &file_sha1, (&peer_addr, partial)),
        C::StopShare { group, name } => stop_share(db, s, group, name),
        C::Heartbeat { peer_addr } => heartbeat(db, ctx, s, &peer_addr),
    }
}

fn create_group(db: &Connection, me: &str, group: String) -> Result<Outcome, CommandError> {
    check_name("group", &group, MAX_NAME)?;
    if store::group_owner(db, &group)?.is_some() {
        return refuse(format!("group already exists: {group}"));
    }
    mutate(Op::CreateGroup {
        group,
        owner: me.to_string(),
    })
}

fn join_group(db: &Connection, me: &str, group: String) -> Result<Outcome, CommandError> {
    existing_group(db, &group)?;
    if store::is_member(db, &group, me)? {
        return refuse(format!("already a member of group {group}"));
    }
    if store::has_request(db, &group, me)? {
        return refuse(format!("already asked to join group {group}"));
    }
    mutate(Op::RequestJoin {
        group,
        user: me.to_string(),
    })
}

/// `me` owns `group` and `user` asked to join it.
fn pending_request(
    db: &Connection,
    me: &str,
    group: &str,
    user: &str,
    what: &str,
) -> Result<(), CommandError> {
    owner_of(db, group, me, what)?;
    if !store::has_request(db, group, user)? {
        return refuse(format!("no pending request from {user} to join {group}"));
    }
    Ok(())
}

fn upload_file(
    db: &Connection,
    ctx: &Ctx,
    s: &Session,
    u: Upload,
) -> Result<Outcome, CommandError> {
    let (group, name) = (u.group, u.name);
    member_of(db, &group, &s.user)?;
    check_name("file", &name, MAX_FILE_NAME)?;
    let size = check_i64("size", u.size)?;
    let piece_size = check_i64("piece_size", u.piece_size)?;
    if piece_size == 0 {
        return refuse("piece_size must be greater than 0");
    }
    let file_sha1 = check_hex("file_sha1", &u.file_sha1, 40)?;
    let pieces = size.div_ceil(piece_size);
    let want = pieces
        .checked_mul(40)
        .filter(|n| *n <= wire::tracker_msg::MAX_REQUEST_LINE as u64);
    let Some(want) = want else {
        return refuse(format!("file of {size} bytes has too many pieces"));
    };
    let piece_hashes = check_hex("piece_hashes", &u.piece_hashes, want as usize)?;
    let peer_addr = seeder_addr(ctx, &u.peer_addr)?;
    if let Some(existing) = store::file(db, &group, &name)? {
        if existing.size != size || existing.file_sha1 != file_sha1 {
            return refuse(format!(
                "a different file named {name} already exists in group {group}"
            ));
        }
    }
    mutate(Op::UploadFile {
        group,
        name,
        size,
        piece_size,
        file_sha1,
        piece_hashes,
        token_hash: s.token_hash.clone(),
        user: s.user.clone(),
        peer_addr,
    })
}

fn file_info(
    db: &Connection,
    ctx: &Ctx,
    me: &str,
    group: &str,
    name: &str,
    key: Option<&str>,
) -> Result<Outcome, CommandError> {
    member_of(db, group, me)?;
    let Some(f) = store::file(db, group, name)? else {
        return refuse(format!("no such file {name} in group {group}"));
    };
    let ticket = match (key, ctx.tickets) {
        (None, _) => None,
        (Some(_), None) => return refuse("this tracker issues no tickets"),
        (Some(k), Some(t)) => Some(
            t.issue(me, group, &f.file_sha1, k, ctx.now_ms / 1000)
                .or_else(refuse)?,
        ),
    };
    let rows = store::online_seeders(db, group, name, ctx.online_since())?
        .into_iter()
        .map(|addr| vec![addr])
        .collect();
    answer(Reply::Ok {
        head: vec![
            f.name,
            f.size.to_string(),
            f.piece_size.to_string(),
            f.file_sha1,
            f.piece_hashes,
        ]
        .into_iter()
        .chain(ticket)
        .collect(),
        rows,
    })
}

fn add_seeder(
    db: &Connection,
    ctx: &Ctx,
    s: &Session,
    (group, name): (String, String),
    file_sha1: &str,
    (peer_addr, partial): (&str, bool),
) -> Result<Outcome, CommandError> {
    member_of(db, &group, &s.user)?;
    let file_sha1 = check_hex("file_sha1", file_sha1, 40)?;
    let peer_addr = seeder_addr(ctx, peer_addr)?;
    let Some(f) = store::file(db, &group, &name)? else {
        return refuse(format!("no such file {name} in group {group}"));
    };
    if f.file_sha1 != file_sha1 {
        return refuse(format!(
            "file {name} in group {group} has different content (SHA-1 differs)"
        ));
    }
    mutate(Op::AddSeeder {
        group,
        name,
        token_hash: s.token_hash.clone(),
        user: s.user.clone(),
        peer_addr,
        partial,
    })
}

fn stop_share(
    db: &Connection,
    s: &Session,
    group: String,
    name: String,
) -> Result<Outcome, CommandError> {
    existing_group(db, &group)?;
    if !store::is_seeder(db, &group, &name, &s.token_hash)? {
        return refuse(format!("not sharing {name} in group {group}"));
    }
    mutate(Op::StopShare {
        group,
        name,
        token_hash: s.token_hash.clone(),
    })
}

/// Logged only when it changes what peers see: a seeder close to timing out or
/// a new address. Otherwise the heartbeat is acknowledged at once.
fn heartbeat(
    db: &Connection,
    ctx: &Ctx,
    s: &Session,
    peer_addr: &str,
) -> Result<Outcome, CommandError> {
    let peer_addr = seeder_addr(ctx, peer_addr)?;
    let fresh_since = ctx.now_ms.saturating_sub(ctx.seeder_timeout_ms / 3);
    let (rows, fresh) = store::session_seeding(db, &s.token_hash, fresh_since, &peer_addr)?;
    if rows == fresh {
        return answer(Reply::ok());
    }
    mutate(Op::Heartbeat {
        token_hash: s.token_hash.clone(),
        peer_addr,
    })
}

fn existing_group(db: &Connection, group: &str) -> Result<String, CommandError> {
    match store::group_owner(db, group)? {
        Some(owner) => Ok(owner),
        None => refuse(format!("no such group: {group}")),
    }
}

fn member_of(db: &Connection, group: &str, user: &str) -> Result<(), CommandError> {
    existing_group(db, group)?;
    if !store::is_member(db, group, user)? {
        return refuse(format!("not a member of group {group}"));
    }
    Ok(())
}

fn owner_of(db: &Connection, group: &str, user: &str, what: &str) -> Result<(), CommandError> {
    if existing_group(db, group)? != user {
        return refuse(format!("only the owner of {group} can {what}"));
    }
    Ok(())
}

/// Names: non-empty, at most `max` bytes, any UTF-8 but no control characters.
fn check_name(kind: &str, name: &str, max: usize) -> Result<(), CommandError> {
    if name.is_empty() {
        return refuse(format!("{kind} name must not be empty"));
    }
    if name.len() > max {
        return refuse(format!("{kind} name longer than {max} bytes"));
    }
    if name.chars().any(char::is_control) {
        return refuse(format!("{kind} name must not contain control characters"));
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), CommandError> {
    if p.is_empty() {
        return refuse("password must not be empty");
    }
    if p.len() > 1024 {
        return refuse("password longer than 1024 bytes");
    }
    Ok(())
}

/// Sizes are stored as SQLite integers: at most `i64::MAX`.
fn check_i64(what: &str, n: u64) -> Result<u64, CommandError> {
    if n > i64::MAX as u64 {
        return refuse(format!("{what} must be a non-negative integer, got {n:?}"));
    }
    Ok(n)
}

/// Checks that `s` is `len` hex digits; returns it in lowercase.
fn check_hex(what: &str, s: &str, len: usize) -> Result<String, CommandError> {
    if s.len() != len {
        return refuse(format!(
            "{what} must be {len} hex characters, got {}",
            s.len()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(format!("{what} must be hex"));
    }
    Ok(s.to_ascii_lowercase())
}

/// The seeder address peers are given: the connection's source IP (when
/// known) with the port of the announced `IP:PORT`, so no one can point
/// downloaders at a third party.
fn seeder_addr(ctx: &Ctx, s: &str) -> Result<String, CommandError> {
    match s.parse::<SocketAddr>() {
        Ok(addr) => {
            let ip = ctx.peer_ip.unwrap_or(addr.ip());
            Ok(SocketAddr::new(ip.to_canonical(), addr.port()).to_string())
        }
        Err(_) => refuse(format!("peer_addr must be IP:PORT, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::sync_log::LogEntry;

    /// Runs a request like the server does: mutations are applied at once.
    fn test_issuer() -> &'static TicketIssuer {
        static KEY: std::sync::OnceLock<TicketIssuer> = std::sync::OnceLock::new();
        KEY.get_or_init(|| TicketIssuer::from_key(wire::ticket::new_key_pair().unwrap(), 60))
    }

    fn run(st: &mut Store, token: Option<&str>, cmd: &str, args: &[&str]) -> Reply {
        let ctx = Ctx {
            now_ms: 10_000,
            seeder_timeout_ms: 45_000,
            peer_ip: None,
            session_idle_ms: 30 * 86_400_000,
            tickets: Some(test_issuer()),
        };
        let req = Request::new(token, cmd, args);
        match handle(st.conn(), &req, &ctx) {
            Outcome::Reply(r) => r,
            Outcome::Mutate { op, reply } => {
                let off = st.applied().unwrap().offset + 1;
                let entry = LogEntry {
                    ms: ctx.now_ms,
                    tracker: 1,
                    request_id: None,
                    op,
                };
                st.apply_entries(&[(off, entry)], off).unwrap();
                reply
            }
        }
    }

    fn token(r: Reply) -> String {
        match r {
            Reply::Ok { head, .. } => head[0].clone(),
            Reply::Err(e) => panic!("{e}"),
        }
    }

    fn err(r: Reply) -> String {
        match r {
            Reply::Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn groups_requests_and_ownership() {
        let mut st = Store::open_in_memory().unwrap();
        assert_eq!(run(&mut st, None, "create_user", &["a", "pw"]), Reply::ok());
        assert!(err(run(&mut st, None, "create_user", &["a", "x"])).contains("already exists"));
        assert!(err(run(&mut st, None, "create_user", &["b\n", "x"])).contains("control"));
        assert_eq!(
            run(&mut st, None, "create_user", &["b b", "pw"]),
            Reply::ok()
        );
        assert_eq!(
            err(run(&mut st, None, "login", &["a", "bad"])),
            LOGIN_FAILED
        );
        assert_eq!(
            err(run(&mut st, None, "login", &["zz", "bad"])),
            LOGIN_FAILED
        );
        let ta = token(run(&mut st, None, "login", &["a", "pw"]));
        let tb = token(run(&mut st, None, "login", &["b b", "pw"]));
        assert!(err(run(&mut st, None, "whoami", &[])).starts_with(ERR_SESSION));
        assert!(err(run(&mut st, Some("f00"), "whoami", &[])).starts_with(ERR_SESSION));
        assert_eq!(run(&mut st, Some(&ta), "create_group", &["g"]), Reply::ok());
        assert!(err(run(&mut st, Some(&tb), "list_files", &["g"])).starts_with("not a member"));
        assert_eq!(run(&mut st, Some(&tb), "join_group", &["g"]), Reply::ok());
        assert!(err(run(&mut st, Some(&tb), "join_group", &["g"])).contains("already"));
        assert!(err(run(&mut st, Some(&tb), "list_requests", &["g"])).starts_with("only the owner"));
        assert_eq!(
            run(&mut st, Some(&ta), "list_requests", &["g"]),
            ok_rows(vec![vec!["b b".into()]])
        );
        assert_eq!(
            run(&mut st, Some(&ta), "accept_request", &["g", "b b"]),
            Reply::ok()
        );
        assert!(
            err(run(&mut st, Some(&ta), "accept_request", &["g", "b b"])).starts_with("no pending")
        );
        assert_eq!(run(&mut st, Some(&ta), "leave_group", &["g"]), Reply::ok());
        assert_eq!(
            run(&mut st, Some(&tb), "list_groups", &[]),
            ok_rows(vec![vec![
                "g".into(),
                "b b".into(),
                "1".into(),
                "owner".into()
            ]])
        );
        assert_eq!(run(&mut st, Some(&ta), "logout", &[]), Reply::ok());
        assert!(err(run(&mut st, Some(&ta), "whoami", &[])).starts_with(ERR_SESSION));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn any_request_gets_a_reply_without_panicking(
            cmd in proptest::sample::select(wire::command::COMMANDS.iter().map(|c| c.name).chain(["", "x"]).collect::<Vec<_>>()),
            args in proptest::collection::vec(".{0,12}", 0..8),
            logged_in in proptest::prelude::any::<bool>(),
        ) {
            let mut st = Store::open_in_memory().unwrap();
            run(&mut st, None, "create_user", &["u", "p"]);
            let t = token(run(&mut st, None, "login", &["u", "p"]));
            run(&mut st, Some(&t), "create_group", &["g"]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let tok = if logged_in { Some(t.as_str()) } else { None };
            let _ = run(&mut st, tok, cmd, &args);
        }
    }

    #[test]
    fn files_and_seeders() {
        let mut st = Store::open_in_memory().unwrap();
        run(&mut st, None, "create_user", &["a", "pw"]);
        let t = token(run(&mut st, None, "login", &["a", "pw"]));
        run(&mut st, Some(&t), "create_group", &["g"]);
        let sha = "A".repeat(40);
        let pieces = "b".repeat(80);
        let up = |name: &str, size: &str, sha: &str, pieces: &str, addr: &str| {
            vec![
                "g".to_string(),
                name.to_string(),
                size.to_string(),
                "10".to_string(),
                sha.to_string(),
                pieces.to_string(),
                addr.to_string(),
            ]
        };
        let args = up("f x", "11", &sha, &pieces, "127.0.0.1:5");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(run(&mut st, Some(&t), "upload_file", &refs), Reply::ok());
        let bad = up("f x", "12", &sha, &pieces, "127.0.0.1:5");
        let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert!(err(run(&mut st, Some(&t), "upload_file", &refs)).contains("different"));
        let bad = up("f y", "21", &sha, &pieces, "127.0.0.1:5");
        let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert!(err(run(&mut st, Some(&t), "upload_file", &refs)).contains("piece_hashes"));
        let bad = up("f y", "11", &sha, &pieces, "nowhere");
        let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert!(err(run(&mut st, Some(&t), "upload_file", &refs)).contains("peer_addr"));
        assert_eq!(
            run(&mut st, Some(&t), "list_files", &["g"]),
            ok_rows(vec![vec![
                "f x".into(),
                "11".into(),
                "1".into(),
                "0".into()
            ]])
        );
        match run(&mut st, Some(&t), "file_info", &["g", "f x"]) {
            Reply::Ok { head, rows } => {
                assert_eq!(head[3], "a".repeat(40));
                assert_eq!(rows, vec![vec!["127.0.0.1:5".to_string()]]);
            }
            other => panic!("{other:?}"),
        }
        // With the downloader's key: a ticket for this user, group, file and key,
        // signed with the key `login` announced, valid for the lifetime.
        let me = wire::ticket::new_key_pair().unwrap();
        let my_key = wire::ticket::public_key_hex(&me.verifying_key());
        let Reply::Ok { head, .. } = run(&mut st, Some(&t), "file_info", &["g", "f x", &my_key])
        else {
            panic!("file_info with a key refused");
        };
        let ticket = wire::ticket::Ticket::from_hex(&head[5]).unwrap();
        let Reply::Ok { head: login, .. } = run(&mut st, None, "login", &["a", "pw"]) else {
            panic!("login refused");
        };
        let tracker_key = wire::ticket::public_key_from_hex(&login[1]).unwrap();
        ticket.verify(&tracker_key, 10 + 60).unwrap();
        assert!(ticket.verify(&tracker_key, 10 + 61).is_err());
        assert_eq!(ticket.body.user, "a");
        assert_eq!(ticket.body.group, "g");
        assert_eq!(ticket.body.file_sha1, [0xaa; 20]);
        assert_eq!(ticket.body.holder, me.verifying_key().to_bytes());
        assert!(
            err(run(&mut st, Some(&t), "file_info", &["g", "f x", "00"]))
                .contains("downloader_key")
        );
        assert!(err(run(
            &mut st,
            Some(&t),
            "file_info",
            &["g", "f x", &my_key, "x"]
        ))
        .starts_with("usage"));
        assert_eq!(
            run(&mut st, Some(&t), "heartbeat", &["127.0.0.1:5"]),
            Reply::ok()
        );
        assert_eq!(
            run(&mut st, Some(&t), "stop_share", &["g", "f x"]),
            Reply::ok()
        );
        assert!(err(run(&mut st, Some(&t), "stop_share", &["g", "f x"])).starts_with("not sharing"));
        assert_eq!(
            run(
                &mut st,
                Some(&t),
                "add_seeder",
                &["g", "f x", &sha, "127.0.0.1:6"]
            ),
            Reply::ok()
        );
        assert!(err(run(
            &mut st,
            Some(&t),
            "add_seeder",
            &["g", "f x", &"c".repeat(40), "127.0.0.1:6"]
        ))
        .contains("different content"));
        // A partial seeder (a download in progress) is counted apart, and
        // turns complete with a plain add_seeder.
        let partial = ["g", "f x", &sha, "127.0.0.1:6", "partial"];
        assert_eq!(run(&mut st, Some(&t), "add_seeder", &partial), Reply::ok());
        let listed = |st: &mut Store| run(st, Some(&t), "list_files", &["g"]);
        let row =
            |c: &str, p: &str| ok_rows(vec![vec!["f x".into(), "11".into(), c.into(), p.into()]]);
        assert_eq!(listed(&mut st), row("0", "1"));
        match run(&mut st, Some(&t), "file_info", &["g", "f x"]) {
            Reply::Ok { rows, .. } => assert_eq!(rows, vec![vec!["127.0.0.1:6".to_string()]]),
            other => panic!("{other:?}"),
        }
        let complete = ["g", "f x", &sha, "127.0.0.1:6", "complete"];
        assert_eq!(run(&mut st, Some(&t), "add_seeder", &complete), Reply::ok());
        assert_eq!(listed(&mut st), row("1", "0"));
        let bad = ["g", "f x", &sha, "127.0.0.1:6", "half"];
        assert!(err(run(&mut st, Some(&t), "add_seeder", &bad)).starts_with("usage:"));
        assert!(err(run(&mut st, Some(&t), "nope", &[])).starts_with("unknown command"));
        assert!(err(run(&mut st, Some(&t), "list_files", &[])).starts_with("usage:"));
    }
}
