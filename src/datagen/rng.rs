//! The generator's randomness: a seeded xoshiro256** stream and the distributions built on it
//! (uniform ranges, Zipf ranks from a precomputed CDF, log-normal sizes by Box-Muller).
//!
//! Integer draws are exact on every platform. The Zipf table and the log-normal use `powf`,
//! `ln`, `exp` and `cos`, whose last bit may differ between platforms' math libraries, so a
//! stream is reproducible on one platform; peers share the generated file, not the seed.

/// One step of SplitMix64: seeds xoshiro and derives independent sub-seeds.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    crate::ids::mix64(*state)
}

/// xoshiro256** (Blackman and Vigna), seeded by SplitMix64 so that any u64 seed, zero
/// included, gives a good state.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            state: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for the ranges used
    /// here). `below(0)` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform index into a collection of `len` items (0 when `len` is 0).
    pub(crate) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform in `low..=high`.
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// Uniform in [0, 1), 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box-Muller; the second value of each pair is dropped so that
    /// every draw consumes the same two words).
    pub(crate) fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape `sigma` (the standard deviation of its log).
    pub(crate) fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.standard_normal()).exp()
    }

    /// `bytes` random bytes as lowercase hex.
    pub(crate) fn hex(&mut self, bytes: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes * 2);
        let mut word = 0u64;
        for i in 0..bytes {
            if i % 8 == 0 {
                word = self.next_u64();
            }
            let byte = (word >> ((i % 8) * 8)) as u8;
            out.push(DIGITS[usize::from(byte >> 4)] as char);
            out.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
        out
    }
}

/// Zipf ranks over `0..n`: rank r is drawn with probability proportional to 1 / (r + 1)^s.
/// Sampling is a binary search of the precomputed cumulative weights.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Panics if `n` is 0.
    pub(crate) fn new(n: usize, exponent: f64) -> Zipf {
        assert!(n > 0, "a Zipf distribution needs at least one rank");
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += (rank as f64).powf(-exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        let target = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c <= target)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_seeded() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut rng = Rng::new(5);
                move |_| rng.next_u64()
            })
            .collect();
        let mut again = Rng::new(5);
        assert!(a.iter().all(|&x| x == again.next_u64()));
        let mut other = Rng::new(6);
        assert!(a.iter().all(|&x| x != other.next_u64()));
        // Seed 0 is as good as any other.
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
    }

    #[test]
    fn ranges_hold_and_are_covered() {
        let mut rng = Rng::new(1);
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[rng.index(7)] += 1;
            let x = rng.between(3, 5);
            assert!((3..=5).contains(&x));
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
        let hex = rng.hex(9);
        assert_eq!(hex.len(), 18);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn zipf_is_skewed_by_rank() {
        let zipf = Zipf::new(1_000, 1.0);
        let mut rng = Rng::new(2);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // With s = 1, rank 0 has 1/H(1000) = 13.4% of the mass, rank 1 half of that.
        assert!((12_500..14_500).contains(&counts[0]), "{}", counts[0]);
        assert!((6_000..7_400).contains(&counts[1]), "{}", counts[1]);
        assert!(counts[0] > 50 * counts[500].max(1));
        let single = Zipf::new(1, 1.1);
        assert_eq!(single.sample(&mut rng), 0);
    }

    #[test]
    fn log_normal_has_the_requested_median() {
        let mut rng = Rng::new(3);
        let mut draws: Vec<f64> = (0..20_001).map(|_| rng.log_normal(120.0, 1.0)).collect();
        draws.sort_by(f64::total_cmp);
        let median = draws[10_000];
        assert!((110.0..130.0).contains(&median), "{median}");
        // One sigma above the median: 120 * e = 326 at the 84th percentile.
        let p84 = draws[16_800];
        assert!((290.0..365.0).contains(&p84), "{p84}");
    }
}
