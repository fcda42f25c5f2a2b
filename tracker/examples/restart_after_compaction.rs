//! Restart time of the real `tracker` binary against the length of its history,
//! before and after log compaction (issue 13, item 5).
//!
//! For each history length it writes a data dir through the real [`SyncLog`]
//! and [`Store`] (group commits of 10,000 lines, applied through the one apply
//! path): 1,000 users created and logged in, then one `create_group` in ten and
//! nine seeder heartbeats (a long-running tracker's history: much history, far
//! less state). Then it starts `tracker` (from the same target dir; build it
//! with `--bins`) and times spawn -> "listening on", in four cases:
//!
//! 1. the cache intact, the log never compacted (start-up checks every line
//!    the cache applied: a checksum pass over the whole log);
//! 2. the cache deleted, the log never compacted (a full replay);
//! 3. after [`snapshot::compact`]: the cache intact (only the tail is checked);
//! 4. after compaction, the cache deleted (`snapshot.db` loaded + the tail).
//!
//! ```text
//! cargo build --release -p tracker --bins --examples
//! target/release/examples/restart_after_compaction [LINES...]   # default 100000 1000000
//! ```
//! The data dir goes to a temp dir under `$TMPDIR` and is deleted afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracker::snapshot::{self, Step};
use tracker::store::Store;
use tracker::sync_log::{FsyncMode, SyncLog};

#[path = "common/history.rs"]
mod history;
#[path = "common/tracker_proc.rs"]
mod tracker_proc;
use history::generate;

/// Starts the tracker on `data`, returns the time to "listening on", stops it.
fn restart(bin: &Path, data: &Path) -> Duration {
    let started = Instant::now();
    let (mut child, _) = tracker_proc::start(bin, data, 0);
    let took = started.elapsed();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"quit\n");
    drop(stdin);
    let _ = child.wait();
    took
}

fn remove_cache(data: &Path) {
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("tracker1.db{s}")));
    }
}

fn size(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / 1e6
}

fn main() {
    let bin: PathBuf = tracker_proc::binary_beside_this_example();
    let mut ns: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if ns.is_empty() {
        ns = vec![100_000, 1_000_000];
    }
    for n in ns {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let t = Instant::now();
        generate(data, n);
        let log_path = data.join("sync_log.txt");
        println!(
            "{n} changes: generated in {:.1} s, sync_log.txt {:.1} MB, tracker1.db {:.1} MB",
            t.elapsed().as_secs_f64(),
            size(&log_path),
            size(&data.join("tracker1.db"))
        );
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  1. cache intact, not compacted: {:.0} ms",
            ms(restart(&bin, data))
        );
        let db = data.join("tracker1.db");
        remove_cache(data);
        // (The tracker rebuilds the cache: the cases below go on with it.)
        println!(
            "  2. cache deleted, not compacted: {:.0} ms",
            ms(restart(&bin, data))
        );
        let mut log = SyncLog::open(data, FsyncMode::Batch).unwrap();
        let mut store = Store::open(&db).unwrap();
        let t = Instant::now();
        let base = snapshot::compact(&mut log, &mut store, 1, Step::Done).unwrap();
        println!(
            "  compaction after entry {}: {:.0} ms; snapshot.db {:.1} MB, sync_log.txt now {:.3} MB",
            base.map_or(0, |b| b.lines),
            ms(t.elapsed()),
            size(&snapshot::path(data)),
            size(&log_path)
        );
        drop((log, store));
        println!(
            "  3. cache intact, compacted: {:.0} ms",
            ms(restart(&bin, data))
        );
        remove_cache(data);
        println!(
            "  4. cache deleted, compacted: {:.0} ms",
            ms(restart(&bin, data))
        );
    }
}
