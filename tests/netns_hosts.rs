//! Trackers and clients on separate hosts: every process runs in a network
//! namespace of its own ([`harness::netns`]), reached over a private bridge at
//! `10.77.<k>.<host>`, not over 127.0.0.1. Two trackers share one data dir
//! (the namespaces share the filesystem), so this is shared-log mode across
//! hosts. Checked: a file uploaded on one host downloads byte for byte on
//! another and the tracker hands out the seeder's host address; a partition of
//! the tracker's host is a failover the user does not see; a `tbf`-shaped
//! seeder host still delivers the whole file.
//!
//! Needs root and iproute2; without them each test prints
//! `SKIPPED (needs root + iproute2): …` on stderr (and fails under `CI`).

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use harness::netns::{namespace_exists, remove_stale, Hosts, PREFIX};
use harness::transfer::{download, seeders, upload, wait_complete};
use harness::{assert_same_file, write_random_file, ClientProc, TrackerConn, TrackerProc, WAIT};

/// The port every tracker listens on (each host has all its ports free).
const PORT: u16 = 7001;

/// A client in `host` of `hosts`, logged in as a new user `user`.
fn user_client(hosts: &Hosts, no: usize, info: &std::path::Path, user: &str) -> ClientProc {
    let state = info.with_file_name(format!("state-{user}"));
    let mut c = ClientProc::start_in(Some(hosts.host(no)), info, &state, &[]);
    assert_eq!(
        c.cmd(&format!("create_user {user} pw")),
        format!("user {user} created")
    );
    assert_eq!(
        c.cmd(&format!("login {user} pw")),
        format!("logged in as {user}")
    );
    c
}

/// `owner` creates group `g`; `member` joins it and is accepted.
fn group_of_two(owner: &mut ClientProc, member: &mut ClientProc, member_name: &str) {
    assert_eq!(owner.cmd("create_group g"), "group g created");
    assert_eq!(member.cmd("join_group g"), "join request sent to g");
    assert_eq!(
        owner.cmd(&format!("accept_request g {member_name}")),
        format!("{member_name} accepted into g")
    );
}

#[test]
fn upload_on_one_host_downloads_on_another_through_two_trackers() {
    let Some(hosts) = Hosts::new_or_skip(
        4,
        "netns_hosts::upload_on_one_host_downloads_on_another_through_two_trackers",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = hosts.tracker_info(dir.path(), &[1, 2], PORT);
    let t1 = TrackerProc::start_in(Some(hosts.host(1)), &info, 1, &data, &[]);
    let t2 = TrackerProc::start_in(Some(hosts.host(2)), &info, 2, &data, &[]);
    assert_eq!(t1.addr, hosts.host(1).addr(PORT));
    assert_eq!(t2.addr, hosts.host(2).addr(PORT));
    let mut alice = user_client(&hosts, 3, &info, "alice");
    let mut bob = user_client(&hosts, 4, &info, "bob");
    group_of_two(&mut alice, &mut bob, "bob");

    let src = dir.path().join("share.bin");
    write_random_file(&src, 3 * 1024 * 1024 + 12_345, 7);
    upload(&mut alice, &src);

    // Asked from host 4 of tracker 2 (host 2), the seeder is host 3's address.
    let stream = hosts
        .host(4)
        .connect(&t2.addr)
        .expect("connect from host 4");
    let mut conn = TrackerConn::from_stream(stream);
    let token = conn.login("bob", "pw");
    let listed = seeders(&mut conn, &token, "share.bin");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let seeder_ip = listed[0].rsplit_once(':').expect("ip:port").0;
    assert_eq!(seeder_ip, hosts.host(3).ip.to_string(), "{listed:?}");
    // Tracker 1 (asked from its own host) lists the same seeder: one state.
    let mut local = t1.connect();
    let token = local.login("alice", "pw");
    assert_eq!(seeders(&mut local, &token, "share.bin"), listed);

    let dest = dir.path().join("got.bin");
    download(&mut bob, "share.bin", &dest);
    wait_complete(&mut bob, "share.bin", 3 * WAIT);
    assert_same_file(&src, &dest);
}

#[test]
fn a_partitioned_tracker_host_is_a_failover_the_user_does_not_see() {
    let Some(hosts) = Hosts::new_or_skip(
        3,
        "netns_hosts::a_partitioned_tracker_host_is_a_failover_the_user_does_not_see",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = hosts.tracker_info(dir.path(), &[1, 2], PORT);
    let mut t1 = TrackerProc::start_in(Some(hosts.host(1)), &info, 1, &data, &[]);
    let t2 = TrackerProc::start_in(Some(hosts.host(2)), &info, 2, &data, &[]);
    let mut alice = user_client(&hosts, 3, &info, "alice");
    assert_eq!(alice.cmd("create_group before"), "group before created");
    // The session's connection is to tracker 1 (first in the list).
    assert!(alice.stderr.text().is_empty(), "{}", alice.stderr.text());

    hosts.partition(1);
    // Tracker 1 still runs, but nothing reaches it: the command goes to tracker 2.
    let started = Instant::now();
    assert_eq!(alice.cmd("create_group during"), "group during created");
    eprintln!("failover across the partition took {:?}", started.elapsed());
    let (first, items) = alice.list("list_groups");
    assert_eq!(first, "2 groups", "{items:?}");
    alice.stderr.wait_for("the failover note", WAIT, |l| {
        l == format!("note: tracker {} unreachable, using {}", t1.addr, t2.addr)
    });
    t1.assert_alive();

    hosts.heal(1);
    // Tracker 1 is reachable again and has the change made through tracker 2.
    let stream = hosts.host(3).connect(&t1.addr).expect("connect after heal");
    let mut conn = TrackerConn::from_stream(stream);
    let token = conn.login("alice", "pw");
    let ok = harness::wait_until(WAIT, || {
        let (_, rows) = conn.ok(Some(&token), "list_groups", &[]);
        rows.iter()
            .any(|r| r.first().is_some_and(|g| g == "during"))
    });
    assert!(
        ok,
        "tracker 1 never showed the group made during the partition"
    );
    assert_eq!(alice.cmd("create_group after"), "group after created");
}

#[test]
fn a_shaped_seeder_host_still_delivers_the_whole_file() {
    let Some(hosts) = Hosts::new_or_skip(
        3,
        "netns_hosts::a_shaped_seeder_host_still_delivers_the_whole_file",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let info = hosts.tracker_info(dir.path(), &[1], PORT);
    let _t1 = TrackerProc::start_in(Some(hosts.host(1)), &info, 1, &dir.path().join("data"), &[]);
    let mut alice = user_client(&hosts, 2, &info, "alice");
    let mut bob = user_client(&hosts, 3, &info, "bob");
    group_of_two(&mut alice, &mut bob, "bob");
    let src = dir.path().join("one-mib.bin");
    write_random_file(&src, 1024 * 1024, 11);
    upload(&mut alice, &src);

    hosts.shape(2, 2_000_000);
    let before = hosts.sent_bytes(2);
    let dest = dir.path().join("got.bin");
    let started = Instant::now();
    download(&mut bob, "one-mib.bin", &dest);
    wait_complete(&mut bob, "one-mib.bin", 6 * WAIT);
    eprintln!("1 MiB from a 2 Mbit/s host took {:?}", started.elapsed());
    assert_same_file(&src, &dest);
    // The file left host 2 through the tbf qdisc (no timing is asserted).
    let through_tbf = hosts.sent_bytes(2) - before;
    assert!(
        through_tbf >= 1024 * 1024,
        "only {through_tbf} bytes went through the tbf qdisc"
    );
}

#[test]
fn hosts_reach_each_other_partitions_and_cuts_hold_and_nothing_is_left_behind() {
    let test =
        "netns_hosts::hosts_reach_each_other_partitions_and_cuts_hold_and_nothing_is_left_behind";
    let Some(hosts) = Hosts::new_or_skip(3, test) else {
        return;
    };
    // A listener in host 1, bound to its address (only host 1 has it).
    let addr = hosts.host(1).addr(PORT);
    let listener = hosts
        .host(1)
        .within(|| TcpListener::bind(&addr))
        .expect("bind in host 1");
    listener.set_nonblocking(true).unwrap();
    assert!(
        TcpListener::bind(&addr).is_err(),
        "{addr} exists outside host 1"
    );
    let short = Duration::from_secs(1);
    let reach = |no: usize, what: &str| {
        let stream = hosts.host(no).connect_timeout(&addr, WAIT);
        let stream = stream.unwrap_or_else(|e| panic!("{what}: host {no} -> {addr}: {e}"));
        let mut from = None;
        let accepted = harness::wait_until(WAIT, || {
            from = listener.accept().ok().map(|(_, a)| a.ip());
            from.is_some()
        });
        assert!(accepted, "{what}: host 1 accepted nothing");
        assert_eq!(from, Some(std::net::IpAddr::V4(hosts.host(no).ip)));
        drop(stream);
    };
    reach(2, "before the partition");

    hosts.partition(1);
    for no in [2, 3] {
        let cut = hosts.host(no).connect_timeout(&addr, short);
        assert!(
            cut.is_err(),
            "host {no} reached partitioned host 1: {cut:?}"
        );
    }
    hosts.heal(1);
    reach(2, "after healing");

    // A cut between hosts 1 and 2 leaves host 3 connected to both.
    hosts.cut(1, 2);
    let cut = hosts.host(2).connect_timeout(&addr, short);
    assert!(cut.is_err(), "host 2 reached host 1 across a cut: {cut:?}");
    reach(3, "host 3 during the cut between 1 and 2");
    let two = hosts.host(2).addr(PORT);
    let in_two = hosts.host(2).within(|| TcpListener::bind(&two)).unwrap();
    let from_three = hosts.host(3).connect_timeout(&two, WAIT);
    assert!(from_three.is_ok(), "host 3 -> host 2: {from_three:?}");
    drop((in_two, from_three));
    hosts.mend(1, 2);
    reach(2, "after mending the cut");

    // A process started in a host runs there under its own PID, and its guard
    // kills exactly it.
    let mut cat = hosts.host(2).spawn("cat", &[]);
    let pid = cat.pid();
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // (`ip` first, `cat` once `ip netns exec` has exec'd it under the same PID.)
    assert!(
        harness::wait_until(WAIT, || comm().trim() == "cat"),
        "the guard's PID is not the program's: {}",
        comm()
    );
    let ns_of = |p: &str| std::fs::metadata(p).map(|m| m.ino()).unwrap();
    let ns_path = format!("/run/netns/{}", hosts.host(2).ns);
    assert_eq!(ns_of(&format!("/proc/{pid}/ns/net")), ns_of(&ns_path));
    cat.kill9();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Dropping removes every namespace, also when a test panics with them.
    let names = hosts.namespaces();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| namespace_exists(n)), "{names:?}");
    drop(listener);
    drop(hosts);
    assert!(!names.iter().any(|n| namespace_exists(n)), "{names:?}");
    let made = std::sync::Mutex::new(Vec::new());
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let hosts = Hosts::new(1);
        *made.lock().unwrap() = hosts.namespaces();
        panic!("a test failing with its hosts up");
    }));
    assert!(unwound.is_err());
    let made = made.into_inner().unwrap();
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(!made.iter().any(|n| namespace_exists(n)), "{made:?}");

    // A namespace left by a crashed run (its PID gone) is removed; ours is not.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = format!("{PREFIX}{}-0-br", gone.id());
    let live = Hosts::new(1);
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(ok.success(), "ip netns add {stale}");
    remove_stale();
    let kept = live.namespaces().iter().all(|n| namespace_exists(n));
    let stale_left = namespace_exists(&stale);
    if stale_left {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &stale])
            .status();
    }
    assert!(!stale_left, "stale {stale} was not removed");
    assert!(kept, "a live instance's namespaces were removed");
}
