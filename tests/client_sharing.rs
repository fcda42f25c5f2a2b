//! Sharing through the shell: upload (both argument orders), list_files seeder
//! counts, logout stops sharing and login puts `.uploads_registry` back, a
//! download in the background that end of input waits for, stop_share and
//! leave_group, and the local checks of upload_file/download_file.

use harness::{
    assert_same_file, free_port, wait_until, write_random_file, write_tracker_info, ClientProc,
    TrackerProc, WAIT,
};

#[test]
fn upload_share_download() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let info = write_tracker_info(d, &[free_port()]);
    let _t = TrackerProc::start(&info, 1, &d.join("data"));
    let src = d.join("two words.bin");
    write_random_file(&src, 1_500_000, 7);
    let small = d.join("small.txt");
    std::fs::write(&small, b"hello").unwrap();

    let mut alice = ClientProc::start(&info, &d.join("alice"), &[]);
    let mut bob = ClientProc::start(&info, &d.join("bob"), &[]);
    for (c, u) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        assert_eq!(
            c.cmd(&format!("create_user {u} pw")),
            format!("user {u} created")
        );
        assert_eq!(c.cmd(&format!("login {u} pw")), format!("logged in as {u}"));
    }
    assert_eq!(alice.cmd("create_group g"), "group g created");
    assert_eq!(bob.cmd("join_group g"), "join request sent to g");
    assert_eq!(alice.cmd("accept_request g bob"), "bob accepted into g");

    // Local checks of upload_file.
    let missing = d.join("missing.bin");
    assert_eq!(
        alice.cmd(&format!("upload_file \"{}\" g", missing.display())),
        format!("error: {}: no such file or directory", missing.display())
    );
    assert_eq!(
        alice.cmd(&format!("upload_file \"{}\" g", d.display())),
        format!("error: {}: not a regular file", d.display())
    );
    assert!(alice
        .cmd(&format!("upload_file \"{}\" nogroup", small.display()))
        .starts_with("error: "));

    // Both argument orders.
    assert_eq!(
        alice.cmd(&format!("upload_file \"{}\" g", src.display())),
        "uploaded two words.bin to g (1500000 bytes, 3 pieces)"
    );
    assert_eq!(
        alice.cmd(&format!("upload_file g \"{}\"", small.display())),
        "uploaded small.txt to g (5 bytes, 1 piece)"
    );
    let both = vec![
        "  small.txt  5 bytes  1 seeder".to_string(),
        "  two words.bin  1500000 bytes  1 seeder".to_string(),
    ];
    let (first, mut files) = bob.list("list_files g");
    files.sort();
    assert_eq!(first, "2 files in g");
    assert_eq!(files, both);

    // Logout stops sharing; login puts the registry back.
    assert_eq!(alice.cmd("logout"), "logged out");
    let none: Vec<String> = both
        .iter()
        .map(|l| l.replace("1 seeder", "0 seeders"))
        .collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert!(wait_until(WAIT, || sorted(bob.list("list_files g").1) == none));
    assert_eq!(alice.cmd("login alice pw"), "logged in as alice");
    assert!(
        wait_until(WAIT, || sorted(bob.list("list_files g").1) == both),
        "not re-announced; alice stderr: {}",
        alice.stderr.text()
    );

    // Local checks of download_file.
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    assert_eq!(
        bob.cmd(&format!(
            "download_file g small.txt \"{}\"",
            d.join("no/such/dir/x").display()
        )),
        format!(
            "error: destination directory {} does not exist",
            d.join("no/such/dir").display()
        )
    );
    assert_eq!(
        bob.cmd(&format!(
            "download_file g small.txt \"{}\"",
            small.display()
        )),
        format!("error: {} already exists", small.display())
    );
    assert!(bob
        .cmd(&format!("download_file g nosuchfile \"{}\"", out.display()))
        .starts_with("error: "));

    // A download into a directory and one to a new file name; end of input waits for them.
    let target = out.join("two words.bin");
    assert_eq!(
        bob.cmd(&format!(
            "download_file g \"two words.bin\" \"{}\"",
            out.display()
        )),
        format!("downloading two words.bin from g to {}", target.display())
    );
    let renamed = out.join("greeting.txt");
    assert_eq!(
        bob.cmd(&format!(
            "download_file g small.txt \"{}\"",
            renamed.display()
        )),
        format!("downloading small.txt from g to {}", renamed.display())
    );
    let (first, lines) = bob.list("show_downloads");
    assert_eq!(first, "2 downloads");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[D] [g] two words.bin")
                || l.starts_with("[C] [g] two words.bin")),
        "{lines:?}"
    );
    bob.close_stdin();
    assert_eq!(
        bob.wait_exit(WAIT),
        Some(0),
        "stderr: {}",
        bob.stderr.text()
    );
    assert_same_file(&src, &target);
    assert_same_file(&small, &renamed);

    // stop_share and leave_group end alice's seeding.
    assert_eq!(
        alice.cmd("stop_share g small.txt"),
        "stopped sharing small.txt in g"
    );
    let mut carol = ClientProc::start(&info, &d.join("carol"), &[]);
    assert_eq!(carol.cmd("create_user carol pw"), "user carol created");
    assert_eq!(carol.cmd("login carol pw"), "logged in as carol");
    assert_eq!(alice.cmd("leave_group g"), "left group g");
    // alice owned g; bob (still a member) is the owner now and carol is not a member.
    assert!(carol.cmd("list_files g").starts_with("error: "));
    alice.close_stdin();
    assert_eq!(alice.wait_exit(WAIT), Some(0));
    assert!(
        alice.stderr.text().is_empty(),
        "alice stderr: {}",
        alice.stderr.text()
    );
}
