//! The client's side of the tracker protocol: the tracker list, one nonblocking
//! connection driven by the event loop's `mio::Poll`, a queue of requests with
//! one in flight at a time, the cached session, and transparent failover.
//!
//! # Failover
//!
//! Trackers are tried in `tracker_info.txt` order, starting from the one that
//! answered last. A request moves on to the next tracker (wrapping around) when
//! the connect fails or times out ([`CONNECT_TIMEOUT`]), when the connection
//! dies before the whole reply arrived, when the reply is malformed, or when no
//! reply comes within [`REPLY_TIMEOUT`]. A user request gets [`ROUNDS`] full rounds
//! over the list (with [`ROUND_BACKOFF`] between rounds); an internal one
//! (heartbeat, add_seeder) gets one. Only then does it fail with
//! [`LinkError::Unreachable`]. A later request starts over, so the client works
//! again as soon as any tracker is back.
//!
//! When a reply says the session is not accepted ([`ERR_SESSION`]) while
//! credentials are cached, the link logs in again with the cached user id and
//! password on that tracker, then resends the request — once per request. The
//! user sees one informational note (on stderr) when the link switched
//! trackers, and no failed command because of it. The new session is reported
//! ([`TrackerLink::take_session_renewed`]) so the controller moves the client's
//! seeding to it.
//!
//! # Exactly once
//!
//! Every request that changes state (the `mutates` column of
//! [`wire::command::COMMANDS`]) carries a request id `<client>:<seq>`: `client`
//! is random, chosen when the link is made, and `seq` counts this link's
//! requests. A request keeps its id on every resend, so a change that a dying
//! tracker applied (its reply lost) is answered by the next tracker with the
//! original outcome instead of being made again (or refused as "already
//! exists"). A re-login gets an id of its own.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};

use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use wire::command::{CommandKind, TrackerCommand};
pub use wire::tracker_info::TrackerAddr;
use wire::tracker_msg::{Reply, ReplyReader, Request, ERR_SESSION};

/// The poll token of the tracker connection.
pub const TRACKER_TOKEN: Token = Token(1);
/// How long a connect may take before the next tracker is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a sent request may wait for its whole reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Full rounds over the tracker list a user request gets.
pub const ROUNDS: usize = 2;
/// Pause between two rounds.
pub const ROUND_BACKOFF: Duration = Duration::from_millis(300);

/// Identifies one submitted request.
pub type ReqId = u64;

/// A request for the tracker; the link adds the session token and, for the
/// commands that carry one, this client's peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    pub command: TrackerCommand,
    /// Internal (heartbeat, add_seeder, ...): one round of failover, not two.
    pub internal: bool,
}

impl LinkRequest {
    pub fn new(command: TrackerCommand) -> LinkRequest {
        LinkRequest {
            command,
            internal: false,
        }
    }

    pub fn internal(mut self) -> LinkRequest {
        self.internal = true;
        self
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The tracker's `ERR` reason, verbatim.
    #[error("{0}")]
    Tracker(String),
    #[error("no tracker reachable (tried {})", .tried.join(", "))]
    Unreachable { tried: Vec<String> },
}

/// A successful reply: head fields and rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub type Outcome = Result<Answer, LinkError>;

#[derive(Debug, Clone)]
struct Session {
    user: String,
    password: String,
    token: String,
}

struct Conn {
    stream: TcpStream,
    index: usize,
    connected: bool,
    deadline: Instant,
    out: Vec<u8>,
    reader: ReplyReader,
    local_ip: Option<IpAddr>,
}

struct Inflight {
    id: ReqId,
    req: LinkRequest,
    /// The exactly-once id, the same on every resend (mutations only).
    request_id: Option<String>,
    /// The exactly-once id of the re-login, once one was needed.
    relogin_id: Option<String>,
    /// The request (or the re-login) was written to the current connection.
    sent: bool,
    /// The re-login is in flight instead of the request.
    relogging: bool,
    relogged: bool,
    failures: usize,
    sent_at: Instant,
}

/// The tracker connection state machine. See the module doc.
pub struct TrackerLink {
    trackers: Vec<TrackerAddr>,
    current: usize,
    conn: Option<Conn>,
    listen: SocketAddr,
    session: Option<Session>,
    queue: VecDeque<(ReqId, LinkRequest)>,
    inflight: Option<Inflight>,
    finished: Vec<(ReqId, Outcome)>,
    notes: Vec<String>,
    /// Ticket keys that silent re-logins' replies carried (the loop checks
    /// them against the pinned ones).
    relogin_keys: Vec<String>,
    /// This link's random client id (16 hex characters) for request ids.
    client_id: String,
    /// The sequence number of the next request id.
    next_seq: u64,
    /// The link logged in again on its own since the last
    /// [`TrackerLink::take_session_renewed`].
    renewed: bool,
    /// Trackers that failed since the last successful connect (for the note).
    failed: Vec<usize>,
    backoff_until: Option<Instant>,
}

impl TrackerLink {
    /// `listen` is the peer server's bound address (its port is announced).
    pub fn new(trackers: Vec<TrackerAddr>, listen: SocketAddr) -> TrackerLink {
        assert!(!trackers.is_empty(), "tracker list is empty");
        TrackerLink {
            trackers,
            current: 0,
            conn: None,
            listen,
            session: None,
            queue: VecDeque::new(),
            inflight: None,
            finished: Vec::new(),
            notes: Vec::new(),
            relogin_keys: Vec::new(),
            client_id: random_client_id(),
            next_seq: 1,
            renewed: false,
            failed: Vec::new(),
            backoff_until: None,
        }
    }

    /// The peer address peers can reach: the listener's IP, or, when it listens on
    /// all interfaces, the local IP of the tracker connection; with the listener's port.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        if !self.listen.ip().is_unspecified() {
            return Some(self.listen);
        }
        let ip = self.conn.as_ref().and_then(|c| c.local_ip)?;
        Some(SocketAddr::new(ip, self.listen.port()))
    }

    /// Queues a request under `id` (chosen by the caller, unique per request);
    /// its outcome comes from [`TrackerLink::take_finished`].
    pub fn submit(&mut self, registry: &Registry, id: ReqId, req: LinkRequest) {
        self.queue.push_back((id, req));
        self.drive(registry);
    }

    /// Outcomes of requests finished since the last call, in completion order.
    pub fn take_finished(&mut self) -> Vec<(ReqId, Outcome)> {
        std::mem::take(&mut self.finished)
    }

    /// The ticket keys of silent re-logins since the last call.
    pub fn take_relogin_keys(&mut self) -> Vec<String> {
        std::mem::take(&mut self.relogin_keys)
    }

    /// Whether the link logged in again on its own (a refused session) since the
    /// last call: the session token changed, so whatever the old session held on
    /// the tracker (seeding) must be announced again.
    pub fn take_session_renewed(&mut self) -> bool {
        std::mem::take(&mut self.renewed)
    }

    /// Informational lines for the user (stderr).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// A readiness event for [`TRACKER_TOKEN`].
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) {
        let _ = event;
        self.service(registry);
        // After a failure, move on to the next tracker at once.
        self.drive(registry);
    }

    /// Timeouts (connect, reply, backoff); call at least every 100 ms.
    pub fn tick(&mut self, registry: &Registry) {
        let now = Instant::now();
        if let Some(conn) = &self.conn {
            if !conn.connected && now >= conn.deadline {
                self.conn_failed(registry, "connect timed out");
            } else if let Some(inf) = &self.inflight {
                if conn.connected && inf.sent && now.duration_since(inf.sent_at) > REPLY_TIMEOUT {
                    self.conn_failed(registry, "no reply in time");
                }
            }
        }
        if self.backoff_until.is_some_and(|t| now >= t) {
            self.backoff_until = None;
        }
        self.drive(registry);
    }

    /// Reads/writes whatever the connection allows, then moves the queue on.
    fn service(&mut self, registry: &Registry) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.conn_failed(registry, &e.to_string()),
                Ok(None) => {}
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    conn.local_ip = conn.stream.local_addr().ok().map(|a| a.ip());
                    let name = self.trackers[conn.index].to_string();
                    log::info!("connected to tracker {name}");
                    if !self.failed.is_empty() {
                        let failed: Vec<String> = self
                            .failed
                            .iter()
                            .map(|&i| self.trackers[i].to_string())
                            .collect();
                        let word = if failed.len() == 1 {
                            "tracker"
                        } else {
                            "trackers"
                        };
                        self.notes.push(format!(
                            "note: {word} {} unreachable, using {name}",
                            failed.join(", ")
                        ));
                        self.failed.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.conn_failed(registry, &e.to_string()),
            }
        }
        if let Err(e) = self.flush() {
            return self.conn_failed(registry, &e.to_string());
        }
        // Read everything available.
        let mut buf = [0u8; 64 * 1024];
        let mut eof = false;
        loop {
            let conn = self.conn.as_mut().expect("conn checked");
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => conn.reader.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.conn_failed(registry, &e.to_string()),
            }
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.reader.next_reply() {
                None => break,
                Some(Ok(reply)) => {
                    if !self.on_reply(reply) {
                        return self.conn_failed(registry, "unexpected reply");
                    }
                }
                Some(Err(e)) => return self.conn_failed(registry, &format!("bad reply: {e}")),
            }
        }
        if eof {
            if self.inflight.as_ref().is_some_and(|i| i.sent) {
                return self.conn_failed(registry, "connection closed mid-request");
            }
            log::info!("tracker closed the idle connection");
            self.drop_conn(registry);
        }
        self.drive(registry);
    }

    /// Handles one complete reply; false if none was expected.
    fn on_reply(&mut self, reply: Reply) -> bool {
        let Some(inf) = self.inflight.as_mut() else {
            return false;
        };
        if !inf.sent {
            return false;
        }
        if inf.relogging {
            match reply {
                Reply::Ok { head, .. } => {
                    if let Some(key) = head.get(1) {
                        self.relogin_keys.push(key.clone());
                    }
                    let token = head.into_iter().next().unwrap_or_default();
                    if let Some(s) = self.session.as_mut() {
                        s.token = token;
                    }
                    log::info!("re-logged in after the tracker refused the session");
                    self.renewed = true;
                    inf.relogging = false;
                    inf.relogged = true;
                    inf.sent = false;
                }
                Reply::Err(reason) => {
                    let inf = self.inflight.take().expect("inflight");
                    self.finished.push((
                        inf.id,
                        Err(LinkError::Tracker(format!("re-login failed: {reason}"))),
                    ));
                }
            }
            return true;
        }
        let kind = inf.req.command.kind();
        if let Reply::Err(reason) = &reply {
            let session_refused = reason.starts_with(ERR_SESSION);
            if session_refused && kind == CommandKind::Logout {
                // The session is gone either way.
                self.session = None;
                let inf = self.inflight.take().expect("inflight");
                self.finished.push((inf.id, Ok(Answer::default())));
                return true;
            }
            if session_refused
                && self.session.is_some()
                && !inf.relogged
                && kind.spec().needs_session
            {
                inf.relogging = true;
                inf.sent = false;
                return true;
            }
        }
        let inf = self.inflight.take().expect("inflight");
        let outcome = match reply {
            Reply::Ok { head, rows } => {
                match inf.req.command {
                    TrackerCommand::Login { user, password } => {
                        self.session = Some(Session {
                            user,
                            password,
                            token: head.first().cloned().unwrap_or_default(),
                        })
                    }
                    TrackerCommand::Logout => self.session = None,
                    _ => {}
                }
                Ok(Answer { head, rows })
            }
            Reply::Err(reason) => Err(LinkError::Tracker(reason)),
        };
        self.finished.push((inf.id, outcome));
        true
    }

    /// Writes the buffered request bytes as far as the socket takes them.
    fn flush(&mut self) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        while conn.connected && !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The encoded line for the request in flight: a silent re-login when the
    /// session was refused, else the request itself (with our peer address and,
    /// for a change, its request id).
    fn request_line(&mut self, local_ip: Option<IpAddr>) -> Vec<u8> {
        let inf = self.inflight.as_mut().expect("inflight");
        if inf.relogging {
            let s = self.session.as_ref().expect("relogin needs a session");
            let login = TrackerCommand::Login {
                user: s.user.clone(),
                password: s.password.clone(),
            };
            if inf.relogin_id.is_none() {
                inf.relogin_id = Some(format!("{}:{}", self.client_id, self.next_seq));
                self.next_seq += 1;
            }
            let mut req = Request::command(None, &login);
            req.request_id = inf.relogin_id.clone();
            return req.encode();
        }
        let mut cmd = inf.req.command.clone();
        if let Some(addr) = cmd.peer_addr_mut() {
            let ip = local_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            *addr = if self.listen.ip().is_unspecified() {
                SocketAddr::new(ip, self.listen.port())
            } else {
                self.listen
            }
            .to_string();
        }
        let token = self.session.as_ref().map(|s| s.token.as_str());
        let token = token.filter(|_| cmd.kind().spec().needs_session);
        let mut req = Request::command(token, &cmd);
        req.request_id = inf.request_id.clone();
        req.encode()
    }

    /// Starts the next request, opening a connection as needed.
    fn drive(&mut self, registry: &Registry) {
        loop {
            if self.inflight.is_none() {
                let Some((id, req)) = self.queue.pop_front() else {
                    return;
                };
                let request_id = req
                    .command
                    .kind()
                    .spec()
                    .mutates
                    .then(|| self.new_request_id());
                self.inflight = Some(Inflight {
                    id,
                    req,
                    request_id,
                    relogin_id: None,
                    sent: false,
                    relogging: false,
                    relogged: false,
                    failures: 0,
                    sent_at: Instant::now(),
                });
            }
            if self.backoff_until.is_some_and(|t| Instant::now() < t) {
                return;
            }
            self.backoff_until = None;
            if self.conn.is_none() {
                if let Err(e) = self.open(registry) {
                    self.conn_failed(registry, &e.to_string());
                    continue;
                }
            }
            let conn = self.conn.as_mut().expect("opened");
            if !conn.connected {
                return;
            }
            let inf = self.inflight.as_mut().expect("inflight");
            if inf.sent {
                return;
            }
            let local_ip = conn.local_ip;
            let line = self.request_line(local_ip);
            let conn = self.conn.as_mut().expect("opened");
            let inf = self.inflight.as_mut().expect("inflight");
            conn.out.extend_from_slice(&line);
            inf.sent = true;
            inf.sent_at = Instant::now();
            if let Err(e) = self.flush() {
                self.conn_failed(registry, &e.to_string());
                continue;
            }
            return;
        }
    }

    /// The next request id of this link.
    fn new_request_id(&mut self) -> String {
        let id = format!("{}:{}", self.client_id, self.next_seq);
        self.next_seq += 1;
        id
    }

    /// Opens a nonblocking connection to the current tracker.
    fn open(&mut self, registry: &Registry) -> io::Result<()> {
        let addr = self.trackers[self.current].resolve()?;
        let mut stream = TcpStream::connect(addr)?;
        registry.register(
            &mut stream,
            TRACKER_TOKEN,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        log::debug!("connecting to tracker {}", self.trackers[self.current]);
        self.conn = Some(Conn {
            stream,
            index: self.current,
            connected: false,
            deadline: Instant::now() + CONNECT_TIMEOUT,
            out: Vec::new(),
            reader: ReplyReader::new(),
            local_ip: None,
        });
        Ok(())
    }

    fn drop_conn(&mut self, registry: &Registry) {
        if let Some(mut conn) = self.conn.take() {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// The connection to the current tracker failed: move the request on.
    fn conn_failed(&mut self, registry: &Registry, why: &str) {
        let index = self.conn.as_ref().map_or(self.current, |c| c.index);
        log::info!("tracker {}: {why}", self.trackers[index]);
        self.drop_conn(registry);
        let Some(inf) = self.inflight.as_mut() else {
            return;
        };
        let n = self.trackers.len();
        if !self.failed.contains(&index) {
            self.failed.push(index);
        }
        inf.failures += 1;
        inf.sent = false;
        inf.relogging = false;
        self.current = (index + 1) % n;
        let limit = if inf.req.internal { n } else { n * ROUNDS };
        if inf.failures >= limit {
            let inf = self.inflight.take().expect("inflight");
            let tried = self.trackers.iter().map(|t| t.to_string()).collect();
            self.finished
                .push((inf.id, Err(LinkError::Unreachable { tried })));
            self.failed.clear();
        } else if inf.failures % n == 0 {
            self.backoff_until = Some(Instant::now() + ROUND_BACKOFF);
        }
    }
}

/// 64 random bits as 16 hex characters: unique among the clients of a tracker
/// cluster, so request ids of two clients never collide.
fn random_client_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        b = crate::xorshift::XorShift::from_entropy()
            .next_u64()
            .to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_random_hex() {
        let (a, b) = (random_client_id(), random_client_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn errors_display() {
        let e = LinkError::Unreachable {
            tried: vec!["a:1".into(), "b:2".into()],
        };
        assert_eq!(e.to_string(), "no tracker reachable (tried a:1, b:2)");
        assert_eq!(
            LinkError::Tracker("no such group".into()).to_string(),
            "no such group"
        );
    }
}
