//! The `client` binary's command line, run for real: both forms (`client <info>`
//! and the assignment's `client IP:PORT <info>`) start a peer server on the
//! address asked for and take shell commands; `--help` describes both; a bad
//! flag, a bad `IP:PORT`, a missing or malformed tracker_info.txt (naming the
//! line) exit with status 2 and one clear line; a taken listen address exits
//! with status 1. No tracker is needed: the client reaches one only for
//! commands that need it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bound on every wait here.
const WAIT: Duration = Duration::from_secs(20);

/// What a finished run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn client(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_client"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits up to [`WAIT`] for `child` to exit (killing it, by its PID, if it does
/// not) and collects its output.
fn finish(mut child: Child) -> Run {
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("client did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Runs the client with `args` and `input` on stdin (then end of input).
fn run(args: &[&str], input: &str) -> Run {
    let mut child = client(args).spawn().expect("spawn client");
    let mut stdin = child.stdin.take().unwrap();
    // A client that exits on bad arguments never reads: ignore a broken pipe.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    finish(child)
}

/// Asserts a usage failure: status 2, nothing on stdout, `want` on stderr.
fn assert_refused(r: &Run, want: &str) {
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
    assert!(
        r.stderr.contains(want),
        "expected {want:?} in:\n{}",
        r.stderr
    );
}

fn tracker_info(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tracker_info.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the client with `args`, waits until its peer server accepts on
/// `port`, checks the shell answers, then `quit` ends it with status 0.
fn assert_serves_on(args: &[&str], port: u16) {
    let mut child = client(args).spawn().expect("spawn client");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let r = finish(child);
            panic!(
                "no peer server on port {port} (args {args:?}); stderr:\n{}",
                r.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"show_downloads\nquit\n").unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout.lines().next(), Some("0 downloads"), "{}", r.stdout);
}

#[test]
fn help_describes_both_forms_and_the_options() {
    let r = run(&["--help"], "");
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for want in [
        "Usage: client",
        "<TRACKER_INFO | IP:PORT>",
        "[TRACKER_INFO]",
        "--listen <ADDR>",
        "--state-dir <DIR>",
        "--threads <N>",
        "--retries <N>",
        "--seed",
        "--announce-secs <N>",
        "--log-level <LEVEL>",
    ] {
        assert!(
            r.stdout.contains(want),
            "{want:?} not in --help:\n{}",
            r.stdout
        );
    }
}

#[test]
fn bad_flags_and_arguments_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let info = tracker_info(dir.path(), "127.0.0.1:7001\n");
    let info = info.to_str().unwrap();
    assert_refused(
        &run(&[info, "--bogus"], ""),
        "unexpected argument '--bogus'",
    );
    assert_refused(&run(&[], ""), "required arguments were not provided");
    assert_refused(&run(&[info, "--threads", "0"], ""), "--threads <N>");
    assert_refused(&run(&[info, "--listen", "nowhere"], ""), "--listen <ADDR>");
    assert_refused(
        &run(&["not-an-address", info], ""),
        "error: with two arguments the first must be the peer server's IP:PORT, got \"not-an-address\"",
    );
    assert_refused(
        &run(&["127.0.0.1:5000", info, "--listen", "127.0.0.1:5001"], ""),
        "error: 127.0.0.1:5000 and --listen 127.0.0.1:5001 disagree",
    );
    assert_refused(&run(&[info, info, info], ""), "unexpected argument");
}

#[test]
fn unusable_tracker_info_exits_2_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let info = tracker_info(
        dir.path(),
        "# trackers\n127.0.0.1:7001\n\n127.0.0.1 no-port\n127.0.0.1:7003\n",
    );
    let shown = info.display().to_string();
    let r = run(&[&shown], "");
    assert_refused(
        &r,
        &format!(
            "error: {shown} line 4: malformed tracker address \"127.0.0.1 no-port\" (expected HOST:PORT or HOST PORT)"
        ),
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // The same through the assignment's form.
    let r = run(&["127.0.0.1:0", &shown], "");
    assert_refused(&r, &format!("error: {shown} line 4: "));

    let missing = dir.path().join("missing.txt").display().to_string();
    assert_refused(
        &run(&[&missing], ""),
        &format!("error: cannot read {missing}: "),
    );
    let empty = tracker_info(dir.path(), "# nothing\n\n")
        .display()
        .to_string();
    assert_refused(
        &run(&[&empty], ""),
        &format!("error: {empty}: no trackers listed"),
    );
}

#[test]
fn both_forms_serve_on_the_address_given() {
    let dir = tempfile::tempdir().unwrap();
    let info = tracker_info(dir.path(), "127.0.0.1:1\n");
    let info = info.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();

    // The assignment's form: IP:PORT is the peer server's address.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    assert_serves_on(&[&addr, info, "--state-dir", state], port);

    // The one-argument form with --listen.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    assert_serves_on(&[info, "--listen", &addr, "--state-dir", state], port);

    // End of input (nothing running) exits 0 too.
    let r = run(&[info, "--listen", "127.0.0.1:0", "--state-dir", state], "");
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn a_taken_listen_address_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let info = tracker_info(dir.path(), "127.0.0.1:1\n");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = dir.path().join("state");
    let r = run(
        &[
            &addr,
            info.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert!(r.stderr.contains(&addr), "{}", r.stderr);
}
