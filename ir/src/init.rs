//! Deterministic initialization of params and state (`Init`).
//!
//! # The generator (part of the reproducibility contract)
//!
//! A tensor's values depend only on `(seed, tensor name, element index)`,
//! never on how many or in which order params are created:
//!
//! 1. `key = FNV-1a-64(seed as 8 little-endian bytes ++ UTF-8 bytes of name)`
//!    (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
//! 2. The `i`-th raw draw (`i = 0, 1, ...`) is SplitMix64's output for the
//!    state `key + (i + 1) * 0x9e3779b97f4a7c15` (wrapping), i.e. the `i`-th
//!    output of a SplitMix64 generator seeded with `key`:
//!    `z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9; z = (z ^ (z >> 27)) * 0x94d049bb133111eb; z ^ (z >> 31)`.
//! 3. `uniform(i) = (draw(i) >> 11) * 2^-53`, in `[0, 1)`.
//! 4. `normal(i)` is Box–Muller from draws `2i` and `2i + 1`:
//!    `sqrt(-2 ln(1 - uniform(2i))) * cos(2π uniform(2i + 1))`.
//!
//! Element `i` (row-major) of a uniform init is `low + (high - low) * uniform(i)`;
//! of a normal init `mean + std * normal(i)`.
//!
//! # Fans and PyTorch's formulas
//!
//! [`fans`]: rank 2 `[in, out]` gives `fan_in = in`, `fan_out = out`; rank >= 3
//! (convolution `[out, in, k...]`) gives `fan_in = in * prod(k)`,
//! `fan_out = out * prod(k)`; rank 1 gives `fan_in = fan_out = shape[0]`;
//! rank 0 gives 1 and 1.
//!
//! * `xavier_uniform`: `U(-b, b)`, `b = sqrt(6 / (fan_in + fan_out))`
//! * `xavier_normal`: `N(0, sqrt(2 / (fan_in + fan_out)))`
//! * `kaiming_uniform`: `U(-b, b)`, `b = sqrt(6 / fan_in)` (gain `sqrt(2)`, relu)
//! * `kaiming_normal`: `N(0, sqrt(2 / fan_in))`
//! * `uniform(low, high)`, `normal(mean, std)`, `zeros`, `ones`, `constant(v)`
//!
//! The result is rounded to the dtype ([`Tensor::round_to_dtype`]).

use crate::graph::Graph;
use crate::interp::{Env, EvalError};
use crate::op::{Init, Op};
use crate::tensor::{checked_numel, Tensor};
use crate::types::DType;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The counter-based generator of one tensor: draws are a pure function of
/// `(seed, name, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRng {
    pub key: u64,
}

impl CounterRng {
    pub fn new(seed: u64, name: &str) -> CounterRng {
        let mut h = FNV_OFFSET;
        for &byte in seed.to_le_bytes().iter().chain(name.as_bytes()) {
            h ^= byte as u64;
            h = h.wrapping_mul(FNV_PRIME);
        }
        CounterRng { key: h }
    }

    /// The `index`-th raw 64-bit draw.
    pub fn draw(&self, index: u64) -> u64 {
        let mut z = self
            .key
            .wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` from the top 53 bits of draw `index`.
    pub fn uniform(&self, index: u64) -> f64 {
        (self.draw(index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal for element `index`, by Box–Muller from the uniforms
    /// `2 * index` and `2 * index + 1`.
    pub fn normal(&self, index: u64) -> f64 {
        let u1 = self.uniform(index.wrapping_mul(2));
        let u2 = self.uniform(index.wrapping_mul(2).wrapping_add(1));
        (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `(fan_in, fan_out)` of a param shape (see the module doc).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [i, o] => (*i, *o),
        [out, inp, k @ ..] => {
            let receptive: usize = k.iter().product();
            (inp * receptive, out * receptive)
        }
    }
}

/// The first value of a param or state tensor named `name`.
pub fn initialize(init: &Init, shape: &[usize], dtype: DType, seed: u64, name: &str) -> Tensor {
    let n = checked_numel(shape).unwrap_or(0);
    let rng = CounterRng::new(seed, name);
    let (fan_in, fan_out) = fans(shape);
    let (fan_in, fan_out) = (fan_in as f64, fan_out as f64);
    let uniform = |low: f64, high: f64| -> Vec<f64> {
        (0..n as u64)
            .map(|i| low + (high - low) * rng.uniform(i))
            .collect()
    };
    let normal = |mean: f64, std: f64| -> Vec<f64> {
        (0..n as u64).map(|i| mean + std * rng.normal(i)).collect()
    };
    let data = match *init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(v) => vec![v; n],
        Init::Uniform { low, high } => uniform(low, high),
        Init::Normal { mean, std } => normal(mean, std),
        Init::XavierUniform => {
            let b = (6.0 / (fan_in + fan_out)).sqrt();
            uniform(-b, b)
        }
        Init::XavierNormal => normal(0.0, (2.0 / (fan_in + fan_out)).sqrt()),
        Init::KaimingUniform => {
            let b = (6.0 / fan_in).sqrt();
            uniform(-b, b)
        }
        Init::KaimingNormal => normal(0.0, (2.0 / fan_in).sqrt()),
    };
    Tensor {
        dtype,
        shape: shape.to_vec(),
        data,
    }
    .rounded()
}

/// Initializes every `Param` and `State` of `graph` that `env` does not
/// already hold, returning how many were added. Their shapes must be
/// constant.
pub fn init_leaves(graph: &Graph, seed: u64, env: &mut Env) -> Result<usize, EvalError> {
    let mut added = 0;
    for id in graph.topo_order() {
        let node = graph.node(id);
        let (kind, name, init) = match &node.op {
            Op::Param { name, init } => ("param", name, init),
            Op::State { name, init } => ("state", name, init),
            _ => continue,
        };
        if env.contains(name) {
            continue;
        }
        let Some(shape) = node
            .ty
            .shape
            .iter()
            .map(|d| d.as_const())
            .collect::<Option<Vec<usize>>>()
        else {
            return Err(EvalError::Invalid {
                node: format!("{kind} `{name}`"),
                message: format!("cannot initialize {}: its shape is not constant", node.ty),
            });
        };
        env.insert(
            name.clone(),
            initialize(init, &shape, node.ty.dtype, seed, name),
        );
        added += 1;
    }
    Ok(added)
}
