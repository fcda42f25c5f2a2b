//! Hostile and careless clients: garbage, binary bytes, oversize lines, silent
//! and non-reading connections, abrupt disconnects. The tracker keeps serving the
//! others promptly, with bounded memory, and never panics.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use harness::{lone_tracker, rss_kib, set_file_size_limit, TrackerConn};
use wire::tracker_msg::{Reply, Request, MAX_REQUEST_LINE};

#[test]
fn garbage_binary_and_oversize_lines_get_errors_and_the_connection_survives() {
    let (_dir, mut t) = lone_tracker(&[]);
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
    good.assert_served(&tok, "whoami");

    // 5 MiB without a newline: refused without buffering it, then the line's end.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..5 {
        bad.send_raw(&chunk).unwrap();
        good.assert_served(&tok, "whoami");
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
    good.assert_served(&tok, "whoami");
    t.assert_alive();
}

#[test]
fn silent_half_written_and_disconnecting_clients_change_nothing() {
    let (_dir, mut t) = lone_tracker(&[]);
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
    good.assert_served(&tok, "whoami");

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

    // None of them exists (after 5 failures from this address the answer is
    // the back-off, which says nothing about existence either).
    let no_such =
        |e: &str| e == "wrong user name or password" || e.starts_with("too many failed logins");
    for i in 0..50 {
        let e = good.err(None, "login", &[&format!("ghost {i}"), "pw"]);
        assert!(no_such(&e), "{e}");
    }
    let e = good.err(None, "login", &["half", "pw"]);
    assert!(no_such(&e), "{e}");
    drop(silent);
    good.assert_served(&tok, "whoami");
    t.assert_alive();
}

#[test]
fn a_client_that_never_reads_replies_is_throttled_not_buffered() {
    let (_dir, mut t) = lone_tracker(&[]);
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
        good.assert_served(&tok, "whoami");
        thread::sleep(Duration::from_millis(100));
    }
    let flooder = flood.join().unwrap();
    let after = rss_kib(t.pid());
    assert!(
        after < before + 16 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    drop(flooder);
    good.assert_served(&tok, "whoami");
    t.assert_alive();
}

#[test]
fn many_connections_come_and_go() {
    let (_dir, mut t) = lone_tracker(&[]);
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
    good.assert_served(&tok, "whoami");
    t.assert_alive();
}

#[test]
fn a_failed_log_write_is_an_error_reply_and_changes_nothing() {
    let (dir, mut t) = lone_tracker(&[]);
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
    t.assert_alive();

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
    t.assert_alive();
}
