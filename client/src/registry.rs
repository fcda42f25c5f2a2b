//! `.uploads_registry`: what this client shares, so that after a login (or a
//! failover) it can re-announce every file whose content is unchanged.
//!
//! Format (text, in the state dir; written atomically with temp + rename):
//!
//! ```text
//! swarmshare-uploads 2
//! <group> <name> <path> <size> <mtime_ns> <inode> <ctime_ns> <file_sha1_hex>
//! ...
//! ```
//!
//! Version 1 (no inode and ctime) is still read; such entries are checked by
//! size and mtime until they are written again.
//!
//! Fields are escaped as in the tracker protocol (spaces and newlines survive).
//! The piece hashes of each file live in a sidecar `pieces/<file_sha1_hex>` in the
//! state dir: a line `swarmshare-pieces 1 <size> <piece_size>` followed by the raw
//! 20-byte hashes.
//!
//! [`UploadRegistry::check`] decides per entry: unchanged (size, mtime, inode
//! and ctime as recorded, sidecar readable), changed, or vanished. The inode
//! and ctime catch what size and mtime miss: a file replaced by another one, or
//! an edit that kept the size and set the mtime back (`touch -r`).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use wire::file_meta::{hash_from_hex, to_hex, FileMeta};
use wire::tracker_msg::{decode_fields, encode_fields, MAX_REQUEST_LINE};

use crate::storage::write_atomic;

const REGISTRY_VERSION: &str = "swarmshare-uploads 2";
/// The version before inode and ctime were recorded (read, never written).
const REGISTRY_VERSION_1: &str = "swarmshare-uploads 1";
const PIECES_VERSION: &str = "swarmshare-pieces 1";
/// File name of the registry in the state dir.
pub const REGISTRY_FILE: &str = ".uploads_registry";

/// One shared file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegEntry {
    pub group: String,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
    /// Inode number and status-change time (ns); 0 when not recorded (version 1).
    pub ino: u64,
    pub ctime_ns: u128,
    pub file_sha1: [u8; 20],
}

impl RegEntry {
    /// Whether the file, as `stat` found it now, is the one recorded.
    fn matches(&self, now: &FileStamp) -> bool {
        let recorded = self.ino != 0 || self.ctime_ns != 0;
        now.size == self.size
            && now.mtime_ns == self.mtime_ns
            && (!recorded || (now.ino == self.ino && now.ctime_ns == self.ctime_ns))
    }
}

/// What [`UploadRegistry::check`] found for an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Same size and mtime: re-announce with this metadata.
    Unchanged(FileMeta),
    /// The file is there but differs (size/mtime) or its piece hashes are lost.
    Changed,
    /// The file is gone.
    Vanished,
}

/// What change detection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: u128,
    pub ino: u64,
    pub ctime_ns: u128,
}

/// Size, mtime, inode and ctime of a file.
pub fn stat(path: &Path) -> io::Result<FileStamp> {
    Ok(stamp_of(&fs::metadata(path)?))
}

/// The [`FileStamp`] of metadata already at hand (an open file's `fstat`).
pub fn stamp_of(md: &fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let mtime = (md.mtime().max(0) as u128) * 1_000_000_000 + md.mtime_nsec().max(0) as u128;
    let ctime = (md.ctime().max(0) as u128) * 1_000_000_000 + md.ctime_nsec().max(0) as u128;
    FileStamp {
        size: md.len(),
        mtime_ns: mtime,
        ino: md.ino(),
        ctime_ns: ctime,
    }
}

/// The registry, loaded in memory.
#[derive(Debug)]
pub struct UploadRegistry {
    state_dir: PathBuf,
    pub entries: Vec<RegEntry>,
}

impl UploadRegistry {
    fn file(&self) -> PathBuf {
        self.state_dir.join(REGISTRY_FILE)
    }

    fn pieces_path(&self, sha1: &[u8; 20]) -> PathBuf {
        self.state_dir.join("pieces").join(to_hex(sha1))
    }

    /// Loads the registry of `state_dir` (empty when there is none). Malformed
    /// lines are skipped with a warning; an unknown version is an error.
    pub fn load(state_dir: &Path) -> io::Result<UploadRegistry> {
        let mut reg = UploadRegistry {
            state_dir: state_dir.to_path_buf(),
            entries: Vec::new(),
        };
        let text = match fs::read_to_string(reg.file()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(reg),
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        match lines.next() {
            None => return Ok(reg),
            Some(REGISTRY_VERSION | REGISTRY_VERSION_1) => {}
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: unknown version line {other:?}", reg.file().display()),
                ))
            }
        }
        for (no, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            match parse_entry(line) {
                Some(e) => reg.entries.push(e),
                None => log::warn!("{}: line {} malformed, ignored", REGISTRY_FILE, no + 2),
            }
        }
        Ok(reg)
    }

    /// Writes the registry atomically.
    pub fn save(&self) -> io::Result<()> {
        let mut text = format!("{REGISTRY_VERSION}\n");
        for e in &self.entries {
            text.push_str(&encode_fields(&[
                e.group.clone(),
                e.name.clone(),
                e.path.to_string_lossy().into_owned(),
                e.size.to_string(),
                e.mtime_ns.to_string(),
                e.ino.to_string(),
                e.ctime_ns.to_string(),
                to_hex(&e.file_sha1),
            ]));
            text.push('\n');
        }
        write_atomic(&self.file(), text.as_bytes())
    }

    /// Records (or replaces) a shared file and stores its piece hashes; saves.
    pub fn upsert(&mut self, group: &str, meta: &FileMeta, path: &Path) -> io::Result<()> {
        let now = stat(path)?;
        let mut side = format!("{PIECES_VERSION} {} {}\n", meta.size, meta.piece_size).into_bytes();
        for h in &meta.piece_hashes {
            side.extend_from_slice(h);
        }
        write_atomic(&self.pieces_path(&meta.file_sha1), &side)?;
        let entry = RegEntry {
            group: group.to_string(),
            name: meta.name.clone(),
            path: path.to_path_buf(),
            size: now.size,
            mtime_ns: now.mtime_ns,
            ino: now.ino,
            ctime_ns: now.ctime_ns,
            file_sha1: meta.file_sha1,
        };
        self.entries
            .retain(|e| !(e.group == group && e.name == meta.name));
        self.entries.push(entry);
        self.save()
    }

    /// Drops the entry of a group's file; saves. Returns whether there was one.
    pub fn remove(&mut self, group: &str, name: &str) -> io::Result<bool> {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.group == group && e.name == name));
        if self.entries.len() == before {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// The metadata of an entry, from its piece-hash sidecar. The sidecar's
    /// geometry is checked before its hashes are read: the piece count must fit
    /// what a tracker accepts, and the file's length must be exactly the header
    /// plus 20 bytes a piece, so a corrupt sidecar costs no more memory than a
    /// valid one.
    pub fn load_meta(&self, e: &RegEntry) -> Result<FileMeta, SidecarError> {
        let path = self.pieces_path(&e.file_sha1);
        let at = |reason: SidecarReason| SidecarError {
            path: path.clone(),
            reason,
        };
        let mut f = fs::File::open(&path).map_err(|e| at(SidecarReason::Read(e)))?;
        let mut raw = Vec::new();
        (&mut f)
            .take(MAX_SIDECAR_HEADER)
            .read_to_end(&mut raw)
            .map_err(|e| at(SidecarReason::Read(e)))?;
        let nl = raw.iter().position(|&b| b == b'\n');
        let (size, piece_size) = nl
            .and_then(|nl| parse_sidecar_header(&raw[..nl]))
            .ok_or(at(SidecarReason::Header))?;
        if size != e.size {
            return Err(at(SidecarReason::Size {
                recorded: size,
                expected: e.size,
            }));
        }
        let count = FileMeta::checked_piece_count(size, piece_size)
            .ok()
            .filter(|n| n.saturating_mul(40) <= MAX_REQUEST_LINE)
            .ok_or(at(SidecarReason::Geometry { size, piece_size }))?;
        let want = count * 20; // small: bounded just above
        let mut raw = raw.split_off(nl.map_or(0, |nl| nl + 1));
        let rest = want
            .checked_sub(raw.len())
            .ok_or(at(SidecarReason::Length { count, want }))?;
        (&mut f)
            .take(rest as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| at(SidecarReason::Read(e)))?;
        if raw.len() != want {
            return Err(at(SidecarReason::Length { count, want }));
        }
        let piece_hashes = raw
            .chunks_exact(20)
            .map(|c| c.try_into().expect("chunks of 20 bytes"))
            .collect();
        Ok(FileMeta {
            name: e.name.clone(),
            size,
            piece_size,
            piece_hashes,
            file_sha1: e.file_sha1,
        })
    }

    /// Checks every entry against the file system.
    pub fn check(&self) -> Vec<(RegEntry, Check)> {
        self.entries
            .iter()
            .map(|e| {
                let c = match stat(&e.path) {
                    Err(_) => Check::Vanished,
                    Ok(now) if e.matches(&now) => match self.load_meta(e) {
                        Ok(m) => Check::Unchanged(m),
                        Err(why) => {
                            log::warn!("{why}");
                            Check::Changed
                        }
                    },
                    Ok(_) => Check::Changed,
                };
                (e.clone(), c)
            })
            .collect()
    }
}

/// Longest sidecar header line read (`swarmshare-pieces 1 <u64> <u64>` is shorter).
const MAX_SIDECAR_HEADER: u64 = 128;

/// A piece-hash sidecar that cannot be used (the entry then counts as changed).
#[derive(Debug, thiserror::Error)]
#[error("piece hashes {}: {reason}", path.display())]
pub struct SidecarError {
    pub path: PathBuf,
    pub reason: SidecarReason,
}

/// What is wrong with a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarReason {
    #[error("{0}")]
    Read(io::Error),
    #[error("bad header line (expected `{PIECES_VERSION} <size> <piece_size>`)")]
    Header,
    #[error("records a file of {recorded} bytes, the registry one of {expected}")]
    Size { recorded: u64, expected: u64 },
    #[error("{size} bytes in pieces of {piece_size} is not a geometry a tracker accepts")]
    Geometry { size: u64, piece_size: u64 },
    #[error("length does not match {count} piece hashes ({want} bytes after the header)")]
    Length { count: usize, want: usize },
}

/// `swarmshare-pieces 1 <size> <piece_size>` -> (size, piece_size).
fn parse_sidecar_header(head: &[u8]) -> Option<(u64, u64)> {
    let head = std::str::from_utf8(head).ok()?;
    let rest = head.strip_prefix(PIECES_VERSION)?.strip_prefix(' ')?;
    let (size, piece_size) = rest.split_once(' ')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(size) || !digits(piece_size) {
        return None;
    }
    Some((size.parse().ok()?, piece_size.parse().ok()?))
}

fn parse_entry(line: &str) -> Option<RegEntry> {
    let f = decode_fields(line).ok()?;
    // Version 1 lines have no inode and ctime.
    let (ino, ctime_ns) = match f.len() {
        6 => (0, 0),
        8 => (f[5].parse().ok()?, f[6].parse().ok()?),
        _ => return None,
    };
    Some(RegEntry {
        group: f[0].clone(),
        name: f[1].clone(),
        path: PathBuf::from(&f[2]),
        size: f[3].parse().ok()?,
        mtime_ns: f[4].parse().ok()?,
        ino,
        ctime_ns,
        file_sha1: hash_from_hex(f.last()?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hasher::hash_file;

    #[test]
    fn round_trip_and_change_detection() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = dir.path().join("a file");
        let b = dir.path().join("b");
        let c = dir.path().join("c");
        fs::write(&a, vec![1u8; 600_000]).unwrap();
        fs::write(&b, b"bbb").unwrap();
        fs::write(&c, b"ccc").unwrap();
        let mut reg = UploadRegistry::load(&state).unwrap();
        assert!(reg.entries.is_empty());
        let ma = hash_file(&a).unwrap();
        reg.upsert("g 1", &ma, &a).unwrap();
        reg.upsert("g2", &hash_file(&b).unwrap(), &b).unwrap();
        reg.upsert("g2", &hash_file(&c).unwrap(), &c).unwrap();
        // Re-upsert replaces.
        reg.upsert("g 1", &ma, &a).unwrap();
        assert_eq!(reg.entries.len(), 3);

        let reg2 = UploadRegistry::load(&state).unwrap();
        assert_eq!(reg2.entries, reg.entries);
        assert!(fs::read_to_string(state.join(REGISTRY_FILE))
            .unwrap()
            .starts_with("swarmshare-uploads 2\n"));

        fs::write(&b, b"bbbb").unwrap();
        fs::remove_file(&c).unwrap();
        let checks = reg2.check();
        let find = |n: &str| checks.iter().find(|(e, _)| e.name == n).unwrap().1.clone();
        assert_eq!(find("a file"), Check::Unchanged(ma));
        assert_eq!(find("b"), Check::Changed);
        assert_eq!(find("c"), Check::Vanished);

        let mut reg3 = UploadRegistry::load(&state).unwrap();
        assert!(reg3.remove("g2", "c").unwrap());
        assert!(!reg3.remove("g2", "c").unwrap());
        assert_eq!(UploadRegistry::load(&state).unwrap().entries.len(), 2);
    }

    /// A sidecar on disk is input too: extreme or inconsistent geometry is a
    /// reason, never an overflow or a huge allocation.
    #[test]
    fn corrupt_sidecars_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let reg = UploadRegistry::load(dir.path()).unwrap();
        let entry = |size: u64| RegEntry {
            group: "g".into(),
            name: "f".into(),
            path: dir.path().join("f"),
            size,
            mtime_ns: 0,
            ino: 0,
            ctime_ns: 0,
            file_sha1: [9; 20],
        };
        let write = |bytes: &[u8]| {
            write_atomic(&reg.pieces_path(&[9; 20]), bytes).unwrap();
        };
        let reason = |e: &RegEntry| reg.load_meta(e).unwrap_err().reason.to_string();
        // `count * 20` overflowed here for a file of u64::MAX bytes in 1-byte pieces.
        for size in [u64::MAX, u64::MAX / 20 + 1, 1 << 40] {
            write(format!("{PIECES_VERSION} {size} 1\n").as_bytes());
            let why = reason(&entry(size));
            assert!(why.contains("not a geometry a tracker accepts"), "{why}");
        }
        write(format!("{PIECES_VERSION} 10 0\n").as_bytes());
        assert!(reason(&entry(10)).contains("not a geometry"));
        write(format!("{PIECES_VERSION} 10 4\n{}", "x".repeat(59)).as_bytes());
        assert_eq!(
            reason(&entry(10)),
            "length does not match 3 piece hashes (60 bytes after the header)"
        );
        write(format!("{PIECES_VERSION} 10 4\n{}", "x".repeat(61)).as_bytes());
        assert!(reason(&entry(10)).starts_with("length does not match"));
        write(format!("{PIECES_VERSION} 10 4\n{}", "x".repeat(60)).as_bytes());
        assert_eq!(reg.load_meta(&entry(10)).unwrap().piece_count(), 3);
        assert!(reason(&entry(11)).starts_with("records a file of 10 bytes"));
        for bad in [
            "swarmshare-pieces 1 10\n",
            "swarmshare-pieces 1 +10 4\n",
            "junk",
        ] {
            write(bad.as_bytes());
            assert!(reason(&entry(10)).starts_with("bad header line"), "{bad}");
        }
        write(&vec![b'1'; 4096]);
        assert!(reason(&entry(10)).starts_with("bad header line"));
    }

    /// An edit that keeps the size and puts the mtime back is still a change
    /// (ctime), and so is another file moved into the path (inode); a version 1
    /// entry is checked by size and mtime.
    #[test]
    fn same_size_and_mtime_but_another_inode_or_ctime_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = dir.path().join("a");
        fs::write(&a, b"aaaa").unwrap();
        let mut reg = UploadRegistry::load(&state).unwrap();
        reg.upsert("g", &hash_file(&a).unwrap(), &a).unwrap();
        let recorded = reg.entries[0].clone();
        let same_times = |path: &Path| {
            let f = fs::File::options().write(true).open(path).unwrap();
            let mtime =
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(recorded.mtime_ns as u64);
            f.set_modified(mtime).unwrap();
        };
        assert!(matches!(reg.check()[0].1, Check::Unchanged(_)));
        // Same size, mtime set back: only the ctime tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&a, b"AAAA").unwrap();
        same_times(&a);
        assert_eq!(stat(&a).unwrap().mtime_ns, recorded.mtime_ns);
        assert_eq!(reg.check()[0].1, Check::Changed);
        // The same entry as version 1 (no inode, no ctime) misses that edit.
        let mut v1 = reg.entries[0].clone();
        v1.ino = 0;
        v1.ctime_ns = 0;
        let line = encode_fields(&[
            v1.group.clone(),
            v1.name.clone(),
            v1.path.to_string_lossy().into_owned(),
            v1.size.to_string(),
            v1.mtime_ns.to_string(),
            to_hex(&v1.file_sha1),
        ]);
        fs::write(
            state.join(REGISTRY_FILE),
            format!("{REGISTRY_VERSION_1}\n{line}\n"),
        )
        .unwrap();
        let old = UploadRegistry::load(&state).unwrap();
        assert_eq!(old.entries, [v1]);
        assert!(matches!(old.check()[0].1, Check::Unchanged(_)));
        // Another file renamed over the path: a new inode.
        reg.upsert("g", &hash_file(&a).unwrap(), &a).unwrap();
        let b = dir.path().join("b");
        fs::write(&b, b"AAAA").unwrap();
        same_times(&b);
        fs::rename(&b, &a).unwrap();
        assert_eq!(reg.check()[0].1, Check::Changed);
    }

    #[test]
    fn bad_version_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(REGISTRY_FILE), "something else\n").unwrap();
        assert!(UploadRegistry::load(dir.path()).is_err());
        fs::write(
            dir.path().join(REGISTRY_FILE),
            "swarmshare-uploads 1\nbroken line\n",
        )
        .unwrap();
        assert!(UploadRegistry::load(dir.path()).unwrap().entries.is_empty());
    }
}
