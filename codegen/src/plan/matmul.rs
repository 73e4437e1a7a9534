//! The decisions about matrix products, as data: which form a product
//! runs as (Cranelift loops or the packed `sgemm`; its batch folded into
//! rows or one product per batch index; a convolution computed from the
//! image by `crate::conv`), the view a product summed over its batch
//! writes, and the column pieces a summed product splits into.
//! `emit::product` emits what these choose.

use super::View;
use crate::CodegenError;
use nnc_ir::DType;

pub use nnc_ir::staging::product_in_loops;

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
