//! Deterministic randomness received as input.
//!
//! The core never draws entropy itself: an execution receives a seed in its
//! `ExecutionStarted` event and every random value (`States.MathRandom`,
//! `States.UUID`, retry jitter, task tokens, child executions' seeds) is
//! derived from it ([`Secrets`]), so a replay produces the same values.

/// The secrets of one execution, derived from its seed with SHA-256 under
/// distinct labels, so that no value an execution hands out reveals
/// another: the random stream (`States.UUID`, `States.MathRandom`, jitter)
/// starts from one derived state, and task tokens and child seeds are
/// keyed hashes of another. Knowing every random value drawn (the stream's
/// state can be worked back from one SplitMix64 output) gives neither the
/// seed nor any token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    seed: u64,
}

impl Secrets {
    /// The secrets of the execution with this seed.
    pub fn new(seed: u64) -> Secrets {
        Secrets { seed }
    }

    fn digest(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update(label.as_bytes());
        hash.update([0u8]);
        hash.update(self.seed.to_le_bytes());
        for part in parts {
            // Length-prefixed: no two lists of parts hash the same bytes.
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    /// The first state of the execution's random stream.
    pub fn stream_start(&self) -> u64 {
        let d = self.digest("sagaflow random stream", &[]);
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// The nonce of the task token of `task_id` (32 hex digits).
    pub fn token_nonce(&self, execution_id: &str, task_id: &str) -> String {
        let d = self.digest(
            "sagaflow task token",
            &[execution_id.as_bytes(), task_id.as_bytes()],
        );
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The seed of the child execution started by `task_id`.
    pub fn child_seed(&self, task_id: &str) -> u64 {
        let d = self.digest("sagaflow child seed", &[task_id.as_bytes()]);
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// A source of random 64-bit numbers.
pub trait RandomSource {
    /// The next random number.
    fn next_u64(&mut self) -> u64;

    /// A float uniformly distributed in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64: a tiny, fast, well-distributed generator (Vigna, 2014).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }
}

/// A [`RandomSource`] over a SplitMix64 state kept in an atomic, so that
/// code holding shared borrows (an evaluation environment) can still draw,
/// and the holder stays `Sync`. Draws are deterministic as long as one
/// thread draws at a time (the interpreter's case).
#[derive(Debug)]
pub struct SharedRandom<'a>(pub &'a std::sync::atomic::AtomicU64);

impl RandomSource for SharedRandom<'_> {
    fn next_u64(&mut self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let mut generator = SplitMix64::new(self.0.load(Relaxed));
        let value = generator.next_u64();
        self.0.store(generator.state, Relaxed);
        value
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_keyed_by_the_seed_and_apart_from_each_other() {
        let a = Secrets::new(42);
        assert_eq!(a.token_nonce("e", "T@1#0"), a.token_nonce("e", "T@1#0"));
        assert_eq!(a.token_nonce("e", "T@1#0").len(), 32);
        assert_ne!(a.token_nonce("e", "T@1#0"), a.token_nonce("e", "T@1#1"));
        assert_ne!(a.token_nonce("e", "T@1#0"), a.token_nonce("f", "T@1#0"));
        assert_ne!(
            a.token_nonce("e", "T@1#0"),
            Secrets::new(43).token_nonce("e", "T@1#0")
        );
        // The random stream does not start at the seed (whose next states
        // would give it away), and children get seeds of their own.
        assert_ne!(a.stream_start(), 42);
        assert_ne!(a.child_seed("C@1#0"), a.child_seed("C@1#1"));
        assert_ne!(a.child_seed("C@1#0"), a.stream_start());
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        let mut c = SplitMix64::new(43);
        assert_ne!(c.next_u64(), xs[0]);
    }

    #[test]
    fn shared_random_matches_the_generator() {
        let state = std::sync::atomic::AtomicU64::new(9);
        let mut shared = SharedRandom(&state);
        let mut plain = SplitMix64::new(9);
        for _ in 0..4 {
            assert_eq!(shared.next_u64(), plain.next_u64());
        }
    }

    #[test]
    fn floats_are_in_unit_interval() {
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
