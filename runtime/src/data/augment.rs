//! Training-time random image transforms (torchvision's `RandomCrop`,
//! `RandomHorizontalFlip`, `RandomVerticalFlip`, `RandomRotation`,
//! `RandomAffine`, `ColorJitter`, `GaussianNoise`) on `f32` samples
//! `[C, H, W]`.
//!
//! Every random number a sample's transform draws comes from a stream
//! keyed by (seed, epoch, sample, stage): the sample is its index in the
//! data file and the stage the transform's place in its field's pipeline.
//! So an augmented batch depends on nothing but those four, not on which
//! thread fills it, how a batch is split, or which samples share it.

use nnc_ir::Augment;

use super::batch::SplitMix64;

/// Whether a gather is for a training step (augmentations draw from their
/// streams) or for anything else (they do not apply; a random crop takes
/// the centre window so the sample keeps its training shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Evaluate,
    Train { seed: u64, epoch: usize },
}

/// One augmentation of a field's pipeline, with what it needs to know of
/// the samples: they are `channels` planes of `height x width` here.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageAugment {
    pub op: Augment,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The transform's place in its field's pipeline (part of the key of
    /// its random stream, so two augmentations of one sample differ).
    pub stage: usize,
}

/// Luma weights of ITU-R 601-2, as torchvision's `rgb_to_grayscale`.
const LUMA: [f64; 3] = [0.2989, 0.587, 0.114];

impl ImageAugment {
    /// Checks the op against the sample shape: what the loader reports, at
    /// the field, before any batch.
    pub fn new(op: Augment, shape: &[usize], stage: usize) -> Result<ImageAugment, String> {
        let (channels, height, width) = match *shape {
            [c, h, w] => (c, h, w),
            [h, w] => (1, h, w),
            _ => {
                return Err(format!(
                    "`{}` augments images, samples of shape [C, H, W] or [H, W], but these have shape {shape:?}",
                    op.name()
                ))
            }
        };
        match &op {
            Augment::RandomCrop { size, padding } => {
                let (ph, pw) = (height + 2 * padding, width + 2 * padding);
                if size[0] > ph || size[1] > pw {
                    return Err(format!(
                        "`random_crop` takes a {}x{} window from images {height}x{width} padded by {padding} \
                         to {ph}x{pw}: the window is larger than the padded image",
                        size[0], size[1]
                    ));
                }
            }
            Augment::ColorJitter { .. } if channels != 1 && channels != 3 => {
                return Err(format!(
                    "`color_jitter` works on grey (1 channel) or RGB (3 channels) images, \
                     but these have {channels} channels (samples of shape {shape:?})"
                ));
            }
            _ => {}
        }
        Ok(ImageAugment {
            op,
            channels,
            height,
            width,
            stage,
        })
    }

    /// The sample shape after the transform (`[H, W]` samples stay rank 2).
    pub fn output_shape(&self, rank: usize) -> Vec<usize> {
        let (h, w) = match &self.op {
            Augment::RandomCrop { size, .. } => (size[0], size[1]),
            _ => (self.height, self.width),
        };
        match rank {
            2 => vec![h, w],
            _ => vec![self.channels, h, w],
        }
    }

    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn output_len(&self) -> usize {
        self.output_shape(3).iter().product()
    }

    /// Transforms the samples of a gathered batch (`indices[k]` is sample
    /// `k`'s index in the data file), returning the new batch.
    pub fn apply_batch(&self, mode: Mode, indices: &[usize], batch: &[f32]) -> Vec<f32> {
        let (n_in, n_out) = (self.input_len(), self.output_len());
        let mut out = vec![0.0f32; indices.len() * n_out];
        for ((&sample, input), output) in indices
            .iter()
            .zip(batch.chunks_exact(n_in))
            .zip(out.chunks_exact_mut(n_out))
        {
            match mode {
                Mode::Evaluate => self.evaluate(input, output),
                Mode::Train { seed, epoch } => {
                    let mut rng = stream(seed, epoch, sample, self.stage);
                    self.train(input, output, &mut rng);
                }
            }
        }
        out
    }

    /// What evaluation sees: the sample itself, or the centre window of a
    /// crop.
    fn evaluate(&self, input: &[f32], output: &mut [f32]) {
        match &self.op {
            Augment::RandomCrop { size, padding } => {
                let top = (self.height + 2 * padding - size[0]) / 2;
                let left = (self.width + 2 * padding - size[1]) / 2;
                self.crop(input, output, *size, *padding, top, left);
            }
            _ => output.copy_from_slice(input),
        }
    }

    fn train(&self, input: &[f32], output: &mut [f32], rng: &mut SplitMix64) {
        match &self.op {
            Augment::RandomCrop { size, padding } => {
                // torchvision draws the top offset first, then the left one.
                let top = rng.below((self.height + 2 * padding - size[0] + 1) as u64) as usize;
                let left = rng.below((self.width + 2 * padding - size[1] + 1) as u64) as usize;
                self.crop(input, output, *size, *padding, top, left);
            }
            Augment::Flip { horizontal, p } => {
                output.copy_from_slice(input);
                if rng.next_f64() < *p {
                    self.flip(output, *horizontal);
                }
            }
            Augment::Affine {
                degrees,
                translate,
                scale,
            } => {
                let angle = uniform(rng, -degrees, *degrees);
                let (mut tx, mut ty) = (0.0, 0.0);
                if let Some([a, b]) = translate {
                    let (max_x, max_y) = (a * self.width as f64, b * self.height as f64);
                    tx = uniform(rng, -max_x, max_x).round();
                    ty = uniform(rng, -max_y, max_y).round();
                }
                let s = match scale {
                    Some([lo, hi]) => uniform(rng, *lo, *hi),
                    None => 1.0,
                };
                self.affine(input, output, angle, [tx, ty], s);
            }
            Augment::ColorJitter {
                brightness,
                contrast,
                saturation,
            } => {
                output.copy_from_slice(input);
                // A factor is drawn only for a jitter that is asked for,
                // as torchvision leaves a zero one out.
                let mut factor = |amount: f64| {
                    (amount > 0.0).then(|| uniform(rng, (1.0 - amount).max(0.0), 1.0 + amount))
                };
                let (b, c, s) = (factor(*brightness), factor(*contrast), factor(*saturation));
                self.jitter(output, b, c, s);
            }
            Augment::GaussianNoise { std } => {
                output.copy_from_slice(input);
                let mut pairs = output.chunks_mut(2);
                for pair in &mut pairs {
                    let [z0, z1] = normal_pair(rng);
                    pair[0] += (std * z0) as f32;
                    if let Some(v) = pair.get_mut(1) {
                        *v += (std * z1) as f32;
                    }
                }
            }
        }
    }

    /// The `size` window at (`top`, `left`) of the image padded by
    /// `padding` zeros on every side.
    fn crop(
        &self,
        input: &[f32],
        output: &mut [f32],
        size: [usize; 2],
        padding: usize,
        top: usize,
        left: usize,
    ) {
        let (h, w) = (self.height, self.width);
        for c in 0..self.channels {
            let plane = &input[c * h * w..(c + 1) * h * w];
            let out = &mut output[c * size[0] * size[1]..(c + 1) * size[0] * size[1]];
            for (y, row) in out.chunks_exact_mut(size[1]).enumerate() {
                let Some(src_y) = (top + y).checked_sub(padding).filter(|&v| v < h) else {
                    row.fill(0.0);
                    continue;
                };
                for (x, v) in row.iter_mut().enumerate() {
                    *v = match (left + x).checked_sub(padding).filter(|&v| v < w) {
                        Some(src_x) => plane[src_y * w + src_x],
                        None => 0.0,
                    };
                }
            }
        }
    }

    fn flip(&self, image: &mut [f32], horizontal: bool) {
        let (h, w) = (self.height, self.width);
        for plane in image.chunks_exact_mut(h * w) {
            if horizontal {
                plane.chunks_exact_mut(w).for_each(|row| row.reverse());
            } else {
                for y in 0..h / 2 {
                    let (upper, lower) = plane.split_at_mut((h - 1 - y) * w);
                    upper[y * w..(y + 1) * w].swap_with_slice(&mut lower[..w]);
                }
            }
        }
    }

    /// Rotation by `angle` degrees counter-clockwise (as the image is
    /// shown, rows downwards) about the image centre, scaling by `scale`,
    /// then translation by `[tx, ty]` pixels: each output pixel samples the
    /// input bilinearly at the inverse map of its centre, with zeros
    /// outside (torchvision's `affine` with `BILINEAR` and `fill=0`).
    fn affine(&self, input: &[f32], output: &mut [f32], angle: f64, t: [f64; 2], scale: f64) {
        let (h, w) = (self.height, self.width);
        let (sin, cos) = angle.to_radians().sin_cos();
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        for c in 0..self.channels {
            let plane = &input[c * h * w..(c + 1) * h * w];
            let out = &mut output[c * h * w..(c + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    let (u, v) = (x as f64 - cx - t[0], y as f64 - cy - t[1]);
                    let sx = cx + (u * cos - v * sin) / scale;
                    let sy = cy + (u * sin + v * cos) / scale;
                    out[y * w + x] = bilinear(plane, w, h, sx, sy) as f32;
                }
            }
        }
    }

    /// Brightness, contrast, then saturation, each when drawn, clamped to
    /// `[0, 1]` after each as torchvision does for float images.
    fn jitter(&self, image: &mut [f32], b: Option<f64>, c: Option<f64>, s: Option<f64>) {
        let plane = self.height * self.width;
        let blend = |v: &mut f32, ratio: f64, other: f64| {
            *v = (ratio * f64::from(*v) + (1.0 - ratio) * other).clamp(0.0, 1.0) as f32;
        };
        if let Some(b) = b {
            image.iter_mut().for_each(|v| blend(v, b, 0.0));
        }
        if let Some(c) = c {
            let grey = self.grey(image);
            let mean = grey.iter().sum::<f64>() / plane as f64;
            image.iter_mut().for_each(|v| blend(v, c, mean));
        }
        // A grey image has no saturation to change (torchvision returns it).
        if let (Some(s), 3) = (s, self.channels) {
            let grey = self.grey(image);
            for channel in image.chunks_exact_mut(plane) {
                for (v, g) in channel.iter_mut().zip(&grey) {
                    blend(v, s, *g);
                }
            }
        }
    }

    /// Each pixel's luma (the pixel itself for one channel).
    fn grey(&self, image: &[f32]) -> Vec<f64> {
        let plane = self.height * self.width;
        if self.channels == 1 {
            return image.iter().map(|&v| f64::from(v)).collect();
        }
        (0..plane)
            .map(|i| {
                LUMA.iter()
                    .enumerate()
                    .map(|(c, l)| l * f64::from(image[c * plane + i]))
                    .sum()
            })
            .collect()
    }
}

/// The value at (`x`, `y`) (column, row; integer points are pixels)
/// interpolated from its four neighbours, a neighbour outside the image
/// counting as 0.
fn bilinear(plane: &[f32], w: usize, h: usize, x: f64, y: f64) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f64, yi: f64| {
        if xi < 0.0 || yi < 0.0 || xi >= w as f64 || yi >= h as f64 {
            0.0
        } else {
            f64::from(plane[yi as usize * w + xi as usize])
        }
    };
    let mut sum = 0.0;
    for (dy, wy) in [(0.0, 1.0 - fy), (1.0, fy)] {
        for (dx, wx) in [(0.0, 1.0 - fx), (1.0, fx)] {
            let weight = wx * wy;
            if weight != 0.0 {
                sum += weight * at(x0 + dx, y0 + dy);
            }
        }
    }
    sum
}

/// The random stream of one sample's transform at one stage of one epoch.
pub fn stream(seed: u64, epoch: usize, sample: usize, stage: usize) -> SplitMix64 {
    let mut key = seed;
    for part in [epoch as u64, sample as u64, stage as u64] {
        key = SplitMix64::new(key ^ part.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64();
    }
    SplitMix64::new(key)
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// Two independent standard normal values (Box–Muller).
fn normal_pair(rng: &mut SplitMix64) -> [f64; 2] {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let radius = (-2.0 * (1.0 - rng.next_f64()).ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * rng.next_f64()).sin_cos();
    [radius * cos, radius * sin]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aug(op: Augment, shape: &[usize]) -> ImageAugment {
        ImageAugment::new(op, shape, 0).unwrap()
    }

    /// A 1x3x3 image 1..=9, row by row.
    fn nine() -> Vec<f32> {
        (1..=9).map(|v| v as f32).collect()
    }

    fn train_one(a: &ImageAugment, input: &[f32], rng: &mut SplitMix64) -> Vec<f32> {
        let mut out = vec![0.0; a.output_len()];
        a.train(input, &mut out, rng);
        out
    }

    #[test]
    fn crops_take_the_drawn_window_of_the_zero_padded_image() {
        let a = aug(
            Augment::RandomCrop {
                size: [2, 2],
                padding: 1,
            },
            &[1, 3, 3],
        );
        assert_eq!(a.output_shape(3), [1, 2, 2]);
        // Padded 5x5; window offsets are 0..=3 each way.
        let mut out = vec![0.0; 4];
        a.crop(&nine(), &mut out, [2, 2], 1, 0, 0);
        assert_eq!(out, [0.0, 0.0, 0.0, 1.0]);
        a.crop(&nine(), &mut out, [2, 2], 1, 3, 2);
        assert_eq!(out, [8.0, 9.0, 0.0, 0.0]);
        a.crop(&nine(), &mut out, [2, 2], 1, 1, 1);
        assert_eq!(out, [1.0, 2.0, 4.0, 5.0]);
        // Training draws top then left from the sample's stream.
        let mut rng = stream(4, 1, 7, 0);
        let mut replay = stream(4, 1, 7, 0);
        let (top, left) = (replay.below(4) as usize, replay.below(4) as usize);
        a.crop(&nine(), &mut out, [2, 2], 1, top, left);
        assert_eq!(train_one(&a, &nine(), &mut rng), out);
        // Evaluation: the centre window, (5 - 2) / 2 = 1 from the top left.
        let mut centre = vec![0.0; 4];
        a.evaluate(&nine(), &mut centre);
        assert_eq!(centre, [1.0, 2.0, 4.0, 5.0]);
        // A window as large as the image with padding is the image at eval.
        let same = aug(
            Augment::RandomCrop {
                size: [3, 3],
                padding: 4,
            },
            &[3, 3],
        );
        let mut out = vec![0.0; 9];
        same.evaluate(&nine(), &mut out);
        assert_eq!(out, nine());
        assert_eq!(same.output_shape(2), [3, 3]);
    }

    #[test]
    fn every_crop_offset_is_drawn() {
        let a = aug(
            Augment::RandomCrop {
                size: [3, 3],
                padding: 1,
            },
            &[1, 3, 3],
        );
        let mut seen = std::collections::HashSet::new();
        for sample in 0..200 {
            let out = train_one(&a, &nine(), &mut stream(1, 1, sample, 0));
            // The first pixel tells the offset: which of 0 (padding) or a value.
            seen.insert(out.iter().map(|v| *v as i32).collect::<Vec<_>>());
        }
        assert_eq!(seen.len(), 9, "3 x 3 offsets");
    }

    #[test]
    fn flips_mirror_the_width_or_height_axis() {
        let h = aug(
            Augment::Flip {
                horizontal: true,
                p: 1.0,
            },
            &[2, 2, 3],
        );
        let mut image: Vec<f32> = (0..12).map(|v| v as f32).collect();
        h.flip(&mut image, true);
        assert_eq!(
            image,
            [2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0, 11.0, 10.0, 9.0]
        );
        let v = aug(
            Augment::Flip {
                horizontal: false,
                p: 1.0,
            },
            &[1, 3, 3],
        );
        let mut image = nine();
        v.flip(&mut image, false);
        assert_eq!(image, [7.0, 8.0, 9.0, 4.0, 5.0, 6.0, 1.0, 2.0, 3.0]);
        // p = 1 always flips, p = 0 never; p = 0.5 about half the time.
        let mut rng = SplitMix64::new(0);
        let always = aug(
            Augment::Flip {
                horizontal: false,
                p: 1.0,
            },
            &[3, 3],
        );
        assert_eq!(train_one(&always, &nine(), &mut rng), image);
        let never = aug(
            Augment::Flip {
                horizontal: false,
                p: 0.0,
            },
            &[3, 3],
        );
        assert_eq!(train_one(&never, &nine(), &mut rng), nine());
        let half = aug(
            Augment::Flip {
                horizontal: true,
                p: 0.5,
            },
            &[3, 3],
        );
        let flipped = (0..1000)
            .filter(|&s| train_one(&half, &nine(), &mut stream(2, 1, s, 0)) != nine())
            .count();
        assert!((440..560).contains(&flipped), "{flipped}");
    }

    #[test]
    fn a_quarter_turn_moves_pixels_exactly() {
        let a = aug(
            Augment::Affine {
                degrees: 90.0,
                translate: None,
                scale: None,
            },
            &[1, 3, 3],
        );
        let mut out = vec![0.0; 9];
        a.affine(&nine(), &mut out, 90.0, [0.0, 0.0], 1.0);
        // Counter-clockwise: the right column becomes the top row.
        let expected = [3.0, 6.0, 9.0, 2.0, 5.0, 8.0, 1.0, 4.0, 7.0];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{out:?}");
        }
        a.affine(&nine(), &mut out, -90.0, [0.0, 0.0], 1.0);
        let clockwise = [7.0, 4.0, 1.0, 8.0, 5.0, 2.0, 9.0, 6.0, 3.0];
        for (got, want) in out.iter().zip(clockwise) {
            assert!((got - want).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn affine_samples_bilinearly_with_zero_fill() {
        let plane = [1.0f32, 2.0, 3.0, 4.0]; // 2x2
        assert_eq!(bilinear(&plane, 2, 2, 0.5, 0.5), 2.5);
        assert_eq!(bilinear(&plane, 2, 2, 0.25, 0.0), 1.25);
        assert_eq!(bilinear(&plane, 2, 2, 1.0, 1.0), 4.0);
        // Half outside: the missing neighbours are zeros.
        assert_eq!(bilinear(&plane, 2, 2, 1.5, 0.0), 1.0);
        assert_eq!(bilinear(&plane, 2, 2, -1.0, 0.0), 0.0);
        let a = aug(
            Augment::Affine {
                degrees: 0.0,
                translate: Some([0.5, 0.0]),
                scale: None,
            },
            &[1, 3, 3],
        );
        // A shift of one pixel right: the left column is filled with 0.
        let mut out = vec![0.0; 9];
        a.affine(&nine(), &mut out, 0.0, [1.0, 0.0], 1.0);
        assert_eq!(out, [0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 8.0]);
        // Scale 2 about the centre (1, 1): pixel (0, 0) samples (0.5, 0.5).
        a.affine(&nine(), &mut out, 0.0, [0.0, 0.0], 2.0);
        assert_eq!(out[0], 3.0, "mean of 1, 2, 4, 5");
        assert_eq!(out[4], 5.0, "the centre stays");
        // Drawn translations are whole pixels within a * W: 0.5 * 3 = 1.5.
        for s in 0..50 {
            let out = train_one(&a, &nine(), &mut stream(3, 1, s, 0));
            let shifted = [-1.0f64, 0.0, 1.0].iter().any(|&tx| {
                let mut want = vec![0.0; 9];
                a.affine(&nine(), &mut want, 0.0, [tx, 0.0], 1.0);
                want == out
            });
            assert!(shifted, "{out:?}");
        }
    }

    #[test]
    fn color_jitter_follows_torchvisions_formulas() {
        // One RGB pixel and a second one, 1x2.
        let a = aug(
            Augment::ColorJitter {
                brightness: 0.5,
                contrast: 0.5,
                saturation: 0.5,
            },
            &[3, 1, 2],
        );
        let image = [0.2f32, 0.6, 0.4, 0.4, 0.8, 0.2];
        let mut out = image.to_vec();
        a.jitter(&mut out, Some(1.5), None, None);
        let want: Vec<f32> = image.iter().map(|v| (v * 1.5).min(1.0)).collect();
        assert_eq!(out, want);
        let grey = |r: f64, g: f64, b: f64| 0.2989 * r + 0.587 * g + 0.114 * b;
        let mut out = image.to_vec();
        a.jitter(&mut out, None, Some(0.5), None);
        let mean = (grey(0.2, 0.4, 0.8) + grey(0.6, 0.4, 0.2)) / 2.0;
        for (got, v) in out.iter().zip(image) {
            let want = (0.5 * f64::from(v) + 0.5 * mean).clamp(0.0, 1.0);
            assert!((f64::from(*got) - want).abs() < 1e-6);
        }
        let mut out = image.to_vec();
        a.jitter(&mut out, None, None, Some(0.0));
        let g0 = grey(0.2, 0.4, 0.8) as f32;
        assert!((out[0] - g0).abs() < 1e-6 && (out[2] - g0).abs() < 1e-6);
        assert!((out[4] - g0).abs() < 1e-6, "saturation 0 is grey");
        // Drawn factors lie in [1 - x, 1 + x]: brightness alone scales.
        let b = aug(
            Augment::ColorJitter {
                brightness: 0.25,
                contrast: 0.0,
                saturation: 0.0,
            },
            &[1, 1, 1],
        );
        for s in 0..100 {
            let out = train_one(&b, &[0.5], &mut stream(5, 2, s, 0));
            assert!((0.375..=0.625).contains(&out[0]), "{out:?}");
        }
    }

    #[test]
    fn gaussian_noise_has_the_asked_spread() {
        let a = aug(Augment::GaussianNoise { std: 0.1 }, &[1, 100, 100]);
        let out = train_one(&a, &[0.5; 10_000], &mut stream(0, 1, 0, 0));
        let n = out.len() as f64;
        let mean = out.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = out
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.005, "{}", var.sqrt());
    }

    #[test]
    fn batches_are_reproducible_per_sample_and_differ_by_epoch() {
        let a = ImageAugment::new(
            Augment::Affine {
                degrees: 30.0,
                translate: Some([0.2, 0.2]),
                scale: Some([0.8, 1.2]),
            },
            &[2, 4, 4],
            3,
        )
        .unwrap();
        let batch: Vec<f32> = (0..96).map(|v| v as f32 / 10.0).collect();
        let train = |epoch, indices: &[usize], data: &[f32]| {
            a.apply_batch(Mode::Train { seed: 9, epoch }, indices, data)
        };
        let whole = train(1, &[4, 8, 15], &batch);
        assert_eq!(whole, train(1, &[4, 8, 15], &batch));
        // A sample's result does not depend on its batch or its place in it.
        let alone = train(1, &[8], &batch[32..64]);
        assert_eq!(alone, whole[32..64]);
        assert_ne!(whole, train(2, &[4, 8, 15], &batch));
        assert_eq!(
            a.apply_batch(Mode::Evaluate, &[4, 8, 15], &batch),
            batch,
            "evaluation leaves samples alone"
        );
    }

    #[test]
    fn shapes_that_do_not_fit_are_reported() {
        let fits = Augment::RandomCrop {
            size: [40, 32],
            padding: 4,
        };
        assert!(ImageAugment::new(fits, &[3, 32, 32], 1).is_ok());
        let big = Augment::RandomCrop {
            size: [41, 32],
            padding: 4,
        };
        assert_eq!(
            ImageAugment::new(big, &[3, 32, 32], 1).unwrap_err(),
            "`random_crop` takes a 41x32 window from images 32x32 padded by 4 to 40x40: \
             the window is larger than the padded image"
        );
        let flip = Augment::Flip {
            horizontal: true,
            p: 0.5,
        };
        assert_eq!(
            ImageAugment::new(flip, &[784], 1).unwrap_err(),
            "`hflip` augments images, samples of shape [C, H, W] or [H, W], but these have shape [784]"
        );
        let jitter = Augment::ColorJitter {
            brightness: 0.1,
            contrast: 0.0,
            saturation: 0.0,
        };
        assert!(ImageAugment::new(jitter, &[4, 2, 2], 1)
            .unwrap_err()
            .contains("4 channels"));
    }
}
