//! `--replication raft` on loopback: three real trackers on 127.0.0.1, each with
//! its own data dir (the same cluster key and ticket key copied into each, as an
//! operator would). A leader's `kill -9` during concurrent changes loses no
//! acknowledged change; the logs of the trackers are identical and each cache equals
//! a rebuild from its own log; an outsider speaking the Raft greeting changes
//! nothing; without a majority a change is refused within 5 s while reads go on; a
//! tracker whose data dir was wiped catches up by snapshot; the real client works
//! across a leader kill.
//!
//! Separate hosts are stood in for by separate data dirs and ports on one host, and
//! a lost majority by killing trackers (`kill -9`), not by cutting links: the
//! network-namespace versions need the netns harness.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::tracker_state::{dump, entry_line_starts, read_log};
use harness::{
    free_port, wait_until, write_tracker_info, ClientProc, TrackerConn, TrackerProc, WAIT,
};
use wire::tracker_msg::Reply;

const KEY_HEX: &str = "5f1c0a9e3d7b24c68e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";

/// Three trackers' list and data dirs, each holding the cluster key.
struct Cluster {
    _tmp: tempfile::TempDir,
    info: PathBuf,
    dirs: Vec<PathBuf>,
    trackers: Vec<Option<TrackerProc>>,
    extra: Vec<String>,
}

fn key_into(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{KEY_HEX}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let info = write_tracker_info(tmp.path(), &[free_port(), free_port(), free_port()]);
        let dirs: Vec<PathBuf> = (1..=3)
            .map(|i| tmp.path().join(format!("host{i}")))
            .collect();
        for d in &dirs {
            key_into(d);
        }
        let mut c = Cluster {
            _tmp: tmp,
            info,
            dirs,
            trackers: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.up(1);
        // The ticket key, like the cluster key, is the same on every tracker.
        for d in &c.dirs[1..] {
            std::fs::copy(c.dirs[0].join("tracker_key"), d.join("tracker_key")).unwrap();
        }
        c.up(2);
        c.up(3);
        c
    }

    fn up(&mut self, no: usize) {
        let mut args = vec!["--replication", "raft"];
        args.extend(self.extra.iter().map(String::as_str));
        let t = TrackerProc::start_with(&self.info, no, &self.dirs[no - 1], &args);
        self.trackers[no - 1] = Some(t);
    }

    fn kill9(&mut self, no: usize) {
        if let Some(mut t) = self.trackers[no - 1].take() {
            t.kill9();
        }
    }

    fn t(&self, no: usize) -> &TrackerProc {
        self.trackers[no - 1].as_ref().expect("tracker running")
    }

    fn running(&self) -> Vec<usize> {
        (1..=3)
            .filter(|&n| self.trackers[n - 1].is_some())
            .collect()
    }

    /// The running tracker that last said it is leader in the highest term.
    fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for no in self.running() {
            let text = self.t(no).stderr.text();
            let me = format!("tracker {no} ");
            let last = text
                .lines()
                .rev()
                .find(|l| {
                    l.contains(&me)
                        && l.contains("(term ")
                        && [" is leader", " follows", " has no leader"]
                            .iter()
                            .any(|r| l.contains(r))
                })
                .map(str::to_string);
            if let Some(l) = last.filter(|l| l.contains(" is leader")) {
                let term: u64 = l
                    .split("(term ")
                    .nth(1)
                    .and_then(|t| t.trim_end_matches(')').parse().ok())
                    .unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, no));
                }
            }
        }
        best.map(|b| b.1)
    }

    fn await_leader(&self) -> usize {
        let mut found = None;
        assert!(
            wait_until(WAIT, || {
                found = self.leader();
                found.is_some()
            }),
            "no leader elected; stderr of tracker 1:\n{}",
            self.t(self.running()[0]).stderr.text()
        );
        found.unwrap()
    }

    fn log(&self, no: usize) -> PathBuf {
        self.dirs[no - 1].join("sync_log.txt")
    }

    fn db(&self, no: usize) -> PathBuf {
        self.dirs[no - 1].join(format!("tracker{no}.db"))
    }
}

/// The log's entry lines (the version line names each log's own generation).
fn entries(log: &Path) -> Vec<String> {
    read_log(log).0
}

/// The state a fresh cache gets from applying `log` through `store::apply`.
fn rebuilt(log: &Path) -> String {
    let (_, decoded) = read_log(log);
    let starts = entry_line_starts(log);
    let mut store = tracker::store::Store::open_in_memory().unwrap();
    let with_offsets: Vec<(u64, _)> = starts.iter().map(|&s| s as u64).zip(decoded).collect();
    let end = std::fs::metadata(log).unwrap().len();
    store.apply_entries(&with_offsets, end).unwrap();
    tracker::store::dump(store.conn()).unwrap()
}

/// Groups `tracker` lists to a logged-in user.
fn groups(conn: &mut TrackerConn, token: &str) -> BTreeSet<String> {
    let (_, rows) = conn.ok(Some(token), "list_groups", &[]);
    rows.into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect()
}

/// Waits until trackers `nos` hold the same entry lines; returns them.
fn await_same_logs(c: &Cluster, nos: &[usize]) -> Vec<String> {
    let mut last = Vec::new();
    let same = wait_until(WAIT, || {
        let logs: Vec<Vec<String>> = nos.iter().map(|&n| entries(&c.log(n))).collect();
        last = logs[0].clone();
        logs.windows(2).all(|w| w[0] == w[1])
    });
    assert!(same, "logs of trackers {nos:?} differ");
    last
}

#[test]
fn a_leader_kill9_during_concurrent_changes_loses_no_acknowledged_change() {
    let mut c = Cluster::start(&[]);
    let leader = c.await_leader();
    let mut setup = c.t(1).connect();
    setup.ok(None, "create_user", &["ann", "pw"]);
    let token = setup.login("ann", "pw");

    // One writer per tracker, each creating groups through its own tracker.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for no in 1..=3 {
        let addr = c.t(no).addr.clone();
        let (acked, stop, token) = (Arc::clone(&acked), Arc::clone(&stop), token.clone());
        writers.push(std::thread::spawn(move || {
            let mut conn = TrackerConn::connect(&addr);
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let g = format!("g{no}-{i}");
                let req = wire::tracker_msg::Request::new(Some(&token), "create_group", &[&g]);
                if conn.stream.write_all(&req.encode()).is_err() {
                    break; // its tracker was killed
                }
                match conn.read_reply() {
                    Ok(Reply::Ok { .. }) => acked.lock().unwrap().push(g),
                    Ok(Reply::Err(_)) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }));
    }
    assert!(wait_until(WAIT, || acked.lock().unwrap().len() >= 60));
    c.kill9(leader);
    let before_kill = acked.lock().unwrap().len();
    let new_leader = c.await_leader();
    assert_ne!(new_leader, leader);
    assert!(
        wait_until(WAIT, || acked.lock().unwrap().len() >= before_kill + 60),
        "changes stopped after the leader's kill"
    );
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let survivors = c.running();
    let lines = await_same_logs(&c, &survivors);
    for &no in &survivors {
        let mut conn = c.t(no).connect();
        let listed = groups(&mut conn, &token);
        let lost: Vec<_> = acked.difference(&listed).collect();
        assert!(lost.is_empty(), "tracker {no} lost acknowledged {lost:?}");
        assert_eq!(dump(&c.db(no)), rebuilt(&c.log(no)), "tracker {no}'s cache");
    }
    // The killed leader restarts and catches up to the same log.
    c.up(leader);
    let all = await_same_logs(&c, &[1, 2, 3]);
    assert!(all.len() >= lines.len());
    assert!(wait_until(WAIT, || dump(&c.db(leader)) == rebuilt(&c.log(leader))));
    for no in 1..=3 {
        c.trackers[no - 1].as_mut().unwrap().assert_alive();
    }
}

#[test]
fn an_outsider_speaking_raft_changes_nothing() {
    let c = Cluster::start(&[]);
    let leader = c.await_leader();
    let mut conn = c.t(1).connect();
    let token = conn.user("ann", "pw");
    conn.ok(Some(&token), "create_group", &["before"]);
    let before = await_same_logs(&c, &[1, 2, 3]);
    let term_lines = |no: usize| c.t(no).stderr.text().matches("(term ").count();
    let roles_before: Vec<usize> = (1..=3).map(term_lines).collect();

    for target in 1..=3 {
        // A greeting claiming to be another member, a made-up proof, then a frame
        // that would be a vote request.
        let claimed = if target == 1 { 2 } else { 1 };
        let mut s = TcpStream::connect(&c.t(target).addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let greeting = format!("SWARMSHARE-RAFT v1 {claimed} {}\n", "ab".repeat(32));
        s.write_all(greeting.as_bytes()).unwrap();
        let mut reply = [0u8; 512];
        let n = s.read(&mut reply).unwrap();
        assert!(
            reply[..n].starts_with(b"SWARMSHARE-RAFT v1 "),
            "{:?}; stderr:\n{}",
            &reply[..n],
            c.t(target).stderr.text()
        );
        let _ = s.write_all(format!("{}\n", "cd".repeat(32)).as_bytes());
        let mut frame = 40u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x08, 0x05, 0x10, 0x63, 0x18, 0x01, 0x20, 0x02]);
        frame.resize(4 + 40 + 32, 0x11);
        let _ = s.write_all(&frame);
        // The tracker closes the link: end of stream (or a reset), nothing else.
        let mut rest = Vec::new();
        let closed = match s.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        };
        assert!(closed, "the forged link was not closed: {rest:?}");
        // Frames without any handshake: bounded and ignored, then closed.
        let mut s = TcpStream::connect(&c.t(target).addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(b"SWARMSHARE-RAFT v1 3 zz\n");
        let _ = s.write_all(&frame);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(!rest.windows(4).any(|w| w == b"OK\r\n"), "{rest:?}");
    }
    // No tracker changed its log, its term or its role.
    for no in 1..=3 {
        assert_eq!(entries(&c.log(no)), before, "tracker {no}'s log");
    }
    assert_eq!(roles_before, (1..=3).map(term_lines).collect::<Vec<_>>());
    assert_eq!(c.leader(), Some(leader));
    // And the cluster still works.
    conn.ok(Some(&token), "create_group", &["after"]);
    assert!(groups(&mut c.t(2).connect(), &token).contains("after"));
}

#[test]
fn without_a_majority_changes_are_refused_within_5s_and_reads_go_on() {
    let mut c = Cluster::start(&[]);
    c.await_leader();
    let mut conn = c.t(3).connect();
    let token = conn.user("ann", "pw");
    conn.ok(Some(&token), "create_group", &["kept"]);
    c.kill9(1);
    c.kill9(2);
    let started = Instant::now();
    let err = conn.err(Some(&token), "create_group", &["lost"]);
    let took = started.elapsed();
    assert_eq!(err, "no quorum: the change was not made");
    assert!(took <= Duration::from_secs(5), "refused after {took:?}");
    // Reads are answered from the local state.
    assert_eq!(
        groups(&mut conn, &token),
        BTreeSet::from(["kept".to_string()])
    );
    // The majority returns: changes work again, everywhere.
    c.up(1);
    c.up(2);
    c.await_leader();
    assert!(wait_until(WAIT, || matches!(
        conn.request(Some(&token), "create_group", &["again"]),
        Reply::Ok { .. }
    )));
    await_same_logs(&c, &[1, 2, 3]);
    for no in 1..=3 {
        let got = groups(&mut c.t(no).connect(), &token);
        assert!(
            got.contains("again") && got.contains("kept"),
            "tracker {no}: {got:?}"
        );
        assert!(!got.contains("lost"), "tracker {no}: {got:?}");
    }
}

#[test]
fn a_wiped_data_dir_catches_up_by_snapshot_and_tail() {
    let mut c = Cluster::start(&["--raft-snapshot-every", "20"]);
    let leader = c.await_leader();
    let wiped = if leader == 3 { 2 } else { 3 };
    let mut conn = c.t(leader).connect();
    let token = conn.user("ann", "pw");
    for i in 0..60 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    await_same_logs(&c, &[1, 2, 3]);
    c.kill9(wiped);
    std::fs::remove_dir_all(&c.dirs[wiped - 1]).unwrap();
    key_into(&c.dirs[wiped - 1]);
    std::fs::copy(
        c.dirs[leader - 1].join("tracker_key"),
        c.dirs[wiped - 1].join("tracker_key"),
    )
    .unwrap();
    for i in 60..70 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    c.up(wiped);
    let lines = await_same_logs(&c, &[1, 2, 3]);
    assert!(lines.len() >= 72, "{} lines", lines.len());
    assert!(
        c.t(wiped).stderr.text().contains("restored a snapshot"),
        "{}",
        c.t(wiped).stderr.text()
    );
    assert!(wait_until(WAIT, || dump(&c.db(wiped)) == rebuilt(&c.log(wiped))));
    let got = groups(&mut c.t(wiped).connect(), &token);
    assert_eq!(got.len(), 70, "{got:?}");
}

#[test]
fn the_real_client_works_across_a_leader_kill() {
    let mut c = Cluster::start(&[]);
    let leader = c.await_leader();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data.bin");
    harness::write_random_file(&file, 3 << 20, 7);
    let mut alice = ClientProc::start(&c.info, &tmp.path().join("a"), &[]);
    let mut bob = ClientProc::start(&c.info, &tmp.path().join("b"), &[]);
    let mut out = vec![
        alice.cmd("create_user alice pw"),
        alice.cmd("login alice pw"),
        alice.cmd("create_group team"),
        bob.cmd("create_user bob pw"),
        bob.cmd("login bob pw"),
        bob.cmd("join_group team"),
    ];
    c.kill9(leader);
    out.push(alice.cmd("accept_request team bob"));
    out.push(alice.cmd(&format!("upload_file \"{}\" team", file.display())));
    let dl = tmp.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let got = dl.join("data.bin");
    out.push(bob.cmd(&format!("download_file team data.bin \"{}\"", dl.display())));
    let errors: Vec<&String> = out.iter().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.is_empty(), "{out:#?}");
    assert!(wait_until(WAIT, || got.exists()
        && harness::sha1_file(&got) == harness::sha1_file(&file)));
    harness::assert_same_file(&file, &got);
}
