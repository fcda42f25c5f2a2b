//! Property/fuzz tests of `wire::file_meta`, through its public API only: the
//! tracker's `file_info` fields (size, piece size, piece hashes) come from the
//! network, so no combination of them, however extreme (sizes up to `u64::MAX`,
//! piece size 0 or 1, piece counts whose hash length wraps around `usize`), makes
//! `FileMeta::from_wire` panic or allocate more than its input holds; what it
//! accepts has consistent geometry; and valid metadata round-trips.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p wire --test fuzz_file_meta`.

use proptest::prelude::*;
use wire::file_meta::{FileMeta, MetaError, PIECE_SIZE};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A piece count whose hash length `count * 40` wraps around a 64-bit `usize` to
/// `wrapped` (`2^64 = 16 mod 40`, so `wrapped` must be `24 mod 40`): with piece
/// size 1, a file of that many bytes announces only `wrapped` hex digits.
fn wrapping_count(k: u64) -> u64 {
    // k * 2^64 + 24 is divisible by 40 when k * 16 + 24 is: k = 1, 6, 11, ...
    ((u128::from(k) << 64) + 24).div_euclid(40) as u64
}

/// Sizes at the edges: 0, 1, a piece and around it, `u64::MAX` and near it,
/// sizes whose piece count wraps the hash length, and any `u64`.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(PIECE_SIZE - 1),
        Just(PIECE_SIZE),
        Just(PIECE_SIZE + 1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 63),
        Just(wrapping_count(1)),
        (0u64..8).prop_map(|k| wrapping_count(1 + 5 * k)),
        any::<u64>(),
        0u64..10_000,
    ]
}

fn any_piece_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(40),
        Just(PIECE_SIZE),
        Just(u64::MAX),
        any::<u64>(),
        1u64..100,
    ]
}

/// Hash strings of lengths that match small counts, the wrapped lengths, or
/// nothing in particular; sometimes not hex at all.
fn any_hashes() -> impl Strategy<Value = String> {
    prop_oneof![
        (0usize..6).prop_map(|n| "ab".repeat(20 * n)),
        Just("ab".repeat(12)),
        Just("0".repeat(24)),
        "[0-9a-f]{0,200}",
        ".{0,120}",
    ]
}

/// What every accepted `FileMeta` must satisfy.
fn assert_consistent(m: &FileMeta) {
    assert!(m.piece_size > 0);
    assert_eq!(
        m.piece_count(),
        FileMeta::piece_count_for(m.size, m.piece_size)
    );
    let mut total = 0u64;
    for i in 0..m.piece_count() {
        assert_eq!(m.piece_offset(i), total, "piece {i} offset");
        let len = m.piece_len(i);
        assert!(len > 0 && len <= m.piece_size, "piece {i} length {len}");
        total += len;
    }
    assert_eq!(total, m.size);
}

proptest! {
    #![proptest_config(config())]

    /// No size, piece size or hash string makes the parser panic; what it accepts
    /// is consistent, and what it refuses gets a reason.
    #[test]
    fn extreme_geometry_never_panics(
        size in any_size(),
        piece_size in any_piece_size(),
        hashes in any_hashes(),
        sha_ok in any::<bool>(),
    ) {
        let sha = if sha_ok { SHA } else { "xyz" };
        match FileMeta::parse_wire("f", &size.to_string(), &piece_size.to_string(), sha, &hashes) {
            Ok(m) => {
                prop_assert_eq!(m.piece_count() * 40, hashes.len());
                assert_consistent(&m);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Any index, in range or not, has a defined length and offset (no overflow).
    #[test]
    fn piece_geometry_is_total(
        size in any_size(),
        piece_size in any_piece_size(),
        index in prop_oneof![any::<usize>(), 0usize..64, Just(usize::MAX)],
    ) {
        let m = FileMeta {
            name: "f".into(),
            size,
            piece_size,
            piece_hashes: Vec::new(),
            file_sha1: [0; 20],
        };
        let len = m.piece_len(index);
        prop_assert!(len <= piece_size);
        let _ = m.piece_offset(index);
        let _ = FileMeta::piece_count_for(size, piece_size);
    }

    /// Valid metadata (any size, a piece size from 1 up) encodes and decodes to itself.
    #[test]
    fn valid_metadata_round_trips(
        size in 0u64..4000,
        piece_size in 1u64..600,
        seed in any::<u8>(),
        name in ".{1,20}",
    ) {
        let count = FileMeta::piece_count_for(size, piece_size);
        let m = FileMeta {
            name,
            size,
            piece_size,
            piece_hashes: (0..count).map(|i| [seed.wrapping_add(i as u8); 20]).collect(),
            file_sha1: [seed; 20],
        };
        assert_consistent(&m);
        let back = FileMeta::parse_wire(
            &m.name,
            &m.size.to_string(),
            &m.piece_size.to_string(),
            &m.file_sha1_hex(),
            &m.piece_hashes_hex(),
        );
        prop_assert_eq!(back, Ok(m));
    }
}

/// The crash found in review: a `file_info` reply with a huge size, piece size 1
/// and 24 hex digits made `count * 40` wrap to 24 and the client abort in
/// `Vec::with_capacity` (capacity overflow).
#[test]
fn wrapped_hash_length_is_refused_with_a_reason() {
    for k in [1u64, 6, 11, 36] {
        let size = wrapping_count(k);
        assert_eq!(
            (size as usize).wrapping_mul(40),
            24,
            "k={k}: the test's own arithmetic"
        );
        let hashes = "ab".repeat(12);
        let got = FileMeta::parse_wire("f", &size.to_string(), "1", SHA, &hashes);
        assert!(
            matches!(got, Err(MetaError::TooManyPieces { .. })),
            "{got:?}"
        );
        assert!(FileMeta::from_wire("f", &size.to_string(), "1", SHA, &hashes).is_none());
    }
    let e = FileMeta::parse_wire("f", &u64::MAX.to_string(), "1", SHA, "").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "a file of {} bytes in pieces of 1 byte has too many pieces",
            u64::MAX
        )
    );
}

/// Each refusal names what is wrong.
#[test]
fn refusals_say_why() {
    let ok_hashes = "ab".repeat(20);
    let cases: [(&str, &str, &str, &str, MetaError); 7] = [
        (
            "x",
            "4",
            SHA,
            &ok_hashes,
            MetaError::BadNumber {
                field: "size",
                text: "x".into(),
            },
        ),
        (
            "4",
            "-1",
            SHA,
            &ok_hashes,
            MetaError::BadNumber {
                field: "piece_size",
                text: "-1".into(),
            },
        ),
        ("4", "0", SHA, &ok_hashes, MetaError::ZeroPieceSize),
        (
            "4",
            "4",
            "+f".repeat(20).as_str().to_owned().leak(),
            &ok_hashes,
            MetaError::BadHex { field: "file_sha1" },
        ),
        (
            "5",
            "4",
            SHA,
            &ok_hashes,
            MetaError::HashesLength {
                pieces: 2,
                want: 80,
                got: 40,
            },
        ),
        (
            "4",
            "4",
            SHA,
            "+f".repeat(20).leak(),
            MetaError::BadHex {
                field: "piece_hashes",
            },
        ),
        (
            "4",
            "4",
            SHA,
            "é".repeat(20).leak(),
            MetaError::BadHex {
                field: "piece_hashes",
            },
        ),
    ];
    for (size, piece_size, sha, hashes, want) in cases {
        assert_eq!(
            FileMeta::parse_wire("f", size, piece_size, sha, hashes),
            Err(want),
            "{size} {piece_size} {sha} {hashes}"
        );
    }
}
