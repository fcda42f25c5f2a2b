//! End-to-end transfers between real clients: 1 → 1 for the edge sizes and a big
//! file, 3 seeders → 1 (each serves some), 1 → 3 leechers at once (they serve
//! each other), a leecher serving its verified pieces before it completes
//! (partial seeding), a download with no reachable peer failing with its
//! reason, and a non-member that can neither list nor download.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::peer_client::{Got, PeerClient};
use harness::transfer::*;
use harness::{assert_same_file, wait_until, write_random_file};
use wire::file_meta::PIECE_SIZE;
use wire::peer_msg::PeerMsg;

/// `transfer stats: <name>: <addr> served <n> pieces` lines of a client's log.
fn served_by(stderr: &str, name: &str) -> HashMap<String, u64> {
    let prefix = format!("transfer stats: {name}: ");
    stderr
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (addr, n) = rest.split_once(" served ")?;
            Some((
                addr.to_string(),
                n.trim_end_matches(" pieces").parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn one_to_one_edge_sizes_and_big_file() {
    let mut s = Swarm::new();
    let mut seeder = s.member("seeder", &[]);
    let mut leecher = s.member("leecher", &[]);
    let p = PIECE_SIZE;
    let sizes = [
        ("zero", 0),
        ("one", 1),
        ("piece", p),
        ("piece_plus_one", p + 1),
        ("big", 64 * 1024 * 1024 + 3),
    ];
    for (i, (name, size)) in sizes.iter().enumerate() {
        write_random_file(&s.path(name), *size, i as u64 + 1);
        upload(&mut seeder, &s.path(name));
    }
    let out = s.path("out");
    std::fs::create_dir(&out).unwrap();
    for (name, _) in &sizes {
        download(&mut leecher, name, &out);
    }
    for (name, _) in &sizes {
        wait_complete(&mut leecher, name, Duration::from_secs(60));
        assert_same_file(&s.path(name), &out.join(name));
        assert!(!out.join(format!("{name}.swarmshare-part")).exists());
    }
    // The leecher is now a seeder of each file.
    let token = s.owner_token.clone();
    let seeds = seeders(&mut s.owner, &token, "big");
    assert_eq!(seeds.len(), 2, "{seeds:?}");
}

#[test]
fn three_seeders_to_one_each_serves() {
    let mut s = Swarm::new();
    let src = s.path("shared.bin");
    write_random_file(&src, 48 * PIECE_SIZE + 100, 42);
    let mut seeders_procs = Vec::new();
    for i in 0..3 {
        let mut c = s.member(&format!("seed{i}"), &[]);
        // Each uploads the same content from its own copy.
        let copy = s.path(&format!("copy{i}"));
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(&src, copy.join("shared.bin")).unwrap();
        upload(&mut c, &copy.join("shared.bin"));
        seeders_procs.push(c);
    }
    let token = s.owner_token.clone();
    let seeds = seeders(&mut s.owner, &token, "shared.bin");
    assert_eq!(seeds.len(), 3, "{seeds:?}");
    let mut leecher = s.member("leecher", &["--log-level", "info"]);
    let dest = s.path("got.bin");
    download(&mut leecher, "shared.bin", &dest);
    wait_complete(&mut leecher, "shared.bin", Duration::from_secs(60));
    assert_same_file(&src, &dest);
    assert!(wait_until(Duration::from_secs(5), || served_by(
        &leecher.stderr.text(),
        "shared.bin"
    )
    .len()
        >= 3));
    let by = served_by(&leecher.stderr.text(), "shared.bin");
    for seed in &seeds {
        assert!(
            by.get(seed).copied().unwrap_or(0) > 0,
            "{seed} served nothing: {by:?}"
        );
    }
}

#[test]
fn one_seeder_three_leechers_share_among_themselves() {
    let mut s = Swarm::new();
    let (src, meta) = s.random_file("movie.bin", 96 * PIECE_SIZE, 9);
    // The original seeder is throttled (20 ms a piece) so the leechers overlap
    // long enough to find each other as partial seeders.
    let seed = s.scripted_seeder("origin", &src, Behaviour::Honest, Duration::from_millis(20));
    let mut leechers: Vec<_> = (0..3)
        .map(|i| s.member(&format!("l{i}"), &["--log-level", "info"]))
        .collect();
    for (i, l) in leechers.iter_mut().enumerate() {
        download(l, "movie.bin", &s.path(&format!("got{i}")));
    }
    for (i, l) in leechers.iter_mut().enumerate() {
        wait_complete(l, "movie.bin", Duration::from_secs(90));
        assert_same_file(&src, &s.path(&format!("got{i}")));
    }
    // Pieces that did not come from the origin came from other leechers.
    let origin = seed.addr.to_string();
    let mut from_leechers = 0;
    for l in &leechers {
        assert!(wait_until(Duration::from_secs(5), || !served_by(
            &l.stderr.text(),
            "movie.bin"
        )
        .is_empty()));
        from_leechers += served_by(&l.stderr.text(), "movie.bin")
            .iter()
            .filter(|(a, _)| **a != origin)
            .map(|(_, n)| n)
            .sum::<u64>();
    }
    assert!(from_leechers > 0, "leechers served nothing to each other");
    // The origin sent fewer pieces than three full copies.
    assert!(seed.served() < 3 * meta.piece_count());
}

#[test]
fn non_member_cannot_list_or_download() {
    let mut s = Swarm::new();
    let mut seeder = s.member("seeder", &[]);
    let src = s.path("secret.bin");
    write_random_file(&src, 1000, 3);
    upload(&mut seeder, &src);
    let mut outsider = s.client("outsider", &[]);
    let reply = outsider.cmd("list_files g");
    assert!(reply.starts_with("error: "), "{reply}");
    let dest = s.path("stolen.bin");
    let reply = outsider.cmd(&format!(
        "download_file g secret.bin \"{}\"",
        dest.display()
    ));
    assert!(reply.starts_with("error: "), "{reply}");
    // The shell answers in order: once it lists no download, none was started.
    assert_eq!(outsider.cmd("show_downloads"), "0 downloads");
    assert!(!dest.exists());
    assert!(!s.path("stolen.bin.swarmshare-part").exists());
}

/// A leecher serves the pieces it has verified while its own download is still
/// running: the origin serves 4 pieces and stalls, the tracker then lists the
/// leecher as a seeder, and a peer that connects to it gets a bitfield of
/// exactly verified pieces, the right bytes for one of them, and a refusal for
/// a piece it does not have yet.
#[test]
fn a_leecher_serves_its_verified_pieces_before_completing() {
    let mut s = Swarm::new();
    let (src, meta) = s.random_file("part.bin", 12 * PIECE_SIZE + 5, 21);
    let data = std::fs::read(&src).unwrap();
    let origin = s.scripted_seeder("origin", &src, Behaviour::Honest, Duration::ZERO);
    origin.hold_after(4);
    let token = s.owner_token.clone();
    let mut leecher = s.member("leecher", &[]);
    download(&mut leecher, "part.bin", &s.path("got.bin"));

    // The tracker lists the leecher once it holds a verified piece.
    let origin_addr = origin.addr.to_string();
    let mut leecher_addr = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            leecher_addr = seeders(&mut s.owner, &token, "part.bin")
                .into_iter()
                .find(|a| *a != origin_addr);
            leecher_addr.is_some()
        }),
        "the leecher never became a seeder; stderr:\n{}",
        leecher.stderr.text()
    );
    let leecher_addr = leecher_addr.unwrap();
    // Its bitfield shows the 4 pieces the origin sent, once they are verified.
    let key = wire::ticket::new_key_pair().unwrap();
    let tk = s.ticket("part.bin", &key);
    let sent = || distinct(&origin.requested().into_iter().take(4).collect::<Vec<_>>());
    let mut bits = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            bits = PeerClient::open(&leecher_addr, meta.file_sha1, &key, &tk).1;
            held(&bits, meta.piece_count()).len() == 4
        }),
        "bitfield {bits:?}; the origin sent {:?}",
        sent()
    );
    let have = held(&bits, meta.piece_count());
    assert_eq!(have, sent());

    let (mut peer, _) = PeerClient::open(&leecher_addr, meta.file_sha1, &key, &tk);
    let p = *have.iter().next().unwrap();
    let from = meta.piece_offset(p as usize) as usize;
    let len = meta.piece_len(p as usize) as usize;
    assert_eq!(
        peer.request(p, 0, len as u32),
        Got::Msg(PeerMsg::Piece {
            piece: p,
            offset: 0,
            data: data[from..from + len].to_vec()
        })
    );
    let missing = (0..meta.piece_count() as u32)
        .find(|i| !have.contains(i))
        .unwrap();
    assert!(
        matches!(
            peer.request(missing, 0, 16),
            Got::Msg(PeerMsg::Reject { piece, .. }) if piece == missing
        ),
        "piece {missing} is not verified yet and must be refused"
    );
    // ...all while its own download is still running.
    let status = show_downloads(&mut leecher);
    assert!(
        status.len() == 1 && status[0].starts_with("[D] [g] part.bin"),
        "{status:?}"
    );
    origin.release();
    wait_complete(&mut leecher, "part.bin", Duration::from_secs(60));
    assert_same_file(&src, &s.path("got.bin"));
}

/// A download whose only seeder is gone fails, and `show_downloads` says why.
#[test]
fn a_download_with_no_reachable_peer_fails_with_the_reason() {
    let mut s = Swarm::new();
    let (_, meta) = s.random_file("gone.bin", 3 * PIECE_SIZE, 22);
    // A seeder that announces, then disappears (its port refuses connections).
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut conn, token) = s.protocol_member("ghost");
    announce(&mut conn, &token, &meta, gone.local_addr().unwrap());
    drop(gone);
    let mut leecher = s.member("leecher", &[]);
    let dest = s.path("got.bin");
    download(&mut leecher, "gone.bin", &dest);
    let mut status = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            status = show_downloads(&mut leecher);
            status.iter().any(|l| l.starts_with("[F]"))
        }),
        "still not failed: {status:?}"
    );
    assert_eq!(
        status,
        ["[F] [g] gone.bin: no peer could serve the file (all seeders gone)"]
    );
    assert!(!dest.exists());
}

/// The pieces a bitfield marks, among `count`.
fn held(bits: &[u8], count: usize) -> HashSet<u32> {
    let bits = wire::pieces::Bitfield::from_bytes(bits.to_vec(), count).expect("a valid bitfield");
    bits.ones().map(|i| i.raw()).collect()
}
