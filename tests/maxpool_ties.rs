//! `maxpool` routes its gradient at ties as PyTorch's `nn.MaxPool2d` does
//! (all of it to the first maximum of each window) while `amax` splits it
//! among tied maxima (`torch.amax`), through the whole pipeline — prelude,
//! autodiff, optimizer, then the interpreter and the JIT.
//!
//! The tie case is issue 13's: a zero-initialized gain before the pool, so
//! every window holds equal values (zeros). One SGD step with learning rate
//! 1 from gain 0 leaves `gain = -dL/dgain`, read from the executor's state.

use nnc_runtime::{Backend, Batch, BatchData, BatchField, Programs};

/// A model pooling `x * gain` with `pool` (an expression of `g`, which
/// may call `layers`) and the loss `sum(y)`, so that `dL/dy` is 1
/// everywhere.
fn programs(layers: &str, pool: &str) -> Programs {
    let source = format!(
        r#"{layers}
model Pool {{
    input x: f32[B, 1, 4, 4]
    param gain: f32[1] = zeros
    let g = x * gain
    y = {pool}
    output y
}}

data D {{
    x = csv("unused.csv", columns: [0, 16])
}}

train Pool on D {{
    loss      = sum(y)
    optimizer = sgd(lr: 1)
    batch     = 2
    epochs    = 1
}}
"#
    );
    let src = nnc_dsl::SourceFile::new("pool.nn", source);
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let step = nnc::driver::train_step(&module).unwrap();
    let evaluation = module.train.unwrap().evaluation;
    Programs::new(module.forward, evaluation, step)
}

/// Two 4×4 images, row-major: `v` and `v²` for `v` in 1..=16 (not
/// symmetric, so the first and the last element of a window differ).
fn batch() -> Batch {
    let mut x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    x.extend((1..=16).map(|v| (v * v) as f32));
    let mut batch = Batch {
        size: 2,
        fields: vec![BatchField {
            name: "x".into(),
            shape: vec![2, 1, 4, 4],
            data: BatchData::F32(x),
        }],
    };
    nnc_runtime::train::set_hyper(&mut batch, nnc_ir::LEARNING_RATE, 1.0);
    batch
}

/// `dL/dgain` after one step of `backend` from gain 0.
fn gain_gradient(programs: &Programs, backend: Backend) -> f64 {
    let mut executor = backend.executor(programs.clone(), 0).unwrap();
    executor.train_step(&batch()).unwrap();
    let state = executor.state();
    let (_, gain) = state.iter().find(|(name, _)| name == "gain").unwrap();
    -gain.data[0]
}

#[test]
fn maxpool_sends_a_tied_window_s_gradient_to_its_first_element() {
    let p = programs("", "maxpool(g, 2)");
    // Each 2×2 window's first element (top left), times dL/dy = 1:
    // image 1: 1 + 3 + 9 + 11; image 2: 1 + 9 + 81 + 121. (Split among
    // the ties it would be 34 + 374, see below.)
    let expected = 24.0 + 212.0;
    for backend in [Backend::Interp, Backend::Jit] {
        let got = gain_gradient(&p, backend);
        assert_eq!(got, expected, "{}", backend.name());
    }
}

#[test]
fn amax_over_the_same_windows_splits_the_gradient() {
    let p = programs("", "amax(unfold(g, 2, 2, fill: -inf), axis: [2, 3])");
    // Each window's mean: image 1: (1+2+5+6)/4 + (3+4+7+8)/4 + ... =
    // 3.5 + 5.5 + 11.5 + 13.5; image 2: (1+4+25+36)/4 + (9+16+49+64)/4 +
    // (81+100+169+196)/4 + (121+144+225+256)/4 = 16.5 + 34.5 + 136.5 + 186.5.
    let expected = 34.0 + 374.0;
    for backend in [Backend::Interp, Backend::Jit] {
        let got = gain_gradient(&p, backend);
        assert_eq!(got, expected, "{}", backend.name());
    }
}

#[test]
fn one_dimensional_maxpool_routes_to_the_first_element_too() {
    let rows = "layer pool_rows(x: f32[b, c, h, w]) {
        return reshape(maxpool(reshape(x, [b, c, h * w]), 4), [b, c, 2, 2])
    }";
    let p = programs(rows, "pool_rows(g)");
    // Windows of 4 in row-major order: image 1: 1 + 5 + 9 + 13; image 2:
    // 1 + 25 + 81 + 169.
    let expected = 28.0 + 276.0;
    for backend in [Backend::Interp, Backend::Jit] {
        let got = gain_gradient(&p, backend);
        assert_eq!(got, expected, "{}", backend.name());
    }
}
