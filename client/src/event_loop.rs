//! The client's one mio poll loop.
//!
//! Sources, each with its token:
//!
//! - [`WAKER_TOKEN`]: the shared `mio::Waker`. The stdin thread wakes it after
//!   queueing a line on the input channel; the transfer pool wakes it when hashing
//!   or disk work finished (the loop then calls `Transfers::poll_pool`).
//! - [`TRACKER_TOKEN`]: the tracker connection ([`TrackerLink`]).
//! - [`LISTENER_TOKEN`]: the peer server; accepted sockets go to `Transfers::accept`.
//! - tokens `>= PEER_TOKEN_BASE`: peer connections, handled by `Transfers`.
//!
//! Shell commands run one at a time, in input order: command N+1 starts only
//! after command N printed its outcome, so piped output is deterministic. A
//! command that needs the tracker (or the hashing pool) is a [`Running`] state
//! that the loop advances as results arrive; nothing blocks the loop. Internal
//! tracker requests (heartbeat, add_seeder, peer refresh) share the link's queue.
//!
//! The loop turns at least every 100 ms: link and transfer timeouts, the
//! heartbeat timer (`heartbeat <peer_addr>` every `--announce-secs` while logged
//! in), the peer refresh of running downloads, and the SIGINT/SIGTERM flag.

use std::collections::HashMap;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use wire::command::{CommandKind, TrackerCommand, Upload};
use wire::file_meta::FileMeta;

use crate::shell::{self, Command, ShellError, MAX_LINE};
use crate::tracker_link::{
    Answer, LinkRequest, Outcome, ReqId, TrackerAddr, TrackerLink, TRACKER_TOKEN,
};
use crate::transfers::{HashJobId, TrackerJob, TransferConfig, Transfers, PEER_TOKEN_BASE};

/// The shared waker (stdin thread and transfer pool).
pub const WAKER_TOKEN: Token = Token(0);
/// The peer server's listener.
pub const LISTENER_TOKEN: Token = Token(2);
/// The longest the loop sleeps.
const TICK: Duration = Duration::from_millis(100);
/// How often running downloads ask the tracker for fresh seeders.
const PEER_REFRESH: Duration = Duration::from_secs(5);

/// Everything the loop needs from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub trackers: Vec<TrackerAddr>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub threads: usize,
    pub retries: u32,
    pub seed: bool,
    pub announce: Duration,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: String, source: io::Error },
    #[error("cannot start the event loop: {0}")]
    Io(#[from] io::Error),
}

/// One item from the stdin thread.
#[derive(Debug)]
enum Input {
    Line(String),
    Bad(ShellError),
    Eof,
}

/// The shell command being carried out.
enum Running {
    /// A plain tracker request; the command decides how its answer is printed.
    Tracker { id: ReqId, cmd: Command },
    /// `upload_file`, hashing on the pool.
    Hashing {
        job: HashJobId,
        path: PathBuf,
        group: String,
    },
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
        group: String,
        name: String,
        dest: PathBuf,
    },
}

/// Internal tracker requests whose outcome the loop handles.
enum Internal {
    Heartbeat,
    AddSeeder,
    PeerRefresh {
        group: String,
        name: String,
    },
    Reannounce {
        group: String,
        meta: FileMeta,
        path: PathBuf,
    },
    /// `file_info` for a download an earlier run left unfinished (after login).
    Resume {
        group: String,
        name: String,
        dest: PathBuf,
        file_sha1: [u8; 20],
    },
}

/// Runs the client until `quit`, end of input (and downloads), or a signal.
/// Returns the exit code.
pub fn run(config: Config) -> Result<i32, StartError> {
    let mut client = Client::new(config)?;
    client.run()
}

struct Client {
    poll: Poll,
    waker: Arc<Waker>,
    listener: TcpListener,
    link: TrackerLink,
    transfers: Transfers,
    config: Config,
    input: Receiver<Input>,
    /// Interactive mode: tells the stdin thread a command finished (next prompt).
    ack: Option<Sender<()>>,
    input_done: bool,
    running: Option<Running>,
    internal: HashMap<ReqId, Internal>,
    /// Downloads started in this run, as (group, name), for peer refreshes.
    downloads: Vec<(String, String)>,
    next_heartbeat: Instant,
    next_refresh: Instant,
    stop: Arc<AtomicBool>,
    exit: Option<i32>,
}

impl Client {
    fn new(config: Config) -> Result<Client, StartError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| StartError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let mut listener =
            TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        poll.registry()
            .register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        let bound = listener.local_addr()?;
        log::info!("peer server listening on {bound}");
        let link = TrackerLink::new(config.trackers.clone(), bound);
        let transfers = Transfers::new(
            TransferConfig {
                threads: config.threads,
                retries: config.retries,
                state_dir: config.state_dir.clone(),
                max_serving: crate::transfers::MAX_SERVING_CONNS,
            },
            waker.clone(),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        // Bounded: a fast producer on stdin waits instead of filling memory.
        let (tx, rx) = mpsc::sync_channel(64);
        let interactive = io::stdin().is_terminal();
        let ack = if interactive {
            let (ack_tx, ack_rx) = mpsc::channel();
            let history = config.state_dir.join(".shell_history");
            let w = waker.clone();
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || read_interactive(tx, w, ack_rx, history))?;
            Some(ack_tx)
        } else {
            let w = waker.clone();
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || read_piped(tx, w))?;
            None
        };
        let now = Instant::now();
        Ok(Client {
            poll,
            waker,
            listener,
            link,
            transfers,
            config,
            input: rx,
            ack,
            input_done: false,
            running: None,
            internal: HashMap::new(),
            downloads: Vec::new(),
            next_heartbeat: now,
            next_refresh: now + PEER_REFRESH,
            stop,
            exit: None,
        })
    }

    fn run(&mut self) -> Result<i32, StartError> {
        let _ = &self.waker;
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            let mut woke = false;
            for event in events.iter() {
                match event.token() {
                    WAKER_TOKEN => woke = true,
                    TRACKER_TOKEN => self.link.handle_event(self.poll.registry(), event),
                    LISTENER_TOKEN => self.accept_peers(),
                    t if t.0 >= PEER_TOKEN_BASE => {
                        self.transfers.handle_event(self.poll.registry(), event)
                    }
                    t => log::debug!("event for unknown token {t:?}"),
                }
            }
            if woke {
                self.transfers.poll_pool(self.poll.registry());
            }
            self.step();
            if let Some(code) = self.exit {
                let _ = io::stdout().flush();
                return Ok(code);
            }
            if self.stop.load(Ordering::Relaxed) {
                log::info!("signal received, exiting");
                let _ = io::stdout().flush();
                return Ok(0);
            }
        }
    }

    fn accept_peers(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => self.transfers.accept(self.poll.registry(), stream, from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("peer server accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// Everything after the events of one turn: timers, results, next command.
    fn step(&mut self) {
        self.link.tick(self.poll.registry());
        self.transfers.tick(self.poll.registry());
        loop {
            let mut progressed = false;
            for (job, result) in self.transfers.take_finished_hashes() {
                progressed = true;
                self.on_hash(job, result);
            }
            for (id, outcome) in self.link.take_finished() {
                progressed = true;
                self.on_outcome(id, outcome);
            }
            for job in self.transfers.take_tracker_jobs() {
                progressed = true;
                self.on_tracker_job(job);
            }
            for note in self.link.take_notes() {
                eprintln!("{note}");
            }
            if self.exit.is_some() {
                return;
            }
            if self.running.is_none() {
                // Lines wait in the (bounded) channel until their turn.
                if let Ok(item) = self.input.try_recv() {
                    progressed = true;
                    self.start_input(item);
                }
            }
            if !progressed {
                break;
            }
        }
        self.timers();
        if self.input_done
            && self.running.is_none()
            && !self.config.seed
            && self.transfers.active_downloads() == 0
        {
            self.exit = Some(0);
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.link.user().is_some()
            && now >= self.next_heartbeat
            && !self.link.has_pending(CommandKind::Heartbeat)
        {
            self.next_heartbeat = now + self.config.announce;
            let id = self.submit(
                LinkRequest::new(TrackerCommand::Heartbeat {
                    peer_addr: String::new(),
                })
                .internal(),
            );
            self.internal.insert(id, Internal::Heartbeat);
        }
        if now >= self.next_refresh {
            // Running downloads learn of new seeders (and partial seeders).
            self.next_refresh = now + PEER_REFRESH;
            if self.link.user().is_some() && self.transfers.active_downloads() > 0 {
                let running = self.transfers.status_lines();
                for (group, name) in self.downloads.clone() {
                    let prefix = format!("[D] [{group}] {name}");
                    if running.iter().any(|l| l.starts_with(&prefix)) {
                        self.refresh_peers(group, name);
                    }
                }
            }
        }
    }

    fn submit(&mut self, req: LinkRequest) -> ReqId {
        self.link.submit(self.poll.registry(), req)
    }

    /// Prints lines on stdout (the outcome of a command).
    fn say<S: AsRef<str>>(&self, lines: &[S]) {
        let mut out = io::stdout().lock();
        for l in lines {
            let _ = writeln!(out, "{}", l.as_ref());
        }
        let _ = out.flush();
    }

    /// The current command printed its outcome: the next one may start.
    fn done(&mut self, lines: &[String]) {
        self.say(lines);
        self.running = None;
        if let Some(ack) = &self.ack {
            let _ = ack.send(());
        }
    }

    fn fail(&mut self, reason: impl std::fmt::Display) {
        self.done(&[format!("error: {reason}")]);
    }

    fn start_input(&mut self, item: Input) {
        let line = match item {
            Input::Eof => {
                self.input_done = true;
                return;
            }
            Input::Bad(e) => return self.fail(e),
            Input::Line(line) => line,
        };
        let parsed = shell::parse(&line, self.link.user(), |p| Path::new(p).is_file());
        match parsed {
            Ok(None) => self.done(&[]),
            Ok(Some(cmd)) => self.start_command(cmd),
            Err(e) => self.fail(e),
        }
    }

    fn start_command(&mut self, cmd: Command) {
        let req = match &cmd {
            Command::Quit => {
                self.exit = Some(0);
                return;
            }
            Command::Help => return self.done(&shell::help_lines()),
            Command::ShowDownloads => {
                let status = self.transfers.status_lines();
                let mut lines = vec![shell::count(status.len(), "download", "downloads")];
                lines.extend(status);
                return self.done(&lines);
            }
            Command::UploadFile { path, group } => {
                return self.start_upload(path.clone(), group.clone())
            }
            Command::DownloadFile { group, name, dest } => {
                return self.start_download(group.clone(), name.clone(), dest.clone())
            }
            Command::Tracker(req) => LinkRequest::new(req.clone()),
        };
        let id = self.submit(req);
        self.running = Some(Running::Tracker { id, cmd });
    }

    fn start_upload(&mut self, path: String, group: String) {
        let p = Path::new(&path);
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return self.fail(format!("{path}: {}", io_reason(&e))),
        };
        if !meta.is_file() {
            return self.fail(format!("{path}: not a regular file"));
        }
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if abs.file_name().and_then(|n| n.to_str()).is_none() {
            return self.fail(format!("{path}: file name is not valid UTF-8"));
        }
        let job = self.transfers.start_hash(abs.clone());
        self.running = Some(Running::Hashing {
            job,
            path: abs,
            group,
        });
    }

    fn on_hash(&mut self, job: HashJobId, result: Result<FileMeta, String>) {
        let Some(Running::Hashing { job: want, .. }) = &self.running else {
            log::debug!("hash job {job} finished with no upload waiting");
            return;
        };
        if *want != job {
            return;
        }
        let Some(Running::Hashing { path, group, .. }) = self.running.take() else {
            unreachable!("checked above")
        };
        let mut meta = match result {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        meta.name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let id = self.submit(upload_request(&group, &meta));
        self.running = Some(Running::Uploading {
            id,
            meta,
            path,
            group,
        });
    }

    fn start_download(&mut self, group: String, name: String, dest: String) {
        let dest = match resolve_dest(Path::new(&dest), &name) {
            Ok(d) => d,
            Err(e) => return self.fail(e),
        };
        let id = self.submit(LinkRequest::new(TrackerCommand::FileInfo {
            group: group.clone(),
            name: name.clone(),
        }));
        self.running = Some(Running::FileInfo {
            id,
            group,
            name,
            dest,
        });
    }

    fn on_tracker_job(&mut self, job: TrackerJob) {
        match job {
            TrackerJob::AddSeeder {
                group,
                name,
                file_sha1,
            } => {
                if self.link.user().is_none() {
                    log::info!("not logged in; not announcing {name} in {group}");
                    return;
                }
                let id = self.submit(
                    LinkRequest::new(TrackerCommand::AddSeeder {
                        group,
                        name,
                        file_sha1,
                        peer_addr: String::new(),
                    })
                    .internal(),
                );
                self.internal.insert(id, Internal::AddSeeder);
            }
            TrackerJob::RefreshPeers { group, name } => self.refresh_peers(group, name),
        }
    }

    /// Asks the tracker for the current seeders of a download (internal `file_info`),
    /// unless such a request is already on its way.
    fn refresh_peers(&mut self, group: String, name: String) {
        let pending = self.internal.values().any(
            |i| matches!(i, Internal::PeerRefresh { group: g, name: n } if *g == group && *n == name),
        );
        if pending || self.link.user().is_none() {
            return;
        }
        let id = self.submit(
            LinkRequest::new(TrackerCommand::FileInfo {
                group: group.clone(),
                name: name.clone(),
            })
            .internal(),
        );
        self.internal
            .insert(id, Internal::PeerRefresh { group, name });
    }

    fn on_outcome(&mut self, id: ReqId, outcome: Outcome) {
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
        match self.running.take().expect("checked") {
            Running::Tracker { cmd, .. } => match outcome {
                Ok(answer) => {
                    let lines = self.on_success(cmd, answer);
                    self.done(&lines);
                }
                Err(e) => self.fail(e),
            },
            Running::Uploading {
                meta, path, group, ..
            } => match outcome {
                Ok(_) => {
                    let line = format!(
                        "uploaded {} to {} ({} bytes, {})",
                        meta.name,
                        group,
                        meta.size,
                        shell::count(meta.piece_count(), "piece", "pieces")
                    );
                    self.transfers.add_share(&group, meta, path);
                    self.done(&[line]);
                }
                Err(e) => self.fail(e),
            },
            Running::FileInfo {
                group, name, dest, ..
            } => match outcome {
                Ok(answer) => self.finish_download_start(group, name, dest, answer),
                Err(e) => self.fail(e),
            },
            Running::Hashing { .. } => unreachable!("hashing has no request"),
        }
    }

    fn finish_download_start(
        &mut self,
        group: String,
        name: String,
        dest: PathBuf,
        answer: Answer,
    ) {
        let (meta, peers) = match self.parse_file_info(&answer) {
            Some(x) => x,
            None => return self.fail("the tracker sent inconsistent file metadata"),
        };
        if dest.exists() {
            return self.fail(format!("{} already exists", dest.display()));
        }
        match self.launch_download(&group, &name, meta, peers, &dest) {
            Ok(()) => {
                self.done(&[format!(
                    "downloading {name} from {group} to {}",
                    dest.display()
                )]);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Starts the download of `name` from `group` to `dest` and, once started,
    /// remembers it in `downloads` (once) for the peer refreshes.
    fn launch_download(
        &mut self,
        group: &str,
        name: &str,
        meta: FileMeta,
        peers: Vec<SocketAddr>,
        dest: &Path,
    ) -> Result<(), String> {
        self.transfers.start_download(
            self.poll.registry(),
            group,
            meta,
            peers,
            dest.to_path_buf(),
        )?;
        let key = (group.to_string(), name.to_string());
        if !self.downloads.contains(&key) {
            self.downloads.push(key);
        }
        Ok(())
    }

    /// `file_info`'s answer as metadata and seeder addresses (our own left out).
    fn parse_file_info(&self, answer: &Answer) -> Option<(FileMeta, Vec<SocketAddr>)> {
        let h = &answer.head;
        if h.len() < 5 {
            return None;
        }
        let meta = FileMeta::from_wire(&h[0], &h[1], &h[2], &h[3], &h[4])?;
        let me = self.link.peer_addr();
        let peers = answer
            .rows
            .iter()
            .filter_map(|r| r.first()?.parse::<SocketAddr>().ok())
            .filter(|a| Some(*a) != me)
            .collect();
        Some((meta, peers))
    }

    fn on_internal(&mut self, job: Internal, outcome: Outcome) {
        match (job, outcome) {
            (Internal::PeerRefresh { group, name }, Ok(answer)) => {
                if let Some((_, peers)) = self.parse_file_info(&answer) {
                    self.transfers
                        .update_peers(self.poll.registry(), &group, &name, peers);
                }
            }
            (Internal::Reannounce { group, meta, path }, Ok(_)) => {
                self.transfers.add_share(&group, meta, path);
            }
            (Internal::Reannounce { group, meta, .. }, Err(e)) => {
                eprintln!("note: could not share {} in {group} again: {e}", meta.name);
            }
            (
                Internal::Resume {
                    group,
                    name,
                    dest,
                    file_sha1,
                },
                Ok(answer),
            ) => self.resume_download(group, name, dest, file_sha1, answer),
            (Internal::Resume { group, name, .. }, Err(e)) => {
                eprintln!("note: could not resume the download of {name} from {group}: {e}");
            }
            (Internal::Heartbeat, Err(e)) => log::info!("heartbeat failed: {e}"),
            (Internal::AddSeeder, Err(e)) => log::info!("add_seeder failed: {e}"),
            (Internal::PeerRefresh { name, .. }, Err(e)) => {
                log::info!("peer refresh of {name} failed: {e}")
            }
            _ => {}
        }
    }

    /// The lines a successful tracker command prints (plus its local effects).
    fn on_success(&mut self, cmd: Command, answer: Answer) -> Vec<String> {
        use TrackerCommand as C;
        let rows = answer.rows;
        match cmd {
            Command::Tracker(C::CreateUser { user, .. }) => vec![format!("user {user} created")],
            Command::Tracker(C::Login { user, .. }) => {
                self.next_heartbeat = Instant::now() + self.config.announce;
                self.reannounce_registry();
                self.resume_downloads();
                vec![format!("logged in as {user}")]
            }
            Command::Tracker(C::Logout) => {
                // The tracker ended our seeding with the session. The files stay
                // in `.uploads_registry` (remove_share would drop them), so the
                // next login puts them back into sharing.
                self.link.forget_session();
                vec!["logged out".into()]
            }
            Command::Tracker(C::CreateGroup { group }) => vec![format!("group {group} created")],
            Command::Tracker(C::JoinGroup { group }) => {
                vec![format!("join request sent to {group}")]
            }
            Command::Tracker(C::LeaveGroup { group }) => {
                // The tracker ended our seeding in the group; stop serving there too.
                for (g, name, _) in self.transfers.shared_files() {
                    if g == group {
                        self.transfers.remove_share(&g, &name);
                    }
                }
                vec![format!("left group {group}")]
            }
            Command::Tracker(C::AcceptRequest { group, user }) => {
                vec![format!("{user} accepted into {group}")]
            }
            Command::Tracker(C::RejectRequest { group, user }) => {
                vec![format!("request of {user} to join {group} rejected")]
            }
            Command::Tracker(C::StopShare { group, name }) => {
                self.transfers.remove_share(&group, &name);
                vec![format!("stopped sharing {name} in {group}")]
            }
            Command::Tracker(C::ListGroups) => {
                let mut lines = vec![shell::count(rows.len(), "group", "groups")];
                lines.extend(rows.iter().map(|r| {
                    format!(
                        "  {}  owner={}  members={}  [{}]",
                        field(r, 0),
                        field(r, 1),
                        field(r, 2),
                        field(r, 3)
                    )
                }));
                lines
            }
            Command::Tracker(C::ListRequests { group }) => {
                let mut lines = vec![format!(
                    "{} for {group}",
                    shell::count(rows.len(), "pending request", "pending requests")
                )];
                lines.extend(rows.iter().map(|r| format!("  {}", field(r, 0))));
                lines
            }
            Command::Tracker(C::ListFiles { group }) => {
                let mut lines = vec![format!(
                    "{} in {group}",
                    shell::count(rows.len(), "file", "files")
                )];
                lines.extend(rows.iter().map(|r| {
                    let seeders: usize = field(r, 2).parse().unwrap_or(0);
                    format!(
                        "  {}  {} bytes  {}",
                        field(r, 0),
                        field(r, 1),
                        shell::count(seeders, "seeder", "seeders")
                    )
                }));
                lines
            }
            other => {
                log::warn!("no output defined for {other:?}");
                vec!["ok".into()]
            }
        }
    }

    /// Puts the files of `.uploads_registry` back into sharing after a login:
    /// every file whose content is unchanged is announced again (`upload_file`
    /// with its metadata, internal) and served once the tracker accepted it;
    /// changed or vanished files were dropped by Transfers and are reported as
    /// `note:` lines on stderr (stdout keeps one line per command).
    fn reannounce_registry(&mut self) {
        let found = self.transfers.reannounce_list();
        for line in found.reports {
            eprintln!("note: {line}");
        }
        for (group, meta, path) in found.unchanged {
            let id = self.submit(upload_request(&group, &meta).internal());
            self.internal
                .insert(id, Internal::Reannounce { group, meta, path });
        }
    }

    /// Restarts the downloads an earlier run left unfinished (after a login):
    /// an internal `file_info` for each, then `start_download` to the saved
    /// destination when the answer arrives. Notes go to stderr (stdout keeps one
    /// line per command).
    fn resume_downloads(&mut self) {
        for r in self.transfers.pending_resumes() {
            let pending = self.internal.values().any(
                |i| matches!(i, Internal::Resume { file_sha1, .. } if *file_sha1 == r.file_sha1),
            );
            if pending {
                continue;
            }
            let id = self.submit(
                LinkRequest::new(TrackerCommand::FileInfo {
                    group: r.group.clone(),
                    name: r.name.clone(),
                })
                .internal(),
            );
            self.internal.insert(
                id,
                Internal::Resume {
                    group: r.group,
                    name: r.name,
                    dest: r.dest,
                    file_sha1: r.file_sha1,
                },
            );
        }
    }

    fn resume_download(
        &mut self,
        group: String,
        name: String,
        dest: PathBuf,
        file_sha1: [u8; 20],
        answer: Answer,
    ) {
        let Some((meta, peers)) = self.parse_file_info(&answer) else {
            eprintln!("note: could not resume the download of {name} from {group}: inconsistent file metadata");
            return;
        };
        if meta.file_sha1 != file_sha1 {
            eprintln!(
                "note: {name} in {group} is no longer the file being downloaded; not resuming it"
            );
            return;
        }
        match self.launch_download(&group, &name, meta, peers, &dest) {
            Ok(()) => {
                eprintln!(
                    "note: resuming the download of {name} from {group} to {}",
                    dest.display()
                );
            }
            Err(e) => {
                eprintln!("note: could not resume the download of {name} from {group}: {e}")
            }
        }
    }
}

/// `upload_file` with the file's metadata (the link fills in the peer address).
fn upload_request(group: &str, meta: &FileMeta) -> LinkRequest {
    LinkRequest::new(TrackerCommand::UploadFile(Upload {
        group: group.to_string(),
        name: meta.name.clone(),
        size: meta.size,
        piece_size: meta.piece_size,
        file_sha1: meta.file_sha1_hex(),
        piece_hashes: meta.piece_hashes_hex(),
        peer_addr: String::new(),
    }))
}

/// Field `i` of a row, or empty.
fn field(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

/// A short reason for an I/O error (without the "(os error N)" suffix).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Where `download_file` writes: an existing directory keeps the file's name;
/// otherwise a new file path whose parent directory exists.
pub fn resolve_dest(dest: &Path, name: &str) -> Result<PathBuf, String> {
    if dest.as_os_str().is_empty() {
        return Err("empty destination path".into());
    }
    let target = if dest.is_dir() {
        if name.contains('/') || name == ".." || name == "." || name.is_empty() {
            return Err(format!("cannot use file name {name:?} in a directory"));
        }
        dest.join(name)
    } else {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(format!(
                "destination directory {} does not exist",
                parent.display()
            ));
        }
        dest.to_path_buf()
    };
    if target.exists() {
        return Err(format!("{} already exists", target.display()));
    }
    Ok(target)
}

/// Reads one line of at most `max` bytes (newline and a trailing `\r` excluded).
/// `Ok(None)` at end of input; `Ok(Some(Err(())))` for a longer line, which is
/// consumed without being buffered.
pub fn read_bounded_line<R: BufRead>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            // One byte of slack for a '\r' before the newline.
            if line.len() + chunk.len() > max + 1 {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(buf.len());
        r.consume(used);
        if found.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_long || line.len() > max {
        return Ok(Some(Err(())));
    }
    Ok(Some(Ok(line)))
}

/// The stdin thread when piped: bounded lines into the channel, then `Eof`.
fn read_piped(tx: SyncSender<Input>, waker: Arc<Waker>) {
    let stdin = io::stdin();
    let mut r = stdin.lock();
    loop {
        let item = match read_bounded_line(&mut r, MAX_LINE) {
            Ok(None) => Input::Eof,
            Ok(Some(Ok(bytes))) => match String::from_utf8(bytes) {
                Ok(s) => Input::Line(s),
                Err(_) => Input::Bad(ShellError::NotUtf8),
            },
            Ok(Some(Err(()))) => Input::Bad(ShellError::TooLong),
            Err(e) => {
                log::warn!("reading stdin failed: {e}");
                Input::Eof
            }
        };
        if !deliver(&tx, &waker, item) {
            return;
        }
    }
}

/// The stdin thread on a terminal: rustyline with a prompt and history; the
/// next prompt appears only after the loop finished the previous command.
fn read_interactive(tx: SyncSender<Input>, waker: Arc<Waker>, ack: Receiver<()>, history: PathBuf) {
    use rustyline::error::ReadlineError;
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            log::warn!("line editing unavailable ({e}); reading plain lines");
            return read_piped(tx, waker);
        }
    };
    let _ = editor.load_history(&history);
    loop {
        let item = match editor.readline("swarmshare> ") {
            Ok(line) => {
                // Lines with a password stay out of the history (and its file).
                if !line.trim().is_empty() && !shell::carries_password(&line) {
                    let _ = editor.add_history_entry(line.as_str());
                    // Saved at once: the process may exit before this thread ends.
                    let _ = editor.save_history(&history);
                }
                if line.len() > MAX_LINE {
                    Input::Bad(ShellError::TooLong)
                } else {
                    Input::Line(line)
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => Input::Eof,
            Err(e) => {
                log::warn!("reading the terminal failed: {e}");
                Input::Eof
            }
        };
        if !deliver(&tx, &waker, item) || ack.recv().is_err() {
            break;
        }
    }
}

/// Hands one input item from a stdin thread to the event loop and wakes it.
/// Returns whether the thread should read on: not after `Eof`, nor once the
/// loop has gone (the channel is closed).
fn deliver(tx: &SyncSender<Input>, waker: &Waker, item: Input) -> bool {
    let eof = matches!(item, Input::Eof);
    if tx.send(item).is_err() {
        return false;
    }
    let _ = waker.wake();
    !eof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, ()>> {
        // A tiny buffer so lines span many fill_buf calls.
        let mut r = io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(l) = read_bounded_line(&mut r, max).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn bounded_lines() {
        assert_eq!(
            lines(b"ab\ncd\r\n\nlast", 10),
            vec![
                Ok(b"ab".to_vec()),
                Ok(b"cd".to_vec()),
                Ok(vec![]),
                Ok(b"last".to_vec())
            ]
        );
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&input, 10), vec![Err(()), Ok(b"ok".to_vec())]);
        assert_eq!(
            lines(b"0123456789\n01234567890\n", 10),
            vec![Ok(b"0123456789".to_vec()), Err(())]
        );
        assert!(lines(b"", 10).is_empty());
    }

    #[test]
    fn destinations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(resolve_dest(d, "f.bin").unwrap(), d.join("f.bin"));
        assert_eq!(
            resolve_dest(&d.join("new.bin"), "f.bin").unwrap(),
            d.join("new.bin")
        );
        std::fs::write(d.join("f.bin"), b"x").unwrap();
        assert!(resolve_dest(d, "f.bin")
            .unwrap_err()
            .contains("already exists"));
        assert!(resolve_dest(&d.join("f.bin"), "g")
            .unwrap_err()
            .contains("already exists"));
        assert!(resolve_dest(&d.join("nope/x"), "g")
            .unwrap_err()
            .contains("does not exist"));
        assert!(resolve_dest(d, "../x").is_err());
    }
}
