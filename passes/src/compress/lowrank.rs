//! Low-rank factorization of product weights: a weight `W` seen as the
//! `rows×cols` matrix it multiplies with is replaced by two factors,
//! `W ≈ U V` with `U: rows×r`, `V: r×cols`, from its truncated SVD
//! (`svd`), the best rank-`r` approximation in the Frobenius norm.
//!
//! ```text
//! dense        x @ w                 →  (x @ u) @ v        w: [in, out]  u: [in, r]  v: [r, out]
//! convolution  reshape(w) @ cols     →  reshape(u) @ (reshape(v) @ cols)
//!              w: [O, C, k...] as [1, O, K]  u: [O, r] as [1, O, r]  v: [r, C, k...] as [1, r, K]
//! ```
//!
//! Why: the product costs `rows·cols` multiply-adds per output position
//! (per sample of a dense layer, per output pixel of a convolution), the
//! factored one `r·(rows + cols)`, so it pays only below
//! `rows·cols / (rows + cols)` ([`Candidate::max_useful_rank`]): up to
//! rank 309 for a `784×512` dense layer, up to 57 for a 3×3 convolution
//! of 64 channels to 64 (`64×576`). The params shrink by the same ratio. A
//! factored convolution is a convolution of `r` filters (`v`, with the
//! original's window) followed by a 1×1 convolution (`u`), so `v` keeps
//! the weight's `[C, k...]` trailing axes and is itself a convolution
//! weight to the other passes (quantization's `sites`). The factors are
//! multiplied in that order because it is the cheap one whenever the
//! factorization pays (`(x @ u) @ v` never forms `U V`).
//!
//! The factors take the singular values evenly (`U √S`, `√S Vᵀ`), so both
//! have the same scale and fine-tuning moves them alike. The choice of
//! rank (given, or [`super::svd::rank_for_energy`]) and of where to apply
//! it are the caller's; fine-tuning is ordinary training of the changed
//! graph: the factors are params like any other, and autodiff sees only
//! matmuls and reshapes.
//!
//! Only convolutions of one group factorize (a grouped weight is a
//! block-diagonal matrix, whose factors would be per group).

use super::svd::svd;
use crate::quantize::rewrite::{sites, Layout, Site};
use crate::PassError;
use nnc_ir::{DType, Dim, Graph, NodeId, Op, Tensor, TensorType};

/// A product weight that can be factorized, as the matrix it multiplies
/// with: `[in, out]` for a dense layer, `[out, c·k…]` for a convolution
/// (its `[out, c, k…]` weight flattened after the first axis; one group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub param: String,
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
}

impl Candidate {
    /// Multiply-adds per output position of the product as it is:
    /// `in·out` (dense), `out·K` (convolution).
    pub fn full_macs(&self) -> usize {
        self.rows * self.cols
    }

    /// Multiply-adds per output position after factorizing at `rank`:
    /// `rank·(rows + cols)`.
    pub fn factored_macs(&self, rank: usize) -> usize {
        rank * (self.rows + self.cols)
    }

    /// The largest rank a factorization may have: `min(rows, cols)`.
    pub fn max_rank(&self) -> usize {
        self.rows.min(self.cols)
    }

    /// The largest rank whose factorization costs strictly fewer
    /// multiply-adds than the product as it is; 0 when none does (a
    /// matrix with a side of 1 or a 2×2 one).
    pub fn max_useful_rank(&self) -> usize {
        let (full, sum) = (self.full_macs(), self.rows + self.cols);
        if full == 0 {
            return 0;
        }
        // r·sum < full  ⇔  r ≤ (full − 1) / sum.
        (full - 1) / sum
    }
}

/// The product weights of `graph` that can be factorized, in topological
/// order: dense and one-group convolution weights, `f32` params read only
/// by their product (quantization's [`sites`]), with constant shapes.
pub fn candidates(graph: &Graph) -> Vec<Candidate> {
    sites(graph)
        .iter()
        .filter_map(|site| candidate(graph, site).ok())
        .collect()
}

/// The candidate of a site, or why it is none.
fn candidate(graph: &Graph, site: &Site) -> Result<Candidate, String> {
    let w = graph
        .find_leaf(&site.weight)
        .ok_or_else(|| format!("no param `{}`", site.weight))?;
    let dims: Option<Vec<usize>> = graph.ty(w).shape.iter().map(Dim::as_const).collect();
    let dims = dims.ok_or_else(|| {
        format!(
            "`{}` has the symbolic shape {}; only a constant one factorizes",
            site.weight,
            graph.ty(w)
        )
    })?;
    let (rows, cols) = match site.layout {
        Layout::Dense => (dims[0], dims[1]),
        Layout::Conv => {
            let (out, k) = (dims[0], dims[1..].iter().product::<usize>());
            let view = &graph.ty(graph.operands(site.matmul)[0]).shape;
            let one = [Dim::Const(1), Dim::Const(out), Dim::Const(k)];
            if view[..] != one {
                let groups = view.first().and_then(Dim::as_const).unwrap_or(0);
                return Err(if groups > 1 {
                    format!(
                        "`{}` is the weight of a grouped convolution ({groups} groups); \
                         only a convolution of one group factorizes",
                        site.weight
                    )
                } else {
                    format!(
                        "`{}` is multiplied as {}, not as the [1, {out}, {k}] of a convolution",
                        site.weight,
                        TensorType::new(DType::F32, view.clone())
                    )
                });
            }
            (out, k)
        }
    };
    Ok(Candidate {
        param: site.weight.clone(),
        layout: site.layout,
        rows,
        cols,
    })
}

/// The factors of the weight `w` at `rank` (see the module docs): its
/// truncated SVD `U S Vᵀ` as `U √S` and `√S Vᵀ`, rounded to `w`'s dtype.
/// Dense (`w: [in, out]`): `u: [in, rank]`, `v: [rank, out]`.
/// Convolution (`w: [O, C, k…]`): `u: [O, rank]`, `v: [rank, C, k…]`
/// (a convolution weight of `rank` filters).
pub fn factor_weights(
    w: &Tensor,
    layout: Layout,
    rank: usize,
) -> Result<(Tensor, Tensor), PassError> {
    let (rows, cols, v_shape) = match (layout, &w.shape[..]) {
        (Layout::Dense, &[rows, cols]) => (rows, cols, vec![rank, cols]),
        (Layout::Conv, [rows, rest @ ..]) if rest.len() >= 2 => {
            let v_shape = std::iter::once(rank).chain(rest.iter().copied()).collect();
            (*rows, rest.iter().product(), v_shape)
        }
        _ => {
            let (kind, want) = match layout {
                Layout::Dense => ("dense", "2"),
                Layout::Conv => ("convolution", "3 or more"),
            };
            return Err(PassError::new(format!(
                "a {kind} weight has rank {want}, this one has shape {:?}",
                w.shape
            )));
        }
    };
    check_rank(rank, rows, cols, "the weight")?;
    if !w.dtype.is_float() {
        return Err(PassError::new(format!(
            "a {} weight cannot be factorized; only a float one",
            w.dtype
        )));
    }
    if w.data.len() != rows * cols {
        return Err(PassError::new(format!(
            "internal error: a weight of shape {:?} holds {} values",
            w.shape,
            w.data.len()
        )));
    }
    if let Some(bad) = w.data.iter().find(|v| !v.is_finite()) {
        return Err(PassError::new(format!(
            "the weight holds {bad}, which cannot be factorized"
        )));
    }
    let d = svd(&w.data, rows, cols);
    let k = d.s.len();
    let root: Vec<f64> = d.s[..rank].iter().map(|s| s.sqrt()).collect();
    let u: Vec<f64> = (0..rows)
        .flat_map(|i| (0..rank).map(move |j| (i, j)))
        .map(|(i, j)| d.u[i * k + j] * root[j])
        .collect();
    let v: Vec<f64> = (0..rank)
        .flat_map(|j| (0..cols).map(move |c| (j, c)))
        .map(|(j, c)| root[j] * d.vt[j * cols + c])
        .collect();
    let tensor = |shape: &[usize], data| {
        Tensor::from_vec(w.dtype, shape, data)
            .map(Tensor::rounded)
            .map_err(|e| PassError::new(format!("internal error: {e}")))
    };
    Ok((tensor(&[rows, rank], u)?, tensor(&v_shape, v)?))
}

/// `rank` is at least 1 and at most the smaller side of the matrix.
fn check_rank(rank: usize, rows: usize, cols: usize, what: &str) -> Result<(), PassError> {
    if rank == 0 {
        return Err(PassError::new(format!(
            "rank 0 for {what}: a factorization needs a rank of at least 1"
        )));
    }
    if rank > rows.min(cols) {
        return Err(PassError::new(format!(
            "rank {rank} is larger than the {rows}×{cols} matrix of {what}"
        )));
    }
    Ok(())
}

/// Replaces the product weight `param` of `graph` by the params
/// `{param}.u` and `{param}.v` of inner size `rank` and rewrites its
/// product (see the module docs); the original param and its view leave
/// the graph. The new params take the original's init (their values come
/// from [`factor_weights`] through a checkpoint) and its span; the new
/// products the product's span, the outer one its name.
///
/// The same call rewrites each of a module's graphs (forward, evaluation,
/// the training objective), which read a weight the same way. Any rank up
/// to the matrix's smaller side is accepted, useful or not
/// ([`Candidate::max_useful_rank`] says which pay).
pub fn factorize(graph: &mut Graph, param: &str, rank: usize) -> Result<(), PassError> {
    let Some(site) = sites(graph).into_iter().find(|s| s.weight == param) else {
        let message = match graph.find_leaf(param).map(|id| &graph.node(id).op) {
            None => format!("no param `{param}` in the graph `{}`", graph.name),
            Some(Op::Param { .. }) => format!(
                "`{param}` is not the weight of a dense layer or a convolution \
                 (an f32 param read only by its product), so it cannot be factorized"
            ),
            Some(_) => format!("`{param}` is not a param, so it cannot be factorized"),
        };
        return Err(PassError::new(message));
    };
    let c = candidate(graph, &site).map_err(PassError::new)?;
    check_rank(rank, c.rows, c.cols, &format!("`{param}`"))?;
    let (u_name, v_name) = (format!("{param}.u"), format!("{param}.v"));
    for name in [&u_name, &v_name] {
        if graph.find_leaf(name).is_some() {
            return Err(PassError::new(format!(
                "`{param}` cannot be factorized: the graph already has a `{name}`"
            )));
        }
    }
    let w = graph
        .find_leaf(param)
        .ok_or_else(|| PassError::new(format!("internal error: no param `{param}`")))?;
    let Op::Param { init, .. } = graph.node(w).op.clone() else {
        return Err(PassError::new("internal error: a site's weight is a param"));
    };
    let w_span = graph.node(w).span;
    let w_dims = graph.ty(w).shape.clone();
    let (matmul_span, matmul_name) = {
        let node = graph.node(site.matmul);
        (node.span, node.name.clone())
    };
    let ty = |dims: &[usize]| TensorType::new(DType::F32, dims.iter().map(|&d| Dim::Const(d)));
    let saved = graph.current_span;
    graph.current_span = matmul_span;
    let built = (|| -> Result<NodeId, PassError> {
        let y = match site.layout {
            Layout::Dense => {
                let u = graph.param(&u_name, ty(&[c.rows, rank]), init.clone());
                let v = graph.param(&v_name, ty(&[rank, c.cols]), init);
                graph.node_mut(u).span = w_span;
                graph.node_mut(v).span = w_span;
                let xu = graph.matmul(site.activation, u)?;
                graph.matmul(xu, v)?
            }
            Layout::Conv => {
                let mut v_dims = w_dims;
                v_dims[0] = Dim::Const(rank);
                let u = graph.param(&u_name, ty(&[c.rows, rank]), init.clone());
                let v = graph.param(&v_name, TensorType::new(DType::F32, v_dims), init);
                graph.node_mut(u).span = w_span;
                graph.node_mut(v).span = w_span;
                let uv = graph.reshape(u, ty(&[1, c.rows, rank]).shape)?;
                let vv = graph.reshape(v, ty(&[1, rank, c.cols]).shape)?;
                let inner = graph.matmul(vv, site.activation)?;
                graph.matmul(uv, inner)?
            }
        };
        Ok(y)
    })();
    graph.current_span = saved;
    let y = built?;
    if graph.ty(y) != graph.ty(site.matmul) {
        return Err(PassError::new(format!(
            "internal error: the factorized product of `{param}` is {}, the product was {}",
            graph.ty(y),
            graph.ty(site.matmul)
        )));
    }
    graph.node_mut(y).name = matmul_name;
    graph.replace_uses(site.matmul, y);
    remove_dead(graph, site.matmul);
    Ok(())
}

/// Removes `id` if nothing reads it (no node, output or update), then the
/// operands that this leaves unread: the old product, the weight's view
/// and the weight, but nothing else the graph holds.
fn remove_dead(graph: &mut Graph, id: NodeId) {
    let mut stack = vec![id];
    while let Some(n) = stack.pop() {
        if !graph.contains(n)
            || !graph.users(n).is_empty()
            || graph.outputs.iter().any(|o| o.node == n)
            || graph.updates.iter().any(|u| u.value == n)
        {
            continue;
        }
        stack.extend(graph.operands(n));
        graph.g.remove_node(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::svd::svd;
    use crate::compress::svd::tests::random;
    use nnc_ir::interp::{eval, Env, EvalOptions};
    use nnc_ir::{shape_of, verify, Init, ReduceOp, UnaryOp, Window, GRADIENT_PREFIX, LOSS};

    fn f32s(dims: &[usize], seed: u64) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(DType::F32, dims, random(n, seed))
            .unwrap()
            .rounded()
    }

    fn f32_ty(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, shape_of(dims))
    }

    /// `y = tanh(x @ d0.w + d0.b) @ d1.w`, `x: [B, 6]`, `d0.w: [6, 5]`,
    /// `d1.w: [5, 3]`, with the values it is evaluated at.
    fn mlp() -> (Graph, Env) {
        let mut g = Graph::new("forward");
        let x = g.input(
            "x",
            TensorType::new(DType::F32, [Dim::sym("B"), Dim::Const(6)]),
        );
        let w0 = g.param("d0.w", f32_ty(&[6, 5]), Init::XavierUniform);
        let b0 = g.param("d0.b", f32_ty(&[5]), Init::Zeros);
        let w1 = g.param("d1.w", f32_ty(&[5, 3]), Init::XavierUniform);
        let h = g.matmul(x, w0).unwrap();
        g.node_mut(h).name = Some("h".into());
        let h = g.add_(h, b0).unwrap();
        let h = g.unary(UnaryOp::Tanh, h).unwrap();
        let y = g.matmul(h, w1).unwrap();
        g.set_output("y", y);
        let env = Env::new()
            .with("x", f32s(&[4, 6], 1))
            .with("d0.w", f32s(&[6, 5], 2))
            .with("d0.b", f32s(&[5], 3))
            .with("d1.w", f32s(&[5, 3], 4));
        (g, env)
    }

    /// A 2-D convolution as the prelude writes it: `x: [B, 4, 5, 5]`,
    /// `c.w: [6, 4 / groups, 3, 3]`, padding 1, output `[B, 6, 5, 5]`.
    fn conv(groups: usize) -> (Graph, Env) {
        let mut g = Graph::new("forward");
        let x = g.input(
            "x",
            TensorType::new(
                DType::F32,
                [Dim::sym("B"), Dim::Const(4), Dim::Const(5), Dim::Const(5)],
            ),
        );
        let window = Window {
            kernel: vec![3, 3],
            stride: vec![1, 1],
            padding: vec![1, 1],
            dilation: vec![1, 1],
        };
        let cols = g.unfold(x, window, 0.0).unwrap();
        let k = 4 / groups * 9;
        let cols = g
            .reshape(
                cols,
                vec![
                    Dim::sym("B"),
                    Dim::Const(groups),
                    Dim::Const(k),
                    Dim::Const(25),
                ],
            )
            .unwrap();
        let w = g.param("c.w", f32_ty(&[6, 4 / groups, 3, 3]), Init::KaimingUniform);
        let wv = g.reshape(w, shape_of(&[groups, 6 / groups, k])).unwrap();
        let y = g.matmul(wv, cols).unwrap();
        let y = g
            .reshape(
                y,
                vec![Dim::sym("B"), Dim::Const(6), Dim::Const(5), Dim::Const(5)],
            )
            .unwrap();
        g.set_output("y", y);
        let env = Env::new()
            .with("x", f32s(&[2, 4, 5, 5], 5))
            .with("c.w", f32s(&[6, 4 / groups, 3, 3], 6));
        (g, env)
    }

    fn output(g: &Graph, env: &Env) -> Tensor {
        let values = eval(g, env, EvalOptions::F32).unwrap();
        values.output("y").unwrap().clone()
    }

    /// Factorizes `param` of `g` at `rank` and returns the factorized
    /// graph's environment (the factors in place of the weight) and the
    /// weight the factors multiply to, `u @ v` in `f64`.
    fn factorized(g: &mut Graph, env: &Env, param: &str, rank: usize) -> (Env, Tensor) {
        let c = candidates(g)
            .into_iter()
            .find(|c| c.param == param)
            .unwrap();
        let w = env.get(param).unwrap();
        let (u, v) = factor_weights(w, c.layout, rank).unwrap();
        factorize(g, param, rank).unwrap();
        verify(g).unwrap();
        assert!(g.find_leaf(param).is_none(), "`{param}` is gone");
        let product: Vec<f64> = (0..c.rows)
            .flat_map(|i| (0..c.cols).map(move |j| (i, j)))
            .map(|(i, j)| {
                (0..rank)
                    .map(|p| u.data[i * rank + p] * v.data[p * c.cols + j])
                    .sum()
            })
            .collect();
        let product = Tensor::from_vec(DType::F32, &w.shape, product)
            .unwrap()
            .rounded();
        let mut env = env.clone();
        env.remove(param);
        env.insert(format!("{param}.u"), u);
        env.insert(format!("{param}.v"), v);
        (env, product)
    }

    /// `‖a − b‖_F`.
    fn distance(a: &Tensor, b: &Tensor) -> f64 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn candidates_are_dense_and_one_group_convolution_weights() {
        let (g, _) = mlp();
        let found = candidates(&g);
        let want = |param: &str, rows, cols| Candidate {
            param: param.into(),
            layout: Layout::Dense,
            rows,
            cols,
        };
        assert_eq!(found, [want("d0.w", 6, 5), want("d1.w", 5, 3)]);
        assert_eq!((found[0].full_macs(), found[0].factored_macs(2)), (30, 22));
        assert_eq!(found[0].max_rank(), 5);
        // 2·11 = 22 < 30 ≤ 3·11.
        assert_eq!(found[0].max_useful_rank(), 2);
        // 15 ≤ 1·8 fails for r = 2: 16 ≥ 15.
        assert_eq!(found[1].max_useful_rank(), 1);
        let (g, _) = conv(1);
        let found = candidates(&g);
        assert_eq!(
            found,
            [Candidate {
                param: "c.w".into(),
                layout: Layout::Conv,
                rows: 6,
                cols: 36,
            }]
        );
        assert_eq!(found[0].max_useful_rank(), 5, "5·42 = 210 < 216 = 6·36");
        assert!(candidates(&conv(2).0).is_empty(), "grouped");
        // No rank pays for a side of 1 or a 2×2 matrix; the largest one does
        // for 784×512 below 784·512 / 1296 = 309.8.
        let of = |rows, cols| Candidate {
            param: "w".into(),
            layout: Layout::Dense,
            rows,
            cols,
        };
        assert_eq!(of(1, 100).max_useful_rank(), 0);
        assert_eq!(of(2, 2).max_useful_rank(), 0);
        assert_eq!(of(3, 3).max_useful_rank(), 1);
        assert_eq!(of(784, 512).max_useful_rank(), 309);
        assert_eq!(of(0, 5).max_useful_rank(), 0);
    }

    #[test]
    fn a_dense_layer_at_full_rank_computes_what_it_did() {
        let (mut g, env) = mlp();
        let before = output(&g, &env);
        let (env, _) = factorized(&mut g, &env, "d0.w", 5);
        let (env, _) = factorized(&mut g, &env, "d1.w", 3);
        assert!(candidates(&g).len() == 4, "the factors are dense weights");
        let after = output(&g, &env);
        assert_eq!(after.shape, before.shape);
        assert!(
            after.max_abs_diff(&before) < 1e-5,
            "{after:?} vs {before:?}"
        );
        // The product keeps its name; the factors have the weight's init.
        let y = g
            .topo_order()
            .into_iter()
            .find(|&n| g.node(n).name.is_some());
        let y = y.unwrap();
        assert_eq!(g.node(y).name.as_deref(), Some("h"));
        assert!(matches!(g.node(y).op, Op::MatMul));
        let u = g.find_leaf("d0.w.u").unwrap();
        assert!(matches!(
            &g.node(u).op,
            Op::Param {
                init: Init::XavierUniform,
                ..
            }
        ));
        assert_eq!(g.ty(u), &f32_ty(&[6, 5]));
        assert_eq!(g.ty(g.find_leaf("d0.w.v").unwrap()), &f32_ty(&[5, 5]));
    }

    #[test]
    fn a_dense_layer_at_lower_rank_loses_the_truncated_singular_values() {
        let (mut g, env) = mlp();
        let w = env.get("d0.w").unwrap().clone();
        let s = svd(&w.data, 6, 5).s;
        for rank in 1..5 {
            let mut g = g.clone();
            let (factored_env, product) = factorized(&mut g, &env, "d0.w", rank);
            // ‖W − U V‖_F = √(Σ_{i ≥ r} sᵢ²) (Eckart–Young), up to the
            // factors' f32 rounding.
            let truncated: f64 = s[rank..].iter().map(|v| v * v).sum::<f64>().sqrt();
            let lost = distance(&w, &product);
            assert!(
                (lost - truncated).abs() < 1e-5,
                "rank {rank}: {lost} vs {truncated}"
            );
            // The graph computes the original with the rank-r weight.
            let mut truncated_env = env.clone();
            truncated_env.insert("d0.w", product.clone());
            let want = output(&mlp().0, &truncated_env);
            let got = output(&g, &factored_env);
            assert!(got.max_abs_diff(&want) < 1e-5, "rank {rank}");
        }
        // Which differs from the full-rank output.
        let before = output(&g, &env);
        let (env, _) = factorized(&mut g, &env, "d0.w", 1);
        assert!(output(&g, &env).max_abs_diff(&before) > 1e-2);
    }

    #[test]
    fn a_convolution_factorizes_into_two_convolutions() {
        let (g, env) = conv(1);
        let before = output(&g, &env);
        let w = env.get("c.w").unwrap().clone();
        let s = svd(&w.data, 6, 36).s;
        for rank in [6, 4, 1] {
            let mut g = g.clone();
            let (factored_env, product) = factorized(&mut g, &env, "c.w", rank);
            assert_eq!(g.ty(g.find_leaf("c.w.u").unwrap()), &f32_ty(&[6, rank]));
            let v = g.find_leaf("c.w.v").unwrap();
            assert_eq!(g.ty(v), &f32_ty(&[rank, 4, 3, 3]));
            // `v` is a convolution weight of `rank` filters now.
            let found = candidates(&g);
            assert_eq!(found.len(), 1);
            assert_eq!((found[0].param.as_str(), found[0].rows), ("c.w.v", rank));
            let truncated: f64 = s[rank..].iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((distance(&w, &product) - truncated).abs() < 1e-5);
            let mut truncated_env = env.clone();
            truncated_env.insert("c.w", product);
            let want = output(&conv(1).0, &truncated_env);
            let got = output(&g, &factored_env);
            assert_eq!(got.shape, [2, 6, 5, 5]);
            assert!(got.max_abs_diff(&want) < 1e-5, "rank {rank}");
            if rank == 6 {
                assert!(got.max_abs_diff(&before) < 1e-5, "full rank");
            }
        }
    }

    /// Central differences (`EXACT` evaluation) of the scalar output `loss`
    /// of `g` against the gradients `crate::gradients` appends.
    fn gradcheck(g: &Graph, env: &Env, params: &[&str]) {
        let loss = g.output(LOSS).unwrap();
        let mut full = g.clone();
        let ids: Vec<NodeId> = params.iter().map(|p| g.find_leaf(p).unwrap()).collect();
        let grads = crate::gradients(&mut full, loss, &ids).unwrap();
        for (p, &id) in params.iter().zip(&grads) {
            full.set_output(format!("{GRADIENT_PREFIX}{p}"), id);
        }
        verify(&full).unwrap();
        let values = eval(&full, env, EvalOptions::EXACT).unwrap();
        let f = |env: &Env| {
            let v = eval(g, env, EvalOptions::EXACT).unwrap();
            v.output(LOSS).unwrap().item().unwrap()
        };
        let h = 1e-6;
        let mut env = env.clone();
        for p in params {
            let analytic = values.output(&format!("{GRADIENT_PREFIX}{p}")).unwrap();
            let x0 = env.get(p).unwrap().clone();
            assert_eq!(analytic.shape, x0.shape);
            let mut largest = 0.0f64;
            for i in 0..x0.data.len() {
                env.get_mut(p).unwrap().data[i] = x0.data[i] + h;
                let plus = f(&env);
                env.get_mut(p).unwrap().data[i] = x0.data[i] - h;
                let minus = f(&env);
                env.get_mut(p).unwrap().data[i] = x0.data[i];
                let numeric = (plus - minus) / (2.0 * h);
                let a = analytic.data[i];
                largest = largest.max(numeric.abs());
                assert!(
                    (a - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "{p}[{i}]: analytic {a}, numeric {numeric}"
                );
            }
            assert!(largest > 1e-3, "the gradient of `{p}` checks nothing");
        }
    }

    /// `loss = sum(y · r)` for a fixed random `r` of `y`'s shape.
    fn with_loss(mut g: Graph, mut env: Env, shape: &[usize]) -> (Graph, Env) {
        let y = g.output("y").unwrap();
        let ty = g.ty(y).clone();
        let r = g.input("r", ty.clone());
        let yr = g.mul(y, r).unwrap();
        let loss = g
            .reduce(ReduceOp::Sum, yr, (0..ty.rank()).collect(), false)
            .unwrap();
        g.set_output(LOSS, loss);
        env.insert("r", f32s(shape, 99));
        (g, env)
    }

    #[test]
    fn the_factors_have_gradients() {
        let (g, env) = mlp();
        let (mut g, env) = with_loss(g, env, &[4, 3]);
        let (env, _) = factorized(&mut g, &env, "d0.w", 3);
        gradcheck(&g, &env, &["d0.w.u", "d0.w.v", "d0.b", "d1.w"]);

        let (g, env) = conv(1);
        let (mut g, env) = with_loss(g, env, &[2, 6, 5, 5]);
        let (env, _) = factorized(&mut g, &env, "c.w", 2);
        gradcheck(&g, &env, &["c.w.u", "c.w.v"]);
    }

    #[test]
    fn a_training_objective_factorizes_and_trains_its_factors() {
        // The objective reads the weight as the forward graph does.
        let (g, env) = mlp();
        let (mut g, env) = with_loss(g, env, &[4, 3]);
        g.name = "objective".into();
        g.outputs.retain(|o| o.name == LOSS);
        factorize(&mut g, "d1.w", 2).unwrap();
        let grads = crate::gradient_graph(&g).unwrap();
        let mut names: Vec<&str> = grads.outputs.iter().map(|o| o.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "grad.d0.b",
                "grad.d0.w",
                "grad.d1.w.u",
                "grad.d1.w.v",
                "loss"
            ]
        );
        let (u, v) = factor_weights(env.get("d1.w").unwrap(), Layout::Dense, 2).unwrap();
        let env = env.with("d1.w.u", u).with("d1.w.v", v);
        let values = eval(&grads, &env, EvalOptions::F32).unwrap();
        assert_eq!(values.output("grad.d1.w.u").unwrap().shape, [5, 2]);
    }

    #[test]
    fn factorizing_what_cannot_be_is_an_error() {
        let err = |g: &mut Graph, param: &str, rank| factorize(g, param, rank).unwrap_err().message;
        let (mut g, _) = mlp();
        let original = format!("{g}");
        assert_eq!(
            err(&mut g, "d9.w", 2),
            "no param `d9.w` in the graph `forward`"
        );
        assert!(
            err(&mut g, "d0.b", 2).contains("`d0.b` is not the weight of a dense layer"),
            "a bias"
        );
        assert!(err(&mut g, "x", 2).contains("`x` is not a param"));
        assert_eq!(
            err(&mut g, "d0.w", 0),
            "rank 0 for `d0.w`: a factorization needs a rank of at least 1"
        );
        assert_eq!(
            err(&mut g, "d0.w", 6),
            "rank 6 is larger than the 6×5 matrix of `d0.w`"
        );
        assert_eq!(format!("{g}"), original, "errors leave the graph as it was");
        let mut g = Graph::new("forward");
        let x = g.input("x", f32_ty(&[2, 784]));
        let w = g.param("dense_0.w", f32_ty(&[784, 512]), Init::Zeros);
        let y = g.matmul(x, w).unwrap();
        g.set_output("y", y);
        assert_eq!(
            err(&mut g, "dense_0.w", 600),
            "rank 600 is larger than the 784×512 matrix of `dense_0.w`"
        );
        // A weight read twice (tied, or by a penalty) is no candidate.
        let sq = g.mul(w, w).unwrap();
        g.set_output("penalty", sq);
        assert!(err(&mut g, "dense_0.w", 2).contains("is not the weight"));
        let (mut g, _) = conv(2);
        assert!(err(&mut g, "c.w", 2).contains("grouped convolution (2 groups)"));
        // A factor's name taken.
        let (mut g, _) = mlp();
        g.param("d0.w.u", f32_ty(&[1]), Init::Zeros);
        assert!(err(&mut g, "d0.w", 2).contains("already has a `d0.w.u`"));

        let w = f32s(&[3, 2], 1);
        let e = |w: &Tensor, layout, rank| factor_weights(w, layout, rank).unwrap_err().message;
        assert!(e(&w, Layout::Dense, 3).contains("rank 3 is larger than the 3×2 matrix"));
        assert!(e(&w, Layout::Dense, 0).contains("at least 1"));
        assert!(e(&w, Layout::Conv, 1).contains("has rank 3 or more"));
        let nan = Tensor::from_vec(DType::F32, &[2, 2], vec![1.0, f64::NAN, 0.0, 1.0]).unwrap();
        assert!(e(&nan, Layout::Dense, 1).contains("NaN"));
    }

    /// `examples/lenet.nn`'s objective as `nnc compile --emit ir` prints it:
    /// the prelude's `conv2d` and `dense` as the elaborator writes them.
    const LENET: &str = r#"graph objective {
  %0 = input "image" : f32[B,1,28,28]
  %1 = unfold %0 kernel=[5,5] stride=[1,1] padding=[2,2] dilation=[1,1] fill=0.0 : f32[B,1,5,5,28,28] @cols
  %2 = param "conv2d.w" init=kaiming_uniform : f32[6,1,5,5]
  %3 = reshape %2 : f32[1,6,25]
  %4 = reshape %1 : f32[B,1,25,784]
  %5 = matmul %3, %4 : f32[B,1,6,784] @y
  %6 = reshape %5 : f32[B,6,28,28] @y
  %7 = param "conv2d.b" init=zeros : f32[6]
  %8 = reshape %7 : f32[6,1,1]
  %9 = add %6, %8 : f32[B,6,28,28]
  %10 = const 0.0 : f32[]
  %11 = max %9, %10 : f32[B,6,28,28]
  %12 = unfold %11 kernel=[2,2] stride=[2,2] padding=[0,0] dilation=[1,1] fill=-inf : f32[B,6,2,2,14,14] @cols
  %13 = reduce_max %12 axes=[2,3] keepdim=false ties=first : f32[B,6,14,14]
  %14 = unfold %13 kernel=[5,5] stride=[1,1] padding=[0,0] dilation=[1,1] fill=0.0 : f32[B,6,5,5,10,10] @cols
  %15 = param "conv2d_1.w" init=kaiming_uniform : f32[16,6,5,5]
  %16 = reshape %15 : f32[1,16,150]
  %17 = reshape %14 : f32[B,1,150,100]
  %18 = matmul %16, %17 : f32[B,1,16,100] @y
  %19 = reshape %18 : f32[B,16,10,10] @y
  %20 = param "conv2d_1.b" init=zeros : f32[16]
  %21 = reshape %20 : f32[16,1,1]
  %22 = add %19, %21 : f32[B,16,10,10]
  %23 = const 0.0 : f32[]
  %24 = max %22, %23 : f32[B,16,10,10]
  %25 = unfold %24 kernel=[2,2] stride=[2,2] padding=[0,0] dilation=[1,1] fill=-inf : f32[B,16,2,2,5,5] @cols
  %26 = reduce_max %25 axes=[2,3] keepdim=false ties=first : f32[B,16,5,5]
  %27 = reshape %26 : f32[B,400]
  %28 = param "dense.w" init=xavier_uniform : f32[400,120]
  %29 = param "dense.b" init=zeros : f32[120]
  %30 = matmul %27, %28 : f32[B,120]
  %31 = add %30, %29 : f32[B,120]
  %32 = const 0.0 : f32[]
  %33 = max %31, %32 : f32[B,120]
  %34 = param "dense_1.w" init=xavier_uniform : f32[120,84]
  %35 = param "dense_1.b" init=zeros : f32[84]
  %36 = matmul %33, %34 : f32[B,84]
  %37 = add %36, %35 : f32[B,84]
  %38 = const 0.0 : f32[]
  %39 = max %37, %38 : f32[B,84]
  %40 = param "dense_2.w" init=xavier_uniform : f32[84,10]
  %41 = param "dense_2.b" init=zeros : f32[10]
  %42 = matmul %39, %40 : f32[B,10]
  %43 = add %42, %41 : f32[B,10] @logits
  %44 = input "label" : i32[B]
  %45 = reshape %44 : i32[B,1]
  %46 = iota axis=0 : i32[10]
  %47 = eq %45, %46 : bool[B,10]
  %48 = cast %47 : f32[B,10]
  %49 = reduce_max %43 axes=[1] keepdim=true : f32[B,1]
  %50 = sub %43, %49 : f32[B,10] @z
  %51 = exp %50 : f32[B,10]
  %52 = reduce_sum %51 axes=[1] keepdim=true : f32[B,1]
  %53 = log %52 : f32[B,1]
  %54 = sub %50, %53 : f32[B,10]
  %55 = mul %48, %54 : f32[B,10]
  %56 = reduce_sum %55 axes=[1] keepdim=false : f32[B]
  %57 = reduce_mean %56 axes=[0] keepdim=false : f32[]
  %58 = neg %57 : f32[]
  %59 = argmax %43 axis=1 : i32[B]
  %60 = eq %59, %44 : bool[B]
  %61 = cast %60 : f32[B]
  %62 = reduce_mean %61 axes=[0] keepdim=false : f32[]
  output logits = %43
  output loss = %58
  output accuracy = %62
}
"#;

    #[test]
    fn every_weight_of_lenet_factorizes() {
        let objective = nnc_ir::text::parse_graph(LENET).unwrap();
        let found = candidates(&objective);
        let shapes: Vec<(&str, usize, usize, usize)> = found
            .iter()
            .map(|c| (c.param.as_str(), c.rows, c.cols, c.max_useful_rank()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("conv2d.w", 6, 25, 4),
                ("conv2d_1.w", 16, 150, 14),
                ("dense.w", 400, 120, 92),
                ("dense_1.w", 120, 84, 49),
                ("dense_2.w", 84, 10, 8),
            ]
        );
        // Values for every param and a batch of two images.
        let mut env = Env::new().with("image", f32s(&[2, 1, 28, 28], 7)).with(
            "label",
            Tensor::from_vec(DType::I32, &[2], vec![3.0, 8.0]).unwrap(),
        );
        for (id, name) in objective.params() {
            let dims: Vec<usize> = objective
                .ty(id)
                .shape
                .iter()
                .filter_map(Dim::as_const)
                .collect();
            let Op::Param { init, .. } = &objective.node(id).op else {
                unreachable!()
            };
            env.insert(name, nnc_ir::initialize(init, &dims, DType::F32, 1, name));
        }
        let logits = |g: &Graph, env: &Env| {
            let values = eval(g, env, EvalOptions::F32).unwrap();
            values.output("logits").unwrap().clone()
        };
        let before = logits(&objective, &env);
        // At full rank, every layer computes what it did.
        let mut full = objective.clone();
        let mut full_env = env.clone();
        for c in &found {
            let (u, v) =
                factor_weights(env.get(&c.param).unwrap(), c.layout, c.max_rank()).unwrap();
            factorize(&mut full, &c.param, c.max_rank()).unwrap();
            full_env.remove(&c.param);
            full_env.insert(format!("{}.u", c.param), u);
            full_env.insert(format!("{}.v", c.param), v);
        }
        verify(&full).unwrap();
        let after = logits(&full, &full_env);
        assert!(
            after.max_abs_diff(&before) < 1e-4,
            "{after:?} vs {before:?}"
        );
        // At the largest useful ranks, the factors train.
        let mut g = objective.clone();
        for c in &found {
            factorize(&mut g, &c.param, c.max_useful_rank()).unwrap();
        }
        verify(&g).unwrap();
        let grads = crate::gradient_graph(&g).unwrap();
        for c in &found {
            assert!(grads.output(&format!("grad.{}.u", c.param)).is_some());
            assert!(grads.output(&format!("grad.{}.v", c.param)).is_some());
            assert!(grads.output(&format!("grad.{}", c.param)).is_none());
        }
        // Each convolution's `v` is a convolution weight; each dense
        // layer's factors are dense weights.
        let again: Vec<String> = candidates(&g).into_iter().map(|c| c.param).collect();
        assert_eq!(
            again,
            [
                "conv2d.w.v",
                "conv2d_1.w.v",
                "dense.w.u",
                "dense.w.v",
                "dense_1.w.u",
                "dense_1.w.v",
                "dense_2.w.u",
                "dense_2.w.v"
            ]
        );
    }
}
