//! Property/fuzz tests of the tracker wire format: no input makes the decoders
//! panic, and everything encoded decodes to itself.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p wire --test fuzz_tracker_msg`.

use proptest::prelude::*;
use wire::tracker_msg::{
    decode_fields, encode_fields, LineFramer, Reply, ReplyReader, Request, WireError,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Request::decode(&bytes);
    }

    #[test]
    fn request_round_trips(request_id in proptest::option::of("[^\\p{Cc}]{1,20}"),
                           token in proptest::option::of("[0-9a-f]{32}"),
                           command in "\\PC{1,20}",
                           args in proptest::collection::vec(".*", 0..6)) {
        let req = Request { request_id, token, command, args };
        let enc = req.encode();
        prop_assert_eq!(enc.iter().filter(|&&b| b == b'\n').count(), 1);
        prop_assert_eq!(Request::decode(&enc).unwrap(), req);
    }

    #[test]
    fn fields_round_trip(fields in proptest::collection::vec(".*", 1..8)) {
        let line = encode_fields(&fields);
        prop_assert!(!line.contains('\n'));
        prop_assert_eq!(decode_fields(&line).unwrap(), fields);
    }

    #[test]
    fn reply_reader_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut r = ReplyReader::new();
        for c in &chunks {
            r.push(c);
            while let Some(_reply) = r.next_reply() {}
        }
    }

    #[test]
    fn replies_survive_any_split(head in proptest::collection::vec(".*", 0..3),
                                 rows in proptest::collection::vec(proptest::collection::vec(".*", 1..4), 0..5),
                                 split in any::<prop::sample::Index>()) {
        let reply = Reply::Ok { head, rows };
        let enc = reply.encode();
        let at = split.index(enc.len() + 1);
        let mut r = ReplyReader::new();
        r.push(&enc[..at]);
        let first = r.next_reply();
        r.push(&enc[at..]);
        let got = match first {
            Some(x) => x,
            None => r.next_reply().expect("a whole reply"),
        };
        prop_assert_eq!(got.unwrap(), reply);
    }

    #[test]
    fn framer_memory_is_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let max = 100;
        let mut f = LineFramer::new(max);
        for c in &chunks {
            f.push(c);
            while let Some(line) = f.next_line() {
                match line {
                    Ok(l) => prop_assert!(l.len() <= max && l.ends_with(b"\n")),
                    Err(e) => prop_assert_eq!(e, WireError::TooLong { max }),
                }
            }
            prop_assert!(f.pending() <= max);
        }
    }
}
