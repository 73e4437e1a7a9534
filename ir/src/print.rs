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
//! on how the graph was built or edited.

use crate::graph::{Graph, NodeId};
use crate::op::{Literal, Op, Ties, Window};
use std::collections::HashMap;
use std::fmt::{self, Write};

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = self.topo_order();
        let number: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let num = |n: NodeId| number.get(&n).copied().unwrap_or(usize::MAX);
        writeln!(f, "graph {} {{", Name(&self.name))?;
        for &id in &order {
            let node = self.node(id);
            let mut line = format!("  %{} = {}", num(id), node.op.mnemonic());
            let operands = self.operands(id);
            for (i, o) in operands.iter().enumerate() {
                line.push_str(if i == 0 { " " } else { ", " });
                write!(line, "%{}", num(*o))?;
            }
            write_attrs(&mut line, &node.op)?;
            write!(line, " : {}", node.ty)?;
            if let Some(name) = &node.name {
                write!(line, " @{}", Name(name))?;
            }
            writeln!(f, "{line}")?;
        }
        for o in &self.outputs {
            writeln!(f, "  output {} = %{}", Name(&o.name), num(o.node))?;
        }
        for u in &self.updates {
            writeln!(f, "  update {:?} = %{}", u.target, num(u.value))?;
        }
        writeln!(f, "}}")
    }
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
