//! Each rule set on small focused graphs: a snapshot of the graph before
//! and after, with the rules that fired, and a check that both compute the
//! same outputs on random inputs (exactly for exact rules, to rounding for
//! the ones that reassociate or drop rounding noise).

use nnc_ir::{
    parse_graph, verify, DType, Dim, EvalOptions, Graph, Init, Optimizer, ReduceOp, Tensor,
    TensorType,
};
use nnc_passes::opt::{optimize, OptLevel, Report};

/// Deterministic values in [-2, 2) (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    }
}

/// An environment for every leaf of `g`: symbolic dims are 3, floats are
/// random, integers are 0 or 1.
fn environment(g: &Graph, seed: u64) -> nnc_ir::Env {
    let mut env = nnc_ir::Env::new();
    let mut rng = Rng(seed);
    for id in g.topo_order() {
        let node = g.node(id);
        let name = match &node.op {
            nnc_ir::Op::Input { name }
            | nnc_ir::Op::Param { name, .. }
            | nnc_ir::Op::State { name, .. } => name.clone(),
            _ => continue,
        };
        let shape: Vec<usize> = node
            .ty
            .shape
            .iter()
            .map(|d| d.as_const().unwrap_or(3))
            .collect();
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| match node.ty.dtype {
                DType::F32 | DType::F64 => rng.next(),
                _ => (rng.next() > 0.0) as i32 as f64,
            })
            .collect();
        env.insert(name, Tensor::from_vec(node.ty.dtype, &shape, data).unwrap());
    }
    env
}

/// Outputs and update values of `g` on `env`.
fn results(g: &Graph, env: &nnc_ir::Env) -> Vec<(String, Tensor)> {
    let values = nnc_ir::eval(g, env, EvalOptions::F32).unwrap();
    let mut out: Vec<(String, Tensor)> = values
        .outputs()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    for (n, t) in nnc_ir::run_updates(g, &values) {
        out.push((format!("update {n}"), t));
    }
    out
}

fn agree(before: &Graph, after: &Graph, rtol: f64) {
    for seed in 0..3 {
        let env = environment(before, seed);
        let (a, b) = (results(before, &env), results(after, &env));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(ta.shape, tb.shape, "{na}");
            for (&x, &y) in ta.data.iter().zip(&tb.data) {
                let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= rtol * x.abs().max(1e-6);
                assert!(same, "{na}: {x} before, {y} after\n{before}\n{after}");
            }
        }
    }
}

/// The snapshot text: the graph before and after, and the rules that fired.
fn story(before: &Graph, after: &Graph, report: &Report) -> String {
    let mut s = format!(
        "before:\n{before}\nafter ({}):\n{after}\nfired:\n",
        report.level
    );
    for (rule, n) in report.fired.iter().filter(|(_, n)| *n > 0) {
        s.push_str(&format!("  {rule} {n}\n"));
    }
    s
}

/// Optimizes the graph in `text` at `level`, checks it, and returns the
/// snapshot text.
fn run(text: &str, level: OptLevel, rtol: f64) -> String {
    let g = parse_graph(text).unwrap();
    verify(&g).unwrap();
    optimized(&g, level, rtol)
}

fn optimized(g: &Graph, level: OptLevel, rtol: f64) -> String {
    let (after, report) = optimize(g, level).unwrap();
    verify(&after).unwrap();
    agree(g, &after, rtol);
    // Deterministic: a second run gives the same graph.
    let (again, _) = optimize(g, level).unwrap();
    assert_eq!(after.to_string(), again.to_string());
    story(g, &after, &report)
}

/// Exact rules must reproduce every bit (up to the sign of zero).
const EXACT: f64 = 0.0;
/// Rules that reassociate sums, or fold in another rounding order.
const ROUNDING: f64 = 1e-5;

#[test]
fn algebra_identities() {
    let text = r#"graph identities {
  %0 = input "x" : f32[4,3]
  %1 = const 1.0 : f32[]
  %2 = mul %0, %1 : f32[4,3]
  %3 = const 0.0 : f32[]
  %4 = add %3, %2 : f32[4,3]
  %5 = sub %4, %3 : f32[4,3]
  %6 = div %5, %1 : f32[4,3]
  %7 = neg %6 : f32[4,3]
  %8 = neg %7 : f32[4,3]
  %9 = sub %3, %8 : f32[4,3] @y
  %10 = input "v" : f32[3]
  %11 = const 1.0 : f32[4,3]
  %12 = mul %10, %11 : f32[4,3] @widened
  %13 = input "c" : bool[4,3]
  %14 = select %13, %10, %10 : f32[4,3]
  output y = %9
  output widened = %12
  output same = %14
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, EXACT));
}

#[test]
fn algebra_constant_folding() {
    let text = r#"graph folding {
  %0 = input "x" : f32[B,3]
  %1 = const 2.0 : f32[]
  %2 = neg %1 : f32[]
  %3 = const 3.0 : f32[]
  %4 = mul %2, %3 : f32[]
  %5 = reshape %4 : f32[1,1]
  %6 = mul %0, %5 : f32[B,3]
  %7 = const [1.0, 2.0, 3.0] : f32[3]
  %8 = const 0.5 : f32[]
  %9 = add %7, %8 : f32[3]
  %10 = add %6, %9 : f32[B,3]
  %11 = const 1.0 : f32[B]
  %12 = exp %11 : f32[B]
  %13 = const [1.0, 2.0, 3.0, 4.0] : f32[2,2]
  %14 = reduce_sum %13 axes=[1] keepdim=false : f32[2]
  output y = %10
  output e = %12
  output s = %14
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, EXACT));
}

/// Arithmetic on a small `iota` folds to one constant (max-pool's window
/// positions), which no loop then recomputes; `iota` read with data stays.
#[test]
fn algebra_constant_folding_of_iota_positions() {
    let text = r#"graph positions {
  %0 = input "x" : f32[B,2,2]
  %1 = iota axis=1 : f32[1,2,1]
  %2 = iota axis=2 : f32[1,1,2]
  %3 = const 2.0 : f32[]
  %4 = mul %1, %3 : f32[1,2,1]
  %5 = add %4, %2 : f32[1,2,2]
  %6 = neg %5 : f32[1,2,2]
  %7 = add %0, %6 : f32[B,2,2]
  %8 = iota axis=0 : f32[3]
  %9 = input "k" : f32[3]
  %10 = eq %8, %9 : bool[3]
  output y = %7
  output m = %10
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, EXACT));
}

#[test]
fn algebra_logs_and_negations() {
    let text = r#"graph logs {
  %0 = input "x" : f32[5]
  %1 = abs %0 : f32[5]
  %2 = log %1 : f32[5]
  %3 = exp %2 : f32[5]
  %4 = log %0 : f32[5]
  %5 = exp %4 : f32[5]
  %6 = const 2.0 : f32[]
  %7 = mul %0, %6 : f32[5]
  %8 = neg %7 : f32[5]
  output kept_positive = %3
  output unknown_sign = %5
  output negated = %8
}"#;
    // `exp(log x)` rounds twice: equal within an ulp or two.
    insta::assert_snapshot!(run(text, OptLevel::O1, 1e-6));
}

#[test]
fn algebra_layout_chains() {
    let text = r#"graph chains {
  %0 = input "x" : f32[2,3,4]
  %1 = transpose %0 perm=[1,2,0] : f32[3,4,2]
  %2 = transpose %1 perm=[2,0,1] : f32[2,3,4]
  %3 = transpose %0 perm=[2,0,1] : f32[4,2,3]
  %4 = transpose %3 perm=[0,2,1] : f32[4,3,2]
  %5 = reshape %0 : f32[6,4]
  %6 = reshape %5 : f32[24]
  %7 = input "s" : f32[1]
  %8 = broadcast %7 : f32[4]
  %9 = broadcast %8 : f32[3,4]
  output identity = %2
  output composed = %4
  output flat = %6
  output wide = %9
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, EXACT));
}

#[test]
fn algebra_reductions() {
    let text = r#"graph reductions {
  %0 = input "x" : f32[2,3,4]
  %1 = reduce_sum %0 axes=[0] keepdim=false : f32[3,4]
  %2 = reduce_sum %1 axes=[1] keepdim=true : f32[3,1]
  %3 = reshape %2 : f32[3]
  %4 = neg %0 : f32[2,3,4]
  %5 = reduce_mean %4 axes=[2] keepdim=false : f32[2,3]
  %6 = reduce_max %0 axes=[2] keepdim=true : f32[2,3,1]
  %7 = reduce_max %6 axes=[0,2] keepdim=false : f32[3]
  output sums = %3
  output neg_mean = %5
  output maxes = %7
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, ROUNDING));
}

#[test]
fn algebra_broadcasting_and_factoring() {
    let text = r#"graph broadcasting {
  %0 = input "x" : f32[B,3]
  %1 = input "b" : f32[3]
  %2 = broadcast %1 : f32[B,3]
  %3 = add %2, %0 : f32[B,3]
  %4 = input "a" : f32[B,3]
  %5 = input "c" : f32[B,3]
  %6 = mul %0, %5 : f32[B,3]
  %7 = mul %4, %5 : f32[B,3]
  %8 = add %6, %7 : f32[B,3]
  output biased = %3
  output factored = %8
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O1, ROUNDING));
}

#[test]
fn layout_views_sink_below_elementwise_ops() {
    let text = r#"graph views {
  %0 = input "x" : f32[2,6]
  %1 = input "y" : f32[2,6]
  %2 = add %0, %1 : f32[2,6]
  %3 = reshape %2 : f32[3,4]
  %4 = exp %3 : f32[3,4]
  %5 = input "s" : f32[3]
  %6 = broadcast %5 : f32[4,3]
  %7 = neg %6 : f32[4,3]
  %8 = transpose %1 perm=[1,0] : f32[6,2]
  %9 = tanh %8 : f32[6,2]
  %10 = reshape %0 : f32[12]
  %11 = reshape %1 : f32[12]
  %12 = mul %10, %11 : f32[12]
  %13 = input "k" : f32[]
  %14 = broadcast %13 : f32[6]
  %15 = reshape %14 : f32[6,1]
  output fused = %4
  output negated = %7
  output transposed = %9
  output product = %12
  output column = %15
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O2, EXACT));
}

#[test]
fn layout_cast_of_a_broadcast_mask() {
    let text = r#"graph masks {
  %0 = input "m" : bool[3]
  %1 = broadcast %0 : bool[4,3]
  %2 = cast %1 : f32[4,3]
  %3 = input "x" : f32[4,3]
  %4 = mul %2, %3 : f32[4,3]
  output masked = %4
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O2, EXACT));
}

#[test]
fn training_relu_mask_from_the_forward_output() {
    let text = r#"graph relu {
  %0 = input "x" : f32[B,4]
  %1 = param "w" init=xavier_uniform : f32[4,3]
  %2 = param "b" init=zeros : f32[3]
  %3 = matmul %0, %1 : f32[B,3]
  %4 = add %3, %2 : f32[B,3]
  %5 = const 0.0 : f32[]
  %6 = max %4, %5 : f32[B,3]
  %7 = input "dy" : f32[B,3]
  %8 = gt %4, %5 : bool[B,3]
  %9 = select %8, %7, %5 : f32[B,3]
  %10 = const 0.0 : f32[B,3]
  %11 = select %8, %10, %5 : f32[B,3]
  output y = %6
  output dx = %9
  output dead = %11
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O2, EXACT));
}

/// A classifier objective as the prelude writes it: dense layer, ReLU,
/// dense layer, softmax cross-entropy of integer labels.
fn classifier() -> Graph {
    let mut g = Graph::new("objective");
    let b = Dim::sym("B");
    let f32_ = |dims: Vec<Dim>| TensorType::new(DType::F32, dims);
    let x = g.input("x", f32_(vec![b.clone(), Dim::Const(4)]));
    let w1 = g.param(
        "w1",
        f32_(vec![Dim::Const(4), Dim::Const(5)]),
        Init::XavierUniform,
    );
    let w2 = g.param(
        "w2",
        f32_(vec![Dim::Const(5), Dim::Const(3)]),
        Init::XavierUniform,
    );
    let h = g.matmul(x, w1).unwrap();
    let zero = g.scalar(0.0, DType::F32);
    let r = g.binary(nnc_ir::BinaryOp::Max, h, zero).unwrap();
    let logits = g.matmul(r, w2).unwrap();
    g.node_mut(logits).name = Some("logits".into());
    let label = g.input("label", TensorType::new(DType::I32, vec![b.clone()]));
    let label2 = g.reshape(label, vec![b.clone(), Dim::Const(1)]).unwrap();
    let classes = g
        .iota(0, TensorType::new(DType::I32, vec![Dim::Const(3)]))
        .unwrap();
    let hit = g.binary(nnc_ir::BinaryOp::Eq, label2, classes).unwrap();
    let onehot = g.cast(hit, DType::F32).unwrap();
    let m = g.reduce(ReduceOp::Max, logits, vec![1], true).unwrap();
    let z = g.sub(logits, m).unwrap();
    let e = g.unary(nnc_ir::UnaryOp::Exp, z).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1], true).unwrap();
    let lse = g.unary(nnc_ir::UnaryOp::Log, s).unwrap();
    let logp = g.sub(z, lse).unwrap();
    let picked = g.mul(onehot, logp).unwrap();
    let per = g.reduce(ReduceOp::Sum, picked, vec![1], false).unwrap();
    let mean = g.reduce(ReduceOp::Mean, per, vec![0], false).unwrap();
    let loss = g.neg(mean).unwrap();
    g.set_output("logits", logits);
    g.set_output("loss", loss);
    verify(&g).unwrap();
    g
}

#[test]
fn training_softmax_cross_entropy_backward() {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let step = nnc_passes::build_train_step(&classifier(), &sgd).unwrap();
    // The dropped path was zero up to rounding.
    let text = optimized(&step, OptLevel::O2, ROUNDING);
    for rule in [
        "training/softmax-gradient-sums-to-zero",
        "training/zero-over-max-count",
        "training/relu-mask-from-output",
    ] {
        assert!(text.contains(rule), "{rule} did not fire:\n{text}");
    }
    insta::assert_snapshot!(text);
}

#[test]
fn every_rule_has_a_doc_and_a_unique_name() {
    let docs = nnc_passes::opt::rule_docs().unwrap();
    let mut names: Vec<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate rule names");
    for (name, doc) in &docs {
        assert!(!doc.is_empty() && !doc.contains('\n'), "{name}: {doc:?}");
        let set = name.split('/').next().unwrap_or_default();
        assert!(
            ["algebra", "layout", "training", "merge"].contains(&set),
            "{name}"
        );
    }
}

#[test]
fn o0_changes_nothing_and_levels_parse() {
    let step = nnc_passes::build_train_step(
        &classifier(),
        &Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let (same, report) = optimize(&step, OptLevel::O0).unwrap();
    assert_eq!(same.to_string(), step.to_string());
    assert!(report.fired.is_empty());
    for (text, level) in [
        ("0", OptLevel::O0),
        ("-O1", OptLevel::O1),
        ("O2", OptLevel::O2),
    ] {
        assert_eq!(text.parse::<OptLevel>().unwrap(), level);
    }
    assert!("3".parse::<OptLevel>().is_err());
    assert_eq!(OptLevel::default(), OptLevel::O2);
}

#[test]
fn an_invalid_graph_is_refused_not_optimized() {
    let mut g = parse_graph(
        r#"graph bad {
  %0 = input "x" : f32[3]
  %1 = neg %0 : f32[3]
  output y = %1
}"#,
    )
    .unwrap();
    // Corrupt the declared type behind the builder's back.
    let id = g.output("y").unwrap();
    g.node_mut(id).ty = TensorType::new(DType::F32, vec![Dim::Const(4)]);
    let err = optimize(&g, OptLevel::O2).unwrap_err();
    assert!(err.message.contains("optimizer input"), "{err}");
}

#[test]
fn a_tiny_node_limit_still_gives_a_valid_equivalent_graph() {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let step = nnc_passes::build_train_step(&classifier(), &sgd).unwrap();
    let mut config = nnc_passes::OptConfig::new(OptLevel::O2);
    config.node_limit = step.len() + 20;
    let (after, report) = nnc_passes::optimize_with(&step, &config).unwrap();
    assert!(
        report.stop_reason.contains("node limit"),
        "{}",
        report.stop_reason
    );
    verify(&after).unwrap();
    agree(&step, &after, ROUNDING);
}

#[test]
fn merge_two_heads_over_one_feature_map_into_one_product() {
    // Two narrow heads read one wide input: one product reads it once.
    let text = r#"graph heads {
  %0 = input "x" : f32[B,512]
  %1 = param "w1" init=xavier_uniform : f32[512,4]
  %2 = param "w2" init=xavier_uniform : f32[512,6]
  %3 = matmul %0, %1 : f32[B,4]
  %4 = matmul %0, %2 : f32[B,6]
  output a = %3
  output b = %4
}"#;
    insta::assert_snapshot!(run(text, OptLevel::O2, EXACT));
}

#[test]
fn merge_is_left_alone_when_the_copies_outweigh_the_shared_read() {
    // Wide weights over a small input: concatenating them every step would
    // copy more than the second read of the input costs.
    let text = r#"graph wide {
  %0 = input "x" : f32[2,64]
  %1 = param "w1" init=xavier_uniform : f32[64,512]
  %2 = param "w2" init=xavier_uniform : f32[64,512]
  %3 = matmul %0, %1 : f32[2,512]
  %4 = matmul %0, %2 : f32[2,512]
  %5 = param "v" init=xavier_uniform : f32[512,8]
  %6 = input "y" : f32[3,512]
  %7 = matmul %6, %5 : f32[3,8]
  output a = %3
  output b = %4
  output c = %7
}"#;
    let story = run(text, OptLevel::O2, EXACT);
    assert!(story.contains("merge/matmul-shared-left"), "{story}");
    assert!(!story.contains("concat"), "{story}");
}
