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
//! - `error: no tracker reachable (tried A, B)` when no tracker answers.
//!
//! Informational notes go to stderr, one line each, prefixed `note: `, so stdout
//! keeps exactly the lines above: `note: tracker A unreachable, using B` after a
//! failover, and after a login the files of `.uploads_registry` that changed,
//! vanished or could not be announced again. Heartbeats print nothing.

use std::fmt;

/// The longest input line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// One parsed shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateUser {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Logout,
    CreateGroup {
        group: String,
    },
    JoinGroup {
        group: String,
    },
    LeaveGroup {
        group: String,
    },
    ListGroups,
    ListRequests {
        group: String,
    },
    AcceptRequest {
        group: String,
        user: String,
    },
    RejectRequest {
        group: String,
        user: String,
    },
    ListFiles {
        group: String,
    },
    UploadFile {
        path: String,
        group: String,
    },
    DownloadFile {
        group: String,
        name: String,
        dest: String,
    },
    ShowDownloads,
    StopShare {
        group: String,
        name: String,
    },
    Help,
    Quit,
}

/// One entry of the command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: &'static str,
    /// Argument names, as shown in the usage line.
    pub args: &'static [&'static str],
    pub needs_login: bool,
}

impl CommandSpec {
    /// `name <arg> <arg>`.
    pub fn usage(&self) -> String {
        let mut s = self.name.to_string();
        for a in self.args {
            s.push_str(" <");
            s.push_str(a);
            s.push('>');
        }
        s
    }
}

/// Every command the shell knows, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    spec("create_user", &["user_id", "password"], false),
    spec("login", &["user_id", "password"], false),
    spec("logout", &[], true),
    spec("create_group", &["group_id"], true),
    spec("join_group", &["group_id"], true),
    spec("leave_group", &["group_id"], true),
    spec("list_groups", &[], true),
    spec("list_requests", &["group_id"], true),
    spec("accept_request", &["group_id", "user_id"], true),
    spec("reject_request", &["group_id", "user_id"], true),
    spec("list_files", &["group_id"], true),
    spec("upload_file", &["file_path", "group_id"], true),
    spec(
        "download_file",
        &["group_id", "file_name", "destination_path"],
        true,
    ),
    spec("show_downloads", &[], false),
    spec("stop_share", &["group_id", "file_name"], true),
    spec("help", &[], false),
    spec("quit", &[], false),
];

const fn spec(name: &'static str, args: &'static [&'static str], needs_login: bool) -> CommandSpec {
    CommandSpec {
        name,
        args,
        needs_login,
    }
}

/// Looks a command up by name.
pub fn find_spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
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
    if words.len() != spec.args.len() {
        return Err(ShellError::Usage(spec));
    }
    if spec.needs_login && logged_in.is_none() {
        return Err(ShellError::NotLoggedIn);
    }
    let mut a = words.into_iter();
    let mut next = || a.next().expect("arity checked");
    let cmd = match spec.name {
        "create_user" => Command::CreateUser {
            user: next(),
            password: next(),
        },
        "login" => {
            if let Some(u) = logged_in {
                return Err(ShellError::AlreadyLoggedIn(u.to_string()));
            }
            Command::Login {
                user: next(),
                password: next(),
            }
        }
        "logout" => Command::Logout,
        "create_group" => Command::CreateGroup { group: next() },
        "join_group" => Command::JoinGroup { group: next() },
        "leave_group" => Command::LeaveGroup { group: next() },
        "list_groups" => Command::ListGroups,
        "list_requests" => Command::ListRequests { group: next() },
        "accept_request" => Command::AcceptRequest {
            group: next(),
            user: next(),
        },
        "reject_request" => Command::RejectRequest {
            group: next(),
            user: next(),
        },
        "list_files" => Command::ListFiles { group: next() },
        "upload_file" => {
            let (first, second) = (next(), next());
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
        "download_file" => Command::DownloadFile {
            group: next(),
            name: next(),
            dest: next(),
        },
        "show_downloads" => Command::ShowDownloads,
        "stop_share" => Command::StopShare {
            group: next(),
            name: next(),
        },
        "help" => Command::Help,
        "quit" => Command::Quit,
        other => unreachable!("command {other} in table but not parsed"),
    };
    Ok(Some(cmd))
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
            Ok(Some(Command::CreateUser {
                user: "a".into(),
                password: "b".into()
            }))
        );
        assert_eq!(p("logout", u), Ok(Some(Command::Logout)));
        assert_eq!(
            p(r#"join_group "g 1""#, u),
            Ok(Some(Command::JoinGroup {
                group: "g 1".into()
            }))
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
            let user = if spec.name == "login" { None } else { u };
            assert!(p(&line, user).unwrap().is_some(), "{line}");
        }
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
    fn counts() {
        assert_eq!(count(1, "group", "groups"), "1 group");
        assert_eq!(count(0, "group", "groups"), "0 groups");
    }
}
