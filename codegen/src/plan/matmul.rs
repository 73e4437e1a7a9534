//! The decisions about matrix products, as data: which form a product
//! runs as (Cranelift loops or the packed `sgemm`; its batch folded into
//! rows or one product per batch index; a convolution computed from the
//! image by `crate::conv`), the view a product summed over its batch
//! writes, and the column pieces a summed product splits into.
//! `emit::product` emits what these choose.

use super::View;
use crate::CodegenError;
use nnc_ir::DType;

/// Whether one product `c[m×n] = a[m×k] @ b[k×n]` (one product of a
/// batch; `m` counts the rows after batch folding) runs as Cranelift loops
/// rather than the packed `sgemm`.
///
/// Chosen by measurement: `CARGO_TARGET_DIR=... cargo bench -p nnc-codegen
/// --bench matmul` (release, one thread, 2-core EPYC Zen 4 with AVX-512;
/// GFLOP/s, median of 21 samples, mean of two runs) against `gemm::gemm`,
/// which `cargo bench -p nnc-codegen --bench sgemm` shows our `sgemm`
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
/// [`crate::sgemm::reads_b_in_place`]), which removes the reason for the
/// `m ≤ 8` rule: with a row-major `b` (a convolution's columns, a dense
/// layer's weight) its AVX-512 kernels run LeNet's conv1 (6×25 @ 25×784)
/// at 75 GFLOP/s, these loops at 28; batch-1 inference (1×784 @ 784×256)
/// at 26 against 27, and 4–8 rows at 93–97 against 43–46
/// (`cargo bench -p nnc-codegen --bench sgemm`).
pub fn use_cranelift(m: usize, n: usize, k: usize, b_in_place: bool) -> bool {
    m * n * k < 1 << 14 || (m <= 8 && !b_in_place)
}

/// A matmul operand or result staged through scratch, one batch index at a
/// time (see `plan::Staged`): an operand is unfolded from `image` before
/// each product, a result folded into `image` after it.
pub(crate) struct Stage<'a> {
    pub(crate) window: &'a nnc_ir::Window,
    /// `Some(fill word)` for an unfolded operand, `None` for a folded result.
    pub(crate) fill: Option<u32>,
    pub(crate) dtype: DType,
    /// The `[N, C, *in]` image: its address and view.
    pub(crate) image: (usize, &'a View),
    /// Elements per plane of the unfolded tensor, planes per sample.
    pub(crate) plane: usize,
    pub(crate) channels: usize,
    /// Planes per batch index, and the byte address of their scratch (of
    /// task 0; task `t`'s is `stride` bytes further per task).
    pub(crate) planes: usize,
    pub(crate) scratch: usize,
    pub(crate) stride: usize,
}

/// The view a matmul of `a` and `b` writes when its result is summed over
/// the batch dims `axes` into `out`: `out`'s strides on the kept dims,
/// stride 0 on the summed ones, so products of a summed batch accumulate
/// into one matrix.
pub(crate) fn summed_view(
    a: &View,
    b: &View,
    out: &View,
    axes: &[usize],
    keepdim: bool,
) -> Result<View, CodegenError> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let r = ra.max(rb);
    // The batch shape: numpy broadcasting of the operands' batch dims.
    let dim = |v: &View, i: usize| -> usize {
        let extra = r - v.shape.len();
        i.checked_sub(extra).map_or(1, |j| v.shape[j])
    };
    let mut shape: Vec<usize> = (0..r - 2).map(|i| dim(a, i).max(dim(b, i))).collect();
    shape.extend([a.shape[ra - 2], b.shape[rb - 1]]);
    let mut strides = Vec::with_capacity(r);
    let mut j = 0;
    for i in 0..r {
        if axes.contains(&i) {
            strides.push(0);
            if keepdim {
                j += 1;
            }
        } else {
            let s = out.strides.get(j).copied().ok_or_else(|| {
                CodegenError::new("internal error: a summed matmul's result shape")
            })?;
            strides.push(s);
            j += 1;
        }
    }
    Ok(View {
        base: out.base,
        offset: out.offset,
        shape,
        strides,
    })
}

/// The geometry of a staged `w @ unfold(image)` that [`crate::conv`]
/// computes from the image: an f32 image with contiguous rows, a 2-d
/// window of stride and dilation 1, every channel of a sample in one
/// product (`b` its whole unfolded `[C·kh·kw, oh·ow]`, row-major from the
/// start of the scratch), `c` with contiguous rows, and scratch room for
/// the padded planes. At most 16 output channels: the unfold it saves costs
/// as much as the product of a few rows, while with more the product
/// dominates and packed panels use the lanes better (CIFAR's conv1, 32
/// channels of 28-wide rows in 32-lane tiles: no faster, 1.8–2.4 ms
/// either way).
pub(crate) fn conv_rows(
    st: &Stage,
    b_view: &View,
    (m, k, n): (usize, usize, usize),
    (b_rs, b_cs): (isize, isize),
    c_cs: isize,
) -> Option<crate::conv::Rows> {
    let (w, view) = (st.window, st.image.1);
    let shape = &view.shape;
    let plain = st.dtype == DType::F32
        && w.rank() == 2
        && w.stride.iter().all(|&s| s == 1)
        && w.dilation.iter().all(|&d| d == 1)
        && shape.len() == 4
        && view.strides[3] == 1
        && view.strides[1] >= 0
        && view.strides[2] >= 0
        && st.planes == st.channels
        && b_view.offset == 0
        && b_cs == 1
        && c_cs == 1
        && m <= 16;
    if !plain {
        return None;
    }
    let g = crate::conv::Rows::new(
        st.channels,
        view.strides[1] as usize,
        view.strides[2] as usize,
        (shape[2], shape[3]),
        (w.kernel[0], w.kernel[1]),
        (w.padding[0], w.padding[1]),
    )?;
    let fits = g.depth() == k
        && g.oh * g.ow == n
        && b_rs == n as isize
        && g.scratch_bytes() <= st.stride
        && st.scratch.is_multiple_of(8);
    fits.then_some(g)
}

/// Columns of a staged `b` (`k` rows, `n` columns) per channel plane of
/// `plane` elements, when each plane holds whole, contiguous columns
/// (`b` is the transposed columns of an unfold: row stride 1, column
/// stride `k`).
pub(crate) fn columns_per_plane(
    bm: &View,
    k: usize,
    plane: usize,
    planes: usize,
    n: usize,
) -> Option<usize> {
    let rb = bm.shape.len();
    let (b_rs, b_cs) = (bm.strides[rb - 2], bm.strides[rb - 1]);
    let per_plane = plane / k.max(1);
    (b_rs == 1 && b_cs == k as isize && per_plane * k == plane && per_plane * planes == n)
        .then_some(per_plane)
}

/// `n` columns in `units` contiguous, even pieces `[j0, j1)`.
pub(crate) fn column_pieces(n: usize, units: usize) -> Vec<(usize, usize)> {
    (0..units)
        .map(|u| (n * u / units, n * (u + 1) / units))
        .collect()
}

/// Whether a batched product folds its batch into the rows of one product:
/// `b` shared by every batch index, `a` and `c` walking the batch as more
/// rows (and nothing staged).
pub(crate) fn folds_batch(a: &View, bm: &View, c: &View, batch: &[usize], staging: bool) -> bool {
    let (ra, rc) = (a.shape.len(), c.shape.len());
    let m = a.shape[ra - 2];
    let strides = |v: &View| crate::plan::batch_strides(v, batch);
    let (ba, bb, bc) = (strides(a), strides(bm), strides(c));
    let (a_rs, c_rs) = (a.strides[ra - 2], c.strides[rc - 2]);
    !staging
        && batch.iter().product::<usize>() > 1
        && bb.iter().all(|&s| s == 0)
        && batch.iter().enumerate().all(|(i, _)| {
            let inner_a: isize = if i + 1 < batch.len() {
                ba[i + 1] * batch[i + 1] as isize
            } else {
                a_rs * m as isize
            };
            let inner_c: isize = if i + 1 < batch.len() {
                bc[i + 1] * batch[i + 1] as isize
            } else {
                c_rs * m as isize
            };
            ba[i] == inner_a && bc[i] == inner_c
        })
}
