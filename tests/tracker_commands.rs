//! Every tracker command's success and error paths over a real TCP connection to
//! the real `tracker` binary, with END_OF_REPLY framing.

use std::io::{Read, Write};
use std::time::Duration;

use harness::{lone_tracker, row, wait_until, TrackerConn};
use wire::tracker_msg::{Reply, ERR_SESSION};

fn rows(c: &mut TrackerConn, tok: &str, cmd: &str, args: &[&str]) -> Vec<Vec<String>> {
    c.ok(Some(tok), cmd, args).1
}

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// upload_file args for a 25-byte file in 10-byte pieces (3 piece hashes).
fn upload_args<'a>(
    group: &'a str,
    name: &'a str,
    sha: &'a str,
    pieces: &'a str,
    addr: &'a str,
) -> Vec<&'a str> {
    vec![group, name, "25", "10", sha, pieces, addr]
}

#[test]
fn users_sessions_and_framing() {
    let (_dir, t) = lone_tracker(&[]);
    let mut c = t.connect();

    // create_user
    assert_eq!(
        c.request(None, "create_user", &["alice", "pw 1"]),
        Reply::ok()
    );
    assert!(c
        .err(None, "create_user", &["alice", "x"])
        .contains("user already exists"));
    assert!(c
        .err(None, "create_user", &["", "x"])
        .contains("must not be empty"));
    assert!(c
        .err(None, "create_user", &["bob", ""])
        .contains("password must not be empty"));
    assert!(c
        .err(None, "create_user", &["a\tb", "x"])
        .contains("control"));
    assert!(c
        .err(None, "create_user", &[&"x".repeat(257), "x"])
        .contains("longer than 256"));
    assert!(c
        .err(None, "create_user", &["only-one"])
        .starts_with("usage: create_user"));
    let fancy = "ünï cødé 🦀 user";
    c.ok(None, "create_user", &[fancy, "p w"]);

    // login
    let tok = c.login("alice", "pw 1");
    assert_eq!(tok.len(), 32);
    assert!(tok.bytes().all(|b| b.is_ascii_hexdigit()));
    // One reply whether the user exists or not (no user enumeration).
    assert_eq!(
        c.err(None, "login", &["alice", "pw"]),
        "wrong user name or password"
    );
    assert_eq!(
        c.err(None, "login", &["nobody", "pw"]),
        "wrong user name or password"
    );
    let tok2 = c.login(fancy, "p w");
    assert_ne!(tok, tok2);

    // whoami and the session errors
    assert_eq!(c.ok(Some(&tok2), "whoami", &[]).0, vec![fancy.to_string()]);
    assert!(c.err(None, "whoami", &[]).starts_with(ERR_SESSION));
    assert!(c
        .err(Some("0123456789abcdef0123456789abcdef"), "whoami", &[])
        .starts_with(ERR_SESSION));
    assert!(c.err(None, "list_groups", &[]).starts_with(ERR_SESSION));

    // unknown command, malformed request: error, connection keeps working
    assert!(c
        .err(Some(&tok), "frobnicate", &[])
        .starts_with("unknown command"));
    c.send_raw(b"a b\\q c\n").unwrap();
    assert!(matches!(c.read_reply().unwrap(), Reply::Err(e) if e.contains("escape")));

    // logout ends the session only for that token
    c.ok(Some(&tok), "logout", &[]);
    assert!(c.err(Some(&tok), "whoami", &[]).starts_with(ERR_SESSION));
    assert!(c.err(Some(&tok), "logout", &[]).starts_with(ERR_SESSION));
    assert_eq!(c.ok(Some(&tok2), "whoami", &[]).0, vec![fancy.to_string()]);

    // Framing at the byte level: pipelined requests, replies in order, each ending
    // with END_OF_REPLY, data rows prefixed with "- ".
    let mut raw = TrackerConn::connect(&t.addr).stream;
    let mut batch = Vec::new();
    for cmd in ["whoami", "list_groups", "nope"] {
        batch.extend(wire::tracker_msg::Request::new(Some(&tok2), cmd, &[]).encode());
    }
    raw.write_all(&batch).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ok = wait_until(Duration::from_secs(10), || {
        if let Ok(n) = raw.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got)
            .matches("END_OF_REPLY\n")
            .count()
            >= 3
    });
    assert!(
        ok,
        "three replies expected, got {:?}",
        String::from_utf8_lossy(&got)
    );
    let text = String::from_utf8(got).unwrap();
    let want = format!(
        "OK {}\nEND_OF_REPLY\nOK\nEND_OF_REPLY\nERR unknown command \"nope\"\nEND_OF_REPLY\n",
        wire::tracker_msg::escape_field(fancy)
    );
    assert_eq!(text, want);
}

#[test]
fn groups_requests_and_ownership() {
    // One fsync per line here; the other tests use the default group commit.
    let (_dir, t) = lone_tracker(&["--fsync", "always"]);
    let mut c = t.connect();
    let owner = c.user("owner", "pw");
    let bob = c.user("bob", "pw");
    let carol = c.user("carol", "pw");
    let dave = c.user("dave", "pw");

    // create_group
    c.ok(Some(&owner), "create_group", &["my group"]);
    assert!(c
        .err(Some(&bob), "create_group", &["my group"])
        .contains("group already exists"));
    assert!(c
        .err(Some(&bob), "create_group", &[""])
        .contains("must not be empty"));
    assert!(c.err(None, "create_group", &["x"]).starts_with(ERR_SESSION));

    // join_group
    assert!(c
        .err(Some(&bob), "join_group", &["nope"])
        .starts_with("no such group"));
    assert!(c
        .err(Some(&owner), "join_group", &["my group"])
        .contains("already a member"));
    c.ok(Some(&bob), "join_group", &["my group"]);
    assert!(c
        .err(Some(&bob), "join_group", &["my group"])
        .contains("already asked"));
    c.ok(Some(&carol), "join_group", &["my group"]);
    c.ok(Some(&dave), "join_group", &["my group"]);

    // list_groups shows the asker's status
    assert_eq!(
        rows(&mut c, &owner, "list_groups", &[]),
        vec![row(&["my group", "owner", "1", "owner"])]
    );
    assert_eq!(
        rows(&mut c, &bob, "list_groups", &[]),
        vec![row(&["my group", "owner", "1", "pending"])]
    );

    // list_requests: owner only
    assert!(c
        .err(Some(&bob), "list_requests", &["my group"])
        .starts_with("only the owner of my group"));
    assert!(c
        .err(Some(&bob), "list_requests", &["nope"])
        .starts_with("no such group"));
    let reqs = rows(&mut c, &owner, "list_requests", &["my group"]);
    assert_eq!(reqs.len(), 3);
    for u in ["bob", "carol", "dave"] {
        assert!(reqs.contains(&row(&[u])), "{reqs:?}");
    }

    // accept_request / reject_request
    assert!(c
        .err(Some(&bob), "accept_request", &["my group", "bob"])
        .starts_with("only the owner"));
    c.ok(Some(&owner), "accept_request", &["my group", "bob"]);
    assert!(c
        .err(Some(&owner), "accept_request", &["my group", "bob"])
        .starts_with("no pending request from bob to join my group"));
    assert!(c
        .err(Some(&carol), "reject_request", &["my group", "dave"])
        .starts_with("only the owner"));
    c.ok(Some(&owner), "reject_request", &["my group", "dave"]);
    assert!(c
        .err(Some(&owner), "reject_request", &["my group", "dave"])
        .starts_with("no pending request"));
    c.ok(Some(&owner), "accept_request", &["my group", "carol"]);
    assert!(rows(&mut c, &owner, "list_requests", &["my group"]).is_empty());
    assert_eq!(
        rows(&mut c, &bob, "list_groups", &[]),
        vec![row(&["my group", "owner", "3", "member"])]
    );
    assert_eq!(
        rows(&mut c, &dave, "list_groups", &[]),
        vec![row(&["my group", "owner", "3", "-"])]
    );

    // leave_group: non-member error; owner leaves -> longest-standing member owns it
    assert!(c
        .err(Some(&dave), "leave_group", &["my group"])
        .starts_with("not a member of group my group"));
    assert!(c
        .err(Some(&dave), "leave_group", &["nope"])
        .starts_with("no such group"));
    c.ok(Some(&owner), "leave_group", &["my group"]);
    assert_eq!(
        rows(&mut c, &bob, "list_groups", &[]),
        vec![row(&["my group", "bob", "2", "owner"])]
    );
    assert!(c
        .err(Some(&owner), "list_files", &["my group"])
        .starts_with("not a member"));
    c.ok(Some(&dave), "join_group", &["my group"]);
    assert_eq!(
        rows(&mut c, &bob, "list_requests", &["my group"]),
        vec![row(&["dave"])]
    );
    c.ok(Some(&bob), "leave_group", &["my group"]);
    // carol inherits; the pending request stays with the group
    assert_eq!(
        rows(&mut c, &carol, "list_requests", &["my group"]),
        vec![row(&["dave"])]
    );
    c.ok(Some(&carol), "leave_group", &["my group"]);
    // empty: the group is gone, with its requests
    assert!(rows(&mut c, &carol, "list_groups", &[]).is_empty());
    assert!(c
        .err(Some(&dave), "join_group", &["my group"])
        .starts_with("no such group"));
    c.ok(Some(&dave), "create_group", &["my group"]);
}

#[test]
fn files_and_seeders() {
    let (_dir, t) = lone_tracker(&["--seeder-timeout-secs", "2"]);
    let mut c = t.connect();
    let a = c.user("a", "pw");
    let b = c.user("b", "pw");
    let outsider = c.user("o", "pw");
    c.ok(Some(&a), "create_group", &["g"]);
    c.ok(Some(&b), "join_group", &["g"]);
    c.ok(Some(&a), "accept_request", &["g", "b"]);

    let pieces = format!("{SHA_A}{SHA_B}{SHA_A}");
    let name = "my file ünï.txt";
    // upload_file: validation errors
    assert!(c
        .err(
            Some(&outsider),
            "upload_file",
            &upload_args("g", name, SHA_A, &pieces, "127.0.0.1:5000")
        )
        .starts_with("not a member"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &upload_args("nope", name, SHA_A, &pieces, "127.0.0.1:5000")
        )
        .starts_with("no such group"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &upload_args("g", name, "abc", &pieces, "127.0.0.1:5000")
        )
        .contains("file_sha1"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &upload_args("g", name, SHA_A, SHA_A, "127.0.0.1:5000")
        )
        .contains("piece_hashes"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &upload_args("g", name, SHA_A, &pieces, "not an address")
        )
        .contains("peer_addr"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &["g", name, "25", "0", SHA_A, &pieces, "127.0.0.1:5000"]
        )
        .contains("piece_size"));
    assert!(c
        .err(
            Some(&a),
            "upload_file",
            &["g", name, "-1", "10", SHA_A, &pieces, "127.0.0.1:5000"]
        )
        .contains("size"));
    assert!(c
        .err(Some(&a), "upload_file", &["g", name])
        .starts_with("usage: upload_file"));
    // success, then the same content from another member: one more seeder
    c.ok(
        Some(&a),
        "upload_file",
        &upload_args("g", name, SHA_A, &pieces, "127.0.0.1:5000"),
    );
    c.ok(
        Some(&b),
        "upload_file",
        &upload_args("g", name, SHA_A, &pieces, "127.0.0.1:5001"),
    );
    assert!(c
        .err(
            Some(&b),
            "upload_file",
            &upload_args("g", name, SHA_B, &pieces, "127.0.0.1:5001")
        )
        .contains("different file"));
    c.ok(
        Some(&a),
        "upload_file",
        &["g", "empty", "0", "524288", SHA_B, "", "127.0.0.1:5000"],
    );

    // list_files
    assert!(c
        .err(Some(&outsider), "list_files", &["g"])
        .starts_with("not a member of group g"));
    assert_eq!(
        rows(&mut c, &b, "list_files", &["g"]),
        vec![row(&["empty", "0", "1", "0"]), row(&[name, "25", "2", "0"])]
    );

    // file_info
    let (head, peers) = c.ok(Some(&b), "file_info", &["g", name]);
    assert_eq!(head, row(&[name, "25", "10", SHA_A, &pieces]));
    assert_eq!(
        peers,
        vec![row(&["127.0.0.1:5000"]), row(&["127.0.0.1:5001"])]
    );
    assert!(c
        .err(Some(&b), "file_info", &["g", "nope"])
        .starts_with("no such file"));
    assert!(c
        .err(Some(&outsider), "file_info", &["g", name])
        .starts_with("not a member"));

    // stop_share / add_seeder
    c.ok(Some(&b), "stop_share", &["g", name]);
    assert!(c
        .err(Some(&b), "stop_share", &["g", name])
        .starts_with("not sharing"));
    assert_eq!(
        c.ok(Some(&b), "file_info", &["g", name]).1,
        vec![row(&["127.0.0.1:5000"])]
    );
    assert!(c
        .err(
            Some(&b),
            "add_seeder",
            &["g", name, SHA_B, "127.0.0.1:5001"]
        )
        .contains("different content"));
    assert!(c
        .err(
            Some(&b),
            "add_seeder",
            &["g", "nope", SHA_A, "127.0.0.1:5001"]
        )
        .starts_with("no such file"));
    assert!(c
        .err(
            Some(&outsider),
            "add_seeder",
            &["g", name, SHA_A, "127.0.0.1:5001"]
        )
        .starts_with("not a member"));
    c.ok(
        Some(&b),
        "add_seeder",
        &["g", name, SHA_A, "127.0.0.1:5001"],
    );
    assert_eq!(c.ok(Some(&b), "file_info", &["g", name]).1.len(), 2);

    // Seeders time out without heartbeats; a heartbeat brings a session back.
    let online = |c: &mut TrackerConn| -> Vec<Vec<String>> { rows(c, &a, "list_files", &["g"]) };
    assert!(
        wait_until(Duration::from_secs(10), || online(&mut c)[1][2] == "0"),
        "seeders should time out"
    );
    assert!(c
        .err(Some(&a), "heartbeat", &["nowhere"])
        .contains("peer_addr"));
    c.ok(Some(&a), "heartbeat", &["127.0.0.1:5002"]);
    assert_eq!(
        online(&mut c),
        vec![row(&["empty", "0", "1", "0"]), row(&[name, "25", "1", "0"])]
    );
    assert_eq!(
        c.ok(Some(&b), "file_info", &["g", name]).1,
        vec![row(&["127.0.0.1:5002"])]
    );

    // leave_group ends the leaver's seeding; logout ends the session's seeding.
    c.ok(Some(&b), "heartbeat", &["127.0.0.1:5001"]);
    assert_eq!(online(&mut c)[1][2], "2");
    c.ok(Some(&b), "leave_group", &["g"]);
    assert_eq!(online(&mut c)[1][2], "1");
    let a2 = c.login("a", "pw");
    c.ok(Some(&a), "logout", &[]);
    assert_eq!(
        rows(&mut c, &a2, "list_files", &["g"]),
        vec![row(&["empty", "0", "0", "0"]), row(&[name, "25", "0", "0"])]
    );
    assert!(c.ok(Some(&a2), "file_info", &["g", name]).1.is_empty());
}
