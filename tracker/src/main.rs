//! The `tracker` binary: parses the command line, sets up logging to stderr and
//! runs the [`tracker`] library.
//!
//! ```text
//! tracker <tracker_info.txt> <tracker_no> [--data-dir DIR] [--log-level LEVEL] [--fsync always|batch]
//!         [--http ADDR [--http-show-peer-addrs]] [--replication shared-log|raft]
//! tracker <tracker_info.txt> <tracker_no> [--data-dir DIR] --verify-log
//! tracker <tracker_info.txt> <tracker_no> [--data-dir DIR] --salvage-log
//! ```
//!
//! `--verify-log` checks every line of `sync_log.txt` and exits 1 if any is bad;
//! `--salvage-log` writes a new log without the unreadable lines (see
//! [`tracker::log_repair`]). Both print their findings and exit.
//!
//! After start-up it prints `tracker <N> listening on <addr>` on stdout; it stops on
//! SIGINT, SIGTERM or `quit` on stdin (end of stdin does not stop it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use tracker::sync_log::FsyncMode;
use wire::command::CommandKind;

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
    /// `batch`: one fsync of sync_log.txt for all changes of a loop turn (group
    /// commit); `always`: one fsync per change. Shared-log mode: in raft mode the
    /// Raft log is fsynced once per batch of entries and sync_log.txt is not.
    #[arg(long, value_enum, default_value = "batch")]
    fsync: FsyncMode,
    /// Seeders not heard from for this many seconds are not listed as online.
    #[arg(long, default_value_t = 45, hide = true)]
    seeder_timeout_secs: u64,
    /// Lifetime of download tickets in seconds (tests use a few seconds).
    #[arg(long, default_value_t = tracker::tickets::DEFAULT_TICKET_SECS, hide = true)]
    ticket_secs: u64,
    /// Fault injection for the end-to-end tests only: exit (status 86) right after
    /// a change of this command was appended and applied, before its reply is sent.
    #[arg(long, hide = true, value_name = "COMMAND", value_parser = parse_command_kind)]
    test_exit_after_apply: Option<CommandKind>,
    /// For the end-to-end tests only: each snapshot copy (taken off the loop) is
    /// held, once made, until this file exists: a slow copy, on demand.
    #[arg(long, hide = true, value_name = "PATH")]
    test_snapshot_gate: Option<PathBuf>,
    /// For the end-to-end tests only (`--replication raft`): each received
    /// snapshot's restore (written off the loop) is held, once written, until this
    /// file exists: a slow restore, on demand.
    #[arg(long, hide = true, value_name = "PATH")]
    test_restore_gate: Option<PathBuf>,
    /// Serve the read-only operator view (/status, /status.json, /metrics) on
    /// this address, e.g. 127.0.0.1:9101. Off by default.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Show seeders' IP addresses on the operator view (hidden by default).
    #[arg(long, requires = "http")]
    http_show_peer_addrs: bool,
    /// Open client connections in total; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    max_conns: usize,
    /// Open client connections per source IP; more are closed at once.
    #[arg(long, default_value_t = 256)]
    max_conns_per_ip: usize,
    /// Seconds a connection that has not logged in may stay without a request.
    #[arg(long, default_value_t = 30)]
    idle_before_login_secs: u64,
    /// Seconds a logged-in connection may stay without a request.
    #[arg(long, default_value_t = 600)]
    idle_after_login_secs: u64,
    /// A session unused this many days is refused (log in again); fractions
    /// allowed. Use = login, upload, add_seeder, a seeding heartbeat.
    #[arg(long, default_value_t = 30.0)]
    session_idle_days: f64,
    /// Check every line of sync_log.txt (safe beside running trackers), print
    /// every bad one, exit 1 if there is any.
    #[arg(long, conflicts_with = "salvage_log")]
    verify_log: bool,
    /// With no tracker running on the data dir: write a new sync_log.txt without
    /// its unreadable lines, keep the original beside it, report what was dropped.
    #[arg(long)]
    salvage_log: bool,
    /// `shared-log`: trackers on one host share the data dir's sync_log.txt;
    /// `raft`: trackers on separate hosts, each with its own data dir, replicate
    /// it by Raft (every tracker of the list is a voter).
    #[arg(long, value_enum, default_value = "shared-log")]
    replication: tracker::Replication,
    /// Take a snapshot of the state (data-dir/snapshot.db) and compact
    /// sync_log.txt every this many applied changes, in both modes; 0 = never
    /// (shared-log only). `--raft-snapshot-every` is the old name.
    /// In raft mode each snapshot also compacts Raft's log (to the snapshot plus
    /// 1000 entries).
    #[arg(long, alias = "raft-snapshot-every", default_value_t = 100_000)]
    snapshot_every: u64,
    /// Tests only: the largest payload of one tracker-to-tracker frame in bytes
    /// (raft mode), so that a test's small snapshot travels in several frames.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u32).range(1..),
          default_value_t = tracker::replication::peer_frame::DEFAULT_MAX_FRAME as u32)]
    raft_max_frame: u32,
}

fn parse_command_kind(name: &str) -> Result<CommandKind, String> {
    CommandKind::from_name(name).ok_or_else(|| format!("unknown tracker command {name:?}"))
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
    let result = if args.verify_log {
        match tracker::verify_log(&args.data_dir) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        }
    } else if args.salvage_log {
        tracker::salvage_log(&args.data_dir, args.tracker_no)
    } else {
        serve(args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("tracker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Args) -> Result<(), tracker::TrackerError> {
    let opts = tracker::Options {
        tracker_info: args.tracker_info,
        tracker_no: args.tracker_no,
        data_dir: args.data_dir,
        fsync: args.fsync,
        seeder_timeout_secs: args.seeder_timeout_secs,
        test_exit_after_apply: args.test_exit_after_apply,
        test_snapshot_gate: args.test_snapshot_gate,
        test_restore_gate: args.test_restore_gate,
        http: args.http,
        http_show_peer_addrs: args.http_show_peer_addrs,
        session_idle_days: args.session_idle_days,
        limits: tracker::limits::Limits {
            max_conns: args.max_conns,
            max_conns_per_ip: args.max_conns_per_ip,
            idle_before_login: std::time::Duration::from_secs(args.idle_before_login_secs),
            idle_after_login: std::time::Duration::from_secs(args.idle_after_login_secs),
        },
        ticket_secs: args.ticket_secs,
        replication: args.replication,
        snapshot_every: args.snapshot_every,
        raft_max_frame: args.raft_max_frame as usize,
    };
    tracker::run(&opts)
}
