//! The tracker's abuse limits as sans-IO state, so they can be unit-tested with
//! an injected `now`: how many reply bytes a connection may have queued before
//! its next request waits ([`OutBudget`]), how many connections are open in
//! total and per source IP ([`ConnCaps`]), and when a connection has been idle
//! too long ([`Idle`]).
//!
//! The event loop ([`crate::server`]) owns one of each and asks them before it
//! handles a request; nothing here touches a socket or a clock.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use wire::tracker_msg::Reply;

/// Reply bytes a connection may have queued (unsent) before its next request
/// waits: a client that does not read its replies costs at most this plus one
/// reply (a `file_info` reply can be ~4 MiB).
pub const OUT_HIGH: usize = 1024 * 1024;

/// Per loop turn: the reply bytes each connection has queued, checked before
/// each request is handled, not only before a batch is taken.
#[derive(Debug, Default)]
pub struct OutBudget {
    limit: usize,
    queued: HashMap<usize, usize>,
    /// Connections whose later requests this turn all wait (keeps their order).
    stopped: HashSet<usize>,
}

impl OutBudget {
    pub fn new(limit: usize) -> OutBudget {
        OutBudget {
            limit,
            ..OutBudget::default()
        }
    }

    /// Connection `key` starts the turn with `unsent` bytes queued.
    pub fn start(&mut self, key: usize, unsent: usize) {
        self.queued.insert(key, unsent);
    }

    /// Whether the next request of `key` may be handled now. Once a request of
    /// a connection waits, every later one of it waits too this turn.
    pub fn admits(&mut self, key: usize) -> bool {
        if self.stopped.contains(&key) {
            return false;
        }
        if self.queued.get(&key).copied().unwrap_or(0) >= self.limit {
            self.stopped.insert(key);
            return false;
        }
        true
    }

    /// `reply` is queued on `key`.
    pub fn charge(&mut self, key: usize, reply: &Reply) {
        *self.queued.entry(key).or_insert(0) += reply_size(reply);
    }
}

/// About the encoded size of `reply` (fields plus separators; escapes aside).
pub fn reply_size(reply: &Reply) -> usize {
    let fields = |v: &[String]| v.iter().map(|f| f.len() + 1).sum::<usize>();
    match reply {
        Reply::Ok { head, rows } => {
            8 + fields(head) + rows.iter().map(|r| fields(r) + 1).sum::<usize>()
        }
        Reply::Err(e) => 8 + e.len(),
    }
}

/// The connection limits of a tracker (flags; defaults in [`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections in total.
    pub max_conns: usize,
    /// Open client connections per source IP.
    pub max_conns_per_ip: usize,
    /// A connection that has not logged in is closed after this long without a request.
    pub idle_before_login: Duration,
    /// A logged-in connection is closed after this long without a request.
    pub idle_after_login: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_conns: 4096,
            max_conns_per_ip: 256,
            idle_before_login: Duration::from_secs(30),
            idle_after_login: Duration::from_secs(600),
        }
    }
}

/// Why a new connection is closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapRefusal {
    #[error("too many connections to this tracker; try again later")]
    Total,
    #[error("too many connections from your address; try again later")]
    PerIp,
}

/// Open connections in total and per source IP. Memory: one entry per IP
/// with an open connection, so bounded by the total cap.
#[derive(Debug)]
pub struct ConnCaps {
    max: usize,
    max_per_ip: usize,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnCaps {
    pub fn new(max: usize, max_per_ip: usize) -> ConnCaps {
        ConnCaps {
            max,
            max_per_ip,
            open: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip` in, or says why it is refused.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), CapRefusal> {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(CapRefusal::PerIp);
        }
        if self.open >= self.max {
            return Err(CapRefusal::Total);
        }
        self.open += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// A connection from `ip` that was admitted closed.
    pub fn release(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open
    }
}

/// When a connection was last active and whether it logged in.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub last_active: Instant,
    pub logged_in: bool,
}

impl Idle {
    pub fn new(now: Instant) -> Idle {
        Idle {
            last_active: now,
            logged_in: false,
        }
    }

    /// Whether the connection has been idle longer than its limit at `now`.
    pub fn expired(&self, limits: &Limits, now: Instant) -> bool {
        let limit = if self.logged_in {
            limits.idle_after_login
        } else {
            limits.idle_before_login
        };
        now.saturating_duration_since(self.last_active) > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_ip_and_in_total_and_release() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let mut caps = ConnCaps::new(5, 3);
        for _ in 0..3 {
            assert_eq!(caps.admit(a), Ok(()));
        }
        assert_eq!(caps.admit(a), Err(CapRefusal::PerIp));
        assert_eq!(caps.admit(b), Ok(()));
        assert_eq!(caps.admit(b), Ok(()));
        assert_eq!(caps.admit(c), Err(CapRefusal::Total));
        caps.release(a);
        assert_eq!(caps.open(), 4);
        assert_eq!(caps.admit(c), Ok(()));
        for _ in 0..3 {
            caps.release(a);
        }
        caps.release(b);
        caps.release(b);
        caps.release(c);
        assert_eq!(caps.open(), 0);
        assert!(caps.per_ip.is_empty(), "no state kept for closed addresses");
    }

    #[test]
    fn idle_limit_is_short_before_login_and_long_after() {
        let limits = Limits {
            idle_before_login: Duration::from_secs(30),
            idle_after_login: Duration::from_secs(600),
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut idle = Idle::new(t0);
        assert!(!idle.expired(&limits, t0 + Duration::from_secs(30)));
        assert!(idle.expired(&limits, t0 + Duration::from_secs(31)));
        idle.logged_in = true;
        assert!(!idle.expired(&limits, t0 + Duration::from_secs(599)));
        assert!(idle.expired(&limits, t0 + Duration::from_secs(601)));
    }

    #[test]
    fn budget_stops_a_connection_once_over_and_keeps_it_stopped() {
        let mut b = OutBudget::new(100);
        b.start(1, 0);
        b.start(2, 150);
        assert!(!b.admits(2), "already over the limit");
        assert!(b.admits(1));
        let big = Reply::Ok {
            head: vec!["x".repeat(120)],
            rows: vec![],
        };
        b.charge(1, &big);
        assert!(!b.admits(1), "the big reply used the budget up");
        assert!(!b.admits(1));
        b.start(3, 0);
        b.charge(3, &Reply::ok());
        assert!(b.admits(3));
        assert!(reply_size(&big) >= 120);
    }
}
