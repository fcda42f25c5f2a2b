//! The client's one mio poll loop: the IO side around the sans-IO
//! [`Controller`]. It turns readiness, pool results, input lines, timers and
//! signals into controller events and carries out the actions that come back;
//! it decides nothing itself.
//!
//! Sources, each with its token:
//!
//! - [`WAKER_TOKEN`]: the shared `mio::Waker`. The stdin thread ([`crate::stdin`])
//!   wakes it after queueing a line on the input channel; the transfer pool wakes
//!   it when hashing or disk work finished (the loop then calls `Transfers::poll_pool`).
//! - [`TRACKER_TOKEN`]: the tracker connection ([`TrackerLink`]).
//! - [`LISTENER_TOKEN`]: the peer server; accepted sockets go to `Transfers::accept`.
//! - tokens `>= PEER_TOKEN_BASE`: peer connections, handled by `Transfers`.
//!
//! An input line is handed to the controller only when it wants one (the previous
//! command printed its outcome), so piped output is deterministic. The loop turns
//! at least every 100 ms; each turn ends with [`Event::Tick`] (the controller's
//! timers) and then looks at the SIGINT/SIGTERM flag.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::controller::paths::OsFiles;
use crate::controller::{self, Action, Controller, Event, Input};
use crate::limits::Direction;
use crate::stdin::{read_interactive, read_piped};
use crate::tracker_keys::{PinError, PinnedKeys};
use crate::tracker_link::{TrackerAddr, TrackerLink, TRACKER_TOKEN};
use crate::transfers::{TransferConfig, Transfers, PEER_TOKEN_BASE};

/// The shared waker (stdin thread and transfer pool).
pub const WAKER_TOKEN: Token = Token(0);
/// The peer server's listener.
pub const LISTENER_TOKEN: Token = Token(2);
/// The longest the loop sleeps.
const TICK: Duration = Duration::from_millis(100);

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
    /// `--upload-limit` / `--download-limit`, bytes per second (0 = unlimited).
    pub upload_limit: u64,
    pub download_limit: u64,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: String, source: io::Error },
    #[error("{0}")]
    Keys(#[from] PinError),
    #[error("cannot start the event loop: {0}")]
    Io(#[from] io::Error),
}

/// Runs the client until `quit`, end of input (and downloads), or a signal.
/// Returns the exit code.
pub fn run(config: Config) -> Result<i32, StartError> {
    let mut client = Client::new(config)?;
    client.run()
}

struct Client {
    poll: Poll,
    listener: TcpListener,
    link: TrackerLink,
    transfers: Transfers,
    /// The trackers' ticket keys pinned in the state dir.
    pinned: PinnedKeys,
    controller: Controller,
    input: Receiver<Input>,
    /// Interactive mode: tells the stdin thread a command finished (next prompt).
    ack: Option<Sender<()>>,
    stop: Arc<AtomicBool>,
    exit: Option<i32>,
}

impl Client {
    fn new(config: Config) -> Result<Client, StartError> {
        crate::private_file::private_dir(&config.state_dir).map_err(|source| {
            StartError::StateDir {
                path: config.state_dir.display().to_string(),
                source,
            }
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
        let mut transfers = Transfers::new(
            TransferConfig {
                threads: config.threads,
                retries: config.retries,
                state_dir: config.state_dir.clone(),
                max_serving: crate::transfers::MAX_SERVING_CONNS,
                max_serving_per_ip: crate::transfers::MAX_SERVING_PER_IP,
            },
            waker.clone(),
        )?;
        let pinned = PinnedKeys::load(&config.state_dir)?;
        transfers.set_limit(Direction::Up, config.upload_limit);
        transfers.set_limit(Direction::Down, config.download_limit);
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        let (input, ack) = spawn_stdin(waker, config.state_dir.join(".shell_history"))?;
        let controller = Controller::new(
            controller::Config {
                announce: config.announce,
                seed: config.seed,
                ticket_key: transfers.ticket_key_hex(),
            },
            Box::new(OsFiles),
        );
        Ok(Client {
            poll,
            listener,
            link,
            transfers,
            pinned,
            controller,
            input,
            ack,
            stop,
            exit: None,
        })
    }

    fn run(&mut self) -> Result<i32, StartError> {
        let mut events = Events::with_capacity(256);
        loop {
            // A connection held by a rate limit wakes the loop when its bucket refills.
            let timeout = self
                .transfers
                .next_wake(Instant::now())
                .map_or(TICK, |w| w.min(TICK));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
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
            if self.exit.is_none() && self.stop.load(Ordering::Relaxed) {
                self.feed(Event::Stop);
            }
            if let Some(code) = self.exit {
                let _ = io::stdout().flush();
                return Ok(code);
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

    /// Everything after the events of one turn: results to the controller, the
    /// next input line when it wants one, then the tick.
    fn step(&mut self) {
        let now = Instant::now();
        self.link.tick(self.poll.registry());
        self.transfers.tick(self.poll.registry(), now);
        loop {
            let mut events: Vec<Event> = Vec::new();
            for (_job, result) in self.transfers.take_finished_hashes() {
                events.push(Event::Hashed(result));
            }
            for (id, outcome) in self.link.take_finished() {
                events.push(Event::Answer { id, outcome });
            }
            events.extend(
                self.transfers
                    .take_tracker_jobs()
                    .into_iter()
                    .map(Event::Transfer),
            );
            events.extend(self.link.take_notes().into_iter().map(Event::LinkNote));
            events.extend(self.transfers.take_notes().into_iter().map(Event::LinkNote));
            for key in self.link.take_relogin_keys() {
                // A silent re-login reached a tracker with another key: serve
                // no one until a login with the pinned key.
                if let Err(e) = self.pinned.accept(&key) {
                    self.transfers.stop_serving(self.poll.registry());
                    events.push(Event::LinkNote(format!("error: {e}; serving no one")));
                }
            }
            if self.link.take_session_renewed() {
                events.push(Event::SessionRenewed);
            }
            let mut progressed = !events.is_empty();
            for event in events {
                self.feed(event);
            }
            if self.exit.is_some() {
                return;
            }
            if self.controller.wants_input() {
                // Lines wait in the (bounded) channel until their turn.
                if let Ok(item) = self.input.try_recv() {
                    progressed = true;
                    self.feed(Event::Input(item));
                }
            }
            if !progressed {
                break;
            }
        }
        let downloads = self.transfers.running_downloads();
        self.feed(Event::Tick { downloads });
    }

    /// Hands one event to the controller and carries out its actions.
    fn feed(&mut self, event: Event) {
        let actions = self.controller.handle(event, Instant::now());
        for action in actions {
            self.carry_out(action);
        }
    }

    /// Carries out one action; an action that asks for an answer feeds it back
    /// at once (see the controller's module doc).
    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { id, request } => self.link.submit(self.poll.registry(), id, request),
            Action::Print(lines) => say(&lines),
            Action::Note(line) => eprintln!("{line}"),
            Action::Ack => {
                if let Some(ack) = &self.ack {
                    let _ = ack.send(());
                }
            }
            Action::StartHash { path } => {
                self.transfers.start_hash(path);
            }
            Action::AddShare { group, meta, path } => self.transfers.add_share(&group, meta, path),
            Action::RemoveShare { group, name } => self.transfers.remove_share(&group, &name),
            Action::RemoveGroupShares { group } => {
                for (g, name, _) in self.transfers.shared_files() {
                    if g == group {
                        self.transfers.remove_share(&g, &name);
                    }
                }
            }
            Action::CheckRegistry => {
                let found = self.transfers.reannounce_list();
                self.feed(Event::RegistryChecked(found));
            }
            Action::ReannounceDownloads => self.transfers.reannounce_downloads(),
            Action::UseStateOf { user } => {
                for note in self.transfers.use_user(&user) {
                    eprintln!("{note}");
                }
            }
            Action::FindResumes => {
                let found = self.transfers.pending_resumes();
                self.feed(Event::ResumesFound(found));
            }
            Action::StartDownload {
                order,
                meta,
                peers,
                ticket,
            } => {
                let peers = self.without_me(peers);
                let (group, dest) = (&order.key.group, order.dest.clone());
                let result = self.transfers.start_download(
                    self.poll.registry(),
                    group,
                    meta,
                    peers,
                    dest,
                    ticket.as_deref(),
                );
                self.feed(Event::DownloadStarted { order, result });
            }
            Action::UpdatePeers { key, peers, ticket } => {
                let peers = self.without_me(peers);
                self.transfers.update_peers(
                    self.poll.registry(),
                    &key.group,
                    &key.name,
                    peers,
                    ticket.as_deref(),
                );
            }
            Action::PinTrackerKey { key } => {
                let result = self.pinned.accept(&key).map_err(|e| e.to_string());
                self.transfers.set_tracker_keys(self.pinned.keys().to_vec());
                self.feed(Event::TrackerKeyChecked(result));
            }
            Action::StartServing => self.transfers.start_serving(),
            Action::StopServing => self.transfers.stop_serving(self.poll.registry()),
            Action::RateLimit { up, down } => {
                if let Some(rate) = up {
                    self.transfers.set_limit(Direction::Up, rate);
                }
                if let Some(rate) = down {
                    self.transfers.set_limit(Direction::Down, rate);
                }
                let (up, down) = self.transfers.limits();
                self.feed(Event::RateLimits { up, down });
            }
            Action::ReportDownloads => {
                let lines = self.transfers.status_lines();
                self.feed(Event::DownloadLines(lines));
            }
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    /// Seeder addresses without this client's own.
    fn without_me(&self, mut peers: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let me = self.link.peer_addr();
        peers.retain(|a| Some(*a) != me);
        peers
    }
}

/// Prints lines on stdout (the outcome of a command).
fn say(lines: &[String]) {
    let mut out = io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

/// Starts the stdin thread: rustyline with history on a terminal, plain bounded
/// lines otherwise. Returns the input channel and, on a terminal, the sender
/// that lets the thread show the next prompt.
fn spawn_stdin(
    waker: Arc<Waker>,
    history: PathBuf,
) -> io::Result<(Receiver<Input>, Option<Sender<()>>)> {
    // Bounded: a fast producer on stdin waits instead of filling memory.
    let (tx, rx) = mpsc::sync_channel(64);
    let thread = std::thread::Builder::new().name("stdin".into());
    if io::stdin().is_terminal() {
        let (ack_tx, ack_rx) = mpsc::channel();
        thread.spawn(move || read_interactive(tx, waker, ack_rx, history))?;
        Ok((rx, Some(ack_tx)))
    } else {
        thread.spawn(move || read_piped(tx, waker))?;
        Ok((rx, None))
    }
}
