//! What a tracker leaves on disk, read back for assertions: its SQLite cache
//! (`trackerN.db`) as comparable text, and the shared write-ahead log
//! (`sync_log.txt`) checked line by line.
//!
//! Both go through the tracker library itself ([`tracker::store::dump`],
//! [`tracker::sync_log`]'s parser), so no format has a second home here.
//!
//! The cache is opened read-only, so these can run while the tracker does (it
//! keeps the database in WAL mode).

use std::collections::BTreeMap;
use std::path::Path;

pub use tracker::store::STATE_TABLES;
use tracker::sync_log::Base;
pub use tracker::sync_log::{Header, LogEntry};

/// Opens a tracker cache read-only.
pub fn open_read_only(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()))
}

/// Every row of each of `tables` in the cache at `db`: table name -> its rows
/// as [`tracker::store::table_rows`] gives them (sorted text). Two caches hold
/// the same rows exactly when these are equal.
pub fn table_rows(db: &Path, tables: &[&str]) -> BTreeMap<String, Vec<String>> {
    let conn = open_read_only(db);
    tables
        .iter()
        .map(|&t| {
            let rows = tracker::store::table_rows(&conn, t)
                .unwrap_or_else(|e| panic!("rows of {t} in {}: {e}", db.display()));
            (t.to_string(), rows)
        })
        .collect()
}

/// The state tables of the cache at `db` as one text ([`tracker::store::dump`]):
/// equal dumps, equal state.
pub fn dump(db: &Path) -> String {
    tracker::store::dump(&open_read_only(db))
        .unwrap_or_else(|e| panic!("dump {}: {e}", db.display()))
}

/// Checks the log at `path` with the tracker's own parser: it starts with a v2
/// version line, ends with a whole line, every entry decodes (checksum and
/// fields) and the entries are numbered 1, 2, 3, ... (or on from a compacted
/// log's base). Returns the entry lines as text, without their newlines.
pub fn check_log(path: &Path) -> Vec<String> {
    let (lines, _) = read_log(path);
    lines
}

/// [`check_log`], also returning the decoded entries.
pub fn read_log(path: &Path) -> (Vec<String>, Vec<LogEntry>) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_log(&text)
}

/// Where a log whose version line is `head` starts in the history (a v2 line,
/// or the test fails).
pub fn version_base(head: &str) -> Base {
    match Header::parse(head.as_bytes()) {
        Some(Header::V2(_, base)) => base,
        other => panic!("version line {head:?}: {other:?}"),
    }
}

/// [`read_log`] of a log already read: every line checks out and is numbered
/// next after the version line's base.
pub fn parse_log(text: &str) -> (Vec<String>, Vec<LogEntry>) {
    assert!(text.ends_with('\n'), "log ends mid-line");
    let mut lines = text.lines();
    let before = version_base(lines.next().unwrap_or_default()).lines;
    let mut texts = Vec::new();
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let (seq, entry) = LogEntry::decode(line.as_bytes())
            .unwrap_or_else(|e| panic!("entry {i} does not check out ({e}): {line:?}"));
        let want = before + i as u64 + 1;
        assert_eq!(seq, want, "entry {i} out of sequence: {line:?}");
        texts.push(line.to_string());
        entries.push(entry);
    }
    (texts, entries)
}

/// How a tracker run that ends by itself ended: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Exited {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs tracker `no` of `info` on `data_dir` with `extra` arguments until it
/// exits by itself (a start that must fail, `--verify-log`, `--salvage-log`);
/// panics if it has not exited within [`crate::WAIT`] (it is killed by PID first).
pub fn run_tracker_to_exit(info: &Path, no: usize, data_dir: &Path, extra: &[&str]) -> Exited {
    use std::process::{Command, Stdio};
    let child = Command::new(crate::bin_path("tracker"))
        .arg(info)
        .arg(no.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tracker");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(crate::WAIT) {
        Ok(Ok(out)) => Exited {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        other => {
            // SAFETY: kill(2) on the PID of the child this function started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!(
                "tracker {extra:?} did not exit within {:?}: {other:?}",
                crate::WAIT
            )
        }
    }
}

/// The names of the files in `dir` that start with `prefix`, sorted.
pub fn files_starting_with(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

/// Byte offsets where the entry lines of the log at `path` start (after the
/// version line), for tests that damage a chosen line.
pub fn entry_line_starts(path: &Path) -> Vec<usize> {
    line_starts(&std::fs::read(path).unwrap())
}

/// [`entry_line_starts`] of a log already read.
pub fn line_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    starts.pop(); // the end of the file
    starts
}
