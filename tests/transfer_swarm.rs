//! End-to-end transfers between real clients: 1 → 1 for the edge sizes and a big
//! file, 3 seeders → 1 (each serves some), 1 → 3 leechers at once (they serve
//! each other), and a non-member that can neither list nor download.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use harness::transfer::*;
use harness::{assert_same_file, write_random_file};
use wire::file_meta::PIECE_SIZE;

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
    assert!(harness::wait_until(Duration::from_secs(5), || served_by(
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
    let src = s.path("movie.bin");
    write_random_file(&src, 96 * PIECE_SIZE, 9);
    let meta = meta_of(&src);
    let data = Arc::new(std::fs::read(&src).unwrap());
    // The original seeder is throttled (20 ms a piece) so the leechers overlap
    // long enough to find each other as partial seeders.
    let seed = TestPeer::start(
        data,
        meta.clone(),
        Behaviour::Honest,
        Duration::from_millis(20),
    );
    let (mut conn, token) = s.protocol_member("origin");
    announce(&mut conn, &token, &meta, seed.addr);
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
        assert!(harness::wait_until(Duration::from_secs(5), || !served_by(
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
    assert!(seed.log.served.load(std::sync::atomic::Ordering::SeqCst) < 3 * meta.piece_count());
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
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dest.exists());
}
