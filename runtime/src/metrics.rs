//! Metrics of a whole set of samples, as scikit-learn defines them:
//! precision, recall and F1 (macro, micro, weighted and per class, with
//! `zero_division=0`), the confusion matrix, top-k accuracy, binary
//! classifiers by a threshold, and MAE, RMSE and R² for regression.
//!
//! They are computed on the host from the evaluation graph's output and
//! the label of each batch, by accumulating counts (the confusion matrix)
//! and sums over the set's batches: a mean of per-batch F1 or R² values
//! would be another, wrong, number. The classes are always every class the
//! model outputs (scikit-learn's `labels=range(C)`), so a class absent
//! from a batch or from the whole set still counts in the macro average
//! (with precision, recall and F1 of 0).

use nnc_ir::{Average, Metric, MetricTarget, SetMetric, TargetKind};

/// Counts and sums of one target (output and label) over a set.
#[derive(Debug, Clone)]
struct Entry {
    target: MetricTarget,
    metrics: Vec<SetMetric>,
    counts: Counts,
}

#[derive(Debug, Clone)]
enum Counts {
    /// Classes and binary classifiers: the confusion matrix (row-major,
    /// rows the true class), and for each requested `k` its top-k hits.
    Classes {
        classes: usize,
        confusion: Vec<u64>,
        top_k: Vec<(usize, u64)>,
    },
    /// Per output column.
    Regression(Vec<Moments>),
}

/// Sums over one regression column: errors, and the labels' mean and sum
/// of squared deviations (Welford's update, so R²'s denominator does not
/// cancel catastrophically).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moments {
    n: u64,
    abs_error: f64,
    squared_error: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn add(&mut self, predicted: f64, truth: f64) {
        let e = predicted - truth;
        self.n += 1;
        self.abs_error += e.abs();
        self.squared_error += e * e;
        let delta = truth - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (truth - self.mean);
    }

    fn mae(&self) -> f64 {
        self.abs_error / self.n.max(1) as f64
    }

    fn rmse(&self) -> f64 {
        (self.squared_error / self.n.max(1) as f64).sqrt()
    }

    /// `r2_score` with `force_finite=True`: a constant label scores 1 when
    /// predicted exactly, else 0.
    fn r2(&self) -> f64 {
        if self.m2 == 0.0 {
            return if self.squared_error == 0.0 { 1.0 } else { 0.0 };
        }
        1.0 - self.squared_error / self.m2
    }
}

/// Per-class precision, recall, F1 and support, and the confusion matrix
/// (`classification_report` and `confusion_matrix`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// Samples of each true class.
    pub support: Vec<u64>,
}

impl ClassReport {
    /// From a confusion matrix of `classes` classes, row-major.
    pub fn from_confusion(classes: usize, confusion: &[u64]) -> ClassReport {
        let cell = |t: usize, p: usize| confusion[t * classes + p];
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let mut report = ClassReport {
            confusion: (0..classes)
                .map(|t| (0..classes).map(|p| cell(t, p)).collect())
                .collect(),
            precision: Vec::with_capacity(classes),
            recall: Vec::with_capacity(classes),
            f1: Vec::with_capacity(classes),
            support: Vec::with_capacity(classes),
        };
        for c in 0..classes {
            let tp = cell(c, c);
            let predicted: u64 = (0..classes).map(|t| cell(t, c)).sum();
            let actual: u64 = (0..classes).map(|p| cell(c, p)).sum();
            report.precision.push(ratio(tp, predicted));
            report.recall.push(ratio(tp, actual));
            // 2·tp / (2·tp + fp + fn), as scikit-learn computes it.
            report.f1.push(ratio(2 * tp, predicted + actual));
            report.support.push(actual);
        }
        report
    }

    fn tp(&self) -> u64 {
        (0..self.confusion.len())
            .map(|c| self.confusion[c][c])
            .sum()
    }

    fn total(&self) -> u64 {
        self.support.iter().sum()
    }

    /// The averaged value of one per-class column.
    fn average(&self, per_class: &[f64], average: Average, micro: f64) -> f64 {
        match average {
            Average::Macro => per_class.iter().sum::<f64>() / per_class.len().max(1) as f64,
            Average::Weighted => {
                let total = self.total();
                if total == 0 {
                    return 0.0;
                }
                per_class
                    .iter()
                    .zip(&self.support)
                    .map(|(v, &s)| v * s as f64)
                    .sum::<f64>()
                    / total as f64
            }
            Average::Micro => micro,
        }
    }

    /// Micro precision, recall and F1 are all `tp / samples` when every
    /// sample has one true and one predicted class among the labels.
    fn micro(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            self.tp() as f64 / total as f64
        }
    }
}

/// The set metrics of a set: each value by name, and the per-class report
/// of the first classifier target that asked for one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetResults {
    pub values: Vec<(String, f64)>,
    pub classes: Option<ClassReport>,
}

/// Why a batch cannot be scored.
pub type MetricError = String;

/// Accumulates every set metric of a train block over the batches of one
/// set.
#[derive(Debug, Clone, Default)]
pub struct SetAccumulator {
    entries: Vec<Entry>,
}

impl SetAccumulator {
    /// For the set metrics among `metrics` (none: nothing to do).
    pub fn new(metrics: &[Metric]) -> SetAccumulator {
        let mut entries: Vec<Entry> = Vec::new();
        for m in metrics {
            let Metric::Set(metric, target) = m else {
                continue;
            };
            if let Some(e) = entries.iter_mut().find(|e| e.target == *target) {
                if let SetMetric::TopK(k) = metric {
                    if let Counts::Classes { top_k, .. } = &mut e.counts {
                        top_k.push((*k, 0));
                    }
                }
                e.metrics.push(*metric);
                continue;
            }
            let counts = match target.kind {
                TargetKind::Classes(classes) => Counts::Classes {
                    classes,
                    confusion: vec![0; classes * classes],
                    top_k: match metric {
                        SetMetric::TopK(k) => vec![(*k, 0)],
                        _ => Vec::new(),
                    },
                },
                TargetKind::Binary { .. } => Counts::Classes {
                    classes: 2,
                    confusion: vec![0; 4],
                    top_k: Vec::new(),
                },
                TargetKind::Regression => Counts::Regression(Vec::new()),
            };
            entries.push(Entry {
                target: target.clone(),
                metrics: vec![*metric],
                counts,
            });
        }
        SetAccumulator { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The (output, label) pairs the accumulator reads from each batch.
    pub fn targets(&self) -> impl Iterator<Item = &MetricTarget> {
        self.entries.iter().map(|e| &e.target)
    }

    /// Adds one batch of `samples` samples: `output` and `label` (row-major
    /// values, the first dim the samples) of the target `target`.
    pub fn add(
        &mut self,
        target: &MetricTarget,
        samples: usize,
        output: &[f64],
        label: &[f64],
    ) -> Result<(), MetricError> {
        for e in self.entries.iter_mut().filter(|e| e.target == *target) {
            add_batch(e, samples, output, label)?;
        }
        Ok(())
    }

    /// The values of every metric, in the order the train block lists
    /// them.
    pub fn finish(&self) -> SetResults {
        let mut results = SetResults::default();
        for e in &self.entries {
            match &e.counts {
                Counts::Classes {
                    classes,
                    confusion,
                    top_k,
                } => {
                    let report = ClassReport::from_confusion(*classes, confusion);
                    let binary = matches!(e.target.kind, TargetKind::Binary { .. });
                    let samples = report.total();
                    for m in &e.metrics {
                        let Some(name) = m.value_name() else {
                            continue;
                        };
                        let value = match *m {
                            SetMetric::Precision(_) | SetMetric::Recall(_) | SetMetric::F1(_)
                                if binary =>
                            {
                                // The positive class, `average="binary"`.
                                match m {
                                    SetMetric::Precision(_) => report.precision[1],
                                    SetMetric::Recall(_) => report.recall[1],
                                    _ => report.f1[1],
                                }
                            }
                            SetMetric::Precision(a) => {
                                report.average(&report.precision, a, report.micro())
                            }
                            SetMetric::Recall(a) => {
                                report.average(&report.recall, a, report.micro())
                            }
                            SetMetric::F1(a) => report.average(&report.f1, a, report.micro()),
                            SetMetric::BinaryAccuracy => report.micro(),
                            SetMetric::TopK(k) => {
                                let hits =
                                    top_k.iter().find(|(kk, _)| *kk == k).map_or(0, |(_, h)| *h);
                                if samples == 0 {
                                    0.0
                                } else {
                                    hits as f64 / samples as f64
                                }
                            }
                            SetMetric::Confusion
                            | SetMetric::Mae
                            | SetMetric::Rmse
                            | SetMetric::R2 => continue,
                        };
                        results.values.push((name, value));
                    }
                    let wants_report = e.metrics.iter().any(|m| {
                        matches!(
                            m,
                            SetMetric::Precision(_)
                                | SetMetric::Recall(_)
                                | SetMetric::F1(_)
                                | SetMetric::Confusion
                        )
                    });
                    if wants_report && results.classes.is_none() {
                        results.classes = Some(report);
                    }
                }
                Counts::Regression(columns) => {
                    let mean = |f: fn(&Moments) -> f64| {
                        columns.iter().map(f).sum::<f64>() / columns.len().max(1) as f64
                    };
                    for m in &e.metrics {
                        let value = match m {
                            SetMetric::Mae => mean(Moments::mae),
                            SetMetric::Rmse => mean(Moments::rmse),
                            SetMetric::R2 => mean(Moments::r2),
                            _ => continue,
                        };
                        if let Some(name) = m.value_name() {
                            results.values.push((name, value));
                        }
                    }
                }
            }
        }
        results
    }
}

fn add_batch(
    e: &mut Entry,
    samples: usize,
    output: &[f64],
    label: &[f64],
) -> Result<(), MetricError> {
    let target = &e.target;
    match (&mut e.counts, target.kind) {
        (
            Counts::Classes {
                classes,
                confusion,
                top_k,
            },
            TargetKind::Classes(_),
        ) => {
            let c = *classes;
            if output.len() != label.len() * c {
                return Err(format!(
                    "output `{}` has {} values for {} labels of `{}`, expected {} ({} classes each)",
                    target.output,
                    output.len(),
                    label.len(),
                    target.label,
                    label.len() * c,
                    c
                ));
            }
            for (scores, &truth) in output.chunks_exact(c).zip(label) {
                let t = class_of(truth, c, &target.label)?;
                let predicted = arg_max(scores);
                confusion[t * c + predicted] += 1;
                let rank = rank_of(scores, t);
                for (k, hits) in top_k.iter_mut() {
                    if rank < *k {
                        *hits += 1;
                    }
                }
            }
        }
        (Counts::Classes { confusion, .. }, TargetKind::Binary { threshold, logits }) => {
            if output.len() != label.len() {
                return Err(format!(
                    "output `{}` has {} values for {} labels of `{}`: a binary classifier has one output per label",
                    target.output,
                    output.len(),
                    label.len(),
                    target.label
                ));
            }
            for (&score, &truth) in output.iter().zip(label) {
                let t = class_of(truth, 2, &target.label)?;
                let p = usize::from(is_positive(score, threshold, logits));
                confusion[t * 2 + p] += 1;
            }
        }
        (Counts::Regression(columns), _) => {
            if output.len() != label.len() {
                return Err(format!(
                    "output `{}` has {} values but label `{}` has {}: a regression compares them one to one",
                    target.output,
                    output.len(),
                    target.label,
                    label.len()
                ));
            }
            // scikit-learn's columns: the values of one sample.
            let width = output.len() / samples.max(1);
            if width == 0 || width * samples != output.len() {
                return Err(format!(
                    "output `{}` has {} values, not {samples} samples of equal width",
                    target.output,
                    output.len()
                ));
            }
            if columns.is_empty() {
                columns.resize(width, Moments::default());
            } else if columns.len() != width {
                return Err(format!(
                    "output `{}` has {width} values per sample here, {} before",
                    target.output,
                    columns.len()
                ));
            }
            for (i, (&p, &t)) in output.iter().zip(label).enumerate() {
                columns[i % width].add(p, t);
            }
        }
        (Counts::Classes { .. }, TargetKind::Regression) => {
            return Err("internal error: a regression target counted as classes".into())
        }
    }
    Ok(())
}

/// The label `value` as a class index below `classes`.
fn class_of(value: f64, classes: usize, label: &str) -> Result<usize, MetricError> {
    if value.fract() == 0.0 && value >= 0.0 && (value as usize) < classes {
        Ok(value as usize)
    } else {
        Err(format!(
            "label `{label}` holds {value}, not one of the model's {classes} classes (0 to {})",
            classes - 1
        ))
    }
}

/// The first highest score (`numpy.argmax`, `torch.argmax`).
pub fn arg_max(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

/// The place of class `t` when the classes are sorted by score, highest
/// first, ties by class index (a stable sort): the classes scoring more,
/// and those scoring the same with a lower index. So `top_k(1)` agrees
/// with the arg-max accuracy, ties included.
pub fn rank_of(scores: &[f64], t: usize) -> usize {
    let s = scores[t];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x > s || (x == s && i < t))
        .count()
}

/// A binary classifier's decision: the probability (the sigmoid of a
/// logit) strictly above the threshold, as Keras's `BinaryAccuracy`.
pub fn is_positive(score: f64, threshold: f64, logits: bool) -> bool {
    let p = if logits {
        1.0 / (1.0 + (-score).exp())
    } else {
        score
    };
    p > threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: TargetKind) -> MetricTarget {
        MetricTarget {
            output: "y".into(),
            label: "label".into(),
            kind,
        }
    }

    fn set(metrics: &[SetMetric], kind: TargetKind) -> (SetAccumulator, MetricTarget) {
        let t = target(kind);
        let list: Vec<Metric> = metrics.iter().map(|&m| Metric::Set(m, t.clone())).collect();
        (SetAccumulator::new(&list), t)
    }

    /// Scores whose arg-max is `class`, of `classes` classes.
    fn one_hot(class: usize, classes: usize) -> Vec<f64> {
        (0..classes)
            .map(|c| if c == class { 2.0 } else { 0.5 })
            .collect()
    }

    fn value(r: &SetResults, name: &str) -> f64 {
        r.values
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no `{name}` in {:?}", r.values))
            .1
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    const ALL_AVERAGES: [SetMetric; 10] = [
        SetMetric::Precision(Average::Macro),
        SetMetric::Precision(Average::Micro),
        SetMetric::Precision(Average::Weighted),
        SetMetric::Recall(Average::Macro),
        SetMetric::Recall(Average::Micro),
        SetMetric::Recall(Average::Weighted),
        SetMetric::F1(Average::Macro),
        SetMetric::F1(Average::Micro),
        SetMetric::F1(Average::Weighted),
        SetMetric::Confusion,
    ];

    /// y_true = [0, 0, 1, 1, 2, 2, 2], y_pred = [0, 1, 1, 1, 2, 0, 1] over
    /// four classes (class 3 in neither), in two batches; the values by hand
    /// from the confusion matrix, as `precision_recall_fscore_support(...,
    /// labels=[0, 1, 2, 3], zero_division=0)` gives them.
    #[test]
    fn averages_and_per_class_values_match_a_hand_computed_confusion_matrix() {
        let (mut acc, t) = set(&ALL_AVERAGES, TargetKind::Classes(4));
        let truth = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0];
        let pred = [0, 1, 1, 1, 2, 0, 1];
        let scores: Vec<f64> = pred.iter().flat_map(|&p| one_hot(p, 4)).collect();
        acc.add(&t, 3, &scores[..12], &truth[..3]).unwrap();
        acc.add(&t, 4, &scores[12..], &truth[3..]).unwrap();
        let r = acc.finish();
        let classes = r.classes.clone().unwrap();
        assert_eq!(
            classes.confusion,
            vec![
                vec![1, 1, 0, 0],
                vec![0, 2, 0, 0],
                vec![1, 1, 1, 0],
                vec![0, 0, 0, 0]
            ]
        );
        assert_eq!(classes.support, vec![2, 2, 3, 0]);
        assert_eq!(classes.precision, vec![0.5, 0.5, 1.0, 0.0]);
        assert_eq!(classes.recall, vec![0.5, 1.0, 1.0 / 3.0, 0.0]);
        assert_eq!(classes.f1, vec![0.5, 4.0 / 6.0, 0.5, 0.0]);
        close(value(&r, "precision"), 2.0 / 4.0);
        close(value(&r, "recall"), (0.5 + 1.0 + 1.0 / 3.0) / 4.0);
        close(value(&r, "f1"), (0.5 + 4.0 / 6.0 + 0.5) / 4.0);
        close(value(&r, "precision_weighted"), 5.0 / 7.0);
        close(value(&r, "recall_weighted"), 4.0 / 7.0);
        close(value(&r, "f1_weighted"), (1.0 + 4.0 / 3.0 + 1.5) / 7.0);
        for name in ["precision_micro", "recall_micro", "f1_micro"] {
            close(value(&r, name), 4.0 / 7.0);
        }
        assert_eq!(r.values.len(), 9, "the confusion matrix has no scalar");
    }

    #[test]
    fn a_class_never_predicted_has_zero_precision_not_nan() {
        // Everything predicted as class 0: classes 1 and 2 are never
        // predicted, so their precision is 0/0 → 0 (`zero_division=0`).
        let (mut acc, t) = set(&ALL_AVERAGES, TargetKind::Classes(3));
        let truth = [0.0, 1.0, 2.0, 2.0];
        let scores: Vec<f64> = (0..4).flat_map(|_| one_hot(0, 3)).collect();
        acc.add(&t, 4, &scores, &truth).unwrap();
        let r = acc.finish();
        let c = r.classes.clone().unwrap();
        assert_eq!(c.precision, vec![0.25, 0.0, 0.0]);
        assert_eq!(c.recall, vec![1.0, 0.0, 0.0]);
        assert_eq!(c.f1, vec![0.4, 0.0, 0.0]);
        close(value(&r, "precision"), 0.25 / 3.0);
        close(value(&r, "f1_weighted"), 0.4 / 4.0);
    }

    #[test]
    fn an_empty_set_scores_zero_everywhere() {
        let (acc, _) = set(&ALL_AVERAGES, TargetKind::Classes(2));
        let r = acc.finish();
        assert!(r.values.iter().all(|(_, v)| *v == 0.0), "{:?}", r.values);
    }

    #[test]
    fn a_label_outside_the_classes_is_an_error() {
        let (mut acc, t) = set(&[SetMetric::F1(Average::Macro)], TargetKind::Classes(3));
        let e = acc.add(&t, 1, &one_hot(0, 3), &[3.0]).unwrap_err();
        assert!(
            e.contains("label `label` holds 3") && e.contains("3 classes"),
            "{e}"
        );
        let e = acc.add(&t, 1, &one_hot(0, 3), &[0.5]).unwrap_err();
        assert!(e.contains("0.5"), "{e}");
        let e = acc.add(&t, 2, &one_hot(0, 3), &[0.0, 1.0]).unwrap_err();
        assert!(e.contains("expected 6"), "{e}");
    }

    #[test]
    fn top_k_counts_the_true_class_among_the_k_best_with_ties_to_the_lower_index() {
        let (mut acc, t) = set(
            &[SetMetric::TopK(1), SetMetric::TopK(2), SetMetric::TopK(3)],
            TargetKind::Classes(4),
        );
        // Sample 1: true class 2 is third (0.4 < 0.5 < 0.6 order: 1, 3, 2).
        // Sample 2: true class 3 ties with class 0 at the top: class 0
        // comes first, so 3 is second.
        // Sample 3: true class 0 is the best.
        let scores = [
            0.1, 0.6, 0.4, 0.5, //
            0.7, 0.1, 0.2, 0.7, //
            0.9, 0.0, 0.0, 0.0,
        ];
        acc.add(&t, 3, &scores, &[2.0, 3.0, 0.0]).unwrap();
        let r = acc.finish();
        close(value(&r, "top_1_accuracy"), 1.0 / 3.0);
        close(value(&r, "top_2_accuracy"), 2.0 / 3.0);
        close(value(&r, "top_3_accuracy"), 1.0);
        assert_eq!(rank_of(&[0.7, 0.1, 0.2, 0.7], 0), 0);
        assert_eq!(arg_max(&[0.7, 0.1, 0.2, 0.7]), 0, "ties: the first");
    }

    #[test]
    fn binary_thresholds_are_strict_and_logits_go_through_a_sigmoid() {
        let metrics = [
            SetMetric::BinaryAccuracy,
            SetMetric::Precision(Average::Macro),
            SetMetric::Recall(Average::Macro),
            SetMetric::F1(Average::Macro),
            SetMetric::Confusion,
        ];
        let kind = TargetKind::Binary {
            threshold: 0.5,
            logits: false,
        };
        let (mut acc, t) = set(&metrics, kind);
        // 0.5 is not above 0.5: negative.
        let scores = [0.9, 0.5, 0.2, 0.7, 0.1];
        let truth = [1.0, 1.0, 1.0, 0.0, 0.0];
        acc.add(&t, 5, &scores, &truth).unwrap();
        let r = acc.finish();
        // tp 1 (0.9), fn 2, fp 1 (0.7), tn 1.
        assert_eq!(
            r.classes.as_ref().unwrap().confusion,
            vec![vec![1, 1], vec![2, 1]]
        );
        close(value(&r, "binary_accuracy"), 2.0 / 5.0);
        close(value(&r, "precision"), 0.5);
        close(value(&r, "recall"), 1.0 / 3.0);
        close(value(&r, "f1"), 2.0 / (2.0 + 1.0 + 2.0));

        let logits = TargetKind::Binary {
            threshold: 0.5,
            logits: true,
        };
        let (mut acc, t) = set(&metrics, logits);
        // sigmoid(0) = 0.5, not above: negative; sigmoid(0.01) > 0.5.
        acc.add(&t, 3, &[0.0, 0.01, -3.0], &[1.0, 1.0, 0.0])
            .unwrap();
        let r = acc.finish();
        close(value(&r, "binary_accuracy"), 2.0 / 3.0);
        close(value(&r, "precision"), 1.0);

        // Nothing predicted positive: precision 0/0 → 0.
        let high = TargetKind::Binary {
            threshold: 1.0,
            logits: false,
        };
        let (mut acc, t) = set(&metrics, high);
        acc.add(&t, 2, &[1.0, 0.99], &[1.0, 0.0]).unwrap();
        let r = acc.finish();
        close(value(&r, "precision"), 0.0);
        close(value(&r, "recall"), 0.0);
        close(value(&r, "f1"), 0.0);
        close(value(&r, "binary_accuracy"), 0.5);
        // Labels must be 0 or 1.
        assert!(acc.add(&t, 1, &[0.3], &[0.5]).is_err());
    }

    #[test]
    fn regression_metrics_match_closed_forms() {
        let (mut acc, t) = set(
            &[SetMetric::Mae, SetMetric::Rmse, SetMetric::R2],
            TargetKind::Regression,
        );
        // One column: y = [1, 2, 3, 4], p = [1.5, 2, 2, 5].
        acc.add(&t, 2, &[1.5, 2.0], &[1.0, 2.0]).unwrap();
        acc.add(&t, 2, &[2.0, 5.0], &[3.0, 4.0]).unwrap();
        let r = acc.finish();
        close(value(&r, "mae"), (0.5 + 0.0 + 1.0 + 1.0) / 4.0);
        close(value(&r, "rmse"), (2.25f64 / 4.0).sqrt());
        // SS_res = 2.25, SS_tot = 5.
        close(value(&r, "r2"), 1.0 - 2.25 / 5.0);
        assert!(r.classes.is_none());
    }

    #[test]
    fn regression_over_columns_is_their_uniform_average() {
        let (mut acc, t) = set(&[SetMetric::Rmse, SetMetric::R2], TargetKind::Regression);
        // Two columns: a = [0, 2] predicted [0, 2] (R² 1, RMSE 0);
        // b = [1, 3] predicted [3, 1] (SS_res 8, SS_tot 2: R² -3, RMSE 2).
        acc.add(&t, 2, &[0.0, 3.0, 2.0, 1.0], &[0.0, 1.0, 2.0, 3.0])
            .unwrap();
        let r = acc.finish();
        close(value(&r, "r2"), (1.0 - 3.0) / 2.0);
        close(value(&r, "rmse"), (0.0 + 2.0) / 2.0);
    }

    #[test]
    fn r2_of_a_constant_label_is_finite() {
        let (mut acc, t) = set(&[SetMetric::R2], TargetKind::Regression);
        acc.add(&t, 2, &[1.0, 1.0], &[1.0, 1.0]).unwrap();
        close(value(&acc.finish(), "r2"), 1.0);
        let (mut acc, t) = set(&[SetMetric::R2], TargetKind::Regression);
        acc.add(&t, 2, &[1.0, 2.0], &[1.0, 1.0]).unwrap();
        close(value(&acc.finish(), "r2"), 0.0);
    }
}
