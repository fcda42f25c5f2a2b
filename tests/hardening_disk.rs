//! Disk faults under a running tracker: its data dir fills up, or turns read-only,
//! in the middle of serving writes. Mutations then get `ERR` (never a success
//! reply for a change that is not durable in `sync_log.txt`), reads keep working,
//! and once space returns the tracker carries on without a restart; a restart
//! afterwards shows exactly the acknowledged changes.
//!
//! The mounts need root; CI runs as root, and as root every fault is injected
//! for real or the test fails saying which command failed:
//! - full disk: a 2 MiB tmpfs mounted as the data dir and filled with a filler
//!   file until ENOSPC. Not root, the test caps the tracker's file size with
//!   `prlimit` instead (RLIMIT_FSIZE, EFBIG: the same as a full disk for the log)
//!   and says so on stderr.
//! - read-only: Linux refuses `mount -o remount,ro` while the tracker holds files
//!   open for writing (EBUSY), so the data dir is a small ext4 image on a loop
//!   device and is made read-only under the tracker with `mount -o remount,abort`
//!   (ext4's forced read-only: every write then fails with EROFS). An aborted ext4
//!   cannot be remounted read-write while files are open, so recovery here is:
//!   stop the tracker, remount, start it. Not root, this test cannot run: it
//!   prints `SKIPPED` on stderr and passes, except under `CI`, where it fails.
//! - the cache behind the log: `prlimit` between the log's size and the SQLite
//!   WAL's (no root needed); the test fails if the fault did not hit the cache.
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

/// Whether the mounts can be tried: root, and `SWARMSHARE_NO_MOUNT` unset.
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::env::var_os("SWARMSHARE_NO_MOUNT").is_none()
}

/// Runs a command; its stderr if it fails.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{cmd} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A mount on `dir`, unmounted (retrying, then lazily) when dropped.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "2m") on `dir`; as root a failure panics.
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let opts = format!("size={size}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("root, but cannot mount a tmpfs: {e}"));
        Mount {
            dir: dir.to_path_buf(),
        }
    }

    /// Makes an ext4 image of `mib` MiB at `image` and loop-mounts it on `dir`;
    /// as root a failure panics.
    fn ext4(image: &Path, dir: &Path, mib: u64) -> Mount {
        let f = std::fs::File::create(image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        let image = image.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", image])
            .and_then(|()| run("mount", &["-o", "loop", image, dir.to_str().unwrap()]))
            .unwrap_or_else(|e| panic!("root, but cannot loop-mount an ext4 image: {e}"));
        Mount {
            dir: dir.to_path_buf(),
        }
    }

    fn remount(&self, opts: &str) -> Result<(), String> {
        run(
            "mount",
            &["-o", &format!("remount,{opts}"), self.dir.to_str().unwrap()],
        )
    }

    fn umount(&self) -> Result<(), String> {
        run("umount", &[self.dir.to_str().unwrap()])
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if self.umount().is_ok() {
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
    let mount = can_mount().then(|| Mount::tmpfs(&data, "2m"));
    eprintln!(
        "full-disk fault: {}",
        if mount.is_some() {
            "2 MiB tmpfs filled to ENOSPC"
        } else {
            "not root (or SWARMSHARE_NO_MOUNT): prlimit RLIMIT_FSIZE instead of a tmpfs"
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
    if !can_mount() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the read-only fault as root (mount, mkfs.ext4, loop devices)"
        );
        eprintln!(
            "SKIPPED hardening_disk::a_data_dir_turned_read_only_refuses_mutations_and_serves_reads: \
             needs root to loop-mount an ext4 image (not root, or SWARMSHARE_NO_MOUNT set)"
        );
        return;
    }
    let mount = Mount::ext4(&image, &data, 16);
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
    mount.remount("abort").unwrap();
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
    mount.umount().unwrap();
    run(
        "mount",
        &[
            "-o",
            "loop",
            image.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    )
    .unwrap();
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
/// Injected by capping the tracker's file size (prlimit RLIMIT_FSIZE, which
/// refuses any write past that offset) just above the log's size: the log can take
/// a line, and no WAL frame fits (a commit's first frame ends past byte
/// `32 + 24 + 4096` even when the WAL starts over after a checkpoint).
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
    let cap = std::fs::metadata(&log).unwrap().len() + 1024;
    // A WAL frame is its 24-byte header and a page (4096 bytes by default).
    const FIRST_FRAME_END: u64 = 32 + 24 + 4096;
    assert!(
        cap < FIRST_FRAME_END,
        "cannot inject the fault: a cap of {cap} bytes for the log lets a WAL frame through"
    );
    set_file_size_limit(t.pid(), cap);

    // The change is durable in the log, so it is acknowledged...
    c.ok(Some(&tok), "create_group", &["during"]);
    expected.insert("during".to_string());
    assert!(logged_groups(&log).contains("during"));
    // ...but the cache cannot commit it, so reads are refused, never stale.
    let mut refused = 0;
    for _ in 0..5 {
        match c.request(Some(&tok), "list_groups", &[]) {
            Reply::Ok { rows, .. } => {
                let seen: BTreeSet<String> = rows.into_iter().map(|r| r[0].clone()).collect();
                assert_eq!(seen, expected, "a stale read");
            }
            Reply::Err(e) => {
                assert!(e.contains("behind"), "{e}");
                refused += 1;
            }
        }
        // Time for the tracker's watcher to try (and fail) to catch up.
        thread::sleep(Duration::from_millis(60));
    }
    assert!(
        refused > 0,
        "the fault never reached the cache (every read answered); stderr:\n{}",
        t.stderr.text()
    );
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
