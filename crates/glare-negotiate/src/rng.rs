//! Randomness comes in from the caller.

/// A source of random numbers for tie-breakers and retry delays.
///
/// The negotiator never seeds itself: the caller supplies the source, so a simulation
/// is reproducible from one seed. Tie-breakers only need to differ between the two
/// sides of a link, not to be secret; seed [`SplitMix64`] from the operating system's
/// random source in production.
pub trait RandomSource {
    /// 64 random bits.
    fn next_u64(&mut self) -> u64;
}

/// `SplitMix64`: a tiny, fast, seedable generator (not cryptographic).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A number in `0..bound` (`bound` > 0; 0 is treated as 1).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
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

impl<R: RandomSource + ?Sized> RandomSource for &mut R {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}
