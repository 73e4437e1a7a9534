//! Strided views: which layout ops cost nothing. A value stored row-major
//! is read through `(shape, strides)` in elements; transpose, broadcast and
//! slice are always views of their operand, and a reshape is one whenever
//! strides can express it. The code generator's plan and the optimizer's
//! cost model both decide by these functions.

use crate::op::Op;

/// Row-major strides of `shape`, in elements.
pub fn row_major(shape: &[usize]) -> Vec<isize> {
    let mut strides = Vec::with_capacity(shape.len());
    push_row_major(shape, &mut strides);
    strides
}

/// Appends the row-major strides of `shape` to `out` (no allocation of its
/// own, for callers that keep many views in one buffer).
pub fn push_row_major(shape: &[usize], out: &mut Vec<isize>) {
    let start = out.len();
    out.resize(start + shape.len(), 0);
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        out[start + i] = acc;
        acc *= shape[i] as isize;
    }
}

/// Whether `(shape, strides)` is row-major (dims of size 1 may have any
/// stride).
pub fn is_contiguous(shape: &[usize], strides: &[isize]) -> bool {
    let mut expected = 1isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected *= n as isize;
    }
    true
}

/// The strides of the view a layout op makes of an operand read through
/// `(src_shape, src_strides)`, giving `shape`: reshape (when strides can
/// express it, see [`reshape_strides`]), transpose, broadcast and slice
/// (which also moves the start, see [`slice_offset`]); `None` for other
/// ops and for reshapes that need a copy.
pub fn view_strides(
    op: &Op,
    src_shape: &[usize],
    src_strides: &[isize],
    shape: &[usize],
) -> Option<Vec<isize>> {
    let mut out = Vec::with_capacity(shape.len());
    push_view_strides(op, src_shape, src_strides, shape, &mut out).then_some(out)
}

/// [`view_strides`] appended to `out`; `false` (and `out` as it was) when
/// the op makes no view.
pub fn push_view_strides(
    op: &Op,
    src_shape: &[usize],
    src_strides: &[isize],
    shape: &[usize],
    out: &mut Vec<isize>,
) -> bool {
    match op {
        Op::Reshape => match reshape_strides(src_shape, src_strides, shape) {
            Some(strides) => out.extend(strides),
            None => return false,
        },
        Op::Transpose { perm } => out.extend(perm.iter().map(|&p| src_strides[p])),
        Op::Broadcast => {
            let Some(extra) = shape.len().checked_sub(src_shape.len()) else {
                return false;
            };
            out.extend((0..shape.len()).map(|i| match i.checked_sub(extra) {
                Some(j) if src_shape[j] == shape[i] => src_strides[j],
                _ => 0,
            }));
        }
        Op::Slice { .. } => out.extend_from_slice(src_strides),
        _ => return false,
    }
    true
}

/// How far a slice's view starts after its operand's, in elements.
pub fn slice_offset(op: &Op, src_strides: &[isize]) -> isize {
    match op {
        Op::Slice { axis, start, .. } => *start as isize * src_strides[*axis],
        _ => 0,
    }
}

/// The strides that read `(src_shape, src_strides)` in row-major order as
/// `shape`, when strides can express it (numpy's reshape without a copy):
/// every run of dims that merges into one must be walked uniformly
/// (`stride[i] = stride[i+1]·size[i+1]`, which broadcast dims of stride 0
/// meet among themselves); splitting a dim always works.
pub fn reshape_strides(
    src_shape: &[usize],
    src_strides: &[isize],
    shape: &[usize],
) -> Option<Vec<isize>> {
    let numel: usize = shape.iter().product();
    if numel != src_shape.iter().product::<usize>() {
        return None;
    }
    if numel == 0 || is_contiguous(src_shape, src_strides) {
        return Some(row_major(shape));
    }
    let old: Vec<(usize, isize)> = src_shape
        .iter()
        .zip(src_strides)
        .filter(|(&n, _)| n != 1)
        .map(|(&n, &s)| (n, s))
        .collect();
    let mut strides = vec![0isize; shape.len()];
    let (mut oi, mut ni) = (0, 0);
    while oi < old.len() && ni < shape.len() {
        // The smallest runs old[oi..oj] and shape[ni..nj] of equal size.
        let (mut oj, mut nj) = (oi + 1, ni + 1);
        let (mut op, mut np) = (old[oi].0, shape[ni]);
        while op != np {
            if np < op {
                np *= *shape.get(nj)?;
                nj += 1;
            } else {
                op *= old.get(oj)?.0;
                oj += 1;
            }
        }
        for k in oi..oj - 1 {
            if old[k].1 != old[k + 1].1 * old[k + 1].0 as isize {
                return None;
            }
        }
        strides[nj - 1] = old[oj - 1].1;
        for k in (ni + 1..nj).rev() {
            strides[k - 1] = strides[k] * shape[k] as isize;
        }
        oi = oj;
        ni = nj;
    }
    Some(strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshapes_are_views_where_strides_express_them() {
        // Splitting a broadcast dim: [6] of stride 0 as [6, 1].
        assert_eq!(reshape_strides(&[6], &[0], &[6, 1]), Some(vec![0, 0]));
        // Contiguous data reshapes freely.
        assert_eq!(reshape_strides(&[2, 6], &[6, 1], &[3, 4]), Some(vec![4, 1]));
        // Merging the dims of a transpose needs a copy.
        assert_eq!(reshape_strides(&[6, 2], &[1, 6], &[12]), None);
        // Splitting one of them does not.
        assert_eq!(
            reshape_strides(&[6, 2], &[1, 6], &[2, 3, 2]),
            Some(vec![3, 1, 6])
        );
        assert_eq!(reshape_strides(&[4], &[1], &[5]), None);
    }

    #[test]
    fn views_of_layout_ops() {
        let t = Op::Transpose { perm: vec![1, 0] };
        assert_eq!(
            view_strides(&t, &[2, 3], &[3, 1], &[3, 2]),
            Some(vec![1, 3])
        );
        assert_eq!(
            view_strides(&Op::Broadcast, &[3], &[1], &[4, 3]),
            Some(vec![0, 1])
        );
        let s = Op::Slice {
            axis: 1,
            start: 2,
            end: 3,
        };
        assert_eq!(slice_offset(&s, &[3, 1]), 2);
        assert_eq!(view_strides(&Op::MatMul, &[2, 3], &[3, 1], &[2, 3]), None);
        assert!(is_contiguous(&[2, 1, 3], &[3, 99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
    }
}
