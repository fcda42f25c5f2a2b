//! A three-tracker `--replication raft` cluster for the end-to-end tests
//! (`tests/raft_cluster.rs` on loopback, `tests/raft_netns.rs` on network
//! namespaces): separate data dirs holding one cluster key and one ticket key, as
//! an operator sets them up; the leader read from the trackers' role lines; the
//! checks every Raft test makes (identical logs, each cache equal to a rebuild
//! from its own log). On loopback its tracker_info.txt can grow or shrink
//! ([`Cluster::relist`], `tests/raft_membership.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::netns::{Host, Hosts};
use crate::tracker_state::{dump, line_starts, parse_log, read_log, version_base};
use crate::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc, WAIT};
use tracker::sync_log::Base;

/// The port every tracker listens on in a netns cluster (one tracker per host).
pub const NETNS_PORT: u16 = 7001;

/// The cluster key every test tracker holds (a test key, not a secret).
pub const KEY_HEX: &str = "5f1c0a9e3d7b24c68e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";

/// Three trackers' list and data dirs, each holding the cluster key.
pub struct Cluster {
    _tmp: tempfile::TempDir,
    pub info: PathBuf,
    pub dirs: Vec<PathBuf>,
    pub trackers: Vec<Option<TrackerProc>>,
    extra: Vec<String>,
    hosts: Option<Hosts>,
}

pub fn key_into(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{KEY_HEX}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Cluster {
    /// Three trackers on loopback ports.
    pub fn start(extra: &[&str]) -> Cluster {
        Cluster::start_on(None, extra)
    }

    /// Three trackers, on loopback or (with `hosts`) tracker N in host N.
    pub fn start_on(hosts: Option<Hosts>, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let info = match &hosts {
            Some(h) => h.tracker_info(tmp.path(), &[1, 2, 3], NETNS_PORT),
            None => write_tracker_info(tmp.path(), &[free_port(), free_port(), free_port()]),
        };
        let dirs: Vec<PathBuf> = (1..=3)
            .map(|i| tmp.path().join(format!("host{i}")))
            .collect();
        for d in &dirs {
            key_into(d);
        }
        let mut c = Cluster {
            _tmp: tmp,
            info,
            dirs,
            trackers: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            hosts,
        };
        c.up(1);
        // The ticket key, like the cluster key, is the same on every tracker.
        for d in &c.dirs[1..] {
            std::fs::copy(c.dirs[0].join("tracker_key"), d.join("tracker_key")).unwrap();
        }
        c.up(2);
        c.up(3);
        c
    }

    /// One tracker on a loopback port: a cluster to grow with [`Cluster::relist`].
    pub fn start_single(extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let info = write_tracker_info(tmp.path(), &[free_port()]);
        let dirs = vec![tmp.path().join("host1")];
        key_into(&dirs[0]);
        let mut c = Cluster {
            _tmp: tmp,
            info,
            dirs,
            trackers: vec![None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            hosts: None,
        };
        c.up(1);
        c
    }

    pub fn up(&mut self, no: usize) {
        let mut args = vec!["--replication", "raft"];
        args.extend(self.extra.iter().map(String::as_str));
        let host = self.hosts.as_ref().map(|h| h.host(no));
        let t = TrackerProc::start_in(host, &self.info, no, &self.dirs[no - 1], &args);
        self.trackers[no - 1] = Some(t);
    }

    pub fn kill9(&mut self, no: usize) {
        if let Some(mut t) = self.trackers[no - 1].take() {
            t.kill9();
        }
    }

    /// The hosts, in a netns cluster.
    pub fn hosts(&self) -> Option<&Hosts> {
        self.hosts.as_ref()
    }

    /// Where a connection to tracker `no` is opened from: its own host (netns)
    /// or this process (loopback); with its address. For writer threads.
    pub fn dialer(&self, no: usize) -> (Option<Host>, String) {
        let host = self.hosts.as_ref().map(|h| h.host(no).clone());
        (host, self.t(no).addr.clone())
    }

    pub fn t(&self, no: usize) -> &TrackerProc {
        self.trackers[no - 1].as_ref().expect("tracker running")
    }

    pub fn t_mut(&mut self, no: usize) -> &mut TrackerProc {
        self.trackers[no - 1].as_mut().expect("tracker running")
    }

    pub fn running(&self) -> Vec<usize> {
        (1..=self.trackers.len())
            .filter(|&n| self.trackers[n - 1].is_some())
            .collect()
    }

    /// Rewrites tracker_info.txt (loopback only) with `n` lines: the first ones
    /// kept, new ones on free ports, each new tracker given an empty data dir
    /// holding the cluster key and the ticket key, as an operator sets it up. No
    /// tracker is started or stopped.
    pub fn relist(&mut self, n: usize) {
        assert!(self.hosts.is_none(), "relist is for loopback clusters");
        let text = std::fs::read_to_string(&self.info).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.truncate(n);
        while lines.len() < n {
            lines.push(format!("127.0.0.1:{}", free_port()));
        }
        std::fs::write(&self.info, lines.join("\n") + "\n").unwrap();
        let root = self.dirs[0].parent().unwrap().to_path_buf();
        for no in self.dirs.len() + 1..=n {
            let dir = root.join(format!("host{no}"));
            key_into(&dir);
            std::fs::copy(self.dirs[0].join("tracker_key"), dir.join("tracker_key")).unwrap();
            self.dirs.push(dir);
        }
        if self.trackers.len() < n {
            self.trackers.resize_with(n, || None);
        }
    }

    /// Stops tracker `no` cleanly (`quit`) and starts it again (it reads
    /// tracker_info.txt afresh).
    pub fn restart(&mut self, no: usize) {
        self.stop(no);
        self.up(no);
    }

    /// Stops tracker `no` cleanly (`quit`).
    pub fn stop(&mut self, no: usize) {
        if let Some(mut t) = self.trackers[no - 1].take() {
            t.quit();
        }
    }

    /// The running tracker that last said it is leader in the highest term.
    pub fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for no in self.running() {
            let text = self.t(no).stderr.text();
            let me = format!("tracker {no} ");
            let last = text
                .lines()
                .rev()
                .find(|l| {
                    l.contains(&me)
                        && l.contains("(term ")
                        && [" is leader", " follows", " has no leader"]
                            .iter()
                            .any(|r| l.contains(r))
                })
                .map(str::to_string);
            if let Some(l) = last.filter(|l| l.contains(" is leader")) {
                let term: u64 = l
                    .split("(term ")
                    .nth(1)
                    .and_then(|t| t.trim_end_matches(')').parse().ok())
                    .unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, no));
                }
            }
        }
        best.map(|b| b.1)
    }

    pub fn await_leader(&self) -> usize {
        let mut found = None;
        assert!(
            wait_until(WAIT, || {
                found = self.leader();
                found.is_some()
            }),
            "no leader elected; stderr of tracker 1:\n{}",
            self.t(self.running()[0]).stderr.text()
        );
        found.unwrap()
    }

    pub fn log(&self, no: usize) -> PathBuf {
        self.dirs[no - 1].join("sync_log.txt")
    }

    pub fn db(&self, no: usize) -> PathBuf {
        self.dirs[no - 1].join(format!("tracker{no}.db"))
    }
}

/// The log's entry lines (the version line names each log's own generation).
pub fn entries(log: &Path) -> Vec<String> {
    read_log(log).0
}

/// The state a fresh cache gets from applying `log` through `store::apply`
/// (after loading the data dir's `snapshot.db` if the log was compacted). The log
/// is read once, and read again after the snapshot is loaded: a compaction that
/// replaced both meanwhile, or a read in the middle of an append, makes it start
/// over (bounded), so a running tracker's data dir can be checked.
pub fn rebuilt(log: &Path) -> String {
    for _ in 0..20 {
        if let Some(state) = rebuilt_once(log) {
            return state;
        }
    }
    panic!(
        "{}: compacted under every attempt to read it",
        log.display()
    );
}

fn rebuilt_once(log: &Path) -> Option<String> {
    let bytes = std::fs::read(log).unwrap();
    let text = std::str::from_utf8(&bytes).expect("a log is UTF-8");
    if !text.ends_with('\n') {
        return None; // read in the middle of an append
    }
    let header = text.lines().next().unwrap_or_default();
    let base = version_base(header);
    let mut store = tracker::store::Store::open_in_memory().unwrap();
    if base != Base::START {
        let snap = tracker::snapshot::path(log.parent().unwrap());
        store.load_snapshot(&snap, |_| Ok(())).ok()?;
        let now = std::fs::read_to_string(log).unwrap();
        if now.lines().next() != Some(header) {
            return None; // compacted meanwhile: the snapshot may be the next one
        }
    }
    let (_, decoded) = parse_log(text);
    // Logical offsets: byte `s` of the file is offset `s - <version line> + base.offset`.
    let header_len = header.len() + 1;
    let at = |s: usize| (s - header_len) as u64 + base.offset;
    let starts = line_starts(&bytes);
    let with_offsets: Vec<(u64, _)> = starts.iter().map(|&s| at(s)).zip(decoded).collect();
    store.apply_entries(&with_offsets, at(bytes.len())).unwrap();
    Some(tracker::store::dump(store.conn()).unwrap())
}

/// Where the log at `log` starts in the history.
pub fn log_base(log: &Path) -> Base {
    let text = std::fs::read_to_string(log).unwrap();
    version_base(text.lines().next().unwrap_or_default())
}

/// The sequence number of the last entry line of `lines` (0 for none).
pub fn last_seq(lines: &[String]) -> u64 {
    lines.last().map_or(0, |l| {
        tracker::sync_log::LogEntry::decode(l.as_bytes()).unwrap().0
    })
}

/// Groups `tracker` lists to a logged-in user.
pub fn groups(conn: &mut TrackerConn, token: &str) -> BTreeSet<String> {
    let (_, rows) = conn.ok(Some(token), "list_groups", &[]);
    rows.into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect()
}

/// Waits until trackers `nos` hold the same entry lines: the same last entry,
/// and the same line for every number two logs both hold (each log may start
/// after its own snapshot); returns the lines of the one that starts first.
pub fn await_same_logs(c: &Cluster, nos: &[usize]) -> Vec<String> {
    let mut last = Vec::new();
    let same = wait_until(WAIT, || {
        let logs: Vec<Vec<String>> = nos.iter().map(|&n| entries(&c.log(n))).collect();
        let agree = |a: &Vec<String>, b: &Vec<String>| {
            let n = a.len().min(b.len());
            last_seq(a) == last_seq(b) && a[a.len() - n..] == b[b.len() - n..]
        };
        last = logs
            .iter()
            .max_by_key(|l| l.len())
            .cloned()
            .unwrap_or_default();
        logs.windows(2).all(|w| agree(&w[0], &w[1]))
    });
    assert!(same, "logs of trackers {nos:?} differ");
    last
}

/// A protocol connection to `addr`, opened from `host` (netns) or from here.
pub fn connect_from(host: Option<&Host>, addr: &str) -> std::io::Result<TrackerConn> {
    match host {
        Some(h) => h.connect(addr).map(TrackerConn::from_stream),
        None => {
            let s = std::net::TcpStream::connect(addr)?;
            Ok(TrackerConn::from_stream(s))
        }
    }
}

/// Whether the caches of `nos` come to equal rebuilds from their own logs within
/// [`WAIT`]: a raft tracker commits its applies to the cache file within a tenth
/// of a second (`tracker::replication::machine::BATCH_HOLD`), and only then does
/// another connection see them.
pub fn caches_match_logs(c: &Cluster, nos: &[usize]) -> bool {
    wait_until(WAIT, || {
        nos.iter().all(|&no| dump(&c.db(no)) == rebuilt(&c.log(no)))
    })
}
