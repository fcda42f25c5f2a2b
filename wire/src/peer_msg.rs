//! The binary peer protocol spoken between swarmshare clients. Pure: framing,
//! encoding and decoding only; the client's `peer_conn` does the I/O.
//!
//! # Connection
//!
//! The downloader connects and sends a handshake; the server answers with its own
//! handshake followed by a `Challenge` (32 random bytes), or with an `Error`
//! (e.g. unknown file) and closes. The downloader answers with `Auth`: the
//! ticket a tracker signed for it and this file ([`crate::ticket`]) and its
//! signature, with the ticket's key, of [`crate::ticket::challenge_message`]
//! (the challenge, the file and both peer ids). The server checks both with the
//! trackers' pinned public key, without asking a tracker, and answers with a
//! `Bitfield`, or with an `Error` and closes: no piece without a valid ticket.
//! After that, the downloader sends `Request`s and the server answers each
//! with a `Piece` or a `Reject`, and sends `Have` whenever it verifies a new piece
//! (a partially seeding server).
//!
//! ```text
//! handshake (33 bytes):  "SWSH"  postcard(version:u8 file_sha1:[u8;20] peer_id:[u8;8])
//! ```
//!
//! (postcard writes a `u8` and fixed arrays as they are, so the handshake has a
//! fixed length and its version byte is always at offset 4.) The file is named by
//! its whole-file SHA-1 (never a path); the server looks it up among the files it
//! shares. `peer_id` is random per process and lets a client recognise a
//! connection to itself. The version is [`VERSION`]; a server that does not speak
//! it answers with an `Error`.
//!
//! # Messages
//!
//! ```text
//! len:u32 BE   type:u8   payload (len - 1 bytes)
//! ```
//!
//! `len` counts the type byte and the payload; it is at least 1 and at most
//! [`MAX_MSG_LEN`]. The payload must be consumed exactly: trailing bytes are an
//! error.
//!
//! | type | name      | payload encoding                                           |
//! |------|-----------|------------------------------------------------------------|
//! | 0    | KeepAlive | (none)                                                     |
//! | 1    | Bitfield  | postcard `Vec<u8>`: one bit per piece, MSB first (piece 0 = 0x80) |
//! | 2    | Have      | postcard `piece:u32`                                       |
//! | 3    | Request   | postcard `(piece:u32, offset:u32, len:u32)`                |
//! | 4    | Piece     | raw: `piece:u32 BE  offset:u32 BE  data`                   |
//! | 5    | Reject    | postcard `(piece:u32, offset:u32, code:u8)`                |
//! | 6    | Error     | postcard `String` (UTF-8; the sender closes afterwards)    |
//! | 7    | Challenge | postcard `[u8; 32]` (server -> downloader, once)           |
//! | 8    | Auth      | postcard `(ticket: Vec<u8>, sig: [u8; 32], [u8; 32])` (the 64-byte signature in two halves) |
//!
//! Version history: 2 put the control messages in postcard; 3 declared
//! `Challenge`/`Auth` (signed download tickets) but clients did not send them
//! yet; 4 requires them: a server answers the handshake with its handshake and
//! a `Challenge`, and sends its `Bitfield` only after a valid `Auth`. A
//! downloader may send `Auth` again later on the same connection (same
//! challenge, a renewed ticket): the server checks it the same way and keeps
//! serving until the new ticket's expiry; once the ticket in force expired, a
//! `Request` gets an `Error` and the connection closes. A downloader of an
//! older version is refused with an `Error`.
//!
//! Which encoder and why: the control messages (handshake, bitfield, have,
//! request, reject, error) are serde types encoded with postcard (varint
//! integers, length-prefixed bytes and strings): one declared shape per message
//! instead of hand-written offsets, and a few microseconds per message at most,
//! against the milliseconds a 512 KiB piece takes. The `Piece` message stays a
//! raw fixed header followed by the data: the reader learns the data length from
//! the frame header and streams the data straight into the piece's buffer, and
//! the server writes the header in front of the data a disk read put in place,
//! so a piece is never copied or walked by an encoder.
//!
//! A request names a byte range inside one piece, `0 < len <= MAX_REQUEST_LEN`.
//! Swarmshare clients request whole pieces (512 KiB): one disk read and one message
//! per piece, and with many pieces pipelined per peer there is no round-trip stall;
//! smaller blocks would only add per-message overhead on fast links.
//!
//! The decoder never panics and never allocates more than the declared, bounded
//! message length; anything malformed is a [`DecodeError`] and the connection is
//! dropped.

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Handshake magic.
pub const MAGIC: &[u8; 4] = b"SWSH";
/// Protocol version carried in the handshake (4: the ticket challenge after the
/// handshake is required).
pub const VERSION: u8 = 4;
/// Handshake length in bytes.
pub const HANDSHAKE_LEN: usize = 4 + 1 + 20 + 8;
/// The largest request (and piece payload) in bytes.
pub const MAX_REQUEST_LEN: u32 = 512 * 1024;
/// The largest message body (type byte + payload) in bytes: 1 MiB plus headers.
pub const MAX_MSG_LEN: u32 = 1024 * 1024 + 64;
/// Bytes before the data of a `Piece` message: len(4) + type(1) + piece(4) + offset(4).
pub const PIECE_HEADER_LEN: usize = 13;

const T_KEEPALIVE: u8 = 0;
const T_BITFIELD: u8 = 1;
const T_HAVE: u8 = 2;
const T_REQUEST: u8 = 3;
const T_PIECE: u8 = 4;
const T_REJECT: u8 = 5;
const T_ERROR: u8 = 6;
const T_CHALLENGE: u8 = 7;
const T_AUTH: u8 = 8;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// The piece index or byte range is outside the file/piece, or too long.
    OutOfRange,
    /// The server does not have that piece (yet).
    NotHave,
    /// The server could not read it (disk error).
    ReadFailed,
    /// Any code this version does not know.
    Other(u8),
}

impl RejectCode {
    pub fn to_u8(self) -> u8 {
        match self {
            RejectCode::OutOfRange => 1,
            RejectCode::NotHave => 2,
            RejectCode::ReadFailed => 3,
            RejectCode::Other(c) => c,
        }
    }

    pub fn from_u8(c: u8) -> RejectCode {
        match c {
            1 => RejectCode::OutOfRange,
            2 => RejectCode::NotHave,
            3 => RejectCode::ReadFailed,
            c => RejectCode::Other(c),
        }
    }
}

/// The opening message of a connection, sent by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    pub version: u8,
    pub file_sha1: [u8; 20],
    pub peer_id: [u8; 8],
}

impl Handshake {
    pub fn new(file_sha1: [u8; 20], peer_id: [u8; 8]) -> Handshake {
        Handshake {
            version: VERSION,
            file_sha1,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[..4].copy_from_slice(MAGIC);
        // A u8 and two fixed arrays: exactly HANDSHAKE_LEN - 4 bytes, so this fits.
        let _ = postcard::to_slice(self, &mut out[4..]);
        out
    }

    /// Decodes a handshake from the start of `buf`: `Ok(None)` if more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, DecodeError> {
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            return Err(DecodeError::BadMagic);
        }
        if buf.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        postcard::from_bytes(&buf[4..HANDSHAKE_LEN])
            .map(Some)
            .map_err(|_| DecodeError::BadPayload("handshake"))
    }
}

/// One peer message (after the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg {
    KeepAlive,
    Bitfield(Vec<u8>),
    Have(u32),
    Request {
        piece: u32,
        offset: u32,
        len: u32,
    },
    Piece {
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Reject {
        piece: u32,
        offset: u32,
        code: RejectCode,
    },
    Error(String),
    /// The server's random challenge.
    Challenge([u8; 32]),
    /// The downloader's ticket (binary, at most `ticket::MAX_TICKET_LEN`) and
    /// its signature of the challenge message.
    Auth {
        ticket: Vec<u8>,
        sig: [u8; 64],
    },
}

/// A malformed message; the connection that sent it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic,
    ZeroLength,
    TooLong(u32),
    UnknownType(u8),
    BadPayload(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic => write!(f, "not a swarmshare peer (bad handshake magic)"),
            DecodeError::ZeroLength => write!(f, "message of length 0"),
            DecodeError::TooLong(n) => write!(f, "message of {n} bytes exceeds the limit"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t}"),
            DecodeError::BadPayload(what) => write!(f, "malformed {what} message"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The fixed part of a message, available as soon as its first bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length (type byte + payload).
    pub len: u32,
    pub kind: u8,
}

impl Header {
    /// Total bytes of the message on the wire, header included.
    pub fn wire_len(&self) -> usize {
        4 + self.len as usize
    }

    /// Whether this is a `Piece` message (whose data the reader may stream into a buffer).
    pub fn is_piece(&self) -> bool {
        self.kind == T_PIECE
    }

    /// Whether this is a `Request` message.
    pub fn is_request(&self) -> bool {
        self.kind == T_REQUEST
    }
}

/// Decodes the 5-byte header at the start of `buf`, checking the length bound and type.
pub fn decode_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    if buf.len() < 5 {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            check_len(len)?;
        }
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    check_len(len)?;
    let kind = buf[4];
    if kind > T_AUTH {
        return Err(DecodeError::UnknownType(kind));
    }
    Ok(Some(Header { len, kind }))
}

fn check_len(len: u32) -> Result<(), DecodeError> {
    if len == 0 {
        return Err(DecodeError::ZeroLength);
    }
    if len > MAX_MSG_LEN {
        return Err(DecodeError::TooLong(len));
    }
    Ok(())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a postcard payload that must use every byte of `p`.
fn body<T: DeserializeOwned>(p: &[u8], what: &'static str) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(p) {
        Ok((v, [])) => Ok(v),
        _ => Err(DecodeError::BadPayload(what)),
    }
}

/// Appends the postcard form of `v` to `out`.
fn put<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    // Serializing plain integers, bytes and strings into a Vec cannot fail.
    if let Ok(v) = postcard::to_extend(v, std::mem::take(out)) {
        *out = v;
    }
}

/// Decodes one message from the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((msg, used)))`: `used` bytes were consumed.
pub fn decode(buf: &[u8]) -> Result<Option<(PeerMsg, usize)>, DecodeError> {
    let Some(h) = decode_header(buf)? else {
        return Ok(None);
    };
    let total = h.wire_len();
    if buf.len() < total {
        return Ok(None);
    }
    let p = &buf[5..total];
    let msg = match h.kind {
        T_KEEPALIVE => {
            if !p.is_empty() {
                return Err(DecodeError::BadPayload("keepalive"));
            }
            PeerMsg::KeepAlive
        }
        T_BITFIELD => PeerMsg::Bitfield(body(p, "bitfield")?),
        T_HAVE => PeerMsg::Have(body(p, "have")?),
        T_REQUEST => {
            let (piece, offset, len) = body(p, "request")?;
            PeerMsg::Request { piece, offset, len }
        }
        T_PIECE => {
            if p.len() < 8 {
                return Err(DecodeError::BadPayload("piece"));
            }
            PeerMsg::Piece {
                piece: be32(p, 0),
                offset: be32(p, 4),
                data: p[8..].to_vec(),
            }
        }
        T_REJECT => {
            let (piece, offset, code): (u32, u32, u8) = body(p, "reject")?;
            PeerMsg::Reject {
                piece,
                offset,
                code: RejectCode::from_u8(code),
            }
        }
        T_ERROR => PeerMsg::Error(body(p, "error")?),
        T_CHALLENGE => PeerMsg::Challenge(body(p, "challenge")?),
        T_AUTH => {
            let (ticket, a, b): (Vec<u8>, [u8; 32], [u8; 32]) = body(p, "auth")?;
            if ticket.len() > crate::ticket::MAX_TICKET_LEN {
                return Err(DecodeError::BadPayload("auth"));
            }
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&a);
            sig[32..].copy_from_slice(&b);
            PeerMsg::Auth { ticket, sig }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Some((msg, total)))
}

/// For a `Piece` message whose first [`PIECE_HEADER_LEN`] bytes are in `buf`: its
/// piece index, offset and data length. Lets a reader stream the data straight
/// into its piece buffer instead of decoding a copy.
pub fn decode_piece_header(buf: &[u8]) -> Result<Option<(u32, u32, usize)>, DecodeError> {
    let Some(h) = decode_header(buf)? else {
        return Ok(None);
    };
    if !h.is_piece() {
        return Err(DecodeError::BadPayload("piece"));
    }
    if h.len < 9 {
        return Err(DecodeError::BadPayload("piece"));
    }
    if buf.len() < PIECE_HEADER_LEN {
        return Ok(None);
    }
    Ok(Some((be32(buf, 5), be32(buf, 9), h.len as usize - 9)))
}

impl PeerMsg {
    /// Appends the wire form of this message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        match self {
            PeerMsg::KeepAlive => out.push(T_KEEPALIVE),
            PeerMsg::Bitfield(b) => {
                out.push(T_BITFIELD);
                put(b, out);
            }
            PeerMsg::Have(p) => {
                out.push(T_HAVE);
                put(p, out);
            }
            PeerMsg::Request { piece, offset, len } => {
                out.push(T_REQUEST);
                put(&(piece, offset, len), out);
            }
            PeerMsg::Piece {
                piece,
                offset,
                data,
            } => {
                out.push(T_PIECE);
                out.extend_from_slice(&piece.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
            }
            PeerMsg::Reject {
                piece,
                offset,
                code,
            } => {
                out.push(T_REJECT);
                put(&(piece, offset, code.to_u8()), out);
            }
            PeerMsg::Error(text) => {
                out.push(T_ERROR);
                // Bound the text so the message always fits the limit.
                let mut end = text.len().min(4096);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                put(&&text[..end], out);
            }
            PeerMsg::Challenge(c) => {
                out.push(T_CHALLENGE);
                put(c, out);
            }
            PeerMsg::Auth { ticket, sig } => {
                out.push(T_AUTH);
                let mut a = [0u8; 32];
                let mut b = [0u8; 32];
                a.copy_from_slice(&sig[..32]);
                b.copy_from_slice(&sig[32..]);
                put(&(ticket, a, b), out);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// Writes the header of a `Piece` message carrying `data_len` bytes into `out[..PIECE_HEADER_LEN]`.
/// A server reads the data into `out[PIECE_HEADER_LEN..]` of the same buffer, so a
/// piece goes from disk to socket without an extra copy.
pub fn write_piece_header(out: &mut [u8], piece: u32, offset: u32, data_len: usize) {
    let len = (data_len + 9) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out[4] = T_PIECE;
    out[5..9].copy_from_slice(&piece.to_be_bytes());
    out[9..13].copy_from_slice(&offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_msgs() -> Vec<PeerMsg> {
        vec![
            PeerMsg::KeepAlive,
            PeerMsg::Bitfield(vec![0xff, 0x80]),
            PeerMsg::Bitfield(vec![]),
            PeerMsg::Have(7),
            PeerMsg::Request {
                piece: 1,
                offset: 2,
                len: 3,
            },
            PeerMsg::Piece {
                piece: 9,
                offset: 0,
                data: vec![1, 2, 3],
            },
            PeerMsg::Reject {
                piece: 4,
                offset: 5,
                code: RejectCode::OutOfRange,
            },
            PeerMsg::Error("unknown file é".into()),
            PeerMsg::Challenge([3; 32]),
            PeerMsg::Auth {
                ticket: vec![1, 2, 3],
                sig: [9; 64],
            },
        ]
    }

    #[test]
    fn round_trip_every_message() {
        for m in all_msgs() {
            let bytes = m.encode();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(used, bytes.len());
            // Every strict prefix is incomplete, never an error.
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]).unwrap(), None, "{m:?} cut {cut}");
            }
        }
    }

    #[test]
    fn stream_of_messages() {
        let mut buf = Vec::new();
        for m in all_msgs() {
            m.encode_into(&mut buf);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((m, used)) = decode(&buf[at..]).unwrap() {
            got.push(m);
            at += used;
        }
        assert_eq!(got, all_msgs());
        assert_eq!(at, buf.len());
    }

    #[test]
    fn piece_header_in_place() {
        let data = vec![5u8; 100];
        let mut buf = vec![0u8; PIECE_HEADER_LEN + data.len()];
        write_piece_header(&mut buf, 3, 0, data.len());
        buf[PIECE_HEADER_LEN..].copy_from_slice(&data);
        assert_eq!(decode_piece_header(&buf).unwrap(), Some((3, 0, 100)));
        let (m, _) = decode(&buf).unwrap().unwrap();
        assert_eq!(
            m,
            PeerMsg::Piece {
                piece: 3,
                offset: 0,
                data
            }
        );
    }

    #[test]
    fn bounds_and_garbage() {
        assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::ZeroLength));
        assert!(matches!(
            decode(&[0xff, 0, 0, 0]),
            Err(DecodeError::TooLong(_))
        ));
        assert_eq!(decode(&[0, 0, 0, 1, 99]), Err(DecodeError::UnknownType(99)));
        // A varint with its continuation bit set and nothing after it.
        assert_eq!(
            decode(&[0, 0, 0, 2, T_HAVE, 0x80]),
            Err(DecodeError::BadPayload("have"))
        );
        // Trailing bytes after a whole payload.
        assert_eq!(
            decode(&[0, 0, 0, 3, T_HAVE, 1, 0]),
            Err(DecodeError::BadPayload("have"))
        );
        // A bitfield declaring more bytes than the frame holds.
        assert_eq!(
            decode(&[0, 0, 0, 3, T_BITFIELD, 5, 0xff]),
            Err(DecodeError::BadPayload("bitfield"))
        );
        // Invalid UTF-8 in an error text.
        assert_eq!(
            decode(&[0, 0, 0, 3, T_ERROR, 1, 0xff]),
            Err(DecodeError::BadPayload("error"))
        );
        assert_eq!(
            Handshake::decode(b"GET / HTTP/1.1"),
            Err(DecodeError::BadMagic)
        );
        assert_eq!(Handshake::decode(b"SW"), Ok(None));
    }

    /// The exact bytes of each control message: a change here is a protocol
    /// change and needs a new [`VERSION`].
    #[test]
    fn wire_bytes_are_pinned() {
        let cases: Vec<(PeerMsg, Vec<u8>)> = vec![
            (PeerMsg::KeepAlive, vec![0, 0, 0, 1, 0]),
            (PeerMsg::Bitfield(vec![0xf0]), vec![0, 0, 0, 3, 1, 1, 0xf0]),
            (PeerMsg::Have(300), vec![0, 0, 0, 3, 2, 0xac, 0x02]),
            (
                PeerMsg::Request {
                    piece: 1,
                    offset: 2,
                    len: 524_288,
                },
                vec![0, 0, 0, 6, 3, 1, 2, 0x80, 0x80, 0x20],
            ),
            (
                PeerMsg::Piece {
                    piece: 1,
                    offset: 2,
                    data: vec![9],
                },
                vec![0, 0, 0, 10, 4, 0, 0, 0, 1, 0, 0, 0, 2, 9],
            ),
            (
                PeerMsg::Reject {
                    piece: 4,
                    offset: 0,
                    code: RejectCode::NotHave,
                },
                vec![0, 0, 0, 4, 5, 4, 0, 2],
            ),
            (
                PeerMsg::Error("no".into()),
                vec![0, 0, 0, 4, 6, 2, b'n', b'o'],
            ),
        ];
        for (m, bytes) in cases {
            assert_eq!(m.encode(), bytes, "{m:?}");
        }
        let h = Handshake::new([3; 20], [9; 8]).encode();
        assert_eq!(&h[..5], &[b'S', b'W', b'S', b'H', VERSION]);
        assert_eq!(&h[5..25], &[3; 20]);
        assert_eq!(&h[25..], &[9; 8]);
    }

    #[test]
    fn handshake_round_trip() {
        let h = Handshake::new([3; 20], [9; 8]);
        let e = h.encode();
        assert_eq!(Handshake::decode(&e).unwrap(), Some(h));
        assert_eq!(Handshake::decode(&e[..10]).unwrap(), None);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let _ = decode_piece_header(&bytes);
            let _ = Handshake::decode(&bytes);
        }

        #[test]
        fn decoder_never_panics_with_plausible_headers(kind in 0u8..10, len in 0u32..40, tail in proptest::collection::vec(any::<u8>(), 0..48)) {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&tail);
            if let Ok(Some((_, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
            let _ = decode_piece_header(&bytes);
        }

        #[test]
        fn request_round_trip(piece in any::<u32>(), offset in any::<u32>(), len in any::<u32>()) {
            let m = PeerMsg::Request { piece, offset, len };
            prop_assert_eq!(decode(&m.encode()).unwrap().unwrap().0, m);
        }
    }
}
