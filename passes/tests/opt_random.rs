//! Property test: on randomly generated small graphs, and on the training
//! steps built from them, `-O1` and `-O2` compute what `-O0` computes.
//!
//! The generator is a tiny deterministic one (SplitMix64, fixed seeds), so
//! a failure names its seed and reproduces. It draws from a small set of
//! mutually broadcastable shapes and mixes in the constants 0 and 1 and
//! ReLU-like `max(x, 0)` / `x > 0` pairs so the identities and the
//! training rules have something to find.

use nnc_ir::{
    BinaryOp, DType, Dim, EvalOptions, Graph, Init, NodeId, Optimizer, ReduceOp, Tensor,
    TensorType, UnaryOp,
};
use nnc_passes::opt::{optimize, OptLevel};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Shapes that all broadcast against each other (and `B`, symbolic).
fn shapes() -> Vec<Vec<Dim>> {
    let c = Dim::Const;
    let b = || Dim::sym("B");
    vec![
        vec![],
        vec![c(3)],
        vec![c(1), c(3)],
        vec![b(), c(3)],
        vec![b(), c(1)],
        vec![c(2), c(3)],
    ]
}

fn f32t(shape: Vec<Dim>) -> TensorType {
    TensorType::new(DType::F32, shape)
}

/// A random graph: leaves, then `ops` random nodes; the last few float
/// nodes are outputs. Params `p0: f32[3,3]` and `p1: f32[3]` make it
/// trainable.
fn random_graph(seed: u64, ops: usize) -> Graph {
    let mut rng = Rng(seed);
    let mut g = Graph::new("random");
    let c = Dim::Const;
    let mut pool: Vec<NodeId> = vec![
        g.input("x", f32t(vec![Dim::sym("B"), c(3)])),
        g.input("y", f32t(vec![c(1), c(3)])),
        g.param("p0", f32t(vec![c(3), c(3)]), Init::XavierUniform),
        g.param(
            "p1",
            f32t(vec![c(3)]),
            Init::Uniform {
                low: -1.0,
                high: 1.0,
            },
        ),
    ];
    let zero = g.scalar(0.0, DType::F32);
    let shapes = shapes();
    let mut made = 0;
    let mut attempts = 0;
    while made < ops && attempts < ops * 20 {
        attempts += 1;
        let a = rng.pick(&pool);
        let b = rng.pick(&pool);
        let node = match rng.below(13) {
            0 => {
                let u = rng.pick(&[
                    UnaryOp::Neg,
                    UnaryOp::Log,
                    UnaryOp::Sqrt,
                    UnaryOp::Tanh,
                    UnaryOp::Sigmoid,
                    UnaryOp::Abs,
                ]);
                g.unary(u, a)
            }
            // exp of a bounded value: no overflow to infinities, which
            // reassociating rules may turn into NaNs differently.
            1 => g
                .unary(UnaryOp::Tanh, a)
                .and_then(|t| g.unary(UnaryOp::Exp, t)),
            2 | 3 => {
                let op = rng.pick(&[
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Div,
                    BinaryOp::Max,
                    BinaryOp::Min,
                ]);
                g.binary(op, a, b)
            }
            4 => {
                let v = rng.pick(&[0.0, 1.0, -1.0, 0.5, 2.0]);
                let shape = rng.pick(&(0..shapes.len()).collect::<Vec<_>>());
                Ok(g.splat(v, f32t(shapes[shape].clone())))
            }
            5 => {
                // ReLU and its mask.
                let r = g.binary(BinaryOp::Max, a, zero);
                let m = g.binary(BinaryOp::Gt, a, zero);
                match (r, m) {
                    (Ok(r), Ok(m)) => g.select(m, b, zero).and_then(|s| g.add_(r, s)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            6 => {
                let rank = g.ty(a).rank();
                if rank == 0 {
                    continue;
                }
                let axes: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
                let axes = if axes.is_empty() {
                    vec![rank - 1]
                } else {
                    axes
                };
                let op = rng.pick(&[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max]);
                g.reduce(op, a, axes, rng.below(2) == 0)
            }
            7 => {
                // A reshape to another arrangement of the same elements.
                let shape = g.ty(a).shape.clone();
                let numel: Vec<&Dim> = shape.iter().filter(|d| !d.is_one()).collect();
                let mut new: Vec<Dim> = numel.into_iter().cloned().collect();
                if rng.below(2) == 0 {
                    new.insert(0, c(1));
                } else {
                    new.push(c(1));
                }
                g.reshape(a, new)
            }
            8 => {
                let rank = g.ty(a).rank();
                if rank < 2 {
                    continue;
                }
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(0, rank - 1);
                g.transpose(a, perm)
            }
            9 => {
                let target = rng.pick(&(0..shapes.len()).collect::<Vec<_>>());
                let to = shapes[target].clone();
                if !nnc_ir::infer::broadcasts_to(&g.ty(a).shape, &to) {
                    continue;
                }
                g.broadcast(a, to)
            }
            10 => {
                // Something with rank 2 times a param: matmul.
                if g.ty(a).rank() != 2 || g.ty(a).shape[1] != c(3) {
                    continue;
                }
                g.matmul(a, pool[2])
            }
            11 => {
                let cmp = rng.pick(&[BinaryOp::Gt, BinaryOp::Lt, BinaryOp::Eq]);
                let other = rng.pick(&pool);
                g.binary(cmp, a, b).and_then(|m| g.select(m, other, a))
            }
            _ => {
                // Sums of products with a shared factor (for `factor`).
                let other = rng.pick(&pool);
                let x = g.mul(a, other);
                let y = g.mul(b, other);
                match (x, y) {
                    (Ok(x), Ok(y)) => g.add_(x, y),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
        };
        if let Ok(n) = node {
            if g.ty(n).dtype == DType::F32 {
                pool.push(n);
                made += 1;
            }
        }
    }
    let outputs: Vec<NodeId> = pool.iter().rev().take(3).copied().collect();
    for (i, n) in outputs.into_iter().enumerate() {
        g.set_output(format!("out{i}"), n);
    }
    g
}

/// The random graph as an objective: `loss` is the sum of its last output.
fn objective(seed: u64) -> Graph {
    let mut g = random_graph(seed, 10);
    let last = g.output("out0").unwrap();
    let rank = g.ty(last).rank();
    let loss = g
        .reduce(ReduceOp::Sum, last, (0..rank).collect(), false)
        .unwrap();
    g.set_output("loss", loss);
    g
}

fn environment(g: &Graph, seed: u64) -> nnc_ir::Env {
    let mut env = nnc_ir::Env::new();
    nnc_ir::init::init_leaves(g, seed, &mut env).unwrap();
    let mut rng = Rng(seed ^ 0x5eed);
    for (id, name) in g.inputs() {
        let shape: Vec<usize> = g
            .ty(id)
            .shape
            .iter()
            .map(|d| d.as_const().unwrap_or(2))
            .collect();
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                if name == nnc_ir::LEARNING_RATE {
                    0.1
                } else {
                    rng.unit() * 4.0 - 2.0
                }
            })
            .collect();
        env.insert(name, Tensor::from_vec(DType::F32, &shape, data).unwrap());
    }
    env
}

fn agree(what: &str, a: f64, b: f64) -> bool {
    if !a.is_finite() || !b.is_finite() {
        // Reassociation may turn one non-finite value into another.
        return !a.is_finite() && !b.is_finite();
    }
    (a - b).abs() <= 1e-3 + 1e-4 * a.abs().max(b.abs()) || {
        eprintln!("{what}: {a} vs {b}");
        false
    }
}

/// Checks that `after` computes what `before` does; false when `before`
/// itself cannot run (a pruned step whose constant has a symbolic dim that
/// no remaining input binds), so there is nothing to compare.
fn compare(seed: u64, before: &Graph, after: &Graph) -> bool {
    nnc_ir::verify(after).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{after}"));
    let env = environment(before, seed);
    let run = |g: &Graph| {
        let values = nnc_ir::eval(g, &env, EvalOptions::F32)?;
        let mut out: Vec<(String, Tensor)> = values
            .outputs()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        out.extend(nnc_ir::run_updates(g, &values));
        Ok::<_, nnc_ir::EvalError>(out)
    };
    let Ok(a) = run(before) else {
        return false;
    };
    let b = run(after).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{after}"));
    assert_eq!(a.len(), b.len(), "seed {seed}");
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb, "seed {seed}");
        assert_eq!(ta.shape, tb.shape, "seed {seed}: `{na}`");
        for (&x, &y) in ta.data.iter().zip(&tb.data) {
            assert!(
                agree(na, x, y),
                "seed {seed}: `{na}` is {x} at -O0 but {y} optimized\n{before}\n{after}"
            );
        }
    }
    true
}

#[test]
fn optimized_random_graphs_compute_the_same_values() {
    let mut compared = 0;
    for seed in 0..150 {
        let g = random_graph(seed, 14);
        nnc_ir::verify(&g).unwrap();
        for level in [OptLevel::O1, OptLevel::O2] {
            let (after, _) = optimize(&g, level).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            compared += compare(seed, &g, &after) as usize;
        }
    }
    assert!(compared > 250, "only {compared} graphs compared");
}

#[test]
fn optimized_random_training_steps_compute_the_same_updates() {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut built = 0;
    for seed in 1000..1100 {
        let objective = objective(seed);
        // Graphs whose loss does not reach a param still train (zero
        // gradients); the builder only refuses graphs without params.
        let Ok(step) = nnc_passes::build_train_step(&objective, &sgd) else {
            continue;
        };
        let (after, _) =
            optimize(&step, OptLevel::O2).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        built += compare(seed, &step, &after) as usize;
    }
    assert!(built > 50, "only {built} training steps compared");
}
