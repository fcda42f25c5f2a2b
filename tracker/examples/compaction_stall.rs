//! How long a compaction stalls the tracker's loop (issue 13): a client sends
//! `whoami` (the cheapest request, so its latency is the loop's) in a closed
//! loop while the real `tracker` binary takes a snapshot of a large state and
//! compacts its log; prints the longest wait for a reply, the p99 and the count.
//!
//! It writes a history of `LINES` changes (default 1,000,000: a 144 MB state,
//! see `common/history.rs`) once, then for each binary (the `tracker` beside
//! this example, and the one given with `--baseline PATH`, e.g. one built from
//! `main`) copies the data dir, starts the tracker on it with `--snapshot-every
//! LINES+2`, creates and logs in one user (changes `LINES+1`, `LINES+2`: the
//! compaction is then due) and probes for `--seconds` (default 8) from then on.
//!
//! ```text
//! cargo build --release -p tracker --bins --examples
//! target/release/examples/compaction_stall [LINES] [--baseline PATH] [--seconds S]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::tracker_msg::{Reply, ReplyReader, Request};

#[path = "common/history.rs"]
mod history;
#[path = "common/tracker_proc.rs"]
mod tracker_proc;
use tracker_proc::start;

struct Probe {
    stream: TcpStream,
    reader: ReplyReader,
}

impl Probe {
    fn connect(addr: &str) -> Probe {
        let stream = TcpStream::connect(addr).expect("connect to the tracker");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let _ = stream.set_nodelay(true);
        Probe {
            stream,
            reader: ReplyReader::new(),
        }
    }

    fn request(&mut self, token: Option<&str>, command: &str, args: &[&str]) -> Reply {
        let req = Request::new(token, command, args);
        self.stream.write_all(&req.encode()).expect("send");
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(reply) = self.reader.next_reply() {
                return reply.expect("a well-formed reply");
            }
            let n = self.stream.read(&mut buf).expect("read a reply");
            assert!(n > 0, "the tracker closed the connection");
            self.reader.push(&buf[..n]);
        }
    }
}

/// The latencies of `whoami` in a closed loop for `window`, in ms, sorted.
fn probe(addr: &str, window: Duration) -> Vec<f64> {
    let mut p = Probe::connect(addr);
    p.request(None, "create_user", &["probe", "probe-password"]);
    let token = match p.request(None, "login", &["probe", "probe-password"]) {
        Reply::Ok { head, .. } => head.into_iter().next().expect("a token"),
        Reply::Err(e) => panic!("login: {e}"),
    };
    let started = Instant::now();
    let mut lat = Vec::new();
    while started.elapsed() < window {
        let t = Instant::now();
        let reply = p.request(Some(&token), "whoami", &[]);
        assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    lat
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["sync_log.txt", "tracker1.db"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn run(label: &str, bin: &Path, generated: &Path, lines: u64, window: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(generated, &data);
    let (mut child, addr) = start(bin, &data, lines + 2);
    let lat = probe(&addr, window);
    let _ = child.stdin.take().map(|mut s| s.write_all(b"quit\n"));
    let _ = child.wait();
    let log = std::fs::read(data.join("sync_log.txt")).unwrap_or_default();
    let header = log.split(|&b| b == b'\n').next().unwrap_or_default();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    println!(
        "{label}: {} whoami in {:.0} s, max {:.1} ms, p99 {:.2} ms, median {:.2} ms; log now: {}",
        lat.len(),
        window.as_secs_f64(),
        lat[lat.len() - 1],
        p99,
        lat[lat.len() / 2],
        String::from_utf8_lossy(header)
    );
}

fn main() {
    let mut lines = 1_000_000;
    let mut baseline = None;
    let mut window = Duration::from_secs(8);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--baseline" => baseline = args.next().map(PathBuf::from),
            "--seconds" => {
                let s: u64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N");
                window = Duration::from_secs(s);
            }
            n => lines = n.parse().expect("LINES"),
        }
    }
    let bin: PathBuf = tracker_proc::binary_beside_this_example();
    let generated = tempfile::tempdir().unwrap();
    let t = Instant::now();
    history::generate(generated.path(), lines);
    println!(
        "{lines} changes generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if let Some(base) = &baseline {
        run("baseline", base, generated.path(), lines, window);
    }
    run("this build", &bin, generated.path(), lines, window);
}
