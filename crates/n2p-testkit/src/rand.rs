//! Seeded, reproducible pseudo-random content: the same seed gives the same bytes on every
//! run, so a failure can be replayed.
//!
//! ```
//! let mut a = n2p_testkit::rand::XorShift64::new(7);
//! let mut b = n2p_testkit::rand::XorShift64::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// A small, fast, deterministic generator (xorshift64*) for incompressible test content.
/// Not for anything that needs real randomness.
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// Mixed into the seed, so that small seeds (0, 1, 2...) start far apart.
    const SEED_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator whose output depends only on `seed`; different seeds give different
    /// sequences.
    pub fn new(seed: u64) -> Self {
        // The state must never be zero (xorshift would then only produce zeros).
        let state = match seed ^ Self::SEED_MIX {
            0 => Self::SEED_MIX,
            state => state,
        };
        Self { state }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }

    /// Writes a new file at `path` of `len` bytes drawn from this generator.
    pub fn write_file(&mut self, path: &Path, len: u64) -> io::Result<()> {
        let mut writer = BufWriter::new(File::create(path)?);
        let mut chunk = vec![0; 1 << 16];
        let mut remaining = len;
        while remaining > 0 {
            let n = usize::try_from(remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
            self.fill(&mut chunk[..n]);
            writer.write_all(&chunk[..n])?;
            remaining -= n as u64;
        }
        writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_in_range_and_differ_by_seed() {
        let mut a = XorShift64::new(1);
        let mut b = XorShift64::new(2);
        assert_ne!(a.next_u64(), b.next_u64());
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    #[test]
    fn seeds_zero_and_one_differ_and_no_seed_gets_stuck_at_zero() {
        assert_ne!(XorShift64::new(0).next_u64(), XorShift64::new(1).next_u64());
        let mut stuck = XorShift64::new(XorShift64::SEED_MIX);
        assert_ne!(stuck.next_u64(), 0);
    }
}
