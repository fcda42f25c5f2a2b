//! The bandwidth limits applied to [`Transfers`]' connections: the one place
//! where the [`RateGate`] meets the sockets.
//!
//! Serving connections are metered on their writes (upload), fetch connections
//! on their reads (download); the other way (requests, handshakes, `Have`s
//! read by a server) is a few bytes and moves freely. Before a connection's I/O
//! the loop [`grant`](Transfers::grant)s it a quota of at most one chunk, and
//! [`settle`](Transfers::settle)s afterwards: the bytes it used are spent from
//! the bucket and its quota drops to zero, so bytes queued later (a disk read
//! finishing, a `Have`) wait for the next grant. A connection whose quota ran
//! out with bytes left to move is held; [`Transfers::resume_held`] (every loop
//! turn) grants it more once the bucket holds a chunk again, taking the held
//! connections in a rotating order so they share the bucket, and
//! [`Transfers::next_wake`] tells the loop how long to sleep until then.

use std::time::{Duration, Instant};

use mio::Registry;

use super::Transfers;
use crate::limits::{Direction, RateGate};
use crate::peer_conn::{PeerConn, Role};

/// A quota handed to one connection, to settle after its I/O.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    key: usize,
    id: u64,
    dir: Direction,
    granted: u64,
}

/// The direction a connection's metered bytes move.
fn direction(conn: &PeerConn) -> Direction {
    match conn.role {
        Role::Serve(_) => Direction::Up,
        Role::Fetch(_) => Direction::Down,
    }
}

/// The connection's quota for its metered direction.
fn quota(conn: &mut PeerConn) -> &mut Option<u64> {
    match direction(conn) {
        Direction::Up => &mut conn.wquota,
        Direction::Down => &mut conn.rquota,
    }
}

fn held(conn: &PeerConn) -> bool {
    match direction(conn) {
        Direction::Up => conn.held_w,
        Direction::Down => conn.held_r,
    }
}

/// Sets a fresh connection's quota: zero (wait for a grant) under a limit.
pub(super) fn meter_new(gate: &RateGate, conn: &mut PeerConn) {
    let limited = gate.is_limited(direction(conn));
    *quota(conn) = limited.then_some(0);
}

impl Transfers {
    /// The current limits, bytes per second (0 = unlimited): (upload, download).
    pub fn limits(&self) -> (u64, u64) {
        (
            self.gate.limit(Direction::Up),
            self.gate.limit(Direction::Down),
        )
    }

    /// Changes a limit from now on (`rate_limit`, the command-line flags).
    /// Connections of that direction become metered or free at once; held ones
    /// resume on the next loop turn.
    pub fn set_limit(&mut self, dir: Direction, rate: u64) {
        self.gate.set_limit(dir, rate, Instant::now());
        for (_, c) in self.conns.iter_mut() {
            if direction(c) == dir {
                *quota(c) = (rate != 0).then_some(0);
            }
        }
    }

    /// Grants connection `key` its quota before its I/O (`None`: unmetered).
    pub(super) fn grant(&mut self, key: usize) -> Option<Grant> {
        let conn = self.conns.get_mut(key)?;
        let dir = direction(conn);
        let granted = self.gate.grant(dir, Instant::now())?;
        *quota(conn) = Some(granted);
        Some(Grant {
            key,
            id: conn.id,
            dir,
            granted,
        })
    }

    /// Spends what the connection used of its grant; its quota drops to zero.
    /// A connection that closed meanwhile is counted as having used it all.
    pub(super) fn settle(&mut self, grant: Option<Grant>) {
        let Some(g) = grant else {
            return;
        };
        let left = match self.conns.get_mut(g.key).filter(|c| c.id == g.id) {
            Some(conn) => {
                let q = quota(conn);
                let left = q.unwrap_or(0);
                // Still metered unless the limit was lifted meanwhile.
                if q.is_some() {
                    *q = Some(0);
                }
                left
            }
            None => 0,
        };
        let used = g.granted.saturating_sub(left);
        self.gate.spend(g.dir, used, Instant::now());
    }

    /// Resumes the held connections whose bucket holds a chunk again, in a
    /// rotating order so they take turns.
    pub(super) fn resume_held(&mut self, registry: &Registry, now: Instant) {
        let mut keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| held(c) && !c.is_closed())
            .map(|(k, _)| k)
            .collect();
        if keys.is_empty() {
            return;
        }
        self.resume_turn = self.resume_turn.wrapping_add(1);
        let start = self.resume_turn % keys.len();
        keys.rotate_left(start);
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            let (dir, r, w) = (direction(conn), conn.held_r, conn.held_w);
            if self.gate.ready(dir, now) {
                self.conn_ready(registry, key, r, w);
            }
        }
    }

    /// How long the loop may sleep before a held connection can move bytes
    /// again (`None` when none is held).
    pub fn next_wake(&mut self, now: Instant) -> Option<Duration> {
        let (mut up, mut down) = (false, false);
        for (_, c) in self.conns.iter() {
            if held(c) && !c.is_closed() {
                match direction(c) {
                    Direction::Up => up = true,
                    Direction::Down => down = true,
                }
            }
        }
        let wait = |held: bool, dir, gate: &mut RateGate| held.then(|| gate.wait(dir, now));
        let a = wait(up, Direction::Up, &mut self.gate);
        let b = wait(down, Direction::Down, &mut self.gate);
        // At least a millisecond: a bucket a few bytes short never spins the loop.
        a.into_iter()
            .chain(b)
            .min()
            .map(|d| d.max(Duration::from_millis(1)))
    }
}
