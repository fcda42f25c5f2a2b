//! Formats both swarmshare binaries speak. Pure: no I/O, no sockets, so every
//! decoder here can be unit-tested and fuzzed alone.
//!
//! - [`tracker_msg`]: the line-oriented text protocol between client and tracker
//!   (requests, replies ending in `END_OF_REPLY`, field escaping, size limits).

pub mod tracker_msg;
