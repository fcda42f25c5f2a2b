//! The attack suite against a real tracker: users reaching for what is not theirs,
//! dead, forged and truncated session tokens, 500 silent connections, and a
//! 100 MiB request line. Every attack gets a clear `ERR` refusal (or is simply
//! outlasted), changes nothing, and the tracker keeps serving everyone else
//! promptly with bounded memory.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use harness::{lone_tracker, row, rss_kib, TrackerConn};
use wire::tracker_msg::{Reply, ERR_SESSION};

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn refused(c: &mut TrackerConn, tok: Option<&str>, cmd: &str, args: &[&str], starts: &str) {
    let e = c.err(tok, cmd, args);
    assert!(
        e.starts_with(starts),
        "{cmd} {args:?}: expected a refusal starting {starts:?}, got {e:?}"
    );
}

/// A group `g` owned by `owner` with member `member`, pending `pending`, one file
/// `secret.txt`; plus an `outsider`. Returns the tokens in that order.
fn group_with_a_file(c: &mut TrackerConn) -> [String; 4] {
    let owner = c.user("owner", "pw");
    let member = c.user("member", "pw");
    let pending = c.user("pending", "pw");
    let outsider = c.user("outsider", "pw");
    c.ok(Some(&owner), "create_group", &["g"]);
    c.ok(Some(&member), "join_group", &["g"]);
    c.ok(Some(&owner), "accept_request", &["g", "member"]);
    c.ok(Some(&pending), "join_group", &["g"]);
    c.ok(
        Some(&owner),
        "upload_file",
        &[
            "g",
            "secret.txt",
            "10",
            "524288",
            SHA_A,
            SHA_A,
            "127.0.0.1:5000",
        ],
    );
    [owner, member, pending, outsider]
}

#[test]
fn non_members_cannot_list_or_fetch_a_groups_files() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    let [owner, member, pending, outsider] = group_with_a_file(&mut c);

    for tok in [&outsider, &pending] {
        refused(
            &mut c,
            Some(tok),
            "list_files",
            &["g"],
            "not a member of group g",
        );
        // file_info is what a download starts with: piece hashes and seeders.
        refused(
            &mut c,
            Some(tok),
            "file_info",
            &["g", "secret.txt"],
            "not a member",
        );
        refused(
            &mut c,
            Some(tok),
            "add_seeder",
            &["g", "secret.txt", SHA_A, "127.0.0.1:6000"],
            "not a member",
        );
        refused(
            &mut c,
            Some(tok),
            "upload_file",
            &[
                "g",
                "planted",
                "10",
                "524288",
                SHA_A,
                SHA_A,
                "127.0.0.1:6000",
            ],
            "not a member",
        );
        refused(
            &mut c,
            Some(tok),
            "stop_share",
            &["g", "secret.txt"],
            "not sharing",
        );
        refused(&mut c, Some(tok), "leave_group", &["g"], "not a member");
    }
    // Nothing a refused request tried is visible; members still see the file.
    for tok in [&owner, &member] {
        let (_, rows) = c.ok(Some(tok), "list_files", &["g"]);
        assert_eq!(rows, vec![row(&["secret.txt", "10", "1", "0"])]);
        let (head, seeders) = c.ok(Some(tok), "file_info", &["g", "secret.txt"]);
        assert_eq!(head[0], "secret.txt");
        assert_eq!(seeders, vec![row(&["127.0.0.1:5000"])]);
    }
    // A member who leaves loses access at once.
    c.ok(Some(&member), "leave_group", &["g"]);
    refused(&mut c, Some(&member), "list_files", &["g"], "not a member");
    refused(
        &mut c,
        Some(&member),
        "file_info",
        &["g", "secret.txt"],
        "not a member",
    );
    t.assert_alive();
}

#[test]
fn only_the_owner_lists_accepts_and_rejects_requests() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    let [owner, member, pending, outsider] = group_with_a_file(&mut c);

    for tok in [&member, &pending, &outsider] {
        refused(
            &mut c,
            Some(tok),
            "list_requests",
            &["g"],
            "only the owner of g",
        );
        // Acting for the owner: accepting or rejecting someone else's request...
        refused(
            &mut c,
            Some(tok),
            "accept_request",
            &["g", "pending"],
            "only the owner of g",
        );
        refused(
            &mut c,
            Some(tok),
            "reject_request",
            &["g", "pending"],
            "only the owner of g",
        );
        // ...or for oneself.
        refused(
            &mut c,
            Some(tok),
            "accept_request",
            &["g", "outsider"],
            "only the owner of g",
        );
    }
    // The pending user cannot let themself in, nor can a member remove them.
    refused(
        &mut c,
        Some(&pending),
        "accept_request",
        &["g", "pending"],
        "only the owner",
    );
    refused(
        &mut c,
        Some(&member),
        "reject_request",
        &["g", "member"],
        "only the owner",
    );
    // Nothing changed: the request is still pending, the membership the same.
    assert_eq!(
        c.ok(Some(&owner), "list_requests", &["g"]).1,
        vec![row(&["pending"])]
    );
    let groups = c.ok(Some(&outsider), "list_groups", &[]).1;
    assert_eq!(groups, vec![row(&["g", "owner", "2", "-"])]);
    refused(&mut c, Some(&pending), "list_files", &["g"], "not a member");
    // The owner can.
    c.ok(Some(&owner), "reject_request", &["g", "pending"]);
    assert!(c.ok(Some(&owner), "list_requests", &["g"]).1.is_empty());
    t.assert_alive();
}

#[test]
fn dead_forged_and_truncated_tokens_are_refused() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut c = t.connect();
    let [owner, member, _pending, _outsider] = group_with_a_file(&mut c);
    assert!(owner.len() >= 32, "token {owner:?} shorter than 128 bits");

    // A token reused after logout.
    let old = c.login("member", "pw");
    c.ok(Some(&old), "logout", &[]);
    // Forged: random hex of the right length, and of other lengths.
    let mut x: u64 = 0x243F_6A88_85A3_08D3 ^ u64::from(t.pid());
    let mut forged_hex = |len: usize| -> String {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 16) as u32, 16).unwrap()
            })
            .collect()
    };
    let mut bad: Vec<(String, &str)> = vec![
        (old.clone(), "after logout"),
        (forged_hex(owner.len()), "forged"),
        (forged_hex(32), "forged 128-bit"),
        (forged_hex(64), "forged 256-bit"),
        (owner[..owner.len() - 1].to_string(), "truncated by one"),
        (owner[..owner.len() / 2].to_string(), "truncated to half"),
        (owner[..1].to_string(), "truncated to one char"),
        (format!("{owner}0"), "extended by one"),
        (owner.to_uppercase(), "upper-cased"),
    ];
    // A one-character change of a live token.
    let mut flipped = owner.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    bad.push((String::from_utf8(flipped).unwrap(), "one char changed"));

    for (tok, what) in &bad {
        if tok == &owner {
            continue; // e.g. an all-digit token upper-cases to itself
        }
        for (cmd, args) in [
            ("whoami", vec![]),
            ("list_groups", vec![]),
            ("list_files", vec!["g"]),
            ("file_info", vec!["g", "secret.txt"]),
            ("list_requests", vec!["g"]),
            ("create_group", vec!["forged group"]),
            ("accept_request", vec!["g", "pending"]),
            ("leave_group", vec!["g"]),
            ("logout", vec![]),
        ] {
            let e = c.err(Some(tok), cmd, &args);
            assert!(
                e.starts_with(ERR_SESSION),
                "{what} token {tok:?}: {cmd} answered {e:?}"
            );
        }
    }
    // None of it changed anything; the live tokens still work.
    let groups = c.ok(Some(&member), "list_groups", &[]).1;
    assert_eq!(groups, vec![row(&["g", "owner", "2", "member"])]);
    assert_eq!(
        c.ok(Some(&owner), "list_requests", &["g"]).1,
        vec![row(&["pending"])]
    );
    assert_eq!(c.ok(Some(&owner), "whoami", &[]).0, vec!["owner"]);
    // The logged-out session stays dead after a restart too.
    t.restart();
    let mut c = t.connect();
    assert!(c.err(Some(&old), "whoami", &[]).starts_with(ERR_SESSION));
    assert_eq!(c.ok(Some(&member), "whoami", &[]).0, vec!["member"]);
    t.assert_alive();
}

#[test]
fn five_hundred_silent_connections_stall_no_one() {
    // All from 127.0.0.1: the per-IP cap is raised so the tracker holds them all
    // (tracker_abuse_limits.rs tests the cap itself).
    let (_dir, mut t) = lone_tracker(&["--max-conns-per-ip", "1024"]);
    let mut good = t.connect();
    let tok = good.user("good", "pw");
    let before = rss_kib(t.pid());
    let mut silent: Vec<TcpStream> = Vec::with_capacity(500);
    for i in 0..500 {
        silent.push(TcpStream::connect(&t.addr).unwrap());
        if i % 100 == 99 {
            good.assert_served(&tok, "list_groups");
        }
    }
    // Every one of them is accepted (the tracker holds them) and none is answered.
    for i in 0..10 {
        good.assert_served(&tok, "list_groups");
        good.ok(Some(&tok), "create_group", &[&format!("g{i}")]);
    }
    // New connections are still accepted and served while the 500 sit there.
    let mut late = t.connect();
    let tok2 = late.user("late", "pw");
    late.assert_served(&tok2, "list_groups");
    let during = rss_kib(t.pid());
    // + the login pool's argon2 memory for `late` (2 threads x 19 MiB).
    assert!(
        during < before + (32 + 40) * 1024,
        "500 idle connections grew memory from {before} KiB to {during} KiB"
    );
    // The silent ones get nothing: a read on one times out rather than seeing data.
    let s = &mut silent[0];
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 16];
    match std::io::Read::read(s, &mut buf) {
        Ok(0) => {} // closed by the tracker: also fine
        Ok(n) => panic!("a silent connection got {n} bytes unasked"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    drop(silent);
    thread::sleep(Duration::from_millis(200));
    good.assert_served(&tok, "list_groups");
    assert_eq!(good.ok(Some(&tok), "list_groups", &[]).1.len(), 10);
    t.assert_alive();
}

#[test]
fn a_100_mib_line_is_refused_and_memory_stays_bounded() {
    let (_dir, mut t) = lone_tracker(&[]);
    let mut good = t.connect();
    let tok = good.user("good", "pw");
    let pid = t.pid();
    let before = rss_kib(pid);

    let addr = t.addr.clone();
    let sender = thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![b'A'; 1 << 20];
        let start = Instant::now();
        for _ in 0..100 {
            s.write_all(&chunk)
                .expect("the tracker keeps reading (and discarding)");
        }
        s.write_all(b"\n").unwrap();
        let mut c = TrackerConn::from_stream(s);
        let r = c.read_reply().expect("a reply to the long line");
        (r, start.elapsed(), c)
    });

    // While the line streams in, others are served and memory stays flat.
    let mut peak = before;
    let mut served = 0;
    while !sender.is_finished() {
        good.assert_served(&tok, "list_groups");
        served += 1;
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(50));
    }
    let (reply, took, mut attacker) = sender.join().unwrap();
    peak = peak.max(rss_kib(pid));
    match reply {
        Reply::Err(e) => assert!(e.contains("longer than"), "{e}"),
        ok => panic!("a 100 MiB line was answered {ok:?}"),
    }
    eprintln!(
        "100 MiB line sent in {took:?}; {served} other requests served meanwhile; \
         tracker RSS {before} KiB before, {peak} KiB at peak"
    );
    assert!(
        peak < before + 64 * 1024,
        "tracker RSS grew from {before} KiB to {peak} KiB"
    );
    assert!(served > 0, "the long line took only {took:?}");
    // The attacker's connection is back in step and refusals changed nothing.
    let r = attacker.request(Some(&tok), "whoami", &[]);
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    assert!(good.ok(Some(&tok), "list_groups", &[]).1.is_empty());
    t.assert_alive();
}
