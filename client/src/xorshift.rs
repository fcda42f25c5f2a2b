//! `XorShift`: the small, fast, non-cryptographic random numbers the client uses
//! for tie-breaks (which of the rarest pieces to ask for) and for seeding each
//! download's picker. Nothing secret depends on it.

/// A xorshift64 generator.
#[derive(Debug, Clone)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A generator with a fixed seed (tests, and pickers seeded by their owner).
    pub fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point.
        XorShift { state: seed | 1 }
    }

    /// A generator seeded from the clock, the process id and std's random hasher keys.
    pub fn from_entropy() -> XorShift {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        XorShift::new(h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_no_zero_state() {
        let (mut a, mut b) = (XorShift::new(42), XorShift::new(42));
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        let mut z = XorShift::new(0);
        assert!((0..8).all(|_| z.next_u64() != 0));
        assert_ne!(XorShift::from_entropy().next_u64(), 0);
    }
}
