//! The client's behaviour as a sans-IO core: [`Controller::handle`] takes one
//! [`Event`] and the current time and returns the [`Action`]s to carry out.
//!
//! The controller owns what the client *decides*: the shell command being
//! carried out (one at a time, in input order), the internal tracker requests
//! and what their answers mean (heartbeat, `add_seeder`, peer refresh,
//! re-announcing `.uploads_registry`, resuming downloads), the output texts, the
//! login state as the user sees it, and the timers. It opens no socket, starts no
//! thread and never reads the clock: `now` comes with every event. The only
//! outside facts it looks at itself are local path lookups (is this a file, a
//! directory), through the [`paths::LocalFiles`] it was given.
//!
//! The IO side ([`crate::event_loop`]) turns readiness into events and carries
//! out actions in order. Some actions ask for an answer, which the IO side feeds
//! back at once as an event, before it carries out the next action:
//!
//! | action | answer |
//! |--------|--------|
//! | [`Action::CheckRegistry`] | [`Event::RegistryChecked`] |
//! | [`Action::FindResumes`] | [`Event::ResumesFound`] |
//! | [`Action::StartDownload`] | [`Event::DownloadStarted`] |
//! | [`Action::ReportDownloads`] | [`Event::DownloadLines`] |
//! | [`Action::RateLimit`] | [`Event::RateLimits`] |
//! | [`Action::StartHash`] | [`Event::Hashed`] (later, from the pool) |
//! | [`Action::PinTrackerKey`] | [`Event::TrackerKeyChecked`] |
//!
//! A `login` the tracker accepted counts only once its ticket key (the reply's
//! second field) matches the key pinned in the state dir (`on_login`,
//! `on_key_checked`); a different key fails the command and logs out at once.
//! A successful login, typed or made by the tracker link on its own, is then
//! handled in one place (`logged_in`): it starts the heartbeats, re-shares
//! `.uploads_registry`, re-announces running downloads and resumes unfinished
//! ones; after a typed login the peer server serves again
//! ([`Action::StartServing`]); `logout` stops it ([`Action::StopServing`]).
//! Every `file_info` carries this process's ticket key, and the ticket in the
//! answer goes to the download. Every exit (`quit`, end of input, a signal)
//! goes through `leave`: an internal `logout` ends the session's seeding on the
//! tracker first (at most [`LEAVE_TIMEOUT`]), so no gone client stays listed as
//! a seeder.
//!
//! Submodules: [`paths`] (local path policy), [`output`] (the texts),
//! `sharing` (upload, re-announce, `add_seeder`), `downloading` (download start,
//! resume, peer refresh).

mod downloading;
pub mod output;
pub mod paths;
mod sharing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wire::command::TrackerCommand;
use wire::file_meta::FileMeta;

use crate::shell::{self, Command, ShellError};
use crate::storage::ResumeState;
use crate::tracker_link::{LinkRequest, Outcome, ReqId};
use crate::transfers::{Reannounce, RunningDownload, TrackerJob};
use paths::LocalFiles;

/// The longest an exit waits for the tracker to end the session's seeding.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the controller needs from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--announce-secs`: time between heartbeats while logged in.
    pub announce: Duration,
    /// `--seed`: at end of input keep serving instead of exiting.
    pub seed: bool,
    /// This process's ticket public key (hex), sent with every `file_info`.
    pub ticket_key: String,
}

/// One item from the input (stdin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// A line refused before parsing (too long, not UTF-8).
    Bad(ShellError),
    Eof,
}

/// A download, named as the tracker names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownloadKey {
    pub group: String,
    pub name: String,
}

/// Why a download is started: echoed back in [`Event::DownloadStarted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOrder {
    pub key: DownloadKey,
    pub dest: PathBuf,
    /// Resuming a download an earlier run left unfinished (not a shell command).
    pub resume: bool,
}

/// Something that happened, for [`Controller::handle`].
#[derive(Debug)]
pub enum Event {
    Input(Input),
    /// The outcome of a request the controller submitted.
    Answer {
        id: ReqId,
        outcome: Outcome,
    },
    /// An informational line from the tracker link (e.g. a failover) or from
    /// Transfers (a shared file that changed on disk).
    LinkNote(String),
    /// The tracker link logged in again on its own (the tracker refused the
    /// session): a new session token, so the seeding moves to it.
    SessionRenewed,
    /// The upload hash finished.
    Hashed(Result<FileMeta, String>),
    /// A tracker request Transfers asked for.
    Transfer(TrackerJob),
    /// Answer to [`Action::CheckRegistry`].
    RegistryChecked(Reannounce),
    /// Answer to [`Action::FindResumes`].
    ResumesFound(Vec<ResumeState>),
    /// Answer to [`Action::StartDownload`].
    DownloadStarted {
        order: StartOrder,
        result: Result<(), String>,
    },
    /// Answer to [`Action::ReportDownloads`]: one status line per download.
    DownloadLines(Vec<String>),
    /// Answer to [`Action::PinTrackerKey`]: the key is pinned (or was), or why not.
    TrackerKeyChecked(Result<(), String>),
    /// Answer to [`Action::RateLimit`]: the limits now (bytes per second, 0 = unlimited).
    RateLimits {
        up: u64,
        down: u64,
    },
    /// A loop turn ended; `downloads` are the ones Transfers is still working on.
    Tick {
        downloads: Vec<RunningDownload>,
    },
    /// SIGINT or SIGTERM.
    Stop,
}

/// Something to carry out, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue a request on the tracker link under this id.
    Send {
        id: ReqId,
        request: LinkRequest,
    },
    /// Lines on stdout (the outcome of a command).
    Print(Vec<String>),
    /// One line on stderr.
    Note(String),
    /// The command finished: an interactive prompt may show the next one.
    Ack,
    StartHash {
        path: PathBuf,
    },
    AddShare {
        group: String,
        meta: FileMeta,
        path: PathBuf,
    },
    RemoveShare {
        group: String,
        name: String,
    },
    /// Stop serving every file of a group.
    RemoveGroupShares {
        group: String,
    },
    /// From now on, sharing and resume state are this user's (`<state-dir>/users/<user>/`).
    UseStateOf {
        user: String,
    },
    /// Check `.uploads_registry` against the disk.
    CheckRegistry,
    /// Look for downloads an earlier run left unfinished.
    FindResumes,
    /// Announce the running downloads that hold pieces again (`add_seeder`
    /// jobs, [`Event::Transfer`]): the seeding of the old session is gone.
    ReannounceDownloads,
    /// Start a download (the seeders may include this client; leave it out)
    /// with the ticket the tracker signed for it (hex), if any.
    StartDownload {
        order: StartOrder,
        meta: FileMeta,
        peers: Vec<SocketAddr>,
        ticket: Option<String>,
    },
    /// Fresh seeders for a running download (this client left out, as above),
    /// and a renewed ticket.
    UpdatePeers {
        key: DownloadKey,
        peers: Vec<SocketAddr>,
        ticket: Option<String>,
    },
    /// Check the tracker's ticket key from a login reply against the pinned
    /// one (pinning it the first time).
    PinTrackerKey {
        key: String,
    },
    /// Serve peers again (after a login whose tracker key is pinned).
    StartServing,
    /// Serve no one: close the serving connections and refuse new ones (logout).
    StopServing,
    /// Report the status line of every download.
    ReportDownloads,
    /// Change the bandwidth limits given (bytes per second, 0 = unlimited),
    /// then report them all.
    RateLimit {
        up: Option<u64>,
        down: Option<u64>,
    },
    Exit(i32),
}

/// The shell command being carried out.
#[derive(Debug)]
enum Running {
    /// A plain tracker request; the command decides how its answer is printed.
    Tracker { id: ReqId, cmd: TrackerCommand },
    /// `upload_file`, hashing on the pool.
    Hashing { path: PathBuf, group: String },
    /// `upload_file`, the tracker request.
    Uploading {
        id: ReqId,
        meta: FileMeta,
        path: PathBuf,
        group: String,
    },
    /// `download_file`, asking the tracker for the metadata and seeders.
    FileInfo {
        id: ReqId,
        key: DownloadKey,
        dest: PathBuf,
    },
    /// `download_file`, waiting for [`Event::DownloadStarted`].
    Starting,
    /// `show_downloads`, waiting for [`Event::DownloadLines`].
    Reporting,
    /// `login` succeeded at the tracker; waiting for [`Event::TrackerKeyChecked`].
    PinningKey { user: String },
    /// `rate_limit`, waiting for [`Event::RateLimits`].
    Limiting,
}

/// Internal tracker requests whose outcome the controller handles.
#[derive(Debug)]
enum Internal {
    Heartbeat,
    AddSeeder,
    /// The `stop_share` that ends a failed download's partial seeding.
    Withdraw,
    PeerRefresh(DownloadKey),
    Reannounce {
        group: String,
        meta: FileMeta,
        path: PathBuf,
    },
    /// `file_info` for a download an earlier run left unfinished (after login).
    Resume {
        state: ResumeState,
    },
    /// The logout after a login whose tracker key was refused.
    Logout,
    /// The `logout` that ends the session's seeding before the client exits.
    Leave,
}

/// The client's decisions. See the module doc.
pub struct Controller {
    config: Config,
    files: Box<dyn LocalFiles>,
    /// The logged-in user (the tracker link keeps the session token).
    user: Option<String>,
    running: Option<Running>,
    internal: HashMap<ReqId, Internal>,
    next_id: ReqId,
    input_done: bool,
    /// When the next heartbeat is due (set at login).
    next_heartbeat: Option<Instant>,
    /// When each running download next asks the tracker for fresh seeders.
    next_refresh: HashMap<DownloadKey, Instant>,
    /// Exiting: the deadline of the `logout` that ends the session's seeding.
    leaving: Option<Instant>,
    exited: bool,
    /// Actions of the event being handled.
    out: Vec<Action>,
}

impl Controller {
    pub fn new(config: Config, files: Box<dyn LocalFiles>) -> Controller {
        Controller {
            config,
            files,
            user: None,
            running: None,
            internal: HashMap::new(),
            next_id: 1,
            input_done: false,
            next_heartbeat: None,
            next_refresh: HashMap::new(),
            leaving: None,
            exited: false,
            out: Vec::new(),
        }
    }

    /// Handles one event; returns what to carry out, in order. After
    /// [`Action::Exit`] every event is ignored.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.exited {
            return Vec::new();
        }
        match event {
            Event::Input(item) => self.on_input(item, now),
            Event::Answer { id, outcome } => self.on_answer(id, outcome, now),
            Event::LinkNote(line) => self.out.push(Action::Note(line)),
            Event::SessionRenewed => {
                if let Some(user) = self.user.clone() {
                    self.logged_in(user, now);
                }
            }
            Event::Hashed(result) => self.on_hashed(result),
            Event::Transfer(job) => self.on_transfer_job(job),
            Event::RegistryChecked(found) => self.on_registry_checked(found),
            Event::ResumesFound(found) => self.on_resumes_found(found),
            Event::DownloadStarted { order, result } => self.on_download_started(order, result),
            Event::DownloadLines(lines) => self.on_download_lines(lines),
            Event::TrackerKeyChecked(result) => self.on_key_checked(result, now),
            Event::RateLimits { up, down } => {
                if matches!(self.running, Some(Running::Limiting)) {
                    self.done(vec![output::rate_limits(up, down)]);
                }
            }
            Event::Tick { downloads } => self.on_tick(&downloads, now),
            Event::Stop => {
                log::info!("signal received, exiting");
                self.leave(now);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Whether the next input item may be handed in (no command is running).
    pub fn wants_input(&self) -> bool {
        self.running.is_none() && !self.input_done && !self.exited && self.leaving.is_none()
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn exit(&mut self, code: i32) {
        self.exited = true;
        self.out.push(Action::Exit(code));
    }

    /// `quit`, end of input or a signal: ends the session's seeding on the
    /// tracker (an internal `logout`, so no dead client stays listed), then exits
    /// once it is answered or after [`LEAVE_TIMEOUT`], whichever comes first.
    /// Not logged in, or a second signal while leaving: exits at once.
    fn leave(&mut self, now: Instant) {
        if self.user.is_none() || self.leaving.is_some() {
            return self.exit(0);
        }
        self.leaving = Some(now + LEAVE_TIMEOUT);
        self.send_internal(LinkRequest::new(TrackerCommand::Logout), Internal::Leave);
    }

    /// Queues a tracker request; returns its id.
    fn send(&mut self, request: LinkRequest) -> ReqId {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push(Action::Send { id, request });
        id
    }

    /// Queues an internal request whose answer `job` handles.
    fn send_internal(&mut self, request: LinkRequest, job: Internal) {
        let id = self.send(request.internal());
        self.internal.insert(id, job);
    }

    /// The current command printed its outcome: the next one may start.
    fn done(&mut self, lines: Vec<String>) {
        self.out.push(Action::Print(lines));
        self.out.push(Action::Ack);
        self.running = None;
    }

    fn fail(&mut self, reason: impl std::fmt::Display) {
        self.done(vec![output::error(reason)]);
    }

    fn note(&mut self, line: String) {
        self.out.push(Action::Note(line));
    }

    fn on_input(&mut self, item: Input, now: Instant) {
        let line = match item {
            Input::Eof => {
                self.input_done = true;
                return;
            }
            Input::Bad(e) => return self.fail(e),
            Input::Line(line) => line,
        };
        let files = &self.files;
        let parsed = shell::parse(&line, self.user.as_deref(), |p| files.is_file(p.as_ref()));
        match parsed {
            Ok(None) => self.done(Vec::new()),
            Ok(Some(cmd)) => self.start_command(cmd, now),
            Err(e) => self.fail(e),
        }
    }

    fn start_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Quit => self.leave(now),
            Command::Help => self.done(shell::help_lines()),
            Command::ShowDownloads => {
                self.running = Some(Running::Reporting);
                self.out.push(Action::ReportDownloads);
            }
            Command::RateLimit { up, down } => {
                self.running = Some(Running::Limiting);
                self.out.push(Action::RateLimit { up, down });
            }
            Command::UploadFile { path, group } => self.start_upload(path, group),
            Command::DownloadFile { group, name, dest } => self.start_download(group, name, dest),
            Command::Tracker(cmd) => {
                let id = self.send(LinkRequest::new(cmd.clone()));
                self.running = Some(Running::Tracker { id, cmd });
            }
        }
    }

    fn on_download_lines(&mut self, lines: Vec<String>) {
        if !matches!(self.running, Some(Running::Reporting)) {
            return;
        }
        self.done(output::downloads(lines));
    }

    fn on_answer(&mut self, id: ReqId, outcome: Outcome, now: Instant) {
        if let Some(job) = self.internal.remove(&id) {
            return self.on_internal(job, outcome);
        }
        let matches = match &self.running {
            Some(Running::Tracker { id: r, .. })
            | Some(Running::Uploading { id: r, .. })
            | Some(Running::FileInfo { id: r, .. }) => *r == id,
            _ => false,
        };
        if !matches {
            log::debug!("outcome of unknown request {id}");
            return;
        }
        let running = self.running.take().expect("checked");
        let answer = match outcome {
            Ok(answer) => answer,
            Err(e) => return self.fail(e),
        };
        match running {
            Running::Tracker {
                cmd: TrackerCommand::Login { user, .. },
                ..
            } => self.on_login(user, &answer.head, now),
            Running::Tracker { cmd, .. } => {
                let lines = self.on_success(cmd, answer.rows, now);
                self.done(lines);
            }
            Running::Uploading {
                meta, path, group, ..
            } => self.on_uploaded(group, meta, path),
            Running::FileInfo { key, dest, .. } => self.on_file_info(key, dest, &answer),
            other => unreachable!("{other:?} has no request"),
        }
    }

    fn on_internal(&mut self, job: Internal, outcome: Outcome) {
        match (job, outcome) {
            (Internal::PeerRefresh(key), Ok(answer)) => self.on_refreshed(key, &answer),
            (Internal::Reannounce { group, meta, path }, outcome) => {
                self.on_reannounced(group, meta, path, outcome)
            }
            (Internal::Resume { state }, outcome) => self.on_resume_info(state, outcome),
            (Internal::Leave, outcome) => {
                if let Err(e) = outcome {
                    log::info!("could not end the session's seeding: {e}");
                }
                self.exit(0);
            }
            (Internal::Heartbeat, Err(e)) => log::info!("heartbeat failed: {e}"),
            (Internal::AddSeeder, Err(e)) => log::info!("add_seeder failed: {e}"),
            (Internal::Withdraw, Err(e)) => log::info!("withdrawing a failed download: {e}"),
            (Internal::PeerRefresh(key), Err(e)) => {
                log::info!("peer refresh of {} failed: {e}", key.name)
            }
            (Internal::Logout, Err(e)) => log::info!("logout failed: {e}"),
            (
                Internal::Heartbeat | Internal::AddSeeder | Internal::Withdraw | Internal::Logout,
                Ok(_),
            ) => {}
        }
    }

    /// The lines a successful tracker command prints, after its local effects.
    fn on_success(
        &mut self,
        cmd: TrackerCommand,
        rows: Vec<Vec<String>>,
        now: Instant,
    ) -> Vec<String> {
        use TrackerCommand as C;
        match &cmd {
            C::Login { user, .. } => self.logged_in(user.clone(), now),
            C::Logout => {
                // The tracker ended our seeding with the session. The files stay
                // in `.uploads_registry` (remove_share would drop them), so the
                // next login puts them back into sharing. Until then this
                // client serves no one.
                self.user = None;
                self.out.push(Action::StopServing);
            }
            C::LeaveGroup { group } => {
                // The tracker ended our seeding in the group; stop serving there too.
                self.out.push(Action::RemoveGroupShares {
                    group: group.clone(),
                });
            }
            C::StopShare { group, name } => self.out.push(Action::RemoveShare {
                group: group.clone(),
                name: name.clone(),
            }),
            _ => {}
        }
        output::success(cmd, &rows)
    }

    /// The tracker accepted a `login`: its ticket key (the head's second field)
    /// is checked against the pinned one before the session counts. A tracker
    /// that sends no key issues no tickets: the session works, but this client
    /// serves no one (it could not check a downloader's ticket).
    fn on_login(&mut self, user: String, head: &[String], now: Instant) {
        match head.get(1) {
            Some(key) => {
                self.running = Some(Running::PinningKey { user });
                self.out.push(Action::PinTrackerKey { key: key.clone() });
            }
            None => {
                self.note("note: the tracker sent no ticket key; this client serves no one".into());
                self.logged_in(user.clone(), now);
                self.done(output::success(
                    TrackerCommand::Login {
                        user,
                        password: String::new(),
                    },
                    &[],
                ));
            }
        }
    }

    /// The answer to [`Action::PinTrackerKey`]: a refused key ends the session
    /// at once (logout) and the `login` command fails with the reason.
    fn on_key_checked(&mut self, result: Result<(), String>, now: Instant) {
        let Some(Running::PinningKey { user }) = self.running.take() else {
            return;
        };
        match result {
            Ok(()) => {
                self.out.push(Action::StartServing);
                self.logged_in(user.clone(), now);
                self.done(vec![format!("logged in as {user}")]);
            }
            Err(e) => {
                self.send_internal(LinkRequest::new(TrackerCommand::Logout), Internal::Logout);
                self.fail(e);
            }
        }
    }

    /// A login succeeded, typed or made by the tracker link on its own: the one
    /// place that starts a session's work. Heartbeats start, the registry's files
    /// (the user's own, `UseStateOf`) are shared again, running downloads
    /// announce their pieces again and unfinished ones resume: all the seeding
    /// moves to the new session at once.
    fn logged_in(&mut self, user: String, now: Instant) {
        self.out.push(Action::UseStateOf { user: user.clone() });
        self.user = Some(user);
        self.next_heartbeat = Some(now + self.config.announce);
        self.out.push(Action::CheckRegistry);
        self.out.push(Action::ReannounceDownloads);
        self.out.push(Action::FindResumes);
    }

    /// Timers, then whether end of input lets the client exit.
    fn on_tick(&mut self, downloads: &[RunningDownload], now: Instant) {
        if let Some(deadline) = self.leaving {
            if now >= deadline {
                log::info!("the tracker did not answer the logout in time; exiting");
                self.exit(0);
            }
            return;
        }
        self.heartbeat(now);
        self.refresh_peers(downloads, now);
        if self.input_done && self.running.is_none() && !self.config.seed && downloads.is_empty() {
            self.leave(now);
        }
    }

    /// `heartbeat <peer_addr>` every `--announce-secs` while logged in, one at a time.
    fn heartbeat(&mut self, now: Instant) {
        let due = self.next_heartbeat.is_some_and(|t| now >= t);
        let pending = self
            .internal
            .values()
            .any(|i| matches!(i, Internal::Heartbeat));
        if self.user.is_none() || !due || pending {
            return;
        }
        self.next_heartbeat = Some(now + self.config.announce);
        self.send_internal(output::heartbeat_request(), Internal::Heartbeat);
    }
}
