//! A JIT training step allocates nothing: the arena and the state buffer
//! are planned once per program, inputs are copied into place, and the
//! metrics are read without building tensors.
//!
//! A counting global allocator wraps `System`; only the allocations of the
//! thread that turned counting on are counted (the test harness has other
//! threads), and `realloc` counts as an allocation. When a step does
//! allocate, the test runs one more step recording a backtrace per
//! allocation and prints them, so the failure names the culprits.

use nnc_runtime::{Batch, BatchData, BatchField, Executor, Jit, Programs};
use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Record a backtrace per counted allocation.
    static TRACING: Cell<bool> = const { Cell::new(false) };
    /// Set while recording, so the recording's own allocations are not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    static SITES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn note() {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let on = COUNTING.try_with(Cell::get).unwrap_or(false);
    if !on || IN_HOOK.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACING.try_with(Cell::get).unwrap_or(false) {
        IN_HOOK.with(|h| h.set(true));
        let trace = Backtrace::force_capture().to_string();
        let _ = SITES.try_with(|s| s.borrow_mut().push(trace));
        IN_HOOK.with(|h| h.set(false));
    }
}

// SAFETY: every call is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The frames of a backtrace that belong to this workspace or to `gemm`.
fn our_frames(trace: &str) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        let ours = ["nnc", "gemm", "alloc::", "hashbrown"]
            .iter()
            .any(|k| l.contains(k));
        if ours && !l.starts_with("at ") && !l.contains("no_alloc::") {
            let at = lines.get(i + 1).map(|a| a.trim()).unwrap_or("");
            out.push(format!("    {l}\n        {at}"));
        }
    }
    out.join("\n")
}

/// The number of allocations `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.load(Ordering::Relaxed) - before, r)
}

fn digits_programs() -> (Programs, nnc_ir::Optimizer) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits_mlp.nn");
    let src = nnc_dsl::SourceFile::new("digits_mlp.nn", std::fs::read_to_string(path).unwrap());
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let step = nnc::driver::train_step(&module).unwrap();
    let spec = module.train.unwrap();
    let programs = Programs::new(module.forward.clone(), spec.evaluation, step);
    (programs, spec.optimizer)
}

fn batch(size: usize) -> Batch {
    let image: Vec<f32> = (0..size * 64)
        .map(|i| ((i * 7) % 17) as f32 / 16.0)
        .collect();
    let label: Vec<i32> = (0..size).map(|i| (i * 3 % 10) as i32).collect();
    Batch {
        size,
        fields: vec![
            BatchField {
                name: "image".into(),
                shape: vec![size, 64],
                data: BatchData::F32(image),
            },
            BatchField {
                name: "label".into(),
                shape: vec![size],
                data: BatchData::I32(label),
            },
        ],
    }
}

/// A JIT with the digits MLP's step compiled and warm (two steps run).
fn warm_jit() -> (Jit, Batch, f64) {
    let (programs, optimizer) = digits_programs();
    let mut jit = Jit::new(programs, 0).unwrap();
    let mut batch = batch(32);
    // The hyperparameters are inputs of the step, fed like data (here
    // those of the first step, for every step).
    nnc_runtime::train::feed_hyper(&mut batch, &optimizer, optimizer.lr(), 0);
    // The first step compiles; the second runs warm.
    let first = jit.train_step(&batch).unwrap();
    let second = jit.train_step(&batch).unwrap();
    assert!(first.loss.is_finite() && second.loss < first.loss);
    (jit, batch, first.loss)
}

/// The allocations of one more step, as backtraces.
fn traced_step(jit: &mut Jit, batch: &Batch) -> Vec<String> {
    TRACING.with(|t| t.set(true));
    let (_, r) = allocations(|| jit.train_step(batch));
    TRACING.with(|t| t.set(false));
    r.unwrap();
    SITES.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// `gemm` 0.19 allocates scratch on every call: `gemm_common::gemm::
/// gemm_basic_generic` builds `vec![false; mc / MR]` (gemm.rs:490) on every
/// call, and a `dyn_stack::MemBuffer` for packed operands (gemm.rs:437)
/// whenever it packs. Those are outside nnc; this test fails on anything else.
#[test]
fn the_counter_counts_this_thread_only_while_on() {
    let (n, v) = allocations(|| vec![1u8; 3]);
    assert_eq!(n, 1);
    let (n, _) = allocations(|| std::thread::spawn(|| vec![0u8; 7]).join().unwrap());
    assert!(n >= 1, "spawning allocates on this thread");
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    drop(vec![v.clone(), v]);
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), before);
}

#[test]
fn a_warm_jit_training_step_allocates_nothing() {
    let (mut jit, batch, first_loss) = warm_jit();
    let (n, r) = allocations(|| jit.train_step(&batch));
    let third = r.unwrap();
    assert!(third.loss < first_loss, "{first_loss} then {}", third.loss);
    if n != 0 {
        for (i, trace) in traced_step(&mut jit, &batch).iter().enumerate() {
            eprintln!("allocation {i}:\n{}", our_frames(trace));
        }
    }
    assert_eq!(n, 0, "a warm JIT training step allocated {n} times");
}
