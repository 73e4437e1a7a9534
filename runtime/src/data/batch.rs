//! Seeded shuffling, batching and train/validation splits.
//!
//! Everything here is deterministic for a given seed on every platform, so a
//! training run can be reproduced exactly from its seed. The generator is
//! written out here rather than taken from a crate because its output is
//! part of that reproducibility contract and must not change with a
//! dependency upgrade.

use std::ops::Range;

use super::error::{DataError, Result};

/// SplitMix64 (Steele, Lea & Flood, 2014): a 64-bit state, one add and a
/// few multiply/xor-shifts per output.
///
/// Chosen because it is tiny, fast, passes BigCrush, and any seed
/// (including 0) is a good seed, which matters when seeds come from users.
/// It is not cryptographic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`, without the modulo bias of `next_u64() %
    /// bound` (Lemire's multiply-and-reject). Returns 0 for `bound == 0` so
    /// callers need no special case for empty ranges.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(bound);
        if (m as u64) < bound {
            let threshold = bound.wrapping_neg() % bound;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(bound);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle: every permutation equally likely.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// `0..n` in random order, the usual per-epoch sample order.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        self.shuffle(&mut order);
        order
    }
}

/// Consecutive ranges `[start, end)` covering `0..len` in steps of
/// `batch_size`; index an epoch's permutation with them.
///
/// Yielding ranges rather than slices keeps the iterator independent of any
/// borrowed order vector, so the caller can reshuffle between epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    len: usize,
    batch_size: usize,
    next: usize,
    end: usize,
}

impl Batches {
    /// With `drop_last`, a final partial batch is skipped, which keeps
    /// every batch the same shape (and batch-norm statistics stable).
    pub fn new(len: usize, batch_size: usize, drop_last: bool) -> Result<Batches> {
        if batch_size == 0 {
            return Err(DataError::ZeroBatchSize);
        }
        let end = if drop_last {
            len - len % batch_size
        } else {
            len
        };
        Ok(Batches {
            len,
            batch_size,
            next: 0,
            end,
        })
    }

    /// Number of samples the batches are drawn from.
    pub fn samples(&self) -> usize {
        self.len
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

impl Iterator for Batches {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        let stop = start.saturating_add(self.batch_size).min(self.end);
        self.next = stop;
        Some(start..stop)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.saturating_sub(self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

/// Disjoint training and validation indices covering `0..n`, each sorted
/// ascending (order within a part is the job of the per-epoch shuffle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// Randomly assigns `round(n * validation_fraction)` of the `n` samples to
/// validation and the rest to training.
///
/// Empty parts are an error rather than allowed, since training or
/// validating on nothing would make the run silently meaningless.
pub fn train_val_split(n: usize, validation_fraction: f64, seed: u64) -> Result<Split> {
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(DataError::SplitFraction(validation_fraction));
    }
    // Float rounding is fine here: the count only needs to be close to the
    // requested fraction, and is clamped to n.
    let validation_len = ((n as f64 * validation_fraction).round() as usize).min(n);
    let empty = |part| DataError::SplitEmpty {
        samples: n,
        fraction: validation_fraction,
        part,
    };
    if validation_len == 0 {
        return Err(empty("validation"));
    }
    if validation_len == n {
        return Err(empty("training"));
    }
    let mut order = SplitMix64::new(seed).permutation(n);
    let mut train = order.split_off(validation_len);
    let mut validation = order;
    train.sort_unstable();
    validation.sort_unstable();
    Ok(Split { train, validation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_outputs() {
        // First outputs of the reference C implementation for seed 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn bounded_and_float_outputs_stay_in_range() {
        let mut rng = SplitMix64::new(7);
        assert_eq!(rng.below(0), 0);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            let v = rng.below(3);
            counts[v as usize] += 1;
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert!(rng.below(u64::MAX) < u64::MAX);
    }

    #[test]
    fn shuffle_is_a_reproducible_permutation() {
        let a = SplitMix64::new(42).permutation(100);
        let b = SplitMix64::new(42).permutation(100);
        let c = SplitMix64::new(43).permutation(100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // Successive epochs from one generator differ but are reproducible.
        let mut r1 = SplitMix64::new(5);
        let mut r2 = SplitMix64::new(5);
        let (e1, e2) = (r1.permutation(10), r1.permutation(10));
        assert_ne!(e1, e2);
        assert_eq!((e1, e2), (r2.permutation(10), r2.permutation(10)));
        // Pinned so an accidental change of the algorithm is noticed.
        assert_eq!(SplitMix64::new(1).permutation(8), PINNED_SEED1_N8);
        assert!(SplitMix64::new(1).permutation(0).is_empty());
        assert_eq!(SplitMix64::new(1).permutation(1), [0]);
    }

    const PINNED_SEED1_N8: [usize; 8] = [0, 3, 7, 1, 2, 6, 5, 4];

    #[test]
    fn shuffle_is_roughly_uniform() {
        // All 6 orders of 3 elements should appear about equally often.
        let mut rng = SplitMix64::new(2024);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..60_000 {
            let mut v = [0, 1, 2];
            rng.shuffle(&mut v);
            *seen.entry(v).or_insert(0usize) += 1;
        }
        assert_eq!(seen.len(), 6);
        assert!(
            seen.values().all(|&c| (9_400..10_600).contains(&c)),
            "{seen:?}"
        );
    }

    #[test]
    fn batches_with_and_without_drop_last() {
        let all: Vec<_> = Batches::new(10, 4, false).unwrap().collect();
        assert_eq!(all, [0..4, 4..8, 8..10]);
        let dropped: Vec<_> = Batches::new(10, 4, true).unwrap().collect();
        assert_eq!(dropped, [0..4, 4..8]);
        assert_eq!(Batches::new(8, 4, true).unwrap().count(), 2);
        assert_eq!(Batches::new(3, 4, true).unwrap().count(), 0);
        assert_eq!(Batches::new(0, 4, false).unwrap().count(), 0);
        let mut b = Batches::new(10, 3, false).unwrap();
        assert_eq!(b.len(), 4);
        b.next();
        assert_eq!(b.len(), 3);
        assert_eq!((b.samples(), b.batch_size()), (10, 3));
        assert_eq!(
            Batches::new(10, 0, false).unwrap_err().to_string(),
            "batch size must be at least 1"
        );
        let huge: Vec<_> = Batches::new(usize::MAX, usize::MAX - 1, false)
            .unwrap()
            .collect();
        assert_eq!(huge, [0..usize::MAX - 1, usize::MAX - 1..usize::MAX]);
    }

    #[test]
    fn split_is_reproducible_disjoint_and_complete() {
        let s = train_val_split(100, 0.2, 9).unwrap();
        assert_eq!((s.train.len(), s.validation.len()), (80, 20));
        assert_eq!(s, train_val_split(100, 0.2, 9).unwrap());
        assert_ne!(s, train_val_split(100, 0.2, 10).unwrap());
        let mut all: Vec<_> = s.train.iter().chain(&s.validation).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(s.train.windows(2).all(|w| w[0] < w[1]));
        let s = train_val_split(2, 0.5, 0).unwrap();
        assert_eq!((s.train.len(), s.validation.len()), (1, 1));
    }

    #[test]
    fn split_errors() {
        for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert_eq!(
                train_val_split(10, bad, 0).unwrap_err().to_string(),
                format!("validation fraction must be strictly between 0 and 1, got {bad}")
            );
        }
        assert_eq!(
            train_val_split(3, 0.1, 0).unwrap_err().to_string(),
            "splitting 3 samples with validation fraction 0.1 leaves the validation part empty"
        );
        assert_eq!(
            train_val_split(3, 0.9, 0).unwrap_err().to_string(),
            "splitting 3 samples with validation fraction 0.9 leaves the training part empty"
        );
        assert_eq!(
            train_val_split(0, 0.5, 0).unwrap_err().to_string(),
            "splitting 0 samples with validation fraction 0.5 leaves the validation part empty"
        );
    }
}
