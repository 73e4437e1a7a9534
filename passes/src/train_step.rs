//! The training step as one graph: forward, loss, backward, and the
//! optimizer's update of every param and its state, all written as IR so the
//! optimizer can fuse the update math like anything else.
//!
//! Formulas follow PyTorch's `torch.optim.SGD` and `torch.optim.Adam`, so a
//! user comparing runs sees the same trajectories.

use crate::autodiff::gradients;
use crate::PassError;
use nnc_ir::{
    DType, Graph, Init, NodeId, Op, Optimizer, TensorType, UnaryOp, Update,
    ADAM_BIAS_CORRECTION2_SQRT, ADAM_STEP_SIZE, LEARNING_RATE, LOSS,
};

/// State names are `<param>.<slot>`; the shared Adam step counter is
/// `adam.step` (defined in `nnc_ir`, which checkpoints also read).
pub use nnc_ir::ADAM_STEP;

/// Builds `train_step` from the objective graph (which has a scalar `loss`
/// output). Every param gets an `update`; optimizer state is `state` leaves.
/// The objective's own updates (a model's running statistics) are kept,
/// first: their values are forward nodes of this step, so like every update
/// they are computed from the values before the step.
pub fn build_train_step(objective: &Graph, optimizer: &Optimizer) -> Result<Graph, PassError> {
    let mut graph = objective.clone();
    graph.name = "train_step".into();
    let model_updates = std::mem::take(&mut graph.updates);
    let loss = graph
        .output(LOSS)
        .ok_or_else(|| PassError::new("the objective has no `loss` output"))?;
    let params: Vec<(NodeId, String)> = graph
        .params()
        .into_iter()
        .map(|(n, name)| (n, name.to_string()))
        .collect();
    if params.is_empty() {
        return Err(PassError::new("the model has no trainable params"));
    }
    // A param belongs to the optimizer: a model update of one would race
    // with the optimizer's.
    if let Some(u) = model_updates
        .iter()
        .find(|u| params.iter().any(|(_, name)| *name == u.target))
    {
        return Err(PassError::new(format!(
            "`{}` is a trainable param, but the model also updates it",
            u.target
        )));
    }
    let ids: Vec<NodeId> = params.iter().map(|(n, _)| *n).collect();
    let grads = gradients(&mut graph, loss, &ids)?;
    graph.current_span = None;

    // The optimizer's state must not take the name of the model's own (a
    // user layer `adam` with a `state step` is `adam.step` too).
    let model_states: Vec<String> = graph
        .topo_order()
        .into_iter()
        .filter_map(|n| match &graph.node(n).op {
            Op::State { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let from_model = model_updates.len();
    let mut updates = model_updates;
    match *optimizer {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
            ..
        } => {
            let dtype = graph.ty(ids[0]).dtype;
            let lr = graph.input(LEARNING_RATE, TensorType::scalar(dtype));
            for ((p, name), g) in params.iter().zip(grads) {
                let g = decayed(&mut graph, *p, g, weight_decay)?;
                let step = if momentum != 0.0 {
                    let ty = graph.ty(*p).clone();
                    let v = graph.state(&format!("{name}.momentum"), ty, Init::Zeros);
                    // v' = momentum * v + g
                    let mu = graph.scalar_like(momentum, v);
                    let mv = graph.mul(mu, v)?;
                    let v_new = graph.add_(mv, g)?;
                    updates.push(Update {
                        target: format!("{name}.momentum"),
                        value: v_new,
                    });
                    if nesterov {
                        let mv = graph.mul(mu, v_new)?;
                        graph.add_(g, mv)?
                    } else {
                        v_new
                    }
                } else {
                    g
                };
                let delta = graph.mul(lr, step)?;
                let p_new = graph.sub(*p, delta)?;
                updates.push(Update {
                    target: name.clone(),
                    value: p_new,
                });
            }
        }
        Optimizer::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => {
            let dtype = graph.ty(ids[0]).dtype;
            let t = graph.state(ADAM_STEP, TensorType::scalar(DType::I32), Init::Zeros);
            let one_step = graph.scalar(1.0, DType::I32);
            let t_new = graph.add_(t, one_step)?;
            updates.push(Update {
                target: ADAM_STEP.into(),
                value: t_new,
            });
            // The scalars that depend on the step count come from the
            // runtime, in f64 (`Optimizer::hyper_inputs`); the rest are
            // constants, f64 rounded once to the params' dtype, as PyTorch
            // applies Python floats to f32 tensors.
            let step_size = graph.input(ADAM_STEP_SIZE, TensorType::scalar(dtype));
            let bc2_sqrt = graph.input(ADAM_BIAS_CORRECTION2_SQRT, TensorType::scalar(dtype));
            let weight = graph.scalar(1.0 - beta1, dtype);
            // `lerp` switches form at weight 0.5 to stay accurate; its
            // `1 - weight` is computed in the tensor's dtype.
            let small_weight = (1.0 - beta1).abs() < 0.5;
            let end_weight = if small_weight {
                weight
            } else {
                let one = graph.scalar(1.0, dtype);
                graph.sub(one, weight)?
            };
            let b2 = graph.scalar(beta2, dtype);
            let one_m_b2 = graph.scalar(1.0 - beta2, dtype);
            let eps = graph.scalar(eps, dtype);
            for ((p, name), g) in params.iter().zip(grads) {
                let g = decayed(&mut graph, *p, g, weight_decay)?;
                let ty = graph.ty(*p).clone();
                let m = graph.state(&format!("{name}.adam_m"), ty.clone(), Init::Zeros);
                let v = graph.state(&format!("{name}.adam_v"), ty, Init::Zeros);
                // exp_avg.lerp_(grad, 1 - beta1)
                let d = graph.sub(g, m)?;
                let m_new = if small_weight {
                    let wd = graph.mul(end_weight, d)?;
                    graph.add_(m, wd)?
                } else {
                    let wd = graph.mul(d, end_weight)?;
                    graph.sub(g, wd)?
                };
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let bv = graph.mul(v, b2)?;
                let scaled = graph.mul(one_m_b2, g)?;
                let gg = graph.mul(scaled, g)?;
                let v_new = graph.add_(bv, gg)?;
                // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
                let root = graph.unary(UnaryOp::Sqrt, v_new)?;
                let corrected = graph.div(root, bc2_sqrt)?;
                let denom = graph.add_(corrected, eps)?;
                // param.addcdiv_(exp_avg, denom, value=-step_size)
                let sm = graph.mul(step_size, m_new)?;
                let delta = graph.div(sm, denom)?;
                let p_new = graph.sub(*p, delta)?;
                updates.push(Update {
                    target: format!("{name}.adam_m"),
                    value: m_new,
                });
                updates.push(Update {
                    target: format!("{name}.adam_v"),
                    value: v_new,
                });
                updates.push(Update {
                    target: name.clone(),
                    value: p_new,
                });
            }
        }
    }
    if let Some(clash) = updates[from_model..]
        .iter()
        .find(|u| model_states.contains(&u.target))
    {
        return Err(PassError::new(format!(
            "the optimizer's state `{}` has the name of a state of the model",
            clash.target
        )));
    }
    graph.updates = updates;
    // Autodiff also builds contributions toward leaves that need none
    // (constants, data inputs); drop what no output or update reads.
    graph.prune();
    Ok(graph)
}

/// L2 weight decay as PyTorch applies it: `g + weight_decay * p`.
fn decayed(
    graph: &mut Graph,
    p: NodeId,
    g: NodeId,
    weight_decay: f64,
) -> Result<NodeId, PassError> {
    if weight_decay == 0.0 {
        return Ok(g);
    }
    let wd = graph.scalar_like(weight_decay, p);
    let decay = graph.mul(wd, p)?;
    Ok(graph.add_(g, decay)?)
}
