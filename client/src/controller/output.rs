//! The texts the controller prints (see the table in [`crate::shell`]) and the
//! tracker requests it builds from commands. Pure functions.

use std::fmt::Display;
use std::path::Path;

use wire::file_meta::FileMeta;

use crate::shell::{count, Command};
use crate::tracker_link::LinkRequest;

/// `error: <reason>`.
pub fn error(reason: impl Display) -> String {
    format!("error: {reason}")
}

/// The request of a command that is one plain tracker request.
pub fn request_for(cmd: &Command) -> LinkRequest {
    match cmd {
        Command::CreateUser { user, password } => {
            LinkRequest::new("create_user", &[user, password])
        }
        Command::Login { user, password } => LinkRequest::new("login", &[user, password]),
        Command::Logout => LinkRequest::new("logout", &[]),
        Command::CreateGroup { group } => LinkRequest::new("create_group", &[group]),
        Command::JoinGroup { group } => LinkRequest::new("join_group", &[group]),
        Command::LeaveGroup { group } => LinkRequest::new("leave_group", &[group]),
        Command::ListGroups => LinkRequest::new("list_groups", &[]),
        Command::ListRequests { group } => LinkRequest::new("list_requests", &[group]),
        Command::AcceptRequest { group, user } => {
            LinkRequest::new("accept_request", &[group, user])
        }
        Command::RejectRequest { group, user } => {
            LinkRequest::new("reject_request", &[group, user])
        }
        Command::ListFiles { group } => LinkRequest::new("list_files", &[group]),
        Command::StopShare { group, name } => LinkRequest::new("stop_share", &[group, name]),
        Command::UploadFile { .. }
        | Command::DownloadFile { .. }
        | Command::ShowDownloads
        | Command::Help
        | Command::Quit => unreachable!("{cmd:?} is not one plain tracker request"),
    }
}

/// `heartbeat <peer_addr>`.
pub fn heartbeat_request() -> LinkRequest {
    LinkRequest::new("heartbeat", &[]).with_peer_addr()
}

/// `add_seeder <group> <name> <file_sha1> <peer_addr>`.
pub fn add_seeder_request(group: &str, name: &str, file_sha1: &str) -> LinkRequest {
    LinkRequest::new("add_seeder", &[group, name, file_sha1]).with_peer_addr()
}

/// `file_info <group> <name>`.
pub fn file_info_request(group: &str, name: &str) -> LinkRequest {
    LinkRequest::new("file_info", &[group, name])
}

/// `upload_file <group> <name> <size> <piece_size> <sha1> <piece_hashes> <peer_addr>`.
pub fn upload_request(group: &str, meta: &FileMeta) -> LinkRequest {
    LinkRequest::new(
        "upload_file",
        &[
            group,
            &meta.name,
            &meta.size.to_string(),
            &meta.piece_size.to_string(),
            &meta.file_sha1_hex(),
            &meta.piece_hashes_hex(),
        ],
    )
    .with_peer_addr()
}

/// The lines a successful tracker command prints; `rows` are the reply's rows.
pub fn success(cmd: Command, rows: &[Vec<String>]) -> Vec<String> {
    match cmd {
        Command::CreateUser { user, .. } => vec![format!("user {user} created")],
        Command::Login { user, .. } => vec![format!("logged in as {user}")],
        Command::Logout => vec!["logged out".into()],
        Command::CreateGroup { group } => vec![format!("group {group} created")],
        Command::JoinGroup { group } => vec![format!("join request sent to {group}")],
        Command::LeaveGroup { group } => vec![format!("left group {group}")],
        Command::AcceptRequest { group, user } => vec![format!("{user} accepted into {group}")],
        Command::RejectRequest { group, user } => {
            vec![format!("request of {user} to join {group} rejected")]
        }
        Command::StopShare { group, name } => vec![format!("stopped sharing {name} in {group}")],
        Command::ListGroups => list_groups(rows),
        Command::ListRequests { group } => list_requests(&group, rows),
        Command::ListFiles { group } => list_files(&group, rows),
        other => {
            log::warn!("no output defined for {other:?}");
            vec!["ok".into()]
        }
    }
}

fn list_groups(rows: &[Vec<String>]) -> Vec<String> {
    let mut lines = vec![count(rows.len(), "group", "groups")];
    lines.extend(rows.iter().map(|r| {
        format!(
            "  {}  owner={}  members={}  [{}]",
            field(r, 0),
            field(r, 1),
            field(r, 2),
            field(r, 3)
        )
    }));
    lines
}

fn list_requests(group: &str, rows: &[Vec<String>]) -> Vec<String> {
    let mut lines = vec![format!(
        "{} for {group}",
        count(rows.len(), "pending request", "pending requests")
    )];
    lines.extend(rows.iter().map(|r| format!("  {}", field(r, 0))));
    lines
}

fn list_files(group: &str, rows: &[Vec<String>]) -> Vec<String> {
    let mut lines = vec![format!("{} in {group}", count(rows.len(), "file", "files"))];
    lines.extend(rows.iter().map(|r| {
        let seeders: usize = field(r, 2).parse().unwrap_or(0);
        format!(
            "  {}  {} bytes  {}",
            field(r, 0),
            field(r, 1),
            count(seeders, "seeder", "seeders")
        )
    }));
    lines
}

/// `show_downloads`: a count line, then one status line per download.
pub fn downloads(status: Vec<String>) -> Vec<String> {
    let mut lines = vec![count(status.len(), "download", "downloads")];
    lines.extend(status);
    lines
}

/// `upload_file`'s success line.
pub fn uploaded(group: &str, meta: &FileMeta) -> String {
    format!(
        "uploaded {} to {} ({} bytes, {})",
        meta.name,
        group,
        meta.size,
        count(meta.piece_count(), "piece", "pieces")
    )
}

/// `download_file`'s success line.
pub fn downloading(group: &str, name: &str, dest: &Path) -> String {
    format!("downloading {name} from {group} to {}", dest.display())
}

/// Field `i` of a row, or empty.
fn field(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}
