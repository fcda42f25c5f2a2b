//! Unit tests of `Transfers`: small in-process swarms of nodes, each a minimal
//! mio loop around one `Transfers`, like the client's.

use super::fetching::NO_PEERS_LIMIT;
use super::*;
use crate::storage;
use mio::net::TcpListener;
use mio::{Events, Poll};
use std::io::{Read, Write};
use std::path::Path;
use wire::peer_msg::{self, Handshake, PeerMsg, RejectCode};
use wire::pieces::{Bitfield, PieceIndex};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// A minimal event loop around one `Transfers`, like the client's.
struct Node {
    poll: Poll,
    listener: TcpListener,
    t: Transfers,
    addr: SocketAddr,
    _state: tempfile::TempDir,
    jobs: Vec<TrackerJob>,
}

impl Node {
    fn new(threads: usize, retries: u32) -> Node {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let t = Transfers::new(
            TransferConfig {
                threads,
                retries,
                state_dir: state.path().to_path_buf(),
                max_serving: 8,
                max_serving_per_ip: 8,
            },
            waker,
        )
        .unwrap();
        let mut t = t;
        t.set_tracker_keys(vec![test_tracker().verifying_key()]);
        t.start_serving();
        let addr = listener.local_addr().unwrap();
        Node {
            poll,
            listener,
            t,
            addr,
            _state: state,
            jobs: Vec::new(),
        }
    }

    fn turn(&mut self) {
        let mut events = Events::with_capacity(256);
        self.poll
            .poll(&mut events, Some(Duration::from_millis(1)))
            .unwrap();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => {
                    while let Ok((s, a)) = self.listener.accept() {
                        self.t.accept(self.poll.registry(), s, a);
                    }
                }
                WAKER => self.t.poll_pool(self.poll.registry()),
                _ => self.t.handle_event(self.poll.registry(), ev),
            }
        }
        self.t.poll_pool(self.poll.registry());
        self.t.tick(self.poll.registry(), Instant::now());
        self.jobs.extend(self.t.take_tracker_jobs());
    }

    /// Starts a download that must be accepted (with a valid ticket).
    fn download(&mut self, group: &str, meta: FileMeta, peers: Vec<SocketAddr>, out: PathBuf) {
        let tk = ticket(&self.t, &meta, 60);
        self.t
            .start_download(self.poll.registry(), group, meta, peers, out, Some(&tk))
            .unwrap();
    }

    fn share(&mut self, path: &Path) -> FileMeta {
        let meta = hasher::hash_file(path).unwrap();
        self.t.add_share("g", meta.clone(), path.to_path_buf());
        meta
    }
}

/// The tracker key of these tests (every node pins it).
fn test_tracker() -> &'static wire::ticket::KeyPair {
    static KEY: std::sync::OnceLock<wire::ticket::KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| wire::ticket::new_key_pair().unwrap())
}

/// A ticket (hex) for `t`'s key and `meta`'s file, valid for `secs` more seconds.
fn ticket(t: &Transfers, meta: &FileMeta, secs: u64) -> String {
    wire::ticket::TicketBody {
        user: "u".into(),
        group: "g".into(),
        file_sha1: meta.file_sha1,
        holder: t.key_pair.verifying_key().to_bytes(),
        expires: wire::ticket::unix_now() + secs,
    }
    .sign(test_tracker())
    .to_hex()
}

/// The next whole message on a raw connection (`buf` keeps what follows).
fn raw_msg(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<PeerMsg> {
    loop {
        if let Some((m, used)) = peer_msg::decode(buf).unwrap() {
            buf.drain(..used);
            return Some(m);
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// A raw downloader's handshake for `sha1` and its answer to the server's
/// challenge, with a ticket signed by `tracker` for `holder`, expiring in
/// `secs` (0: already expired). Returns the bytes read past the challenge.
fn raw_auth(
    s: &mut std::net::TcpStream,
    sha1: [u8; 20],
    tracker: &wire::ticket::KeyPair,
    holder: &wire::ticket::KeyPair,
    secs: i64,
) -> Vec<u8> {
    raw_auth_for(s, sha1, (sha1, "g"), tracker, holder, secs)
}

/// [`raw_auth`] with a ticket for `ticket_for` (maybe another file or group).
fn raw_auth_for(
    s: &mut std::net::TcpStream,
    sha1: [u8; 20],
    ticket_for: ([u8; 20], &str),
    tracker: &wire::ticket::KeyPair,
    holder: &wire::ticket::KeyPair,
    secs: i64,
) -> Vec<u8> {
    let (ticket_sha1, group) = ticket_for;
    s.write_all(&Handshake::new(sha1, [1; 8]).encode()).unwrap();
    let mut hs = [0u8; peer_msg::HANDSHAKE_LEN];
    s.read_exact(&mut hs).unwrap();
    let server = Handshake::decode(&hs).unwrap().unwrap();
    let mut buf = Vec::new();
    let Some(PeerMsg::Challenge(c)) = raw_msg(s, &mut buf) else {
        panic!("no challenge after the handshake");
    };
    let t = wire::ticket::TicketBody {
        user: "u".into(),
        group: group.into(),
        file_sha1: ticket_sha1,
        holder: holder.verifying_key().to_bytes(),
        expires: (wire::ticket::unix_now() as i64 + secs) as u64,
    }
    .sign(tracker);
    let msg = wire::ticket::challenge_message(&c, &sha1, &server.peer_id, &[1; 8]);
    let sig = wire::ticket::sign_challenge(holder, &msg);
    let auth = PeerMsg::Auth {
        ticket: t.encode(),
        sig,
    };
    s.write_all(&auth.encode()).unwrap();
    buf
}

fn run_until(nodes: &mut [&mut Node], secs: u64, mut done: impl FnMut(&[&mut Node]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(nodes) {
        assert!(Instant::now() < deadline, "timed out");
        for n in nodes.iter_mut() {
            n.turn();
        }
    }
}

fn write_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| ((i * 31 + i / 777) as u8) ^ seed)
        .collect();
    std::fs::File::create(path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    data
}

fn finished(n: &Node) -> bool {
    n.t.active_downloads() == 0
}

#[test]
fn one_to_one_all_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    for (i, len) in [0, 1, p, p + 1, 5 * p + 17].into_iter().enumerate() {
        let mut seeder = Node::new(8, 5);
        let mut leecher = Node::new(8, 5);
        let src = dir.path().join(format!("src{i}"));
        let data = write_file(&src, len, 0);
        let meta = seeder.share(&src);
        let out = dir.path().join(format!("out{i}"));
        leecher.download("g", meta.clone(), vec![seeder.addr], out.clone());
        run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
        assert_eq!(leecher.t.status_lines(), vec![format!("[C] [g] src{i}")]);
        assert_eq!(std::fs::read(&out).unwrap(), data, "len {len}");
        assert!(!storage::temp_path(&out).exists());
        // Complete at the end (partial before, when it had pieces to serve).
        let announced = |partial| TrackerJob::AddSeeder {
            group: "g".into(),
            name: meta.name.clone(),
            file_sha1: meta.file_sha1_hex(),
            partial,
        };
        assert_eq!(leecher.jobs.last(), Some(&announced(false)));
        assert_eq!(leecher.jobs.contains(&announced(true)), len > 0);
        // The completed download is now a full share.
        assert_eq!(leecher.t.shared_files().len(), 1);
    }
}

#[test]
fn several_seeders_and_a_liar() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    let data = write_file(&src, 64 * p + 5, 1);
    let mut s1 = Node::new(8, 5);
    let mut s2 = Node::new(8, 5);
    let mut liar = Node::new(8, 5);
    let meta = s1.share(&src);
    s2.share(&src);
    // The liar shares different bytes under the same file hash. A client
    // checks what it serves against the piece hashes it has, so the liar's
    // piece hashes are those of its bytes: it serves them, the leecher catches them.
    let bad = dir.path().join("bad");
    write_file(&bad, data.len(), 99);
    let mut lie = hasher::hash_file(&bad).unwrap();
    lie.name = meta.name.clone();
    lie.file_sha1 = meta.file_sha1;
    liar.t.add_share("g", lie, bad);
    let mut leecher = Node::new(8, 5);
    let out = dir.path().join("out");
    let tk = ticket(&leecher.t, &meta, 60);
    leecher
        .t
        .start_download(
            leecher.poll.registry(),
            "g",
            meta,
            vec![s1.addr, s2.addr, liar.addr],
            out.clone(),
            Some(&tk),
        )
        .unwrap();
    run_until(&mut [&mut s1, &mut s2, &mut liar, &mut leecher], 30, |n| {
        finished(n[3])
    });
    assert!(
        leecher.t.status_lines()[0].starts_with("[C]"),
        "{:?}",
        leecher.t.status_lines()
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let served = &leecher.t.served_by()[0];
    assert!(served.get(&s1.addr).copied().unwrap_or(0) > 0, "{served:?}");
    assert!(served.get(&s2.addr).copied().unwrap_or(0) > 0, "{served:?}");
    assert!(leecher.t.downloads[0].peers[&liar.addr].banned);
}

#[test]
fn partial_seeding_and_no_peers_failure_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    let data = write_file(&src, 40 * p, 2);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let mut a = Node::new(8, 5);
    let mut b = Node::new(8, 5);
    a.download("g", meta.clone(), vec![seeder.addr], dir.path().join("a"));
    let tk = ticket(&b.t, &meta, 60);
    b.t.start_download(
        b.poll.registry(),
        "g",
        meta,
        vec![seeder.addr, a.addr],
        dir.path().join("b"),
        Some(&tk),
    )
    .unwrap();
    run_until(&mut [&mut seeder, &mut a, &mut b], 30, |n| {
        finished(n[1]) && finished(n[2])
    });
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), data);
}

#[test]
fn resume_after_restart_skips_verified_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    let data = write_file(&src, 10 * p, 3);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    // Pretend an earlier run verified pieces 0..4 (and wrote a wrong piece 4).
    let state = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    {
        let f = storage::open_part(&out, meta.size).unwrap();
        storage::write_at(&f, &data[..4 * p], 0).unwrap();
        storage::write_at(&f, &vec![0u8; p], 4 * p as u64).unwrap();
        let mut bits = Bitfield::new(meta.piece_count());
        for i in PieceIndex::all(5) {
            bits.insert(i);
        }
        let bits = bits.into_bytes();
        ResumeState {
            file_sha1: meta.file_sha1,
            group: "g".into(),
            name: meta.name.clone(),
            dest: out.clone(),
            size: meta.size,
            bits,
        }
        .save(state.path())
        .unwrap();
    }
    let mut leecher = Node::new(8, 5);
    leecher.t.config.state_dir = state.path().to_path_buf();
    assert_eq!(leecher.t.pending_resumes().len(), 1);
    leecher.download("g", meta, vec![seeder.addr], out.clone());
    run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let served: u64 = leecher.t.served_by()[0].values().sum();
    assert_eq!(served, 6, "pieces 4..10 fetched, 0..4 kept");
    assert!(leecher.t.pending_resumes().is_empty());
}

/// A resume state for `meta` at `out` with pieces `0..have` verified.
fn resume_state(state: &Path, meta: &FileMeta, out: &Path, have: usize) {
    let mut bits = Bitfield::new(meta.piece_count());
    for i in PieceIndex::all(have) {
        bits.insert(i);
    }
    ResumeState {
        file_sha1: meta.file_sha1,
        group: "g".into(),
        name: meta.name.clone(),
        dest: out.to_path_buf(),
        size: meta.size,
        bits: bits.into_bytes(),
    }
    .save(state)
    .unwrap();
}

/// A crash after the finished file was moved into place but before the loop
/// recorded it leaves a resume state beside the finished file: the next start
/// verifies the file, shares it and drops the state, fetching nothing.
#[test]
fn a_finished_file_left_by_a_crash_is_verified_and_shared() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let out = dir.path().join("out");
    let data = write_file(&out, 3 * p + 5, 4);
    let meta = hasher::hash_file(&out).unwrap();
    // The temporary name may still be there too (hard link, then the crash).
    std::fs::hard_link(&out, storage::temp_path(&out)).unwrap();
    let mut leecher = Node::new(8, 5);
    let state = leecher.t.config.state_dir.clone();
    resume_state(&state, &meta, &out, 2);
    leecher.download("g", meta.clone(), vec![], out.clone());
    run_until(&mut [&mut leecher], 20, |n| finished(n[0]));
    assert_eq!(leecher.t.status_lines(), ["[C] [g] out"]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(!storage::temp_path(&out).exists());
    assert!(leecher.t.pending_resumes().is_empty());
    assert_eq!(leecher.t.shared_files().len(), 1);
    assert!(leecher.jobs.contains(&TrackerJob::AddSeeder {
        group: "g".into(),
        name: "out".into(),
        file_sha1: meta.file_sha1_hex(),
        partial: false,
    }));
    // Another file at the destination is never touched: the download fails
    // and its resume state goes (no "already exists" at every later login).
    let other = dir.path().join("other");
    write_file(&other, 3 * p + 5, 9);
    resume_state(&state, &meta, &other, 2);
    let mut again = Node::new(8, 5);
    again.t.config.state_dir = state.clone();
    again.download("g", meta.clone(), vec![], other.clone());
    run_until(&mut [&mut again], 20, |n| finished(n[0]));
    let line = &again.t.status_lines()[0];
    assert!(
        line.ends_with("already exists and is another file"),
        "{line}"
    );
    assert!(again.t.pending_resumes().is_empty());
    assert_ne!(std::fs::read(&other).unwrap(), data);
    // Without a resume state of ours, an existing destination is refused.
    let refused = again.t.start_download(
        again.poll.registry(),
        "g",
        meta,
        vec![],
        other.clone(),
        None,
    );
    assert_eq!(refused, Err(format!("{} already exists", other.display())));
}

/// A shared file rewritten in place (same size) is caught by its stamp at the
/// first piece read for serving: never sent, and the file is shared no more
/// (registry, tracker, a note for stderr).
#[test]
fn a_shared_file_changed_on_disk_stops_being_shared() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("src");
    write_file(&src, 2 * p, 6);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    write_file(&src, 2 * p, 7);
    let mut leecher = Node::new(8, 1);
    leecher.download("g", meta.clone(), vec![seeder.addr], dir.path().join("out"));
    run_until(&mut [&mut seeder, &mut leecher], 20, |n| {
        n[0].t.shared_files().is_empty()
    });
    let notes = seeder.t.take_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(&format!(
            "note: {} changed on disk (found serving piece ",
            src.display()
        )) && notes[0].ends_with("); no longer sharing src in g"),
        "{}",
        notes[0]
    );
    assert!(seeder.jobs.contains(&TrackerJob::Withdraw {
        group: "g".into(),
        name: "src".into()
    }));
    run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
    let line = &leecher.t.status_lines()[0];
    assert!(line.contains("rejected it (ReadFailed)"), "{line}");
}

/// Bytes a resume found already verified are not download speed.
#[test]
fn resumed_bytes_are_not_counted_as_rate() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("src");
    let data = write_file(&src, 8 * p, 5);
    let meta = hasher::hash_file(&src).unwrap();
    let out = dir.path().join("out");
    let f = storage::open_part(&out, meta.size).unwrap();
    storage::write_at(&f, &data[..6 * p], 0).unwrap();
    let mut leecher = Node::new(8, 5);
    let state = leecher.t.config.state_dir.clone();
    resume_state(&state, &meta, &out, 6);
    leecher.download("g", meta, vec![], out);
    // A rate sample before the re-check is done, as the loop's tick takes one.
    leecher.t.last_tick = Instant::now() - Duration::from_secs(1);
    leecher.t.tick(leecher.poll.registry(), Instant::now());
    run_until(&mut [&mut leecher], 20, |n| {
        n[0].t.status_lines()[0].starts_with("[D] [g] src 75%")
    });
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(30));
        leecher.turn();
    }
    let line = &leecher.t.status_lines()[0];
    assert_eq!(line, "[D] [g] src 75%  0 B/s  0 peers");
}

#[test]
fn no_peers_fails_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    write_file(&src, 1000, 3);
    let meta = hasher::hash_file(&src).unwrap();
    let mut leecher = Node::new(8, 5);
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    leecher.download("g", meta.clone(), vec![dead], dir.path().join("o"));
    assert!(leecher
        .t
        .start_download(
            leecher.poll.registry(),
            "g",
            meta,
            vec![],
            dir.path().join("o2"),
            None,
        )
        .unwrap_err()
        .contains("already downloading"));
    // Just inside the failure bound the download keeps waiting for peers...
    let start = Instant::now();
    leecher.turn();
    leecher.t.tick(
        leecher.poll.registry(),
        start + NO_PEERS_LIMIT - Duration::from_secs(1),
    );
    assert_eq!(leecher.t.active_downloads(), 1);
    assert!(leecher.t.running_downloads()[0].needs_peers);
    // ...and past it, with the clock injected, it fails with the reason.
    let late = start + NO_PEERS_LIMIT + Duration::from_secs(1);
    leecher.t.tick(leecher.poll.registry(), late);
    assert_eq!(leecher.t.active_downloads(), 0);
    assert!(leecher.t.status_lines()[0].starts_with("[F] [g] f: no peer"));
}

/// A raw protocol client: unknown file and out-of-range requests get answers
/// and the server keeps serving.
#[test]
fn server_rejects_bad_requests_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    let data = write_file(&src, 1000, 4);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let addr = seeder.addr;
    let client = std::thread::spawn(move || {
        let read_msg = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| -> PeerMsg {
            loop {
                if let Some((m, used)) = peer_msg::decode(buf).unwrap() {
                    buf.drain(..used);
                    return m;
                }
                let mut tmp = [0u8; 4096];
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "closed");
                buf.extend_from_slice(&tmp[..n]);
            }
        };
        // Unknown file: an error, then the connection closes.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&Handshake::new([7; 20], [1; 8]).encode())
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            read_msg(&mut s, &mut buf),
            PeerMsg::Error("unknown file".into())
        );
        // The right file: handshake, challenge, ticket, bitfield, then answers.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let me = wire::ticket::new_key_pair().unwrap();
        let mut buf = raw_auth(&mut s, meta.file_sha1, test_tracker(), &me, 60);
        assert_eq!(read_msg(&mut s, &mut buf), PeerMsg::Bitfield(vec![0x80]));
        for (piece, offset, len) in [(1, 0, 10), (0, 990, 11), (0, 0, 0)] {
            s.write_all(&PeerMsg::Request { piece, offset, len }.encode())
                .unwrap();
            assert_eq!(
                read_msg(&mut s, &mut buf),
                PeerMsg::Reject {
                    piece,
                    offset,
                    code: RejectCode::OutOfRange
                }
            );
        }
        s.write_all(
            &PeerMsg::Request {
                piece: 0,
                offset: 990,
                len: 10,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(
            read_msg(&mut s, &mut buf),
            PeerMsg::Piece {
                piece: 0,
                offset: 990,
                data: data[990..].to_vec()
            }
        );
    });
    run_until(&mut [&mut seeder], 10, |_| client.is_finished());
    client.join().unwrap();
}

/// Many requests sent at once, answers read only afterwards: the serving side
/// fills the socket, holds the rest of the requests back (back-pressure) and
/// must pick them up again once its queue drains, with no new bytes arriving.
#[test]
fn server_resumes_buffered_requests_after_back_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let pieces = 48;
    let src = dir.path().join("f");
    write_file(&src, pieces * p, 5);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let addr = seeder.addr;
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let me = wire::ticket::new_key_pair().unwrap();
        let mut buf = raw_auth(&mut s, meta.file_sha1, test_tracker(), &me, 60);
        let mut reqs = Vec::new();
        for piece in 0..pieces as u32 {
            PeerMsg::Request {
                piece,
                offset: 0,
                len: p as u32,
            }
            .encode_into(&mut reqs);
        }
        s.write_all(&reqs).unwrap();
        // Give the server time to fill the socket and queue up.
        std::thread::sleep(Duration::from_millis(300));
        let mut got = 0;
        while got < pieces {
            if let Some((m, used)) = peer_msg::decode(&buf).unwrap() {
                buf.drain(..used);
                if matches!(m, PeerMsg::Piece { .. }) {
                    got += 1;
                }
                continue;
            }
            let mut tmp = vec![0u8; 1 << 20];
            let n = s.read(&mut tmp).expect("answers stopped coming");
            assert!(n > 0, "closed");
            buf.extend_from_slice(&tmp[..n]);
        }
    });
    run_until(&mut [&mut seeder], 30, |_| client.is_finished());
    client.join().unwrap();
}

/// Requests a super-seeding seeder refuses at once take none of the
/// connection's budget: the ones buffered behind them are parsed and answered
/// too, with no new bytes arriving (the downloader waits for answers).
#[test]
fn requests_behind_refused_ones_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    write_file(&src, 2 * p, 6);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    seeder.t.set_limit(crate::limits::Direction::Up, 1 << 30);
    let addr = seeder.addr;
    let request = move |piece: u32, out: &mut Vec<u8>| {
        PeerMsg::Request {
            piece,
            offset: 0,
            len: p as u32,
        }
        .encode_into(out)
    };
    let client = std::thread::spawn(move || {
        let me = wire::ticket::new_key_pair().unwrap();
        let connect = || {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        // Piece 0 goes to a first downloader...
        let mut a = connect();
        let mut buf = raw_auth(&mut a, meta.file_sha1, test_tracker(), &me, 60);
        let mut reqs = Vec::new();
        request(0, &mut reqs);
        a.write_all(&reqs).unwrap();
        while !matches!(raw_msg(&mut a, &mut buf), Some(PeerMsg::Piece { .. })) {}
        // ...so a second one asking for it again and again is refused, and
        // its request for piece 1 behind those must still be served.
        let mut b = connect();
        let mut buf = raw_auth(&mut b, meta.file_sha1, test_tracker(), &me, 60);
        let mut reqs = Vec::new();
        for _ in 0..8 {
            request(0, &mut reqs);
        }
        request(1, &mut reqs);
        b.write_all(&reqs).unwrap();
        let mut rejects = 0;
        loop {
            match raw_msg(&mut b, &mut buf).expect("answers stopped coming") {
                PeerMsg::Reject { piece: 0, .. } => rejects += 1,
                PeerMsg::Piece { piece: 1, .. } => break,
                _ => {}
            }
        }
        assert_eq!(rejects, 8);
    });
    run_until(&mut [&mut seeder], 30, |_| client.is_finished());
    client.join().unwrap();
}

/// Metadata whose piece hashes are right but whose whole-file SHA-1 is not: the
/// download fails, and neither its temporary file (no resume state points at it
/// any more) nor its connections are left behind.
#[test]
fn whole_file_mismatch_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    write_file(&src, 3 * p + 9, 6);
    let mut meta = hasher::hash_file(&src).unwrap();
    meta.file_sha1 = [0x5a; 20];
    let mut seeder = Node::new(8, 5);
    seeder.t.add_share("g", meta.clone(), src.clone());
    let mut leecher = Node::new(8, 5);
    let out = dir.path().join("out");
    leecher.download("g", meta, vec![seeder.addr], out.clone());
    run_until(&mut [&mut seeder, &mut leecher], 20, |n| finished(n[1]));
    assert_eq!(
        leecher.t.status_lines(),
        vec!["[F] [g] f: whole-file SHA-1 does not match".to_string()]
    );
    assert!(!out.exists());
    assert!(
        !storage::temp_path(&out).exists(),
        "temporary file left behind"
    );
    for _ in 0..20 {
        leecher.turn();
        seeder.turn();
    }
    let fetch_conns = leecher
        .t
        .conns
        .iter()
        .filter(|(_, c)| matches!(c.role, Role::Fetch { .. }))
        .count();
    assert_eq!(fetch_conns, 0, "connections of a failed download stay open");
}

/// A destination directory takes the file's name from the metadata (which comes
/// from the tracker): a name that is a path must not place the file elsewhere.
#[test]
fn metadata_name_cannot_leave_the_destination_directory() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let src = dir.path().join("f");
    write_file(&src, 1000, 7);
    let mut meta = hasher::hash_file(&src).unwrap();
    let mut leecher = Node::new(8, 5);
    for bad in ["../escaped", "..", "a/b", ""] {
        meta.name = bad.to_string();
        assert!(
            leecher
                .t
                .start_download(
                    leecher.poll.registry(),
                    "g",
                    meta.clone(),
                    vec![],
                    inner.clone(),
                    None,
                )
                .is_err(),
            "name {bad:?} accepted"
        );
    }
    assert!(!dir.path().join("escaped.swarmshare-part").exists());
    assert!(!dir.path().join("inner.swarmshare-part").exists());
    assert_eq!(leecher.t.active_downloads(), 0);
}

/// A peer that sends its bitfield twice counts once in the availability, and
/// leaves no count behind when it goes.
#[test]
fn repeated_bitfield_does_not_inflate_availability() {
    let dir = tempfile::tempdir().unwrap();
    let p = wire::file_meta::PIECE_SIZE as usize;
    let src = dir.path().join("f");
    write_file(&src, 4 * p, 8);
    let meta = hasher::hash_file(&src).unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let sha1 = meta.file_sha1;
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut hs = [0u8; peer_msg::HANDSHAKE_LEN];
        s.read_exact(&mut hs).unwrap();
        let mut out = Handshake::new(sha1, [3; 8]).encode().to_vec();
        PeerMsg::Bitfield(vec![0xf0]).encode_into(&mut out);
        PeerMsg::Bitfield(vec![0xf0]).encode_into(&mut out);
        s.write_all(&out).unwrap();
        // Hold the connection (answering nothing) until told to go.
        let _ = close_rx.recv();
    });
    let mut leecher = Node::new(8, 5);
    leecher.download("g", meta, vec![addr], dir.path().join("out"));
    run_until(&mut [&mut leecher], 10, |n| {
        n[0].t
            .conns
            .iter()
            .any(|(_, c)| matches!(&c.role, Role::Fetch(f) if f.is_active()))
    });
    for _ in 0..20 {
        leecher.turn();
    }
    let first = PieceIndex::new(0, 4).unwrap();
    assert_eq!(leecher.t.downloads[0].picker.availability(first), 1);
    close_tx.send(()).unwrap();
    peer.join().unwrap();
    run_until(&mut [&mut leecher], 10, |n| n[0].t.conns.is_empty());
    assert_eq!(leecher.t.downloads[0].picker.availability(first), 0);
}

/// Beyond `max_serving` accepted connections a new peer is closed at once;
/// when one leaves, a new one is served again.
#[test]
fn serving_connections_are_capped() {
    let mut node = Node::new(2, 1);
    let mut peers: Vec<std::net::TcpStream> = (0..12)
        .map(|_| std::net::TcpStream::connect(node.addr).unwrap())
        .collect();
    let serving = |n: &Node| {
        n.t.conns
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Serve { .. }))
            .count()
    };
    run_until(&mut [&mut node], 10, |n| serving(n[0]) == 8);
    // The four refused peers see their connection closed.
    let mut closed = 0;
    for p in &mut peers {
        p.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        if matches!(p.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 4);
    assert_eq!(serving(&node), 8);
    // One served peer leaves; a newcomer is served.
    peers.truncate(7);
    run_until(&mut [&mut node], 10, |n| serving(n[0]) < 8);
    let _newcomer = std::net::TcpStream::connect(node.addr).unwrap();
    run_until(&mut [&mut node], 10, |n| serving(n[0]) == 8);
}

/// The ticket check between handshake and bitfield: no `Auth`, a ticket of
/// another tracker, for another file or group, expired, or shown by another key than
/// its holder's: an `Error`, the connection closes, no piece. A valid one is
/// served; once it expires, the next request gets an `Error`. After
/// `stop_serving` (logout) every connection closes and new ones are refused.
#[test]
fn serving_needs_a_valid_ticket_and_stops_at_logout() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    write_file(&src, 1000, 4);
    let other = dir.path().join("other");
    write_file(&other, 999, 5);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let other_meta = seeder.share(&other);
    let addr = seeder.addr;
    let sha1 = meta.file_sha1;
    let client = std::thread::spawn(move || {
        let me = wire::ticket::new_key_pair().unwrap();
        let stranger = wire::ticket::new_key_pair().unwrap();
        let connect = || std::net::TcpStream::connect(addr).unwrap();
        let refused = |s: &mut std::net::TcpStream, mut buf: Vec<u8>, what: &str| {
            s.write_all(
                &PeerMsg::Request {
                    piece: 0,
                    offset: 0,
                    len: 10,
                }
                .encode(),
            )
            .unwrap_or_default();
            match raw_msg(s, &mut buf) {
                Some(PeerMsg::Error(_)) | None => {}
                other => panic!("{what}: answered {other:?}"),
            }
            assert!(raw_msg(s, &mut buf).is_none(), "{what}: not closed");
        };
        // A request right after the handshake, with no ticket at all.
        let mut s = connect();
        s.write_all(&Handshake::new(sha1, [1; 8]).encode()).unwrap();
        let mut hs = [0u8; peer_msg::HANDSHAKE_LEN];
        s.read_exact(&mut hs).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            raw_msg(&mut s, &mut buf),
            Some(PeerMsg::Challenge(_))
        ));
        refused(&mut s, buf, "no ticket");
        let mut s = connect();
        let buf = raw_auth(&mut s, sha1, &stranger, &me, 60);
        refused(&mut s, buf, "another tracker's ticket");
        let mut s = connect();
        let buf = raw_auth_for(
            &mut s,
            sha1,
            (other_meta.file_sha1, "g"),
            test_tracker(),
            &me,
            60,
        );
        refused(&mut s, buf, "a ticket for another file");
        let mut s = connect();
        let buf = raw_auth_for(&mut s, sha1, (sha1, "elsewhere"), test_tracker(), &me, 60);
        refused(&mut s, buf, "a ticket for the same file in another group");
        // The same ticket for its own file is fine.
        let mut s = connect();
        let mut buf = raw_auth(&mut s, other_meta.file_sha1, test_tracker(), &me, 60);
        assert!(matches!(
            raw_msg(&mut s, &mut buf),
            Some(PeerMsg::Bitfield(_))
        ));
        let mut s2 = connect();
        let buf = raw_auth(&mut s2, sha1, test_tracker(), &me, -5);
        refused(&mut s2, buf, "expired");
        // The holder's ticket shown by someone else (signing with its own key).
        let mut s = connect();
        s.write_all(&Handshake::new(sha1, [1; 8]).encode()).unwrap();
        let mut hs = [0u8; peer_msg::HANDSHAKE_LEN];
        s.read_exact(&mut hs).unwrap();
        let mut buf = Vec::new();
        let Some(PeerMsg::Challenge(c)) = raw_msg(&mut s, &mut buf) else {
            panic!("no challenge");
        };
        let t = wire::ticket::TicketBody {
            user: "u".into(),
            group: "g".into(),
            file_sha1: sha1,
            holder: me.verifying_key().to_bytes(),
            expires: wire::ticket::unix_now() + 60,
        }
        .sign(test_tracker());
        let server = Handshake::decode(&hs).unwrap().unwrap();
        let msg = wire::ticket::challenge_message(&c, &sha1, &server.peer_id, &[1; 8]);
        let sig = wire::ticket::sign_challenge(&stranger, &msg);
        s.write_all(
            &PeerMsg::Auth {
                ticket: t.encode(),
                sig,
            }
            .encode(),
        )
        .unwrap();
        refused(&mut s, buf, "replayed with another key");
        // A valid ticket that expires in 1 s: served, then refused.
        let mut s = connect();
        let mut buf = raw_auth(&mut s, sha1, test_tracker(), &me, 1);
        assert_eq!(
            raw_msg(&mut s, &mut buf),
            Some(PeerMsg::Bitfield(vec![0x80]))
        );
        s.write_all(
            &PeerMsg::Request {
                piece: 0,
                offset: 0,
                len: 10,
            }
            .encode(),
        )
        .unwrap();
        assert!(matches!(
            raw_msg(&mut s, &mut buf),
            Some(PeerMsg::Piece { .. })
        ));
        std::thread::sleep(Duration::from_millis(2100));
        refused(&mut s, buf, "after the expiry");
        // A valid long ticket: the connection stays open until stop_serving.
        let mut s = connect();
        let mut buf = raw_auth(&mut s, sha1, test_tracker(), &me, 60);
        assert_eq!(
            raw_msg(&mut s, &mut buf),
            Some(PeerMsg::Bitfield(vec![0x80]))
        );
        s
    });
    run_until(&mut [&mut seeder], 20, |_| client.is_finished());
    let mut s = client.join().unwrap();
    seeder.t.stop_serving(seeder.poll.registry());
    let mut buf = Vec::new();
    assert_eq!(raw_msg(&mut s, &mut buf), None, "served after logout");
    // A new connection is closed at once.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    run_until(&mut [&mut seeder], 5, |n| {
        n[0].t.conns.is_empty() && {
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            matches!(s.read(&mut [0u8; 1]), Ok(0))
        }
    });
}

/// A downloader that never reads: `Have`s beyond the queue bound are dropped
/// (the queue stays bounded) and one `Bitfield` replaces them later.
#[test]
fn queued_haves_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    write_file(&src, 1000, 4);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let addr = seeder.addr;
    let me = wire::ticket::new_key_pair().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let sha1 = meta.file_sha1;
    let t = std::thread::spawn(move || {
        raw_auth(&mut s, sha1, test_tracker(), &me, 60);
        s
    });
    run_until(&mut [&mut seeder], 10, |_| t.is_finished());
    let _s = t.join().unwrap();
    run_until(&mut [&mut seeder], 10, |n| {
        n[0].t.conns.iter().any(|(_, c)| {
            matches!(
                c.role,
                Role::Serve(crate::peer_conn::ServeState::Serving { .. })
            )
        })
    });
    // The socket buffers take megabytes first; keep going until the queue
    // reaches the bound (a bounded loop: 20M Haves are 120 MB).
    let p = PieceIndex::new(0, 1).unwrap();
    let stale = |t: &Transfers| {
        t.conns.iter().any(|(_, c)| {
            matches!(
                c.role,
                Role::Serve(crate::peer_conn::ServeState::Serving {
                    bitfield_stale: true,
                    ..
                })
            )
        })
    };
    for _ in 0..20_000_000 {
        seeder.t.broadcast_have(&sha1, p);
        if stale(&seeder.t) {
            break;
        }
    }
    for _ in 0..10_000 {
        seeder.t.broadcast_have(&sha1, p);
    }
    let (_, c) = seeder.t.conns.iter().next().unwrap();
    assert!(
        c.queued() <= serving::MAX_QUEUED_MSGS,
        "{} messages queued",
        c.queued()
    );
    assert!(matches!(
        c.role,
        Role::Serve(crate::peer_conn::ServeState::Serving {
            bitfield_stale: true,
            ..
        })
    ));
}

/// Timeouts of the peer server, with the clock injected: a connection that
/// shook hands but never showed a ticket goes after 15 s; one past its ticket
/// check stays while it talks and goes after `SERVE_IDLE_TIMEOUT` of silence.
#[test]
fn silent_serving_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    write_file(&src, 1000, 4);
    let mut seeder = Node::new(8, 5);
    let meta = seeder.share(&src);
    let (addr, sha1) = (seeder.addr, meta.file_sha1);
    let t = std::thread::spawn(move || {
        let mut authed = std::net::TcpStream::connect(addr).unwrap();
        let me = wire::ticket::new_key_pair().unwrap();
        raw_auth(&mut authed, sha1, test_tracker(), &me, 600);
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent
            .write_all(&Handshake::new(sha1, [2; 8]).encode())
            .unwrap();
        (authed, silent)
    });
    let state = |n: &Node| {
        let mut v: Vec<&'static str> =
            n.t.conns
                .iter()
                .map(|(_, c)| match c.role {
                    Role::Serve(crate::peer_conn::ServeState::Serving { .. }) => "serving",
                    Role::Serve(crate::peer_conn::ServeState::AwaitAuth { .. }) => "await-auth",
                    _ => "other",
                })
                .collect();
        v.sort();
        v
    };
    run_until(&mut [&mut seeder], 10, |n| {
        state(n[0]) == ["await-auth", "serving"]
    });
    let _conns = t.join().unwrap();
    let t0 = Instant::now();
    let reg = seeder.poll.registry();
    seeder
        .t
        .tick(reg, t0 + REQUEST_TIMEOUT - Duration::from_secs(1));
    assert_eq!(state(&seeder), ["await-auth", "serving"]);
    seeder
        .t
        .tick(reg, t0 + REQUEST_TIMEOUT + Duration::from_secs(1));
    assert_eq!(state(&seeder), ["serving"], "no ticket within the timeout");
    seeder
        .t
        .tick(reg, t0 + SERVE_IDLE_TIMEOUT - Duration::from_secs(1));
    assert_eq!(state(&seeder), ["serving"]);
    seeder
        .t
        .tick(reg, t0 + SERVE_IDLE_TIMEOUT + Duration::from_secs(1));
    assert!(state(&seeder).is_empty(), "an idle connection stayed");
}

/// Only a file shared by upload answers through `SuperSeed` under an upload
/// limit; one a finished download handed over is served as asked (the swarm
/// has it already, and its own first round would never end). No sockets.
#[test]
fn only_a_file_shared_by_upload_super_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (dir.path().join("up"), dir.path().join("down"));
    write_file(&up, 3000, 1);
    write_file(&down, 3000, 2);
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
    let config = TransferConfig {
        threads: 4,
        retries: 1,
        state_dir: dir.path().join("state"),
        max_serving: 8,
        max_serving_per_ip: 8,
    };
    let mut t = Transfers::new(config, waker).unwrap();
    let up_meta = hasher::hash_file(&up).unwrap();
    t.add_share("g", up_meta.clone(), up.clone());
    let down_meta = hasher::hash_file(&down).unwrap();
    let file = Arc::new(std::fs::File::open(&down).unwrap());
    t.add_share_with("g", down_meta.clone(), down.clone(), Some(file));
    assert!(t.shares[&up_meta.file_sha1].super_seed);
    assert!(!t.shares[&down_meta.file_sha1].super_seed);
}
