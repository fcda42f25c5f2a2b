//! `sync_log.txt`: the replicated write-ahead log and its one line format.
//!
//! Every state change is appended here (durably) before it is applied to the
//! SQLite cache and before the client hears about it. Several trackers started
//! with the same data dir share the file: appends take an exclusive `flock`,
//! readers a shared one, so lines never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use wire::tracker_msg::{decode_fields, encode_fields};

/// File name of the log inside the data dir.
pub const LOG_FILE: &str = "sync_log.txt";

/// First line of every log file: the format and its version.
pub const VERSION_LINE: &str = "swarmshare-sync-log v1";

/// Offset of the first entry (just after the version line and its newline).
pub const FIRST_ENTRY: u64 = VERSION_LINE.len() as u64 + 1;

/// Longest log line accepted when reading (a request line plus the header fields).
const MAX_LINE: usize = wire::tracker_msg::MAX_REQUEST_LINE + 4096;

/// How durable an append is before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// One write and one fsync per line.
    Always,
    /// Group commit: all lines of one loop turn in one write and one fsync.
    Batch,
}

/// Errors of the log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("sync log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "sync log {path} starts with {found:?}, expected {VERSION_LINE:?} (unsupported format)"
    )]
    Version { path: PathBuf, found: String },
}

/// Why one line of the log was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("line has no checksum field")]
    NoChecksum,
    #[error("checksum mismatch (stored {stored}, computed {computed:08x})")]
    Checksum { stored: String, computed: u32 },
    #[error("malformed line: {0}")]
    Malformed(String),
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// One state change. Its fields are what [`crate::store::apply`] needs to apply it
/// idempotently on any tracker; the time of the change is the entry's `ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateUser {
        user: String,
        /// Argon2 PHC string; never the password.
        password_hash: String,
    },
    Login {
        token_hash: String,
        user: String,
    },
    Logout {
        token_hash: String,
    },
    CreateGroup {
        group: String,
        owner: String,
    },
    RequestJoin {
        group: String,
        user: String,
    },
    AcceptRequest {
        group: String,
        user: String,
    },
    RejectRequest {
        group: String,
        user: String,
    },
    LeaveGroup {
        group: String,
        user: String,
    },
    UploadFile {
        group: String,
        name: String,
        size: u64,
        piece_size: u64,
        file_sha1: String,
        piece_hashes: String,
        token_hash: String,
        user: String,
        peer_addr: String,
    },
    AddSeeder {
        group: String,
        name: String,
        token_hash: String,
        user: String,
        peer_addr: String,
    },
    StopShare {
        group: String,
        name: String,
        token_hash: String,
    },
    Heartbeat {
        token_hash: String,
        peer_addr: String,
    },
}

impl Op {
    /// The operation's name and fields, as written in the log.
    fn to_fields(&self) -> (&'static str, Vec<String>) {
        use Op::*;
        let s = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            CreateUser {
                user,
                password_hash,
            } => ("create_user", s(&[user, password_hash])),
            Login { token_hash, user } => ("login", s(&[token_hash, user])),
            Logout { token_hash } => ("logout", s(&[token_hash])),
            CreateGroup { group, owner } => ("create_group", s(&[group, owner])),
            RequestJoin { group, user } => ("request_join", s(&[group, user])),
            AcceptRequest { group, user } => ("accept_request", s(&[group, user])),
            RejectRequest { group, user } => ("reject_request", s(&[group, user])),
            LeaveGroup { group, user } => ("leave_group", s(&[group, user])),
            UploadFile {
                group,
                name,
                size,
                piece_size,
                file_sha1,
                piece_hashes,
                token_hash,
                user,
                peer_addr,
            } => (
                "upload_file",
                vec![
                    group.clone(),
                    name.clone(),
                    size.to_string(),
                    piece_size.to_string(),
                    file_sha1.clone(),
                    piece_hashes.clone(),
                    token_hash.clone(),
                    user.clone(),
                    peer_addr.clone(),
                ],
            ),
            AddSeeder {
                group,
                name,
                token_hash,
                user,
                peer_addr,
            } => ("add_seeder", s(&[group, name, token_hash, user, peer_addr])),
            StopShare {
                group,
                name,
                token_hash,
            } => ("stop_share", s(&[group, name, token_hash])),
            Heartbeat {
                token_hash,
                peer_addr,
            } => ("heartbeat", s(&[token_hash, peer_addr])),
        }
    }

    /// Builds an operation from its name and fields as read from the log.
    fn from_fields(op: &str, f: Vec<String>) -> Result<Op, LineError> {
        let want = OP_FIELDS
            .iter()
            .find(|(name, _)| *name == op)
            .map(|(_, n)| *n)
            .ok_or_else(|| LineError::UnknownOp(op.to_string()))?;
        if f.len() != want {
            return Err(LineError::Malformed(format!(
                "{op} takes {want} fields, found {}",
                f.len()
            )));
        }
        let mut it = f.into_iter();
        let mut n = || it.next().unwrap_or_default();
        use Op::*;
        Ok(match op {
            "create_user" => CreateUser {
                user: n(),
                password_hash: n(),
            },
            "login" => Login {
                token_hash: n(),
                user: n(),
            },
            "logout" => Logout { token_hash: n() },
            "create_group" => CreateGroup {
                group: n(),
                owner: n(),
            },
            "request_join" | "accept_request" | "reject_request" | "leave_group" => {
                let (group, user) = (n(), n());
                match op {
                    "request_join" => RequestJoin { group, user },
                    "accept_request" => AcceptRequest { group, user },
                    "reject_request" => RejectRequest { group, user },
                    _ => LeaveGroup { group, user },
                }
            }
            _ => Op::sharing_from_fields(op, n)?,
        })
    }

    /// [`Op::from_fields`] for the file and seeder operations.
    fn sharing_from_fields(op: &str, mut n: impl FnMut() -> String) -> Result<Op, LineError> {
        let num = |s: String| -> Result<u64, LineError> {
            s.parse()
                .map_err(|_| LineError::Malformed(format!("{s:?} is not a number")))
        };
        use Op::*;
        Ok(match op {
            "upload_file" => UploadFile {
                group: n(),
                name: n(),
                size: num(n())?,
                piece_size: num(n())?,
                file_sha1: n(),
                piece_hashes: n(),
                token_hash: n(),
                user: n(),
                peer_addr: n(),
            },
            "add_seeder" => AddSeeder {
                group: n(),
                name: n(),
                token_hash: n(),
                user: n(),
                peer_addr: n(),
            },
            "stop_share" => StopShare {
                group: n(),
                name: n(),
                token_hash: n(),
            },
            "heartbeat" => Heartbeat {
                token_hash: n(),
                peer_addr: n(),
            },
            other => return Err(LineError::UnknownOp(other.to_string())),
        })
    }
}

/// Every operation's name in the log and how many fields follow it.
const OP_FIELDS: [(&str, usize); 12] = [
    ("create_user", 2),
    ("login", 2),
    ("logout", 1),
    ("create_group", 2),
    ("request_join", 2),
    ("accept_request", 2),
    ("reject_request", 2),
    ("leave_group", 2),
    ("upload_file", 9),
    ("add_seeder", 5),
    ("stop_share", 3),
    ("heartbeat", 2),
];

/// One line of the log: when, by which tracker, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Unix time in milliseconds when the tracker accepted the change.
    pub ms: u64,
    /// The tracker (1-based number) that appended the line.
    pub tracker: u32,
    pub op: Op,
}

impl LogEntry {
    /// Encodes the entry as one log line, newline included.
    ///
    /// The format (version 1, announced by the file's first line):
    ///
    /// ```text
    /// <crc32> <unix_ms> <tracker_no> <op> <field> ...\n
    /// ```
    ///
    /// - `crc32` is 8 lowercase hex digits: CRC-32 (IEEE) of every byte after the
    ///   space that follows it, up to but excluding the newline.
    /// - `unix_ms`, `tracker_no`, `op` and the fields are escaped exactly like tracker
    ///   request fields ([`wire::tracker_msg::escape_field`]), so a field never holds
    ///   a space or newline and any UTF-8 is carried losslessly.
    /// - `op` and its fields are listed in [`Op`]; the op names are `create_user`,
    ///   `login`, `logout`, `create_group`, `request_join`, `accept_request`,
    ///   `reject_request`, `leave_group`, `upload_file`, `add_seeder`, `stop_share`,
    ///   `heartbeat`. Passwords never appear: `create_user` carries the argon2 PHC
    ///   string, sessions appear only as the SHA-256 of their token.
    ///
    /// A line without its newline (torn write) or whose checksum or fields do not
    /// check out ends the valid part of the log.
    pub fn encode(&self) -> String {
        let (name, fields) = self.op.to_fields();
        let mut all = vec![
            self.ms.to_string(),
            self.tracker.to_string(),
            name.to_string(),
        ];
        all.extend(fields);
        let body = encode_fields(&all);
        let crc = crc32fast::hash(body.as_bytes());
        format!("{crc:08x} {body}\n")
    }

    /// Parses one line (its trailing newline, if any, ignored). Never panics.
    pub fn decode(line: &[u8]) -> Result<LogEntry, LineError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
        let (crc, body) = text.split_once(' ').ok_or(LineError::NoChecksum)?;
        let computed = crc32fast::hash(body.as_bytes());
        if crc.len() != 8 || u32::from_str_radix(crc, 16).ok() != Some(computed) {
            return Err(LineError::Checksum {
                stored: crc.chars().take(16).collect(),
                computed,
            });
        }
        let fields = decode_fields(body).map_err(|e| LineError::Malformed(e.to_string()))?;
        if fields.len() < 3 {
            return Err(LineError::Malformed("fewer than 3 header fields".into()));
        }
        let mut it = fields.into_iter();
        let ms = it.next().unwrap_or_default();
        let tracker = it.next().unwrap_or_default();
        let op = it.next().unwrap_or_default();
        let ms = ms
            .parse()
            .map_err(|_| LineError::Malformed(format!("bad time {ms:?}")))?;
        let tracker = tracker
            .parse()
            .map_err(|_| LineError::Malformed(format!("bad tracker number {tracker:?}")))?;
        let op = Op::from_fields(&op, it.collect())?;
        Ok(LogEntry { ms, tracker, op })
    }
}

/// Whether a line (without its newline) starts with the 8-hex-digit CRC-32 of
/// the rest after one space. [`LogEntry::decode`] checks this and the fields.
fn checksum_matches(line: &[u8]) -> bool {
    let (Some(crc), Some(body)) = (line.get(..8), line.get(9..)) else {
        return false;
    };
    line[8] == b' '
        && std::str::from_utf8(crc)
            .ok()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            == Some(crc32fast::hash(body))
}

/// Where reading stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The bytes from `offset` to the end hold no newline (a torn or in-progress write).
    Incomplete { offset: u64 },
    /// The line at `offset` is complete but invalid.
    Bad { offset: u64, reason: LineError },
}

/// The result of reading the log from some offset.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Each valid entry with the offset of its line.
    pub entries: Vec<(u64, LogEntry)>,
    /// Offset just after the last valid line read.
    pub end: u64,
    /// Set when reading stopped at an incomplete or invalid line.
    pub stop: Option<Stop>,
}

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Length of the valid prefix after recovery.
    pub valid_len: u64,
    /// Set when an invalid tail was cut off: the offset, the reason, where it was saved.
    pub cut: Option<(u64, String, PathBuf)>,
}

/// The open log file.
#[derive(Debug)]
pub struct SyncLog {
    file: File,
    path: PathBuf,
    mode: FsyncMode,
}

/// Holds an `flock` on the log until dropped.
#[derive(Debug)]
pub struct LockGuard<'a> {
    log: &'a SyncLog,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock error leaves nothing to do.
        let _ = rustix::fs::flock(&self.log.file, FlockOperation::Unlock);
    }
}

impl SyncLog {
    /// Opens (creating if needed) `<dir>/sync_log.txt`, writes the version line into
    /// an empty file, and cuts off an invalid tail (saved beside it as
    /// `sync_log.txt.corrupt-<unix_ms>`), all under the exclusive lock.
    ///
    /// `applied` is how far the cache has applied the log. Lines before it were
    /// parsed when they were applied, so they only get the cheap checksum check
    /// ([`SyncLog::first_bad_checksum`]); only the tail after it is parsed here.
    /// That keeps a restart with a warm cache fast however long the log is.
    pub fn open(
        dir: &Path,
        mode: FsyncMode,
        applied: u64,
    ) -> Result<(SyncLog, Recovery), LogError> {
        let path = dir.join(LOG_FILE);
        let io_err = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        let log = SyncLog { file, path, mode };
        let recovery = {
            let _lock = log.lock_exclusive()?;
            log.check_version()?;
            let from = match log.checked_boundary(applied)? {
                Some(applied) => log
                    .first_bad_checksum(FIRST_ENTRY, applied)?
                    .unwrap_or(applied),
                None => FIRST_ENTRY,
            };
            log.recover_tail(from)?
        };
        Ok((log, recovery))
    }

    fn io_err(&self, source: io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn flock(&self, how: FlockOperation) -> Result<LockGuard<'_>, LogError> {
        loop {
            match rustix::fs::flock(&self.file, how) {
                Ok(()) => return Ok(LockGuard { log: self }),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.io_err(e.into())),
            }
        }
    }

    /// Takes the exclusive lock (for appending or repairing).
    pub fn lock_exclusive(&self) -> Result<LockGuard<'_>, LogError> {
        self.flock(FlockOperation::LockExclusive)
    }

    /// Takes the shared lock (for reading).
    pub fn lock_shared(&self) -> Result<LockGuard<'_>, LogError> {
        self.flock(FlockOperation::LockShared)
    }

    /// Current length of the file in bytes.
    pub fn file_len(&self) -> Result<u64, LogError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io_err(e))
    }

    /// Writes the version line into an empty file (or one holding only a torn
    /// version line); refuses a file of another format. Needs the exclusive lock.
    fn check_version(&self) -> Result<(), LogError> {
        let len = self.file_len()?;
        let mut head = vec![0u8; (FIRST_ENTRY as usize).min(len as usize)];
        self.file
            .read_exact_at(&mut head, 0)
            .map_err(|e| self.io_err(e))?;
        let want = format!("{VERSION_LINE}\n");
        if head == want.as_bytes() {
            return Ok(());
        }
        let torn_header = len < FIRST_ENTRY && want.as_bytes().starts_with(&head);
        if !torn_header {
            let found = String::from_utf8_lossy(&head);
            return Err(LogError::Version {
                path: self.path.clone(),
                found: found.lines().next().unwrap_or_default().to_string(),
            });
        }
        if len > 0 {
            log::warn!("{}: torn version line, rewriting it", self.path.display());
        }
        self.file.set_len(0).map_err(|e| self.io_err(e))?;
        (&self.file)
            .write_all(want.as_bytes())
            .map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))
    }

    /// Scans from `from` (a line boundary known to be valid) and cuts off
    /// everything from the first incomplete or invalid line on, saving it to
    /// `sync_log.txt.corrupt-<unix_ms>`. Needs the exclusive lock.
    pub fn recover_tail(&self, from: u64) -> Result<Recovery, LogError> {
        let mut offset = from;
        loop {
            let batch = self.read_from(offset, 16 << 20)?;
            offset = batch.end;
            let (bad_at, reason) = match batch.stop {
                None if batch.entries.is_empty() => {
                    return Ok(Recovery {
                        valid_len: offset,
                        cut: None,
                    })
                }
                None => continue,
                Some(Stop::Incomplete { offset }) => (offset, "incomplete last line".to_string()),
                Some(Stop::Bad { offset, reason }) => (offset, reason.to_string()),
            };
            let saved = self.cut_tail(bad_at)?;
            log::warn!(
                "{}: invalid line at offset {bad_at} ({reason}); cut the log to {bad_at} bytes, \
                 the invalid tail is saved in {}",
                self.path.display(),
                saved.display()
            );
            return Ok(Recovery {
                valid_len: bad_at,
                cut: Some((bad_at, reason, saved)),
            });
        }
    }

    /// `offset` if it can be a line boundary of this file (just after a newline,
    /// within the file), else `None`: a cache offset that does not fit this log.
    fn checked_boundary(&self, offset: u64) -> Result<Option<u64>, LogError> {
        if offset <= FIRST_ENTRY || offset > self.file_len()? {
            return Ok(None);
        }
        let mut last = [0u8; 1];
        self.file
            .read_exact_at(&mut last, offset - 1)
            .map_err(|e| self.io_err(e))?;
        Ok((last[0] == b'\n').then_some(offset))
    }

    /// The offset of the first line in `from..to` (both line boundaries) whose
    /// checksum does not match, or `None`. Only the checksum is checked, not the
    /// fields: this is the fast integrity pass over lines that were applied before.
    pub fn first_bad_checksum(&self, from: u64, to: u64) -> Result<Option<u64>, LogError> {
        let mut chunk = vec![0u8; 4 << 20];
        let mut pos = from; // file offset of chunk[0]
        let mut filled = 0;
        while pos < to {
            let want = (chunk.len() - filled).min((to - pos) as usize - filled);
            let n = self
                .file
                .read_at(&mut chunk[filled..filled + want], pos + filled as u64)
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                return Ok(Some(pos));
            }
            filled += n;
            let mut start = 0;
            while let Some(i) = chunk[start..filled].iter().position(|&b| b == b'\n') {
                if !checksum_matches(&chunk[start..start + i]) {
                    return Ok(Some(pos + start as u64));
                }
                start += i + 1;
            }
            if start == 0 && filled == chunk.len() {
                // A line longer than the buffer: let the full parser judge it.
                return Ok(Some(pos));
            }
            chunk.copy_within(start..filled, 0);
            filled -= start;
            pos += start as u64;
        }
        Ok(None)
    }

    fn cut_tail(&self, at: u64) -> Result<PathBuf, LogError> {
        let mut saved = self.path.as_os_str().to_owned();
        saved.push(format!(".corrupt-{}", crate::unix_ms()));
        let saved = PathBuf::from(saved);
        let copy = || -> io::Result<()> {
            use std::io::{Seek, SeekFrom};
            let mut from = File::open(&self.path)?;
            from.seek(SeekFrom::Start(at))?;
            let mut to = File::create(&saved)?;
            io::copy(&mut from, &mut to)?;
            to.sync_all()
        };
        copy().map_err(|e| LogError::Io {
            path: saved.clone(),
            source: e,
        })?;
        self.file.set_len(at).map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))?;
        Ok(saved)
    }

    /// Bytes an unprivileged writer may still use on the log's file system.
    pub fn free_bytes(&self) -> Result<u64, LogError> {
        let st = rustix::fs::fstatvfs(&self.file).map_err(|e| self.io_err(e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Cuts the file back to `len` after a failed append. Needs the exclusive lock.
    pub fn truncate(&self, len: u64) -> Result<(), LogError> {
        self.file.set_len(len).map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))
    }

    /// Reads complete, valid lines starting at `offset` (a line boundary), stopping
    /// after about `max_bytes`, at the end of the file, or at the first incomplete or
    /// invalid line. Needs a lock to give a consistent view.
    pub fn read_from(&self, offset: u64, max_bytes: usize) -> Result<ReadBatch, LogError> {
        let len = self.file_len()?;
        let mut batch = ReadBatch {
            end: offset,
            ..ReadBatch::default()
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = offset; // file position of buf[0]
        let mut read_to = offset; // file position just after the buffered bytes
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            // Take every complete line out of the buffer.
            let mut start = 0;
            while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + i + 1];
                let at = pos + start as u64;
                match LogEntry::decode(line) {
                    Ok(entry) => batch.entries.push((at, entry)),
                    Err(reason) => {
                        batch.stop = Some(Stop::Bad { offset: at, reason });
                        return Ok(batch);
                    }
                }
                start += i + 1;
                batch.end = pos + start as u64;
            }
            buf.drain(..start);
            pos += start as u64;
            if buf.len() > MAX_LINE {
                batch.stop = Some(Stop::Bad {
                    offset: pos,
                    reason: LineError::TooLong,
                });
                return Ok(batch);
            }
            if (batch.end - offset) as usize >= max_bytes {
                return Ok(batch);
            }
            if read_to >= len {
                if !buf.is_empty() {
                    batch.stop = Some(Stop::Incomplete { offset: pos });
                }
                return Ok(batch);
            }
            let want = chunk.len().min((len - read_to) as usize);
            let n = self
                .file
                .read_at(&mut chunk[..want], read_to)
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                // The file shrank under us; report what we have.
                if !buf.is_empty() {
                    batch.stop = Some(Stop::Incomplete { offset: pos });
                }
                return Ok(batch);
            }
            buf.extend_from_slice(&chunk[..n]);
            read_to += n as u64;
        }
    }

    /// Appends encoded lines at the end of the file and makes them durable before
    /// returning: one write and one fsync for the whole batch, or per line in
    /// [`FsyncMode::Always`]. Needs the exclusive lock.
    pub fn append(&self, lines: &[String]) -> Result<(), LogError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut f = &self.file;
        match self.mode {
            FsyncMode::Batch => {
                let all = lines.concat();
                f.write_all(all.as_bytes()).map_err(|e| self.io_err(e))?;
                self.file.sync_data().map_err(|e| self.io_err(e))
            }
            FsyncMode::Always => {
                for line in lines {
                    f.write_all(line.as_bytes()).map_err(|e| self.io_err(e))?;
                    self.file.sync_data().map_err(|e| self.io_err(e))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Op) -> LogEntry {
        LogEntry {
            ms: 1_700_000_000_123,
            tracker: 2,
            op,
        }
    }

    fn sample() -> Vec<LogEntry> {
        vec![
            entry(Op::CreateUser {
                user: "ünï user 🦀".into(),
                password_hash: "$argon2id$v=19$m=8192,t=1,p=1$abc$def".into(),
            }),
            entry(Op::CreateGroup {
                group: "".into(),
                owner: "a\\b\nc".into(),
            }),
            entry(Op::UploadFile {
                group: "g".into(),
                name: "my file.txt".into(),
                size: 0,
                piece_size: 524288,
                file_sha1: "da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
                piece_hashes: "".into(),
                token_hash: "ab".into(),
                user: "u".into(),
                peer_addr: "127.0.0.1:9".into(),
            }),
            entry(Op::Heartbeat {
                token_hash: "ab".into(),
                peer_addr: "[::1]:80".into(),
            }),
        ]
    }

    #[test]
    fn encode_decode_round_trip() {
        for e in sample() {
            let line = e.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(LogEntry::decode(line.as_bytes()).unwrap(), e);
        }
    }

    #[test]
    fn checksum_pass_finds_the_first_corrupt_line() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SyncLog::open(dir.path(), FsyncMode::Batch, 0).unwrap();
        let lines: Vec<String> = sample().iter().map(LogEntry::encode).collect();
        log.append(&lines).unwrap();
        let end = log.file_len().unwrap();
        assert_eq!(log.first_bad_checksum(FIRST_ENTRY, end).unwrap(), None);
        for line in &lines {
            assert!(checksum_matches(line.trim_end().as_bytes()));
        }
        // Flip a byte inside the third line.
        let third = FIRST_ENTRY + (lines[0].len() + lines[1].len()) as u64;
        let mut bytes = std::fs::read(&log.path).unwrap();
        bytes[third as usize + 12] ^= 0x02;
        std::fs::write(&log.path, &bytes).unwrap();
        assert_eq!(
            log.first_bad_checksum(FIRST_ENTRY, end).unwrap(),
            Some(third)
        );
        drop(log);
        // Reopening with a cache that applied everything still finds and cuts it.
        let (log, rec) = SyncLog::open(dir.path(), FsyncMode::Batch, end).unwrap();
        assert_eq!(rec.valid_len, third);
        assert_eq!(log.file_len().unwrap(), third);
        assert!(!checksum_matches(b"0000000"));
        assert!(!checksum_matches(b"00000000x1 2"));
    }

    #[test]
    fn corrupt_lines_are_rejected() {
        let line = sample()[0].encode();
        let mut bytes = line.clone().into_bytes();
        bytes[12] ^= 0x01;
        assert!(matches!(
            LogEntry::decode(&bytes),
            Err(LineError::Checksum { .. } | LineError::NotUtf8)
        ));
        assert!(LogEntry::decode(b"").is_err());
        assert!(LogEntry::decode(b"\xff\xff").is_err());
        assert!(LogEntry::decode(b"zzzzzzzz 1 2 login").is_err());
        let body = "1 1 nosuchop x";
        let forged = format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(
            LogEntry::decode(forged.as_bytes()),
            Err(LineError::UnknownOp("nosuchop".into()))
        );
    }

    #[test]
    fn append_read_and_recover_torn_and_corrupt_tails() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = SyncLog::open(dir.path(), FsyncMode::Batch, 0).unwrap();
        assert_eq!(rec.valid_len, FIRST_ENTRY);
        let lines: Vec<String> = sample().iter().map(LogEntry::encode).collect();
        {
            let _l = log.lock_exclusive().unwrap();
            log.append(&lines).unwrap();
        }
        let all = log.read_from(FIRST_ENTRY, usize::MAX).unwrap();
        assert_eq!(all.entries.len(), 4);
        assert!(all.stop.is_none());
        let full_len = log.file_len().unwrap();
        assert_eq!(all.end, full_len);
        assert_eq!(all.entries[1].0, FIRST_ENTRY + lines[0].len() as u64);
        drop(log);

        // Torn last line.
        let path = dir.path().join(LOG_FILE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full_len - 5).unwrap();
        drop(f);
        let (log, rec) = SyncLog::open(dir.path(), FsyncMode::Batch, 0).unwrap();
        let third_end = full_len - lines[3].len() as u64;
        assert_eq!(rec.valid_len, third_end);
        assert!(rec.cut.is_some());
        assert_eq!(log.file_len().unwrap(), third_end);
        assert_eq!(
            log.read_from(FIRST_ENTRY, usize::MAX)
                .unwrap()
                .entries
                .len(),
            3
        );
        drop(log);

        // A corrupted byte inside the second line.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (FIRST_ENTRY as usize) + lines[0].len() + 20;
        bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = SyncLog::open(dir.path(), FsyncMode::Always, 0).unwrap();
        assert_eq!(rec.valid_len, FIRST_ENTRY + lines[0].len() as u64);
        let (_, _, saved) = rec.cut.unwrap();
        assert!(saved.exists());
        assert_eq!(
            log.read_from(FIRST_ENTRY, usize::MAX)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), "hello world\n").unwrap();
        assert!(matches!(
            SyncLog::open(dir.path(), FsyncMode::Batch, 0),
            Err(LogError::Version { .. })
        ));
        // A torn version line is repaired.
        std::fs::write(dir.path().join(LOG_FILE), "swarmsh").unwrap();
        let (log, _) = SyncLog::open(dir.path(), FsyncMode::Batch, 0).unwrap();
        assert_eq!(log.file_len().unwrap(), FIRST_ENTRY);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = LogEntry::decode(&bytes);
        }
    }
}
