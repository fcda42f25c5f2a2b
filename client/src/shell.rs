//! The shell: turning one input line into a [`Command`], and the exact texts the
//! client prints. Pure parsing; no I/O except the "does this path name a file"
//! question that `upload_file`'s swapped argument order needs, which the caller
//! answers through a closure.
//!
//! # Input
//!
//! - Arguments are separated by spaces or tabs. A double-quoted part may hold
//!   spaces; inside quotes `\"` is a quote and `\\` a backslash (any other
//!   backslash stands for itself, as it does outside quotes). Quoted and unquoted
//!   parts next to each other join into one argument (`a"b c"` is `ab c`); `""` is
//!   an empty argument. An unbalanced quote is an error.
//! - A line longer than [`MAX_LINE`] bytes is refused (the reader discards it
//!   without buffering it whole).
//! - A blank line prints nothing.
//!
//! # Output (stdout; one first line per command, then the lines it announces)
//!
//! | command | success |
//! |---------|---------|
//! | `create_user u p` | `user u created` |
//! | `login u p` | `logged in as u` |
//! | `logout` | `logged out` |
//! | `create_group g` | `group g created` |
//! | `join_group g` | `join request sent to g` |
//! | `leave_group g` | `left group g` |
//! | `accept_request g u` | `u accepted into g` |
//! | `reject_request g u` | `request of u to join g rejected` |
//! | `stop_share g f` | `stopped sharing f in g` |
//! | `list_groups` | `N groups`, then per group `  <group>  owner=<owner>  members=<n>  [<status>]` (status: owner, member, pending or -) |
//! | `list_requests g` | `N pending requests for g`, then per request `  <user>` |
//! | `list_files g` | `N files in g`, then per file `  <name>  <size> bytes  <k> seeders` |
//! | `upload_file path g` | `uploaded <name> to <g> (<size> bytes, <pieces> pieces)` |
//! | `download_file g f dest` | `downloading <f> from <g> to <path>` (the download runs in the background) |
//! | `show_downloads` | `N downloads`, then one unindented line per download: `[D] [group] name ...`, `[C] ...`, `[F] ...` |
//! | `rate_limit [up RATE] [down RATE]` | `rate limits: up <RATE>, down <RATE>` (after any change; `unlimited` for 0) |
//! | `help` | `N commands`, then `  <usage line>` per command |
//! | `quit` | nothing; the client exits at once |
//!
//! Counts use the singular for one (`1 group`, `1 seeder`). Every failure is one
//! line `error: <reason>`: the tracker's reason verbatim, or a local one:
//!
//! - `error: usage: <usage line>` for a wrong argument count,
//! - `error: unknown command "<word>" (type help for the list)`,
//! - `error: not logged in (use login <user_id> <password>)`,
//! - `error: unbalanced double quote`, `error: line too long (more than 65536 bytes)`,
//! - `error: no tracker reachable (tried A, B)` when no tracker answers,
//! - `error: bad rate "<RATE>": expected bytes per second like 500K, 40M or 1G (0 = unlimited)`.
//!
//! Informational notes go to stderr, one line each, prefixed `note: `, so stdout
//! keeps exactly the lines above: `note: tracker A unreachable, using B` after a
//! failover, and after a login the files of `.uploads_registry` that changed,
//! vanished or could not be announced again. Heartbeats print nothing.

use std::fmt;

use wire::command::{line_carries_password, usage_line, CommandKind, TrackerCommand};

use crate::limits::{parse_rate, BadRate};

use CommandKind as K;

/// The longest input line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// One parsed shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A command the tracker carries out as typed (`create_user`, `login`,
    /// `logout`, `create_group`, `join_group`, `leave_group`, `list_groups`,
    /// `list_requests`, `accept_request`, `reject_request`, `list_files`,
    /// `stop_share`): the shell line is the request.
    Tracker(TrackerCommand),
    /// Hashes the file, then sends `upload_file` with its metadata.
    UploadFile {
        path: String,
        group: String,
    },
    /// Asks `file_info`, then downloads in the background.
    DownloadFile {
        group: String,
        name: String,
        dest: String,
    },
    ShowDownloads,
    /// Shows the bandwidth limits, after changing those given (bytes per
    /// second, 0 = unlimited).
    RateLimit {
        up: Option<u64>,
        down: Option<u64>,
    },
    Help,
    Quit,
}

/// What a shell command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sends this tracker command with the typed arguments.
    Tracker(CommandKind),
    UploadFile,
    DownloadFile,
    ShowDownloads,
    RateLimit,
    Help,
    Quit,
}

/// One entry of the shell's command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: &'static str,
    /// Argument names, as shown in the usage line.
    pub args: &'static [&'static str],
    pub needs_login: bool,
    pub action: Action,
}

impl CommandSpec {
    /// `name <arg> <arg>` (`rate_limit`'s arguments are optional pairs).
    pub fn usage(&self) -> String {
        if self.action == Action::RateLimit {
            return format!("{} [up RATE] [down RATE]", self.name);
        }
        usage_line(self.name, self.args)
    }
}

/// Every command the shell knows, in the order `help` lists them. The rows that
/// send a tracker command as typed are that command's row of
/// [`wire::command::COMMANDS`] (name, arguments, whether it needs a session).
pub static COMMANDS: [CommandSpec; 18] = [
    tracker(K::CreateUser),
    tracker(K::Login),
    tracker(K::Logout),
    tracker(K::CreateGroup),
    tracker(K::JoinGroup),
    tracker(K::LeaveGroup),
    tracker(K::ListGroups),
    tracker(K::ListRequests),
    tracker(K::AcceptRequest),
    tracker(K::RejectRequest),
    tracker(K::ListFiles),
    local(
        K::UploadFile.name(),
        &["file_path", "group_id"],
        Action::UploadFile,
    ),
    local(
        "download_file",
        &["group_id", "file_name", "destination_path"],
        Action::DownloadFile,
    ),
    local("show_downloads", &[], Action::ShowDownloads),
    local("rate_limit", &[], Action::RateLimit),
    tracker(K::StopShare),
    local("help", &[], Action::Help),
    local("quit", &[], Action::Quit),
];

const fn tracker(kind: CommandKind) -> CommandSpec {
    let spec = kind.spec();
    CommandSpec {
        name: spec.name,
        args: spec.args,
        needs_login: spec.needs_session,
        action: Action::Tracker(kind),
    }
}

/// A command the client carries out itself (`upload_file` and `download_file`
/// ask the tracker on the way).
const fn local(name: &'static str, args: &'static [&'static str], action: Action) -> CommandSpec {
    let needs_login = matches!(action, Action::UploadFile | Action::DownloadFile);
    CommandSpec {
        name,
        args,
        needs_login,
        action,
    }
}

/// Looks a command up by name.
pub fn find_spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Whether a typed line carries a password, so it stays out of the history
/// (the `carries_password` column of [`wire::command::COMMANDS`]).
pub fn carries_password(line: &str) -> bool {
    line_carries_password(line)
}

/// Why a line was refused locally. `Display` is the text after `error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellError {
    UnbalancedQuote,
    TooLong,
    NotUtf8,
    Unknown(String),
    Usage(&'static CommandSpec),
    NotLoggedIn,
    AlreadyLoggedIn(String),
    BadRate(BadRate),
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShellError::UnbalancedQuote => write!(f, "unbalanced double quote"),
            ShellError::TooLong => write!(f, "line too long (more than {MAX_LINE} bytes)"),
            ShellError::NotUtf8 => write!(f, "line is not valid UTF-8"),
            ShellError::Unknown(w) => write!(f, "unknown command {w:?} (type help for the list)"),
            ShellError::Usage(spec) => write!(f, "usage: {}", spec.usage()),
            ShellError::NotLoggedIn => write!(f, "not logged in (use login <user_id> <password>)"),
            ShellError::AlreadyLoggedIn(u) => write!(f, "already logged in as {u} (logout first)"),
            ShellError::BadRate(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ShellError {}

/// Splits a line into arguments (see the module doc for the quoting rules).
pub fn tokenize(line: &str) -> Result<Vec<String>, ShellError> {
    if line.len() > MAX_LINE {
        return Err(ShellError::TooLong);
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    // Whether the current argument has started (so `""` gives an empty argument).
    let mut started = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            '"' => {
                started = true;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' if matches!(chars.peek(), Some('"') | Some('\\')) => {
                            cur.push(chars.next().expect("peeked"));
                        }
                        q => cur.push(q),
                    }
                }
                if !closed {
                    return Err(ShellError::UnbalancedQuote);
                }
            }
            c => {
                started = true;
                cur.push(c);
            }
        }
    }
    if started {
        out.push(cur);
    }
    Ok(out)
}

/// Parses one line. `Ok(None)` for a blank line. `logged_in` is the user the
/// client is logged in as; `is_file` answers whether a path names an existing
/// file (for `upload_file`'s swapped order).
pub fn parse(
    line: &str,
    logged_in: Option<&str>,
    is_file: impl Fn(&str) -> bool,
) -> Result<Option<Command>, ShellError> {
    let mut words = tokenize(line)?;
    if words.is_empty() {
        return Ok(None);
    }
    let name = words.remove(0);
    let spec = find_spec(&name).ok_or_else(|| ShellError::Unknown(name.clone()))?;
    if spec.action == Action::RateLimit {
        return rate_limit(spec, words).map(Some);
    }
    if words.len() != spec.args.len() {
        return Err(ShellError::Usage(spec));
    }
    if spec.needs_login && logged_in.is_none() {
        return Err(ShellError::NotLoggedIn);
    }
    let cmd = match spec.action {
        Action::Tracker(kind) => {
            if let (K::Login, Some(u)) = (kind, logged_in) {
                return Err(ShellError::AlreadyLoggedIn(u.to_string()));
            }
            let cmd =
                TrackerCommand::parse(kind.name(), words).map_err(|_| ShellError::Usage(spec))?;
            Command::Tracker(cmd)
        }
        Action::UploadFile => {
            let [first, second] = take(words);
            // The assignment's copies disagree on the order; accept `<group> <path>`
            // when only the second argument names an existing file.
            if !is_file(&first) && is_file(&second) {
                Command::UploadFile {
                    path: second,
                    group: first,
                }
            } else {
                Command::UploadFile {
                    path: first,
                    group: second,
                }
            }
        }
        Action::DownloadFile => {
            let [group, name, dest] = take(words);
            Command::DownloadFile { group, name, dest }
        }
        Action::ShowDownloads => Command::ShowDownloads,
        Action::RateLimit => unreachable!("parsed above"),
        Action::Help => Command::Help,
        Action::Quit => Command::Quit,
    };
    Ok(Some(cmd))
}

/// `rate_limit [up RATE] [down RATE]`: each direction at most once, in either order.
fn rate_limit(spec: &'static CommandSpec, words: Vec<String>) -> Result<Command, ShellError> {
    let (mut up, mut down) = (None, None);
    let mut it = words.into_iter();
    while let Some(which) = it.next() {
        let slot = match which.as_str() {
            "up" if up.is_none() => &mut up,
            "down" if down.is_none() => &mut down,
            _ => return Err(ShellError::Usage(spec)),
        };
        let rate = it.next().ok_or(ShellError::Usage(spec))?;
        *slot = Some(parse_rate(&rate).map_err(ShellError::BadRate)?);
    }
    Ok(Command::RateLimit { up, down })
}

/// The arguments as an array (the arity was checked against the table).
fn take<const N: usize>(words: Vec<String>) -> [String; N] {
    let mut a = words.into_iter();
    std::array::from_fn(|_| a.next().unwrap_or_default())
}

/// `1 group`, `2 groups`.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// The lines `help` prints.
pub fn help_lines() -> Vec<String> {
    let mut v = vec![count(COMMANDS.len(), "command", "commands")];
    v.extend(COMMANDS.iter().map(|c| format!("  {}", c.usage())));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        tokenize(s).unwrap()
    }

    #[test]
    fn tokenizer_basics() {
        assert_eq!(toks("  a  b\tc "), ["a", "b", "c"]);
        assert!(toks("   ").is_empty());
        assert_eq!(
            toks(r#"create_group "my group""#),
            ["create_group", "my group"]
        );
        assert_eq!(toks(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(toks(r#"x "" y"#), ["x", "", "y"]);
        assert_eq!(toks(r#""say \"hi\" \\ \n""#), [r#"say "hi" \ \n"#]);
        assert_eq!(toks(r"C:\dir\file"), [r"C:\dir\file"]);
        assert_eq!(toks("ünï 🦀"), ["ünï", "🦀"]);
        assert_eq!(toks("a\r"), ["a"]);
    }

    #[test]
    fn tokenizer_errors() {
        assert_eq!(tokenize(r#"login "u p"#), Err(ShellError::UnbalancedQuote));
        assert_eq!(tokenize(r#"a "b\""#), Err(ShellError::UnbalancedQuote));
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(tokenize(&long), Err(ShellError::TooLong));
    }

    fn p(line: &str, user: Option<&str>) -> Result<Option<Command>, ShellError> {
        parse(line, user, |s| s.starts_with("/exists"))
    }

    #[test]
    fn parses_every_command() {
        let u = Some("alice");
        assert_eq!(p("", None), Ok(None));
        assert_eq!(
            p("create_user a b", None),
            Ok(Some(Command::Tracker(TrackerCommand::CreateUser {
                user: "a".into(),
                password: "b".into()
            })))
        );
        assert_eq!(
            p("logout", u),
            Ok(Some(Command::Tracker(TrackerCommand::Logout)))
        );
        assert_eq!(
            p(r#"join_group "g 1""#, u),
            Ok(Some(Command::Tracker(TrackerCommand::JoinGroup {
                group: "g 1".into()
            })))
        );
        assert_eq!(
            p("download_file g f /tmp", u),
            Ok(Some(Command::DownloadFile {
                group: "g".into(),
                name: "f".into(),
                dest: "/tmp".into()
            }))
        );
        assert_eq!(p("show_downloads", None), Ok(Some(Command::ShowDownloads)));
        assert_eq!(p("quit", None), Ok(Some(Command::Quit)));
        assert_eq!(p("help", None), Ok(Some(Command::Help)));
        for spec in COMMANDS {
            let line = std::iter::once(spec.name.to_string())
                .chain(spec.args.iter().map(|a| a.to_string()))
                .collect::<Vec<_>>()
                .join(" ");
            let login = spec.action == Action::Tracker(K::Login);
            let user = if login { None } else { u };
            let cmd = p(&line, user).unwrap().expect(&line);
            if let Action::Tracker(kind) = spec.action {
                assert!(
                    matches!(cmd, Command::Tracker(c) if c.kind() == kind),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn password_lines_stay_out_of_history() {
        assert!(carries_password("login a b"));
        assert!(carries_password("create_user a \"b c\""));
        assert!(!carries_password("create_group login"));
        assert!(!carries_password(""));
    }

    #[test]
    fn upload_order() {
        let u = Some("a");
        assert_eq!(
            p("upload_file /exists/f g", u),
            Ok(Some(Command::UploadFile {
                path: "/exists/f".into(),
                group: "g".into()
            }))
        );
        assert_eq!(
            p("upload_file g /exists/f", u),
            Ok(Some(Command::UploadFile {
                path: "/exists/f".into(),
                group: "g".into()
            }))
        );
        // Neither exists: the documented order, so the error names the path.
        assert_eq!(
            p("upload_file /nope g", u),
            Ok(Some(Command::UploadFile {
                path: "/nope".into(),
                group: "g".into()
            }))
        );
    }

    #[test]
    fn local_validation() {
        assert_eq!(
            p("frobnicate", None),
            Err(ShellError::Unknown("frobnicate".into()))
        );
        let e = p("login onlyone", None).unwrap_err();
        assert_eq!(e.to_string(), "usage: login <user_id> <password>");
        let e = p("list_groups extra", Some("a")).unwrap_err();
        assert_eq!(e.to_string(), "usage: list_groups");
        assert_eq!(p("list_groups", None), Err(ShellError::NotLoggedIn));
        assert_eq!(
            p("create_group g", None).unwrap_err().to_string(),
            "not logged in (use login <user_id> <password>)"
        );
        // Arity is checked before login, so the usage line helps first.
        assert!(matches!(p("create_group", None), Err(ShellError::Usage(_))));
        assert_eq!(
            p("login a b", Some("a")),
            Err(ShellError::AlreadyLoggedIn("a".into()))
        );
    }

    #[test]
    fn help_lists_every_command() {
        let lines = help_lines();
        assert_eq!(lines[0], format!("{} commands", COMMANDS.len()));
        assert_eq!(lines.len(), COMMANDS.len() + 1);
        assert!(lines
            .contains(&"  download_file <group_id> <file_name> <destination_path>".to_string()));
    }

    #[test]
    fn rate_limit_arguments() {
        let rl = |up, down| Ok(Some(Command::RateLimit { up, down }));
        assert_eq!(p("rate_limit", None), rl(None, None));
        assert_eq!(p("rate_limit up 40M", None), rl(Some(40 << 20), None));
        assert_eq!(
            p("rate_limit down 0 up 512K", None),
            rl(Some(512 << 10), Some(0))
        );
        for bad in [
            "rate_limit up",
            "rate_limit sideways 1M",
            "rate_limit up 1M up 2M",
            "rate_limit 1M",
        ] {
            let e = p(bad, None).unwrap_err().to_string();
            assert_eq!(e, "usage: rate_limit [up RATE] [down RATE]", "{bad}");
        }
        let e = p("rate_limit up 1.5M", None).unwrap_err().to_string();
        assert!(e.starts_with("bad rate \"1.5M\": expected"), "{e}");
    }

    #[test]
    fn counts() {
        assert_eq!(count(1, "group", "groups"), "1 group");
        assert_eq!(count(0, "group", "groups"), "0 groups");
    }
}
