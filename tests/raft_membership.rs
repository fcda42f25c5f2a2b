//! Runtime membership of `--replication raft` (Raft conf changes) on loopback, as an
//! operator does it: tracker_info.txt edited, the trackers restarted one at a time.
//! Growing 3 -> 4: the new tracker, started with an empty data dir holding the
//! cluster key and ticket key, is added by the leader, catches up (by snapshot:
//! `--snapshot-every` makes one before it joins) to the same log lines and answers
//! reads with the old data; with one of the original three down, changes still
//! commit (3 of 4, so the new one counts). Shrinking 4 -> 3: the remaining three
//! restarted with the shorter list, tracker 4 stopped, the leader removes it; then
//! two of three commit changes (they would not be a majority of four), and no
//! history is lost. Growing 1 -> 3 with the new trackers started while the old
//! one is down: the two blank ones wait (they never elect one of themselves,
//! which would overwrite the history), and join once it is back. The list edited
//! while the trackers run: taken without restarts, and an unlisted leader hands
//! over the lead before it is removed.

use std::collections::BTreeSet;

use harness::raft::{await_same_logs, caches_match_logs, groups, Cluster};
use harness::{wait_until, TrackerConn, WAIT};
use wire::tracker_msg::Reply;

const ARGS: &[&str] = &["--snapshot-every", "10"];

/// Whether any of `nos` logged a line holding `what`.
fn logged(c: &Cluster, nos: &[usize], what: &str) -> bool {
    nos.iter().any(|&no| c.t(no).stderr.text().contains(what))
}

/// Waits (bounded by [`WAIT`]) until one of `nos` logged a line holding `what`.
fn await_logged_by_one(c: &Cluster, nos: &[usize], what: &str, why: &str) {
    let seen = wait_until(WAIT, || logged(c, nos, what));
    assert!(seen, "{why}\n{}", stderr_of(c, nos));
}

/// Waits (bounded by [`WAIT`]) until each of `nos` logged a line holding `what`.
fn await_logged_by_each(c: &Cluster, nos: &[usize], what: &str, why: &str) {
    let seen = wait_until(WAIT, || nos.iter().all(|&no| logged(c, &[no], what)));
    assert!(seen, "{why}\n{}", stderr_of(c, nos));
}

fn stderr_of(c: &Cluster, nos: &[usize]) -> String {
    nos.iter()
        .map(|&no| format!("tracker {no}:\n{}", c.t(no).stderr.text()))
        .collect()
}

/// Creates `group` through tracker `no`, retrying while a new leader is elected
/// (`ERR no quorum`), bounded by [`WAIT`] per attempt.
fn create_group(c: &Cluster, no: usize, token: &str, group: &str) {
    let mut last = String::new();
    let done = wait_until(WAIT, || {
        let mut conn = TrackerConn::connect(&c.t(no).addr);
        match conn.request(Some(token), "create_group", &[group]) {
            Reply::Ok { .. } => true,
            // (A refused change may still commit late: see node.rs.)
            Reply::Err(e) if e.contains("already exists") && !last.is_empty() => true,
            Reply::Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(done, "create_group {group} through tracker {no}: {last}");
}

/// Stops trackers `nos` (a snapshot taken meanwhile rewrites the log: the check
/// reads each data dir at rest), then checks each cache equals a rebuild from its
/// own log.
fn stop_and_check_caches(c: &mut Cluster, nos: &[usize]) {
    for &no in nos {
        c.stop(no);
    }
    assert!(caches_match_logs(c, nos));
}

/// After a shrink to three and one of them killed: a change through each of the
/// two left commits, and both hold every group made (`made`) and their caches
/// equal their logs.
fn two_of_three_commit_and_keep_the_history(
    c: &mut Cluster,
    token: &str,
    mut made: BTreeSet<String>,
) {
    let up = c.running();
    for &no in &up {
        let g = format!("after-shrink-via-{no}");
        create_group(c, no, token, &g);
        made.insert(g);
    }
    await_same_logs(c, &up);
    for &no in &up {
        let mut conn = c.t(no).connect();
        assert_eq!(groups(&mut conn, token), made, "tracker {no} lost history");
    }
    stop_and_check_caches(c, &up);
}

/// A three-tracker cluster with a user and `groups` groups, grown to four as an
/// operator does it; returns the cluster, the user's token and the groups.
fn grown_to_four(groups_before: usize) -> (Cluster, String, BTreeSet<String>) {
    let mut c = Cluster::start(ARGS);
    c.await_leader();
    let mut conn = c.t(1).connect();
    let token = conn.user("ann", "pw");
    let mut made = BTreeSet::new();
    for i in 0..groups_before {
        let g = format!("before-{i}");
        conn.ok(Some(&token), "create_group", &[&g]);
        made.insert(g);
    }
    c.relist(4);
    for no in 1..=3 {
        c.restart(no);
        c.await_leader();
    }
    c.up(4);
    let added = "adds tracker 4 to the cluster";
    await_logged_by_one(&c, &[1, 2, 3], added, "no leader added tracker 4");
    let joined = "tracker 4 joined the cluster";
    await_logged_by_each(&c, &[1, 2, 3, 4], joined, "not all saw tracker 4 join");
    (c, token, made)
}

#[test]
fn a_fourth_tracker_joins_with_an_empty_data_dir_catches_up_and_counts_in_the_quorum() {
    let (mut c, token, mut made) = grown_to_four(25);
    await_same_logs(&c, &[1, 2, 3, 4]);
    assert!(
        logged(&c, &[4], "tracker 4: restored a snapshot"),
        "tracker 4 caught up by snapshot:\n{}",
        c.t(4).stderr.text()
    );
    let mut conn = c.t(4).connect();
    assert_eq!(
        groups(&mut conn, &token),
        made,
        "tracker 4 reads the old data"
    );

    // One of the original three down (the leader, if it is one of them): the
    // others and tracker 4 are 3 of 4, and changes through any of them commit.
    let down = c.leader().filter(|&l| l <= 3).unwrap_or(1);
    c.kill9(down);
    let up: Vec<usize> = c.running();
    for &no in &up {
        let g = format!("with-{down}-down-via-{no}");
        create_group(&c, no, &token, &g);
        made.insert(g);
    }
    await_same_logs(&c, &up);
    for &no in &up {
        let mut conn = c.t(no).connect();
        assert_eq!(groups(&mut conn, &token), made, "tracker {no}");
        c.trackers[no - 1].as_mut().unwrap().assert_alive();
    }
    stop_and_check_caches(&mut c, &up);
}

#[test]
fn shrinking_back_to_three_removes_the_fourth_and_keeps_the_history() {
    let (mut c, token, mut made) = grown_to_four(12);
    create_group(&c, 4, &token, "via-4");
    made.insert("via-4".to_string());
    await_same_logs(&c, &[1, 2, 3, 4]);

    c.relist(3);
    for no in 1..=3 {
        c.restart(no);
        c.await_leader();
    }
    c.stop(4);
    let removes = "removes tracker 4 from the cluster";
    await_logged_by_one(&c, &[1, 2, 3], removes, "no leader removed tracker 4");
    let left = "tracker 4 left the cluster";
    await_logged_by_each(&c, &[1, 2, 3], left, "not all saw tracker 4 leave");
    // Two of three are a majority now (two of four would not be).
    let down = c.leader().unwrap_or(1);
    c.kill9(down);
    two_of_three_commit_and_keep_the_history(&mut c, &token, made);
}

#[test]
fn two_blank_trackers_started_first_wait_for_the_one_with_the_history() {
    let mut c = Cluster::start_single(ARGS);
    c.await_leader();
    let mut conn = c.t(1).connect();
    let token = conn.user("ann", "pw");
    let mut made = BTreeSet::new();
    for i in 0..15 {
        let g = format!("solo-{i}");
        conn.ok(Some(&token), "create_group", &[&g]);
        made.insert(g);
    }
    // The new trackers start while the old one is down: for a while nobody with
    // the history knows of them (a running one reads the edited list at once).
    c.stop(1);
    c.relist(3);
    c.up(2);
    c.up(3);
    let campaigned = wait_until(std::time::Duration::from_secs(4), || {
        logged(&c, &[2, 3], "is leader")
    });
    assert!(!campaigned, "a blank tracker took the lead");
    c.up(1);
    let joined = "tracker 3 joined the cluster";
    await_logged_by_each(&c, &[1, 2, 3], joined, "the new trackers never joined");
    await_same_logs(&c, &[1, 2, 3]);
    for no in 2..=3 {
        let mut conn = c.t(no).connect();
        assert_eq!(
            groups(&mut conn, &token),
            made,
            "tracker {no} lacks the history"
        );
    }
    // Tracker 1 down: 2 of 3 commit.
    c.kill9(1);
    create_group(&c, 2, &token, "after-growth");
    made.insert("after-growth".to_string());
    await_same_logs(&c, &[2, 3]);
    let mut conn = c.t(3).connect();
    assert_eq!(groups(&mut conn, &token), made);
    stop_and_check_caches(&mut c, &[2, 3]);
}

/// tracker_info.txt edited while the trackers run is read again within about a
/// second: no restart. Growing 3 -> 4 starts only the new tracker. Then tracker 4
/// is made the leader (elections are redrawn until it wins) and the list shrinks
/// back to three: tracker 4, no longer listed, hands the lead to a listed tracker,
/// which removes it; it refuses changes, and two of the three commit.
#[test]
fn an_edited_list_is_taken_without_restarts_and_an_unlisted_leader_hands_over() {
    let mut c = Cluster::start(ARGS);
    c.await_leader();
    let token = c.t(1).connect().user("ann", "pw");
    let mut made = BTreeSet::new();
    for i in 0..12 {
        let g = format!("before-{i}");
        create_group(&c, 1, &token, &g);
        made.insert(g);
    }
    c.relist(4);
    c.up(4);
    let joined = "tracker 4 joined the cluster";
    await_logged_by_each(
        &c,
        &[1, 2, 3, 4],
        joined,
        "tracker 4 was not added without restarts",
    );
    let mut draws = 0;
    loop {
        let lead = c.await_leader();
        if lead == 4 {
            break;
        }
        draws += 1;
        assert!(draws <= 20, "tracker 4 won none of 20 elections");
        c.kill9(lead);
        c.await_leader();
        c.up(lead);
    }
    c.relist(3);
    let hands_over = "tracker 4 is not listed in tracker_info.txt: it hands the lead to tracker";
    await_logged_by_one(
        &c,
        &[4],
        hands_over,
        "the unlisted leader did not hand over",
    );
    let removes = "removes tracker 4 from the cluster";
    await_logged_by_one(&c, &[1, 2, 3], removes, "no leader removed tracker 4");
    let removed = "tracker 4 was removed from the cluster";
    await_logged_by_one(&c, &[4], removed, "tracker 4 did not learn of its removal");
    let why = c
        .t(4)
        .connect()
        .err(Some(&token), "create_group", &["via-4"]);
    assert!(why.contains("removed from the cluster"), "{why}");
    c.stop(4);
    let down = c.leader().filter(|&l| l <= 3).unwrap_or(1);
    c.kill9(down);
    two_of_three_commit_and_keep_the_history(&mut c, &token, made);
}
