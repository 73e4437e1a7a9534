//! The optimizer on every example: `-O2` agrees with `-O0` (gradients,
//! several training steps, the evaluation and forward graphs) under the
//! reference interpreter, the JIT runs the optimized step, saturation is
//! fast, and the optimized training step of every example is
//! snapshot-tested with its kernels (the unoptimized step is
//! `examples__<name>__train_step.snap`: before and after).
//!
//! Tolerances: the exact rules change nothing; the rules that reassociate
//! sums and the softmax rules (which drop a gradient path that is zero up
//! to rounding, see `passes/src/opt/rules/training.rs`) change gradients
//! by rounding noise, about 1e-7 relative. Adam's normalized steps turn a
//! relative gradient difference into the same relative difference of the
//! step, so params agree to ~1e-6 after a few steps.

use nnc::driver::{self, CompileOptions, Emit, OptLevel};
use nnc_ir::{Graph, NodeId, OpClass, Tensor};
use nnc_runtime::{Batch, Executor, Interpreter, Jit, Programs};
use std::collections::HashSet;
use std::time::Duration;

mod common;
use common::EXAMPLES;

fn source(name: &str) -> nnc_dsl::SourceFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.nn"));
    nnc_dsl::SourceFile::new(
        format!("examples/{name}.nn"),
        std::fs::read_to_string(path).unwrap(),
    )
}

fn module(name: &str) -> nnc_ir::Module {
    driver::compile_source(&source(name), None).unwrap()
}

fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= atol + rtol * b.abs()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, rtol: f64, atol: f64) {
    assert_eq!(a.shape, b.shape, "{what}: shapes differ");
    for (i, (&x, &y)) in a.data.iter().zip(&b.data).enumerate() {
        assert!(
            close(x, y, rtol, atol),
            "{what}: element {i} is {x} at -O2 but {y} at -O0"
        );
    }
}

#[test]
fn optimized_training_steps() {
    for name in EXAMPLES {
        let src = source(name);
        let options = CompileOptions {
            opt: OptLevel::O2,
            explain: false,
            weights: None,
        };
        let text = driver::emit_with(&src, Emit::Opt, None, &options).unwrap();
        let parsed = nnc_ir::parse_graph(&text).unwrap();
        nnc_ir::verify(&parsed).unwrap();
        // The graph, then the kernel listing as comments.
        assert!(text.starts_with(&parsed.to_string()), "{name}: round trip");
        // Which rules fired (deterministic: saturation ends by saturating).
        let step = driver::train_step(&module(name)).unwrap();
        let (_, report) = driver::optimize(&step, OptLevel::O2).unwrap();
        let mut header = format!(
            "stop: {}\ncost model before: {}\ncost model after: {}\nfired:\n",
            report.stop_reason, report.before, report.after
        );
        for (rule, n) in report.fired.iter().filter(|(_, n)| *n > 0) {
            header.push_str(&format!("  {rule} {n}\n"));
        }
        insta::assert_snapshot!(format!("{name}__opt"), format!("{header}\n{text}"));
    }
}

#[test]
fn explain_prints_the_report_as_comments() {
    let src = source("mnist_mlp");
    let options = CompileOptions {
        opt: OptLevel::O2,
        explain: true,
        weights: None,
    };
    let text = driver::emit_with(&src, Emit::Opt, None, &options).unwrap();
    assert!(text.starts_with("// optimizer -O2:"), "{text}");
    assert!(text.contains("training/relu-mask-from-output"), "{text}");
    assert!(text.contains("saturation:"), "{text}");
    // The report is IR comments: the output still parses.
    nnc_ir::parse_graph(&text).unwrap();
    let err = driver::emit_with(&src, Emit::Ir, None, &options).unwrap_err();
    assert!(err.0.contains("--explain"), "{err}");
    // -O0 prints the training step as built, then its kernels under the
    // baseline grouping.
    let o0 = CompileOptions {
        opt: OptLevel::O0,
        explain: false,
        weights: None,
    };
    let text = driver::emit_with(&src, Emit::Opt, None, &o0).unwrap();
    let (ir, kernels) = text
        .split_once("\n\n// kernels of `train_step` at batch 128 (-O0): ")
        .unwrap();
    assert_eq!(
        format!("{ir}\n"),
        driver::emit(&src, Emit::TrainStep, None).unwrap()
    );
    let listed = kernels.lines().filter(|l| l.starts_with("// k")).count();
    assert!(
        kernels.starts_with(&format!("{listed} kernels")),
        "{kernels}"
    );
}

#[test]
fn emit_kernels_lists_fewer_kernels_and_bytes_at_o2() {
    // The totals line of `--emit kernels`: kernels, MFLOP, MB read, MB written.
    let totals = |name: &str, opt: OptLevel| -> (usize, f64) {
        let options = CompileOptions {
            opt,
            explain: false,
            weights: None,
        };
        let text = driver::emit_with(&source(name), Emit::Kernels, None, &options).unwrap();
        let first = text.lines().next().unwrap();
        let fields: Vec<&str> = first.split(": ").nth(1).unwrap().split(", ").collect();
        let number = |i: usize| fields[i].split(' ').next().unwrap().parse::<f64>().unwrap();
        assert_eq!(text.lines().count(), 1 + number(0) as usize, "{text}");
        (number(0) as usize, number(2) + number(3))
    };
    for name in ["mnist_mlp", "lenet"] {
        let (k0, mb0) = totals(name, OptLevel::O0);
        let (k2, mb2) = totals(name, OptLevel::O2);
        assert!(k2 < k0, "{name}: {k2} kernels at -O2, {k0} at -O0");
        assert!(mb2 < mb0, "{name}: {mb2} MB at -O2, {mb0} MB at -O0");
    }
}

/// The interpreter's values of `graph` on `env`.
fn eval(graph: &Graph, env: &nnc_ir::Env) -> Vec<(String, Tensor)> {
    let values = nnc_ir::eval(graph, env, nnc_ir::EvalOptions::F32).unwrap();
    values
        .outputs()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// An environment with every leaf of `graph` initialized and its inputs
/// filled from a synthetic batch, the hyperparameters of `optimizer`'s
/// first step at learning rate 1e-3.
fn environment(
    graph: &Graph,
    optimizer: &nnc_ir::Optimizer,
    size: usize,
    seed: u64,
) -> nnc_ir::Env {
    let mut env = nnc_ir::Env::new();
    nnc_ir::init::init_leaves(graph, seed, &mut env).unwrap();
    let mut batch = Batch::synthetic(graph, size, seed);
    nnc_runtime::train::feed_hyper(&mut batch, optimizer, 1e-3, 0);
    for f in &batch.fields {
        let data: Vec<f64> = match &f.data {
            nnc_runtime::BatchData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            nnc_runtime::BatchData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            nnc_runtime::BatchData::F64(v) => v.clone(),
        };
        let dtype = match f.data {
            nnc_runtime::BatchData::F32(_) => nnc_ir::DType::F32,
            nnc_runtime::BatchData::I32(_) => nnc_ir::DType::I32,
            nnc_runtime::BatchData::F64(_) => nnc_ir::DType::F64,
        };
        env.insert(
            f.name.clone(),
            Tensor::from_vec(dtype, &f.shape, data).unwrap(),
        );
    }
    env
}

#[test]
fn o2_agrees_with_o0_on_gradients_and_steps_of_every_example() {
    for name in EXAMPLES {
        let m = module(name);
        let spec = m.train.as_ref().unwrap();
        // Gradients: `--emit grad`'s graph, one output per param.
        let grad = nnc_passes::differentiate(&spec.objective, nnc_ir::LOSS).unwrap();
        let (grad2, _) = driver::optimize(&grad, OptLevel::O2).unwrap();
        let env = environment(&grad, &spec.optimizer, 3, 11);
        for ((n0, t0), (n2, t2)) in eval(&grad, &env).iter().zip(&eval(&grad2, &env)) {
            assert_eq!(n0, n2);
            assert_close(&format!("{name}: `{n0}`"), t2, t0, 1e-4, 1e-6);
        }
        // Forward and evaluation graphs.
        for g in [&m.forward, &spec.evaluation] {
            let (g2, _) = driver::optimize(g, OptLevel::O2).unwrap();
            let env = environment(g, &spec.optimizer, 3, 12);
            for ((n0, t0), (_, t2)) in eval(g, &env).iter().zip(&eval(&g2, &env)) {
                assert_close(&format!("{name}: {} `{n0}`", g.name), t2, t0, 1e-5, 1e-6);
            }
        }
        // The example's own training step (Adam for all of them). Adam's
        // first step is `lr * g / (|g| + eps)` with eps = 1e-8: for a
        // gradient entry near 1e-8 (the CIFAR net's dense layer has some)
        // a rounding difference of the gradient moves the step by a good
        // fraction of `lr`, so params agree to 1e-4 absolute (`lr` is
        // 1e-3), as in the JIT-versus-interpreter test.
        let step0 = driver::train_step(&m).unwrap();
        steps_agree(name, &step0, &spec.optimizer, 1, 1e-4);
        // Three steps of SGD with momentum, whose step is proportional to
        // the gradient: here params must agree tightly.
        let sgd = nnc_ir::Optimizer::Sgd {
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        };
        let step0 = nnc_passes::build_train_step(&spec.objective, &sgd).unwrap();
        steps_agree(name, &step0, &sgd, 3, 1e-6);
    }
}

/// `steps` training steps of `step0` at -O0 and -O2 from one state agree:
/// outputs along the way, all params and state at the end (to `atol`).
fn steps_agree(name: &str, step0: &Graph, optimizer: &nnc_ir::Optimizer, steps: usize, atol: f64) {
    let (step2, _) = driver::optimize(step0, OptLevel::O2).unwrap();
    let mut env0 = environment(step0, optimizer, 3, 13);
    let mut env2 = env0.clone();
    for s in 0..steps {
        let v0 = nnc_ir::interp::step(step0, &mut env0, nnc_ir::EvalOptions::F32).unwrap();
        let v2 = nnc_ir::interp::step(&step2, &mut env2, nnc_ir::EvalOptions::F32).unwrap();
        for (n, t0) in v0.outputs() {
            let t2 = v2.output(n).unwrap();
            assert_close(&format!("{name} step {s}: `{n}`"), t2, t0, 1e-4, 1e-6);
        }
    }
    for (n, t0) in env0.iter() {
        let t2 = env2.get(n).unwrap();
        assert_close(
            &format!("{name}: `{n}` after {steps} steps"),
            t2,
            t0,
            1e-4,
            atol,
        );
    }
}

#[test]
fn the_jit_runs_optimized_programs() {
    for name in ["xor", "digits_mlp", "mnist_mlp", "lenet"] {
        let m = module(name);
        let p0 = Programs::new(
            m.forward.clone(),
            m.train.as_ref().unwrap().evaluation.clone(),
            driver::train_step(&m).unwrap(),
        );
        let p2 = driver::programs(&m, OptLevel::O2).unwrap();
        let mut interp = Interpreter::new(p0.clone(), 5).unwrap();
        let mut jit = Jit::new(p2, 5).unwrap();
        let optimizer = &m.train.as_ref().unwrap().optimizer;
        for s in 0..2u64 {
            let mut batch = Batch::synthetic(&p0.step, 5, s);
            nnc_runtime::train::feed_hyper(&mut batch, optimizer, 1e-3, s);
            let a = interp.train_step(&batch).unwrap();
            let b = jit.train_step(&batch).unwrap();
            assert!(close(b.loss, a.loss, 1e-4, 1e-6), "{name}: {b:?} vs {a:?}");
            let ea = interp.evaluate(&batch).unwrap();
            let eb = jit.evaluate(&batch).unwrap();
            assert!(
                close(eb.loss, ea.loss, 1e-4, 1e-6),
                "{name}: {eb:?} vs {ea:?}"
            );
        }
        for ((n1, t1), (n2, t2)) in interp.state().iter().zip(jit.state().iter()) {
            assert_eq!(n1, n2);
            let d = t1.max_abs_diff(t2);
            assert!(d <= 2e-4, "{name}: `{n1}` differs by {d}");
        }
    }
}

#[test]
fn saturation_is_fast_on_every_example() {
    // The test profile is optimized (opt-level 1) but keeps debug
    // assertions; release builds are several times faster again.
    let bound = if cfg!(debug_assertions) {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(1)
    };
    for name in EXAMPLES {
        let step = driver::train_step(&module(name)).unwrap();
        let (_, r) = driver::optimize(&step, OptLevel::O2).unwrap();
        println!(
            "{name}: {} iterations ({}), e-graph {} nodes, saturation {:.1} ms, extraction {:.1} ms; {} -> {}",
            r.iterations,
            r.stop_reason,
            r.egraph_nodes,
            r.saturation_time.as_secs_f64() * 1e3,
            r.extraction_time.as_secs_f64() * 1e3,
            r.before,
            r.after
        );
        assert_eq!(r.stop_reason, "saturated", "{name}");
        assert!(r.saturation_time < bound, "{name}: {:?}", r.saturation_time);
        assert!(
            r.after.cost() <= r.before.cost(),
            "{name}: {} -> {}",
            r.before,
            r.after
        );
    }
}

/// The optimizer's cost model and the code generator decide which values
/// are computed inside their readers' loops by one rule (`ir::fusion`):
/// on every example's optimized step, at the batch the model assumes,
/// they fuse the same nodes, merge the same loops, stage the same
/// convolution columns (`ir::staging`) and so build the same kernels,
/// which move the same bytes.
#[test]
fn the_cost_model_fuses_what_the_code_generator_fuses() {
    for name in EXAMPLES {
        let step = driver::train_step(&module(name)).unwrap();
        for level in [OptLevel::O1, OptLevel::O2] {
            let (graph, _) = driver::optimize(&step, level).unwrap();
            let predicted: HashSet<NodeId> = nnc_passes::opt::cost::fused_nodes(&graph)
                .into_iter()
                .collect();
            let nominal = nnc_passes::opt::cost::NOMINAL_DIM as usize;
            let bindings = nnc_ir::symbols::batch_bindings(&graph, nominal);
            let layout = nnc_codegen::StateLayout::of(&[&graph]).unwrap();
            let plan =
                nnc_codegen::plan::plan_with(&graph, &bindings, &layout, &driver::grouping(level))
                    .unwrap();
            // Constants and views run no kernel whether they are inline or
            // not (the model calls them free); `fused` also holds products
            // summed into their reduction.
            let computed = |n: &NodeId| {
                !matches!(
                    graph.node(*n).op.class(),
                    OpClass::Constant | OpClass::View | OpClass::Contraction
                )
            };
            let predicted: HashSet<NodeId> = predicted.into_iter().filter(computed).collect();
            let built: HashSet<NodeId> = plan.fused.iter().copied().filter(computed).collect();
            let describe = |set: &HashSet<NodeId>| {
                let mut v: Vec<String> = set
                    .iter()
                    .map(|&n| format!("{} {}", graph.node(n).op.mnemonic(), graph.ty(n)))
                    .collect();
                v.sort();
                v
            };
            assert!(!built.is_empty(), "{name}: nothing fused");
            assert_eq!(
                describe(&predicted.difference(&built).copied().collect()),
                Vec::<String>::new(),
                "{name} at {level:?}: fused by the cost model only"
            );
            assert_eq!(
                describe(&built.difference(&predicted).copied().collect()),
                Vec::<String>::new(),
                "{name} at {level:?}: fused by the code generator only"
            );
            // And it merges the same loops into multi-output loops.
            let mut predicted = nnc_passes::opt::cost::multi_output_groups(&graph);
            let mut built: Vec<Vec<NodeId>> = plan
                .kernels
                .iter()
                .filter_map(|k| match &k.body {
                    nnc_codegen::plan::Body::Map { outputs, .. } if outputs.len() > 1 => {
                        Some(outputs.clone())
                    }
                    _ => None,
                })
                .collect();
            predicted.sort();
            built.sort();
            if level == OptLevel::O2 {
                assert!(!built.is_empty(), "{name}: no multi-output loop");
            }
            assert_eq!(predicted, built, "{name} at {level:?}: multi-output loops");
            // And it predicts the very kernels the code generator builds.
            let model = nnc_passes::opt::cost::graph_cost(&graph);
            if model.kernels != plan.kernels.len() {
                let roots: HashSet<NodeId> = plan.kernels.iter().map(|k| k.root).collect();
                let grouped: HashSet<NodeId> = plan
                    .kernels
                    .iter()
                    .flat_map(|k| match &k.body {
                        nnc_codegen::plan::Body::Map { outputs, .. } => outputs.clone(),
                        _ => vec![k.root],
                    })
                    .collect();
                for (n, p) in nnc_passes::opt::cost::placements(&graph) {
                    let kernel = p == nnc_passes::opt::cost::Placement::Kernel;
                    if kernel != grouped.contains(&n) {
                        eprintln!(
                            "{name}: {} {} placed {p:?} by the model, root of a kernel: {}",
                            graph.node(n).op.mnemonic(),
                            graph.ty(n),
                            roots.contains(&n)
                        );
                    }
                }
            }
            assert_eq!(
                model.kernels,
                plan.kernels.len(),
                "{name} at {level:?}: kernels"
            );
            // And the bytes those kernels move (and any update steps).
            let built: u64 = nnc_codegen::plan::summary::summarize(&plan, &graph)
                .iter()
                .map(|k| k.bytes_read + k.bytes_written)
                .sum();
            assert_eq!(model.bytes, built as f64, "{name} at {level:?}: bytes");
        }
    }
}

/// Updates no loop writes in place cost a step of their own, which the
/// model counts as the plan does: a product's result written to its state,
/// two states swapped (each value copied aside, then back), and an
/// elementwise update (in place, no step).
#[test]
fn the_cost_model_counts_the_steps_that_write_updates() {
    use nnc_ir::{DType, Dim, Init, TensorType, Update};
    let ty = |dims: &[usize]| {
        TensorType::new(
            DType::F32,
            dims.iter().map(|&d| Dim::Const(d)).collect::<Vec<_>>(),
        )
    };
    let mut g = Graph::new("train_step");
    let x = g.input("x", ty(&[8, 16]));
    let w = g.param("w", ty(&[16, 4]), Init::Zeros);
    let a = g.state("a", ty(&[8, 4]), Init::Zeros);
    let b = g.state("b", ty(&[8, 4]), Init::Zeros);
    let c = g.state("c", ty(&[8, 4]), Init::Zeros);
    let y = g.matmul(x, w).unwrap();
    let doubled = g.add_(c, c).unwrap();
    g.set_output("y", y);
    for (target, value) in [("a", b), ("b", a), ("c", doubled), ("w", w)] {
        g.updates.push(Update {
            target: target.into(),
            value,
        });
    }
    let mut product = g.clone();
    product.updates.push(Update {
        target: "a".into(),
        value: y,
    });
    for graph in [g, product] {
        let layout = nnc_codegen::StateLayout::of(&[&graph]).unwrap();
        let plan = nnc_codegen::plan::plan_with(
            &graph,
            &Default::default(),
            &layout,
            &driver::grouping(OptLevel::O2),
        )
        .unwrap();
        let steps = nnc_codegen::plan::summary::summarize(&plan, &graph);
        assert!(steps.len() > plan.kernels.len(), "no update step");
        let built: u64 = steps.iter().map(|k| k.bytes_read + k.bytes_written).sum();
        let model = nnc_passes::opt::cost::graph_cost(&graph);
        assert_eq!(model.bytes, built as f64, "{steps:#?}");
    }
}
