//! The tracker's durability: kill -9 under concurrent load loses no acknowledged
//! change and the cache equals a rebuild from the log; torn and corrupted log
//! tails are reported and cut; a restart replays only the log's tail.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{free_port, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use wire::tracker_msg::{Reply, Request};

/// Asks the tracker to stop with `quit` on stdin and waits (bounded) for it to exit.
fn quit(t: &mut TrackerProc) {
    use std::io::Write;
    let stdin = t.stdin.as_mut().expect("tracker stdin");
    stdin.write_all(b"quit\n").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = t.child.try_wait() {
            assert!(status.success(), "tracker exited with {status}");
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("tracker did not stop on quit");
}

/// CRC-32 (IEEE, reflected), as the sync log uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Checks the version line and every entry's checksum; returns the entry lines.
fn check_log(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "log ends mid-line");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("swarmshare-sync-log v1"));
    let entries: Vec<String> = lines.map(str::to_string).collect();
    for (i, line) in entries.iter().enumerate() {
        let (crc, body) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("line {i}: {line:?}"));
        assert_eq!(
            u32::from_str_radix(crc, 16).ok(),
            Some(crc32(body.as_bytes())),
            "bad checksum on entry {i}: {line:?}"
        );
    }
    entries
}

/// Every state table of a tracker cache, as sorted text.
fn dump(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut out = String::new();
    for table in [
        "users",
        "sessions",
        "groups",
        "group_members",
        "join_requests",
        "files",
        "file_seeders",
    ] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut s = table.to_string();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    s.push_str(&format!(" {v:?}"));
                }
                Ok(s)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

fn column(db: &Path, sql: &str) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let v = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

/// The numbers of the `replayed K log lines from offset O (cache had L lines)` line.
fn replayed(t: &TrackerProc) -> (u64, u64, u64) {
    let line = t
        .stderr
        .wait_for("the replay report", WAIT, |l| l.contains("replayed "));
    let nums: Vec<u64> = line
        .split("replayed ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{line}");
    (nums[0], nums[1], nums[2])
}

fn try_request(
    c: &mut TrackerConn,
    token: Option<&str>,
    cmd: &str,
    args: &[&str],
) -> std::io::Result<Reply> {
    c.send_raw(&Request::new(token, cmd, args).encode())?;
    c.read_reply()
}

#[test]
fn kill9_under_concurrent_load_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let mut t = TrackerProc::start(&info, 1, &data);
    let acked_users = Arc::new(Mutex::new(Vec::new()));
    let acked_groups = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for n in 0..8 {
        let addr = t.addr.clone();
        let (users, groups) = (acked_users.clone(), acked_groups.clone());
        threads.push(thread::spawn(move || {
            let mut c = TrackerConn::connect(&addr);
            let me = format!("owner {n}");
            let tok = c.user(&me, "pw");
            users.lock().unwrap().push(me);
            for i in 0..100_000 {
                let user = format!("user {n}-{i}");
                match try_request(&mut c, None, "create_user", &[&user, "pw"]) {
                    Ok(Reply::Ok { .. }) => users.lock().unwrap().push(user),
                    Ok(Reply::Err(e)) => panic!("create_user failed: {e}"),
                    Err(_) => return i,
                }
                let group = format!("group {n}-{i}");
                match try_request(&mut c, Some(&tok), "create_group", &[&group]) {
                    Ok(Reply::Ok { .. }) => groups.lock().unwrap().push(group),
                    Ok(Reply::Err(e)) => panic!("create_group failed: {e}"),
                    Err(_) => return i,
                }
            }
            100_000
        }));
    }
    // Let the load run, then kill -9 in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked_groups.lock().unwrap().len() < 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    t.kill9();
    for th in threads {
        th.join().expect("client thread");
    }
    let users = acked_users.lock().unwrap().clone();
    let groups = acked_groups.lock().unwrap().clone();
    assert!(
        groups.len() >= 100,
        "too little load before the kill: {}",
        groups.len()
    );

    t.restart();
    let (_, _, _) = replayed(&t);
    // Acknowledged changes are there through the protocol...
    let mut c = t.connect();
    let tok = c.login("owner 3", "pw");
    let listed: Vec<String> = c
        .ok(Some(&tok), "list_groups", &[])
        .1
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for g in &groups {
        assert!(listed.contains(g), "acknowledged group {g:?} lost");
    }
    c.login(users.last().unwrap(), "pw");
    quit(&mut t);

    // ...and in the cache.
    let db = data.join("tracker1.db");
    let in_db = column(&db, "SELECT user_id FROM users");
    for u in &users {
        assert!(in_db.contains(u), "acknowledged user {u:?} lost");
    }
    let lines = check_log(&data.join("sync_log.txt"));
    assert!(lines.len() >= users.len() + groups.len());

    // The cache equals a rebuild from the log alone.
    let data2 = dir.path().join("rebuild");
    std::fs::create_dir_all(&data2).unwrap();
    std::fs::copy(data.join("sync_log.txt"), data2.join("sync_log.txt")).unwrap();
    let info2 = write_tracker_info(&data2, &[free_port()]);
    let mut t2 = TrackerProc::start(&info2, 1, &data2);
    let (k, _, had) = replayed(&t2);
    assert_eq!((k, had), (lines.len() as u64, 0));
    quit(&mut t2);
    assert_eq!(dump(&db), dump(&data2.join("tracker1.db")));
}

#[test]
fn restart_replays_only_the_tail_and_a_deleted_cache_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);

    let mut t1 = TrackerProc::start(&info, 1, &data);
    assert_eq!(replayed(&t1).0, 0);
    let mut c = t1.connect();
    let tok = c.user("alice", "pw"); // 2 lines
    c.ok(Some(&tok), "create_group", &["g"]); // 1 line
    quit(&mut t1);

    let mut t1 = TrackerProc::start(&info, 1, &data);
    let (k, offset, had) = replayed(&t1);
    assert_eq!((k, had), (0, 3), "a clean restart replays nothing");
    assert!(offset > 23);
    quit(&mut t1);

    // Tracker 2 shares the log and appends two lines while tracker 1 is down.
    let mut t2 = TrackerProc::start(&info, 2, &data);
    assert_eq!(replayed(&t2), (3, 23, 0));
    let mut c = t2.connect();
    c.ok(Some(&tok), "create_group", &["h"]);
    c.ok(None, "create_user", &["bob", "pw"]);
    quit(&mut t2);

    let mut t1 = TrackerProc::start(&info, 1, &data);
    assert_eq!(replayed(&t1), (2, offset, 3), "only the tail is replayed");
    let mut c = t1.connect();
    assert_eq!(c.ok(Some(&tok), "list_groups", &[]).1.len(), 2);
    quit(&mut t1);
    let before = dump(&data.join("tracker1.db"));

    std::fs::remove_file(data.join("tracker1.db")).unwrap();
    let mut t1 = TrackerProc::start(&info, 1, &data);
    assert_eq!(
        replayed(&t1),
        (5, 23, 0),
        "a deleted cache is rebuilt from the log"
    );
    let mut c = t1.connect();
    assert_eq!(c.ok(Some(&tok), "whoami", &[]).0, vec!["alice".to_string()]);
    quit(&mut t1);
    assert_eq!(dump(&data.join("tracker1.db")), before);
}

/// Starts a tracker, creates users a, b, c (one log line each), stops it.
fn three_users(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let info = write_tracker_info(dir, &[free_port()]);
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    for u in ["a", "b", "c"] {
        c.ok(None, "create_user", &[u, "pw"]);
    }
    quit(&mut t);
    assert_eq!(check_log(&data.join("sync_log.txt")).len(), 3);
    (info, data)
}

fn corrupt_files(data: &Path) -> usize {
    std::fs::read_dir(data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("sync_log.txt.corrupt-")
        })
        .count()
}

#[test]
fn torn_last_line_is_reported_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (info, data) = three_users(dir.path());
    let log = data.join("sync_log.txt");
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);

    let mut t = TrackerProc::start(&info, 1, &data);
    t.stderr.wait_for("a torn-line warning", WAIT, |l| {
        l.contains("incomplete last line")
    });
    let mut c = t.connect();
    c.login("a", "pw");
    c.login("b", "pw");
    assert!(c
        .err(None, "login", &["c", "pw"])
        .starts_with("no such user"));
    // It keeps working, and the log is whole again.
    c.ok(None, "create_user", &["c", "pw2"]);
    c.login("c", "pw2");
    quit(&mut t);
    // a, b, their logins, c again and its login.
    assert_eq!(check_log(&log).len(), 6);
    assert_eq!(corrupt_files(&data), 1);
}

#[test]
fn corrupted_byte_is_reported_and_the_valid_prefix_served() {
    let dir = tempfile::tempdir().unwrap();
    let (info, data) = three_users(dir.path());
    let log = data.join("sync_log.txt");
    let mut bytes = std::fs::read(&log).unwrap();
    // Flip one byte inside the second entry (user b's line).
    let second = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    bytes[second + 30] ^= 0x04;
    std::fs::write(&log, &bytes).unwrap();

    let mut t = TrackerProc::start(&info, 1, &data);
    t.stderr.wait_for("a corruption warning", WAIT, |l| {
        l.contains("invalid line at offset")
    });
    let mut c = t.connect();
    c.login("a", "pw");
    assert!(c
        .err(None, "login", &["b", "pw"])
        .starts_with("no such user"));
    assert!(c
        .err(None, "login", &["c", "pw"])
        .starts_with("no such user"));
    c.ok(None, "create_user", &["b", "pw"]);
    quit(&mut t);
    // a, a's login, b again.
    assert_eq!(check_log(&log).len(), 3);
    assert_eq!(corrupt_files(&data), 1);
}
