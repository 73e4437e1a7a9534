//! Convolution columns that never exist whole, decided once for the code
//! generator's plan and the optimizer's cost model: matmuls summed over
//! their batch by their only user (a weight gradient accumulated straight
//! into the sum, [`summed_products`]), and `unfold`s and `fold`s staged
//! through scratch one batch index at a time ([`staged_windows`]). Each
//! removes a kernel and the columns' trip through memory, so the model
//! that compares candidate graphs has to know them as well as the plan.
//!
//! Both read a [`FusionDag`] with concrete sizes (the cost model's at its
//! nominal batch), so the decisions depend on sizes exactly as the code
//! generator's do.

use crate::fusion::FusionDag;
use crate::layout;
use crate::op::{Op, ReduceOp};
use crate::types::DType;

/// Whether one product `c[m×n] = a[m×k] @ b[k×n]` (one product of a
/// batch; `m` counts the rows after batch folding) runs as the code generator's
/// own (Cranelift) loops rather than the packed `sgemm`. It decides
/// `codegen::emit::product`, and is here because a product summed over its
/// batch needs `sgemm`'s accumulate mode (see [`summed_products`]).
///
/// Chosen by measurement: `CARGO_TARGET_DIR=... cargo bench -p nnc-codegen
/// --bench matmul` (release, one thread, 2-core EPYC Zen 4 with AVX-512;
/// GFLOP/s, median of 21 samples, mean of two runs) against `gemm::gemm`,
/// which `cargo bench -p nnc-kernels --bench sgemm` shows our `sgemm`
/// matches within ±8% on these shapes:
///
/// - Always below 16k multiply-adds (`m·n·k < 2^14`): there a packed
///   product's per-call cost dominates (2–14× slower than these loops at
///   m×10×10 for m ≤ 32), and the loops lose at most 1.2× (4×10×256).
/// - For `m ≤ 8` rows unless `sgemm` reads `b` in place (`b_in_place`,
///   below): a packed product copies all of `b` (k·n values) to use it
///   for only a few rows; these loops read it in place. At m = 1
///   (inference on one sample) the MNIST MLP's forward pass took 0.012 ms
///   this way and 0.047 ms packed. For `a @ b^T` `gemm` itself drops to
///   10–40 GFLOP/s at m ≤ 8, these loops run at 22–54.
/// - From m ≥ 32 with n, k ≥ 64, the AVX-512 packed kernels reach 49–109
///   GFLOP/s, these 128-bit loops 29–49.
///
/// | m×k×n       | layout  | Cranelift | gemm | chosen    |
/// |-------------|---------|----------:|-----:|-----------|
/// | 1×64×64     | a @ b   |        51 |   24 | Cranelift |
/// | 1×784×784   | a @ b   |        27 |   30 | gemm      |
/// | 2×64×64     | a @ b   |        42 |   42 | Cranelift |
/// | 4×10×64     | a @ b   |        46 |   28 | Cranelift |
/// | 4×64×64     | a @ b   |        46 |   86 | gemm      |
/// | 8×64×64     | a @ b   |        43 |   71 | gemm      |
/// | 32×10×10    | a @ b   |        36 |   16 | Cranelift |
/// | 32×64×10    | a @ b   |        34 |   45 | gemm      |
/// | 32×64×64    | a @ b   |        46 |  101 | gemm      |
/// | 128×10×10   | a @ b   |        30 |   25 | Cranelift |
/// | 128×256×256 | a @ b   |        45 |  109 | gemm      |
/// | 2×256×128   | a @ b^T |        44 |   55 | Cranelift |
/// | 4×128×256   | a @ b^T |        47 |   23 | Cranelift |
/// | 8×784×128   | a @ b^T |        54 |   36 | Cranelift |
/// | 32×10×64    | a @ b^T |        29 |   43 | gemm      |
/// | 32×64×64    | a @ b^T |        44 |   68 | gemm      |
/// | 1×64×64     | a^T @ b |        51 |   30 | Cranelift |
/// | 32×64×64    | a^T @ b |        49 |   78 | gemm      |
///
/// Over all 450 measured cases (m ∈ {1, 2, 4, 8, 32, 128}; k, n ∈ {10,
/// 64, 128, 256, 784}; three layouts) the rule costs 1.2% over always
/// picking the faster side (geometric mean; worst 1.30×, 2×256×10
/// `a @ b^T`), against 21.8% for always calling `gemm`. So the digits MLP
/// (batch 32, 64→64→10) stays on `gemm`: its products are 32×64×64,
/// 32×64×10, 32×10×64 (`@ w^T`), 64×32×10 and 64×32×64 (`x^T @`), and
/// routing them all here made its training step 25 → 30 µs. Compile cost
/// is no factor: 76–296 IR instructions, about 0.5 ms per product.
///
/// `b_in_place`: `sgemm` reads this `b` without packing it (see
/// the code generator's `sgemm::reads_b_in_place`), which removes the reason for the
/// `m ≤ 8` rule: with a row-major `b` (a convolution's columns, a dense
/// layer's weight) its AVX-512 kernels run LeNet's conv1 (6×25 @ 25×784)
/// at 75 GFLOP/s, these loops at 28; batch-1 inference (1×784 @ 784×256)
/// at 26 against 27, and 4–8 rows at 93–97 against 43–46
/// (`cargo bench -p nnc-kernels --bench sgemm`).
pub fn product_in_loops(m: usize, n: usize, k: usize, b_in_place: bool) -> bool {
    m * n * k < 1 << 14 || (m <= 8 && !b_in_place)
}

/// Columns smaller than this are stored whole rather than staged: they
/// largely come back from cache anyway (1 MiB of L2 per core here), and
/// staging redoes an unfold for every matmul that reads it (forward and
/// weight gradient). Measured on the forward + backward of two conv layers
/// (`cargo bench -p nnc-codegen --bench conv`'s nets, each variant run in
/// alternating blocks): staging everything made LeNet's convs 15% slower
/// at batch 16 (columns of 1.2 and 0.9 MiB) but 14% and 22% faster at
/// batch 64 and 256, and the CIFAR net's 6% faster at batch 16 and 16% at 64.
pub const STAGE_MIN_BYTES: usize = 2 << 20;

/// A matmul operand or result staged through scratch: the `window`
/// (`unfold` for operand slots 0 and 1, `fold` for the result, slot 2)
/// is computed one batch index of `product` at a time, `planes` channel
/// planes per batch index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedWindow {
    pub product: usize,
    pub slot: usize,
    pub window: usize,
    pub planes: usize,
}

/// Each node's readers, each once, in topological order: node `i`'s are
/// `reader[start[i]..start[i + 1]]`.
#[derive(Debug, Default)]
pub struct Readers {
    start: Vec<usize>,
    reader: Vec<u32>,
}

impl Readers {
    pub fn of(dag: &(impl FusionDag + ?Sized)) -> Readers {
        let mut r = Readers::default();
        r.fill(dag);
        r
    }

    /// Recomputes the readers of `dag`, reusing the buffers.
    pub fn fill(&mut self, dag: &(impl FusionDag + ?Sized)) {
        let n = dag.nodes();
        let start = &mut self.start;
        start.clear();
        start.resize(n + 1, 0);
        let distinct = |ops: &[u32], j: usize| !ops[..j].contains(&ops[j]);
        for i in 0..n {
            let ops = dag.operands(i);
            for j in (0..ops.len()).filter(|&j| distinct(ops, j)) {
                start[ops[j] as usize + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start[..n].to_vec();
        self.reader.clear();
        self.reader.resize(start[n], 0);
        for i in 0..n {
            let ops = dag.operands(i);
            for j in (0..ops.len()).filter(|&j| distinct(ops, j)) {
                let o = ops[j] as usize;
                self.reader[fill[o]] = i as u32;
                fill[o] += 1;
            }
        }
    }

    pub fn of_node(&self, i: usize) -> &[u32] {
        &self.reader[self.start[i]..self.start[i + 1]]
    }
}

fn bytes(shape: &[usize], dtype: DType) -> usize {
    shape.iter().product::<usize>() * if dtype == DType::F64 { 8 } else { 4 }
}

/// Matmuls whose only reader is a `reduce_sum` over some of their batch
/// dims, and which go through `sgemm`: the reduction's kernel calls `sgemm`
/// in accumulate mode per batch, so the batch of products is never stored.
/// This is the gradient of a weight broadcast over a batch (`[G, O/G, K]
/// @ [N, G, K, L]`, a convolution): autodiff makes it `reduce_sum(g @
/// cols^T, [0])`, whose `[N, G, O/G, K]` intermediate is as large as the
/// columns. In topological order.
pub fn summed_products(dag: &(impl FusionDag + ?Sized), readers: &Readers) -> Vec<usize> {
    (0..dag.nodes())
        .filter(|&n| {
            if !matches!(dag.op(n), Op::MatMul) || dag.stored(n) || dag.dtype(n) != DType::F32 {
                return false;
            }
            let &[user] = readers.of_node(n) else {
                return false;
            };
            let Op::Reduce {
                op: ReduceOp::Sum,
                axes,
                ..
            } = dag.op(user as usize)
            else {
                return false;
            };
            let (c, a) = (dag.shape(n), dag.shape(dag.operands(n)[0] as usize));
            let r = c.len();
            let batch_only = !axes.is_empty() && axes.iter().all(|&i| i + 2 < r);
            batch_only
                // Not for a few rows even when `sgemm` would read the
                // columns in place: unsummed, those products split over
                // samples, while a summed one splits by input channel and
                // LeNet's conv1 has one.
                && !product_in_loops(c[r - 2], c[r - 1], a[a.len() - 1], false)
        })
        .collect()
}

/// Batch strides of a matmul operand or result read through `(shape,
/// strides)`, aligned to the result's batch dims `batch` (0 where the
/// operand is broadcast).
pub fn batch_strides(shape: &[usize], strides: &[isize], batch: &[usize]) -> Vec<isize> {
    let extra = batch.len() + 2 - shape.len();
    (0..batch.len())
        .map(|i| match i.checked_sub(extra) {
            Some(j) if shape[j] != 1 => strides[j],
            _ => 0,
        })
        .collect()
}

/// How many planes of `plane` elements (`channels` planes per sample) the
/// matrix of each batch index spans, for a view `(shape, strides,
/// offset)` of an unfolded tensor read by a matmul with batch `batch`,
/// when that is the same number of consecutive planes of one sample for
/// every batch index. `None` when the matrices straddle samples, or when a
/// batch of one would gain nothing.
pub fn planes_per_batch(
    (shape, strides, offset): (&[usize], &[isize], usize),
    batch: &[usize],
    plane: usize,
    channels: usize,
) -> Option<usize> {
    let r = shape.len();
    let count: usize = batch.iter().product();
    if r < 2 || plane == 0 || !(2..=1 << 16).contains(&count) {
        return None;
    }
    if strides.iter().any(|&s| s < 0) {
        return None;
    }
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    if rows == 0 || cols == 0 {
        return None;
    }
    let extent = (rows - 1) * strides[r - 2] as usize + (cols - 1) * strides[r - 1] as usize + 1;
    let steps = batch_strides(shape, strides, batch);
    if steps.iter().any(|&s| !(s as usize).is_multiple_of(plane)) {
        return None;
    }
    let planes = (offset % plane + extent).div_ceil(plane);
    if planes > channels {
        return None;
    }
    // Every batch index's first plane, so that none straddles two samples.
    let mut index = vec![0usize; batch.len()];
    for _ in 0..count {
        let first = offset / plane
            + index
                .iter()
                .zip(&steps)
                .map(|(&i, &s)| i * s as usize / plane)
                .sum::<usize>();
        if first % channels + planes > channels {
            return None;
        }
        for d in (0..batch.len()).rev() {
            index[d] += 1;
            if index[d] < batch[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(planes)
}

/// The staged operands and results of matmuls. An `unfold` is staged when
/// every use of it, through reshapes and transposes, is a matmul operand
/// that stages; a `fold` when its operand is, through reshapes only, the
/// result of a matmul read by nothing else. In topological order of the
/// windows.
pub fn staged_windows(dag: &(impl FusionDag + ?Sized), readers: &Readers) -> Vec<StagedWindow> {
    let batch_of = |m: usize| {
        let s = dag.shape(m);
        &s[..s.len().saturating_sub(2)]
    };
    let mut staged = Vec::new();
    for w in 0..dag.nodes() {
        if dag.dtype(w) != DType::F32 {
            continue;
        }
        match dag.op(w) {
            Op::Unfold { .. } if !dag.stored(w) => {
                let ws = dag.shape(w);
                if ws.len() <= 2 || bytes(ws, DType::F32) < STAGE_MIN_BYTES {
                    continue;
                }
                let (plane, channels) = (ws[2..].iter().product(), ws[1]);
                let mut uses = Vec::new();
                let mut ok = true;
                // Views here only locate elements within the unfolded
                // tensor: they start at its first element.
                let mut stack = vec![(w, layout::row_major(ws))];
                while let Some((n, strides)) = stack.pop() {
                    for &user in readers.of_node(n) {
                        let user = user as usize;
                        let op = dag.op(user);
                        if dag.stored(user) {
                            ok = false;
                        } else if let Op::MatMul = op {
                            let operands = dag.operands(user);
                            for (slot, _) in operands
                                .iter()
                                .enumerate()
                                .filter(|(_, &o)| o as usize == n)
                            {
                                let view = (dag.shape(n), &strides[..], 0);
                                match planes_per_batch(view, batch_of(user), plane, channels) {
                                    Some(planes) => uses.push((user, slot, planes)),
                                    None => ok = false,
                                }
                            }
                        } else if let Some(next) = matches!(op, Op::Reshape | Op::Transpose { .. })
                            .then(|| {
                                layout::view_strides(op, dag.shape(n), &strides, dag.shape(user))
                            })
                            .flatten()
                        {
                            stack.push((user, next));
                        } else {
                            ok = false;
                        }
                    }
                }
                if ok {
                    staged.extend(
                        uses.into_iter()
                            .map(|(product, slot, planes)| StagedWindow {
                                product,
                                slot,
                                window: w,
                                planes,
                            }),
                    );
                }
            }
            Op::Fold { .. } => {
                let cols = dag.shape(dag.operands(w)[0] as usize);
                if cols.len() <= 2 || bytes(cols, DType::F32) < STAGE_MIN_BYTES {
                    continue;
                }
                let (plane, channels) = (cols[2..].iter().product(), cols[1]);
                // Up through reshapes (which keep row-major order) to a matmul.
                let mut n = dag.operands(w)[0] as usize;
                let product = loop {
                    if dag.stored(n) || readers.of_node(n).len() != 1 {
                        break None;
                    }
                    match dag.op(n) {
                        Op::Reshape => n = dag.operands(n)[0] as usize,
                        Op::MatMul => break Some(n),
                        _ => break None,
                    }
                };
                let Some(m) = product else { continue };
                let ms = dag.shape(m);
                let view = (ms, &layout::row_major(ms)[..], 0);
                if let Some(planes) = planes_per_batch(view, batch_of(m), plane, channels) {
                    staged.push(StagedWindow {
                        product: m,
                        slot: 2,
                        window: w,
                        planes,
                    });
                }
            }
            _ => {}
        }
    }
    staged
}
