//! A small, bounded, read-only HTTP/1.1 server for the operator view, run in a
//! thread of its own with its own mio loop (the tracker's event loop never
//! sees these connections).
//!
//! The protocol part is sans-IO: [`parse_request`] turns the bytes received
//! so far into a request, "need more" or an error response, and
//! [`encode_response`] makes the bytes to send. Every exchange is one `GET` or
//! `HEAD` and one response, then the connection is closed
//! (`Connection: close`). Bounds: the request head is at most
//! [`HttpLimits::max_request_bytes`] (else `431`), at most
//! [`HttpLimits::max_connections`] are being served (more are answered `503`
//! and closed), and a connection is closed [`HttpLimits::timeout`] after it was
//! accepted, whatever it is doing. At most 50 requests a second are answered
//! (after a burst of 10); more wait, so the view's CPU use stays bounded.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX - 1);
/// How often the loop looks at timeouts and the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// After the response, unread request bytes are read and dropped for at most
/// this long and this much, so closing does not reset the connection before
/// the client has read the response.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 256 * 1024;
/// Requests answered per second at most, after a burst of [`ANSWER_BURST`]:
/// however hard the view is hammered, answering costs a bounded share of a
/// core (about 50 x 0.5 ms, BENCHMARKS.md). Requests over the rate wait
/// (within the connection's timeout); refusals (`4xx`) are not counted.
const ANSWERS_PER_SEC: f64 = 50.0;
const ANSWER_BURST: f64 = 10.0;
/// The loop's period while requests wait for the rate.
const QUEUED_TICK: Duration = Duration::from_millis(20);

/// A token bucket for [`ANSWERS_PER_SEC`].
#[derive(Debug)]
struct AnswerBudget {
    tokens: f64,
    at: Instant,
}

impl AnswerBudget {
    fn new() -> AnswerBudget {
        AnswerBudget {
            tokens: ANSWER_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * ANSWERS_PER_SEC;
        self.tokens = (self.tokens + earned).min(ANSWER_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bounds of the listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_request_bytes: usize,
    pub max_connections: usize,
    /// A connection is closed this long after it was accepted.
    pub timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_request_bytes: 8 * 1024,
            max_connections: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text response (errors).
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        body.push('\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }
}

/// A request the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `HEAD`: the response without its body.
    pub head_only: bool,
    /// The path without its query string.
    pub path: String,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The request head is not complete yet.
    Partial,
    Request(Request),
    /// Answer this and close.
    Refused(Response),
}

/// Parses a request head. Never panics, whatever the bytes.
pub fn parse_request(buf: &[u8], max_bytes: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => Parsed::Refused(Response::text(
            431,
            format!("request head over {max_bytes} bytes"),
        )),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => {
                    return Parsed::Refused(Response::text(
                        405,
                        "read-only: only GET and HEAD are served",
                    ))
                }
            };
            let target = req.path.unwrap_or("/");
            let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
            Parsed::Request(Request { head_only, path })
        }
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Refused(Response::text(431, "too many headers"))
        }
        Err(e) => Parsed::Refused(Response::text(400, format!("bad request: {e}"))),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a response; `head_only` leaves the body out (HEAD).
pub fn encode_response(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n\
         {}Connection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if r.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

/// What the server serves: a response for each path.
pub trait Routes {
    fn respond(&mut self, req: &Request) -> Response;
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    /// A complete request waits for the answer rate.
    Queued(Request),
    Writing,
    /// Response sent, our side shut: dropping what the client still sends.
    Draining {
        until: Instant,
        left: usize,
    },
    Done,
}

impl Phase {
    fn draining() -> Phase {
        Phase::Draining {
            until: Instant::now() + DRAIN_TIME,
            left: DRAIN_BYTES,
        }
    }
}

struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    deadline: Instant,
    phase: Phase,
}

impl HttpConn {
    fn new(stream: TcpStream, timeout: Duration) -> HttpConn {
        HttpConn {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: Instant::now() + timeout,
            phase: Phase::Reading,
        }
    }

    /// Counts against the connection cap (not yet answered).
    fn is_busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Reading | Phase::Queued(_) | Phase::Writing
        )
    }

    /// Reads what the socket has (up to the request limit) and parses it.
    fn read(&mut self, limits: &HttpLimits) {
        let mut chunk = [0u8; 4096];
        while self.phase == Phase::Reading {
            let room = limits
                .max_request_bytes
                .saturating_sub(self.buf.len())
                .max(1);
            let want = room.min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.phase = Phase::Done;
                    return;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    match parse_request(&self.buf, limits.max_request_bytes) {
                        Parsed::Partial => {}
                        Parsed::Request(req) => self.phase = Phase::Queued(req),
                        Parsed::Refused(resp) => self.answer(resp, false),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.phase = Phase::Done;
                    return;
                }
            }
        }
    }

    fn answer(&mut self, resp: Response, head_only: bool) {
        self.out = encode_response(&resp, head_only);
        self.out_pos = 0;
        self.buf = Vec::new();
        self.phase = Phase::Writing;
    }

    fn write(&mut self) {
        while self.phase == Phase::Writing {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => self.phase = Phase::Done,
                Ok(n) => {
                    self.out_pos += n;
                    if self.out_pos == self.out.len() {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        self.out = Vec::new();
                        self.phase = Phase::draining();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.phase = Phase::Done,
            }
        }
    }

    fn drain(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Phase::Draining { left, .. } = &mut self.phase {
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 && n < *left => *left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => self.phase = Phase::Done,
            }
        }
    }

    fn expired(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Draining { until, .. } => now >= until,
            Phase::Done => true,
            _ => now >= self.deadline,
        }
    }
}

/// The listener's loop.
pub struct HttpServer<R> {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<HttpConn>,
    routes: R,
    limits: HttpLimits,
    budget: AnswerBudget,
    shutdown: Arc<AtomicBool>,
}

impl<R: Routes> HttpServer<R> {
    pub fn new(
        listener: std::net::TcpListener,
        routes: R,
        limits: HttpLimits,
        shutdown: Arc<AtomicBool>,
    ) -> io::Result<HttpServer<R>> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(HttpServer {
            poll,
            listener,
            conns: Slab::new(),
            routes,
            limits,
            budget: AnswerBudget::new(),
            shutdown,
        })
    }

    /// Serves until the shutdown flag is set.
    pub fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.shutdown.load(Ordering::SeqCst) {
            let queued = self
                .conns
                .iter()
                .any(|(_, c)| matches!(c.phase, Phase::Queued(_)));
            let tick = if queued { QUEUED_TICK } else { TICK };
            if let Err(e) = self.poll.poll(&mut events, Some(tick)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("http: poll failed, the operator view stops: {e}");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(key) => self.serve(key),
                }
            }
            self.answer_queued();
            self.reap();
        }
    }

    fn serve(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.phase == Phase::Reading {
            c.read(&self.limits);
        }
        if matches!(c.phase, Phase::Queued(_)) && self.budget.take(Instant::now()) {
            if let Phase::Queued(req) = std::mem::replace(&mut c.phase, Phase::Done) {
                c.answer(self.routes.respond(&req), req.head_only);
            }
        }
        if c.phase == Phase::Writing {
            c.write();
        }
        if matches!(c.phase, Phase::Draining { .. }) {
            c.drain();
        }
    }

    /// Answers waiting requests as far as the rate allows (the rest wait for the next turn).
    fn answer_queued(&mut self) {
        let waiting: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Queued(_)))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.serve(key);
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("http: accept: {e}");
                    return;
                }
            };
            let busy = self.conns.iter().filter(|(_, c)| c.is_busy()).count();
            if busy >= self.limits.max_connections {
                self.refuse(stream, peer);
                continue;
            }
            let entry = self.conns.vacant_entry();
            let token = Token(entry.key());
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
                log::warn!("http: cannot register {peer}: {e}");
                continue;
            }
            entry.insert(HttpConn::new(stream, self.limits.timeout));
            // Edge-triggered: bytes that arrived with the connection are read now.
            self.serve(token.0);
        }
    }

    /// Over the connection cap: a short `503`, then the connection only
    /// drains (so the answer is not lost to a reset) among at most as many
    /// draining connections again; beyond that it is closed at once.
    fn refuse(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        log::debug!("http: refused {peer}: connection cap reached");
        let busy = Response::text(503, "too many connections, try again");
        // The socket's empty send buffer takes this short answer at once.
        let _ = stream.write(&encode_response(&busy, false));
        let _ = stream.shutdown(Shutdown::Write);
        if self.conns.len() >= 2 * self.limits.max_connections {
            return;
        }
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_ok()
        {
            let mut conn = HttpConn::new(stream, DRAIN_TIME);
            conn.phase = Phase::draining();
            entry.insert(conn);
            self.serve(token.0);
        }
    }

    /// Closes finished and timed-out connections.
    fn reap(&mut self) {
        let now = Instant::now();
        let gone: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(k, _)| k)
            .collect();
        for key in gone {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn get_and_head_are_parsed_and_the_query_is_dropped() {
        let p = parse_request(b"GET /status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 8192);
        assert_eq!(
            p,
            Parsed::Request(Request {
                head_only: false,
                path: "/status".into()
            })
        );
        let p = parse_request(b"HEAD /metrics HTTP/1.0\r\n\r\n", 8192);
        assert!(matches!(
            p,
            Parsed::Request(Request {
                head_only: true,
                ..
            })
        ));
        assert_eq!(
            parse_request(b"GET /status HTTP/1.1\r\nHost:", 8192),
            Parsed::Partial
        );
    }

    fn status_of(p: Parsed) -> u16 {
        match p {
            Parsed::Refused(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn writes_oversize_and_garbage_are_refused() {
        assert_eq!(
            status_of(parse_request(b"POST / HTTP/1.1\r\n\r\n", 8192)),
            405
        );
        assert_eq!(
            status_of(parse_request(b"\x00\x01\x02 junk\r\n\r\n", 8192)),
            400
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(status_of(parse_request(big.as_bytes(), 8192)), 431);
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status_of(parse_request(req.as_bytes(), 8192)), 431);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::new(200, "text/plain", "hello");
        let bytes = String::from_utf8(encode_response(&r, false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(bytes.contains("Content-Length: 5\r\n"));
        assert!(bytes.contains("Connection: close\r\n"));
        assert!(bytes.ends_with("\r\n\r\nhello"));
        let head = String::from_utf8(encode_response(&r, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 5"));
    }

    #[test]
    fn the_answer_rate_is_bounded_after_a_burst() {
        let mut b = AnswerBudget::new();
        let t0 = b.at;
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, ANSWER_BURST as usize);
        // A second later the bucket is full again, but holds no more than a burst.
        let t1 = t0 + Duration::from_secs(1);
        let later = (0..100).filter(|_| b.take(t1)).count();
        assert_eq!(
            later, ANSWER_BURST as usize,
            "the bucket holds at most a burst"
        );
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| b.take(t2)).count(), 5);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_request(&bytes, 1024);
        }
    }
}
