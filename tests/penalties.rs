//! L1/L2 penalties written in the loss with `params()` and `weights()`:
//! the gradient the training step uses (autodiff of the objective) against
//! central finite differences of the loss, in exact `f64`, and against the
//! penalty's closed form `2·l2·w + l1·sign(p)`.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{DType, Graph, Tensor, GRADIENT_PREFIX};
use nnc_passes::gradient_graph;

const L1: f64 = 0.03;
const L2: f64 = 0.2;

fn objective(loss: &str) -> Graph {
    let source = format!(
        "model M {{\n    input x: f32[B, 3]\n    y = x -> dense(4) -> tanh -> dense(2)\n    output y\n}}\n\
         data D {{\n    x = csv(\"d.csv\", columns: [0, 3])\n    t = csv(\"d.csv\", columns: [3, 5])\n}}\n\
         train M on D {{\n    loss = {loss}\n    optimizer = sgd(lr: 0.1)\n}}\n"
    );
    let module =
        compile(&SourceFile::new("t.nn", source), None).unwrap_or_else(|e| panic!("{e:?}"));
    module.train.unwrap().objective
}

/// Data and params, every param element away from 0 (the kink of `abs`).
fn env(graph: &Graph) -> Env {
    let mut env = Env::new()
        .with(
            "x",
            Tensor::from_vec(
                DType::F32,
                &[3, 3],
                vec![0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 0.1, 2.0],
            )
            .unwrap(),
        )
        .with(
            "t",
            Tensor::from_vec(DType::F32, &[3, 2], vec![1.0, -1.0, 0.5, 0.0, -0.5, 2.0]).unwrap(),
        );
    for (k, (node, name)) in graph.params().into_iter().enumerate() {
        let shape: Vec<usize> = graph
            .ty(node)
            .shape
            .iter()
            .map(|d| match d {
                nnc_ir::Dim::Const(n) => *n,
                other => panic!("{other:?}"),
            })
            .collect();
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|i| {
                let v = 0.1 + 0.37 * ((i * 7 + k * 3) % 11) as f64 / 11.0;
                if (i + k) % 3 == 0 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        env.insert(name, Tensor::from_vec(DType::F32, &shape, values).unwrap());
    }
    env
}

fn loss_at(graph: &Graph, env: &Env) -> f64 {
    eval(graph, env, EvalOptions::EXACT)
        .unwrap()
        .output("loss")
        .unwrap()
        .item()
        .unwrap()
}

/// Each param's gradient from the gradient graph (what the step uses).
fn analytic(objective: &Graph, env: &Env) -> Vec<(String, Vec<f64>)> {
    let graph = gradient_graph(objective).unwrap();
    let values = eval(&graph, env, EvalOptions::EXACT).unwrap();
    objective
        .params()
        .into_iter()
        .map(|(_, name)| {
            let g = values
                .output(&format!("{GRADIENT_PREFIX}{name}"))
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name.to_string(), g.data.clone())
        })
        .collect()
}

#[test]
fn penalties_match_finite_differences() {
    let penalized = objective(&format!(
        "mse(y, t) + {L2} * sum(square(weights())) + {L1} * sum(abs(params()))"
    ));
    let plain = objective("mse(y, t)");
    let env = env(&penalized);
    let with = analytic(&penalized, &env);
    let without = analytic(&plain, &env);
    const H: f64 = 1e-6;
    let mut checked = 0;
    for ((name, g), (_, g0)) in with.iter().zip(&without) {
        let p = env.get(name).unwrap().clone();
        let rank = p.shape.len();
        for i in 0..p.data.len() {
            let at = |delta: f64| {
                let mut e = env.clone();
                let mut q = p.clone();
                q.data[i] += delta;
                e.insert(name.clone(), q);
                loss_at(&penalized, &e)
            };
            let numeric = (at(H) - at(-H)) / (2.0 * H);
            assert!(
                (g[i] - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                "{name}[{i}]: autodiff {}, finite differences {numeric}",
                g[i]
            );
            // The penalty's own gradient: 2·l2·w for weights, l1·sign(p).
            let v = p.data[i];
            let l2 = if rank >= 2 { 2.0 * L2 * v } else { 0.0 };
            let want = l2 + L1 * v.signum();
            assert!(
                (g[i] - g0[i] - want).abs() < 1e-12,
                "{name}[{i}]: penalty gradient {} vs {want}",
                g[i] - g0[i]
            );
            checked += 1;
        }
    }
    // dense.w 3x4, dense.b 4, dense_1.w 4x2, dense_1.b 2.
    assert_eq!(checked, 12 + 4 + 8 + 2);
    // The loss itself: the mse plus both terms.
    let all: Vec<f64> = with
        .iter()
        .flat_map(|(name, _)| env.get(name).unwrap().data.clone())
        .collect();
    let weights: Vec<f64> = with
        .iter()
        .filter(|(name, _)| env.get(name).unwrap().shape.len() >= 2)
        .flat_map(|(name, _)| env.get(name).unwrap().data.clone())
        .collect();
    let penalty = L2 * weights.iter().map(|w| w * w).sum::<f64>()
        + L1 * all.iter().map(|p| p.abs()).sum::<f64>();
    let diff = loss_at(&penalized, &env) - loss_at(&plain, &env);
    assert!((diff - penalty).abs() < 1e-12, "{diff} vs {penalty}");
}
