//! Observers: what calibration learns of a tensor's values over many
//! batches, and the range each method chooses from it.
//!
//! - [`MinMax`]: the smallest and largest value seen (PyTorch's
//!   `MinMaxObserver`). Exact, but one outlier stretches the range and
//!   coarsens every other value's step.
//! - [`AbsHistogram`]: a histogram of `|x|` that grows by doubling its
//!   range (merging bins pairwise, so no count moves between bins it did
//!   not share), from which [`Percentile`] clips at a quantile of `|x|`
//!   and [`AbsHistogram::entropy_threshold`] chooses the clipping
//!   threshold whose 128-level quantization loses the least information
//!   (TensorRT's entropy calibration: the KL divergence between the
//!   clipped distribution and its quantized form).
//!
//! Observers take `f32` values as the model computes them; a NaN is
//! ignored (it has no range), an infinity is an error at the caller
//! (`observe` returns false).

/// The running minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinMax {
    pub min: f64,
    pub max: f64,
}

impl Default for MinMax {
    fn default() -> MinMax {
        MinMax {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl MinMax {
    /// Folds `values` in; false if one is infinite.
    pub fn observe(&mut self, values: &[f32]) -> bool {
        for &v in values {
            if v.is_infinite() {
                return false;
            }
            if v.is_nan() {
                continue;
            }
            self.min = self.min.min(v as f64);
            self.max = self.max.max(v as f64);
        }
        true
    }

    /// The range seen, `None` before any finite value.
    pub fn range(&self) -> Option<(f64, f64)> {
        (self.min <= self.max).then_some((self.min, self.max))
    }
}

/// A histogram of `|x|` over `[0, limit)` in [`AbsHistogram::BINS`] equal
/// bins; `limit` doubles when a larger value arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct AbsHistogram {
    pub counts: Vec<u64>,
    /// The upper end of the last bin; 0 before any nonzero value.
    pub limit: f64,
    /// The signed extremes, so that a one-sided range stays one-sided.
    pub min_max: MinMax,
}

impl Default for AbsHistogram {
    fn default() -> AbsHistogram {
        AbsHistogram {
            counts: vec![0; Self::BINS],
            limit: 0.0,
            min_max: MinMax::default(),
        }
    }
}

/// Which quantile of `|x|` the range keeps, e.g. 99.99.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentile(pub f64);

impl AbsHistogram {
    /// TensorRT's and TVM's resolution for entropy calibration.
    pub const BINS: usize = 2048;
    /// The levels a clipped range of magnitudes is quantized to when
    /// comparing distributions, for values of both signs: 128, one side
    /// of `i8` (TensorRT's choice). Non-negative values (after a ReLU)
    /// quantized to `u8` have all 256 levels on their one side:
    /// [`AbsHistogram::levels`].
    pub const LEVELS: usize = 128;

    /// The levels the magnitudes seen so far get: 256 when no value was
    /// negative (an affine `u8` range starting at 0 spends every level on
    /// them), else [`Self::LEVELS`].
    pub fn levels(&self) -> usize {
        match self.min_max.range() {
            Some((lo, _)) if lo >= 0.0 => 2 * Self::LEVELS,
            _ => Self::LEVELS,
        }
    }

    /// Folds `values` in; false if one is infinite.
    pub fn observe(&mut self, values: &[f32]) -> bool {
        if !self.min_max.observe(values) {
            return false;
        }
        let top = values
            .iter()
            .filter(|v| !v.is_nan())
            .fold(0.0f64, |m, &v| m.max((v as f64).abs()));
        if top > 0.0 && self.limit == 0.0 {
            self.limit = top;
        }
        while top >= self.limit && self.limit > 0.0 {
            // Pairs of bins become one bin of the doubled range, the
            // upper half empty.
            for i in 0..Self::BINS / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[Self::BINS / 2..].fill(0);
            self.limit *= 2.0;
        }
        let width = self.limit / Self::BINS as f64;
        for &v in values {
            if v.is_nan() {
                continue;
            }
            let bin = match width > 0.0 {
                true => ((v as f64).abs() / width) as usize,
                false => 0,
            };
            self.counts[bin.min(Self::BINS - 1)] += 1;
        }
        true
    }

    fn width(&self) -> f64 {
        self.limit / Self::BINS as f64
    }

    /// The smallest `t` (a bin's upper edge) with at least `p` percent of
    /// the values' magnitudes below it; 0 before any value.
    pub fn percentile(&self, p: Percentile) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (p.0 / 100.0 * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (i + 1) as f64 * self.width();
            }
        }
        self.limit
    }

    /// The clipping threshold of least information loss: for each
    /// candidate `i` from [`Self::levels`] bins up, `P` is the first `i`
    /// bins with the counts beyond added to the last, `Q` is `P` merged
    /// into that many levels and spread back over the nonzero bins of
    /// each level; the `i` with the smallest `KL(P || Q)` wins and the
    /// threshold is its upper edge (TensorRT's entropy calibrator, as
    /// MXNet's and TVM's `_get_optimal_threshold` implement it, over
    /// `|x|`). 0 before any value.
    pub fn entropy_threshold(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.limit == 0.0 {
            return 0.0;
        }
        let levels = self.levels();
        let mut best = (f64::INFINITY, Self::BINS);
        for i in levels..=Self::BINS {
            let mut p: Vec<f64> = self.counts[..i].iter().map(|&c| c as f64).collect();
            let outliers: u64 = self.counts[i..].iter().sum();
            p[i - 1] += outliers as f64;
            let q = Self::quantized(&self.counts[..i], &p, levels);
            let kl = kl_divergence(&p, &q);
            if kl < best.0 {
                best = (kl, i);
            }
        }
        best.1 as f64 * self.width()
    }

    /// `counts` merged into `levels` levels (the last level takes
    /// the remainder of the division) and each level's total spread
    /// evenly over the bins where `p` (the counts with the clipped ones in
    /// the last bin) is nonzero.
    fn quantized(counts: &[u64], p: &[f64], levels: usize) -> Vec<f64> {
        let n = counts.len();
        let per = n / levels;
        let mut q = vec![0.0; n];
        for level in 0..levels {
            let start = level * per;
            let end = if level == levels - 1 { n } else { start + per };
            let total: u64 = counts[start..end].iter().sum();
            let nonzero = p[start..end].iter().filter(|&&c| c > 0.0).count();
            if nonzero == 0 {
                continue;
            }
            for (j, &pj) in p[start..end].iter().enumerate() {
                if pj > 0.0 {
                    q[start + j] = total as f64 / nonzero as f64;
                }
            }
        }
        q
    }
}

/// `KL(p || q)` of two histograms, each normalized to sum 1; bins where
/// `p` is 0 contribute nothing, and a bin where `p > 0` but `q = 0` is
/// smoothed to a tiny `q` (as the reference implementations do) rather
/// than making the divergence infinite.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    const SMOOTH: f64 = 1e-4;
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(&p, _)| p > 0.0)
        .map(|(&p, &q)| {
            let (p, q) = (p / sp, (q / sq).max(SMOOTH / sq));
            p * (p / q).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_ignores_nan_and_refuses_infinities() {
        let mut m = MinMax::default();
        assert_eq!(m.range(), None);
        assert!(m.observe(&[0.5, f32::NAN, -2.0]));
        assert!(m.observe(&[3.0]));
        assert_eq!(m.range(), Some((-2.0, 3.0)));
        assert!(!m.observe(&[f32::INFINITY]));
    }

    #[test]
    fn the_histogram_doubles_its_range_without_moving_counts() {
        let mut h = AbsHistogram::default();
        h.observe(&[1.0, -0.25]);
        // The first batch's largest magnitude is the limit, then doubled
        // so that it falls inside: [0, 2), bins of 2/2048.
        assert_eq!(h.limit, 2.0);
        let bin = |x: f64, h: &AbsHistogram| (x / (h.limit / 2048.0)) as usize;
        assert_eq!(h.counts[bin(1.0, &h)], 1);
        assert_eq!(h.counts[bin(0.25, &h)], 1);
        h.observe(&[5.0]);
        assert_eq!(h.limit, 8.0);
        assert_eq!(h.counts.iter().sum::<u64>(), 3);
        assert_eq!(h.counts[bin(1.0, &h)], 1, "1.0 still in its bin");
        assert_eq!(h.counts[bin(0.25, &h)], 1);
        assert_eq!(h.counts[bin(5.0, &h)], 1);
        assert_eq!(h.min_max.range(), Some((-0.25, 5.0)));
    }

    #[test]
    fn percentile_clips_the_outliers() {
        let mut h = AbsHistogram::default();
        // 9,999 values spread over [0, 1) and one outlier at 100.
        let values: Vec<f32> = (0..9999).map(|i| i as f32 / 9999.0).collect();
        h.observe(&values);
        h.observe(&[100.0]);
        let t = h.percentile(Percentile(99.99));
        assert!((0.999..1.2).contains(&t), "{t}");
        let all = h.percentile(Percentile(100.0));
        assert!(all >= 100.0 && all <= 100.0 + h.limit / 2048.0, "{all}");
    }

    #[test]
    fn entropy_keeps_the_bulk_and_drops_a_lone_outlier() {
        let mut h = AbsHistogram::default();
        // 200,000 magnitudes falling off linearly over [0, 60) and one
        // outlier at 200 (the histogram then spans [0, 400): the bulk fills its
        // first 307 bins): clipping near the bulk loses less than
        // spending the 128 levels on the empty stretch up to 200. (With
        // a bulk of only a few bins, fewer than the 128 levels, the
        // method keeps the outliers: it cannot clip below 128 bins.)
        let mut values = Vec::new();
        for i in 0..200_000 {
            let u = (i as f32 + 0.5) / 200_000.0;
            // Both signs: magnitudes get the 128 levels of one side of i8.
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            values.push(sign * 60.0 * (1.0 - u.sqrt()));
        }
        values.push(200.0);
        h.observe(&values);
        assert_eq!((h.limit, h.levels()), (400.0, 128));
        let t = h.entropy_threshold();
        assert!((30.0..80.0).contains(&t), "threshold {t}");
        // Non-negative, the same magnitudes have 256 levels: candidates
        // start at 256 bins (50), and the outlier is still clipped.
        let mut h = AbsHistogram::default();
        let magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        h.observe(&magnitudes);
        assert_eq!(h.levels(), 256);
        let t = h.entropy_threshold();
        assert!((50.0..150.0).contains(&t), "threshold {t}");
        // Without outliers the threshold keeps nearly every value.
        let mut h = AbsHistogram::default();
        let uniform: Vec<f32> = (0..20_000).map(|i| i as f32 / 20_000.0).collect();
        h.observe(&uniform);
        let t = h.entropy_threshold();
        assert!(t >= 0.9 * h.min_max.max && t <= h.limit, "{t}");
    }

    #[test]
    fn kl_of_a_distribution_with_itself_is_zero() {
        let p = [1.0, 2.0, 0.0, 5.0];
        assert!(kl_divergence(&p, &p).abs() < 1e-12);
        assert!(kl_divergence(&p, &[2.0, 2.0, 2.0, 2.0]) > 0.0);
    }
}
