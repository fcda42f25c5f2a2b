//! Exactly-once commands across failover: two trackers share one log; the one the
//! client uses (tracker 1, first in the list) is started with the hidden
//! `--test-exit-after-apply <command>` flag, so it exits right after it appended
//! and applied that command, before replying. The real client then resends the
//! command (same request id) to tracker 2, which must answer with the original
//! outcome: the client prints the normal success line, never `error:`, and the
//! change is made once.
//!
//! One test per mutating shell command. What each checks beyond the printed line,
//! and what makes it fail without the tracker's table of applied request ids:
//! - create_user, create_group, join_group, leave_group, accept_request,
//!   reject_request, stop_share: the resent command would be refused
//!   (`already exists`, `already asked`, `no such group`, `no pending request`,
//!   `not sharing`), so the client would print `error:`.
//! - upload_file: a second upload of the same content is accepted, so the printed
//!   line alone cannot tell; the log must hold exactly one `upload_file` line.
//! - login: a replayed login gives the client a new, valid session and ends the
//!   one the dead tracker created (its token never reached the client); without
//!   the table the user would be left with two live sessions.
//! - logout: a resent logout finds its session gone, which the client treats as
//!   done; this test passes with or without the table and guards that behaviour.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::tracker_state::{open_read_only, read_log};
use harness::{
    free_port, wait_until, write_tracker_info, ClientProc, TrackerConn, TrackerProc, WAIT,
};
use tracker::sync_log::Op;

/// The exit status of `--test-exit-after-apply`.
const FAULT_EXIT: i32 = 86;

struct Failover {
    dir: tempfile::TempDir,
    data: PathBuf,
    t1: TrackerProc,
    t2: TrackerProc,
    client: ClientProc,
}

impl Failover {
    /// Tracker 1 dies after applying `command`; tracker 2 shares its log.
    fn new(command: &str) -> Failover {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
        let t1 = TrackerProc::start_with(&info, 1, &data, &["--test-exit-after-apply", command]);
        let t2 = TrackerProc::start(&info, 2, &data);
        let client = ClientProc::start(&info, &dir.path().join("client"), &[]);
        Failover {
            dir,
            data,
            t1,
            t2,
            client,
        }
    }

    /// A command that must succeed before the fault (through tracker 1).
    fn step(&mut self, line: &str, want: &str) {
        assert_eq!(self.client.cmd(line), want, "{line}");
    }

    /// A raw protocol connection to tracker 2 (another user's requests).
    fn other(&self) -> TrackerConn {
        self.t2.connect()
    }

    /// The command under test: tracker 1 applies it and exits unanswered; the
    /// client must print `want` (through tracker 2) and no error.
    fn faulted(&mut self, line: &str, want: &str) {
        let out = self.client.cmd(line);
        assert_eq!(
            out,
            want,
            "{line}: stderr of the client:\n{}\nstderr of tracker 2:\n{}",
            self.client.stderr.text(),
            self.t2.stderr.text()
        );
        let code = exit_code(&mut self.t1);
        assert_eq!(
            code,
            FAULT_EXIT,
            "tracker 1 did not exit by the fault injection; stderr:\n{}",
            self.t1.stderr.text()
        );
        // The pipes' reader threads may still be catching up: bounded waits.
        let t1_said = wait_until(WAIT, || {
            self.t1.stderr.text().contains("exiting after applying")
        });
        assert!(t1_said, "tracker 1 stderr:\n{}", self.t1.stderr.text());
        let note = format!("note: tracker {} unreachable", self.t1.addr);
        let failed_over = wait_until(WAIT, || self.client.stderr.text().contains(&note));
        assert!(
            failed_over,
            "the client did not fail over: {}",
            self.client.stderr.text()
        );
        self.t2.assert_alive();
    }

    /// Log entries whose op matches.
    fn count_ops(&self, pred: impl Fn(&Op) -> bool) -> usize {
        let (_, entries) = read_log(&self.data.join("sync_log.txt"));
        entries.iter().filter(|e| pred(&e.op)).count()
    }

    /// Runs `sql` (one integer) on tracker 2's cache.
    fn count_rows(&self, sql: &str) -> i64 {
        open_read_only(&self.data.join("tracker2.db"))
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    fn file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        path
    }
}

/// Waits up to [`WAIT`] for the process to exit; its exit code (-1 for a signal).
fn exit_code(t: &mut TrackerProc) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = t.child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "tracker 1 is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logged_in(f: &mut Failover, user: &str) {
    f.step(
        &format!("create_user {user} pw"),
        &format!("user {user} created"),
    );
    f.step(&format!("login {user} pw"), &format!("logged in as {user}"));
}

/// Tracker 2: `bob` asks to join `g`.
fn bob_asks_to_join(f: &Failover, group: &str) {
    let mut bob = f.other();
    let token = bob.user("bob", "pw");
    bob.ok(Some(&token), "join_group", &[group]);
}

fn upload(f: &mut Failover, path: &Path) {
    f.step(
        &format!("upload_file {} g", path.display()),
        "uploaded f.bin to g (1000 bytes, 1 piece)",
    );
}

#[test]
fn create_user_once() {
    let mut f = Failover::new("create_user");
    f.faulted("create_user alice pw", "user alice created");
    f.step("login alice pw", "logged in as alice");
}

#[test]
fn login_once() {
    let mut f = Failover::new("login");
    f.step("create_user alice pw", "user alice created");
    f.faulted("login alice pw", "logged in as alice");
    // The session the client holds works, and it is the user's only one.
    f.step("create_group g", "group g created");
    assert_eq!(
        f.count_rows("SELECT count(*) FROM sessions WHERE user_id = 'alice'"),
        1
    );
}

#[test]
fn create_group_once() {
    let mut f = Failover::new("create_group");
    logged_in(&mut f, "alice");
    f.faulted("create_group g", "group g created");
    assert_eq!(f.client.list("list_groups").0, "1 group");
}

#[test]
fn join_group_once() {
    let mut f = Failover::new("join_group");
    let mut owner = f.other();
    let token = owner.user("owner", "pw");
    owner.ok(Some(&token), "create_group", &["g"]);
    logged_in(&mut f, "alice");
    f.faulted("join_group g", "join request sent to g");
    let (_, rows) = owner.ok(Some(&token), "list_requests", &["g"]);
    assert_eq!(rows, [vec!["alice".to_string()]]);
}

#[test]
fn leave_group_once() {
    let mut f = Failover::new("leave_group");
    logged_in(&mut f, "alice");
    f.step("create_group g", "group g created");
    f.faulted("leave_group g", "left group g");
    assert_eq!(f.client.list("list_groups").0, "0 groups");
}

#[test]
fn accept_request_once() {
    let mut f = Failover::new("accept_request");
    logged_in(&mut f, "alice");
    f.step("create_group g", "group g created");
    bob_asks_to_join(&f, "g");
    f.faulted("accept_request g bob", "bob accepted into g");
    assert_eq!(
        f.client.list("list_groups").1[0],
        "  g  owner=alice  members=2  [owner]"
    );
}

#[test]
fn reject_request_once() {
    let mut f = Failover::new("reject_request");
    logged_in(&mut f, "alice");
    f.step("create_group g", "group g created");
    bob_asks_to_join(&f, "g");
    f.faulted("reject_request g bob", "request of bob to join g rejected");
    assert_eq!(
        f.client.list("list_requests g").0,
        "0 pending requests for g"
    );
}

#[test]
fn upload_file_once() {
    let mut f = Failover::new("upload_file");
    logged_in(&mut f, "alice");
    f.step("create_group g", "group g created");
    let path = f.file("f.bin", 1000);
    f.faulted(
        &format!("upload_file {} g", path.display()),
        "uploaded f.bin to g (1000 bytes, 1 piece)",
    );
    assert_eq!(
        f.client.list("list_files g").1,
        ["  f.bin  1000 bytes  1 seeder"]
    );
    let uploads = f.count_ops(|op| matches!(op, Op::UploadFile { .. }));
    assert_eq!(uploads, 1, "the upload was made more than once");
}

#[test]
fn stop_share_once() {
    let mut f = Failover::new("stop_share");
    logged_in(&mut f, "alice");
    f.step("create_group g", "group g created");
    let path = f.file("f.bin", 1000);
    upload(&mut f, &path);
    f.faulted("stop_share g f.bin", "stopped sharing f.bin in g");
    assert_eq!(
        f.client.list("list_files g").1,
        ["  f.bin  1000 bytes  0 seeders"]
    );
}

#[test]
fn logout_once() {
    let mut f = Failover::new("logout");
    logged_in(&mut f, "alice");
    f.faulted("logout", "logged out");
    assert_eq!(
        f.count_rows("SELECT count(*) FROM sessions WHERE user_id = 'alice'"),
        0
    );
    f.step("login alice pw", "logged in as alice");
}
