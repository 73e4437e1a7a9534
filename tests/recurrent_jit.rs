//! The prelude's recurrent layers compiled by the JIT against the reference
//! interpreter: the gradient of every param on one batch, for `rnn`,
//! `lstm` and `gru`, stacked, bidirectional and masked (padded sequences),
//! through the whole pipeline (elaboration, autodiff's reverse loops, the
//! optimizer at `-O2`, loop compilation). The interpreter's loops are
//! checked against finite differences and hand-unrolled recurrences in
//! `passes/tests/scan_grad.rs` and `dsl/tests/recurrent.rs`.

use nnc_runtime::{Batch, BatchData, Executor, Interpreter, Jit, Programs};

fn source(layer: &str, options: &str, masked: bool) -> String {
    let mask = if masked { ", mask: mask" } else { "" };
    format!(
        "model M {{
    input tokens: i32[B, 7]
    let mask = float(greater(tokens, 0))
    logits = tokens -> embedding(5, 6) -> {layer}(8{options}{mask}) -> dense(3)
    output logits
}}
data D {{
    tokens: i32 = csv(\"x.csv\", columns: [0, 7])
    label: i32 = csv(\"x.csv\", column: 7)
}}
train M on D {{
    loss      = cross_entropy(logits, label)
    optimizer = sgd(lr: 0.1)
    batch     = 4
}}
"
    )
}

fn programs(text: &str) -> Programs {
    let src = nnc_dsl::SourceFile::new("recurrent.nn", text.to_string());
    let module = nnc::driver::compile_source(&src, None).unwrap();
    let step = nnc::driver::train_step(&module).unwrap();
    let spec = module.train.unwrap();
    let objective = spec.objective.clone();
    let gradients = nnc_passes::gradient_graph(&objective).unwrap();
    let (gradients, _) = nnc::driver::optimize(&gradients, nnc_passes::OptLevel::O2).unwrap();
    let mut p = Programs::new(module.forward.clone(), spec.evaluation, step);
    p.gradients = Some(gradients);
    p
}

/// Token ids with trailing padding (0) of different lengths per sample.
fn batch(p: &Programs) -> Batch {
    let mut b = Batch::synthetic(&p.step, 4, 9);
    for f in &mut b.fields {
        if f.name == "tokens" {
            let lengths = [7, 4, 1, 6];
            let mut ids = Vec::new();
            for (s, &len) in lengths.iter().enumerate() {
                for t in 0..7 {
                    ids.push(if t < len {
                        1 + ((s * 3 + t * 2) % 4) as i32
                    } else {
                        0
                    });
                }
            }
            f.data = BatchData::I32(ids);
        }
    }
    b
}

/// Every param's gradient of `text`'s training step on one batch, by the
/// JIT and by the interpreter: equal within 1e-5 of the largest, and not
/// all zeros.
#[track_caller]
fn assert_gradients_match(text: &str, what: &str) {
    let p = programs(text);
    let batch = batch(&p);
    let mut interp = Interpreter::new(p.clone(), 5).unwrap();
    let mut jit = Jit::new(p.clone(), 5).unwrap();
    let want = interp.gradients(&batch).unwrap();
    let got = jit.gradients(&batch).unwrap();
    assert_eq!(want.len(), got.len());
    for ((name, a), (name_b, b)) in want.iter().zip(&got) {
        assert_eq!(name, name_b);
        let scale = a.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = a.max_abs_diff(b);
        assert!(
            diff <= 1e-5 * (1.0 + scale),
            "{what}: gradient `{name}` differs by {diff} (scale {scale})"
        );
        assert!(scale > 0.0, "{what}: gradient `{name}` is all zeros");
    }
}

#[test]
fn recurrent_layer_gradients_match_the_interpreter() {
    for layer in ["rnn", "lstm", "gru"] {
        for (options, masked) in [
            ("", false),
            (", return_sequences: true", true),
            (", layers: 2, bidirectional: true", true),
            (", bidirectional: true, return_sequences: true", false),
        ] {
            let what = format!("{layer}({options}) masked={masked}");
            assert_gradients_match(&source(layer, options, masked), &what);
        }
    }
}

/// A loop written in the language (not the prelude's): a ReLU recurrence
/// along the batch-first axis, whose gradient saves a comparison per step
/// (ReLU's) for the backward loop and hoists both weight gradients out of
/// it (`x_t^T @ g` reads the loop's own input sequence, `h^T @ g` its
/// carries-in), against the interpreter.
#[test]
fn a_relu_loop_in_the_language_matches_the_interpreter() {
    let text = "layer relu_rnn(x: f32[b, t, in], hidden: int) {
    param w: f32[in, hidden] = uniform(-0.5, 0.5)
    param u: f32[hidden, hidden] = uniform(-0.5, 0.5)
    param bias: f32[hidden] = uniform(-0.5, 0.5)
    scan(v = each(x), h = zeros([b, hidden])) {
        h = maximum(matmul(v, w) + matmul(h, u) + bias, 0)
        yield hs = h
    }
    return h + mean(hs, axis: 1)
}
model M {
    input tokens: i32[B, 7]
    logits = tokens -> embedding(5, 6) -> relu_rnn(8) -> dense(3)
    output logits
}
data D {
    tokens: i32 = csv(\"x.csv\", columns: [0, 7])
    label: i32 = csv(\"x.csv\", column: 7)
}
train M on D {
    loss      = cross_entropy(logits, label)
    optimizer = sgd(lr: 0.1)
    batch     = 4
}
";
    assert_gradients_match(text, "relu_rnn");
}
