//! Piece indices and piece sets, the two piece-level types both ends of the peer
//! protocol share.
//!
//! - [`PieceIndex`]: an index checked against a file's piece count. An index that
//!   arrives from the network (`Have`, `Request`, `Piece`, `Reject`) is a bare
//!   `u32` until [`PieceIndex::new`] has checked it, so nothing past that check
//!   can index out of range.
//! - [`Bitfield`]: one bit per piece, MSB first (piece 0 is `0x80` of byte 0), the
//!   form a `Bitfield` message and the resume state carry. [`Bitfield::from_bytes`]
//!   accepts exactly `ceil(count / 8)` bytes with the spare bits of the last
//!   byte clear, so a peer cannot announce pieces past the end.

use std::fmt;

/// A piece index known to be below the piece count of the file it was checked
/// against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(u32);

impl PieceIndex {
    /// `raw` as an index of a file of `count` pieces, or `None` when it is out of range.
    pub fn new(raw: u32, count: usize) -> Option<PieceIndex> {
        ((raw as usize) < count).then_some(PieceIndex(raw))
    }

    /// [`PieceIndex::new`] for an index held as `usize` (resume state, loops).
    pub fn from_usize(i: usize, count: usize) -> Option<PieceIndex> {
        u32::try_from(i)
            .ok()
            .and_then(|raw| PieceIndex::new(raw, count))
    }

    /// Every index of a file of `count` pieces, in order.
    pub fn all(count: usize) -> impl Iterator<Item = PieceIndex> {
        // A file has at most u32::MAX pieces on the wire; larger counts are cut there.
        (0..count.min(u32::MAX as usize) as u32).map(PieceIndex)
    }

    /// The index as a `usize`, for slices and piece geometry.
    pub fn get(self) -> usize {
        self.0 as usize
    }

    /// The index as the protocol's `u32`.
    pub fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a byte string is not the bitfield of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitfieldError {
    /// `got` bytes where `want` were expected.
    WrongLength { got: usize, want: usize },
    /// A bit past the last piece is set.
    SpareBitsSet,
}

impl fmt::Display for BitfieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitfieldError::WrongLength { got, want } => {
                write!(f, "bitfield of {got} bytes, expected {want}")
            }
            BitfieldError::SpareBitsSet => write!(f, "bitfield marks pieces past the end"),
        }
    }
}

impl std::error::Error for BitfieldError {}

/// A set of the pieces of one file: one bit per piece, MSB first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    count: usize,
}

/// Bytes of a bitfield for `count` pieces.
pub fn bitfield_len(count: usize) -> usize {
    count.div_ceil(8)
}

fn mask(i: usize) -> u8 {
    0x80 >> (i % 8)
}

impl Bitfield {
    /// No piece of `count`.
    pub fn new(count: usize) -> Bitfield {
        Bitfield {
            bytes: vec![0; bitfield_len(count)],
            count,
        }
    }

    /// Every piece of `count`.
    pub fn full(count: usize) -> Bitfield {
        let mut b = Bitfield {
            bytes: vec![0xff; bitfield_len(count)],
            count,
        };
        if !count.is_multiple_of(8) {
            if let Some(last) = b.bytes.last_mut() {
                *last = !(0xff >> (count % 8));
            }
        }
        b
    }

    /// The bitfield of a file of `count` pieces from its wire bytes.
    pub fn from_bytes(bytes: Vec<u8>, count: usize) -> Result<Bitfield, BitfieldError> {
        let want = bitfield_len(count);
        if bytes.len() != want {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                want,
            });
        }
        if !count.is_multiple_of(8) && bytes[want - 1] & (0xff >> (count % 8)) != 0 {
            return Err(BitfieldError::SpareBitsSet);
        }
        Ok(Bitfield { bytes, count })
    }

    /// Pieces this set is about (set or not).
    pub fn piece_count(&self) -> usize {
        self.count
    }

    /// Whether piece `i` is in the set (false past the end).
    pub fn has(&self, i: PieceIndex) -> bool {
        self.has_usize(i.get())
    }

    fn has_usize(&self, i: usize) -> bool {
        i < self.count && self.bytes[i / 8] & mask(i) != 0
    }

    /// Adds piece `i`; returns whether it was new (ignored past the end).
    pub fn insert(&mut self, i: PieceIndex) -> bool {
        let i = i.get();
        if i >= self.count || self.has_usize(i) {
            return false;
        }
        self.bytes[i / 8] |= mask(i);
        true
    }

    /// Removes piece `i`; returns whether it was there.
    pub fn remove(&mut self, i: PieceIndex) -> bool {
        let i = i.get();
        if !self.has_usize(i) {
            return false;
        }
        self.bytes[i / 8] &= !mask(i);
        true
    }

    /// The pieces in the set, in order.
    pub fn ones(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        PieceIndex::all(self.count).filter(|i| self.has(*i))
    }

    /// How many pieces are in the set.
    pub fn count_ones(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether no piece is in the set.
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(|b| *b == 0)
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The wire form, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(i: u32, n: usize) -> PieceIndex {
        PieceIndex::new(i, n).unwrap()
    }

    #[test]
    fn indices_are_checked_against_the_count() {
        assert_eq!(PieceIndex::new(0, 0), None);
        assert_eq!(PieceIndex::new(9, 10).map(PieceIndex::get), Some(9));
        assert_eq!(PieceIndex::new(10, 10), None);
        assert_eq!(
            PieceIndex::new(u32::MAX, usize::MAX).map(|p| p.raw()),
            Some(u32::MAX)
        );
        assert_eq!(PieceIndex::from_usize(usize::MAX, usize::MAX), None);
        assert_eq!(
            PieceIndex::all(3).map(PieceIndex::get).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn set_get_remove_and_wire_form() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert!(b.insert(ix(0, 10)));
        assert!(b.insert(ix(9, 10)));
        assert!(!b.insert(ix(9, 10)), "already there");
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.has(ix(9, 10)) && !b.has(ix(8, 10)));
        // An index checked against a larger file is still no panic, just absent.
        assert!(!b.has(ix(100, 1000)));
        assert!(!b.insert(ix(100, 1000)));
        assert_eq!(b.count_ones(), 2);
        assert_eq!(
            b.ones().map(PieceIndex::get).collect::<Vec<_>>(),
            vec![0, 9]
        );
        assert!(b.remove(ix(0, 10)));
        assert!(!b.remove(ix(0, 10)));
        assert_eq!(b.as_bytes(), &[0x00, 0x40]);
        assert!(!b.is_empty());
    }

    #[test]
    fn full_sets_exactly_the_pieces() {
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
        assert_eq!(Bitfield::full(0).as_bytes(), &[] as &[u8]);
        assert_eq!(Bitfield::full(10).count_ones(), 10);
        for n in 0..40 {
            let full = Bitfield::full(n);
            assert_eq!(Bitfield::from_bytes(full.clone().into_bytes(), n), Ok(full));
        }
    }

    #[test]
    fn wire_bytes_are_validated() {
        assert_eq!(
            Bitfield::from_bytes(vec![0xff], 10),
            Err(BitfieldError::WrongLength { got: 1, want: 2 })
        );
        assert_eq!(
            Bitfield::from_bytes(vec![0xff, 0xe0], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        let b = Bitfield::from_bytes(vec![0x01, 0xc0], 10).unwrap();
        assert_eq!(
            b.ones().map(PieceIndex::get).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        assert!(Bitfield::from_bytes(vec![], 0).unwrap().is_empty());
    }
}
