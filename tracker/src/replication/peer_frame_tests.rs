//! Tests of the tracker-to-tracker link: the handshake, framing, and every way an
//! outsider or a damaged stream is refused before a Raft message is decoded.

use super::*;
use raft::eraftpb::MessageType;

const KEY: [u8; 32] = [7; 32];
const MAX: usize = 1 << 16;

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
    let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], MAX);
    let mut b = PeerLink::accept(acceptor_key, 2, vec![1, 2, 3], [2; 32], MAX);
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
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    let mut outsider = PeerLink::connect([9; 32], 1, 2, [1; 32], MAX);
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
    raw.extend_from_slice(&payload);
    raw.extend_from_slice(&[0; 32]);
    // Without a greeting the bytes are at most a (bounded) handshake line, never a message.
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    match b.receive(&raw) {
        Ok(events) => assert!(events.is_empty()),
        Err(e) => assert!(
            matches!(e, LinkError::BadLine(_) | LinkError::LineTooLong),
            "{e}"
        ),
    }
    assert!(!b.is_open());
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    assert_eq!(b.receive(&raw.repeat(10)), Err(LinkError::LineTooLong));
    // After a valid greeting, a frame instead of the proof line is refused too.
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    let mut a = PeerLink::connect(KEY, 1, 2, [1; 32], MAX);
    b.receive(&a.take_output()).unwrap();
    assert!(b.receive(&raw.repeat(10)).is_err());
    assert!(!b.is_open());
}

#[test]
fn handshake_lines_are_bounded_and_checked() {
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    assert_eq!(b.receive(&[b'A'; MAX_LINE]), Err(LinkError::LineTooLong));
    let hello = |no: u64| format!("{GREETING_PREFIX}{no} {}\n", hex::encode([1; 32]));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    assert_eq!(b.receive(hello(5).as_bytes()), Err(LinkError::NotMember(5)));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    assert_eq!(b.receive(hello(2).as_bytes()), Err(LinkError::NotMember(2)));
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2], [2; 32], MAX);
    assert!(matches!(
        b.receive(b"login x y\n"),
        Err(LinkError::BadLine(_))
    ));
    // The dialler checks it reached the tracker it meant.
    let mut a = PeerLink::connect(KEY, 1, 3, [1; 32], MAX);
    let mut b = PeerLink::accept(KEY, 2, vec![1, 2, 3], [2; 32], MAX);
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
    frame[6] ^= 1;
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
    let header = (MAX as u32 + 1).to_be_bytes();
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
        PeerLink::connect(KEY, 1, 2, [1; 32], MAX).send(&vote(1, 2, 1)),
        Err(LinkError::NotOpen)
    );
}
