//! The client's shell end to end: malformed input is refused with one clear
//! `error:` line and the shell goes on; the assignment's `client IP:PORT
//! tracker_info.txt` form with the commands as its users type them; exit codes.

use std::io::Write;
use std::time::Duration;

use harness::{bin_path, free_port, lone_tracker, ClientProc, TrackerProc, WAIT};

/// A lone tracker, its temp dir and its tracker_info.txt.
fn one_tracker() -> (tempfile::TempDir, std::path::PathBuf, TrackerProc) {
    let (dir, t) = lone_tracker(&[]);
    let info = t.info.clone();
    (dir, info, t)
}

#[test]
fn malformed_input_is_refused_and_the_shell_continues() {
    let (dir, info, _t) = one_tracker();
    let mut c = ClientProc::start(&info, &dir.path().join("c"), &[]);

    assert_eq!(
        c.cmd("frobnicate now"),
        "error: unknown command \"frobnicate\" (type help for the list)"
    );
    assert_eq!(
        c.cmd("login onlyone"),
        "error: usage: login <user_id> <password>"
    );
    assert_eq!(
        c.cmd("create_user a b c"),
        "error: usage: create_user <user_id> <password>"
    );
    assert_eq!(
        c.cmd("create_user \"unbalanced pw"),
        "error: unbalanced double quote"
    );
    assert_eq!(
        c.cmd("list_groups"),
        "error: not logged in (use login <user_id> <password>)"
    );
    assert_eq!(
        c.cmd("create_group g"),
        "error: not logged in (use login <user_id> <password>)"
    );
    assert_eq!(
        c.cmd("download_file g f /tmp"),
        "error: not logged in (use login <user_id> <password>)"
    );

    // A 1 MiB line: refused without being buffered, the next line is fine.
    let long = format!("create_group {}", "x".repeat(1024 * 1024));
    assert_eq!(c.cmd(&long), "error: line too long (more than 65536 bytes)");

    // Bytes that are not UTF-8.
    {
        let stdin = c.stdin.as_mut().unwrap();
        stdin.write_all(b"create_user \xff\xfe pw\n").unwrap();
        stdin.flush().unwrap();
    }
    assert_eq!(
        c.stdout.next_line(WAIT).unwrap(),
        "error: line is not valid UTF-8"
    );

    // Blank lines print nothing: the next line printed is the next command's.
    c.send("");
    c.send("   ");
    assert_eq!(
        c.cmd("create_user alice \"pass word\""),
        "user alice created"
    );
    assert_eq!(c.cmd("login alice \"pass word\""), "logged in as alice");
    assert_eq!(
        c.cmd("login alice x"),
        "error: already logged in as alice (logout first)"
    );
    assert_eq!(c.cmd("list_groups extra"), "error: usage: list_groups");
    assert_eq!(
        c.cmd("upload_file only_one"),
        "error: usage: upload_file <file_path> <group_id>"
    );
    assert_eq!(
        c.cmd("create_group \"a \\\"quoted\\\" name\""),
        "group a \"quoted\" name created"
    );
    let (first, items) = c.list("list_groups");
    assert_eq!(first, "1 group");
    assert_eq!(
        items,
        ["  a \"quoted\" name  owner=alice  members=1  [owner]"]
    );
    let (first, items) = c.list("help");
    assert_eq!(first, "18 commands");
    assert!(items.contains(&"  rate_limit [up RATE] [down RATE]".to_string()));
    assert!(items.contains(&"  accept_request <group_id> <user_id>".to_string()));
    let (first, _) = c.list("show_downloads");
    assert_eq!(first, "0 downloads");
    // A tracker error is printed verbatim after `error: `.
    let e = c.cmd("join_group nosuchgroup");
    assert!(e.starts_with("error: "), "{e}");

    c.close_stdin();
    assert_eq!(c.wait_exit(WAIT), Some(0), "stderr:\n{}", c.stderr.text());
    assert!(!c.stderr.text().contains("panicked"), "{}", c.stderr.text());
}

/// The commands exactly as the original assignment's users type them, with the
/// `client <IP>:<PORT> tracker_info.txt` form.
#[test]
fn assignment_form_and_commands() {
    let (dir, info, _t) = one_tracker();
    let start = |name: &str| {
        let state = dir.path().join(name);
        let args = vec![
            format!("127.0.0.1:{}", free_port()),
            info.display().to_string(),
            "--state-dir".to_string(),
            state.display().to_string(),
        ];
        ClientProc::start_args(&args, &state)
    };
    let mut a = start("a");
    let mut b = start("b");

    assert_eq!(a.cmd("create_user u1 p1"), "user u1 created");
    assert_eq!(a.cmd("login u1 p1"), "logged in as u1");
    assert_eq!(a.cmd("create_group g1"), "group g1 created");
    assert_eq!(b.cmd("create_user u2 p2"), "user u2 created");
    assert_eq!(b.cmd("login u2 p2"), "logged in as u2");
    assert_eq!(b.cmd("join_group g1"), "join request sent to g1");
    assert_eq!(
        a.list("list_requests g1"),
        (
            "1 pending request for g1".to_string(),
            vec!["  u2".to_string()]
        )
    );
    assert_eq!(a.cmd("accept_request g1 u2"), "u2 accepted into g1");
    let (first, items) = b.list("list_groups");
    assert_eq!(first, "1 group");
    assert_eq!(items, ["  g1  owner=u1  members=2  [member]"]);
    assert_eq!(
        b.list("list_files g1"),
        ("0 files in g1".to_string(), vec![])
    );
    assert_eq!(b.cmd("leave_group g1"), "left group g1");
    let (_, items) = a.list("list_groups");
    assert_eq!(items, ["  g1  owner=u1  members=1  [owner]"]);
    assert_eq!(b.cmd("logout"), "logged out");
    assert_eq!(a.cmd("logout"), "logged out");
    assert_eq!(
        a.cmd("list_groups"),
        "error: not logged in (use login <user_id> <password>)"
    );

    // `quit` exits at once, whatever follows it.
    a.send_at_once("quit\ncreate_user never typed\n");
    assert_eq!(a.wait_exit(WAIT), Some(0));
    assert!(a.stdout.next_line(Duration::from_millis(200)).is_none());
}

#[test]
fn bad_tracker_info_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let info = dir.path().join("tracker_info.txt");
    std::fs::write(
        &info,
        "# trackers\n127.0.0.1:7001\n\nnot an address at all\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin_path("client"))
        .arg(&info)
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains(" line 4: malformed tracker address"),
        "{err}"
    );

    // `HOST PORT` lines are accepted, and with no tracker running a command fails
    // clearly while the client stays usable.
    std::fs::write(&info, format!("127.0.0.1 {}\n", free_port())).unwrap();
    let mut c = ClientProc::start(&info, &dir.path().join("s"), &[]);
    let e = c.cmd("create_user a b");
    assert!(
        e.starts_with("error: no tracker reachable (tried 127.0.0.1:"),
        "{e}"
    );
    assert_eq!(c.cmd("show_downloads"), "0 downloads");
    c.close_stdin();
    assert_eq!(c.wait_exit(WAIT), Some(0));
}
