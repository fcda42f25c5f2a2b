//! Property/fuzz tests of the binary peer protocol (`wire::peer_msg`), through its
//! public API only: no byte string makes a decoder panic or claim more bytes than
//! it was given, any chunking of a valid stream decodes to the same messages,
//! every message encodes and decodes to itself, and a control message's postcard
//! payload is rejected when the frame carries a byte more than it uses.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p wire --test fuzz_peer_msg`.

use proptest::prelude::*;
use wire::peer_msg::{
    decode, decode_header, decode_piece_header, DecodeError, Handshake, PeerMsg, RejectCode,
    HANDSHAKE_LEN, MAX_MSG_LEN, PIECE_HEADER_LEN,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn any_msg() -> impl Strategy<Value = PeerMsg> {
    prop_oneof![
        Just(PeerMsg::KeepAlive),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(PeerMsg::Bitfield),
        any::<u32>().prop_map(PeerMsg::Have),
        (any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(piece, offset, len)| PeerMsg::Request { piece, offset, len }),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(piece, offset, data)| PeerMsg::Piece {
                piece,
                offset,
                data
            }),
        (any::<u32>(), any::<u32>(), any::<u8>()).prop_map(|(piece, offset, c)| {
            PeerMsg::Reject {
                piece,
                offset,
                code: RejectCode::from_u8(c),
            }
        }),
        ".{0,64}".prop_map(PeerMsg::Error),
        any::<[u8; 32]>().prop_map(PeerMsg::Challenge),
        (proptest::collection::vec(any::<u8>(), 0..200), any::<u8>()).prop_map(|(ticket, b)| {
            PeerMsg::Auth {
                ticket,
                sig: [b; 64],
            }
        }),
    ]
}

/// Feeds `bytes` to a streaming reader in the given chunk sizes, decoding every
/// complete message as it goes, the way a connection does. Checks the decoder's
/// contract on the way; returns the messages and whether it stopped at an error.
fn stream_decode(bytes: &[u8], cuts: &[usize]) -> (Vec<PeerMsg>, Option<DecodeError>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cuts = cuts.iter().copied().chain(std::iter::repeat(usize::MAX));
    while pos < bytes.len() {
        let n = cuts.next().unwrap().max(1).min(bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        loop {
            match decode(&buf) {
                Ok(Some((msg, used))) => {
                    assert!(
                        used >= 5 && used <= buf.len(),
                        "used {used} of {}",
                        buf.len()
                    );
                    assert!(used <= 4 + MAX_MSG_LEN as usize);
                    buf.drain(..used);
                    out.push(msg);
                }
                Ok(None) => {
                    // Incomplete: never more than one bounded message is awaited.
                    if let Ok(Some(h)) = decode_header(&buf) {
                        assert!(h.wire_len() > buf.len());
                        assert!(h.len >= 1 && h.len <= MAX_MSG_LEN);
                    }
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        let _ = decode_header(&bytes);
        if let Ok(Some((_, _, data_len))) = decode_piece_header(&bytes) {
            prop_assert!(bytes.len() >= PIECE_HEADER_LEN);
            prop_assert!(data_len <= MAX_MSG_LEN as usize);
        }
        match Handshake::decode(&bytes) {
            Ok(Some(h)) => {
                prop_assert!(bytes.len() >= HANDSHAKE_LEN);
                prop_assert_eq!(&h.encode()[..], &bytes[..HANDSHAKE_LEN]);
            }
            Ok(None) => prop_assert!(bytes.len() < HANDSHAKE_LEN),
            Err(_) => {}
        }
    }

    #[test]
    fn plausible_headers_with_random_bodies_never_panic(kind in 0u8..9,
                                                        len in 0u32..300,
                                                        body in proptest::collection::vec(any::<u8>(), 0..300),
                                                        cuts in proptest::collection::vec(1usize..40, 0..20)) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let _ = stream_decode(&bytes, &cuts);
        let _ = decode_piece_header(&bytes);
    }

    #[test]
    fn random_streams_in_random_chunks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                                   cuts in proptest::collection::vec(1usize..64, 0..32)) {
        let _ = stream_decode(&bytes, &cuts);
    }

    #[test]
    fn encode_decode_round_trip(msg in any_msg()) {
        let enc = msg.encode();
        let (got, used) = decode(&enc).unwrap().expect("a whole message");
        prop_assert_eq!(used, enc.len());
        prop_assert_eq!(&got, &msg);
        // Every strict prefix is "incomplete", never an error or a message.
        for cut in 0..enc.len() {
            prop_assert_eq!(decode(&enc[..cut]), Ok(None));
        }
        if let PeerMsg::Piece { piece, offset, data } = &msg {
            prop_assert_eq!(
                decode_piece_header(&enc[..PIECE_HEADER_LEN]),
                Ok(Some((*piece, *offset, data.len())))
            );
        }
    }

    #[test]
    fn message_streams_survive_any_chunking(msgs in proptest::collection::vec(any_msg(), 0..12),
                                            cuts in proptest::collection::vec(1usize..80, 0..40),
                                            garbage in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut bytes = Vec::new();
        for m in &msgs {
            m.encode_into(&mut bytes);
        }
        let valid_len = bytes.len();
        let (got, err) = stream_decode(&bytes, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&got, &msgs);
        // Garbage after a valid stream never changes what came before it.
        bytes.extend_from_slice(&garbage);
        let (got, _) = stream_decode(&bytes, &cuts);
        prop_assert!(got.len() >= msgs.len(), "valid prefix of {valid_len} bytes lost");
        prop_assert_eq!(&got[..msgs.len()], &msgs[..]);
    }

    #[test]
    fn control_payloads_are_used_exactly(msg in any_msg(), extra in any::<u8>()) {
        // Piece data runs to the end of the frame by definition.
        prop_assume!(!matches!(msg, PeerMsg::Piece { .. }));
        let mut enc = msg.encode();
        let len = u32::from_be_bytes([enc[0], enc[1], enc[2], enc[3]]) + 1;
        enc[..4].copy_from_slice(&len.to_be_bytes());
        enc.push(extra);
        prop_assert!(
            matches!(decode(&enc), Err(DecodeError::BadPayload(_))),
            "{:?} with a trailing byte decoded as {:?}", msg, decode(&enc)
        );
    }

    #[test]
    fn handshake_round_trip(sha in any::<[u8; 20]>(), id in any::<[u8; 8]>(), cut in 0usize..HANDSHAKE_LEN) {
        let h = Handshake::new(sha, id);
        let enc = h.encode();
        prop_assert_eq!(Handshake::decode(&enc), Ok(Some(h)));
        prop_assert_eq!(Handshake::decode(&enc[..cut]), Ok(None));
    }
}

/// Regression-style edge cases around the length bound.
#[test]
fn length_bounds() {
    let mut b = (MAX_MSG_LEN + 1).to_be_bytes().to_vec();
    assert!(matches!(decode(&b), Err(DecodeError::TooLong(_))));
    b.push(4);
    assert!(matches!(decode_header(&b), Err(DecodeError::TooLong(_))));
    assert!(matches!(
        decode(&[0, 0, 0, 0]),
        Err(DecodeError::ZeroLength)
    ));
    // The longest allowed message is merely incomplete until its bytes arrive.
    let mut b = MAX_MSG_LEN.to_be_bytes().to_vec();
    b.push(1);
    assert_eq!(decode(&b), Ok(None));
    assert_eq!(Handshake::decode(&[]), Ok(None));
    assert!(Handshake::decode(b"XW").is_err());
}
