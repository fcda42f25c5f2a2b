//! Two trackers started with one data dir share sync_log.txt: writes through each
//! are visible through the other, sessions fail over, and concurrent writes to
//! both leave a log in which every line is whole and checks out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::tracker_state::{check_log, dump, read_log};
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
