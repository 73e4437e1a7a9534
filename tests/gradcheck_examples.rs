//! Finite-difference gradient checks of every example model as compiled
//! from its `.nn` file: the gradient graph autodiff builds for the whole
//! objective must agree with central differences of the loss.
//!
//! Evaluated in exact f64 (`EvalOptions::EXACT`) on a random batch of 3.
//! Tolerance: |analytic - numeric| <= 1e-6 + 1e-5 * |numeric|, with h = 1e-6
//! (central differences err by O(h^2) ~ 1e-12 relative here; a wrong rule is
//! off by O(1)).

use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{DType, Dim, Tensor};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn example_gradients_match_finite_differences() {
    let batch = 3;
    // cifar_cnn has the same ops as lenet at a size the f64 interpreter
    // makes slow in a debug build.
    for name in ["xor", "digits_mlp", "mnist_mlp", "lenet", "fashion_cnn"] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.nn"));
        let src = nnc_dsl::SourceFile::new(name, std::fs::read_to_string(path).unwrap());
        let module = nnc::driver::compile_source(&src, None).unwrap();
        let objective = &module.train.as_ref().unwrap().objective;
        let graph = nnc_passes::differentiate(objective, nnc_ir::LOSS).unwrap();
        nnc_ir::verify(&graph).unwrap();

        let mut rng = Rng(17);
        let mut env = Env::new();
        nnc_ir::init::init_leaves(&graph, 3, &mut env).unwrap();
        // Random biases, so relu kinks are not all at zero-initialized values.
        // In name order: `Env` is a hash map, whose order changes from run
        // to run, and with it which value a kink lands next to.
        let mut names: Vec<String> = env.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        for n in &names {
            for v in &mut env.get_mut(n).unwrap().data {
                *v += 0.1 * (rng.next() - 0.5);
            }
        }
        for (node, input) in graph.inputs() {
            let ty = graph.ty(node);
            let shape: Vec<usize> = ty
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Const(n) => *n,
                    Dim::Sym(_) => batch,
                })
                .collect();
            let numel: usize = shape.iter().product();
            let data: Vec<f64> = match ty.dtype {
                DType::I32 => (0..numel)
                    .map(|_| (rng.next() * 10.0).floor().min(9.0))
                    .collect(),
                _ => (0..numel).map(|_| rng.next()).collect(),
            };
            env.insert(input, Tensor::from_vec(ty.dtype, &shape, data).unwrap());
        }
        let values = eval(&graph, &env, EvalOptions::EXACT).unwrap();
        let loss = |env: &Env| {
            eval(&graph, env, EvalOptions::EXACT)
                .unwrap()
                .output("loss")
                .unwrap()
                .data[0]
        };

        for (_, param) in graph.params() {
            let grad = values.output(&format!("grad.{param}")).unwrap().clone();
            let n = grad.data.len();
            // Every element of small params; 12 random elements of large ones.
            let picks: Vec<usize> = if n <= 64 {
                (0..n).collect()
            } else {
                (0..12).map(|_| (rng.next() * n as f64) as usize).collect()
            };
            for i in picks {
                let h = 1e-6;
                let mut plus = env.get(param).unwrap().clone();
                plus.data[i] += h;
                let mut minus = env.get(param).unwrap().clone();
                minus.data[i] -= h;
                let mut e = Env::new();
                for (k, v) in env.iter() {
                    e.insert(k, v.clone());
                }
                e.insert(param, plus);
                let f_plus = loss(&e);
                e.insert(param, minus);
                let f_minus = loss(&e);
                let numeric = (f_plus - f_minus) / (2.0 * h);
                let analytic = grad.data[i];
                assert!(
                    (analytic - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "{name}: d loss / d {param}[{i}] = {analytic} by autodiff, {numeric} by finite differences"
                );
            }
        }
    }
}
