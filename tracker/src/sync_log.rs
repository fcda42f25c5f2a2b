//! `sync_log.txt`: the replicated write-ahead log and its one line format.
//!
//! Every state change is appended here (durably) before it is applied to the
//! SQLite cache and before the client hears about it. Several trackers started
//! with the same data dir share the file: appends take an exclusive `flock`,
//! readers a shared one, so lines never interleave.
//!
//! # Format v2
//!
//! ```text
//! swarmshare-sync-log v2 <generation: 16 hex digits>
//! <crc32> <seq> <unix_ms> <tracker_no> <request_id> <op> <field> ...
//! ```
//!
//! - `crc32`: 8 lowercase hex digits, the CRC-32 (IEEE) of every byte after the
//!   space that follows it, up to but excluding the newline. It makes each line
//!   self-checking: a flipped byte costs exactly that line.
//! - `seq`: the entry's sequence number, 1 for the first entry and one more for
//!   each next one. It is what protects the *order* of the lines: a deleted,
//!   duplicated or swapped complete line (each with a valid CRC) breaks the run
//!   `1, 2, 3, ...` and is detected. The cache stores how many lines it applied,
//!   so the next line a tracker reads must carry exactly that number plus one;
//!   a log that changed under a running tracker fails that check. Sequence
//!   numbers were chosen over a hash chain because a chain ties each line's
//!   check to its predecessor's: one damaged checksum field then invalidates two
//!   lines, and salvage could no longer tell which lines are intact. With a CRC
//!   per line plus a sequence number, verification names exactly the damaged
//!   lines, salvage keeps every intact one (and can restore their order), and
//!   `seq` is the same number a replicated log's index is. What a chain detects
//!   beyond this (an intact line from another log spliced in with the right
//!   number) is not a kind of accidental damage; a whole log replaced by another
//!   is detected by the generation.
//! - `generation`: random, chosen when a log is created, upgraded or salvaged.
//!   The cache records the generation it applied; a cache of another generation
//!   is rebuilt from the log, never read against it.
//! - `request_id`: the client's id for an exactly-once command, or `-` (none).
//! - The other fields are escaped like tracker request fields
//!   ([`wire::tracker_msg::escape_field`]): a field never holds a space or
//!   newline, any UTF-8 is carried losslessly. `op` and its fields: [`Op`].
//!
//! Version 1 (`swarmshare-sync-log v1`, lines `<crc32> <unix_ms> <tracker_no> <op>
//! <field> ...`) is read only to upgrade it ([`crate::log_repair::upgrade_v1`]).
//!
//! # Compaction
//!
//! A compacted log's version line names where it starts in the history:
//!
//! ```text
//! swarmshare-sync-log v2 <generation> after <lines> <offset>
//! ```
//!
//! Its first entry carries number `lines + 1`, and `offset` is that entry's
//! *logical* offset: the byte offset it had in the log before anything was
//! dropped. Offsets and sequence numbers keep running across compactions (the
//! cache's applied offset, `joined_seq` and the exactly-once records stay
//! comparable), and the generation is kept, so every check above still holds:
//! a cache of another generation is still never read against the log. Logical
//! offset `o` is byte `o - offset + <version line length>` of the file; errors
//! name the byte in the file. The entries before the base are in `snapshot.db`
//! (a consistent copy of a cache that applied exactly them); how a log is
//! compacted, and what happens to a cache behind the base: [`crate::snapshot`].
//! The old file is dropped (no `sync_log.txt.<n>` is kept). A tracker sharing
//! the log notices the new file by its inode under the lock
//! ([`SyncLog::lock_current`]) and reopens it: no line is ever appended to a
//! replaced file.
//!
//! # Damage
//!
//! Only a torn tail is ever cut: an incomplete last line, or complete lines at the
//! end of the file none of which checks out (what an append that crashed leaves),
//! and never a line the cache has applied. The cut bytes are saved beside the log
//! (`sync_log.txt.corrupt-<unix_ms>`). A bad line with a good line after it, a
//! break in the sequence, or a log shorter than what the cache applied is damage:
//! nothing is cut, and the tracker refuses to start (or, if it is running, to make
//! changes) with an error naming the line and its byte offset.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use wire::tracker_msg::{decode_fields, encode_fields, escape_field};

/// File name of the log inside the data dir.
pub const LOG_FILE: &str = "sync_log.txt";

/// What every log's first line starts with.
pub const MAGIC: &str = "swarmshare-sync-log";

/// The first line of a version 1 log (read only to upgrade it).
pub const V1_LINE: &str = "swarmshare-sync-log v1";

/// The first line of a version 2 log, before its generation.
pub const V2_PREFIX: &str = "swarmshare-sync-log v2 ";

/// Offset of the first entry (just after the version line and its newline).
pub const FIRST_ENTRY: u64 = V2_PREFIX.len() as u64 + 16 + 1;

/// The `request_id` field of an entry without one.
pub const NO_REQUEST_ID: &str = "-";

/// Longest log line accepted when reading (a request line plus the header fields).
pub const MAX_LINE: usize = wire::tracker_msg::MAX_REQUEST_LINE + 4096;

/// How durable an append is before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// One write and one fsync per line.
    Always,
    /// Group commit: all lines of one loop turn in one write and one fsync.
    Batch,
}

/// Which history a log file holds: chosen at random when a log is created,
/// upgraded or salvaged. Written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation(pub u64);

impl Generation {
    /// A fresh random generation.
    pub fn new() -> Generation {
        let mut b = [0u8; 8];
        if getrandom::getrandom(&mut b).is_err() {
            // No randomness: the clock still tells generations apart.
            b = crate::unix_ms().to_be_bytes();
        }
        Generation(u64::from_be_bytes(b))
    }

    /// Parses 16 hex digits.
    pub fn parse(s: &str) -> Option<Generation> {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let ok = s.len() == 16 && s.bytes().all(lower_hex);
        ok.then(|| u64::from_str_radix(s, 16).ok().map(Generation))
            .flatten()
    }

    /// The version line of a v2 log of this generation, newline included.
    pub fn header_line(self) -> String {
        format!("{V2_PREFIX}{self}\n")
    }
}

impl Default for Generation {
    fn default() -> Self {
        Generation::new()
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a log file starts in the history: the entries before it were compacted
/// into a snapshot ([`crate::snapshot`]). Offsets are logical: an entry keeps
/// the offset it was appended at, whatever was dropped before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// Entries before the file's first line (its first line carries `lines + 1`).
    pub lines: u64,
    /// Logical offset of the file's first entry line.
    pub offset: u64,
}

impl Base {
    /// The base of a log that was never compacted.
    pub const START: Base = Base {
        lines: 0,
        offset: FIRST_ENTRY,
    };
}

/// What the first line of a log file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    V1,
    V2(Generation, Base),
}

/// Longest version line read (a compacted v2 line with two 20-digit numbers fits).
const MAX_HEADER: usize = 128;

impl Header {
    /// Parses a first line (without its newline). Numbers have one spelling
    /// (no leading zeros), like the checksum.
    pub fn parse(line: &[u8]) -> Option<Header> {
        let line = std::str::from_utf8(line).ok()?;
        if line == V1_LINE {
            return Some(Header::V1);
        }
        let rest = line.strip_prefix(V2_PREFIX)?;
        let (generation, after) = match rest.split_once(' ') {
            None => (rest, None),
            Some((g, after)) => (g, Some(after)),
        };
        let generation = Generation::parse(generation)?;
        let Some(after) = after else {
            return Some(Header::V2(generation, Base::START));
        };
        let mut f = after.strip_prefix("after ")?.split(' ');
        let (lines, offset) = (f.next()?, f.next()?);
        let num = |s: &str| s.parse::<u64>().ok().filter(|n| n.to_string() == s);
        let base = Base {
            lines: num(lines)?,
            offset: num(offset)?,
        };
        let sane = f.next().is_none() && base.lines > 0 && base.offset >= FIRST_ENTRY;
        sane.then_some(Header::V2(generation, base))
    }

    /// The version line of a v2 log of `generation` starting at `base`,
    /// newline included: `swarmshare-sync-log v2 <generation>` for a log never
    /// compacted, `... <generation> after <lines> <offset>` for a compacted one.
    pub fn v2_line(generation: Generation, base: Base) -> String {
        if base == Base::START {
            return generation.header_line();
        }
        format!(
            "{V2_PREFIX}{generation} after {} {}\n",
            base.lines, base.offset
        )
    }
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
    #[error("sync log {path} starts with {found:?}: unsupported format (this tracker reads swarmshare sync logs v1 and v2)")]
    Version { path: PathBuf, found: String },
    #[error("sync log {path} is in the old format v1: it is upgraded at start when no other tracker runs on the data dir")]
    NeedsUpgrade { path: PathBuf },
    #[error(
        "sync log {path} is damaged at line {line} (byte offset {offset}): {reason}. \
         {context} Nothing was cut and no change is accepted. \
         See every bad line with `tracker <tracker_info> <n> --data-dir <dir> --verify-log`; \
         `--salvage-log` writes a new log without the unreadable lines, keeps the original \
         beside it and lists what it dropped"
    )]
    Damaged {
        path: PathBuf,
        line: u64,
        offset: u64,
        reason: String,
        context: &'static str,
    },
    #[error(
        "sync log {path} starts after entry {base} (the entries before it are in the snapshot \
         {snapshot}), but {why}. Restore that snapshot.db (or the whole data dir) from a backup"
    )]
    Snapshot {
        path: PathBuf,
        base: u64,
        snapshot: PathBuf,
        why: String,
    },
    #[error(
        "sync log {path} no longer holds what this tracker's cache applied: {why}. \
         Acknowledged lines may be missing; no change is accepted. Restore the log, or check it \
         with `--verify-log`; to accept the log as it is now, stop this tracker and delete its \
         tracker<N>.db (it is rebuilt from the log)"
    )]
    Changed { path: PathBuf, why: String },
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
    #[error(
        "sequence number {found} where {expected} belongs: a line before it is missing, \
         duplicated or out of order"
    )]
    Sequence { found: u64, expected: u64 },
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
    /// Written as `add_seeder`, or `add_partial_seeder` for a downloader that
    /// holds only some pieces.
    AddSeeder {
        group: String,
        name: String,
        token_hash: String,
        user: String,
        peer_addr: String,
        partial: bool,
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
                partial,
            } => (
                if *partial {
                    "add_partial_seeder"
                } else {
                    "add_seeder"
                },
                s(&[group, name, token_hash, user, peer_addr]),
            ),
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
            "add_seeder" | "add_partial_seeder" => AddSeeder {
                group: n(),
                name: n(),
                token_hash: n(),
                user: n(),
                peer_addr: n(),
                partial: op == "add_partial_seeder",
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
const OP_FIELDS: [(&str, usize); 13] = [
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
    ("add_partial_seeder", 5),
    ("stop_share", 3),
    ("heartbeat", 2),
];

/// One log entry: when, by which tracker, at whose request, what. Its position
/// in the log (`seq`) is not part of it: [`LogEntry::encode`] is given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Unix time in milliseconds when the tracker accepted the change.
    pub ms: u64,
    /// The tracker (1-based number) that appended the line.
    pub tracker: u32,
    /// The client's request id of an exactly-once command (opaque text), if any.
    /// An id of `-` cannot be told from none (as with session tokens on the wire).
    pub request_id: Option<String>,
    pub op: Op,
}

impl LogEntry {
    /// Encodes the entry as log line number `seq` (v2, see the module doc),
    /// newline included.
    pub fn encode(&self, seq: u64) -> String {
        let (name, fields) = self.op.to_fields();
        let request_id = match self.request_id.as_deref() {
            Some(id) => escape_field(id),
            None => NO_REQUEST_ID.to_string(),
        };
        let mut body = format!(
            "{seq} {} {} {request_id} {} ",
            self.ms,
            self.tracker,
            escape_field(name)
        );
        body.push_str(&encode_fields(&fields));
        if fields.is_empty() {
            body.pop();
        }
        framed(&body)
    }

    /// Parses one v2 line (its trailing newline, if any, ignored) into its
    /// sequence number and entry. Never panics.
    pub fn decode(line: &[u8]) -> Result<(u64, LogEntry), LineError> {
        let fields = checked_fields(line)?;
        if fields.len() < 5 {
            return Err(LineError::Malformed("fewer than 5 header fields".into()));
        }
        let mut it = fields.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let seq = number("sequence number", &next())?;
        let ms = number("time", &next())?;
        let tracker = next();
        let tracker = tracker
            .parse()
            .map_err(|_| LineError::Malformed(format!("bad tracker number {tracker:?}")))?;
        let request_id = Some(next()).filter(|id| id != NO_REQUEST_ID);
        let op = next();
        let op = Op::from_fields(&op, it.collect())?;
        let entry = LogEntry {
            ms,
            tracker,
            request_id,
            op,
        };
        Ok((seq, entry))
    }

    /// Parses a v2 line and returns it again as line number `seq`: the same bytes
    /// after the sequence number, a new checksum (how a Raft entry, a line numbered
    /// 0, becomes a line of this tracker's log; cheaper than encoding the entry).
    pub fn decode_renumbered(line: &[u8], seq: u64) -> Result<(String, LogEntry), LineError> {
        let (_, entry) = LogEntry::decode(line)?;
        // decode checked the checksum, the UTF-8 and the fields of the whole line.
        let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let after_seq = text
            .get(9..)
            .and_then(|body| body.find(' ').map(|at| &body[at..]))
            .ok_or(LineError::Malformed("no sequence number".into()))?;
        Ok((framed(&format!("{seq}{after_seq}")), entry))
    }

    /// Parses one version 1 line (`<crc32> <unix_ms> <tracker_no> <op> ...`).
    pub fn decode_v1(line: &[u8]) -> Result<LogEntry, LineError> {
        let fields = checked_fields(line)?;
        if fields.len() < 3 {
            return Err(LineError::Malformed("fewer than 3 header fields".into()));
        }
        let mut it = fields.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let ms = number("time", &next())?;
        let tracker = next();
        let tracker = tracker
            .parse()
            .map_err(|_| LineError::Malformed(format!("bad tracker number {tracker:?}")))?;
        let op = next();
        let op = Op::from_fields(&op, it.collect())?;
        Ok(LogEntry {
            ms,
            tracker,
            request_id: None,
            op,
        })
    }
}

fn number(what: &str, s: &str) -> Result<u64, LineError> {
    s.parse()
        .map_err(|_| LineError::Malformed(format!("bad {what} {s:?}")))
}

/// A checksum as it is written: exactly 8 lowercase hex digits. Lines are checked
/// against this one spelling, so no edit of the checksum field (an `a` made `A`)
/// leaves a line that still reads as valid.
fn crc_field(crc: u32) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((crc >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A line of `body`: its checksum, a space, the body, a newline (both versions).
fn framed(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{crc:08x} {body}\n")
}

/// The unescaped fields of a line whose checksum matches (the same in v1 and v2).
fn checked_fields(line: &[u8]) -> Result<Vec<String>, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let (crc, body) = text.split_once(' ').ok_or(LineError::NoChecksum)?;
    let computed = crc32fast::hash(body.as_bytes());
    if crc.as_bytes() != crc_field(computed) {
        return Err(LineError::Checksum {
            stored: crc.chars().take(16).collect(),
            computed,
        });
    }
    decode_fields(body).map_err(|e| LineError::Malformed(e.to_string()))
}

/// The sequence number of a line (without its newline) whose checksum matches,
/// without parsing the rest: the fast pass over lines applied before.
pub fn checked_seq(line: &[u8]) -> Option<u64> {
    let (crc, body) = (line.get(..8)?, line.get(9..)?);
    if line[8] != b' ' || crc != crc_field(crc32fast::hash(body)) {
        return None;
    }
    let end = body.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&body[..end]).ok()?.parse().ok()
}

/// Where reading stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The bytes from `offset` to the end hold no newline (a torn or in-progress write).
    Incomplete { offset: u64 },
    /// The line at `offset` is complete but invalid, or out of sequence.
    Bad { offset: u64, reason: LineError },
}

impl Stop {
    /// Where the line that stopped reading starts.
    pub fn offset(&self) -> u64 {
        match self {
            Stop::Incomplete { offset } | Stop::Bad { offset, .. } => *offset,
        }
    }
}

/// The result of reading the log from some offset.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Each valid entry with the offset of its line.
    pub entries: Vec<(u64, LogEntry)>,
    /// Offset just after the last valid line read.
    pub end: u64,
    /// The sequence number the next line must carry.
    pub next_seq: u64,
    /// Set when reading stopped at an incomplete, invalid or out-of-sequence line.
    pub stop: Option<Stop>,
}

/// How far a cache has applied the log; [`SyncLog::recover`] checks the log against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CachePos {
    /// The log generation the cache applied, `None` for a new cache.
    pub generation: Option<Generation>,
    /// Bytes of the log applied (0 = nothing).
    pub offset: u64,
    /// Entries applied.
    pub lines: u64,
}

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Length of the valid log after recovery.
    pub valid_len: u64,
    /// Set when a torn tail was cut off: its offset, why, and where it was saved.
    pub cut: Option<(u64, String, PathBuf)>,
    /// The cache holds another generation of the log (or one that no longer
    /// exists) and must be rebuilt from the log.
    pub rebuild_cache: bool,
}

/// What [`SyncLog::numbered_prefix`] found.
struct NumberedPrefix {
    /// Where the intact lines from the base end.
    end: u64,
    /// The number of the last intact line (the base's when none is).
    seq: u64,
    /// The first line that is not intact (its offset and why), if any.
    failure: Option<(u64, LineError)>,
}

/// The open log file.
#[derive(Debug)]
pub struct SyncLog {
    file: File,
    path: PathBuf,
    mode: FsyncMode,
    generation: Generation,
    /// Where the file starts in the history (compaction moves it on).
    base: Base,
    /// Bytes of the version line, newline included: file position of `base.offset`.
    header_len: u64,
    /// Device and inode of the file opened, to notice it being replaced.
    identity: (u64, u64),
}

/// Holds an `flock` on the log file until dropped. It holds a duplicate of the
/// file's descriptor (the lock belongs to the open file, shared by both), so it
/// does not borrow the [`SyncLog`]: the log may reopen a compacted file while
/// the old one stays locked.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock error leaves nothing to do.
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

/// Calls `each(offset, line)` for every complete line (without its newline)
/// of `file` starting in `from..to`, until it returns false; returns the offset
/// just after the last complete line passed (what follows it up to the end of
/// the file, if `to` is past it, has no newline). A line longer than [`MAX_LINE`]
/// is passed cut to `MAX_LINE + 1` bytes. Memory stays bounded.
pub fn scan_file_lines(
    file: &File,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> io::Result<u64> {
    let mut chunk = vec![0u8; (4 << 20).max(2 * MAX_LINE)];
    let mut pos = from; // file offset of chunk[0]
    let mut filled = 0;
    let mut skipping = false; // inside an over-long line already passed on
    while pos < to {
        let n = file.read_at(&mut chunk[filled..], pos + filled as u64)?;
        filled += n;
        let mut start = 0;
        while let Some(i) = chunk[start..filled].iter().position(|&b| b == b'\n') {
            let at = pos + start as u64;
            if at >= to {
                return Ok(at);
            }
            let passed_on = std::mem::take(&mut skipping);
            start += i + 1;
            if !passed_on && !each(at, &chunk[start - i - 1..start - 1]) {
                return Ok(pos + start as u64);
            }
        }
        if n == 0 {
            return Ok(pos + start as u64); // the rest has no newline
        }
        if start == 0 && filled > MAX_LINE {
            // An over-long line: pass its first bytes on, skip the rest.
            if !skipping && !each(pos, &chunk[..MAX_LINE + 1]) {
                return Ok(pos);
            }
            skipping = true;
            start = filled;
        }
        chunk.copy_within(start..filled, 0);
        filled -= start;
        pos += start as u64;
    }
    Ok(pos)
}

/// Reads a file's first line (at most `MAX_HEADER` bytes), without its newline,
/// and whether a newline ended it.
fn first_line(file: &File) -> io::Result<(Vec<u8>, bool)> {
    let mut head = vec![0u8; MAX_HEADER];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    match head.iter().position(|&b| b == b'\n') {
        Some(i) => {
            head.truncate(i);
            Ok((head, true))
        }
        None => Ok((head, false)),
    }
}

impl SyncLog {
    /// Opens (creating if needed) `<dir>/sync_log.txt`. An empty file, or one
    /// holding only a torn version line, gets a new v2 version line. A v1 log is
    /// refused with [`LogError::NeedsUpgrade`], a foreign file with
    /// [`LogError::Version`]. Takes the exclusive lock while it looks.
    pub fn open(dir: &Path, mode: FsyncMode) -> Result<SyncLog, LogError> {
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
        let meta = file.metadata().map_err(io_err)?;
        let mut log = SyncLog {
            file,
            path: path.clone(),
            mode,
            generation: Generation(0),
            base: Base::START,
            header_len: FIRST_ENTRY,
            identity: (meta.dev(), meta.ino()),
        };
        let _lock = log.lock_exclusive()?;
        let (generation, base, header_len) = log.read_or_write_header()?;
        drop(_lock);
        (log.generation, log.base, log.header_len) = (generation, base, header_len);
        Ok(log)
    }

    /// The generation and base named in the version line, and its length; writes
    /// a new v2 line into an empty file or over a torn version line. Needs the
    /// exclusive lock.
    fn read_or_write_header(&self) -> Result<(Generation, Base, u64), LogError> {
        let (head, whole) = first_line(&self.file).map_err(|e| self.io_err(e))?;
        match Header::parse(&head) {
            Some(Header::V2(g, base)) if whole => return Ok((g, base, head.len() as u64 + 1)),
            Some(Header::V1) if whole => {
                return Err(LogError::NeedsUpgrade {
                    path: self.path.clone(),
                })
            }
            _ => {}
        }
        let len = self.phys_len()?;
        let torn = !whole
            && len < FIRST_ENTRY
            && (V2_PREFIX.as_bytes().starts_with(&head) || head.starts_with(V2_PREFIX.as_bytes()));
        if len > 0 && !torn {
            let found = String::from_utf8_lossy(&head).chars().take(80).collect();
            return Err(LogError::Version {
                path: self.path.clone(),
                found,
            });
        }
        if len > 0 {
            log::warn!("{}: torn version line, rewriting it", self.path.display());
        }
        let generation = Generation::new();
        self.file.set_len(0).map_err(|e| self.io_err(e))?;
        (&self.file)
            .write_all(generation.header_line().as_bytes())
            .map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))?;
        Ok((generation, Base::START, FIRST_ENTRY))
    }

    /// The path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation named in the log's version line.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Where this file starts in the history ([`Base::START`] if never compacted).
    pub fn base(&self) -> Base {
        self.base
    }

    /// Logical offset of the file's first entry line (the base's offset).
    pub fn first_entry(&self) -> u64 {
        self.base.offset
    }

    /// File position of logical offset `at` (at least the base's offset).
    fn phys(&self, at: u64) -> u64 {
        at.saturating_sub(self.base.offset)
            .saturating_add(self.header_len)
    }

    /// Logical offset of file position `pos` (at least the version line's end).
    fn logical(&self, pos: u64) -> u64 {
        pos.saturating_sub(self.header_len) + self.base.offset
    }

    /// Whether the file at the log's path is no longer the one this opened
    /// (another tracker compacted the log, or an operator replaced it).
    pub fn replaced(&self) -> Result<bool, LogError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok((m.dev(), m.ino()) != self.identity),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Takes the lock `how` on the file now at the log's path: if another
    /// tracker compacted the log (renamed a new file over it), reopens it first,
    /// so no line is ever appended to or read from a replaced file. A file of
    /// another generation is [`LogError::Changed`].
    pub fn lock_current(&mut self, exclusive: bool) -> Result<LockGuard, LogError> {
        let how = match exclusive {
            true => FlockOperation::LockExclusive,
            false => FlockOperation::LockShared,
        };
        for _ in 0..100 {
            if self.replaced()? {
                self.reopen()?;
            }
            let guard = self.flock(how)?;
            if !self.replaced()? {
                return Ok(guard);
            }
        }
        Err(LogError::Changed {
            path: self.path.clone(),
            why: "it was replaced 100 times while this tracker tried to lock it".into(),
        })
    }

    /// Opens the file now at the log's path in place of this one; it must be
    /// of the same generation (a compaction keeps it).
    fn reopen(&mut self) -> Result<(), LogError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = std::fs::metadata(&self.path) {
            // Not created anew under a running tracker: that is for a start.
            return Err(LogError::Changed {
                path: self.path.clone(),
                why: format!("the file is gone ({e})"),
            });
        }
        let new = SyncLog::open(dir, self.mode)?;
        if new.generation != self.generation {
            return Err(LogError::Changed {
                path: self.path.clone(),
                why: format!(
                    "the file was replaced by one of generation {} (this tracker applied {})",
                    new.generation, self.generation
                ),
            });
        }
        log::info!(
            "{}: the log was compacted; it now starts after entry {}",
            self.path.display(),
            new.base.lines
        );
        *self = new;
        Ok(())
    }

    fn io_err(&self, source: io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn flock(&self, how: FlockOperation) -> Result<LockGuard, LogError> {
        let file = self.file.try_clone().map_err(|e| self.io_err(e))?;
        loop {
            match rustix::fs::flock(&file, how) {
                Ok(()) => return Ok(LockGuard { file }),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.io_err(e.into())),
            }
        }
    }

    /// Takes the exclusive lock (for appending or cutting a torn tail).
    pub fn lock_exclusive(&self) -> Result<LockGuard, LogError> {
        self.flock(FlockOperation::LockExclusive)
    }

    /// Takes the shared lock (for reading).
    pub fn lock_shared(&self) -> Result<LockGuard, LogError> {
        self.flock(FlockOperation::LockShared)
    }

    /// Logical offset of the end of the file (its length in bytes, for a log
    /// never compacted).
    pub fn file_len(&self) -> Result<u64, LogError> {
        Ok(self.logical(self.phys_len()?))
    }

    /// The file's length in bytes.
    fn phys_len(&self) -> Result<u64, LogError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io_err(e))
    }

    /// Checks the log against the cache at start-up and cuts a torn tail. With a
    /// cache of this generation, the applied part of the file must still be
    /// there, intact and numbered `base.lines + 1..=lines` (a fast pass: checksum
    /// and number only); only the tail after it is parsed. Damage anywhere is an
    /// error; nothing but a torn tail after everything applied is ever cut. A
    /// cache behind the base is not checked here: it is loaded from the snapshot
    /// by the catch-up. Takes the exclusive lock.
    pub fn recover(&self, cache: CachePos) -> Result<Recovery, LogError> {
        let _lock = self.lock_exclusive()?;
        let this_generation = cache.generation == Some(self.generation);
        let same = this_generation && cache.offset > 0 && cache.lines >= self.base.lines;
        let (mut from, mut seq) = (self.base.offset, self.base.lines + 1);
        if same {
            // Damage inside the applied part first: it names the line.
            self.verify_applied(cache.offset, cache.lines)?;
            (from, seq) = (cache.offset, cache.lines + 1);
        }
        let rebuild_cache = !this_generation && (cache.offset > 0 || cache.lines > 0);
        loop {
            let batch = self.read_from(from, seq, 16 << 20)?;
            (from, seq) = (batch.end, batch.next_seq);
            let stop = match batch.stop {
                None if batch.entries.is_empty() => {
                    return Ok(Recovery {
                        valid_len: from,
                        cut: None,
                        rebuild_cache,
                    })
                }
                None => continue,
                Some(stop) => stop,
            };
            let at = self.judge_stop(&stop)?;
            let reason = match stop {
                Stop::Incomplete { .. } => "incomplete last line".to_string(),
                Stop::Bad { reason, .. } => reason.to_string(),
            };
            let saved = self.cut_torn_tail(at, &reason)?;
            return Ok(Recovery {
                valid_len: at,
                cut: Some((at, reason, saved)),
                rebuild_cache,
            });
        }
    }

    /// The fast pass over the `lines` entries before `to` that the cache applied:
    /// each line's checksum and its number, not its fields (they were parsed when
    /// they were applied).
    fn verify_applied(&self, to: u64, lines: u64) -> Result<(), LogError> {
        let NumberedPrefix { seq, failure, .. } = self.numbered_prefix(to)?;
        if let Some((offset, reason)) = failure {
            return Err(self.damaged(
                offset,
                reason.to_string(),
                "The cache had applied this line, so it is not a torn append.",
            ));
        }
        self.check_position(to)?;
        if seq != lines {
            return Err(LogError::Changed {
                path: self.path.clone(),
                why: format!(
                    "the cache applied {lines} entries up to byte {to}, the log has {seq} there"
                ),
            });
        }
        Ok(())
    }

    /// [`scan_file_lines`] over this log.
    pub fn scan_lines(
        &self,
        from: u64,
        to: u64,
        each: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<u64, LogError> {
        let (from, to) = (self.phys(from), self.phys(to));
        let mut each = each;
        let end = scan_file_lines(&self.file, from, to, |at, line| {
            each(self.logical(at), line)
        })
        .map_err(|e| self.io_err(e))?;
        Ok(self.logical(end))
    }

    /// A [`LogError::Damaged`] for the line at logical `offset` (the error
    /// names its position in the file).
    pub fn damaged(&self, offset: u64, reason: String, context: &'static str) -> LogError {
        match self.line_number(offset) {
            Ok(line) => LogError::Damaged {
                path: self.path.clone(),
                line,
                offset: self.phys(offset),
                reason,
                context,
            },
            Err(e) => e,
        }
    }

    /// The 1-based line number in the file (the version line is line 1) of the
    /// line at logical `offset`.
    pub fn line_number(&self, offset: u64) -> Result<u64, LogError> {
        let offset = self.phys(offset);
        let mut newlines = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < offset {
            let want = buf.len().min((offset - pos) as usize);
            let n = self
                .file
                .read_at(&mut buf[..want], pos)
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                break;
            }
            newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            pos += n as u64;
        }
        Ok(newlines + 1)
    }

    /// For a running tracker and at start: `offset` (how far the cache applied
    /// this log) must still be a line start within the file, and the file at the
    /// log's path must be the one opened, of the same generation. Otherwise the
    /// log shrank or changed under the cache: [`LogError::Changed`].
    pub fn check_position(&self, offset: u64) -> Result<(), LogError> {
        let changed = |why: String| {
            Err(LogError::Changed {
                path: self.path.clone(),
                why,
            })
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {}
            Ok(_) => return changed("the file was replaced by another one".into()),
            Err(e) => return changed(format!("the file is gone ({e})")),
        }
        let (head, whole) = first_line(&self.file).map_err(|e| self.io_err(e))?;
        if !whole || Header::parse(&head) != Some(Header::V2(self.generation, self.base)) {
            let found = String::from_utf8_lossy(&head)
                .chars()
                .take(80)
                .collect::<String>();
            return changed(format!(
                "its first line is now {found:?}, not generation {}",
                self.generation
            ));
        }
        let len = self.file_len()?;
        if offset > len {
            return changed(format!(
                "the cache applied {offset} bytes but the file has only {len} (it shrank)"
            ));
        }
        if offset < self.base.offset {
            return changed(format!(
                "the cache applied {offset} bytes but the file starts at {}",
                self.base.offset
            ));
        }
        if offset > self.base.offset {
            let mut last = [0u8; 1];
            self.file
                .read_exact_at(&mut last, self.phys(offset) - 1)
                .map_err(|e| self.io_err(e))?;
            if last[0] != b'\n' {
                return changed(format!(
                    "byte offset {offset}, where the next line should start, is inside a line"
                ));
            }
        }
        Ok(())
    }

    /// Decides what a stop in reading is. A torn tail (an incomplete last line,
    /// or bad lines none of which is followed by a line that checks out) gives
    /// the offset to cut at; anything else is damage, an error naming the line.
    pub fn judge_stop(&self, stop: &Stop) -> Result<u64, LogError> {
        match stop {
            Stop::Incomplete { offset } => Ok(*offset),
            Stop::Bad {
                offset,
                reason: reason @ LineError::Sequence { .. },
            } => Err(self.damaged(
                *offset,
                reason.to_string(),
                "The line itself checks out: lines were deleted, duplicated or reordered.",
            )),
            Stop::Bad { offset, reason } => {
                if self.good_line_after(*offset)? {
                    Err(self.damaged(
                        *offset,
                        reason.to_string(),
                        "Good lines follow it, so it is not a torn append.",
                    ))
                } else {
                    Ok(*offset)
                }
            }
        }
    }

    /// Whether a complete line that checks out follows the line at `offset`.
    fn good_line_after(&self, offset: u64) -> Result<bool, LogError> {
        let mut found = false;
        let mut first = true;
        self.scan_lines(offset, u64::MAX, |_, line| {
            if std::mem::take(&mut first) {
                return true; // the bad line itself
            }
            found = checked_seq(line).is_some();
            !found
        })?;
        Ok(found)
    }

    /// Cuts the file at `at`, saving what is cut to `sync_log.txt.corrupt-<unix_ms>`.
    /// Only for a torn tail ([`SyncLog::judge_stop`]), or in raft mode for what
    /// follows the intact prefix ([`crate::replication::log_tail`]). Needs the
    /// exclusive lock.
    pub fn cut_torn_tail(&self, at: u64, why: &str) -> Result<PathBuf, LogError> {
        let mut saved = self.path.as_os_str().to_owned();
        saved.push(format!(".corrupt-{}", crate::unix_ms()));
        let saved = PathBuf::from(saved);
        let copy = || -> io::Result<()> {
            use std::io::{Seek, SeekFrom};
            let mut from = self.file.try_clone()?;
            from.seek(SeekFrom::Start(self.phys(at)))?;
            let mut to = File::create(&saved)?;
            io::copy(&mut from, &mut to)?;
            to.sync_all()
        };
        copy().map_err(io_err(&saved))?;
        self.file
            .set_len(self.phys(at))
            .map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))?;
        log::warn!(
            "{}: cut a torn tail at byte offset {at} ({why}); the cut bytes are saved in {}",
            self.path.display(),
            saved.display()
        );
        Ok(saved)
    }

    /// Bytes an unprivileged writer may still use on the log's file system.
    pub fn free_bytes(&self) -> Result<u64, LogError> {
        let st = rustix::fs::fstatvfs(&self.file).map_err(|e| self.io_err(e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Cuts the file back to `len` after a failed append of this tracker's own
    /// lines. Needs the exclusive lock.
    pub fn truncate(&self, len: u64) -> Result<(), LogError> {
        self.file
            .set_len(self.phys(len))
            .map_err(|e| self.io_err(e))?;
        self.file.sync_all().map_err(|e| self.io_err(e))
    }

    /// Reads complete, valid lines starting at `offset` (a line start), the first
    /// of which must carry number `seq`, stopping after about `max_bytes`, at the
    /// end of the file, or at the first incomplete, invalid or out-of-sequence
    /// line. Needs a lock to give a consistent view.
    pub fn read_from(
        &self,
        offset: u64,
        seq: u64,
        max_bytes: usize,
    ) -> Result<ReadBatch, LogError> {
        let len = self.file_len()?;
        let mut batch = ReadBatch {
            end: offset,
            next_seq: seq,
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
                let at = pos + start as u64;
                let decoded =
                    LogEntry::decode(&buf[start..start + i + 1]).and_then(|(s, e)| {
                        match s == batch.next_seq {
                            true => Ok(e),
                            false => Err(LineError::Sequence {
                                found: s,
                                expected: batch.next_seq,
                            }),
                        }
                    });
                match decoded {
                    Ok(entry) => batch.entries.push((at, entry)),
                    Err(reason) => {
                        batch.stop = Some(Stop::Bad { offset: at, reason });
                        return Ok(batch);
                    }
                }
                start += i + 1;
                batch.end = pos + start as u64;
                batch.next_seq += 1;
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
            let n = if read_to >= len {
                0
            } else {
                let want = chunk.len().min((len - read_to) as usize);
                self.file
                    .read_at(&mut chunk[..want], self.phys(read_to))
                    .map_err(|e| self.io_err(e))?
            };
            if n == 0 {
                // The end (or the file shrank under us): report what we have.
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
                self.append_unsynced(lines)?;
                self.sync()
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

    /// Appends encoded lines at the end of the file with one write and no fsync:
    /// raft mode's apply, whose entries are already durable in Raft's own log; a
    /// tail lost with the OS is written again from there at start
    /// ([`crate::replication::log_tail`]). Needs the exclusive lock.
    pub fn append_unsynced(&self, lines: &[String]) -> Result<(), LogError> {
        (&self.file)
            .write_all(lines.concat().as_bytes())
            .map_err(|e| self.io_err(e))
    }

    /// The longest run of intact lines from the base, each checked by its checksum
    /// and numbered in order (the fast pass: no fields parsed): where it ends and
    /// the number of its last line (the base's when no line is intact).
    pub fn intact_prefix(&self) -> Result<(u64, u64), LogError> {
        let NumberedPrefix { end, seq, .. } = self.numbered_prefix(u64::MAX)?;
        Ok((end, seq))
    }

    /// The fast pass from the base up to `to`: each line's checksum and number,
    /// not its fields.
    fn numbered_prefix(&self, to: u64) -> Result<NumberedPrefix, LogError> {
        let (mut end, mut seq) = (self.base.offset, self.base.lines);
        let mut failure = None;
        self.scan_lines(self.base.offset, to, |offset, line| {
            let reason = match checked_seq(line) {
                Some(s) if s == seq + 1 => {
                    (end, seq) = (offset + line.len() as u64 + 1, s);
                    return true;
                }
                Some(found) => LineError::Sequence {
                    found,
                    expected: seq + 1,
                },
                None => LogEntry::decode(line)
                    .err()
                    .unwrap_or(LineError::NoChecksum),
            };
            failure = Some((offset, reason));
            false
        })?;
        Ok(NumberedPrefix { end, seq, failure })
    }

    /// Makes what was appended durable (fsync).
    pub fn sync(&self) -> Result<(), LogError> {
        self.file.sync_data().map_err(|e| self.io_err(e))
    }

    /// Compaction, step 2: writes `sync_log.txt.compact-tmp`, a log of this
    /// generation that starts after `base` (a snapshot covers everything before
    /// it) and holds this file's bytes from `base.offset` to the end, and makes
    /// it durable. `base` must be a line start of this file whose line (if any)
    /// carries number `base.lines + 1`. Needs the exclusive lock.
    pub fn write_compacted(&self, base: Base) -> Result<PathBuf, LogError> {
        self.check_position(base.offset)?;
        let first = self.read_from(base.offset, base.lines + 1, 1)?;
        if let Some(Stop::Bad {
            reason: reason @ LineError::Sequence { .. },
            ..
        }) = &first.stop
        {
            return Err(self.damaged(base.offset, reason.to_string(), "Compaction stopped."));
        }
        let tmp = self.path.with_file_name(format!("{LOG_FILE}.compact-tmp"));
        let write = || -> io::Result<()> {
            use std::io::{Seek, SeekFrom};
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            to.write_all(Header::v2_line(self.generation, base).as_bytes())?;
            let mut from = self.file.try_clone()?;
            from.seek(SeekFrom::Start(self.phys(base.offset)))?;
            io::copy(&mut from, &mut to)?;
            to.sync_all()
        };
        write().map_err(io_err(&tmp))?;
        Ok(tmp)
    }

    /// Compaction, step 3: renames the file [`SyncLog::write_compacted`] wrote
    /// over the log, makes the rename durable and returns the new file opened.
    /// The history before the base is dropped with the old file. Other trackers
    /// notice the new file ([`SyncLog::lock_current`]). Needs the exclusive lock,
    /// kept on the old file until the caller drops it.
    pub fn install_compacted(&self, tmp: &Path) -> Result<SyncLog, LogError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::rename(tmp, &self.path).map_err(|e| self.io_err(e))?;
        sync_dir(dir).map_err(|e| self.io_err(e))?;
        SyncLog::open(dir, self.mode)
    }
}

/// The logical offset of the end of the log file at `path` (its length, for a
/// log never compacted), read without a lock; 0 if it cannot be read.
pub fn end_offset(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    let len = file.metadata().map_or(0, |m| m.len());
    match first_line(&file) {
        Ok((head, true)) => match Header::parse(&head) {
            Some(Header::V2(_, base)) => (len + base.offset).saturating_sub(head.len() as u64 + 1),
            _ => len,
        },
        _ => len,
    }
}

/// Makes renames in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Turns an I/O error on `path` into a [`LogError::Io`] (for `map_err`).
pub fn io_err(path: &Path) -> impl Fn(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Op) -> LogEntry {
        LogEntry {
            ms: 1_700_000_000_123,
            tracker: 2,
            request_id: None,
            op,
        }
    }

    fn sample() -> Vec<LogEntry> {
        vec![
            entry(Op::CreateUser {
                user: "ünï user 🦀".into(),
                password_hash: "$argon2id$v=19$m=8192,t=1,p=1$abc$def".into(),
            }),
            LogEntry {
                request_id: Some("c1 r 7".into()),
                ..entry(Op::CreateGroup {
                    group: "".into(),
                    owner: "a\\b\nc".into(),
                })
            },
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
            LogEntry {
                request_id: Some(String::new()),
                ..entry(Op::Heartbeat {
                    token_hash: "ab".into(),
                    peer_addr: "[::1]:80".into(),
                })
            },
        ]
    }

    fn lines() -> Vec<String> {
        sample()
            .iter()
            .enumerate()
            .map(|(i, e)| e.encode(i as u64 + 1))
            .collect()
    }

    /// A log in a temp dir holding the sample lines; returns it with the offset
    /// of each line and the path.
    fn sample_log() -> (tempfile::TempDir, SyncLog, Vec<u64>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        log.append(&lines()).unwrap();
        let mut at = FIRST_ENTRY;
        let offsets = lines()
            .iter()
            .map(|l| {
                at += l.len() as u64;
                at - l.len() as u64
            })
            .collect();
        let path = dir.path().join(LOG_FILE);
        (dir, log, offsets, path)
    }

    fn cache(log: &SyncLog, offset: u64, lines: u64) -> CachePos {
        CachePos {
            generation: Some(log.generation()),
            offset,
            lines,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for (i, e) in sample().into_iter().enumerate() {
            let line = e.encode(i as u64 + 7);
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(
                LogEntry::decode(line.as_bytes()).unwrap(),
                (i as u64 + 7, e)
            );
            assert_eq!(checked_seq(line.trim_end().as_bytes()), Some(i as u64 + 7));
        }
        let line = sample()[0].encode(1);
        assert!(line.split(' ').nth(4) == Some(NO_REQUEST_ID), "{line}");
    }

    #[test]
    fn version_1_lines_still_decode() {
        let body = "1700000000123 2 create_group g o";
        let line = format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()));
        let e = LogEntry::decode_v1(line.as_bytes()).unwrap();
        assert_eq!(e.tracker, 2);
        assert_eq!(e.request_id, None);
        assert!(LogEntry::decode(line.as_bytes()).is_err(), "v1 is not v2");
    }

    #[test]
    fn corrupt_lines_are_rejected() {
        let line = sample()[0].encode(1);
        let mut bytes = line.clone().into_bytes();
        bytes[12] ^= 0x01;
        assert!(matches!(
            LogEntry::decode(&bytes),
            Err(LineError::Checksum { .. } | LineError::NotUtf8)
        ));
        assert_eq!(checked_seq(&bytes[..bytes.len() - 1]), None);
        // The checksum has one spelling: upper-case hex is an edit, not the same line.
        let mut upper = line.clone().into_bytes();
        let at = upper[..8].iter().position(|b| b.is_ascii_lowercase());
        let body = "1 1 1 - create_group g o";
        let crc = format!("{:08x}", crc32fast::hash(body.as_bytes()));
        let shouted = format!("{} {body}\n", crc.to_ascii_uppercase());
        if crc != crc.to_ascii_uppercase() {
            assert!(LogEntry::decode(shouted.as_bytes()).is_err(), "{shouted}");
            assert_eq!(checked_seq(shouted.trim_end().as_bytes()), None);
        }
        if let Some(i) = at {
            upper[i] = upper[i].to_ascii_uppercase();
            assert!(LogEntry::decode(&upper).is_err());
        }
        assert!(Generation::parse("00000000000000AB").is_none());
        assert!(Generation::parse("00000000000000ab").is_some());
        assert!(LogEntry::decode(b"").is_err());
        assert!(LogEntry::decode(b"\xff\xff").is_err());
        assert!(LogEntry::decode(b"zzzzzzzz 1 2 login").is_err());
        let body = "1 1 1 - nosuchop x";
        let forged = format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(
            LogEntry::decode(forged.as_bytes()),
            Err(LineError::UnknownOp("nosuchop".into()))
        );
    }

    #[test]
    fn reading_checks_the_sequence() {
        let (_dir, log, offsets, _) = sample_log();
        let all = log.read_from(FIRST_ENTRY, 1, usize::MAX).unwrap();
        assert_eq!(all.entries.len(), 4);
        assert_eq!(all.next_seq, 5);
        assert!(all.stop.is_none());
        assert_eq!(all.entries[1].0, offsets[1]);
        // Read from the second line expecting the wrong number.
        let wrong = log.read_from(offsets[1], 3, usize::MAX).unwrap();
        assert!(wrong.entries.is_empty());
        assert_eq!(
            wrong.stop,
            Some(Stop::Bad {
                offset: offsets[1],
                reason: LineError::Sequence {
                    found: 2,
                    expected: 3
                }
            })
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_saved() {
        let (dir, log, offsets, path) = sample_log();
        let full = log.file_len().unwrap();
        drop(log);
        // An incomplete last line.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 5).unwrap();
        drop(f);
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let rec = log.recover(cache(&log, offsets[1], 1)).unwrap();
        assert_eq!(rec.valid_len, offsets[3]);
        let (at, reason, saved) = rec.cut.unwrap();
        assert_eq!((at, reason.as_str()), (offsets[3], "incomplete last line"));
        assert_eq!(
            std::fs::read(saved).unwrap().len() as u64,
            full - 5 - offsets[3]
        );
        assert_eq!(log.file_len().unwrap(), offsets[3]);
        // A complete but bad last line (nothing good after it) is torn as well.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[2] as usize + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let rec = log.recover(cache(&log, offsets[1], 1)).unwrap();
        assert_eq!(rec.valid_len, offsets[2]);
        assert!(!rec.rebuild_cache);
    }

    #[test]
    fn a_bad_line_with_good_lines_after_it_is_damage_and_nothing_is_cut() {
        let (dir, log, offsets, path) = sample_log();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] as usize + 20] ^= 0x02;
        std::fs::write(&path, &bytes).unwrap();
        for applied in [(0, 0), (offsets[1], 1), (offsets[3], 3)] {
            let err = log.recover(cache(&log, applied.0, applied.1)).unwrap_err();
            match &err {
                LogError::Damaged { line, offset, .. } => {
                    assert_eq!((*line, *offset), (3, offsets[1]), "{err}")
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("--verify-log"), "{err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "the file is untouched"
            );
        }
        drop(log);
        let _ = dir;
    }

    #[test]
    fn a_bad_last_line_the_cache_applied_is_damage() {
        let (_dir, log, offsets, path) = sample_log();
        let full = log.file_len().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[3] as usize + 20] ^= 0x02;
        std::fs::write(&path, &bytes).unwrap();
        let err = log.recover(cache(&log, full, 4)).unwrap_err();
        assert!(matches!(err, LogError::Damaged { line: 5, .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    /// Rewrites the log's entry lines in the given order (indexes into lines()).
    fn rewrite(path: &Path, order: &[usize]) -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut all: Vec<&str> = text.split_inclusive('\n').collect();
        let head = all.remove(0);
        let mut out = head.to_string();
        for &i in order {
            out.push_str(all[i]);
        }
        std::fs::write(path, &out).unwrap();
        out.into_bytes()
    }

    #[test]
    fn deleted_duplicated_and_swapped_lines_are_detected() {
        for (order, line, found, expected) in [
            (vec![0, 2, 3], 3, 3, 2),       // the second line deleted
            (vec![0, 1, 1, 2, 3], 4, 2, 3), // the second line twice
            (vec![0, 2, 1, 3], 3, 3, 2),    // the second and third swapped
        ] {
            let (dir, log, _, path) = sample_log();
            let bytes = rewrite(&path, &order);
            let err = log.recover(cache(&log, 0, 0)).unwrap_err();
            match &err {
                LogError::Damaged {
                    line: l, reason, ..
                } => {
                    assert_eq!(*l, line, "{err}");
                    let want = LineError::Sequence { found, expected }.to_string();
                    assert_eq!(reason, &want);
                }
                other => panic!("{order:?}: {other}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            drop((dir, log));
        }
    }

    #[test]
    fn a_log_that_shrank_or_changed_under_the_cache_is_refused() {
        let (dir, log, offsets, path) = sample_log();
        let full = log.file_len().unwrap();
        // Cut at a line start, before what the cache applied.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(offsets[2]).unwrap();
        let err = log.check_position(full).unwrap_err();
        assert!(err.to_string().contains("it shrank"), "{err}");
        assert!(matches!(
            log.recover(cache(&log, full, 4)),
            Err(LogError::Changed { .. })
        ));
        // The cache's offset inside a line.
        assert!(log.check_position(offsets[1] + 3).is_err());
        assert!(log.check_position(offsets[1]).is_ok());
        // The right offset but a wrong line count: a line before it vanished.
        assert!(matches!(
            log.recover(cache(&log, offsets[2], 3)),
            Err(LogError::Changed { .. })
        ));
        // Another generation of the log: the cache is rebuilt, not checked.
        let other = CachePos {
            generation: Some(Generation(7)),
            offset: full,
            lines: 4,
        };
        assert!(log.recover(other).unwrap().rebuild_cache);
        // The file replaced by another one.
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        let fresh = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        assert_ne!(fresh.generation(), log.generation());
        let err = log.check_position(offsets[1]).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
    }

    #[test]
    fn foreign_and_old_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), "hello world\n").unwrap();
        assert!(matches!(
            SyncLog::open(dir.path(), FsyncMode::Batch),
            Err(LogError::Version { .. })
        ));
        std::fs::write(dir.path().join(LOG_FILE), format!("{V1_LINE}\n")).unwrap();
        assert!(matches!(
            SyncLog::open(dir.path(), FsyncMode::Batch),
            Err(LogError::NeedsUpgrade { .. })
        ));
        // A torn version line is rewritten.
        std::fs::write(dir.path().join(LOG_FILE), "swarmsh").unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        assert_eq!(log.file_len().unwrap(), FIRST_ENTRY);
        let again = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        assert_eq!(again.generation(), log.generation());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = LogEntry::decode(&bytes);
            let _ = LogEntry::decode_v1(&bytes);
            let _ = checked_seq(&bytes);
        }
    }
}
