//! Elaboration: runs layer and model bodies at compile time, inlining every
//! layer call, binding named dims by unifying shape patterns, evaluating
//! scalars, and emitting tensor operations into one `nnc_ir::Graph`.
//!
//! Errors always point into the user's file: an error inside a prelude
//! layer is reported at the user's call that reached it, with a note naming
//! the prelude layer.

use crate::args::{assign, Given};
use crate::ast::{self, Arg, BinOp, DimKind, Expr, ExprKind, LayerDef, Stmt, TypeExpr, TypeKind};
use crate::error::{did_you_mean, Error};
use crate::span::Span;
use crate::value::{dim_value, Value};
use nnc_ir::{BinaryOp, DType, Dim, Graph, Init, NodeId, ShapeDisplay, TensorType, UnaryOp};
use std::collections::HashMap;

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Names in scope, innermost binding wins (bindings are immutable; a new
/// `let` of the same name shadows).
#[derive(Debug, Default, Clone)]
pub(crate) struct Scope {
    vars: HashMap<String, Value>,
}

impl Scope {
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
    pub(crate) fn bind(&mut self, name: &str, value: Value) {
        self.vars.insert(name.to_string(), value);
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// An evaluated call argument.
#[derive(Debug, Clone)]
pub(crate) struct ArgVal {
    pub name: Option<ast::Ident>,
    pub value: Value,
    pub span: Span,
}

#[derive(Clone, Copy)]
pub(crate) struct LayerRef<'a> {
    pub def: &'a LayerDef,
    pub in_prelude: bool,
}

struct Frame {
    layer: String,
    in_prelude: bool,
}

/// How a pending data field (see `Value::Pending`) becomes a graph input.
#[derive(Debug, Clone)]
pub(crate) struct PendingField {
    pub dtype: Option<DType>,
    pub ty: Option<TensorType>,
    pub span: Span,
}

/// Calls nested deeper than this are reported instead of overflowing the stack.
const MAX_CALL_DEPTH: usize = 64;

pub(crate) struct Elaborator<'a> {
    pub graph: Graph,
    user_layers: HashMap<&'a str, &'a LayerDef>,
    prelude_layers: HashMap<&'a str, &'a LayerDef>,
    frames: Vec<Frame>,
    /// The user-file span of the call that entered the prelude, if inside it.
    site: Option<Span>,
    /// Instance path (`block_1`, `dense`) for naming params.
    path: Vec<String>,
    counters: HashMap<(String, String), usize>,
    pub pending: HashMap<String, PendingField>,
    /// Inputs created for pending fields, in creation order.
    pub resolved_fields: Vec<String>,
    /// Set while binding a call's arguments: a bad argument is the caller's
    /// mistake, so errors are located as if the callee were not entered.
    blame_caller: bool,
    /// The mode being elaborated: the value of the builtin `training`.
    /// The model is elaborated once per mode (see `lower::compile_program`).
    pub training: bool,
    /// The next `Random` stream: one per `uniform_like` call, in
    /// elaboration order, so two dropouts draw different masks.
    pub next_stream: u32,
    /// Where each state's `update` is, to report a second one.
    update_spans: HashMap<String, Span>,
    /// The scans whose bodies are being elaborated, innermost last.
    pub(crate) scans: Vec<crate::scan::ScanFrame>,
    /// The calls of the model's body (not those inside layers, scans or
    /// the loss), for the model's summary; recorded while `run_model`
    /// elaborates the body.
    pub(crate) layer_calls: Vec<nnc_ir::LayerCall>,
    recording_calls: bool,
    /// Set while the train block's `loss` is elaborated: the only place
    /// where `params()` and `weights()` (penalty terms) mean something.
    pub in_loss: bool,
}

impl<'a> Elaborator<'a> {
    pub(crate) fn new(
        user: &'a ast::Program,
        prelude: &'a ast::Program,
        graph: Graph,
        training: bool,
    ) -> Self {
        let layers = |p: &'a ast::Program| {
            p.items
                .iter()
                .filter_map(|i| match i {
                    ast::Item::Layer(l) => Some((l.name.name.as_str(), l)),
                    _ => None,
                })
                .collect::<HashMap<_, _>>()
        };
        Elaborator {
            graph,
            user_layers: layers(user),
            prelude_layers: layers(prelude),
            frames: Vec::new(),
            site: None,
            path: Vec::new(),
            counters: HashMap::new(),
            pending: HashMap::new(),
            resolved_fields: Vec::new(),
            blame_caller: false,
            training,
            next_stream: 0,
            update_spans: HashMap::new(),
            scans: Vec::new(),
            layer_calls: Vec::new(),
            recording_calls: false,
            in_loss: false,
        }
    }

    /// How many layer calls deep elaboration is.
    pub(crate) fn call_depth(&self) -> usize {
        self.frames.len()
    }

    /// The frames errors are attributed to (see `blame_caller`).
    fn blamed_frames(&self) -> &[Frame] {
        let n = self.frames.len();
        if self.blame_caller && n > 0 {
            &self.frames[..n - 1]
        } else {
            &self.frames
        }
    }

    fn in_prelude(&self) -> bool {
        self.blamed_frames().last().is_some_and(|f| f.in_prelude)
    }

    /// An error at `span`, moved to the user's call site when `span` is in
    /// the prelude.
    pub(crate) fn err(&self, span: Span, message: impl Into<String>) -> Error {
        match (self.in_prelude(), self.site) {
            (true, Some(site)) => {
                let chain: Vec<&str> = self
                    .blamed_frames()
                    .iter()
                    .filter(|f| f.in_prelude)
                    .map(|f| f.layer.as_str())
                    .collect();
                Error::new(site, message).with_note(format!(
                    "raised inside the prelude layer `{}`",
                    chain.join("` → `")
                ))
            }
            _ => Error::new(span, message),
        }
    }

    pub(crate) fn user_span(&self, span: Span) -> Span {
        match (self.in_prelude(), self.site) {
            (true, Some(site)) => site,
            _ => span,
        }
    }

    pub(crate) fn at(&mut self, span: Span) {
        let s = self.user_span(span);
        self.graph.current_span = Some(nnc_ir::Span {
            start: s.start as u32,
            end: s.end as u32,
        });
    }

    fn layer(&self, name: &str) -> Option<LayerRef<'a>> {
        let user = self.user_layers.get(name).map(|d| LayerRef {
            def: d,
            in_prelude: false,
        });
        let prelude = self.prelude_layers.get(name).map(|d| LayerRef {
            def: d,
            in_prelude: true,
        });
        // Prelude layers resolve among themselves, so a user layer cannot
        // change what `cross_entropy` means by defining `log_softmax`.
        if self.in_prelude() {
            prelude.or(user)
        } else {
            user.or(prelude)
        }
    }

    pub(crate) fn known_callables(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .user_layers
            .keys()
            .chain(self.prelude_layers.keys())
            .copied()
            .collect();
        names.extend(crate::builtins::NAMES);
        names.extend(INIT_NAMES);
        names
    }

    // ------------------------------------------------------------ expressions

    pub(crate) fn eval(&mut self, scope: &Scope, e: &Expr) -> Result<Value> {
        match &e.kind {
            ExprKind::Int(v) => i64::try_from(*v)
                .map(Value::Int)
                .map_err(|_| self.err(e.span, "integer literal is too large")),
            ExprKind::Float(v) => Ok(Value::Float(*v)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::Ident(id) => self.lookup(scope, id),
            ExprKind::List(items) => items
                .iter()
                .map(|i| self.eval(scope, i))
                .collect::<Result<Vec<_>>>()
                .map(Value::List),
            ExprKind::Call { callee, args } if self.is_builtin_where(callee) => {
                self.eval_where(scope, None, args, e.span)
            }
            ExprKind::Call { callee, args } => {
                let args = self.eval_args(scope, args)?;
                self.call(callee, args, e.span)
            }
            ExprKind::Pipe { input, stage } => {
                let x = self.eval(scope, input)?;
                let first = ArgVal {
                    name: None,
                    value: x,
                    span: input.span,
                };
                if self.is_builtin_where(&stage.callee) {
                    return self.eval_where(scope, Some(first), &stage.args, stage.span);
                }
                let mut args = vec![first];
                args.extend(self.eval_args(scope, &stage.args)?);
                self.call(&stage.callee, args, stage.span)
            }
            ExprKind::Neg(x) => {
                let v = self.eval(scope, x)?;
                match v {
                    Value::Int(i) => Ok(Value::Int(-i)),
                    Value::Float(f) => Ok(Value::Float(-f)),
                    Value::Tensor(t) => {
                        self.at(e.span);
                        let n = self
                            .graph
                            .unary(UnaryOp::Neg, t)
                            .map_err(|s| self.err(e.span, s.message))?;
                        Ok(Value::Tensor(n))
                    }
                    other => Err(self
                        .err(x.span, format!("cannot negate {}", other.kind()))
                        .with_label("expected a number or a tensor")),
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval(scope, lhs)?;
                let b = self.eval(scope, rhs)?;
                self.binary(*op, a, lhs.span, b, rhs.span, e.span)
            }
        }
    }

    fn eval_args(&mut self, scope: &Scope, args: &[Arg]) -> Result<Vec<ArgVal>> {
        args.iter()
            .map(|a| {
                Ok(ArgVal {
                    name: a.name.clone(),
                    value: self.eval(scope, &a.value)?,
                    span: a.value.span,
                })
            })
            .collect()
    }

    fn lookup(&mut self, scope: &Scope, id: &ast::Ident) -> Result<Value> {
        if let Some(v) = scope.get(&id.name) {
            return Ok(v.clone());
        }
        if let Some(init) = init_by_name(&id.name) {
            return Ok(Value::Init(init));
        }
        match id.name.as_str() {
            "training" => return Ok(Value::Bool(self.training)),
            "inf" => return Ok(Value::Float(f64::INFINITY)),
            _ => {}
        }
        if self.layer(&id.name).is_some() || crate::builtins::NAMES.contains(&id.name.as_str()) {
            return Err(self
                .err(id.span, format!("`{}` is a function, not a value", id.name))
                .with_label("used as a value here")
                .with_help(format!(
                    "call it, `{0}(x)`, or use it as a pipeline stage, `x -> {0}`",
                    id.name
                )));
        }
        let mut err = self
            .err(id.span, format!("unknown name `{}`", id.name))
            .with_label("not found in this scope");
        if let Some(h) = did_you_mean(&id.name, scope.names().chain(BUILTIN_VALUES)) {
            err = err.with_help(h);
        }
        Err(err)
    }

    /// `where` is the builtin unless a layer of that name shadows it.
    fn is_builtin_where(&self, callee: &ast::Ident) -> bool {
        callee.name == "where" && self.layer("where").is_none()
    }

    /// `where(cond, a, b)`. With a compile-time bool `cond` (`training`, a
    /// `bool` parameter, a comparison of numbers) it is a static choice:
    /// only the chosen branch is elaborated, so the other one adds nothing
    /// to the graph (no dropout noise in evaluation, no unused bias param)
    /// and may even be ill-typed for this call. Otherwise it is the
    /// elementwise `select`. Arguments are evaluated `cond` first, then the
    /// branches in order.
    fn eval_where(
        &mut self,
        scope: &Scope,
        first: Option<ArgVal>,
        args: &[Arg],
        span: Span,
    ) -> Result<Value> {
        enum Pending<'e> {
            Done(ArgVal),
            Lazy(&'e Arg),
        }
        let given = first
            .map(|a| Given {
                keyword: None,
                span: a.span,
                value: Pending::Done(a),
            })
            .into_iter()
            .chain(args.iter().map(|a| Given {
                keyword: a.name.clone(),
                span: a.value.span,
                value: Pending::Lazy(a),
            }));
        let names = ["cond", "a", "b"];
        let signature = "where(cond, a, b)";
        let slots = assign("where", &names, signature, given, &|s, m| self.err(s, m))?;
        let mut vals = Vec::with_capacity(3);
        for (slot, name) in slots.into_iter().zip(names) {
            let Some(slot) = slot else {
                return Err(self
                    .err(span, format!("missing argument `{name}` of `where`"))
                    .with_label(format!("`{name}` is not given"))
                    .with_note(format!("`where` is declared as `{signature}`")));
            };
            vals.push(slot);
        }
        let eval = |this: &mut Self, p: Pending<'_>| -> Result<ArgVal> {
            match p {
                Pending::Done(a) => Ok(a),
                Pending::Lazy(a) => Ok(ArgVal {
                    name: None,
                    value: this.eval(scope, &a.value)?,
                    span: a.value.span,
                }),
            }
        };
        let mut it = vals.into_iter();
        let (Some(c), Some(a), Some(b)) = (it.next(), it.next(), it.next()) else {
            return Err(self.err(span, "internal error: `where` lost an argument"));
        };
        let cond = eval(self, c)?;
        if let Value::Bool(pick) = cond.value {
            let chosen = if pick { a } else { b };
            return Ok(eval(self, chosen)?.value);
        }
        let a = eval(self, a)?;
        let b = eval(self, b)?;
        self.at(span);
        crate::builtins::call(self, "where", vec![cond, a, b], span)
    }

    fn binary(
        &mut self,
        op: BinOp,
        a: Value,
        sa: Span,
        b: Value,
        sb: Span,
        span: Span,
    ) -> Result<Value> {
        use Value::{Float, Int};
        let by_zero = matches!(op, BinOp::Div | BinOp::Rem) && b.as_f64() == Some(0.0);
        match (&a, &b) {
            (Int(_) | Float(_), Int(_) | Float(_)) if by_zero => {
                return Err(self.err(sb, "division by zero in a constant expression"));
            }
            // Ints stay ints, and so does a division that comes out whole
            // (`c / groups` is a dim); any other quotient is a float, so
            // `1 / 255` means what it says.
            (Int(x), Int(y)) if op != BinOp::Div || x.checked_rem(*y) == Some(0) => {
                let r = match op {
                    BinOp::Add => x.checked_add(*y),
                    BinOp::Sub => x.checked_sub(*y),
                    BinOp::Mul => x.checked_mul(*y),
                    BinOp::Div => x.checked_div(*y),
                    BinOp::Rem => x.checked_rem(*y),
                };
                return r
                    .map(Int)
                    .ok_or_else(|| self.err(span, "integer overflow in a constant expression"));
            }
            (Int(_) | Float(_), Int(_) | Float(_)) => {
                let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                return Ok(Float(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    BinOp::Rem => x % y,
                }));
            }
            _ => {}
        }
        if op == BinOp::Rem {
            return Err(self
                .err(span, "`%` works only on compile-time numbers")
                .with_label(format!("{} % {}", a.kind(), b.kind())));
        }
        let (x, y) = self.tensor_pair(a, sa, b, sb)?;
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            // Rejected above: the IR has no remainder op.
            BinOp::Rem => BinaryOp::Div,
        };
        self.at(span);
        let (tx, ty) = (self.graph.ty(x).clone(), self.graph.ty(y).clone());
        self.graph.binary(bop, x, y).map(Value::Tensor).map_err(|_| {
            self.err(span, format!("shape mismatch in `{}`", op.symbol()))
                .with_label(format!("{tx} {} {ty}", op.symbol()))
                .with_note(format!(
                    "shapes broadcast when, aligned from the right, each pair of dims is equal or one of them is 1; {} and {} do not",
                    ShapeDisplay(&tx.shape),
                    ShapeDisplay(&ty.shape)
                ))
        })
    }

    /// Two operands as tensors of one dtype; a number becomes a scalar
    /// constant of the other operand's dtype.
    pub(crate) fn tensor_pair(
        &mut self,
        a: Value,
        sa: Span,
        b: Value,
        sb: Span,
    ) -> Result<(NodeId, NodeId)> {
        let a = self.resolve_pending(a, sa)?;
        let b = self.resolve_pending(b, sb)?;
        match (&a, &b) {
            (Value::Tensor(x), Value::Tensor(y)) => {
                let (dx, dy) = (self.graph.ty(*x).dtype, self.graph.ty(*y).dtype);
                if dx != dy {
                    return Err(self
                        .err(
                            sb,
                            format!("cannot combine a {dx} tensor with a {dy} tensor"),
                        )
                        .with_label(format!("this is {}", self.graph.ty(*y)))
                        .with_help("convert with `float(x)`"));
                }
                Ok((*x, *y))
            }
            (Value::Tensor(x), other) => {
                let c = self.scalar_like(other, sb, *x)?;
                Ok((*x, c))
            }
            (other, Value::Tensor(y)) => {
                let c = self.scalar_like(other, sa, *y)?;
                Ok((c, *y))
            }
            (other, _) => Err(self
                .err(
                    sa,
                    format!("expected a number or a tensor, found {}", other.kind()),
                )
                .with_label("not a number or a tensor")),
        }
    }

    fn scalar_like(&mut self, v: &Value, span: Span, like: NodeId) -> Result<NodeId> {
        match v.as_f64() {
            Some(f) => {
                self.at(span);
                Ok(self.graph.scalar_like(f, like))
            }
            None => Err(self
                .err(
                    span,
                    format!("expected a number or a tensor, found {}", v.kind()),
                )
                .with_label("not a number or a tensor")),
        }
    }

    /// A value that must be a tensor.
    pub(crate) fn tensor(&mut self, v: Value, span: Span, what: &str) -> Result<NodeId> {
        match self.resolve_pending(v, span)? {
            Value::Tensor(t) => Ok(t),
            other => Err(self
                .err(
                    span,
                    format!("{what} must be a tensor, found {}", other.kind()),
                )
                .with_label("expected a tensor")),
        }
    }

    /// Turns a pending data field into a graph input, if its type is known
    /// from an annotation; otherwise the use site must give it.
    fn resolve_pending(&mut self, v: Value, span: Span) -> Result<Value> {
        let Value::Pending(name) = v else {
            return Ok(v);
        };
        let ty = self.pending.get(&name).and_then(|p| p.ty.clone());
        let dtype = self
            .pending
            .get(&name)
            .and_then(|p| p.dtype)
            .unwrap_or(DType::F32);
        match ty {
            Some(ty) => Ok(Value::Tensor(self.pending_input(&name, ty))),
            None => Err(self
                .err(span, format!("the type of data field `{name}` is not known here"))
                .with_label("used here before its type is known")
                .with_help(format!(
                    "annotate it in the data block, e.g. `{name}: {dtype}[B, ...] = ...`, or pass it to a layer whose parameter type fixes its shape"
                ))),
        }
    }

    fn pending_input(&mut self, name: &str, ty: TensorType) -> NodeId {
        if let Some(n) = self.graph.find_leaf(name) {
            return n;
        }
        let saved = self.graph.current_span.take();
        if let Some(p) = self.pending.get(name) {
            self.graph.current_span = Some(nnc_ir::Span {
                start: p.span.start as u32,
                end: p.span.end as u32,
            });
        }
        let n = self.graph.input(name, ty);
        self.graph.current_span = saved;
        self.resolved_fields.push(name.to_string());
        n
    }

    // ------------------------------------------------------------------ calls

    fn call(&mut self, callee: &ast::Ident, args: Vec<ArgVal>, span: Span) -> Result<Value> {
        if let Some(layer) = self.layer(&callee.name) {
            return self.call_layer(layer, args, span);
        }
        if let Some(result) = self.call_init(&callee.name, &args, span) {
            return result;
        }
        if crate::builtins::NAMES.contains(&callee.name.as_str()) {
            self.at(span);
            let recorded = self.records_calls();
            let v = crate::builtins::call(self, &callee.name, args, span)?;
            if recorded {
                self.record_call(&callee.name, callee.name.clone(), &v);
            }
            return Ok(v);
        }
        let mut err = self
            .err(
                callee.span,
                format!("unknown layer or function `{}`", callee.name),
            )
            .with_label("not defined");
        let known = self.known_callables();
        if let Some(h) = did_you_mean(&callee.name, known) {
            err = err.with_help(h);
        }
        Err(err)
    }

    pub(crate) fn call_layer(
        &mut self,
        layer: LayerRef<'a>,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Result<Value> {
        let def = layer.def;
        let name = def.name.name.as_str();
        if let Some(pos) = self.frames.iter().position(|f| f.layer == name) {
            let mut chain: Vec<&str> = self.frames[pos..]
                .iter()
                .map(|f| f.layer.as_str())
                .collect();
            chain.push(name);
            return Err(self
                .err(span, format!("recursive call of layer `{name}`"))
                .with_label("calls itself")
                .with_note(format!("call chain: {}", chain.join(" → ")))
                .with_help("layers are inlined at compile time, so they cannot recurse; use an explicit sequence"));
        }
        if self.frames.len() >= MAX_CALL_DEPTH {
            return Err(self.err(
                span,
                format!("layer calls nest deeper than {MAX_CALL_DEPTH}"),
            ));
        }
        let assigned = self.assign_args(&def.params, args, name)?;

        // Enter the callee: its own scope, its own error location.
        let entering_prelude = layer.in_prelude && !self.in_prelude();
        let saved_site = self.site;
        if entering_prelude {
            self.site = Some(span);
        }
        let instance = self.instance_name(name);
        let recorded = self.records_calls();
        self.path.push(instance);
        self.frames.push(Frame {
            layer: name.to_string(),
            in_prelude: layer.in_prelude,
        });
        let result = self.bind_and_run(def, assigned, span);
        self.frames.pop();
        let instance = self.path.pop().unwrap_or_default();
        self.site = saved_site;
        if let (true, Ok(v)) = (recorded, &result) {
            self.record_call(name, instance, v);
        }
        result
    }

    /// Whether a call made now is one of the model body's own.
    fn records_calls(&self) -> bool {
        self.recording_calls && self.frames.is_empty() && self.scans.is_empty()
    }

    fn record_call(&mut self, layer: &str, name: String, v: &Value) {
        let tensors = match v {
            Value::Tensor(t) => vec![*t],
            Value::List(items) => items
                .iter()
                .filter_map(|i| match i {
                    Value::Tensor(t) => Some(*t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if tensors.is_empty() {
            return;
        }
        let outputs = tensors.iter().map(|&t| self.graph.ty(t).clone()).collect();
        self.layer_calls.push(nnc_ir::LayerCall {
            name,
            layer: layer.to_string(),
            outputs,
            values: tensors,
        });
    }

    fn bind_and_run(
        &mut self,
        def: &'a LayerDef,
        assigned: Vec<Option<ArgVal>>,
        call: Span,
    ) -> Result<Value> {
        let mut scope = Scope::default();
        let mut deferred = Vec::new();
        for (param, arg) in def.params.iter().zip(assigned) {
            match arg {
                Some(a) if matches!(a.value, Value::Pending(_)) => deferred.push((param, a)),
                Some(a) => {
                    self.blaming_caller(|e| e.bind_param(&mut scope, param, a, &def.name.name))?
                }
                None => {
                    let Some(default) = param.default.as_ref() else {
                        return Err(self.blaming_caller(|e| {
                            e.err(
                                call,
                                format!(
                                    "missing argument `{}` of `{}`",
                                    param.name.name, def.name.name
                                ),
                            )
                            .with_label(format!("`{}` is not given", param.name.name))
                            .with_note(format!(
                                "`{}` is declared as `{}`",
                                def.name.name,
                                signature(&def.name.name, &def.params)
                            ))
                        }));
                    };
                    let v = self.eval(&scope, default)?;
                    let a = ArgVal {
                        name: None,
                        value: v,
                        span: default.span,
                    };
                    self.bind_param(&mut scope, param, a, &def.name.name)?;
                }
            }
        }
        self.blaming_caller(|e| e.bind_deferred(&mut scope, def, deferred))?;
        self.run_layer_body(def, scope)
    }

    /// Runs `f` with errors located at the caller (see `blame_caller`).
    fn blaming_caller<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let saved = std::mem::replace(&mut self.blame_caller, true);
        let out = f(self);
        self.blame_caller = saved;
        out
    }

    /// Binds data fields whose type comes from the parameter they are
    /// passed to (see `Value::Pending`).
    fn bind_deferred(
        &mut self,
        scope: &mut Scope,
        def: &'a LayerDef,
        deferred: Vec<(&'a ast::Param, ArgVal)>,
    ) -> Result<()> {
        for (param, arg) in deferred {
            let Value::Pending(field) = &arg.value else {
                continue;
            };
            let field = field.clone();
            let ty = match self.pending.get(&field).and_then(|p| p.ty.clone()) {
                Some(ty) => ty,
                None => self.resolve_type(scope, &param.ty, false).map_err(|e| {
                    self.err(
                        arg.span,
                        format!(
                            "cannot infer the type of data field `{field}` from `{}: {}`",
                            param.name.name, param.ty
                        ),
                    )
                    .with_note(e.message)
                    .with_help(format!(
                        "annotate it in the data block, e.g. `{field}: i32[B] = ...`"
                    ))
                })?,
            };
            if let Some(want) = self.pending.get(&field).and_then(|p| p.dtype) {
                if want != ty.dtype {
                    return Err(self
                        .err(
                            arg.span,
                            format!(
                                "data field `{field}` is {want}, but `{}` expects {}",
                                def.name.name, ty.dtype
                            ),
                        )
                        .with_label(format!("passed as `{}: {}`", param.name.name, param.ty)));
                }
            }
            let node = self.pending_input(&field, ty);
            let a = ArgVal {
                value: Value::Tensor(node),
                ..arg
            };
            self.bind_param(scope, param, a, &def.name.name)?;
        }
        Ok(())
    }

    /// `let`, `param`, `state`, `update` and `assert` mean the same in
    /// layers and models.
    pub(crate) fn bind_statement(&mut self, scope: &mut Scope, stmt: &Stmt) -> Result<()> {
        match stmt {
            Stmt::Let { name, span, .. } if self.in_scan() => {
                self.check_rebinding(name, *span)?;
                self.bind_let(scope, stmt)?;
            }
            Stmt::Let { .. } => self.bind_let(scope, stmt)?,
            Stmt::Scan {
                operands,
                options,
                body,
                span,
            } => self.scan_stmt(scope, operands, options, body, *span)?,
            Stmt::Yield { name, value, span } => self.yield_stmt(scope, name, value, *span)?,
            Stmt::Param {
                name,
                ty,
                init,
                span,
            } => {
                let v = self.declare_leaf(Leaf::Param, scope, name, ty, init.as_ref(), *span)?;
                scope.bind(&name.name, v);
            }
            Stmt::State {
                name,
                ty,
                init,
                span,
            } => {
                let v = self.declare_leaf(Leaf::State, scope, name, ty, init.as_ref(), *span)?;
                scope.bind(&name.name, v);
            }
            Stmt::Update { name, value, span } => self.update(scope, name, value, *span)?,
            Stmt::Assert {
                cond,
                message,
                span,
            } => self.assert(scope, cond, message, *span)?,
            Stmt::Input { .. } | Stmt::Output { .. } | Stmt::Return { .. } => {}
        }
        Ok(())
    }

    /// `let NAME = EXPR` and `let NAME: PATTERN = EXPR`.
    fn bind_let(&mut self, scope: &mut Scope, stmt: &Stmt) -> Result<()> {
        match stmt {
            Stmt::Let {
                name,
                ty: None,
                value,
                ..
            } => {
                let v = self.eval(scope, value)?;
                self.name_value(&v, &name.name);
                scope.bind(&name.name, v);
            }
            Stmt::Let {
                name,
                ty: Some(ty),
                value,
                ..
            } => {
                let v = self.eval(scope, value)?;
                let t = self.tensor(v, value.span, &format!("`{}`", name.name))?;
                let subject = format!("`{}`", name.name);
                self.match_pattern(scope, ty, t, value.span, &subject)?;
                let v = Value::Tensor(t);
                self.name_value(&v, &name.name);
                scope.bind(&name.name, v);
            }
            _ => {}
        }
        Ok(())
    }

    /// `update NAME = EXPR`: in training, the state `NAME` of this layer
    /// (or model) becomes the value of `EXPR` after the step; `NAME` keeps
    /// meaning the old value. In evaluation the statement does nothing, so
    /// its expression is not even elaborated.
    fn update(&mut self, scope: &Scope, name: &ast::Ident, value: &Expr, span: Span) -> Result<()> {
        let mut full = self.path.clone();
        full.push(name.name.clone());
        let target = full.join(".");
        let state = match scope.get(&name.name) {
            Some(Value::Tensor(t)) => match &self.graph.node(*t).op {
                nnc_ir::Op::State { name: n, .. } if *n == target => Some(*t),
                _ => None,
            },
            _ => None,
        };
        let Some(state) = state else {
            let what = match scope.get(&name.name) {
                None => "is not defined".to_string(),
                Some(Value::Tensor(t)) => match &self.graph.node(*t).op {
                    nnc_ir::Op::Param { .. } => "is a param (the optimizer trains it)".into(),
                    nnc_ir::Op::State { .. } => "is the state of another layer".into(),
                    nnc_ir::Op::Input { .. } => "is an input".into(),
                    _ => "is a computed tensor".into(),
                },
                Some(v) => format!("is {}", v.kind()),
            };
            return Err(self
                .err(name.span, format!("`update` needs a state, but `{}` {what}", name.name))
                .with_label("not a `state` of this layer")
                .with_help(format!(
                    "declare it in the same layer or model before the update, e.g. `state {}: f32[n] = zeros`",
                    name.name
                )));
        };
        if !self.training {
            return Ok(());
        }
        if self.in_scan() {
            return Err(self.err(span, "`update` inside a `scan` body").with_help(
                "compute the new value in the loop (as a carry) and `update` the state after it",
            ));
        }
        if let Some(prev) = self.update_spans.get(&target) {
            return Err(self
                .err(span, format!("state `{}` is updated twice", name.name))
                .with_secondary(self.user_span(*prev), "first updated here"));
        }
        let v = self.eval(scope, value)?;
        let v = match v {
            Value::Int(_) | Value::Float(_) => {
                let f = v.as_f64().unwrap_or(0.0);
                self.at(value.span);
                Value::Tensor(self.graph.scalar_like(f, state))
            }
            other => other,
        };
        let t = self.tensor(v, value.span, &format!("the update of `{}`", name.name))?;
        let want = self.graph.ty(state).clone();
        let mut got = self.graph.ty(t).clone();
        let t = if got != want
            && got.dtype == want.dtype
            && nnc_ir::infer::broadcasts_to(&got.shape, &want.shape)
        {
            // A scalar or a broadcastable value fills the whole state.
            self.at(value.span);
            let b = self
                .graph
                .broadcast(t, want.shape.clone())
                .map_err(|e| self.err(value.span, e.message))?;
            got = want.clone();
            b
        } else {
            t
        };
        if got != want {
            return Err(self
                .err(
                    value.span,
                    format!(
                        "the update of `{}` is {got}, but the state is {want}",
                        name.name
                    ),
                )
                .with_label(format!("expected {want}")));
        }
        self.update_spans.insert(target.clone(), span);
        self.graph.updates.push(nnc_ir::Update { target, value: t });
        Ok(())
    }

    /// `assert COND, MESSAGE`: a compile-time check, reported at the
    /// statement (or at the user's call, inside the prelude) with the
    /// values of the names the condition reads.
    fn assert(&mut self, scope: &Scope, cond: &Expr, message: &Expr, span: Span) -> Result<()> {
        let ok = match self.eval(scope, cond)? {
            Value::Bool(b) => b,
            other => {
                return Err(self
                    .err(
                        cond.span,
                        format!("`assert` needs a compile-time bool, found {}", other.kind()),
                    )
                    .with_label("not a bool known while compiling")
                    .with_help("compare numbers with `less`, `greater`, `equal`, ..."))
            }
        };
        if ok {
            return Ok(());
        }
        let text = match self.eval(scope, message)? {
            Value::Str(m) => m,
            other => {
                return Err(self.err(
                    message.span,
                    format!(
                        "the message of `assert` must be a string, found {}",
                        other.kind()
                    ),
                ))
            }
        };
        let mut err = self.err(span, text).with_label("this check failed");
        let mut names = Vec::new();
        idents(cond, &mut names);
        let mut seen = Vec::new();
        for n in names {
            if seen.contains(&n) {
                continue;
            }
            seen.push(n);
            if let Some(v) = scope.get(n).and_then(show_value) {
                err = err.with_note(format!("`{n}` is {v}"));
            }
        }
        Err(err)
    }

    fn run_layer_body(&mut self, def: &'a LayerDef, mut scope: Scope) -> Result<Value> {
        let mut result = None;
        for stmt in &def.body {
            if result.is_some() {
                return Err(self
                    .err(stmt.span(), "unreachable statement after `return`")
                    .with_help("`return` must be the last statement of a layer"));
            }
            match stmt {
                Stmt::Return { value, .. } => result = Some(self.eval(&scope, value)?),
                Stmt::Let { .. }
                | Stmt::Param { .. }
                | Stmt::State { .. }
                | Stmt::Update { .. }
                | Stmt::Assert { .. }
                | Stmt::Scan { .. }
                | Stmt::Yield { .. } => self.bind_statement(&mut scope, stmt)?,
                Stmt::Input { span, .. } | Stmt::Output { span, .. } => {
                    return Err(self
                        .err(*span, "`input` and `output` belong in a model, not a layer")
                        .with_help("a layer receives its inputs as parameters and gives its result with `return`"));
                }
            }
        }
        result.ok_or_else(|| {
            self.err(
                def.name.span,
                format!("layer `{}` does not return a value", def.name.name),
            )
            .with_help("end the layer with `return <expr>`")
        })
    }

    /// Matches call arguments to parameters: positional first, then by name.
    /// Matches call arguments to a layer's or model's parameters.
    fn assign_args(
        &self,
        params: &[ast::Param],
        args: Vec<ArgVal>,
        fname: &str,
    ) -> Result<Vec<Option<ArgVal>>> {
        let names: Vec<&str> = params.iter().map(|p| p.name.name.as_str()).collect();
        let given = args.into_iter().map(|a| Given {
            keyword: a.name.clone(),
            span: a.span,
            value: a,
        });
        assign(
            fname,
            &names,
            &signature(fname, params),
            given,
            &|span, msg| self.err(span, msg),
        )
    }

    fn bind_param(
        &mut self,
        scope: &mut Scope,
        param: &ast::Param,
        arg: ArgVal,
        fname: &str,
    ) -> Result<()> {
        let pname = &param.name.name;
        let mismatch = |this: &Self, found: &Value| {
            this.err(
                arg.span,
                format!(
                    "argument `{pname}` of `{fname}` must be {}, found {}",
                    describe_type(&param.ty),
                    found.kind()
                ),
            )
            .with_label(format!("expected {}", describe_type(&param.ty)))
        };
        let value = match (&param.ty.kind, arg.value) {
            (TypeKind::Int, Value::Int(v)) => Value::Int(v),
            (TypeKind::Float, Value::Int(v)) => Value::Float(v as f64),
            (TypeKind::Float, Value::Float(v)) => Value::Float(v),
            (TypeKind::Bool, Value::Bool(v)) => Value::Bool(v),
            (TypeKind::Str, Value::Str(v)) => Value::Str(v),
            (TypeKind::Ints, Value::Int(v)) => Value::Int(v),
            (TypeKind::Ints, Value::List(items))
                if items.iter().all(|i| matches!(i, Value::Int(_))) =>
            {
                Value::List(items)
            }
            // A tensor parameter whose default is a number is optional: it
            // takes that number too, and the body tells the two apart with
            // `rank` (a number is rank 0), as `lstm`'s `mask` does.
            (TypeKind::Tensor { .. }, v @ (Value::Int(_) | Value::Float(_)))
                if param.default.as_ref().is_some_and(is_number_literal) =>
            {
                v
            }
            (TypeKind::Tensor { .. }, Value::Tensor(t)) => {
                let subject = format!("argument `{pname}` of `{fname}`");
                self.match_pattern(scope, &param.ty, t, arg.span, &subject)?;
                Value::Tensor(t)
            }
            (_, other) => return Err(mismatch(self, &other)),
        };
        scope.bind(pname, value);
        Ok(())
    }

    /// Unifies a tensor's type with a pattern (of a parameter, or of a
    /// typed `let`), binding named dims; `subject` names the value in
    /// messages ("argument `x` of `dense`").
    fn match_pattern(
        &mut self,
        scope: &mut Scope,
        pattern: &TypeExpr,
        t: NodeId,
        span: Span,
        subject: &str,
    ) -> Result<()> {
        let actual = self.graph.ty(t).clone();
        let TypeKind::Tensor { dtype, dims } = &pattern.kind else {
            return Ok(());
        };
        let want = dtype.ir();
        let fail = |this: &Self, why: String| {
            this.err(
                span,
                format!("{subject} has type {actual}, which does not match `{pattern}`"),
            )
            .with_label(why)
        };
        if want != actual.dtype {
            return Err(fail(
                self,
                format!("expected {want}, found {}", actual.dtype),
            ));
        }
        let Some(dims) = dims else { return Ok(()) };
        let rest_at = dims.iter().position(|d| matches!(d.kind, DimKind::Rest(_)));
        if dims
            .iter()
            .filter(|d| matches!(d.kind, DimKind::Rest(_)))
            .count()
            > 1
        {
            return Err(self.err(pattern.span, "a type may contain at most one `...`"));
        }
        let fixed = dims.len() - usize::from(rest_at.is_some());
        let rank = actual.rank();
        let rank_ok = if rest_at.is_some() {
            rank >= fixed
        } else {
            rank == fixed
        };
        if !rank_ok {
            let need = if rest_at.is_some() {
                format!("at least {fixed}")
            } else {
                fixed.to_string()
            };
            return Err(fail(
                self,
                format!("expected rank {need}, found rank {rank}"),
            ));
        }
        let mut pairs: Vec<(&ast::DimPattern, Vec<Dim>)> = Vec::new();
        match rest_at {
            None => pairs.extend(
                dims.iter()
                    .zip(actual.shape.iter().map(|d| vec![d.clone()])),
            ),
            Some(r) => {
                let tail = dims.len() - r - 1;
                for (i, d) in dims[..r].iter().enumerate() {
                    pairs.push((d, vec![actual.shape[i].clone()]));
                }
                pairs.push((&dims[r], actual.shape[r..rank - tail].to_vec()));
                for (i, d) in dims[r + 1..].iter().enumerate() {
                    pairs.push((d, vec![actual.shape[rank - tail + i].clone()]));
                }
            }
        }
        for (pat, got) in pairs {
            match &pat.kind {
                DimKind::Const(n) => {
                    if got[0] != Dim::Const(*n as usize) {
                        return Err(fail(self, format!("expected dim {n}, found `{}`", got[0])));
                    }
                }
                DimKind::Named(id) => match scope.get(&id.name) {
                    None => scope.bind(&id.name, dim_value(&got[0])),
                    Some(bound) => {
                        let Some(b) = bound.as_dim() else {
                            return Err(self.err(
                                pat.span,
                                format!("`{}` is {}, not a dim", id.name, bound.kind()),
                            ));
                        };
                        if b != got[0] {
                            return Err(fail(
                                self,
                                format!(
                                    "`{}` is {b} here, but this argument has `{}`",
                                    id.name, got[0]
                                ),
                            ));
                        }
                    }
                },
                DimKind::Expr(e) => {
                    let d = self.dim_expr(scope, e, pat.span)?;
                    if d != got[0] {
                        return Err(fail(
                            self,
                            format!("`{pat}` is {d} here, but this argument has `{}`", got[0]),
                        ));
                    }
                }
                DimKind::Rest(None) => {}
                DimKind::Rest(Some(id)) => match scope.get(&id.name) {
                    None => scope.bind(&id.name, Value::Dims(got)),
                    Some(Value::Dims(b)) if *b == got => {}
                    Some(Value::Dims(b)) => {
                        return Err(fail(
                            self,
                            format!(
                                "`...{}` is {} here, but this argument has {}",
                                id.name,
                                ShapeDisplay(b),
                                ShapeDisplay(&got)
                            ),
                        ));
                    }
                    Some(other) => {
                        return Err(self.err(
                            pat.span,
                            format!("`{}` is {}, not a run of dims", id.name, other.kind()),
                        ));
                    }
                },
            }
        }
        Ok(())
    }

    /// A concrete type from a type expression: names resolve in `scope`;
    /// with `symbolic`, unknown names become symbolic dims (model inputs).
    pub(crate) fn resolve_type(
        &mut self,
        scope: &Scope,
        te: &TypeExpr,
        symbolic: bool,
    ) -> Result<TensorType> {
        let TypeKind::Tensor { dtype, dims } = &te.kind else {
            return Err(self.err(te.span, format!("expected a tensor type, found `{te}`")));
        };
        let dtype = dtype.ir();
        let Some(dims) = dims else {
            return Err(self
                .err(te.span, format!("`{te}` gives no shape"))
                .with_help(format!(
                    "write the dims, e.g. `{te}[B, 10]`, or `{te}[]` for a scalar"
                )));
        };
        let mut shape = Vec::new();
        for d in dims {
            match &d.kind {
                DimKind::Const(n) => shape.push(Dim::Const(*n as usize)),
                DimKind::Named(id) => match scope.get(&id.name) {
                    Some(v) => shape.push(v.as_dim().ok_or_else(|| {
                        self.err(d.span, format!("`{}` is {}, not a dim", id.name, v.kind()))
                    })?),
                    None if symbolic => shape.push(Dim::Sym(id.name.clone())),
                    None => {
                        return Err(self
                            .err(d.span, format!("unknown dim `{}`", id.name))
                            .with_label("not bound by a parameter or an earlier pattern"))
                    }
                },
                DimKind::Rest(Some(id)) => match scope.get(&id.name) {
                    Some(Value::Dims(ds)) => shape.extend(ds.iter().cloned()),
                    _ => {
                        return Err(self.err(
                            d.span,
                            format!("`...{}` is not bound to a run of dims", id.name),
                        ))
                    }
                },
                DimKind::Rest(None) => {
                    return Err(self
                        .err(d.span, "`...` can only match the shape of an argument")
                        .with_help("declared tensors (params, inputs) need every dim spelled out"))
                }
                DimKind::Expr(e) => shape.push(self.dim_expr(scope, e, d.span)?),
            }
        }
        Ok(TensorType::new(dtype, shape))
    }

    /// A computed dim such as `c / groups`: a non-negative int, or a
    /// symbolic dim passed through unchanged.
    fn dim_expr(&mut self, scope: &Scope, e: &Expr, span: Span) -> Result<Dim> {
        let v = self.eval(scope, e)?;
        let with_values = |mut err: Error| {
            let mut names = Vec::new();
            idents(e, &mut names);
            names.dedup();
            for n in names {
                if let Some(v) = scope.get(n).and_then(show_value) {
                    err = err.with_note(format!("`{n}` is {v}"));
                }
            }
            err
        };
        let shown = ast::Infix(e);
        match v {
            Value::Int(n) if n >= 0 => Ok(Dim::Const(n as usize)),
            Value::Sym(s) => Ok(Dim::Sym(s)),
            Value::Float(f) => Err(with_values(
                self.err(
                    span,
                    format!("the dim `{shown}` is {f}, not a whole number"),
                )
                .with_label("does not divide evenly"),
            )),
            Value::Int(n) => Err(with_values(
                self.err(span, format!("the dim `{shown}` is negative ({n})")),
            )),
            other => Err(self.err(
                span,
                format!("the dim `{shown}` must be an int, found {}", other.kind()),
            )),
        }
    }

    /// `param` (trainable, float) or `state` (not trained, any dtype): a
    /// named leaf of constant shape with an initializer, named after the
    /// instance path (`dense_1.w`, `batchnorm.running_mean`).
    fn declare_leaf(
        &mut self,
        kind: Leaf,
        scope: &Scope,
        name: &ast::Ident,
        te: &TypeExpr,
        init: Option<&Expr>,
        span: Span,
    ) -> Result<Value> {
        let word = kind.word();
        if self.in_scan() {
            return Err(self
                .err(span, format!("{word} `{}` is declared inside a `scan` body", name.name))
                .with_label("declared once per step")
                .with_help("a layer that declares params or state cannot be called inside the loop; declare them before the `scan` and pass them in"));
        }
        let ty = self.resolve_type(scope, te, false)?;
        if let Some(d) = ty.shape.iter().find(|d| d.as_const().is_none()) {
            return Err(self
                .err(
                    te.span,
                    format!("{word} `{}` has the symbolic dim `{d}`", name.name),
                )
                .with_help(format!(
                    "{word}s are allocated once, so every dim must be a constant"
                )));
        }
        if kind == Leaf::Param && !ty.dtype.is_float() {
            return Err(self.err(
                te.span,
                format!(
                    "param `{}` must be f32 or f64 to be trained, found {}",
                    name.name, ty.dtype
                ),
            ));
        }
        let init = match init {
            None => {
                let example = match kind {
                    Leaf::Param => "xavier_uniform` (or `zeros`, `normal(0, 0.01)`)",
                    Leaf::State => "zeros` (or `ones`, `constant(v)`)",
                };
                return Err(self
                    .err(span, format!("{word} `{}` has no initializer", name.name))
                    .with_help(format!(
                        "add one, e.g. `{word} {}: {te} = {example}",
                        name.name
                    )));
            }
            Some(e) => match self.eval(scope, e)? {
                Value::Init(i) => i,
                Value::Int(v) => Init::Const(v as f64),
                Value::Float(v) => Init::Const(v),
                other => {
                    return Err(self
                        .err(
                            e.span,
                            format!("expected an initializer, found {}", other.kind()),
                        )
                        .with_label("not an initializer")
                        .with_help(format!(
                            "initializers: {}, normal(mean, std), uniform(low, high), constant(v)",
                            INIT_NAMES.join(", ")
                        )))
                }
            },
        };
        let mut full: Vec<String> = self.path.clone();
        full.push(name.name.clone());
        let pname = full.join(".");
        self.at(span);
        if self.graph.find_leaf(&pname).is_some() {
            return Err(self.err(name.span, format!("{word} `{pname}` is declared twice")));
        }
        let node = match kind {
            Leaf::Param => self.graph.param(&pname, ty, init),
            Leaf::State => self.graph.state(&pname, ty, init),
        };
        Ok(Value::Tensor(node))
    }

    /// Keras-style instance names: the first `dense` in a scope is `dense`,
    /// the next `dense_1`, ...
    fn instance_name(&mut self, kind: &str) -> String {
        let key = (self.path.join("."), kind.to_string());
        let n = self.counters.entry(key).or_insert(0);
        let name = if *n == 0 {
            kind.to_string()
        } else {
            format!("{kind}_{n}")
        };
        *n += 1;
        name
    }

    /// Names a node after the binding that holds it, for readable IR.
    pub(crate) fn name_value(&mut self, v: &Value, name: &str) {
        if let Value::Tensor(t) = v {
            let node = self.graph.node_mut(*t);
            if node.name.is_none() && !node.op.is_leaf() {
                node.name = Some(name.to_string());
            }
        }
    }

    /// Initializer calls: `normal(mean, std)`, `uniform(low, high)`,
    /// `constant(value)`; `None` when `name` is not one.
    fn call_init(&self, name: &str, args: &[ArgVal], span: Span) -> Option<Result<Value>> {
        let (params, defaults): (&[&str], &[Option<f64>]) = match name {
            "normal" => (&["mean", "std"], &[Some(0.0), Some(1.0)]),
            "uniform" => (&["low", "high"], &[Some(0.0), Some(1.0)]),
            "constant" => (&["value"], &[None]),
            _ => return None,
        };
        let numbers = || -> Result<Vec<f64>> {
            let signature = format!("{name}({})", params.join(", "));
            let given = args.iter().map(|a| Given {
                keyword: a.name.clone(),
                span: a.span,
                value: a,
            });
            let slots = assign(name, params, &signature, given, &|s, m| self.err(s, m))?;
            slots
                .iter()
                .zip(params.iter().zip(defaults))
                .map(|(slot, (p, default))| match slot {
                    Some(a) => a.value.as_f64().ok_or_else(|| {
                        self.err(
                            a.span,
                            format!(
                                "`{p}` of `{name}` must be a number, found {}",
                                a.value.kind()
                            ),
                        )
                    }),
                    None => default.ok_or_else(|| {
                        self.err(span, format!("missing argument `{p}` of `{name}`"))
                            .with_note(format!("`{name}` is declared as `{signature}`"))
                    }),
                })
                .collect()
        };
        let init = numbers().and_then(|v| match name {
            "normal" if v[1] < 0.0 => Err(self.err(span, "`normal` needs std >= 0")),
            "normal" => Ok(Init::Normal {
                mean: v[0],
                std: v[1],
            }),
            "uniform" if v[0] > v[1] => Err(self.err(span, "`uniform` needs low <= high")),
            "uniform" => Ok(Init::Uniform {
                low: v[0],
                high: v[1],
            }),
            _ => Ok(Init::Const(v[0])),
        });
        Some(init.map(Value::Init))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Param,
    State,
}

impl Leaf {
    fn word(self) -> &'static str {
        match self {
            Leaf::Param => "param",
            Leaf::State => "state",
        }
    }
}

/// Names that mean a value without being bound in any scope: the mode and
/// infinity (for `fill: -inf`).
const BUILTIN_VALUES: [&str; 2] = ["training", "inf"];

/// The names an expression reads, in order (for the notes of a failed
/// check: "`groups` is 2").
fn idents<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match &e.kind {
        ExprKind::Ident(id) => out.push(&id.name),
        ExprKind::List(items) => items.iter().for_each(|i| idents(i, out)),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| idents(&a.value, out)),
        ExprKind::Pipe { input, stage } => {
            idents(input, out);
            stage.args.iter().for_each(|a| idents(&a.value, out));
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            idents(lhs, out);
            idents(rhs, out);
        }
        ExprKind::Neg(x) => idents(x, out),
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}

fn is_number_literal(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Int(_) | ExprKind::Float(_) => true,
        ExprKind::Neg(x) => is_number_literal(x),
        _ => false,
    }
}

/// A compile-time value as a note shows it; tensors are not shown.
fn show_value(v: &Value) -> Option<String> {
    Some(match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::Sym(s) => format!("the symbolic dim `{s}`"),
        Value::Dims(ds) => format!("{}", ShapeDisplay(ds)),
        Value::List(items) => {
            let shown: Option<Vec<String>> = items.iter().map(show_value).collect();
            format!("[{}]", shown?.join(", "))
        }
        Value::Tensor(_) | Value::Init(_) | Value::Pending(_) => return None,
    })
}

const INIT_NAMES: [&str; 6] = [
    "zeros",
    "ones",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
];

fn init_by_name(name: &str) -> Option<Init> {
    Some(match name {
        "zeros" => Init::Zeros,
        "ones" => Init::Ones,
        "xavier_uniform" | "glorot_uniform" => Init::XavierUniform,
        "xavier_normal" | "glorot_normal" => Init::XavierNormal,
        "kaiming_uniform" | "he_uniform" => Init::KaimingUniform,
        "kaiming_normal" | "he_normal" => Init::KaimingNormal,
        _ => return None,
    })
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn signature(fname: &str, params: &[ast::Param]) -> String {
    let ps: Vec<String> = params
        .iter()
        .map(|p| format!("{}: {}", p.name.name, p.ty))
        .collect();
    format!("{fname}({})", ps.join(", "))
}

fn describe_type(te: &TypeExpr) -> String {
    match te.kind {
        TypeKind::Int => "an int".into(),
        TypeKind::Float => "a float".into(),
        TypeKind::Bool => "a bool".into(),
        TypeKind::Str => "a string".into(),
        TypeKind::Ints => "an int or a list of ints".into(),
        TypeKind::Tensor { .. } => format!("a tensor `{te}`"),
    }
}

/// A model's outputs, in declaration order.
pub(crate) struct ModelOutputs {
    pub outputs: Vec<(String, NodeId)>,
}

impl<'a> Elaborator<'a> {
    /// Runs a model body with its parameters bound from `args` (or defaults):
    /// inputs become graph inputs, `output` statements graph outputs.
    pub(crate) fn run_model(
        &mut self,
        def: &'a ast::ModelDef,
        args: Vec<ArgVal>,
        call: Span,
    ) -> Result<ModelOutputs> {
        let name = def.name.name.as_str();
        let assigned = self.assign_args(&def.params, args, name)?;
        let mut scope = Scope::default();
        for (param, arg) in def.params.iter().zip(assigned) {
            let arg = match arg {
                Some(a) => a,
                None => {
                    let default = param.default.as_ref().ok_or_else(|| {
                        self.err(
                            call,
                            format!("model `{name}` needs a value for `{}`", param.name.name),
                        )
                        .with_label(format!("`{}` has no default", param.name.name))
                        .with_help(format!(
                            "pass it, e.g. `train {name}({}: ...) on ...`",
                            param.name.name
                        ))
                    })?;
                    ArgVal {
                        name: None,
                        value: self.eval(&scope, default)?,
                        span: default.span,
                    }
                }
            };
            if matches!(param.ty.kind, TypeKind::Tensor { .. }) {
                return Err(self
                    .err(
                        param.ty.span,
                        "model parameters are settings (int, float, bool, str)",
                    )
                    .with_help("declare tensors the model reads with `input NAME: TYPE`"));
            }
            self.bind_param(&mut scope, param, arg, name)?;
        }
        let mut outputs: Vec<(String, NodeId)> = Vec::new();
        let mut output_spans: HashMap<String, Span> = HashMap::new();
        self.recording_calls = true;
        for stmt in &def.body {
            match stmt {
                Stmt::Let { .. }
                | Stmt::Param { .. }
                | Stmt::State { .. }
                | Stmt::Update { .. }
                | Stmt::Assert { .. }
                | Stmt::Scan { .. }
                | Stmt::Yield { .. } => self.bind_statement(&mut scope, stmt)?,
                Stmt::Input { name, ty, span } => {
                    let t = self.resolve_type(&scope, ty, true)?;
                    if self.graph.find_leaf(&name.name).is_some() {
                        return Err(self.err(
                            name.span,
                            format!("input `{}` is declared twice", name.name),
                        ));
                    }
                    // Symbolic dims become names the model body can use (`reshape(x, [B, -1])`).
                    for d in &t.shape {
                        if let Dim::Sym(s) = d {
                            if scope.get(s).is_none() {
                                scope.bind(s, Value::Sym(s.clone()));
                            }
                        }
                    }
                    self.at(*span);
                    let node = self.graph.input(&name.name, t);
                    scope.bind(&name.name, Value::Tensor(node));
                }
                Stmt::Output { names, value, span } => {
                    let entries: Vec<(ast::Ident, Value, Span)> = match value {
                        Some(e) => vec![(names[0].clone(), self.eval(&scope, e)?, e.span)],
                        None => names
                            .iter()
                            .map(|n| Ok((n.clone(), self.lookup(&scope, n)?, n.span)))
                            .collect::<Result<_>>()?,
                    };
                    for (id, v, vspan) in entries {
                        let node = self.tensor(v, vspan, &format!("output `{}`", id.name))?;
                        if let Some(prev) = output_spans.get(&id.name) {
                            return Err(self
                                .err(id.span, format!("output `{}` is declared twice", id.name))
                                .with_secondary(*prev, "first declared here"));
                        }
                        output_spans.insert(id.name.clone(), *span);
                        self.name_value(&Value::Tensor(node), &id.name);
                        outputs.push((id.name.clone(), node));
                    }
                }
                Stmt::Return { span, .. } => {
                    return Err(self
                        .err(
                            *span,
                            "a model gives its results with `output`, not `return`",
                        )
                        .with_help("write `output NAME` for each result"));
                }
            }
        }
        self.recording_calls = false;
        if outputs.is_empty() {
            return Err(self
                .err(def.name.span, format!("model `{name}` has no output"))
                .with_help("add `output NAME` naming the model's result"));
        }
        for (name, node) in &outputs {
            self.graph.set_output(name.clone(), *node);
        }
        Ok(ModelOutputs { outputs })
    }

    pub(crate) fn scalar_value(&mut self, e: &Expr) -> Result<Value> {
        self.eval(&Scope::default(), e)
    }

    pub(crate) fn scope_with(&self, bindings: impl IntoIterator<Item = (String, Value)>) -> Scope {
        let mut s = Scope::default();
        for (k, v) in bindings {
            s.bind(&k, v);
        }
        s
    }
}
