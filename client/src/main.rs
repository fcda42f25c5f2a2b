//! `client`: the swarmshare client — a line-oriented shell on stdin, a tracker
//! link with transparent failover, and a peer server that shares files.
//!
//! ```text
//! client <tracker_info.txt> [--listen ADDR] [--state-dir DIR] [--threads N] [--retries N]
//!        [--seed] [--announce-secs N] [--upload-limit RATE] [--download-limit RATE]
//!        [--log-level LEVEL]
//! client <IP>:<PORT> <tracker_info.txt> [options]   # the assignment's form: IP:PORT is --listen
//! ```
//!
//! Exit codes: 0 after `quit`, end of input (once downloads finished) or a
//! signal; 2 for bad arguments or an unusable tracker_info.txt; 1 when the
//! client cannot start (listen address taken, state dir not writable).
//! Commands and their output: see `client::shell`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client::event_loop::{self, Config};

use log::LevelFilter;

#[derive(Debug, Parser)]
#[command(
    name = "client",
    version,
    about = "swarmshare client: shell, tracker link and peer server"
)]
struct Args {
    /// tracker_info.txt, or (assignment form) the peer server's IP:PORT followed by tracker_info.txt.
    #[arg(value_name = "TRACKER_INFO | IP:PORT")]
    first: String,
    /// tracker_info.txt when the first argument is IP:PORT.
    #[arg(value_name = "TRACKER_INFO")]
    second: Option<String>,
    /// Address of the peer server (port 0: chosen by the OS). [default: 0.0.0.0:0]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Holds each user's .uploads_registry and download resume state
    /// (under users/<user>/), the pinned tracker keys and the shell history.
    #[arg(long, value_name = "DIR", default_value = "./.swarmshare")]
    state_dir: PathBuf,
    /// Pieces in flight at once per download (one request each).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Failures a piece may have (timeout, dead peer, rejection, bad hash)
    /// before its download fails.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    retries: u32,
    /// At end of input keep serving shared files until SIGINT/SIGTERM.
    #[arg(long)]
    seed: bool,
    /// Seconds between heartbeats to the tracker while logged in.
    #[arg(long, value_name = "N", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    announce_secs: u64,
    /// Upload limit over all peers, bytes per second: e.g. 500K, 40M, 1G (powers of 1024); 0 = unlimited.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = rate_arg)]
    upload_limit: u64,
    /// Download limit over all peers, same form as --upload-limit.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = rate_arg)]
    download_limit: u64,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: LevelFilter,
}

/// A `RATE` argument (see `client::limits`).
fn rate_arg(text: &str) -> Result<u64, String> {
    client::limits::parse_rate(text).map_err(|e| e.to_string())
}

/// The two command-line forms resolved: (tracker_info path, listen address).
fn resolve_positionals(args: &Args) -> Result<(PathBuf, SocketAddr), String> {
    let default_listen: SocketAddr = "0.0.0.0:0".parse().expect("valid address");
    match &args.second {
        None => Ok((
            PathBuf::from(&args.first),
            args.listen.unwrap_or(default_listen),
        )),
        Some(info) => {
            let addr: SocketAddr = args.first.parse().map_err(|_| {
                format!(
                    "with two arguments the first must be the peer server's IP:PORT, got {:?}",
                    args.first
                )
            })?;
            if args.listen.is_some_and(|l| l != addr) {
                return Err(format!(
                    "{addr} and --listen {} disagree",
                    args.listen.unwrap()
                ));
            }
            Ok((PathBuf::from(info), addr))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = simplelog::TermLogger::init(
        args.log_level,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let (info, listen) = match resolve_positionals(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let trackers = match wire::tracker_info::load(&info) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        trackers,
        listen,
        state_dir: args.state_dir,
        threads: args.threads as usize,
        retries: args.retries,
        seed: args.seed,
        announce: Duration::from_secs(args.announce_secs),
        upload_limit: args.upload_limit,
        download_limit: args.download_limit,
    };
    match event_loop::run(config) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<(PathBuf, SocketAddr), String> {
        let args = Args::try_parse_from(std::iter::once("client").chain(v.iter().copied()))
            .map_err(|e| e.to_string())?;
        resolve_positionals(&args)
    }

    #[test]
    fn both_forms() {
        let (info, listen) = parse(&["ti.txt"]).unwrap();
        assert_eq!(info, PathBuf::from("ti.txt"));
        assert_eq!(listen, "0.0.0.0:0".parse().unwrap());
        let (_, listen) = parse(&["ti.txt", "--listen", "127.0.0.1:9000"]).unwrap();
        assert_eq!(listen, "127.0.0.1:9000".parse().unwrap());
        let (info, listen) = parse(&["127.0.0.1:5000", "ti.txt", "--seed"]).unwrap();
        assert_eq!(info, PathBuf::from("ti.txt"));
        assert_eq!(listen, "127.0.0.1:5000".parse().unwrap());
        assert!(parse(&["notanaddr", "ti.txt"]).is_err());
        assert!(parse(&["127.0.0.1:5000", "ti.txt", "--listen", "127.0.0.1:1"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["a", "b", "c"]).is_err());
        assert!(parse(&["ti.txt", "--threads", "0"]).is_err());
        assert!(parse(&["ti.txt", "--upload-limit", "40M", "--download-limit", "0"]).is_ok());
        let e = parse(&["ti.txt", "--upload-limit", "4.5M"]).unwrap_err();
        assert!(e.contains("bad rate \"4.5M\""), "{e}");
    }
}
