//! Hostile and careless clients: garbage, binary bytes, oversize lines, silent
//! and non-reading connections, abrupt disconnects. The tracker keeps serving the
//! others promptly, with bounded memory, and never panics.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use harness::{free_port, write_tracker_info, TrackerConn, TrackerProc};
use wire::tracker_msg::{Reply, Request, MAX_REQUEST_LINE};

fn start() -> (tempfile::TempDir, TrackerProc) {
    let dir = tempfile::tempdir().unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let t = TrackerProc::start(&info, 1, &dir.path().join("data"));
    (dir, t)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A well-behaved client is answered quickly while others misbehave.
fn assert_served(c: &mut TrackerConn, tok: &str) {
    let start = Instant::now();
    assert!(matches!(
        c.request(Some(tok), "whoami", &[]),
        Reply::Ok { .. }
    ));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a good client waited {took:?}"
    );
}

fn assert_alive(t: &mut TrackerProc) {
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "tracker died; stderr:\n{}",
        t.stderr.text()
    );
    assert!(
        !t.stderr.text().contains("panicked"),
        "tracker panicked:\n{}",
        t.stderr.text()
    );
}

#[test]
fn garbage_binary_and_oversize_lines_get_errors_and_the_connection_survives() {
    let (_dir, mut t) = start();
    let mut good = t.connect();
    let tok = good.user("good", "pw");

    let mut bad = t.connect();
    // Binary bytes (not UTF-8) make one error reply.
    bad.send_raw(&[0xff, 0xfe, 0x00, 0x01, 0x80, b' ', 0xc3, b'\n'])
        .unwrap();
    assert!(matches!(bad.read_reply().unwrap(), Reply::Err(e) if e.contains("UTF-8")));
    // Garbage text: errors, one per line.
    bad.send_raw(b"\n   \njust-a-token\n\\ x\n").unwrap();
    for _ in 0..4 {
        assert!(matches!(bad.read_reply().unwrap(), Reply::Err(_)));
    }
    assert_served(&mut good, &tok);

    // 5 MiB without a newline: refused without buffering it, then the line's end.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..5 {
        bad.send_raw(&chunk).unwrap();
        assert_served(&mut good, &tok);
    }
    bad.send_raw(b"tail of the long line\n").unwrap();
    match bad.read_reply().unwrap() {
        Reply::Err(e) => assert_eq!(
            e,
            format!("request line longer than {MAX_REQUEST_LINE} bytes")
        ),
        ok => panic!("{ok:?}"),
    }
    // The same connection still works.
    assert!(matches!(
        bad.request(Some(&tok), "whoami", &[]),
        Reply::Ok { .. }
    ));

    // A 20 MiB line does not grow the tracker's memory by 20 MiB.
    let before = rss_kib(t.pid());
    for _ in 0..20 {
        bad.send_raw(&chunk).unwrap();
    }
    bad.send_raw(b"\n").unwrap();
    assert!(matches!(bad.read_reply().unwrap(), Reply::Err(e) if e.contains("longer than")));
    let after = rss_kib(t.pid());
    assert!(
        after < before + 16 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    assert_served(&mut good, &tok);
    assert_alive(&mut t);
}

#[test]
fn silent_half_written_and_disconnecting_clients_change_nothing() {
    let (_dir, mut t) = start();
    let mut good = t.connect();
    let tok = good.user("good", "pw");

    // Silent connections, and ones that stop mid-request, stall no one.
    let mut silent: Vec<TcpStream> = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(&t.addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"- create_user half").unwrap();
        }
        silent.push(s);
    }
    assert_served(&mut good, &tok);

    // Abrupt disconnects in the middle of a request change nothing.
    for i in 0..50 {
        let mut s = TcpStream::connect(&t.addr).unwrap();
        let req = Request::new(None, "create_user", &[&format!("ghost {i}"), "pw"]).encode();
        s.write_all(&req[..req.len() - 1]).unwrap(); // all but the newline
        if i % 2 == 0 {
            s.shutdown(Shutdown::Both).unwrap();
        }
        drop(s);
    }
    // A half-closed client still gets its reply.
    let mut half = TcpStream::connect(&t.addr).unwrap();
    half.write_all(&Request::new(Some(&tok), "whoami", &[]).encode())
        .unwrap();
    half.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut half, &mut got).unwrap();
    assert_eq!(got, "OK good\nEND_OF_REPLY\n");

    // A client that sends a whole request and leaves at once: harmless either way.
    let mut s = TcpStream::connect(&t.addr).unwrap();
    s.write_all(&Request::new(None, "create_user", &["quick", "pw"]).encode())
        .unwrap();
    drop(s);

    for i in 0..50 {
        let e = good.err(None, "login", &[&format!("ghost {i}"), "pw"]);
        assert!(e.starts_with("no such user"), "{e}");
    }
    assert!(good
        .err(None, "login", &["half", "pw"])
        .starts_with("no such user"));
    drop(silent);
    assert_served(&mut good, &tok);
    assert_alive(&mut t);
}

#[test]
fn a_client_that_never_reads_replies_is_throttled_not_buffered() {
    let (_dir, mut t) = start();
    let mut good = t.connect();
    let tok = good.user("good", "pw");
    // Make list_groups replies big (~20 KiB each).
    for i in 0..80 {
        good.ok(
            Some(&tok),
            "create_group",
            &[&format!("{i:03} {}", "n".repeat(240))],
        );
    }
    let before = rss_kib(t.pid());
    let addr = t.addr.clone();
    let tok2 = tok.clone();
    let flood = thread::spawn(move || {
        // Pipelines ~40 MiB worth of replies and never reads one.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let req = Request::new(Some(&tok2), "list_groups", &[]).encode();
        let many: Vec<u8> = req.iter().copied().cycle().take(req.len() * 2000).collect();
        let _ = s.write_all(&many); // blocks once the tracker stops reading us
        thread::sleep(Duration::from_secs(1));
        s
    });
    for _ in 0..10 {
        assert_served(&mut good, &tok);
        thread::sleep(Duration::from_millis(100));
    }
    let flooder = flood.join().unwrap();
    let after = rss_kib(t.pid());
    assert!(
        after < before + 16 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    drop(flooder);
    assert_served(&mut good, &tok);
    assert_alive(&mut t);
}

#[test]
fn many_connections_come_and_go() {
    let (_dir, mut t) = start();
    let mut good = t.connect();
    let tok = good.user("good", "pw");
    let mut threads = Vec::new();
    for n in 0..4 {
        let addr = t.addr.clone();
        let tok = tok.clone();
        threads.push(thread::spawn(move || {
            for i in 0..100 {
                let mut c = TrackerConn::connect(&addr);
                if (n + i) % 3 == 0 {
                    let _ = c.send_raw(b"\x00\x01garbage");
                } else {
                    assert!(matches!(
                        c.request(Some(&tok), "list_groups", &[]),
                        Reply::Ok { .. }
                    ));
                }
            }
        }));
    }
    for th in threads {
        th.join().unwrap();
    }
    assert_served(&mut good, &tok);
    assert_alive(&mut t);
}

/// Sets the soft RLIMIT_FSIZE of a process we started (by PID).
fn set_file_size_limit(pid: u32, bytes: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child; both pointers point to valid rlimits.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "read rlimit");
    let new = libc::rlimit {
        rlim_cur: bytes.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "set rlimit");
}

#[test]
fn a_failed_log_write_is_an_error_reply_and_changes_nothing() {
    let (dir, mut t) = start();
    let log = dir.path().join("data").join("sync_log.txt");
    let mut c = t.connect();
    let tok = c.user("a", "pw");
    c.ok(Some(&tok), "create_group", &["kept"]);
    let len = std::fs::metadata(&log).unwrap().len();

    // The log cannot grow: the change is refused, not acknowledged.
    set_file_size_limit(t.pid(), len + 10);
    let e = c.err(Some(&tok), "create_group", &["lost"]);
    assert!(e.contains("log write failed"), "{e}");
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        len,
        "the partial write is cut off"
    );
    let groups = c.ok(Some(&tok), "list_groups", &[]).1;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_alive(&mut t);

    // Once the disk "has room" again, it carries on.
    set_file_size_limit(t.pid(), u64::MAX);
    c.ok(Some(&tok), "create_group", &["lost"]);
    assert_eq!(c.ok(Some(&tok), "list_groups", &[]).1.len(), 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(
        text.lines().filter(|l| l.contains("create_group")).count(),
        2
    );
    assert_alive(&mut t);
}
