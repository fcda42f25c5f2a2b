//! Log compaction in shared-log mode, end to end with the real tracker binary
//! (`--snapshot-every N`): the log is cut down to the entries after the latest
//! `snapshot.db`, and a restart (with its cache, or with the cache deleted)
//! answers exactly as before; two trackers sharing the data dir keep one state
//! while one of them compacts, including one that was stopped (SIGSTOP) across
//! two compactions and must load the snapshot while it runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use harness::tracker_state::{check_log, dump};
use harness::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use tracker::sync_log::{Base, Header};

/// Where the log at `data` starts (what its version line names).
fn log_base(data: &Path) -> Base {
    let text = std::fs::read_to_string(data.join("sync_log.txt")).unwrap();
    match Header::parse(text.lines().next().unwrap_or_default().as_bytes()) {
        Some(Header::V2(_, base)) => base,
        other => panic!("version line {other:?}"),
    }
}

/// Waits until the log starts after at least `lines` entries.
fn compacted_past(data: &Path, lines: u64) -> bool {
    wait_until(WAIT, || log_base(data).lines >= lines)
}

/// What a user sees: alice's groups, a group's requests, bob's identity.
fn answers(c: &mut TrackerConn, alice: &str, bob: &str) -> Vec<Vec<String>> {
    let mut out = c.ok(Some(alice), "list_groups", &[]).1;
    out.extend(c.ok(Some(alice), "list_requests", &["g1"]).1);
    out.extend(c.ok(Some(bob), "whoami", &[]).1);
    out
}

/// The operator view's address, from the line the tracker prints.
fn http_addr(t: &TrackerProc) -> String {
    let text = t.stdout.text();
    let line = text
        .lines()
        .find(|l| l.contains("operator view on http://"))
        .expect("the operator view's address");
    let rest = line.split("http://").nth(1).unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// `swarmshare_tracker_snapshots_taken_total` on `/metrics`.
fn snapshots_taken(http: &str) -> f64 {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("swarmshare_tracker_snapshots_taken_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no snapshots_taken_total in\n{text}"))
}

/// The numbers of the "replayed N log lines from offset O (cache had L lines)" line.
fn replayed(t: &TrackerProc) -> Vec<u64> {
    let line = t
        .stderr
        .wait_for("the replay report", WAIT, |l| l.contains("replayed "));
    line.split("replayed ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn remove_cache(data: &Path, no: usize) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("tracker{no}.db{suffix}")));
    }
}

#[test]
fn a_compacted_log_restarts_with_and_without_its_cache_to_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let args = ["--snapshot-every", "10", "--http", "127.0.0.1:0"];
    let mut t = TrackerProc::start_with(&info, 1, &data, &args);
    let mut c = t.connect();
    let alice = c.user("alice", "pw");
    let bob = c.user("bob", "pw");
    for i in 0..30 {
        c.ok(Some(&alice), "create_group", &[&format!("g{i}")]);
        // At each 10th change a copy is made off the loop: let it finish before
        // the next change, so each compaction covers exactly 10 more entries.
        let changes = 4 + i + 1;
        if changes % 10 == 0 {
            assert!(compacted_past(&data, changes), "{:?}", log_base(&data));
        }
    }
    c.ok(Some(&bob), "join_group", &["g1"]);
    // 4 + 30 + 1 = 35 changes: compacted after entry 30 at least.
    assert!(compacted_past(&data, 30), "base {:?}", log_base(&data));
    let taken = snapshots_taken(&http_addr(&t));
    assert!(taken >= 3.0, "snapshots taken: {taken}");
    let before = answers(&mut c, &alice, &bob);
    assert!(before.len() > 30, "{before:?}");
    t.quit_ok();
    let base = log_base(&data);
    let tail = check_log(&data.join("sync_log.txt"));
    assert_eq!(base.lines + tail.len() as u64, 35);
    assert!(tail.len() < 10, "{} lines kept", tail.len());
    let db = data.join("tracker1.db");
    let state = dump(&db);

    // Restart with the cache: nothing to replay, the same answers.
    t.restart();
    assert_eq!(replayed(&t)[0], 0);
    let mut c = t.connect();
    assert_eq!(answers(&mut c, &alice, &bob), before);
    t.quit_ok();

    // The cache deleted: rebuilt from snapshot.db + the tail, byte for byte.
    remove_cache(&data, 1);
    t.restart();
    t.stderr.wait_for("the snapshot load", WAIT, |l| {
        l.contains("loaded the snapshot")
    });
    assert_eq!(replayed(&t)[0], tail.len() as u64);
    let mut c = t.connect();
    assert_eq!(answers(&mut c, &alice, &bob), before);
    t.quit_ok();
    assert_eq!(dump(&db), state);

    // --verify-log checks a compacted log too.
    let v = harness::tracker_state::run_tracker_to_exit(&info, 1, &data, &["--verify-log"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("compacted"), "{}", v.stdout);
    assert!(
        v.stdout
            .contains(&format!("all {} entries check out", tail.len())),
        "{}",
        v.stdout
    );
}

/// The copy of the cache runs off the loop (issue 13): while a finished copy is
/// held back by the test-only gate (a snapshot that takes long), the tracker
/// answers reads and changes, and the log is compacted only after the copy is
/// let go, keeping the changes made meanwhile as its tail.
#[test]
fn the_tracker_answers_while_a_snapshot_is_being_taken() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = dir.path().join("gate");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let gate_arg = gate.to_str().unwrap();
    let args = ["--snapshot-every", "10", "--test-snapshot-gate", gate_arg];
    let mut t = TrackerProc::start_with(&info, 1, &data, &args);
    let mut c = t.connect();
    let alice = c.user("alice", "pw");
    for i in 0..8 {
        c.ok(Some(&alice), "create_group", &[&format!("g{i}")]);
    }
    // 2 + 8 = 10 changes: a copy of them is made and held until the gate opens.
    t.stderr.wait_for("the snapshot's start", WAIT, |l| {
        l.contains("snapshot of the cache started off the loop (10 entries)")
    });
    t.stderr.wait_for("the copy held", WAIT, |l| {
        l.contains("the snapshot copy is made, held until")
    });
    // 5 more changes (fewer than --snapshot-every: no second snapshot) and reads.
    for i in 8..10 {
        c.ok(Some(&alice), "create_group", &[&format!("g{i}")]);
    }
    let bob = c.user("bob", "pw");
    c.ok(Some(&bob), "join_group", &["g1"]);
    let before = answers(&mut c, &alice, &bob);
    // The groups and bob's request.
    assert_eq!(before.len(), 10 + 1, "{before:?}");
    // All answered before the snapshot was installed or the log compacted.
    assert!(!data.join("snapshot.db").exists());
    assert_eq!(log_base(&data).lines, 0);
    std::fs::write(&gate, b"").unwrap();
    assert!(compacted_past(&data, 10), "base {:?}", log_base(&data));
    t.quit_ok();
    let base = log_base(&data);
    let tail = check_log(&data.join("sync_log.txt"));
    // The copy was of the cache when it was made: the changes made while it
    // was held are the log's tail.
    assert_eq!((base.lines, tail.len()), (10, 5));
    // A restart from snapshot.db + that tail answers the same.
    remove_cache(&data, 1);
    t.restart();
    assert_eq!(replayed(&t)[0], 5);
    let mut c = t.connect();
    assert_eq!(answers(&mut c, &alice, &bob), before);
}

/// SIGSTOP / SIGCONT to a tracker this test started.
fn signal(t: &TrackerProc, sig: i32) {
    // SAFETY: kill(2) on the PID of a child this test spawned and still holds.
    let rc = unsafe { libc::kill(t.pid() as i32, sig) };
    assert_eq!(rc, 0);
}

#[test]
fn two_trackers_sharing_a_log_keep_one_state_while_one_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
    let every = ["--snapshot-every", "20"];
    let mut t1 = TrackerProc::start_with(&info, 1, &data, &every);
    // Tracker 2 never compacts itself: it only follows tracker 1's compactions.
    let mut t2 = TrackerProc::start_with(&info, 2, &data, &["--snapshot-every", "0"]);
    let mut c1 = t1.connect();
    let mut c2 = t2.connect();
    let alice = c1.user("alice", "pw");
    let bob = c2.user("bob", "pw");

    // Changes through both at once while tracker 1 compacts.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, bob, stop) = (t2.addr.clone(), bob.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut c = TrackerConn::connect(&addr);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 200 {
                c.ok(Some(&bob), "create_group", &[&format!("b{n}")]);
                n += 1;
            }
            n
        })
    };
    for i in 0..60 {
        c1.ok(Some(&alice), "create_group", &[&format!("a{i}")]);
    }
    stop.store(true, Ordering::SeqCst);
    let from_bob = writer.join().unwrap();
    assert!(compacted_past(&data, 40), "base {:?}", log_base(&data));
    let groups = 60 + from_bob;
    let seen = |c: &mut TrackerConn, tok: &str| c.ok(Some(tok), "list_groups", &[]).1.len();
    assert!(wait_until(WAIT, || seen(&mut c2, &bob) == groups));
    assert_eq!(seen(&mut c1, &alice), groups);

    // Tracker 2 stopped across two compactions: when it runs again, its cache is
    // behind the log's base and it loads the snapshot while running.
    signal(&t2, libc::SIGSTOP);
    let base_before = log_base(&data).lines;
    let mut base_mid = base_before;
    for i in 0..45 {
        c1.ok(Some(&alice), "create_group", &[&format!("c{i}")]);
        // The compaction due by the 20th change is made off the loop: let it
        // finish, so the 25 changes after it make a second one due.
        if i == 19 {
            assert!(wait_until(WAIT, || log_base(&data).lines > base_before));
            base_mid = log_base(&data).lines;
        }
    }
    assert!(wait_until(WAIT, || log_base(&data).lines > base_mid));
    signal(&t2, libc::SIGCONT);
    t2.stderr.wait_for("the snapshot load", WAIT, |l| {
        l.contains("loaded the snapshot")
    });
    assert!(wait_until(WAIT, || seen(&mut c2, &bob) == groups + 45));
    // And it makes changes on the compacted log, seen by tracker 1.
    c2.ok(Some(&bob), "create_group", &["last"]);
    assert!(wait_until(WAIT, || seen(&mut c1, &alice) == groups + 46));
    // Tracker 2 only watching: tracker 1 compacts, then appends to the new
    // file; tracker 2's watcher follows it there.
    // (Enough changes for a compaction to be due; it is made off the loop.)
    let base_before = log_base(&data).lines;
    let more = 20;
    for i in 0..more {
        c1.ok(Some(&alice), "create_group", &[&format!("d{i}")]);
    }
    assert!(
        wait_until(WAIT, || log_base(&data).lines != base_before),
        "no compaction after {more} changes:\n{}",
        t1.stderr.text()
    );
    for i in 0..5 {
        c1.ok(Some(&alice), "create_group", &[&format!("e{i}")]);
    }
    let want = groups + 46 + more + 5;
    assert!(
        wait_until(WAIT, || seen(&mut c2, &bob) == want),
        "tracker 2 sees {} groups of {want}",
        seen(&mut c2, &bob)
    );
    t1.quit_ok();
    t2.quit_ok();
    let tail = check_log(&data.join("sync_log.txt"));
    assert_eq!(log_base(&data).lines + tail.len() as u64, 4 + want as u64);
    assert_eq!(
        dump(&data.join("tracker1.db")),
        dump(&data.join("tracker2.db"))
    );
    // Neither refused a change or saw damage.
    for t in [&t1, &t2] {
        let err = t.stderr.text();
        assert!(!err.contains("refusing every change"), "{err}");
    }
}
