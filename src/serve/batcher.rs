//! Dynamic batching: the one thread that owns the model gathers the
//! requests waiting for it into a batch (up to `max_batch` samples, or
//! what arrived within `max_delay` of the first), runs it once, and hands
//! each request its rows.
//!
//! A batch waits only for requests the server is already receiving: with
//! nothing on its way, waiting could only add latency (a lone client
//! would pay the whole delay on every request), and requests that come
//! later form the next batch while this one runs.

use nnc_ir::DType;
use nnc_runtime::{Batch, BatchData, BatchField, Executor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One output of one request: its rows of the batch's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub name: String,
    pub dtype: DType,
    /// `[samples, ...]`.
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// A request's samples, already the model's input (through the data
/// block's transforms), waiting for a batch.
pub struct Job {
    /// `[samples, ...sample]` of the input, and its values.
    pub field: BatchField,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Vec<Answer>, String>>,
}

impl Job {
    pub fn samples(&self) -> usize {
        self.field.shape.first().copied().unwrap_or(0)
    }

    fn sample_shape(&self) -> &[usize] {
        self.field.shape.get(1..).unwrap_or_default()
    }
}

pub enum Message {
    Job(Job),
    /// The server is shutting down: run what is waiting without waiting
    /// for more.
    Flush,
}

/// Takes jobs off the queue in batches.
pub struct Gather {
    rx: Receiver<Message>,
    max_batch: usize,
    max_delay: Duration,
    /// Requests being received and checked, not yet queued.
    arriving: Arc<AtomicUsize>,
    /// A job that did not fit the last batch: the first of the next.
    held: Option<Job>,
    draining: bool,
}

/// How often a waiting batch looks whether requests are still arriving
/// (one that fails its checks never comes).
const POLL: Duration = Duration::from_micros(200);

impl Gather {
    pub fn new(
        rx: Receiver<Message>,
        max_batch: usize,
        max_delay: Duration,
        arriving: Arc<AtomicUsize>,
    ) -> Gather {
        Gather {
            rx,
            max_batch: max_batch.max(1),
            max_delay,
            arriving,
            held: None,
            draining: false,
        }
    }

    /// The next batch: at least one job, more while they fit in
    /// `max_batch` samples and are queued, or arriving, before
    /// `max_delay` after the first was queued. `None` once every sender
    /// is gone and nothing waits.
    pub fn next(&mut self) -> Option<Vec<Job>> {
        let first = match self.held.take() {
            Some(job) => job,
            None => loop {
                match self.rx.recv() {
                    Ok(Message::Job(job)) => break job,
                    Ok(Message::Flush) => self.draining = true,
                    Err(_) => return None,
                }
            },
        };
        // From the first job's arrival, not from now: when the model was
        // busy, the jobs queued meanwhile have waited long enough.
        let deadline = first.enqueued + self.max_delay;
        let mut total = first.samples();
        let mut jobs = vec![first];
        while total < self.max_batch {
            let now = Instant::now();
            let done_waiting =
                self.draining || now >= deadline || self.arriving.load(Ordering::SeqCst) == 0;
            let message = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if done_waiting => break,
                Err(TryRecvError::Empty) => {
                    match self.rx.recv_timeout((deadline - now).min(POLL)) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match message {
                Message::Flush => self.draining = true,
                Message::Job(job) => {
                    let fits = total + job.samples() <= self.max_batch
                        && job.sample_shape() == jobs[0].sample_shape();
                    if !fits {
                        self.held = Some(job);
                        break;
                    }
                    total += job.samples();
                    jobs.push(job);
                }
            }
        }
        Some(jobs)
    }
}

/// The batch sizes programs are compiled for: the powers of two below
/// `max_batch`, and `max_batch`. A batch is padded to the next of them,
/// so a handful of programs (compiled before the server answers) serve
/// every size, at most twice the rows of work.
pub fn sizes(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut sizes: Vec<usize> = (0..usize::BITS)
        .map(|p| 1usize << p)
        .take_while(|&s| s < max_batch)
        .collect();
    sizes.push(max_batch);
    sizes
}

/// The size a batch of `samples` runs at.
pub fn padded(samples: usize, sizes: &[usize]) -> usize {
    sizes
        .iter()
        .copied()
        .find(|&s| s >= samples)
        .unwrap_or(samples)
}

/// One output over all the rows of a batch.
struct Rows {
    name: String,
    dtype: DType,
    /// The shape of one sample's values.
    sample_shape: Vec<usize>,
    values: Vec<f64>,
}

/// Runs `jobs` as one batch of the input `input`, and answers each with
/// its rows of every output in `outputs`' order. The batch runs padded to
/// the next of `sizes`; more samples than the largest (one request
/// larger than `--max-batch`) run in pieces of that size, so no request
/// makes the model compile at a size of its own.
pub fn run_batch(
    exec: &mut dyn Executor,
    input: &str,
    outputs: &[String],
    jobs: Vec<Job>,
    sizes: &[usize],
    batch: &mut Batch,
) {
    let rows = match run_rows(exec, input, outputs, &jobs, sizes, batch) {
        Ok(rows) => rows,
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut row = 0;
    for job in jobs {
        let samples = job.samples();
        let answers = rows
            .iter()
            .map(|r| {
                let per: usize = r.sample_shape.iter().product();
                let values = r
                    .values
                    .get(row * per..(row + samples) * per)
                    .unwrap_or_default()
                    .to_vec();
                let mut shape = vec![samples];
                shape.extend(&r.sample_shape);
                Answer {
                    name: r.name.clone(),
                    dtype: r.dtype,
                    shape,
                    values,
                }
            })
            .collect();
        row += samples;
        // A caller that gave up (its connection closed) takes nothing.
        let _ = job.reply.send(Ok(answers));
    }
}

/// Every output of the model on the jobs' samples, in order.
fn run_rows(
    exec: &mut dyn Executor,
    input: &str,
    outputs: &[String],
    jobs: &[Job],
    sizes: &[usize],
    batch: &mut Batch,
) -> Result<Vec<Rows>, String> {
    let Some(first) = jobs.first() else {
        return Err("internal error: an empty batch".into());
    };
    let sample_shape = first.sample_shape().to_vec();
    let per: usize = sample_shape.iter().product();
    let total: usize = jobs.iter().map(Job::samples).sum();
    let largest = sizes.last().copied().unwrap_or(1).max(1);
    let mut rows: Vec<Rows> = Vec::with_capacity(outputs.len());
    let mut start = 0;
    while start < total {
        let n = (total - start).min(largest);
        let size = padded(n, sizes);
        fill(
            input,
            jobs,
            start * per..(start + n) * per,
            size,
            &sample_shape,
            batch,
        )?;
        let tensors = exec.predict(batch).map_err(|e| e.to_string())?;
        for (k, name) in outputs.iter().enumerate() {
            let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) else {
                return Err(format!("internal error: the model gave no output `{name}`"));
            };
            let out_per: usize = t.shape.iter().skip(1).product();
            let values = t
                .data
                .get(..n * out_per)
                .ok_or_else(|| format!("internal error: output `{name}` has too few rows"))?;
            if k == rows.len() {
                rows.push(Rows {
                    name: name.clone(),
                    dtype: t.dtype,
                    sample_shape: t.shape.iter().skip(1).copied().collect(),
                    values: Vec::with_capacity(total * out_per),
                });
            }
            rows[k].values.extend_from_slice(values);
        }
        start += n;
    }
    Ok(rows)
}

/// `batch` as the values `range` of the jobs' samples one after the
/// other, then zeros up to `size` samples of `sample_shape`.
fn fill(
    input: &str,
    jobs: &[Job],
    range: std::ops::Range<usize>,
    size: usize,
    sample_shape: &[usize],
    batch: &mut Batch,
) -> Result<(), String> {
    let per: usize = sample_shape.iter().product();
    let len = size * per;
    let mut data = match jobs.first().map(|j| &j.field.data) {
        Some(BatchData::I32(_)) => BatchData::I32(Vec::with_capacity(len)),
        Some(BatchData::F64(_)) => BatchData::F64(Vec::with_capacity(len)),
        _ => BatchData::F32(Vec::with_capacity(len)),
    };
    // Where each job's values start among all the jobs' values.
    let mut offset = 0;
    for job in jobs {
        let count = job.samples() * per;
        let (from, to) = (range.start.max(offset), range.end.min(offset + count));
        if from < to {
            let piece = from - offset..to - offset;
            let copied = match (&mut data, &job.field.data) {
                (BatchData::F32(out), BatchData::F32(v)) => {
                    v.get(piece).map(|p| out.extend_from_slice(p))
                }
                (BatchData::I32(out), BatchData::I32(v)) => {
                    v.get(piece).map(|p| out.extend_from_slice(p))
                }
                (BatchData::F64(out), BatchData::F64(v)) => {
                    v.get(piece).map(|p| out.extend_from_slice(p))
                }
                _ => None,
            };
            if copied.is_none() {
                return Err("internal error: a request's values do not fit its shape".into());
            }
        }
        offset += count;
    }
    match &mut data {
        BatchData::F32(out) => out.resize(len, 0.0),
        BatchData::I32(out) => out.resize(len, 0),
        BatchData::F64(out) => out.resize(len, 0.0),
    }
    let mut shape = vec![size];
    shape.extend(sample_shape);
    batch.size = size;
    batch.fields.clear();
    batch.fields.push(BatchField {
        name: input.to_string(),
        shape,
        data,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn job(samples: usize) -> (Job, oneshot::Receiver<Result<Vec<Answer>, String>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            field: BatchField {
                name: "x".into(),
                shape: vec![samples, 2],
                data: BatchData::F32(vec![0.0; samples * 2]),
            },
            enqueued: Instant::now(),
            reply,
        };
        (job, rx)
    }

    #[test]
    fn batches_hold_at_most_max_batch_samples_and_keep_the_order() {
        let (tx, rx) = mpsc::channel();
        let mut keep = Vec::new();
        for n in [3, 4, 2, 9, 1] {
            let (j, r) = job(n);
            keep.push(r);
            tx.send(Message::Job(j)).unwrap();
        }
        drop(tx);
        // Arriving requests that never come do not hold a batch past
        // what is queued: a full one goes at once.
        let arriving = Arc::new(AtomicUsize::new(0));
        let mut gather = Gather::new(rx, 8, Duration::from_secs(60), arriving);
        let sizes: Vec<Vec<usize>> = std::iter::from_fn(|| gather.next())
            .map(|b| b.iter().map(Job::samples).collect())
            .collect();
        // 9 samples alone exceed the limit and run alone.
        assert_eq!(sizes, [vec![3, 4], vec![2], vec![9], vec![1]]);
    }

    #[test]
    fn a_batch_waits_for_arriving_requests_until_the_delay_and_no_longer() {
        let (tx, rx) = mpsc::channel();
        let arriving = Arc::new(AtomicUsize::new(0));
        let mut gather = Gather::new(rx, 64, Duration::from_millis(300), arriving.clone());
        // Nothing on its way: the lone job goes at once.
        let (j, _r) = job(1);
        tx.send(Message::Job(j)).unwrap();
        let started = Instant::now();
        assert_eq!(gather.next().map(|b| b.len()), Some(1));
        assert!(started.elapsed() < Duration::from_millis(250));

        // One on its way that arrives: the batch takes it.
        arriving.store(1, Ordering::SeqCst);
        let (j, _r1) = job(1);
        tx.send(Message::Job(j)).unwrap();
        let (late, _r2) = job(2);
        let sender = tx.clone();
        let arrived = arriving.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sender.send(Message::Job(late)).unwrap();
            arrived.store(0, Ordering::SeqCst);
        });
        assert_eq!(gather.next().map(|b| b.len()), Some(2));
        t.join().unwrap();

        // One on its way that never comes: the batch waits the delay.
        arriving.store(1, Ordering::SeqCst);
        let (j, _r) = job(1);
        tx.send(Message::Job(j)).unwrap();
        let started = Instant::now();
        assert_eq!(gather.next().map(|b| b.len()), Some(1));
        assert!(started.elapsed() >= Duration::from_millis(290));

        // A flush stops the wait.
        gather.max_delay = Duration::from_secs(60);
        let (j, _r) = job(1);
        tx.send(Message::Job(j)).unwrap();
        tx.send(Message::Flush).unwrap();
        let started = Instant::now();
        assert_eq!(gather.next().map(|b| b.len()), Some(1));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_piece_of_a_batch_takes_its_values_across_requests_then_zeros() {
        let (mut a, _ra) = job(3);
        let (mut b, _rb) = job(2);
        a.field.data = BatchData::F32((0..6).map(|v| v as f32).collect());
        b.field.data = BatchData::F32((6..10).map(|v| v as f32).collect());
        let mut batch = Batch::default();
        // Samples 2 and 3 of the five, padded to 4 samples.
        fill("x", &[a, b], 4..8, 4, &[2], &mut batch).unwrap();
        assert_eq!(batch.size, 4);
        assert_eq!(batch.fields[0].shape, [4, 2]);
        assert_eq!(
            batch.fields[0].data,
            BatchData::F32(vec![4.0, 5.0, 6.0, 7.0, 0.0, 0.0, 0.0, 0.0])
        );
    }

    #[test]
    fn batches_pad_to_a_few_sizes() {
        assert_eq!(sizes(64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(sizes(48), [1, 2, 4, 8, 16, 32, 48]);
        assert_eq!(sizes(1), [1]);
        assert_eq!(padded(5, &sizes(64)), 8);
        assert_eq!(padded(33, &sizes(48)), 48);
        assert_eq!(padded(70, &sizes(64)), 70);
    }
}
