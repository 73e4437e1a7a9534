//! Elaboration of the convolutional layers and of train/eval: shapes and
//! param names of every prelude layer, their values against hand-written
//! references (run in the reference interpreter), how the forward
//! (evaluation) graph and the objective (training) graph differ, `state`
//! and `update`, the static `where`, and the language extensions the
//! layers are written with (computed dims, typed bindings, `assert`, `%`).

use nnc_dsl::{compile, Error, SourceFile};
use nnc_ir::init::init_leaves;
use nnc_ir::interp::{eval, run_updates, Env, EvalOptions};
use nnc_ir::module::RNG_KEY;
use nnc_ir::{verify, DType, Graph, Module, Op, Tensor};

#[track_caller]
fn module(text: &str) -> Module {
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(m) => m,
        Err(e) => panic!("{}\n  at {:?}\n  notes {:?}", e.message, e.span, e.notes),
    }
}

#[track_caller]
fn error(text: &str) -> Error {
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(m) => panic!("compiled, expected an error:\n{}", m.forward),
        Err(e) => e,
    }
}

/// A model `M` with one input `x` of type `x_ty` and output `y = body`.
fn model(x_ty: &str, body: &str) -> String {
    format!("model M {{\n    input x: {x_ty}\n    y = {body}\n    output y\n}}\n")
}

/// The same, trained on a data block with field `x` and loss `mean(y)`, so
/// the module has an objective (the training-mode graph).
fn trained(x_ty: &str, body: &str) -> String {
    format!(
        "{}data D {{ x = idx(\"x.gz\") }}\ntrain M on D {{ loss = mean(y)  optimizer = sgd(lr: 0.1) }}\n",
        model(x_ty, body)
    )
}

fn objective(m: &Module) -> &Graph {
    &m.train.as_ref().expect("a train block").objective
}

/// `name: type = init` of every param, sorted.
fn params(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::Param { name, init } => Some(format!("{name}: {} = {init}", g.ty(n))),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn states(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::State { name, init } => Some(format!("{name}: {} = {init}", g.ty(n))),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn inputs(g: &Graph) -> Vec<String> {
    g.inputs().into_iter().map(|(_, n)| n.to_string()).collect()
}

fn count_op(g: &Graph, mnemonic: &str) -> usize {
    g.topo_order()
        .into_iter()
        .filter(|&n| g.node(n).op.mnemonic() == mnemonic)
        .count()
}

fn output_type(g: &Graph, name: &str) -> String {
    g.ty(g.output(name).expect("output")).to_string()
}

/// Deterministic, varied test data.
fn data(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| ((i * 37 + 11) % 23) as f64 / 7.0 - 1.5)
        .collect()
}

fn tensor(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(DType::F32, shape, data(n)).unwrap()
}

/// Evaluates `g` exactly (f64) on `x`, params and state initialized from
/// seed 7 unless `env` has them; returns the output `y` and the env.
fn run(g: &Graph, x: Tensor, mut env: Env) -> (Tensor, Env, nnc_ir::Values) {
    verify(g).unwrap_or_else(|e| panic!("{e}\n{g}"));
    env.insert("x", x);
    init_leaves(g, 7, &mut env).unwrap();
    let values = eval(g, &env, EvalOptions::EXACT).unwrap_or_else(|e| panic!("{e}\n{g}"));
    (values.output("y").unwrap().clone(), env, values)
}

#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Row-major index.
fn at(shape: &[usize], index: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

// ------------------------------------------------------------ convolution

/// A direct 2-D convolution (PyTorch's cross-correlation with groups).
#[allow(clippy::too_many_arguments)]
fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
) -> (Vec<usize>, Vec<f64>) {
    let [n, c, h, wd] = x.shape[..] else { panic!() };
    let [f, cg, kh, kw] = w.shape[..] else {
        panic!()
    };
    let out = |size: usize, i: usize, k: usize| {
        (size + 2 * pad[i] - dil[i] * (k - 1) - 1) / stride[i] + 1
    };
    let (oh, ow) = (out(h, 0, kh), out(wd, 1, kw));
    let fg = f / groups;
    let mut y = Vec::new();
    for bi in 0..n {
        for fi in 0..f {
            let g = fi / fg;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b.data[fi]);
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        for u in 0..kh {
                            for v in 0..kw {
                                let r = (i * stride[0] + u * dil[0]) as isize - pad[0] as isize;
                                let s = (j * stride[1] + v * dil[1]) as isize - pad[1] as isize;
                                if r < 0 || s < 0 || r >= h as isize || s >= wd as isize {
                                    continue;
                                }
                                let xv = x.data[at(&x.shape, &[bi, ch, r as usize, s as usize])];
                                acc += xv * w.data[at(&w.shape, &[fi, ci, u, v])];
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    assert_eq!(c, cg * groups);
    (vec![n, f, oh, ow], y)
}

#[test]
fn conv2d_shapes_params_and_values() {
    let m = module(&model(
        "f32[B, 4, 7, 6]",
        "conv2d(x, 6, kernel: [3, 2], stride: [2, 1], pad: [1, 0], dilation: [1, 2], groups: 2)",
    ));
    let g = &m.forward;
    assert_eq!(output_type(g, "y"), "f32[B,6,4,4]");
    assert_eq!(
        params(g),
        [
            "conv2d.b: f32[6] = zeros",
            "conv2d.w: f32[6,2,3,2] = kaiming_uniform"
        ]
    );
    let x = tensor(&[2, 4, 7, 6]);
    // A nonzero bias, so that its broadcast is checked too.
    let env = Env::new().with(
        "conv2d.b",
        Tensor::from_vec(DType::F32, &[6], data(6)).unwrap(),
    );
    let (y, env, _) = run(g, x.clone(), env);
    let (shape, want) = conv2d_reference(
        &x,
        env.get("conv2d.w").unwrap(),
        env.get("conv2d.b"),
        [2, 1],
        [1, 0],
        [1, 2],
        2,
    );
    assert_eq!(y.shape, shape);
    assert_close("conv2d", &y.data, &want);
}

/// `x @ w` for `x: [n, k]`, `w: [k, m]`, plus `b` when given.
fn dense_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Vec<f64> {
    let (n, k, m) = (x.shape[0], x.shape[1], w.shape[1]);
    let mut y = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            let dot: f64 = (0..k).map(|p| x.data[i * k + p] * w.data[p * m + j]).sum();
            y[i * m + j] = dot + b.map_or(0.0, |b| b.data[j]);
        }
    }
    y
}

#[test]
fn dense_with_and_without_bias() {
    let m = module(&trained("f32[B, 6]", "x -> dense(4, bias: false)"));
    for g in [&m.forward, objective(&m)] {
        assert_eq!(output_type(g, "y"), "f32[B,4]");
        // As for conv2d: without a bias, `dense.b` is not in the model.
        assert_eq!(params(g), ["dense.w: f32[6,4] = xavier_uniform"]);
        assert_eq!(count_op(g, "add"), 0);
    }
    let x = tensor(&[3, 6]);
    let (y, env, _) = run(&m.forward, x.clone(), Env::new());
    let w = env.get("dense.w").unwrap();
    assert_close("dense(bias: false)", &y.data, &dense_reference(&x, w, None));

    let m = module(&trained("f32[B, 6]", "x -> dense(4)"));
    assert_eq!(
        params(&m.forward),
        [
            "dense.b: f32[4] = zeros",
            "dense.w: f32[6,4] = xavier_uniform"
        ]
    );
    let b = Tensor::from_vec(DType::F32, &[4], vec![0.5, -1.0, 2.0, 0.25]).unwrap();
    let (y, env, _) = run(&m.forward, x.clone(), Env::new().with("dense.b", b.clone()));
    let w = env.get("dense.w").unwrap();
    assert_close("dense", &y.data, &dense_reference(&x, w, Some(&b)));
}

#[test]
fn conv2d_with_int_settings_and_no_bias() {
    let m = module(&trained(
        "f32[B, 3, 8, 8]",
        "x -> conv2d(5, kernel: 3, stride: 2, pad: 1, bias: false)",
    ));
    for g in [&m.forward, objective(&m)] {
        assert_eq!(output_type(g, "y"), "f32[B,5,4,4]");
        // Without a bias nothing reads `conv2d.b`: it is not in the model,
        // so the training step neither trains nor stores it.
        assert_eq!(params(g), ["conv2d.w: f32[5,3,3,3] = kaiming_uniform"]);
    }
    let x = tensor(&[1, 3, 8, 8]);
    let (y, env, _) = run(&m.forward, x.clone(), Env::new());
    let w = env.get("conv2d.w").unwrap();
    let (_, want) = conv2d_reference(&x, w, None, [2, 2], [1, 1], [1, 1], 1);
    assert_close("conv2d", &y.data, &want);
    // Kaiming uniform: |w| <= sqrt(6 / fan_in), fan_in = 3 * 3 * 3.
    let bound = (6.0f64 / 27.0).sqrt();
    assert!(w.data.iter().all(|v| v.abs() <= bound));
}

#[test]
fn conv1d_is_conv2d_with_one_spatial_dim() {
    let m = module(&model(
        "f32[B, 4, 9]",
        "conv1d(x, 2, kernel: 3, stride: 2, pad: 1, groups: 2)",
    ));
    assert_eq!(output_type(&m.forward, "y"), "f32[B,2,5]");
    assert_eq!(
        params(&m.forward),
        [
            "conv1d.b: f32[2] = zeros",
            "conv1d.w: f32[2,2,3] = kaiming_uniform"
        ]
    );
    let x = tensor(&[2, 4, 9]);
    let (y, env, _) = run(&m.forward, x.clone(), Env::new());
    // The 1-D convolution is the 2-D one over a height of 1.
    let x4 = Tensor::from_vec(DType::F32, &[2, 4, 1, 9], x.data.clone()).unwrap();
    let w = env.get("conv1d.w").unwrap();
    let w4 = Tensor::from_vec(DType::F32, &[2, 2, 1, 3], w.data.clone()).unwrap();
    let (_, want) = conv2d_reference(&x4, &w4, None, [1, 2], [0, 1], [1, 1], 2);
    assert_close("conv1d", &y.data, &want);
}

#[test]
fn stacked_convolutions_number_their_params() {
    let m = module(
        &model(
            "f32[B, 1, 8, 8]",
            "x -> conv2d(2, kernel: 3) -> conv2d(3, kernel: 3) -> conv1d_free",
        )
        .replace("-> conv1d_free", ""),
    );
    assert_eq!(
        params(&m.forward),
        [
            "conv2d.b: f32[2] = zeros",
            "conv2d.w: f32[2,1,3,3] = kaiming_uniform",
            "conv2d_1.b: f32[3] = zeros",
            "conv2d_1.w: f32[3,2,3,3] = kaiming_uniform",
        ]
    );
}

// ------------------------------------------------------------ pooling

/// Max or mean over windows, padding being `fill` (PyTorch semantics:
/// the mean divides by the kernel size, padding included).
fn pool_reference(
    x: &Tensor,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    max: bool,
) -> (Vec<usize>, Vec<f64>) {
    let [n, c, h, w] = x.shape[..] else { panic!() };
    let (oh, ow) = (
        (h + 2 * p[0] - k[0]) / s[0] + 1,
        (w + 2 * p[1] - k[1]) / s[1] + 1,
    );
    let mut y = Vec::new();
    for plane in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut acc: f64 = if max { f64::NEG_INFINITY } else { 0.0 };
                for u in 0..k[0] {
                    for v in 0..k[1] {
                        let r = (i * s[0] + u) as isize - p[0] as isize;
                        let q = (j * s[1] + v) as isize - p[1] as isize;
                        let inside = r >= 0 && q >= 0 && r < h as isize && q < w as isize;
                        let val = if inside {
                            x.data[plane * h * w + r as usize * w + q as usize]
                        } else if max {
                            f64::NEG_INFINITY
                        } else {
                            0.0
                        };
                        acc = if max { acc.max(val) } else { acc + val };
                    }
                }
                y.push(if max { acc } else { acc / (k[0] * k[1]) as f64 });
            }
        }
    }
    (vec![n, c, oh, ow], y)
}

#[test]
fn pooling_in_two_dims() {
    let x = tensor(&[2, 3, 7, 6]);
    for (layer, max) in [("maxpool", true), ("avgpool", false)] {
        // Default stride = kernel.
        let m = module(&model("f32[B, 3, 7, 6]", &format!("{layer}(x, 2)")));
        assert_eq!(output_type(&m.forward, "y"), "f32[B,3,3,3]");
        assert!(params(&m.forward).is_empty());
        let (y, _, _) = run(&m.forward, x.clone(), Env::new());
        let (_, want) = pool_reference(&x, [2, 2], [2, 2], [0, 0], max);
        assert_close(layer, &y.data, &want);
        // Padding, a list kernel and an int stride.
        let m = module(&model(
            "f32[B, 3, 7, 6]",
            &format!("{layer}(x, [3, 2], stride: 2, pad: [1, 1])"),
        ));
        let (y, _, _) = run(&m.forward, x.clone(), Env::new());
        let (shape, want) = pool_reference(&x, [3, 2], [2, 2], [1, 1], max);
        assert_eq!(y.shape, shape);
        assert_close(layer, &y.data, &want);
    }
}

#[test]
fn pooling_in_one_dim() {
    let x = tensor(&[2, 3, 9]);
    let x4 = Tensor::from_vec(DType::F32, &[2, 3, 1, 9], x.data.clone()).unwrap();
    for (layer, max) in [("maxpool", true), ("avgpool", false)] {
        let m = module(&model(
            "f32[B, 3, 9]",
            &format!("x -> {layer}(3, stride: 2, pad: 1)"),
        ));
        assert_eq!(output_type(&m.forward, "y"), "f32[B,3,5]");
        let (y, _, _) = run(&m.forward, x.clone(), Env::new());
        let (_, want) = pool_reference(&x4, [1, 3], [1, 2], [0, 1], max);
        assert_close(layer, &y.data, &want);
    }
}

#[test]
fn global_avgpool_means_every_spatial_dim() {
    for (ty, shape) in [
        ("f32[B, 3, 4, 5]", vec![2, 3, 4, 5]),
        ("f32[B, 3, 4]", vec![2, 3, 4]),
    ] {
        let m = module(&model(ty, "global_avgpool(x)"));
        assert_eq!(output_type(&m.forward, "y"), "f32[B,3]");
        let x = tensor(&shape);
        let (y, _, _) = run(&m.forward, x.clone(), Env::new());
        let per: usize = shape[2..].iter().product();
        let want: Vec<f64> = x
            .data
            .chunks(per)
            .map(|c| c.iter().sum::<f64>() / per as f64)
            .collect();
        assert_close("global_avgpool", &y.data, &want);
    }
}

// ------------------------------------------------------------ batchnorm

/// PyTorch's `BatchNorm` on `[n, c, positions]`: the training output, and
/// the running statistics after one step from (`mean0`, `var0`).
fn batchnorm_reference(
    x: &Tensor,
    momentum: f64,
    eps: f64,
    mean0: &[f64],
    var0: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let per: usize = x.shape[2..].iter().product();
    let count = (n * per) as f64;
    let mut y = vec![0.0; x.data.len()];
    let (mut rm, mut rv) = (Vec::new(), Vec::new());
    for ch in 0..c {
        let idx = |b: usize, p: usize| (b * c + ch) * per + p;
        let vals: Vec<f64> = (0..n)
            .flat_map(|b| (0..per).map(move |p| (b, p)))
            .map(|(b, p)| x.data[idx(b, p)])
            .collect();
        let mean = vals.iter().sum::<f64>() / count;
        let biased = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count;
        let unbiased = biased * count / (count - 1.0);
        for b in 0..n {
            for p in 0..per {
                y[idx(b, p)] = (x.data[idx(b, p)] - mean) / (biased + eps).sqrt();
            }
        }
        rm.push((1.0 - momentum) * mean0[ch] + momentum * mean);
        rv.push((1.0 - momentum) * var0[ch] + momentum * unbiased);
    }
    (y, rm, rv)
}

#[test]
fn batchnorm_trains_on_batch_statistics_and_evaluates_on_running_ones() {
    for (ty, shape) in [
        ("f32[B, 3]", vec![5, 3]),
        ("f32[B, 3, 2, 2]", vec![2, 3, 2, 2]),
        ("f32[B, 3, 4]", vec![2, 3, 4]),
    ] {
        let m = module(&trained(ty, "batchnorm(x, momentum: 0.2)"));
        let obj = objective(&m);
        let want_params = [
            "batchnorm.beta: f32[3] = zeros",
            "batchnorm.gamma: f32[3] = ones",
        ];
        let want_states = [
            "batchnorm.running_mean: f32[3] = zeros",
            "batchnorm.running_var: f32[3] = ones",
        ];
        for g in [&m.forward, obj] {
            assert_eq!(params(g), want_params);
            assert_eq!(states(g), want_states);
        }
        let targets: Vec<&str> = obj.updates.iter().map(|u| u.target.as_str()).collect();
        assert_eq!(targets, ["batchnorm.running_mean", "batchnorm.running_var"]);
        assert!(m.forward.updates.is_empty());

        // Training: the batch's statistics, running ones moved towards them.
        let x = tensor(&shape);
        let mean0 = [0.5, -0.25, 1.0];
        let var0 = [2.0, 0.5, 1.5];
        let running = |env: Env| {
            env.with(
                "batchnorm.running_mean",
                Tensor::from_vec(DType::F32, &[3], mean0.to_vec()).unwrap(),
            )
            .with(
                "batchnorm.running_var",
                Tensor::from_vec(DType::F32, &[3], var0.to_vec()).unwrap(),
            )
        };
        let (y, _, values) = run(obj, x.clone(), running(Env::new()));
        let (want_y, want_rm, want_rv) = batchnorm_reference(&x, 0.2, 1e-5, &mean0, &var0);
        assert_close("train output", &y.data, &want_y);
        let updates = run_updates(obj, &values);
        assert_close("running_mean", &updates[0].1.data, &want_rm);
        assert_close("running_var", &updates[1].1.data, &want_rv);

        // Evaluation: the running statistics, nothing updated.
        let (y, _, _) = run(&m.forward, x.clone(), running(Env::new()));
        let per: usize = shape[2..].iter().product();
        let want: Vec<f64> = (0..x.data.len())
            .map(|i| {
                let ch = (i / per) % 3;
                (x.data[i] - mean0[ch]) / (var0[ch] + 1e-5).sqrt()
            })
            .collect();
        assert_close("eval output", &y.data, &want);
    }
}

#[test]
fn batchnorm_counts_a_symbolic_batch_at_run_time() {
    // The unbiased variance needs n / (n - 1) with n = B * positions, and
    // B is known only at run time: the same graph serves every batch size.
    let m = module(&trained("f32[B, 2, 3]", "batchnorm(x)"));
    let obj = objective(&m);
    for batch in [2, 5] {
        let x = tensor(&[batch, 2, 3]);
        let (_, _, values) = run(obj, x.clone(), Env::new());
        let (_, _, rv) = batchnorm_reference(&x, 0.1, 1e-5, &[0.0, 0.0], &[1.0, 1.0]);
        assert_close("running_var", &run_updates(obj, &values)[1].1.data, &rv);
    }
}

// ------------------------------------------------------------ dropout

#[test]
fn dropout_masks_in_training_and_is_the_identity_in_evaluation() {
    let m = module(&trained("f32[B, 64]", "dropout(x, 0.25)"));
    // Evaluation: no random numbers, no key to feed.
    assert_eq!(count_op(&m.forward, "random"), 0);
    assert_eq!(inputs(&m.forward), ["x"]);
    let x = Tensor::full(DType::F32, &[32, 64], 1.0);
    let (y, _, _) = run(&m.forward, x.clone(), Env::new());
    assert_eq!(y.data, x.data);
    // Training: zeros with probability p, survivors scaled by 1 / (1 - p).
    let obj = objective(&m);
    assert_eq!(count_op(obj, "random"), 1);
    assert_eq!(inputs(obj), ["x", RNG_KEY]);
    let key = |k: f64| Env::new().with(RNG_KEY, Tensor::scalar(DType::I32, k));
    let (y, _, _) = run(obj, x.clone(), key(1.0));
    let zeros = y.data.iter().filter(|&&v| v == 0.0).count();
    assert!(y
        .data
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-12));
    let share = zeros as f64 / y.data.len() as f64;
    assert!((share - 0.25).abs() < 0.03, "dropped {share}");
    // Another key, another mask.
    let (y2, _, _) = run(obj, x, key(2.0));
    assert_ne!(y.data, y2.data);
}

#[test]
fn two_dropouts_draw_different_masks() {
    let m = module(&trained(
        "f32[B, 32]",
        "concat([dropout(x, 0.5), dropout(x, 0.5)], axis: 1)",
    ));
    let obj = objective(&m);
    let streams: Vec<u32> = obj
        .topo_order()
        .into_iter()
        .filter_map(|n| match obj.node(n).op {
            Op::Random { stream } => Some(stream),
            _ => None,
        })
        .collect();
    assert_eq!(streams, [0, 1]);
    let x = Tensor::full(DType::F32, &[4, 32], 1.0);
    let (y, _, _) = run(
        obj,
        x,
        Env::new().with(RNG_KEY, Tensor::scalar(DType::I32, 3.0)),
    );
    let rows: Vec<&[f64]> = y.data.chunks(32).collect();
    assert_ne!(rows[0], rows[1], "the two halves of a row differ");
}

#[test]
fn dropout_of_zero_draws_nothing() {
    let m = module(&trained("f32[B, 4]", "dropout(x, 0)"));
    assert_eq!(count_op(objective(&m), "random"), 0);
    assert!(!inputs(objective(&m)).contains(&RNG_KEY.to_string()));
}

// ------------------------------------------------------------ train vs eval

const CNN: &str = r#"
model Cnn {
    input image: f32[B, 1, 8, 8]
    logits = image
        -> conv2d(4, kernel: 3, pad: 1) -> batchnorm -> relu -> maxpool(2)
        -> conv2d(8, kernel: 3, bias: false) -> relu -> global_avgpool
        -> dropout(0.25) -> dense(10)
    output logits
}

data Images {
    image = idx("images.gz") -> reshape([1, 8, 8])
    label: i32 = idx("labels.gz")
}

train Cnn on Images {
    loss      = cross_entropy(logits, label)
    optimizer = adam(lr: 1e-3)
    metrics   = [accuracy]
}
"#;

#[test]
fn forward_and_objective_differ_exactly_in_the_mode() {
    let m = module(CNN);
    let t = m.train.as_ref().unwrap();
    for g in [&m.forward, &t.objective, &t.evaluation] {
        verify(g).unwrap_or_else(|e| panic!("{e}\n{g}"));
        // Printed graphs parse back to the same text.
        let text = g.to_string();
        assert_eq!(nnc_ir::parse_graph(&text).unwrap().to_string(), text);
    }
    // The same params, with the same types and initializers.
    let p = params(&m.forward);
    assert_eq!(
        p,
        [
            "batchnorm.beta: f32[4] = zeros",
            "batchnorm.gamma: f32[4] = ones",
            "conv2d.b: f32[4] = zeros",
            "conv2d.w: f32[4,1,3,3] = kaiming_uniform",
            "conv2d_1.w: f32[8,4,3,3] = kaiming_uniform",
            "dense.b: f32[10] = zeros",
            "dense.w: f32[8,10] = xavier_uniform",
        ]
    );
    assert_eq!(params(&t.objective), p);
    assert_eq!(params(&t.evaluation), p);
    // The running statistics are read in both modes, updated in training.
    assert_eq!(states(&m.forward), states(&t.objective));
    assert_eq!(states(&m.forward).len(), 2);
    assert!(m.forward.updates.is_empty() && t.evaluation.updates.is_empty());
    assert_eq!(t.objective.updates.len(), 2);
    // Dropout draws only in training; evaluation has no key input.
    assert_eq!(inputs(&m.forward), ["image"]);
    assert_eq!(inputs(&t.evaluation), ["image", "label"]);
    assert_eq!(inputs(&t.objective), ["image", RNG_KEY, "label"]);
    assert_eq!(count_op(&m.forward, "random"), 0);
    assert_eq!(count_op(&t.evaluation, "random"), 0);
    assert_eq!(count_op(&t.objective, "random"), 1);
    // Batch statistics only in training: the reductions over [0, 2].
    let bn_stats = |g: &Graph| {
        g.topo_order()
            .into_iter()
            .filter(|&n| {
                matches!(&g.node(n).op, Op::Reduce { axes, keepdim: true, .. } if *axes == [0, 2])
            })
            .count()
    };
    assert_eq!(bn_stats(&m.forward), 0);
    assert_eq!(bn_stats(&t.objective), 2);
    // Both end in the same outputs.
    let names = |g: &Graph| g.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&m.forward), ["logits"]);
    assert_eq!(names(&t.objective), ["logits", "loss", "accuracy"]);
    assert_eq!(names(&t.evaluation), names(&t.objective));
    assert_eq!(t.objective.name, "objective");
    assert_eq!(t.evaluation.name, "evaluation");
}

#[test]
fn snapshot_small_cnn_in_both_modes() {
    let m = module(CNN);
    let t = m.train.unwrap();
    insta::assert_snapshot!(
        "cnn_modes",
        format!("{}\n{}\n{}", m.forward, t.objective, t.evaluation)
    );
}

#[test]
fn training_is_a_compile_time_bool() {
    let m = module(&trained("f32[B, 3]", "where(training, x * 2, x)"));
    assert_eq!(count_op(&m.forward, "mul"), 0);
    assert_eq!(count_op(objective(&m), "mul"), 1);
    // A user may shadow it.
    let m = module(&trained("f32[B, 3]", "x").replace(
        "y = x",
        "training = false\n    y = where(training, x * 2, x)",
    ));
    assert_eq!(count_op(objective(&m), "mul"), 0);
}

#[test]
fn a_static_where_elaborates_only_the_chosen_branch() {
    // The branch not taken may even be ill-typed (or name nothing).
    let m = module(&model("f32[B, 3]", "where(true, x, no_such_name + x)"));
    assert_eq!(output_type(&m.forward, "y"), "f32[B,3]");
    // Branches may differ in shape and kind; keyword and pipeline forms.
    let m = module(&model(
        "f32[B, 3]",
        "false -> where(b: sum(x, axis: 1), a: x)",
    ));
    assert_eq!(output_type(&m.forward, "y"), "f32[B]");
    // Comparisons of numbers are compile-time bools.
    let text = "layer maybe(x: f32[...], n: int) { return where(greater(n, 2), x * 2, x) }\n"
        .to_string()
        + &model("f32[B, 3]", "maybe(x, 1) + maybe(x, 3)");
    assert_eq!(count_op(&module(&text).forward, "mul"), 1);
    // A tensor condition is still `select`.
    let m = module(&model("f32[B, 3]", "where(greater(x, 0), x, 0)"));
    assert_eq!(count_op(&m.forward, "select"), 1);
    // A user layer named `where` is called like any layer.
    let text = "layer where(a: f32[...], b: f32[...], c: f32[...]) { return a + b + c }\n"
        .to_string()
        + &model("f32[B, 3]", "where(x, x, x)");
    assert_eq!(count_op(&module(&text).forward, "add"), 2);
}

#[test]
fn a_model_without_train_block_is_still_checked_in_training_mode() {
    let e = error(&model("f32[B, 3]", "where(training, x + unknown_thing, x)"));
    assert_eq!(e.message, "unknown name `unknown_thing`");
}

#[test]
fn a_param_used_in_one_mode_only_is_an_error() {
    let text = "layer odd(x: f32[b, n]) {\n    param w: f32[n] = ones\n    return where(training, x * w, x)\n}\n"
        .to_string()
        + &model("f32[B, 3]", "odd(x)");
    let e = error(&text);
    assert_eq!(e.message, "param `odd.w` is used only in training");
    // At the declaration: its layer is the user's.
    assert_eq!(&text[e.span.start..e.span.end], "param w: f32[n] = ones");
}

// ------------------------------------------------------------ state

const COUNTER: &str = r#"
layer counted(x: f32[b, n]) {
    state seen: f32[] = zeros
    state last: f32[n] = zeros
    update seen = seen + 1
    update last = mean(x, axis: 0)
    return x + last
}
"#;

#[test]
fn state_and_update() {
    let m = module(&(COUNTER.to_string() + &trained("f32[B, 2]", "x -> counted -> counted")));
    let obj = objective(&m);
    assert_eq!(
        states(obj),
        [
            "counted.last: f32[2] = zeros",
            "counted.seen: f32[] = zeros",
            "counted_1.last: f32[2] = zeros",
            "counted_1.seen: f32[] = zeros",
        ]
    );
    let targets: Vec<&str> = obj.updates.iter().map(|u| u.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "counted.seen",
            "counted.last",
            "counted_1.seen",
            "counted_1.last"
        ]
    );
    // Evaluation reads `last` but never updates; `seen` nobody reads.
    assert!(m.forward.updates.is_empty());
    assert_eq!(
        states(&m.forward),
        [
            "counted.last: f32[2] = zeros",
            "counted_1.last: f32[2] = zeros"
        ]
    );
    // `update` takes effect after the step: `x + last` reads the old value.
    let x = tensor(&[3, 2]);
    let (y, _, values) = run(obj, x.clone(), Env::new());
    assert_eq!(y.data, x.data);
    let updates = run_updates(obj, &values);
    assert_eq!(updates[0].1.data, [1.0]);
    let col_mean = |c: usize| (x.data[c] + x.data[2 + c] + x.data[4 + c]) / 3.0;
    assert_close("last", &updates[1].1.data, &[col_mean(0), col_mean(1)]);
}

#[test]
fn update_errors() {
    let layer = |body: &str| {
        format!("layer l(x: f32[b, n]) {{\n{body}\n    return x\n}}\n")
            + &trained("f32[B, 2]", "l(x)")
    };
    let e = error(&layer("    param w: f32[n] = ones\n    update w = w * 2"));
    assert_eq!(
        e.message,
        "`update` needs a state, but `w` is a param (the optimizer trains it)"
    );
    let e = error(&layer("    update nothing = x"));
    assert_eq!(
        e.message,
        "`update` needs a state, but `nothing` is not defined"
    );
    let e = error(&layer(
        "    state s: f32[n] = zeros\n    update s = s + 1\n    update s = s",
    ));
    assert_eq!(e.message, "state `s` is updated twice");
    assert_eq!(e.secondary.len(), 1);
    let e = error(&layer("    state s: f32[n] = zeros\n    update s = x"));
    assert_eq!(
        e.message,
        "the update of `s` is f32[B,2], but the state is f32[2]"
    );
    let e = error(&layer("    state s: f32[b] = zeros"));
    assert_eq!(e.message, "state `s` has the symbolic dim `B`");
    let e = error(&layer("    state s: f32[n]"));
    assert_eq!(e.message, "state `s` has no initializer");
    // A scalar fills the state; an i32 state is fine.
    module(&layer("    state s: f32[n] = zeros\n    update s = 3"));
    module(&layer("    state k: i32[] = zeros\n    update k = k + 1"));
    // A state of the model itself.
    let m = module(&trained("f32[B, 2]", "x").replace(
        "    y = x\n",
        "    state total: f32[2] = zeros\n    update total = total + sum(x, axis: 0)\n    y = x + total\n",
    ));
    assert_eq!(objective(&m).updates[0].target, "total");
}

// ------------------------------------------------------------ extensions

#[test]
fn computed_dims_typed_bindings_and_remainders() {
    let text = r#"
layer halves(x: f32[b, c], parts: int) {
    assert equal(c % parts, 0), "`halves` needs the width divisible by `parts`"
    param w: f32[c / parts, parts * 2] = ones
    let y: f32[b, p, k] = reshape(x, [b, parts, c / parts])
    let z: f32[b, p, q] = matmul(y, w)
    return reshape(z, [b, p * q])
}
"#;
    let m = module(&(text.to_string() + &model("f32[B, 6]", "halves(x, 3)")));
    assert_eq!(params(&m.forward), ["halves.w: f32[2,6] = ones"]);
    assert_eq!(output_type(&m.forward, "y"), "f32[B,18]");
    // 6 / 4 is not a whole number: the dim is rejected, with its values.
    let bad = text.replace(
        "    assert equal(c % parts, 0), \"`halves` needs the width divisible by `parts`\"\n",
        "",
    );
    let e = error(&(bad + &model("f32[B, 6]", "halves(x, 4)")));
    assert_eq!(e.message, "the dim `c / parts` is 1.5, not a whole number");
    assert_eq!(e.notes, ["`c` is 6", "`parts` is 4"]);
    // The assert says it first, in its own words.
    let e = error(&(text.to_string() + &model("f32[B, 6]", "halves(x, 4)")));
    assert_eq!(e.message, "`halves` needs the width divisible by `parts`");
    assert_eq!(e.notes, ["`c` is 6", "`parts` is 4"]);
    // A typed binding checks what is already bound.
    let e = error(&model("f32[B, 6]", "x").replace("    y = x\n", "    let y: f32[B, 7] = x\n"));
    assert_eq!(
        e.message,
        "`y` has type f32[B,6], which does not match `f32[B, 7]`"
    );
}

#[test]
fn integer_arithmetic() {
    // Whole divisions stay ints (usable as dims); others are floats.
    let m = module(&model("f32[B, 6]", "reshape(x, [B, 6 / 2, 7 % 5])"));
    assert_eq!(output_type(&m.forward, "y"), "f32[B,3,2]");
    let m = module(&model("f32[B, 6]", "x * (1 / 4)"));
    let consts: Vec<String> = m
        .forward
        .topo_order()
        .into_iter()
        .filter_map(|n| match &m.forward.node(n).op {
            Op::Const(l) => Some(format!("{l:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(consts, ["Splat(0.25)"]);
    let e = error(&model("f32[B, 6]", "x % 2"));
    assert_eq!(e.message, "`%` works only on compile-time numbers");
    let e = error(&model("f32[B, 6]", "x * (3 % 0)"));
    assert_eq!(e.message, "division by zero in a constant expression");
}

#[test]
fn numel_counts_symbolic_dims_at_run_time() {
    let m = module(&model(
        "f32[B, 4, 3]",
        "numel(x, axis: [0, 2]) + numel(x, axis: 1)",
    ));
    assert_eq!(output_type(&m.forward, "y"), "f32[]");
    let (y, _, _) = run(&m.forward, tensor(&[5, 4, 3]), Env::new());
    assert_eq!(y.data, [19.0]);
    let m = module(&model("f32[B, 4, 3]", "x * rank(x)"));
    let (y, _, _) = run(&m.forward, tensor(&[1, 4, 3]), Env::new());
    assert_eq!(y.data[1], 3.0 * data(2)[1]);
}

#[test]
fn unfold_errors() {
    let e = error(&model("f32[B, 3, 4, 4]", "unfold(x, 5)"));
    assert_eq!(e.message, "a 5×5 kernel does not fit a 4×4 input");
    let e = error(&model("f32[B, 3, 4, 4]", "unfold(x, 3, dilation: 2)"));
    assert_eq!(e.message, "a 3×3 kernel does not fit a 4×4 input");
    assert_eq!(e.notes[0], "with dilation 2×2 the kernel spans 5×5");
    let e = error(&model("f32[B, 3, 4, 4]", "unfold(x, [7, 3], pad: [1, 0])"));
    assert_eq!(
        e.message,
        "a 7×3 kernel does not fit a 4×4 input padded to 6×4"
    );
    let e = error(&model("f32[B, 3, 4, 4]", "unfold(x, [3, 3, 3])"));
    assert_eq!(
        e.message,
        "`kernel` has 3 entries, but the input has 2 spatial dims"
    );
    let e = error(&model("f32[B, 3]", "unfold(x, 1)"));
    assert_eq!(
        e.message,
        "`unfold` needs [N, C, L] or [N, C, H, W], found f32[B,3]"
    );
    let e = error(&model("f32[B, 3, 4]", "unfold(x, 2, stride: 0)"));
    assert_eq!(
        e.message,
        "`stride` must be a positive int or a list of them, found int 0"
    );
    let e = error(&model("f32[B, 3, L]", "unfold(x, 2)"));
    assert_eq!(
        e.message,
        "`unfold` needs constant spatial dims, found `L` in f32[B,3,L]"
    );
    let e = error(&model(
        "f32[B, 3, 4]",
        "unfold(x, 2, pad: 9223372036854775807)",
    ));
    assert_eq!(e.message, "the window of `unfold` is too large");
    // A fitting window: [N, C, *kernel, *out].
    let m = module(&model(
        "f32[B, 3, 5, 4]",
        "unfold(x, [2, 3], stride: [1, 2], pad: 1, fill: -inf)",
    ));
    assert_eq!(output_type(&m.forward, "y"), "f32[B,3,2,3,6,2]");
}

#[test]
fn layer_errors_are_reported_at_the_users_call() {
    let text = model("f32[B, 3, 4, 4]", "conv2d(x, 4, kernel: 5)");
    let e = error(&text);
    assert_eq!(e.message, "a 5×5 kernel does not fit a 4×4 input");
    assert_eq!(&text[e.span.start..e.span.end], "conv2d(x, 4, kernel: 5)");
    assert!(e.notes.iter().any(|n| n.contains("prelude layer `conv2d`")));

    let text = model("f32[B, 3, 8, 8]", "conv2d(x, 4, kernel: 3, groups: 2)");
    let e = error(&text);
    assert_eq!(
        e.message,
        "`conv2d` needs the input's channels divisible by `groups`"
    );
    assert!(e.notes.contains(&"`c` is 3".to_string()), "{:?}", e.notes);

    let text = model("f32[B, 3, 8]", "conv2d(x, 4, kernel: 3)");
    let e = error(&text);
    assert_eq!(
        e.message,
        "argument `x` of `conv2d` has type f32[B,3,8], which does not match `f32[b, c, h, w]`"
    );
    assert_eq!(&text[e.span.start..e.span.end], "x");

    for p in ["1", "1.5", "-0.1"] {
        let text = trained("f32[B, 3]", &format!("dropout(x, {p})"));
        let e = error(&text);
        assert_eq!(e.message, "`p` of `dropout` must be in [0, 1)");
        assert_eq!(&text[e.span.start..e.span.end], format!("dropout(x, {p})"));
    }
    let e = error(&model("f32[B, 3]", "batchnorm(x, momentum: 2)"));
    assert_eq!(e.message, "`momentum` of `batchnorm` must be in [0, 1]");
    let e = error(&model("f32[B, 3, 4, 4, 4]", "maxpool(x, 2)"));
    assert_eq!(
        e.message,
        "`unfold` needs [N, C, L] or [N, C, H, W], found f32[B,3,4,4,4]"
    );
}

#[test]
fn assert_needs_a_compile_time_bool_and_a_message() {
    let body = |stmt: &str| {
        model("f32[B, 3]", "x").replace("    y = x\n", &format!("    {stmt}\n    y = x\n"))
    };
    let e = error(&body("assert greater(x, 0), \"positive\""));
    assert_eq!(
        e.message,
        "`assert` needs a compile-time bool, found a tensor"
    );
    let e = error(&body("assert false, 3"));
    assert_eq!(
        e.message,
        "the message of `assert` must be a string, found int 3"
    );
    let e = error(&body("assert less(2, 1), \"two is not less than one\""));
    assert_eq!(e.message, "two is not less than one");
    module(&body("assert less_equal(1, 1), \"fine\""));
}

#[test]
fn ints_parameters_take_an_int_or_a_list_of_ints() {
    let text = "layer k(x: f32[...], size: ints) { return x }\n".to_string();
    module(&(text.clone() + &model("f32[B, 3]", "k(x, 3) + k(x, [1, 2])")));
    let e = error(&(text + &model("f32[B, 3]", "k(x, 1.5)")));
    assert_eq!(
        e.message,
        "argument `size` of `k` must be an int or a list of ints, found float 1.5"
    );
}

#[test]
fn amax_ties_must_be_split_or_first() {
    let e = error(&model("f32[B, 4]", "amax(x, axis: 1, ties: \"last\")"));
    assert_eq!(
        e.message,
        "`ties` of `amax` must be \"split\" or \"first\", found string \"last\""
    );
    let m = module(&model("f32[B, 4]", "amax(x, axis: 1, ties: \"first\")"));
    assert!(m.forward.to_string().contains("ties=first"));
}

/// `zeros(shape)`: a constant of zeros whose dims may be the batch's, so
/// a layer's initial state needs no arithmetic on its input (`x * 0`
/// would be NaN where `x` is, and send a gradient back into `x`).
#[test]
fn zeros_of_named_dims() {
    let m = module(&model("f32[B, 3]", "x + zeros([B, 3])"));
    verify(&m.forward).unwrap();
    assert_eq!(output_type(&m.forward, "y"), "f32[B,3]");
    let x = Tensor::from_vec(DType::F32, &[2, 3], vec![1.0, f64::NAN, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let (y, _, _) = run(&m.forward, x, Env::new());
    assert_eq!(y.data[0], 1.0);
    assert!(y.data[1].is_nan());
    assert_eq!(y.data[5], 6.0);
    let e = error(&model("f32[B, 3]", "x + zeros([B, -3])"));
    assert!(e.message.contains("sizes"), "{}", e.message);
    let e = error(&model("f32[B, 3]", "x + zeros(3)"));
    assert!(e.message.contains("list of dims"), "{}", e.message);
}

/// `quantize`/`dequantize` against PyTorch's formulas worked by hand, in
/// f32 as ATen computes them: `inv_scale = 1.0f / scale`, `q =
/// clamp(nearbyint(x * inv_scale) + zero_point, 0, 255)`, `x' = (q -
/// zero_point) * scale`. 0.025 * 100 rounds to the f32 2.5, a tie that
/// goes to 2 (half away from zero would give 3).
#[test]
fn quantize_and_dequantize_follow_pytorchs_per_tensor_formulas() {
    let m = module(&model(
        "f32[B, 9]",
        "x -> quantize(0.01, zero_point: 128)\n    back = y -> dequantize(0.01, zero_point: 128)\n    output back\n    w = x -> quantize_symmetric(0.5)\n    output w",
    ));
    let g = &m.forward;
    assert_eq!(g.ty(g.output("y").unwrap()).dtype, DType::U8);
    assert_eq!(g.ty(g.output("w").unwrap()).dtype, DType::I8);
    let xs = [-1.0, 0.0, 0.025, 1.27, 1.28, 3.0, -1.3, -1.28, 0.75];
    let x = Tensor::from_vec(DType::F32, &[1, 9], xs.to_vec()).unwrap();
    let env = Env::new().with("x", x.rounded());
    let values = eval(g, &env, EvalOptions::F32).unwrap();
    let q = &values.output("y").unwrap().data;
    assert_eq!(
        q,
        &[28.0, 128.0, 130.0, 255.0, 255.0, 255.0, 0.0, 0.0, 203.0]
    );
    let back = &values.output("back").unwrap().data;
    let want: Vec<f64> = q
        .iter()
        .map(|&q| ((q as f32 - 128.0) * 0.01f32) as f64)
        .collect();
    assert_eq!(back, &want);
    assert_eq!(back[0], -1.0);
    // Symmetric, scale 0.5: x * 2 is -2, 0, 0.05, 2.54, 2.56, 6, -2.6,
    // -2.56, 1.5 (a tie, to 2).
    let w = &values.output("w").unwrap().data;
    assert_eq!(w, &[-2.0, 0.0, 0.0, 3.0, 3.0, 6.0, -3.0, -3.0, 2.0]);
}

#[test]
fn quantize_refuses_a_scale_that_is_not_positive() {
    let e = error(&model("f32[B, 3]", "x -> quantize(0, zero_point: 3)"));
    assert!(e.message.contains("must be positive"), "{}", e.message);
    let e = error(&model("f32[B, 3]", "x -> quantize(0.1, zero_point: 300)"));
    assert!(e.message.contains("[0, 255]"), "{}", e.message);
}
