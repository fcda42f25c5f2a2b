//! Two trackers started with one data dir share sync_log.txt: writes through each
//! are visible through the other, sessions fail over, and concurrent writes to
//! both leave a log in which every line is whole and checks out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use wire::tracker_msg::{Reply, ERR_SESSION};

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
        let fields: Vec<&str> = body.split(' ').collect();
        assert!(fields.len() >= 3, "entry {i} lacks its header: {line:?}");
        fields[0].parse::<u64>().unwrap();
        fields[1].parse::<u32>().unwrap();
    }
    entries
}

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
        out.extend(rows.into_iter().map(|r| r + "\n"));
    }
    out
}

fn two_trackers(dir: &Path) -> (TrackerProc, TrackerProc) {
    let data = dir.join("data");
    let info = write_tracker_info(dir, &[free_port(), free_port()]);
    let t1 = TrackerProc::start(&info, 1, &data);
    let t2 = TrackerProc::start(&info, 2, &data);
    (t1, t2)
}

/// Waits until `cond` holds; returns how long it took.
fn visible_within(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), &mut cond),
        "{what}: not visible within 5 s"
    );
    start.elapsed()
}

#[test]
fn writes_through_each_tracker_are_visible_through_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t1, mut t2) = two_trackers(dir.path());
    let mut c1 = t1.connect();
    let mut c2 = t2.connect();

    // A user created through tracker 1 logs in through tracker 2...
    c1.ok(None, "create_user", &["alice", "pw"]);
    let took = visible_within("user", || {
        matches!(
            c2.request(None, "login", &["alice", "pw"]),
            Reply::Ok { .. }
        )
    });
    // The watcher's period is 50 ms; allow for a loaded test machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // ...and a session issued by tracker 1 is accepted by tracker 2.
    let tok = c1.login("alice", "pw");
    visible_within("session", || {
        matches!(c2.request(Some(&tok), "whoami", &[]), Reply::Ok { .. })
    });

    // Writes through tracker 2 show up on tracker 1.
    c2.ok(Some(&tok), "create_group", &["g"]);
    let took = visible_within("group", || {
        c1.ok(Some(&tok), "list_groups", &[]).1.len() == 1
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let bob = c2.user("bob", "pw");
    visible_within("bob's session", || {
        matches!(c1.request(Some(&bob), "whoami", &[]), Reply::Ok { .. })
    });
    c1.ok(Some(&bob), "join_group", &["g"]);
    visible_within("request", || {
        c2.ok(Some(&tok), "list_requests", &["g"]).1.len() == 1
    });
    c2.ok(Some(&tok), "accept_request", &["g", "bob"]);
    visible_within("membership", || {
        matches!(
            c1.request(Some(&bob), "list_files", &["g"]),
            Reply::Ok { .. }
        )
    });

    // Causal consistency: a request sent after one tracker's success reply sees
    // that change on the other tracker at once, with no waiting.
    for i in 0..20 {
        let g = format!("rw {i}");
        let (writer, reader) = if i % 2 == 0 {
            (&mut c1, &mut c2)
        } else {
            (&mut c2, &mut c1)
        };
        writer.ok(Some(&tok), "create_group", &[&g]);
        let listed = reader.ok(Some(&tok), "list_groups", &[]).1;
        assert!(listed.iter().any(|r| r[0] == g), "{g} not seen at once");
    }

    // Conflicting writes are serialised by the log: the second one sees the first.
    c1.ok(Some(&bob), "create_group", &["h"]);
    assert!(c2
        .err(Some(&tok), "create_group", &["h"])
        .contains("already exists"));

    // Logout through one tracker ends the session on the other.
    c2.ok(Some(&bob), "logout", &[]);
    visible_within(
        "logout",
        || matches!(c1.request(Some(&bob), "whoami", &[]), Reply::Err(e) if e.starts_with(ERR_SESSION)),
    );

    quit(&mut t1);
    quit(&mut t2);
    let data = dir.path().join("data");
    assert_eq!(
        dump(&data.join("tracker1.db")),
        dump(&data.join("tracker2.db"))
    );
    check_log(&data.join("sync_log.txt"));
}

#[test]
fn concurrent_writes_to_both_trackers_leave_a_valid_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t1, mut t2) = two_trackers(dir.path());
    const THREADS: usize = 8;
    const GROUPS: usize = 120;
    const CONTESTED: usize = 40;
    let won: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut threads = Vec::new();
    for n in 0..THREADS {
        let addr = if n % 2 == 0 {
            t1.addr.clone()
        } else {
            t2.addr.clone()
        };
        let won = won.clone();
        threads.push(thread::spawn(move || {
            let mut c = TrackerConn::connect(&addr);
            let tok = c.user(&format!("user {n}"), "pw");
            for i in 0..GROUPS {
                c.ok(Some(&tok), "create_group", &[&format!("group {n}-{i} ünï")]);
                if i < CONTESTED {
                    // Every thread tries the same names through both trackers.
                    let name = format!("contested {i}");
                    if let Reply::Ok { .. } = c.request(Some(&tok), "create_group", &[&name]) {
                        *won.lock().unwrap().entry(name).or_default() += 1;
                    }
                }
            }
        }));
    }
    for th in threads {
        th.join().expect("client thread");
    }
    let won = won.lock().unwrap().clone();
    assert_eq!(won.len(), CONTESTED);
    assert!(
        won.values().all(|&n| n == 1),
        "a contested name was created twice: {won:?}"
    );

    let total = THREADS * GROUPS + CONTESTED;
    let mut c1 = t1.connect();
    let mut c2 = t2.connect();
    let tok = c1.login("user 0", "pw");
    visible_within("all groups on both trackers", || {
        c1.ok(Some(&tok), "list_groups", &[]).1.len() == total
            && c2.ok(Some(&tok), "list_groups", &[]).1.len() == total
    });
    quit(&mut t1);
    quit(&mut t2);

    let data = dir.path().join("data");
    let lines = check_log(&data.join("sync_log.txt"));
    // users + their logins + groups + the last login
    assert_eq!(lines.len(), THREADS * 2 + total + 1);
    let by = |no: &str| {
        lines
            .iter()
            .filter(|l| l.split(' ').nth(2) == Some(no))
            .count()
    };
    assert!(by("1") > 0 && by("2") > 0, "both trackers wrote");
    assert_eq!(
        dump(&data.join("tracker1.db")),
        dump(&data.join("tracker2.db"))
    );
}
