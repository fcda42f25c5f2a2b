//! `tracker`: the swarmshare tracker service, as a library (the `tracker` binary
//! in `main.rs` only parses the command line, sets up logging and calls [`run`]).
//!
//! It keeps who is who (users, sessions), groups with their members and join
//! requests, and which files each group shares and who seeds them. Clients talk
//! to it over TCP with the line protocol of [`wire::tracker_msg`].
//!
//! Durability and replication go through one file, `<data-dir>/sync_log.txt`
//! ([`sync_log`]): every change is appended there (fsync, group commit) before it
//! is applied and before the client hears of it. The SQLite database
//! `<data-dir>/tracker<N>.db` ([`store`]) is a cache of the log that records how
//! much of the log it holds; on restart only the tail is replayed, and deleting it
//! rebuilds it. Trackers sharing a data dir share the log: appends are serialised
//! by `flock`, and each tracker's watcher applies the others' lines within 100 ms.
//!
//! Modules: [`auth`] hashes passwords and makes tokens, [`commands`] authorizes
//! and validates requests, [`dedup`] remembers applied request ids (exactly-once
//! changes), [`server`] runs the single mio event loop, [`log_repair`] holds the
//! operator's whole-log passes ([`verify_log`], [`salvage_log`]) and the v1
//! upgrade. The tracker list is read by `wire::tracker_info`, the same parser the
//! client uses.
//! [`operator_view`] (`--http`) serves `/metrics` ([`metrics`]) and `/status`
//! ([`status`], [`status_html`]) read-only from a thread of its own ([`http`]).
//!
//! [`replication`] is `--replication raft` (issue 13): trackers on separate hosts,
//! each with its own data dir, replicating `sync_log.txt` by Raft on the server's
//! mio loop.
//!
//! Tests, fuzz targets and the end-to-end harness use these modules directly:
//! the log format and the cache dump have one home each.

pub mod auth;
pub mod commands;
pub mod dedup;
pub mod http;
pub mod limits;
pub mod log_repair;
pub mod login_limits;
pub mod login_pool;
pub mod metrics;
pub mod operator_view;
pub mod replication;
pub mod server;
pub mod snapshot;
pub mod snapshot_job;
pub mod status;
pub mod status_html;
pub mod store;
pub mod sync_log;
pub mod tickets;
pub mod wal_checkpointer;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use store::Store;
use sync_log::{FsyncMode, LogError, SyncLog};

/// What a tracker is started with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// The tracker list: one HOST:PORT (or HOST PORT) a line.
    pub tracker_info: PathBuf,
    /// Which line of the list this tracker is (1-based); it listens there.
    pub tracker_no: usize,
    /// Directory of sync_log.txt (shared by trackers) and tracker<N>.db.
    pub data_dir: PathBuf,
    /// How an append is made durable.
    pub fsync: FsyncMode,
    /// Seeders not heard from for this many seconds are not listed as online.
    pub seeder_timeout_secs: u64,
    /// Tests only: exit right after applying a change of this command, unanswered.
    pub test_exit_after_apply: Option<wire::command::CommandKind>,
    /// Tests only: snapshot copies are held until this file exists.
    pub test_snapshot_gate: Option<PathBuf>,
    /// Tests only: restores of received snapshots are held until this file exists.
    pub test_restore_gate: Option<PathBuf>,
    /// Serve the operator view on this address.
    pub http: Option<String>,
    /// Show seeders' IP addresses on the operator view.
    pub http_show_peer_addrs: bool,
    /// Connection caps and idle timeouts.
    pub limits: limits::Limits,
    /// Sessions unused this many days are refused (fractions allowed).
    pub session_idle_days: f64,
    /// Lifetime of the download tickets `file_info` issues, in seconds.
    pub ticket_secs: u64,
    /// How the trackers of tracker_info.txt keep one history.
    pub replication: Replication,
    /// A snapshot (and log compaction) every this many applied changes, in
    /// both modes (0: never; raft mode needs at least 1).
    pub snapshot_every: u64,
    /// Largest payload of one tracker-to-tracker frame (raft mode; a larger
    /// message is sent in several). Tests lower it to split small snapshots.
    pub raft_max_frame: usize,
}

/// `--replication`: how the trackers of one tracker_info.txt keep one history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Replication {
    /// One host: the trackers share one data dir and its `sync_log.txt`.
    #[default]
    SharedLog,
    /// Separate hosts: each tracker has its own data dir; Raft keeps the logs equal.
    Raft,
}

/// Everything that stops the tracker, as one line of text.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Info(#[from] wire::tracker_info::InfoError),
    #[error("tracker number {no} is not in {path}: it lists {count} tracker(s), numbered from 1")]
    NoSuchTracker {
        no: usize,
        path: String,
        count: usize,
    },
    #[error("cannot read or create the ticket key {path}: {source}")]
    TicketKey {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracker {no} is already running with data dir {dir}")]
    AlreadyRunning { no: usize, dir: String },
    #[error("cannot serve the operator view on {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] sync_log::LogError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("event loop: {0}")]
    Poll(#[source] std::io::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("the cache has applied {applied} bytes of the log but the log is {len} bytes long")]
    Behind { applied: u64, len: u64 },
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    RaftNode(#[from] replication::node::NodeError),
    #[error("cannot {what} while tracker {other} runs on data dir {dir}: stop every tracker using it first")]
    Busy {
        what: &'static str,
        other: usize,
        dir: String,
    },
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a tracker until SIGINT, SIGTERM or `quit` on stdin: takes the instance
/// lock, opens the log and the cache, replays the log's tail, binds, prints
/// `tracker <N> listening on <addr>` on stdout and serves.
pub fn run(opts: &Options) -> Result<(), TrackerError> {
    let trackers = wire::tracker_info::load(&opts.tracker_info)?;
    let addr = match opts.tracker_no.checked_sub(1).and_then(|i| trackers.get(i)) {
        Some(addr) => addr.to_string(),
        None => {
            return Err(TrackerError::NoSuchTracker {
                no: opts.tracker_no,
                path: opts.tracker_info.display().to_string(),
                count: trackers.len(),
            })
        }
    };
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| TrackerError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;

    let _instance = lock_instance(dir, opts.tracker_no)?;
    let issuer =
        tickets::TicketIssuer::load_or_create(dir, opts.ticket_secs).map_err(|source| {
            TrackerError::TicketKey {
                path: dir.join(tickets::KEY_FILE).display().to_string(),
                source,
            }
        })?;
    // One key for the life of the process: the command context borrows it.
    let issuer: &'static tickets::TicketIssuer = Box::leak(Box::new(issuer));
    let mut store = open_store(&dir.join(format!("tracker{}.db", opts.tracker_no)))?;
    let mut log = open_log(dir, opts.fsync, opts.tracker_no)?;
    // Raft mode: its storage is opened first, to make the log whole from it.
    let raft_storage = match opts.replication {
        Replication::SharedLog => None,
        Replication::Raft => {
            let storage = replication::start::open_storage(dir, opts.tracker_no, trackers.len())?;
            replication::start::rebuild_log_tail(&storage, &mut log, &store)?;
            Some(storage)
        }
    };
    let cache = store.cache_pos()?;
    let recovery = log.recover(cache)?;
    if recovery.rebuild_cache {
        log::warn!(
            "the cache holds {} of the log, the log is generation {} (upgraded, salvaged or \
             replaced): rebuilding the cache from the log",
            cache
                .generation
                .map_or("an unknown generation".to_string(), |g| format!(
                    "generation {g}"
                )),
            log.generation()
        );
        store.reset()?;
    }
    store.set_generation(log.generation())?;
    replay(&mut log, &mut store)?;
    let raft = match raft_storage {
        None => None,
        Some(storage) => {
            let addrs: Vec<String> = trackers.iter().map(|t| t.to_string()).collect();
            let driver =
                replication::start::start(dir, opts, &addrs, storage, &mut log, &mut store)?;
            let gate = opts.test_restore_gate.clone();
            Some(server::RaftMode::new(driver, dir.clone(), opts.fsync, gate))
        }
    };
    restrict_modes(dir, opts.tracker_no)?;

    let listener = std::net::TcpListener::bind(&addr).map_err(|source| TrackerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| TrackerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let shutdown = install_signals()?;
    let cfg = server::Config {
        tracker_no: opts.tracker_no as u32,
        seeder_timeout_ms: opts.seeder_timeout_secs.saturating_mul(1000),
        test_exit_after_apply: opts.test_exit_after_apply,
        limits: opts.limits,
        login_limits: login_limits::LoginLimits::default(),
        session_idle_ms: (opts.session_idle_days * 86_400_000.0) as u64,
        tickets: Some(issuer),
        snapshot_every: opts.snapshot_every,
        test_snapshot_gate: opts
            .test_snapshot_gate
            .clone()
            .map(|p| &*Box::leak(p.into_boxed_path())),
    };
    warn_if_few_fds(opts.limits.max_conns);
    let (mut server, waker) =
        server::Server::new(listener, log, store, cfg, Arc::clone(&shutdown))?;
    if let Some(mode) = raft {
        server.enable_raft(mode, Arc::clone(&waker))?;
    }
    watch_stdin(Arc::clone(&shutdown), waker);
    if let Some(http) = &opts.http {
        start_operator_view(opts, http, trackers, &server, &shutdown)?;
    }

    log::info!("tracker {} listening on {local}", opts.tracker_no);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tracker {} listening on {local}", opts.tracker_no);
    let _ = out.flush();
    drop(out);
    server.run()
}

/// Starts `--http`, printing `tracker <N> operator view on http://<addr>/status`
/// on stdout (before the `listening on` line).
fn start_operator_view(
    opts: &Options,
    http: &str,
    trackers: Vec<wire::tracker_info::TrackerAddr>,
    server: &server::Server,
    shutdown: &Arc<AtomicBool>,
) -> Result<(), TrackerError> {
    let cfg = status::StatusConfig {
        tracker_no: opts.tracker_no as u32,
        trackers,
        data_dir: opts.data_dir.clone(),
        seeder_timeout_ms: opts.seeder_timeout_secs.saturating_mul(1000),
        show_peer_addrs: opts.http_show_peer_addrs,
        replication: match opts.replication {
            Replication::SharedLog => "shared-log",
            Replication::Raft => "raft",
        },
        listed_from: match opts.replication {
            Replication::SharedLog => None,
            Replication::Raft => Some(opts.tracker_info.clone()),
        },
    };
    let bound = operator_view::start(http, cfg, server.metrics(), Arc::clone(shutdown)).map_err(
        |source| TrackerError::Http {
            addr: http.to_string(),
            source,
        },
    )?;
    log::info!(
        "tracker {} operator view on http://{bound}/status",
        opts.tracker_no
    );
    println!(
        "tracker {} operator view on http://{bound}/status",
        opts.tracker_no
    );
    Ok(())
}

/// SIGINT and SIGTERM set the returned shutdown flag. SIGXFSZ gets a handler too,
/// so a write past a file-size limit fails with EFBIG (and is answered with an
/// error) instead of killing the tracker.
fn install_signals() -> Result<Arc<AtomicBool>, TrackerError> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown)).map_err(TrackerError::Signal)?;
    }
    let file_too_big = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGXFSZ, file_too_big).map_err(TrackerError::Signal)?;
    Ok(shutdown)
}

/// Holds `<dir>/tracker<N>.lock` (an `flock`) so that one tracker number runs
/// once per data dir; released when the process ends, however it ends.
fn lock_instance(dir: &Path, no: usize) -> Result<std::fs::File, TrackerError> {
    use rustix::fs::{flock, FlockOperation};
    let path = dir.join(format!("tracker{no}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| TrackerError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(TrackerError::AlreadyRunning {
            no,
            dir: dir.display().to_string(),
        });
    }
    Ok(file)
}

/// Opens the cache; a database that cannot be opened is moved aside and rebuilt
/// from the log. Stale WAL files of a deleted database are removed first.
fn open_store(path: &Path) -> Result<Store, TrackerError> {
    let side = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    if !path.exists() {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(side(suffix));
        }
    }
    match Store::open(path) {
        Ok(store) => Ok(store),
        Err(e @ store::StoreError::TooNew { .. }) => Err(e.into()),
        Err(e) => {
            let aside = side(&format!(".broken-{}", unix_ms()));
            log::warn!(
                "{e}; moving it to {} and rebuilding from the log",
                aside.display()
            );
            if std::fs::rename(path, &aside).is_ok() {
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(side(suffix));
                }
            }
            Ok(Store::open(path)?)
        }
    }
}

/// Opens the log in `dir`; a v1 log is upgraded to v2 first, if no other
/// tracker runs on the data dir ([`log_repair::upgrade_v1`]).
fn open_log(dir: &Path, mode: FsyncMode, no: usize) -> Result<SyncLog, TrackerError> {
    match SyncLog::open(dir, mode) {
        Err(LogError::NeedsUpgrade { .. }) => {}
        other => return Ok(other?),
    }
    refuse_if_others_run(dir, no, "upgrade sync_log.txt from format v1 to v2")?;
    let up = log_repair::upgrade_v1(dir)?;
    log::warn!(
        "sync log upgraded from format v1 to v2: {} entries, generation {}; the v1 file is kept as {}",
        up.entries,
        up.generation,
        up.original.display()
    );
    if let Some(at) = up.torn_tail {
        log::warn!(
            "the v1 log's torn tail at byte offset {at} was left out (it stays in the v1 file)"
        );
    }
    Ok(SyncLog::open(dir, mode)?)
}

/// Fails with [`TrackerError::Busy`] if a tracker other than `no` holds its
/// instance lock in `dir`.
fn refuse_if_others_run(dir: &Path, no: usize, what: &'static str) -> Result<(), TrackerError> {
    use rustix::fs::{flock, FlockOperation};
    let entries = std::fs::read_dir(dir).map_err(|source| TrackerError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let other = name.to_str().and_then(|n| {
            n.strip_prefix("tracker")?
                .strip_suffix(".lock")?
                .parse()
                .ok()
        });
        let Some(other) = other.filter(|&o: &usize| o != no) else {
            continue;
        };
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if flock(&file, FlockOperation::NonBlockingLockShared).is_err() {
            return Err(TrackerError::Busy {
                what,
                other,
                dir: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Brings the cache up to the log: replays the tail after the cache's applied
/// offset (everything, for a new or rebuilt cache of a log never compacted;
/// a cache behind a compacted log's base is loaded from the snapshot first). A
/// torn tail another tracker left meanwhile is not applied (the next change
/// cuts it); damage is an error.
fn replay(log: &mut SyncLog, store: &mut Store) -> Result<(), TrackerError> {
    let before = store.applied()?;
    let done = {
        let _lock = log.lock_current(false)?;
        let done = server::catch_up(log, store)?;
        if let Some(stop) = &done.stop {
            log.judge_stop(stop)?;
        }
        done
    };
    log::info!(
        "replayed {} log lines from offset {} (cache had {} lines)",
        done.lines,
        before.offset.max(log.first_entry()),
        before.lines
    );
    Ok(())
}

/// `--verify-log`: checks every line of the data dir's log (it may be in use)
/// and prints what it found on stdout. Returns whether every line checks out.
pub fn verify_log(data_dir: &Path) -> Result<bool, TrackerError> {
    let v = log_repair::verify(data_dir)?;
    let mut out = std::io::stdout().lock();
    let format = match v.header {
        sync_log::Header::V1 => "v1".to_string(),
        sync_log::Header::V2(g, base) if base == sync_log::Base::START => {
            format!("v2, generation {g}")
        }
        sync_log::Header::V2(g, base) => format!(
            "v2, generation {g}, compacted: starts after entry {} (offset {}; the entries \
             before it are in {})",
            base.lines,
            base.offset,
            snapshot::SNAPSHOT_FILE
        ),
    };
    let path = data_dir.join(sync_log::LOG_FILE);
    let _ = writeln!(
        out,
        "{}: format {format}, {} bytes",
        path.display(),
        v.bytes
    );
    for f in &v.findings {
        let _ = writeln!(out, "{f}");
    }
    let _ = if v.findings.is_empty() {
        writeln!(out, "all {} entries check out", v.good)
    } else {
        writeln!(
            out,
            "{} bad line(s), {} entries check out; see --salvage-log to write a log without the unreadable lines",
            v.findings.len(),
            v.good
        )
    };
    Ok(v.findings.is_empty())
}

/// `--salvage-log`: with no tracker running on the data dir, writes a new log
/// generation without the unreadable lines ([`log_repair::salvage`]), keeps the
/// original beside it and reports every dropped line (stdout, the log and a
/// report file). Caches are rebuilt from the new log at their next start.
pub fn salvage_log(data_dir: &Path, no: usize) -> Result<(), TrackerError> {
    let _instance = lock_instance(data_dir, no)?;
    refuse_if_others_run(data_dir, no, "salvage sync_log.txt")?;
    let s = log_repair::salvage(data_dir)?;
    let mut out = std::io::stdout().lock();
    for f in &s.dropped {
        log::warn!("salvage dropped {f}");
        let _ = writeln!(out, "dropped {f}");
    }
    for n in &s.notes {
        log::warn!("salvage: {n}");
        let _ = writeln!(out, "{n}");
    }
    let _ = writeln!(
        out,
        "salvaged: {} entries kept, {} dropped; new log generation {}; the original is kept as {}; \
         the report is {}; every cache is rebuilt from the new log at its tracker's next start",
        s.kept,
        s.dropped.len(),
        s.generation,
        s.original.display(),
        s.report.display()
    );
    Ok(())
}

/// The data dir 0700 and the files holding password hashes and sessions
/// (`sync_log.txt`, the cache and its WAL) 0600, whatever the umask made them.
fn restrict_modes(dir: &Path, no: usize) -> Result<(), TrackerError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| match std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode),
    ) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrackerError::DataDir {
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    };
    set(dir, 0o700)?;
    set(&dir.join(sync_log::LOG_FILE), 0o600)?;
    for suffix in ["", "-wal", "-shm"] {
        set(&dir.join(format!("tracker{no}.db{suffix}")), 0o600)?;
    }
    Ok(())
}

/// Warns when the soft open-files limit (from `/proc/self/limits`) is below
/// what `--max-conns` needs: past it, accepts fail until connections close.
fn warn_if_few_fds(max_conns: usize) {
    let Ok(text) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|&s| s < max_conns + 64) {
        log::warn!(
            "the open-files limit ({soft}) is below --max-conns ({max_conns}) + 64: raise it \
             (ulimit -n) or lower --max-conns"
        );
    }
}

/// Reads stdin in a small thread: `quit` stops the tracker; end of input does not.
fn watch_stdin(shutdown: Arc<AtomicBool>, waker: Arc<mio::Waker>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "quit" => {
                        shutdown.store(true, Ordering::SeqCst);
                        let _ = waker.wake();
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch stdin for quit: {e}");
    }
}
