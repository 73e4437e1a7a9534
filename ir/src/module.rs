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
    /// The calls of the model's body, in order, for its summary
    /// ([`crate::Summary`]).
    pub layers: Vec<crate::LayerCall>,
    pub data: Option<DataSpec>,
    pub train: Option<TrainSpec>,
    /// Structural compression applied to the source's model, in order
    /// (`nnc prune`, `nnc factorize`): its graphs are the changed ones,
    /// and every checkpoint of it records these so that a later run
    /// applies them again before it loads the weights.
    pub changes: Vec<StructuralChange>,
}

/// A change to a model's structure that its source does not say: the
/// weights of a changed model fit only the changed graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StructuralChange {
    /// Structured pruning: of the channels tied to the output axis of the
    /// product weight `param` (a dense layer's units, a convolution's
    /// filters, and everything that follows them: bias, batch norm, the
    /// next layer's input rows), only `kept` remain, as indices into the
    /// original channels in increasing order.
    PruneChannels { param: String, kept: Vec<usize> },
    /// Low-rank factorization: the product weight `param` is replaced by
    /// two factors of inner size `rank`, params `{param}.u` and
    /// `{param}.v`, multiplied in the order that costs the fewest FLOPs.
    Factorize { param: String, rank: usize },
    /// Quantization-aware training: every dense and convolution product
    /// computes with its activations and weight fake quantized (the
    /// integer model's values, the gradient passed straight through),
    /// the activations' ranges held in the states `{weight}.act_min` and
    /// `{weight}.act_max` (`nnc quantize --qat` prepares it; `nnc
    /// quantize` of the trained checkpoint converts it).
    FakeQuantize,
}

impl Module {
    /// Each call of the model's body with its output type and parameter
    /// count, and the totals: Keras' `model.summary()`.
    pub fn summary(&self) -> crate::Summary {
        crate::Summary::new(&self.layers, &self.forward)
    }
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
    /// Params the optimizer's weight decay skips (the optimizer's
    /// `no_decay:` patterns, resolved to names): PyTorch's usual second
    /// param group with `weight_decay=0`.
    pub no_decay: Vec<String>,
    /// Gradient clipping inside the step, before the optimizer.
    pub clip: GradClip,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Whether each epoch visits the training samples in a fresh seeded
    /// order (`shuffle = true`, the default) or in file order, as a
    /// `DataLoader` with `shuffle=False` does.
    pub shuffle: bool,
    /// Fraction of the training samples held out for validation.
    pub validate: Option<f64>,
    /// `validate = kfold(k)` (then `validate` is `None`).
    pub kfold: Option<KFold>,
    /// How the learning rate changes from step to step and epoch to epoch.
    pub schedule: Option<Schedule>,
    /// When to stop before `epochs`, watching a metric.
    pub early_stop: Option<EarlyStop>,
    /// Gradual magnitude pruning of the product weights (`prune =
    /// magnitude(...)`): their masks are model state.
    pub prune: Option<Prune>,
    pub metrics: Vec<Metric>,
    /// The train block's settings as written (key, value), in order: what
    /// reports show, so a reader sees the recipe in the file's own words.
    pub written: Vec<(String, String)>,
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

/// AdamW's decoupled decay factor `1 - lr * weight_decay` for the step's
/// learning rate: an input for the same reason as [`ADAM_STEP_SIZE`]
/// (PyTorch computes it as a Python float).
pub const ADAMW_DECAY: &str = "hyper.adamw.decay";

/// Adagrad's step counter: an `i32` scalar state like [`ADAM_STEP`].
pub const ADAGRAD_STEP: &str = "adagrad.step";

/// Adagrad's decayed rate `clr = lr / (1 + (t - 1) * lr_decay)` for step
/// `t`, computed on the host in `f64` as PyTorch does.
pub const ADAGRAD_LR: &str = "hyper.adagrad.lr";

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
    /// PyTorch `AdamW`: `p *= 1 - lr * weight_decay` (the plain learning
    /// rate), then Adam's update without decay in the gradient. Its state
    /// is Adam's (`adam.step`, `.adam_m`, `.adam_v`).
    AdamW {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    /// PyTorch `RMSprop`: `v = alpha * v + (1 - alpha) * g^2`; centered,
    /// `m = lerp(m, g, 1 - alpha)` and `v - m^2` under the root; `eps`
    /// added after the root; with momentum, `b = momentum * b + g / avg`
    /// and `p -= lr * b`, else `p -= lr * g / avg`.
    RmsProp {
        lr: f64,
        alpha: f64,
        eps: f64,
        weight_decay: f64,
        momentum: f64,
        centered: bool,
    },
    /// PyTorch `Adagrad`: `s += g^2` (from `initial_accumulator_value`),
    /// `p -= clr * g / (sqrt(s) + eps)` with `clr = lr / (1 + (t - 1) *
    /// lr_decay)` at step `t`.
    Adagrad {
        lr: f64,
        lr_decay: f64,
        weight_decay: f64,
        initial_accumulator_value: f64,
        eps: f64,
    },
}

/// Gradient clipping in the training step, applied to the raw gradients
/// before the optimizer (and so before its weight decay), as a PyTorch loop
/// calls `clip_grad_value_` / `clip_grad_norm_` between `backward()` and
/// `optimizer.step()`. With both, values are clamped first, then the
/// global norm is taken of the clamped gradients.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GradClip {
    /// `clip_grad_value_(params, v)`: each element clamped to `[-v, v]`.
    pub value: Option<f64>,
    /// `clip_grad_norm_(params, max_norm)`: every gradient scaled by
    /// `min(1, max_norm / (total_norm + 1e-6))`, `total_norm` the L2 norm
    /// over all params' gradients together.
    pub norm: Option<f64>,
}

/// How the learning rate changes during training: an optional linear
/// warmup over the first optimizer steps, multiplied with an optional
/// decay (`warmup(steps: 500) -> cosine()`). The rate stays an input of
/// the training step (`hyper.lr`), so no schedule recompiles anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub warmup: Option<Warmup>,
    pub decay: Option<Decay>,
}

/// Where a step stands in training, all a schedule's closed forms need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrAt {
    /// 0-based epoch of `epochs`.
    pub epoch: usize,
    pub epochs: usize,
    /// 0-based optimizer step since training began, of `steps` in the
    /// whole run (`epochs` × batches per epoch).
    pub step: usize,
    pub steps: usize,
    /// The rate [`Decay::Plateau`] has reduced the base rate to so far
    /// (state the training loop keeps, since it depends on the metrics);
    /// ignored by the other decays.
    pub plateau_lr: f64,
}

impl Schedule {
    /// The learning rate of the step at `at`, from the optimizer's rate
    /// `base`: the warmup's factor times the decay's rate, as PyTorch's
    /// `LinearLR` and an epoch scheduler stepped on one optimizer (or
    /// `ChainedScheduler`) multiply their factors.
    pub fn lr(&self, base: f64, at: &LrAt) -> f64 {
        let decayed = self.decay.as_ref().map_or(base, |d| d.lr(base, at));
        self.warmup.map_or(decayed, |w| w.factor(at.step) * decayed)
    }
}

/// PyTorch's `LinearLR(start_factor, end_factor=1.0, total_iters=steps)`
/// stepped after every optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// At least 1.
    pub steps: usize,
    /// In `(0, 1]`; PyTorch's default is 1/3.
    pub start_factor: f64,
}

impl Warmup {
    /// The factor of 0-based optimizer step `step` (`LinearLR`'s closed
    /// form at `last_epoch = step`).
    pub fn factor(&self, step: usize) -> f64 {
        let total = self.steps.max(1);
        self.start_factor + (1.0 - self.start_factor) * step.min(total) as f64 / total as f64
    }
}

/// A learning-rate decay: per epoch like most of PyTorch's
/// `lr_scheduler`s, per optimizer step for `OneCycle`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decay {
    /// `StepLR`: multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f64 },
    /// `ExponentialLR`: multiply by `gamma` every epoch.
    Exponential { gamma: f64 },
    /// `CosineAnnealingLR` over the whole run, down to `min_lr`.
    Cosine { min_lr: f64 },
    /// `MultiStepLR`: multiply by `gamma` at each milestone epoch
    /// (0-based epoch counts, strictly increasing, positive).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// `OneCycleLR` stepped per optimizer step over the whole run.
    OneCycle(OneCycle),
    /// `ReduceLROnPlateau`, stepped after each epoch's metrics.
    Plateau(Plateau),
}

impl Decay {
    /// The rate at `at` from the base rate `base` (before any warmup).
    pub fn lr(&self, base: f64, at: &LrAt) -> f64 {
        match self {
            Decay::Step { every, gamma } => base * gamma.powi((at.epoch / (*every).max(1)) as i32),
            Decay::Exponential { gamma } => base * gamma.powi(at.epoch as i32),
            Decay::Cosine { min_lr } => {
                let t = at.epoch as f64 / at.epochs.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            Decay::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= at.epoch).count();
                base * gamma.powi(passed as i32)
            }
            Decay::OneCycle(c) => c.lr(at.step, at.steps),
            Decay::Plateau(_) => at.plateau_lr,
        }
    }

    /// Whether this decay sets the rate itself at every step, so a warmup
    /// in front of it would be meaningless (`OneCycle` warms up itself).
    pub fn warms_up(&self) -> bool {
        matches!(self, Decay::OneCycle(_))
    }
}

/// How `OneCycleLR` moves between two rates within a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anneal {
    /// `anneal_strategy='cos'`.
    Cos,
    /// `anneal_strategy='linear'`.
    Linear,
}

/// PyTorch's `OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy,
/// cycle_momentum=False, div_factor, final_div_factor, three_phase)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    pub max_lr: f64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub anneal: Anneal,
    pub three_phase: bool,
}

impl OneCycle {
    /// The rate of 0-based step `step` of `total` (`get_lr` at
    /// `last_epoch = step`): phases end at float step counts, as PyTorch's do.
    pub fn lr(&self, step: usize, total: usize) -> f64 {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let total = total as f64;
        let phases: &[(f64, f64, f64)] = if self.three_phase {
            &[
                (self.pct_start * total - 1.0, initial, self.max_lr),
                (2.0 * self.pct_start * total - 2.0, self.max_lr, initial),
                (total - 1.0, initial, min),
            ]
        } else {
            &[
                (self.pct_start * total - 1.0, initial, self.max_lr),
                (total - 1.0, self.max_lr, min),
            ]
        };
        let step = step as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, from, to)) in phases.iter().enumerate() {
            if step <= end_step || i == phases.len() - 1 {
                // A phase shorter than a step (PyTorch divides by zero).
                let pct = if end_step > start_step {
                    (step - start_step) / (end_step - start_step)
                } else {
                    1.0
                };
                return match self.anneal {
                    Anneal::Cos => {
                        to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
                    }
                    Anneal::Linear => (to - from) * pct + from,
                };
            }
            start_step = end_step;
        }
        min
    }
}

/// A training metric the loop watches: `val_loss` is the validation
/// samples' `loss`, `accuracy` the training samples' `accuracy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// On the validation samples (`val_` prefix) rather than the training ones.
    pub validation: bool,
    /// The metric's name as [`Metric`]s and the loss report it (`loss`,
    /// `accuracy`).
    pub metric: String,
}

impl Monitor {
    /// Whether larger is better (Keras's and PyTorch's `mode='max'`):
    /// everything but losses and errors.
    pub fn maximize(&self) -> bool {
        !matches!(self.metric.as_str(), "loss" | "mae" | "mse" | "rmse")
    }
}

impl fmt::Display for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.validation { "val_" } else { "" };
        write!(f, "{prefix}{}", self.metric)
    }
}

/// PyTorch's `ReduceLROnPlateau(mode from the monitor, factor, patience,
/// threshold, threshold_mode='rel', cooldown, min_lr, eps=1e-8)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plateau {
    pub monitor: Monitor,
    pub patience: usize,
    /// In `(0, 1)`.
    pub factor: f64,
    pub threshold: f64,
    pub cooldown: usize,
    pub min_lr: f64,
}

/// Unstructured magnitude pruning during training, gradual as in Zhu &
/// Gupta (2017) and TF-MOT's `PolynomialDecay(initial_sparsity=0,
/// final_sparsity=sparsity, power=3, begin_step, end_step, frequency)`:
/// the product weights of dense layers and convolutions are read through
/// a mask (state `{param}.mask`), which the training loop recomputes from
/// the weights' magnitudes every `every` steps between the start of epoch
/// `start` and the end of epoch `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prune {
    /// The final sparsity, in `[0, 1)`: the share of each weight's
    /// elements (or of all of them, `Global`) that are zero at the end.
    pub sparsity: f64,
    /// The 1-based epoch at whose start pruning begins (sparsity 0 there).
    pub start: usize,
    /// The epoch at whose end the final sparsity is reached; `None`: the
    /// run's last epoch.
    pub end: Option<usize>,
    /// Steps between mask updates (TF-MOT's `frequency`).
    pub every: usize,
    pub scope: PruneScope,
    /// Where the setting is written, for errors found after lowering
    /// (a model without a weight to prune).
    pub span: Option<crate::Span>,
}

/// Where the magnitude threshold applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneScope {
    /// Each weight is pruned to the target on its own.
    Layer,
    /// One threshold over all pruned weights together
    /// (`torch.nn.utils.prune.global_unstructured`).
    Global,
}

impl fmt::Display for PruneScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PruneScope::Layer => "layer",
            PruneScope::Global => "global",
        })
    }
}

/// The name of the mask state of the pruned weight `param`.
pub fn mask_name(param: &str) -> String {
    format!("{param}.mask")
}

/// The steps of a pruning schedule in a run of `per_epoch` steps an
/// epoch, `epochs` epochs: `begin` and `end` as optimizer steps taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneSteps {
    pub begin: usize,
    pub end: usize,
}

impl Prune {
    /// The schedule in steps: pruning begins after `(start - 1)` epochs of
    /// steps and ends after `end` epochs (the run's `epochs` without one).
    pub fn steps(&self, per_epoch: usize, epochs: usize) -> PruneSteps {
        let end_epoch = self.end.unwrap_or(epochs).max(self.start);
        PruneSteps {
            begin: (self.start - 1) * per_epoch,
            end: end_epoch * per_epoch,
        }
    }

    /// The target sparsity once `t` optimizer steps have been taken:
    /// `s_f + (0 - s_f)(1 - (t - t0)/(t1 - t0))^3`, `t` clamped into
    /// `[t0, t1]` (0 before, `s_f` after).
    pub fn sparsity_at(&self, steps: PruneSteps, t: usize) -> f64 {
        if t <= steps.begin {
            return 0.0;
        }
        if t >= steps.end {
            return self.sparsity;
        }
        let p = (t - steps.begin) as f64 / (steps.end - steps.begin) as f64;
        self.sparsity * (1.0 - (1.0 - p).powi(3))
    }

    /// Whether the masks are recomputed once `t` steps have been taken:
    /// every `every` steps after the begin step, and at the end step
    /// itself (TF-MOT skips it when `end - begin` is not a multiple of its
    /// frequency, and never reaches its final sparsity then).
    pub fn updates_at(&self, steps: PruneSteps, t: usize) -> bool {
        t > steps.begin
            && t <= steps.end
            && ((t - steps.begin).is_multiple_of(self.every) || t == steps.end)
    }
}

/// Keras's `EarlyStopping(monitor, min_delta, patience, mode from the
/// monitor, restore_best_weights)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStop {
    pub monitor: Monitor,
    pub patience: usize,
    pub min_delta: f64,
    /// Put back the params and state of the best epoch when training ends.
    pub restore_best: bool,
}

impl Optimizer {
    /// The base learning rate.
    /// The same optimizer at base learning rate `lr` (`nnc run --lr`:
    /// fine-tuning a trained model at a smaller rate than it was
    /// trained with).
    pub fn with_lr(mut self, new: f64) -> Optimizer {
        match &mut self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. }
            | Optimizer::RmsProp { lr, .. }
            | Optimizer::Adagrad { lr, .. } => *lr = new,
        }
        self
    }

    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::AdamW { lr, .. }
            | Optimizer::RmsProp { lr, .. }
            | Optimizer::Adagrad { lr, .. } => lr,
        }
    }

    /// The values of the `hyper.*` inputs the training step built for this
    /// optimizer reads, for the step after `steps_taken` steps at learning
    /// rate `lr`. Computed in `f64`, as PyTorch computes them on the host
    /// (Python floats); the step rounds them to the params' dtype once.
    pub fn hyper_inputs(&self, lr: f64, steps_taken: u64) -> HyperInputs {
        match *self {
            Optimizer::Sgd { .. } | Optimizer::RmsProp { .. } => {
                HyperInputs::of(&[(LEARNING_RATE, lr)])
            }
            Optimizer::Adam { beta1, beta2, .. } | Optimizer::AdamW { beta1, beta2, .. } => {
                // `step` is a float in PyTorch too: `beta ** step` is f64 `pow`.
                let t = (steps_taken + 1) as f64;
                let bias_correction1 = 1.0 - beta1.powf(t);
                let bias_correction2 = 1.0 - beta2.powf(t);
                let adam = [
                    (ADAM_STEP_SIZE, lr / bias_correction1),
                    (ADAM_BIAS_CORRECTION2_SQRT, bias_correction2.sqrt()),
                ];
                match *self {
                    Optimizer::AdamW { weight_decay, .. } if weight_decay != 0.0 => {
                        HyperInputs::of(&[adam[0], adam[1], (ADAMW_DECAY, 1.0 - lr * weight_decay)])
                    }
                    _ => HyperInputs::of(&adam),
                }
            }
            Optimizer::Adagrad { lr_decay, .. } => {
                // `(step - 1) * lr_decay` with the float step, as PyTorch.
                let clr = lr / (1.0 + steps_taken as f64 * lr_decay);
                HyperInputs::of(&[(ADAGRAD_LR, clr)])
            }
        }
    }
}

/// The `hyper.*` inputs of one training step, by name (no allocation: the
/// training loop computes them every step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HyperInputs {
    values: [(&'static str, f64); 3],
    len: usize,
}

impl HyperInputs {
    fn of(given: &[(&'static str, f64)]) -> HyperInputs {
        let mut values = [("", 0.0); 3];
        values[..given.len()].copy_from_slice(given);
        HyperInputs {
            values,
            len: given.len(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.values[..self.len].iter().copied()
    }

    /// The value of input `name`, if the step reads it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Fraction of samples whose arg-max output equals the integer label
    /// (a graph output, so also measured on every training batch).
    Accuracy,
    /// A metric of a whole set of samples, computed by the runtime from the
    /// evaluation graph's output and the label (counts and sums over the
    /// set's batches, never a mean of per-batch values, which would be
    /// wrong for F1 and R²).
    Set(SetMetric, MetricTarget),
}

/// scikit-learn's `average=` of precision, recall and F1 over the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// The unweighted mean of the per-class values (every class the model
    /// outputs, also those absent from the set).
    Macro,
    /// From the counts summed over all classes.
    Micro,
    /// The per-class values weighted by each class's support.
    Weighted,
}

impl Average {
    pub fn name(self) -> &'static str {
        match self {
            Average::Macro => "macro",
            Average::Micro => "micro",
            Average::Weighted => "weighted",
        }
    }
}

/// What a set metric computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMetric {
    /// Of a classifier averaged as said; of a binary classifier, of the
    /// positive class (`average="binary"`).
    Precision(Average),
    Recall(Average),
    F1(Average),
    /// The confusion matrix, rows the true class (no scalar value).
    Confusion,
    /// `top_k_accuracy_score`: the true class among the `k` highest scores.
    TopK(usize),
    /// Of a binary classifier: thresholded predictions equal to the label.
    BinaryAccuracy,
    /// `mean_absolute_error`, `root_mean_squared_error`, `r2_score`, each
    /// the uniform average over the output's columns (scikit-learn's
    /// default `multioutput`).
    Mae,
    Rmse,
    R2,
}

impl SetMetric {
    /// The name the value goes by in the progress line, the report and
    /// `Metrics::value` (`f1`, `f1_micro`, `top_3_accuracy`); `None` for
    /// the confusion matrix, which is not a number.
    pub fn value_name(self) -> Option<String> {
        let averaged = |base: &str, a: Average| match a {
            Average::Macro => base.to_string(),
            other => format!("{base}_{}", other.name()),
        };
        Some(match self {
            SetMetric::Precision(a) => averaged("precision", a),
            SetMetric::Recall(a) => averaged("recall", a),
            SetMetric::F1(a) => averaged("f1", a),
            SetMetric::Confusion => return None,
            SetMetric::TopK(k) => format!("top_{k}_accuracy"),
            SetMetric::BinaryAccuracy => "binary_accuracy".into(),
            SetMetric::Mae => "mae".into(),
            SetMetric::Rmse => "rmse".into(),
            SetMetric::R2 => "r2".into(),
        })
    }
}

/// The model output and the label field a set metric compares.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTarget {
    /// An output of the evaluation graph (the model's first output).
    pub output: String,
    /// The data field holding the truth.
    pub label: String,
    pub kind: TargetKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetKind {
    /// Scores of `classes` classes along the output's last axis; integer
    /// labels of the other axes' shape.
    Classes(usize),
    /// One score per sample, positive when above `threshold` (after a
    /// sigmoid when the output is a logit); labels 0 or 1.
    Binary { threshold: f64, logits: bool },
    /// Real-valued outputs, a label value per output value.
    Regression,
}

/// `validate = kfold(k)`: k models, each validated on one fold.
#[derive(Debug, Clone, PartialEq)]
pub struct KFold {
    pub k: usize,
    /// The integer class label whose proportions every fold keeps
    /// (`StratifiedKFold`); `None` for plain `KFold` (no class labels).
    pub stratify: Option<String>,
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
            Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => write!(
                f,
                "adamw(lr: {lr:?}, beta1: {beta1:?}, beta2: {beta2:?}, eps: {eps:?}, weight_decay: {weight_decay:?})"
            ),
            Optimizer::RmsProp {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => write!(
                f,
                "rmsprop(lr: {lr:?}, alpha: {alpha:?}, eps: {eps:?}, weight_decay: {weight_decay:?}, momentum: {momentum:?}, centered: {centered})"
            ),
            Optimizer::Adagrad {
                lr,
                lr_decay,
                weight_decay,
                initial_accumulator_value,
                eps,
            } => write!(
                f,
                "adagrad(lr: {lr:?}, lr_decay: {lr_decay:?}, weight_decay: {weight_decay:?}, initial_accumulator_value: {initial_accumulator_value:?}, eps: {eps:?})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {

    fn prune(sparsity: f64, start: usize, end: Option<usize>, every: usize) -> Prune {
        Prune {
            sparsity,
            start,
            end,
            every,
            scope: PruneScope::Layer,
            span: None,
        }
    }

    #[test]
    fn the_pruning_schedule_is_zhu_and_gupta_cubic_between_its_epochs() {
        // Epochs 2..=4 of 10 steps: steps 10 to 40.
        let p = prune(0.8, 2, Some(4), 5);
        let steps = p.steps(10, 6);
        assert_eq!(steps, PruneSteps { begin: 10, end: 40 });
        assert_eq!(p.sparsity_at(steps, 0), 0.0);
        assert_eq!(p.sparsity_at(steps, 10), 0.0);
        // Half way: 0.8 (1 - 0.5^3) = 0.7.
        assert!((p.sparsity_at(steps, 25) - 0.7).abs() < 1e-12);
        // A third of the way: 0.8 (1 - (2/3)^3) = 0.8 · 19/27.
        assert!((p.sparsity_at(steps, 20) - 0.8 * 19.0 / 27.0).abs() < 1e-12);
        assert_eq!(p.sparsity_at(steps, 40), 0.8);
        assert_eq!(p.sparsity_at(steps, 55), 0.8);
        let at: Vec<usize> = (0..60).filter(|&t| p.updates_at(steps, t)).collect();
        assert_eq!(at, vec![15, 20, 25, 30, 35, 40]);
        // The end step updates even off the frequency's grid.
        let p = prune(0.5, 1, None, 7);
        let steps = p.steps(10, 2);
        assert_eq!(steps, PruneSteps { begin: 0, end: 20 });
        let at: Vec<usize> = (0..30).filter(|&t| p.updates_at(steps, t)).collect();
        assert_eq!(at, vec![7, 14, 20]);
    }
    use super::{
        Anneal, Decay, LrAt, Monitor, OneCycle, Optimizer, Schedule, TextFormat, Warmup,
        ADAGRAD_LR, ADAMW_DECAY, ADAM_BIAS_CORRECTION2_SQRT, ADAM_STEP_SIZE, LEARNING_RATE,
    };
    use super::{Prune, PruneScope, PruneSteps};

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

    /// `AdamW` shares Adam's corrections and adds `1 - lr * weight_decay`
    /// (the plain, scheduled rate) only when it decays.
    #[test]
    fn adamw_adds_the_decoupled_decay_factor() {
        let adamw = |weight_decay| Optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        };
        let h = adamw(1e-2).hyper_inputs(0.5, 3);
        let adam = adam(1e-3, 0.9, 0.999).hyper_inputs(0.5, 3);
        assert_eq!(h.get(ADAM_STEP_SIZE), adam.get(ADAM_STEP_SIZE));
        assert_eq!(
            h.get(ADAM_BIAS_CORRECTION2_SQRT),
            adam.get(ADAM_BIAS_CORRECTION2_SQRT)
        );
        assert_eq!(h.get(ADAMW_DECAY), Some(1.0 - 0.5 * 1e-2));
        assert_eq!(h.iter().count(), 3);
        assert_eq!(adamw(0.0).hyper_inputs(0.5, 3).get(ADAMW_DECAY), None);
    }

    /// PyTorch: `clr = lr / (1 + (step - 1) * lr_decay)`, `step` counted
    /// after this step's increment.
    #[test]
    fn adagrad_decays_its_rate_by_the_steps_taken() {
        let adagrad = Optimizer::Adagrad {
            lr: 1e-2,
            lr_decay: 0.5,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        };
        assert_eq!(adagrad.hyper_inputs(0.1, 0).get(ADAGRAD_LR), Some(0.1));
        assert_eq!(
            adagrad.hyper_inputs(0.1, 4).get(ADAGRAD_LR),
            Some(0.1 / (1.0 + 4.0 * 0.5))
        );
        assert_eq!(adagrad.hyper_inputs(0.1, 4).iter().count(), 1);
        let rmsprop = Optimizer::RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        };
        let h = rmsprop.hyper_inputs(0.25, 9);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(LEARNING_RATE, 0.25)]);
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

    fn at(epoch: usize, epochs: usize) -> LrAt {
        LrAt {
            epoch,
            epochs,
            step: 0,
            steps: 1,
            plateau_lr: f64::NAN,
        }
    }

    fn decay(d: Decay) -> Schedule {
        Schedule {
            warmup: None,
            decay: Some(d),
        }
    }

    #[test]
    fn schedules_match_pytorch() {
        // StepLR(step_size=2, gamma=0.5) from lr 1: 1, 1, .5, .5, .25
        let s = decay(Decay::Step {
            every: 2,
            gamma: 0.5,
        });
        let got: Vec<f64> = (0..5).map(|e| s.lr(1.0, &at(e, 5))).collect();
        assert_eq!(got, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        // ExponentialLR(gamma=0.9)
        let s = decay(Decay::Exponential { gamma: 0.9 });
        assert!(close(s.lr(2.0, &at(3, 10)), 2.0 * 0.729));
        // CosineAnnealingLR(T_max=4, eta_min=0.1): epoch 0 is the base rate,
        // epoch 2 halfway between base and minimum.
        let s = decay(Decay::Cosine { min_lr: 0.1 });
        assert!(close(s.lr(1.0, &at(0, 4)), 1.0));
        assert!(close(s.lr(1.0, &at(2, 4)), 0.55));
        assert!(close(
            s.lr(1.0, &at(1, 4)),
            0.1 + 0.9 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0
        ));
    }

    /// PyTorch's recursive `get_lr`s, stepped as a training loop steps
    /// them: the rate each scheduler leaves in the param group.
    mod pytorch {
        use std::f64::consts::PI;

        /// `MultiStepLR.get_lr` after `last_epoch` was incremented.
        pub fn multistep(lr: f64, last_epoch: usize, milestones: &[usize], gamma: f64) -> f64 {
            let hits = milestones.iter().filter(|&&m| m == last_epoch).count();
            if hits == 0 {
                lr
            } else {
                lr * gamma.powi(hits as i32)
            }
        }

        /// `StepLR.get_lr`.
        pub fn step(lr: f64, last_epoch: usize, step_size: usize, gamma: f64) -> f64 {
            if last_epoch == 0 || !last_epoch.is_multiple_of(step_size) {
                lr
            } else {
                lr * gamma
            }
        }

        /// `CosineAnnealingLR.get_lr` (within the first `T_max` epochs).
        pub fn cosine(lr: f64, last_epoch: usize, t_max: usize, eta_min: f64) -> f64 {
            if last_epoch == 0 {
                return lr;
            }
            let (e, t) = (last_epoch as f64, t_max as f64);
            (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (lr - eta_min)
                + eta_min
        }

        /// `LinearLR.get_lr` with `end_factor=1`.
        pub fn linear(lr: f64, last_epoch: usize, start: f64, total: usize) -> f64 {
            if last_epoch == 0 {
                return lr * start;
            }
            if last_epoch > total {
                return lr;
            }
            lr * (1.0
                + (1.0 - start)
                    / (total as f64 * start + (last_epoch as f64 - 1.0) * (1.0 - start)))
        }
    }

    /// The rates of every step of a run of `epochs` × `per_epoch` steps
    /// under `schedule`, from base rate `base`.
    fn steps_of(schedule: &Schedule, base: f64, epochs: usize, per_epoch: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for epoch in 0..epochs {
            for i in 0..per_epoch {
                let at = LrAt {
                    epoch,
                    epochs,
                    step: epoch * per_epoch + i,
                    steps: epochs * per_epoch,
                    plateau_lr: base,
                };
                out.push(schedule.lr(base, &at));
            }
        }
        out
    }

    fn assert_close_all(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1e-300),
                "step {i}: {g} != {w}"
            );
        }
    }

    #[test]
    fn multistep_matches_pytorchs_multisteplr_over_24_epochs() {
        let milestones = vec![3, 7, 8, 15];
        let s = decay(Decay::MultiStep {
            milestones: milestones.clone(),
            gamma: 0.3,
        });
        let mut lr = 0.5;
        let mut want = Vec::new();
        for e in 0..24 {
            lr = pytorch::multistep(lr, e, &milestones, 0.3);
            want.push(lr);
        }
        let got: Vec<f64> = (0..24).map(|e| s.lr(0.5, &at(e, 24))).collect();
        assert_close_all(&got, &want);
        assert_eq!(got[2], 0.5);
        assert!(close(got[3], 0.15));
        assert!(close(got[23], 0.5 * 0.3f64.powi(4)));
    }

    /// One optimizer driven by `LinearLR` stepped per step and an epoch
    /// scheduler stepped per epoch: the rates PyTorch's param group holds.
    fn chained_reference(
        base: f64,
        epochs: usize,
        per_epoch: usize,
        warmup: Warmup,
        epoch_step: &dyn Fn(f64, usize) -> f64,
    ) -> Vec<f64> {
        let mut lr = pytorch::linear(base, 0, warmup.start_factor, warmup.steps);
        let mut want = Vec::new();
        let mut steps = 0;
        for epoch in 1..=epochs {
            for _ in 0..per_epoch {
                want.push(lr);
                steps += 1;
                lr = pytorch::linear(lr, steps, warmup.start_factor, warmup.steps);
            }
            lr = epoch_step(lr, epoch);
        }
        want
    }

    #[test]
    fn warmup_chained_with_cosine_matches_linearlr_and_cosineannealinglr() {
        let warmup = Warmup {
            steps: 7,
            start_factor: 0.1,
        };
        let (epochs, per_epoch) = (6, 4);
        let s = Schedule {
            warmup: Some(warmup),
            decay: Some(Decay::Cosine { min_lr: 0.0 }),
        };
        let want = chained_reference(0.2, epochs, per_epoch, warmup, &|lr, e| {
            pytorch::cosine(lr, e, epochs, 0.0)
        });
        assert_close_all(&steps_of(&s, 0.2, epochs, per_epoch), &want);
        // The first step uses start_factor × base; step 7 on, the decay alone.
        assert!(close(want[0], 0.02));
        assert!(close(
            want[7],
            0.2 * (1.0 + (std::f64::consts::PI / 6.0).cos()) / 2.0
        ));
    }

    #[test]
    fn warmup_chained_with_step_and_multistep_matches_pytorch() {
        let warmup = Warmup {
            steps: 10,
            start_factor: 1.0 / 3.0,
        };
        let s = Schedule {
            warmup: Some(warmup),
            decay: Some(Decay::Step {
                every: 2,
                gamma: 0.5,
            }),
        };
        let want = chained_reference(1.0, 7, 3, warmup, &|lr, e| pytorch::step(lr, e, 2, 0.5));
        assert_close_all(&steps_of(&s, 1.0, 7, 3), &want);
        let s = Schedule {
            warmup: Some(warmup),
            decay: Some(Decay::MultiStep {
                milestones: vec![1, 4],
                gamma: 0.1,
            }),
        };
        let want = chained_reference(1.0, 6, 4, warmup, &|lr, e| {
            pytorch::multistep(lr, e, &[1, 4], 0.1)
        });
        assert_close_all(&steps_of(&s, 1.0, 6, 4), &want);
        // Warmup alone: LinearLR, then constant.
        let s = Schedule {
            warmup: Some(warmup),
            decay: None,
        };
        let want = chained_reference(1.0, 5, 5, warmup, &|lr, _| lr);
        assert_close_all(&steps_of(&s, 1.0, 5, 5), &want);
        assert!(close(want[24], 1.0));
    }

    /// `OneCycleLR.get_lr`, written as PyTorch writes it: a list of phase
    /// dicts walked in order.
    fn onecycle_reference(c: &OneCycle, step: usize, total: usize) -> f64 {
        let initial = c.max_lr / c.div_factor;
        let min = initial / c.final_div_factor;
        let total = total as f64;
        let mut phases = vec![(c.pct_start * total - 1.0, initial, c.max_lr)];
        if c.three_phase {
            phases.push((2.0 * c.pct_start * total - 2.0, c.max_lr, initial));
            phases.push((total - 1.0, initial, min));
        } else {
            phases.push((total - 1.0, c.max_lr, min));
        }
        let anneal = |start: f64, end: f64, pct: f64| match c.anneal {
            Anneal::Cos => {
                let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        };
        let mut start_step = 0.0;
        let n = phases.len();
        for (i, (end_step, s, e)) in phases.into_iter().enumerate() {
            if step as f64 <= end_step || i == n - 1 {
                return anneal(s, e, (step as f64 - start_step) / (end_step - start_step));
            }
            start_step = end_step;
        }
        unreachable!()
    }

    #[test]
    fn onecycle_matches_pytorch_in_both_anneal_modes_and_three_phases() {
        for anneal in [Anneal::Cos, Anneal::Linear] {
            for three_phase in [false, true] {
                let c = OneCycle {
                    max_lr: 0.4,
                    pct_start: 0.3,
                    div_factor: 25.0,
                    final_div_factor: 1e4,
                    anneal,
                    three_phase,
                };
                let s = decay(Decay::OneCycle(c));
                let (epochs, per_epoch) = (5, 6);
                let got = steps_of(&s, 123.0, epochs, per_epoch);
                let want: Vec<f64> = (0..30).map(|t| onecycle_reference(&c, t, 30)).collect();
                assert_close_all(&got, &want);
                assert!(close(got[0], 0.4 / 25.0), "starts at max_lr / div_factor");
                // The peak is at step pct_start·total − 1 = 8.
                assert!(close(got[8], 0.4));
                assert!(close(got[29], 0.4 / 25.0 / 1e4), "ends at the minimum");
                if three_phase {
                    // Back at the initial rate at step 2·pct_start·total − 2 = 16.
                    assert!(close(got[16], 0.4 / 25.0));
                }
            }
        }
        // Linear annealing: halfway up the first phase is the midpoint.
        let c = OneCycle {
            max_lr: 1.0,
            pct_start: 0.5,
            div_factor: 10.0,
            final_div_factor: 100.0,
            anneal: Anneal::Linear,
            three_phase: false,
        };
        // Phase 1 ends at step 0.5·21 − 1 = 9.5, so step 4.75 would be the
        // midpoint; step 5 is 5/9.5 of the way.
        assert!(close(c.lr(5, 21), 0.1 + 0.9 * 5.0 / 9.5));
    }

    #[test]
    fn monitors_minimize_losses_and_maximize_the_rest() {
        let m = |validation, metric: &str| Monitor {
            validation,
            metric: metric.into(),
        };
        assert!(!m(true, "loss").maximize());
        assert!(m(true, "accuracy").maximize());
        assert!(!m(false, "loss").maximize());
        assert_eq!(m(true, "loss").to_string(), "val_loss");
        assert_eq!(m(false, "accuracy").to_string(), "accuracy");
    }
}
