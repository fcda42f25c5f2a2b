//! End-to-end transfers under faults: a seeder killed mid-download, a lying
//! peer, a downloader killed and restarted (resumed automatically after login,
//! without refetching verified pieces), and a peer asked for an unknown file or
//! an out-of-range piece.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use harness::peer_client::{Got, PeerClient};
use harness::transfer::*;
use harness::{assert_same_file, wait_until, write_random_file};
use wire::file_meta::PIECE_SIZE;
use wire::peer_msg::{Handshake, PeerMsg, RejectCode};

#[test]
fn seeder_killed_mid_download_completes_from_others() {
    let mut s = Swarm::new();
    let src = s.path("f.bin");
    write_random_file(&src, 64 * PIECE_SIZE + 7, 5);
    let meta = meta_of(&src);
    let data = Arc::new(std::fs::read(&src).unwrap());
    // A real client seeder (killed mid-download) and a slower scripted one.
    let mut real = s.member("real", &[]);
    upload(&mut real, &src);
    let slow = TestPeer::start(
        data,
        meta.clone(),
        Behaviour::Honest,
        Duration::from_millis(5),
    );
    let (mut conn, token) = s.protocol_member("slow");
    announce(&mut conn, &token, &meta, slow.addr);
    // Hold back the scripted seeder so the download is still running when the
    // real seeder dies.
    slow.budget.store(3, Ordering::SeqCst);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    assert!(wait_until(Duration::from_secs(20), || slow
        .log
        .served
        .load(Ordering::SeqCst)
        >= 3));
    real.kill9();
    slow.budget.store(usize::MAX, Ordering::SeqCst);
    wait_complete(&mut leecher, "f.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
    assert!(slow.log.served.load(Ordering::SeqCst) > 3);
}

#[test]
fn lying_peer_is_dropped_and_download_is_correct() {
    let mut s = Swarm::new();
    let src = s.path("f.bin");
    write_random_file(&src, 40 * PIECE_SIZE, 6);
    let meta = meta_of(&src);
    let data = Arc::new(std::fs::read(&src).unwrap());
    let liar = TestPeer::start(data.clone(), meta.clone(), Behaviour::Liar, Duration::ZERO);
    let honest = TestPeer::start(
        data,
        meta.clone(),
        Behaviour::Honest,
        Duration::from_millis(2),
    );
    let (mut conn, token) = s.protocol_member("liar");
    announce(&mut conn, &token, &meta, liar.addr);
    let (mut conn2, token2) = s.protocol_member("honest");
    announce(&mut conn2, &token2, &meta, honest.addr);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    wait_complete(&mut leecher, "f.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
    assert!(
        liar.log.served.load(Ordering::SeqCst) >= 1,
        "the liar was never asked"
    );
    // Dropped: its connection was closed and never opened again.
    assert!(wait_until(Duration::from_secs(5), || liar
        .log
        .closed_by_peer
        .load(Ordering::SeqCst)
        >= 1));
    assert_eq!(liar.log.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn killed_downloader_resumes_without_refetching() {
    let mut s = Swarm::new();
    let src = s.path("f.bin");
    let pieces = 40u32;
    write_random_file(&src, pieces as u64 * PIECE_SIZE - 11, 8);
    let meta = meta_of(&src);
    let data = Arc::new(std::fs::read(&src).unwrap());
    let seed = TestPeer::start(data, meta.clone(), Behaviour::Honest, Duration::ZERO);
    let (mut conn, token) = s.protocol_member("origin");
    announce(&mut conn, &token, &meta, seed.addr);
    // Serve 15 pieces, then stall.
    seed.budget.store(15, Ordering::SeqCst);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    assert!(wait_until(Duration::from_secs(20), || seed
        .log
        .served
        .load(Ordering::SeqCst)
        == 15));
    // Once the 15 verified pieces are in the resume state, kill the client.
    let state = leecher.state_dir.clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            resumable_pieces(&state, &meta.file_sha1) == Some(15)
        }),
        "the resume state never recorded the 15 verified pieces: {:?}",
        resumable_pieces(&state, &meta.file_sha1)
    );
    leecher.kill9();
    let served_before: Vec<u32> = {
        let all = seed.requested();
        // The first 15 requests answered are the pieces that were sent.
        all[..15].to_vec()
    };
    seed.log.requests.lock().unwrap().clear();
    seed.budget.store(usize::MAX, Ordering::SeqCst);

    // Restart and log in only: the interrupted download resumes by itself.
    let mut again = s.client("leecher", &[]);
    wait_complete(&mut again, "f.bin", Duration::from_secs(60));
    assert!(
        again
            .stderr
            .text()
            .contains("resuming the download of f.bin"),
        "{}",
        again.stderr.text()
    );
    assert_same_file(&src, &dest);
    let after = distinct(&seed.requested());
    for p in &served_before {
        assert!(
            !after.contains(p),
            "verified piece {p} fetched again: {after:?}"
        );
    }
    assert_eq!(
        after.len() + served_before.len(),
        pieces as usize,
        "{after:?}"
    );
}

/// How many pieces a client's resume state for `file_sha1` records as verified
/// (read with the client's own decoder), or `None` if it has none yet.
fn resumable_pieces(state_dir: &Path, file_sha1: &[u8; 20]) -> Option<u32> {
    let r = client::storage::ResumeState::load(state_dir, file_sha1)?;
    Some(r.bits.iter().map(|b| b.count_ones()).sum())
}

#[test]
fn peer_answers_bad_requests_with_errors_and_keeps_serving() {
    let mut s = Swarm::new();
    let src = s.path("f.bin");
    write_random_file(&src, 3 * PIECE_SIZE + 5, 11);
    let meta = meta_of(&src);
    let data = std::fs::read(&src).unwrap();
    let mut seeder = s.member("seeder", &[]);
    upload(&mut seeder, &src);
    let token = s.owner_token.clone();
    let addr = seeders(&mut s.owner, &token, "f.bin")[0].clone();

    // Unknown file: an error message, then the connection ends.
    let mut c = PeerClient::connect(&addr);
    c.send(&Handshake::new([0xee; 20], [1; 8]).encode());
    assert!(matches!(c.next_msg(), Got::Msg(PeerMsg::Error(t)) if t.contains("unknown file")));

    // The right file: handshake + bitfield, then rejects for bad requests.
    let (mut c, bits) = PeerClient::open(&addr, meta.file_sha1);
    assert_eq!(bits, vec![0xf0]);
    let bad = [
        (4, 0, 10),                    // no such piece
        (3, 0, 6),                     // past the end of the last piece
        (0, 0, PIECE_SIZE as u32 + 1), // longer than a piece
        (0, PIECE_SIZE as u32 - 1, 2), // crosses the piece end
        (0, 0, 0),                     // empty
    ];
    for (piece, offset, len) in bad {
        assert_eq!(
            c.request(piece, offset, len),
            Got::Msg(PeerMsg::Reject {
                piece,
                offset,
                code: RejectCode::OutOfRange
            })
        );
    }
    // Still serving this connection...
    assert_eq!(
        c.request(3, 0, 5),
        Got::Msg(PeerMsg::Piece {
            piece: 3,
            offset: 0,
            data: data[3 * PIECE_SIZE as usize..].to_vec()
        })
    );
    // ...and others.
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    wait_complete(&mut leecher, "f.bin", Duration::from_secs(30));
    assert_same_file(&src, &dest);
    // Garbage instead of a handshake closes only that connection.
    let mut g = PeerClient::connect(&addr);
    g.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(g.next_msg(), Got::Closed);
    assert!(matches!(
        c.request(3, 1, 4),
        Got::Msg(PeerMsg::Piece {
            piece: 3,
            offset: 1,
            ..
        })
    ));
}
