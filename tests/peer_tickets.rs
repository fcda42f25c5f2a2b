//! Group-only serving end to end (issue 12): a real tracker and real clients,
//! and raw downloaders ([`PeerClient`]) that speak the peer protocol with or
//! without the ticket the tracker signs.
//!
//! - a stranger who knows the hash gets no piece: no ticket, or a ticket for
//!   another file;
//! - a member's ticket shown by another key (replayed) is refused;
//! - a user who left the group gets no piece once the ticket expires (the
//!   tracker runs with `--ticket-secs 2`), on the open connection and on a new one;
//! - a seeder after `logout` serves no one, and serves again after a login;
//! - a tracker presenting another key at login is refused (the pinned key);
//! - a download whose first ticket expires mid-way (the leecher is paused)
//!   renews it and completes byte for byte.

use std::time::Duration;

use harness::peer_client::{ticket, Got, PeerClient};
use harness::transfer::{download, seeders, upload, wait_complete, Swarm};
use harness::{assert_same_file, free_port, write_tracker_info, ClientProc, TrackerProc};
use wire::file_meta::PIECE_SIZE;
use wire::peer_msg::PeerMsg;
use wire::ticket::new_key_pair;

/// Ticket lifetime of the tracker in the expiry tests.
const TICKET_SECS: u64 = 2;

/// A piece request's answer is the piece.
fn served(p: &mut PeerClient) -> bool {
    matches!(p.request(0, 0, 1000), Got::Msg(PeerMsg::Piece { .. }))
}

/// A piece request's answer is an `Error` or a closed connection, never data.
fn refused(p: &mut PeerClient) -> bool {
    matches!(
        p.request(0, 0, 1000),
        Got::Msg(PeerMsg::Error(_)) | Got::Closed
    )
}

/// A swarm with a seeding client sharing `a.bin` and `b.bin` in `g`; returns
/// the seeder, its peer address and both files' hashes.
fn seeded(s: &mut Swarm) -> (ClientProc, String, [u8; 20], [u8; 20]) {
    let (a, meta_a) = s.random_file("a.bin", 2 * PIECE_SIZE + 7, 1);
    let (b, meta_b) = s.random_file("b.bin", PIECE_SIZE + 3, 2);
    let mut seeder = s.member("seeder", &[]);
    upload(&mut seeder, &a);
    upload(&mut seeder, &b);
    let token = s.owner_token.clone();
    let addr = seeders(&mut s.owner, &token, "a.bin")[0].clone();
    (seeder, addr, meta_a.file_sha1, meta_b.file_sha1)
}

#[test]
fn a_stranger_who_knows_the_hash_gets_no_piece() {
    let mut s = Swarm::new();
    let (_seeder, addr, sha_a, _) = seeded(&mut s);
    // No ticket: a request right after the handshake.
    let mut p = PeerClient::connect(&addr);
    assert!(p.handshake(sha_a).is_some());
    assert!(refused(&mut p), "served without a ticket");
    // A bogus ticket.
    let mut p = PeerClient::connect(&addr);
    assert!(p.handshake(sha_a).is_some());
    p.send(
        &PeerMsg::Auth {
            ticket: vec![1, 2, 3],
            sig: [0; 64],
        }
        .encode(),
    );
    assert!(refused(&mut p), "served with garbage as a ticket");
    // A member's valid ticket for b.bin, shown for a.bin.
    let key = new_key_pair().unwrap();
    let tk_b = s.ticket("b.bin", &key);
    let mut p = PeerClient::connect_as(&addr, &key);
    assert!(p.handshake(sha_a).is_some());
    p.auth(&tk_b);
    assert!(refused(&mut p), "a ticket for another file was accepted");
    // The same member with the right ticket is served (the refusals above
    // were about the tickets, not the seeder).
    let tk_a = s.ticket("a.bin", &key);
    let (mut p, _) = PeerClient::open(&addr, sha_a, &key, &tk_a);
    assert!(served(&mut p));
}

#[test]
fn a_ticket_replayed_with_another_key_is_refused() {
    let mut s = Swarm::new();
    let (_seeder, addr, sha_a, _) = seeded(&mut s);
    let member_key = new_key_pair().unwrap();
    let tk = s.ticket("a.bin", &member_key);
    // Someone who saw the ticket on the wire, with a key of its own.
    let thief = new_key_pair().unwrap();
    let mut p = PeerClient::connect_as(&addr, &thief);
    assert!(p.handshake(sha_a).is_some());
    p.auth(&tk);
    assert!(refused(&mut p), "a replayed ticket was accepted");
    // The holder is served.
    let (mut p, _) = PeerClient::open(&addr, sha_a, &member_key, &tk);
    assert!(served(&mut p));
}

#[test]
fn a_user_who_left_gets_no_piece_once_the_ticket_expires() {
    let secs = TICKET_SECS.to_string();
    let mut s = Swarm::with_tracker_args(&["--ticket-secs", &secs]);
    let (_seeder, addr, sha_a, _) = seeded(&mut s);
    let (mut conn, token) = s.protocol_member("leaver");
    let key = new_key_pair().unwrap();
    let tk = ticket(&mut conn, &token, "g", "a.bin", &key);
    let (mut open, _) = PeerClient::open(&addr, sha_a, &key, &tk);
    assert!(served(&mut open), "a member is served");
    conn.ok(Some(&token), "leave_group", &["g"]);
    // No new ticket for someone outside the group.
    let k = wire::ticket::public_key_hex(&key.verifying_key());
    let err = conn.err(Some(&token), "file_info", &["g", "a.bin", &k]);
    assert!(!err.is_empty());
    // Past the expiry: the open connection and a new one get no piece.
    std::thread::sleep(Duration::from_secs(TICKET_SECS + 1) + Duration::from_millis(200));
    assert!(refused(&mut open), "served on an expired ticket");
    let mut again = PeerClient::connect_as(&addr, &key);
    assert!(again.handshake(sha_a).is_some());
    again.auth(&tk);
    assert!(refused(&mut again), "an expired ticket opened a connection");
}

#[test]
fn a_seeder_serves_no_one_after_logout_and_again_after_login() {
    let mut s = Swarm::new();
    let (mut seeder, addr, sha_a, _) = seeded(&mut s);
    let key = new_key_pair().unwrap();
    let tk = s.ticket("a.bin", &key);
    let (mut open, _) = PeerClient::open(&addr, sha_a, &key, &tk);
    assert!(served(&mut open));
    assert_eq!(seeder.cmd("logout"), "logged out");
    assert!(
        refused(&mut open),
        "an open connection was served after logout"
    );
    let mut p = PeerClient::connect_as(&addr, &key);
    assert!(
        p.handshake(sha_a).is_none(),
        "a new connection was answered after logout"
    );
    assert_eq!(seeder.cmd("login seeder pw"), "logged in as seeder");
    let (mut p, _) = PeerClient::open(&addr, sha_a, &key, &tk);
    assert!(served(&mut p), "not serving again after the next login");
}

#[test]
fn a_changed_tracker_key_at_login_is_refused() {
    let mut s = Swarm::new();
    let state = s.path("state-alice");
    let mut c = s.client("alice", &[]);
    let pinned = std::fs::read_to_string(state.join("tracker_keys")).unwrap();
    assert_eq!(pinned.trim().len(), 64, "{pinned:?}");
    c.kill9();
    // Another deployment (its own data dir: its own key) with the same user.
    let dir = tempfile::tempdir().unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let other = TrackerProc::start(&info, 1, &dir.path().join("data"));
    other.connect().user("alice", "pw");
    let mut c = ClientProc::start(&info, &state, &[]);
    let reply = c.cmd("login alice pw");
    assert!(
        reply.starts_with("error: ") && reply.contains("differs from the key pinned"),
        "{reply}"
    );
    assert!(
        c.cmd("list_groups").contains("not logged in"),
        "the session was kept"
    );
    let after = std::fs::read_to_string(state.join("tracker_keys")).unwrap();
    assert_eq!(after, pinned, "the pin was replaced");
}

#[test]
fn a_download_renews_its_ticket_and_completes() {
    let secs = TICKET_SECS.to_string();
    let mut s = Swarm::with_tracker_args(&["--ticket-secs", &secs]);
    let (src, _) = s.random_file("big.bin", 96 * PIECE_SIZE + 11, 7);
    let mut seeder = s.member("seeder", &[]);
    upload(&mut seeder, &src);
    let mut leecher = s.member("leecher", &["--threads", "1"]);
    let dest = s.path("got.bin");
    download(&mut leecher, "big.bin", &dest);
    // Paused for longer than the first ticket lives: the seeder refuses it
    // afterwards, so only a renewed ticket finishes the download.
    let pid = leecher.pid() as i32;
    // SAFETY: signals to the child process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(TICKET_SECS + 2));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let lines = harness::transfer::show_downloads(&mut leecher);
    assert!(
        !lines.iter().any(|l| l.starts_with("[C]")),
        "finished before the pause: the test proves nothing ({lines:?})"
    );
    wait_complete(&mut leecher, "big.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
}
