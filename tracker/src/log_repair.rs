//! Whole-log passes over `sync_log.txt` that an operator runs, or start-up runs
//! once: [`verify`] every line (`tracker ... --verify-log`), [`salvage`] a damaged
//! log into a new generation (`--salvage-log`), and [`upgrade_v1`] a version 1 log.
//!
//! Salvage and upgrade never edit the log in place: they write the new log to a
//! temporary file, make it durable, keep the original under a second name (a hard
//! link: `sync_log.txt.damaged-<ms>` or `sync_log.txt.v1-<ms>`) and only then
//! rename the new file over `sync_log.txt`, so a crash at any point leaves either
//! the old log or the new one in place, and the original is never lost. Both
//! write a new generation, so every tracker's cache is rebuilt from the new log
//! at its next start (the offsets of the old log mean nothing in the new one).
//! Both must run while no tracker runs on the data dir (the caller checks).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sync_log::{
    io_err, scan_file_lines, sync_dir, Base, Generation, Header, LineError, LogEntry, LogError,
    FIRST_ENTRY, LOG_FILE, MAGIC,
};

/// One line that does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1-based line number in the file (the version line is line 1).
    pub line: u64,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// What is wrong with it.
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} (byte offset {}): {}",
            self.line, self.offset, self.what
        )
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub header: Header,
    /// Entries that check out.
    pub good: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Every line that does not check out, in file order.
    pub findings: Vec<Finding>,
}

/// One complete entry line read by [`read_lines`].
struct ReadLine {
    line: u64,
    offset: u64,
    /// The entry and its sequence number (`None` in a v1 log), or why not.
    decoded: Result<(Option<u64>, LogEntry), LineError>,
    raw: Vec<u8>,
}

/// Reads the version line of the log at `path`.
fn read_header(path: &Path, file: &File) -> Result<Header, LogError> {
    let mut head = Vec::new();
    scan_file_lines(file, 0, 1, |_, line| {
        head = line.to_vec();
        false
    })
    .map_err(io_err(path))?;
    Header::parse(&head).ok_or_else(|| LogError::Version {
        path: path.to_path_buf(),
        found: String::from_utf8_lossy(&head).chars().take(80).collect(),
    })
}

/// What [`read_lines`] saw besides the lines.
struct Scan {
    header: Header,
    /// An incomplete last line: its line number and offset.
    incomplete: Option<(u64, u64)>,
    /// Bytes in the file.
    bytes: u64,
}

/// Calls `each` for every complete entry line, decoded by the log's version.
fn read_lines(path: &Path, file: &File, mut each: impl FnMut(ReadLine)) -> Result<Scan, LogError> {
    let header = read_header(path, file)?;
    let first = header_len(file, path)?;
    let mut line = 1;
    let end = scan_file_lines(file, first, u64::MAX, |offset, raw| {
        line += 1;
        let decoded = match header {
            Header::V1 => LogEntry::decode_v1(raw).map(|e| (None, e)),
            Header::V2(..) => LogEntry::decode(raw).map(|(s, e)| (Some(s), e)),
        };
        each(ReadLine {
            line,
            offset,
            decoded,
            raw: raw.to_vec(),
        });
        true
    })
    .map_err(io_err(path))?;
    let bytes = file.metadata().map_err(io_err(path))?.len();
    Ok(Scan {
        header,
        incomplete: (end < bytes).then_some((line + 1, end)),
        bytes,
    })
}

/// Where the log at `path` starts in the history ([`Base::START`] for v1).
fn base_of(path: &Path, file: &File) -> Result<Base, LogError> {
    Ok(match read_header(path, file)? {
        Header::V2(_, base) => base,
        Header::V1 => Base::START,
    })
}

/// Offset just after the version line.
fn header_len(file: &File, path: &Path) -> Result<u64, LogError> {
    let mut end = FIRST_ENTRY;
    scan_file_lines(file, 0, 1, |_, line| {
        end = line.len() as u64 + 1;
        false
    })
    .map_err(io_err(path))?;
    Ok(end)
}

/// Checks every line of the log in `dir` (checksum, fields and, in v2, the
/// sequence numbers) under a shared lock, so it can run beside live trackers.
/// Reads only; memory stays bounded however long the log is.
pub fn verify(dir: &Path) -> Result<Verification, LogError> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .map_err(|e| io_err(&path)(e.into()))?;
    let mut findings = Vec::new();
    let mut good = 0;
    let mut expect = SeqCheck {
        last: base_of(&path, &file)?.lines,
        bad_since: 0,
    };
    let scan = read_lines(&path, &file, |l| match l.decoded {
        Ok((seq, _)) => {
            good += 1;
            if let Some(what) = seq.and_then(|s| expect.good(s)) {
                findings.push(finding(l.line, l.offset, what));
            }
        }
        Err(e) => {
            expect.bad();
            findings.push(finding(l.line, l.offset, e.to_string()));
        }
    })?;
    if let Some((line, offset)) = scan.incomplete {
        findings.push(Finding {
            line,
            offset,
            what: "incomplete last line (an append that did not finish; a tracker cuts it at \
                   start and saves it aside)"
                .into(),
        });
    }
    Ok(Verification {
        header: scan.header,
        good,
        bytes: scan.bytes,
        findings,
    })
}

fn finding(line: u64, offset: u64, what: String) -> Finding {
    Finding { line, offset, what }
}

/// Follows sequence numbers through a log with bad lines in it: after `k` bad
/// lines the next good one may be `k` numbers further on.
#[derive(Debug, Default)]
struct SeqCheck {
    last: u64,
    bad_since: u64,
}

impl SeqCheck {
    /// A good line numbered `seq`: what is wrong with its number, if anything.
    fn good(&mut self, seq: u64) -> Option<String> {
        let lo = self.last + 1;
        let hi = lo + self.bad_since;
        let wrong = (seq < lo || seq > hi).then(|| {
            LineError::Sequence {
                found: seq,
                expected: lo,
            }
            .to_string()
        });
        self.last = seq;
        self.bad_since = 0;
        wrong
    }

    fn bad(&mut self) {
        self.bad_since += 1;
    }
}

/// What [`salvage`] did.
#[derive(Debug, Clone)]
pub struct Salvage {
    /// The original log, kept under this name.
    pub original: PathBuf,
    /// The report listing everything dropped or moved.
    pub report: PathBuf,
    pub generation: Generation,
    /// Entries written to the new log.
    pub kept: u64,
    /// Lines (and an incomplete tail) left out, each with why.
    pub dropped: Vec<Finding>,
    /// Other remarks: lines put back in order, numbers missing.
    pub notes: Vec<String>,
}

/// Writes a new generation of the log in `dir` holding every entry that can be
/// read (checksum and fields check out), in the order of their sequence numbers
/// and renumbered from 1, and drops only what cannot be read: unreadable lines,
/// an incomplete last line, and exact repeats of an entry already kept (same
/// sequence number, same content). The original stays as
/// `sync_log.txt.damaged-<ms>`; `sync_log.txt.salvage-<ms>.txt` lists every
/// dropped line (number, offset, reason, its bytes) and every other change.
/// Reads a v1 log too (its entries are kept in file order). Run with no tracker
/// running on `dir`; every cache is rebuilt from the new log at its next start.
pub fn salvage(dir: &Path) -> Result<Salvage, LogError> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(&path)(e.into()))?;
    let mut kept: Vec<Kept> = Vec::new();
    let mut dropped = Vec::new();
    let scan = read_lines(&path, &file, |l| match l.decoded {
        Ok((seq, entry)) => kept.push(Kept {
            at: finding(l.line, l.offset, String::new()),
            seq,
            entry,
            raw: l.raw,
        }),
        Err(e) => dropped.push((finding(l.line, l.offset, e.to_string()), l.raw)),
    })?;
    if let Some((line, offset)) = scan.incomplete {
        let mut tail = Vec::new();
        File::open(&path)
            .and_then(|mut f| {
                use std::io::{Read, Seek, SeekFrom};
                f.seek(SeekFrom::Start(offset))?;
                f.take(4096).read_to_end(&mut tail)
            })
            .map_err(io_err(&path))?;
        let what = "incomplete last line".to_string();
        dropped.push((Finding { line, offset, what }, tail));
    }
    let mut notes = order_by_seq(&mut kept, &mut dropped);
    dropped.sort_by_key(|(f, _)| f.offset);
    let base = base_of(&path, &file)?;
    notes.extend(missing_numbers(&kept, base));
    let ms = crate::unix_ms();
    let generation = Generation::new();
    if base != Base::START {
        // The snapshot holds the history before the base: it names the new
        // generation first (a crash before the log's rename: run salvage again).
        crate::snapshot::restamp(dir, base, generation)?;
    }
    let entries = kept.iter().map(|k| &k.entry);
    let original = replace_log(dir, generation, base, entries, &format!("damaged-{ms}"))?;
    let report = dir.join(format!("{LOG_FILE}.salvage-{ms}.txt"));
    let out = Salvage {
        original,
        report: report.clone(),
        generation,
        kept: kept.len() as u64,
        dropped: dropped.iter().map(|(f, _)| f.clone()).collect(),
        notes,
    };
    write_report(&report, &out, &dropped).map_err(io_err(&report))?;
    Ok(out)
}

/// An entry salvage keeps: where it was, its number (v2) and the line's bytes.
struct Kept {
    at: Finding,
    seq: Option<u64>,
    entry: LogEntry,
    raw: Vec<u8>,
}

/// Sorts v2 entries by sequence number (stable) and moves exact repeats to
/// `dropped`; returns a note for each line that moved.
fn order_by_seq(kept: &mut Vec<Kept>, dropped: &mut Vec<(Finding, Vec<u8>)>) -> Vec<String> {
    let mut notes = Vec::new();
    let before: Vec<u64> = kept.iter().map(|k| k.at.line).collect();
    kept.sort_by_key(|k| k.seq.unwrap_or(0));
    for (k, was) in kept.iter().zip(before) {
        if k.at.line != was {
            notes.push(format!(
                "line {} (sequence number {}) put back in sequence order",
                k.at.line,
                k.seq.unwrap_or(0)
            ));
        }
    }
    let mut out: Vec<Kept> = Vec::with_capacity(kept.len());
    for mut k in kept.drain(..) {
        match out.last() {
            Some(prev) if k.seq.is_some() && prev.seq == k.seq && prev.entry == k.entry => {
                k.at.what = format!(
                    "a repeat of line {} (the same entry, sequence number {})",
                    prev.at.line,
                    k.seq.unwrap_or(0)
                );
                dropped.push((k.at, k.raw));
            }
            _ => out.push(k),
        }
    }
    *kept = out;
    notes
}

/// Notes on sequence numbers no kept line carries (v2 only).
fn missing_numbers(kept: &[Kept], base: Base) -> Vec<String> {
    let mut notes = Vec::new();
    let mut next = base.lines + 1;
    for k in kept {
        let Some(seq) = k.seq else { continue };
        if seq > next {
            notes.push(format!(
                "sequence numbers {next}..={} are missing (lines dropped here, or deleted earlier)",
                seq - 1
            ));
        } else if seq < next {
            notes.push(format!(
                "sequence number {seq} occurs again with other content (line {}): both kept",
                k.at.line
            ));
        }
        next = next.max(seq + 1);
    }
    notes
}

fn write_report(path: &Path, s: &Salvage, dropped: &[(Finding, Vec<u8>)]) -> io::Result<()> {
    let mut out = String::new();
    out.push_str(&format!(
        "{MAGIC} salvage report\noriginal log kept as: {}\nnew log: generation {}, {} entries\n\
         every tracker's cache (tracker<N>.db) holds the old generation and is rebuilt from the \
         new log at its next start\n\ndropped ({}):\n",
        s.original.display(),
        s.generation,
        s.kept,
        dropped.len()
    ));
    for (f, raw) in dropped {
        out.push_str(&format!("{f}\n  bytes: {}\n", escape_bytes(raw)));
    }
    out.push_str(&format!("\nother changes ({}):\n", s.notes.len()));
    for n in &s.notes {
        out.push_str(&format!("{n}\n"));
    }
    let mut file = File::create(path)?;
    file.write_all(out.as_bytes())?;
    file.sync_all()
}

/// Bytes as printable ASCII, everything else as `\xNN`.
fn escape_bytes(raw: &[u8]) -> String {
    raw.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// Writes `entries` as a new log of `generation` starting after `base`
/// (numbered from `base.lines + 1`) beside the log in `dir`, makes it durable,
/// keeps the current log as `sync_log.txt.<suffix>` and renames the new one
/// over it. Returns the kept name.
pub fn replace_log<'a>(
    dir: &Path,
    generation: Generation,
    base: Base,
    entries: impl Iterator<Item = &'a LogEntry>,
    suffix: &str,
) -> Result<PathBuf, LogError> {
    let path = dir.join(LOG_FILE);
    let tmp = dir.join(format!("{LOG_FILE}.new-{}", crate::unix_ms()));
    let kept = dir.join(format!("{LOG_FILE}.{suffix}"));
    let write = || -> io::Result<()> {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut out = io::BufWriter::new(&file);
        out.write_all(Header::v2_line(generation, base).as_bytes())?;
        for (i, e) in entries.enumerate() {
            out.write_all(e.encode(base.lines + i as u64 + 1).as_bytes())?;
        }
        out.flush()?;
        drop(out);
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    std::fs::hard_link(&path, &kept).map_err(io_err(&kept))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(kept)
}

/// What [`upgrade_v1`] did.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The v1 log, kept under this name.
    pub original: PathBuf,
    pub generation: Generation,
    pub entries: u64,
    /// A torn tail left out (its offset), as a v2 log start would cut it.
    pub torn_tail: Option<u64>,
}

/// Rewrites a v1 log in `dir` as v2: verifies every v1 line first, refuses a
/// damaged one ([`LogError::Damaged`]: salvage it instead), leaves out a torn
/// tail, numbers the entries from 1 in a new generation and keeps the v1 file
/// as `sync_log.txt.v1-<ms>`. Run with no tracker running on `dir`.
pub fn upgrade_v1(dir: &Path) -> Result<Upgrade, LogError> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(&path)(e.into()))?;
    let mut entries = Vec::new();
    let mut first_bad: Option<(u64, u64, String)> = None;
    let mut damaged = None;
    let scan = read_lines(&path, &file, |l| match l.decoded {
        Ok((_, e)) if first_bad.is_none() => entries.push(e),
        Ok(_) => damaged = damaged.take().or(first_bad.clone()),
        Err(e) => {
            first_bad.get_or_insert((l.line, l.offset, e.to_string()));
        }
    })?;
    if scan.header != Header::V1 {
        return Err(LogError::Version {
            path,
            found: format!("{:?}", scan.header),
        });
    }
    if let Some((line, offset, reason)) = damaged {
        return Err(LogError::Damaged {
            path,
            line,
            offset,
            reason,
            context: "Good lines follow it, so the v1 log cannot be upgraded as it is.",
        });
    }
    let torn_tail = first_bad.map(|b| b.1).or(scan.incomplete.map(|i| i.1));
    let generation = Generation::new();
    let ms = crate::unix_ms();
    let original = replace_log(
        dir,
        generation,
        Base::START,
        entries.iter(),
        &format!("v1-{ms}"),
    )?;
    Ok(Upgrade {
        original,
        generation,
        entries: entries.len() as u64,
        torn_tail,
    })
}
