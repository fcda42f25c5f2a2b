//! The tracker's command table: every command a client may send, with its wire
//! name, its arguments (in wire order), whether it changes state and whether it
//! carries a password; and [`TrackerCommand`], the typed form of a request's
//! command and arguments, parsed from the wire fields by one function
//! ([`TrackerCommand::parse`]) and turned back into them by one
//! ([`TrackerCommand::args`]).
//!
//! This is the one home of the command names: the tracker's dispatcher, the
//! client's shell, its tracker link and its history filter all read them here.
//!
//! | command          | args                                                                        | mutates | password | session |
//! |------------------|-----------------------------------------------------------------------------|---------|----------|---------|
//! | `create_user`    | user_id password                                                            | yes     | yes      | no      |
//! | `login`          | user_id password                                                            | yes     | yes      | no      |
//! | `whoami`         |                                                                             | no      | no       | yes     |
//! | `logout`         |                                                                             | yes     | no       | yes     |
//! | `create_group`   | group_id                                                                    | yes     | no       | yes     |
//! | `join_group`     | group_id                                                                    | yes     | no       | yes     |
//! | `leave_group`    | group_id                                                                    | yes     | no       | yes     |
//! | `list_groups`    |                                                                             | no      | no       | yes     |
//! | `list_requests`  | group_id                                                                    | no      | no       | yes     |
//! | `accept_request` | group_id user_id                                                            | yes     | no       | yes     |
//! | `reject_request` | group_id user_id                                                            | yes     | no       | yes     |
//! | `list_files`     | group_id                                                                    | no      | no       | yes     |
//! | `upload_file`    | group_id file_name size piece_size file_sha1 piece_hashes peer_addr         | yes     | no       | yes     |
//! | `file_info`      | group_id file_name [downloader_key]                                         | no      | no       | yes     |
//! | `add_seeder`     | group_id file_name file_sha1 peer_addr [partial]                            | yes     | no       | yes     |
//! | `stop_share`     | group_id file_name                                                          | yes     | no       | yes     |
//! | `heartbeat`      | peer_addr                                                                   | yes     | no       | yes     |
//!
//! `file_info`'s optional third argument is the downloader's Ed25519 public key
//! (64 hex characters); with it the reply carries a download ticket
//! ([`crate::ticket`]). The two-argument form still works (no ticket).
//! `add_seeder`'s optional fifth argument is the word `partial` (a downloader
//! that holds some pieces) or `complete` (the default: the whole file).
//!
//! "mutates" means the command may change state, so the tracker runs it on the
//! log path (a heartbeat changes state only when a seeder is close to timing out).
//! The replies of each command are described in [`crate::tracker_msg`].

use std::fmt;

/// Every tracker command. The discriminant is the command's index in [`COMMANDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    CreateUser,
    Login,
    Whoami,
    Logout,
    CreateGroup,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    ListRequests,
    AcceptRequest,
    RejectRequest,
    ListFiles,
    UploadFile,
    FileInfo,
    AddSeeder,
    StopShare,
    Heartbeat,
}

/// One row of the command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    pub kind: CommandKind,
    /// The wire name (the request's command field).
    pub name: &'static str,
    /// Argument names in wire order, as usage lines show them.
    pub args: &'static [&'static str],
    /// The command may change state (it goes through the log).
    pub mutates: bool,
    /// An argument is a password: such lines stay out of histories and logs.
    pub carries_password: bool,
    /// The command needs a logged-in session.
    pub needs_session: bool,
}

const fn row(
    kind: CommandKind,
    name: &'static str,
    args: &'static [&'static str],
    mutates: bool,
) -> CommandSpec {
    let no_session = matches!(kind, CommandKind::CreateUser | CommandKind::Login);
    CommandSpec {
        kind,
        name,
        args,
        mutates,
        carries_password: no_session,
        needs_session: !no_session,
    }
}

use CommandKind as K;

const USER: &[&str] = &["user_id", "password"];
const GROUP: &[&str] = &["group_id"];
const GROUP_USER: &[&str] = &["group_id", "user_id"];
const GROUP_FILE: &[&str] = &["group_id", "file_name"];
const UPLOAD: &[&str] = &[
    "group_id",
    "file_name",
    "size",
    "piece_size",
    "file_sha1",
    "piece_hashes",
    "peer_addr",
];

/// `add_seeder`'s optional last argument for a downloader holding some pieces...
pub const PARTIAL: &str = "partial";
/// ...and for a holder of the whole file (the default).
pub const COMPLETE: &str = "complete";

/// The command table, in [`CommandKind`] order.
pub static COMMANDS: [CommandSpec; 17] = [
    row(K::CreateUser, "create_user", USER, true),
    row(K::Login, "login", USER, true),
    row(K::Whoami, "whoami", &[], false),
    row(K::Logout, "logout", &[], true),
    row(K::CreateGroup, "create_group", GROUP, true),
    row(K::JoinGroup, "join_group", GROUP, true),
    row(K::LeaveGroup, "leave_group", GROUP, true),
    row(K::ListGroups, "list_groups", &[], false),
    row(K::ListRequests, "list_requests", GROUP, false),
    row(K::AcceptRequest, "accept_request", GROUP_USER, true),
    row(K::RejectRequest, "reject_request", GROUP_USER, true),
    row(K::ListFiles, "list_files", GROUP, false),
    row(K::UploadFile, "upload_file", UPLOAD, true),
    row(K::FileInfo, "file_info", GROUP_FILE, false),
    row(
        K::AddSeeder,
        "add_seeder",
        &["group_id", "file_name", "file_sha1", "peer_addr"],
        true,
    ),
    row(K::StopShare, "stop_share", GROUP_FILE, true),
    row(K::Heartbeat, "heartbeat", &["peer_addr"], true),
];

impl CommandKind {
    /// This command's row of the table.
    pub const fn spec(self) -> &'static CommandSpec {
        &COMMANDS[self as usize]
    }

    /// The wire name.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The command with this wire name.
    pub fn from_name(name: &str) -> Option<CommandKind> {
        COMMANDS.iter().find(|c| c.name == name).map(|c| c.kind)
    }

    /// `name <arg> <arg>`.
    pub fn usage(self) -> String {
        usage_line(self.name(), self.spec().args)
    }
}

/// `name <arg> <arg>` for any command with named arguments.
pub fn usage_line(name: &str, args: &[&str]) -> String {
    let mut s = name.to_string();
    for a in args {
        s.push_str(" <");
        s.push_str(a);
        s.push('>');
    }
    s
}

/// Whether a command line (a shell line or a request's command field followed by
/// its arguments) starts with a command that carries a password.
pub fn line_carries_password(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    CommandKind::from_name(first).is_some_and(|k| k.spec().carries_password)
}

/// A command and its arguments, typed. Field names follow the table's argument
/// names; `size` and `piece_size` are numbers, every other field is text that the
/// tracker validates against its own rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerCommand {
    CreateUser {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Whoami,
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
    UploadFile(Upload),
    FileInfo {
        group: String,
        name: String,
        /// The downloader's public key (hex): ask for a ticket.
        key: Option<String>,
    },
    AddSeeder {
        group: String,
        name: String,
        file_sha1: String,
        peer_addr: String,
        /// Holds only some pieces (a download in progress).
        partial: bool,
    },
    StopShare {
        group: String,
        name: String,
    },
    Heartbeat {
        peer_addr: String,
    },
}

/// The arguments of `upload_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub group: String,
    pub name: String,
    pub size: u64,
    pub piece_size: u64,
    /// 40 hex characters.
    pub file_sha1: String,
    /// The 40-hex-character SHA-1 of every piece, concatenated.
    pub piece_hashes: String,
    pub peer_addr: String,
}

/// Why a request's command and arguments do not form a command. `Display` is
/// the reason of the `ERR` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("usage: {}", .0.usage())]
    Usage(CommandKind),
    #[error("{arg} must be a non-negative integer, got {value:?}")]
    NotANumber { arg: &'static str, value: String },
}

impl TrackerCommand {
    /// Parses a request's command field and arguments (already unescaped).
    pub fn parse(name: &str, args: Vec<String>) -> Result<TrackerCommand, CommandError> {
        let kind =
            CommandKind::from_name(name).ok_or_else(|| CommandError::Unknown(name.to_string()))?;
        let optional = usize::from(kind == K::FileInfo || kind == K::AddSeeder);
        let n = kind.spec().args.len();
        if args.len() < n || args.len() > n + optional {
            return Err(CommandError::Usage(kind));
        }
        let mut args = args;
        let extra = if args.len() > n { args.pop() } else { None };
        let mut a = args.into_iter();
        let mut next = || a.next().unwrap_or_default();
        Ok(match kind {
            K::CreateUser => TrackerCommand::CreateUser {
                user: next(),
                password: next(),
            },
            K::Login => TrackerCommand::Login {
                user: next(),
                password: next(),
            },
            K::Whoami => TrackerCommand::Whoami,
            K::Logout => TrackerCommand::Logout,
            K::CreateGroup => TrackerCommand::CreateGroup { group: next() },
            K::JoinGroup => TrackerCommand::JoinGroup { group: next() },
            K::LeaveGroup => TrackerCommand::LeaveGroup { group: next() },
            K::ListGroups => TrackerCommand::ListGroups,
            K::ListRequests => TrackerCommand::ListRequests { group: next() },
            K::AcceptRequest => TrackerCommand::AcceptRequest {
                group: next(),
                user: next(),
            },
            K::RejectRequest => TrackerCommand::RejectRequest {
                group: next(),
                user: next(),
            },
            K::ListFiles => TrackerCommand::ListFiles { group: next() },
            K::UploadFile => TrackerCommand::UploadFile(Upload {
                group: next(),
                name: next(),
                size: number("size", next())?,
                piece_size: number("piece_size", next())?,
                file_sha1: next(),
                piece_hashes: next(),
                peer_addr: next(),
            }),
            K::FileInfo => TrackerCommand::FileInfo {
                group: next(),
                name: next(),
                key: extra,
            },
            K::AddSeeder => TrackerCommand::AddSeeder {
                group: next(),
                name: next(),
                file_sha1: next(),
                peer_addr: next(),
                partial: match extra.as_deref() {
                    None | Some(COMPLETE) => false,
                    Some(PARTIAL) => true,
                    Some(_) => return Err(CommandError::Usage(kind)),
                },
            },
            K::StopShare => TrackerCommand::StopShare {
                group: next(),
                name: next(),
            },
            K::Heartbeat => TrackerCommand::Heartbeat { peer_addr: next() },
        })
    }

    /// Which command this is.
    pub fn kind(&self) -> CommandKind {
        match self {
            TrackerCommand::CreateUser { .. } => K::CreateUser,
            TrackerCommand::Login { .. } => K::Login,
            TrackerCommand::Whoami => K::Whoami,
            TrackerCommand::Logout => K::Logout,
            TrackerCommand::CreateGroup { .. } => K::CreateGroup,
            TrackerCommand::JoinGroup { .. } => K::JoinGroup,
            TrackerCommand::LeaveGroup { .. } => K::LeaveGroup,
            TrackerCommand::ListGroups => K::ListGroups,
            TrackerCommand::ListRequests { .. } => K::ListRequests,
            TrackerCommand::AcceptRequest { .. } => K::AcceptRequest,
            TrackerCommand::RejectRequest { .. } => K::RejectRequest,
            TrackerCommand::ListFiles { .. } => K::ListFiles,
            TrackerCommand::UploadFile(_) => K::UploadFile,
            TrackerCommand::FileInfo { .. } => K::FileInfo,
            TrackerCommand::AddSeeder { .. } => K::AddSeeder,
            TrackerCommand::StopShare { .. } => K::StopShare,
            TrackerCommand::Heartbeat { .. } => K::Heartbeat,
        }
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The arguments in wire order (the inverse of [`TrackerCommand::parse`]).
    pub fn args(&self) -> Vec<String> {
        use TrackerCommand as C;
        let v = |fields: &[&String]| fields.iter().map(|s| s.to_string()).collect();
        match self {
            C::Whoami | C::Logout | C::ListGroups => Vec::new(),
            C::CreateUser { user, password } | C::Login { user, password } => v(&[user, password]),
            C::CreateGroup { group }
            | C::JoinGroup { group }
            | C::LeaveGroup { group }
            | C::ListRequests { group }
            | C::ListFiles { group } => v(&[group]),
            C::AcceptRequest { group, user } | C::RejectRequest { group, user } => {
                v(&[group, user])
            }
            C::FileInfo {
                group,
                name,
                key: Some(key),
            } => v(&[group, name, key]),
            C::FileInfo { group, name, .. } | C::StopShare { group, name } => v(&[group, name]),
            C::UploadFile(u) => vec![
                u.group.clone(),
                u.name.clone(),
                u.size.to_string(),
                u.piece_size.to_string(),
                u.file_sha1.clone(),
                u.piece_hashes.clone(),
                u.peer_addr.clone(),
            ],
            C::AddSeeder {
                group,
                name,
                file_sha1,
                peer_addr,
                partial,
            } => {
                let mut a: Vec<String> = v(&[group, name, file_sha1, peer_addr]);
                if *partial {
                    a.push(PARTIAL.to_string());
                }
                a
            }
            C::Heartbeat { peer_addr } => v(&[peer_addr]),
        }
    }

    /// The `peer_addr` argument of the commands that announce the client's peer
    /// server (`upload_file`, `add_seeder`, `heartbeat`).
    pub fn peer_addr_mut(&mut self) -> Option<&mut String> {
        match self {
            TrackerCommand::UploadFile(u) => Some(&mut u.peer_addr),
            TrackerCommand::AddSeeder { peer_addr, .. }
            | TrackerCommand::Heartbeat { peer_addr } => Some(peer_addr),
            _ => None,
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn number(arg: &'static str, value: String) -> Result<u64, CommandError> {
    value
        .parse::<u64>()
        .map_err(|_| CommandError::NotANumber { arg, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_kind_order_with_unique_names() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(spec.kind as usize, i, "{}", spec.name);
            assert_eq!(CommandKind::from_name(spec.name), Some(spec.kind));
        }
        assert_eq!(CommandKind::from_name("nope"), None);
    }

    /// Placeholder arguments that parse for every command.
    fn sample_args(kind: CommandKind) -> Vec<String> {
        kind.spec()
            .args
            .iter()
            .map(|a| match *a {
                "size" | "piece_size" => "7".to_string(),
                other => format!("{other} x"),
            })
            .collect()
    }

    #[test]
    fn every_command_round_trips_through_its_fields() {
        for spec in &COMMANDS {
            let args = sample_args(spec.kind);
            let cmd = TrackerCommand::parse(spec.name, args.clone()).unwrap();
            assert_eq!(cmd.kind(), spec.kind);
            assert_eq!(cmd.name(), spec.name);
            assert_eq!(cmd.args(), args, "{}", spec.name);
            assert_eq!(
                cmd.clone().peer_addr_mut().is_some(),
                spec.args.contains(&"peer_addr")
            );
        }
    }

    #[test]
    fn bad_commands_are_clear_errors() {
        assert_eq!(
            TrackerCommand::parse("frob", vec![])
                .unwrap_err()
                .to_string(),
            "unknown command \"frob\""
        );
        assert_eq!(
            TrackerCommand::parse("login", vec!["u".into()])
                .unwrap_err()
                .to_string(),
            "usage: login <user_id> <password>"
        );
        assert_eq!(
            TrackerCommand::parse("whoami", vec!["x".into()])
                .unwrap_err()
                .to_string(),
            "usage: whoami"
        );
        let mut args = sample_args(K::UploadFile);
        args[3] = "-1".into();
        assert_eq!(
            TrackerCommand::parse("upload_file", args)
                .unwrap_err()
                .to_string(),
            "piece_size must be a non-negative integer, got \"-1\""
        );
    }

    #[test]
    fn password_lines() {
        assert!(line_carries_password("login a b"));
        assert!(line_carries_password("  create_user a b"));
        assert!(!line_carries_password("create_group g"));
        assert!(!line_carries_password(""));
        let with_password: Vec<_> = COMMANDS
            .iter()
            .filter(|c| c.carries_password)
            .map(|c| c.kind)
            .collect();
        assert_eq!(with_password, [K::CreateUser, K::Login]);
    }
}
