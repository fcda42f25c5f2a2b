//! One peer connection: a nonblocking mio `TcpStream`, its read buffer, its write
//! queue and the framing state machine. It does I/O and parsing only and reports
//! what happened as [`ConnEvent`]s; `transfers` decides what they mean.
//!
//! Two roles share this type:
//! - [`Role::Serve`]: an accepted connection. It waits for the downloader's
//!   handshake, then for requests; answers are queued by `transfers`.
//! - [`Role::Fetch`]: a connection this client opened for a download. It sends the
//!   handshake, waits for the server's handshake and bitfield, and keeps many
//!   whole-piece requests in flight.
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

/// Bytes read per `read` call into the message buffer.
const READ_CHUNK: usize = 64 * 1024;
/// A peer that buffers more unparsed request bytes than this is dropped.
const MAX_RBUF: usize = 2 * 1024 * 1024;
/// Bytes one [`PeerConn::on_ready`] call reads before it yields, so a peer that
/// sends faster than we parse cannot keep the loop (and every other peer) waiting.
pub const READ_BUDGET: usize = 4 * 1024 * 1024;

/// What a connection is for.
#[derive(Debug)]
pub enum Role {
    /// Accepted by the peer server.
    Serve {
        /// The file the downloader asked for (after the handshake).
        file_sha1: Option<[u8; 20]>,
        /// Disk reads queued on the pool for this connection.
        pending_reads: usize,
    },
    /// Opened by this client for download `dl`.
    Fetch {
        dl: usize,
        /// The server's pieces.
        bits: Vec<u8>,
        got_bitfield: bool,
        /// Pieces requested and not yet answered, in request order.
        inflight: Vec<usize>,
    },
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
    /// Still connecting (outgoing connections).
    pub connecting: bool,
    /// The other side's handshake arrived.
    pub handshake_done: bool,
    /// Last time bytes arrived (or the connection started).
    pub last_rx: Instant,
    pub started: Instant,
    rbuf: Vec<u8>,
    incoming: Option<Incoming>,
    wqueue: VecDeque<Vec<u8>>,
    wpos: usize,
    /// Close once the write queue is empty.
    pub closing: bool,
    pub closed: bool,
    /// Bytes of piece data received (fetch) or sent (serve).
    pub piece_bytes: u64,
    /// Buffers fully written, for the owner to reuse.
    pub written: Vec<Vec<u8>>,
    /// The last read stopped at [`READ_BUDGET`] with bytes possibly left in the
    /// socket: mio is edge-triggered, so the owner must call `on_ready` again
    /// (next loop turn) without waiting for an event.
    pub more_to_read: bool,
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
            connecting,
            handshake_done: false,
            last_rx: now,
            started: now,
            rbuf: Vec::with_capacity(READ_CHUNK),
            incoming: None,
            wqueue: VecDeque::new(),
            wpos: 0,
            closing: false,
            closed: false,
            piece_bytes: 0,
            written: Vec::new(),
            more_to_read: false,
        }
    }

    /// Messages queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wqueue.len()
    }

    /// Queues bytes and tries to write at once.
    pub fn send(&mut self, bytes: Vec<u8>) {
        if self.closed || bytes.is_empty() {
            return;
        }
        self.wqueue.push_back(bytes);
        if !self.connecting {
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
        self.closing = true;
        if self.wqueue.is_empty() {
            self.closed = true;
        }
    }

    fn fail(&mut self, why: String) {
        log::debug!("peer {}: {why}", self.addr);
        self.closed = true;
    }

    /// Writes as much of the queue as the socket takes; fully written buffers go to
    /// [`PeerConn::written`] for reuse.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(front) = self.wqueue.front() {
            match self.stream.write(&front[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wpos += n;
                    if self.wpos == front.len() {
                        self.wpos = 0;
                        if let Some(b) = self.wqueue.pop_front() {
                            self.written.push(b);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.closing && self.wqueue.is_empty() {
            self.closed = true;
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
        if self.closed {
            return;
        }
        if self.connecting && (writable || readable) {
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.closed = true;
                    events.push(ConnEvent::Closed(format!("connect: {e}")));
                    return;
                }
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connecting = false,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.closed = true;
                    events.push(ConnEvent::Closed(format!("connect: {e}")));
                    return;
                }
            }
        }
        if !self.wqueue.is_empty() {
            if let Err(e) = self.flush() {
                self.closed = true;
                events.push(ConnEvent::Closed(format!("write: {e}")));
                return;
            }
        }
        if readable || self.more_to_read || self.incoming.is_some() || !self.rbuf.is_empty() {
            self.read_all(max_requests, take_buf, events);
        }
        if self.closed && !matches!(events.last(), Some(ConnEvent::Closed(_))) {
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
        // Parse what is already buffered first.
        if let Err(e) = self.parse_inner(&mut budget, take_buf, events) {
            self.closed = true;
            events.push(ConnEvent::Closed(format!("protocol error: {e}")));
            return;
        }
        loop {
            if self.closed {
                return;
            }
            if self.incoming.is_none() && self.rbuf.len() > MAX_RBUF {
                // Unparsed requests pile up (back-pressure): stop reading for now.
                return;
            }
            let res = if let Some(inc) = self.incoming.as_mut() {
                self.stream.read(&mut inc.buf[inc.filled..])
            } else {
                let start = self.rbuf.len();
                self.rbuf.resize(start + READ_CHUNK, 0);
                let r = self.stream.read(&mut self.rbuf[start..]);
                let got = *r.as_ref().unwrap_or(&0);
                self.rbuf.truncate(start + got);
                r
            };
            match res {
                Ok(0) => {
                    self.closed = true;
                    events.push(ConnEvent::Closed("peer closed the connection".into()));
                    return;
                }
                Ok(n) => {
                    self.last_rx = Instant::now();
                    if let Some(inc) = self.incoming.as_mut() {
                        inc.filled += n;
                        self.piece_bytes += n as u64;
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
                        self.closed = true;
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
                    self.closed = true;
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
        if self.closed || self.incoming.is_some() {
            return;
        }
        let mut budget = max_requests;
        if let Err(e) = self.parse_inner(&mut budget, take_buf, events) {
            self.closed = true;
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
        let result = loop {
            let buf = &self.rbuf[at..];
            if buf.is_empty() || self.incoming.is_some() {
                break Ok(());
            }
            if !self.handshake_done {
                match Handshake::decode(buf) {
                    Ok(Some(h)) => {
                        self.handshake_done = true;
                        at += HANDSHAKE_LEN;
                        events.push(ConnEvent::Handshake(h));
                        continue;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        // A server may answer a handshake with an Error message.
                        if let Ok(Some((PeerMsg::Error(text), _))) = peer_msg::decode(buf) {
                            events.push(ConnEvent::Msg(PeerMsg::Error(text)));
                            self.closed = true;
                            break Ok(());
                        }
                        break Err(e);
                    }
                }
            }
            let header = match peer_msg::decode_header(buf) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if header.is_piece() {
                let (piece, offset, len) = match peer_msg::decode_piece_header(buf) {
                    Ok(Some(x)) => x,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                if len > peer_msg::MAX_REQUEST_LEN as usize {
                    break Err(DecodeError::TooLong(len as u32));
                }
                let mut data = take_buf(len);
                let avail = (buf.len() - PIECE_HEADER_LEN).min(len);
                data[..avail].copy_from_slice(&buf[PIECE_HEADER_LEN..PIECE_HEADER_LEN + avail]);
                at += PIECE_HEADER_LEN + avail;
                self.piece_bytes += avail as u64;
                if avail == len {
                    events.push(ConnEvent::Piece {
                        piece,
                        offset,
                        data,
                    });
                } else {
                    self.incoming = Some(Incoming {
                        piece,
                        offset,
                        buf: data,
                        filled: avail,
                    });
                }
                continue;
            }
            if header.is_request() && *budget == 0 {
                // A request, but the server is saturated: leave it buffered.
                break Ok(());
            }
            match peer_msg::decode(buf) {
                Ok(Some((msg, used))) => {
                    at += used;
                    if matches!(msg, PeerMsg::Request { .. }) {
                        *budget -= 1;
                    }
                    let is_error = matches!(msg, PeerMsg::Error(_));
                    events.push(ConnEvent::Msg(msg));
                    if is_error {
                        self.closed = true;
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.rbuf.drain(..at);
        result
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
        let role = Role::Fetch {
            dl: 0,
            bits: Vec::new(),
            got_bitfield: false,
            inflight: Vec::new(),
        };
        let mut conn = PeerConn::new(TcpStream::from_std(ours), addr, 1, role, false);
        conn.handshake_done = true;
        let mut yielded = false;
        for _ in 0..10_000 {
            let mut events = Vec::new();
            conn.on_ready(true, false, 0, &mut |n| vec![0; n], &mut events);
            assert!(!conn.closed, "{events:?}");
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
