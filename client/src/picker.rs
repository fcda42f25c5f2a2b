//! `PiecePicker`: which piece to request next. Pure data structure, no I/O.
//!
//! It keeps, per piece, how many connected peers have it (availability, from
//! bitfields and `Have`s) and its state: missing, requested (with how many
//! outstanding requests), verifying (bytes received, hash running) or have.
//!
//! Selection is rarest first: among the missing pieces the peer has, those with
//! the lowest availability. Ties are broken at random, but only among the
//! [`TIE_WINDOW`] lowest-index candidates: the download hashes the whole file as its
//! verified prefix grows, so keeping the order close to sequential lets that hash
//! run alongside the transfer, while the randomness still spreads leechers over
//! different pieces (and rarity, which changes as leechers announce `Have`, does
//! the rest).
//!
//! Every [`IN_ORDER_EVERY`]th pick is the lowest-index missing piece the peer has
//! instead (the *in-order lane*): in a swarm rarest first scatters the pieces, so
//! the whole-file hash, which needs them in order, stalled on a common piece
//! early in the file and had most of the file left to hash (read back) once the
//! last piece arrived: 9 s of 43 s at 1 -> 8 (BENCHMARKS.md, the capped swarm).
//! Half of the picks filling the holes in front of it keeps it moving, and half
//! stay rarest first, which spreads the fresh pieces.
//!
//! When a download sees only part of the swarm (more peers known than it
//! connects to), a peer that had every piece (a seeder) is asked only for
//! pieces no other connected peer has ([`PiecePicker::pick_from_seeder`]:
//! availability no more than the seeders connected), rarest first and never by
//! the in-order lane; what the other peers have is fetched from them. The lane
//! asked the seeder for the lowest missing piece, which the leechers nearby
//! mostly had, and took the seeder's one upload from pieces no one nearby had:
//! 1 -> 50 at 1M took 2.87-3.26x the ideal with this rule, 3.86x without
//! (BENCHMARKS.md, the swarm tail). A download that sees the whole swarm asks
//! a seeder like any peer: there the rule changed nothing measurable at
//! 1 -> 16 and cost about 0.7 s at 1 -> 8 (the lane at the seeder keeps the
//! whole-file hash close behind). A tail rule (a seeder asked only for what no
//! other peer has once every missing piece is at another peer) was tried and
//! reverted: with two seeders (one that held after a piece, one that lied) the
//! download never showed its honest piece as a partial seeder
//! (`tests/sharing_session.rs`), not understood in the time box (BENCHMARKS.md,
//! the capped 1->16 within the targets).
//!
//! Endgame: when no piece is missing any more (each is requested, verifying or
//! held), a peer may duplicate a request of a piece still outstanding at another
//! peer (at most [`ENDGAME_DUPLICATES`] requests per piece), so one slow peer
//! cannot hold up the end.

use wire::pieces::{Bitfield, PieceIndex};

use crate::xorshift::XorShift;

/// Ties among the rarest pieces are broken at random among this many lowest-index candidates.
pub const TIE_WINDOW: usize = 64;
/// The most outstanding requests a piece may have at once in endgame.
pub const ENDGAME_DUPLICATES: u8 = 2;
/// Every this many picks, one takes the lowest-index missing piece (the
/// in-order lane, see the module doc).
pub const IN_ORDER_EVERY: u32 = 2;

/// State of one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceState {
    Missing,
    Requested,
    Verifying,
    Have,
}

/// Availability counts and piece states of one download.
#[derive(Debug, Clone)]
pub struct PiecePicker {
    avail: Vec<u32>,
    state: Vec<PieceState>,
    outstanding: Vec<u8>,
    have: usize,
    rng: XorShift,
    /// Picks of missing pieces from peers other than seeders so far (every
    /// [`IN_ORDER_EVERY`]th is in order).
    picks: u32,
}

impl PiecePicker {
    /// A picker for `count` pieces, all missing; `seed` drives the tie-breaks.
    pub fn new(count: usize, seed: u64) -> PiecePicker {
        PiecePicker {
            avail: vec![0; count],
            state: vec![PieceState::Missing; count],
            outstanding: vec![0; count],
            have: 0,
            rng: XorShift::new(seed),
            picks: 0,
        }
    }

    pub fn piece_count(&self) -> usize {
        self.state.len()
    }

    /// The state of piece `i` (`None` for an index of another file's size).
    pub fn state(&self, i: PieceIndex) -> Option<PieceState> {
        self.state.get(i.get()).copied()
    }

    /// Whether piece `i` is verified.
    pub fn has(&self, i: PieceIndex) -> bool {
        self.state(i) == Some(PieceState::Have)
    }

    pub fn availability(&self, i: PieceIndex) -> u32 {
        self.avail.get(i.get()).copied().unwrap_or(0)
    }

    pub fn outstanding(&self, i: PieceIndex) -> u8 {
        self.outstanding.get(i.get()).copied().unwrap_or(0)
    }

    pub fn have_count(&self) -> usize {
        self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have == self.state.len()
    }

    /// Pieces not yet verified (missing, requested or verifying).
    pub fn remaining(&self) -> usize {
        self.state.len() - self.have
    }

    /// The verified pieces.
    pub fn verified_set(&self) -> Bitfield {
        let mut b = Bitfield::new(self.piece_count());
        for i in PieceIndex::all(self.piece_count()).filter(|i| self.has(*i)) {
            b.insert(i);
        }
        b
    }

    /// A peer joined with this bitfield.
    pub fn add_bitfield(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            self.add_have(i);
        }
    }

    /// A peer with this bitfield left.
    pub fn remove_bitfield(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            self.remove_have(i);
        }
    }

    /// A peer announced a new piece.
    pub fn add_have(&mut self, i: PieceIndex) {
        if let Some(a) = self.avail.get_mut(i.get()) {
            *a += 1;
        }
    }

    /// A peer no longer offers a piece (it left, or rejected a request for it).
    pub fn remove_have(&mut self, i: PieceIndex) {
        if let Some(a) = self.avail.get_mut(i.get()) {
            *a = a.saturating_sub(1);
        }
    }

    /// Marks pieces already verified (resume).
    pub fn mark_have(&mut self, i: PieceIndex) {
        let i = i.get();
        if let Some(s) = self.state.get_mut(i) {
            if *s != PieceState::Have {
                *s = PieceState::Have;
                self.have += 1;
            }
            self.outstanding[i] = 0;
        }
    }

    /// The next piece to request from a peer holding `bits`, rarest first; marks it
    /// requested. `skip(i)` excludes pieces (e.g. already requested from this peer).
    /// Falls back to endgame duplicates when no missing piece fits.
    pub fn pick(
        &mut self,
        bits: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        self.choose(bits, skip, Some(IN_ORDER_EVERY), u32::MAX)
    }

    /// [`PiecePicker::pick`] for a peer that had every piece, while `seeders`
    /// connected peers had every piece: only pieces no other peer has, rarest
    /// first, no in-order lane (see the module doc).
    pub fn pick_from_seeder(
        &mut self,
        bits: &Bitfield,
        seeders: u32,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        self.choose(bits, skip, None, seeders.max(1))
    }

    /// Rarest first among the missing pieces the peer has with an availability
    /// of at most `max_avail`; every `lane`th pick the lowest-index one instead.
    fn choose(
        &mut self,
        bits: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
        lane: Option<u32>,
        max_avail: u32,
    ) -> Option<PieceIndex> {
        let mut best = u32::MAX;
        let mut cands: [Option<PieceIndex>; TIE_WINDOW] = [None; TIE_WINDOW];
        let mut n = 0;
        let mut first = None;
        for i in PieceIndex::all(self.piece_count()) {
            let a = self.avail[i.get()];
            if self.state[i.get()] != PieceState::Missing
                || !bits.has(i)
                || a > max_avail
                || skip(i)
            {
                continue;
            }
            first = first.or(Some(i));
            if a < best {
                best = a;
                n = 0;
            }
            if a == best && n < TIE_WINDOW {
                cands[n] = Some(i);
                n += 1;
            }
        }
        if n > 0 {
            let in_order = lane.is_some_and(|every| {
                self.picks = self.picks.wrapping_add(1);
                self.picks.is_multiple_of(every)
            });
            let i = if in_order {
                first?
            } else {
                cands[(self.rng.next_u64() % n as u64) as usize]?
            };
            self.state[i.get()] = PieceState::Requested;
            self.outstanding[i.get()] = 1;
            return Some(i);
        }
        self.pick_endgame(bits, skip)
    }

    /// Endgame (no piece missing anywhere, only outstanding ones): duplicate an
    /// outstanding request, least duplicated first. Before that, a peer with
    /// nothing new to offer (a partial seeder) stays idle until it announces
    /// a piece: duplicating the requests sent to other peers would fetch the
    /// same data twice.
    fn pick_endgame(
        &mut self,
        bits: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        if !self.in_endgame() {
            return None;
        }
        let mut pick = None;
        let mut fewest = ENDGAME_DUPLICATES;
        for i in PieceIndex::all(self.piece_count()) {
            let k = i.get();
            if self.state[k] == PieceState::Requested
                && bits.has(i)
                && !skip(i)
                && self.outstanding[k] < fewest
            {
                fewest = self.outstanding[k];
                pick = Some(i);
            }
        }
        if let Some(i) = pick {
            self.outstanding[i.get()] += 1;
        }
        pick
    }

    /// Whether every piece is requested, verifying or held (the endgame phase).
    pub fn in_endgame(&self) -> bool {
        !self.state.contains(&PieceState::Missing)
    }

    /// One outstanding request of piece `i` ended without data (peer lost, rejected,
    /// timed out): when none is left, the piece is missing again.
    pub fn release(&mut self, i: PieceIndex) {
        let i = i.get();
        if let Some(s) = self.state.get(i).copied() {
            self.outstanding[i] = self.outstanding[i].saturating_sub(1);
            if s == PieceState::Requested && self.outstanding[i] == 0 {
                self.state[i] = PieceState::Missing;
            }
        }
    }

    /// Piece `i` arrived and is being verified. Returns false when it is a duplicate
    /// (already verifying or held), in which case the data should be dropped.
    pub fn received(&mut self, i: PieceIndex) -> bool {
        let i = i.get();
        match self.state.get(i).copied() {
            Some(PieceState::Requested) | Some(PieceState::Missing) => {
                self.state[i] = PieceState::Verifying;
                self.outstanding[i] = self.outstanding[i].saturating_sub(1);
                true
            }
            Some(_) => {
                self.outstanding[i] = self.outstanding[i].saturating_sub(1);
                false
            }
            None => false,
        }
    }

    /// Piece `i` failed verification: it is missing again (or still requested when
    /// an endgame duplicate is outstanding).
    pub fn failed(&mut self, i: PieceIndex) {
        let i = i.get();
        if self.state.get(i) == Some(&PieceState::Verifying) {
            self.state[i] = if self.outstanding[i] > 0 {
                PieceState::Requested
            } else {
                PieceState::Missing
            };
        }
    }

    /// Piece `i` verified.
    pub fn verified(&mut self, i: PieceIndex) {
        self.mark_have(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: usize) -> Bitfield {
        Bitfield::full(n)
    }

    fn bits_of(n: usize, set: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.insert(PieceIndex::new(i, n).unwrap());
        }
        b
    }

    /// Index `i` checked against a generous count (the picker bounds it itself).
    fn ix(i: u32) -> PieceIndex {
        PieceIndex::new(i, 1000).unwrap()
    }

    fn pick(p: &mut PiecePicker, bits: &Bitfield) -> Option<u32> {
        p.pick(bits, |_| false).map(PieceIndex::raw)
    }

    #[test]
    fn rarest_first() {
        let mut p = PiecePicker::new(4, 1);
        p.add_bitfield(&all(4));
        p.add_bitfield(&bits_of(4, &[0, 1, 3]));
        // piece 2 is held by one peer only.
        assert_eq!(pick(&mut p, &all(4)), Some(2));
        assert_eq!(p.state(ix(2)), Some(PieceState::Requested));
    }

    #[test]
    fn only_pieces_the_peer_has() {
        let mut p = PiecePicker::new(10, 7);
        let b = bits_of(10, &[3, 8]);
        p.add_bitfield(&b);
        let mut got = vec![pick(&mut p, &b).unwrap(), pick(&mut p, &b).unwrap()];
        got.sort();
        assert_eq!(got, vec![3, 8]);
        // Other pieces are still missing: no endgame duplicates yet.
        assert_eq!(pick(&mut p, &b), None);
        // Once nothing is missing: endgame duplicates, one each, then nothing.
        let rest = bits_of(10, &[0, 1, 2, 4, 5, 6, 7, 9]);
        p.add_bitfield(&rest);
        while pick(&mut p, &rest).is_some() {}
        let x = pick(&mut p, &b).unwrap();
        let y = pick(&mut p, &b).unwrap();
        assert_ne!(x, y);
        assert_eq!(pick(&mut p, &b), None);
    }

    /// Every other pick fills the lowest hole, whatever the rarity: the
    /// whole-file hash can follow the download (it needs the pieces in order).
    #[test]
    fn every_other_pick_is_the_lowest_missing_piece() {
        let n = 200;
        let mut p = PiecePicker::new(n, 11);
        p.add_bitfield(&all(n));
        // The low half is common (three holders), the high half rare (one).
        p.add_bitfield(&bits_of(n, &(0..100).collect::<Vec<_>>()));
        p.add_bitfield(&bits_of(n, &(0..100).collect::<Vec<_>>()));
        let got: Vec<u32> = (0..10).map(|_| pick(&mut p, &all(n)).unwrap()).collect();
        let rare: Vec<u32> = got.iter().step_by(2).copied().collect();
        let lane: Vec<u32> = got.iter().skip(1).step_by(2).copied().collect();
        assert!(rare.iter().all(|&i| i >= 100), "{got:?}");
        assert_eq!(lane, [0, 1, 2, 3, 4], "{got:?}");
    }

    /// A seeder is asked only for what no other peer has, never by the lane:
    /// the rest comes from the leechers (the seeder's second copies at 1 -> 50).
    #[test]
    fn a_seeder_is_asked_only_for_pieces_no_other_peer_has() {
        let n = 8;
        let mut p = PiecePicker::new(n, 5);
        let seeder = all(n);
        p.add_bitfield(&seeder);
        // Two leechers hold pieces 0-5 between them; 6 and 7 only the seeder.
        p.add_bitfield(&bits_of(n, &[0, 1, 2, 3]));
        p.add_bitfield(&bits_of(n, &[2, 3, 4, 5]));
        let mut got: Vec<u32> = (0..4)
            .filter_map(|_| p.pick_from_seeder(&seeder, 1, |_| false))
            .map(PieceIndex::raw)
            .collect();
        got.sort();
        assert_eq!(got, [6, 7]);
        // The lane would have taken piece 0 from it; the leechers still can.
        assert_eq!(p.state(ix(0)), Some(PieceState::Missing));
        assert!(pick(&mut p, &bits_of(n, &[0, 1, 2, 3])).is_some());
        // Two seeders connected: a piece both have (and no one else) is theirs.
        let mut p = PiecePicker::new(n, 5);
        p.add_bitfield(&seeder);
        p.add_bitfield(&seeder);
        p.add_bitfield(&bits_of(n, &[0]));
        let mut got: Vec<u32> = (0..n)
            .filter_map(|_| p.pick_from_seeder(&seeder, 2, |_| false))
            .map(PieceIndex::raw)
            .collect();
        got.sort();
        assert_eq!(got, (1..n as u32).collect::<Vec<_>>());
    }

    #[test]
    fn random_ties_cover_the_window() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut p = PiecePicker::new(100, seed);
            p.add_bitfield(&all(100));
            seen.insert(pick(&mut p, &all(100)).unwrap());
        }
        assert!(seen.len() > 4, "{seen:?}");
        assert!(seen.iter().all(|&i| (i as usize) < TIE_WINDOW));
    }

    #[test]
    fn picks_every_piece_once_then_endgame() {
        let n = 50;
        let mut p = PiecePicker::new(n, 3);
        p.add_bitfield(&all(n));
        let mut got: Vec<u32> = (0..n).map(|_| pick(&mut p, &all(n)).unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..n as u32).collect::<Vec<_>>());
        assert!(p.in_endgame());
        let dup = pick(&mut p, &all(n)).unwrap();
        assert_eq!(p.outstanding(ix(dup)), 2);
        // The first copy arrives; the duplicate is dropped.
        assert!(p.received(ix(dup)));
        assert!(!p.received(ix(dup)));
        p.verified(ix(dup));
        assert_eq!(p.have_count(), 1);
    }

    #[test]
    fn skip_excludes() {
        let mut p = PiecePicker::new(3, 3);
        p.add_bitfield(&all(3));
        assert_eq!(p.pick(&all(3), |i| i.get() != 1), Some(ix(1)));
    }

    #[test]
    fn release_on_peer_loss() {
        let mut p = PiecePicker::new(2, 5);
        let b = all(2);
        p.add_bitfield(&b);
        let i = pick(&mut p, &b).unwrap();
        p.release(ix(i));
        assert_eq!(p.state(ix(i)), Some(PieceState::Missing));
        p.remove_bitfield(&b);
        assert_eq!(p.availability(ix(i)), 0);
        // Releasing one of two endgame requests keeps it requested.
        let mut p = PiecePicker::new(1, 5);
        p.add_bitfield(&all(1));
        pick(&mut p, &all(1)).unwrap();
        pick(&mut p, &all(1)).unwrap();
        p.release(ix(0));
        assert_eq!(p.state(ix(0)), Some(PieceState::Requested));
        p.release(ix(0));
        assert_eq!(p.state(ix(0)), Some(PieceState::Missing));
    }

    #[test]
    fn failed_verification_is_missing_again() {
        let mut p = PiecePicker::new(1, 5);
        p.add_bitfield(&all(1));
        pick(&mut p, &all(1)).unwrap();
        assert!(p.received(ix(0)));
        p.failed(ix(0));
        assert_eq!(p.state(ix(0)), Some(PieceState::Missing));
        assert_eq!(pick(&mut p, &all(1)), Some(0));
    }

    #[test]
    fn have_updates_availability_and_resume() {
        let mut p = PiecePicker::new(3, 5);
        p.add_have(ix(1));
        p.add_have(ix(1));
        p.add_have(ix(9));
        assert_eq!(p.availability(ix(1)), 2);
        p.remove_have(ix(1));
        p.remove_have(ix(9));
        assert_eq!(p.availability(ix(1)), 1);
        p.mark_have(ix(0));
        p.mark_have(ix(0));
        assert_eq!(p.have_count(), 1);
        assert_eq!(p.remaining(), 2);
        assert_eq!(pick(&mut p, &all(3)), Some(2));
        p.mark_have(ix(2));
        assert_eq!(p.verified_set(), bits_of(3, &[0, 2]));
        p.mark_have(ix(1));
        assert!(p.is_complete());
        assert_eq!(pick(&mut p, &all(3)), None);
    }

    #[test]
    fn empty_file_is_complete() {
        let mut p = PiecePicker::new(0, 1);
        assert!(p.is_complete());
        assert_eq!(pick(&mut p, &Bitfield::new(0)), None);
    }
}
