//! What `GET /metrics` reports, in Prometheus' text format: requests by
//! status, errors, the latency of inference requests and the size of the
//! batches the model ran.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram of fixed buckets (upper bounds), counted without locks.
struct Histogram {
    bounds: Vec<f64>,
    /// One count per bound (not cumulative) and one past the last.
    counts: Vec<AtomicU64>,
    /// The sum of observations, in millionths: an integer so that adding
    /// is atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    latency: Histogram,
    batch_samples: Histogram,
    batch_requests: Histogram,
}

impl Metrics {
    /// Batch buckets are the sizes batches are padded to.
    pub fn new(max_batch: usize) -> Metrics {
        let latency = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ];
        let sizes: Vec<f64> = super::batcher::sizes(max_batch)
            .into_iter()
            .map(|s| s as f64)
            .collect();
        Metrics {
            by_status: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(latency),
            batch_samples: Histogram::new(sizes.clone()),
            batch_requests: Histogram::new(sizes),
        }
    }

    /// A request answered with `status`.
    pub fn request(&self, status: u16) {
        if let Ok(mut map) = self.by_status.lock() {
            *map.entry(status).or_insert(0) += 1;
        }
    }

    /// An inference request answered after `took` (whatever its status).
    pub fn infer_latency(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    /// A batch of `samples` samples from `requests` requests ran.
    pub fn batch(&self, samples: usize, requests: usize) {
        self.batch_samples.observe(samples as f64);
        self.batch_requests.observe(requests as f64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let by_status = self.by_status.lock().map(|m| m.clone()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP nnc_requests_total HTTP requests answered, by status."
        );
        let _ = writeln!(out, "# TYPE nnc_requests_total counter");
        for (status, n) in &by_status {
            let _ = writeln!(out, "nnc_requests_total{{status=\"{status}\"}} {n}");
        }
        let errors: u64 = by_status
            .iter()
            .filter(|(s, _)| **s >= 400)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(
            out,
            "# HELP nnc_request_errors_total HTTP requests answered with a status of 400 or more."
        );
        let _ = writeln!(out, "# TYPE nnc_request_errors_total counter");
        let _ = writeln!(out, "nnc_request_errors_total {errors}");
        self.latency.render(
            &mut out,
            "nnc_infer_duration_seconds",
            "Time from an inference request's arrival to its answer.",
        );
        self.batch_samples.render(
            &mut out,
            "nnc_batch_size",
            "Samples in each batch the model ran.",
        );
        self.batch_requests.render(
            &mut out,
            "nnc_batch_requests",
            "Requests gathered into each batch the model ran.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_every_observation() {
        let m = Metrics::new(8);
        for (samples, requests) in [(1, 1), (3, 2), (8, 5)] {
            m.batch(samples, requests);
        }
        m.request(200);
        m.request(200);
        m.request(400);
        let text = m.render();
        for line in [
            "nnc_batch_size_bucket{le=\"1\"} 1",
            "nnc_batch_size_bucket{le=\"2\"} 1",
            "nnc_batch_size_bucket{le=\"4\"} 2",
            "nnc_batch_size_bucket{le=\"8\"} 3",
            "nnc_batch_size_bucket{le=\"+Inf\"} 3",
            "nnc_batch_size_sum 12",
            "nnc_batch_size_count 3",
            "nnc_requests_total{status=\"200\"} 2",
            "nnc_requests_total{status=\"400\"} 1",
            "nnc_request_errors_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
