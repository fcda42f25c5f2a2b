//! The tracker's abuse limits, end to end against the real binary: a client
//! that never reads its replies costs a bounded amount of memory, one address's
//! thousands of idle sockets keep no one else out, idle connections are closed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    connect_from, free_port, lone_tracker, wait_until, write_tracker_info, TrackerConn, TrackerProc,
};
use wire::tracker_msg::{Reply, Request};

/// Peak and current resident memory of a process, in KiB.
fn hwm_and_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Raises this process's soft open-files limit to its hard limit (the tracker
/// it starts afterwards inherits it); returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

#[test]
fn ten_clients_that_never_read_64_large_replies_leave_memory_bounded() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    let tok = c.user("u", "pw");
    c.ok(Some(&tok), "create_group", &["g"]);
    // 100,000 one-byte pieces: a file_info reply of ~4 MB of piece hashes.
    let pieces = 100_000;
    let hashes = "ab".repeat(20 * pieces);
    let size = pieces.to_string();
    let sha = "c".repeat(40);
    c.ok(
        Some(&tok),
        "upload_file",
        &["g", "big", &size, "1", &sha, &hashes, "127.0.0.1:5000"],
    );
    drop(hashes);
    let (_, before) = hwm_and_rss_kib(t.pid());
    let req = Request::new(Some(&tok), "file_info", &["g", "big"]).encode();
    let flood: Vec<u8> = req.repeat(64);
    let mut silent = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(&t.addr).unwrap();
        s.write_all(&flood).unwrap(); // a few KiB: fits the socket buffer
        silent.push(s);
    }
    // Give the tracker time to do what it will with them, while a good client
    // keeps being served.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(matches!(
            c.request(Some(&tok), "whoami", &[]),
            Reply::Ok { .. }
        ));
        thread::sleep(Duration::from_millis(100));
    }
    let (peak, now) = hwm_and_rss_kib(t.pid());
    // Unbounded, this would be 10 x 64 x 4 MB = 2.5 GB; bounded, about one
    // reply (+ the OUT_HIGH threshold) per connection.
    assert!(
        peak < before + 160 * 1024,
        "peak RSS {peak} KiB (was {before} KiB before the flood, {now} KiB now)"
    );
    // The silent connections get at most a few MiB each once they do read.
    // (A generous read timeout: a debug tracker on a loaded machine takes
    // seconds to encode ten 4 MB replies; this bounds the wait, not speed.)
    let mut s = silent.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || got > (8 << 20) {
            break;
        }
        got += n;
    }
    assert!(got >= 4_000_000, "a reading client gets its replies: {got}");
    drop(silent);
    t.assert_alive();
}

#[test]
fn three_thousand_idle_sockets_from_one_address_keep_no_one_else_out() {
    let fds = raise_nofile();
    assert!(
        fds >= 4000,
        "this test needs an open-files hard limit of at least 4000, have {fds}"
    );
    let (_dir, mut t) = lone_tracker(&[]);
    let addr: SocketAddr = t.addr.parse().unwrap();
    let mut idle = Vec::with_capacity(3000);
    for _ in 0..3000 {
        match connect_from(Ipv4Addr::new(127, 0, 0, 2), addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect from 127.0.0.2 failed after {}: {e}", idle.len()),
        }
    }
    // A new client from another address is served at once.
    let mut c = TrackerConn::connect(&t.addr);
    let tok = c.user("newcomer", "pw");
    c.assert_served(&tok, "whoami");
    // Of the 3,000, all but the per-IP cap (256) are closed by the tracker.
    let closed = idle
        .iter_mut()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 256];
            loop {
                match (&**s).read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue, // the ERR line, then the close
                    Err(_) => return false,
                }
            }
        })
        .count();
    assert_eq!(closed, 3000 - 256, "connections closed by the per-IP cap");
    drop(idle);
    t.assert_alive();
}

#[test]
fn the_total_cap_refuses_with_a_clear_error() {
    let (_dir, mut t) = lone_tracker(&["--max-conns", "3"]);
    let held: Vec<TrackerConn> = (0..3).map(|_| t.connect()).collect();
    let mut extra = t.connect();
    match extra.read_reply() {
        Ok(Reply::Err(e)) => assert!(e.contains("too many connections"), "{e}"),
        other => panic!("expected an ERR then close, got {other:?}"),
    }
    drop(held);
    // Once they close, a new client is served again.
    assert!(wait_until(Duration::from_secs(5), || {
        let mut c = t.connect();
        matches!(c.request(None, "whoami", &[]), Reply::Err(e) if e.contains("log in"))
    }));
    t.assert_alive();
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let (_dir, mut t) = lone_tracker(&[
        "--idle-before-login-secs",
        "1",
        "--idle-after-login-secs",
        "3",
    ]);
    let start = Instant::now();
    let mut anon = t.connect();
    let mut logged = t.connect();
    let tok = logged.user("u", "pw");
    anon.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        anon.stream.read(&mut buf).unwrap(),
        0,
        "closed by the tracker"
    );
    let anon_after = start.elapsed();
    // The logged-in one is still open after the short timeout...
    logged.assert_served(&tok, "whoami");
    let start = Instant::now();
    logged
        .stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(
        logged.stream.read(&mut buf).unwrap(),
        0,
        "closed by the tracker"
    );
    let logged_after = start.elapsed();
    // ...and closed after the long one.
    assert!(
        anon_after >= Duration::from_millis(900) && logged_after >= Duration::from_millis(2900),
        "closed too early: {anon_after:?} / {logged_after:?}"
    );
    t.assert_alive();
}

#[test]
fn unknown_user_and_wrong_password_get_the_same_reply() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    c.ok(None, "create_user", &["alice", "right"]);
    let wrong = c.err(None, "login", &["alice", "wrong"]);
    let unknown = c.err(None, "login", &["nobody", "wrong"]);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, "wrong user name or password");
    c.login("alice", "right");
    t.assert_alive();
}

#[test]
fn wrong_passwords_are_backed_off_and_the_back_off_lifts() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    c.ok(None, "create_user", &["alice", "right"]);
    for _ in 0..6 {
        assert_eq!(
            c.err(None, "login", &["alice", "wrong"]),
            "wrong user name or password"
        );
    }
    // Backed off now: even the right password waits (no argon2 runs for it).
    let e = c.err(None, "login", &["alice", "right"]);
    assert!(
        e.starts_with("too many failed logins; try again in "),
        "{e}"
    );
    // Others on the tracker are served meanwhile.
    let mut other = t.connect();
    other.ok(None, "create_user", &["bob", "pw"]);
    // The wait lifts (1 s after the sixth failure).
    assert!(wait_until(Duration::from_secs(10), || matches!(
        c.request(None, "login", &["alice", "right"]),
        Reply::Ok { .. }
    )));
    t.assert_alive();
}

#[test]
fn a_seeder_announcing_another_ip_is_listed_with_its_connection_ip() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    let tok = c.user("u", "pw");
    c.ok(Some(&tok), "create_group", &["g"]);
    let sha = "a".repeat(40);
    c.ok(
        Some(&tok),
        "upload_file",
        &["g", "f", "10", "10", &sha, &sha, "10.9.8.7:7000"],
    );
    let addr: SocketAddr = t.addr.parse().unwrap();
    let mut from2 =
        TrackerConn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).unwrap());
    let tok2 = from2.login("u", "pw");
    from2.ok(
        Some(&tok2),
        "add_seeder",
        &["g", "f", &sha, "192.0.2.1:7001"],
    );
    let (_, mut rows) = c.ok(Some(&tok), "file_info", &["g", "f"]);
    rows.sort();
    assert_eq!(
        rows,
        vec![
            vec!["127.0.0.1:7000".to_string()],
            vec!["127.0.0.2:7001".to_string()]
        ]
    );
    // A heartbeat announcing yet another IP keeps the connection's.
    from2.ok(Some(&tok2), "heartbeat", &["203.0.113.9:7001"]);
    let (_, mut rows) = c.ok(Some(&tok), "file_info", &["g", "f"]);
    rows.sort();
    assert_eq!(rows[1], vec!["127.0.0.2:7001".to_string()]);
    t.assert_alive();
}

#[test]
fn the_data_dir_is_0700_and_the_log_and_cache_0600() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    c.user("u", "pw"); // the log now holds a password hash
    let data = dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("sync_log.txt")), 0o600, "sync_log.txt");
    assert_eq!(mode(&data.join("tracker1.db")), 0o600, "tracker1.db");
    t.assert_alive();
}

#[test]
fn a_wrong_password_flood_on_tracker_1_does_not_stall_tracker_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
    let mut t1 = TrackerProc::start(&info, 1, &data);
    let mut t2 = TrackerProc::start(&info, 2, &data);
    let mut c2 = t2.connect();
    let tok = c2.user("worker", "pw");
    let addr1: SocketAddr = t1.addr.parse().unwrap();
    // 200 source addresses, each pipelining 5 wrong passwords for unknown
    // names (each one a full argon2 run against the dummy hash): 1,000 argon2
    // runs on tracker 1, none of them rate-limited.
    let flood = thread::spawn(move || {
        let mut conns = Vec::new();
        for i in 0..200u32 {
            let src = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 2 + (i % 250) as u8);
            let Ok(mut s) = connect_from(src, addr1) else {
                continue;
            };
            let mut batch = Vec::new();
            for j in 0..5 {
                let user = format!("x{i}-{j}");
                batch.extend(Request::new(None, "login", &[&user, "wrong"]).encode());
            }
            let _ = s.write_all(&batch);
            conns.push(s);
        }
        conns
    });
    let start = Instant::now();
    let mut done = 0;
    while done < 100 && start.elapsed() < Duration::from_secs(20) {
        c2.ok(Some(&tok), "create_group", &[&format!("g{done}")]);
        done += 1;
    }
    let took = start.elapsed();
    let conns = flood.join().unwrap();
    assert!(conns.len() >= 150, "only {} flood connections", conns.len());
    assert_eq!(done, 100, "tracker 2 made only {done} changes in {took:?}");
    // Tracker 1 answers the flood (each gets the one failure message) and a
    // good client on it is served too.
    let mut first = TrackerConn::from_stream(conns.into_iter().next().unwrap());
    match first.read_reply() {
        Ok(Reply::Err(e)) => assert_eq!(e, "wrong user name or password"),
        other => panic!("{other:?}"),
    }
    // (The session is shared through the log; logins queue behind the flood's
    // argon2 runs, other requests do not.)
    let mut c1 = t1.connect();
    c1.assert_served(&tok, "whoami");
    t1.assert_alive();
    t2.assert_alive();
}

/// argon2 needs 19 MiB a hash; the login pool's threads reuse theirs, so many
/// logins (at once and one after another) leave the tracker's peak memory at
/// about threads x 19 MiB, not growing with the number of logins (before: 280
/// MiB after 40 sequential logins, 425 MiB after 25 at once).
#[test]
fn many_logins_leave_the_tracker_memory_bounded() {
    let (_dir, mut t) = lone_tracker(&[]);
    let addr = t.addr.clone();
    let threads: Vec<_> = (0..25)
        .map(|i| {
            let addr = addr.clone();
            thread::spawn(move || {
                let mut c = TrackerConn::connect(&addr);
                c.user(&format!("user {i}"), "pw");
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let mut c = t.connect();
    for i in 0..15 {
        c.user(&format!("later {i}"), "pw");
    }
    let (peak, _) = hwm_and_rss_kib(t.pid());
    assert!(
        peak < 120 * 1024,
        "peak RSS {peak} KiB after 80 argon2 hashes"
    );
    t.assert_alive();
}

#[test]
fn a_seeding_session_outlives_the_idle_period() {
    // Idle limit 4.32 s; a seeder's heartbeat is logged every timeout / 3 = 1 s.
    let (_dir, mut t) = lone_tracker(&[
        "--session-idle-days",
        "0.00005",
        "--seeder-timeout-secs",
        "3",
    ]);
    let mut c = t.connect();
    let tok = c.user("u", "pw");
    c.ok(Some(&tok), "create_group", &["g"]);
    let sha = "c".repeat(40);
    let hashes = "d".repeat(40);
    c.ok(
        Some(&tok),
        "upload_file",
        &["g", "f", "10", "10", &sha, &hashes, "127.0.0.1:5000"],
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        c.ok(Some(&tok), "heartbeat", &["127.0.0.1:5000"]);
        thread::sleep(Duration::from_millis(300));
    }
    // Past twice the idle limit since login, the session is still good.
    c.ok(Some(&tok), "whoami", &[]);
    t.assert_alive();
}

#[test]
fn a_session_unused_for_the_idle_period_expires() {
    // 0.00005 days = 4.32 s.
    let (_dir, mut t) = lone_tracker(&["--session-idle-days", "0.00005"]);
    let mut c = t.connect();
    let tok = c.user("u", "pw");
    c.ok(Some(&tok), "whoami", &[]);
    assert!(wait_until(Duration::from_secs(20), || matches!(
        c.request(Some(&tok), "whoami", &[]),
        Reply::Err(e) if e.starts_with(wire::tracker_msg::ERR_SESSION) && e.contains("expired")
    )));
    // Logging in again gives a fresh session.
    let tok = c.login("u", "pw");
    c.ok(Some(&tok), "whoami", &[]);
    t.assert_alive();
}
