//! The textual IR: what `nnc compile --emit ir` prints, what snapshot tests
//! compare, and what `text::parse_graph` reads back.
//!
//! ```text
//! graph forward {
//!   %0 = input "image" : f32[B,784]
//!   %1 = param "dense.w" init=xavier_uniform : f32[784,256]
//!   %2 = matmul %0, %1 : f32[B,256] @h
//!   output logits = %2
//! }
//! ```
//! Nodes are numbered in `Graph::topo_order`, so the text does not depend
//! on how the graph was built or edited. A `scan`'s body is written once,
//! as a `body bN ... { }` block at the top of the graph that reads it:
//!
//! ```text
//! graph g {
//!   body b0 consts=0 carries=1 axis=1 reverse=false {
//!     %0 = input "h" : f32[B,4]
//!     %1 = input "x" : f32[B,4]
//!     %2 = add %0, %1 : f32[B,4]
//!     inputs %0, %1
//!     output h = %2
//!   }
//!   ...
//!   %3 = scan %1, %2 body=b0 result=0 : f32[B,4]
//! }
//! ```

use crate::graph::{Graph, NodeId};
use crate::op::{Literal, Op, Ties, Window};
use crate::scan::ScanBody;
use std::collections::HashMap;
use std::fmt::{self, Write};
use std::sync::Arc;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graph {} {{", Name(&self.name))?;
        let mut out = String::new();
        write_contents(&mut out, self, "  ", None)?;
        f.write_str(&out)?;
        writeln!(f, "}}")
    }
}

/// The lines inside a graph's braces: the scan bodies its nodes read (each
/// once, named `b0`, `b1`, ... in the order nodes first read them), the
/// nodes, a body's `inputs` line, outputs and updates.
fn write_contents(
    out: &mut String,
    graph: &Graph,
    indent: &str,
    body_inputs: Option<&[NodeId]>,
) -> fmt::Result {
    let order = graph.topo_order();
    let number: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let num = |n: NodeId| number.get(&n).copied().unwrap_or(usize::MAX);
    let mut bodies: Vec<&Arc<ScanBody>> = Vec::new();
    for &id in &order {
        if let Op::Scan { body, .. } = &graph.node(id).op {
            if !bodies.iter().any(|b| Arc::ptr_eq(b, body)) {
                bodies.push(body);
            }
        }
    }
    for (i, body) in bodies.iter().enumerate() {
        writeln!(
            out,
            "{indent}body b{i} consts={} carries={} axis={} reverse={} {{",
            body.consts, body.carries, body.axis, body.reverse
        )?;
        write_contents(out, &body.graph, &format!("{indent}  "), Some(&body.inputs))?;
        writeln!(out, "{indent}}}")?;
    }
    for &id in &order {
        let node = graph.node(id);
        write!(out, "{indent}%{} = {}", num(id), node.op.mnemonic())?;
        for (i, o) in graph.operands(id).iter().enumerate() {
            out.push_str(if i == 0 { " " } else { ", " });
            write!(out, "%{}", num(*o))?;
        }
        match &node.op {
            Op::Scan { body, result } => {
                let b = bodies.iter().position(|b| Arc::ptr_eq(b, body));
                write!(out, " body=b{} result={result}", b.unwrap_or(usize::MAX))?;
            }
            op => write_attrs(out, op)?,
        }
        write!(out, " : {}", node.ty)?;
        if let Some(name) = &node.name {
            write!(out, " @{}", Name(name))?;
        }
        out.push('\n');
    }
    if let Some(inputs) = body_inputs {
        let refs: Vec<String> = inputs.iter().map(|&i| format!("%{}", num(i))).collect();
        writeln!(out, "{indent}inputs {}", refs.join(", "))?;
    }
    for o in &graph.outputs {
        writeln!(out, "{indent}output {} = %{}", Name(&o.name), num(o.node))?;
    }
    for u in &graph.updates {
        writeln!(out, "{indent}update {:?} = %{}", u.target, num(u.value))?;
    }
    Ok(())
}

/// A graph, output or node name: bare when it reads back as one word,
/// quoted (Rust `{:?}`) otherwise, e.g. the empty name of `Graph::default()`.
struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if crate::text::is_plain_name(self.0) {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

fn write_attrs(line: &mut String, op: &Op) -> fmt::Result {
    let ints = |v: &[usize]| {
        let items: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        format!("[{}]", items.join(","))
    };
    match op {
        Op::Input { name } => write!(line, " {name:?}"),
        Op::Param { name, init } | Op::State { name, init } => {
            write!(line, " {name:?} init={init}")
        }
        Op::Const(Literal::Splat(v)) => write!(line, " {v:?}"),
        Op::Const(Literal::Dense(vs)) => {
            let items: Vec<String> = vs.iter().map(|v| format!("{v:?}")).collect();
            write!(line, " [{}]", items.join(", "))
        }
        Op::Iota { axis } | Op::ArgMax { axis } | Op::Concat { axis } => {
            write!(line, " axis={axis}")
        }
        Op::Gather { axis } | Op::ScatterAdd { axis } => write!(line, " axis={axis}"),
        Op::Reduce {
            axes,
            keepdim,
            ties,
            ..
        } => {
            write!(line, " axes={} keepdim={keepdim}", ints(axes))?;
            // The default is left out, so amax reads as before.
            match ties {
                Ties::Split => Ok(()),
                Ties::First => write!(line, " ties={}", ties.name()),
            }
        }
        Op::Transpose { perm } => write!(line, " perm={}", ints(perm)),
        Op::Slice { axis, start, end } => {
            write!(line, " axis={axis} start={start} end={end}")
        }
        Op::Unfold { window, fill } => {
            write_window(line, window, &ints)?;
            write!(line, " fill={fill:?}")
        }
        Op::Fold { window } => write_window(line, window, &ints),
        Op::Random { stream } => write!(line, " stream={stream}"),
        // Written by `write_contents`, which names the bodies.
        Op::Scan { .. } => Ok(()),
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Select
        | Op::Cast
        | Op::MatMul
        | Op::Reshape
        | Op::Broadcast => Ok(()),
    }
}

fn write_window(line: &mut String, w: &Window, ints: &dyn Fn(&[usize]) -> String) -> fmt::Result {
    write!(
        line,
        " kernel={} stride={} padding={} dilation={}",
        ints(&w.kernel),
        ints(&w.stride),
        ints(&w.padding),
        ints(&w.dilation)
    )
}
