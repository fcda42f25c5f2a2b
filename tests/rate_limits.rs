//! End-to-end checks of the bandwidth limits (`--upload-limit`,
//! `--download-limit`, `rate_limit`) between real clients.
//!
//! Each limit is checked from below: a token bucket lets at most one burst
//! (a quarter second's worth, see `client::limits`) plus `limit` bytes per
//! second through, so a download of `size` bytes through a limited side
//! cannot finish in less than `(size - burst) / limit`. That bound is what a
//! working limiter guarantees on any machine, loaded or not; how fast it runs
//! otherwise is a benchmark (bench/run.sh), never asserted here.

use std::time::{Duration, Instant};

use harness::transfer::*;
use harness::{assert_same_file, wait_until, ClientProc};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;
/// Generous: the slowest download here needs about 12 s at its limit.
const DONE_WITHIN: Duration = Duration::from_secs(120);

/// The burst a bucket of `rate` allows (a quarter second, at least 16 KiB).
fn burst(rate: u64) -> u64 {
    (rate / 4).max(16 * K)
}

/// The least time `bytes` take through a bucket of `rate` that starts full.
fn least_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes.saturating_sub(burst(rate)) as f64 / rate as f64)
}

/// The `[D]` lines' rate field in bytes per second (`1.0 MB/s` = 1e6).
fn shown_rate(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| w.ends_with("B/s"))?;
    let n: f64 = words.get(i.checked_sub(1)?)?.parse().ok()?;
    let unit = match words[i] {
        "B/s" => 1.0,
        "KB/s" => 1e3,
        "MB/s" => 1e6,
        "GB/s" => 1e9,
        _ => return None,
    };
    Some(n * unit)
}

/// One seeder and one leecher (each with `extra` flags) and a shared file of `size`.
fn pair(
    s: &mut Swarm,
    size: u64,
    seeder_flags: &[&str],
    leecher_flags: &[&str],
) -> (ClientProc, ClientProc) {
    let (src, _) = s.random_file("f.bin", size, 7);
    let mut seeder = s.member("seeder", seeder_flags);
    upload(&mut seeder, &src);
    let leecher = s.member("leecher", leecher_flags);
    (seeder, leecher)
}

/// Downloads `f.bin`, returns the time from the command to seeing it complete
/// (never shorter than the transfer itself) and the `[D]` lines seen.
fn timed_download(s: &Swarm, leecher: &mut ClientProc) -> (Duration, Vec<String>) {
    let out = s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let t0 = Instant::now();
    download(leecher, "f.bin", &out);
    let seen = wait_complete(leecher, "f.bin", DONE_WITHIN);
    let took = t0.elapsed();
    assert_same_file(&s.path("f.bin"), &out.join("f.bin"));
    (took, seen)
}

#[test]
fn the_upload_limit_holds() {
    let mut s = Swarm::new();
    let (size, limit) = (4 * M, M);
    let (mut seeder, mut leecher) = pair(&mut s, size, &["--upload-limit", "1M"], &[]);
    assert_eq!(
        seeder.cmd("rate_limit"),
        "rate limits: up 1M, down unlimited"
    );
    let (took, seen) = timed_download(&s, &mut leecher);
    let least = least_time(size, limit);
    assert!(
        took >= least,
        "4 MiB through a 1 MiB/s upload limit in {took:?} (< {least:?})"
    );
    // show_downloads reports a rate near the limit, not the loopback's speed
    // (the rate is of verified pieces over 2 s, so allow a piece's worth over).
    for line in &seen {
        if let Some(r) = shown_rate(line) {
            assert!(r <= 2.0 * limit as f64, "{line}");
        }
    }
}

#[test]
fn the_download_limit_holds() {
    let mut s = Swarm::new();
    let (size, limit) = (4 * M, M);
    let (_seeder, mut leecher) = pair(&mut s, size, &[], &["--download-limit", "1024K"]);
    let (took, _) = timed_download(&s, &mut leecher);
    let least = least_time(size, limit);
    assert!(
        took >= least,
        "4 MiB through a 1 MiB/s download limit in {took:?} (< {least:?})"
    );
}

/// A live change on the seeder slows the running transfer: what moved at the
/// old limit before the change is bounded by the time the change took, so the
/// rest needs at least its share of time at the new one.
#[test]
fn a_live_change_takes_effect_at_once() {
    let mut s = Swarm::new();
    let (size, old, new) = (6 * M, 2 * M, 512 * K);
    let (mut seeder, mut leecher) = pair(&mut s, size, &["--upload-limit", "2M"], &[]);
    let out = s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let t0 = Instant::now();
    download(&mut leecher, "f.bin", &out);
    assert_eq!(
        seeder.cmd("rate_limit up 512K"),
        "rate limits: up 512K, down unlimited"
    );
    let changed = Instant::now();
    wait_complete(&mut leecher, "f.bin", DONE_WITHIN);
    let after = changed.elapsed();
    assert_same_file(&s.path("f.bin"), &out.join("f.bin"));
    let before_change = burst(old) as f64 + old as f64 * changed.duration_since(t0).as_secs_f64();
    let rest = (size as f64 - before_change).max(0.0);
    let least = Duration::from_secs_f64((rest - burst(new) as f64).max(0.0) / new as f64);
    assert!(
        least > Duration::from_secs(2),
        "the change came too late to be measured ({:?} after the start)",
        changed.duration_since(t0)
    );
    assert!(
        after >= least,
        "after the change to 512K the rest took {after:?} (< {least:?})"
    );
    // Lifting the limit, and the download side, are shown the same way.
    assert_eq!(
        seeder.cmd("rate_limit up 0 down 40M"),
        "rate limits: up unlimited, down 40M"
    );
}

#[test]
fn a_bad_rate_is_a_clear_error_and_changes_nothing() {
    let mut s = Swarm::new();
    let mut c = s.client("alice", &["--download-limit", "500K"]);
    assert_eq!(
        c.cmd("rate_limit up 1.5M"),
        "error: bad rate \"1.5M\": expected bytes per second like 500K, 40M or 1G (0 = unlimited)"
    );
    assert_eq!(
        c.cmd("rate_limit up"),
        "error: usage: rate_limit [up RATE] [down RATE]"
    );
    assert_eq!(c.cmd("rate_limit"), "rate limits: up unlimited, down 500K");
    // On the command line: exit status 2 and the same reason.
    let mut bad = ClientProc::start(&s.info, &s.path("bad-state"), &["--upload-limit", "10X"]);
    assert_eq!(bad.wait_exit(Duration::from_secs(10)), Some(2));
    // The stderr reader thread may still be collecting after the exit.
    let said = || bad.stderr.text().contains("bad rate \"10X\"");
    assert!(
        wait_until(Duration::from_secs(5), said),
        "{}",
        bad.stderr.text()
    );
}
