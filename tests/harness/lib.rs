//! The end-to-end test harness: starts the real `tracker` and `client` binaries on
//! 127.0.0.1, feeds the client's shell, and waits with a bound on every wait.
//!
//! Every process is started by a guard ([`TrackerProc`], [`ClientProc`]) that kills
//! exactly that process, by PID, when dropped. Ports come from the OS (a listener on
//! port 0 that is closed just before the binary binds it); data lives in temp dirs.
//! [`transfer`] adds what the transfer tests share: a tracker with logged-in
//! clients in one group, and a scripted test peer (throttled or lying).
//! [`peer_client`] is a blocking downloader-side peer connection for probing a
//! client's peer server. [`tracker_state`] reads what a tracker left on disk: its SQLite cache as
//! comparable text, and `sync_log.txt` with every line's checksum checked.
//! [`netns`] models separate hosts with network namespaces: [`TrackerProc::start_in`]
//! and [`ClientProc::start_in`] take a host (or `None` for 127.0.0.1 on this machine).
//! [`raft`] is a three-tracker `--replication raft` cluster (loopback or netns).
//!
//! Besides the process guards this module holds what several tests share: a
//! [`lone_tracker`] in its own temp dir, [`ClientProc::list`] for the shell's
//! counted list replies, and the tracker checks [`TrackerProc::assert_alive`],
//! [`TrackerConn::assert_served`], [`rss_kib`] and [`set_file_size_limit`].

pub mod netns;
pub mod peer_client;
pub mod raft;
pub mod tracker_state;
pub mod transfer;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wire::tracker_msg::{Reply, ReplyReader, Request};

/// The default bound on any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of a workspace binary (`tracker` or `client`) next to the test executable:
/// `target/<profile>/deps/<test>` -> `target/<profile>/<name>`.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo test --workspace` (it builds both binaries)",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that was free a moment ago, for a tracker to listen on.
///
/// It is drawn at random from below the kernel's ephemeral port range: a port
/// the OS hands out for port 0 or an outgoing connection (the suite makes
/// thousands) could be taken again between this check and the tracker's bind,
/// but the OS never hands out these.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1));
    if high > low + 1000 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= DRAWS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = low + (x % u64::from(high - low)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Writes a tracker_info.txt listing the given ports on 127.0.0.1; returns its path.
pub fn write_tracker_info(dir: &Path, ports: &[u16]) -> PathBuf {
    let path = dir.join("tracker_info.txt");
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&path, text).expect("write tracker_info");
    path
}

/// Waits up to `timeout` for `child` to exit; its exit code (-1 if a signal
/// ended it), returned once `taps` have seen its pipes close (bounded), so
/// their text is complete; `None` if it is still running.
pub fn wait_child(child: &mut Child, taps: [&LineTap; 2], timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            for tap in taps {
                tap.wait_ended(Duration::from_secs(2));
            }
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's output lines on a thread; lines can be awaited with a bound.
pub struct LineTap {
    rx: Receiver<String>,
    /// Every line seen so far, for assertions and failure messages.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Set when the output reached its end (the reader thread is done).
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl LineTap {
    pub fn new<R: Read + Send + 'static>(r: R) -> LineTap {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended2 = ended.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        seen2.lock().unwrap().push(line.clone());
                        if tx.send(line).is_err() {
                            // Nobody listens any more; keep draining so the child never blocks.
                        }
                    }
                }
            }
            ended2.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        LineTap { rx, seen, ended }
    }

    /// Waits (bounded) until the output has ended, so [`LineTap::text`] holds all
    /// of it: after a process exits its last lines may still be in the pipe.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.ended.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// The next line, or `None` after `timeout` or at end of output.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Waits for a line matching `pred`; returns it, or panics with what was seen.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; seen:\n{}",
                        self.seen.lock().unwrap().join("\n")
                    )
                }
            }
        }
    }

    /// Every line seen so far, joined.
    pub fn text(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

/// Starts a single tracker (tracker 1 of a one-line tracker_info.txt, on a free
/// port, with `extra` arguments) whose data lives in a new temp dir; the dir is
/// returned with the guard and must outlive it.
pub fn lone_tracker(extra: &[&str]) -> (tempfile::TempDir, TrackerProc) {
    let dir = tempfile::tempdir().unwrap();
    let info = write_tracker_info(dir.path(), &[free_port()]);
    let t = TrackerProc::start_with(&info, 1, &dir.path().join("data"), extra);
    (dir, t)
}

/// A row of a reply (or any list of strings), from string slices.
pub fn row(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|s| s.to_string()).collect()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sets the soft RLIMIT_FSIZE of a process the test started (by PID), capped at
/// its hard limit: a write past `bytes` then fails with EFBIG, as on a full disk.
pub fn set_file_size_limit(pid: u32, bytes: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child; both pointers point to valid rlimits.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "read rlimit");
    let new = libc::rlimit {
        rlim_cur: bytes.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "set rlimit");
}

/// Spawns `cmd` with its stdin on a pipe and its stdout and stderr tapped.
pub(crate) fn spawn_tapped(
    mut cmd: Command,
    what: &str,
) -> (Child, Option<ChildStdin>, LineTap, LineTap) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = LineTap::new(child.stdout.take().unwrap());
    let stderr = LineTap::new(child.stderr.take().unwrap());
    let stdin = child.stdin.take();
    (child, stdin, stdout, stderr)
}

/// A command running `bin` inside `host` (`ip netns exec`, which execs it: the
/// child's PID is `bin`'s), or directly on this machine for `None`.
fn command_in(host: Option<&netns::Host>, bin: &Path) -> Command {
    match host {
        Some(h) => h.command(bin),
        None => Command::new(bin),
    }
}

/// A running `tracker` process, killed (by PID) when dropped.
pub struct TrackerProc {
    pub child: Child,
    pub addr: String,
    pub stdout: LineTap,
    pub stderr: LineTap,
    pub stdin: Option<ChildStdin>,
    pub info: PathBuf,
    pub no: usize,
    pub data_dir: PathBuf,
    /// The separate host it runs in ([`netns`]), or `None` for this machine.
    pub host: Option<netns::Host>,
    /// The extra arguments it was started with (a restart reuses them).
    pub extra: Vec<String>,
}

impl TrackerProc {
    /// Starts tracker `no` (1-based) of `info` with `data_dir`, and waits until it listens.
    pub fn start(info: &Path, no: usize, data_dir: &Path) -> TrackerProc {
        TrackerProc::start_with(info, no, data_dir, &[])
    }

    pub fn start_with(info: &Path, no: usize, data_dir: &Path, extra: &[&str]) -> TrackerProc {
        TrackerProc::start_in(None, info, no, data_dir, extra)
    }

    /// Starts tracker `no` of `info` inside `host` (a network namespace, see
    /// [`netns`]), or on this machine for `None`; waits until it listens.
    pub fn start_in(
        host: Option<&netns::Host>,
        info: &Path,
        no: usize,
        data_dir: &Path,
        extra: &[&str],
    ) -> TrackerProc {
        let mut cmd = command_in(host, &bin_path("tracker"));
        cmd.arg(info)
            .arg(no.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        let (child, stdin, stdout, stderr) = spawn_tapped(cmd, "tracker");
        let mut t = TrackerProc {
            child,
            addr: String::new(),
            stdout,
            stderr,
            stdin,
            info: info.to_path_buf(),
            no,
            data_dir: data_dir.to_path_buf(),
            host: host.cloned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = t.stdout.next_line(Duration::from_millis(100)) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    t.addr = addr.trim().to_string();
                    break;
                }
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                panic!(
                    "tracker exited early ({status}); stderr:\n{}",
                    t.stderr.text()
                );
            }
            if Instant::now() > deadline {
                panic!("tracker did not start; stderr:\n{}", t.stderr.text());
            }
        }
        t
    }

    /// `kill -9` this tracker and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops this tracker cleanly (`quit` on its stdin) and waits up to [`WAIT`] for
    /// it to exit; returns its exit code. Panics if it does not exit in time.
    pub fn quit(&mut self) -> i32 {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
            let _ = stdin.flush();
        }
        self.wait_exit_after_quit()
    }

    /// Like [`TrackerProc::quit`], but stricter: the tracker must still take the
    /// `quit` (its stdin open and writable) and must exit with status 0.
    pub fn quit_ok(&mut self) {
        let stdin = self.stdin.as_mut().expect("tracker stdin");
        stdin.write_all(b"quit\n").unwrap();
        stdin.flush().unwrap();
        let code = self.wait_exit_after_quit();
        assert_eq!(
            code,
            0,
            "tracker exited with code {code}; stderr:\n{}",
            self.stderr.text()
        );
    }

    /// Waits up to [`WAIT`] for the tracker to exit after `quit`; returns its exit
    /// code (-1 if a signal ended it).
    fn wait_exit_after_quit(&mut self) -> i32 {
        let taps = [&self.stdout, &self.stderr];
        match wait_child(&mut self.child, taps, WAIT) {
            Some(code) => code,
            None => panic!(
                "tracker did not exit after quit; stderr:\n{}",
                self.stderr.text()
            ),
        }
    }

    /// Kills this tracker (if running) and starts it again on the same address
    /// and data (and in the same host, with the same extra arguments).
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = TrackerProc::start_in(
            self.host.as_ref(),
            &self.info,
            self.no,
            &self.data_dir,
            &extra,
        );
        *self = next;
    }

    /// A new blocking protocol connection to this tracker (made from inside
    /// its host when it runs in one, see [`netns`]).
    pub fn connect(&self) -> TrackerConn {
        match &self.host {
            Some(h) => match h.connect(&self.addr) {
                Ok(stream) => TrackerConn::from_stream(stream),
                Err(e) => panic!("connect to tracker {} in {}: {e}", self.addr, h.ns),
            },
            None => TrackerConn::connect(&self.addr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asserts the tracker is still running and has not logged a panic.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "tracker died; stderr:\n{}",
            self.stderr.text()
        );
        assert!(
            !self.stderr.text().contains("panicked"),
            "tracker panicked:\n{}",
            self.stderr.text()
        );
    }
}

impl Drop for TrackerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking connection that speaks the tracker protocol, for tests.
pub struct TrackerConn {
    pub stream: TcpStream,
    reader: ReplyReader,
}

impl TrackerConn {
    pub fn connect(addr: &str) -> TrackerConn {
        let stream = TcpStream::connect(addr).expect("connect to tracker");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        TrackerConn {
            stream,
            reader: ReplyReader::new(),
        }
    }

    /// Wraps an already connected stream (e.g. one a test wrote raw bytes to).
    pub fn from_stream(stream: TcpStream) -> TrackerConn {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        TrackerConn {
            stream,
            reader: ReplyReader::new(),
        }
    }

    /// Sends raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next reply, or an error if the connection ends or times out first.
    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(r) = self.reader.next_reply() {
                return r.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.reader.push(&buf[..n]);
        }
    }

    /// Sends a request and reads its reply.
    pub fn request(&mut self, token: Option<&str>, command: &str, args: &[&str]) -> Reply {
        let req = Request::new(token, command, args);
        self.stream.write_all(&req.encode()).expect("send request");
        self.read_reply().expect("read reply")
    }

    /// Sends a request that must succeed; returns its head fields and rows.
    pub fn ok(
        &mut self,
        token: Option<&str>,
        command: &str,
        args: &[&str],
    ) -> (Vec<String>, Vec<Vec<String>>) {
        match self.request(token, command, args) {
            Reply::Ok { head, rows } => (head, rows),
            Reply::Err(e) => panic!("{command} {args:?} failed: {e}"),
        }
    }

    /// Sends a request that must fail; returns the reason.
    pub fn err(&mut self, token: Option<&str>, command: &str, args: &[&str]) -> String {
        match self.request(token, command, args) {
            Reply::Err(e) => e,
            ok => panic!("{command} {args:?} should have failed, got {ok:?}"),
        }
    }

    /// create_user (must succeed) then login; returns the session token.
    pub fn user(&mut self, user: &str, password: &str) -> String {
        self.ok(None, "create_user", &[user, password]);
        self.login(user, password)
    }

    /// login (must succeed); returns the session token.
    pub fn login(&mut self, user: &str, password: &str) -> String {
        let (head, _) = self.ok(None, "login", &[user, password]);
        head.into_iter().next().expect("login returns a token")
    }

    /// Asserts that `command` (no arguments) with session `token` gets an `OK`
    /// reply within 5 s: a well-behaved client is served while others
    /// misbehave.
    pub fn assert_served(&mut self, token: &str, command: &str) {
        let start = Instant::now();
        let r = self.request(Some(token), command, &[]);
        assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
        // A liveness bound, not a speed target: a stalled loop never answers;
        // a debug tracker on a loaded 2-core machine may take a second or two.
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "a good client waited {took:?}"
        );
    }
}

/// A running `client` process with its shell on a pipe, killed (by PID) when dropped.
pub struct ClientProc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: LineTap,
    pub stderr: LineTap,
    pub state_dir: PathBuf,
}

impl ClientProc {
    /// Starts `client <info> --state-dir <state_dir> --listen 127.0.0.1:0 <extra...>`.
    pub fn start(info: &Path, state_dir: &Path, extra: &[&str]) -> ClientProc {
        ClientProc::start_in(None, info, state_dir, extra)
    }

    /// Like [`ClientProc::start`], inside `host` (a network namespace, see
    /// [`netns`]) listening on the host's address, or on this machine for `None`.
    pub fn start_in(
        host: Option<&netns::Host>,
        info: &Path,
        state_dir: &Path,
        extra: &[&str],
    ) -> ClientProc {
        let listen = match host {
            Some(h) => format!("{}:0", h.ip),
            None => "127.0.0.1:0".into(),
        };
        let mut args: Vec<String> = vec![
            info.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--listen".into(),
            listen,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        ClientProc::spawn_in(host, &args, state_dir)
    }

    /// Starts `client` with exactly these arguments (e.g. the assignment's `IP:PORT info` form).
    pub fn start_args(args: &[String], state_dir: &Path) -> ClientProc {
        ClientProc::spawn_in(None, args, state_dir)
    }

    /// Starts `client args…` in `host` (or on this machine for `None`).
    fn spawn_in(host: Option<&netns::Host>, args: &[String], state_dir: &Path) -> ClientProc {
        let mut cmd = command_in(host, &bin_path("client"));
        cmd.args(args).env("RUST_BACKTRACE", "1");
        let (child, stdin, stdout, stderr) = spawn_tapped(cmd, "client");
        ClientProc {
            child,
            stdin,
            stdout,
            stderr,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Writes one command line to the shell.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write to client");
        stdin.write_all(b"\n").expect("write to client");
        stdin.flush().expect("flush client stdin");
    }

    /// Writes `text` to stdin in one write (a few lines at once, so a client that
    /// exits after the first of them cannot make the rest fail with a broken pipe).
    pub fn send_at_once(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).expect("write to client");
        stdin.flush().expect("flush client stdin");
    }

    /// Sends a command and returns the next output line (every command prints one
    /// outcome line first; list commands may print more, see [`ClientProc::list`]).
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.stdout
            .next_line(WAIT)
            .unwrap_or_else(|| panic!("no reply to {line:?}; stderr:\n{}", self.stderr.text()))
    }

    /// Sends a list command; returns its first line and the item lines it
    /// announced (the first line starts with their count).
    pub fn list(&mut self, line: &str) -> (String, Vec<String>) {
        let first = self.cmd(line);
        let n: usize = first
            .split(' ')
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{line:?}: expected a count, got {first:?}\nstderr: {}",
                    self.stderr.text()
                )
            });
        let items = (0..n)
            .map(|_| self.stdout.next_line(WAIT).expect("announced item line"))
            .collect();
        (first, items)
    }

    /// Waits for a stdout line matching `pred`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.stdout.wait_for(what, WAIT, pred)
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_child(&mut self.child, [&self.stdout, &self.stderr], timeout)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a file of `len` bytes of deterministic pseudo-random content (streamed,
/// never held in memory whole); returns its SHA-1 as hex.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> String {
    use sha1::{Digest, Sha1};
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create file"));
    let mut h = Sha1::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        f.write_all(&buf[..n]).expect("write file");
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().expect("flush file");
    wire::file_meta::to_hex(&h.finalize())
}

/// SHA-1 of a file as hex, streamed.
pub fn sha1_file(path: &Path) -> String {
    use sha1::{Digest, Sha1};
    let mut f = std::fs::File::open(path).expect("open file");
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).expect("read file");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    wire::file_meta::to_hex(&h.finalize())
}

/// Compares two files byte for byte, streamed; panics with the first differing offset.
pub fn assert_same_file(a: &Path, b: &Path) {
    let ma = std::fs::metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = std::fs::metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(
        ma.len(),
        mb.len(),
        "sizes differ: {} vs {}",
        a.display(),
        b.display()
    );
    let mut fa = BufReader::new(std::fs::File::open(a).unwrap());
    let mut fb = BufReader::new(std::fs::File::open(b).unwrap());
    let mut ba = vec![0u8; 256 * 1024];
    let mut bb = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!("files differ at byte {}", off + i as u64);
        }
        off += n as u64;
    }
}

/// A blocking TCP connection to `to` from source address `from` (any port).
pub fn connect_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket owned by the returned TcpStream (or closed on error);
    // the addresses are valid sockaddr_in values of the given length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let src = sockaddr(from, 0);
        if libc::bind(fd, &src as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dst = sockaddr(*to.ip(), to.port());
        if libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}
