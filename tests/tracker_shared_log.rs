//! Trackers started with one data dir share sync_log.txt: writes through each
//! are visible through the other, sessions fail over, and concurrent writes to
//! both leave a log in which every line is whole and checks out. Damage to the
//! shared log never costs an acknowledged line or splits the trackers: a flipped
//! byte mid-log stops a restarting tracker instead of being cut, and a log cut
//! short under running trackers makes them refuse changes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::tracker_state::{check_log, dump, entry_line_starts, read_log, run_tracker_to_exit};
use harness::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc};
use wire::tracker_msg::{Reply, ERR_SESSION};

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

    t1.quit_ok();
    t2.quit_ok();
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
    t1.quit_ok();
    t2.quit_ok();

    let data = dir.path().join("data");
    let (_, entries) = read_log(&data.join("sync_log.txt"));
    // users + their logins + groups + the last login
    assert_eq!(entries.len(), THREADS * 2 + total + 1);
    let by = |no: u32| entries.iter().filter(|e| e.tracker == no).count();
    assert!(by(1) > 0 && by(2) > 0, "both trackers wrote");
    assert_eq!(
        dump(&data.join("tracker1.db")),
        dump(&data.join("tracker2.db"))
    );
}

/// Issue 11's scenario: three trackers share a data dir, 300 groups are made
/// and applied everywhere, one byte is flipped in a line in the middle of the
/// log, and tracker 3 is restarted with its cache.
#[test]
fn a_flipped_byte_mid_log_costs_no_acknowledged_line_and_splits_no_trackers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port(), free_port()]);
    let mut ts: Vec<TrackerProc> = (1..=3)
        .map(|n| TrackerProc::start(&info, n, &data))
        .collect();
    let mut cs: Vec<TrackerConn> = ts.iter().map(|t| t.connect()).collect();
    let tok = cs[0].user("owner", "pw");
    for i in 0..300 {
        cs[i % 3].ok(Some(&tok), "create_group", &[&format!("group {i}")]);
    }
    visible_within("300 groups on every tracker", || {
        cs.iter_mut()
            .all(|c| c.ok(Some(&tok), "list_groups", &[]).1.len() == 300)
    });
    ts[2].quit_ok();

    let log = data.join("sync_log.txt");
    let mut bytes = std::fs::read(&log).unwrap();
    let starts = entry_line_starts(&log);
    let (n, at) = (starts.len() / 2, starts[starts.len() / 2]);
    // Flip it in place, as bit rot would (rewriting the whole file would
    // truncate it for a moment under trackers 1 and 2, which they notice).
    bytes[at + 30] ^= 0x08;
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[at + 30..at + 31], (at + 30) as u64)
        .unwrap();
    drop(f);

    // Tracker 3 refuses to start, naming the line; nothing is cut.
    let out = run_tracker_to_exit(&info, 3, &data, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let line_no = n + 2; // the version line is line 1
    assert!(
        out.stderr
            .contains(&format!("line {line_no} (byte offset {at})")),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes);

    // Trackers 1 and 2 go on accepting changes, and agree at once.
    let (c1, rest) = cs.split_at_mut(1);
    let (c1, c2) = (&mut c1[0], &mut rest[0]);
    for i in 0..20 {
        let g = format!("after {i}");
        let (writer, reader) = if i % 2 == 0 {
            (&mut *c1, &mut *c2)
        } else {
            (&mut *c2, &mut *c1)
        };
        writer.ok(Some(&tok), "create_group", &[&g]);
        let listed = reader.ok(Some(&tok), "list_groups", &[]).1;
        assert!(listed.iter().any(|r| r[0] == g), "{g} not seen at once");
    }
    // Every acknowledged line is still in the log, byte for byte where it was.
    let now = std::fs::read(&log).unwrap();
    assert!(now.starts_with(&bytes), "the log's history was rewritten");
    // --verify-log (beside running trackers) finds exactly the flipped line.
    let v = run_tracker_to_exit(&info, 1, &data, &["--verify-log"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(
        v.stdout
            .contains(&format!("line {line_no} (byte offset {at})")),
        "{}",
        v.stdout
    );
    assert!(v.stdout.contains("1 bad line(s)"), "{}", v.stdout);
    ts[0].quit_ok();
    ts[1].quit_ok();
    assert_eq!(
        dump(&data.join("tracker1.db")),
        dump(&data.join("tracker2.db"))
    );
}

/// A log cut short (or cut mid-line) under running trackers: each refuses
/// changes and says why; nobody appends to it or cuts it further; reads go on.
#[test]
fn a_log_truncated_under_running_trackers_makes_them_refuse_changes() {
    for mid_line in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut t1, mut t2) = two_trackers(dir.path());
        let mut c1 = t1.connect();
        let mut c2 = t2.connect();
        let tok = c1.user("owner", "pw");
        for i in 0..10 {
            c1.ok(Some(&tok), "create_group", &[&format!("g{i}")]);
        }
        visible_within("10 groups on tracker 2", || {
            c2.ok(Some(&tok), "list_groups", &[]).1.len() == 10
        });
        let log = dir.path().join("data").join("sync_log.txt");
        let starts = entry_line_starts(&log);
        let cut = starts[5] + if mid_line { 7 } else { 0 };
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(cut as u64).unwrap();
        drop(f);

        // Tracker 2's watcher notices by itself...
        t2.stderr
            .wait_for("tracker 2's watcher", Duration::from_secs(5), |l| {
                l.contains("no longer holds what this tracker's cache applied")
            });
        // ...and both trackers refuse changes (tracker 1 on the change path).
        for c in [&mut c1, &mut c2] {
            let err = c.err(Some(&tok), "create_group", &["after the cut"]);
            assert!(err.starts_with("change not made"), "{err}");
            assert!(
                err.contains("shrank") || err.contains("inside a line"),
                "{err}"
            );
            assert_eq!(c.ok(Some(&tok), "list_groups", &[]).1.len(), 10);
        }
        t1.stderr
            .wait_for("tracker 1's reason", Duration::from_secs(5), |l| {
                l.contains("refusing every change")
            });
        assert_eq!(std::fs::metadata(&log).unwrap().len(), cut as u64);
        t1.quit_ok();
        t2.quit_ok();
    }
}
