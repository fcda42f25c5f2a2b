//! The tracker's durability: kill -9 under concurrent load loses no acknowledged
//! change and the cache equals a rebuild from the log; torn and corrupted log
//! tails are reported and cut; a restart replays only the log's tail.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::tracker_state::{check_log, dump, open_read_only};
use harness::{free_port, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use wire::tracker_msg::{Reply, Request};

fn column(db: &Path, sql: &str) -> Vec<String> {
    let conn = open_read_only(db);
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
    t.quit_ok();

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
    t2.quit_ok();
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
    t1.quit_ok();

    let mut t1 = TrackerProc::start(&info, 1, &data);
    let (k, offset, had) = replayed(&t1);
    assert_eq!((k, had), (0, 3), "a clean restart replays nothing");
    assert!(offset > 23);
    t1.quit_ok();

    // Tracker 2 shares the log and appends two lines while tracker 1 is down.
    let mut t2 = TrackerProc::start(&info, 2, &data);
    assert_eq!(replayed(&t2), (3, 23, 0));
    let mut c = t2.connect();
    c.ok(Some(&tok), "create_group", &["h"]);
    c.ok(None, "create_user", &["bob", "pw"]);
    t2.quit_ok();

    let mut t1 = TrackerProc::start(&info, 1, &data);
    assert_eq!(replayed(&t1), (2, offset, 3), "only the tail is replayed");
    let mut c = t1.connect();
    assert_eq!(c.ok(Some(&tok), "list_groups", &[]).1.len(), 2);
    t1.quit_ok();
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
    t1.quit_ok();
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
    t.quit_ok();
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
    t.quit_ok();
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
    t.quit_ok();
    // a, a's login, b again.
    assert_eq!(check_log(&log).len(), 3);
    assert_eq!(corrupt_files(&data), 1);
}
