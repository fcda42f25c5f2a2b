//! Bandwidth limits (`--upload-limit`, `--download-limit`, `rate_limit`): the
//! `RATE` syntax and a token bucket. Pure: the clock is passed in as `now`, so
//! the bucket is tested without sleeping; the event loop asks it how many bytes
//! it may move now and, when none, how long until it may (a timer, never a
//! busy wait).
//!
//! `RATE` is bytes per second: digits with an optional suffix `K`, `M` or `G`
//! (powers of 1024, either case); `0` means unlimited.
//!
//! [`RateGate`] is the one place the client's transfers meet the limits: one
//! bucket for upload (bytes written on serving connections) and one for
//! download (bytes read on fetch connections), over all peers. The loop grants
//! a connection a quota of at most one [`RateGate::chunk`] before its I/O,
//! records what it used, and holds a connection whose quota ran out until the
//! bucket has a chunk again ([`RateGate::wait`] is the poll timeout).

use std::fmt;
use std::time::{Duration, Instant};

/// Why a `RATE` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRate(pub String);

impl fmt::Display for BadRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad rate {:?}: expected bytes per second like 500K, 40M or 1G (0 = unlimited)",
            self.0
        )
    }
}

impl std::error::Error for BadRate {}

/// Parses a `RATE`: bytes per second, `0` = unlimited.
pub fn parse_rate(text: &str) -> Result<u64, BadRate> {
    let bad = || BadRate(text.to_string());
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A rate in the `RATE` syntax, as short as it goes exactly: `512K`, `40M`,
/// `1000` (bytes), or `unlimited` for 0.
pub fn format_limit(rate: u64) -> String {
    if rate == 0 {
        return "unlimited".into();
    }
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if rate.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", rate >> shift);
        }
    }
    rate.to_string()
}

/// The smallest burst a limited bucket allows, so tiny rates still move whole
/// socket reads and writes.
const MIN_BURST: u64 = 16 * 1024;

/// A token bucket: `rate` bytes per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    burst: u64,
    tokens: u64,
    /// When `tokens` was last brought up to date, and the fraction of a byte
    /// earned since then that is not in `tokens` yet (in byte-nanoseconds).
    last: Instant,
    carry: u128,
}

impl TokenBucket {
    /// A bucket of `rate` bytes per second (0 = unlimited), full at `now`.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst = burst_for(rate);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
            carry: 0,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Changes the rate from `now` on (what was saved up stays, within the new burst).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst_for(rate);
        self.tokens = self.tokens.min(self.burst);
        self.carry = 0;
    }

    /// Bytes that may move now (`u64::MAX` when unlimited).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.is_unlimited() {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens
    }

    /// Takes up to `want` bytes now; returns how many were granted.
    pub fn take(&mut self, want: u64, now: Instant) -> u64 {
        if self.is_unlimited() {
            return want;
        }
        self.refill(now);
        let got = want.min(self.tokens);
        self.tokens -= got;
        got
    }

    /// Records `n` bytes that moved without asking (they may overdraw nothing:
    /// the count stops at zero).
    pub fn consume(&mut self, n: u64, now: Instant) {
        let _ = self.take(n, now);
    }

    /// How long until at least `want` bytes (at most the burst) may move:
    /// zero when they may now. The loop uses it as a poll timeout.
    pub fn wait_for(&mut self, want: u64, now: Instant) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        let want = want.min(self.burst);
        if self.tokens >= want {
            return Duration::ZERO;
        }
        let missing = (want - self.tokens) as u128 * 1_000_000_000;
        let nanos = missing
            .saturating_sub(self.carry)
            .div_ceil(self.rate as u128);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn refill(&mut self, now: Instant) {
        let Some(dt) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        if self.is_unlimited() {
            return;
        }
        let earned = dt.as_nanos() * self.rate as u128 + self.carry;
        let whole = earned / 1_000_000_000;
        self.carry = earned % 1_000_000_000;
        let room = (self.burst - self.tokens) as u128;
        if whole >= room {
            self.tokens = self.burst;
            self.carry = 0;
        } else {
            self.tokens += whole as u64;
        }
    }
}

/// A quarter second's worth, at least [`MIN_BURST`].
fn burst_for(rate: u64) -> u64 {
    (rate / 4).max(MIN_BURST)
}

/// Which way bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes this client sends to downloaders (serving connections' writes).
    Up,
    /// Bytes this client receives from seeders (fetch connections' reads).
    Down,
}

/// The smallest and largest quota one connection gets at a time.
const MIN_CHUNK: u64 = 16 * 1024;
const MAX_CHUNK: u64 = 256 * 1024;

/// The upload and download buckets of one client, shared by all its peers.
#[derive(Debug, Clone)]
pub struct RateGate {
    up: TokenBucket,
    down: TokenBucket,
}

impl RateGate {
    /// Limits in bytes per second (0 = unlimited).
    pub fn new(up: u64, down: u64, now: Instant) -> RateGate {
        RateGate {
            up: TokenBucket::new(up, now),
            down: TokenBucket::new(down, now),
        }
    }

    fn bucket(&mut self, dir: Direction) -> &mut TokenBucket {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    /// The limit of `dir` (0 = unlimited).
    pub fn limit(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Up => self.up.rate(),
            Direction::Down => self.down.rate(),
        }
    }

    /// Whether `dir` is limited (connections moving bytes that way are metered).
    pub fn is_limited(&self, dir: Direction) -> bool {
        self.limit(dir) != 0
    }

    /// Changes the limit of `dir` from `now` on.
    pub fn set_limit(&mut self, dir: Direction, rate: u64, now: Instant) {
        self.bucket(dir).set_rate(rate, now);
    }

    /// The most one connection is granted at a time: a hundredth of a second's
    /// worth within [16 KiB, 256 KiB], so the connections waiting on a bucket
    /// share it in turns and no one drains a whole burst.
    pub fn chunk(&self, dir: Direction) -> u64 {
        (self.limit(dir) / 100).clamp(MIN_CHUNK, MAX_CHUNK)
    }

    /// The quota for one connection's I/O now: `None` when `dir` is unlimited,
    /// else what the bucket holds, at most one chunk (maybe 0).
    pub fn grant(&mut self, dir: Direction, now: Instant) -> Option<u64> {
        if !self.is_limited(dir) {
            return None;
        }
        let chunk = self.chunk(dir);
        Some(self.bucket(dir).available(now).min(chunk))
    }

    /// Records `used` bytes of a grant as moved.
    pub fn spend(&mut self, dir: Direction, used: u64, now: Instant) {
        self.bucket(dir).consume(used, now);
    }

    /// Whether a held connection may be resumed now (a whole chunk is there).
    pub fn ready(&mut self, dir: Direction, now: Instant) -> bool {
        let chunk = self.chunk(dir);
        self.bucket(dir).wait_for(chunk, now).is_zero()
    }

    /// How long until a held connection of `dir` may be resumed (the loop's
    /// poll timeout while one is held).
    pub fn wait(&mut self, dir: Direction, now: Instant) -> Duration {
        let chunk = self.chunk(dir);
        self.bucket(dir).wait_for(chunk, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;

    #[test]
    fn rates_parse_in_powers_of_1024() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("500K"), Ok(500 * K));
        assert_eq!(parse_rate("500k"), Ok(500 * K));
        assert_eq!(parse_rate("40M"), Ok(40 * M));
        assert_eq!(parse_rate("1G"), Ok(1024 * M));
        for bad in [
            "",
            "K",
            "-1",
            "1.5M",
            "10X",
            "1 M",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_rate("10X").unwrap_err().to_string().contains("500K"));
    }

    #[test]
    fn limits_format_back_to_the_same_rate() {
        assert_eq!(format_limit(0), "unlimited");
        assert_eq!(format_limit(500 * K), "500K");
        assert_eq!(format_limit(40 * M), "40M");
        assert_eq!(format_limit(1024 * M), "1G");
        assert_eq!(format_limit(1000), "1000");
        for r in [1, 1000, 1536, 500 * K, 40 * M, 3 * 1024 * M] {
            assert_eq!(parse_rate(&format_limit(r)), Ok(r));
        }
    }

    #[test]
    fn a_bucket_holds_its_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(M, t0);
        // The burst (a quarter second) is there at once, then nothing.
        assert_eq!(b.take(10 * M, t0), M / 4);
        assert_eq!(b.take(1, t0), 0);
        // Over 10 simulated seconds in 1 ms steps, about 10 MiB more moves.
        let mut moved = 0;
        let mut now = t0;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            moved += b.take(64 * K, now);
        }
        assert!(moved.abs_diff(10 * M) <= 2, "{moved}");
        // Idle time saves up no more than the burst.
        now += Duration::from_secs(60);
        assert_eq!(b.available(now), M / 4);
    }

    #[test]
    fn wait_says_when_bytes_are_due() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100 * K, t0);
        assert_eq!(b.wait_for(K, t0), Duration::ZERO);
        b.take(u64::MAX, t0);
        let w = b.wait_for(20 * K, t0);
        assert_eq!(w, Duration::from_millis(200));
        assert!(b.available(t0 + w - Duration::from_millis(10)) < 20 * K);
        assert!(b.available(t0 + w) >= 20 * K);
        // More than the burst is never waited for beyond the burst.
        assert!(b.wait_for(u64::MAX, t0 + w) <= Duration::from_secs(1));
    }

    #[test]
    fn the_gate_grants_chunks_and_says_when_to_come_back() {
        let t0 = Instant::now();
        let mut g = RateGate::new(M, 0, t0);
        assert_eq!(g.grant(Direction::Down, t0), None, "download unlimited");
        assert!(g.ready(Direction::Down, t0));
        let chunk = g.chunk(Direction::Up);
        assert_eq!(chunk, MIN_CHUNK, "1 MiB/s: the 16 KiB floor");
        // Grants never exceed a chunk; the burst (M / 4) drains in chunks.
        let mut moved = 0;
        while let Some(q) = g.grant(Direction::Up, t0).filter(|q| *q > 0) {
            assert!(q <= chunk);
            g.spend(Direction::Up, q, t0);
            moved += q;
        }
        assert_eq!(moved, M / 4);
        assert!(!g.ready(Direction::Up, t0));
        let w = g.wait(Direction::Up, t0);
        assert_eq!(w, Duration::from_nanos((chunk * 1_000_000_000).div_ceil(M)));
        assert!(g.ready(Direction::Up, t0 + w));
        assert_eq!(g.grant(Direction::Up, t0 + w), Some(chunk));
        // A live change: 40M gets bigger chunks, 0 lifts the limit.
        g.set_limit(Direction::Up, 40 * M, t0 + w);
        assert_eq!(g.chunk(Direction::Up), MAX_CHUNK.min(40 * M / 100));
        g.set_limit(Direction::Up, 0, t0 + w);
        assert!(!g.is_limited(Direction::Up));
        assert_eq!(g.grant(Direction::Up, t0 + w), None);
    }

    #[test]
    fn unlimited_and_live_changes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert!(b.is_unlimited());
        assert_eq!(b.take(u64::MAX, t0), u64::MAX);
        assert_eq!(b.wait_for(u64::MAX, t0), Duration::ZERO);
        b.set_rate(64 * K, t0);
        assert_eq!(b.rate(), 64 * K);
        assert_eq!(
            b.take(u64::MAX, t0),
            MIN_BURST,
            "a small rate still has the minimum burst"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.available(t1), MIN_BURST, "capped at the burst");
        b.set_rate(0, t1);
        assert_eq!(b.available(t1), u64::MAX);
        // A clock that goes backwards changes nothing.
        let mut b = TokenBucket::new(K * K, t1);
        b.take(u64::MAX, t1);
        assert_eq!(b.available(t0), 0);
    }
}
