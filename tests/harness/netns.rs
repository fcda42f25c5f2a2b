//! Separate hosts for end-to-end tests, modelled with Linux network namespaces.
//!
//! [`Hosts::new`] makes N namespaces (hosts `1..=N`), each with `lo` up and one
//! `eth0` holding `10.77.<k>.<i>/24`, plugged by a veth pair into a bridge that
//! lives in a namespace of its own: the machine's own network is never touched.
//! Every name starts with [`PREFIX`] followed by the test process's PID and a
//! per-process counter, so parallel tests (and parallel test binaries) never
//! collide; `<k>` follows the counter, and since every instance has its own
//! bridge namespace, two instances could not reach each other even with equal
//! subnets. [`Hosts::partition`] / [`Hosts::heal`] set the bridge's end of a
//! host's veth down / up (the host keeps its address and routes; its packets are
//! dropped, as behind a pulled cable), [`Hosts::cut`] / [`Hosts::mend`] do the
//! same between two hosts only, [`Hosts::shape`] puts a `tbf` qdisc on a
//! host's `eth0` (its egress). [`Host::command`] wraps a program in
//! `ip netns exec`, which `exec`s it: the child's PID is the program's own, so the
//! guards kill exactly it. [`TrackerProc::start_in`](crate::TrackerProc::start_in)
//! and [`ClientProc::start_in`](crate::ClientProc::start_in) start the real
//! binaries inside a host; [`Host::spawn`] any other program; [`Host::connect`]
//! opens a TCP connection from inside a host (a thread switched there by `setns`).
//!
//! Dropping [`Hosts`] (also while a test panics) deletes every namespace it made,
//! which removes the veths and the bridge with them. Declare it before the
//! process guards that run in it, so they are dropped (their processes killed)
//! first. Namespaces with the prefix
//! left by a crashed earlier run (their PID is gone) are deleted at the first
//! [`Hosts::new`] of a process. Needs root and iproute2 (`ip`, `tc`):
//! [`Hosts::new_or_skip`] says loudly why a test cannot run, and fails under `CI`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use crate::{spawn_tapped, wait_child, LineTap, WAIT};

/// Start of every namespace name this module makes: `ssnet-<pid>-<counter>-<role>`.
pub const PREFIX: &str = "ssnet-";

/// A MAC address no host has: [`Hosts::cut`] sends a peer's packets there.
const NOWHERE_MAC: &str = "02:00:00:00:00:00";

/// The bound on one `ip` / `tc` invocation.
const TOOL_WAIT: Duration = Duration::from_secs(10);

/// Instances made by this process so far (names and subnets derive from it).
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// One host: a network namespace with one address on the shared bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// 1-based number of this host within its [`Hosts`].
    pub no: usize,
    /// The namespace's name (as `ip netns list` shows it).
    pub ns: String,
    /// The host's address on the bridge, `10.77.<k>.<no>`.
    pub ip: Ipv4Addr,
}

impl Host {
    /// `ip netns exec <ns> <program>`: add arguments as to any command. `ip`
    /// execs the program, so the spawned child's PID is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// `<ip>:<port>` of this host, e.g. for a tracker_info.txt line.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    /// Runs `f` on a thread that has entered this host's namespace (`setns`):
    /// sockets `f` creates belong to the host and stay there when handed back.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns);
        thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: a valid namespace fd; setns only changes this thread's
                // network namespace (which the scoped thread ends with).
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread inside the namespace panicked")
        })
    }

    /// A TCP connection from this host to `addr` (bounded by [`WAIT`]).
    pub fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        self.connect_timeout(addr, WAIT)
    }

    /// A TCP connection from this host to `addr`, given up after `timeout`.
    pub fn connect_timeout(&self, addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.within(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// Starts `program args…` inside this host, stdin piped and output tapped.
    pub fn spawn(&self, program: impl AsRef<OsStr>, args: &[&str]) -> HostProc {
        let mut cmd = self.command(program);
        cmd.args(args);
        let (child, stdin, stdout, stderr) = spawn_tapped(cmd, &format!("process in {}", self.ns));
        HostProc {
            child,
            stdin,
            stdout,
            stderr,
        }
    }
}

/// A process started in a host by [`Host::spawn`], killed (by PID) when dropped.
pub struct HostProc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: LineTap,
    pub stderr: LineTap,
}

impl HostProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit; its exit code if it did
    /// (-1 if a signal ended it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_child(&mut self.child, [&self.stdout, &self.stderr], timeout)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// N hosts on one private bridge; everything is removed on drop.
pub struct Hosts {
    /// `ssnet-<pid>-<counter>`: the start of every name of this instance.
    tag: String,
    /// The namespace holding the bridge `br0` and the hosts' peer veths `v<i>`.
    bridge_ns: String,
    hosts: Vec<Host>,
}

impl Hosts {
    /// Why separate hosts cannot be made here (not root, no iproute2), if so.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not running as root".into());
        }
        for program in ["ip", "tc"] {
            if let Err(e) = tool(program, &["-V"]) {
                return Some(format!("iproute2's `{program}` does not run: {e}"));
            }
        }
        None
    }

    /// [`Hosts::new`], or `None` after a loud `SKIPPED (needs root + iproute2)`
    /// line on stderr when [`Hosts::unavailable`]; under `CI` that panics
    /// instead (CI runs as root, so these tests must run there).
    pub fn new_or_skip(n: usize, test: &str) -> Option<Hosts> {
        let Some(why) = Hosts::unavailable() else {
            return Some(Hosts::new(n));
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run the separate-host tests as root with iproute2: {why}"
        );
        // Written to stderr directly: `eprintln!` is captured for passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (needs root + iproute2): {test}: {why}"
        );
        None
    }

    /// Makes `n` hosts (numbered `1..=n`, at most 250) on a new bridge; panics
    /// naming the failed command if any step fails (what was made is removed).
    pub fn new(n: usize) -> Hosts {
        assert!((1..=250).contains(&n), "1..=250 hosts, not {n}");
        static CLEAN: Once = Once::new();
        CLEAN.call_once(remove_stale);
        let count = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}-{count}", std::process::id());
        let subnet = 1 + (count % 250) as u8;
        let mut hosts = Hosts {
            bridge_ns: format!("{tag}-br"),
            tag,
            hosts: Vec::new(),
        };
        // On failure `hosts` is dropped while panicking: what exists is removed.
        let br = hosts.bridge_ns.clone();
        ok(&["netns", "add", &br]);
        ok(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ok(&["-n", &br, "link", "set", "br0", "up"]);
        for no in 1..=n {
            let host = Host {
                no,
                ns: format!("{}-h{no}", hosts.tag),
                ip: Ipv4Addr::new(10, 77, subnet, no as u8),
            };
            ok(&["netns", "add", &host.ns]);
            hosts.hosts.push(host.clone());
            let (h, veth) = (host.ns.as_str(), format!("v{no}"));
            ok(&[
                "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", h,
            ]);
            ok(&["-n", &br, "link", "set", &veth, "master", "br0", "up"]);
            ok(&["-n", h, "link", "set", "lo", "up"]);
            ok(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ]);
            ok(&["-n", h, "link", "set", "eth0", "up"]);
        }
        hosts
    }

    /// Host `no` (1-based).
    pub fn host(&self, no: usize) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&no),
            "host {no} of {}",
            self.hosts.len()
        );
        &self.hosts[no - 1]
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Cuts host `no` off the bridge (its veth's bridge end down): its packets
    /// are dropped both ways, its own address and routes stay.
    pub fn partition(&self, no: usize) {
        self.set_bridge_end(no, "down");
    }

    /// Plugs host `no` back into the bridge.
    pub fn heal(&self, no: usize) {
        self.set_bridge_end(no, "up");
    }

    /// Sets the bridge end of host `no`'s veth `down` or `up`.
    fn set_bridge_end(&self, no: usize, state: &str) {
        self.host(no);
        let veth = format!("v{no}");
        ok(&["-n", &self.bridge_ns, "link", "set", &veth, state]);
    }

    /// Cuts the link between hosts `a` and `b` only, both ways: each sends the
    /// other's packets to a MAC address nobody has (a permanent neighbour
    /// entry), so they are dropped silently and TCP times out, as in a real
    /// partition; every other pair still talks. [`Hosts::mend`] undoes it.
    pub fn cut(&self, a: usize, b: usize) {
        assert_ne!(a, b, "a host cannot be cut from itself");
        for (from, to) in [(a, b), (b, a)] {
            let (ns, ip) = (&self.host(from).ns, self.host(to).ip.to_string());
            let nowhere = [
                ip.as_str(),
                "lladdr",
                NOWHERE_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ];
            let args: Vec<&str> = ["-n", ns, "neigh", "replace"]
                .into_iter()
                .chain(nowhere)
                .collect();
            ok(&args);
        }
    }

    /// Undoes [`Hosts::cut`] between `a` and `b` (the hosts resolve each other
    /// again by ARP).
    pub fn mend(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (ns, ip) = (&self.host(from).ns, self.host(to).ip.to_string());
            ok(&["-n", ns, "neigh", "del", &ip, "dev", "eth0"]);
        }
    }

    /// Limits what host `no` sends to `bits_per_sec` (a `tbf` qdisc on its
    /// `eth0`, replacing any earlier one).
    pub fn shape(&self, no: usize, bits_per_sec: u64) {
        let ns = &self.host(no).ns;
        let rate = format!("{bits_per_sec}bit");
        let args = ["-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf"];
        let tbf = ["rate", &rate, "burst", "32kb", "latency", "400ms"];
        let all: Vec<&str> = args.into_iter().chain(tbf).collect();
        if let Err(e) = tool("tc", &all) {
            panic!("{e}");
        }
    }

    /// Removes host `no`'s shaping (back to the default qdisc).
    pub fn unshape(&self, no: usize) {
        let ns = &self.host(no).ns;
        if let Err(e) = tool("tc", &["-n", ns, "qdisc", "del", "dev", "eth0", "root"]) {
            panic!("{e}");
        }
    }

    /// Bytes host `no` has sent through the `tbf` qdisc [`Hosts::shape`] put
    /// on its `eth0` (from `tc -s qdisc show`); panics if it is not shaped.
    pub fn sent_bytes(&self, no: usize) -> u64 {
        let ns = &self.host(no).ns;
        let args = ["-s", "-n", ns, "qdisc", "show", "dev", "eth0"];
        let text = output("tc", &args).unwrap_or_else(|e| panic!("{e}"));
        let mut lines = text.lines();
        let head = lines.next().unwrap_or("");
        assert!(
            head.starts_with("qdisc tbf ") && head.contains(" root "),
            "host {no} is not shaped by tbf:\n{text}"
        );
        let sent = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>();
        match sent.as_slice() {
            ["Sent", n, "bytes", ..] => n.parse().unwrap_or_else(|_| panic!("{text}")),
            _ => panic!("no Sent line in:\n{text}"),
        }
    }

    /// Writes `dir/tracker_info.txt` listing `<ip of host>:<port>` for each of
    /// `hosts` (tracker N runs in `hosts[N-1]`); returns its path.
    pub fn tracker_info(&self, dir: &std::path::Path, hosts: &[usize], port: u16) -> PathBuf {
        let path = dir.join("tracker_info.txt");
        let text: String = hosts
            .iter()
            .map(|&no| format!("{}\n", self.host(no).addr(port)))
            .collect();
        std::fs::write(&path, text).expect("write tracker_info");
        path
    }

    /// The namespace names this instance made (hosts, then the bridge's).
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        names.push(self.bridge_ns.clone());
        names
    }
}

impl Drop for Hosts {
    /// Deletes the hosts' namespaces, then the bridge's; errors are reported,
    /// never a second panic.
    fn drop(&mut self) {
        for ns in self.namespaces() {
            if namespace_exists(&ns) {
                if let Err(e) = run(&["netns", "delete", &ns]) {
                    let _ = writeln!(std::io::stderr(), "netns cleanup: {e}");
                }
            }
        }
    }
}

/// Deletes namespaces named with [`PREFIX`] whose PID is no longer running
/// (left by a crashed earlier run). [`Hosts::new`] calls it once per process.
pub fn remove_stale() {
    let Ok(list) = output("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["netns", "delete", name]);
        }
    }
}

/// Whether a namespace of this name exists (`/run/netns/<ns>`).
pub fn namespace_exists(ns: &str) -> bool {
    std::path::Path::new(&format!("/run/netns/{ns}")).exists()
}

/// Runs `ip <args>`; panics naming the command if it fails.
fn ok(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// Runs `ip <args>`, bounded by [`TOOL_WAIT`].
fn run(args: &[&str]) -> Result<(), String> {
    tool("ip", args)
}

/// Runs `program args`, bounded by [`TOOL_WAIT`]; an error names the command.
fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(|_| ())
}

/// Runs `program args` and returns its stdout, bounded by [`TOOL_WAIT`] (a late
/// one is killed by PID); an error names the command and says what it printed.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let what = format!("`{program} {}`", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    // Drained on threads, so a chatty tool never blocks on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + TOOL_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish in {TOOL_WAIT:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed ({status}): {}", err.trim()))
    }
}

/// Reads a child's pipe to its end on a thread (lossy UTF-8).
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
