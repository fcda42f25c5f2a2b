//! What a tracker leaves on disk, read back for assertions: its SQLite cache
//! (`trackerN.db`) as comparable text, and the shared write-ahead log
//! (`sync_log.txt`) with its version line and every entry's checksum checked.
//!
//! The cache is opened read-only, so these can run while the tracker does (it
//! keeps the database in WAL mode).

use std::collections::BTreeMap;
use std::path::Path;

/// The cache tables that hold the tracker's state; `applied_log` (how much of
/// the log the cache has applied) is bookkeeping and not among them.
pub const STATE_TABLES: [&str; 7] = [
    "users",
    "sessions",
    "groups",
    "group_members",
    "join_requests",
    "files",
    "file_seeders",
];

/// The first line of every sync log.
pub const LOG_VERSION_LINE: &str = "swarmshare-sync-log v1";

/// Opens a tracker cache read-only.
pub fn open_read_only(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()))
}

/// Every row of each of `tables` in the cache at `db`: table name -> its rows,
/// each row its values' `Debug` forms joined by spaces, the rows sorted. Two
/// caches hold the same rows exactly when these are equal.
pub fn table_rows(db: &Path, tables: &[&str]) -> BTreeMap<String, Vec<String>> {
    let conn = open_read_only(db);
    let mut out = BTreeMap::new();
    for &table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut cols = Vec::with_capacity(n);
                for c in 0..n {
                    let v: rusqlite::types::Value = r.get(c)?;
                    cols.push(format!("{v:?}"));
                }
                Ok(cols.join(" "))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(table.to_string(), rows);
    }
    out
}

/// The [`STATE_TABLES`] of the cache at `db` as one text, a line `table v1 v2 ...`
/// per row, table by table, rows sorted: equal dumps, equal state.
pub fn dump(db: &Path) -> String {
    let mut rows = table_rows(db, &STATE_TABLES);
    let mut out = String::new();
    for table in STATE_TABLES {
        for r in rows.remove(table).unwrap_or_default() {
            out.push_str(&format!("{table} {r}\n"));
        }
    }
    out
}

/// Checks the log at `path`: it ends with a whole line, starts with
/// [`LOG_VERSION_LINE`], and every entry `<crc32 hex> <body>` carries the CRC-32
/// (IEEE) of its body. Returns the entry lines.
pub fn check_log(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "log ends mid-line");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(LOG_VERSION_LINE));
    let entries: Vec<String> = lines.map(str::to_string).collect();
    for (i, line) in entries.iter().enumerate() {
        let (crc, body) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("line {i}: {line:?}"));
        assert_eq!(
            u32::from_str_radix(crc, 16).ok(),
            Some(crc32fast::hash(body.as_bytes())),
            "bad checksum on entry {i}: {line:?}"
        );
    }
    entries
}

/// Checks that every entry (as [`check_log`] returns them) has its header after
/// the checksum: a numeric timestamp, a tracker number, and an operation.
pub fn check_entry_headers(entries: &[String]) {
    for (i, line) in entries.iter().enumerate() {
        let body = line.split_once(' ').map_or("", |(_, body)| body);
        let fields: Vec<&str> = body.split(' ').collect();
        assert!(fields.len() >= 3, "entry {i} lacks its header: {line:?}");
        fields[0].parse::<u64>().unwrap();
        fields[1].parse::<u32>().unwrap();
    }
}
