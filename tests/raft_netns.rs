//! `--replication raft` on separate hosts: tracker N runs in network namespace N
//! ([`harness::netns`]), clients in host 4, all over a private bridge. Checked: a
//! tracker whose link is down refuses changes within 5 s with the no-quorum error
//! and still answers reads while the majority goes on, and catches up once the link
//! is back; a tracker whose data dir was wiped catches up (snapshot + tail); a
//! seeded randomized run of kills, restarts and partitions under concurrent changes
//! loses no acknowledged change and ends with equal replicas.
//!
//! Needs root and iproute2; without them each test prints `SKIPPED (needs root +
//! iproute2): …` on stderr (and fails under `CI`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::netns::Hosts;
use harness::raft::{await_same_logs, caches_match_logs, connect_from, groups, key_into, Cluster};
use harness::{wait_until, WAIT};
use wire::tracker_msg::{Reply, Request};

fn cluster(test: &str, extra: &[&str]) -> Option<Cluster> {
    let hosts = Hosts::new_or_skip(4, test)?;
    Some(Cluster::start_on(Some(hosts), extra))
}

/// A logged-in user's token, made through tracker `no`.
fn user(c: &Cluster, no: usize, name: &str) -> String {
    c.await_leader();
    c.t(no).connect().user(name, "pw")
}

#[test]
fn a_cut_off_tracker_refuses_changes_in_5s_answers_reads_and_catches_up() {
    let Some(c) = cluster("raft_netns::a_cut_off_tracker_refuses_changes", &[]) else {
        return;
    };
    let leader = c.await_leader();
    let token = user(&c, leader, "ann");
    let mut on_leader = c.t(leader).connect();
    on_leader.ok(Some(&token), "create_group", &["kept"]);
    await_same_logs(&c, &[1, 2, 3]);
    let hosts = c.hosts().unwrap();

    hosts.partition(leader);
    let started = Instant::now();
    let err = on_leader.err(Some(&token), "create_group", &["cut off"]);
    let took = started.elapsed();
    assert_eq!(err, "no quorum: the change was not made");
    assert!(took <= Duration::from_secs(5), "refused after {took:?}");
    assert!(groups(&mut on_leader, &token).contains("kept"));
    // The majority elects a leader and goes on.
    let other = if leader == 1 { 2 } else { 1 };
    let mut on_other = c.t(other).connect();
    assert!(wait_until(WAIT, || matches!(
        on_other.request(Some(&token), "create_group", &["majority"]),
        Reply::Ok { .. }
    )));

    hosts.heal(leader);
    await_same_logs(&c, &[1, 2, 3]);
    let got = groups(&mut on_leader, &token);
    assert!(
        got.contains("majority") && !got.contains("cut off"),
        "{got:?}"
    );
    assert!(caches_match_logs(&c, &[1, 2, 3]));
}

#[test]
fn a_wiped_tracker_catches_up_from_the_others() {
    let Some(mut c) = cluster(
        "raft_netns::a_wiped_tracker_catches_up_from_the_others",
        &["--raft-snapshot-every", "20"],
    ) else {
        return;
    };
    let leader = c.await_leader();
    let token = user(&c, leader, "ann");
    let mut conn = c.t(leader).connect();
    for i in 0..50 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    let wiped = if leader == 1 { 2 } else { 1 };
    await_same_logs(&c, &[1, 2, 3]);
    c.kill9(wiped);
    std::fs::remove_dir_all(&c.dirs[wiped - 1]).unwrap();
    key_into(&c.dirs[wiped - 1]);
    let key = c.dirs[leader - 1].join("tracker_key");
    std::fs::copy(key, c.dirs[wiped - 1].join("tracker_key")).unwrap();
    for i in 50..60 {
        conn.ok(Some(&token), "create_group", &[&format!("g{i}")]);
    }
    c.up(wiped);
    await_same_logs(&c, &[1, 2, 3]);
    assert!(c.t(wiped).stderr.text().contains("restored a snapshot"));
    assert_eq!(groups(&mut c.t(wiped).connect(), &token).len(), 60);
    assert!(caches_match_logs(&c, &[wiped]));
}

/// xorshift64*: the run's only source of randomness, so a seed replays it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the chaos did to each tracker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    Killed,
    Partitioned,
}

#[test]
fn a_seeded_randomized_run_of_kills_restarts_and_partitions_loses_nothing() {
    let seed: u64 = std::env::var("RAFT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0013);
    let secs: u64 = std::env::var("RAFT_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("raft chaos: seed {seed}, {secs} s (RAFT_CHAOS_SEED / RAFT_CHAOS_SECS)");
    let Some(mut c) = cluster(
        "raft_netns::a_seeded_randomized_run",
        &["--raft-snapshot-every", "200"],
    ) else {
        return;
    };
    let token = user(&c, 1, "ann");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client_host = c.hosts().unwrap().host(4).clone();
    let addrs: Vec<String> = (1..=3).map(|n| c.t(n).addr.clone()).collect();
    let mut writers = Vec::new();
    for w in 0..3usize {
        let (acked, stop, token) = (Arc::clone(&acked), Arc::clone(&stop), token.clone());
        let (host, addrs) = (client_host.clone(), addrs.clone());
        writers.push(std::thread::spawn(move || {
            let mut target = w;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut conn) = connect_from(Some(&host), &addrs[target]) else {
                    target = (target + 1) % 3;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let _ = conn.stream.set_read_timeout(Some(Duration::from_secs(8)));
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let g = format!("w{w}-{i}");
                    let req = Request::new(Some(&token), "create_group", &[&g]);
                    if std::io::Write::write_all(&mut conn.stream, &req.encode()).is_err() {
                        break;
                    }
                    match conn.read_reply() {
                        Ok(Reply::Ok { .. }) => acked.lock().unwrap().push(g),
                        Ok(Reply::Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                        Err(_) => break,
                    }
                }
                target = (target + 1) % 3;
            }
        }));
    }

    let mut rng = Rng(seed | 1);
    let mut faults = [Fault::None; 3];
    let end = Instant::now() + Duration::from_secs(secs);
    let mut events = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        let no = 1 + rng.below(3) as usize;
        let disrupted = faults.iter().filter(|f| **f != Fault::None).count();
        let hosts_do = |f: &dyn Fn(&Hosts)| f(c.hosts().unwrap());
        match (faults[no - 1], rng.below(2)) {
            (Fault::Killed, _) => {
                c.up(no);
                faults[no - 1] = Fault::None;
                events.push(format!("restart {no}"));
            }
            (Fault::Partitioned, _) => {
                hosts_do(&|h| h.heal(no));
                faults[no - 1] = Fault::None;
                events.push(format!("heal {no}"));
            }
            // At most one tracker is down or cut off at a time: a majority remains.
            (Fault::None, _) if disrupted > 0 => {}
            (Fault::None, 0) => {
                c.kill9(no);
                faults[no - 1] = Fault::Killed;
                events.push(format!("kill {no}"));
            }
            (Fault::None, _) => {
                hosts_do(&|h| h.partition(no));
                faults[no - 1] = Fault::Partitioned;
                events.push(format!("partition {no}"));
            }
        }
    }
    for no in 1..=3 {
        match faults[no - 1] {
            Fault::Killed => c.up(no),
            Fault::Partitioned => c.hosts().unwrap().heal(no),
            Fault::None => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    eprintln!("raft chaos events: {events:?}");
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() > 50,
        "only {} changes acknowledged",
        acked.len()
    );
    await_same_logs(&c, &[1, 2, 3]);
    for no in 1..=3 {
        let listed = groups(&mut c.t(no).connect(), &token);
        let lost: Vec<_> = acked.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "tracker {no} lost {lost:?} (seed {seed}, {events:?})"
        );
    }
    assert!(caches_match_logs(&c, &[1, 2, 3]));
}
