//! `Download`: one file being fetched — its metadata, picker, known peers (and
//! which of them has a connection open), retry counts, the in-order whole-file
//! hash, progress and rate — and its `show_downloads` line. The network and pool
//! glue lives in `transfers`; each connection's own fetch state lives in it
//! (`fetch_peer`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::file_meta::FileMeta;
use wire::pieces::{Bitfield, PieceIndex};

use crate::picker::PiecePicker;
use crate::storage::{ResumeState, WholeHash};

/// Lifecycle of a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlState {
    /// Re-verifying the pieces a previous run left (resume).
    Checking,
    /// Fetching pieces.
    Running,
    /// All pieces verified and the whole-file hash matched: fsync + rename running.
    Finishing,
    Complete,
    Failed(String),
}

/// What a download knows about one peer address.
#[derive(Debug, Clone)]
pub struct KnownPeer {
    /// Sent bad data, is ourselves, or refused the file: never again.
    pub banned: bool,
    /// The slab key of the connection open to it: the one record of which
    /// connections a download has.
    pub conn: Option<usize>,
    /// Earliest next connection attempt.
    pub next_try: Instant,
}

impl KnownPeer {
    pub fn new() -> KnownPeer {
        KnownPeer {
            banned: false,
            conn: None,
            next_try: Instant::now(),
        }
    }
}

impl Default for KnownPeer {
    fn default() -> Self {
        KnownPeer::new()
    }
}

/// Bytes per second over the last couple of seconds.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(2);

    /// Records the cumulative byte count now.
    pub fn sample(&mut self, total: u64) {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RateMeter::WINDOW {
            self.samples.pop_front();
        }
    }

    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// How busy a download kept its requests, sampled by the periodic tick (for
/// the completion log: a swarm whose leechers wait with nothing to ask shows
/// here).
#[derive(Debug, Default)]
pub struct RequestLoad {
    /// Time with no request in flight while pieces were missing, closed spells...
    idle: Duration,
    /// ...and the open one.
    idle_since: Option<Instant>,
    /// Requests in flight, summed over the samples.
    sum: u64,
    samples: u64,
}

impl RequestLoad {
    /// `inflight` requests are out now (the download still misses pieces).
    pub fn sample(&mut self, inflight: usize, now: Instant) {
        self.sum += inflight as u64;
        self.samples += 1;
        match (inflight, self.idle_since) {
            (0, None) => self.idle_since = Some(now),
            (1.., Some(since)) => {
                self.idle += now.duration_since(since);
                self.idle_since = None;
            }
            _ => {}
        }
    }

    /// Time without a request in flight, up to `now`.
    pub fn idle(&self, now: Instant) -> Duration {
        self.idle
            + self
                .idle_since
                .map_or(Duration::ZERO, |s| now.duration_since(s))
    }

    /// Mean requests in flight over the samples.
    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.samples.max(1) as f64
    }
}

/// Human-readable rate, e.g. `12.3 MB/s`.
pub fn format_rate(bytes_per_sec: f64) -> String {
    let b = bytes_per_sec.max(0.0);
    if b >= 1e9 {
        format!("{:.2} GB/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} KB/s", b / 1e3)
    } else {
        format!("{b:.0} B/s")
    }
}

/// One download.
pub struct Download {
    pub group: String,
    pub meta: Arc<FileMeta>,
    pub dest: PathBuf,
    pub file: Option<Arc<File>>,
    /// Held while a verified piece is written: concurrent `pwrite`s to one file
    /// contend on the inode lock in the kernel, which spins and burns CPU that
    /// the hashes need; one writer at a time sleeps instead.
    pub write_lock: Arc<Mutex<()>>,
    pub picker: PiecePicker,
    pub state: DlState,
    /// Known peer addresses, in address order.
    pub peers: BTreeMap<SocketAddr, KnownPeer>,
    /// Failed verifications per piece.
    pub retries: HashMap<PieceIndex, u32>,
    /// The whole-file hash over the verified prefix; `None` while a pool job holds it.
    pub whole: Option<WholeHash>,
    /// Pieces fed (or being fed) to the whole-file hash.
    pub whole_next: usize,
    /// Verified pieces kept in memory for the whole-file hash (just ahead of it).
    pub ready: BTreeMap<PieceIndex, Vec<u8>>,
    /// Pieces on the pool being verified.
    pub verifying: usize,
    /// Bytes of verified pieces.
    pub bytes_done: u64,
    pub rate: RateMeter,
    /// Since when no peer is connected (for the failure bound).
    pub no_peers_since: Option<Instant>,
    /// `AddSeeder` queued for this download.
    pub announced: bool,
    pub resume_dirty: bool,
    pub last_resume_save: Instant,
    pub started: Instant,
    /// Last time a piece verified (or the start).
    pub last_progress: Instant,
    /// Pieces received per peer address (for logs and tests).
    pub served_by: HashMap<SocketAddr, u64>,
    /// Pieces the whole-file hash had to read back from the file (they arrived
    /// too far ahead of it to be kept in memory).
    pub reread: u64,
    /// A piece request was sent (for the first-request latency log).
    pub requested: bool,
    /// How busy the requests were (for the completion log).
    pub load: RequestLoad,
    /// The newest ticket the tracker signed for this download (seeders want it).
    pub ticket: Option<wire::ticket::Ticket>,
    /// Unix seconds when that ticket arrived (its lifetime decides when it is renewed).
    pub ticket_got: u64,
    /// The destination already held the file when the download (re)started: an
    /// earlier run finished it and stopped before recording that. The file is
    /// verified whole and shared; nothing is fetched, and a failure drops the
    /// resume state (it can never resume into an existing file).
    pub adopted: bool,
}

impl Download {
    pub fn new(group: &str, meta: FileMeta, dest: PathBuf, seed: u64) -> Download {
        let count = meta.piece_count();
        let now = Instant::now();
        Download {
            group: group.to_string(),
            meta: Arc::new(meta),
            dest,
            file: None,
            write_lock: Arc::new(Mutex::new(())),
            picker: PiecePicker::new(count, seed),
            state: DlState::Running,
            peers: BTreeMap::new(),
            retries: HashMap::new(),
            whole: Some(WholeHash::new()),
            whole_next: 0,
            ready: BTreeMap::new(),
            verifying: 0,
            bytes_done: 0,
            rate: RateMeter::default(),
            no_peers_since: Some(now),
            announced: false,
            resume_dirty: false,
            last_resume_save: now,
            started: now,
            last_progress: now,
            served_by: HashMap::new(),
            reread: 0,
            adopted: false,
            requested: false,
            load: RequestLoad::default(),
            ticket: None,
            ticket_got: 0,
        }
    }

    /// Still working (not complete, not failed).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            DlState::Checking | DlState::Running | DlState::Finishing
        )
    }

    /// Whether it can serve pieces to others (partial seeding).
    pub fn can_serve(&self) -> bool {
        self.file.is_some() && matches!(self.state, DlState::Running | DlState::Finishing)
    }

    /// The verified pieces.
    pub fn bits(&self) -> Bitfield {
        self.picker.verified_set()
    }

    /// Slab keys of this download's open connections.
    pub fn conn_keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.peers.values().filter_map(|p| p.conn)
    }

    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            file_sha1: self.meta.file_sha1,
            group: self.group.clone(),
            name: self.meta.name.clone(),
            dest: self.dest.clone(),
            size: self.meta.size,
            bits: self.bits().into_bytes(),
        }
    }

    /// Adds peer addresses (new ones only).
    pub fn add_peers(&mut self, peers: &[SocketAddr]) {
        for p in peers {
            self.peers.entry(*p).or_default();
        }
    }

    pub fn percent(&self) -> u64 {
        if self.meta.size == 0 {
            return if self.state == DlState::Complete {
                100
            } else {
                0
            };
        }
        (self.bytes_done * 100 / self.meta.size).min(100)
    }

    /// The `show_downloads` line, given the number of connected peers.
    pub fn status_line(&self, peers: usize) -> String {
        let head = format!("[{}] {}", self.group, self.meta.name);
        match &self.state {
            DlState::Complete => format!("[C] {head}"),
            DlState::Failed(reason) => format!("[F] {head}: {reason}"),
            _ => format!(
                "[D] {head} {}%  {}  {} peers",
                self.percent(),
                format_rate(self.rate.rate()),
                peers
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> FileMeta {
        let n = FileMeta::piece_count_for(size, 4);
        FileMeta {
            name: "f x".into(),
            size,
            piece_size: 4,
            piece_hashes: vec![[0; 20]; n],
            file_sha1: [1; 20],
        }
    }

    #[test]
    fn status_lines() {
        let mut d = Download::new("g", meta(10), PathBuf::from("/tmp/x"), 1);
        d.bytes_done = 5;
        let l = d.status_line(2);
        assert!(l.starts_with("[D] [g] f x 50%  "), "{l}");
        assert!(l.ends_with("  2 peers"), "{l}");
        d.state = DlState::Complete;
        assert_eq!(d.status_line(0), "[C] [g] f x");
        d.state = DlState::Failed("no peers".into());
        assert_eq!(d.status_line(0), "[F] [g] f x: no peers");
    }

    #[test]
    fn bits_and_resume() {
        let mut d = Download::new("g", meta(10), PathBuf::from("/tmp/x"), 1);
        d.picker.mark_have(PieceIndex::new(2, 3).unwrap());
        assert_eq!(d.bits().as_bytes(), &[0x20]);
        let r = d.resume_state();
        assert_eq!(r.bits, vec![0x20]);
        assert_eq!(r.size, 10);
    }

    #[test]
    fn rates() {
        assert_eq!(format_rate(0.0), "0 B/s");
        assert_eq!(format_rate(1500.0), "1.5 KB/s");
        assert_eq!(format_rate(12_300_000.0), "12.3 MB/s");
        assert_eq!(format_rate(1.2e9), "1.20 GB/s");
        let mut m = RateMeter::default();
        assert_eq!(m.rate(), 0.0);
        m.sample(0);
        std::thread::sleep(Duration::from_millis(20));
        m.sample(1000);
        assert!(m.rate() > 0.0);
    }
}
