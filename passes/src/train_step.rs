//! The training step as one graph: forward, loss, backward, and the
//! optimizer's update of every param and its state, all written as IR so the
//! optimizer can fuse the update math like anything else.
//!
//! Formulas follow PyTorch's `torch.optim.SGD`, `Adam`, `AdamW`, `RMSprop`
//! and `Adagrad`, and `torch.nn.utils.clip_grad_value_`/`clip_grad_norm_`,
//! so a user comparing runs sees the same trajectories.

use crate::autodiff::gradients;
use crate::PassError;
use nnc_ir::{
    BinaryOp, DType, GradClip, Graph, Init, NodeId, Op, Optimizer, ReduceOp, TensorType, UnaryOp,
    Update, ADAGRAD_LR, ADAGRAD_STEP, ADAMW_DECAY, ADAM_BIAS_CORRECTION2_SQRT, ADAM_STEP_SIZE,
    LEARNING_RATE, LOSS,
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
    build_train_step_with(objective, optimizer, GradClip::default(), &[])
}

/// [`build_train_step`] with the gradients clipped by `clip` first, and no
/// weight decay for the params named in `no_decay`.
pub fn build_train_step_with(
    objective: &Graph,
    optimizer: &Optimizer,
    clip: GradClip,
    no_decay: &[String],
) -> Result<Graph, PassError> {
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
    if let Some(name) = no_decay
        .iter()
        .find(|n| !params.iter().any(|(_, p)| p == *n))
    {
        return Err(PassError::new(format!(
            "`no_decay` names `{name}`, which is not a trainable param"
        )));
    }
    let decay_of = |name: &str, weight_decay: f64| {
        if no_decay.iter().any(|n| n == name) {
            0.0
        } else {
            weight_decay
        }
    };
    let ids: Vec<NodeId> = params.iter().map(|(n, _)| *n).collect();
    let grads = gradients(&mut graph, loss, &ids)?;
    graph.current_span = None;
    let grads = clipped(&mut graph, grads, clip)?;

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
                let g = decayed(&mut graph, *p, g, decay_of(name, weight_decay))?;
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
        }
        | Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => {
            let decoupled = matches!(optimizer, Optimizer::AdamW { .. });
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
            // AdamW's `1 - lr * weight_decay`, one input for every decayed param.
            let mut decay_factor = None;
            for ((p, name), g) in params.iter().zip(grads) {
                let weight_decay = decay_of(name, weight_decay);
                // AdamW: param.mul_(1 - lr * weight_decay) before the update,
                // and the update reads the decayed param.
                let (p_read, g) = if decoupled {
                    if weight_decay == 0.0 {
                        (*p, g)
                    } else {
                        let factor = *decay_factor.get_or_insert_with(|| {
                            graph.input(ADAMW_DECAY, TensorType::scalar(dtype))
                        });
                        (graph.mul(*p, factor)?, g)
                    }
                } else {
                    (*p, decayed(&mut graph, *p, g, weight_decay)?)
                };
                let p = &p_read;
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
        Optimizer::RmsProp {
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            ..
        } => {
            let dtype = graph.ty(ids[0]).dtype;
            let lr = graph.input(LEARNING_RATE, TensorType::scalar(dtype));
            for ((p, name), g) in params.iter().zip(grads) {
                let g = decayed(&mut graph, *p, g, decay_of(name, weight_decay))?;
                let ty = graph.ty(*p).clone();
                let mut state = |slot: &str, value: NodeId| {
                    updates.push(Update {
                        target: format!("{name}.{slot}"),
                        value,
                    });
                };
                // square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                let sq = graph.state(
                    &format!("{name}.rmsprop_square_avg"),
                    ty.clone(),
                    Init::Zeros,
                );
                let a = graph.scalar_like(alpha, sq);
                let scaled_sq = graph.mul(sq, a)?;
                let one_m_a = graph.scalar_like(1.0 - alpha, g);
                let ag = graph.mul(one_m_a, g)?;
                let agg = graph.mul(ag, g)?;
                let sq_new = graph.add_(scaled_sq, agg)?;
                state("rmsprop_square_avg", sq_new);
                let avg = if centered {
                    // grad_avg.lerp_(grad, 1 - alpha);
                    // avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
                    let ga =
                        graph.state(&format!("{name}.rmsprop_grad_avg"), ty.clone(), Init::Zeros);
                    let ga_new = lerp(&mut graph, ga, g, 1.0 - alpha)?;
                    state("rmsprop_grad_avg", ga_new);
                    let ga2 = graph.mul(ga_new, ga_new)?;
                    let var = graph.sub(sq_new, ga2)?;
                    graph.unary(UnaryOp::Sqrt, var)?
                } else {
                    graph.unary(UnaryOp::Sqrt, sq_new)?
                };
                let eps = graph.scalar_like(eps, avg);
                let avg = graph.add_(avg, eps)?;
                let step = if momentum > 0.0 {
                    // buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
                    let buf = graph.state(&format!("{name}.rmsprop_momentum"), ty, Init::Zeros);
                    let mu = graph.scalar_like(momentum, buf);
                    let mb = graph.mul(buf, mu)?;
                    let ratio = graph.div(g, avg)?;
                    let buf_new = graph.add_(mb, ratio)?;
                    state("rmsprop_momentum", buf_new);
                    buf_new
                } else {
                    // param.addcdiv_(grad, avg, value=-lr)
                    graph.div(g, avg)?
                };
                let delta = graph.mul(lr, step)?;
                let p_new = graph.sub(*p, delta)?;
                updates.push(Update {
                    target: name.clone(),
                    value: p_new,
                });
            }
        }
        Optimizer::Adagrad {
            weight_decay,
            initial_accumulator_value,
            eps,
            ..
        } => {
            let dtype = graph.ty(ids[0]).dtype;
            // PyTorch's `state['step']`: only its host-side `clr` reads it,
            // but it must survive a checkpoint for a resumed run's `clr`.
            let t = graph.state(ADAGRAD_STEP, TensorType::scalar(DType::I32), Init::Zeros);
            let one_step = graph.scalar(1.0, DType::I32);
            let t_new = graph.add_(t, one_step)?;
            updates.push(Update {
                target: ADAGRAD_STEP.into(),
                value: t_new,
            });
            let clr = graph.input(ADAGRAD_LR, TensorType::scalar(dtype));
            for ((p, name), g) in params.iter().zip(grads) {
                let g = decayed(&mut graph, *p, g, decay_of(name, weight_decay))?;
                let ty = graph.ty(*p).clone();
                // state_sum.addcmul_(grad, grad, value=1)
                let sum = graph.state(
                    &format!("{name}.adagrad_sum"),
                    ty,
                    Init::Const(initial_accumulator_value),
                );
                let gg = graph.mul(g, g)?;
                let sum_new = graph.add_(sum, gg)?;
                // std = state_sum.sqrt().add_(eps); param.addcdiv_(grad, std, value=-clr)
                let root = graph.unary(UnaryOp::Sqrt, sum_new)?;
                let eps = graph.scalar_like(eps, root);
                let std = graph.add_(root, eps)?;
                let ratio = graph.div(g, std)?;
                let delta = graph.mul(clr, ratio)?;
                let p_new = graph.sub(*p, delta)?;
                updates.push(Update {
                    target: format!("{name}.adagrad_sum"),
                    value: sum_new,
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

/// `start.lerp(end, weight)` as PyTorch computes it: the form switches at
/// weight 0.5 to stay accurate, and `1 - weight` is in the tensor's dtype.
fn lerp(graph: &mut Graph, start: NodeId, end: NodeId, weight: f64) -> Result<NodeId, PassError> {
    let diff = graph.sub(end, start)?;
    let w = graph.scalar_like(weight, start);
    if weight.abs() < 0.5 {
        let wd = graph.mul(w, diff)?;
        Ok(graph.add_(start, wd)?)
    } else {
        let one = graph.scalar_like(1.0, start);
        let one_m_w = graph.sub(one, w)?;
        let dw = graph.mul(diff, one_m_w)?;
        Ok(graph.sub(end, dw)?)
    }
}

/// The gradients after `clip_grad_value_` and then `clip_grad_norm_`
/// (norm type 2), as PyTorch computes them: per-param norms, the norm of
/// those, and every gradient times `min(max_norm / (total + 1e-6), 1)`.
fn clipped(
    graph: &mut Graph,
    grads: Vec<NodeId>,
    clip: GradClip,
) -> Result<Vec<NodeId>, PassError> {
    let mut grads = grads;
    if let Some(v) = clip.value {
        for g in &mut grads {
            // grad.clamp_(min=-v, max=v)
            let low = graph.scalar_like(-v, *g);
            let high = graph.scalar_like(v, *g);
            let floored = graph.binary(BinaryOp::Max, *g, low)?;
            *g = graph.binary(BinaryOp::Min, floored, high)?;
        }
    }
    let Some(max_norm) = clip.norm else {
        return Ok(grads);
    };
    let Some(&first) = grads.first() else {
        return Ok(grads);
    };
    let dtype = graph.ty(first).dtype;
    // norms = [vector_norm(g, 2) for g in grads];
    // total_norm = vector_norm(stack(norms), 2)
    let mut sum_of_squares = None;
    for &g in &grads {
        let gg = graph.mul(g, g)?;
        let rank = graph.ty(gg).rank();
        let ss = if rank == 0 {
            gg
        } else {
            graph.reduce(ReduceOp::Sum, gg, (0..rank).collect(), false)?
        };
        let norm = graph.unary(UnaryOp::Sqrt, ss)?;
        let norm = if graph.ty(norm).dtype == dtype {
            norm
        } else {
            graph.cast(norm, dtype)?
        };
        let squared = graph.mul(norm, norm)?;
        sum_of_squares = Some(match sum_of_squares {
            None => squared,
            Some(acc) => graph.add_(acc, squared)?,
        });
    }
    let total = match sum_of_squares {
        Some(s) => graph.unary(UnaryOp::Sqrt, s)?,
        None => return Ok(grads),
    };
    // clip_coef = max_norm / (total_norm + 1e-6); clamp(clip_coef, max=1.0)
    let tiny = graph.scalar(1e-6, dtype);
    let denom = graph.add_(total, tiny)?;
    let max_norm = graph.scalar(max_norm, dtype);
    let coef = graph.div(max_norm, denom)?;
    let one = graph.scalar(1.0, dtype);
    let coef = graph.binary(BinaryOp::Min, coef, one)?;
    for g in &mut grads {
        let c = if graph.ty(*g).dtype == dtype {
            coef
        } else {
            graph.cast(coef, graph.ty(*g).dtype)?
        };
        *g = graph.mul(*g, c)?;
    }
    Ok(grads)
}
