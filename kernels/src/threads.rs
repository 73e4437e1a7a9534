//! The persistent thread pool kernels split their work over.
//!
//! One process-wide pool, sized by [`set_threads`]: `nnc run` and `nnc
//! bench` set it from `--threads` (default: every core); a library user
//! who never calls it runs on one thread. A parallel kernel ([`run`]) runs
//! tasks on the calling thread and on `threads - 1` workers, so
//! `set_threads(2)` uses two cores in all.
//!
//! Why not rayon: its idle workers go to sleep within microseconds, and a
//! training step alternates serial kernels with parallel ones, so every
//! parallel kernel paid a wake-up (a futex round trip, 50–100 µs on this
//! machine): a LeNet step ran *slower* on two threads. These workers wait
//! for [`SPIN`] after their last task (a whole step, typically) and only
//! then sleep. Waits spin first and then yield, so that on a machine
//! running other work a thread that waits does not keep the one it waits
//! for off the core.
//!
//! Work is split so that every output element is computed by exactly the
//! operations, in exactly the order, of the one-thread code: results are
//! identical for every thread count, not just for a fixed one. Kernels
//! below a measured size stay on one thread (see `sgemm::PARALLEL_FLOPS`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker waits for the next parallel kernel before it
/// sleeps: spinning for [`SPIN_HOT`], then yielding its core between
/// checks (so a busy machine loses little to it).
pub const SPIN: Duration = Duration::from_millis(2);
/// The first part of [`SPIN`], spent spinning.
pub const SPIN_HOT: Duration = Duration::from_micros(100);

/// Why the pool could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ThreadsError(String);

static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);
static THREADS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Set on pool workers and on a thread while it dispatches: a parallel
    /// kernel inside a parallel region runs serially.
    static IN_PARALLEL: Cell<bool> = const { Cell::new(false) };
}

/// The number of cores, the default of `--threads`.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets how many threads parallel kernels use (the caller's included);
/// `1` runs everything on the calling thread. Takes effect for the next
/// kernel; programs need not be recompiled.
pub fn set_threads(threads: usize) -> Result<(), ThreadsError> {
    if threads == 0 {
        return Err(ThreadsError(
            "the number of threads must be at least 1".into(),
        ));
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if THREADS.load(Ordering::Relaxed) == threads {
        return Ok(());
    }
    *pool = if threads == 1 {
        None
    } else {
        Some(Arc::new(Pool::new(threads - 1)?))
    };
    THREADS.store(threads, Ordering::Relaxed);
    Ok(())
}

/// How many threads parallel kernels use.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Whether this thread is running a task of a parallel kernel (a nested
/// parallel kernel runs serially).
pub fn in_parallel() -> bool {
    IN_PARALLEL.with(Cell::get)
}

/// Runs `task(0)` … `task(n - 1)` on the calling thread and the pool's
/// workers, and returns when all have finished. Serial when the pool has
/// one thread, `n` is 1, or this is already inside a parallel region (or
/// another thread is dispatching).
pub fn run(n: usize, task: &(dyn Fn(usize) + Sync)) {
    let pool = if n > 1 && !IN_PARALLEL.with(Cell::get) {
        POOL.lock().unwrap_or_else(|e| e.into_inner()).clone()
    } else {
        None
    };
    match pool {
        Some(pool) => pool.run(n, task),
        None => serially(n, task),
    }
}

/// The tasks one after another on this thread. Several tasks count as a
/// parallel region, so that a kernel they call runs serially as it would
/// on a worker: a GEMM splitting again from a task here would take this
/// thread's packing space a second time.
fn serially(n: usize, task: &(dyn Fn(usize) + Sync)) {
    let outer = IN_PARALLEL.with(|f| f.replace(f.get() || n > 1));
    (0..n).for_each(task);
    IN_PARALLEL.with(|f| f.set(outer));
}

/// The task a dispatch publishes: the closure (its lifetime erased: the
/// dispatcher does not return before every claimed task has finished, and
/// a task can only be claimed under its own generation), the task count
/// and the generation.
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    generation: u64,
}

// SAFETY: the closure is `Sync`, and is only called while the dispatcher
// keeps it alive (see `Job`).
unsafe impl Send for Job {}

struct Shared {
    job: Mutex<Option<Job>>,
    /// `generation << 32 | next task index`: a task is claimed by a CAS
    /// that also checks the generation, so a late worker never runs a task
    /// of a job it did not read.
    claim: AtomicU64,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// Bumped (after `job` and `claim`) to start a job.
    generation: AtomicU64,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
    /// One dispatch at a time.
    dispatch: Mutex<()>,
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(workers: usize) -> Result<Pool, ThreadsError> {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
            dispatch: Mutex::new(()),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("nnc-worker-{i}"))
                .spawn(move || worker(&s))
                .map_err(|e| ThreadsError(format!("could not start a thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Pool {
            shared,
            workers: handles,
        })
    }

    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        let Ok(_guard) = s.dispatch.try_lock() else {
            // Another thread dispatches.
            return serially(n, task);
        };
        let generation = s.generation.load(Ordering::Relaxed) + 1;
        // SAFETY (of the transmute): only the lifetime is erased; see `Job`.
        let task_static: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(task)
        };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some(Job {
                task: task_static,
                tasks: n,
                generation,
            });
            // Task 0 is the dispatcher's: the same rows of consecutive
            // kernels stay on one core (a loop's step splits its product
            // and its elementwise work by rows), and their data in its
            // cache.
            s.done.store(0, Ordering::SeqCst);
            s.claim.store(generation << 32 | 1, Ordering::SeqCst);
        }
        s.generation.store(generation, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_PARALLEL.with(|f| f.set(true));
        task(0);
        s.done.fetch_add(1, Ordering::Release);
        work(
            s,
            Job {
                task: task_static,
                tasks: n,
                generation,
            },
        );
        IN_PARALLEL.with(|f| f.set(false));
        // Spin briefly, then yield: on a machine with other work the task
        // still running may be waiting for this core.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            if spins < 4096 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _lock = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Claims and runs tasks of `job` until none is left.
fn work(s: &Shared, job: Job) {
    loop {
        let c = s.claim.load(Ordering::Acquire);
        let (generation, index) = (c >> 32, (c & 0xffff_ffff) as usize);
        if generation != job.generation || index >= job.tasks {
            return;
        }
        if s.claim
            .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: a task of this generation was claimed, so the dispatcher
        // is still waiting for it and the closure is alive.
        unsafe { (*job.task)(index) };
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(s: &Shared) {
    IN_PARALLEL.with(|f| f.set(true));
    let mut seen = 0u64;
    loop {
        // Spin, then sleep, until a new generation starts.
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && started.elapsed() > SPIN_HOT {
                // Past the hot phase, give the core away between checks.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(256) && started.elapsed() > SPIN {
                let mut lock = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst)
                {
                    lock = s.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(lock);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            work(s, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3, 1] {
            set_threads(threads).unwrap();
            for n in [1, 2, 7, 64] {
                let seen = Mutex::new(Vec::new());
                run(n, &|i| seen.lock().unwrap().push(i));
                let mut seen = seen.into_inner().unwrap();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
        assert!(set_threads(0).is_err());
    }

    #[test]
    fn tasks_run_serially_beside_another_dispatch_are_a_parallel_region() {
        set_threads(2).unwrap();
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            // Holds the pool's dispatch for a while.
            scope.spawn(|| {
                run(2, &|t| {
                    if t == 0 {
                        started.wait();
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                })
            });
            started.wait();
            let nested = Mutex::new(Vec::new());
            run(2, &|_| nested.lock().unwrap().push(in_parallel()));
            assert_eq!(*nested.lock().unwrap(), [true, true]);
            assert!(!in_parallel(), "restored after the region");
        });
    }

    #[test]
    fn a_parallel_region_inside_a_task_runs_serially() {
        set_threads(2).unwrap();
        let count = AtomicUsize::new(0);
        run(4, &|_| {
            run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }
}
