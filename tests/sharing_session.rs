//! Sharing follows the session honestly (issue 10, items 3 to 5): a client
//! that exits by any path (`quit`, end of input, SIGTERM, SIGINT) is no longer
//! listed as a seeder right after it is gone; after an automatic re-login the
//! client's files stay listed past the seeder timeout; `list_files` tells
//! complete and partial seeders apart.

use std::time::{Duration, Instant};

use harness::assert_same_file;
use harness::transfer::{download, show_downloads, upload, wait_complete, Behaviour, Swarm};
use harness::{
    free_port, wait_until, write_random_file, write_tracker_info, ClientProc, TrackerProc, WAIT,
};
use wire::file_meta::PIECE_SIZE;

/// `list_files g` as the owner's protocol session sees it: `(name, seeders)`.
fn listed(s: &mut Swarm) -> Vec<(String, String)> {
    listed_apart(s)
        .into_iter()
        .map(|(name, complete, _)| (name, complete))
        .collect()
}

/// `list_files g` as `(name, complete seeders, partial seeders)`.
fn listed_apart(s: &mut Swarm) -> Vec<(String, String, String)> {
    let token = s.owner_token.clone();
    let (_, rows) = s.owner.ok(Some(&token), "list_files", &["g"]);
    rows.into_iter()
        .map(|r| {
            let f = |i: usize| r.get(i).cloned().unwrap_or_default();
            (f(0), f(2), f(3))
        })
        .collect()
}

/// The counts of one file in [`listed_apart`].
fn counts(s: &mut Swarm, name: &str) -> (String, String) {
    listed_apart(s)
        .into_iter()
        .find(|r| r.0 == name)
        .map(|(_, c, p)| (c, p))
        .unwrap_or_default()
}

fn pair(complete: &str, partial: &str) -> (String, String) {
    (complete.to_string(), partial.to_string())
}

/// A downloader is listed as a partial seeder once it holds a piece, and as a
/// complete one when it finished; the client's `list_files` line says both.
#[test]
fn a_download_is_a_partial_seeder_until_it_completes() {
    let mut s = Swarm::new();
    let (src, _) = s.random_file("p.bin", 6 * PIECE_SIZE, 11);
    let seeder = s.scripted_seeder("seeder", &src, Behaviour::Honest, Duration::ZERO);
    seeder.hold_after(1);
    let mut c = s.member("leech", &[]);
    let dest = s.path("got.bin");
    download(&mut c, "p.bin", &dest);
    assert!(
        wait_until(WAIT, || counts(&mut s, "p.bin") == pair("1", "1")),
        "{:?}\n{}",
        listed_apart(&mut s),
        c.stderr.text()
    );
    let size = 6 * PIECE_SIZE;
    assert_eq!(
        c.list("list_files g").1,
        [format!("  p.bin  {size} bytes  1 seeder  1 partial seeder")]
    );
    seeder.release();
    wait_complete(&mut c, "p.bin", WAIT);
    assert_same_file(&src, &dest);
    assert!(
        wait_until(WAIT, || counts(&mut s, "p.bin") == pair("2", "0")),
        "{:?}",
        listed_apart(&mut s)
    );
    assert_eq!(
        c.list("list_files g").1,
        [format!("  p.bin  {size} bytes  2 seeders")]
    );
}

/// A download that fails withdraws its partial seeding at once.
#[test]
fn a_failed_download_withdraws_its_partial_seeding() {
    let mut s = Swarm::new();
    let (src, _) = s.random_file("x.bin", 6 * PIECE_SIZE, 12);
    // One honest piece quickly, then only bad data (slowly, so the partial
    // seeding can be seen first); --retries 1 fails the download at the first.
    let honest = s.scripted_seeder("honest", &src, Behaviour::Honest, Duration::ZERO);
    honest.hold_after(1);
    let _liar = s.scripted_seeder("liar", &src, Behaviour::Liar, Duration::from_secs(3));
    let mut c = s.member("leech", &["--retries", "1"]);
    download(&mut c, "x.bin", &s.path("bad.bin"));
    assert!(
        wait_until(WAIT, || counts(&mut s, "x.bin") == pair("2", "1")),
        "{:?}\n{}",
        listed_apart(&mut s),
        c.stderr.text()
    );
    assert!(
        wait_until(WAIT, || show_downloads(&mut c)
            .iter()
            .any(|l| l.starts_with("[F] [g] x.bin"))),
        "{:?}",
        show_downloads(&mut c)
    );
    assert_eq!(counts(&mut s, "x.bin"), pair("2", "0"));
}

/// How the client is made to exit.
#[derive(Debug, Clone, Copy)]
enum ExitPath {
    Quit,
    EndOfInput,
    Signal(i32),
}

#[test]
fn every_exit_path_ends_the_seeding_before_exit() {
    let paths = [
        ExitPath::Quit,
        ExitPath::EndOfInput,
        ExitPath::Signal(libc::SIGTERM),
        ExitPath::Signal(libc::SIGINT),
    ];
    let mut s = Swarm::new();
    for (i, how) in paths.into_iter().enumerate() {
        let user = format!("alice{i}");
        let name = format!("f{i}.bin");
        let (path, _) = s.random_file(&name, 100_000, i as u64);
        let mut c = s.member(&user, &[]);
        upload(&mut c, &path);
        let want = |n: &str| vec![(name.clone(), n.to_string())];
        let mine =
            |s: &mut Swarm| -> Vec<_> { listed(s).into_iter().filter(|r| r.0 == name).collect() };
        assert_eq!(mine(&mut s), want("1"), "{how:?}");
        match how {
            ExitPath::Quit => c.send("quit"),
            ExitPath::EndOfInput => c.close_stdin(),
            ExitPath::Signal(sig) => unsafe {
                libc::kill(c.pid() as i32, sig);
            },
        }
        assert_eq!(c.wait_exit(WAIT), Some(0), "{how:?}: {}", c.stderr.text());
        // The tracker's seeder timeout is 45 s: only the client's own goodbye
        // can have taken it off the list this soon.
        assert_eq!(
            mine(&mut s),
            want("0"),
            "{how:?}: the gone client is still listed"
        );
    }
}

/// Seconds a session may go unused in [`seeding_survives_an_automatic_relogin`].
const IDLE_SECS: f64 = 3.0;
/// The tracker's seeder timeout there, in seconds.
const SEEDER_TIMEOUT_SECS: u64 = 2;

/// `list_files g` through a fresh login of `owner` (sessions expire quickly here).
fn seeders_of(t: &TrackerProc, name: &str) -> String {
    let mut conn = t.connect();
    let token = conn.login("owner", "pw");
    let (_, rows) = conn.ok(Some(&token), "list_files", &["g"]);
    rows.into_iter()
        .find(|r| r[0] == name)
        .map(|r| r[2].clone())
        .unwrap_or_else(|| "not listed".into())
}

/// The tracker comes back after the client's session expired, so the client's
/// next heartbeat is refused and the tracker link logs in again on its own: the
/// file must stay listed well past the seeder timeout (the seeding moved to the
/// new session), not drop out with the old one.
#[test]
fn seeding_survives_an_automatic_relogin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let info = write_tracker_info(d, &[free_port()]);
    let idle_days = format!("{}", IDLE_SECS / 86_400.0);
    let timeout = SEEDER_TIMEOUT_SECS.to_string();
    let args = [
        "--seeder-timeout-secs",
        timeout.as_str(),
        "--session-idle-days",
        idle_days.as_str(),
    ];
    let data = d.join("data");
    let mut t = TrackerProc::start_with(&info, 1, &data, &args);
    let mut owner = t.connect();
    let token = owner.user("owner", "pw");
    owner.ok(Some(&token), "create_group", &["g"]);
    let src = d.join("kept.bin");
    write_random_file(&src, 300_000, 3);
    let mut c = ClientProc::start(&info, &d.join("alice"), &["--announce-secs", "1"]);
    assert_eq!(c.cmd("create_user alice pw"), "user alice created");
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert_eq!(c.cmd("join_group g"), "join request sent to g");
    let token = owner.login("owner", "pw");
    owner.ok(Some(&token), "accept_request", &["g", "alice"]);
    let up = c.cmd(&format!("upload_file \"{}\" g", src.display()));
    assert!(up.starts_with("uploaded "), "{up}");
    assert_eq!(seeders_of(&t, "kept.bin"), "1");

    // Down for longer than a session may idle: alice's session is refused after.
    t.kill9();
    std::thread::sleep(Duration::from_secs_f64(IDLE_SECS + 1.0));
    t = TrackerProc::start_with(&info, 1, &data, &args);
    // The old session's seeding went offline while the tracker was down: the
    // file is listed again only if the client moved its seeding to the new session...
    assert!(
        wait_until(WAIT, || seeders_of(&t, "kept.bin") == "1"),
        "not listed after the re-login; client stderr:\n{}",
        c.stderr.text()
    );
    // ...and stays listed for three seeder timeouts, every time we look.
    let end = Instant::now() + Duration::from_secs(3 * SEEDER_TIMEOUT_SECS);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(seeders_of(&t, "kept.bin"), "1", "{}", c.stderr.text());
    }
    assert!(
        c.stderr.text().lines().all(|l| l.starts_with("note: ")),
        "{}",
        c.stderr.text()
    );
}

/// `.uploads_registry` belongs to the user who logged in: another user on the
/// same client (same state dir) does not re-share the first user's files, and
/// the first user's next login does.
#[test]
fn another_user_on_the_same_state_dir_does_not_reshare() {
    let mut s = Swarm::new();
    let (path, _) = s.random_file("mine.bin", 50_000, 21);
    s.protocol_member("bob");
    let mut c = s.member("alice", &[]);
    upload(&mut c, &path);
    assert_eq!(counts(&mut s, "mine.bin"), pair("1", "0"));
    assert_eq!(c.cmd("logout"), "logged out");
    assert_eq!(counts(&mut s, "mine.bin"), pair("0", "0"));
    assert_eq!(c.cmd("login bob pw"), "logged in as bob");
    // A re-announce after the login is queued before the next command: once
    // that is answered, whatever the login shared is on the tracker.
    assert_eq!(c.list("list_groups").0, "1 group");
    assert_eq!(
        counts(&mut s, "mine.bin"),
        pair("0", "0"),
        "bob re-shared alice's file"
    );
    assert_eq!(c.cmd("logout"), "logged out");
    assert_eq!(c.cmd("login alice pw"), "logged in as alice");
    assert_eq!(c.list("list_groups").0, "1 group");
    assert_eq!(counts(&mut s, "mine.bin"), pair("1", "0"));
    assert!(c.stderr.text().is_empty(), "{}", c.stderr.text());
}
