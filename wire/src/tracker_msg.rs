//! The tracker wire protocol: line-oriented text over TCP.
//!
//! # Requests
//!
//! One request is one line:
//!
//! ```text
//! [@<request_id>] <token> <command> [<arg> ...]\n
//! ```
//!
//! - `request_id` (optional, with an `@` before it) names one command of one
//!   client for exactly-once delivery: `<client>:<seq>`, where `client` is a
//!   random id the client picks at start (16 lowercase hex characters) and `seq`
//!   counts its requests. The client sends one with every command that changes
//!   state (the `mutates` column of [`crate::command`]) and the same one again when
//!   it resends that command to another tracker after a failover. A tracker that
//!   already applied a change with this id answers with that change's original
//!   outcome instead of making it again (see the tracker's `dedup` module). At
//!   most [`MAX_REQUEST_ID`] bytes, no control characters. A request without the
//!   field (the original form) works as before, only without that guarantee.
//! - `token` is the session token (32 lowercase hex characters) or `-` before login.
//! - Fields are separated by exactly one space. Every field (token, command and
//!   arguments) is escaped with [`escape_field`]: `\\` is a backslash, `\s` a space,
//!   `\n` a newline, `\r` a carriage return, `\t` a tab, and a field that is exactly
//!   `\0` is the empty string. Every other byte stands for itself, so any UTF-8
//!   (file names with spaces, accents, emoji) travels losslessly.
//! - A request line longer than [`MAX_REQUEST_LINE`] bytes is refused with an
//!   error; the receiver discards it up to the next newline without buffering it.
//!
//! # Replies
//!
//! ```text
//! OK [<field> ...]\n          success; head fields (e.g. the token after login)
//! - <field> [<field> ...]\n   zero or more data rows, each prefixed by "- "
//! END_OF_REPLY\n
//! ```
//!
//! or, on failure,
//!
//! ```text
//! ERR <reason>\n              one line of plain text, no newline inside
//! END_OF_REPLY\n
//! ```
//!
//! Data rows carry a `- ` prefix so that no escaped field can ever be mistaken for
//! the `END_OF_REPLY` terminator.
//!
//! # Commands
//!
//! The commands, their arguments (in wire order), whether they change state and
//! whether they carry a password are the table in [`crate::command`]; a request's
//! command and arguments are parsed into a [`TrackerCommand`] there. Their replies:
//!
//! | command          | OK head                                     | rows                         |
//! |------------------|---------------------------------------------|------------------------------|
//! | `login`          | token                                       |                              |
//! | `whoami`         | user                                        |                              |
//! | `list_groups`    |                                             | group owner members status   |
//! | `list_requests`  |                                             | user                         |
//! | `list_files`     |                                             | name size seeders partials   |
//! | `file_info`      | name size piece_size file_sha1 piece_hashes | peer_addr (online seeders)   |
//!
//! Every other command answers a bare `OK`.
//!
//! - `status` in `list_groups` is `owner`, `member`, `pending` or `-` for the asker.
//! - `file_sha1` is 40 hex characters; `piece_hashes` is the concatenation of the
//!   40-hex-character SHA-1 of every piece, in order (empty field for a 0-byte file).
//! - `peer_addr` is `IP:PORT` of the client's peer server as peers can reach it.
//! - A seeder belongs to a session: `upload_file` and `add_seeder` make the
//!   session a seeder of the file, `stop_share` and `logout` end that, and
//!   `leave_group` ends all of the user's seeding in the group. `heartbeat`
//!   marks every seeder of the session alive; `file_info` and `list_files` count
//!   only seeders seen within the tracker's seeder timeout. `list_files` counts
//!   complete seeders (`seeders`) and partial ones (`add_seeder ... partial`, a
//!   download in progress) apart; `file_info` lists both.
//! - A request with an unknown, ended or forged token is answered with an error
//!   whose reason starts with [`ERR_SESSION`]; the client re-logs in on it.

use std::fmt;

use crate::command::{CommandError, TrackerCommand};

/// The longest request line accepted, newline included (4 MiB: room for the piece
/// hashes of a ~50 GiB file).
pub const MAX_REQUEST_LINE: usize = 4 * 1024 * 1024;

/// The longest reply a client accepts before it gives up on the connection.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// The line that ends every reply.
pub const END_OF_REPLY: &str = "END_OF_REPLY";

/// Token field sent before login.
pub const NO_TOKEN: &str = "-";

/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// What starts the optional request id field.
const REQUEST_ID_MARK: char = '@';

/// Every error about a missing, ended or unknown session starts with this text.
pub const ERR_SESSION: &str = "not logged in";

/// Errors of the tracker wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("request line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("empty request")]
    Empty,
    #[error("request has no command")]
    NoCommand,
    #[error("invalid escape sequence in field {0:?}")]
    BadEscape(String),
    #[error("request is not valid UTF-8")]
    NotUtf8,
    #[error("bad request id {0:?}: at most {MAX_REQUEST_ID} bytes, no control characters")]
    BadRequestId(String),
    #[error("malformed reply line: {0:?}")]
    BadReply(String),
}

/// Escapes one field so it contains no space, newline or empty string.
pub fn escape_field(s: &str) -> String {
    if s.is_empty() {
        return "\\0".to_string();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' => out.push_str("\\s"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape_field`].
pub fn unescape_field(s: &str) -> Result<String, WireError> {
    if s == "\\0" {
        return Ok(String::new());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            _ => return Err(WireError::BadEscape(s.to_string())),
        }
    }
    Ok(out)
}

/// Joins fields with single spaces, each escaped.
pub fn encode_fields<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&escape_field(f.as_ref()));
    }
    out
}

/// Splits a line (without its newline) into unescaped fields. An empty line has no fields.
pub fn decode_fields(line: &str) -> Result<Vec<String>, WireError> {
    if line.is_empty() {
        return Ok(Vec::new());
    }
    line.split(' ').map(unescape_field).collect()
}

/// One request from a client to the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's id for this command (exactly-once), if it sent one.
    pub request_id: Option<String>,
    /// The session token, `None` before login.
    pub token: Option<String>,
    pub command: String,
    pub args: Vec<String>,
}

impl Request {
    pub fn new(token: Option<&str>, command: &str, args: &[&str]) -> Request {
        Request {
            request_id: None,
            token: token.map(str::to_string),
            command: command.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The request that carries `command`.
    pub fn command(token: Option<&str>, command: &TrackerCommand) -> Request {
        Request {
            request_id: None,
            token: token.map(str::to_string),
            command: command.name().to_string(),
            args: command.args(),
        }
    }

    /// The typed command of this request (see [`crate::command`]).
    pub fn parse_command(&self) -> Result<TrackerCommand, CommandError> {
        TrackerCommand::parse(&self.command, self.args.clone())
    }

    /// The request as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields: Vec<&str> = Vec::with_capacity(2 + self.args.len());
        fields.push(self.token.as_deref().unwrap_or(NO_TOKEN));
        fields.push(&self.command);
        fields.extend(self.args.iter().map(String::as_str));
        let mut line = String::new();
        if let Some(id) = &self.request_id {
            line.push(REQUEST_ID_MARK);
            line.push_str(&escape_field(id));
            line.push(' ');
        }
        line.push_str(&encode_fields(&fields));
        let mut line = line.into_bytes();
        line.push(b'\n');
        line
    }

    /// Parses one request line; a trailing `\n` or `\r\n` is ignored.
    pub fn decode(line: &[u8]) -> Result<Request, WireError> {
        if line.len() > MAX_REQUEST_LINE {
            return Err(WireError::TooLong {
                max: MAX_REQUEST_LINE,
            });
        }
        let line = strip_newline(line);
        let text = std::str::from_utf8(line).map_err(|_| WireError::NotUtf8)?;
        if text.trim().is_empty() {
            return Err(WireError::Empty);
        }
        let (request_id, text) = match text.strip_prefix(REQUEST_ID_MARK) {
            Some(rest) => {
                let (id, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                (Some(check_request_id(unescape_field(id)?)?), rest)
            }
            None => (None, text),
        };
        let mut fields = decode_fields(text)?.into_iter();
        let token = fields.next().ok_or(WireError::NoCommand)?;
        let command = fields.next().ok_or(WireError::NoCommand)?;
        if command.is_empty() {
            return Err(WireError::NoCommand);
        }
        let token = if token == NO_TOKEN { None } else { Some(token) };
        Ok(Request {
            request_id,
            token,
            command,
            args: fields.collect(),
        })
    }
}

fn check_request_id(id: String) -> Result<String, WireError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || id.chars().any(char::is_control) {
        return Err(WireError::BadRequestId(id));
    }
    Ok(id)
}

fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One reply from the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Err(String),
}

impl Reply {
    /// A success with no head fields and no rows.
    pub fn ok() -> Reply {
        Reply::Ok {
            head: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn err(reason: impl fmt::Display) -> Reply {
        Reply::Err(reason.to_string())
    }

    /// The reply's bytes, `END_OF_REPLY` line included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        match self {
            Reply::Ok { head, rows } => {
                out.push_str("OK");
                if !head.is_empty() {
                    out.push(' ');
                    out.push_str(&encode_fields(head));
                }
                out.push('\n');
                for row in rows {
                    out.push_str("- ");
                    out.push_str(&encode_fields(row));
                    out.push('\n');
                }
            }
            Reply::Err(reason) => {
                out.push_str("ERR ");
                // One line: newlines in a reason become spaces.
                out.extend(
                    reason
                        .chars()
                        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
                );
                out.push('\n');
            }
        }
        out.push_str(END_OF_REPLY);
        out.push('\n');
        out.into_bytes()
    }
}

/// Splits a byte stream into lines with a bound on line length.
///
/// A line longer than the bound is reported once as [`WireError::TooLong`] and its
/// bytes are dropped up to the next newline, so memory never grows past the bound.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    /// Scan position: bytes before it hold no newline.
    scanned: usize,
    /// Discarding an oversize line until its newline.
    skipping: bool,
}

impl LineFramer {
    pub fn new(max: usize) -> LineFramer {
        LineFramer {
            buf: Vec::new(),
            max,
            scanned: 0,
            skipping: false,
        }
    }

    /// Bytes buffered but not yet returned as a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the buffer holds room for (it shrinks after a long line).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives back the room of a long (or oversize) line once it is gone, so an
    /// idle connection does not keep megabytes of buffer.
    fn shrink(&mut self) {
        const KEEP: usize = 64 * 1024;
        if self.buf.capacity() > KEEP && self.buf.len() <= KEEP / 2 {
            self.buf.shrink_to(KEEP);
        }
    }

    /// Adds received bytes. Call [`LineFramer::next_line`] until it returns `None`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line (newline included), an error for an oversize line, or
    /// `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, WireError>> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            match found {
                Some(i) => {
                    let end = self.scanned + i + 1;
                    let line: Vec<u8> = self.buf.drain(..end).collect();
                    self.scanned = 0;
                    self.shrink();
                    if self.skipping {
                        self.skipping = false;
                        continue;
                    }
                    if line.len() > self.max {
                        return Some(Err(WireError::TooLong { max: self.max }));
                    }
                    return Some(Ok(line));
                }
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.max {
                        self.buf.clear();
                        self.scanned = 0;
                        self.shrink();
                        if !self.skipping {
                            self.skipping = true;
                            return Some(Err(WireError::TooLong { max: self.max }));
                        }
                    }
                    return None;
                }
            }
        }
    }
}

/// Reads replies incrementally from a byte stream.
#[derive(Debug)]
pub struct ReplyReader {
    framer: LineFramer,
    head: Option<Result<Vec<String>, String>>,
    rows: Vec<Vec<String>>,
    size: usize,
}

impl Default for ReplyReader {
    fn default() -> Self {
        ReplyReader::new()
    }
}

impl ReplyReader {
    pub fn new() -> ReplyReader {
        ReplyReader {
            framer: LineFramer::new(MAX_REPLY_BYTES),
            head: None,
            rows: Vec::new(),
            size: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.framer.push(data);
    }

    /// The next complete reply, an error for a malformed or oversize one, or `None`
    /// when more bytes are needed.
    pub fn next_reply(&mut self) -> Option<Result<Reply, WireError>> {
        loop {
            let line = match self.framer.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            self.size += line.len();
            if self.size > MAX_REPLY_BYTES {
                self.reset();
                return Some(Err(WireError::TooLong {
                    max: MAX_REPLY_BYTES,
                }));
            }
            let text = match std::str::from_utf8(strip_newline(&line)) {
                Ok(t) => t.to_string(),
                Err(_) => return Some(Err(WireError::NotUtf8)),
            };
            if text == END_OF_REPLY {
                let head = self.head.take();
                let rows = std::mem::take(&mut self.rows);
                self.size = 0;
                return Some(match head {
                    Some(Ok(head)) => Ok(Reply::Ok { head, rows }),
                    Some(Err(reason)) => Ok(Reply::Err(reason)),
                    None => Err(WireError::BadReply(text)),
                });
            }
            let parsed = match &self.head {
                None => {
                    if let Some(reason) = text.strip_prefix("ERR ") {
                        self.head = Some(Err(reason.to_string()));
                        Ok(())
                    } else if text == "OK" {
                        self.head = Some(Ok(Vec::new()));
                        Ok(())
                    } else if let Some(rest) = text.strip_prefix("OK ") {
                        decode_fields(rest).map(|h| self.head = Some(Ok(h)))
                    } else {
                        Err(WireError::BadReply(text.clone()))
                    }
                }
                Some(_) => match text.strip_prefix("- ") {
                    Some(rest) => decode_fields(rest).map(|r| self.rows.push(r)),
                    None => Err(WireError::BadReply(text.clone())),
                },
            };
            if let Err(e) = parsed {
                self.reset();
                return Some(Err(e));
            }
        }
    }

    fn reset(&mut self) {
        self.head = None;
        self.rows.clear();
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        for s in [
            "",
            "a",
            "a b",
            "\\",
            "\\0",
            "x\ny\r\tz",
            "ünï cødé 🦀",
            " ",
            "END_OF_REPLY",
        ] {
            assert_eq!(unescape_field(&escape_field(s)).unwrap(), s);
            assert!(!escape_field(s).contains(' '));
            assert!(!escape_field(s).contains('\n'));
        }
    }

    #[test]
    fn bad_escapes_are_errors() {
        assert!(unescape_field("a\\").is_err());
        assert!(unescape_field("a\\x").is_err());
    }

    #[test]
    fn request_round_trip() {
        let r = Request::new(Some("abc"), "upload_file", &["g 1", "", "my file.txt"]);
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let r = Request::new(None, "login", &["u", "p w"]);
        let enc = r.encode();
        assert!(enc.starts_with(b"- login "));
        assert_eq!(Request::decode(&enc).unwrap(), r);
    }

    #[test]
    fn request_ids_are_optional_and_round_trip() {
        let mut r = Request::new(Some("abc"), "create_group", &["g"]);
        assert!(!String::from_utf8(r.encode()).unwrap().contains('@'));
        r.request_id = Some("0123456789abcdef:7".into());
        let enc = r.encode();
        assert!(enc.starts_with(b"@0123456789abcdef:7 abc create_group g"));
        assert_eq!(Request::decode(&enc).unwrap(), r);
        // A token or command may still start with '@' when the id is present.
        r.request_id = Some("x y".into());
        r.token = None;
        r.command = "@odd".into();
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        assert!(matches!(
            Request::decode(b"@ - whoami\n"),
            Err(WireError::BadRequestId(_))
        ));
        let long = format!("@{} - whoami\n", "x".repeat(MAX_REQUEST_ID + 1));
        assert!(matches!(
            Request::decode(long.as_bytes()),
            Err(WireError::BadRequestId(_))
        ));
        assert_eq!(Request::decode(b"@id\n"), Err(WireError::NoCommand));
    }

    #[test]
    fn bad_requests() {
        assert_eq!(Request::decode(b"\n"), Err(WireError::Empty));
        assert_eq!(Request::decode(b"tok\n"), Err(WireError::NoCommand));
        assert_eq!(Request::decode(b"\xff\xfe x\n"), Err(WireError::NotUtf8));
    }

    #[test]
    fn reply_round_trip() {
        let replies = [
            Reply::ok(),
            Reply::Ok {
                head: vec!["tok".into()],
                rows: vec![vec!["END_OF_REPLY".into(), "".into()], vec!["a b".into()]],
            },
            Reply::err("no such group\nreally"),
        ];
        let mut reader = ReplyReader::new();
        for r in &replies {
            reader.push(&r.encode());
        }
        assert_eq!(reader.next_reply().unwrap().unwrap(), replies[0]);
        assert_eq!(reader.next_reply().unwrap().unwrap(), replies[1]);
        assert_eq!(
            reader.next_reply().unwrap().unwrap(),
            Reply::Err("no such group really".into())
        );
        assert!(reader.next_reply().is_none());
    }

    #[test]
    fn framer_bounds_oversize_lines() {
        let mut f = LineFramer::new(10);
        f.push(b"short\n");
        assert_eq!(f.next_line().unwrap().unwrap(), b"short\n");
        f.push(&[b'x'; 25]);
        assert!(matches!(
            f.next_line(),
            Some(Err(WireError::TooLong { .. }))
        ));
        assert!(f.pending() <= 10);
        f.push(&[b'x'; 25]);
        assert!(f.next_line().is_none());
        f.push(b"xx\nok\n");
        assert_eq!(f.next_line().unwrap().unwrap(), b"ok\n");
        assert!(f.next_line().is_none());
    }

    #[test]
    fn framer_splits_partial_input() {
        let mut f = LineFramer::new(100);
        f.push(b"ab");
        assert!(f.next_line().is_none());
        f.push(b"c\nd");
        assert_eq!(f.next_line().unwrap().unwrap(), b"abc\n");
        assert!(f.next_line().is_none());
    }
}

#[cfg(test)]
mod framer_shrink_tests {
    use super::*;

    #[test]
    fn buffer_shrinks_after_a_long_or_oversize_line() {
        let mut f = LineFramer::new(1 << 20);
        f.push(&vec![b'a'; 900 * 1024]);
        assert!(f.next_line().is_none());
        f.push(b"\n");
        assert_eq!(f.next_line().unwrap().unwrap().len(), 900 * 1024 + 1);
        assert!(f.capacity() <= 64 * 1024, "capacity {}", f.capacity());
        f.push(&vec![b'b'; 2 << 20]);
        assert!(matches!(
            f.next_line(),
            Some(Err(WireError::TooLong { .. }))
        ));
        assert!(f.capacity() <= 64 * 1024, "capacity {}", f.capacity());
    }
}
