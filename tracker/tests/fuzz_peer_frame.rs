//! Property/fuzz tests of the tracker-to-tracker link decoder (`peer_frame`): any
//! bytes, before or after authentication, never panic, never yield a Raft message
//! unless they are a correctly MACed frame of an authenticated link, and never make
//! the link buffer more than one handshake line (before authentication) or one
//! maximum frame plus one maximum message (after). A valid stream (small messages
//! and snapshots larger than a frame, sent in parts) cut at random points decodes to
//! exactly the messages sent; a stream with one byte flipped never decodes to
//! another message.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p tracker --test fuzz_peer_frame`.

use proptest::prelude::*;
use raft::eraftpb::{Entry, Message, MessageType};
use tracker::replication::peer_frame::{LinkEvent, LinkLimits, PeerLink, MAX_LINE};

const KEY: [u8; 32] = [3; 32];
const MAX_FRAME: usize = 4096;
const LIMITS: LinkLimits = LinkLimits {
    max_frame: MAX_FRAME,
    max_message: 4 * MAX_FRAME,
};
/// The most an open link may hold: one frame (header, payload, tag) and the
/// parts of one message.
const OPEN_BOUND: usize = 12 + MAX_FRAME + 32 + 4 * MAX_FRAME;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A snapshot of up to three frames' worth.
fn any_snapshot() -> impl Strategy<Value = Message> {
    (any::<u64>(), 0..3 * MAX_FRAME, any::<u8>()).prop_map(|(term, len, byte)| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        (m.from, m.to, m.term) = (1, 2, term);
        m.mut_snapshot().data = vec![byte; len].into();
        m
    })
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![3 => any_small_message(), 1 => any_snapshot()]
}

fn any_small_message() -> impl Strategy<Value = Message> {
    let kinds = prop_oneof![
        Just(MessageType::MsgAppend),
        Just(MessageType::MsgAppendResponse),
        Just(MessageType::MsgRequestVote),
        Just(MessageType::MsgHeartbeat),
        Just(MessageType::MsgPropose),
    ];
    let entries = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4);
    (kinds, any::<u64>(), any::<u64>(), any::<u64>(), entries).prop_map(
        |(kind, term, index, commit, entries)| {
            let mut m = Message::default();
            m.set_msg_type(kind);
            (m.from, m.to, m.term, m.index, m.commit) = (1, 2, term, index, commit);
            m.entries = entries
                .into_iter()
                .map(|data| Entry {
                    data: data.into(),
                    ..Entry::default()
                })
                .collect();
            m
        },
    )
}

/// Tracker 1 dials tracker 2; returns both ends, open.
fn open_pair() -> (PeerLink, PeerLink) {
    let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], LIMITS);
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2, 3], [2; 32], LIMITS);
    b.receive(&a.take_output()).unwrap();
    a.receive(&b.take_output()).unwrap();
    b.receive(&a.take_output()).unwrap();
    assert!(a.is_open() && b.is_open());
    (a, b)
}

/// Feeds `bytes` in `chunk`-sized pieces; returns the messages until the first error.
fn feed(link: &mut PeerLink, bytes: &[u8], chunk: usize, bound: usize) -> (Vec<Message>, bool) {
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        match link.receive(piece) {
            Ok(events) => out.extend(events.into_iter().filter_map(|e| match e {
                LinkEvent::Message(m) => Some(*m),
                LinkEvent::Authenticated { .. } => None,
            })),
            Err(_) => return (out, true),
        }
        assert!(
            link.buffered() <= bound,
            "buffered {} > {bound}",
            link.buffered()
        );
    }
    (out, false)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_before_authentication_yield_nothing(
        prefix in prop_oneof![Just(Vec::new()), Just(b"SWARMSHARE-RAFT v2 1 ".to_vec())],
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
    ) {
        let mut b = PeerLink::accept(KEY, 2, vec![1, 2, 3], [2; 32], LIMITS);
        let input = [prefix, bytes].concat();
        let (msgs, _) = feed(&mut b, &input, chunk, MAX_LINE);
        prop_assert!(msgs.is_empty());
        prop_assert!(!b.is_open());
    }

    #[test]
    fn random_bytes_after_a_valid_greeting_yield_nothing(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
    ) {
        let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], LIMITS);
        let mut b = PeerLink::accept(KEY, 2, vec![1, 2, 3], [2; 32], LIMITS);
        b.receive(&a.take_output()).unwrap();
        let (msgs, _) = feed(&mut b, &bytes, chunk, MAX_LINE);
        prop_assert!(msgs.is_empty());
        prop_assert!(!b.is_open());
    }

    #[test]
    fn random_bytes_on_an_open_link_never_pass_the_mac(
        bytes in proptest::collection::vec(any::<u8>(), 0..8192),
        chunk in 1usize..3000,
    ) {
        let (_, mut b) = open_pair();
        let (msgs, _) = feed(&mut b, &bytes, chunk, OPEN_BOUND);
        prop_assert!(msgs.is_empty());
    }

    #[test]
    fn a_valid_stream_decodes_exactly_and_a_flipped_byte_never_forges(
        sent in proptest::collection::vec(any_message(), 1..6),
        chunk in 1usize..500,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut a, mut b) = open_pair();
        for m in &sent {
            a.send(m).unwrap();
        }
        let stream = a.take_output();
        let mut damaged = stream.clone();
        let at = flip.index(damaged.len());
        damaged[at] ^= 1 << bit;

        let (got, failed) = feed(&mut b, &stream, chunk, OPEN_BOUND);
        prop_assert!(!failed);
        prop_assert_eq!(&got, &sent);

        let (_, mut b) = open_pair();
        let (got, failed) = feed(&mut b, &damaged, chunk, OPEN_BOUND);
        prop_assert!(got.len() < sent.len(), "a damaged stream decoded whole");
        prop_assert!(failed || got.len() < sent.len());
        prop_assert_eq!(&got[..], &sent[..got.len()], "only the intact prefix is delivered");
    }
}
