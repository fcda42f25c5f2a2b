//! The operator view (`tracker ... --http ADDR`), end to end against the real
//! tracker binary: `/metrics` passes `promtool check metrics` and counts what
//! the tracker did; `/status` renders in headless Chromium with the groups and
//! files; page and JSON stay right while another tracker is down; no secrets
//! are shown; and the listener is bounded (request size, connections, time)
//! and survives garbage.
//!
//! `promtool` (Debian `prometheus`) and `chromium` are installed by `.ci/run`.
//! Where one is missing the checks that need it are skipped with a loud
//! `SKIPPED:` line on stderr; every other check still runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc, WAIT};

/// Starts tracker `no` of `info` with `--http 127.0.0.1:0` (plus `extra`);
/// returns it and the operator view's address.
fn start(info: &Path, no: usize, data: &Path, extra: &[&str]) -> (TrackerProc, String) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let t = TrackerProc::start_with(info, no, data, &args);
    let addr = http_addr(&t);
    (t, addr)
}

/// The operator view's address, from the line a tracker prints before it listens.
fn http_addr(t: &TrackerProc) -> String {
    let line = t
        .stdout
        .text()
        .lines()
        .find(|l| l.contains("operator view on http://"))
        .map(str::to_string)
        .expect("the tracker prints its operator view's address before it listens");
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("address in the line")
        .to_string()
}

/// One HTTP exchange: (status, body). The server closes after each response.
fn http(addr: &str, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    http(addr, req.as_bytes()).expect("http get")
}

fn status_json(addr: &str) -> serde_json::Value {
    let (code, body) = get(addr, "/status.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status.json is JSON")
}

/// The value of one sample line `series value` of an exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Says loudly which check could not run. Written to the process's stderr
/// directly (not `eprintln!`, which the test harness captures for passing tests).
fn skipped(what: &str, tool: &str, package: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what}: {tool} is not installed (Debian package `{package}`; .ci/run installs it)"
    );
}

/// Runs a command with stdin, bounded in time (killed by PID when late).
fn run_bounded(cmd: &mut Command, input: &[u8], limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} took over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A group with a name that needs escaping, two members, a file seeded by
/// both and a pending request; returns alice's token.
fn populate(c: &mut TrackerConn) -> String {
    let alice = c.user("alice", "alice-secret-pw");
    let bob = c.user("bob", "bob-secret-pw");
    let _ = c.request(None, "login", &["alice", "not-alices-pw"]);
    c.ok(Some(&alice), "create_group", &["movies & <tv>"]);
    c.ok(Some(&alice), "create_group", &["docs"]);
    c.ok(Some(&bob), "join_group", &["movies & <tv>"]);
    c.ok(Some(&alice), "accept_request", &["movies & <tv>", "bob"]);
    c.ok(Some(&bob), "join_group", &["docs"]);
    let (sha, pieces) = ("a".repeat(40), "b".repeat(80));
    let file = ["movies & <tv>", "holiday <video>.mp4", "1048576", "524288"];
    let mut args: Vec<&str> = file.to_vec();
    args.extend([sha.as_str(), pieces.as_str(), "127.0.0.1:45454"]);
    c.ok(Some(&alice), "upload_file", &args);
    let seed = [
        "movies & <tv>",
        "holiday <video>.mp4",
        &sha,
        "127.0.0.1:45455",
    ];
    c.ok(Some(&bob), "add_seeder", &seed);
    alice
}

/// Secrets the tracker holds: session token hashes and password hashes.
fn secrets(db: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(db).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT token_hash FROM sessions",
        "SELECT password_hash FROM users",
    ] {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

fn two_trackers(dir: &Path, extra: &[&str]) -> [(TrackerProc, String); 2] {
    let data = dir.join("data");
    let info = write_tracker_info(dir, &[free_port(), free_port()]);
    [start(&info, 1, &data, extra), start(&info, 2, &data, extra)]
}

#[test]
fn metrics_pass_promtool_and_count_what_the_tracker_did() {
    let dir = tempfile::tempdir().unwrap();
    let [(t1, http1), (_t2, _)] = two_trackers(dir.path(), &[]);
    let mut c = t1.connect();
    populate(&mut c);
    let (code, text) = get(&http1, "/metrics");
    assert_eq!(code, 200);

    let log_len = std::fs::metadata(dir.path().join("data/sync_log.txt"))
        .unwrap()
        .len() as f64;
    assert_eq!(sample(&text, "swarmshare_tracker_log_bytes"), Some(log_len));
    assert_eq!(
        sample(&text, "swarmshare_tracker_log_end_offset_bytes"),
        Some(log_len)
    );
    assert_eq!(
        sample(&text, "swarmshare_tracker_applied_offset_bytes"),
        Some(log_len)
    );
    assert_eq!(sample(&text, "swarmshare_tracker_groups"), Some(2.0));
    assert_eq!(sample(&text, "swarmshare_tracker_files"), Some(1.0));
    assert_eq!(
        sample(&text, "swarmshare_tracker_seeders_online"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "swarmshare_tracker_failed_logins_total"),
        Some(1.0)
    );
    let login_ok = "swarmshare_tracker_requests_total{command=\"login\",outcome=\"ok\"}";
    assert_eq!(sample(&text, login_ok), Some(2.0), "{text}");
    let login_err = "swarmshare_tracker_requests_total{command=\"login\",outcome=\"error\"}";
    assert_eq!(sample(&text, login_err), Some(1.0));
    // 2 users, 2 logins, 2 groups, 2 joins, 1 accept, 1 upload, 1 add_seeder.
    assert_eq!(
        sample(&text, "swarmshare_tracker_changes_appended_total"),
        Some(11.0)
    );
    let requests = "swarmshare_tracker_request_duration_seconds_count";
    assert!(sample(&text, requests) >= Some(12.0), "{text}");
    let fsyncs = sample(&text, "swarmshare_tracker_log_fsync_seconds_count").unwrap();
    assert!((1.0..=11.0).contains(&fsyncs), "{fsyncs}");
    assert_eq!(
        sample(&text, "swarmshare_tracker_open_connections"),
        Some(1.0)
    );

    promtool_accepts(&text);
}

/// `promtool check metrics` accepts `text` (or a loud SKIPPED without promtool).
fn promtool_accepts(text: &str) {
    match which(&["promtool"]) {
        Some(promtool) => {
            let out = run_bounded(
                Command::new(promtool).args(["check", "metrics"]),
                text.as_bytes(),
                Duration::from_secs(60),
            );
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => skipped("promtool check metrics", "promtool", "prometheus"),
    }
}

/// Raft mode: every tracker's `/metrics` names its role, term and indexes; the
/// leader's also each tracker's match index; `/status` shows each tracker's role
/// and how far behind it is, and a stopped follower falls behind on the page.
#[test]
fn raft_mode_shows_roles_terms_and_how_far_behind_each_tracker_is() {
    let mut cluster = harness::raft::Cluster::start(&["--http", "127.0.0.1:0"]);
    let leader = cluster.await_leader();
    let http: Vec<String> = (1..=3).map(|no| http_addr(cluster.t(no))).collect();
    let mut c = cluster.t(leader).connect();
    let tok = c.user("alice", "alice-secret-pw");
    c.ok(Some(&tok), "create_group", &["g1"]);
    let role = |no: usize, role: &str| {
        let text = get(&http[no - 1], "/metrics").1;
        sample(
            &text,
            &format!("swarmshare_tracker_raft_role{{role=\"{role}\"}}"),
        )
    };
    assert!(wait_until(WAIT, || role(leader, "leader") == Some(1.0)));
    let followers: Vec<usize> = (1..=3).filter(|&n| n != leader).collect();
    for &f in &followers {
        assert!(wait_until(WAIT, || role(f, "follower") == Some(1.0)));
        let text = get(&http[f - 1], "/metrics").1;
        assert_eq!(
            sample(&text, "swarmshare_tracker_raft_leader"),
            Some(leader as f64)
        );
        assert!(
            !text.contains("swarmshare_tracker_raft_match_index"),
            "{text}"
        );
        promtool_accepts(&text);
    }
    // On the leader every tracker's match index reaches the commit index.
    let in_step = || {
        let text = get(&http[leader - 1], "/metrics").1;
        let commit = sample(&text, "swarmshare_tracker_raft_commit_index").unwrap_or(0.0);
        commit > 0.0
            && (1..=3).all(|p| {
                let series = format!("swarmshare_tracker_raft_match_index{{peer=\"{p}\"}}");
                sample(&text, &series) == Some(commit)
            })
    };
    assert!(
        wait_until(WAIT, in_step),
        "{}",
        get(&http[leader - 1], "/metrics").1
    );
    let text = get(&http[leader - 1], "/metrics").1;
    assert!(sample(&text, "swarmshare_tracker_raft_term") >= Some(1.0));
    assert!(sample(&text, "swarmshare_tracker_raft_leader_changes_total") >= Some(1.0));
    promtool_accepts(&text);

    let roles = |json: &serde_json::Value| -> Vec<String> {
        json["trackers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["progress"]["role"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let on_leader = status_json(&http[leader - 1]);
    assert_eq!(on_leader["replication"], "raft");
    let want: Vec<&str> = (1..=3)
        .map(|n| if n == leader { "leader" } else { "follower" })
        .collect();
    assert_eq!(roles(&on_leader), want, "{on_leader:#}");
    let on_follower = status_json(&http[followers[0] - 1]);
    assert_eq!(roles(&on_follower)[leader - 1], "leader", "{on_follower:#}");

    // A stopped follower falls behind on the leader's page as changes go on.
    let gone = followers[1];
    cluster.kill9(gone);
    for i in 0..5 {
        c.ok(Some(&tok), "create_group", &[&format!("later {i}")]);
    }
    let behind = || {
        // The page is cached for up to a second.
        let json = status_json(&http[leader - 1]);
        let t = &json["trackers"][gone - 1];
        t["reachable"] == false && t["progress"]["behind_entries"].as_u64() >= Some(5)
    };
    assert!(
        wait_until(WAIT, behind),
        "{:#}",
        status_json(&http[leader - 1])
    );
    let (code, page) = get(&http[leader - 1], "/status");
    assert_eq!(code, 200);
    assert!(page.contains("leader (term"), "{page}");
    assert!(page.contains("entries</span>"), "{page}");
}

/// Runs headless Chromium on `url` with the given mode flag.
fn chromium(bin: &Path, profile: &Path, mode: &str, url: &str) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(mode)
    .arg(url)
    .current_dir(profile);
    run_bounded(&mut cmd, b"", Duration::from_secs(120))
}

#[test]
fn status_page_renders_the_groups_and_files_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let [(t1, http1), (_t2, _)] = two_trackers(dir.path(), &[]);
    populate(&mut t1.connect());
    let (code, page) = get(&http1, "/status");
    assert_eq!(code, 200);
    // Escaped exactly once: the markup the names could inject is not there.
    assert!(page.contains("movies &amp; &lt;tv&gt;"), "{page}");
    assert!(page.contains("holiday &lt;video&gt;.mp4"));
    assert!(!page.contains("<tv>") && !page.contains("<video>"));
    assert!(page.contains("http-equiv=\"refresh\"") && !page.contains("<script"));

    let Some(bin) = which(&["chromium", "chromium-browser"]) else {
        skipped(
            "rendering /status in headless Chromium",
            "chromium",
            "chromium",
        );
        return;
    };
    let url = format!("http://{http1}/status");
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(&bin, profile.path(), "--dump-dom", &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The DOM Chromium built has the names as text (re-escaped on serialising).
    for want in [
        "movies &amp; &lt;tv&gt;",
        "docs",
        "holiday &lt;video&gt;.mp4",
        "alice",
    ] {
        assert!(dom.contains(want), "{want} not in the rendered DOM:\n{dom}");
    }
    assert!(dom.contains("id=\"swarms\"") && dom.contains("id=\"changes\""));

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("status.png");
    let out = chromium(
        &bin,
        profile.path(),
        &format!("--screenshot={}", shot.display()),
        &url,
    );
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

/// A download that serves the pieces it has (`add_seeder … partial`) counts in
/// its swarm's partial seeders, apart from the complete ones.
#[test]
fn busiest_swarms_count_partial_seeders_apart() {
    let dir = tempfile::tempdir().unwrap();
    let [(t1, http1), (_t2, _)] = two_trackers(dir.path(), &[]);
    let mut c = t1.connect();
    let alice = populate(&mut c);
    let bob = c.login("bob", "bob-secret-pw");
    let (sha, pieces) = ("c".repeat(40), "d".repeat(80));
    c.ok(
        Some(&alice),
        "upload_file",
        &[
            "movies & <tv>",
            "trailer.mp4",
            "1048576",
            "524288",
            &sha,
            &pieces,
            "127.0.0.1:45456",
        ],
    );
    let partial = [
        "movies & <tv>",
        "trailer.mp4",
        &sha,
        "127.0.0.1:45457",
        "partial",
    ];
    c.ok(Some(&bob), "add_seeder", &partial);
    let json = status_json(&http1);
    let swarm = json["busiest_swarms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["file"] == "trailer.mp4")
        .cloned()
        .unwrap_or_else(|| panic!("no trailer swarm: {json:#}"));
    assert_eq!(swarm["seeders_online"], 1, "{swarm}");
    assert_eq!(swarm["partial_seeders_online"], 1, "{swarm}");
    let (_, page) = get(&http1, "/status");
    assert!(page.contains("<th class=\"n\">Partial</th>"), "{page}");
}

#[test]
fn page_and_json_stay_right_while_another_tracker_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let [(t1, http1), (mut t2, _)] = two_trackers(dir.path(), &[]);
    let mut c = t1.connect();
    let alice = populate(&mut c);
    let both_up = |s: &serde_json::Value| {
        s["trackers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["reachable"] == true)
    };
    assert!(wait_until(WAIT, || both_up(&status_json(&http1))));
    t2.kill9();

    c.ok(Some(&alice), "create_group", &["after the crash"]);
    let mut last = serde_json::Value::Null;
    let fresh = wait_until(WAIT, || {
        last = status_json(&http1);
        last["totals"]["groups"] == 3 && last["trackers"][1]["reachable"] == false
    });
    assert!(fresh, "{last:#}");
    let t = &last["trackers"];
    assert_eq!(t[0]["this"], true);
    assert_eq!(t[0]["reachable"], true);
    assert_eq!(t[0]["progress"]["behind_bytes"], 0);
    let log_len = std::fs::metadata(dir.path().join("data/sync_log.txt"))
        .unwrap()
        .len();
    assert_eq!(last["log_bytes"], log_len);
    // Tracker 2 stopped before the last change: its cache is behind by that line.
    let behind = t[1]["progress"]["behind_bytes"]
        .as_u64()
        .expect("tracker2.db readable");
    assert!(behind > 0, "{last:#}");
    assert_eq!(last["totals"]["group_members"], 4);
    assert_eq!(last["busiest_swarms"][0]["file"], "holiday <video>.mp4");
    assert_eq!(last["busiest_swarms"][0]["seeders_online"], 2);
    assert_eq!(
        last["recent_changes"][0]["text"],
        "\"alice\" created group \"after the crash\""
    );

    let (code, page) = get(&http1, "/status");
    assert_eq!(code, 200);
    assert!(page.contains("1 of 2 unreachable"), "{page}");
    assert!(page.contains("after the crash"));
}

#[test]
fn no_secrets_and_no_addresses_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let [(t1, http1), (t2, http2)] = {
        let data = dir.path().join("data");
        let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
        [
            start(&info, 1, &data, &[]),
            start(&info, 2, &data, &["--http-show-peer-addrs"]),
        ]
    };
    let mut c = t1.connect();
    let token = populate(&mut c);
    let hashes = secrets(&dir.path().join("data/tracker1.db"));
    assert!(wait_until(WAIT, || status_json(&http2)["totals"]["files"] == 1));
    for path in ["/status", "/status.json", "/metrics"] {
        let (_, body) = get(&http1, path);
        for secret in hashes.iter().chain([&token]) {
            assert!(!body.contains(secret.as_str()), "{path} shows {secret}");
        }
        for pw in [
            "alice-secret-pw",
            "not-alices-pw",
            "127.0.0.1:45454",
            "127.0.0.1:45455",
        ] {
            assert!(!body.contains(pw), "{path} shows {pw}");
        }
    }
    // Tracker 2 was told to show seeders' addresses.
    let (_, page) = get(&http2, "/status");
    assert!(
        page.contains("127.0.0.1:45454") && page.contains("127.0.0.1:45455"),
        "{page}"
    );
    drop(t2);
}

#[test]
fn listener_is_bounded_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let (mut t, addr) = start(&info, 1, &data, &[]);
    let mut c = t.connect();
    let token = c.user("u", "p");

    // Oversize request head: refused with 431, not buffered.
    let big = format!(
        "GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    match http(&addr, big.as_bytes()) {
        Ok((code, _)) => assert_eq!(code, 431),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Writes and unknown paths.
    assert_eq!(
        http(&addr, b"POST /status HTTP/1.1\r\n\r\n").unwrap().0,
        405
    );
    assert_eq!(get(&addr, "/nope").0, 404);
    assert_eq!(
        http(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap(),
        (200, String::new())
    );

    // Garbage never panics the tracker.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..50 {
        let junk: Vec<u8> = (0..(i * 37 % 3000))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(&junk);
            let _ = s.write_all(b"\r\n\r\n");
        }
    }
    t.assert_alive();
    assert_eq!(get(&addr, "/status").0, 200);

    // Many connections: at most 64 are kept; more are answered 503 and closed.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let refused = wait_until(WAIT, || {
        matches!(http(&addr, b"GET /status HTTP/1.1\r\n\r\n"), Ok((503, _)))
    });
    assert!(refused, "a 65th connection was not refused");
    c.assert_served(&token, "whoami"); // the tracker itself is not slowed

    // Idle timeout: a silent connection is closed (within 10 s + the loop's tick).
    let mut first = idle.into_iter().next().unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a silent connection got data");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    // The slots are free again.
    assert!(wait_until(WAIT, || get(&addr, "/status").0 == 200));
    t.assert_alive();
}
