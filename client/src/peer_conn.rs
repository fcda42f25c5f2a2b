//! One peer connection: a nonblocking mio `TcpStream`, its read buffer, its write
//! queue and the framing state machine. It does I/O and parsing only and reports
//! what happened as [`ConnEvent`]s; `transfers` decides what they mean.
//!
//! A connection's life is one [`Phase`]: `Connecting` (outgoing only) ->
//! `Handshake` -> `Open` -> (`Closing` while a last message drains) -> `Closed`.
//! What it is for is its [`Role`], which owns the role's own state:
//! - [`Role::Serve`]: an accepted connection ([`ServeState`]): it waits for the
//!   downloader's handshake, then for requests; answers are queued by `transfers`.
//! - [`Role::Fetch`]: a connection this client opened for a download
//!   ([`FetchPeer`], the download side's state machine): it sends the handshake,
//!   waits for the server's handshake and bitfield, and keeps many whole-piece
//!   requests in flight.
//!
//! Under a bandwidth limit a connection is *metered* ([`PeerConn::wquota`],
//! [`PeerConn::rquota`]): it writes or reads no more than the quota its owner
//! granted from the [`crate::limits::RateGate`], and when the quota runs out with
//! bytes still to move it is *held* (`held_w` / `held_r`) until the owner grants
//! more; a held socket is simply left alone (TCP's flow control slows the other
//! side), never polled in a loop.
//!
//! Piece data is read straight from the socket into the piece's own buffer (once
//! the 13-byte piece header has arrived), and outgoing pieces are written from the
//! buffer the disk read filled, so a piece is never copied in user space on
//! either side.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use wire::peer_msg::{self, DecodeError, Handshake, PeerMsg, HANDSHAKE_LEN, PIECE_HEADER_LEN};

use crate::fetch_peer::FetchPeer;

/// Queued messages this short (control messages: `Have`, `Reject`, ...) are
/// written without a quota: a few bytes that tell peers what to ask for.
const CONTROL_MAX: usize = 64;
/// Bytes read per `read` call into the message buffer.
const READ_CHUNK: usize = 64 * 1024;
/// A peer that buffers more unparsed request bytes than this is dropped.
const MAX_RBUF: usize = 2 * 1024 * 1024;
/// Bytes one [`PeerConn::on_ready`] call reads before it yields, so a peer that
/// sends faster than we parse cannot keep the loop (and every other peer) waiting.
pub const READ_BUDGET: usize = 4 * 1024 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// An outgoing connect has not finished yet (writes wait).
    Connecting,
    /// Connected; the other side's handshake is awaited.
    Handshake,
    /// Handshakes exchanged: messages flow.
    Open,
    /// Closes as soon as the write queue is empty (a last `Error` drains).
    Closing,
    /// Finished; the owner removes it.
    Closed,
}

/// The serving side of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeState {
    /// The downloader's handshake is awaited.
    AwaitHandshake,
    /// Our handshake and `Challenge` are sent; the downloader's `Auth` is awaited.
    AwaitAuth {
        file_sha1: [u8; 20],
        auth: ServeAuth,
    },
    /// Serving the file named in the handshake, to a downloader whose ticket
    /// checked out.
    Serving {
        file_sha1: [u8; 20],
        /// Disk reads queued on the pool for this connection.
        pending_reads: usize,
        auth: ServeAuth,
        /// `Have`s were dropped while the write queue was full: a whole
        /// `Bitfield` goes out instead once it drains.
        bitfield_stale: bool,
    },
}

/// What a serving connection's ticket check is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeAuth {
    /// The random challenge sent to the downloader.
    pub challenge: [u8; 32],
    /// The downloader's peer id (from its handshake).
    pub client_id: [u8; 8],
    /// Unix seconds when the ticket in force expires (0 before the first `Auth`).
    pub expires: u64,
}

/// What a connection is for, with that role's state.
#[derive(Debug)]
pub enum Role {
    /// Accepted by the peer server.
    Serve(ServeState),
    /// Opened by this client for a download.
    Fetch(FetchPeer),
}

/// Something that happened on a connection.
#[derive(Debug)]
pub enum ConnEvent {
    /// The other side's handshake.
    Handshake(Handshake),
    /// Any message except piece data.
    Msg(PeerMsg),
    /// A whole `Piece` message; `data` is the piece buffer.
    Piece {
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    },
    /// The connection is finished (reason for the log).
    Closed(String),
}

/// A piece whose data is being read straight into its buffer.
#[derive(Debug)]
struct Incoming {
    piece: u32,
    offset: u32,
    buf: Vec<u8>,
    filled: usize,
}

/// One peer connection.
#[derive(Debug)]
pub struct PeerConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Unique per connection (slab keys are reused; pool results carry this).
    pub id: u64,
    pub role: Role,
    phase: Phase,
    /// Last time bytes arrived (or the connection started).
    pub last_rx: Instant,
    /// Last time a message was queued (keep-alives are due after a silence).
    pub last_tx: Instant,
    pub started: Instant,
    rbuf: Vec<u8>,
    incoming: Option<Incoming>,
    wqueue: VecDeque<Vec<u8>>,
    wpos: usize,
    /// Buffers fully written, for the owner to reuse.
    pub written: Vec<Vec<u8>>,
    /// The last read stopped at [`READ_BUDGET`] with bytes possibly left in the
    /// socket: mio is edge-triggered, so the owner must call `on_ready` again
    /// (next loop turn) without waiting for an event.
    pub more_to_read: bool,
    /// Bytes it may still write now under the upload limit (`None`: unmetered).
    pub wquota: Option<u64>,
    /// Bytes it may still read now under the download limit (`None`: unmetered).
    pub rquota: Option<u64>,
    /// The write quota ran out with bytes queued: held until more is granted.
    pub held_w: bool,
    /// The read quota ran out before the socket was drained: held likewise.
    pub held_r: bool,
    /// How the write queue fared (for the log when the connection closes).
    pub write_stats: WriteStats,
}

/// What a connection wrote, and the longest time its queued piece data
/// waited without a byte going out (under an upload limit: how fairly the
/// limit was shared).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    /// Bytes of messages longer than a control message written.
    pub data_bytes: u64,
    /// The longest wait, in seconds.
    pub longest_wait: f64,
    /// Since when the piece data at the front has waited (none queued: `None`).
    waiting_since: Option<Instant>,
}

impl WriteStats {
    /// `n` bytes of piece data went out at `now`; `more` says whether piece
    /// data is still queued.
    fn wrote(&mut self, n: usize, now: Instant, more: bool) {
        self.data_bytes += n as u64;
        self.note_wait(now);
        self.waiting_since = more.then_some(now);
    }

    fn note_wait(&mut self, now: Instant) {
        if let Some(t) = self.waiting_since {
            let waited = now.duration_since(t).as_secs_f64();
            self.longest_wait = self.longest_wait.max(waited);
        }
    }

    /// Piece data was queued at `now` (the wait starts if none was queued).
    fn queued(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// The longest wait so far, counting the one still going on at `now`.
    pub fn longest_wait_until(&self, now: Instant) -> f64 {
        let mut s = *self;
        s.note_wait(now);
        s.longest_wait
    }
}

impl PeerConn {
    pub fn new(
        stream: TcpStream,
        addr: SocketAddr,
        id: u64,
        role: Role,
        connecting: bool,
    ) -> PeerConn {
        let now = Instant::now();
        PeerConn {
            stream,
            addr,
            id,
            role,
            phase: if connecting {
                Phase::Connecting
            } else {
                Phase::Handshake
            },
            last_rx: now,
            last_tx: now,
            started: now,
            rbuf: Vec::with_capacity(READ_CHUNK),
            incoming: None,
            wqueue: VecDeque::new(),
            wpos: 0,
            written: Vec::new(),
            more_to_read: false,
            wquota: None,
            rquota: None,
            held_w: false,
            held_r: false,
            write_stats: WriteStats::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the connection is finished (its owner removes it).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the other side's handshake arrived (and the connection still lives).
    pub fn handshake_done(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Closing)
    }

    /// Whether an outgoing connect is still in progress.
    pub fn is_connecting(&self) -> bool {
        self.phase == Phase::Connecting
    }

    /// Messages queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wqueue.len()
    }

    /// Bytes received and not parsed yet.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Messages longer than a control message (piece data) not yet written.
    pub fn data_queued(&self) -> usize {
        self.wqueue.iter().filter(|m| m.len() > CONTROL_MAX).count()
    }

    /// Queues bytes and tries to write at once.
    pub fn send(&mut self, bytes: Vec<u8>) {
        if self.is_closed() || bytes.is_empty() {
            return;
        }
        self.last_tx = Instant::now();
        if bytes.len() > CONTROL_MAX {
            self.write_stats.queued(self.last_tx);
        }
        self.wqueue.push_back(bytes);
        if !self.is_connecting() {
            if let Err(e) = self.flush() {
                self.fail(format!("write: {e}"));
            }
        }
    }

    /// Queues a control message ahead of the piece data not yet started, and
    /// tries to write at once: news like `Have` does not wait behind pieces.
    pub fn send_urgent(&mut self, bytes: Vec<u8>) {
        if self.is_closed() || bytes.is_empty() {
            return;
        }
        let first = usize::from(self.wpos > 0);
        let at = (first..self.wqueue.len())
            .find(|&i| self.wqueue[i].len() > CONTROL_MAX)
            .unwrap_or(self.wqueue.len());
        self.wqueue.insert(at, bytes);
        if !self.is_connecting() {
            if let Err(e) = self.flush() {
                self.fail(format!("write: {e}"));
            }
        }
    }

    /// Queues a message.
    pub fn send_msg(&mut self, msg: &PeerMsg) {
        self.send(msg.encode());
    }

    /// Queues an error message and closes once it is written.
    pub fn send_error_and_close(&mut self, text: &str) {
        self.send_msg(&PeerMsg::Error(text.to_string()));
        if self.is_closed() {
            return;
        }
        self.phase = if self.wqueue.is_empty() {
            Phase::Closed
        } else {
            Phase::Closing
        };
    }

    fn fail(&mut self, why: String) {
        log::debug!("peer {}: {why}", self.addr);
        self.phase = Phase::Closed;
    }

    /// Writes as much of the queue as the socket takes; fully written buffers go to
    /// [`PeerConn::written`] for reuse.
    /// A metered connection writes at most its quota and is held when that ran out.
    pub fn flush(&mut self) -> io::Result<()> {
        self.held_w = false;
        while let Some(front) = self.wqueue.front() {
            let mut end = front.len();
            let control = front.len() <= CONTROL_MAX;
            if let Some(q) = self.wquota.filter(|_| !control) {
                if q == 0 {
                    self.held_w = true;
                    break;
                }
                end = end.min(self.wpos.saturating_add(q as usize));
            }
            match self.stream.write(&front[self.wpos..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if let Some(q) = self.wquota.as_mut().filter(|_| !control) {
                        *q = q.saturating_sub(n as u64);
                    }
                    self.wpos += n;
                    if self.wpos == front.len() {
                        self.wpos = 0;
                        if let Some(b) = self.wqueue.pop_front() {
                            self.written.push(b);
                        }
                    }
                    if !control {
                        let more = self.data_queued() > 0;
                        self.write_stats.wrote(n, Instant::now(), more);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.phase == Phase::Closing && self.wqueue.is_empty() {
            self.phase = Phase::Closed;
        }
        Ok(())
    }

    /// Handles readiness: finishes connecting, writes, reads and parses. `take_buf`
    /// supplies piece buffers of a given length (reused ones when possible).
    /// `max_requests` bounds the `Request`s parsed now (serving back-pressure);
    /// the rest stay buffered until [`PeerConn::parse`] is called again.
    pub fn on_ready(
        &mut self,
        readable: bool,
        writable: bool,
        max_requests: usize,
        take_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.is_closed() {
            return;
        }
        if self.is_connecting() && (writable || readable) {
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.phase = Phase::Closed;
                    events.push(ConnEvent::Closed(format!("connect: {e}")));
                    return;
                }
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => self.phase = Phase::Handshake,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.phase = Phase::Closed;
                    events.push(ConnEvent::Closed(format!("connect: {e}")));
                    return;
                }
            }
        }
        if !self.wqueue.is_empty() {
            if let Err(e) = self.flush() {
                self.phase = Phase::Closed;
                events.push(ConnEvent::Closed(format!("write: {e}")));
                return;
            }
        }
        if readable || self.more_to_read || self.incoming.is_some() || !self.rbuf.is_empty() {
            self.read_all(max_requests, take_buf, events);
        }
        if self.is_closed() && !matches!(events.last(), Some(ConnEvent::Closed(_))) {
            events.push(ConnEvent::Closed("closed".into()));
        }
    }

    fn read_all(
        &mut self,
        max_requests: usize,
        take_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) {
        let mut budget = max_requests;
        let mut taken = 0;
        self.more_to_read = false;
        self.held_r = false;
        // Parse what is already buffered first.
        if let Err(e) = self.parse_inner(&mut budget, take_buf, events) {
            self.phase = Phase::Closed;
            events.push(ConnEvent::Closed(format!("protocol error: {e}")));
            return;
        }
        loop {
            if self.is_closed() {
                return;
            }
            if self.incoming.is_none() && self.rbuf.len() > MAX_RBUF {
                // Unparsed requests pile up (back-pressure): stop reading for now.
                return;
            }
            let cap = match self.rquota {
                Some(0) => {
                    self.held_r = true;
                    return;
                }
                Some(q) => usize::try_from(q).unwrap_or(usize::MAX),
                None => usize::MAX,
            };
            let res = if let Some(inc) = self.incoming.as_mut() {
                let end = inc.buf.len().min(inc.filled.saturating_add(cap));
                self.stream.read(&mut inc.buf[inc.filled..end])
            } else {
                let start = self.rbuf.len();
                self.rbuf.resize(start + READ_CHUNK.min(cap), 0);
                let r = self.stream.read(&mut self.rbuf[start..]);
                let got = *r.as_ref().unwrap_or(&0);
                self.rbuf.truncate(start + got);
                r
            };
            match res {
                Ok(0) => {
                    self.phase = Phase::Closed;
                    events.push(ConnEvent::Closed("peer closed the connection".into()));
                    return;
                }
                Ok(n) => {
                    self.last_rx = Instant::now();
                    if let Some(q) = self.rquota.as_mut() {
                        *q = q.saturating_sub(n as u64);
                    }
                    if let Some(inc) = self.incoming.as_mut() {
                        inc.filled += n;
                        if inc.filled == inc.buf.len() {
                            if let Some(inc) = self.incoming.take() {
                                events.push(ConnEvent::Piece {
                                    piece: inc.piece,
                                    offset: inc.offset,
                                    data: inc.buf,
                                });
                            }
                        }
                    } else if let Err(e) = self.parse_inner(&mut budget, take_buf, events) {
                        self.phase = Phase::Closed;
                        events.push(ConnEvent::Closed(format!("protocol error: {e}")));
                        return;
                    }
                    taken += n;
                    if taken >= READ_BUDGET {
                        self.more_to_read = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.phase = Phase::Closed;
                    events.push(ConnEvent::Closed(format!("read: {e}")));
                    return;
                }
            }
        }
    }

    /// Parses buffered messages again (after back-pressure eased).
    pub fn parse(
        &mut self,
        max_requests: usize,
        take_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.is_closed() || self.incoming.is_some() {
            return;
        }
        let mut budget = max_requests;
        if let Err(e) = self.parse_inner(&mut budget, take_buf, events) {
            self.phase = Phase::Closed;
            events.push(ConnEvent::Closed(format!("protocol error: {e}")));
        }
    }

    fn parse_inner(
        &mut self,
        budget: &mut usize,
        take_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) -> Result<(), DecodeError> {
        let mut at = 0;
        // Taken out while parsing so the steps may change the rest of `self`.
        let rbuf = std::mem::take(&mut self.rbuf);
        let result = loop {
            let buf = &rbuf[at..];
            if buf.is_empty() || self.incoming.is_some() || self.is_closed() {
                break Ok(());
            }
            let step = if self.phase == Phase::Handshake {
                self.parse_handshake(buf, events)
            } else {
                match peer_msg::decode_header(buf) {
                    Ok(Some(h)) if h.is_piece() => {
                        Self::start_piece(buf, take_buf, events).map(|r| {
                            r.map(|(used, inc)| {
                                self.incoming = inc;
                                used
                            })
                        })
                    }
                    // A request, but the server is saturated: leave it buffered.
                    Ok(Some(h)) if h.is_request() && *budget == 0 => Ok(None),
                    Ok(Some(_)) => self.parse_msg(buf, budget, events),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match step {
                Ok(Some(used)) => at += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.rbuf = rbuf;
        self.rbuf.drain(..at);
        result
    }

    /// The other side's handshake at the start of `buf`: `Ok(Some(used))`, or
    /// `Ok(None)` when more bytes are needed (or a refusal closed the connection).
    fn parse_handshake(
        &mut self,
        buf: &[u8],
        events: &mut Vec<ConnEvent>,
    ) -> Result<Option<usize>, DecodeError> {
        match Handshake::decode(buf) {
            Ok(Some(h)) => {
                self.phase = Phase::Open;
                events.push(ConnEvent::Handshake(h));
                Ok(Some(HANDSHAKE_LEN))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // A server may answer a handshake with an Error message.
                if let Ok(Some((PeerMsg::Error(text), _))) = peer_msg::decode(buf) {
                    events.push(ConnEvent::Msg(PeerMsg::Error(text)));
                    self.phase = Phase::Closed;
                    return Ok(None);
                }
                Err(e)
            }
        }
    }

    /// A `Piece` message at the start of `buf`: its data goes into a piece buffer,
    /// whole (an event) or in part (the rest is read into it, `Incoming`).
    /// Returns the bytes used and the incomplete piece, if any.
    fn start_piece(
        buf: &[u8],
        take_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) -> Result<Option<(usize, Option<Incoming>)>, DecodeError> {
        let Some((piece, offset, len)) = peer_msg::decode_piece_header(buf)? else {
            return Ok(None);
        };
        if len > peer_msg::MAX_REQUEST_LEN as usize {
            return Err(DecodeError::TooLong(len as u32));
        }
        let mut data = take_buf(len);
        let avail = (buf.len() - PIECE_HEADER_LEN).min(len);
        data[..avail].copy_from_slice(&buf[PIECE_HEADER_LEN..PIECE_HEADER_LEN + avail]);
        let used = PIECE_HEADER_LEN + avail;
        if avail == len {
            events.push(ConnEvent::Piece {
                piece,
                offset,
                data,
            });
            return Ok(Some((used, None)));
        }
        let inc = Incoming {
            piece,
            offset,
            buf: data,
            filled: avail,
        };
        Ok(Some((used, Some(inc))))
    }

    /// Any other whole message at the start of `buf`; an `Error` closes.
    fn parse_msg(
        &mut self,
        buf: &[u8],
        budget: &mut usize,
        events: &mut Vec<ConnEvent>,
    ) -> Result<Option<usize>, DecodeError> {
        let Some((msg, used)) = peer_msg::decode(buf)? else {
            return Ok(None);
        };
        if matches!(msg, PeerMsg::Request { .. }) {
            *budget -= 1;
        }
        if matches!(msg, PeerMsg::Error(_)) {
            self.phase = Phase::Closed;
        }
        events.push(ConnEvent::Msg(msg));
        Ok(Some(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that floods us with messages: one `on_ready` call reads at most
    /// about [`READ_BUDGET`] and says there is more, instead of reading for as
    /// long as the peer keeps sending.
    #[test]
    fn a_flooding_peer_gets_a_bounded_read_per_call() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, addr) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let total = 6 * READ_BUDGET;
        let writer = std::thread::spawn(move || {
            let mut chunk = Vec::new();
            while chunk.len() < 64 * 1024 {
                PeerMsg::KeepAlive.encode_into(&mut chunk);
            }
            let mut sent = 0;
            while sent < total {
                if sender.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        let role = Role::Fetch(FetchPeer::new(0));
        let mut conn = PeerConn::new(TcpStream::from_std(ours), addr, 1, role, false);
        conn.phase = Phase::Open;
        let mut yielded = false;
        for _ in 0..10_000 {
            let mut events = Vec::new();
            conn.on_ready(true, false, 0, &mut |n| vec![0; n], &mut events);
            assert!(!conn.is_closed(), "{events:?}");
            if conn.more_to_read {
                yielded = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(yielded, "a read never stopped at the budget");
        // Stop the writer: drop our end so its writes fail, then join it.
        drop(conn);
        writer.join().unwrap();
    }
}
