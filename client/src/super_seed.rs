//! `SuperSeed`: which requests a full seeder answers at once, so that under an
//! upload limit each piece leaves the seeder about once and the leechers pass it
//! on among themselves. Pure: no I/O, the clock comes in as `now`.
//!
//! The seeder counts, per shared file, how often it sent each piece. A request
//! for a piece sent more often than the least-sent piece of the file (another
//! leecher got it already, while some piece went out to no one yet) is
//! *withheld*: the server answers `Reject`, the downloader drops the piece from
//! its view of this seeder and asks it for another (different leechers so get
//! distinct pieces) and fetches the withheld one from the leecher that has it.
//! After a while ([`hold_for`]: about twice the time the seeder's limited upload
//! needs to send a piece to each of its downloaders, so the first copy can go out
//! and be passed on; at least [`WITHHOLD_FOR`], at most [`MAX_WITHHOLD`]) the
//! seeder offers the piece to that connection again with a `Have`; a request for a piece offered again is answered whatever the
//! counts, so no downloader waits on the seeder for more than that once, even
//! when the leecher that had the piece is gone.
//!
//! Memory is bounded by the shared files' piece counts and the open
//! connections times the pieces withheld from each (at most one entry per
//! connection and piece).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use wire::pieces::PieceIndex;

/// The least time a withheld piece stays withheld from a connection.
pub const WITHHOLD_FOR: Duration = Duration::from_secs(3);
/// The most: a downloader never waits on the seeder for a piece longer.
pub const MAX_WITHHOLD: Duration = Duration::from_secs(30);

/// How long to withhold a piece of `piece_len` bytes from a connection when the
/// seeder serves `serving` connections through an upload limit of `limit`
/// bytes per second: twice the time one round of pieces takes to go out.
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

/// A piece withheld from one connection, and when it is offered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Withheld {
    conn: u64,
    piece: u32,
    since: Instant,
    until: Instant,
}

/// What the seeder did with requests so far (for the log: why a piece left more
/// than once, and how long withheld pieces waited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeedStats {
    /// Requests served for a piece sent to no one before.
    pub first_copies: u64,
    /// Requests served for a piece sent before, because every piece was sent
    /// as often (a new round).
    pub round_copies: u64,
    /// Requests served for a piece sent before, because it was offered again.
    pub offered_copies: u64,
    /// Requests refused (`Withhold`).
    pub withheld: u64,
    /// Withheld pieces offered again (`Have`).
    pub offers: u64,
    /// Seconds from withholding to the offer, summed over the offers...
    pub wait_sum: f64,
    /// ...and the longest.
    pub wait_max: f64,
}

/// The seeder's send counts and withheld pieces (see the module doc).
#[derive(Debug, Default)]
pub struct SuperSeed {
    /// Counters for the log.
    stats: SeedStats,
    /// Per file (by whole-file SHA-1): how often each piece was sent.
    sent: HashMap<[u8; 20], Vec<u32>>,
    /// In the order they fall due.
    withheld: VecDeque<Withheld>,
    /// (connection, piece) offered again: served when asked.
    offered: HashSet<(u64, u32)>,
}

impl SuperSeed {
    pub fn new() -> SuperSeed {
        SuperSeed::default()
    }

    /// A request on connection `conn` for piece `piece` of the file `file`
    /// (of `pieces` pieces). Counts the piece as sent when it is served; a
    /// withheld piece is offered again after `hold`.
    pub fn request(
        &mut self,
        file: [u8; 20],
        pieces: usize,
        conn: u64,
        piece: PieceIndex,
        now: Instant,
        hold: Duration,
    ) -> Verdict {
        let sent = self.sent.entry(file).or_insert_with(|| vec![0; pieces]);
        let Some(&count) = sent.get(piece.get()) else {
            return Verdict::Serve;
        };
        let least = sent.iter().copied().min().unwrap_or(0);
        let offered = count > least && self.offered.remove(&(conn, piece.raw()));
        if count > least && !offered {
            self.withheld.push_back(Withheld {
                conn,
                piece: piece.raw(),
                since: now,
                until: now + hold,
            });
            self.stats.withheld += 1;
            return Verdict::Withhold;
        }
        match (count, offered) {
            (0, _) => self.stats.first_copies += 1,
            (_, true) => self.stats.offered_copies += 1,
            (_, false) => self.stats.round_copies += 1,
        }
        sent[piece.get()] = count.saturating_add(1);
        Verdict::Serve
    }

    /// The pieces to offer again now: (connection, piece) for a `Have`.
    pub fn due(&mut self, now: Instant) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Some(w) = self.withheld.front().filter(|w| w.until <= now) {
            out.push((w.conn, w.piece));
            self.offered.insert((w.conn, w.piece));
            let waited = now.duration_since(w.since).as_secs_f64();
            self.stats.offers += 1;
            self.stats.wait_sum += waited;
            self.stats.wait_max = self.stats.wait_max.max(waited);
            self.withheld.pop_front();
        }
        out
    }

    /// A connection closed: nothing is owed to it any more.
    pub fn forget_conn(&mut self, conn: u64) {
        self.withheld.retain(|w| w.conn != conn);
        self.offered.retain(|(c, _)| *c != conn);
    }

    /// A file is no longer shared.
    pub fn forget_file(&mut self, file: &[u8; 20]) {
        self.sent.remove(file);
    }

    /// The counters so far, and how many pieces wait to be offered again now.
    pub fn stats(&self) -> (SeedStats, usize) {
        (self.stats, self.withheld.len())
    }

    /// How often piece `i` of `file` was sent (for tests and logs).
    pub fn sent(&self, file: &[u8; 20], i: PieceIndex) -> u32 {
        self.sent
            .get(file)
            .and_then(|s| s.get(i.get()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: [u8; 20] = [1; 20];

    fn ix(i: u32) -> PieceIndex {
        PieceIndex::new(i, 4).unwrap()
    }

    #[test]
    fn distinct_pieces_to_distinct_leechers_then_second_copies() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        // Leecher 1 and 2 both ask piece 0: the second waits for a fresh piece.
        assert_eq!(s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        assert_eq!(s.request(F, 4, 2, ix(1), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(s.request(F, 4, 3, ix(2), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(
            s.request(F, 4, 3, ix(1), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        assert_eq!(s.request(F, 4, 1, ix(3), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(s.sent(&F, ix(0)), 1);
        // Every piece went out once: second copies are served in turn.
        assert_eq!(s.request(F, 4, 4, ix(2), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(
            s.request(F, 4, 5, ix(2), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        assert_eq!(s.request(F, 4, 5, ix(3), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(s.sent(&F, ix(2)), 2);
    }

    #[test]
    fn a_withheld_piece_is_offered_again_and_then_served() {
        let t0 = Instant::now();
        let mut s = SuperSeed::new();
        s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR);
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        assert!(s.due(t0 + WITHHOLD_FOR / 2).is_empty());
        assert_eq!(s.due(t0 + WITHHOLD_FOR), [(2, 0), (3, 0)]);
        assert!(s.due(t0 + WITHHOLD_FOR * 2).is_empty(), "offered once");
        // Asked again after the offer: served even though piece 1 never went out.
        assert_eq!(s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR), Verdict::Serve);
        assert_eq!(s.sent(&F, ix(0)), 2);
        // The offer is used up by that request.
        assert_eq!(
            s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        // A closed connection is owed nothing.
        s.forget_conn(3);
        s.forget_conn(2);
        assert!(s.due(t0 + WITHHOLD_FOR * 3).is_empty());
        assert_eq!(
            s.request(F, 4, 3, ix(0), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
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
        f.fill(&mut picker, &meta, 1, 1, &mut out);
        let first = asked(&out)[0];
        // Another leecher got that piece from the seeder already.
        assert_eq!(
            seed.request(F, 4, 1, ix(first), t0, WITHHOLD_FOR),
            Verdict::Serve
        );
        assert_eq!(
            seed.request(F, 4, 2, ix(first), t0, WITHHOLD_FOR),
            Verdict::Withhold
        );
        f.on_reject(first, &mut picker);
        let mut out = Vec::new();
        f.fill(&mut picker, &meta, 1, 1, &mut out);
        let second = asked(&out);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0], first, "asks for another piece");
        assert_eq!(
            seed.request(F, 4, 2, ix(second[0]), t0, WITHHOLD_FOR),
            Verdict::Serve
        );
        assert_eq!(seed.due(t0 + WITHHOLD_FOR), [(2, first)]);
        f.on_have(first, &mut picker);
        assert_eq!(picker.availability(ix(first)), 1, "offered again");
        let mut out = Vec::new();
        f.fill(&mut picker, &meta, 2, 1, &mut out);
        let third = asked(&out)[0];
        // Rarest first among the two never-sent pieces and the offered one:
        // whichever it asks, the seeder answers.
        assert_eq!(
            seed.request(F, 4, 2, ix(third), t0, WITHHOLD_FOR),
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
        s.request(F, 4, 1, ix(0), t0, WITHHOLD_FOR);
        assert_eq!(
            s.request([2; 20], 4, 2, ix(0), t0, WITHHOLD_FOR),
            Verdict::Serve
        );
        s.forget_file(&F);
        assert_eq!(s.request(F, 4, 2, ix(0), t0, WITHHOLD_FOR), Verdict::Serve);
    }
}
