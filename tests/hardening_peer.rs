//! Hostile peers against a running client's peer server, speaking the binary peer
//! protocol through `wire::peer_msg`: asking for a file it does not share (by the
//! hash of `/etc/passwd` or of a `../../etc/passwd`-style name — the protocol
//! names files by content hash, never by path), out-of-range and oversize piece
//! requests, garbage, and 500 silent connections. Each gets a refusal (`Error`,
//! `Reject` or a closed connection), never bytes it should not have, and the
//! client keeps serving an honest peer.
//!
//! The client prints nothing about its peer port; the port is the one it announced
//! to the tracker, read from `file_info` after the upload.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::peer_client::{Got, PeerClient};
use harness::{free_port, write_random_file, write_tracker_info, ClientProc, TrackerProc};
use sha1::{Digest, Sha1};
use wire::file_meta::hash_from_hex;
use wire::peer_msg::{Handshake, PeerMsg, RejectCode, MAX_MSG_LEN, MAX_REQUEST_LEN};

const PIECE: u32 = 512 * 1024;
const FILE_LEN: u64 = 1_300_000; // 3 pieces, the last one short

fn sha1_bytes(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

struct Setup {
    _dir: tempfile::TempDir,
    _tracker: TrackerProc,
    client: ClientProc,
    peer_addr: String,
    sha: [u8; 20],
    content: Vec<u8>,
    /// A member's key and a download ticket for it.
    key: wire::ticket::KeyPair,
    ticket: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let info = write_tracker_info(d, &[free_port()]);
    let tracker = TrackerProc::start(&info, 1, &d.join("data"));
    let src = d.join("shared.bin");
    let sha_hex = write_random_file(&src, FILE_LEN, 99);
    let mut client = ClientProc::start(&info, &d.join("seeder"), &[]);
    assert_eq!(client.cmd("create_user s pw"), "user s created");
    assert_eq!(client.cmd("login s pw"), "logged in as s");
    assert_eq!(client.cmd("create_group g"), "group g created");
    let up = client.cmd(&format!("upload_file \"{}\" g", src.display()));
    assert!(up.starts_with("uploaded shared.bin"), "{up}");
    let mut tc = tracker.connect();
    let tok = tc.login("s", "pw");
    let (head, seeders) = tc.ok(Some(&tok), "file_info", &["g", "shared.bin"]);
    assert_eq!(head[3], sha_hex);
    let peer_addr = seeders[0][0].clone();
    let key = wire::ticket::new_key_pair().unwrap();
    let ticket = harness::peer_client::ticket(&mut tc, &tok, "g", "shared.bin", &key);
    Setup {
        key,
        ticket,
        _dir: dir,
        _tracker: tracker,
        client,
        peer_addr,
        sha: hash_from_hex(&sha_hex).expect("the tracker's file_sha1 is hex"),
        content: std::fs::read(&src).unwrap(),
    }
}

/// An honest peer gets piece `i` and it is the file's bytes.
fn assert_serves(s: &Setup, i: u32) {
    let start = Instant::now();
    let mut p = open(s);
    let from = (i * PIECE) as usize;
    let len = (s.content.len() - from).min(PIECE as usize) as u32;
    match p.request(i, 0, len) {
        Got::Msg(PeerMsg::Piece {
            piece,
            offset,
            data,
        }) => {
            assert_eq!((piece, offset), (i, 0));
            assert!(
                data == s.content[from..from + len as usize],
                "piece {i} differs"
            );
        }
        other => panic!("piece {i}: {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5), "served slowly");
}

/// The handshake is followed by a Bitfield (all three pieces); take it off.
fn open(s: &Setup) -> PeerClient {
    let (p, bits) = PeerClient::open(&s.peer_addr, s.sha, &s.key, &s.ticket);
    assert_eq!(bits, vec![0xe0]);
    p
}

fn assert_client_alive(s: &mut Setup) {
    assert!(
        s.client.child.try_wait().unwrap().is_none(),
        "client died; stderr:\n{}",
        s.client.stderr.text()
    );
    assert!(
        !s.client.stderr.text().contains("panicked"),
        "{}",
        s.client.stderr.text()
    );
}

#[test]
fn files_it_does_not_share_are_refused_whatever_they_are_called() {
    let mut s = setup();
    let passwd = std::fs::read(Path::new("/etc/passwd")).unwrap_or_default();
    let names: Vec<[u8; 20]> = vec![
        sha1_bytes(&passwd),
        sha1_bytes(b"../../etc/passwd"),
        sha1_bytes(b"/etc/shadow"),
        sha1_bytes(b""),
        [0u8; 20],
        [0xffu8; 20],
    ];
    for sha in names {
        let mut p = PeerClient::connect(&s.peer_addr);
        assert!(
            p.handshake(sha).is_none(),
            "a handshake for {sha:02x?} was accepted"
        );
    }
    // A handshake of another protocol version, or bad magic: refused too.
    let mut p = PeerClient::connect(&s.peer_addr);
    let mut hs = Handshake::new(s.sha, *b"attacker").encode();
    hs[4] = 200;
    p.send(&hs);
    assert!(
        !matches!(p.answer(), Got::Msg(PeerMsg::Bitfield(_))),
        "version 200 accepted"
    );
    let mut p = PeerClient::connect(&s.peer_addr);
    p.send(b"GET /../../etc/passwd HTTP/1.0\r\n\r\n");
    let mut rest = Vec::new();
    let _ = p.stream.read_to_end(&mut rest);
    assert!(
        rest.len() < 4096,
        "garbage was answered with {} bytes",
        rest.len()
    );
    assert_serves(&s, 0);
    assert_client_alive(&mut s);
}

#[test]
fn out_of_range_and_oversize_requests_are_rejected() {
    let mut s = setup();
    let last = (FILE_LEN % PIECE as u64) as u32;
    let bad: Vec<(u32, u32, u32, &str)> = vec![
        (3, 0, 1, "piece past the end"),
        (u32::MAX, 0, 1, "piece u32::MAX"),
        (0, PIECE, 1, "offset past the piece"),
        (0, PIECE - 1, 2, "range past the piece"),
        (2, last, 1, "range past the short last piece"),
        (2, 0, last + 1, "longer than the last piece"),
        (0, u32::MAX, 2, "offset + len overflows"),
        (0, 0, 0, "empty request"),
        (0, 0, MAX_REQUEST_LEN + 1, "longer than the request limit"),
        (0, 0, u32::MAX, "length u32::MAX"),
    ];
    for (piece, offset, len, what) in bad {
        let mut p = open(&s);
        match p.request(piece, offset, len) {
            Got::Msg(PeerMsg::Reject { code, .. }) => {
                assert_eq!(code, RejectCode::OutOfRange, "{what}")
            }
            Got::Msg(PeerMsg::Error(_)) | Got::Closed => {}
            other => panic!("{what}: answered {other:?}"),
        }
    }
    // After a rejection the same connection still serves a valid request.
    let mut p = open(&s);
    if let Got::Msg(PeerMsg::Reject { .. }) = p.request(9, 0, 1) {
        match p.request(1, 100, 1000) {
            Got::Msg(PeerMsg::Piece { data, .. }) => {
                let from = PIECE as usize + 100;
                assert!(data == s.content[from..from + 1000]);
            }
            other => panic!("a valid request after a rejection: {other:?}"),
        }
    }
    // Malformed frames: an oversize length, an unknown type, a short request.
    for frame in [
        (MAX_MSG_LEN + 1).to_be_bytes().to_vec(),
        vec![0, 0, 0, 1, 99],
        vec![0, 0, 0, 3, 3, 0, 0],
    ] {
        let mut p = open(&s);
        p.send(&frame);
        p.send(&[0u8; 16]);
        match p.answer() {
            Got::Closed | Got::Msg(PeerMsg::Error(_)) => {}
            other => panic!("a malformed frame {frame:?} was answered {other:?}"),
        }
    }
    for i in 0..3 {
        assert_serves(&s, i);
    }
    assert_client_alive(&mut s);
}

/// 500 silent connections from one address (127.0.0.2): the peer server keeps
/// at most its per-IP cap (64) of them and closes the rest, and an honest peer
/// from another address is served at once.
#[test]
fn five_hundred_silent_peers_stall_no_one() {
    let mut s = setup();
    let addr: std::net::SocketAddr = s.peer_addr.parse().unwrap();
    let mut silent: Vec<TcpStream> = (0..500)
        .map(|_| {
            harness::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), addr).expect("connect")
        })
        .collect();
    for i in 0..3 {
        assert_serves(&s, i);
    }
    let closed = silent
        .iter_mut()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            match (&**c).read(&mut [0u8; 16]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    assert!(closed >= 500 - 64, "only {closed} of 500 closed");
    // The shell still answers too.
    assert_eq!(s.client.cmd("show_downloads"), "0 downloads");
    drop(silent);
    assert_serves(&s, 2);
    assert_client_alive(&mut s);
}
