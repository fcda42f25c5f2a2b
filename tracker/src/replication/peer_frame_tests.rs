//! Tests of the tracker-to-tracker link: the handshake, framing (a message in one
//! frame or split into parts), and every way an outsider or a damaged stream is
//! refused before a Raft message is decoded.

use super::*;
use raft::eraftpb::MessageType;

const KEY: [u8; 32] = [7; 32];
const MAX: usize = 1 << 16;
const LIMITS: LinkLimits = LinkLimits {
    max_frame: MAX,
    max_message: 1 << 20,
};

fn vote(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// Runs the handshake between tracker 1 (dialling) and tracker 2.
fn pair(acceptor_key: [u8; 32]) -> (PeerLink, PeerLink, Result<(), LinkError>) {
    pair_with(acceptor_key, LIMITS)
}

fn pair_with(
    acceptor_key: [u8; 32],
    limits: LinkLimits,
) -> (PeerLink, PeerLink, Result<(), LinkError>) {
    let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], limits);
    let mut b = PeerLink::accept(acceptor_key, 2, vec![1, 2, 3], [2; 32], limits);
    let result = (|| {
        let ev = b.receive(&a.take_output())?;
        assert!(ev.is_empty(), "acceptor is not open before the proof");
        let ev = a.receive(&b.take_output())?;
        assert_eq!(ev, vec![LinkEvent::Authenticated { peer: 2 }]);
        let ev = b.receive(&a.take_output())?;
        assert_eq!(ev, vec![LinkEvent::Authenticated { peer: 1 }]);
        Ok(())
    })();
    (a, b, result)
}

fn messages(events: Vec<LinkEvent>) -> Vec<Message> {
    events
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Message(m) => Some(*m),
            LinkEvent::Authenticated { .. } => None,
        })
        .collect()
}

#[test]
fn handshake_then_messages_both_ways_even_byte_by_byte() {
    let (mut a, mut b, ok) = pair(KEY);
    ok.unwrap();
    assert_eq!((a.peer(), b.peer()), (Some(2), Some(1)));
    for t in 1..=3 {
        a.send(&vote(1, 2, t)).unwrap();
    }
    let bytes = a.take_output();
    let mut got = Vec::new();
    for byte in &bytes {
        got.extend(messages(b.receive(std::slice::from_ref(byte)).unwrap()));
    }
    assert_eq!(got, vec![vote(1, 2, 1), vote(1, 2, 2), vote(1, 2, 3)]);
    b.send(&vote(2, 1, 9)).unwrap();
    assert_eq!(
        messages(a.receive(&b.take_output()).unwrap()),
        vec![vote(2, 1, 9)]
    );
}

#[test]
fn a_wrong_key_fails_on_both_sides() {
    let (_, _, result) = pair([8; 32]);
    assert_eq!(result, Err(LinkError::BadProof));
    // An outsider dialling a real tracker cannot produce the initiator's proof.
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    let mut outsider = PeerLink::connect([9; 32], 1, 2, [1; 32], LIMITS);
    b.receive(&outsider.take_output()).unwrap();
    let reply = b.take_output();
    assert!(is_peer_greeting(&reply));
    assert_eq!(outsider.receive(&reply), Err(LinkError::BadProof));
    let forged_proof = format!("{}\n", hex::encode([0u8; 32]));
    assert_eq!(b.receive(forged_proof.as_bytes()), Err(LinkError::BadProof));
    assert_eq!(b.receive(b"anything"), Err(LinkError::Closed));
    assert!(!b.is_open());
}

#[test]
fn frames_before_authentication_are_never_decoded() {
    let payload = vote(1, 2, 100).write_to_bytes().unwrap();
    let mut raw = (payload.len() as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&0u64.to_be_bytes());
    raw.extend_from_slice(&payload);
    raw.extend_from_slice(&[0; 32]);
    // Without a greeting the bytes are at most a (bounded) handshake line, never a message.
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    match b.receive(&raw) {
        Ok(events) => assert!(events.is_empty()),
        Err(e) => assert!(
            matches!(e, LinkError::BadLine(_) | LinkError::LineTooLong),
            "{e}"
        ),
    }
    assert!(!b.is_open());
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    assert_eq!(b.receive(&raw.repeat(10)), Err(LinkError::LineTooLong));
    // After a valid greeting, a frame instead of the proof line is refused too.
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], LIMITS);
    b.receive(&a.take_output()).unwrap();
    assert!(b.receive(&raw.repeat(10)).is_err());
    assert!(!b.is_open());
}

#[test]
fn handshake_lines_are_bounded_and_checked() {
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    assert_eq!(b.receive(&[b'A'; MAX_LINE]), Err(LinkError::LineTooLong));
    let hello = |no: u64| format!("{GREETING_PREFIX}{no} {}\n", hex::encode([1; 32]));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    assert_eq!(b.receive(hello(5).as_bytes()), Err(LinkError::NotMember(5)));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    assert_eq!(b.receive(hello(2).as_bytes()), Err(LinkError::NotMember(2)));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    assert!(matches!(
        b.receive(b"login x y\n"),
        Err(LinkError::BadLine(_))
    ));
    // The dialler checks it reached the tracker it meant.
    let mut a = PeerLink::connect(KEY, 1, 3, [1; 32], LIMITS);
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2, 3], [2; 32], LIMITS);
    b.receive(&a.take_output()).unwrap();
    let err = a.receive(&b.take_output()).unwrap_err();
    assert_eq!(
        err,
        LinkError::WrongPeer {
            expected: 3,
            got: 2
        }
    );
}

#[test]
fn tampered_replayed_oversized_or_misaddressed_frames_close_the_link() {
    let (mut a, mut b, ok) = pair(KEY);
    ok.unwrap();
    a.send(&vote(1, 2, 1)).unwrap();
    let mut frame = a.take_output();
    frame[HEADER_LEN + 2] ^= 1;
    assert!(matches!(
        b.receive(&frame),
        Err(LinkError::BadTag { seq: 0 })
    ));

    let (mut a, mut b, _) = pair(KEY);
    a.send(&vote(1, 2, 1)).unwrap();
    let frame = a.take_output();
    assert_eq!(messages(b.receive(&frame).unwrap()).len(), 1);
    assert!(
        matches!(b.receive(&frame), Err(LinkError::BadTag { seq: 1 })),
        "replay"
    );

    let (_, mut b, _) = pair(KEY);
    let header = Header {
        len: MAX + 1,
        rest: 0,
    }
    .encode();
    let err = b.receive(&header).unwrap_err();
    assert_eq!(
        err,
        LinkError::FrameTooLarge {
            len: MAX + 1,
            max: MAX
        }
    );

    let (mut a, mut b, _) = pair(KEY);
    a.send(&vote(3, 2, 1)).unwrap();
    assert!(matches!(
        b.receive(&a.take_output()),
        Err(LinkError::Misaddressed { .. })
    ));
    assert_eq!(
        PeerLink::connect(KEY, 1, 2, [1; 32], LIMITS).send(&vote(1, 2, 1)),
        Err(LinkError::NotOpen)
    );
}

/// Limits small enough that a few-kilobyte snapshot takes several frames.
const SMALL: LinkLimits = LinkLimits {
    max_frame: 1000,
    max_message: 8000,
};

/// A snapshot message from 1 to 2 whose encoding is exactly `encoded` bytes.
fn snapshot_of_size(encoded: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (1, 2, 4);
    let mut data_len = encoded;
    for _ in 0..8 {
        m.mut_snapshot().data = vec![0x5a; data_len].into();
        let size = m.compute_size() as usize;
        if size == encoded {
            return m;
        }
        data_len = (data_len + encoded).saturating_sub(size);
    }
    panic!("no snapshot message encodes to {encoded} bytes");
}

/// The frames of a stream, each header + payload + tag.
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let len = Header::decode(rest).len;
        let (frame, tail) = rest.split_at(HEADER_LEN + len + TAG_LEN);
        out.push(frame);
        rest = tail;
    }
    out
}

#[test]
fn a_message_larger_than_a_frame_is_split_and_reassembled() {
    let (mut a, mut b, ok) = pair_with(KEY, SMALL);
    ok.unwrap();
    let snap = snapshot_of_size(4321);
    a.send(&vote(1, 2, 1)).unwrap();
    a.send(&snap).unwrap();
    a.send(&vote(1, 2, 2)).unwrap();
    let stream = a.take_output();
    let parts: Vec<usize> = frames(&stream)
        .iter()
        .map(|f| Header::decode(f).len)
        .collect();
    let snap_parts = vec![1000, 1000, 1000, 1000, 321];
    assert_eq!(parts[1..6], snap_parts, "{parts:?}");
    assert_eq!(parts.len(), 7);
    let mut got = Vec::new();
    for piece in stream.chunks(37) {
        got.extend(messages(b.receive(piece).unwrap()));
        assert!(b.buffered() <= SMALL.max_message + HEADER_LEN + SMALL.max_frame + TAG_LEN);
    }
    assert_eq!(got, vec![vote(1, 2, 1), snap, vote(1, 2, 2)]);
    assert_eq!(b.buffered(), 0);
}

#[test]
fn exactly_max_frame_is_one_frame_and_one_byte_more_is_two() {
    let (mut a, mut b, _) = pair_with(KEY, SMALL);
    for (size, frame_count) in [(SMALL.max_frame, 1), (SMALL.max_frame + 1, 2)] {
        let snap = snapshot_of_size(size);
        a.send(&snap).unwrap();
        let stream = a.take_output();
        assert_eq!(frames(&stream).len(), frame_count, "{size} bytes");
        assert_eq!(stream.len(), size + frame_count * (HEADER_LEN + TAG_LEN));
        assert_eq!(messages(b.receive(&stream).unwrap()), vec![snap]);
    }
}

/// A snapshot sent in three frames, and the open link that should receive them.
fn split_snapshot_frames() -> (PeerLink, Vec<Vec<u8>>) {
    let (mut a, b, ok) = pair_with(KEY, SMALL);
    ok.unwrap();
    a.send(&snapshot_of_size(2500)).unwrap();
    let stream = a.take_output();
    let parts = frames(&stream).into_iter().map(<[u8]>::to_vec).collect();
    (b, parts)
}

#[test]
fn a_forged_misordered_dropped_or_replayed_part_closes_the_link() {
    let (mut b, parts) = split_snapshot_frames();
    assert_eq!(parts.len(), 3);
    let mut forged = parts.clone();
    forged[1][HEADER_LEN + 10] ^= 0x80;
    // Parts (1000, 1000, 500 bytes) announce 1500, 500 and 0 bytes after them: a
    // part out of place disagrees with its header; one with the right header but
    // forged bytes fails its MAC.
    let cases: [(&str, Vec<&Vec<u8>>, LinkError); 4] = [
        (
            "forged",
            forged.iter().collect(),
            LinkError::BadTag { seq: 1 },
        ),
        (
            "misordered",
            vec![&parts[0], &parts[2], &parts[1]],
            LinkError::BadPart {
                seq: 1,
                expected: 1500,
            },
        ),
        (
            "dropped",
            vec![&parts[0], &parts[2]],
            LinkError::BadPart {
                seq: 1,
                expected: 1500,
            },
        ),
        (
            "replayed",
            vec![&parts[0], &parts[1], &parts[1]],
            LinkError::BadPart {
                seq: 2,
                expected: 500,
            },
        ),
    ];
    for (what, order, expected) in cases {
        let (mut b2, _) = split_snapshot_frames();
        let stream: Vec<u8> = order.into_iter().flatten().copied().collect();
        assert_eq!(b2.receive(&stream), Err(expected), "{what}");
        assert_eq!(b2.buffered(), 0, "{what}: the parts are dropped");
        assert_eq!(b2.receive(&parts[0]), Err(LinkError::Closed));
    }
    // A part MACed for another position fails even where its header fits.
    let (mut b2, _) = split_snapshot_frames();
    let (mut a, _, _) = pair_with(KEY, SMALL);
    a.send_seq = 5;
    a.queue_part(Bytes::from(vec![0x5a; 1000]), 1500);
    assert_eq!(
        b2.receive(&a.take_output()),
        Err(LinkError::BadTag { seq: 0 })
    );
    // A stream cut after a part delivers nothing (the link waits for the rest).
    let events = b.receive(&[&parts[0][..], &parts[1][..]].concat()).unwrap();
    assert!(messages(events).is_empty());
    assert!(b.buffered() >= 2 * SMALL.max_frame);
}

#[test]
fn a_part_that_does_not_continue_its_message_closes_the_link() {
    // MACed by the real key, so only the part checks can refuse them.
    let cases: [(&[(usize, usize)], u64); 3] = [
        // A new message starts while 500 bytes of the first were still to come.
        (&[(100, 500), (10, 0)], 500),
        // A later part longer than what was announced.
        (&[(100, 500), (501, 0)], 500),
        // An empty part that is not the last one.
        (&[(0, 500)], 0),
    ];
    for (parts, expected) in cases {
        let (mut a, mut b, _) = pair_with(KEY, SMALL);
        for &(len, rest) in parts {
            a.queue_part(Bytes::from(vec![1u8; len]), rest);
        }
        let seq = parts.len() as u64 - 1;
        assert_eq!(
            b.receive(&a.take_output()),
            Err(LinkError::BadPart { seq, expected }),
            "{parts:?}"
        );
    }
}

#[test]
fn the_message_cap_is_enforced_from_the_first_header() {
    let (_, mut b, _) = pair_with(KEY, SMALL);
    let header = Header {
        len: 10,
        rest: SMALL.max_message as u64 - 9,
    }
    .encode();
    let err = b.receive(&header).unwrap_err();
    assert_eq!(
        err,
        LinkError::MessageTooLarge {
            len: SMALL.max_message as u64 + 1,
            max: SMALL.max_message
        }
    );
    assert_eq!(b.buffered(), 0);
    // A rest near u64::MAX does not wrap around the cap.
    let (_, mut b, _) = pair_with(KEY, SMALL);
    let header = Header {
        len: 10,
        rest: u64::MAX - 5,
    };
    assert!(matches!(
        b.receive(&header.encode()),
        Err(LinkError::MessageTooLarge { .. })
    ));
    // The sender refuses what the receiver would, and queues nothing of it.
    let (mut a, mut b, _) = pair_with(KEY, SMALL);
    let exact = snapshot_of_size(SMALL.max_message);
    a.send(&exact).unwrap();
    assert_eq!(messages(b.receive(&a.take_output()).unwrap()), vec![exact]);
    let err = a
        .send(&snapshot_of_size(SMALL.max_message + 1))
        .unwrap_err();
    assert!(matches!(err, LinkError::MessageTooLarge { .. }), "{err}");
    assert_eq!(a.unsent(), 0);
}

#[test]
fn a_tracker_of_another_link_version_is_told_so() {
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], LIMITS);
    let old = format!("SWARMSHARE-RAFT v1 1 {}\n", hex::encode([1; 32]));
    assert!(is_peer_greeting(old.as_bytes()));
    let err = b.receive(old.as_bytes()).unwrap_err();
    assert_eq!(err, LinkError::Version("v1".to_string()));
    assert!(err.to_string().contains("same link version"), "{err}");
    assert_eq!(GREETING_PREFIX, format!("{ROUTE_PREFIX}{LINK_VERSION} "));
}

#[test]
fn output_is_written_as_the_writer_takes_it() {
    /// A socket that takes at most `per_write` bytes a call.
    struct Trickle {
        got: Vec<u8>,
        per_write: usize,
    }
    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.per_write);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Parts longer than COPY_PART are queued as slices of the encoding.
    let limits = LinkLimits {
        max_frame: 2 * COPY_PART,
        max_message: 8 * COPY_PART,
    };
    let (mut a, mut b, _) = pair_with(KEY, limits);
    let sent = [
        vote(1, 2, 1),
        snapshot_of_size(5 * COPY_PART),
        vote(1, 2, 3),
    ];
    for m in &sent {
        a.send(m).unwrap();
    }
    let queued = a.unsent();
    let mut sock = Trickle {
        got: Vec::new(),
        per_write: 333,
    };
    for _ in 0..queued {
        if a.unsent() == 0 {
            break;
        }
        let before = a.unsent();
        let n = a.write_to(&mut sock).unwrap();
        assert!(n > 0 && n <= 333 && a.unsent() == before - n);
    }
    assert_eq!(sock.got.len(), queued);
    assert_eq!(messages(b.receive(&sock.got).unwrap()), sent.to_vec());
}

#[test]
fn a_large_message_goes_in_parts_of_at_most_send_part_under_the_default_limits() {
    let (mut a, _, ok) = pair_with(KEY, LinkLimits::default());
    ok.unwrap();
    // The receiver accepts no frame longer than SEND_PART.
    let strict = LinkLimits {
        max_frame: SEND_PART,
        max_message: 4 * SEND_PART,
    };
    let (_, mut b, ok) = pair_with(KEY, strict);
    ok.unwrap();
    let mut snap = snapshot_of_size(2 * SEND_PART + 5);
    snap.mut_snapshot().mut_metadata().index = 300;
    snap.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    a.send(&snap).unwrap();
    let stream = a.take_output();
    let parts: Vec<usize> = frames(&stream)
        .iter()
        .map(|f| Header::decode(f).len)
        .collect();
    assert!(parts.iter().all(|&p| p <= SEND_PART), "{parts:?}");
    let overhead = parts.len() * (HEADER_LEN + TAG_LEN);
    assert_eq!(stream.len() - overhead, snap.compute_size() as usize);
    assert_eq!(messages(b.receive(&stream).unwrap()), vec![snap]);
}

#[test]
fn a_spliced_snapshot_encoding_decodes_to_the_same_message() {
    for (data_len, with_meta) in [(SPLICE_SNAPSHOT + 1, true), (300 << 10, false)] {
        let mut m = vote(1, 2, 7);
        m.set_msg_type(MessageType::MsgSnapshot);
        (m.commit, m.reject_hint) = (9, 4);
        m.mut_snapshot().data = vec![0x33; data_len].into();
        if with_meta {
            m.mut_snapshot().mut_metadata().term = 6;
        }
        let parts = encode(&m).unwrap();
        assert_eq!(parts.len(), if with_meta { 3 } else { 1 });
        let joined: Vec<u8> = parts.concat();
        assert_eq!(Message::parse_from_bytes(&joined).unwrap(), m);
    }
}
