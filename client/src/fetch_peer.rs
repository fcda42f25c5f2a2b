//! `FetchPeer`: the download side of one peer connection, as a state machine
//! without I/O. The connection owns it (`peer_conn::Role::Fetch`); `transfers`
//! feeds it what the peer said together with the download's picker, and it
//! answers with the change of state, the requests to send, or a [`Disconnect`] that
//! ends the connection.
//!
//! ```text
//! Handshake --(their handshake: same file, same version, not us)--> AwaitBitfield
//! AwaitBitfield --(a Challenge: transfers answers with Auth, see [`FetchPeer::on_challenge`])--> AwaitBitfield
//! AwaitBitfield --(a valid bitfield)--> Active { has, inflight }
//! Active --(bitfield again: replaces `has` in the counts)--> Active
//! any --(close)--> inflight released, `has` leaves the availability counts
//! ```
//!
//! Every piece index a peer sends is checked here ([`PieceIndex::new`]) before
//! the picker sees it.

use wire::file_meta::FileMeta;
use wire::peer_msg::{self, Handshake, PeerMsg};
use wire::pieces::{Bitfield, PieceIndex};

use crate::picker::PiecePicker;

/// How many whole-piece requests a download keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSlots {
    /// Over all its connections.
    pub total: usize,
    /// On any one connection.
    pub per_peer: usize,
}

/// The request slots of a download with `--threads` `threads` and `active`
/// peers: `threads` in all (SPEC.md: `--threads` is the number of concurrent
/// piece fetches), shared out evenly between the peers, rounded up a peer. A
/// swarm with more peers than threads keeps only `threads` of them busy, so a
/// user of a big swarm raises `--threads` to its peer count (at most 16
/// connections a download): then every peer gets one request, which is what
/// kept 1->16 near its ideal under upload limits (BENCHMARKS.md, the capped
/// swarm; the bench passes `--threads` so). With many peers one request each is
/// enough: a peer serving several downloaders sends to the others while one asks
/// for its next piece, and a shallow queue keeps a super-seeding seeder's
/// choices close to when the piece goes out.
pub fn request_slots(threads: usize, active: usize) -> RequestSlots {
    let (threads, active) = (threads.max(1), active.max(1));
    RequestSlots {
        total: threads,
        per_peer: threads.div_ceil(active),
    }
}

/// Why a fetch connection ends: one line for the log, and whether the address
/// is never tried again for this download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: String,
    pub ban: bool,
}

impl Disconnect {
    pub fn close(reason: impl Into<String>) -> Disconnect {
        Disconnect {
            reason: reason.into(),
            ban: false,
        }
    }

    pub fn ban(reason: impl Into<String>) -> Disconnect {
        Disconnect {
            reason: reason.into(),
            ban: true,
        }
    }
}

/// Where a fetch connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchState {
    /// Our handshake is sent; the server's is awaited.
    Handshake,
    /// The server's handshake was right; its bitfield is awaited.
    AwaitBitfield,
    /// The server's pieces are known; requests flow.
    Active {
        /// The pieces the server has.
        has: Bitfield,
        /// Pieces requested and not yet answered, in request order.
        inflight: Vec<PieceIndex>,
    },
}

/// The download side of one connection: which download, and its state.
#[derive(Debug, Clone)]
pub struct FetchPeer {
    /// Index of the download in `Transfers`.
    pub dl: usize,
    pub state: FetchState,
    /// The server's peer id (from its handshake): part of what `Auth` signs.
    pub server_id: [u8; 8],
    /// The server's challenge, once it arrived (a renewed ticket answers it again).
    pub challenge: Option<[u8; 32]>,
    /// Expiry (unix seconds) of the ticket last shown on this connection.
    pub auth_expires: u64,
    /// Set when the connection ends by the peer's fault (it closed, or went
    /// silent): why its outstanding requests failed. Each counts as one failure
    /// of that piece (`--retries`); a close of our own choosing sets nothing.
    pub lost: Option<String>,
    /// The server had every piece (a seeder; a piece it rejected since does
    /// not change that): it is asked by [`PiecePicker::pick_from_seeder`].
    pub seeder: bool,
}

impl FetchPeer {
    pub fn new(dl: usize) -> FetchPeer {
        FetchPeer {
            dl,
            state: FetchState::Handshake,
            server_id: [0; 8],
            challenge: None,
            auth_expires: 0,
            lost: None,
            seeder: false,
        }
    }

    /// Whether the server's pieces are known (requests may be sent).
    pub fn is_active(&self) -> bool {
        matches!(self.state, FetchState::Active { .. })
    }

    /// Requests outstanding on this connection.
    pub fn inflight(&self) -> usize {
        self.inflight_pieces().len()
    }

    /// The pieces requested here and not answered yet.
    pub fn inflight_pieces(&self) -> &[PieceIndex] {
        match &self.state {
            FetchState::Active { inflight, .. } => inflight,
            _ => &[],
        }
    }

    /// The server's handshake, for a download of `want` by a client whose id is `ours`.
    pub fn on_handshake(
        &mut self,
        h: &Handshake,
        want: &[u8; 20],
        ours: &[u8; 8],
    ) -> Result<(), Disconnect> {
        if h.peer_id == *ours {
            return Err(Disconnect::ban(
                "this is this client; not downloading from it",
            ));
        }
        if h.file_sha1 != *want {
            return Err(Disconnect::close("answered for another file"));
        }
        if h.version != peer_msg::VERSION {
            return Err(Disconnect::close(format!(
                "speaks protocol version {}",
                h.version
            )));
        }
        if self.state == FetchState::Handshake {
            self.state = FetchState::AwaitBitfield;
            self.server_id = h.peer_id;
        }
        Ok(())
    }

    /// The server's challenge: accepted once, after its handshake. The caller
    /// answers it with `Auth` (the download's ticket and a signature).
    pub fn on_challenge(&mut self, challenge: [u8; 32]) -> Result<(), Disconnect> {
        if self.state == FetchState::Handshake || self.challenge.is_some() {
            return Err(Disconnect::close("unexpected challenge"));
        }
        self.challenge = Some(challenge);
        Ok(())
    }

    /// The server's bitfield: its pieces join the availability counts (a repeated
    /// bitfield replaces the earlier one there).
    pub fn on_bitfield(
        &mut self,
        bytes: Vec<u8>,
        picker: &mut PiecePicker,
    ) -> Result<(), Disconnect> {
        if self.state == FetchState::Handshake {
            return Err(Disconnect::close("bitfield before the handshake"));
        }
        let has = Bitfield::from_bytes(bytes, picker.piece_count())
            .map_err(|e| Disconnect::close(e.to_string()))?;
        picker.add_bitfield(&has);
        self.seeder = has.count_ones() == picker.piece_count();
        if let FetchState::Active { has: old, .. } = &mut self.state {
            picker.remove_bitfield(old);
            *old = has;
        } else {
            self.state = FetchState::Active {
                has,
                inflight: Vec::new(),
            };
        }
        Ok(())
    }

    /// The server verified a new piece. An index past the end is ignored, as is a
    /// `Have` before the bitfield (the bitfield will carry it).
    pub fn on_have(&mut self, raw: u32, picker: &mut PiecePicker) {
        let Some(i) = PieceIndex::new(raw, picker.piece_count()) else {
            log::debug!("have of piece {raw}, past the end; ignored");
            return;
        };
        if let FetchState::Active { has, .. } = &mut self.state {
            if has.insert(i) {
                picker.add_have(i);
                self.seeder |= has.count_ones() == picker.piece_count();
            }
        }
    }

    /// The server refused a request: the piece goes back to the picker and is not
    /// asked of this server again. Returns the piece when it was one of our
    /// outstanding requests (a failure of that piece).
    pub fn on_reject(&mut self, raw: u32, picker: &mut PiecePicker) -> Option<PieceIndex> {
        let i = PieceIndex::new(raw, picker.piece_count())?;
        let FetchState::Active { has, inflight } = &mut self.state else {
            return None;
        };
        let pos = inflight.iter().position(|x| *x == i)?;
        inflight.remove(pos);
        picker.release(i);
        if has.remove(i) {
            picker.remove_have(i);
        }
        Some(i)
    }

    /// A whole `Piece` message arrived: the piece it answers, once it is checked to
    /// be an outstanding request of ours with the right geometry.
    pub fn on_piece(
        &mut self,
        raw: u32,
        offset: u32,
        len: usize,
        meta: &FileMeta,
        picker: &mut PiecePicker,
    ) -> Result<PieceIndex, Disconnect> {
        let unasked = || Disconnect::close(format!("sent piece {raw} that was not requested"));
        let i = PieceIndex::new(raw, meta.piece_count()).ok_or_else(unasked)?;
        let FetchState::Active { inflight, .. } = &mut self.state else {
            return Err(unasked());
        };
        let pos = inflight.iter().position(|x| *x == i).ok_or_else(unasked)?;
        inflight.remove(pos);
        if offset != 0 || len as u64 != meta.piece_len(i.get()) {
            picker.release(i);
            return Err(Disconnect::ban(format!("sent a malformed piece {i}")));
        }
        Ok(i)
    }

    /// Picks up to `want` more pieces (at most `per_peer` outstanding here) and
    /// appends their whole-piece `Request`s to `out`; returns how many.
    /// `seeders`: when the download sees only part of the swarm, how many of
    /// its connected peers had every piece; a seeder is then asked by
    /// [`PiecePicker::pick_from_seeder`] (`None`: every peer by `pick`).
    pub fn fill(
        &mut self,
        picker: &mut PiecePicker,
        meta: &FileMeta,
        per_peer: usize,
        want: usize,
        seeders: Option<u32>,
        out: &mut Vec<u8>,
    ) -> usize {
        let FetchState::Active { has, inflight } = &mut self.state else {
            return 0;
        };
        let mut added = 0;
        while inflight.len() < per_peer && added < want {
            let skip = |i| inflight.contains(&i);
            let picked = match seeders.filter(|_| self.seeder) {
                Some(n) => picker.pick_from_seeder(has, n, skip),
                None => picker.pick(has, skip),
            };
            let Some(p) = picked else {
                break;
            };
            inflight.push(p);
            added += 1;
            PeerMsg::Request {
                piece: p.raw(),
                offset: 0,
                len: meta.piece_len(p.get()) as u32,
            }
            .encode_into(out);
        }
        added
    }

    /// The connection ended: its requests go back to the picker and its pieces
    /// leave the availability counts.
    pub fn close(self, picker: &mut PiecePicker) {
        if let FetchState::Active { has, inflight } = self.state {
            for p in inflight {
                picker.release(p);
            }
            picker.remove_bitfield(&has);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 4;

    fn meta(pieces: usize) -> FileMeta {
        FileMeta {
            name: "f".into(),
            size: pieces as u64 * PIECE - 1,
            piece_size: PIECE,
            piece_hashes: vec![[0; 20]; pieces],
            file_sha1: [7; 20],
        }
    }

    fn active(pieces: usize, picker: &mut PiecePicker) -> FetchPeer {
        let mut f = FetchPeer::new(0);
        f.on_handshake(&Handshake::new([7; 20], [2; 8]), &[7; 20], &[1; 8])
            .unwrap();
        assert_eq!(f.state, FetchState::AwaitBitfield);
        f.on_bitfield(Bitfield::full(pieces).into_bytes(), picker)
            .unwrap();
        assert!(f.is_active());
        f
    }

    #[test]
    fn every_active_peer_gets_a_fair_share_of_request_slots() {
        let slots = |t, a| {
            let s = request_slots(t, a);
            (s.total, s.per_peer)
        };
        // Few peers: --threads in all, shared out (rounded up a peer).
        assert_eq!(slots(8, 1), (8, 8));
        assert_eq!(slots(8, 3), (8, 3));
        assert_eq!(slots(8, 4), (8, 2));
        assert_eq!(slots(8, 5), (8, 2));
        assert_eq!(slots(3, 2), (3, 2));
        // Many peers: never more than --threads in all, one a peer at most
        // once the peers outnumber them; --threads 16 keeps 16 peers busy.
        assert_eq!(slots(8, 16), (8, 1));
        assert_eq!(slots(16, 16), (16, 1));
        assert_eq!(slots(64, 16), (64, 4));
        // Degenerate inputs stay usable.
        assert_eq!(slots(0, 0), (1, 1));
    }

    fn requests(out: &[u8]) -> Vec<u32> {
        let mut at = 0;
        let mut v = Vec::new();
        while let Some((m, used)) = peer_msg::decode(&out[at..]).unwrap() {
            at += used;
            if let PeerMsg::Request { piece, .. } = m {
                v.push(piece);
            }
        }
        v
    }

    /// A peer that had every piece stays a seeder after a reject, and (when the
    /// download sees only part of the swarm) is asked only for pieces no other
    /// peer has; a partial peer becomes one with its last `Have`.
    #[test]
    fn a_seeder_is_known_by_its_pieces_and_asked_for_what_no_one_else_has() {
        let m = meta(4);
        let mut picker = PiecePicker::new(4, 1);
        let mut seed = active(4, &mut picker);
        assert!(seed.seeder);
        let mut partial = FetchPeer::new(0);
        partial
            .on_handshake(&Handshake::new([7; 20], [3; 8]), &[7; 20], &[1; 8])
            .unwrap();
        partial.on_bitfield(vec![0b1110_0000], &mut picker).unwrap();
        assert!(!partial.seeder);
        let mut out = Vec::new();
        assert_eq!(seed.fill(&mut picker, &m, 4, 4, Some(1), &mut out), 1);
        assert_eq!(requests(&out), [3], "pieces 0-2 come from the partial peer");
        assert_eq!(seed.on_reject(3, &mut picker).map(PieceIndex::raw), Some(3));
        assert!(seed.seeder, "still a seeder after a reject");
        partial.on_have(3, &mut picker);
        assert!(partial.seeder);
    }

    #[test]
    fn handshakes_that_end_the_connection() {
        let mut f = FetchPeer::new(0);
        let ours = [1; 8];
        let us = Handshake::new([7; 20], ours);
        assert!(f.on_handshake(&us, &[7; 20], &ours).unwrap_err().ban);
        let other_file = Handshake::new([8; 20], [2; 8]);
        assert!(
            !f.on_handshake(&other_file, &[7; 20], &ours)
                .unwrap_err()
                .ban
        );
        let mut old = Handshake::new([7; 20], [2; 8]);
        old.version = peer_msg::VERSION + 1;
        assert!(f.on_handshake(&old, &[7; 20], &ours).is_err());
        assert_eq!(f.state, FetchState::Handshake);
    }

    #[test]
    fn a_challenge_is_taken_once_and_only_after_the_handshake() {
        let mut f = FetchPeer::new(0);
        assert!(f.on_challenge([1; 32]).is_err(), "before the handshake");
        f.on_handshake(&Handshake::new([7; 20], [2; 8]), &[7; 20], &[1; 8])
            .unwrap();
        assert_eq!(f.server_id, [2; 8]);
        f.on_challenge([1; 32]).unwrap();
        assert_eq!(f.challenge, Some([1; 32]));
        assert!(f.on_challenge([3; 32]).is_err(), "a second challenge");
        assert_eq!(f.challenge, Some([1; 32]));
    }

    #[test]
    fn bitfields_are_validated_and_replace_each_other() {
        let mut picker = PiecePicker::new(10, 1);
        let mut f = FetchPeer::new(0);
        assert!(
            f.on_bitfield(vec![0xff, 0xc0], &mut picker).is_err(),
            "before handshake"
        );
        let mut f = active(10, &mut picker);
        let first = PieceIndex::new(0, 10).unwrap();
        assert_eq!(picker.availability(first), 1);
        // Wrong length and spare bits set: dropped, counts untouched.
        assert!(f.on_bitfield(vec![0xff], &mut picker).is_err());
        assert!(f.on_bitfield(vec![0xff, 0xff], &mut picker).is_err());
        assert_eq!(picker.availability(first), 1);
        // A repeated bitfield replaces the first one in the counts.
        f.on_bitfield(vec![0x7f, 0xc0], &mut picker).unwrap();
        assert_eq!(picker.availability(first), 0);
        f.on_have(0, &mut picker);
        f.on_have(0, &mut picker);
        f.on_have(10, &mut picker);
        f.on_have(u32::MAX, &mut picker);
        assert_eq!(picker.availability(first), 1, "one have, counted once");
        f.close(&mut picker);
        assert!(PieceIndex::all(10).all(|i| picker.availability(i) == 0));
    }

    #[test]
    fn requests_pieces_rejects_and_close() {
        let m = meta(6);
        let mut picker = PiecePicker::new(6, 1);
        let mut f = active(6, &mut picker);
        let mut out = Vec::new();
        assert_eq!(f.fill(&mut picker, &m, 4, 10, None, &mut out), 4);
        assert_eq!(
            f.fill(&mut picker, &m, 4, 10, None, &mut out),
            0,
            "per-peer bound"
        );
        let asked = requests(&out);
        assert_eq!(asked.len(), 4);
        // A piece we did not ask for, and one past the end: the connection ends, no ban.
        let never = (0..6).find(|p| !asked.contains(p)).unwrap();
        let e = f
            .on_piece(never, 0, PIECE as usize, &m, &mut picker)
            .unwrap_err();
        assert!(!e.ban, "{e:?}");
        assert!(f.on_piece(99, 0, 4, &m, &mut picker).is_err());
        // The right piece with the wrong length: a ban, and the piece is free again.
        let e = f.on_piece(asked[0], 0, 2, &m, &mut picker).unwrap_err();
        assert!(e.ban);
        let a0 = PieceIndex::new(asked[0], 6).unwrap();
        assert_eq!(picker.outstanding(a0), 0);
        // A good piece.
        let len = m.piece_len(asked[1] as usize) as usize;
        let got = f.on_piece(asked[1], 0, len, &m, &mut picker).unwrap();
        assert_eq!(got.raw(), asked[1]);
        // A reject: released and never asked of this peer again.
        let a2 = PieceIndex::new(asked[2], 6).unwrap();
        assert_eq!(f.on_reject(asked[2], &mut picker), Some(a2));
        assert_eq!(f.on_reject(asked[2], &mut picker), None, "not outstanding");
        assert_eq!(picker.availability(a2), 0);
        assert_eq!(f.inflight(), 1);
        let mut out = Vec::new();
        f.fill(&mut picker, &m, 10, 10, None, &mut out);
        assert!(!requests(&out).contains(&asked[2]));
        // Close: everything outstanding is released.
        let held: Vec<PieceIndex> = match &f.state {
            FetchState::Active { inflight, .. } => inflight.clone(),
            _ => unreachable!(),
        };
        f.close(&mut picker);
        assert!(held.iter().all(|p| picker.outstanding(*p) == 0));
    }
}
