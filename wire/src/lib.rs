//! Formats both swarmshare binaries speak. No sockets and no state: every
//! decoder here can be unit-tested and fuzzed alone (the one I/O is reading
//! `tracker_info.txt` in [`tracker_info::load`]).
//!
//! - [`command`]: the table of tracker commands (name, arguments, whether each
//!   changes state or carries a password) and their typed form.
//! - [`tracker_msg`]: the line-oriented text protocol between client and tracker
//!   (requests, replies ending in `END_OF_REPLY`, field escaping, size limits).
//! - [`peer_msg`]: the binary peer protocol (handshake, bitfield, have, request,
//!   piece, reject, error), length-prefixed framing with bounds.
//! - [`tracker_info`]: the `tracker_info.txt` list of trackers.
//! - [`file_meta`]: `FileMeta`, the piece geometry and hashes of a shared file.
//! - [`pieces`]: `PieceIndex` (an index checked against the piece count) and
//!   `Bitfield` (a set of pieces in its wire form).
//! - [`ticket`]: download tickets a tracker signs (Ed25519) and seeders check
//!   offline, and the peer handshake's challenge answer.

pub mod command;
pub mod file_meta;
pub mod peer_msg;
pub mod pieces;
pub mod ticket;
pub mod tracker_info;
pub mod tracker_msg;

/// How many cases each proptest fuzz target of the workspace runs: the
/// `SWARMSHARE_FUZZ_CASES` environment variable, 2000 when unset or unreadable.
/// (One home for the knob the README's fuzzing commands set.)
pub fn fuzz_cases() -> u32 {
    std::env::var("SWARMSHARE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}
