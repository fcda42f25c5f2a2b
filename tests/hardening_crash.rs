//! Crash and failover under load: two trackers share one data dir; 20 client
//! threads issue mixed mutations and reads, alternating between the trackers,
//! while tracker 1 is killed with `kill -9` and restarted, 5 rounds. Afterwards
//! every mutation that got a success reply is in the state both trackers report,
//! every refused one is absent, one whose reply was lost in a crash is either
//! wholly there or wholly absent, and the two SQLite caches are identical.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::tracker_state::{table_rows, STATE_TABLES};
use harness::{free_port, wait_until, write_tracker_info, TrackerConn, TrackerProc};
use wire::tracker_msg::{Reply, Request};

const THREADS: usize = 20;
const ROUNDS: usize = 5;
const SHA: &str = "cccccccccccccccccccccccccccccccccccccccc";

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// A success reply: the change must be in the state.
    Acked,
    /// An `ERR` reply: the change must not be in the state.
    Refused(String),
    /// No reply (the tracker died, or no tracker took the connection): either way.
    Lost,
}

/// One change a worker attempts on its own group.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Create,
    Join,
    Accept,
    Reject,
    Upload,
    Leave,
}

/// The state of one worker group as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupState {
    exists: bool,
    /// The friend's status in `list_groups`: `-`, `pending` or `member`.
    friend: String,
    members: usize,
    files: BTreeSet<String>,
}

impl GroupState {
    fn absent() -> GroupState {
        GroupState {
            exists: false,
            friend: "-".into(),
            members: 0,
            files: BTreeSet::new(),
        }
    }

    fn after(&self, step: Step, file: &str) -> GroupState {
        let mut s = self.clone();
        match step {
            Step::Create => {
                s.exists = true;
                s.members = 1;
            }
            Step::Join => s.friend = "pending".into(),
            Step::Accept => {
                s.friend = "member".into();
                s.members += 1;
            }
            Step::Reject => s.friend = "-".into(),
            Step::Upload => {
                s.files.insert(file.to_string());
            }
            Step::Leave => {
                s.friend = "-".into();
                s.members -= 1;
            }
        }
        s
    }
}

/// A worker's connections to both trackers, used alternately; a dead connection is
/// reopened on next use, and a tracker that refuses connections is skipped.
struct Link {
    addrs: [String; 2],
    conns: [Option<TrackerConn>; 2],
    next: usize,
}

impl Link {
    fn new(addrs: [String; 2]) -> Link {
        Link {
            addrs,
            conns: [None, None],
            next: 0,
        }
    }

    fn request(&mut self, token: &str, cmd: &str, args: &[&str]) -> Outcome {
        let first = self.next;
        self.next ^= 1;
        for i in [first, first ^ 1] {
            if self.conns[i].is_none() {
                match TcpStream::connect(&self.addrs[i]) {
                    Ok(s) => {
                        let c = TrackerConn::from_stream(s);
                        c.stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        self.conns[i] = Some(c);
                    }
                    Err(_) => continue, // that tracker is down: use the other
                }
            }
            let c = self.conns[i].as_mut().unwrap();
            let sent = c.send_raw(&Request::new(Some(token), cmd, args).encode());
            let reply = sent.and_then(|()| c.read_reply());
            return match reply {
                Ok(Reply::Ok { .. }) => Outcome::Acked,
                Ok(Reply::Err(e)) => Outcome::Refused(e),
                Err(_) => {
                    self.conns[i] = None;
                    Outcome::Lost
                }
            };
        }
        Outcome::Lost
    }
}

/// What one worker did to one of its groups.
#[derive(Debug)]
struct History {
    group: String,
    steps: Vec<(Step, String, Outcome)>,
}

fn worker(
    i: usize,
    addrs: [String; 2],
    owner: String,
    friend: String,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
) -> Vec<History> {
    let mut link = Link::new(addrs);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    for k in 0.. {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let group = format!("t{i} g{k}");
        let file = format!("f{k} ü.bin");
        let mut plan = vec![
            (Step::Create, true),
            (Step::Join, false),
            (
                if k % 3 == 0 {
                    Step::Reject
                } else {
                    Step::Accept
                },
                true,
            ),
            (Step::Upload, true),
        ];
        if k % 3 == 1 {
            plan.push((Step::Leave, false));
        }
        let mut h = History {
            group: group.clone(),
            steps: Vec::new(),
        };
        for (step, by_owner) in plan {
            let tok = if by_owner { &owner } else { &friend };
            let outcome = match step {
                Step::Create => link.request(tok, "create_group", &[&group]),
                Step::Join => link.request(tok, "join_group", &[&group]),
                Step::Accept => link.request(tok, "accept_request", &[&group, &format!("f{i}")]),
                Step::Reject => link.request(tok, "reject_request", &[&group, &format!("f{i}")]),
                Step::Upload => link.request(
                    tok,
                    "upload_file",
                    &[&group, &file, "7", "524288", SHA, SHA, "127.0.0.1:5000"],
                ),
                Step::Leave => link.request(tok, "leave_group", &[&group]),
            };
            let go_on = outcome == Outcome::Acked;
            h.steps.push((step, file.clone(), outcome));
            if !go_on {
                break; // later steps depend on this one
            }
            // A read between mutations, on whichever tracker is next.
            if link.request(tok, "list_groups", &[]) == Outcome::Acked {
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(h);
    }
    out
}

/// Every row of the tables that make up the state, and `applied_log`, as text,
/// table by table.
fn dump(db: &Path) -> BTreeMap<String, Vec<String>> {
    let mut tables = STATE_TABLES.to_vec();
    tables.push("applied_log");
    table_rows(db, &tables)
}

/// The state of every worker group as tracker `conn` reports it.
fn observe(
    conn: &mut TrackerConn,
    owners: &[String],
    friends: &[String],
) -> BTreeMap<String, GroupState> {
    let mut out = BTreeMap::new();
    for i in 0..THREADS {
        let (_, as_friend) = conn.ok(Some(&friends[i]), "list_groups", &[]);
        for row in as_friend {
            if !row[0].starts_with(&format!("t{i} ")) {
                continue;
            }
            assert_eq!(row[1], format!("o{i}"), "owner of {}", row[0]);
            let (_, files) = conn.ok(Some(&owners[i]), "list_files", &[&row[0]]);
            out.insert(
                row[0].clone(),
                GroupState {
                    exists: true,
                    friend: row[3].clone(),
                    members: row[2].parse().unwrap(),
                    files: files.into_iter().map(|f| f[0].clone()).collect(),
                },
            );
        }
    }
    out
}

#[test]
fn acknowledged_mutations_survive_kill_9_under_load_and_caches_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let info = write_tracker_info(dir.path(), &[free_port(), free_port()]);
    let mut t1 = TrackerProc::start(&info, 1, &data);
    let t2 = TrackerProc::start(&info, 2, &data);
    let addrs = [t1.addr.clone(), t2.addr.clone()];

    let mut setup = t2.connect();
    let mut owners = Vec::new();
    let mut friends = Vec::new();
    for i in 0..THREADS {
        owners.push(setup.user(&format!("o{i}"), "pw"));
        friends.push(setup.user(&format!("f{i}"), "pw"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (addrs, stop, reads) = (addrs.clone(), stop.clone(), reads.clone());
            let (o, f) = (owners[i].clone(), friends[i].clone());
            thread::spawn(move || worker(i, addrs, o, f, stop, reads))
        })
        .collect();

    for _round in 0..ROUNDS {
        thread::sleep(Duration::from_millis(1200));
        t1.kill9();
        thread::sleep(Duration::from_millis(300));
        t1.restart();
    }
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let histories: Vec<History> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker panicked"))
        .collect();

    // What each group may look like: after its acknowledged steps, or (when the
    // last step's reply was lost) after that step too.
    let mut allowed: BTreeMap<String, Vec<GroupState>> = BTreeMap::new();
    let (mut acked, mut refused, mut lost) = (0, 0, 0);
    for h in &histories {
        let mut s = GroupState::absent();
        let mut options = Vec::new();
        for (step, file, outcome) in &h.steps {
            match outcome {
                Outcome::Acked => {
                    acked += 1;
                    s = s.after(*step, file);
                }
                Outcome::Refused(e) => {
                    refused += 1;
                    eprintln!("{}: {step:?} refused: {e}", h.group);
                }
                Outcome::Lost => {
                    lost += 1;
                    options.push(s.after(*step, file));
                }
            }
        }
        options.push(s);
        allowed.insert(h.group.clone(), options);
    }
    eprintln!(
        "{} groups, {acked} acknowledged mutations, {refused} refused, {lost} lost, {} reads",
        histories.len(),
        reads.load(Ordering::Relaxed)
    );
    assert!(acked > 200, "too little load to mean anything: {acked}");

    // Both trackers converge (watcher) and report exactly an allowed state.
    let mut c1 = t1.connect();
    let mut c2 = t2.connect();
    let mut seen1 = BTreeMap::new();
    let converged = wait_until(Duration::from_secs(10), || {
        seen1 = observe(&mut c1, &owners, &friends);
        seen1 == observe(&mut c2, &owners, &friends)
    });
    assert!(converged, "the trackers report different state");
    for (group, options) in &allowed {
        let got = seen1.get(group).cloned().unwrap_or_else(GroupState::absent);
        assert!(
            options.contains(&got),
            "{group}: state {got:?} is none of {options:?}"
        );
    }
    for group in seen1.keys() {
        assert!(
            allowed.contains_key(group),
            "{group} exists but was never created"
        );
    }

    // The SQLite caches hold identical state.
    let (db1, db2) = (data.join("tracker1.db"), data.join("tracker2.db"));
    let mut d1 = BTreeMap::new();
    let mut d2 = BTreeMap::new();
    let same = wait_until(Duration::from_secs(10), || {
        d1 = dump(&db1);
        d2 = dump(&db2);
        d1 == d2
    });
    for (table, rows) in &d1 {
        if rows != &d2[table] {
            let a: BTreeSet<_> = rows.iter().collect();
            let b: BTreeSet<_> = d2[table].iter().collect();
            eprintln!(
                "{table}: only in tracker1.db {:?}; only in tracker2.db {:?}",
                a.difference(&b).take(5).collect::<Vec<_>>(),
                b.difference(&a).take(5).collect::<Vec<_>>()
            );
        }
    }
    assert!(same, "tracker1.db and tracker2.db differ");
    assert!(d1["groups"].len() >= seen1.len());
    for t in [&t1, &t2] {
        assert!(!t.stderr.text().contains("panicked"), "{}", t.stderr.text());
    }
}
