//! Statistics fitted on the training samples: `standardize()` (scikit-learn's
//! `StandardScaler`) and `minmax()` (`MinMaxScaler`), saved with the
//! checkpoint so evaluation and prediction apply exactly the training
//! run's numbers.

use std::collections::BTreeMap;

use nnc_ir::FitAxis;
use serde::{Deserialize, Serialize};

use super::dataset::Transform;

/// Which values share a statistic, as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Element,
    Channel,
}

impl From<FitAxis> for Per {
    fn from(axis: FitAxis) -> Per {
        match axis {
            FitAxis::Element => Per::Element,
            FitAxis::Channel => Per::Channel,
        }
    }
}

/// The statistics of one fitted transform: one value per feature (an
/// element of a sample, or a channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transform", rename_all = "snake_case")]
pub enum Fitted {
    /// The mean and the population standard deviation (`ddof = 0`).
    Standardize {
        per: Per,
        mean: Vec<f64>,
        std: Vec<f64>,
    },
    #[serde(rename = "minmax")]
    MinMax {
        per: Per,
        min: Vec<f64>,
        max: Vec<f64>,
    },
}

/// Each field's fitted transforms, in pipeline order.
pub type FittedStats = BTreeMap<String, Vec<Fitted>>;

impl Fitted {
    pub fn name(&self) -> &'static str {
        match self {
            Fitted::Standardize { .. } => "standardize",
            Fitted::MinMax { .. } => "minmax",
        }
    }

    pub fn per(&self) -> Per {
        match self {
            Fitted::Standardize { per, .. } | Fitted::MinMax { per, .. } => *per,
        }
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        match self {
            Fitted::Standardize { mean, .. } => mean.len(),
            Fitted::MinMax { min, .. } => min.len(),
        }
    }

    /// `(x - shift) / divisor` as a batch transform. A zero divisor (a
    /// constant feature) becomes 1, as scikit-learn's scalers do, so the
    /// feature maps to 0 instead of NaN.
    pub fn transform(&self) -> Transform {
        let (shift, divisor): (Vec<f32>, Vec<f32>) = match self {
            Fitted::Standardize { mean, std, .. } => mean
                .iter()
                .zip(std)
                .map(|(&m, &s)| (m as f32, s as f32))
                .unzip(),
            Fitted::MinMax { min, max, .. } => min
                .iter()
                .zip(max)
                .map(|(&lo, &hi)| (lo as f32, (hi - lo) as f32))
                .unzip(),
        };
        let divisor = divisor
            .into_iter()
            .map(|d| if d == 0.0 || !d.is_finite() { 1.0 } else { d })
            .collect();
        match self.per() {
            Per::Element => Transform::normalize_each(shift, divisor),
            Per::Channel => Transform::normalize_channels(shift, divisor),
        }
    }
}

/// Running statistics over batches of samples: Welford's mean and sum of
/// squared deviations in `f64` (exactly 0 for a constant feature), and
/// extremes.
#[derive(Debug, Clone)]
pub struct Accumulator {
    per: Per,
    /// Values per feature in one sample: 1 per element, the plane per
    /// channel.
    run: usize,
    count: Vec<u64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
}

impl Accumulator {
    /// For samples of `sample_len` values: `features` of them, each a
    /// contiguous run (a channel) or a single element.
    pub fn new(per: Per, sample_len: usize, features: usize) -> Accumulator {
        Accumulator {
            per,
            run: sample_len / features.max(1),
            count: vec![0; features],
            mean: vec![0.0; features],
            m2: vec![0.0; features],
            min: vec![f64::INFINITY; features],
            max: vec![f64::NEG_INFINITY; features],
        }
    }

    /// Adds the samples of `batch`, `sample_len` values each.
    pub fn add(&mut self, batch: &[f32]) {
        let features = self.count.len();
        let sample_len = self.run * features;
        for sample in batch.chunks_exact(sample_len.max(1)) {
            for (k, run) in sample.chunks_exact(self.run.max(1)).enumerate() {
                for &v in run {
                    let v = f64::from(v);
                    self.count[k] += 1;
                    let delta = v - self.mean[k];
                    self.mean[k] += delta / self.count[k] as f64;
                    self.m2[k] += delta * (v - self.mean[k]);
                    self.min[k] = self.min[k].min(v);
                    self.max[k] = self.max[k].max(v);
                }
            }
        }
    }

    pub fn standardize(self) -> Fitted {
        let std = self
            .m2
            .iter()
            .zip(&self.count)
            .map(|(m2, &n)| (m2 / n.max(1) as f64).sqrt())
            .collect();
        Fitted::Standardize {
            per: self.per,
            mean: self.mean,
            std,
        }
    }

    pub fn minmax(self) -> Fitted {
        Fitted::MinMax {
            per: self.per,
            min: self.min,
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardize_matches_population_statistics() {
        // Three samples of two features: [1, 10], [2, 10], [6, 10].
        let mut acc2 = Accumulator::new(Per::Element, 2, 2);
        acc2.add(&[1.0, 10.0, 2.0, 10.0]);
        acc2.add(&[6.0, 10.0]);
        let Fitted::Standardize { mean, std, .. } = acc2.standardize() else {
            unreachable!()
        };
        assert_eq!(mean, [3.0, 10.0]);
        // Population variance of 1, 2, 6: (4 + 1 + 9) / 3.
        assert!((std[0] - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(std[1], 0.0, "a constant feature has std 0 exactly");
        let fitted = Fitted::Standardize {
            per: Per::Element,
            mean: mean.clone(),
            std: std.clone(),
        };
        // ... and is divided by 1, as scikit-learn does.
        assert_eq!(
            fitted.transform(),
            Transform::normalize_each(vec![3.0, 10.0], vec![std[0] as f32, 1.0])
        );
    }

    #[test]
    fn minmax_and_channels() {
        // Two samples of 2 channels x 2 positions.
        let mut acc = Accumulator::new(Per::Channel, 4, 2);
        acc.add(&[0.0, 4.0, 5.0, 5.0, 2.0, 1.0, 5.0, 5.0]);
        let fitted = acc.clone().minmax();
        assert_eq!(
            fitted,
            Fitted::MinMax {
                per: Per::Channel,
                min: vec![0.0, 5.0],
                max: vec![4.0, 5.0],
            }
        );
        assert_eq!(
            fitted.transform(),
            Transform::normalize_channels(vec![0.0, 5.0], vec![4.0, 1.0])
        );
        let Fitted::Standardize { mean, .. } = acc.standardize() else {
            unreachable!()
        };
        assert_eq!(mean, [1.75, 5.0]);
        let json = serde_json::to_string(&fitted).unwrap();
        assert_eq!(
            json,
            r#"{"transform":"minmax","per":"channel","min":[0.0,5.0],"max":[4.0,5.0]}"#
        );
        assert_eq!(serde_json::from_str::<Fitted>(&json).unwrap(), fitted);
    }
}
