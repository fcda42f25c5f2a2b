//! Disk side of transfers: piece reads/writes at offsets, the temporary file and
//! its rename into place, the in-order whole-file hash, and resume state.
//!
//! A download writes verified pieces at their offsets into `<dest>.swarmshare-part`
//! (same directory as the destination, so the final rename is atomic), then fsyncs
//! and renames it into place once the whole-file SHA-1 matches. The whole-file
//! hash is computed as the verified prefix grows ([`WholeHash`]), so completing a
//! download never re-reads the whole file.
//!
//! Resume state lives in `<state-dir>/downloads/<file-sha1>.resume`: the line
//! `swarmshare-resume 2` and then the postcard encoding of
//! `(file_sha1: [u8; 20], group, name, dest: path bytes, size: u64, bitfield bytes)`
//! (postcard: small, no hand-written parser, and every field's shape declared
//! once; the first line tells the format and its version at a glance). A file
//! of another version, or one that does not decode to exactly that, is ignored.
//!
//! It is written atomically (temp + rename). On resume the pieces it lists are
//! re-verified against their hashes before they are trusted, so a stale or
//! optimistic state file can never produce a corrupt download.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use wire::file_meta::to_hex;

/// The temporary name of a download in progress.
pub fn temp_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".swarmshare-part");
    PathBuf::from(s)
}

/// Opens (or creates) the temporary file of a download and sizes it. A new one
/// is created exclusively (0600, never through a symlink); an existing one (a
/// resume: the name must be found again) is reopened only when it is a regular
/// file of ours with one link ([`crate::private_file::open_own`]).
pub fn open_part(dest: &Path, size: u64) -> io::Result<File> {
    let path = temp_path(dest);
    let f = match crate::private_file::open_new(&path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => crate::private_file::open_own(&path)?,
        other => other?,
    };
    let len = f.metadata()?.len();
    if len != size {
        if len < size {
            // Reserve the blocks now: no surprise "disk full" halfway, and writes
            // into allocated blocks are much cheaper than delayed allocation.
            preallocate(&f, size)?;
        }
        f.set_len(size)?;
    }
    Ok(f)
}

/// Allocates disk blocks for the first `size` bytes (Linux `fallocate`); where that
/// is not supported, nothing happens and the file grows sparsely.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        if size == 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on a valid open descriptor; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {}
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, size);
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

/// Asks the kernel to start writing a range back to disk without waiting
/// (Linux `sync_file_range`); elsewhere a no-op. Keeps the final fsync short.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: plain syscall on a valid open descriptor; no memory is passed.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

/// fsyncs the temporary file and moves it to `dest` (then fsyncs the directory).
/// A file that appeared at `dest` while the download ran is never replaced: the
/// move is a hard link (which fails if `dest` exists) plus unlinking the temporary
/// name, or a rename where the file system has no hard links. Returns how long
/// the file's fsync took (logged: the 1->1 run-to-run spread, issue 14).
pub fn finish(file: &File, dest: &Path) -> io::Result<std::time::Duration> {
    let mode = crate::private_file::ordinary_file_mode();
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    let t0 = std::time::Instant::now();
    file.sync_all()?;
    let fsync = t0.elapsed();
    let temp = temp_path(dest);
    let exists = || {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; the download stays in {}",
                dest.display(),
                temp.display()
            ),
        )
    };
    match fs::hard_link(&temp, dest) {
        Ok(()) => fs::remove_file(&temp)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
        Err(_) if dest.symlink_metadata().is_ok() => return Err(exists()),
        Err(_) => fs::rename(&temp, dest)?,
    }
    if let Some(dir) = dest.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(fsync)
}

/// The whole-file SHA-1 over the verified prefix: pieces are fed strictly in order.
#[derive(Clone)]
pub struct WholeHash {
    state: Sha1,
    /// The next piece index to feed.
    pub next: usize,
}

impl Default for WholeHash {
    fn default() -> Self {
        WholeHash::new()
    }
}

impl WholeHash {
    pub fn new() -> WholeHash {
        WholeHash {
            state: Sha1::new(),
            next: 0,
        }
    }

    /// Feeds piece `self.next`.
    pub fn feed(&mut self, data: &[u8]) {
        self.state.update(data);
        self.next += 1;
    }

    /// Feeds piece `self.next` by reading it from `file` in chunks (no extra allocation
    /// beyond `scratch`).
    pub fn feed_from_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        scratch.resize(len as usize, 0);
        read_at(file, &mut scratch[..len as usize], offset)?;
        self.feed(&scratch[..len as usize]);
        Ok(())
    }

    pub fn finalize(self) -> [u8; 20] {
        self.state.finalize().into()
    }
}

const RESUME_VERSION: &[u8] = b"swarmshare-resume 2\n";

/// What a restarted client needs to continue a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    pub file_sha1: [u8; 20],
    pub group: String,
    pub name: String,
    pub dest: PathBuf,
    pub size: u64,
    /// Verified pieces, one bit each, MSB first (a `wire::pieces::Bitfield`'s
    /// bytes; checked against the piece count when a download resumes).
    pub bits: Vec<u8>,
}

/// The encoded form: the destination as its raw bytes, so any path round-trips.
#[derive(Serialize, Deserialize)]
struct ResumeRecord {
    file_sha1: [u8; 20],
    group: String,
    name: String,
    dest: Vec<u8>,
    size: u64,
    bits: Vec<u8>,
}

fn resume_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("downloads")
}

/// Where the resume state of a file lives.
pub fn resume_path(state_dir: &Path, file_sha1: &[u8; 20]) -> PathBuf {
    resume_dir(state_dir).join(format!("{}.resume", to_hex(file_sha1)))
}

/// Writes `data` to `path` atomically (a private temp file under a random name
/// in the same directory + rename; see [`crate::private_file`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        crate::private_file::private_dir(dir)?;
    }
    crate::private_file::write_atomic(path, data)
}

impl ResumeState {
    pub fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let record = ResumeRecord {
            file_sha1: self.file_sha1,
            group: self.group.clone(),
            name: self.name.clone(),
            dest: self.dest.as_os_str().as_bytes().to_vec(),
            size: self.size,
            bits: self.bits.clone(),
        };
        // Plain strings, bytes and integers into a Vec: serializing cannot fail.
        postcard::to_extend(&record, RESUME_VERSION.to_vec()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<ResumeState> {
        use std::os::unix::ffi::OsStrExt;
        let body = bytes.strip_prefix(RESUME_VERSION)?;
        let (r, rest) = postcard::take_from_bytes::<ResumeRecord>(body).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Some(ResumeState {
            file_sha1: r.file_sha1,
            group: r.group,
            name: r.name,
            dest: PathBuf::from(std::ffi::OsStr::from_bytes(&r.dest)),
            size: r.size,
            bits: r.bits,
        })
    }

    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        write_atomic(&resume_path(state_dir, &self.file_sha1), &self.encode())
    }

    pub fn load(state_dir: &Path, file_sha1: &[u8; 20]) -> Option<ResumeState> {
        let bytes = fs::read(resume_path(state_dir, file_sha1)).ok()?;
        ResumeState::decode(&bytes).filter(|s| s.file_sha1 == *file_sha1)
    }

    pub fn remove(state_dir: &Path, file_sha1: &[u8; 20]) {
        let _ = fs::remove_file(resume_path(state_dir, file_sha1));
    }

    /// Every resume state in the state dir (downloads a restarted client may continue).
    pub fn all(state_dir: &Path) -> Vec<ResumeState> {
        let Ok(rd) = fs::read_dir(resume_dir(state_dir)) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "resume"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| ResumeState::decode(&b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_never_replaces_a_file_that_appeared_at_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        std::fs::write(temp_path(&dest), b"downloaded").unwrap();
        std::fs::write(&dest, b"someone else's").unwrap();
        let part = File::open(temp_path(&dest)).unwrap();
        let err = finish(&part, &dest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's");
        assert_eq!(std::fs::read(temp_path(&dest)).unwrap(), b"downloaded");
        std::fs::remove_file(&dest).unwrap();
        finish(&part, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"downloaded");
        assert!(!temp_path(&dest).exists());
        // The finished file is an ordinary one (umask), not the part's 0600.
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, crate::private_file::ordinary_file_mode());
    }

    #[test]
    fn write_read_finish() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out file");
        let f = open_part(&dest, 10).unwrap();
        write_at(&f, b"world", 5).unwrap();
        write_at(&f, b"hello", 0).unwrap();
        let mut buf = [0u8; 4];
        read_at(&f, &mut buf, 3).unwrap();
        assert_eq!(&buf, b"lowo");
        assert!(read_at(&f, &mut buf, 8).is_err());
        assert!(temp_path(&dest).exists());
        finish(&f, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"helloworld");
        assert!(!temp_path(&dest).exists());
    }

    #[test]
    fn reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let f = open_part(&dest, 6).unwrap();
        write_at(&f, b"abc", 3).unwrap();
        drop(f);
        let f = open_part(&dest, 6).unwrap();
        let mut buf = [0u8; 3];
        read_at(&f, &mut buf, 3).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn whole_hash_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let f = open_part(&dest, 8).unwrap();
        write_at(&f, b"abcdefgh", 0).unwrap();
        let mut h = WholeHash::new();
        h.feed(b"abcd");
        let mut scratch = Vec::new();
        h.feed_from_file(&f, 4, 4, &mut scratch).unwrap();
        assert_eq!(h.next, 2);
        assert_eq!(h.finalize(), crate::hasher::sha1(b"abcdefgh"));
    }

    #[test]
    fn resume_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = ResumeState {
            file_sha1: [0xab; 20],
            group: "g 1".into(),
            name: "a\nb".into(),
            dest: PathBuf::from("/tmp/some dir/f"),
            size: 12345,
            bits: vec![0x80, 0x01],
        };
        s.save(dir.path()).unwrap();
        assert_eq!(ResumeState::load(dir.path(), &[0xab; 20]), Some(s.clone()));
        assert_eq!(ResumeState::load(dir.path(), &[0xac; 20]), None);
        assert_eq!(ResumeState::all(dir.path()), vec![s.clone()]);
        ResumeState::remove(dir.path(), &[0xab; 20]);
        assert_eq!(ResumeState::load(dir.path(), &[0xab; 20]), None);
        assert_eq!(ResumeState::decode(b"garbage"), None);
        assert_eq!(ResumeState::decode(b"swarmshare-resume 1\nzz\n"), None);
        // Every truncation and a trailing byte are refused, never misread.
        let bytes = s.encode();
        assert!(bytes.starts_with(b"swarmshare-resume 2\n"));
        assert_eq!(ResumeState::decode(&bytes), Some(s.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(ResumeState::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ResumeState::decode(&longer), None);
        // A destination that is not UTF-8 round-trips exactly.
        use std::os::unix::ffi::OsStrExt;
        let odd = ResumeState {
            dest: PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe")),
            ..s
        };
        assert_eq!(ResumeState::decode(&odd.encode()), Some(odd));
    }
}
