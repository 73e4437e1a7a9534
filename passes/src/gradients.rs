//! The gradient graph `nnc run --dump-grads` evaluates before a training
//! step: the loss and the gradient of every param on one batch, as the
//! step computes them, without the optimizer and without changing any
//! state, so the gradients can be compared with another framework's
//! autograd directly.

use crate::autodiff::differentiate;
use crate::PassError;
use nnc_ir::{Graph, GRADIENT_PREFIX, LOSS};

/// The objective reduced to its `loss` output and one output
/// `grad.<param>` per trainable param. The objective's own updates (a
/// batch norm's running statistics) are dropped: evaluating the graph
/// must leave the model as it was, for the step that follows to see.
pub fn gradient_graph(objective: &Graph) -> Result<Graph, PassError> {
    let mut graph = differentiate(objective, LOSS)?;
    graph.name = "gradients".into();
    if graph.params().is_empty() {
        return Err(PassError::new("the model has no trainable params"));
    }
    graph.updates.clear();
    graph
        .outputs
        .retain(|o| o.name == LOSS || o.name.starts_with(GRADIENT_PREFIX));
    graph.prune();
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnc_ir::interp::{eval, Env, EvalOptions};
    use nnc_ir::{
        shape_of, verify, BinaryOp, DType, Dim, Init, ReduceOp, Tensor, TensorType, Update,
    };

    /// `loss = mean((x @ w - t)^2)` plus an extra output and a state
    /// update, as a model with running statistics has.
    fn objective() -> Graph {
        let mut g = Graph::new("objective");
        let b = Dim::sym("B");
        let x = g.input("x", TensorType::new(DType::F32, [b.clone(), Dim::Const(2)]));
        let t = g.input("t", TensorType::new(DType::F32, [b, Dim::Const(1)]));
        let w = g.param(
            "w",
            TensorType::new(DType::F32, shape_of(&[2, 1])),
            Init::Zeros,
        );
        let count = g.state(
            "count",
            TensorType::new(DType::F32, shape_of(&[1])),
            Init::Zeros,
        );
        let y = g.matmul(x, w).unwrap();
        let e = g.binary(BinaryOp::Sub, y, t).unwrap();
        let sq = g.binary(BinaryOp::Mul, e, e).unwrap();
        let loss = g.reduce(ReduceOp::Mean, sq, vec![0, 1], false).unwrap();
        g.set_output(LOSS, loss);
        g.set_output("y", y);
        let one = g.scalar_like(1.0, count);
        let next = g.binary(BinaryOp::Add, count, one).unwrap();
        g.updates.push(Update {
            target: "count".into(),
            value: next,
        });
        g
    }

    #[test]
    fn keeps_the_loss_and_one_gradient_per_param_and_no_updates() {
        let g = gradient_graph(&objective()).unwrap();
        verify(&g).unwrap();
        let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["loss", "grad.w"]);
        assert!(g.updates.is_empty());
        assert!(
            !g.topo_order()
                .iter()
                .any(|&n| matches!(&g.node(n).op, nnc_ir::Op::State { .. })),
            "the state only its update read is pruned"
        );
    }

    #[test]
    fn the_gradient_is_that_of_the_mean_squared_error() {
        let g = gradient_graph(&objective()).unwrap();
        let mut env = Env::new();
        // w = [1, -1]; two samples.
        env.insert(
            "w",
            Tensor::from_vec(DType::F32, &[2, 1], vec![1.0, -1.0]).unwrap(),
        );
        let x = [[1.0, 2.0], [3.0, 0.5]];
        let t = [0.5, 1.0];
        env.insert(
            "x",
            Tensor::from_vec(DType::F32, &[2, 2], x.concat()).unwrap(),
        );
        env.insert(
            "t",
            Tensor::from_vec(DType::F32, &[2, 1], t.to_vec()).unwrap(),
        );
        let values = eval(&g, &env, EvalOptions::EXACT).unwrap();
        let grad = values.get(g.output("grad.w").unwrap()).unwrap();
        // d/dw mean((xw - t)^2) = 2/B * x^T (xw - t)
        let e: Vec<f64> = (0..2).map(|i| x[i][0] - x[i][1] - t[i]).collect();
        let want: Vec<f64> = (0..2)
            .map(|j| (0..2).map(|i| x[i][j] * e[i]).sum::<f64>())
            .collect();
        assert_eq!(grad.shape, [2, 1]);
        for (got, want) in grad.data.iter().zip(&want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn a_model_without_params_is_an_error() {
        let mut g = Graph::new("objective");
        let x = g.input("x", TensorType::new(DType::F32, []));
        g.set_output(LOSS, x);
        let e = gradient_graph(&g).unwrap_err();
        assert_eq!(e.message, "the model has no trainable params");
    }
}
