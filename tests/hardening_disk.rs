//! Disk faults under a running tracker: its data dir fills up, or turns read-only,
//! in the middle of serving writes. Mutations then get `ERR` (never a success
//! reply for a change that is not durable in `sync_log.txt`), reads keep working,
//! and once space returns the tracker carries on without a restart; a restart
//! afterwards shows exactly the acknowledged changes.
//!
//! Which fault injection runs depends on privileges (each test says on stderr):
//! - full disk: a 2 MiB tmpfs mounted as the data dir and filled with a filler
//!   file until ENOSPC (needs root); without root, the fallback caps the tracker's
//!   file size with `prlimit` (RLIMIT_FSIZE, EFBIG), the same as a full disk for
//!   the log.
//! - read-only: Linux refuses `mount -o remount,ro` while the tracker holds files
//!   open for writing (EBUSY), so the data dir is a small ext4 image on a loop
//!   device and is made read-only under the tracker with `mount -o remount,abort`
//!   (ext4's forced read-only: every write then fails with EROFS). An aborted ext4
//!   cannot be remounted read-write while files are open, so recovery here is:
//!   stop the tracker, remount, start it. Without root (or loop devices) the test
//!   says so and does nothing.
//!
//! `SWARMSHARE_NO_MOUNT=1` forces the unprivileged paths (for checking them as root).
//!
//! Every mount is undone by a drop guard, after the tracker guard has killed the
//! tracker (guards drop in reverse order).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use harness::{free_port, set_file_size_limit, write_tracker_info, TrackerConn, TrackerProc};
use wire::tracker_msg::Reply;

/// A mount on `dir`, unmounted (retrying, then lazily) when dropped.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn run(args: &[&str]) -> bool {
        Command::new("mount")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Mounts a tmpfs of `size` (e.g. "2m") on `dir`. `SWARMSHARE_NO_MOUNT=1`
    /// pretends mounting failed, to run the unprivileged fallback.
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        if std::env::var_os("SWARMSHARE_NO_MOUNT").is_some() {
            return None;
        }
        let dir_s = dir.to_str().unwrap();
        let opts = format!("size={size}");
        Mount::run(&["-t", "tmpfs", "-o", &opts, "tmpfs", dir_s]).then(|| Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// Makes an ext4 image of `mib` MiB at `image` and loop-mounts it on `dir`.
    fn ext4(image: &Path, dir: &Path, mib: u64) -> Option<Mount> {
        if std::env::var_os("SWARMSHARE_NO_MOUNT").is_some() {
            return None;
        }
        let f = std::fs::File::create(image).ok()?;
        f.set_len(mib << 20).ok()?;
        drop(f);
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let image_s = image.to_str().unwrap();
        (made && Mount::run(&["-o", "loop", image_s, dir.to_str().unwrap()])).then(|| Mount {
            dir: dir.to_path_buf(),
        })
    }

    fn remount(&self, opts: &str) -> bool {
        Mount::run(&["-o", &format!("remount,{opts}"), self.dir.to_str().unwrap()])
    }

    fn umount(&self) -> bool {
        Command::new("umount")
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if self.umount() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn group_names(c: &mut TrackerConn, tok: &str) -> BTreeSet<String> {
    match c.request(Some(tok), "list_groups", &[]) {
        Reply::Ok { rows, .. } => rows.into_iter().map(|r| r[0].clone()).collect(),
        Reply::Err(e) => panic!("a read failed during the disk fault: {e}"),
    }
}

/// Names of the groups whose `create_group` line is in the log (complete lines only).
fn logged_groups(log: &Path) -> BTreeSet<String> {
    // The tracker's own parser: every line must check out, the log end whole.
    let (_, entries) = harness::tracker_state::read_log(log);
    entries
        .into_iter()
        .filter_map(|e| match e.op {
            tracker::sync_log::Op::CreateGroup { group, .. } => Some(group),
            _ => None,
        })
        .collect()
}

fn assert_clean(t: &mut TrackerProc, data: &Path) {
    t.assert_alive();
    let corrupt: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert!(corrupt.is_empty(), "a torn tail had to be cut: {corrupt:?}");
}

/// Fills the file system holding `path` until a write fails with ENOSPC.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut total = 0u64;
    for size in [64 * 1024, 4096, 512, 1] {
        let buf = vec![0x55u8; size];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
            assert!(total < 64 << 20, "the file system never filled");
        }
    }
    let _ = f.sync_all();
    total
}

#[test]
fn a_full_disk_refuses_mutations_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let mount = Mount::tmpfs(&data, "2m");
    eprintln!(
        "full-disk fault: {}",
        if mount.is_some() {
            "2 MiB tmpfs filled to ENOSPC"
        } else {
            "mount failed (not root?): prlimit RLIMIT_FSIZE fallback"
        }
    );
    let log = data.join("sync_log.txt");
    let filler = data.join("filler");
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    let tok = c.user("a", "pw");
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for i in 0..5 {
        let g = format!("before-{i}");
        c.ok(Some(&tok), "create_group", &[&g]);
        expected.insert(g);
    }

    // The disk fills up.
    match &mount {
        Some(_) => {
            let n = fill(&filler);
            eprintln!("filler holds {n} bytes");
        }
        None => set_file_size_limit(t.pid(), std::fs::metadata(&log).unwrap().len()),
    }

    // Mutations: the log's last page may still have room for a few lines, and
    // those may succeed (they are durable); then every one is refused. Reads work.
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for i in 0..80 {
        let g = format!("full-{i}");
        match c.request(Some(&tok), "create_group", &[&g]) {
            Reply::Ok { .. } => acked.push(g),
            Reply::Err(e) => {
                assert!(
                    e.starts_with("change not made") || e.contains("nothing changed"),
                    "unclear refusal: {e}"
                );
                refused.push(g);
            }
        }
        let seen = group_names(&mut c, &tok);
        for g in &acked {
            assert!(
                seen.contains(g),
                "acknowledged {g} is not visible; tracker stderr:\n{}",
                t.stderr.text()
            );
        }
    }
    eprintln!(
        "while full: {} acknowledged, {} refused",
        acked.len(),
        refused.len()
    );
    assert!(refused.len() >= 40, "a full disk refused only {refused:?}");
    let in_log = logged_groups(&log);
    for g in &acked {
        assert!(in_log.contains(g), "{g} acknowledged but not in the log");
    }
    for g in &refused {
        assert!(!in_log.contains(g), "{g} refused but in the log");
    }
    expected.extend(acked.iter().cloned());
    assert_eq!(group_names(&mut c, &tok), expected);
    let e = c.err(None, "create_user", &["b", "pw"]);
    assert!(e.starts_with("change not made"), "{e}");
    assert_clean(&mut t, &data);

    // Space returns: mutations succeed again at once, no restart.
    match &mount {
        Some(_) => std::fs::remove_file(&filler).unwrap(),
        None => set_file_size_limit(t.pid(), u64::MAX),
    }
    for i in 0..5 {
        let g = format!("after-{i}");
        c.ok(Some(&tok), "create_group", &[&g]);
        expected.insert(g);
    }
    c.ok(None, "create_user", &["c", "pw"]);
    assert_eq!(group_names(&mut c, &tok), expected);
    assert_clean(&mut t, &data);

    // A restart shows exactly the acknowledged state, from the log.
    t.restart();
    let mut c = t.connect();
    assert_eq!(group_names(&mut c, &tok), expected);
    assert_eq!(logged_groups(&log), expected);
    c.login("c", "pw");
    assert_clean(&mut t, &data);
    drop(t);
    drop(mount);
}

#[test]
fn a_data_dir_turned_read_only_refuses_mutations_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let image = dir.path().join("ext4.img");
    let Some(mount) = Mount::ext4(&image, &data, 16) else {
        eprintln!("read-only fault: cannot loop-mount an ext4 image (not root?); skipped");
        return;
    };
    eprintln!("read-only fault: ext4 loop image, remount,abort");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let log = data.join("sync_log.txt");
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    let tok = c.user("a", "pw");
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let g = format!("before-{i}");
        c.ok(Some(&tok), "create_group", &[&g]);
        expected.insert(g);
    }
    let log_len = std::fs::metadata(&log).unwrap().len();

    // The file system turns read-only under the running tracker.
    assert!(mount.remount("abort"), "mount -o remount,abort failed");
    for i in 0..10 {
        let g = format!("ro-{i}");
        let e = c.err(Some(&tok), "create_group", &[&g]);
        assert!(
            e.starts_with("change not made") || e.contains("nothing changed"),
            "unclear refusal: {e}"
        );
        let e = c.err(None, "create_user", &[&format!("u{i}"), "pw"]);
        assert!(e.starts_with("change not made"), "{e}");
        assert_eq!(group_names(&mut c, &tok), expected, "reads must still work");
        assert_eq!(c.ok(Some(&tok), "whoami", &[]).0, vec!["a"]);
    }
    assert_eq!(std::fs::metadata(&log).unwrap().len(), log_len);
    assert!(t.child.try_wait().unwrap().is_none(), "{}", t.stderr.text());
    assert!(!t.stderr.text().contains("panicked"), "{}", t.stderr.text());

    // Recovery: an aborted ext4 must be unmounted to be written again, which
    // needs the tracker's files closed: stop it, remount, start it.
    assert_eq!(t.quit(), 0, "{}", t.stderr.text());
    assert!(mount.umount(), "umount after the tracker stopped");
    assert!(
        Mount::run(&[
            "-o",
            "loop",
            image.to_str().unwrap(),
            data.to_str().unwrap()
        ]),
        "mount again"
    );
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    assert_eq!(
        group_names(&mut c, &tok),
        expected,
        "exactly the acknowledged state"
    );
    c.ok(Some(&tok), "create_group", &["after"]);
    expected.insert("after".to_string());
    assert_eq!(group_names(&mut c, &tok), expected);
    assert_eq!(logged_groups(&log), expected);
    assert_clean(&mut t, &data);
    drop(t);
    drop(mount);
}

/// The window between the two writes of a change: the log takes the line (so the
/// change is durable and acknowledged) but the SQLite cache in the same dir cannot
/// commit it. The tracker must then refuse reads rather than answer without the
/// acknowledged change, and catch up by itself once the cache can be written.
/// Injected by capping the tracker's file size (prlimit RLIMIT_FSIZE) between the
/// log's size and the SQLite WAL's, so the log grows and the WAL cannot.
#[test]
fn an_acknowledged_change_the_cache_cannot_commit_is_never_read_stale() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let mut t = TrackerProc::start(&info, 1, &data);
    let mut c = t.connect();
    let tok = c.user("a", "pw");
    let mut expected = BTreeSet::new();
    for i in 0..4 {
        let g = format!("before-{i}");
        c.ok(Some(&tok), "create_group", &[&g]);
        expected.insert(g);
    }
    let log = data.join("sync_log.txt");
    let wal = data.join("tracker1.db-wal");
    let (log_len, wal_len) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
    );
    if wal_len < log_len + 4096 {
        eprintln!("WAL ({wal_len} bytes) not larger than the log ({log_len}): skipped");
        return;
    }
    set_file_size_limit(t.pid(), wal_len);

    let acked = match c.request(Some(&tok), "create_group", &["during"]) {
        Reply::Ok { .. } => true,
        Reply::Err(e) => {
            assert!(
                e.starts_with("change not made") || e.contains("nothing changed"),
                "{e}"
            );
            false
        }
    };
    eprintln!(
        "the change was {}",
        if acked { "acknowledged" } else { "refused" }
    );
    if acked {
        expected.insert("during".to_string());
        assert!(logged_groups(&log).contains("during"));
    }
    // Every read answered now includes it (or is refused): never a stale answer.
    for _ in 0..5 {
        match c.request(Some(&tok), "list_groups", &[]) {
            Reply::Ok { rows, .. } => {
                let seen: BTreeSet<String> = rows.into_iter().map(|r| r[0].clone()).collect();
                assert_eq!(seen, expected, "a stale read");
            }
            Reply::Err(e) => assert!(e.contains("behind"), "{e}"),
        }
        thread::sleep(Duration::from_millis(60));
    }
    // The cache can be written again: the tracker catches up without a restart
    // and without any new change to trigger it.
    set_file_size_limit(t.pid(), u64::MAX);
    let caught_up = harness::wait_until(Duration::from_secs(5), || {
        matches!(c.request(Some(&tok), "list_groups", &[]), Reply::Ok { .. })
    });
    assert!(
        caught_up,
        "reads stay refused; stderr:\n{}",
        t.stderr.text()
    );
    assert_eq!(group_names(&mut c, &tok), expected);
    c.ok(Some(&tok), "create_group", &["after"]);
    expected.insert("after".to_string());
    t.restart();
    let mut c = t.connect();
    assert_eq!(group_names(&mut c, &tok), expected);
    assert_clean(&mut t, &data);
}
