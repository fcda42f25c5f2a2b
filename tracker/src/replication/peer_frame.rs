//! The tracker-to-tracker link, sans-IO: who may speak Raft to this tracker, and how
//! Raft messages are framed. It shares the client port with the line protocol.
//!
//! # Handshake (text lines, each at most [`MAX_LINE`] bytes)
//! ```text
//! initiator A -> B:  SWARMSHARE-RAFT v1 <a> <nonce_a>\n
//! acceptor  B -> A:  SWARMSHARE-RAFT v1 <b> <nonce_b> <proof_b>\n
//! initiator A -> B:  <proof_a>\n
//! ```
//! `a`, `b` are tracker numbers; nonces are 32 random bytes, proofs HMAC-SHA256 tags,
//! all lowercase hex. `proof_b = HMAC(K, "swarmshare-raft v1 acceptor" ‖ a ‖ b ‖ nonce_a ‖
//! nonce_b)` and `proof_a` the same with `initiator` (numbers as 8-byte big-endian),
//! where K is the cluster key ([`super::cluster_key`]). Each side proves it holds K
//! against the other's fresh nonce, so a recorded handshake cannot be replayed, a
//! proof cannot be reflected back, and the tracker numbers are authenticated. The
//! first line starts with [`GREETING_PREFIX`], which no client request does: the
//! server routes the connection by it ([`is_peer_greeting`]).
//!
//! # Frames (after the handshake)
//! ```text
//! len: u32 big-endian | payload: len bytes (one protobuf eraftpb.Message) | tag: 32 bytes
//! tag = HMAC(K_dir, seq: u64 BE ‖ len ‖ payload)
//! K_dir = HMAC(K, "swarmshare-raft v1 frames " ‖ dir ‖ a ‖ b ‖ nonce_a ‖ nonce_b)
//! ```
//! `dir` is `a->b` or `b->a`, `seq` counts frames from 0 in each direction. Every frame
//! is MACed rather than trusting the TCP connection once authenticated: without TLS,
//! anyone on the path could inject bytes into an authenticated stream, and the point of
//! authenticating is that no byte from outside the cluster reaches the protobuf decoder
//! (the `protobuf` 2.x crate has a recursion-crash advisory). The sequence number stops
//! replay, reordering and dropping within a connection. The cost is one HMAC-SHA256
//! per frame (about a microsecond for a small message). Traffic is not encrypted: it
//! carries password and token *hashes*; run the cluster on a trusted network or tunnel.
//!
//! Limits: before authentication at most [`MAX_LINE`] bytes are buffered and nothing is
//! decoded as a Raft message; after it, a frame longer than the link's `max_frame` is
//! refused from its header, before its payload is buffered. Any error closes the link.

use hmac::{Hmac, Mac};
use protobuf::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;

/// The first bytes of a tracker-to-tracker connection.
pub const GREETING_PREFIX: &str = "SWARMSHARE-RAFT v1 ";
/// Longest handshake line, newline included.
pub const MAX_LINE: usize = 256;
/// Default largest frame payload (a snapshot travels in one frame).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 4;

type HmacSha256 = Hmac<Sha256>;

/// Whether a connection's first line (or its first bytes) is a tracker's greeting.
pub fn is_peer_greeting(first: &[u8]) -> bool {
    first.starts_with(GREETING_PREFIX.as_bytes())
}

/// Why a link was closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("handshake line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("bad handshake line: {0}")]
    BadLine(String),
    #[error("tracker {0} is not a member of this cluster")]
    NotMember(u64),
    #[error("expected tracker {expected}, the peer says it is tracker {got}")]
    WrongPeer { expected: u64, got: u64 },
    #[error("authentication failed: the peer does not hold this cluster's key")]
    BadProof,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame {seq} failed its MAC check")]
    BadTag { seq: u64 },
    #[error("frame {seq} is not a Raft message: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("message from {from} to {to} on the link from tracker {peer} to tracker {me}")]
    Misaddressed {
        from: u64,
        to: u64,
        peer: u64,
        me: u64,
    },
    #[error("the link is not open yet")]
    NotOpen,
    #[error("the link was closed after an error")]
    Closed,
}

/// What the peer's bytes produced.
#[derive(Debug, PartialEq)]
pub enum LinkEvent {
    /// The handshake is done: the peer is tracker `peer` and holds the cluster key.
    Authenticated { peer: u64 },
    /// One Raft message from the authenticated peer, addressed to this tracker.
    Message(Box<Message>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Acceptor: waiting for the initiator's greeting.
    AwaitGreeting,
    /// Initiator: waiting for the acceptor's nonce and proof.
    AwaitReply,
    /// Acceptor: waiting for the initiator's proof.
    AwaitProof,
    Open,
    Failed,
}

/// One tracker-to-tracker connection's protocol state.
pub struct PeerLink {
    key: [u8; 32],
    me: u64,
    /// Initiator: the tracker it dialled; acceptor: learned from the greeting.
    peer: u64,
    voters: Vec<u64>,
    initiator: bool,
    state: State,
    my_nonce: [u8; 32],
    peer_nonce: [u8; 32],
    send_key: [u8; 32],
    recv_key: [u8; 32],
    send_seq: u64,
    recv_seq: u64,
    max_frame: usize,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

/// 32 fresh random bytes for a handshake nonce.
pub fn fresh_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).expect("the OS random source failed");
    n
}

/// Parses 64 hex digits into 32 bytes.
pub fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

impl PeerLink {
    /// Dials tracker `peer` as tracker `me`: the greeting is queued in the output.
    pub fn connect(key: [u8; 32], me: u64, peer: u64, nonce: [u8; 32], max_frame: usize) -> Self {
        let mut link = Self::new(key, me, peer, Vec::new(), true, nonce, max_frame);
        link.state = State::AwaitReply;
        link.out = format!("{GREETING_PREFIX}{me} {}\n", hex::encode(nonce)).into_bytes();
        link
    }

    /// Accepts a connection as tracker `me`, from one of `voters`; feed it the
    /// connection's bytes from the first one (the greeting line included).
    pub fn accept(
        key: [u8; 32],
        me: u64,
        voters: Vec<u64>,
        nonce: [u8; 32],
        max_frame: usize,
    ) -> Self {
        Self::new(key, me, 0, voters, false, nonce, max_frame)
    }

    fn new(
        key: [u8; 32],
        me: u64,
        peer: u64,
        voters: Vec<u64>,
        initiator: bool,
        nonce: [u8; 32],
        max_frame: usize,
    ) -> Self {
        PeerLink {
            key,
            me,
            peer,
            voters,
            initiator,
            state: State::AwaitGreeting,
            my_nonce: nonce,
            peer_nonce: [0; 32],
            send_key: [0; 32],
            recv_key: [0; 32],
            send_seq: 0,
            recv_seq: 0,
            max_frame,
            inbuf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The authenticated peer's tracker number, once the link is open.
    pub fn peer(&self) -> Option<u64> {
        (self.state == State::Open).then_some(self.peer)
    }

    /// Bytes of the peer's input held back (a partial line or frame).
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Bytes to write to the connection (taken: the link keeps none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds bytes read from the connection. An error closes the link for good.
    pub fn receive(&mut self, input: &[u8]) -> Result<Vec<LinkEvent>, LinkError> {
        let mut events = Vec::new();
        match self.consume(input, &mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.state = State::Failed;
                self.inbuf = Vec::new();
                Err(e)
            }
        }
    }

    fn consume(&mut self, mut input: &[u8], events: &mut Vec<LinkEvent>) -> Result<(), LinkError> {
        while !input.is_empty() {
            input = match self.state {
                State::Failed => return Err(LinkError::Closed),
                State::Open => self.take_frame_bytes(input, events)?,
                _ => self.take_line_bytes(input, events)?,
            };
        }
        Ok(())
    }

    /// Buffers handshake bytes up to a newline; handles a complete line.
    fn take_line_bytes<'a>(
        &mut self,
        input: &'a [u8],
        events: &mut Vec<LinkEvent>,
    ) -> Result<&'a [u8], LinkError> {
        let (chunk, rest, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..], true),
            None => (input, &input[input.len()..], false),
        };
        if self.inbuf.len() + chunk.len() >= MAX_LINE {
            return Err(LinkError::LineTooLong);
        }
        self.inbuf.extend_from_slice(chunk);
        if complete {
            let line = std::mem::take(&mut self.inbuf);
            let line =
                String::from_utf8(line).map_err(|_| LinkError::BadLine("not UTF-8".to_string()))?;
            self.handle_line(&line, events)?;
        }
        Ok(rest)
    }

    fn handle_line(&mut self, line: &str, events: &mut Vec<LinkEvent>) -> Result<(), LinkError> {
        match self.state {
            State::AwaitGreeting => {
                let (peer, nonce, _) = parse_hello(line, false)?;
                if peer == self.me || !self.voters.contains(&peer) {
                    return Err(LinkError::NotMember(peer));
                }
                self.peer = peer;
                self.peer_nonce = nonce;
                let proof = hex::encode(self.proof("acceptor"));
                let greeting = format!(
                    "{GREETING_PREFIX}{} {} {proof}\n",
                    self.me,
                    hex::encode(self.my_nonce)
                );
                self.out.extend_from_slice(greeting.as_bytes());
                self.state = State::AwaitProof;
            }
            State::AwaitReply => {
                let (peer, nonce, proof) = parse_hello(line, true)?;
                if peer != self.peer {
                    return Err(LinkError::WrongPeer {
                        expected: self.peer,
                        got: peer,
                    });
                }
                self.peer_nonce = nonce;
                self.check_proof("acceptor", &proof.expect("parse_hello(.., true)"))?;
                let mine = hex::encode(self.proof("initiator"));
                self.out.extend_from_slice(format!("{mine}\n").as_bytes());
                self.open(events);
            }
            State::AwaitProof => {
                let proof = hex32(line).ok_or_else(|| LinkError::BadLine("proof".to_string()))?;
                self.check_proof("initiator", &proof)?;
                self.open(events);
            }
            State::Open | State::Failed => unreachable!("lines are read only during the handshake"),
        }
        Ok(())
    }

    /// The handshake transcript: initiator, acceptor, their nonces.
    fn transcript(&self) -> [[u8; 8]; 2] {
        let (a, b) = if self.initiator {
            (self.me, self.peer)
        } else {
            (self.peer, self.me)
        };
        [a.to_be_bytes(), b.to_be_bytes()]
    }

    fn nonces(&self) -> (&[u8; 32], &[u8; 32]) {
        if self.initiator {
            (&self.my_nonce, &self.peer_nonce)
        } else {
            (&self.peer_nonce, &self.my_nonce)
        }
    }

    fn keyed(&self, label: &str) -> HmacSha256 {
        let [a, b] = self.transcript();
        let (na, nb) = self.nonces();
        let label = format!("swarmshare-raft v1 {label}");
        mac(&self.key, &[label.as_bytes(), &a, &b, na, nb])
    }

    fn proof(&self, role: &str) -> [u8; 32] {
        self.keyed(role).finalize().into_bytes().into()
    }

    fn check_proof(&self, role: &str, proof: &[u8; 32]) -> Result<(), LinkError> {
        self.keyed(role)
            .verify_slice(proof)
            .map_err(|_| LinkError::BadProof)
    }

    fn open(&mut self, events: &mut Vec<LinkEvent>) {
        let a_to_b: [u8; 32] = self.keyed("frames a->b").finalize().into_bytes().into();
        let b_to_a: [u8; 32] = self.keyed("frames b->a").finalize().into_bytes().into();
        (self.send_key, self.recv_key) = if self.initiator {
            (a_to_b, b_to_a)
        } else {
            (b_to_a, a_to_b)
        };
        self.state = State::Open;
        events.push(LinkEvent::Authenticated { peer: self.peer });
    }

    /// Buffers frame bytes (never more than one frame's worth); handles a complete frame.
    fn take_frame_bytes<'a>(
        &mut self,
        input: &'a [u8],
        events: &mut Vec<LinkEvent>,
    ) -> Result<&'a [u8], LinkError> {
        let want = if self.inbuf.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            HEADER_LEN + self.frame_len()? + TAG_LEN
        };
        let take = (want - self.inbuf.len()).min(input.len());
        self.inbuf.extend_from_slice(&input[..take]);
        if self.inbuf.len() == HEADER_LEN {
            self.frame_len()?;
        }
        if self.inbuf.len() >= HEADER_LEN
            && self.inbuf.len() == HEADER_LEN + self.frame_len()? + TAG_LEN
        {
            let frame = std::mem::take(&mut self.inbuf);
            events.push(LinkEvent::Message(Box::new(self.open_frame(&frame)?)));
        }
        Ok(&input[take..])
    }

    fn frame_len(&self) -> Result<usize, LinkError> {
        let len =
            u32::from_be_bytes(self.inbuf[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(len)
    }

    fn frame_mac(key: &[u8; 32], seq: u64, header_and_payload: &[u8]) -> HmacSha256 {
        mac(key, &[&seq.to_be_bytes(), header_and_payload])
    }

    /// Checks a whole frame's tag, then (only then) decodes and checks its message.
    fn open_frame(&mut self, frame: &[u8]) -> Result<Message, LinkError> {
        let seq = self.recv_seq;
        let (body, tag) = frame.split_at(frame.len() - TAG_LEN);
        Self::frame_mac(&self.recv_key, seq, body)
            .verify_slice(tag)
            .map_err(|_| LinkError::BadTag { seq })?;
        self.recv_seq += 1;
        let msg =
            Message::parse_from_bytes(&body[HEADER_LEN..]).map_err(|e| LinkError::Decode {
                seq,
                reason: e.to_string(),
            })?;
        if msg.from != self.peer || msg.to != self.me {
            return Err(LinkError::Misaddressed {
                from: msg.from,
                to: msg.to,
                peer: self.peer,
                me: self.me,
            });
        }
        Ok(msg)
    }

    /// Queues one Raft message to the peer. A message larger than `max_frame` is
    /// refused (Raft resends what matters; a snapshot that large never fits).
    pub fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        if self.state != State::Open {
            return Err(LinkError::NotOpen);
        }
        let payload = msg.write_to_bytes().map_err(|e| LinkError::Decode {
            seq: self.send_seq,
            reason: e.to_string(),
        })?;
        if payload.len() > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len: payload.len(),
                max: self.max_frame,
            });
        }
        let start = self.out.len();
        self.out
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.out.extend_from_slice(&payload);
        let tag = Self::frame_mac(&self.send_key, self.send_seq, &self.out[start..]).finalize();
        self.out.extend_from_slice(&tag.into_bytes());
        self.send_seq += 1;
        Ok(())
    }
}

/// A handshake line's tracker number, nonce and (acceptor's) proof.
type Hello = (u64, [u8; 32], Option<[u8; 32]>);

/// Parses `SWARMSHARE-RAFT v1 <no> <nonce>[ <proof>]`.
fn parse_hello(line: &str, with_proof: bool) -> Result<Hello, LinkError> {
    let bad = |what: &str| LinkError::BadLine(what.to_string());
    let rest = line
        .strip_prefix(GREETING_PREFIX)
        .ok_or_else(|| bad("greeting"))?;
    let mut words = rest.split(' ');
    let no: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad("tracker number"))?;
    let nonce = words.next().and_then(hex32).ok_or_else(|| bad("nonce"))?;
    let proof = if with_proof {
        Some(words.next().and_then(hex32).ok_or_else(|| bad("proof"))?)
    } else {
        None
    };
    if words.next().is_some() {
        return Err(bad("trailing words"));
    }
    Ok((no, nonce, proof))
}

#[cfg(test)]
#[path = "peer_frame_tests.rs"]
mod tests;
