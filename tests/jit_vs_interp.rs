//! Differential tests: the JIT against the reference interpreter on every
//! example — forward outputs, the objective, and several full training
//! steps — from the same initial state on the same random batches.
//!
//! Tolerances: both run in f32, but the JIT's matrix products and
//! reductions sum in a different order (and `gemm` uses FMA), so values
//! agree to about 1e-6 relative per op and 1e-4 relative (1e-5 absolute)
//! after a 784-long dot product and two more layers (5e-5 absolute after the
//! CIFAR net's 800- and 1600-long ones); after 3 Adam steps params agree
//! within 2e-4 absolute (Adam's normalized steps amplify tiny gradient
//! differences on near-zero gradients), the loss within 1e-4 relative.

use nnc_runtime::{Batch, Executor, Interpreter, Jit, Programs};

mod common;

fn programs(name: &str) -> (Programs, nnc_ir::Optimizer) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.nn"));
    programs_of(name, std::fs::read_to_string(path).unwrap())
}

/// The programs of the source `text`, unoptimized, and its optimizer.
fn programs_of(name: &str, text: String) -> (Programs, nnc_ir::Optimizer) {
    let src = nnc_dsl::SourceFile::new(name, text);
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let step = nnc::driver::train_step(&module).unwrap();
    let spec = module.train.unwrap();
    let programs = Programs::new(module.forward.clone(), spec.evaluation, step);
    (programs, spec.optimizer)
}

fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

#[test]
fn jit_matches_interpreter_on_every_example() {
    for name in common::EXAMPLES {
        let (p, optimizer) = programs(name);
        let mut interp = Interpreter::new(p.clone(), 5).unwrap();
        let mut jit = Jit::new(p.clone(), 5).unwrap();
        // Identical initial state.
        for ((n1, t1), (n2, t2)) in interp.state().iter().zip(jit.state().iter()) {
            assert_eq!(n1, n2);
            assert_eq!(t1.max_abs_diff(t2), 0.0, "{name}: initial `{n1}` differs");
        }
        for (step, size) in [7usize, 7, 3].into_iter().enumerate() {
            let mut batch = Batch::synthetic(&p.step, size, step as u64);
            // The learning rate the examples train with.
            nnc_runtime::train::feed_hyper(&mut batch, &optimizer, 1e-3, step as u64);
            let a = interp.evaluate(&batch).unwrap();
            let b = jit.evaluate(&batch).unwrap();
            assert!(
                close(b.loss, a.loss, 1e-5, 1e-6),
                "{name} eval {step}: jit {} vs interp {}",
                b.loss,
                a.loss
            );
            assert_eq!(a.accuracy.is_some(), b.accuracy.is_some());
            if let (Some(x), Some(y)) = (a.accuracy, b.accuracy) {
                // f32 rounding of the mean; one sample more or less moves it by 1/size.
                assert!(close(y, x, 0.0, 1e-6), "{name}: accuracy {y} vs {x}");
            }
            let fa = interp.predict(&batch).unwrap();
            let fb = jit.predict(&batch).unwrap();
            for ((na, ta), (nb, tb)) in fa.iter().zip(&fb) {
                assert_eq!(na, nb);
                assert!(
                    ta.allclose(tb, 1e-4, 5e-5),
                    "{name}: forward output `{na}` differs by {}",
                    ta.max_abs_diff(tb)
                );
            }
            let a = interp.train_step(&batch).unwrap();
            let b = jit.train_step(&batch).unwrap();
            assert!(
                close(b.loss, a.loss, 1e-4, 1e-6),
                "{name} step {step}: jit {} vs interp {}",
                b.loss,
                a.loss
            );
        }
        for ((n1, t1), (_, t2)) in interp.state().iter().zip(jit.state().iter()) {
            let d = t1.max_abs_diff(t2);
            assert!(d <= 2e-4, "{name}: after 3 steps `{n1}` differs by {d}");
        }
    }
}

/// A synthetic batch of the forward program whose `f32` inputs span
/// `[-4, 4)`: both signs, and past both ends of the `u8` ranges the
/// quantizing tests choose.
fn spread_batch(p: &Programs, size: usize, seed: u64) -> Batch {
    let mut batch = Batch::synthetic(&p.forward, size, seed);
    for f in &mut batch.fields {
        if let nnc_runtime::BatchData::F32(v) = &mut f.data {
            v.iter_mut().for_each(|x| *x = (*x - 0.5) * 8.0);
        }
    }
    batch
}

/// Quantized values (`u8`, `i8`, their round trips) through the whole
/// pipeline, optimizer included: the JIT's must equal the interpreter's
/// exactly, from the same f32 activations.
#[test]
fn jit_quantizes_exactly_as_the_interpreter() {
    let text = "model Q {
    input x: f32[B, 9]
    h = x -> dense(9)
    q = h -> quantize(0.01, zero_point: 128)
    back = q -> dequantize(0.01, zero_point: 128)
    w = x -> quantize_symmetric(0.05)
    output h
    output q
    output back
    output w
}
data D {
    x = idx(\"x.gz\")
    t: f32[B, 9] = idx(\"t.gz\")
}
train Q on D { loss = mse(h, t)  optimizer = sgd(lr: 0.1) }
";
    let (p, _) = programs_of("q.nn", text.to_string());
    let mut interp = Interpreter::new(p.clone(), 5).unwrap();
    let mut jit = Jit::new(p.clone(), 5).unwrap();
    for (seed, size) in [(0u64, 7usize), (1, 64)] {
        let batch = spread_batch(&p, size, seed);
        let fa = interp.predict(&batch).unwrap();
        let fb = jit.predict(&batch).unwrap();
        let h = &fa.iter().find(|(n, _)| n == "h").unwrap().1;
        for ((na, ta), (nb, tb)) in fa.iter().zip(&fb) {
            assert_eq!(na, nb);
            assert_eq!(ta.dtype, tb.dtype, "`{na}`");
            if na == "h" {
                assert!(ta.allclose(tb, 1e-5, 1e-6), "h differs");
                continue;
            }
            // An activation within an ulp of a rounding tie may round
            // either way after a differently ordered dot product; the
            // quantized values must otherwise be identical.
            let differs = ta.data.iter().zip(&tb.data).filter(|(a, b)| a != b).count();
            assert!(differs == 0 || na != "w", "`w` reads x directly: exact");
            assert!(
                differs <= 1,
                "`{na}`: {differs} values differ\n{ta}\n{tb}\nh = {h}"
            );
        }
        let q = &fa.iter().find(|(n, _)| n == "q").unwrap().1;
        assert!(q.data.contains(&0.0) && q.data.contains(&255.0), "{q}");
    }
}

/// A quantized dense layer end to end through the DSL: `u8` activations
/// (`quantize` of the input) times `i8` weights (`quantize_symmetric` of
/// the trained dense layer's kernel), the exact `i32` sums, and their
/// dequantization. The JIT multiplies the bytes through `igemm`: the sums
/// must equal the interpreter's exactly, and so the dequantized values.
#[test]
fn jit_multiplies_quantized_matrices_exactly() {
    let text = "model Q {
    input x: f32[B, 9]
    param w: f32[9, 7] = xavier_uniform
    h = matmul(x, w)
    q = x -> quantize(0.02, zero_point: 128)
    wq = w -> quantize_symmetric(0.005)
    acc = matmul(q, wq)
    y = float(acc) * 0.0001
    s = matmul(char(x), wq)
    output h
    output acc
    output y
    output s
}
data D {
    x = idx(\"x.gz\")
    t: f32[B, 7] = idx(\"t.gz\")
}
train Q on D { loss = mse(h, t)  optimizer = sgd(lr: 0.1) }
";
    let (p, _) = programs_of("qmm.nn", text.to_string());
    let mut interp = Interpreter::new(p.clone(), 5).unwrap();
    let mut jit = Jit::new(p.clone(), 5).unwrap();
    for (seed, size) in [(0u64, 7usize), (1, 64)] {
        let batch = spread_batch(&p, size, seed);
        let fa = interp.predict(&batch).unwrap();
        let fb = jit.predict(&batch).unwrap();
        for ((na, ta), (nb, tb)) in fa.iter().zip(&fb) {
            assert_eq!(na, nb);
            assert_eq!(ta.dtype, tb.dtype, "`{na}`");
            if na == "h" {
                assert!(ta.allclose(tb, 1e-5, 1e-6), "h differs");
            } else {
                assert_eq!(ta.data, tb.data, "`{na}` differs\n{ta}\n{tb}");
            }
        }
        let acc = &fa.iter().find(|(n, _)| n == "acc").unwrap().1;
        assert_eq!(acc.dtype, nnc_ir::DType::I32);
        assert!(acc.data.iter().any(|&v| v != 0.0), "{acc}");
    }
}

/// A convolution network whose products run in integers (every site
/// rewritten, `nnc_runtime::quantize::synthetic`): its image is quantized
/// once per pixel and the bytes unfolded (fill = the zero point), then
/// multiplied through `igemm`. The JIT must compute what the interpreter
/// does, at a batch whose columns would be staged if they were `f32`.
#[test]
fn jit_runs_an_integer_convolution_network_as_the_interpreter() {
    let text = "model C {
    input image: f32[B, 2, 12, 12]
    logits = image -> conv2d(4, kernel: 3, pad: 1) -> relu -> maxpool(2)
        -> conv2d(6, kernel: 3) -> relu -> flatten -> dense(5)
    output logits
}
data D {
    image = idx(\"x.gz\")
    label: i32 = idx(\"t.gz\")
}
train C on D { loss = cross_entropy(logits, label)  optimizer = sgd(lr: 0.1) }
";
    let (p, _) = programs_of("qconv.nn", text.to_string());
    let mut forward = p.forward.clone();
    assert_eq!(nnc_runtime::quantize::synthetic(&mut forward).unwrap(), 3);
    let unfolds_bytes = forward.topo_order().into_iter().any(|n| {
        matches!(forward.node(n).op, nnc_ir::Op::Unfold { .. })
            && forward.ty(n).dtype == nnc_ir::DType::U8
    });
    assert!(
        unfolds_bytes,
        "the image is quantized before it is unfolded"
    );
    // Weights of both signs in both executors (an `i8` initializer rounds
    // kaiming's small values to 0).
    let weights: Vec<(String, nnc_ir::Tensor)> = forward
        .params()
        .into_iter()
        .filter(|(id, _)| forward.ty(*id).dtype == nnc_ir::DType::I8)
        .map(|(id, name)| {
            let shape: Vec<usize> = forward
                .ty(id)
                .shape
                .iter()
                .map(|d| d.as_const().unwrap())
                .collect();
            let n: usize = shape.iter().product();
            let data = (0..n).map(|i| ((i * 7 + 3) % 11) as f64 - 5.0).collect();
            let t = nnc_ir::Tensor::from_vec(nnc_ir::DType::I8, &shape, data).unwrap();
            (name.to_string(), t)
        })
        .collect();
    let p = Programs::inference(forward);
    let mut interp = Interpreter::new(p.clone(), 3).unwrap();
    let mut jit = Jit::new(p.clone(), 3).unwrap();
    for (name, t) in &weights {
        interp.set_state(name, t.clone()).unwrap();
        jit.set_state(name, t.clone()).unwrap();
    }
    for (seed, size) in [(0u64, 3usize), (1, 64)] {
        let batch = spread_batch(&p, size, seed);
        let a = interp.predict(&batch).unwrap();
        let b = jit.predict(&batch).unwrap();
        let (ta, tb) = (&a[0].1, &b[0].1);
        assert!(
            ta.allclose(tb, 1e-5, 1e-6),
            "logits differ by {}",
            ta.max_abs_diff(tb)
        );
        assert!(ta.data.iter().any(|&v| v != 0.0), "{ta}");
    }
}
