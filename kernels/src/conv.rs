//! Stride-1 2-d convolutions computed from the image itself (implicit
//! GEMM) when an output row fits one register tile.
//!
//! A staged convolution (`plan::Staged`) unfolds each sample into scratch
//! and multiplies `w[O, C·kh·kw] @ cols[C·kh·kw, oh·ow]`. With stride 1,
//! the row of `cols` for kernel offset `(c, ky, kx)` restricted to output
//! row `oy` is a contiguous run of the zero-padded image: `ow` elements
//! from `padded[c, oy + ky, kx]`. So when `ow ≤ 32` each output row is one
//! column panel of the `sgemm` micro-kernel, whose `b` rows are read
//! straight from the padded image through a table of offsets
//! ([`crate::sgemm::sgemm_rows`]): the image is copied once into a padded
//! plane instead of unfolded `kh·kw` times. LeNet's conv1 (1×28×28 → 6, 5×5,
//! pad 2) qualifies: its unfold was about 40% of the staged kernel (`cargo
//! bench -p nnc-codegen --bench conv`), which now runs 1.2–1.4× faster
//! (`nnc bench bench/models/lenet.nn --threads 1 --profile`); so does its
//! conv2 (6×14×14 → 16), though its 10-wide rows fill 10 of 16 lanes (see
//! [`Rows::new`]). Many output channels amortize the unfold (see
//! `plan::matmul::conv_rows`): CIFAR's convolutions keep it.
//!
//! The weight gradient of the same convolution, `dy @ unfold(image)^T` per
//! sample, reads the padded image the same way ([`weight_grad`]): each
//! element is a dot product, output row by output row, of `dy` and the
//! kernel offset's run of the image (LeNet's conv1: 0.31–0.34 → 0.27–0.28
//! ms per step on one thread).

/// One sample's geometry: `channels` planes of `h × w` (rows `row_stride`
/// elements apart, planes `plane_stride` apart), a `kh × kw` window with
/// padding `ph`, `pw` and stride 1, an `oh × ow` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub channels: usize,
    pub plane_stride: usize,
    pub row_stride: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Rows {
    /// The geometry, or `None` when this form does not apply: stride and
    /// dilation 1, an output row of at most 32 columns filling at least
    /// half of the 16-lane vectors it takes, and an AVX-512 CPU. Half: with
    /// LeNet's conv2 (10-wide rows in 16 lanes, 1.4× the multiply-adds of
    /// the packed product) the forward kernel still ran 0.77 → 0.50–0.56
    /// ms per step on one thread, its unfold and packing gone.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        plane_stride: usize,
        row_stride: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (ph, pw): (usize, usize),
    ) -> Option<Rows> {
        let oh = (h + 2 * ph + 1).checked_sub(kh)?;
        let ow = (w + 2 * pw + 1).checked_sub(kw)?;
        let lanes = ow.div_ceil(16) * 16;
        let fits = (1..=32).contains(&ow) && 2 * ow >= lanes && oh > 0;
        let cpu = crate::sgemm::Isa::detect() == crate::sgemm::Isa::Avx512;
        (fits && cpu).then_some(Rows {
            channels,
            plane_stride,
            row_stride,
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            oh,
            ow,
        })
    }

    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.ph, self.w + 2 * self.pw)
    }

    /// Elements of the padded planes, with room for the micro-kernel's
    /// 32-wide reads past the last row.
    fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        (self.channels * hp * wp + 32 + self.kw).div_ceil(2) * 2
    }

    /// The rows of the product's `b`: `channels · kh · kw`.
    pub fn depth(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    /// Scratch bytes [`forward`] needs: the padded planes and the offsets.
    pub fn scratch_bytes(&self) -> usize {
        self.padded_len() * 4 + self.depth() * std::mem::size_of::<isize>()
    }

    /// The geometry as the 11 integer arguments of `nnc_conv2d_rows`.
    pub fn to_args(self) -> [i64; 11] {
        [
            self.channels,
            self.plane_stride,
            self.row_stride,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.ph,
            self.pw,
            self.oh,
            self.ow,
        ]
        .map(|v| v as i64)
    }

    fn from_args(a: [i64; 11]) -> Rows {
        let a = a.map(|v| v.max(0) as usize);
        Rows {
            channels: a[0],
            plane_stride: a[1],
            row_stride: a[2],
            h: a[3],
            w: a[4],
            kh: a[5],
            kw: a[6],
            ph: a[7],
            pw: a[8],
            oh: a[9],
            ow: a[10],
        }
    }
}

/// `out[o, oy·ow + ox] = Σ weight[o, (c·kh + ky)·kw + kx] ·
/// image[c, oy + ky − ph, ox + kx − pw]`, `fill` standing for image
/// elements in the padding: the staged `w @ unfold(image)` of one sample.
///
/// # Safety
/// `image` holds the planes of `g`; `weight` is `o × depth` for its
/// strides; `out` has `o` rows `out_rs` apart of `oh·ow` elements;
/// `scratch` holds [`Rows::scratch_bytes`] bytes, 8-byte aligned, and
/// overlaps nothing else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward(
    out: *mut f32,
    out_rs: isize,
    image: *const f32,
    g: &Rows,
    weight: *const f32,
    w_rs: isize,
    w_cs: isize,
    o: usize,
    scratch: *mut u8,
    fill: f32,
) {
    let wp = g.padded().1;
    // SAFETY (whole body): within the caller's buffers.
    unsafe {
        let (padded, offs) = stage(image, g, scratch, fill);
        for oy in 0..g.oh {
            crate::sgemm::sgemm_rows(
                o,
                g.ow,
                g.depth(),
                out.add(oy * g.ow),
                out_rs,
                weight,
                w_rs,
                w_cs,
                padded.as_ptr().add(oy * wp),
                offs,
                false,
            );
        }
    }
}

/// Copies the planes into `scratch`, padded with `fill`, followed by the
/// offset of each kernel offset's first element `(c, ky, kx)` there.
///
/// # Safety
/// As [`forward`].
unsafe fn stage<'s>(
    image: *const f32,
    g: &Rows,
    scratch: *mut u8,
    fill: f32,
) -> (&'s [f32], &'s [isize]) {
    let (hp, wp) = g.padded();
    // SAFETY (whole body): within the caller's buffers.
    unsafe {
        let padded = std::slice::from_raw_parts_mut(scratch as *mut f32, g.padded_len());
        padded.fill(fill);
        for c in 0..g.channels {
            for y in 0..g.h {
                let src = image.add(c * g.plane_stride + y * g.row_stride);
                let dst = padded
                    .as_mut_ptr()
                    .add(c * hp * wp + (y + g.ph) * wp + g.pw);
                std::ptr::copy_nonoverlapping(src, dst, g.w);
            }
        }
        let offs = std::slice::from_raw_parts_mut(
            scratch.add(g.padded_len() * 4) as *mut isize,
            g.depth(),
        );
        let mut p = 0;
        for c in 0..g.channels {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    offs[p] = (c * hp * wp + ky * wp + kx) as isize;
                    p += 1;
                }
            }
        }
        (padded, offs)
    }
}

/// `grad[o, (c·kh + ky)·kw + kx] = Σ dy[o, oy·ow + ox] · image[c, oy + ky −
/// ph, ox + kx − pw]` (`fill` in the padding): the staged `dy @
/// unfold(image)^T` of one sample, a convolution's weight gradient, as dot
/// products along each output row of `dy` and the matching run of the
/// padded image. `grad` is overwritten, at `grad_rs`, `grad_cs` strides.
///
/// # Safety
/// As [`forward`]; `dy` has `o` rows `dy_rs` apart of `oh·ow` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_grad(
    grad: *mut f32,
    (grad_rs, grad_cs): (isize, isize),
    dy: *const f32,
    dy_rs: isize,
    o: usize,
    image: *const f32,
    g: &Rows,
    scratch: *mut u8,
    fill: f32,
) {
    // SAFETY (whole body): within the caller's buffers.
    unsafe {
        let (padded, offs) = stage(image, g, scratch, fill);
        let runs = crate::sgemm::Runs {
            count: g.oh,
            len: g.ow,
            a_step: g.ow,
            b_step: g.padded().1,
        };
        crate::sgemm::dots(
            (o, g.depth()),
            (grad, grad_rs, grad_cs),
            (dy, dy_rs),
            (padded.as_ptr(), &|j| offs[j]),
            runs,
            false,
        );
    }
}

/// [`weight_grad`] called from a kernel: gradient and its strides, `dy`
/// and its row stride, output channels, image, scratch, the 11 geometry
/// arguments, the fill value's bits.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub extern "C" fn nnc_conv2d_weight_grad(
    grad: i64,
    grad_rs: i64,
    grad_cs: i64,
    dy: i64,
    dy_rs: i64,
    o: i64,
    image: i64,
    scratch: i64,
    channels: i64,
    plane_stride: i64,
    row_stride: i64,
    h: i64,
    w: i64,
    kh: i64,
    kw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
    fill: i64,
) {
    let g = Rows::from_args([
        channels,
        plane_stride,
        row_stride,
        h,
        w,
        kh,
        kw,
        ph,
        pw,
        oh,
        ow,
    ]);
    // SAFETY: the kernel passes the product's operands and its task's
    // staging scratch, sized by `Rows::scratch_bytes` at compile time.
    unsafe {
        weight_grad(
            grad as *mut f32,
            (grad_rs as isize, grad_cs as isize),
            dy as *const f32,
            dy_rs as isize,
            o.max(0) as usize,
            image as *const f32,
            &g,
            scratch as *mut u8,
            f32::from_bits(fill as u32),
        )
    }
}

/// [`forward`] called from a kernel: output and its row stride, image,
/// weight and its strides, output channels, scratch, the 11 geometry
/// arguments ([`Rows::to_args`]), the fill value's bits.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub extern "C" fn nnc_conv2d_rows(
    out: i64,
    out_rs: i64,
    image: i64,
    weight: i64,
    w_rs: i64,
    w_cs: i64,
    o: i64,
    scratch: i64,
    channels: i64,
    plane_stride: i64,
    row_stride: i64,
    h: i64,
    w: i64,
    kh: i64,
    kw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
    fill: i64,
) {
    let g = Rows::from_args([
        channels,
        plane_stride,
        row_stride,
        h,
        w,
        kh,
        kw,
        ph,
        pw,
        oh,
        ow,
    ]);
    // SAFETY: the kernel passes the product's operands and its task's
    // staging scratch, sized by `Rows::scratch_bytes` at compile time.
    unsafe {
        forward(
            out as *mut f32,
            out_rs as isize,
            image as *const f32,
            &g,
            weight as *const f32,
            w_rs as isize,
            w_cs as isize,
            o.max(0) as usize,
            scratch as *mut u8,
            f32::from_bits(fill as u32),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_grad_matches_the_definition() {
        for (c, h, w, k, pad, o) in [
            (1, 28, 28, 5, 2, 6),
            (2, 9, 14, 3, 1, 5),
            (3, 7, 24, 3, 0, 12),
        ] {
            let (row_stride, plane_stride) = (w + 1, (w + 1) * h);
            let Some(g) = Rows::new(c, plane_stride, row_stride, (h, w), (k, k), (pad, pad)) else {
                eprintln!("skipped: no AVX-512 or the form does not apply");
                continue;
            };
            let image: Vec<f32> = (0..c * plane_stride)
                .map(|i| ((i * 7) % 23) as f32 - 11.0)
                .collect();
            let l = g.oh * g.ow;
            let dy: Vec<f32> = (0..o * l)
                .map(|i| ((i * 3) % 19) as f32 * 0.125 - 1.0)
                .collect();
            let depth = g.depth();
            // Written transposed: the product may have any strides.
            let mut grad = vec![f32::NAN; depth * o];
            let mut scratch = vec![0u64; g.scratch_bytes().div_ceil(8)];
            // SAFETY: buffers sized by the geometry.
            unsafe {
                weight_grad(
                    grad.as_mut_ptr(),
                    (1, o as isize),
                    dy.as_ptr(),
                    l as isize,
                    o,
                    image.as_ptr(),
                    &g,
                    scratch.as_mut_ptr() as *mut u8,
                    0.0,
                )
            };
            for oc in 0..o {
                for ch in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let mut want = 0f64;
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    let iy = (oy + ky) as isize - pad as isize;
                                    let ix = (ox + kx) as isize - pad as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        let x = image[ch * plane_stride
                                            + iy as usize * row_stride
                                            + ix as usize];
                                        want += dy[oc * l + oy * g.ow + ox] as f64 * x as f64;
                                    }
                                }
                            }
                            let p = (ch * k + ky) * k + kx;
                            let got = grad[p * o + oc] as f64;
                            assert!(
                                (got - want).abs() < 1e-2,
                                "{g:?} [{oc},{p}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        // (channels, h, w, k, pad, out channels): LeNet's conv1 and conv2,
        // CIFAR's conv1, odd sizes, a 3×3 with pad 1, more than 8 outputs.
        for (c, h, w, k, pad, o) in [
            (1, 28, 28, 5, 2, 6),
            (6, 14, 14, 5, 0, 16),
            (3, 32, 32, 5, 0, 11),
            (2, 9, 14, 3, 1, 3),
            (1, 5, 24, 1, 0, 9),
        ] {
            let (row_stride, plane_stride) = (w + 3, (w + 3) * (h + 1));
            let Some(g) = Rows::new(c, plane_stride, row_stride, (h, w), (k, k), (pad, pad)) else {
                eprintln!("skipped: no AVX-512 or the form does not apply");
                continue;
            };
            let image: Vec<f32> = (0..c * plane_stride)
                .map(|i| ((i * 7) % 23) as f32 - 11.0)
                .collect();
            let depth = g.depth();
            let weight: Vec<f32> = (0..o * depth)
                .map(|i| ((i * 5) % 17) as f32 * 0.25 - 2.0)
                .collect();
            let l = g.oh * g.ow;
            let mut out = vec![f32::NAN; o * l];
            let mut scratch = vec![0u64; g.scratch_bytes().div_ceil(8)];
            // SAFETY: buffers sized by the geometry.
            unsafe {
                forward(
                    out.as_mut_ptr(),
                    l as isize,
                    image.as_ptr(),
                    &g,
                    weight.as_ptr(),
                    depth as isize,
                    1,
                    o,
                    scratch.as_mut_ptr() as *mut u8,
                    0.5,
                )
            };
            for oc in 0..o {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut want = 0f64;
                        for ch in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy + ky) as isize - pad as isize;
                                    let ix = (ox + kx) as isize - pad as isize;
                                    let inside = iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < h
                                        && (ix as usize) < w;
                                    let x = if inside {
                                        image[ch * plane_stride
                                            + iy as usize * row_stride
                                            + ix as usize]
                                    } else {
                                        0.5
                                    };
                                    want += weight[oc * depth + (ch * k + ky) * k + kx] as f64
                                        * x as f64;
                                }
                            }
                        }
                        let got = out[oc * l + oy * g.ow + ox] as f64;
                        assert!(
                            (got - want).abs() < 1e-3,
                            "{g:?} [{oc},{oy},{ox}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
