//! Replication across hosts (`--replication raft`, issue 13): the parts that need no
//! socket, ready for the tracker's mio loop to drive.
//!
//! - [`node`]: `RaftNode`, one tracker's replica (raft-rs `RawNode`), sans-IO: tick,
//!   step, propose, `handle_ready` -> `Actions` (persist, send, apply, advance); the
//!   `StateMachine` trait the store plugs into; proposal deadlines (no quorum).
//! - [`storage`]: `RaftStorage`, raft-rs's `Storage` durable in `raft<N>.db`.
//! - [`raft_writer`]: `RaftWriter`, the thread that makes staged entries durable
//!   while the loop goes on (raft-rs's async ready).
//! - [`peer_frame`]: the tracker-to-tracker link on the client port: a distinct first
//!   line, an HMAC-SHA256 challenge-response over the cluster key, then MACed,
//!   length-prefixed frames each holding one protobuf Raft message.
//! - [`cluster_key`]: the 32-byte cluster key file (0600) in the data dir.
//! - [`raft_log`]: raft-rs's slog output into the `log` crate.
//! - [`machine`]: `LogMachine`, the state machine: committed entries appended to this
//!   tracker's `sync_log.txt` (no fsync: Raft's log is the durable copy), then
//!   applied through `store::apply`; snapshots. [`log_tail`]: a log tail lost with
//!   the OS written again from Raft's log at start.
//! - [`restore`]: `RestoreJob`, a received snapshot's files written off the loop.
//! - [`driver`]: `RaftDriver`, the node on the server's mio loop: peer links, tick,
//!   each `Ready` in order. [`start`]: opening it all at start-up. [`tracker_list`]:
//!   tracker_info.txt read again while the tracker runs (membership without restarts).
//!
//! The server's side (staging, proposing, replying once applied) is
//! `server_raft.rs`. Single-host `shared-log` replication is `sync_log` / `server`.

// raft-rs's protobuf structs carry hidden fields; setting fields after `default()`
// is how they are built (as in raft-rs's own examples).
#![allow(clippy::field_reassign_with_default)]

pub mod cluster_key;
pub mod driver;
pub mod log_tail;
pub mod machine;
pub mod node;
pub mod peer_frame;
pub mod raft_log;
pub mod raft_writer;
pub mod restore;
pub mod start;
pub mod storage;
pub mod tracker_list;
