//! The swarmshare client as a library, so the binary (`main.rs`) stays a thin
//! argument parser and each concern has one module.
//!
//! - [`shell`]: line parsing (double quotes), the command table, local validation.
//! - [`tracker_link`]: tracker list, connect/failover, cached session, re-login.
//! - [`controller`]: the client's behaviour as a sans-IO core: events in, actions
//!   out (the running command, internal tracker requests, sharing, download
//!   start/resume/peer refresh, output texts, timers with an injected clock).
//! - [`event_loop`]: the thin mio poll loop around the controller (tracker link,
//!   peer server, peers, signals): readiness in as events, actions carried out.
//! - [`stdin`]: the stdin thread (bounded lines, rustyline on a terminal).
//! - [`picker`]: `PiecePicker`, rarest first with endgame; pure.
//! - [`storage`]: piece reads/writes at offsets, temp file + rename, resume state.
//! - [`hasher`]: the small thread pool for SHA-1 and disk work.
//! - [`registry`]: `.uploads_registry`, what this client shares.
//! - [`user_state`]: the logged-in user's state dir (`<state-dir>/users/<user>/`),
//!   and moving the old per-client layout to the first user.
//! - [`downloads`]: one download's state and its `show_downloads` line.
//! - [`peer_conn`]: one peer connection: I/O, framing, its phase and role.
//! - [`fetch_peer`]: `FetchPeer`, the download side of one connection as a state
//!   machine without I/O (handshake -> bitfield -> active; validated piece indices).
//! - [`transfers`]: `Transfers`, the narrow interface between the event loop and all
//!   peer-to-peer work (facade, connection slab, dispatch); its submodules
//!   `transfers::serving` (the peer-server side) and `transfers::fetching` (the
//!   download side) hold the work.
//! - [`limits`]: `RATE` parsing, the token bucket and `RateGate` of the bandwidth limits; pure.
//! - [`super_seed`]: `SuperSeed`, which requests a full seeder answers first under
//!   an upload limit (each piece out about once); pure.
//! - [`buffers`]: `PieceBuffers`, the free list that recycles piece buffers.
//! - [`private_file`]: files created exclusively (O_EXCL|O_NOFOLLOW, 0600, random
//!   names), atomic replace, 0700 directories.
//! - [`tracker_keys`]: the trackers' ticket keys pinned in the state dir.
//! - [`xorshift`]: `XorShift`, the non-cryptographic random numbers for tie-breaks.

pub mod buffers;
pub mod controller;
pub mod downloads;
pub mod event_loop;
pub mod fetch_peer;
pub mod hasher;
pub mod limits;
pub mod peer_conn;
pub mod picker;
pub mod private_file;
pub mod registry;
pub mod shell;
pub mod stdin;
pub mod storage;
pub mod super_seed;
pub mod tracker_keys;
pub mod tracker_link;
pub mod transfers;
pub mod user_state;
pub mod xorshift;
