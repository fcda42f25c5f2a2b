//! Property/fuzz tests of `wire::ticket`, through its public API only: tickets
//! and challenge answers come from other peers, so no byte string makes
//! `Ticket::decode`/`from_hex` panic or accept trailing bytes; any change to a
//! signed ticket's bytes is refused by `verify`; valid tickets round-trip.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p wire --test fuzz_ticket`.

use proptest::prelude::*;
use wire::ticket::{new_key_pair, Ticket, TicketBody, TicketError, MAX_TICKET_LEN};

fn config() -> ProptestConfig {
    let cases = std::env::var("SWARMSHARE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        match Ticket::decode(&bytes) {
            Ok(t) => prop_assert_eq!(Ticket::decode(&t.encode()), Ok(t.clone())),
            Err(TicketError::TooLong) => prop_assert!(bytes.len() > MAX_TICKET_LEN),
            Err(_) => {}
        }
        let _ = Ticket::from_hex(&String::from_utf8_lossy(&bytes));
        let _ = Ticket::from_hex(&hex::encode(&bytes));
    }

    #[test]
    fn any_flipped_byte_is_refused(
        user in ".{0,40}",
        group in ".{0,40}",
        expires in any::<u64>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let tracker = new_key_pair().unwrap();
        let holder = new_key_pair().unwrap();
        let t = TicketBody {
            user,
            group,
            file_sha1: [5; 20],
            holder: holder.verifying_key().to_bytes(),
            expires,
        }
        .sign(&tracker);
        let mut bytes = t.encode();
        prop_assert_eq!(Ticket::decode(&bytes).unwrap(), t.clone());
        prop_assert!(t.verify(&tracker.verifying_key(), 0).is_ok());
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(bad) = Ticket::decode(&bytes) {
            prop_assert!(bad.verify(&tracker.verifying_key(), 0).is_err());
        }
    }
}
