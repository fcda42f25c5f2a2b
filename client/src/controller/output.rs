//! The texts the controller prints (see the table in [`crate::shell`]) and the
//! tracker requests it builds from commands. Pure functions.

use std::fmt::Display;
use std::path::Path;

use wire::file_meta::FileMeta;

use wire::command::{TrackerCommand, Upload};

use crate::limits::format_limit;
use crate::shell::count;
use crate::tracker_link::LinkRequest;

/// `error: <reason>`.
pub fn error(reason: impl Display) -> String {
    format!("error: {reason}")
}

/// `heartbeat <peer_addr>` (the link fills in the peer address).
pub fn heartbeat_request() -> LinkRequest {
    LinkRequest::new(TrackerCommand::Heartbeat {
        peer_addr: String::new(),
    })
}

/// `add_seeder <group> <name> <file_sha1> <peer_addr> [partial]`.
pub fn add_seeder_request(group: &str, name: &str, file_sha1: &str, partial: bool) -> LinkRequest {
    LinkRequest::new(TrackerCommand::AddSeeder {
        group: group.to_string(),
        name: name.to_string(),
        file_sha1: file_sha1.to_string(),
        peer_addr: String::new(),
        partial,
    })
}

/// `stop_share <group> <name>`.
pub fn stop_share_request(group: &str, name: &str) -> LinkRequest {
    LinkRequest::new(TrackerCommand::StopShare {
        group: group.to_string(),
        name: name.to_string(),
    })
}

/// `file_info <group> <name> <key>`: `key` is this process's ticket public
/// key (hex), which the ticket in the answer is bound to.
pub fn file_info_request(group: &str, name: &str, key: &str) -> LinkRequest {
    LinkRequest::new(TrackerCommand::FileInfo {
        group: group.to_string(),
        name: name.to_string(),
        key: Some(key.to_string()),
    })
}

/// `upload_file` with the file's metadata (the link fills in the peer address).
pub fn upload_request(group: &str, meta: &FileMeta) -> LinkRequest {
    LinkRequest::new(TrackerCommand::UploadFile(Upload {
        group: group.to_string(),
        name: meta.name.clone(),
        size: meta.size,
        piece_size: meta.piece_size,
        file_sha1: meta.file_sha1_hex(),
        piece_hashes: meta.piece_hashes_hex(),
        peer_addr: String::new(),
    }))
}

/// The lines a successful tracker command prints; `rows` are the reply's rows.
pub fn success(cmd: TrackerCommand, rows: &[Vec<String>]) -> Vec<String> {
    use TrackerCommand as C;
    match cmd {
        C::CreateUser { user, .. } => vec![format!("user {user} created")],
        C::Login { user, .. } => vec![format!("logged in as {user}")],
        C::Logout => vec!["logged out".into()],
        C::CreateGroup { group } => vec![format!("group {group} created")],
        C::JoinGroup { group } => vec![format!("join request sent to {group}")],
        C::LeaveGroup { group } => vec![format!("left group {group}")],
        C::AcceptRequest { group, user } => vec![format!("{user} accepted into {group}")],
        C::RejectRequest { group, user } => {
            vec![format!("request of {user} to join {group} rejected")]
        }
        C::StopShare { group, name } => vec![format!("stopped sharing {name} in {group}")],
        C::ListGroups => list_groups(rows),
        C::ListRequests { group } => list_requests(&group, rows),
        C::ListFiles { group } => list_files(&group, rows),
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
        let partials: usize = field(r, 3).parse().unwrap_or(0);
        let mut line = format!(
            "  {}  {} bytes  {}",
            field(r, 0),
            field(r, 1),
            count(seeders, "seeder", "seeders")
        );
        if partials > 0 {
            let partials = count(partials, "partial seeder", "partial seeders");
            line.push_str(&format!("  {partials}"));
        }
        line
    }));
    lines
}

/// `show_downloads`: a count line, then one status line per download.
pub fn downloads(status: Vec<String>) -> Vec<String> {
    let mut lines = vec![count(status.len(), "download", "downloads")];
    lines.extend(status);
    lines
}

/// `rate_limit`'s line: `rate limits: up 40M, down unlimited`.
pub fn rate_limits(up: u64, down: u64) -> String {
    format!(
        "rate limits: up {}, down {}",
        format_limit(up),
        format_limit(down)
    )
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
