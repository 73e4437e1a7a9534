//! A compiled program: the model's forward graph plus, when the source has
//! them, the data it reads and how it trains. This is everything later
//! stages see; none of them looks at the source language.

use crate::graph::Graph;
use crate::types::DType;
use std::fmt;

#[derive(Debug, Clone)]
pub struct Module {
    /// The model's name (`MLP`).
    pub name: String,
    /// Inputs to outputs; params are leaves. This is the model in
    /// evaluation mode (the DSL's `training` is false): what prediction
    /// runs. The model's own `state` (running statistics) appears here as
    /// `state` leaves; optimizer state never does.
    pub forward: Graph,
    pub data: Option<DataSpec>,
    pub train: Option<TrainSpec>,
}

/// Where the samples come from. Paths are as written in the source,
/// resolved by the runtime against the source file's folder (or a folder
/// given on the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub name: String,
    pub fields: Vec<DataField>,
    pub test: Option<TestSet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataField {
    pub name: String,
    /// The element type the graph receives (`f32` unless annotated).
    pub dtype: DType,
    pub source: Source,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An IDX file (MNIST layout), plain or gzipped.
    Idx { path: String },
    /// Columns `[from, to)` of a numeric CSV file, plain or gzipped.
    CsvColumns {
        path: String,
        from: usize,
        to: usize,
    },
    /// One column of a numeric CSV file (labels).
    CsvColumn { path: String, column: usize },
    /// The images of an image folder (torchvision `ImageFolder`: one
    /// subfolder per class), as `u8` samples `[C, H, W]`. The path may lead
    /// into a `.tar`, `.tar.gz` or `.tgz` archive (`set.tar.gz/train`).
    /// Only what was written is kept here; listing, decoding and the
    /// archive lookup belong to the runtime, which has the files.
    Images {
        path: String,
        /// One luma channel instead of three RGB ones.
        grayscale: bool,
        /// Resize every image to `[height, width]`; `None` requires that
        /// all images already share one size.
        size: Option<[usize; 2]>,
    },
    /// The labels of an image folder: each image's class index, classes in
    /// sorted folder-name order. A separate source rather than a second
    /// output of `Images` because every field has exactly one source; the
    /// runtime lists a folder once for both.
    ImageLabels { path: String },
    /// The images of CIFAR-10 binary files, `u8` samples `[3, 32, 32]`: one
    /// `.bin` file, or a folder meaning its `data_batch_1.bin` to
    /// `data_batch_5.bin`.
    Cifar { path: String },
    /// The labels (0 to 9) of the same CIFAR-10 files.
    CifarLabels { path: String },
    /// One text column of a table, as `i32` samples `[length]` of token
    /// ids: the text lowercased, split on non-alphanumerics, with the
    /// n-grams up to `ngrams` after the words; id 0 pads, id 1 is a token
    /// outside the vocabulary, and the vocabulary is built on the training
    /// samples only. A test field of the same name uses the training
    /// field's vocabulary; its own vocabulary options, when given, must
    /// match it (`None` means not written).
    Text {
        path: String,
        format: TextFormat,
        column: TextColumn,
        /// Tokens per sample: shorter texts are padded with id 0 at the
        /// end, longer ones keep their first `length` tokens.
        length: usize,
        /// Fewest occurrences in the training samples for a token to get
        /// an id (default 1).
        min_count: Option<usize>,
        /// Most ids, the two reserved ones included (default: no limit).
        max_size: Option<usize>,
        /// Longest n-gram: 1 words only, 2 adds bigrams `a_b` (default 1).
        ngrams: Option<usize>,
    },
    /// A class-name column of a table, as each sample's class index:
    /// classes in sorted order of the names in the training samples.
    TextLabels {
        path: String,
        format: TextFormat,
        column: TextColumn,
    },
}

/// How a text table is laid out; chosen by the file's extension (before
/// any `.gz`) unless the source says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextFormat {
    /// Orange's data table (`.tab`): tab-separated, three header lines
    /// (names, types, flags).
    Tab,
    /// Tab-separated, one header line of names (`.tsv`).
    Tsv,
    /// Comma-separated, one header line, fields optionally in double
    /// quotes (`""` is a quote inside one) (`.csv`).
    Csv,
    /// One text per line, no header: the whole line is column 0. What
    /// `--predict` reads from a file of another extension; not a `format`
    /// the language offers, since a line holds no label.
    Lines,
}

impl TextFormat {
    /// The format of a file named `path`, by its extension (`x.tab.gz` is
    /// `Tab`); `None` for any other extension.
    pub fn of_path(path: &str) -> Option<TextFormat> {
        let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        let name = name.strip_suffix(".gz").unwrap_or(name);
        let (_, ext) = name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "tab" => Some(TextFormat::Tab),
            "tsv" => Some(TextFormat::Tsv),
            "csv" => Some(TextFormat::Csv),
            _ => None,
        }
    }

    /// The name a source's `format:` argument takes.
    pub fn name(self) -> &'static str {
        match self {
            TextFormat::Tab => "tab",
            TextFormat::Tsv => "tsv",
            TextFormat::Csv => "csv",
            TextFormat::Lines => "lines",
        }
    }

    /// Lines before the first sample.
    pub fn header_lines(self) -> usize {
        match self {
            TextFormat::Tab => 3,
            TextFormat::Tsv | TextFormat::Csv => 1,
            TextFormat::Lines => 0,
        }
    }
}

/// A column of a text table: by its header name, or by its 0-based index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextColumn {
    Name(String),
    Index(usize),
}

impl fmt::Display for TextColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextColumn::Name(n) => write!(f, "`{n}`"),
            TextColumn::Index(i) => write!(f, "{i}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Scale(f64),
    OneHot(usize),
    /// `(x - mean) / std`. The lists hold one value (for every element),
    /// one per channel (the first axis of a sample of rank 2 or more, like
    /// torchvision's `Normalize`), or one per element; which one follows
    /// from the sample shape, which only the runtime knows.
    Normalize {
        mean: Vec<f64>,
        std: Vec<f64>,
    },
    /// New per-sample shape.
    Reshape(Vec<usize>),
    /// scikit-learn's `StandardScaler`: `(x - mean) / std` with the mean
    /// and the population std (`ddof = 0`) of the training samples only,
    /// as they are at this point of the pipeline; a std of 0 divides by 1.
    /// The runtime fits it once and saves the statistics with the
    /// checkpoint, so evaluation and `--predict` apply the same ones.
    Standardize {
        per: FitAxis,
    },
    /// scikit-learn's `MinMaxScaler` to `[0, 1]`: `(x - min) / (max -
    /// min)` with the training samples' extremes; a range of 0 divides by 1.
    MinMax {
        per: FitAxis,
    },
    /// A random transform of an image sample (`[C, H, W]` or `[H, W]`),
    /// applied to training batches only.
    Augment(Augment),
}

/// Which values share one fitted statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitAxis {
    /// Each element of a sample is its own feature (scikit-learn's
    /// per-column statistics over a flat sample).
    Element,
    /// Each channel (the first axis of a sample of rank 2 or more) is one
    /// feature over all its positions, like torchvision's `Normalize`.
    Channel,
}

/// The training-only random image transforms, with torchvision's names
/// and meaning. Each draws from a stream fixed by the run's seed, the
/// epoch and the sample, so a run reproduces from its seed.
#[derive(Debug, Clone, PartialEq)]
pub enum Augment {
    /// `RandomCrop(size, padding)`: zero padding on every side, then a
    /// window of `size = [height, width]` at a uniform offset. Evaluation
    /// takes the centre window instead, so shapes agree.
    RandomCrop { size: [usize; 2], padding: usize },
    /// `RandomHorizontalFlip(p)` (mirrors the width axis) or
    /// `RandomVerticalFlip(p)` (the height axis).
    Flip { horizontal: bool, p: f64 },
    /// `RandomAffine(degrees, translate, scale)` with bilinear sampling and
    /// zero fill; `rotate(d)` is an affine with only `degrees`.
    Affine {
        degrees: f64,
        translate: Option<[f64; 2]>,
        scale: Option<[f64; 2]>,
    },
    /// `ColorJitter(brightness, contrast, saturation)` on values in
    /// `[0, 1]`, in that fixed order.
    ColorJitter {
        brightness: f64,
        contrast: f64,
        saturation: f64,
    },
    /// Adds `N(0, std^2)` to every element.
    GaussianNoise { std: f64 },
}

impl Augment {
    /// The name a data block writes.
    pub fn name(&self) -> &'static str {
        match self {
            Augment::RandomCrop { .. } => "random_crop",
            Augment::Flip {
                horizontal: true, ..
            } => "hflip",
            Augment::Flip { .. } => "vflip",
            Augment::Affine { .. } => "affine",
            Augment::ColorJitter { .. } => "color_jitter",
            Augment::GaussianNoise { .. } => "gaussian_noise",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TestSet {
    /// Separate files, one per field.
    Fields(Vec<DataField>),
    /// This fraction of the samples, held out by a seeded shuffle.
    Split(f64),
}

#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// The model in training mode (the DSL's `training` is true: dropout
    /// active, batch statistics) extended with the loss: its outputs are
    /// the model's outputs plus `loss` (a scalar) and any metrics; data
    /// fields the loss reads (labels) are extra inputs. Its `updates` are
    /// the model's own state updates (running statistics), computed from
    /// this step's forward values; the training step keeps them next to
    /// the optimizer's. Params are the same (names, types, initializers)
    /// as in `Module::forward` and `evaluation`.
    pub objective: Graph,
    /// The same loss and metrics on the model in evaluation mode (the
    /// graph of `Module::forward`): what validation and test sets are
    /// scored with, as PyTorch scores a model after `model.eval()`. It has
    /// no updates.
    pub evaluation: Graph,
    pub data: String,
    pub optimizer: Optimizer,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Whether each epoch visits the training samples in a fresh seeded
    /// order (`shuffle = true`, the default) or in file order, as a
    /// `DataLoader` with `shuffle=False` does.
    pub shuffle: bool,
    /// Fraction of the training samples held out for validation.
    pub validate: Option<f64>,
    /// How the learning rate changes from epoch to epoch.
    pub schedule: Option<Schedule>,
    pub metrics: Vec<Metric>,
}

/// The loss output's name in `TrainSpec::objective`.
pub const LOSS: &str = "loss";

/// The prefix of the gradient outputs of a gradient graph (built by
/// `nnc_passes::gradient_graph`): `grad.dense.w` is the loss's gradient
/// with respect to the param `dense.w`.
pub const GRADIENT_PREFIX: &str = "grad.";

/// Inputs named `hyper.*` carry hyperparameters that the runtime feeds each
/// step, rather than data.
pub const HYPER: &str = "hyper.";

/// The training step's learning-rate input: an input, not a constant, so a
/// schedule can change it without recompiling.
pub const LEARNING_RATE: &str = "hyper.lr";

/// Adam's step counter, optimizer state of the training step: an `i32`
/// scalar counting the steps taken (PyTorch's `state['step']`), so it
/// counts past 2^24 where an `f32` would stop.
pub const ADAM_STEP: &str = "adam.step";

/// Adam's `step_size = lr / (1 - β₁^t)` for step `t`: an input, because
/// PyTorch computes it on the host in `f64` and only the result is rounded
/// to the params' `f32` (computed in the graph from an `f32` β it would be
/// off by up to 1e-5 relative).
pub const ADAM_STEP_SIZE: &str = "hyper.adam.step_size";

/// Adam's `sqrt(1 - β₂^t)` for step `t`, an input for the same reason as
/// [`ADAM_STEP_SIZE`].
pub const ADAM_BIAS_CORRECTION2_SQRT: &str = "hyper.adam.bias_correction2_sqrt";

/// The key of every `Op::Random` in a graph: a scalar `i32` input that the
/// runtime feeds with a fresh key every step, derived from the seed, the
/// epoch and the step, so dropout masks differ from step to step but a run
/// is reproducible from its seed. Like `hyper.*` inputs it is not data.
pub const RNG_KEY: &str = "rng.key";

/// Whether a graph input is fed by the training loop itself (`hyper.*`,
/// the random key) rather than by a data field.
pub fn is_loop_input(name: &str) -> bool {
    name.starts_with(HYPER) || name == RNG_KEY
}

#[derive(Debug, Clone, PartialEq)]
pub enum Optimizer {
    /// PyTorch `SGD`: `v = momentum * v + g; p -= lr * (nesterov ? g + momentum * v : v)`,
    /// with `g += weight_decay * p` first.
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// PyTorch `Adam` (L2 weight decay added to the gradient).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// Learning-rate schedules, stepped once per epoch like PyTorch's
/// `lr_scheduler`s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `StepLR`: multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f64 },
    /// `ExponentialLR`: multiply by `gamma` every epoch.
    Exponential { gamma: f64 },
    /// `CosineAnnealingLR` over the whole run, down to `min_lr`.
    Cosine { min_lr: f64 },
}

impl Schedule {
    /// The rate for 0-based `epoch` of `epochs`, starting from `base`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Exponential { gamma } => base * gamma.powi(epoch as i32),
            Schedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

impl Optimizer {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => lr,
        }
    }

    /// The values of the `hyper.*` inputs the training step built for this
    /// optimizer reads, for the step after `steps_taken` steps at learning
    /// rate `lr`. Computed in `f64`, as PyTorch computes them on the host
    /// (Python floats); the step rounds them to the params' dtype once.
    pub fn hyper_inputs(&self, lr: f64, steps_taken: u64) -> HyperInputs {
        match *self {
            Optimizer::Sgd { .. } => HyperInputs {
                values: [(LEARNING_RATE, lr), ("", 0.0)],
                len: 1,
            },
            Optimizer::Adam { beta1, beta2, .. } => {
                // `step` is a float in PyTorch too: `beta ** step` is f64 `pow`.
                let t = (steps_taken + 1) as f64;
                let bias_correction1 = 1.0 - beta1.powf(t);
                let bias_correction2 = 1.0 - beta2.powf(t);
                HyperInputs {
                    values: [
                        (ADAM_STEP_SIZE, lr / bias_correction1),
                        (ADAM_BIAS_CORRECTION2_SQRT, bias_correction2.sqrt()),
                    ],
                    len: 2,
                }
            }
        }
    }
}

/// The `hyper.*` inputs of one training step, by name (no allocation: the
/// training loop computes them every step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HyperInputs {
    values: [(&'static str, f64); 2],
    len: usize,
}

impl HyperInputs {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.values[..self.len].iter().copied()
    }

    /// The value of input `name`, if the step reads it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Fraction of samples whose arg-max output equals the integer label.
    Accuracy,
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => write!(
                f,
                "sgd(lr: {lr:?}, momentum: {momentum:?}, nesterov: {nesterov}, weight_decay: {weight_decay:?})"
            ),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => write!(
                f,
                "adam(lr: {lr:?}, beta1: {beta1:?}, beta2: {beta2:?}, eps: {eps:?}, weight_decay: {weight_decay:?})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Optimizer, Schedule, TextFormat, ADAM_BIAS_CORRECTION2_SQRT, ADAM_STEP_SIZE, LEARNING_RATE,
    };

    fn adam(lr: f64, beta1: f64, beta2: f64) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    #[test]
    fn sgd_reads_only_the_learning_rate() {
        let sgd = Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let h = sgd.hyper_inputs(0.25, 7);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(LEARNING_RATE, 0.25)]);
    }

    /// PyTorch: `bias_correction1 = 1 - beta1 ** step`, `step_size = lr /
    /// bias_correction1`, `bias_correction2_sqrt = sqrt(1 - beta2 ** step)`
    /// with `step` the count after this step's increment, in f64.
    #[test]
    fn adam_scalars_are_pytorchs_in_f64() {
        let h = adam(1.0, 0.9, 0.999).hyper_inputs(1.0, 0);
        assert_eq!(h.iter().count(), 2);
        assert_eq!(h.get(LEARNING_RATE), None);
        // 1 - 0.9 is 0.09999999999999998 in f64.
        assert_eq!(h.get(ADAM_STEP_SIZE), Some(1.0 / (1.0 - 0.9)));
        assert_eq!(h.get(ADAM_STEP_SIZE), Some(10.000000000000002));
        assert_eq!(
            h.get(ADAM_BIAS_CORRECTION2_SQRT),
            Some((1.0f64 - 0.999).sqrt())
        );
        // Step 3 after 2 taken, at a scheduled rate.
        let h = adam(1e-3, 0.8, 0.99).hyper_inputs(0.5, 2);
        assert_eq!(h.get(ADAM_STEP_SIZE), Some(0.5 / (1.0 - 0.8f64.powf(3.0))));
        assert_eq!(
            h.get(ADAM_BIAS_CORRECTION2_SQRT),
            Some((1.0 - 0.99f64.powf(3.0)).sqrt())
        );
        // Far past 2^24 steps the corrections are exactly 1.
        let h = adam(1e-3, 0.9, 0.999).hyper_inputs(1e-3, 1 << 30);
        assert_eq!(h.get(ADAM_STEP_SIZE), Some(1e-3));
        assert_eq!(h.get(ADAM_BIAS_CORRECTION2_SQRT), Some(1.0));
    }

    #[test]
    fn text_formats_follow_the_extension_before_gz() {
        assert_eq!(TextFormat::of_path("text/r8.tab"), Some(TextFormat::Tab));
        assert_eq!(TextFormat::of_path("20ng.TAB.gz"), Some(TextFormat::Tab));
        assert_eq!(TextFormat::of_path("a.b/x.tsv"), Some(TextFormat::Tsv));
        assert_eq!(TextFormat::of_path("x.csv.gz"), Some(TextFormat::Csv));
        assert_eq!(TextFormat::of_path("x.txt"), None);
        assert_eq!(TextFormat::of_path("a.tab/x"), None);
        assert_eq!(TextFormat::of_path("x.gz"), None);
        assert_eq!(TextFormat::Tab.header_lines(), 3);
        assert_eq!(TextFormat::Csv.header_lines(), 1);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn schedules_match_pytorch() {
        // StepLR(step_size=2, gamma=0.5) from lr 1: 1, 1, .5, .5, .25
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        let got: Vec<f64> = (0..5).map(|e| s.lr(1.0, e, 5)).collect();
        assert_eq!(got, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        // ExponentialLR(gamma=0.9)
        let s = Schedule::Exponential { gamma: 0.9 };
        assert!(close(s.lr(2.0, 3, 10), 2.0 * 0.729));
        // CosineAnnealingLR(T_max=4, eta_min=0.1): epoch 0 is the base rate,
        // epoch 2 halfway between base and minimum.
        let s = Schedule::Cosine { min_lr: 0.1 };
        assert!(close(s.lr(1.0, 0, 4), 1.0));
        assert!(close(s.lr(1.0, 2, 4), 0.55));
        assert!(close(
            s.lr(1.0, 1, 4),
            0.1 + 0.9 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0
        ));
    }
}
