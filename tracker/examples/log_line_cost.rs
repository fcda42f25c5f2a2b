//! What a sync_log.txt v2 line costs (issue 11: the sequence number that
//! protects the order of the lines): encode and decode time per line, the part
//! of it the sequence number and request id fields take, and durable appends
//! per second through the real [`SyncLog`] (group commit of 64 lines per fsync,
//! as a busy tracker's loop turn, and one fsync per line).
//!
//! ```text
//! cargo run --release -p tracker --example log_line_cost [LINES]
//! ```
//! The log goes to a temp dir under `$TMPDIR` (put it on the disk to measure).

use std::hint::black_box;
use std::time::Instant;

use tracker::sync_log::{FsyncMode, LogEntry, Op, SyncLog};

fn entry(i: u64) -> LogEntry {
    LogEntry {
        ms: 1_764_000_000_000 + i,
        tracker: 1,
        request_id: None,
        op: Op::CreateGroup {
            group: format!("group {i}"),
            owner: "owner 1".into(),
        },
    }
}

fn per_line_ns(n: u64, start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let entries: Vec<LogEntry> = (0..n).map(entry).collect();

    let t = Instant::now();
    let lines: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| e.encode(i as u64 + 1))
        .collect();
    let encode = per_line_ns(n, t);
    let t = Instant::now();
    for l in &lines {
        black_box(LogEntry::decode(l.as_bytes()).ok());
    }
    let decode = per_line_ns(n, t);
    // The sequence number's own share: format and parse one integer, and CRC
    // over the bytes it and the request id field add.
    let t = Instant::now();
    for i in 0..n {
        let s = black_box(i + 1).to_string();
        black_box(s.parse::<u64>().ok());
        black_box(crc32fast::hash(black_box(s.as_bytes())));
    }
    let seq_part = per_line_ns(n, t);
    let bytes: usize = lines.iter().map(String::len).sum();
    let extra: usize = (1..=n).map(|s| s.to_string().len() + 1 + 2).sum();

    println!(
        "{n} create_group lines, {:.1} bytes/line on average",
        bytes as f64 / n as f64
    );
    println!(
        "sequence number + request id fields: {:.1} bytes/line ({:.1}% of the line)",
        extra as f64 / n as f64,
        100.0 * extra as f64 / bytes as f64
    );
    println!("encode {encode:.0} ns/line, decode (checksum, fields, number) {decode:.0} ns/line");
    println!("of which the sequence number: {seq_part:.0} ns/line");

    for (mode, batch, count) in [
        (FsyncMode::Batch, 64usize, n.min(64_000) as usize),
        (FsyncMode::Always, 1, n.min(2_000) as usize),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = SyncLog::open(dir.path(), mode).expect("open log");
        let t = Instant::now();
        for chunk in lines[..count].chunks(batch) {
            let _lock = log.lock_exclusive().expect("lock");
            log.append(chunk).expect("append");
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "durable appends, {mode:?} ({batch} line(s) per fsync): {:.0} lines/s",
            count as f64 / secs
        );
    }
}
