//! Shape rules of the sliding-window kernels (`emit::window`): that a
//! tensor is the unfolding of another, and when a `fold`'s windows tile
//! its image.

use crate::CodegenError;
use nnc_ir::Window;

/// Checks that `cols` is the unfolding of `image` by `w` (the IR's type
/// rule, restated so that a malformed graph is an error, not a panic).
pub(crate) fn check_shapes(
    w: &Window,
    image: &[usize],
    cols: &[usize],
) -> Result<Vec<usize>, CodegenError> {
    let bad = || {
        CodegenError::new(format!(
            "unfold/fold: {cols:?} is not the unfolding of {image:?} by the window {w:?}"
        ))
    };
    w.check().map_err(CodegenError::new)?;
    let d = w.rank();
    if image.len() != d + 2 || cols.len() != 2 * d + 2 || cols[..2] != image[..2] {
        return Err(bad());
    }
    if cols[2..2 + d] != w.kernel[..] {
        return Err(bad());
    }
    let out: Option<Vec<usize>> = (0..d).map(|i| w.out_size(i, image[2 + i])).collect();
    match out {
        Some(out) if out[..] == cols[2 + d..] => Ok(out),
        _ => Err(bad()),
    }
}

/// Whether the windows of `w`, `out` positions per spatial dim, tile an
/// image of spatial size `input`: kernel = stride, no padding or dilation,
/// sizes divisible (max or average pooling's gradient). A `fold` then
/// stores each image element once (`Mode::Tile` in `emit::window`).
pub fn tiles(w: &Window, out: &[usize], input: &[usize]) -> bool {
    (0..w.rank()).all(|i| {
        w.kernel[i] == w.stride[i]
            && w.dilation[i] == 1
            && w.padding[i] == 0
            && out[i] * w.stride[i] == input[i]
    })
}
