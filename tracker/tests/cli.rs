//! The tracker binary's command line and lifecycle: argument errors, the
//! `listening on` line, stopping on SIGTERM, SIGINT and `quit`, and carrying on
//! when stdin ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(20);

fn tracker(info: &Path, no: &str, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracker"));
    cmd.arg(info).arg(no).arg("--data-dir").arg(data);
    cmd
}

/// Runs the tracker to completion (bounded) and returns (exit code, stderr).
fn run_to_end(mut cmd: Command) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_exit(&mut child).expect("tracker should exit at once");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err)
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Starts a tracker on port 0 and waits for its `listening on` line; returns the
/// child and the address.
fn start(dir: &Path, stdin: Stdio) -> (Child, String) {
    let info = dir.join("tracker_info.txt");
    std::fs::write(&info, "# test\n127.0.0.1 0\n").unwrap();
    let mut child = tracker(&info, "1", &dir.join("data"))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(BOUND).expect("listening line");
    let addr = line
        .strip_prefix("tracker 1 listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

fn whoami_works(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(b"- whoami\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).ends_with("END_OF_REPLY\n")
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = dir.path().join("info.txt");

    std::fs::write(&info, "127.0.0.1:7001\n\n# c\nnot an address at all\n").unwrap();
    let (code, err) = run_to_end(tracker(&info, "1", &data));
    assert_ne!(code, 0);
    assert!(err.contains("line 4"), "{err}");

    std::fs::write(&info, "127.0.0.1:7001\n").unwrap();
    let (code, err) = run_to_end(tracker(&info, "2", &data));
    assert_ne!(code, 0);
    assert!(err.contains("tracker number 2"), "{err}");
    let (code, _) = run_to_end(tracker(&info, "0", &data));
    assert_ne!(code, 0);

    let (code, err) = run_to_end(tracker(&dir.path().join("missing.txt"), "1", &data));
    assert_ne!(code, 0);
    assert!(err.contains("missing.txt"), "{err}");

    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("sync_log.txt"), "something else\n").unwrap();
    let (code, err) = run_to_end(tracker(&info, "1", &data));
    assert_ne!(code, 0);
    assert!(err.contains("unsupported format"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("sync_log.txt")).unwrap(),
        "something else\n"
    );
}

#[test]
fn stops_on_quit_but_not_at_end_of_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path(), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    assert!(whoami_works(&addr));
    // The same tracker number cannot run twice on one data dir.
    let (code, err) = run_to_end(tracker(
        &dir.path().join("tracker_info.txt"),
        "1",
        &dir.path().join("data"),
    ));
    assert_ne!(code, 0);
    assert!(err.contains("already running"), "{err}");
    stdin.write_all(b"quit\n").unwrap();
    assert_eq!(wait_exit(&mut child), Some(0));

    // With stdin at its end from the start (a service), it keeps running.
    let (mut child, addr) = start(dir.path(), Stdio::null());
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none());
    assert!(whoami_works(&addr));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn stops_cleanly_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr) = start(dir.path(), Stdio::null());
        assert!(whoami_works(&addr));
        // SAFETY: signalling the child we spawned, by its PID.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        assert_eq!(wait_exit(&mut child), Some(0), "signal {sig}");
    }
}
