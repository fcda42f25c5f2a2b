//! `PieceBuffers`: the spare piece buffers of one client, so a piece's memory is
//! allocated once and reused for every later piece (received, read from disk for
//! a peer, or re-read for the whole-file hash) instead of per piece.
//!
//! A buffer taken from the pool has the requested length but unspecified
//! contents: every user overwrites the whole buffer, so there is no memset per
//! piece. Only a bounded number of spare buffers is kept, which bounds memory.

use wire::file_meta::PIECE_SIZE;
use wire::peer_msg::PIECE_HEADER_LEN;

/// Spare piece buffers kept for reuse.
const MAX_FREE_BUFS: usize = 12;
/// Smaller buffers are not worth keeping.
const MIN_KEPT_CAPACITY: usize = 256 * 1024;

/// A free list of piece-sized buffers.
#[derive(Debug, Default)]
pub struct PieceBuffers {
    free: Vec<Vec<u8>>,
}

impl PieceBuffers {
    pub fn new() -> PieceBuffers {
        PieceBuffers::default()
    }

    /// A buffer of exactly `len` bytes (contents unspecified), reusing a spare one
    /// when possible. New buffers hold a whole piece plus a message header, so
    /// they fit any later use.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut v = match self.free.iter().position(|b| b.capacity() >= len) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len.max(PIECE_SIZE as usize + PIECE_HEADER_LEN)),
        };
        // Old contents are left in place (every user overwrites the whole buffer).
        v.truncate(len);
        v.resize(len, 0);
        v
    }

    /// Gives a buffer back for reuse (dropped when enough are spare or it is small).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < MAX_FREE_BUFS && buf.capacity() >= MIN_KEPT_CAPACITY {
            self.free.push(buf);
        }
    }

    /// Spare buffers held now.
    pub fn spare(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let mut b = PieceBuffers::new();
        let v = b.take(100);
        assert_eq!(v.len(), 100);
        assert!(v.capacity() >= PIECE_SIZE as usize);
        let ptr = v.as_ptr();
        b.recycle(v);
        let w = b.take(PIECE_SIZE as usize);
        assert_eq!(w.len(), PIECE_SIZE as usize);
        assert_eq!(w.as_ptr(), ptr, "the spare buffer is reused");
        b.recycle(vec![0u8; 10]);
        assert_eq!(b.spare(), 0, "small buffers are not kept");
        for _ in 0..MAX_FREE_BUFS + 5 {
            b.recycle(Vec::with_capacity(MIN_KEPT_CAPACITY));
        }
        assert_eq!(b.spare(), MAX_FREE_BUFS);
    }
}
