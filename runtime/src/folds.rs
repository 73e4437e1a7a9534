//! `validate = kfold(k)`: which fold each training sample validates in,
//! as scikit-learn's `StratifiedKFold(n_splits=k, shuffle=True)` for
//! classification and `KFold(n_splits=k, shuffle=True)` otherwise (seeded
//! by the run's seed; the same proportions and sizes, not the same draws
//! as numpy's generator).

use crate::data::SplitMix64;
use crate::RuntimeError;

/// The samples of each of `k` folds (sorted indices into `samples`).
///
/// Plain: the samples in a seeded order, the first `n % k` folds one
/// sample larger. Stratified by `classes` (a class per sample, in
/// `samples` order): as `StratifiedKFold`, each class's samples are dealt
/// so that every fold holds `⌊n_c / k⌋` or `⌈n_c / k⌉` of class `c`, and
/// the fold sizes differ by at most one.
pub fn kfold(
    samples: &[usize],
    k: usize,
    classes: Option<&[usize]>,
    seed: u64,
) -> Result<Vec<Vec<usize>>, RuntimeError> {
    let n = samples.len();
    if k < 2 {
        return Err(RuntimeError::Setup(format!(
            "k-fold cross-validation needs at least 2 folds, not {k}"
        )));
    }
    if k > n {
        return Err(RuntimeError::Setup(format!(
            "`kfold({k})` needs at least {k} training samples, one per fold, but there are {n}"
        )));
    }
    let mut rng = SplitMix64::new(seed ^ 0x6B66_6F6C_6473);
    let mut folds = vec![Vec::new(); k];
    match classes {
        None => {
            let mut order = samples.to_vec();
            rng.shuffle(&mut order);
            let mut start = 0;
            for (f, fold) in folds.iter_mut().enumerate() {
                let size = n / k + usize::from(f < n % k);
                fold.extend_from_slice(&order[start..start + size]);
                start += size;
            }
        }
        Some(classes) => {
            if classes.len() != n {
                return Err(RuntimeError::Setup(format!(
                    "internal error: {} class labels for {n} samples",
                    classes.len()
                )));
            }
            let count = classes.iter().max().map_or(0, |&m| m + 1);
            // scikit-learn's allocation: sort the labels and deal them to
            // the folds in turn (`y_order[i::k]`): fold `f` gets this many
            // samples of each class, which keeps both the per-class shares
            // and the fold sizes within one of even.
            let mut sorted = classes.to_vec();
            sorted.sort_unstable();
            let mut allocation = vec![vec![0usize; k]; count];
            for (i, &c) in sorted.iter().enumerate() {
                allocation[c][i % k] += 1;
            }
            for (c, per_fold) in allocation.iter().enumerate() {
                let mut members: Vec<usize> = samples
                    .iter()
                    .zip(classes)
                    .filter(|&(_, &cl)| cl == c)
                    .map(|(&s, _)| s)
                    .collect();
                rng.shuffle(&mut members);
                let mut start = 0;
                for (f, fold) in folds.iter_mut().enumerate() {
                    let take = per_fold[f];
                    fold.extend_from_slice(&members[start..start + take]);
                    start += take;
                }
            }
        }
    }
    for fold in &mut folds {
        fold.sort_unstable();
    }
    Ok(folds)
}

/// Mean and sample standard deviation (ddof = 1, as `numpy.std(ddof=1)`
/// and `pandas.Series.std`) of the folds' values; the deviation is 0 for
/// a single value.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    (mean, (ss / (n - 1) as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_partition(folds: &[Vec<usize>], samples: &[usize]) {
        let mut all: Vec<usize> = folds.iter().flatten().copied().collect();
        all.sort_unstable();
        let mut expected = samples.to_vec();
        expected.sort_unstable();
        assert_eq!(
            all, expected,
            "the folds are disjoint and cover the samples"
        );
    }

    #[test]
    fn plain_folds_are_disjoint_covering_balanced_and_seeded() {
        let samples: Vec<usize> = (100..123).collect();
        let folds = kfold(&samples, 5, None, 7).unwrap();
        check_partition(&folds, &samples);
        let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![5, 5, 5, 4, 4]);
        assert_eq!(folds, kfold(&samples, 5, None, 7).unwrap());
        assert_ne!(folds, kfold(&samples, 5, None, 8).unwrap());
        assert_ne!(folds[0], (100..105).collect::<Vec<_>>(), "shuffled");
    }

    #[test]
    fn stratified_folds_keep_each_class_share() {
        // 30 of class 0, 12 of class 1, 3 of class 2, interleaved.
        let mut classes = Vec::new();
        classes.extend(std::iter::repeat_n(0, 30));
        classes.extend(std::iter::repeat_n(1, 12));
        classes.extend(std::iter::repeat_n(2, 3));
        let mut rng = SplitMix64::new(3);
        rng.shuffle(&mut classes);
        let samples: Vec<usize> = (0..classes.len()).map(|i| 2 * i).collect();
        let folds = kfold(&samples, 5, Some(&classes), 11).unwrap();
        check_partition(&folds, &samples);
        let class_of = |s: usize| classes[s / 2];
        for fold in &folds {
            assert_eq!(fold.len(), 9);
            let count = |c| fold.iter().filter(|&&s| class_of(s) == c).count();
            assert_eq!(count(0), 6, "30 / 5");
            assert!(count(1) == 2 || count(1) == 3, "12 / 5");
            assert!(count(2) <= 1, "3 / 5");
        }
        assert_eq!(folds, kfold(&samples, 5, Some(&classes), 11).unwrap());
        assert_ne!(folds, kfold(&samples, 5, Some(&classes), 12).unwrap());
    }

    #[test]
    fn too_few_samples_or_folds_are_errors_with_the_counts() {
        let samples = [0, 1, 2];
        let e = kfold(&samples, 4, None, 0).unwrap_err().to_string();
        assert!(e.contains("`kfold(4)`") && e.contains("there are 3"), "{e}");
        assert!(kfold(&samples, 1, None, 0).is_err());
        assert_eq!(kfold(&samples, 3, None, 0).unwrap().len(), 3);
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[0.7]), (0.7, 0.0));
    }
}
