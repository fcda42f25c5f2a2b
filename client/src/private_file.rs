//! Private files and directories of this client's user: a file created
//! exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) under a random name, so
//! no one who can write to the directory can make us write through a symlink or
//! into a file they prepared; an atomic replace built on it; and directories
//! made 0700.
//!
//! Everything that writes a temporary file (`write_atomic`, the download part
//! files, the pinned tracker keys) goes through here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Attempts at a fresh random name before giving up (a collision of 64 random
/// bits means someone is guessing, not bad luck).
const NAME_TRIES: usize = 8;

/// Creates a new file `<dir>/.<stem>.<16 random hex>.tmp`, exclusively, without
/// following a symlink, mode 0600. Returns it open for reading and writing, with
/// its path.
pub fn create_exclusive(dir: &Path, stem: &str) -> io::Result<(File, PathBuf)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..NAME_TRIES {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!(".{stem}.{:016x}.tmp", u64::from_le_bytes(r)));
        match open_new(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Creates exactly `path`, exclusively, without following a symlink, mode 0600.
pub fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens an existing `path` for reading and writing only if it is a regular
/// file of ours with one link, never through a symlink: what a resumed download
/// reopens, which a local attacker might otherwise have prepared.
pub fn open_own(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.file_type().is_file() || m.uid() != me || m.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private file of this user; not using it",
                path.display()
            ),
        ));
    }
    Ok(f)
}

/// Replaces `path` with `data` atomically: a private temp file in the same
/// directory, written, synced and renamed over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let (mut f, tmp) = create_exclusive(dir, &stem)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    let renamed = written.and_then(|()| fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed
}

/// Creates `dir` (and its parents) and makes it 0700 when it is ours.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let m = fs::metadata(dir)?;
    // SAFETY: as above.
    if m.uid() == unsafe { libc::geteuid() } && m.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_files_are_private_random_and_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let (_, a) = create_exclusive(dir.path(), "x").unwrap();
        let (_, b) = create_exclusive(dir.path(), "x").unwrap();
        assert_ne!(a, b, "random names");
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symlink planted at the exact name is never followed nor replaced.
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_new(&link).is_err());
        assert!(open_own(&link).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        // A hard link to someone's file (two links) is refused on reopen.
        let hard = dir.path().join("hard");
        fs::hard_link(&target, &hard).unwrap();
        assert!(open_own(&hard).is_err());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reg");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        private_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
