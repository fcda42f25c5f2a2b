//! A long-running tracker's history, written quickly for the examples: 1,000
//! users created and logged in, then one `create_group` in ten and nine seeder
//! heartbeats, each with a request id (much history, far less state).

use std::path::Path;

use tracker::store::Store;
use tracker::sync_log::{FsyncMode, LogEntry, Op, SyncLog};

fn entry(i: u64) -> LogEntry {
    let user = format!("user{}", i % 1000);
    let token_hash = format!("{:064x}", i % 1000);
    let op = match i {
        0..1000 => Op::CreateUser {
            user,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        },
        1000..2000 => Op::Login { token_hash, user },
        _ if i.is_multiple_of(10) => Op::CreateGroup {
            group: format!("group {i}"),
            owner: user,
        },
        _ => Op::Heartbeat {
            token_hash,
            peer_addr: "127.0.0.1:7000".into(),
        },
    };
    LogEntry {
        ms: 1_764_000_000_000 + i,
        tracker: 1,
        request_id: Some(format!("client{} {}", i % 1000, i)),
        op,
    }
}

/// Writes `n` entries to a new data dir (log + tracker1.db) through the real
/// log and the one apply path, in group commits of 10,000 lines.
pub fn generate(dir: &Path, n: u64) {
    let mut log = SyncLog::open(dir, FsyncMode::Batch).unwrap();
    let mut store = Store::open(&dir.join("tracker1.db")).unwrap();
    store.set_generation(log.generation()).unwrap();
    let mut i = 0;
    while i < n {
        let to = (i + 10_000).min(n);
        let lines: Vec<String> = (i..to).map(|k| entry(k).encode(k + 1)).collect();
        let _lock = log.lock_current(true).unwrap();
        log.append(&lines).unwrap();
        tracker::server::catch_up(&log, &mut store).unwrap();
        i = to;
    }
}
