//! End-to-end transfers under faults: a seeder killed mid-download, a lying
//! peer, a downloader killed and restarted (resumed automatically after login,
//! without refetching verified pieces), and a peer asked for an unknown file or
//! an out-of-range piece.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::peer_client::{Got, PeerClient};
use harness::transfer::*;
use harness::{assert_same_file, wait_until};
use wire::file_meta::PIECE_SIZE;
use wire::peer_msg::{Handshake, PeerMsg, RejectCode};

#[test]
fn seeder_killed_mid_download_completes_from_others() {
    let mut s = Swarm::new();
    let (src, _) = s.random_file("f.bin", 64 * PIECE_SIZE + 7, 5);
    // A real client seeder (killed mid-download) and a slower scripted one.
    let mut real = s.member("real", &[]);
    upload(&mut real, &src);
    let slow = s.scripted_seeder("slow", &src, Behaviour::Honest, Duration::from_millis(5));
    // Hold back the scripted seeder so the download is still running when the
    // real seeder dies.
    slow.hold_after(3);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    slow.wait_served(3);
    real.kill9();
    slow.release();
    wait_complete(&mut leecher, "f.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
    assert!(slow.served() > 3);
}

#[test]
fn lying_peer_is_dropped_and_download_is_correct() {
    let mut s = Swarm::new();
    let (src, _) = s.random_file("f.bin", 40 * PIECE_SIZE, 6);
    let liar = s.scripted_seeder("liar", &src, Behaviour::Liar, Duration::ZERO);
    let _honest = s.scripted_seeder("honest", &src, Behaviour::Honest, Duration::from_millis(2));
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    wait_complete(&mut leecher, "f.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
    assert!(liar.served() >= 1, "the liar was never asked");
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
    let pieces = 40u32;
    let (src, meta) = s.random_file("f.bin", pieces as u64 * PIECE_SIZE - 11, 8);
    let seed = s.scripted_seeder("origin", &src, Behaviour::Honest, Duration::ZERO);
    // Serve 15 pieces, then stall.
    seed.hold_after(15);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "f.bin", &dest);
    seed.wait_served(15);
    // Once the 15 verified pieces are in the resume state, kill the client.
    let state = client::user_state::user_dir(&leecher.state_dir, "leecher");
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
    seed.release();

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
    let (src, meta) = s.random_file("f.bin", 3 * PIECE_SIZE + 5, 11);
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
    let key = wire::ticket::new_key_pair().unwrap();
    let tk = s.ticket("f.bin", &key);
    let (mut c, bits) = PeerClient::open(&addr, meta.file_sha1, &key, &tk);
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
