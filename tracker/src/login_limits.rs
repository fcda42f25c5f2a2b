//! Wrong-password rate limits, sans-IO (the caller passes `now`): per user name
//! and per source IP, a few free failures, then an exponential back-off,
//! capped. A login while backed off is refused at once, without argon2 and
//! without touching the log, so a flood stalls no one else.
//!
//! Memory is bounded: at most [`LoginLimits::max_entries`] names and as many
//! IPs; entries are forgotten a while after their last failure, and when full
//! the stalest entry makes room.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The parameters (defaults: 5 free failures, 1 s doubling up to 5 min).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures allowed before the back-off starts.
    pub free_failures: u32,
    /// Wait after the first failure past the free ones; doubles with each more.
    pub first_delay: Duration,
    /// Longest wait.
    pub max_delay: Duration,
    /// An entry with no failure for this long is forgotten.
    pub forget_after: Duration,
    /// Most user names (and, separately, IPs) remembered.
    pub max_entries: usize,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            free_failures: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

/// Failures of one name or IP.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

/// The failure counts by user name and by source IP.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    users: HashMap<String, Failures>,
    ips: HashMap<IpAddr, Failures>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> LoginLimiter {
        LoginLimiter {
            limits,
            users: HashMap::new(),
            ips: HashMap::new(),
        }
    }

    /// `Err(wait)` if a login for `user` from `ip` must wait that long first.
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let wait = |f: Option<&Failures>| {
            f.map_or(Duration::ZERO, |f| {
                f.blocked_until.saturating_duration_since(now)
            })
        };
        let wait = wait(self.users.get(user)).max(wait(self.ips.get(&ip)));
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// A wrong password (or unknown user) for `user` from `ip`.
    pub fn failed(&mut self, user: &str, ip: IpAddr, now: Instant) {
        let l = self.limits;
        bump(&mut self.users, user.to_string(), &l, now);
        bump(&mut self.ips, ip, &l, now);
    }

    /// A successful login: the user's failures are forgotten (the IP's are
    /// not, so one good account does not reset an address's guessing).
    pub fn succeeded(&mut self, user: &str) {
        self.users.remove(user);
    }

    /// Names and IPs remembered.
    pub fn entries(&self) -> (usize, usize) {
        (self.users.len(), self.ips.len())
    }
}

/// Counts a failure of `key`, making room first if the map is full.
fn bump<K: Hash + Eq + Clone>(
    map: &mut HashMap<K, Failures>,
    key: K,
    l: &LoginLimits,
    now: Instant,
) {
    if !map.contains_key(&key) && map.len() >= l.max_entries.max(1) {
        map.retain(|_, f| now.saturating_duration_since(f.last) < l.forget_after);
        if map.len() >= l.max_entries.max(1) {
            let stalest = map
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                map.remove(&k);
            }
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
        blocked_until: now,
    });
    if now.saturating_duration_since(f.last) >= l.forget_after {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
    if f.count > l.free_failures {
        let doublings = (f.count - l.free_failures - 1).min(30);
        let delay = l
            .first_delay
            .saturating_mul(1 << doublings)
            .min(l.max_delay);
        f.blocked_until = now + delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_free_failures_then_doubling_waits_capped_and_lifting() {
        let mut l = LoginLimiter::new(LoginLimits::default());
        let t0 = Instant::now();
        let a = ip("127.0.0.1");
        for _ in 0..5 {
            assert_eq!(l.check("u", a, t0), Ok(()));
            l.failed("u", a, t0);
        }
        assert_eq!(l.check("u", a, t0), Ok(()), "five failures are free");
        l.failed("u", a, t0);
        assert_eq!(l.check("u", a, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check("u", a, t1), Ok(()), "the wait lifts");
        l.failed("u", a, t1);
        assert_eq!(l.check("u", a, t1), Err(Duration::from_secs(2)));
        let mut t = t1;
        for _ in 0..20 {
            l.failed("u", a, t);
            t += Duration::from_secs(1);
        }
        assert_eq!(
            l.check("u", a, t),
            Err(Duration::from_secs(299)),
            "capped at 5 min"
        );
        // Another user from another address is not affected.
        assert_eq!(l.check("v", ip("127.0.0.2"), t), Ok(()));
        // The same user from another address is (per-user limit)...
        assert!(l.check("u", ip("127.0.0.2"), t).is_err());
        // ...and another user from the same address too (per-IP limit).
        assert!(l.check("v", a, t).is_err());
        l.succeeded("u");
        assert!(l.check("u", ip("127.0.0.2"), t).is_ok());
        assert!(l.check("u", a, t).is_err(), "the IP's failures stay");
    }

    #[test]
    fn memory_is_bounded_and_old_entries_are_forgotten() {
        let limits = LoginLimits {
            max_entries: 100,
            ..LoginLimits::default()
        };
        let mut l = LoginLimiter::new(limits);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            l.failed(
                &format!("user{i}"),
                addr,
                t0 + Duration::from_millis(i as u64),
            );
        }
        let (users, ips) = l.entries();
        assert!(users <= 100 && ips <= 100, "{users} names, {ips} IPs kept");
        // Failures an hour old no longer count.
        let a = ip("10.0.0.1");
        for _ in 0..6 {
            l.failed("old", a, t0);
        }
        let later = t0 + Duration::from_secs(3601 + 300);
        l.failed("old", a, later);
        assert_eq!(l.check("old", a, later), Ok(()));
    }
}
