//! `FileMeta`: what the tracker knows of a shared file and what a downloader
//! needs to verify it: name, size, piece size, the SHA-1 of every piece and of
//! the whole file.
//!
//! Sizes and counts here come from the network (a tracker's `file_info` reply)
//! or from disk, so all arithmetic on them is checked: [`FileMeta::parse_wire`]
//! refuses any geometry whose piece count or hash length does not fit, before it
//! allocates, and the geometry helpers are total (no index overflows). Hex is
//! the `hex` crate's, through [`to_hex`] and [`hash_from_hex`].

/// The piece size every swarmshare client uses (the last piece may be shorter).
pub const PIECE_SIZE: u64 = 512 * 1024;

/// Hex digits of one SHA-1 digest.
const HASH_HEX_LEN: usize = 40;

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

/// Why file metadata from the wire (or disk) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("{field} is not a non-negative integer: {text:?}")]
    BadNumber { field: &'static str, text: String },
    #[error("piece size must be greater than 0")]
    ZeroPieceSize,
    #[error("a file of {size} bytes in pieces of {piece_size} byte{} has too many pieces", if *.piece_size == 1 { "" } else { "s" })]
    TooManyPieces { size: u64, piece_size: u64 },
    #[error("{field} is not hex")]
    BadHex { field: &'static str },
    #[error("piece_hashes has {got} hex digits; {pieces} pieces need {want}")]
    HashesLength {
        pieces: usize,
        want: usize,
        got: usize,
    },
}

impl FileMeta {
    /// Number of pieces a file of `size` bytes has with `piece_size` pieces
    /// (0 for piece size 0; `usize::MAX` if the count does not fit a `usize`).
    pub fn piece_count_for(size: u64, piece_size: u64) -> usize {
        if piece_size == 0 {
            return 0;
        }
        usize::try_from(size.div_ceil(piece_size)).unwrap_or(usize::MAX)
    }

    /// The piece count of a geometry, and the length of its hashes in hex,
    /// when both fit a `usize`.
    pub fn checked_piece_count(size: u64, piece_size: u64) -> Result<usize, MetaError> {
        if piece_size == 0 {
            return Err(MetaError::ZeroPieceSize);
        }
        usize::try_from(size.div_ceil(piece_size))
            .ok()
            .filter(|n| n.checked_mul(HASH_HEX_LEN).is_some())
            .ok_or(MetaError::TooManyPieces { size, piece_size })
    }

    pub fn piece_count(&self) -> usize {
        self.piece_hashes.len()
    }

    /// Byte length of piece `index` (the last may be shorter; 0 past the end).
    pub fn piece_len(&self, index: usize) -> u64 {
        match (index as u64).checked_mul(self.piece_size) {
            Some(start) => self.size.saturating_sub(start).min(self.piece_size),
            None => 0,
        }
    }

    /// Byte offset of piece `index` in the file (saturating at `u64::MAX` for an
    /// index no file of this piece size has).
    pub fn piece_offset(&self, index: usize) -> u64 {
        (index as u64).saturating_mul(self.piece_size)
    }

    /// The whole-file SHA-1 as 40 lowercase hex characters.
    pub fn file_sha1_hex(&self) -> String {
        to_hex(&self.file_sha1)
    }

    /// All piece hashes concatenated as hex (the tracker protocol's `piece_hashes` field).
    pub fn piece_hashes_hex(&self) -> String {
        to_hex(&self.piece_hashes.concat())
    }

    /// Rebuilds metadata from the tracker protocol's fields; `None` if they are
    /// inconsistent ([`FileMeta::parse_wire`] says why).
    pub fn from_wire(
        name: &str,
        size: &str,
        piece_size: &str,
        file_sha1: &str,
        piece_hashes: &str,
    ) -> Option<FileMeta> {
        FileMeta::parse_wire(name, size, piece_size, file_sha1, piece_hashes).ok()
    }

    /// Rebuilds metadata from the tracker protocol's fields, or says which is
    /// wrong. Allocates only after the hash string's length matched the piece
    /// count, so memory is bounded by the input.
    pub fn parse_wire(
        name: &str,
        size: &str,
        piece_size: &str,
        file_sha1: &str,
        piece_hashes: &str,
    ) -> Result<FileMeta, MetaError> {
        let size = parse_number("size", size)?;
        let piece_size = parse_number("piece_size", piece_size)?;
        let count = FileMeta::checked_piece_count(size, piece_size)?;
        let file_sha1 = hash_from_hex(file_sha1).ok_or(MetaError::BadHex { field: "file_sha1" })?;
        let want = count * HASH_HEX_LEN; // checked_piece_count checked it fits
        if piece_hashes.len() != want {
            return Err(MetaError::HashesLength {
                pieces: count,
                want,
                got: piece_hashes.len(),
            });
        }
        let mut hashes = Vec::with_capacity(count);
        for digits in piece_hashes.as_bytes().chunks_exact(HASH_HEX_LEN) {
            let mut h = [0u8; 20];
            hex::decode_to_slice(digits, &mut h).map_err(|_| MetaError::BadHex {
                field: "piece_hashes",
            })?;
            hashes.push(h);
        }
        Ok(FileMeta {
            name: name.to_string(),
            size,
            piece_size,
            piece_hashes: hashes,
            file_sha1,
        })
    }
}

fn parse_number(field: &'static str, text: &str) -> Result<u64, MetaError> {
    // `u64::from_str` takes a leading `+`; the protocol has digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MetaError::BadNumber {
            field,
            text: text.to_string(),
        });
    }
    text.parse().map_err(|_| MetaError::BadNumber {
        field,
        text: text.to_string(),
    })
}

/// Lowercase hex of bytes: the one hex encoder of the project (the `hex` crate's).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses 40 hex characters into a SHA-1 digest.
pub fn hash_from_hex(s: &str) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    hex::decode_to_slice(s, &mut out).ok()?;
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
        assert_eq!(
            FileMeta::checked_piece_count(5, 0),
            Err(MetaError::ZeroPieceSize)
        );
        assert!(FileMeta::checked_piece_count(u64::MAX, 1).is_err());
        assert_eq!(FileMeta::checked_piece_count(u64::MAX, u64::MAX), Ok(1));
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
        assert_eq!(m.piece_len(2), 0);
        assert_eq!(m.piece_len(usize::MAX), 0);
        assert!(FileMeta::from_wire("x", "5", "0", &m.file_sha1_hex(), "").is_none());
        assert!(FileMeta::from_wire("x", "5", "4", &m.file_sha1_hex(), "").is_none());
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        let h = [0xa5; 20];
        assert_eq!(hash_from_hex(&to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex(&to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(hash_from_hex("a5"), None);
        assert_eq!(hash_from_hex(&"+f".repeat(20)), None);
    }
}
