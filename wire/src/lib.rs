//! Formats both swarmshare binaries speak. Pure: no I/O, no sockets, so every
//! decoder here can be unit-tested and fuzzed alone.
//!
//! - [`tracker_msg`]: the line-oriented text protocol between client and tracker
//!   (requests, replies ending in `END_OF_REPLY`, field escaping, size limits).
//! - [`file_meta`]: `FileMeta`, the piece geometry and hashes of a shared file.

pub mod file_meta;
pub mod tracker_msg;
