//! Shared helpers of the transfer end-to-end tests (`tests/transfer_*.rs`): a
//! tracker with logged-in clients in one group, waiting for a download to
//! finish, metadata of a local file, and a scripted test peer that speaks
//! `wire::peer_msg` (honest but throttled, or lying).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{free_port, write_tracker_info, ClientProc, TrackerConn, TrackerProc};
use wire::file_meta::{FileMeta, PIECE_SIZE};
use wire::peer_msg::{self, Handshake, PeerMsg};
use wire::pieces::Bitfield;

/// A tracker and a temp dir.
pub struct Swarm {
    pub dir: tempfile::TempDir,
    pub info: PathBuf,
    pub tracker: TrackerProc,
    /// The group owner's session on the tracker (user `owner`, group `g`).
    pub owner: TrackerConn,
    pub owner_token: String,
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm::new()
    }
}

impl Swarm {
    /// Starts a tracker, creates user `owner` and group `g` through the protocol.
    pub fn new() -> Swarm {
        Swarm::with_tracker_args(&[])
    }

    /// [`Swarm::new`] with extra tracker arguments (e.g. `--ticket-secs 2`).
    pub fn with_tracker_args(extra: &[&str]) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let info = write_tracker_info(dir.path(), &[free_port()]);
        let tracker = TrackerProc::start_with(&info, 1, &dir.path().join("tdata"), extra);
        let mut owner = tracker.connect();
        let owner_token = owner.user("owner", "pw");
        owner.ok(Some(&owner_token), "create_group", &["g"]);
        Swarm {
            dir,
            info,
            tracker,
            owner,
            owner_token,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a client as a new user that is a member of `g`.
    pub fn member(&mut self, user: &str, extra: &[&str]) -> ClientProc {
        let mut c = self.client(user, extra);
        assert_eq!(c.cmd("join_group g"), "join request sent to g");
        self.owner
            .ok(Some(&self.owner_token), "accept_request", &["g", user]);
        c
    }

    /// Starts a client as a new (or existing, after a restart) user, logged in.
    pub fn client(&mut self, user: &str, extra: &[&str]) -> ClientProc {
        let state = self.path(&format!("state-{user}"));
        let mut c = ClientProc::start(&self.info, &state, extra);
        let created = c.cmd(&format!("create_user {user} pw"));
        assert!(
            created == format!("user {user} created") || created.starts_with("error: "),
            "{created}"
        );
        assert_eq!(
            c.cmd(&format!("login {user} pw")),
            format!("logged in as {user}")
        );
        c
    }

    /// Writes `name` in the swarm's dir: `len` bytes of content drawn from `seed`.
    /// Returns its path and its metadata as an uploader computes it.
    pub fn random_file(&self, name: &str, len: u64, seed: u64) -> (PathBuf, FileMeta) {
        let path = self.path(name);
        crate::write_random_file(&path, len, seed);
        let meta = meta_of(&path);
        (path, meta)
    }

    /// Starts a scripted peer serving the file at `path` and announces it at the
    /// tracker as a seeder, through a new protocol-level member `user` of `g`.
    pub fn scripted_seeder(
        &mut self,
        user: &str,
        path: &Path,
        behaviour: Behaviour,
        delay: Duration,
    ) -> TestPeer {
        let meta = meta_of(path);
        let data = Arc::new(std::fs::read(path).unwrap());
        let peer = TestPeer::start(data, meta.clone(), behaviour, delay);
        let (mut conn, token) = self.protocol_member(user);
        announce(&mut conn, &token, &meta, peer.addr);
        peer
    }

    /// A download ticket (hex) for `key` and file `name` of `g`, issued to the
    /// group's owner.
    pub fn ticket(&mut self, name: &str, key: &wire::ticket::KeyPair) -> String {
        let token = self.owner_token.clone();
        crate::peer_client::ticket(&mut self.owner, &token, "g", name, key)
    }

    /// A protocol-level member of `g` (for scripted test peers): returns its token.
    pub fn protocol_member(&mut self, user: &str) -> (TrackerConn, String) {
        let mut conn = self.tracker.connect();
        let token = conn.user(user, "pw");
        conn.ok(Some(&token), "join_group", &["g"]);
        self.owner
            .ok(Some(&self.owner_token), "accept_request", &["g", user]);
        (conn, token)
    }
}

/// Uploads `path` from a client and checks the reply.
pub fn upload(c: &mut ClientProc, path: &Path) {
    let reply = c.cmd(&format!("upload_file \"{}\" g", path.display()));
    assert!(
        reply.starts_with("uploaded "),
        "{reply}\n{}",
        c.stderr.text()
    );
}

/// Starts a download and checks the reply.
pub fn download(c: &mut ClientProc, name: &str, dest: &Path) {
    let reply = c.cmd(&format!(
        "download_file g \"{name}\" \"{}\"",
        dest.display()
    ));
    assert!(
        reply.starts_with("downloading "),
        "{reply}\n{}",
        c.stderr.text()
    );
}

/// `show_downloads`: the status lines.
pub fn show_downloads(c: &mut ClientProc) -> Vec<String> {
    c.list("show_downloads").1
}

/// Polls `show_downloads` until the download of `name` is complete (`[C]`);
/// panics on `[F]` or after `timeout`. Returns the `[D]` lines seen on the way.
pub fn wait_complete(c: &mut ClientProc, name: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let prefix_c = format!("[C] [g] {name}");
    let prefix_f = format!("[F] [g] {name}");
    let mut seen = Vec::new();
    loop {
        let lines = show_downloads(c);
        for l in &lines {
            if l == &prefix_c {
                return seen;
            }
            assert!(
                !l.starts_with(&prefix_f),
                "download failed: {l}\n{}",
                c.stderr.text()
            );
            if l.starts_with("[D]") {
                seen.push(l.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} not complete after {timeout:?}: {lines:?}\n{}",
            c.stderr.text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Metadata of a local file, as an uploader computes it.
pub fn meta_of(path: &Path) -> FileMeta {
    use sha1::{Digest, Sha1};
    let data = std::fs::read(path).unwrap();
    FileMeta {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        size: data.len() as u64,
        piece_size: PIECE_SIZE,
        piece_hashes: data
            .chunks(PIECE_SIZE as usize)
            .map(|c| Sha1::digest(c).into())
            .collect(),
        file_sha1: Sha1::digest(&data).into(),
    }
}

/// The seeder addresses the tracker lists for a file.
pub fn seeders(conn: &mut TrackerConn, token: &str, name: &str) -> Vec<String> {
    let (_, rows) = conn.ok(Some(token), "file_info", &["g", name]);
    rows.into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect()
}

/// How a [`TestPeer`] answers requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behaviour {
    /// Correct bytes.
    Honest,
    /// Every byte of every piece flipped.
    Liar,
    /// Takes requests and never answers them.
    Silent,
    /// Closes the connection when a request comes (a peer that dies).
    Hangup,
    /// Answers every request with a `Reject` (could not read it).
    Rejecter,
}

/// What a test peer saw.
#[derive(Default)]
pub struct PeerLog {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Connections the downloader closed.
    pub closed_by_peer: AtomicUsize,
    /// Piece indexes requested, in order.
    pub requests: Mutex<Vec<u32>>,
    /// Pieces sent.
    pub served: AtomicUsize,
    /// `Auth` messages received that carried a well-formed ticket for the file.
    pub auths: AtomicUsize,
}

/// A scripted peer serving one file over `wire::peer_msg`, one thread per connection.
pub struct TestPeer {
    pub addr: SocketAddr,
    pub log: Arc<PeerLog>,
    /// Pieces it may still send (across connections); it stalls at 0.
    pub budget: Arc<AtomicUsize>,
    /// Delay before each piece.
    pub delay: Duration,
    stop: Arc<AtomicBool>,
}

impl TestPeer {
    pub fn start(
        data: Arc<Vec<u8>>,
        meta: FileMeta,
        behaviour: Behaviour,
        delay: Duration,
    ) -> TestPeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let log = Arc::new(PeerLog::default());
        let budget = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, budget2, stop2) = (log.clone(), budget.clone(), stop.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        log2.connections.fetch_add(1, Ordering::SeqCst);
                        let (data, meta, log, budget, stop) = (
                            data.clone(),
                            meta.clone(),
                            log2.clone(),
                            budget2.clone(),
                            stop2.clone(),
                        );
                        thread::spawn(move || {
                            serve(s, &data, &meta, behaviour, delay, &log, &budget, &stop)
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestPeer {
            addr,
            log,
            budget,
            delay,
            stop,
        }
    }

    pub fn requested(&self) -> Vec<u32> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Pieces sent so far.
    pub fn served(&self) -> usize {
        self.log.served.load(Ordering::SeqCst)
    }

    /// From now on sends at most `pieces` more, then stalls (until [`TestPeer::release`]).
    pub fn hold_after(&self, pieces: usize) {
        self.budget.store(pieces, Ordering::SeqCst);
    }

    /// Sends without limit again.
    pub fn release(&self) {
        self.budget.store(usize::MAX, Ordering::SeqCst);
    }

    /// Waits up to 20 s until it has sent `pieces` pieces; panics saying how many it sent.
    pub fn wait_served(&self, pieces: usize) {
        assert!(
            crate::wait_until(Duration::from_secs(20), || self.served() >= pieces),
            "the scripted peer sent {} pieces, not {pieces}",
            self.served()
        );
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    mut s: TcpStream,
    data: &[u8],
    meta: &FileMeta,
    behaviour: Behaviour,
    delay: Duration,
    log: &PeerLog,
    budget: &AtomicUsize,
    stop: &AtomicBool,
) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let mut shook = false;
    let mut authed = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if !shook {
            if let Ok(Some(h)) = Handshake::decode(&buf) {
                buf.drain(..peer_msg::HANDSHAKE_LEN);
                shook = true;
                if h.file_sha1 != meta.file_sha1 {
                    let _ = s.write_all(&PeerMsg::Error("unknown file".into()).encode());
                    return;
                }
                // Protocol 4: a challenge; the bitfield follows the downloader's Auth.
                let mut out = Handshake::new(meta.file_sha1, [0x5a; 8]).encode().to_vec();
                let challenge = wire::ticket::new_challenge().unwrap();
                PeerMsg::Challenge(challenge).encode_into(&mut out);
                if s.write_all(&out).is_err() {
                    return;
                }
                continue;
            }
        } else if let Ok(Some((msg, used))) = peer_msg::decode(&buf) {
            buf.drain(..used);
            if let PeerMsg::Auth { ticket, .. } = &msg {
                // A scripted seeder: it checks the ticket names the file (the
                // client's own tests check signatures), then serves.
                let ok = wire::ticket::Ticket::decode(ticket)
                    .is_ok_and(|t| t.body.file_sha1 == meta.file_sha1);
                if !ok {
                    let _ = s.write_all(&PeerMsg::Error("no valid ticket".into()).encode());
                    return;
                }
                log.auths.fetch_add(1, Ordering::SeqCst);
                let bits = Bitfield::full(meta.piece_count()).into_bytes();
                if !authed && s.write_all(&PeerMsg::Bitfield(bits).encode()).is_err() {
                    return;
                }
                authed = true;
            }
            if let PeerMsg::Request { piece, offset, len } = msg {
                log.requests.lock().unwrap().push(piece);
                match behaviour {
                    Behaviour::Silent => continue,
                    Behaviour::Hangup => return,
                    Behaviour::Rejecter => {
                        let code = peer_msg::RejectCode::ReadFailed;
                        let no = PeerMsg::Reject {
                            piece,
                            offset,
                            code,
                        };
                        if s.write_all(&no.encode()).is_err() {
                            return;
                        }
                        continue;
                    }
                    Behaviour::Honest | Behaviour::Liar => {}
                }
                while budget.load(Ordering::SeqCst) == 0 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                budget.fetch_sub(1, Ordering::SeqCst);
                thread::sleep(delay);
                let start = (meta.piece_offset(piece as usize) + offset as u64) as usize;
                let mut bytes = data[start..start + len as usize].to_vec();
                if behaviour == Behaviour::Liar {
                    for b in bytes.iter_mut() {
                        *b = !*b;
                    }
                }
                let msg = PeerMsg::Piece {
                    piece,
                    offset,
                    data: bytes,
                };
                if s.write_all(&msg.encode()).is_err() {
                    log.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                log.served.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        match s.read(&mut tmp) {
            Ok(0) => {
                log.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                log.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Registers a scripted peer at the tracker as a seeder of `meta` in `g`
/// (uploading the metadata if the tracker does not know the file yet).
pub fn announce(conn: &mut TrackerConn, token: &str, meta: &FileMeta, addr: SocketAddr) {
    let size = meta.size.to_string();
    let piece_size = meta.piece_size.to_string();
    let sha1 = meta.file_sha1_hex();
    let hashes = meta.piece_hashes_hex();
    let addr = addr.to_string();
    conn.ok(
        Some(token),
        "upload_file",
        &["g", &meta.name, &size, &piece_size, &sha1, &hashes, &addr],
    );
}

/// Distinct values.
pub fn distinct(v: &[u32]) -> HashSet<u32> {
    v.iter().copied().collect()
}
