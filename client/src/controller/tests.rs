//! Unit tests of the controller: no sockets, no threads, no real clock. A
//! [`World`] plays the IO side: it records what the controller asks for and
//! answers the actions that need an answer, as the event loop does.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::file_meta::FileMeta;

use super::downloading::{FIRST_REFRESH, REFRESH_EVERY};
use super::paths::{LocalFiles, PathKind};
use super::*;
use crate::shell::ShellError;
use crate::storage::ResumeState;
use crate::tracker_link::{Answer, LinkError, LinkRequest, ReqId};
use crate::transfers::{Reannounce, RunningDownload, TrackerJob};

const ANNOUNCE: Duration = Duration::from_secs(15);

/// A file system of a few known paths.
#[derive(Default)]
struct FakeFiles(HashMap<PathBuf, PathKind>);

impl LocalFiles for FakeFiles {
    fn kind(&self, path: &Path) -> io::Result<PathKind> {
        self.0
            .get(path)
            .copied()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        self.0.contains_key(path).then(|| path.to_path_buf())
    }
}

/// The IO side, played by the test.
struct World {
    c: Controller,
    now: Instant,
    /// Requests sent and not answered yet.
    sent: Vec<(ReqId, LinkRequest)>,
    stdout: Vec<String>,
    notes: Vec<String>,
    acks: usize,
    /// Every other action, in order.
    effects: Vec<Action>,
    exit: Option<i32>,
    /// How often the running downloads were asked to announce themselves again.
    download_reannounces: usize,
    /// The users whose state was put in use, in order.
    state_of: Vec<String>,
    /// What the answers to CheckRegistry, FindResumes, StartDownload and
    /// ReportDownloads will be.
    registry: Reannounce,
    resumes: Vec<ResumeState>,
    start_result: Result<(), String>,
    status: Vec<String>,
    /// What the answer to PinTrackerKey will be.
    pin_result: Result<(), String>,
}

impl World {
    fn new(seed: bool) -> World {
        let mut files = FakeFiles::default();
        files.0.insert("/data/f.bin".into(), PathKind::File);
        files.0.insert("/data".into(), PathKind::Dir);
        files.0.insert("/dl".into(), PathKind::Dir);
        let config = Config {
            announce: ANNOUNCE,
            seed,
            ticket_key: "k".into(),
        };
        World {
            c: Controller::new(config, Box::new(files)),
            now: Instant::now(),
            sent: Vec::new(),
            stdout: Vec::new(),
            notes: Vec::new(),
            acks: 0,
            effects: Vec::new(),
            exit: None,
            download_reannounces: 0,
            state_of: Vec::new(),
            registry: Reannounce::default(),
            resumes: Vec::new(),
            start_result: Ok(()),
            status: Vec::new(),
            pin_result: Ok(()),
        }
    }

    fn feed(&mut self, event: Event) {
        for action in self.c.handle(event, self.now) {
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Send { id, request } => self.sent.push((id, request)),
            Action::Print(lines) => self.stdout.extend(lines),
            Action::Note(line) => self.notes.push(line),
            Action::Ack => self.acks += 1,
            Action::CheckRegistry => {
                let found = std::mem::take(&mut self.registry);
                self.feed(Event::RegistryChecked(found));
            }
            Action::FindResumes => {
                let found = self.resumes.clone();
                self.feed(Event::ResumesFound(found));
            }
            Action::StartDownload {
                order,
                meta,
                peers,
                ticket,
            } => {
                let result = self.start_result.clone();
                self.effects.push(Action::StartDownload {
                    order: order.clone(),
                    meta,
                    peers,
                    ticket,
                });
                self.feed(Event::DownloadStarted { order, result });
            }
            Action::ReportDownloads => self.feed(Event::DownloadLines(self.status.clone())),
            Action::PinTrackerKey { key } => {
                self.effects.push(Action::PinTrackerKey { key });
                self.feed(Event::TrackerKeyChecked(self.pin_result.clone()));
            }
            Action::Exit(code) => self.exit = Some(code),
            Action::ReannounceDownloads => self.download_reannounces += 1,
            Action::UseStateOf { user } => self.state_of.push(user),
            other => self.effects.push(other),
        }
    }

    fn line(&mut self, line: &str) {
        assert!(self.c.wants_input(), "a command is still running");
        self.feed(Event::Input(Input::Line(line.into())));
    }

    /// Answers the oldest unanswered request for `command`; returns it.
    fn answer(&mut self, command: &str, outcome: Outcome) -> LinkRequest {
        let i = self
            .sent
            .iter()
            .position(|(_, r)| r.command.name() == command)
            .unwrap_or_else(|| panic!("no {command} request sent; sent: {:?}", self.sent));
        let (id, request) = self.sent.remove(i);
        self.feed(Event::Answer { id, outcome });
        request
    }

    fn ok(&mut self, command: &str, head: &[&str], rows: &[&[&str]]) -> LinkRequest {
        let answer = Answer {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|s| s.to_string()).collect())
                .collect(),
        };
        self.answer(command, Ok(answer))
    }

    fn tick(&mut self, downloads: &[RunningDownload]) {
        self.feed(Event::Tick {
            downloads: downloads.to_vec(),
        });
    }

    fn login(&mut self) {
        self.line("login alice pw");
        self.ok("login", &["token", "trackerkey"], &[]);
        assert_eq!(self.stdout.pop().as_deref(), Some("logged in as alice"));
        assert!(
            self.effects.contains(&Action::StartServing),
            "{:?}",
            self.effects
        );
        self.effects
            .retain(|a| !matches!(a, Action::PinTrackerKey { .. } | Action::StartServing));
    }

    fn count_sent(&self, command: &str) -> usize {
        self.sent
            .iter()
            .filter(|(_, r)| r.command.name() == command)
            .count()
    }
}

fn meta(name: &str, size: u64) -> FileMeta {
    let piece_size = 512 * 1024;
    FileMeta {
        name: name.into(),
        size,
        piece_size,
        piece_hashes: vec![[7; 20]; FileMeta::piece_count_for(size, piece_size)],
        file_sha1: [9; 20],
    }
}

/// The head of a `file_info` answer for `m`.
fn info_head(m: &FileMeta) -> Vec<String> {
    vec![
        m.name.clone(),
        m.size.to_string(),
        m.piece_size.to_string(),
        m.file_sha1_hex(),
        m.piece_hashes_hex(),
        "t1".into(),
    ]
}

fn file_info(w: &mut World, m: &FileMeta, seeders: &[&str]) {
    let head = info_head(m);
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    let rows: Vec<&[&str]> = seeders.iter().map(std::slice::from_ref).collect();
    w.ok("file_info", &head, &rows);
}

fn running(group: &str, name: &str, needs_peers: bool) -> RunningDownload {
    RunningDownload {
        group: group.into(),
        name: name.into(),
        needs_peers,
    }
}

fn key(group: &str, name: &str) -> DownloadKey {
    DownloadKey {
        group: group.into(),
        name: name.into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn command_flow_login_create_group_and_lists() {
    let mut w = World::new(false);
    w.line("create_group g");
    assert_eq!(
        w.stdout,
        ["error: not logged in (use login <user_id> <password>)"]
    );
    assert!(w.sent.is_empty());
    w.line("login alice pw");
    assert!(!w.c.wants_input(), "the next line waits for the answer");
    let req = w.ok("login", &["token"], &[]);
    assert_eq!(req.command.args(), ["alice", "pw"]);
    assert!(!req.internal);
    assert_eq!(w.c.user(), Some("alice"));
    w.line("create_group g");
    assert_eq!(w.ok("create_group", &[], &[]).command.args(), ["g"]);
    w.line("list_groups");
    w.ok("list_groups", &[], &[&["g", "alice", "1", "owner"]]);
    w.line("list_files g");
    w.ok("list_files", &[], &[&["f", "10", "2"], &["h", "5", "1"]]);
    w.line("list_requests g");
    w.ok("list_requests", &[], &[]);
    w.line("");
    w.feed(Event::Input(Input::Bad(ShellError::TooLong)));
    assert_eq!(
        w.stdout,
        [
            "error: not logged in (use login <user_id> <password>)",
            "logged in as alice",
            "group g created",
            "1 group",
            "  g  owner=alice  members=1  [owner]",
            "2 files in g",
            "  f  10 bytes  2 seeders",
            "  h  5 bytes  1 seeder",
            "0 pending requests for g",
            "error: line too long (more than 65536 bytes)",
        ]
    );
    // One acknowledgement per command (the blank line included).
    assert_eq!(w.acks, 8);
    assert!(w.c.wants_input());
}

#[test]
fn tracker_failures_as_the_controller_sees_them() {
    let mut w = World::new(false);
    w.line("login alice pw");
    w.answer("login", Err(LinkError::Tracker("wrong password".into())));
    assert_eq!(w.stdout.pop().as_deref(), Some("error: wrong password"));
    assert_eq!(w.c.user(), None, "a failed login logs no one in");
    w.login();
    // Failover: the link's note goes to stderr, the command still succeeds.
    w.line("join_group g");
    w.feed(Event::LinkNote(
        "note: tracker a:1 unreachable, using b:2".into(),
    ));
    w.ok("join_group", &[], &[]);
    assert_eq!(w.notes, ["note: tracker a:1 unreachable, using b:2"]);
    assert_eq!(w.stdout.pop().as_deref(), Some("join request sent to g"));
    // Every tracker gone: one error line, and the session is kept for later.
    w.line("create_group h");
    let tried = vec!["a:1".to_string(), "b:2".to_string()];
    w.answer("create_group", Err(LinkError::Unreachable { tried }));
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: no tracker reachable (tried a:1, b:2)")
    );
    // The session was refused and the link's automatic re-login failed.
    w.line("list_groups");
    let refused = LinkError::Tracker("re-login failed: invalid session".into());
    w.answer("list_groups", Err(refused));
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: re-login failed: invalid session")
    );
    assert_eq!(w.c.user(), Some("alice"));
    w.line("logout");
    w.ok("logout", &[], &[]);
    assert_eq!(w.stdout.pop().as_deref(), Some("logged out"));
    assert_eq!(w.c.user(), None);
    w.line("list_groups");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: not logged in (use login <user_id> <password>)")
    );
}

/// The tracker link logged in again on its own (a refused session): everything
/// the old session seeded is announced again under the new one, and the
/// heartbeats go on.
#[test]
fn a_renewed_session_announces_all_the_seeding_again() {
    let mut w = World::new(false);
    let f = meta("f.bin", 1000);
    w.login();
    assert_eq!(w.download_reannounces, 1);
    assert_eq!(
        w.state_of,
        ["alice"],
        "the user's own state, before the registry"
    );
    w.registry = Reannounce {
        unchanged: vec![("g".into(), f.clone(), "/data/f.bin".into())],
        reports: vec![],
    };
    w.feed(Event::SessionRenewed);
    assert_eq!(w.download_reannounces, 2);
    let req = w.ok("upload_file", &[], &[]);
    assert!(req.internal);
    assert_eq!(req.command.args()[1], "f.bin");
    assert_eq!(
        w.effects,
        [Action::AddShare {
            group: "g".into(),
            meta: f,
            path: "/data/f.bin".into()
        }]
    );
    assert!(w.stdout.is_empty() && w.notes.is_empty());
    // Not logged in (e.g. after logout): nothing to move.
    w.line("logout");
    w.ok("logout", &[], &[]);
    w.feed(Event::SessionRenewed);
    assert_eq!(w.download_reannounces, 2);
    assert_eq!(w.count_sent("upload_file"), 0);
}

#[test]
fn login_shares_the_registry_again() {
    let mut w = World::new(false);
    let (f, g2) = (meta("f.bin", 1000), meta("g.bin", 2000));
    w.registry = Reannounce {
        unchanged: vec![
            ("g".into(), f.clone(), "/data/f.bin".into()),
            ("g".into(), g2.clone(), "/data/g.bin".into()),
        ],
        reports: vec!["/data/old changed since it was shared; no longer sharing old in g".into()],
    };
    w.login();
    assert_eq!(
        w.notes,
        ["note: /data/old changed since it was shared; no longer sharing old in g"]
    );
    assert_eq!(w.count_sent("upload_file"), 2);
    let req = w.ok("upload_file", &[], &[]);
    assert!(req.internal, "re-announcing is not a user command");
    assert_eq!(
        req.command.args()[..6],
        [
            "g",
            "f.bin",
            "1000",
            "524288",
            &f.file_sha1_hex(),
            &f.piece_hashes_hex()
        ]
    );
    assert_eq!(
        req.command.args()[6],
        "",
        "the link fills in the peer address"
    );
    assert_eq!(
        w.effects,
        [Action::AddShare {
            group: "g".into(),
            meta: f,
            path: "/data/f.bin".into()
        }]
    );
    w.answer(
        "upload_file",
        Err(LinkError::Tracker("not a member".into())),
    );
    assert_eq!(
        w.notes[1],
        "note: could not share g.bin in g again: not a member"
    );
    assert_eq!(w.effects.len(), 1, "a refused file is not served");
    assert_eq!(
        w.stdout,
        Vec::<String>::new(),
        "stdout keeps one line per command"
    );
}

#[test]
fn login_resumes_unfinished_downloads() {
    let mut w = World::new(false);
    let m = meta("f.bin", 3_000_000);
    let state = |sha1: [u8; 20], name: &str| ResumeState {
        file_sha1: sha1,
        group: "g".into(),
        name: name.into(),
        dest: format!("/dl/{name}").into(),
        size: 3_000_000,
        bits: vec![0x80],
    };
    w.resumes = vec![state(m.file_sha1, "f.bin"), state([1; 20], "other")];
    w.login();
    assert_eq!(w.count_sent("file_info"), 2);
    file_info(&mut w, &m, &["127.0.0.1:5000"]);
    let order = StartOrder {
        key: key("g", "f.bin"),
        dest: "/dl/f.bin".into(),
        resume: true,
    };
    assert_eq!(
        w.effects,
        [Action::StartDownload {
            order,
            meta: m.clone(),
            peers: vec![addr("127.0.0.1:5000")],
            ticket: Some("t1".into()),
        }]
    );
    assert_eq!(
        w.notes,
        ["note: resuming the download of f.bin from g to /dl/f.bin"]
    );
    // The second file was replaced on the tracker since: not resumed.
    file_info(&mut w, &meta("other", 10), &[]);
    assert_eq!(
        w.notes[1],
        "note: other in g is no longer the file being downloaded; not resuming it"
    );
    assert_eq!(w.effects.len(), 1);
    assert_eq!(w.stdout, Vec::<String>::new());
}

#[test]
fn resume_is_asked_once_and_reports_failures() {
    let mut w = World::new(false);
    let m = meta("f.bin", 10);
    w.resumes = vec![ResumeState {
        file_sha1: m.file_sha1,
        group: "g".into(),
        name: "f.bin".into(),
        dest: "/dl/f.bin".into(),
        size: 10,
        bits: vec![0x80],
    }];
    w.login();
    w.line("logout");
    w.ok("logout", &[], &[]);
    w.login();
    assert_eq!(w.count_sent("file_info"), 1, "one resume request per file");
    w.start_result = Err("already downloading f.bin to /dl/f.bin".into());
    file_info(&mut w, &m, &[]);
    assert_eq!(
        w.notes,
        ["note: could not resume the download of f.bin from g: already downloading f.bin to /dl/f.bin"]
    );
    w.line("logout");
    w.ok("logout", &[], &[]);
    w.login();
    w.answer("file_info", Err(LinkError::Tracker("no such file".into())));
    assert_eq!(
        w.notes[1],
        "note: could not resume the download of f.bin from g: no such file"
    );
}

#[test]
fn download_file_starts_a_download() {
    let mut w = World::new(false);
    w.login();
    w.line("download_file g f.bin /nope/out");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: destination directory /nope does not exist")
    );
    w.line("download_file g f.bin /data/f.bin");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: /data/f.bin already exists")
    );
    assert!(w.sent.is_empty());
    let m = meta("f.bin", 100);
    w.line("download_file g f.bin /dl");
    let req = w.sent[0].1.clone();
    assert_eq!((req.command.name(), req.internal), ("file_info", false));
    file_info(&mut w, &m, &["127.0.0.1:5000", "not an address"]);
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("downloading f.bin from g to /dl/f.bin")
    );
    let Action::StartDownload { order, peers, .. } = &w.effects[0] else {
        panic!("{:?}", w.effects)
    };
    assert_eq!(
        (order.dest.as_path(), order.resume),
        (Path::new("/dl/f.bin"), false)
    );
    assert_eq!(peers, &[addr("127.0.0.1:5000")]);
    // Transfers refuses the start: one error line.
    w.start_result = Err("already downloading f.bin to /dl/f.bin".into());
    w.line("download_file g f.bin /dl/copy");
    file_info(&mut w, &m, &[]);
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: already downloading f.bin to /dl/f.bin")
    );
    w.line("download_file g f.bin /dl/x");
    w.ok("file_info", &["f.bin", "100", "0", "zz", ""], &[]);
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: the tracker sent inconsistent file metadata")
    );
    w.status = vec!["[D] [g] f.bin 10%  1.0 MB/s  1 peers".into()];
    w.line("show_downloads");
    assert_eq!(
        w.stdout,
        ["1 download", "[D] [g] f.bin 10%  1.0 MB/s  1 peers"]
    );
    assert!(w.c.wants_input());
}

#[test]
fn upload_hashes_then_announces_then_shares() {
    let mut w = World::new(false);
    w.login();
    w.line("upload_file /nope g");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: /nope: no such file or directory")
    );
    w.line("upload_file /data g");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: /data: not a regular file")
    );
    // The swapped order of some copies of the assignment.
    w.line("upload_file g /data/f.bin");
    assert_eq!(
        w.effects,
        [Action::StartHash {
            path: "/data/f.bin".into()
        }]
    );
    assert!(!w.c.wants_input());
    let mut hashed = meta("", 600_000);
    w.feed(Event::Hashed(Ok(hashed.clone())));
    let req = w.ok("upload_file", &[], &[]);
    assert_eq!(
        (req.command.args()[1].as_str(), req.internal),
        ("f.bin", false)
    );
    hashed.name = "f.bin".into();
    assert_eq!(
        w.effects[1],
        Action::AddShare {
            group: "g".into(),
            meta: hashed,
            path: "/data/f.bin".into()
        }
    );
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("uploaded f.bin to g (600000 bytes, 2 pieces)")
    );
    w.line("upload_file /data/f.bin g");
    w.feed(Event::Hashed(Err("/data/f.bin: read error".into())));
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: /data/f.bin: read error")
    );
    assert_eq!(w.count_sent("upload_file"), 0);
}

#[test]
fn leaving_a_group_or_stopping_a_share_stops_serving() {
    let mut w = World::new(false);
    w.login();
    w.line("leave_group g");
    w.ok("leave_group", &[], &[]);
    w.line("stop_share h f.bin");
    w.ok("stop_share", &[], &[]);
    assert_eq!(
        w.effects,
        [
            Action::RemoveGroupShares { group: "g".into() },
            Action::RemoveShare {
                group: "h".into(),
                name: "f.bin".into()
            }
        ]
    );
    assert_eq!(w.stdout, ["left group g", "stopped sharing f.bin in h"]);
}

#[test]
fn add_seeder_only_while_logged_in() {
    let mut w = World::new(false);
    let job = TrackerJob::AddSeeder {
        group: "g".into(),
        name: "f".into(),
        file_sha1: "ab".repeat(20),
        partial: true,
    };
    w.feed(Event::Transfer(job.clone()));
    assert!(w.sent.is_empty());
    w.login();
    w.feed(Event::Transfer(job));
    let req = w.answer("add_seeder", Err(LinkError::Tracker("gone".into())));
    assert!(req.internal);
    let sha = "ab".repeat(20);
    assert_eq!(req.command.args(), ["g", "f", &sha, "", "partial"]);
    // A failed download withdraws its partial seeding; nothing is printed.
    let withdraw = TrackerJob::Withdraw {
        group: "g".into(),
        name: "f".into(),
    };
    w.feed(Event::Transfer(withdraw));
    let req = w.ok("stop_share", &[], &[]);
    assert!(req.internal);
    assert_eq!(req.command.args(), ["g", "f"]);
    assert!(
        w.effects.is_empty(),
        "the tracker side only: no RemoveShare"
    );
    assert!(
        w.notes.is_empty() && w.stdout.is_empty(),
        "failures are logged only"
    );
}

#[test]
fn heartbeats_follow_the_injected_clock() {
    let mut w = World::new(false);
    let t0 = w.now;
    w.now = t0 + ANNOUNCE * 3;
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 0, "none before login");
    w.now = t0;
    w.login();
    w.now = t0 + ANNOUNCE - Duration::from_millis(1);
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 0);
    w.now = t0 + ANNOUNCE;
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 1);
    assert_eq!(
        w.sent[0].1.command.args(),
        [""],
        "the link fills in the peer address"
    );
    // One at a time: a slow answer delays the next.
    w.now = t0 + ANNOUNCE * 3;
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 1);
    w.ok("heartbeat", &[], &[]);
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 1);
    w.ok("heartbeat", &[], &[]);
    w.now += ANNOUNCE - Duration::from_millis(1);
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 0);
    w.line("logout");
    w.ok("logout", &[], &[]);
    w.now += ANNOUNCE * 2;
    w.tick(&[]);
    assert_eq!(w.count_sent("heartbeat"), 0, "none after logout");
}

#[test]
fn peer_refresh_is_keyed_by_download_and_timed_by_the_clock() {
    let mut w = World::new(false);
    w.login();
    let t0 = w.now;
    // Download "a" finished (not reported); "ab" runs and needs peers, "c" is
    // only hashing its last pieces. Only "ab" may ask.
    let dls = [running("g", "ab", true), running("g", "c", false)];
    w.tick(&dls);
    w.now = t0 + FIRST_REFRESH - Duration::from_millis(1);
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 0);
    w.now = t0 + FIRST_REFRESH;
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 1);
    assert_eq!(w.sent[0].1.command.args(), ["g", "ab", "k"]);
    assert!(w.sent[0].1.internal);
    // At most one refresh in flight per download.
    w.now = t0 + FIRST_REFRESH + REFRESH_EVERY * 2;
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 1);
    let m = meta("ab", 10);
    file_info(&mut w, &m, &["127.0.0.1:7000"]);
    assert_eq!(
        w.effects,
        [Action::UpdatePeers {
            key: key("g", "ab"),
            peers: vec![addr("127.0.0.1:7000")],
            ticket: Some("t1".into()),
        }]
    );
    // The next one is due REFRESH_EVERY after the last was sent.
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 1);
    w.ok("file_info", &[], &[]);
    w.now += REFRESH_EVERY - Duration::from_millis(1);
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 0);
    w.now += Duration::from_millis(1);
    w.tick(&dls);
    assert_eq!(w.count_sent("file_info"), 1);
    w.answer("file_info", Err(LinkError::Tracker("no such file".into())));
    // A download that stops needing peers stops asking.
    w.now += REFRESH_EVERY * 5;
    w.tick(&[running("g", "ab", false)]);
    assert_eq!(w.count_sent("file_info"), 0);
    assert_eq!(w.effects.len(), 1);
}

#[test]
fn end_of_input_waits_for_downloads() {
    let mut w = World::new(false);
    w.login();
    w.line("list_groups");
    w.feed(Event::Input(Input::Eof));
    assert!(!w.c.wants_input());
    w.tick(&[]);
    assert_eq!(w.exit, None, "the running command finishes first");
    w.ok("list_groups", &[], &[]);
    w.tick(&[running("g", "f", true)]);
    assert_eq!(w.exit, None, "a download is still running");
    w.tick(&[running("g", "f", false)]);
    assert_eq!(w.exit, None, "finishing counts as running");
    w.tick(&[]);
    assert_eq!(w.exit, None, "the session's seeding ends first");
    w.ok("logout", &[], &[]);
    assert_eq!(w.exit, Some(0));
    assert_eq!(w.acks, 2);
}

#[test]
fn exit_waits_for_the_logout_at_most_leave_timeout() {
    let mut w = World::new(true);
    w.login();
    w.feed(Event::Stop);
    assert_eq!(w.exit, None);
    assert_eq!(w.count_sent("logout"), 1);
    assert!(!w.c.wants_input());
    w.now += LEAVE_TIMEOUT - Duration::from_millis(1);
    w.tick(&[]);
    assert_eq!(w.exit, None);
    w.now += Duration::from_millis(1);
    w.tick(&[]);
    assert_eq!(w.exit, Some(0));
}

#[test]
fn a_second_signal_or_no_session_exits_at_once() {
    let mut w = World::new(false);
    w.login();
    w.feed(Event::Stop);
    assert_eq!(w.exit, None);
    w.feed(Event::Stop);
    assert_eq!(w.exit, Some(0));
    let mut w = World::new(false);
    w.line("quit");
    assert_eq!(w.exit, Some(0));
    assert_eq!(w.count_sent("logout"), 0);
}

#[test]
fn seeding_client_stays_after_end_of_input_until_a_signal() {
    let mut w = World::new(true);
    w.feed(Event::Input(Input::Eof));
    w.tick(&[]);
    assert_eq!(w.exit, None);
    w.feed(Event::Stop);
    assert_eq!(w.exit, Some(0));
}

#[test]
fn quit_exits_at_once_and_nothing_runs_after() {
    let mut w = World::new(false);
    w.login();
    w.line("list_groups");
    w.ok("list_groups", &[], &[]);
    let acks = w.acks;
    w.line("quit");
    assert_eq!(w.exit, None, "the session's seeding ends first");
    w.ok("logout", &[], &[]);
    assert_eq!(w.exit, Some(0));
    assert_eq!(w.acks, acks, "quit prints nothing");
    assert!(!w.c.wants_input());
    let after =
        w.c.handle(Event::Input(Input::Line("list_groups".into())), w.now);
    assert!(after.is_empty());
    w.now += ANNOUNCE * 2;
    assert!(w
        .c
        .handle(Event::Tick { downloads: vec![] }, w.now)
        .is_empty());
}

/// A login's tracker key is checked before the session counts: a refused key
/// fails the command, logs out at once and serves no one; a good one starts
/// serving, and `logout` stops it.
#[test]
fn login_pins_the_tracker_key_and_logout_stops_serving() {
    let mut w = World::new(false);
    w.pin_result = Err("the tracker's ticket key differs".into());
    w.line("login alice pw");
    w.ok("login", &["token", "otherkey"], &[]);
    assert_eq!(
        w.effects,
        [Action::PinTrackerKey {
            key: "otherkey".into()
        }]
    );
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some("error: the tracker's ticket key differs")
    );
    assert_eq!(w.c.user(), None);
    assert_eq!(w.count_sent("logout"), 1, "the session is ended at once");
    w.ok("logout", &[], &[]);
    assert!(w.stdout.is_empty(), "the internal logout prints nothing");
    assert!(w.sent.iter().all(|(_, r)| r.command.name() != "heartbeat"));
    w.effects.clear();
    w.pin_result = Ok(());
    w.login();
    assert_eq!(w.c.user(), Some("alice"));
    // file_info carries this process's ticket key.
    w.line("download_file g f.bin /dl");
    let (_, req) = w
        .sent
        .iter()
        .find(|(_, r)| r.command.name() == "file_info")
        .unwrap();
    assert_eq!(req.command.args(), ["g", "f.bin", "k"]);
    file_info(&mut w, &meta("f.bin", 10), &[]);
    w.effects.clear();
    w.line("logout");
    w.ok("logout", &[], &[]);
    assert_eq!(w.effects, [Action::StopServing]);
}

#[test]
fn rate_limit_changes_then_shows_the_limits() {
    let mut w = World::new(false);
    // No login needed; the IO side answers with the limits now in force.
    w.line("rate_limit up 512K");
    assert_eq!(
        w.effects,
        [Action::RateLimit {
            up: Some(512 * 1024),
            down: None
        }]
    );
    assert!(!w.c.wants_input(), "waits for the limits");
    w.feed(Event::RateLimits {
        up: 512 * 1024,
        down: 0,
    });
    assert_eq!(w.stdout, ["rate limits: up 512K, down unlimited"]);
    assert!(w.c.wants_input());
    w.line("rate_limit down 2x");
    assert_eq!(
        w.stdout.pop().as_deref(),
        Some(
            "error: bad rate \"2x\": expected bytes per second like 500K, 40M or 1G (0 = unlimited)"
        )
    );
    assert_eq!(w.effects.len(), 1, "a bad rate changes nothing");
}
