//! `SuperSeed`: which requests a full seeder answers at once, so that under an
//! upload limit each piece leaves the seeder about once and the leechers pass it
//! on among themselves. Pure: no I/O, the clock comes in as `now`.
//!
//! The seeder counts, per shared file, how often it sent each piece, and the
//! *round*: the count of the least-sent piece. A request for a piece sent no
//! more often than that is served. A request for a piece sent more often
//! (another leecher got it already, while some piece went out less often) is
//! *withheld*: the server answers `Reject`, the downloader drops the piece from
//! its view of this seeder, asks it for another (different leechers so get
//! distinct pieces) and fetches the withheld one from the leecher that has it.
//!
//! The seeder offers a withheld piece to that connection again (a `Have`) only
//! when serving it would be no duplicate ahead of its turn: once the round has
//! caught up with the piece's count (every piece went out as often), and not
//! before [`hold_for`] passed (about twice the time the seeder's limited upload
//! needs to send a piece to each of its downloaders, 3-30 s), so the leecher
//! that got it first can pass it on. Offering it after a fixed time instead
//! (what this did before) sent most pieces two or three times at 16 leechers:
//! the first copy had not reached the other leechers when the hold ran out.
//!
//! While a first copy (a piece sent to no one before) is still on its way
//! out, a request for any other piece is withheld as well, even in its turn:
//! under the limit it would share the upload with the first copies and delay
//! them, and every leecher waits on those. At 1 -> 16 the leechers asked the
//! seeder for 23-27 second copies in the 2-5 s after the last first copy was
//! granted (their turn had come), while the last first copies were still
//! going out (BENCHMARKS.md, the capped 1->16 within the targets; the A/B
//! there put the rule level in time).
//! The caller says which connections still have data queued; a connection
//! counts for at most the hold after its first copy, so one that stops
//! reading cannot stop second copies for good.
//!
//! Liveness: while some piece was sent to no one, every downloader misses that
//! piece and can fetch it here, so none waits on a withheld piece alone; the
//! round then moves on and the offer follows. Later (every piece went out at
//! least once), a piece still ahead of the round is offered after
//! [`LAST_RESORT`] anyway (the leechers that had it may be gone), and a request
//! after such an offer is served whatever the counts.
//!
//! Memory is bounded by the shared files' piece counts and the open
//! connections times the pieces withheld from each (at most one entry per
//! connection and piece).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use wire::pieces::PieceIndex;

/// The least time a withheld piece stays withheld from a connection.
pub const WITHHOLD_FOR: Duration = Duration::from_secs(3);
/// The most [`hold_for`] asks for.
pub const MAX_WITHHOLD: Duration = Duration::from_secs(30);
/// Once every piece went out at least once, a withheld piece is offered again
/// after this long even when it is still ahead of the round.
pub const LAST_RESORT: Duration = Duration::from_secs(60);

/// How long to withhold a piece of `piece_len` bytes from a connection at
/// least, when the seeder serves `serving` connections through an upload limit
/// of `limit` bytes per second: twice the time one round of pieces takes to go out.
pub fn hold_for(piece_len: u64, serving: usize, limit: u64) -> Duration {
    let secs = 2.0 * piece_len as f64 * serving as f64 / limit.max(1) as f64;
    Duration::from_secs_f64(secs.min(MAX_WITHHOLD.as_secs_f64())).clamp(WITHHOLD_FOR, MAX_WITHHOLD)
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Answer `Reject`; the piece is offered again later (see [`SuperSeed::due`]).
    Withhold,
}

/// What the seeder did with requests so far (for the log: why a piece left more
/// than once, and how long withheld pieces waited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeedStats {
    /// Requests served for a piece sent to no one before.
    pub first_copies: u64,
    /// Requests served for a piece sent before, in its turn (a new round).
    pub round_copies: u64,
    /// Requests served for a piece ahead of the round, after a last-resort offer.
    pub offered_copies: u64,
    /// Requests refused (`Withhold`).
    pub withheld: u64,
    /// ...of which in their turn, while first copies were still going out.
    pub behind_first: u64,
    /// Withheld pieces offered again (`Have`).
    pub offers: u64,
    /// Seconds from withholding to the offer, summed over the offers...
    pub wait_sum: f64,
    /// ...and the longest.
    pub wait_max: f64,
}

/// How often each piece of one file was sent, and the round (least count).
#[derive(Debug)]
struct SendCounts {
    sent: Vec<u32>,
    /// The least count over all pieces...
    round: u32,
    /// ...and how many pieces have it.
    at_round: usize,
}

impl SendCounts {
    fn new(pieces: usize) -> SendCounts {
        SendCounts {
            sent: vec![0; pieces],
            round: 0,
            at_round: pieces,
        }
    }

    /// Whether serving piece `i` now sends it no more often than every other.
    fn in_turn(&self, i: usize) -> bool {
        self.sent.get(i).is_some_and(|&c| c <= self.round)
    }

    /// Piece `i` was sent once more; returns whether the round moved on.
    fn bump(&mut self, i: usize) -> bool {
        let Some(c) = self.sent.get_mut(i) else {
            return false;
        };
        if *c == self.round {
            self.at_round -= 1;
        }
        *c = c.saturating_add(1);
        if self.at_round > 0 {
            return false;
        }
        self.round = self.sent.iter().copied().min().unwrap_or(0);
        self.at_round = self.sent.iter().filter(|&&c| c == self.round).count();
        true
    }
}

/// A piece withheld from one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Withheld {
    file: [u8; 20],
    conn: u64,
    piece: u32,
    since: Instant,
    /// Not offered before this (`since` + the hold).
    until: Instant,
}

/// The seeder's send counts and withheld pieces (see the module doc).
#[derive(Debug, Default)]
pub struct SuperSeed {
    /// Per file (by whole-file SHA-1).
    counts: HashMap<[u8; 20], SendCounts>,
    withheld: Vec<Withheld>,
    /// (connection, piece) of `withheld`: one entry each.
    pending: HashSet<(u64, u32)>,
    /// (connection, piece) offered as a last resort: served when asked.
    offered: HashSet<(u64, u32)>,
    /// Connections served a first copy, and until when they count as still
    /// sending it (at most the hold; see the module doc).
    first_out: HashMap<u64, Instant>,
    /// `due` has nothing to do before this, unless a round moved on...
    next_scan: Option<Instant>,
    /// ...which this says.
    round_moved: bool,
    /// Counters for the log.
    stats: SeedStats,
}

impl SuperSeed {
    pub fn new() -> SuperSeed {
        SuperSeed::default()
    }

    /// A request on connection `conn` for piece `piece` of the file `file`
    /// (of `pieces` pieces). Counts the piece as sent when it is served; a
    /// withheld piece is not offered again before `hold` passed. `sending(c)`
    /// says whether connection `c` still has piece data queued or being read.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        file: [u8; 20],
        pieces: usize,
        conn: u64,
        piece: PieceIndex,
        now: Instant,
        hold: Duration,
        sending: impl Fn(u64) -> bool,
    ) -> Verdict {
        let counts = self
            .counts
            .entry(file)
            .or_insert_with(|| SendCounts::new(pieces));
        let Some(&count) = counts.sent.get(piece.get()) else {
            return Verdict::Serve;
        };
        let key = (conn, piece.raw());
        let in_turn = counts.in_turn(piece.get());
        let offered = !in_turn && self.offered.remove(&key);
        self.first_out
            .retain(|c, until| now < *until && sending(*c));
        let behind_first = in_turn && count > 0 && !self.first_out.is_empty();
        if (!in_turn && !offered) || behind_first {
            self.withhold(file, key, now, hold);
            self.stats.behind_first += u64::from(behind_first);
            return Verdict::Withhold;
        }
        match (count, in_turn) {
            (0, _) => {
                self.stats.first_copies += 1;
                self.first_out.insert(conn, now + hold);
            }
            (_, true) => self.stats.round_copies += 1,
            (_, false) => self.stats.offered_copies += 1,
        }
        self.round_moved |= counts.bump(piece.get());
        Verdict::Serve
    }

    /// Refuses (connection, piece) `key`: it is offered again after `hold` at
    /// the earliest (one entry per connection and piece).
    fn withhold(&mut self, file: [u8; 20], key: (u64, u32), now: Instant, hold: Duration) {
        if self.pending.insert(key) {
            let until = now + hold;
            self.withheld.push(Withheld {
                file,
                conn: key.0,
                piece: key.1,
                since: now,
                until,
            });
            self.next_scan = Some(self.next_scan.map_or(until, |t| t.min(until)));
        }
        self.stats.withheld += 1;
    }

    /// The pieces to offer again now: (connection, piece) for a `Have` (see
    /// the module doc for when). Cheap when nothing can be due.
    pub fn due(&mut self, now: Instant) -> Vec<(u64, u32)> {
        if !self.round_moved && self.next_scan.is_none_or(|t| now < t) {
            return Vec::new();
        }
        self.round_moved = false;
        self.next_scan = None;
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        let counts = &self.counts;
        self.withheld.retain(|w| {
            let Some(c) = counts.get(&w.file) else {
                self.pending.remove(&(w.conn, w.piece));
                return false;
            };
            let first_round_done = c.round >= 1;
            let last_resort = w.since + LAST_RESORT;
            let offer = now >= w.until
                && (c.in_turn(w.piece as usize) || (first_round_done && now >= last_resort));
            if !offer {
                // Time alone makes it due at `until`, or (after the first
                // round) at the last resort; else only a round moving on does.
                let at = if now < w.until {
                    Some(w.until)
                } else {
                    first_round_done.then_some(last_resort)
                };
                next = match (next, at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                return true;
            }
            if !c.in_turn(w.piece as usize) {
                self.offered.insert((w.conn, w.piece));
            }
            self.pending.remove(&(w.conn, w.piece));
            let waited = now.duration_since(w.since).as_secs_f64();
            self.stats.offers += 1;
            self.stats.wait_sum += waited;
            self.stats.wait_max = self.stats.wait_max.max(waited);
            out.push((w.conn, w.piece));
            false
        });
        self.next_scan = next;
        out
    }

    /// A connection closed: nothing is owed to it any more.
    pub fn forget_conn(&mut self, conn: u64) {
        self.withheld.retain(|w| w.conn != conn);
        self.pending.retain(|(c, _)| *c != conn);
        self.offered.retain(|(c, _)| *c != conn);
        self.first_out.remove(&conn);
    }

    /// A file is no longer shared.
    pub fn forget_file(&mut self, file: &[u8; 20]) {
        self.counts.remove(file);
        self.round_moved = true;
    }

    /// The counters so far, and how many withheld pieces wait for their offer.
    pub fn stats(&self) -> (SeedStats, usize) {
        (self.stats, self.withheld.len())
    }

    /// How often piece `i` of `file` was sent (for tests and logs).
    pub fn sent(&self, file: &[u8; 20], i: PieceIndex) -> u32 {
        self.counts
            .get(file)
            .and_then(|c| c.sent.get(i.get()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: [u8; 20] = [1; 20];

    /// No connection has piece data queued.
    fn idle(_: u64) -> bool {
        false
    }

    fn ix(i: u32) -> PieceIndex {
        PieceIndex::new(i, 4).unwrap()
    }

    #[test]
    fn distinct_pieces_to_distinct_leechers_then_second_copies() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        // Leecher 1 and 2 both ask piece 0: the second waits for a fresh piece.
        assert_eq!(
            s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert_eq!(
            s.request(F, 4, 2, ix(1), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 3, ix(2), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 3, ix(1), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert_eq!(
            s.request(F, 4, 1, ix(3), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(s.sent(&F, ix(0)), 1);
        // Every piece went out once: second copies are served in turn.
        assert_eq!(
            s.request(F, 4, 4, ix(2), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 5, ix(2), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert_eq!(
            s.request(F, 4, 5, ix(3), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(s.sent(&F, ix(2)), 2);
    }

    /// The rule that keeps 1 -> 16 from sending the file three times: the hold
    /// running out is not enough while some piece went out to no one.
    #[test]
    fn a_withheld_piece_is_offered_again_only_when_its_turn_came() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR, idle);
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        // Pieces 1-3 went to no one: no offer, however long (no last resort
        // either: every downloader can fetch those meanwhile).
        assert!(s.due(t0 + WITHHOLD_FOR).is_empty());
        assert!(s.due(t0 + LAST_RESORT * 2).is_empty());
        for p in 1..4 {
            assert_eq!(
                s.request(F, 4, 4, ix(p), t0, WITHHOLD_FOR, idle),
                Verdict::Serve
            );
        }
        // Piece 0's turn came; the hold still counts from the refusal.
        assert!(s.due(t0 + WITHHOLD_FOR / 2).is_empty());
        assert_eq!(s.due(t0 + WITHHOLD_FOR), [(2, 0), (3, 0)]);
        assert!(s.due(t0 + WITHHOLD_FOR * 2).is_empty(), "offered once");
        // The first to ask gets the second copy; the other one waits again
        // (it was served too before: two duplicates of one piece).
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert_eq!(s.sent(&F, ix(0)), 2);
        let st = s.stats().0;
        assert_eq!(
            (st.first_copies, st.round_copies, st.offered_copies),
            (4, 1, 0)
        );
        assert_eq!((st.withheld, st.offers), (3, 2));
    }

    /// After the first round a piece ahead of the round is offered after
    /// [`LAST_RESORT`] (its holders may be gone), and then served.
    #[test]
    fn a_last_resort_offer_after_the_first_round_is_served() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        for p in 0..4 {
            s.request(F, 4, 1, ix(p), t0, WITHHOLD_FOR, idle);
        }
        s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle);
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        assert!(s.due(t0 + WITHHOLD_FOR).is_empty(), "2 copies, round 1");
        assert!(s.due(t0 + LAST_RESORT / 2).is_empty());
        assert_eq!(s.due(t0 + LAST_RESORT), [(3, 0)]);
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(s.sent(&F, ix(0)), 3);
        assert_eq!(s.stats().0.offered_copies, 1);
        // The offer is used up by that request.
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
    }

    /// A second copy in its turn waits while a first copy is still going out
    /// (it would share the upload with it and delay it); first copies do not.
    #[test]
    fn second_copies_wait_while_a_first_copy_goes_out() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        let conn_2_sends = |c: u64| c == 2;
        for p in 0..2 {
            s.request(F, 4, 1, ix(p), t0, WITHHOLD_FOR, idle);
        }
        assert_eq!(
            s.request(F, 4, 2, ix(2), t0, WITHHOLD_FOR, conn_2_sends),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 3, ix(3), t0, WITHHOLD_FOR, conn_2_sends),
            Verdict::Serve,
            "a first copy is served beside another"
        );
        // Round 1: piece 0 is in its turn, but connections 2 and 3 still send.
        assert_eq!(
            s.request(F, 4, 4, ix(0), t0, WITHHOLD_FOR, conn_2_sends),
            Verdict::Withhold
        );
        assert_eq!(s.stats().0.behind_first, 1);
        // Their data went out: second copies are served again.
        assert_eq!(
            s.request(F, 4, 4, ix(1), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(s.stats().0.round_copies, 1);
    }

    /// A connection that stops reading its first copy holds second copies back
    /// for the hold at most.
    #[test]
    fn a_first_copy_stuck_in_a_queue_holds_second_copies_back_for_the_hold_only() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        let always = |_: u64| true;
        s.request(F, 2, 1, ix(0), t0, WITHHOLD_FOR, always);
        s.request(F, 2, 2, ix(1), t0, WITHHOLD_FOR, always);
        let half = t0 + WITHHOLD_FOR / 2;
        assert_eq!(
            s.request(F, 2, 3, ix(0), half, WITHHOLD_FOR, always),
            Verdict::Withhold
        );
        let later = t0 + WITHHOLD_FOR;
        assert_eq!(
            s.request(F, 2, 4, ix(0), later, WITHHOLD_FOR, always),
            Verdict::Serve
        );
        // A closed connection counts no more either.
        let mut s = SuperSeed::new();
        s.request(F, 2, 1, ix(0), t0, WITHHOLD_FOR, always);
        s.request(F, 2, 2, ix(1), t0, WITHHOLD_FOR, always);
        assert_eq!(
            s.request(F, 2, 3, ix(0), t0, WITHHOLD_FOR, always),
            Verdict::Withhold
        );
        s.forget_conn(1);
        s.forget_conn(2);
        assert_eq!(
            s.request(F, 2, 3, ix(0), t0, WITHHOLD_FOR, always),
            Verdict::Serve
        );
    }

    #[test]
    fn one_entry_per_connection_and_piece_and_none_for_a_closed_one() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR, idle);
        for _ in 0..3 {
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle);
        }
        s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR, idle);
        assert_eq!(s.stats().1, 2);
        s.forget_conn(3);
        assert_eq!(s.stats().1, 1);
        for p in 1..4 {
            s.request(F, 4, 1, ix(p), t0, WITHHOLD_FOR, idle);
        }
        assert_eq!(s.due(t0 + WITHHOLD_FOR), [(2, 0)]);
        s.forget_conn(2);
        assert!(s.due(t0 + LAST_RESORT * 2).is_empty());
    }

    /// The round is kept incrementally: it must equal the least count after
    /// any sequence of requests.
    #[test]
    fn the_round_is_the_least_count() {
        let t0 = Instant::now();
        let mut rng = crate::xorshift::XorShift::new(7);
        let n = 9;
        let mut s = SuperSeed::new();
        for _ in 0..2000 {
            let p = PieceIndex::new((rng.next_u64() % n) as u32, n as usize).unwrap();
            let conn = rng.next_u64() % 5;
            s.request(F, n as usize, conn, p, t0, WITHHOLD_FOR, idle);
            if rng.next_u64().is_multiple_of(7) {
                for (c, p) in s.due(t0 + LAST_RESORT) {
                    s.request(
                        F,
                        n as usize,
                        c,
                        PieceIndex::new(p, 9).unwrap(),
                        t0,
                        WITHHOLD_FOR,
                        idle,
                    );
                }
            }
            let c = &s.counts[&F];
            assert_eq!(c.round, *c.sent.iter().min().unwrap());
            assert_eq!(c.at_round, c.sent.iter().filter(|&&x| x == c.round).count());
        }
        assert!(s.counts[&F].round >= 1, "rounds went by");
    }

    /// The downloader's side of a withheld piece: it asks the seeder for another
    /// piece at once, and takes the withheld one back after the `Have`.
    #[test]
    fn a_downloader_moves_on_and_comes_back_after_the_offer() {
        use crate::fetch_peer::FetchPeer;
        use crate::picker::PiecePicker;
        use wire::file_meta::FileMeta;
        use wire::peer_msg::{self, Handshake, PeerMsg};
        use wire::pieces::Bitfield;

        let meta = FileMeta {
            name: "f".into(),
            size: 4 * 4,
            piece_size: 4,
            piece_hashes: vec![[0; 20]; 4],
            file_sha1: F,
        };
        let asked = |out: &[u8]| -> Vec<u32> {
            let mut at = 0;
            let mut v = Vec::new();
            while let Some((PeerMsg::Request { piece, .. }, used)) =
                peer_msg::decode(&out[at..]).unwrap()
            {
                v.push(piece);
                at += used;
            }
            v
        };
        let t0 = Instant::now();
        let mut seed = SuperSeed::new();
        let mut picker = PiecePicker::new(4, 9);
        let mut f = FetchPeer::new(0);
        f.on_handshake(&Handshake::new(F, [2; 8]), &F, &[3; 8])
            .unwrap();
        f.on_bitfield(Bitfield::full(4).into_bytes(), &mut picker)
            .unwrap();
        let mut out = Vec::new();
        f.fill(&mut picker, &meta, 1, 1, None, &mut out);
        let first = asked(&out)[0];
        // Another leecher got that piece from the seeder already.
        assert_eq!(
            seed.request(F, 4, 1, ix(first), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            seed.request(F, 4, 2, ix(first), t0, WITHHOLD_FOR, idle),
            Verdict::Withhold
        );
        f.on_reject(first, &mut picker);
        let mut out = Vec::new();
        f.fill(&mut picker, &meta, 1, 1, None, &mut out);
        let second = asked(&out);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0], first, "asks for another piece");
        assert_eq!(
            seed.request(F, 4, 2, ix(second[0]), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        // The other two pieces go out to a third leecher: the round moves on.
        for p in (0..4).filter(|p| *p != first && *p != second[0]) {
            assert_eq!(
                seed.request(F, 4, 3, ix(p), t0, WITHHOLD_FOR, idle),
                Verdict::Serve
            );
        }
        assert_eq!(seed.due(t0 + WITHHOLD_FOR), [(2, first)]);
        f.on_have(first, &mut picker);
        assert_eq!(picker.availability(ix(first)), 1, "offered again");
        let mut out = Vec::new();
        f.fill(&mut picker, &meta, 2, 1, None, &mut out);
        let third = asked(&out)[0];
        // Whichever it asks now (every piece went out once), the seeder answers.
        assert_eq!(
            seed.request(F, 4, 2, ix(third), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
    }

    #[test]
    fn the_hold_grows_with_the_downloaders_sharing_the_limit() {
        let piece = 512 * 1024;
        let mib = 1024 * 1024;
        assert_eq!(hold_for(piece, 2, 4 * mib), WITHHOLD_FOR);
        assert_eq!(hold_for(piece, 16, 4 * mib), Duration::from_secs(4));
        assert_eq!(hold_for(piece, 50, mib), MAX_WITHHOLD);
        assert_eq!(hold_for(piece, 1, 0), MAX_WITHHOLD, "no division by zero");
    }

    #[test]
    fn files_are_counted_apart() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR, idle);
        assert_eq!(
            s.request([2; 20], 4, 2, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        s.forget_file(&F);
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
    }

    #[test]
    fn an_empty_file_or_a_piece_past_the_end_is_no_panic() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        let p = PieceIndex::new(5, 9).unwrap();
        assert_eq!(
            s.request([3; 20], 0, 1, p, t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert_eq!(
            s.request(F, 4, 1, p, t0, WITHHOLD_FOR, idle),
            Verdict::Serve
        );
        assert!(s.due(t0 + LAST_RESORT).is_empty());
    }
}
