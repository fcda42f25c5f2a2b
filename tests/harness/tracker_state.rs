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
pub use tracker::sync_log::LogEntry;

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

/// Checks the log at `path` with the tracker's own parser: it starts with the
/// version line, ends with a whole line, and every entry decodes (checksum and
/// fields). Returns the entry lines as text, without their newlines.
pub fn check_log(path: &Path) -> Vec<String> {
    let (lines, _) = read_log(path);
    lines
}

/// [`check_log`], also returning the decoded entries.
pub fn read_log(path: &Path) -> (Vec<String>, Vec<LogEntry>) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(text.ends_with('\n'), "log ends mid-line");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(tracker::sync_log::VERSION_LINE));
    let mut texts = Vec::new();
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let entry = LogEntry::decode(line.as_bytes())
            .unwrap_or_else(|e| panic!("entry {i} does not check out ({e}): {line:?}"));
        texts.push(line.to_string());
        entries.push(entry);
    }
    (texts, entries)
}
