//! A blocking downloader-side peer connection for tests: it speaks
//! `wire::peer_msg` to a running client's peer server (handshake, the ticket
//! challenge, then requests), with a read timeout on every wait. The tests that
//! probe a peer server (hostile requests, partial seeding, bad requests,
//! strangers without a ticket) share it. Each connection has its own key pair
//! ([`PeerClient::key`]); a ticket for it comes from [`ticket`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use wire::peer_msg::{self, Handshake, PeerMsg, HANDSHAKE_LEN};
use wire::ticket::{self, KeyPair, Ticket};

use crate::TrackerConn;

/// A download ticket (hex) for `key` from the tracker: `file_info` of `name` in
/// `group` with the member session `token`.
pub fn ticket(
    conn: &mut TrackerConn,
    token: &str,
    group: &str,
    name: &str,
    key: &KeyPair,
) -> String {
    let k = ticket::public_key_hex(&key.verifying_key());
    let (head, _) = conn.ok(Some(token), "file_info", &[group, name, &k]);
    head.get(5)
        .cloned()
        .expect("file_info with a key carries a ticket")
}

/// What the other side did next.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Msg(PeerMsg),
    Closed,
}

/// A blocking connection to a peer server.
pub struct PeerClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The key this connection proves it holds.
    pub key: KeyPair,
    /// The server's challenge and peer id, once its handshake arrived.
    challenge: Option<([u8; 32], [u8; 8])>,
    sha: [u8; 20],
}

impl PeerClient {
    /// Connects; every read then waits at most 10 s.
    pub fn connect(addr: &str) -> PeerClient {
        let stream = TcpStream::connect(addr).expect("connect to the peer server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        PeerClient {
            stream,
            buf: Vec::new(),
            key: ticket::new_key_pair().unwrap(),
            challenge: None,
            sha: [0; 20],
        }
    }

    /// [`PeerClient::connect`] with a given key (the one a ticket was issued for).
    pub fn connect_as(addr: &str, key: &KeyPair) -> PeerClient {
        let mut p = PeerClient::connect(addr);
        p.key = key.clone();
        p
    }

    /// Sends raw bytes; false if the connection is gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Sends a handshake for `sha`; returns the server's (its challenge that
    /// follows is kept for [`PeerClient::auth`]), or `None` if it refused
    /// (closed, or sent an `Error`).
    pub fn handshake(&mut self, sha: [u8; 20]) -> Option<Handshake> {
        let h = self.handshake_only(sha)?;
        match self.next_msg() {
            Got::Msg(PeerMsg::Challenge(c)) => {
                self.challenge = Some((c, h.peer_id));
                Some(h)
            }
            Got::Msg(PeerMsg::Error(_)) | Got::Closed => None,
            other => panic!("expected a challenge after the handshake, got {other:?}"),
        }
    }

    /// Answers the challenge with `ticket_hex` (signed with [`PeerClient::key`]).
    pub fn auth(&mut self, ticket_hex: &str) -> bool {
        let (c, server) = self.challenge.expect("auth after the handshake");
        let t = Ticket::from_hex(ticket_hex).expect("a ticket");
        let msg = ticket::challenge_message(&c, &self.sha, &server, b"testpeer");
        let sig = ticket::sign_challenge(&self.key, &msg);
        self.send(
            &PeerMsg::Auth {
                ticket: t.encode(),
                sig,
            }
            .encode(),
        )
    }

    fn handshake_only(&mut self, sha: [u8; 20]) -> Option<Handshake> {
        self.sha = sha;
        self.send(&Handshake::new(sha, *b"testpeer").encode());
        loop {
            if self.buf.len() >= 4 && &self.buf[..4] != peer_msg::MAGIC {
                // Not a handshake: an Error message (the refusal), then close.
                match self.next_msg() {
                    Got::Msg(PeerMsg::Error(_)) | Got::Closed => return None,
                    other => panic!("unexpected answer to a handshake: {other:?}"),
                }
            }
            if let Some(h) = Handshake::decode(&self.buf).expect("a valid handshake") {
                self.buf.drain(..HANDSHAKE_LEN);
                return Some(h);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Handshakes for `sha` (which must be accepted), shows `ticket_hex` (issued
    /// for `key`) and returns the bitfield that follows.
    pub fn open(
        addr: &str,
        sha: [u8; 20],
        key: &KeyPair,
        ticket_hex: &str,
    ) -> (PeerClient, Vec<u8>) {
        let mut p = PeerClient::connect_as(addr, key);
        p.handshake(sha).expect("the file is served");
        p.auth(ticket_hex);
        match p.answer() {
            Got::Msg(PeerMsg::Bitfield(bits)) => (p, bits),
            other => panic!("expected a bitfield, got {other:?}"),
        }
    }

    /// The next message, or `Closed`; panics on a malformed one.
    pub fn next_msg(&mut self) -> Got {
        loop {
            match peer_msg::decode(&self.buf) {
                Ok(Some((msg, used))) => {
                    self.buf.drain(..used);
                    return Got::Msg(msg);
                }
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed message: {e}"),
            }
            if !self.fill() {
                return Got::Closed;
            }
        }
    }

    /// The next message that is not a KeepAlive or Have.
    pub fn answer(&mut self) -> Got {
        loop {
            match self.next_msg() {
                Got::Msg(PeerMsg::KeepAlive) | Got::Msg(PeerMsg::Have(_)) => {}
                other => return other,
            }
        }
    }

    /// Requests a range and returns the answer.
    pub fn request(&mut self, piece: u32, offset: u32, len: u32) -> Got {
        if !self.send(&PeerMsg::Request { piece, offset, len }.encode()) {
            return Got::Closed;
        }
        self.answer()
    }
}
