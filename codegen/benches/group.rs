//! Recompute or store: the measurements behind `GroupConfig`'s rule for
//! recomputing a shared elementwise value in each loop that reads it.
//!
//! `cargo bench -p nnc-codegen --bench group [-- --quick]`
//!
//! A value `p` of `k` op units (a chain of multiplies and adds by
//! scalars over an input `x` of 2^20 floats, 4 MiB: beyond L2) is read by
//! `r` loops: `p * y` (stored), `sum(p)` and, for three readers, `p + z`
//! (stored). Each case compiles twice: `p` stored (one evaluation per
//! element) and `p` recomputed in every reader (`r` evaluations), both
//! with one result per loop so that only this choice differs. The two
//! programs run in alternating blocks (the machine is shared); the table
//! gives the median step times. Dropout's mask (`random ≥ 0.3`, 9 units)
//! is the last row.

use nnc_codegen::{GroupConfig, Program, StateBuffer, StateLayout};
use nnc_ir::{shape_of, BinaryOp, DType, Graph, NodeId, ReduceOp, TensorType};
use std::collections::HashMap;
use std::time::Instant;

const N: usize = 1 << 20;

fn f32_ty(d: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape_of(d))
}

/// The value: `k` alternating multiplies and adds over `x`, or dropout's
/// mask as 0/1 (`k = 0`).
fn value(g: &mut Graph, x: NodeId, k: usize) -> NodeId {
    if k == 0 {
        let key = g.input("key", TensorType::scalar(DType::I32));
        let u = g.random(key, 3, f32_ty(&[N])).expect("random");
        let p = g.scalar(0.3, DType::F32);
        let keep = g.binary(BinaryOp::Ge, u, p).expect("ge");
        return g.cast(keep, DType::F32).expect("cast");
    }
    let a = g.scalar(0.999, DType::F32);
    let b = g.scalar(0.001, DType::F32);
    let mut v = x;
    for i in 0..k {
        v = if i % 2 == 0 {
            g.mul(v, a).expect("mul")
        } else {
            g.add_(v, b).expect("add")
        };
    }
    v
}

fn graph(k: usize, readers: usize) -> Graph {
    let mut g = Graph::new("recompute");
    let x = g.input("x", f32_ty(&[N]));
    let p = value(&mut g, x, k);
    let y = g.input("y", f32_ty(&[N]));
    let py = g.mul(p, y).expect("mul");
    g.set_output("p*y", py);
    let s = g.reduce(ReduceOp::Sum, p, vec![0], false).expect("sum");
    g.set_output("sum", s);
    if readers > 2 {
        let z = g.input("z", f32_ty(&[N]));
        let pz = g.add_(p, z).expect("add");
        g.set_output("p+z", pz);
    }
    g
}

fn program(g: &Graph, state: &StateBuffer, config: &GroupConfig) -> Program {
    let mut p = Program::compile_with(g, &HashMap::new(), state, config).expect("compile");
    for (_, name) in g.inputs() {
        if name == "key" {
            p.set_input_i32(name, &[42]).expect("key");
        } else {
            let v: Vec<f32> = (0..N).map(|i| (i % 97) as f32 / 97.0).collect();
            p.set_input_f32(name, &v).expect("input");
        }
    }
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (blocks, per) = if quick { (3, 3) } else { (15, 5) };
    let one_loop_each = GroupConfig {
        max_outputs: 1,
        ..GroupConfig::default()
    };
    let store = GroupConfig {
        max_evaluations: 1.0,
        ..one_loop_each.clone()
    };
    let recompute = GroupConfig {
        recompute_ops: u32::MAX,
        ..one_loop_each
    };
    println!("value of k op units over {N} floats, read by r loops: median ms per step");
    println!("    k  r   stored  recomputed  recomputed/stored");
    for readers in [2, 3] {
        for k in [1, 2, 4, 8, 12, 16, 24, 0] {
            let g = graph(k, readers);
            let state = StateBuffer::new(StateLayout::of(&[&g]).expect("layout"));
            let mut programs = [program(&g, &state, &store), program(&g, &state, &recompute)];
            let kernels: Vec<usize> = programs.iter().map(|p| p.kernels().len()).collect();
            let mut times = [Vec::new(), Vec::new()];
            for p in &mut programs {
                p.run().expect("warm-up");
            }
            for _ in 0..blocks {
                for (p, t) in programs.iter_mut().zip(&mut times) {
                    for _ in 0..per {
                        let t0 = Instant::now();
                        p.run().expect("run");
                        t.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            let [s, r] = times.map(median);
            let name = if k == 0 {
                "mask".to_string()
            } else {
                k.to_string()
            };
            println!(
                "{name:>5}  {readers}  {s:7.3}  {r:10.3}  {:17.2}   ({} vs {} kernels)",
                r / s,
                kernels[0],
                kernels[1]
            );
        }
    }
}
