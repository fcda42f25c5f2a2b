//! `tracker`: the swarmshare tracker service.
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
//! and validates requests, [`server`] runs the single mio event loop. The tracker
//! list is read by `wire::tracker_info`, the same parser the client uses.
//!
//! ```text
//! tracker <tracker_info.txt> <tracker_no> [--data-dir DIR] [--log-level LEVEL] [--fsync always|batch]
//!         [--http ADDR [--http-show-peer-addrs]]
//! ```
//!
//! After start-up it prints `tracker <N> listening on <addr>` on stdout; it stops on
//! SIGINT, SIGTERM or `quit` on stdin (end of stdin does not stop it).

mod auth;
mod commands;
mod http;
mod metrics;
mod operator_view;
mod server;
mod status;
mod status_html;
mod store;
mod sync_log;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use log::LevelFilter;

use store::Store;
use sync_log::{FsyncMode, SyncLog, FIRST_ENTRY};

/// Command line of the tracker.
#[derive(Debug, Parser)]
#[command(name = "tracker", version, about = "The swarmshare tracker")]
struct Args {
    /// The tracker list: one HOST:PORT (or HOST PORT) a line.
    tracker_info: PathBuf,
    /// Which line of the list this tracker is (1-based); it listens there.
    tracker_no: usize,
    /// Directory of sync_log.txt (shared by trackers) and tracker<N>.db.
    #[arg(long, default_value = "./tracker_data")]
    data_dir: PathBuf,
    /// error, warn, info, debug, trace or off.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// `batch`: one fsync for all changes of a loop turn (group commit);
    /// `always`: one fsync per change.
    #[arg(long, value_enum, default_value = "batch")]
    fsync: FsyncMode,
    /// Seeders not heard from for this many seconds are not listed as online.
    #[arg(long, default_value_t = 45, hide = true)]
    seeder_timeout_secs: u64,
    /// Serve the read-only operator view (/status, /status.json, /metrics) on
    /// this address, e.g. 127.0.0.1:9101. Off by default.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Show seeders' IP addresses on the operator view (hidden by default).
    #[arg(long, requires = "http")]
    http_show_peer_addrs: bool,
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
    Store(#[from] store::StoreError),
    #[error("event loop: {0}")]
    Poll(#[source] std::io::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("the cache has applied {applied} bytes of the log but the log is {len} bytes long")]
    Behind { applied: u64, len: u64 },
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = simplelog::WriteLogger::init(
        args.log_level,
        simplelog::ConfigBuilder::new()
            .set_time_format_rfc3339()
            .build(),
        std::io::stderr(),
    );
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("tracker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), TrackerError> {
    let trackers = wire::tracker_info::load(&args.tracker_info)?;
    let addr = match args.tracker_no.checked_sub(1).and_then(|i| trackers.get(i)) {
        Some(addr) => addr.to_string(),
        None => {
            return Err(TrackerError::NoSuchTracker {
                no: args.tracker_no,
                path: args.tracker_info.display().to_string(),
                count: trackers.len(),
            })
        }
    };
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| TrackerError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;

    let _instance = lock_instance(dir, args.tracker_no)?;
    let mut store = open_store(&dir.join(format!("tracker{}.db", args.tracker_no)))?;
    let (log, recovery) = SyncLog::open(dir, args.fsync, store.applied()?.offset)?;
    if let Some((offset, reason, saved)) = &recovery.cut {
        log::warn!(
            "sync log: ignored an invalid tail at offset {offset} ({reason}); saved to {}",
            saved.display()
        );
    }
    replay(&log, &mut store, recovery.valid_len)?;

    let listener = std::net::TcpListener::bind(&addr).map_err(|source| TrackerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| TrackerError::Bind {
        addr: addr.clone(),
        source,
    })?;

    // A write past a file-size limit must fail with EFBIG (and be answered with
    // an error), not kill the tracker with SIGXFSZ.
    // SAFETY: setting a signal's disposition to "ignore" installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown)).map_err(TrackerError::Signal)?;
    }
    let cfg = server::Config {
        tracker_no: args.tracker_no as u32,
        seeder_timeout_ms: args.seeder_timeout_secs.saturating_mul(1000),
    };
    let (mut server, waker) =
        server::Server::new(listener, log, store, cfg, Arc::clone(&shutdown))?;
    watch_stdin(Arc::clone(&shutdown), waker);
    if let Some(http) = &args.http {
        let status = status::StatusConfig {
            tracker_no: args.tracker_no as u32,
            trackers: trackers.clone(),
            data_dir: dir.clone(),
            seeder_timeout_ms: cfg.seeder_timeout_ms,
            show_peer_addrs: args.http_show_peer_addrs,
        };
        let bound = operator_view::start(http, status, server.metrics(), Arc::clone(&shutdown))
            .map_err(|source| TrackerError::Http {
                addr: http.clone(),
                source,
            })?;
        log::info!(
            "tracker {} operator view on http://{bound}/status",
            args.tracker_no
        );
        println!(
            "tracker {} operator view on http://{bound}/status",
            args.tracker_no
        );
    }

    log::info!("tracker {} listening on {local}", args.tracker_no);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tracker {} listening on {local}", args.tracker_no);
    let _ = out.flush();
    drop(out);
    server.run()
}

/// Holds `<dir>/tracker<N>.lock` (an `flock`) so that one tracker number runs
/// once per data dir; released when the process ends, however it ends.
fn lock_instance(dir: &Path, no: usize) -> Result<std::fs::File, TrackerError> {
    use std::os::unix::io::AsRawFd;
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
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
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

/// Brings the cache up to the log: replays only the tail after the cache's
/// applied offset, or everything if the cache is ahead of the (cut) log.
fn replay(log: &SyncLog, store: &mut Store, valid_len: u64) -> Result<(), TrackerError> {
    let mut before = store.applied()?;
    if before.offset > valid_len {
        log::warn!(
            "cache has applied {} bytes but the valid log is {valid_len} bytes: rebuilding the cache from the log",
            before.offset
        );
        store.reset()?;
        before = store.applied()?;
    }
    let done = {
        let _lock = log.lock_shared()?;
        server::catch_up(log, store, false)?
    };
    log::info!(
        "replayed {} log lines from offset {} (cache had {} lines)",
        done.lines,
        before.offset.max(FIRST_ENTRY),
        before.lines
    );
    Ok(())
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
