//! The tracker's durability: kill -9 under concurrent load loses no acknowledged
//! change and the cache equals a rebuild from the log; a torn log tail is
//! reported, saved and cut, while damage inside the log (a flipped byte, a
//! deleted or swapped line) stops the tracker with the line named and cuts
//! nothing; `--verify-log` and `--salvage-log` on a damaged log; a v1 log is
//! upgraded; a restart replays only the log's tail.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::tracker_state::{
    check_log, dump, entry_line_starts, files_starting_with, open_read_only, run_tracker_to_exit,
};
use harness::{free_port, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use tracker::sync_log::{Generation, FIRST_ENTRY, LOG_FILE, V1_LINE};
use wire::tracker_msg::{Reply, Request, ERR_SESSION};

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
                // A new user every 8th turn: argon2 (19 MiB, t=2, two pool
                // threads) would otherwise pace the whole load.
                let user = format!("user {n}-{i}");
                match (i % 8 == 0).then(|| try_request(&mut c, None, "create_user", &[&user, "pw"]))
                {
                    None => {}
                    Some(Ok(Reply::Ok { .. })) => users.lock().unwrap().push(user),
                    Some(Ok(Reply::Err(e))) => panic!("create_user failed: {e}"),
                    Some(Err(_)) => return i,
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
    assert!(offset > FIRST_ENTRY);
    t1.quit_ok();

    // Tracker 2 shares the log and appends two lines while tracker 1 is down.
    let mut t2 = TrackerProc::start(&info, 2, &data);
    assert_eq!(replayed(&t2), (3, FIRST_ENTRY, 0));
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
        (5, FIRST_ENTRY, 0),
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
    files_starting_with(data, "sync_log.txt.corrupt-").len()
}

/// Line 4 of [`three_users`]' log, as a tracker would append it: user `d`.
fn fourth_line() -> String {
    let entry = tracker::sync_log::LogEntry {
        ms: 1,
        tracker: 1,
        request_id: Some("r-4".into()),
        op: tracker::sync_log::Op::CreateUser {
            user: "d".into(),
            password_hash: tracker::auth::hash_password("pw").unwrap(),
        },
    };
    entry.encode(4)
}

#[test]
fn torn_last_line_is_reported_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (info, data) = three_users(dir.path());
    let log = data.join(LOG_FILE);
    let whole = std::fs::read(&log).unwrap();
    // An append that crashed: part of line 4 without its newline, or all of it
    // with a byte that never made it to disk.
    let line = fourth_line().into_bytes();
    let mut bad = line.clone();
    bad[30] ^= 0x10;
    for (tail, why) in [
        (line[..25].to_vec(), "incomplete last line"),
        (bad, "checksum mismatch"),
    ] {
        let mut torn = whole.clone();
        torn.extend_from_slice(&tail);
        std::fs::write(&log, &torn).unwrap();

        let mut t = TrackerProc::start(&info, 1, &data);
        t.stderr.wait_for("a torn-line warning", WAIT, |l| {
            l.contains("cut a torn tail") && l.contains(why)
        });
        let mut c = t.connect();
        for u in ["a", "b", "c"] {
            c.login(u, "pw");
        }
        // d was created with "pw" in the cut tail: its login fails, so d is gone.
        assert_eq!(
            c.err(None, "login", &["d", "pw"]),
            tracker::commands::LOGIN_FAILED
        );
        t.quit_ok();
        // The tail is saved aside; the log holds a, b, c and their logins.
        let saved = files_starting_with(&data, "sync_log.txt.corrupt-");
        assert_eq!(saved.len(), 1);
        assert_eq!(std::fs::read(&saved[0]).unwrap(), tail);
        std::fs::remove_file(&saved[0]).unwrap();
        assert!(std::fs::read(&log).unwrap().starts_with(&whole));
        assert_eq!(check_log(&log).len(), 6);
        std::fs::write(&log, &whole).unwrap();
        std::fs::remove_file(data.join("tracker1.db")).unwrap();
    }

    // A cut into lines the cache applied is not a torn append: refused.
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    let t = TrackerProc::start(&info, 1, &data);
    drop(t);
    f.set_len(whole.len() as u64 - 10).unwrap();
    let out = run_tracker_to_exit(&info, 1, &data, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("it shrank"), "{}", out.stderr);
    assert_eq!(corrupt_files(&data), 0);
}

/// A start that must fail on a damaged log: exit code 1, one error naming the
/// line and offset and the operator's tools, the log byte for byte as it was.
fn start_is_refused(info: &Path, data: &Path, line: u64, offset: usize, what: &str) {
    let log = data.join(LOG_FILE);
    let before = std::fs::read(&log).unwrap();
    let out = run_tracker_to_exit(info, 1, data, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let err = out
        .stderr
        .lines()
        .find(|l| l.starts_with("tracker: error:"))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    for want in [
        &format!("line {line} (byte offset {offset})"),
        what,
        "--verify-log",
        "--salvage-log",
        "Nothing was cut",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert_eq!(std::fs::read(&log).unwrap(), before, "the log was changed");
    assert_eq!(corrupt_files(data), 0);
}

#[test]
fn a_corrupted_byte_mid_log_refuses_start_cuts_nothing_and_can_be_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let (info, data) = three_users(dir.path());
    let log = data.join(LOG_FILE);
    let mut bytes = std::fs::read(&log).unwrap();
    // Flip one byte inside the second entry (user b's line, line 3 of the file).
    let second = entry_line_starts(&log)[1];
    bytes[second + 30] ^= 0x04;
    std::fs::write(&log, &bytes).unwrap();

    // With the cache (which applied the line) and without it (full parse).
    start_is_refused(&info, &data, 3, second, "checksum mismatch");
    std::fs::rename(data.join("tracker1.db"), dir.path().join("cache.db")).unwrap();
    start_is_refused(&info, &data, 3, second, "Good lines follow it");

    // --verify-log names exactly that line and exits 1.
    let v = run_tracker_to_exit(&info, 1, &data, &["--verify-log"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(
        v.stdout.contains(&format!("line 3 (byte offset {second})")),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains("1 bad line(s), 2 entries check out"),
        "{}",
        v.stdout
    );

    // Salvage keeps a and c, keeps the original, reports b's line.
    let s = run_tracker_to_exit(&info, 1, &data, &["--salvage-log"]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(
        s.stdout.contains("2 entries kept, 1 dropped"),
        "{}",
        s.stdout
    );
    let damaged = files_starting_with(&data, "sync_log.txt.damaged-");
    assert_eq!(damaged.len(), 1);
    assert_eq!(
        std::fs::read(&damaged[0]).unwrap(),
        bytes,
        "original kept as it was"
    );
    let report = files_starting_with(&data, "sync_log.txt.salvage-");
    assert_eq!(report.len(), 1);
    let report = std::fs::read_to_string(&report[0]).unwrap();
    assert!(
        report.contains(&format!("line 3 (byte offset {second})")),
        "{report}"
    );
    assert_eq!(check_log(&log).len(), 2);
    let v = run_tracker_to_exit(&info, 1, &data, &["--verify-log"]);
    assert_eq!(
        (v.code, v.stdout.contains("all 2 entries check out")),
        (0, true),
        "{}",
        v.stdout
    );

    // The tracker starts on the salvaged log; b is gone, a and c are there.
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    c.login("a", "pw");
    c.login("c", "pw");
    // b was created with "pw" on the dropped line: its login fails, so b is gone.
    assert_eq!(
        c.err(None, "login", &["b", "pw"]),
        tracker::commands::LOGIN_FAILED
    );
    c.ok(None, "create_user", &["b", "pw"]);
    t.quit_ok();
    assert_eq!(check_log(&log).len(), 5); // a, c, a's and c's logins, b
}

/// Rewrites the entry lines of the log at `path` in the order `order` (indexes).
fn reorder_lines(path: &Path, order: &[usize]) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let head = lines.remove(0);
    let mut out = head.to_string();
    for &i in order {
        out.push_str(lines[i]);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_deleted_middle_line_and_a_swapped_pair_are_detected() {
    for (order, what) in [
        (vec![0, 2], "sequence number 3 where 2 belongs"),
        (vec![0, 2, 1], "sequence number 3 where 2 belongs"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (info, data) = three_users(dir.path());
        let log = data.join(LOG_FILE);
        reorder_lines(&log, &order);
        let second = entry_line_starts(&log)[1];
        start_is_refused(&info, &data, 3, second, what);
        // Without the cache too: the full parse finds it.
        std::fs::remove_file(data.join("tracker1.db")).unwrap();
        start_is_refused(&info, &data, 3, second, what);
        let v = run_tracker_to_exit(&info, 1, &data, &["--verify-log"]);
        assert_eq!(v.code, 1, "{}", v.stdout);
        assert!(v.stdout.contains(what), "{}", v.stdout);
        // Salvage puts a swapped pair back in order and notes a missing number.
        let s = run_tracker_to_exit(&info, 1, &data, &["--salvage-log"]);
        assert_eq!(s.code, 0, "{}", s.stderr);
        let note = if order.len() == 3 {
            "put back in sequence order"
        } else {
            "2..=2 are missing"
        };
        assert!(s.stdout.contains(note), "{}", s.stdout);
        let mut t = TrackerProc::start(&info, 1, &data);
        let mut c = t.connect();
        c.login("a", "pw");
        c.login("c", "pw");
        t.quit_ok();
    }
}

/// A v1 log line: `<crc32> <ms> <tracker> <op> <fields>`.
fn v1_line(body: &str) -> String {
    format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()))
}

#[test]
fn a_v1_log_is_upgraded_at_start_and_the_cache_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let hash = tracker::auth::hash_password("pw").unwrap();
    let mut v1 = format!("{V1_LINE}\n");
    v1.push_str(&v1_line(&format!("1000 1 create_user old {hash}")));
    v1.push_str(&v1_line("1001 1 create_group g old"));
    let log = data.join(LOG_FILE);
    std::fs::write(&log, &v1).unwrap();

    let mut t = TrackerProc::start(&info, 1, &data);
    t.stderr.wait_for("the upgrade report", WAIT, |l| {
        l.contains("upgraded from format v1 to v2")
    });
    let mut c = t.connect();
    let tok = c.login("old", "pw");
    assert_eq!(c.ok(Some(&tok), "list_groups", &[]).1.len(), 1);
    t.quit_ok();
    let kept = files_starting_with(&data, "sync_log.txt.v1-");
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), v1);
    let (_, entries) = harness::tracker_state::read_log(&log);
    assert_eq!(entries.len(), 3); // the two v1 entries and the login

    // A v1 log again (say, restored from a backup) with one more user: the
    // cache (of the first upgrade's generation) is rebuilt, not misread.
    v1.push_str(&v1_line(&format!("1002 1 create_user newer {hash}")));
    std::fs::write(&log, &v1).unwrap();
    let mut t = TrackerProc::start(&info, 1, &data);
    t.stderr
        .wait_for("the rebuild", WAIT, |l| l.contains("rebuilding the cache"));
    assert_eq!(replayed(&t), (3, FIRST_ENTRY, 0));
    let mut c = t.connect();
    c.login("newer", "pw");
    assert!(c.err(Some(&tok), "whoami", &[]).starts_with(ERR_SESSION));
    t.quit_ok();
    assert!(Generation::parse(&std::fs::read_to_string(&log).unwrap()[23..39]).is_some());
}
