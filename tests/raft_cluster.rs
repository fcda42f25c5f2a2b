//! `--replication raft` on loopback: three real trackers on 127.0.0.1, each with
//! its own data dir (the same cluster key and ticket key copied into each, as an
//! operator would). A leader's `kill -9` during concurrent changes loses no
//! acknowledged change; the logs of the trackers are identical and each cache equals
//! a rebuild from its own log; an outsider speaking the Raft greeting changes
//! nothing; without a majority a change is refused within 5 s while reads go on; a
//! tracker whose data dir was wiped catches up by snapshot, also when the snapshot
//! is larger than one peer frame (`--raft-max-frame`, a test-only flag, makes the
//! frame smaller than a small state), and it answers reads from its old state while
//! the restore is written off its loop (held by `--test-restore-gate`); the real
//! client works across a leader kill.
//!
//! Separate hosts are stood in for by separate data dirs and ports on one host, and
//! a lost majority by killing trackers (`kill -9`), not by cutting links: the
//! network-namespace versions need the netns harness.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::raft::{
    await_same_logs, caches_match_logs, entries, groups, key_into, last_seq, log_base, Cluster,
};
use harness::{wait_until, ClientProc, TrackerConn, WAIT};
use wire::tracker_msg::{Reply, Request};

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
        assert!(caches_match_logs(&c, &[no]), "tracker {no}'s cache");
    }
    // The killed leader restarts and catches up to the same log.
    c.up(leader);
    let all = await_same_logs(&c, &[1, 2, 3]);
    assert!(all.len() >= lines.len());
    assert!(caches_match_logs(&c, &[leader]));
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
        let greeting = format!("SWARMSHARE-RAFT v2 {claimed} {}\n", "ab".repeat(32));
        s.write_all(greeting.as_bytes()).unwrap();
        let mut reply = [0u8; 512];
        let n = s.read(&mut reply).unwrap();
        assert!(
            reply[..n].starts_with(b"SWARMSHARE-RAFT v2 "),
            "{:?}; stderr:\n{}",
            &reply[..n],
            c.t(target).stderr.text()
        );
        let _ = s.write_all(format!("{}\n", "cd".repeat(32)).as_bytes());
        // eraftpb.Message {msg_type: MsgRequestVote, to: target, from: claimed,
        // term: 99, log_term: 99, index: 1000}, then a made-up 32-byte tag.
        let vote = [
            0x08,
            0x05,
            0x10,
            target as u8,
            0x18,
            claimed as u8,
            0x20,
            99,
            0x28,
            99,
            0x30,
            0xe8,
            0x07,
        ];
        let mut frame = (vote.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&0u64.to_be_bytes());
        frame.extend_from_slice(&vote);
        frame.extend_from_slice(&[0x11; 32]);
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
        let _ = s.write_all(b"SWARMSHARE-RAFT v2 3 zz\n");
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
    // And the cluster still works: tracker 1 answered after applying; a follower
    // applies the commit on its next heartbeat or append, so wait for it.
    conn.ok(Some(&token), "create_group", &["after"]);
    assert!(wait_until(WAIT, || groups(&mut c.t(2).connect(), &token)
        .contains("after")));
}

#[test]
fn without_a_majority_changes_are_refused_within_5s_and_reads_go_on() {
    let mut c = Cluster::start(&[]);
    let leader = c.await_leader();
    // The survivor is a follower: a leader that loses its majority keeps a refused
    // change in its own log, and may commit it if re-elected when the majority
    // returns (README, "Limits, known"); a follower's refused change is dropped.
    let survivor = if leader == 3 { 2 } else { 3 };
    let mut conn = c.t(survivor).connect();
    let token = conn.user("ann", "pw");
    conn.ok(Some(&token), "create_group", &["kept"]);
    let others: Vec<usize> = (1..=3).filter(|&n| n != survivor).collect();
    for no in others.iter().copied() {
        c.kill9(no);
    }
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
    for no in others {
        c.up(no);
    }
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
    wipe_one_and_catch_up(&["--raft-snapshot-every", "20"]);
}

#[test]
fn a_wiped_data_dir_catches_up_by_a_snapshot_larger_than_a_frame() {
    let frame: u64 = 4096;
    let flags = [
        "--snapshot-every",
        "20",
        "--raft-max-frame",
        &frame.to_string(),
    ];
    let (c, wiped) = wipe_one_and_catch_up(&flags);
    let restored = tracker::snapshot::path(&c.dirs[wiped - 1]);
    let size = std::fs::metadata(&restored).unwrap().len();
    assert!(size > 4 * frame, "the snapshot ({size} bytes) spans frames");
}

#[test]
fn a_tracker_answers_reads_while_its_restore_is_written_off_the_loop() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("gate");
    let gate_arg = gate.to_str().unwrap();
    let flags = [
        "--raft-snapshot-every",
        "20",
        "--test-restore-gate",
        gate_arg,
    ];
    let (c, wiped, token) = wipe_one_and_restart(&flags);
    c.t(wiped).stderr.wait_for("the restore held", WAIT, |l| {
        l.contains("the snapshot restore is written, held until")
    });
    // Its loop goes on: a read is answered, from the state before the snapshot
    // (the wiped tracker does not know ann's session yet).
    let mut conn = c.t(wiped).connect();
    let why = conn.err(Some(&token), "list_groups", &[]);
    assert!(why.contains("unknown or ended session"), "{why}");
    assert!(!c.t(wiped).stderr.text().contains("restored a snapshot"));
    assert_eq!(log_base(&c.log(wiped)).lines, 0, "the old log is in place");
    std::fs::write(&gate, b"").unwrap();
    check_caught_up(&c, wiped, &token);
    assert_eq!(groups(&mut conn, &token).len(), 70, "the same connection");
}

/// Changes are validated against the applied state, not against each other: 16
/// connections (half to the leader, half to a follower) create the same group at
/// once, each with its own request id. Exactly one is told OK and the others
/// "already exists"; a refused one retried with its id on the other tracker (as
/// after a failover) is refused again (the id of an entry that changed nothing is
/// not recorded), and the winner's retry is OK.
#[test]
fn concurrent_creates_of_one_group_make_one_and_refuse_the_rest_also_on_retry() {
    let c = Cluster::start(&[]);
    let leader = c.await_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let token = c.t(leader).connect().user("ann", "pw");
    await_same_logs(&c, &[1, 2, 3]); // every tracker knows ann's session
    let other = |no: usize| if no == leader { follower } else { leader };
    let mut sent: Vec<(usize, Request, TrackerConn)> = (0..16)
        .map(|i| {
            let no = if i % 2 == 0 { leader } else { follower };
            let mut req = Request::new(Some(&token), "create_group", &["same"]);
            req.request_id = Some(format!("client{i}:1"));
            (no, req, c.t(no).connect())
        })
        .collect();
    for (_, req, conn) in &mut sent {
        conn.send_raw(&req.encode()).unwrap();
    }
    let replies: Vec<Reply> = sent
        .iter_mut()
        .map(|(_, _, conn)| conn.read_reply().unwrap())
        .collect();
    let won: Vec<usize> = (0..16)
        .filter(|&i| matches!(replies[i], Reply::Ok { .. }))
        .collect();
    assert_eq!(won.len(), 1, "{replies:?}");
    for (i, (no, req, _)) in sent.iter().enumerate() {
        let mut retry = c.t(other(*no)).connect();
        retry.send_raw(&req.encode()).unwrap();
        let again = retry.read_reply().unwrap();
        if i == won[0] {
            assert_eq!(again, Reply::ok(), "the winner's retry");
        } else {
            assert!(
                matches!(&replies[i], Reply::Err(e) if e.contains("already exists")),
                "{:?}",
                replies[i]
            );
            assert!(
                matches!(&again, Reply::Err(e) if e.contains("already exists")),
                "the retry of client{i}: {again:?}"
            );
        }
    }
    await_same_logs(&c, &[1, 2, 3]);
    assert!(caches_match_logs(&c, &[1, 2, 3]));
}

/// A restore that fails (here a directory in the way of `snapshot.db.restore`; a
/// full disk does the same) does not stop the tracker: it logs why and tries again
/// after a doubling wait, answering reads from its old state meanwhile, and catches
/// up once the cause is gone, without a restart.
#[test]
fn a_restore_that_fails_is_written_again_once_the_cause_is_gone() {
    let flags = ["--raft-snapshot-every", "20"];
    let in_the_way = |dir: &Path| dir.join("snapshot.db.restore");
    let (mut c, wiped, token) = wipe_one_and_restart_with(&flags, |dir| {
        std::fs::create_dir_all(in_the_way(dir).join("a file")).unwrap();
    });
    let failed = |l: &str| l.contains("the snapshot restore failed");
    let first = c.t(wiped).stderr.wait_for("a failed restore", WAIT, failed);
    assert!(first.contains("written again in 1 s"), "{first}");
    let second = c.t(wiped).stderr.wait_for("a second try", WAIT, failed);
    assert!(second.contains("written again in 2 s"), "{second}");
    c.t_mut(wiped).assert_alive();
    let why = c.t(wiped).connect().err(Some(&token), "list_groups", &[]);
    assert!(why.contains("unknown or ended session"), "{why}");
    std::fs::remove_dir_all(in_the_way(&c.dirs[wiped - 1])).unwrap();
    check_caught_up(&c, wiped, &token);
    c.t_mut(wiped).assert_alive();
}

/// Starts a cluster with `extra` flags, makes 60 changes, wipes one follower's data
/// dir, makes 10 more, restarts it and checks it caught up by a snapshot and the
/// tail. The cluster and the wiped tracker's number.
fn wipe_one_and_catch_up(extra: &[&str]) -> (Cluster, usize) {
    let (c, wiped, token) = wipe_one_and_restart(extra);
    check_caught_up(&c, wiped, &token);
    (c, wiped)
}

/// [`wipe_one_and_catch_up`] up to the wiped tracker's restart; also ann's token.
fn wipe_one_and_restart(extra: &[&str]) -> (Cluster, usize, String) {
    wipe_one_and_restart_with(extra, |_| {})
}

/// [`wipe_one_and_restart`], calling `before_up` with the wiped data dir (which
/// holds only the keys) just before the restart.
fn wipe_one_and_restart_with(
    extra: &[&str],
    before_up: impl FnOnce(&Path),
) -> (Cluster, usize, String) {
    let mut c = Cluster::start(extra);
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
    before_up(&c.dirs[wiped - 1]);
    c.up(wiped);
    (c, wiped, token)
}

/// The wiped tracker holds the 70 groups, by a snapshot and the tail.
fn check_caught_up(c: &Cluster, wiped: usize, token: &str) {
    let lines = await_same_logs(c, &[1, 2, 3]);
    assert!(last_seq(&lines) >= 72, "{} entries", last_seq(&lines));
    // Its log starts after the snapshot it restored, not at entry 1.
    assert!(log_base(&c.log(wiped)).lines > 0);
    assert!(
        c.t(wiped).stderr.text().contains("restored a snapshot"),
        "{}",
        c.t(wiped).stderr.text()
    );
    assert!(caches_match_logs(c, &[wiped]));
    let got = groups(&mut c.t(wiped).connect(), token);
    assert_eq!(got.len(), 70, "{got:?}");
}

/// A raft tracker's apply does not fsync `sync_log.txt` (Raft's log is the durable
/// copy), so an OS crash may cost the log its tail, tear its last line or leave a
/// hole where a page never reached the disk, while the cache kept those changes.
/// Stood in for on a stopped follower: a line in the middle zeroed, the last 10
/// lines cut and a torn half line left at the end. At start the tracker writes the
/// lost lines again from Raft's log, byte for byte, and goes on with the others.
#[test]
fn a_log_tail_the_os_lost_is_written_again_from_the_raft_log() {
    let mut c = Cluster::start(&[]);
    let leader = c.await_leader();
    let crashed = if leader == 3 { 2 } else { 3 };
    let mut conn = c.t(leader).connect();
    let token = conn.user("ann", "pw");
    for i in 0..30 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    let before = await_same_logs(&c, &[1, 2, 3]);
    assert!(caches_match_logs(&c, &[crashed]));
    c.kill9(crashed);
    let path = c.log(crashed);
    let intact = std::fs::read(&path).unwrap();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            intact
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i < intact.len())
        .collect();
    let (hole, cut) = (starts[starts.len() - 15], starts[starts.len() - 10]);
    let mut damaged = intact[..cut + 20].to_vec();
    let hole_end = hole + damaged[hole..].iter().position(|&b| b == b'\n').unwrap();
    damaged[hole..hole_end].fill(0);
    std::fs::write(&path, &damaged).unwrap();

    c.up(crashed);
    for i in 30..35 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    let after = await_same_logs(&c, &[1, 2, 3]);
    assert_eq!(
        after[..before.len()],
        before[..],
        "the history is unchanged"
    );
    assert!(std::fs::read(&path).unwrap().starts_with(&intact));
    let stderr = c.t(crashed).stderr.text();
    assert!(stderr.contains("again from Raft's log"), "{stderr}");
    assert!(caches_match_logs(&c, &[crashed]));
    let kept = std::fs::read_dir(&c.dirs[crashed - 1])
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(kept, "the cut bytes are kept beside the log");
    assert_eq!(groups(&mut c.t(crashed).connect(), &token).len(), 35);
    c.trackers[crashed - 1].as_mut().unwrap().assert_alive();
}

/// A snapshot is made off the loop in raft mode too: while every tracker's finished
/// copy is held by the test-only gate, the cluster goes on committing and answering;
/// once the copies are let go, the logs are compacted after them and stay equal.
#[test]
fn the_cluster_goes_on_while_snapshots_are_being_taken() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("gate");
    let gate_arg = gate.to_str().unwrap();
    // One snapshot per tracker in this test (the next is due 15 entries later),
    // so none rewrites a log while the end compares it with the cache.
    let c = Cluster::start(&["--snapshot-every", "15", "--test-snapshot-gate", gate_arg]);
    let leader = c.await_leader();
    let mut conn = c.t(leader).connect();
    let token = conn.user("ann", "pw");
    for i in 0..13 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    c.t(leader)
        .stderr
        .wait_for("the leader's copy held", WAIT, |l| {
            l.contains("the snapshot copy is made, held until")
        });
    for i in 13..18 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    assert_eq!(groups(&mut conn, &token).len(), 18);
    // All committed and answered before any snapshot was installed.
    for no in 1..=3 {
        assert_eq!(log_base(&c.log(no)).lines, 0, "tracker {no}");
    }
    std::fs::write(&gate, b"").unwrap();
    assert!(wait_until(WAIT, || log_base(&c.log(leader)).lines > 0));
    conn.ok(Some(&token), "create_group", &["last"]);
    let lines = await_same_logs(&c, &[1, 2, 3]);
    assert_eq!(last_seq(&lines), 2 + 19);
    for no in 1..=3 {
        assert!(caches_match_logs(&c, &[no]), "tracker {no}");
    }
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
