//! The `scan` statement: a loop over a sequence axis, elaborated into one
//! `nnc_ir` scan whose body is a graph of its own.
//!
//! The body is elaborated once, into a fresh graph swapped in for the
//! enclosing one: `each` operands become slice inputs, the other operands
//! carry inputs, and tensors of the enclosing scope that the body names
//! become const inputs (captures). Operands and captures the body never
//! reads are dropped, so a prelude layer can pass a mask it only reads
//! when one is given.

use crate::ast::{self, Arg, Expr, ExprKind, ScanOperand, Stmt};
use crate::elaborate::{Elaborator, Result, Scope};
use crate::error::did_you_mean;
use crate::span::Span;
use crate::value::Value;
use nnc_ir::{Dim, Graph, NodeId, ScanBody};

/// What the statements of a scan body need to know about their loop.
pub(crate) struct ScanFrame {
    /// The layer-call depth of the body: statements of a layer called from
    /// the body are not the body's own (their `h = ...` is no carry).
    pub depth: usize,
    pub carries: Vec<String>,
    pub sequences: Vec<String>,
    /// Where each carry was last rebound, for a carry whose type changes.
    pub rebound: Vec<Option<Span>>,
    pub yields: Vec<(String, NodeId, Span)>,
}

/// Options of a scan: the sequence axis and the direction.
struct Options {
    axis: usize,
    reverse: bool,
}

impl<'a> Elaborator<'a> {
    /// The innermost scan whose body is being elaborated at this call depth.
    pub(crate) fn own_scan(&mut self) -> Option<&mut ScanFrame> {
        let depth = self.call_depth();
        self.scans.last_mut().filter(|f| f.depth == depth)
    }

    /// Whether the graph being built is a scan body (params, state and
    /// random numbers cannot live there).
    pub(crate) fn in_scan(&self) -> bool {
        !self.scans.is_empty()
    }

    /// `yield NAME = EXPR`.
    pub(crate) fn yield_stmt(
        &mut self,
        scope: &Scope,
        name: &ast::Ident,
        value: &Expr,
        span: Span,
    ) -> Result<()> {
        if self.own_scan().is_none() {
            return Err(self.err(span, "`yield` outside a `scan` body").with_help(
                "`yield NAME = EXPR` gives a per-step output of the `scan` it is written in",
            ));
        }
        let v = self.eval(scope, value)?;
        let t = self.tensor(v, value.span, &format!("the yield `{}`", name.name))?;
        let prev = self
            .own_scan()
            .and_then(|f| f.yields.iter().find(|y| y.0 == name.name).map(|y| y.2));
        if let Some(prev) = prev {
            return Err(self
                .err(name.span, format!("`{}` is yielded twice", name.name))
                .with_label("second yield")
                .with_secondary(prev, "first yielded here")
                .with_help(
                    "each `yield` names one stacked output; give the second one another name",
                ));
        }
        if let Some(f) = self.own_scan() {
            f.yields.push((name.name.clone(), t, name.span));
        }
        Ok(())
    }

    /// Called for every `let` in a body: rebinding a carry gives its next
    /// value; a sequence's slice cannot be rebound.
    pub(crate) fn check_rebinding(&mut self, name: &ast::Ident, span: Span) -> Result<()> {
        let Some(frame) = self.own_scan() else {
            return Ok(());
        };
        if frame.sequences.contains(&name.name) {
            return Err(self
                .err(
                    name.span,
                    format!(
                        "`{}` is this step's slice of a sequence; it cannot be rebound",
                        name.name
                    ),
                )
                .with_help("bind the computed value to a new name"));
        }
        if let Some(k) = frame.carries.iter().position(|c| *c == name.name) {
            frame.rebound[k] = Some(span);
        }
        Ok(())
    }

    fn scan_options(&mut self, scope: &Scope, options: &[Arg]) -> Result<Options> {
        let mut out = Options {
            axis: 1,
            reverse: false,
        };
        for o in options {
            let Some(key) = &o.name else { continue };
            let v = self.eval(scope, &o.value)?;
            match (key.name.as_str(), v) {
                ("axis", Value::Int(a)) if a >= 0 => out.axis = a as usize,
                ("axis", other) => {
                    return Err(self
                        .err(
                            o.value.span,
                            format!(
                                "`axis` of `scan` must be a non-negative int, found {}",
                                other.kind()
                            ),
                        )
                        .with_label("the sequence axis, counted from the first"))
                }
                ("reverse", Value::Bool(r)) => out.reverse = r,
                ("reverse", other) => {
                    return Err(self.err(
                        o.value.span,
                        format!("`reverse` of `scan` must be a bool, found {}", other.kind()),
                    ))
                }
                (other, _) => {
                    let mut err = self
                        .err(key.span, format!("unknown option `{other}` of `scan`"))
                        .with_label("not an option")
                        .with_note("`scan` has the options `axis:` (default 1) and `reverse:` (default false)");
                    if let Some(h) = did_you_mean(other, ["axis", "reverse"]) {
                        err = err.with_help(h);
                    }
                    return Err(err);
                }
            }
        }
        Ok(out)
    }

    /// `scan(...) { ... }`: elaborates the body into its own graph, adds the
    /// loop to the enclosing graph and binds the final carries and the
    /// stacked yields in `scope`.
    pub(crate) fn scan_stmt(
        &mut self,
        scope: &mut Scope,
        operands: &[ScanOperand],
        options: &[Arg],
        body: &[Stmt],
        span: Span,
    ) -> Result<()> {
        let opts = self.scan_options(scope, options)?;
        for (i, o) in operands.iter().enumerate() {
            if let Some(prev) = operands[..i].iter().find(|p| p.name.name == o.name.name) {
                return Err(self
                    .err(
                        o.name.span,
                        format!("`{}` is bound twice in this `scan`", o.name.name),
                    )
                    .with_secondary(self.user_span(prev.name.span), "first bound here"));
            }
        }
        // Operands, evaluated in the enclosing scope.
        let mut carries: Vec<(&ScanOperand, NodeId)> = Vec::new();
        let mut seqs: Vec<(&ScanOperand, NodeId)> = Vec::new();
        for o in operands {
            let v = self.eval(scope, &o.value)?;
            let what = if o.each {
                format!("the sequence `{}`", o.name.name)
            } else {
                format!("the initial value of the carry `{}`", o.name.name)
            };
            let t = self.tensor(v, o.value.span, &what)?;
            if o.each {
                seqs.push((o, t));
            } else {
                carries.push((o, t));
            }
        }
        if seqs.is_empty() {
            return Err(self
                .err(span, "a `scan` needs at least one sequence")
                .with_label("no `each(...)` operand")
                .with_help("mark the sequence to loop over with `each`: `scan(x = each(xs), h = h0) { ... }`"));
        }
        let mut trip: Option<(Dim, &ScanOperand)> = None;
        for &(o, t) in &seqs {
            let ty = self.graph.ty(t).clone();
            let Some(len) = ty.shape.get(opts.axis).cloned() else {
                return Err(self
                    .err(
                        o.value.span,
                        format!(
                            "the sequence `{}` is {ty}, which has no axis {}",
                            o.name.name, opts.axis
                        ),
                    )
                    .with_label(format!("rank {}", ty.rank()))
                    .with_help(format!(
                        "`scan` steps along `axis: {}`, so a sequence needs at least {} dims",
                        opts.axis,
                        opts.axis + 1
                    )));
            };
            match &trip {
                None => trip = Some((len, o)),
                Some((first, first_op)) if *first != len => {
                    return Err(self
                        .err(
                            o.value.span,
                            format!(
                                "sequences of different lengths: `{}` has {len} steps, `{}` has {first}",
                                o.name.name, first_op.name.name
                            ),
                        )
                        .with_label(format!("{len} steps along axis {}", opts.axis))
                        .with_secondary(
                            self.user_span(first_op.value.span),
                            format!("{first} steps"),
                        ))
                }
                Some(_) => {}
            }
        }

        // Captures: enclosing tensors the body names, in order of first use.
        let mut names = Vec::new();
        for s in body {
            stmt_idents(s, &mut names);
        }
        let operand_names: Vec<&str> = operands.iter().map(|o| o.name.name.as_str()).collect();
        let mut captured: Vec<(String, NodeId)> = Vec::new();
        let mut body_scope = Scope::default();
        for (name, v) in scope.entries() {
            if operand_names.contains(&name) {
                continue;
            }
            match v {
                Value::Tensor(_) | Value::Pending(_) => {}
                Value::List(items) if items.iter().any(holds_tensor) => {}
                other => body_scope.bind(name, other.clone()),
            }
        }
        for name in names {
            if operand_names.contains(&name) || captured.iter().any(|c| c.0 == name) {
                continue;
            }
            if let Some(v @ (Value::Tensor(_) | Value::Pending(_))) = scope.get(name).cloned() {
                let t = self.tensor(v, span, &format!("`{name}`"))?;
                captured.push((name.to_string(), t));
            }
        }

        // The body, in a graph of its own.
        let outer = std::mem::replace(&mut self.graph, Graph::new("scan_body"));
        let outer_span = outer.current_span;
        self.graph.current_span = outer_span;
        let mut inputs = Vec::new();
        for (name, t) in &captured {
            let ty = outer.ty(*t).clone();
            let i = self.graph.input(name, ty);
            inputs.push(i);
            body_scope.bind(name, Value::Tensor(i));
        }
        for (o, t) in &carries {
            let ty = outer.ty(*t).clone();
            let i = self.graph.input(&o.name.name, ty);
            inputs.push(i);
            body_scope.bind(&o.name.name, Value::Tensor(i));
        }
        for (o, t) in &seqs {
            let mut ty = outer.ty(*t).clone();
            ty.shape.remove(opts.axis);
            let i = self.graph.input(&o.name.name, ty);
            inputs.push(i);
            body_scope.bind(&o.name.name, Value::Tensor(i));
        }
        let depth = self.call_depth();
        self.scans.push(ScanFrame {
            depth,
            carries: carries.iter().map(|(o, _)| o.name.name.clone()).collect(),
            sequences: seqs.iter().map(|(o, _)| o.name.name.clone()).collect(),
            rebound: vec![None; carries.len()],
            yields: Vec::new(),
        });
        let ran = self.run_scan_body(&mut body_scope, body);
        let frame = self.scans.pop();
        let body_graph = std::mem::replace(&mut self.graph, outer);
        ran?;
        let Some(frame) = frame else {
            return Err(self.err(span, "internal error: the scan lost its frame"));
        };
        self.finish_scan(
            scope,
            ScanParts {
                graph: body_graph,
                body_scope,
                inputs,
                captured,
                carries,
                seqs,
                frame,
                opts,
                span,
            },
        )
    }

    fn run_scan_body(&mut self, scope: &mut Scope, body: &[Stmt]) -> Result<()> {
        for stmt in body {
            match stmt {
                Stmt::Param { span, name, .. } | Stmt::State { span, name, .. } => {
                    let word = if matches!(stmt, Stmt::Param { .. }) {
                        "param"
                    } else {
                        "state"
                    };
                    return Err(self
                        .err(*span, format!("{word} `{}` is declared inside a `scan` body", name.name))
                        .with_label("declared once per step")
                        .with_help(format!(
                            "declare it before the `scan`; the body reads it from the enclosing scope, e.g. `{word} {0}: ...` above the loop, then use `{0}` inside",
                            name.name
                        )));
                }
                Stmt::Update { span, .. } => {
                    return Err(self
                        .err(*span, "`update` inside a `scan` body")
                        .with_help("compute the new value in the loop (as a carry) and `update` the state after it"));
                }
                Stmt::Input { span, .. }
                | Stmt::Output { span, .. }
                | Stmt::Return { span, .. } => {
                    return Err(self
                        .err(*span, "a `scan` body has only `let`, `yield`, `assert` and `scan` statements")
                        .with_help("the loop gives its results through its carries (`h = ...`) and `yield`s"));
                }
                _ => self.bind_statement(scope, stmt)?,
            }
        }
        Ok(())
    }

    fn finish_scan(&mut self, scope: &mut Scope, p: ScanParts<'_>) -> Result<()> {
        let ScanParts {
            graph: mut body,
            body_scope,
            inputs,
            captured,
            carries,
            seqs,
            frame,
            opts,
            span,
        } = p;
        let k = carries.len();
        let c = captured.len();
        // The next carries: what the carry names hold at the end of the body.
        for (i, (o, init)) in carries.iter().enumerate() {
            let input = inputs[c + i];
            let next = match body_scope.get(&o.name.name) {
                Some(Value::Tensor(t)) => *t,
                Some(other) => {
                    let at = frame.rebound[i].unwrap_or(o.span);
                    return Err(self.err(
                        at,
                        format!(
                            "the carry `{}` must stay a tensor, but the body makes it {}",
                            o.name.name,
                            other.kind()
                        ),
                    ));
                }
                None => input,
            };
            let (want, got) = (body.ty(input).clone(), body.ty(next).clone());
            if want != got {
                let at = frame.rebound[i].unwrap_or(o.span);
                return Err(self
                    .err(
                        at,
                        format!(
                            "the carry `{}` enters the loop as {want} but the body makes it {got}",
                            o.name.name
                        ),
                    )
                    .with_label(format!("this is {got}"))
                    .with_secondary(
                        self.user_span(o.value.span),
                        format!("the initial value is {}", self.graph.ty(*init)),
                    )
                    .with_note("a carry is the input of the next step, so its type is the same at every step"));
            }
            body.set_output(format!("{}.next", o.name.name), next);
        }
        for (name, t, _) in &frame.yields {
            body.set_output(name.clone(), *t);
        }
        // Drop the consts and sequences the body never reads (one sequence
        // stays: it gives the loop its length).
        let mut probe = body.clone();
        probe.prune_keeping(&inputs[c..c + k]);
        let read = |id: NodeId| probe.contains(id);
        let mut keep_const = Vec::new();
        for (i, (_, t)) in captured.iter().enumerate() {
            if read(inputs[i]) {
                keep_const.push((inputs[i], *t));
            }
        }
        let mut keep_seq: Vec<(NodeId, NodeId)> = seqs
            .iter()
            .enumerate()
            .filter(|(i, _)| read(inputs[c + k + i]))
            .map(|(i, (_, t))| (inputs[c + k + i], *t))
            .collect();
        if keep_seq.is_empty() {
            keep_seq.push((inputs[c + k], seqs[0].1));
        }
        let mut listed: Vec<NodeId> = keep_const.iter().map(|x| x.0).collect();
        listed.extend(&inputs[c..c + k]);
        listed.extend(keep_seq.iter().map(|x| x.0));
        body.prune_keeping(&listed);
        let mut operands: Vec<NodeId> = keep_const.iter().map(|x| x.1).collect();
        operands.extend(carries.iter().map(|x| x.1));
        operands.extend(keep_seq.iter().map(|x| x.1));
        let looped = ScanBody::new(body, listed, keep_const.len(), k, opts.axis, opts.reverse)
            .map_err(|m| {
                self.err(
                    span,
                    format!("internal error: the scan body is malformed: {m}"),
                )
            })?;
        self.at(span);
        let results = self.graph.scan(&looped, &operands).map_err(|e| {
            self.err(
                span,
                format!("this `scan` does not fit its operands: {}", e.message),
            )
        })?;
        for (i, (o, _)) in carries.iter().enumerate() {
            let v = Value::Tensor(results[i]);
            self.name_value(&v, &o.name.name);
            scope.bind(&o.name.name, v);
        }
        for (y, (name, _, _)) in frame.yields.iter().enumerate() {
            let v = Value::Tensor(results[k + y]);
            self.name_value(&v, name);
            scope.bind(name, v);
        }
        Ok(())
    }
}

struct ScanParts<'o> {
    graph: Graph,
    body_scope: Scope,
    inputs: Vec<NodeId>,
    captured: Vec<(String, NodeId)>,
    carries: Vec<(&'o ScanOperand, NodeId)>,
    seqs: Vec<(&'o ScanOperand, NodeId)>,
    frame: ScanFrame,
    opts: Options,
    span: Span,
}

fn holds_tensor(v: &Value) -> bool {
    match v {
        Value::Tensor(_) | Value::Pending(_) => true,
        Value::List(items) => items.iter().any(holds_tensor),
        _ => false,
    }
}

/// The names a statement reads, in order (a superset of what it captures:
/// operands and captures it turns out not to read are dropped).
fn stmt_idents<'e>(s: &'e Stmt, out: &mut Vec<&'e str>) {
    match s {
        Stmt::Let { value, .. }
        | Stmt::Return { value, .. }
        | Stmt::Yield { value, .. }
        | Stmt::Update { value, .. } => expr_idents(value, out),
        Stmt::Assert { cond, message, .. } => {
            expr_idents(cond, out);
            expr_idents(message, out);
        }
        Stmt::Param { init, .. } | Stmt::State { init, .. } => {
            if let Some(e) = init {
                expr_idents(e, out)
            }
        }
        Stmt::Scan {
            operands,
            options,
            body,
            ..
        } => {
            operands.iter().for_each(|o| expr_idents(&o.value, out));
            options.iter().for_each(|o| expr_idents(&o.value, out));
            body.iter().for_each(|s| stmt_idents(s, out));
        }
        Stmt::Output { names, value, .. } => {
            out.extend(names.iter().map(|n| n.name.as_str()));
            if let Some(e) = value {
                expr_idents(e, out)
            }
        }
        Stmt::Input { .. } => {}
    }
}

fn expr_idents<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match &e.kind {
        ExprKind::Ident(id) => out.push(&id.name),
        ExprKind::List(items) => items.iter().for_each(|i| expr_idents(i, out)),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| expr_idents(&a.value, out)),
        ExprKind::Pipe { input, stage } => {
            expr_idents(input, out);
            stage.args.iter().for_each(|a| expr_idents(&a.value, out));
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            expr_idents(lhs, out);
            expr_idents(rhs, out);
        }
        ExprKind::Neg(x) => expr_idents(x, out),
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}
