//! Lowering of the train block's `optimizer`: PyTorch's defaults and the
//! ranges PyTorch accepts, with located errors outside them.

use nnc_dsl::{compile, SourceFile};
use nnc_ir::Optimizer;

/// A trainable program whose train block says `optimizer = {optimizer}`.
fn program(optimizer: &str) -> String {
    format!(
        "model M {{\n    input x: f32[B, 4]\n    y = x -> dense(2)\n    output y\n}}\n\
         data D {{ x = idx(\"x.gz\") }}\n\
         train M on D {{\n    loss = mean(y)\n    optimizer = {optimizer}\n}}\n"
    )
}

fn optimizer(text: &str) -> Result<Optimizer, (String, String)> {
    let source = program(text);
    match compile(&SourceFile::new("t.nn", source.clone()), None) {
        Ok(m) => Ok(m.train.expect("a train block").optimizer),
        Err(e) => Err((e.message, source[e.span.start..e.span.end].to_string())),
    }
}

#[test]
fn adam_takes_pytorchs_defaults() {
    assert_eq!(
        optimizer("adam").unwrap(),
        Optimizer::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    );
}

/// `torch.optim.Adam` accepts `eps=0` (it checks `0.0 <= eps`).
#[test]
fn adam_accepts_eps_zero() {
    match optimizer("adam(lr: 1, eps: 0)").unwrap() {
        Optimizer::Adam { lr, eps, .. } => assert_eq!((lr, eps), (1.0, 0.0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn adam_rejects_a_negative_eps_where_it_is_written() {
    let (message, covered) = optimizer("adam(eps: -1e-8)").unwrap_err();
    assert_eq!(message, "`eps` must be >= 0, found -0.00000001");
    assert_eq!(covered, "-1e-8");
}
