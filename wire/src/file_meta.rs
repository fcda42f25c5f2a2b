//! `FileMeta`: what the tracker knows of a shared file and what a downloader
//! needs to verify it: name, size, piece size, the SHA-1 of every piece and of
//! the whole file.

/// The piece size every swarmshare client uses (the last piece may be shorter).
pub const PIECE_SIZE: u64 = 512 * 1024;

/// Metadata of one shared file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    pub name: String,
    pub size: u64,
    pub piece_size: u64,
    /// SHA-1 of every piece, in order.
    pub piece_hashes: Vec<[u8; 20]>,
    /// SHA-1 of the whole file.
    pub file_sha1: [u8; 20],
}

impl FileMeta {
    /// Number of pieces a file of `size` bytes has with `piece_size` pieces.
    pub fn piece_count_for(size: u64, piece_size: u64) -> usize {
        if piece_size == 0 {
            return 0;
        }
        size.div_ceil(piece_size) as usize
    }

    pub fn piece_count(&self) -> usize {
        self.piece_hashes.len()
    }

    /// Byte length of piece `index` (the last may be shorter).
    pub fn piece_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.piece_size;
        self.size.saturating_sub(start).min(self.piece_size)
    }

    /// Byte offset of piece `index` in the file.
    pub fn piece_offset(&self, index: usize) -> u64 {
        index as u64 * self.piece_size
    }

    /// The whole-file SHA-1 as 40 lowercase hex characters.
    pub fn file_sha1_hex(&self) -> String {
        to_hex(&self.file_sha1)
    }

    /// All piece hashes concatenated as hex (the tracker protocol's `piece_hashes` field).
    pub fn piece_hashes_hex(&self) -> String {
        let mut s = String::with_capacity(self.piece_hashes.len() * 40);
        for h in &self.piece_hashes {
            s.push_str(&to_hex(h));
        }
        s
    }

    /// Rebuilds metadata from the tracker protocol's fields; `None` if they are inconsistent.
    pub fn from_wire(
        name: &str,
        size: &str,
        piece_size: &str,
        file_sha1: &str,
        piece_hashes: &str,
    ) -> Option<FileMeta> {
        let size: u64 = size.parse().ok()?;
        let piece_size: u64 = piece_size.parse().ok()?;
        if piece_size == 0 {
            return None;
        }
        let file_sha1 = hash_from_hex(file_sha1)?;
        let count = FileMeta::piece_count_for(size, piece_size);
        if piece_hashes.len() != count * 40 {
            return None;
        }
        let mut hashes = Vec::with_capacity(count);
        for i in 0..count {
            hashes.push(hash_from_hex(piece_hashes.get(i * 40..i * 40 + 40)?)?);
        }
        Some(FileMeta {
            name: name.to_string(),
            size,
            piece_size,
            piece_hashes: hashes,
            file_sha1,
        })
    }
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses 40 hex characters into a SHA-1 digest.
pub fn hash_from_hex(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_geometry() {
        assert_eq!(FileMeta::piece_count_for(0, PIECE_SIZE), 0);
        assert_eq!(FileMeta::piece_count_for(1, PIECE_SIZE), 1);
        assert_eq!(FileMeta::piece_count_for(PIECE_SIZE, PIECE_SIZE), 1);
        assert_eq!(FileMeta::piece_count_for(PIECE_SIZE + 1, PIECE_SIZE), 2);
    }

    #[test]
    fn wire_round_trip() {
        let m = FileMeta {
            name: "a b".into(),
            size: PIECE_SIZE + 1,
            piece_size: PIECE_SIZE,
            piece_hashes: vec![[1; 20], [0xab; 20]],
            file_sha1: [7; 20],
        };
        let back = FileMeta::from_wire(
            &m.name,
            &m.size.to_string(),
            &m.piece_size.to_string(),
            &m.file_sha1_hex(),
            &m.piece_hashes_hex(),
        )
        .unwrap();
        assert_eq!(back, m);
        assert_eq!(m.piece_len(1), 1);
        assert!(FileMeta::from_wire("x", "5", "0", &m.file_sha1_hex(), "").is_none());
        assert!(FileMeta::from_wire("x", "5", "4", &m.file_sha1_hex(), "").is_none());
    }
}
