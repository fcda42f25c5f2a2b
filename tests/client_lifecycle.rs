//! The full group lifecycle through three piped client shells: users, login,
//! groups with spaces in their names, join requests accepted and rejected,
//! ownership handover when the owner leaves, logout and refused commands after it.

use harness::{free_port, write_tracker_info, ClientProc, TrackerProc, WAIT};

fn items(c: &mut ClientProc, line: &str) -> Vec<String> {
    c.list(line).1
}

fn expect_err(c: &mut ClientProc, line: &str) -> String {
    let out = c.cmd(line);
    assert!(
        out.starts_with("error: "),
        "{line:?} should fail, got {out:?}"
    );
    out
}

#[test]
fn group_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let _t = TrackerProc::start(&info, 1, &dir.path().join("data"));
    let mut alice = ClientProc::start(&info, &dir.path().join("alice"), &[]);
    let mut bob = ClientProc::start(&info, &dir.path().join("bob"), &[]);
    let mut carol = ClientProc::start(&info, &dir.path().join("carol"), &[]);

    for (c, u) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        assert_eq!(
            c.cmd(&format!("create_user {u} \"{u} secret\"")),
            format!("user {u} created")
        );
        assert_eq!(
            c.cmd(&format!("login {u} \"{u} secret\"")),
            format!("logged in as {u}")
        );
    }
    expect_err(&mut carol, "create_user alice other");
    let (first, _) = alice.list("list_groups");
    assert_eq!(first, "0 groups");

    assert_eq!(
        alice.cmd("create_group \"team one\""),
        "group team one created"
    );
    expect_err(&mut bob, "create_group \"team one\"");
    assert_eq!(
        items(&mut alice, "list_groups"),
        ["  team one  owner=alice  members=1  [owner]"]
    );

    assert_eq!(
        bob.cmd("join_group \"team one\""),
        "join request sent to team one"
    );
    assert_eq!(
        carol.cmd("join_group \"team one\""),
        "join request sent to team one"
    );
    assert_eq!(
        items(&mut bob, "list_groups"),
        ["  team one  owner=alice  members=1  [pending]"]
    );
    // Only the owner sees and answers requests.
    expect_err(&mut bob, "list_requests \"team one\"");
    expect_err(&mut carol, "accept_request \"team one\" carol");

    let (first, mut reqs) = alice.list("list_requests \"team one\"");
    reqs.sort();
    assert_eq!(first, "2 pending requests for team one");
    assert_eq!(reqs, ["  bob", "  carol"]);
    assert_eq!(
        alice.cmd("accept_request \"team one\" bob"),
        "bob accepted into team one"
    );
    assert_eq!(
        alice.cmd("reject_request \"team one\" carol"),
        "request of carol to join team one rejected"
    );
    assert_eq!(
        alice.list("list_requests \"team one\"").0,
        "0 pending requests for team one"
    );

    assert_eq!(
        items(&mut bob, "list_groups"),
        ["  team one  owner=alice  members=2  [member]"]
    );
    assert_eq!(
        items(&mut carol, "list_groups"),
        ["  team one  owner=alice  members=2  [-]"]
    );
    // Only members list a group's files.
    assert_eq!(bob.list("list_files \"team one\"").0, "0 files in team one");
    expect_err(&mut carol, "list_files \"team one\"");

    // The owner leaves: bob owns the group now.
    assert_eq!(alice.cmd("leave_group \"team one\""), "left group team one");
    assert_eq!(
        items(&mut bob, "list_groups"),
        ["  team one  owner=bob  members=1  [owner]"]
    );
    assert_eq!(
        items(&mut alice, "list_groups"),
        ["  team one  owner=bob  members=1  [-]"]
    );
    assert_eq!(
        bob.list("list_requests \"team one\"").0,
        "0 pending requests for team one"
    );
    assert_eq!(
        carol.cmd("join_group \"team one\""),
        "join request sent to team one"
    );
    assert_eq!(items(&mut bob, "list_requests \"team one\""), ["  carol"]);
    assert_eq!(
        bob.cmd("accept_request \"team one\" carol"),
        "carol accepted into team one"
    );
    assert_eq!(
        items(&mut carol, "list_groups"),
        ["  team one  owner=bob  members=2  [member]"]
    );

    // Logout: tracker commands are refused locally until the next login.
    assert_eq!(alice.cmd("logout"), "logged out");
    for line in [
        "list_groups",
        "create_group x",
        "join_group \"team one\"",
        "logout",
        "list_files \"team one\"",
    ] {
        assert_eq!(
            alice.cmd(line),
            "error: not logged in (use login <user_id> <password>)",
            "{line}"
        );
    }
    assert_eq!(alice.cmd("show_downloads"), "0 downloads");
    expect_err(&mut alice, "login alice wrong");
    assert_eq!(
        alice.cmd("login alice \"alice secret\""),
        "logged in as alice"
    );
    assert_eq!(
        items(&mut alice, "list_groups"),
        ["  team one  owner=bob  members=2  [-]"]
    );

    // Everyone leaves: the group is gone.
    assert_eq!(bob.cmd("leave_group \"team one\""), "left group team one");
    assert_eq!(
        items(&mut alice, "list_groups"),
        ["  team one  owner=carol  members=1  [-]"]
    );
    assert_eq!(carol.cmd("leave_group \"team one\""), "left group team one");
    assert_eq!(alice.list("list_groups").0, "0 groups");

    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.cmd("logout"), "logged out");
        c.close_stdin();
        assert_eq!(c.wait_exit(WAIT), Some(0));
        let err = c.stderr.text();
        assert!(err.is_empty(), "unexpected stderr: {err}");
    }
}
