//! Post-training quantization of a trained model (`nnc quantize`):
//! calibrate the activations its dense and convolution products read over batches of its
//! training data, through either executor; quantize the weights per
//! output column; write a checkpoint whose weights are `i8` and whose
//! metadata records every quantized product ([`QuantizedProduct`]); and,
//! when such a checkpoint is loaded, rewrite a graph's products to match
//! ([`apply`]).
//!
//! The arithmetic (parameters, observers, the rewrite) is
//! `nnc_passes::quantize`'s; this module runs it against data and files.

use crate::checkpoint::{self, Checkpoint, Scope};
use crate::executor::{Backend, Batch, Programs};
use crate::RuntimeError;
use nnc_ir::{DType, Graph, Module, StructuralChange, Tensor};
use nnc_passes::quantize::observe::{AbsHistogram, Percentile};
use nnc_passes::quantize::qat;
use nnc_passes::quantize::rewrite::{quantize_site, quantize_weight, sites, Site};
use nnc_passes::quantize::{QParams, Scheme};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How calibration chooses an activation's range from what it saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest values (PyTorch's `MinMaxObserver`).
    MinMax,
    /// Magnitudes clipped at this percentile of `|x|` (e.g. 99.99).
    Percentile(f64),
    /// The clipping threshold of least KL divergence (TensorRT's
    /// entropy calibration).
    Entropy,
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile({p})"),
            Method::Entropy => "entropy".into(),
        }
    }
}

/// One product computed in integers, as a quantized checkpoint records
/// it: its weight's name, its activations' `u8` parameters and each
/// output channel's `i8` scale (a dense weight's columns, a
/// convolution's filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedProduct {
    pub weight: String,
    pub scale: f64,
    pub zero_point: i32,
    pub channels: Vec<f64>,
}

/// What `nnc quantize` did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub products: Vec<QuantizedProduct>,
    /// Where the activations' ranges came from.
    pub ranges: Ranges,
    /// The weights' bytes (params only, no optimizer state or metadata)
    /// in `f32` and quantized: what the model needs to run.
    pub f32_param_bytes: u64,
    pub quantized_param_bytes: u64,
    /// The size of the file written.
    pub file_bytes: u64,
}

/// The graph calibration runs: `forward` with each product's activations
/// as an extra output `calibrate.<k>`, in [`sites`] order. The caller
/// optimizes it (outputs survive optimization by name).
pub fn calibration_graph(forward: &Graph) -> (Graph, Vec<Site>) {
    let mut g = forward.clone();
    let found = sites(&g);
    for (k, site) in found.iter().enumerate() {
        g.set_output(format!("calibrate.{k}"), site.activation);
    }
    (g, found)
}

/// What `nnc quantize` makes of a float checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The int8 model (from calibrated ranges, or from the ranges a
    /// quantization-aware training learned when the checkpoint has them).
    Int8,
    /// A float checkpoint prepared for quantization-aware training: the
    /// calibrated ranges as the `{weight}.act_min` / `act_max` states and
    /// the `FakeQuantize` structural change, for `nnc run --weights` to
    /// fine-tune.
    QatPrepared,
}

/// Where the activations' ranges came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// Calibration on this many training samples.
    Calibrated { samples: usize },
    /// The range states a quantization-aware training left.
    Learned,
}

/// Quantizes `sites` of `module` (whose weights are `weights`): their
/// activations' ranges are the ones quantization-aware training learned
/// when `weights` has them, else calibrated on up to `batches` batches of
/// the training samples with `calibration` (from [`calibration_graph`]);
/// then writes the int8 checkpoint, or the QAT-prepared one (`target`), to
/// `output` (atomically).
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    module: &Module,
    calibration: Programs,
    sites: &[Site],
    data_base: &Path,
    weights: &Path,
    output: &Path,
    backend: Backend,
    batches: usize,
    method: Method,
    target: Target,
) -> Result<QuantizeReport, RuntimeError> {
    if sites.is_empty() {
        return Err(RuntimeError::Setup(format!(
            "model `{}` has no dense or convolution product to quantize",
            module.name
        )));
    }
    let ckpt = checkpoint::load(weights)?;
    if ckpt.quantization.is_some() {
        return Err(RuntimeError::Setup(format!(
            "checkpoint `{}` is already quantized",
            weights.display()
        )));
    }
    let learned: Option<Vec<(f64, f64)>> = sites
        .iter()
        .map(|site| {
            let (lo, hi) = qat::range_states(&site.weight);
            Some((ckpt.tensor(&lo)?.item()?, ckpt.tensor(&hi)?.item()?))
        })
        .collect();
    let (ranges, source) = match learned {
        Some(r) if target == Target::Int8 => (r, Ranges::Learned),
        _ => {
            let (r, samples) = calibrate(
                module,
                calibration,
                sites,
                data_base,
                &ckpt,
                backend,
                batches,
                method,
            )?;
            (r, Ranges::Calibrated { samples })
        }
    };
    // Params and model state, without the ranges training kept: the
    // integer model holds them as its products' constants.
    let range_names: Vec<String> = sites
        .iter()
        .flat_map(|s| {
            let (lo, hi) = qat::range_states(&s.weight);
            [lo, hi]
        })
        .collect();
    let mut tensors: Vec<(String, Tensor)> = ckpt
        .tensors
        .iter()
        .filter(|(n, _)| ckpt.params.contains(n) && !range_names.contains(n))
        .cloned()
        .collect();
    let mut products = Vec::with_capacity(sites.len());
    let mut structure = module.changes.clone();
    let quantization = match target {
        Target::QatPrepared => {
            for (site, &(lo, hi)) in sites.iter().zip(&ranges) {
                let (lo_name, hi_name) = qat::range_states(&site.weight);
                tensors.push((lo_name, Tensor::scalar(DType::F32, lo)));
                tensors.push((hi_name, Tensor::scalar(DType::F32, hi)));
                let activation = QParams::from_range(lo, hi, Scheme::AffineU8);
                products.push(QuantizedProduct {
                    weight: site.weight.clone(),
                    scale: activation.scale,
                    zero_point: activation.zero_point,
                    channels: Vec::new(),
                });
            }
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            structure.push(StructuralChange::FakeQuantize);
            None
        }
        Target::Int8 => {
            for (site, &(lo, hi)) in sites.iter().zip(&ranges) {
                let activation = QParams::from_range(lo, hi, Scheme::AffineU8);
                let slot = tensors
                    .iter_mut()
                    .find(|(n, _)| *n == site.weight)
                    .ok_or_else(|| {
                        RuntimeError::Setup(format!(
                            "checkpoint `{}` holds no weight `{}`",
                            weights.display(),
                            site.weight
                        ))
                    })?;
                let (q, channels) = quantize_weight(&slot.1, site.layout).map_err(|e| {
                    RuntimeError::Setup(format!("`{}`: {}", site.weight, e.message))
                })?;
                slot.1 = q;
                products.push(QuantizedProduct {
                    weight: site.weight.clone(),
                    scale: activation.scale,
                    zero_point: activation.zero_point,
                    channels: channels.iter().map(|c| c.scale).collect(),
                });
            }
            Some(
                serde_json::to_string(&products)
                    .map_err(|e| RuntimeError::Setup(format!("internal error: {e}")))?,
            )
        }
    };
    let meta = checkpoint::Meta {
        epochs_done: ckpt.epochs_done,
        params: tensors.iter().map(|(n, _)| n.clone()).collect(),
        loop_state: None,
        quantization,
        structure,
    };
    checkpoint::save_with_data(
        output,
        &module.name,
        &tensors,
        &meta,
        &ckpt.vocabularies,
        &ckpt.fitted,
    )?;
    let bytes = |t: &Tensor| {
        let width = match t.dtype {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F64 => 8,
            DType::F32 | DType::I32 => 4,
        };
        (t.data.len() * width) as u64
    };
    let f32_param_bytes = ckpt
        .tensors
        .iter()
        .filter(|(n, _)| ckpt.params.contains(n) && !range_names.contains(n))
        .map(|(_, t)| bytes(t))
        .sum();
    Ok(QuantizeReport {
        products,
        ranges: source,
        f32_param_bytes,
        quantized_param_bytes: tensors
            .iter()
            .filter(|(n, _)| !range_names.contains(n))
            .map(|(_, t)| bytes(t))
            .sum(),
        file_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}

/// Each site's activation range on up to `batches` training batches
/// (clipped as `method` says), and the samples seen.
#[allow(clippy::too_many_arguments)]
fn calibrate(
    module: &Module,
    calibration: Programs,
    sites: &[Site],
    data_base: &Path,
    ckpt: &Checkpoint,
    backend: Backend,
    batches: usize,
    method: Method,
) -> Result<(Vec<(f64, f64)>, usize), RuntimeError> {
    if batches == 0 {
        return Err(RuntimeError::Setup(
            "quantizing needs calibration data: at least one batch".into(),
        ));
    }
    let (spec, data_spec) = match (&module.train, &module.data) {
        (Some(t), Some(d)) => (t, d),
        _ => {
            return Err(RuntimeError::Setup(format!(
                "model `{}` has no train and data blocks: calibration reads its training data",
                module.name
            )))
        }
    };
    let holdout = crate::loader::Holdout::Split {
        validate: spec.validate,
        seed: spec.seed,
    };
    let mut data = crate::loader::load_training(data_spec, data_base, holdout)?;
    data.use_fitted(&ckpt.fitted)?;
    let names = crate::train::input_names(&calibration.forward);
    let params = checkpoint::param_names(&calibration);
    let mut exec = backend.executor(calibration, spec.seed)?;
    ckpt.apply(exec.as_mut(), &module.name, &params, Scope::Params)?;

    // The training samples, in a seeded order: the first batches of an
    // epoch, as training would draw them.
    let parts =
        crate::train::partition(data.train.len(), data.test_split, spec.validate, spec.seed)?;
    let mut order = Vec::new();
    crate::train::epoch_order(&parts.train, spec.seed, 1, true, &mut order);
    let mut observers = vec![AbsHistogram::default(); sites.len()];
    let mut batch = Batch::default();
    let mut samples = 0;
    for chunk in order.chunks(spec.batch.max(1)).take(batches) {
        data.fill_batch(&data.train, &names, chunk, &mut batch)?;
        let outputs = exec.predict(&batch)?;
        for (k, observer) in observers.iter_mut().enumerate() {
            let name = format!("calibrate.{k}");
            let t = outputs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    RuntimeError::Setup(format!("internal error: no output `{name}`"))
                })?;
            let values: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
            if !observer.observe(&values) {
                return Err(RuntimeError::Setup(format!(
                    "the activations of `{}` are infinite on the calibration data",
                    sites[k].weight
                )));
            }
        }
        samples += chunk.len();
    }
    let ranges = sites
        .iter()
        .zip(&observers)
        .map(|(site, observer)| {
            let Some((lo, hi)) = observer.min_max.range() else {
                return Err(RuntimeError::Setup(format!(
                    "the activations of `{}` were never observed (NaN everywhere)",
                    site.weight
                )));
            };
            let clip = match method {
                Method::MinMax => f64::INFINITY,
                Method::Percentile(p) => observer.percentile(Percentile(p)),
                Method::Entropy => observer.entropy_threshold(),
            };
            Ok((lo.max(-clip), hi.min(clip)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ranges, samples))
}

/// The products a quantized checkpoint records; `None` for a float one.
pub fn recorded(ckpt: &Checkpoint) -> Result<Option<Vec<QuantizedProduct>>, RuntimeError> {
    let Some(json) = &ckpt.quantization else {
        return Ok(None);
    };
    serde_json::from_str(json).map(Some).map_err(|e| {
        RuntimeError::Setup(format!(
            "checkpoint `{}`: metadata `{}` is not a list of quantized products: {e}",
            ckpt.path.display(),
            checkpoint::keys::QUANTIZATION
        ))
    })
}

/// Rewrites `graph`'s products as `products` (from the checkpoint `ckpt`,
/// whose `i8` weights give the zero-point corrections) record them.
pub fn apply(
    graph: &mut Graph,
    products: &[QuantizedProduct],
    ckpt: &Checkpoint,
) -> Result<(), RuntimeError> {
    for p in products {
        let site = sites(graph)
            .into_iter()
            .find(|s| s.weight == p.weight)
            .ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "checkpoint `{}` quantizes the product of `{}`, which graph `{}` does not compute",
                    ckpt.path.display(),
                    p.weight,
                    graph.name
                ))
            })?;
        let weight = ckpt
            .tensors
            .iter()
            .find(|(n, t)| *n == p.weight && t.dtype == DType::I8)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "checkpoint `{}` holds no i8 weight `{}`",
                    ckpt.path.display(),
                    p.weight
                ))
            })?;
        let activation = QParams {
            scale: p.scale,
            zero_point: p.zero_point,
            scheme: Scheme::AffineU8,
        };
        let channels: Vec<QParams> = p
            .channels
            .iter()
            .map(|&scale| QParams {
                scale,
                zero_point: 0,
                scheme: Scheme::SymmetricI8,
            })
            .collect();
        quantize_site(graph, &site, activation, weight, &channels)
            .map_err(|e| RuntimeError::Setup(format!("`{}`: {}", p.weight, e.message)))?;
    }
    Ok(())
}

/// Rewrites every product of `graph` as an integer one with made-up
/// parameters (activation scale 1/255, zero point 0; weight scales 1/127;
/// zero weights for the corrections), for `nnc bench --int8`: what int8
/// inference costs does not depend on the values, only on the graph, as
/// the synthetic batches of a benchmark do not. Returns how many products.
pub fn synthetic(graph: &mut Graph) -> Result<usize, RuntimeError> {
    let found = sites(graph);
    for site in &found {
        let w = graph.find_leaf(&site.weight).ok_or_else(|| {
            RuntimeError::Setup(format!("internal error: no param `{}`", site.weight))
        })?;
        let shape: Vec<usize> = graph
            .ty(w)
            .shape
            .iter()
            .map(|d| d.as_const().unwrap_or(1))
            .collect();
        let count = match site.layout {
            nnc_passes::quantize::rewrite::Layout::Dense => shape[1],
            nnc_passes::quantize::rewrite::Layout::Conv => shape[0],
        };
        let weight = Tensor::zeros(DType::I8, &shape);
        let activation = QParams {
            scale: 1.0 / 255.0,
            zero_point: 0,
            scheme: Scheme::AffineU8,
        };
        let channel = QParams {
            scale: 1.0 / 127.0,
            zero_point: 0,
            scheme: Scheme::SymmetricI8,
        };
        quantize_site(graph, site, activation, &weight, &vec![channel; count])
            .map_err(|e| RuntimeError::Setup(format!("`{}`: {}", site.weight, e.message)))?;
    }
    Ok(found.len())
}
