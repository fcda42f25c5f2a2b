//! `Transfers`: everything peer-to-peer, behind one narrow interface that the
//! client's event loop calls. It owns the peer server's accepted connections,
//! the outgoing download connections, every `Download`, the shared files and
//! the hashing/disk thread pool.
//!
//! The event loop owns the `mio::Poll`, the peer-server listener and the tracker
//! link; it hands Transfers every event whose token is `>= PEER_TOKEN_BASE`,
//! every accepted peer socket, a call after each wake of the shared `Waker`
//! (pool results), and a periodic `tick`. Transfers never talks to the tracker
//! itself: it queues [`TrackerJob`]s that the loop sends, and the loop reports
//! the outcome of those it must know about.
//!
//! STATUS: interface stub written by the lead; the transfer engineer fills it in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Registry, Waker};
use wire::file_meta::FileMeta;

/// Tokens at or above this value belong to Transfers (peer connections).
pub const PEER_TOKEN_BASE: usize = 1 << 20;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// `--threads`: concurrent piece fetches per download.
    pub threads: usize,
    /// `--retries`: attempts per piece.
    pub retries: u32,
    /// `--state-dir`: resume state and `.uploads_registry` live here.
    pub state_dir: PathBuf,
}

/// Identifies one hashing job started by [`Transfers::start_hash`].
pub type HashJobId = u64;

/// A request Transfers wants sent to the tracker (the loop adds the session token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerJob {
    /// Tell the tracker this client now holds (part of) the file and serves it.
    AddSeeder { group: String, name: String, file_sha1: String },
}

/// The peer-to-peer side of the client.
pub struct Transfers {
    #[allow(dead_code)]
    config: TransferConfig,
    #[allow(dead_code)]
    waker: Arc<Waker>,
}

impl Transfers {
    pub fn new(config: TransferConfig, waker: Arc<Waker>) -> std::io::Result<Transfers> {
        Ok(Transfers { config, waker })
    }

    /// A connection accepted by the peer server.
    pub fn accept(&mut self, _registry: &Registry, _stream: TcpStream, _from: SocketAddr) {}

    /// An event for a token `>= PEER_TOKEN_BASE`.
    pub fn handle_event(&mut self, _registry: &Registry, _event: &Event) {}

    /// Called after the shared Waker fired: collect thread-pool results.
    pub fn poll_pool(&mut self, _registry: &Registry) {}

    /// Called every loop turn (at least every 100 ms): timeouts, retries, endgame.
    pub fn tick(&mut self, _registry: &Registry) {}

    /// Starts hashing `path` for an upload on the pool (pieces + whole file).
    pub fn start_hash(&mut self, _path: PathBuf) -> HashJobId {
        0
    }

    /// Hash jobs that finished since the last call: the metadata, or an error line.
    pub fn take_finished_hashes(&mut self) -> Vec<(HashJobId, Result<FileMeta, String>)> {
        Vec::new()
    }

    /// Serve `path` as the file described by `meta` (after a successful upload or re-announce).
    pub fn add_share(&mut self, _group: &str, _meta: FileMeta, _path: PathBuf) {}

    /// Stop serving a file of a group.
    pub fn remove_share(&mut self, _group: &str, _name: &str) {}

    /// Starts a download in the background; the error is one line for the user.
    pub fn start_download(
        &mut self,
        _registry: &Registry,
        _group: &str,
        _meta: FileMeta,
        _peers: Vec<SocketAddr>,
        _dest: PathBuf,
    ) -> Result<(), String> {
        Err("downloads are not implemented yet".into())
    }

    /// Fresh seeder addresses for a running download (the loop asks the tracker periodically).
    pub fn update_peers(&mut self, _registry: &Registry, _group: &str, _name: &str, _peers: Vec<SocketAddr>) {}

    /// Requests for the tracker queued since the last call.
    pub fn take_tracker_jobs(&mut self) -> Vec<TrackerJob> {
        Vec::new()
    }

    /// One `show_downloads` line per download.
    pub fn status_lines(&self) -> Vec<String> {
        Vec::new()
    }

    /// Downloads still running (end of input waits for them).
    pub fn active_downloads(&self) -> usize {
        0
    }
}
