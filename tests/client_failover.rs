//! Transparent tracker failover in the client: two trackers share one data dir;
//! when the one the client uses dies (`kill -9`), commands go on through the
//! other with no login typed; with every tracker down a command fails clearly,
//! the client stays usable, and commands work again once a tracker is back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, write_tracker_info, ClientProc, TrackerProc, WAIT};
use wire::tracker_msg::{Reply, Request};

fn notes(c: &ClientProc) -> Vec<String> {
    c.stderr.seen.lock().unwrap().clone()
}

#[test]
fn kill9_of_the_tracker_in_use_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
    let mut t1 = TrackerProc::start(&info, 1, &data);
    let t2 = TrackerProc::start(&info, 2, &data);
    let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);
    let mut other = ClientProc::start(&info, &dir.path().join("o"), &[]);

    assert_eq!(c.cmd("create_user alice pw"), "user alice created");
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert_eq!(c.cmd("create_group base"), "group base created");
    assert_eq!(other.cmd("create_user bob pw"), "user bob created");
    assert_eq!(other.cmd("login bob pw"), "logged in as bob");
    // The client talks to tracker 1 (first in the list) and has an open connection.
    assert_eq!(c.list("list_groups").0, "1 group");

    t1.kill9();

    // The next 20 commands all succeed through tracker 2, with no login typed.
    let started = Instant::now();
    let mut outputs = Vec::new();
    for i in 0..20 {
        let out = match i % 5 {
            0 => c.cmd(&format!("create_group \"g {i}\"")),
            1 => c.list("list_groups").0,
            2 => c.list("list_files base").0,
            3 => c.list("list_requests base").0,
            _ => c.list(&format!("list_files \"g {}\"", i - 4)).0,
        };
        outputs.push(out);
    }
    let took = started.elapsed();
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            !out.starts_with("error:"),
            "command {i} failed: {out}\nall: {outputs:#?}\nstderr: {:?}",
            notes(&c)
        );
    }
    assert_eq!(outputs[0], "group g 0 created");
    assert_eq!(outputs[4], "0 files in g 0");
    assert!(
        took < Duration::from_secs(15),
        "failover too slow: {took:?}"
    );
    let (first, _) = c.list("list_groups");
    assert_eq!(first, "5 groups");
    // Exactly one informational line, naming both trackers.
    let err = notes(&c);
    assert_eq!(err.len(), 1, "stderr: {err:?}");
    assert_eq!(
        err[0],
        format!("note: tracker {} unreachable, using {}", t1.addr, t2.addr)
    );
    // The other client (idle connection to the dead tracker) fails over too.
    assert_eq!(other.list("list_groups").0, "5 groups");
    assert_eq!(other.cmd("join_group base"), "join request sent to base");
    assert_eq!(c.list("list_requests base").1, ["  bob"]);
}

#[test]
fn all_trackers_down_then_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = [free_port(), free_port()];
    let info = write_tracker_info(dir.path(), &ports);
    let mut t1 = TrackerProc::start(&info, 1, &data);
    let mut t2 = TrackerProc::start(&info, 2, &data);
    let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);

    assert_eq!(c.cmd("create_user alice pw"), "user alice created");
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert_eq!(c.cmd("create_group g"), "group g created");

    t1.kill9();
    t2.kill9();
    let started = Instant::now();
    let expected = format!(
        "error: no tracker reachable (tried 127.0.0.1:{}, 127.0.0.1:{})",
        ports[0], ports[1]
    );
    assert_eq!(c.cmd("list_groups"), expected);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Still usable: local commands work, tracker commands fail the same clear way.
    assert_eq!(c.cmd("show_downloads"), "0 downloads");
    assert_eq!(
        c.cmd("frob"),
        "error: unknown command \"frob\" (type help for the list)"
    );
    assert_eq!(c.cmd("create_group h"), expected);

    // Tracker 2 comes back: the session is still valid (shared log), no login typed.
    t2.restart();
    let (first, items) = c.list("list_groups");
    assert_eq!(first, "1 group");
    assert_eq!(items, ["  g  owner=alice  members=1  [owner]"]);
    assert_eq!(c.cmd("create_group h"), "group h created");

    // And back to tracker 1 when 2 dies again.
    t1.restart();
    t2.kill9();
    assert_eq!(c.list("list_groups").0, "2 groups");
    assert_eq!(c.cmd("logout"), "logged out");
    c.close_stdin();
    assert_eq!(c.wait_exit(WAIT), Some(0));
    for line in notes(&c) {
        assert!(line.starts_with("note: "), "unexpected stderr line: {line}");
    }
}

/// A session the tracker no longer accepts (here: its data dir was replaced, so
/// the session is unknown) is renewed with the cached credentials, invisibly.
#[test]
fn refused_session_is_renewed_with_cached_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let mut t = TrackerProc::start(&info, 1, &dir.path().join("data1"));
    let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);
    assert_eq!(c.cmd("create_user alice pw"), "user alice created");
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    t.kill9();
    // A fresh tracker state that knows alice (same password) but not her session.
    let fresh = dir.path().join("data2");
    let t2 = TrackerProc::start(&info, 1, &fresh);
    let mut admin = t2.connect();
    admin.ok(None, "create_user", &["alice", "pw"]);
    drop(t);
    assert_eq!(c.cmd("create_group g"), "group g created");
    assert_eq!(
        c.list("list_groups").1,
        ["  g  owner=alice  members=1  [owner]"]
    );
}

/// How a fake tracker behaves.
#[derive(Clone)]
enum Fake {
    /// Reads a request, sends half a reply, closes the connection.
    DiesMidReply,
    /// Reads requests and never answers (connection kept open).
    Silent,
    /// Answers every request with success (`login` gets a token) and records it.
    Recording(Arc<Mutex<Vec<Request>>>),
}

/// A fake tracker on 127.0.0.1; returns its port. Its threads end with the test process.
fn fake_tracker(kind: Fake) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let kind = kind.clone();
            std::thread::spawn(move || serve_fake(stream, kind));
        }
    });
    port
}

fn serve_fake(mut stream: std::net::TcpStream, kind: Fake) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        match &kind {
            Fake::DiesMidReply => {
                let _ = stream.write_all(b"OK\n- half a row");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            Fake::Silent => {}
            Fake::Recording(log) => {
                let req = Request::decode(&line).expect("client sent a well-formed request");
                let reply = if req.command == "login" {
                    Reply::Ok {
                        // The token, and the ticket key a real tracker sends.
                        head: vec![
                            "0123456789abcdef0123456789abcdef".into(),
                            wire::ticket::public_key_hex(
                                &wire::ticket::new_key_pair().unwrap().verifying_key(),
                            ),
                        ],
                        rows: vec![],
                    }
                } else {
                    Reply::ok()
                };
                log.lock().unwrap().push(req);
                if stream.write_all(&reply.encode()).is_err() {
                    return;
                }
            }
        }
    }
}

#[test]
fn tracker_dying_mid_reply_or_silent_is_skipped() {
    for kind in [Fake::DiesMidReply, Fake::Silent] {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_tracker(kind);
        let info = write_tracker_info(dir.path(), &[fake, free_port()]);
        let real = TrackerProc::start(&info, 2, &dir.path().join("data"));
        let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);
        let started = Instant::now();
        assert_eq!(c.cmd("create_user alice pw"), "user alice created");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(c.cmd("login alice pw"), "logged in as alice");
        assert_eq!(c.cmd("create_group g"), "group g created");
        assert_eq!(c.list("list_groups").0, "1 group");
        assert_eq!(
            notes(&c),
            [format!(
                "note: tracker 127.0.0.1:{fake} unreachable, using {}",
                real.addr
            )]
        );
    }
}

/// `heartbeat <peer_addr>` goes out every `--announce-secs` while logged in, with
/// the session token, and prints nothing; the announced address is the local IP
/// of the tracker connection with the peer server's port (listening on 0.0.0.0).
/// `--seed` keeps the client up after end of input until SIGTERM.
#[test]
fn heartbeats_and_seed_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let fake = fake_tracker(Fake::Recording(log.clone()));
    let info = write_tracker_info(dir.path(), &[fake]);
    let state = dir.path().join("c");
    let args: Vec<String> = [
        info.display().to_string().as_str(),
        "--state-dir",
        state.display().to_string().as_str(),
        "--listen",
        "0.0.0.0:0",
        "--announce-secs",
        "1",
        "--seed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c = ClientProc::start_args(&args, &state);
    let beats = || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|r| r.command == "heartbeat")
            .count()
    };
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert!(
        wait_until(Duration::from_secs(10), || beats() >= 2),
        "{} heartbeats in 10 s with --announce-secs 1",
        beats()
    );
    assert_eq!(c.cmd("create_group g"), "group g created");
    // The announced address reaches the running peer server.
    let announced = log
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.command == "heartbeat")
        .map(|r| r.args[0].clone())
        .expect("a heartbeat was sent");
    std::net::TcpStream::connect(&announced)
        .expect("peer server reachable at the announced address");
    // After end of input, --seed keeps the client up: it goes on announcing.
    c.close_stdin();
    let before = beats();
    assert!(
        wait_until(Duration::from_secs(10), || beats() >= before + 2),
        "no heartbeat after end of input; stderr: {:?}",
        notes(&c)
    );
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "--seed exited at end of input"
    );
    assert!(c.stdout.next_line(Duration::from_millis(100)).is_none());
    assert!(notes(&c).is_empty(), "{:?}", notes(&c));
    unsafe {
        libc::kill(c.pid() as i32, libc::SIGTERM);
    }
    assert_eq!(c.wait_exit(WAIT), Some(0));

    let reqs = log.lock().unwrap().clone();
    // A change carries a request id (exactly once across failover), a read none.
    let mut login = reqs[0].clone();
    assert!(login.request_id.take().is_some(), "{login:?}");
    assert_eq!(login, Request::new(None, "login", &["alice", "pw"]));
    let beats: Vec<&Request> = reqs.iter().filter(|r| r.command == "heartbeat").collect();
    assert!(beats.len() >= 3, "{reqs:?}");
    for b in &beats {
        assert_eq!(b.token.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(b.args.len(), 1);
        let addr: std::net::SocketAddr = b.args[0].parse().unwrap();
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_ne!(addr.port(), 0);
    }
    assert!(reqs
        .iter()
        .any(|r| r.command == "create_group" && r.args == ["g"]));
}

/// A listener on 127.0.0.1 whose accept queue is full: connects to it hang (the
/// kernel drops the SYNs). Returns its port and what must stay alive.
fn blackhole() -> (u16, std::os::fd::OwnedFd, Vec<std::net::TcpStream>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(owned.as_raw_fd(), 0), 0);
        let mut len2 = len;
        assert_eq!(
            libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len2),
            0
        );
        let port = u16::from_be(sa.sin_port);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let fillers = (0..4)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect();
        (port, owned, fillers)
    }
}

#[test]
fn hanging_connect_times_out_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (hole, _fd, _fillers) = blackhole();
    let info = write_tracker_info(dir.path(), &[hole, free_port()]);
    let real = TrackerProc::start(&info, 2, &dir.path().join("data"));
    let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);
    let started = Instant::now();
    assert_eq!(c.cmd("create_user alice pw"), "user alice created");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(
        notes(&c),
        [format!(
            "note: tracker 127.0.0.1:{hole} unreachable, using {}",
            real.addr
        )]
    );
    // The client stays on the tracker that answers: no more waiting.
    let started = Instant::now();
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert!(started.elapsed() < Duration::from_secs(1));
}
