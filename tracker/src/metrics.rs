//! The tracker's Prometheus metrics: counters, gauges and fixed-bucket
//! histograms made of atomics, and their text exposition (format 0.0.4).
//!
//! The event loop updates them with relaxed atomic adds (no lock, no
//! allocation); the HTTP thread ([`crate::http`]) reads them when `/metrics` is
//! scraped and adds the gauges it computes from its own read-only view of the
//! state ([`StateGauges`]). Every metric is named `swarmshare_tracker_*`.
//!
//! With `--replication raft` the loop also publishes its replica's
//! [`RaftProgress`] once per turn ([`RaftGauges`]); `/metrics` then adds the
//! role, term, commit and applied index, each tracker's match index (on the
//! leader), leader changes and snapshots taken. `snapshots_taken_total` also
//! counts the shared-log mode's compactions ([`crate::snapshot`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::replication::node::RaftProgress;

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds (seconds) of the log write + fsync histogram's buckets.
pub const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A value that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that is set (it may go down).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations counted into fixed buckets; the sum is kept in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Writes the `_bucket` (cumulative), `_sum` and `_count` samples.
    fn write_samples(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        // The count is the sum of the buckets read above, so `+Inf` == `_count`.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// How a request ended: an `OK` reply or an `ERR` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

/// Label for a request line that could not be decoded at all.
pub const INVALID_COMMAND: &str = "invalid";
/// Label for a decoded request whose command the tracker does not know.
pub const UNKNOWN_COMMAND: &str = "unknown";

/// Requests by command and outcome. The command labels are fixed when the
/// metrics are made (the tracker's command table plus `unknown` and
/// `invalid`), so no input can create new time series.
#[derive(Debug)]
pub struct RequestCounts {
    commands: Vec<&'static str>,
    /// `[ok, error]` per command, in `commands` order.
    counts: Vec<[Counter; 2]>,
}

impl RequestCounts {
    fn new(known: &[&'static str]) -> RequestCounts {
        let mut commands: Vec<&'static str> = known.to_vec();
        commands.extend([UNKNOWN_COMMAND, INVALID_COMMAND]);
        let counts = commands.iter().map(|_| Default::default()).collect();
        RequestCounts { commands, counts }
    }

    /// Counts one request; a command that is not in the table counts as `unknown`.
    pub fn record(&self, command: &str, outcome: Outcome) {
        let i = self
            .commands
            .iter()
            .position(|c| *c == command)
            .or_else(|| self.commands.iter().position(|c| *c == UNKNOWN_COMMAND))
            .unwrap_or(0);
        let o = usize::from(outcome == Outcome::Error);
        self.counts[i][o].inc();
    }

    #[cfg(test)]
    pub fn get(&self, command: &str, outcome: Outcome) -> u64 {
        let o = usize::from(outcome == Outcome::Error);
        self.commands
            .iter()
            .position(|c| *c == command)
            .map_or(0, |i| self.counts[i][o].get())
    }
}

/// The Raft replica's latest progress, published by the loop (raft mode only).
#[derive(Debug, Default)]
pub struct RaftGauges(Mutex<Option<RaftProgress>>);

impl RaftGauges {
    pub fn publish(&self, progress: RaftProgress) {
        if let Ok(mut p) = self.0.lock() {
            *p = Some(progress);
        }
    }

    /// The latest published progress (`None` in shared-log mode).
    pub fn latest(&self) -> Option<RaftProgress> {
        self.0.lock().ok().and_then(|p| p.clone())
    }
}

/// Everything the event loop counts. Shared (`Arc`) with the HTTP thread.
#[derive(Debug)]
pub struct Metrics {
    pub requests: RequestCounts,
    /// From the arrival of a complete request line to its reply being queued
    /// (so a change's time includes its group commit's fsync).
    pub request_seconds: Histogram,
    /// Log lines this tracker appended.
    pub changes_appended: Counter,
    /// Log lines appended by other trackers that this tracker applied.
    pub changes_applied_from_others: Counter,
    /// One group commit: the write and fsync of its lines to `sync_log.txt`.
    pub log_fsync_seconds: Histogram,
    pub open_connections: Gauge,
    pub connections_accepted: Counter,
    /// `login` requests answered with an error (wrong password or no such user).
    pub failed_logins: Counter,
    /// `login` requests refused at once, backed off after wrong passwords.
    pub rate_limited_logins: Counter,
    pub http_requests: Counter,
    /// Shared-log mode: snapshots taken (each compacts `sync_log.txt`).
    pub snapshots_taken: Counter,
    pub raft: RaftGauges,
}

impl Metrics {
    /// `commands`: the command names requests are counted by.
    pub fn new(commands: &[&'static str]) -> Metrics {
        Metrics {
            requests: RequestCounts::new(commands),
            request_seconds: Histogram::new(REQUEST_BUCKETS),
            changes_appended: Counter::default(),
            changes_applied_from_others: Counter::default(),
            log_fsync_seconds: Histogram::new(FSYNC_BUCKETS),
            open_connections: Gauge::default(),
            connections_accepted: Counter::default(),
            failed_logins: Counter::default(),
            rate_limited_logins: Counter::default(),
            http_requests: Counter::default(),
            snapshots_taken: Counter::default(),
            raft: RaftGauges::default(),
        }
    }
}

/// Values the HTTP thread reads from its read-only view of the state at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateGauges {
    pub tracker_no: u32,
    /// `shared-log` (later also `raft`).
    pub replication: &'static str,
    /// The file's length (what it takes on disk).
    pub log_bytes: u64,
    /// The log's logical end: bytes of history up to its last line, counting what
    /// compaction dropped (the scale of `applied_offset`).
    pub log_end_offset: u64,
    pub applied_offset: u64,
    pub applied_lines: u64,
    pub users: u64,
    pub groups: u64,
    pub group_members: u64,
    pub files: u64,
    pub seeders_online: u64,
}

/// One metric family being written: `# HELP`, `# TYPE`, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The whole exposition, as served on `/metrics`.
pub fn render(m: &Metrics, state: &StateGauges) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let p = "swarmshare_tracker";
    family(
        &mut out,
        &format!("{p}_info"),
        "gauge",
        "This tracker: its number and replication mode (value always 1).",
    );
    let _ = writeln!(
        out,
        "{p}_info{{tracker=\"{}\",replication=\"{}\",version=\"{}\"}} 1",
        state.tracker_no,
        escape_label(state.replication),
        env!("CARGO_PKG_VERSION")
    );
    render_requests(&mut out, m);
    let counters = [
        (
            "changes_appended_total",
            "Log lines (changes) this tracker appended to sync_log.txt.",
            m.changes_appended.get(),
        ),
        (
            "changes_applied_from_others_total",
            "Log lines appended by other trackers that this tracker applied.",
            m.changes_applied_from_others.get(),
        ),
        (
            "connections_accepted_total",
            "Client connections accepted.",
            m.connections_accepted.get(),
        ),
        (
            "failed_logins_total",
            "Login requests refused (wrong password or unknown user).",
            m.failed_logins.get(),
        ),
        (
            "rate_limited_logins_total",
            "Login requests refused at once after too many wrong passwords.",
            m.rate_limited_logins.get(),
        ),
        (
            "http_requests_total",
            "Requests served on the operator HTTP listener.",
            m.http_requests.get(),
        ),
    ];
    for (name, help, v) in counters {
        single(&mut out, &format!("{p}_{name}"), "counter", help, v);
    }
    let name = format!("{p}_log_fsync_seconds");
    family(
        &mut out,
        &name,
        "histogram",
        "Time to write and fsync one group commit to sync_log.txt.",
    );
    m.log_fsync_seconds.write_samples(&mut out, &name);
    let gauges = [
        (
            "open_connections",
            "Client connections open now.",
            m.open_connections.get(),
        ),
        (
            "log_bytes",
            "Length of sync_log.txt in bytes (after a compaction, only the tail after its snapshot).",
            state.log_bytes,
        ),
        (
            "log_end_offset_bytes",
            "Logical end of sync_log.txt's history in bytes, counting what compaction dropped; \
             minus applied_offset_bytes it is how far this tracker's cache is behind.",
            state.log_end_offset,
        ),
        (
            "applied_offset_bytes",
            "Logical offset in sync_log.txt's history up to which this tracker's cache has \
             applied the log.",
            state.applied_offset,
        ),
        (
            "applied_lines",
            "Log lines this tracker's cache has applied.",
            state.applied_lines,
        ),
        ("users", "Registered users.", state.users),
        ("groups", "Groups.", state.groups),
        (
            "group_members",
            "Group memberships (owners included).",
            state.group_members,
        ),
        ("files", "Files shared in all groups.", state.files),
        (
            "seeders_online",
            "Sessions seeding at least one file that announced within the seeder timeout.",
            state.seeders_online,
        ),
    ];
    for (name, help, v) in gauges {
        single(&mut out, &format!("{p}_{name}"), "gauge", help, v);
    }
    let raft = m.raft.latest();
    single(
        &mut out,
        &format!("{p}_snapshots_taken_total"),
        "counter",
        "Snapshots of the state taken (each compacts the log, in either mode).",
        raft.as_ref().map_or(0, |r| r.snapshots_taken) + m.snapshots_taken.get(),
    );
    if let Some(r) = raft {
        render_raft(&mut out, &r);
    }
    out
}

/// The Raft figures (only in raft mode).
fn render_raft(out: &mut String, r: &RaftProgress) {
    let p = "swarmshare_tracker_raft";
    family(
        out,
        &format!("{p}_role"),
        "gauge",
        "1 for this tracker's current Raft role, 0 for the others.",
    );
    for role in ["leader", "follower", "candidate", "pre-candidate"] {
        let v = u8::from(role == r.role);
        let _ = writeln!(out, "{p}_role{{role=\"{role}\"}} {v}");
    }
    let gauges = [
        ("term", "The current Raft term.", r.term),
        (
            "leader",
            "The leader this tracker knows of (tracker number; 0: none).",
            r.leader,
        ),
        (
            "commit_index",
            "The highest Raft log index known committed.",
            r.commit_index,
        ),
        (
            "applied_index",
            "The highest Raft log index applied to the cache.",
            r.applied_index,
        ),
        (
            "last_index",
            "The last index in this tracker's Raft log.",
            r.last_index,
        ),
    ];
    for (name, help, v) in gauges {
        single(out, &format!("{p}_{name}"), "gauge", help, v);
    }
    if !r.matched.is_empty() {
        family(
            out,
            &format!("{p}_match_index"),
            "gauge",
            "On the leader: the highest log index known replicated on each tracker.",
        );
    }
    for (peer, matched) in &r.matched {
        let _ = writeln!(out, "{p}_match_index{{peer=\"{peer}\"}} {matched}");
    }
    let members = [
        (
            "voter",
            &r.voters,
            "1 for each tracker of the membership Raft committed (as applied here).",
        ),
        (
            "learner",
            &r.learners,
            "1 for each tracker being added: it receives the log and votes once caught up.",
        ),
    ];
    for (kind, trackers, help) in members {
        family(out, &format!("{p}_{kind}"), "gauge", help);
        for no in trackers {
            let _ = writeln!(out, "{p}_{kind}{{tracker=\"{no}\"}} 1");
        }
    }
    single(
        out,
        &format!("{p}_leader_changes_total"),
        "counter",
        "Times this tracker saw a new leader or lost the one it had.",
        r.leader_changes,
    );
}

fn render_requests(out: &mut String, m: &Metrics) {
    let name = "swarmshare_tracker_requests_total";
    family(
        out,
        name,
        "counter",
        "Client requests answered, by command and outcome (ok or error).",
    );
    for (command, counts) in m.requests.commands.iter().zip(&m.requests.counts) {
        for (outcome, c) in ["ok", "error"].iter().zip(counts) {
            let _ = writeln!(
                out,
                "{name}{{command=\"{}\",outcome=\"{outcome}\"}} {}",
                escape_label(command),
                c.get()
            );
        }
    }
    let name = "swarmshare_tracker_request_duration_seconds";
    family(out, name, "histogram", "From a complete request line's arrival to its reply being queued (changes include their fsync).");
    m.request_seconds.write_samples(out, name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn raft_figures_appear_only_once_published() {
        let m = Metrics::new(&["login"]);
        let state = StateGauges::default();
        let before = render(&m, &state);
        assert!(!before.contains("_raft_"), "{before}");
        assert_eq!(
            sample(&before, "swarmshare_tracker_snapshots_taken_total").as_deref(),
            Some("0")
        );
        m.raft.publish(RaftProgress {
            role: "leader",
            term: 7,
            leader: 2,
            commit_index: 40,
            applied_index: 40,
            last_index: 41,
            matched: vec![(1, 38), (2, 41), (3, 40)],
            leader_changes: 3,
            snapshots_taken: 1,
            voters: vec![1, 2, 3],
            learners: vec![4],
        });
        let text = render(&m, &state);
        let v = |series: &str| sample(&text, series);
        assert_eq!(
            v("swarmshare_tracker_raft_voter{tracker=\"3\"}").as_deref(),
            Some("1")
        );
        assert_eq!(v("swarmshare_tracker_raft_voter{tracker=\"4\"}"), None);
        assert_eq!(
            v("swarmshare_tracker_raft_learner{tracker=\"4\"}").as_deref(),
            Some("1")
        );
        assert_eq!(v("swarmshare_tracker_raft_learner{tracker=\"3\"}"), None);
        assert_eq!(
            v("swarmshare_tracker_raft_role{role=\"leader\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            v("swarmshare_tracker_raft_role{role=\"follower\"}").as_deref(),
            Some("0")
        );
        assert_eq!(v("swarmshare_tracker_raft_term").as_deref(), Some("7"));
        assert_eq!(
            v("swarmshare_tracker_raft_commit_index").as_deref(),
            Some("40")
        );
        assert_eq!(
            v("swarmshare_tracker_raft_match_index{peer=\"1\"}").as_deref(),
            Some("38")
        );
        assert_eq!(
            v("swarmshare_tracker_raft_leader_changes_total").as_deref(),
            Some("3")
        );
        assert_eq!(
            v("swarmshare_tracker_snapshots_taken_total").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.write_samples(&mut out, "x");
        assert_eq!(sample(&out, "x_bucket{le=\"0.001\"}").as_deref(), Some("1"));
        assert_eq!(sample(&out, "x_bucket{le=\"0.01\"}").as_deref(), Some("3"));
        assert_eq!(sample(&out, "x_bucket{le=\"+Inf\"}").as_deref(), Some("4"));
        assert_eq!(sample(&out, "x_count").as_deref(), Some("4"));
        let sum: f64 = sample(&out, "x_sum").unwrap().parse().unwrap();
        assert!((sum - 3.0105).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn requests_are_counted_by_known_command_only() {
        let m = Metrics::new(&["login", "list_groups"]);
        m.requests.record("login", Outcome::Ok);
        m.requests.record("login", Outcome::Error);
        m.requests.record("login", Outcome::Error);
        m.requests.record("no\"such\ncommand", Outcome::Error);
        m.requests.record(INVALID_COMMAND, Outcome::Error);
        assert_eq!(m.requests.get("login", Outcome::Ok), 1);
        assert_eq!(m.requests.get("login", Outcome::Error), 2);
        assert_eq!(m.requests.get(UNKNOWN_COMMAND, Outcome::Error), 1);
        let text = render(&m, &StateGauges::default());
        assert!(text.contains(
            "swarmshare_tracker_requests_total{command=\"login\",outcome=\"error\"} 2\n"
        ));
        assert!(text.contains(
            "swarmshare_tracker_requests_total{command=\"unknown\",outcome=\"error\"} 1\n"
        ));
        assert!(!text.contains("such"), "an unknown command made a label");
    }

    #[test]
    fn every_sample_belongs_to_a_family_declared_before_it() {
        let m = Metrics::new(&["login"]);
        m.request_seconds.observe(Duration::from_millis(2));
        let text = render(
            &m,
            &StateGauges {
                replication: "shared-log",
                ..Default::default()
            },
        );
        let mut declared: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let series = line.split([' ', '{']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s))
                .filter(|b| declared.iter().any(|d| d == b))
                .unwrap_or(series);
            assert_eq!(declared.last().map(String::as_str), Some(base), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
