//! From a parsed program to an `nnc_ir::Module`: picks the model (the one
//! a `train` block names, or the only model), elaborates it, lowers the
//! data block to a `DataSpec` and the train block to a `TrainSpec` whose
//! objective graph ends in the loss.

use crate::args::{assign, Given};
use crate::ast::{self, Expr, ExprKind, Item, Program, TypeKind};
use crate::elaborate::{ArgVal, Elaborator, PendingField, Result};
use crate::error::{did_you_mean, Error};
use crate::span::{SourceFile, Span};
use crate::value::Value;
use nnc_ir::module::RNG_KEY;
use nnc_ir::GradClip;
use nnc_ir::{Anneal, Decay, EarlyStop, Monitor, OneCycle, Plateau, Prune, PruneScope, Warmup};
use nnc_ir::{
    Average, DType, DataField, DataSpec, Graph, KFold, Metric, MetricTarget, Module, NodeId,
    Optimizer, Schedule, SetMetric, Source, TargetKind, TestSet, TextColumn, TextFormat, TrainSpec,
    Transform, LOSS,
};
use std::collections::HashMap;

/// The prelude's source, parsed with every compile (it is small).
pub const PRELUDE: &str = include_str!("prelude.nn");

pub fn prelude_file() -> SourceFile {
    SourceFile::new("<prelude>", PRELUDE)
}

/// Parses `src` into an AST.
pub fn parse_program(src: &SourceFile) -> Result<Program> {
    Ok(crate::parse::parse(src)?)
}

/// Compiles `src` to a module: the model its `train` block trains (or the
/// model named `model`, or its only model).
pub fn compile(src: &SourceFile, model: Option<&str>) -> Result<Module> {
    let program = parse_program(src)?;
    compile_program(&program, model)
}

pub fn compile_program(program: &Program, model: Option<&str>) -> Result<Module> {
    let prelude_src = prelude_file();
    let prelude = crate::parse::parse(&prelude_src).map_err(|e| {
        Error::new(
            Span::default(),
            format!("internal error: the prelude does not parse: {}", e.message),
        )
    })?;
    check_unique_names(program)?;

    let trains: Vec<&ast::TrainDef> = items(program, |i| match i {
        Item::Train(t) => Some(t),
        _ => None,
    });
    let models: Vec<&ast::ModelDef> = items(program, |i| match i {
        Item::Model(m) => Some(m),
        _ => None,
    });
    if let [_, second, ..] = trains.as_slice() {
        return Err(
            Error::new(second.span, "a file may have only one `train` block")
                .with_secondary(trains[0].span, "the first `train` block"),
        );
    }
    let train = trains
        .first()
        .copied()
        .filter(|t| model.is_none_or(|m| m == t.model.name));

    let (model_def, call_span, model_args) = match (train, model) {
        (Some(t), _) => (
            find_model(&models, &t.model)?,
            t.model.span,
            t.model_args.as_slice(),
        ),
        (None, Some(name)) => {
            let def = models.iter().find(|m| m.name.name == name).ok_or_else(|| {
                let mut e = Error::new(
                    Span::default(),
                    format!("no model named `{name}` in this file"),
                );
                if let Some(h) = did_you_mean(name, models.iter().map(|m| m.name.name.as_str())) {
                    e = e.with_help(h);
                }
                e
            })?;
            (*def, def.name.span, &[][..])
        }
        (None, None) => match models.as_slice() {
            [only] => (*only, only.name.span, &[][..]),
            [] => {
                return Err(Error::new(Span::default(), "this file defines no model")
                    .with_help("add `model NAME { input ...; output ... }`"))
            }
            [_, second, ..] => {
                return Err(Error::new(
                    second.name.span,
                    "this file defines several models and no `train` block",
                )
                .with_help("add a `train` block, or pick one with `--model NAME`"))
            }
        },
    };

    // The model is elaborated once per mode (spec §9.1): for evaluation,
    // giving `forward` (prediction, validation, test), and for training,
    // giving the objective; the builtin `training` tells them apart. The
    // training elaboration runs even without a `train` block, so `nnc
    // check` reports errors in training-only code too.
    let mut ev = Elaborator::new(program, &prelude, Graph::new("forward"), false);
    let args = model_args
        .iter()
        .map(|a| {
            Ok(ArgVal {
                name: a.name.clone(),
                value: ev.scalar_value(&a.value)?,
                span: a.value.span,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let eval_outputs = ev.run_model(model_def, args.clone(), call_span)?;
    let mut el = Elaborator::new(program, &prelude, Graph::new("objective"), true);
    let outputs = el.run_model(model_def, args, call_span)?;
    let forward = finished(&ev.graph);
    check_same_params(&forward, &finished(&el.graph))?;
    let name = model_def.name.name.clone();
    let layers = std::mem::take(&mut ev.layer_calls);

    let Some(train) = train else {
        return Ok(Module {
            name,
            forward,
            layers,
            data: None,
            train: None,
            changes: Vec::new(),
        });
    };

    let data_def = items(program, |i| match i {
        Item::Data(d) if d.name.name == train.data.name => Some(d),
        _ => None,
    });
    let data_def = data_def.first().copied().ok_or_else(|| {
        let names: Vec<&str> = program
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Data(d) => Some(d.name.name.as_str()),
                _ => None,
            })
            .collect();
        let mut e = Error::new(
            train.data.span,
            format!("unknown data block `{}`", train.data.name),
        )
        .with_label("not defined in this file");
        if let Some(h) = did_you_mean(&train.data.name, names) {
            e = e.with_help(h);
        }
        e
    })?;
    let data = lower_data(&mut el, data_def)?;
    check_inputs_have_fields(&forward, &data, data_def, train)?;
    let modes = Modes {
        train: &mut el,
        train_outputs: &outputs.outputs,
        eval: &mut ev,
        eval_outputs: &eval_outputs.outputs,
    };
    let spec = lower_train(modes, train, &data, data_def)?;
    Ok(Module {
        name,
        forward,
        layers,
        data: Some(data),
        train: Some(spec),
        changes: Vec::new(),
    })
}

/// A graph as the module hands it on: without the nodes no output or
/// update reads. Elaboration leaves such nodes behind on purpose — a `let`
/// only the other mode uses, a bias param a static `where` left out — and
/// they must not become params to train or values to compute. The model's
/// inputs stay even when unused: they are its interface (the runtime feeds
/// them from data). The random key does not: only a graph that draws
/// random numbers reads it.
fn finished(graph: &Graph) -> Graph {
    let mut g = graph.clone();
    let mut live = std::collections::HashSet::new();
    let mut stack: Vec<NodeId> = g
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(g.updates.iter().map(|u| u.value))
        .chain(
            g.inputs()
                .into_iter()
                .filter(|(_, n)| *n != RNG_KEY)
                .map(|(id, _)| id),
        )
        .collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    let dead: Vec<NodeId> = g.g.node_indices().filter(|n| !live.contains(n)).collect();
    for n in dead {
        g.g.remove_node(n);
    }
    g
}

/// Training learns the params evaluation uses, so both modes must have the
/// same params (names, types and initializers).
fn check_same_params(eval: &Graph, train: &Graph) -> Result<()> {
    let params = |g: &Graph| -> Vec<(String, NodeId)> {
        g.params()
            .into_iter()
            .map(|(n, name)| (name.to_string(), n))
            .collect()
    };
    let (pe, pt) = (params(eval), params(train));
    let span_of = |g: &Graph, n: NodeId| {
        g.node(n).span.map_or(Span::default(), |s| {
            Span::new(s.start as usize, s.end as usize)
        })
    };
    let only = |name: &str, g: &Graph, n: NodeId, mode: &str, other: &str| {
        Error::new(
            span_of(g, n),
            format!("param `{name}` is used only in {mode}"),
        )
        .with_label(format!("not used in {other}"))
        .with_note(
            "training learns the params that evaluation uses, so both modes must use every param",
        )
        .with_help("use it outside `where(training, ...)`, or make it a `state`")
    };
    for (name, n) in &pt {
        match pe.iter().find(|(m, _)| m == name) {
            None => return Err(only(name, train, *n, "training", "evaluation")),
            Some((_, e)) => {
                let (a, b) = (train.node(*n), eval.node(*e));
                if a.ty != b.ty || a.op != b.op {
                    let show = |node: &nnc_ir::Node| match &node.op {
                        nnc_ir::Op::Param { init, .. } => format!("{} = {init}", node.ty),
                        _ => node.ty.to_string(),
                    };
                    return Err(Error::new(
                        span_of(train, *n),
                        format!(
                            "param `{name}` differs between the modes: {} in training, {} in evaluation",
                            show(a),
                            show(b)
                        ),
                    )
                    .with_note("training learns the params that evaluation uses, so they must be the same"));
                }
            }
        }
    }
    if let Some((name, n)) = pe.iter().find(|(m, _)| !pt.iter().any(|(t, _)| t == m)) {
        return Err(only(name, eval, *n, "evaluation", "training"));
    }
    Ok(())
}

fn items<'p, T>(program: &'p Program, f: impl Fn(&'p Item) -> Option<T>) -> Vec<T> {
    program.items.iter().filter_map(f).collect()
}

fn find_model<'p>(models: &[&'p ast::ModelDef], name: &ast::Ident) -> Result<&'p ast::ModelDef> {
    models
        .iter()
        .find(|m| m.name.name == name.name)
        .copied()
        .ok_or_else(|| {
            let mut e = Error::new(name.span, format!("unknown model `{}`", name.name))
                .with_label("not defined in this file");
            if let Some(h) = did_you_mean(&name.name, models.iter().map(|m| m.name.name.as_str())) {
                e = e.with_help(h);
            }
            e
        })
}

/// Layers, models and data blocks share one namespace per kind; a second
/// definition of a name is an error pointing at both.
fn check_unique_names(program: &Program) -> Result<()> {
    let mut seen: HashMap<(&str, &str), Span> = HashMap::new();
    for item in &program.items {
        let kind = match item {
            Item::Layer(_) => "layer",
            Item::Model(_) => "model",
            Item::Data(_) => "data block",
            Item::Train(_) => continue,
        };
        let id = item.name();
        if let Some(prev) = seen.insert((kind, id.name.as_str()), id.span) {
            return Err(Error::new(
                id.span,
                format!("the {kind} `{}` is defined twice", id.name),
            )
            .with_label("redefined here")
            .with_secondary(prev, "first defined here"));
        }
        let params = match item {
            Item::Layer(l) => &l.params,
            Item::Model(m) => &m.params,
            _ => continue,
        };
        let mut names: HashMap<&str, Span> = HashMap::new();
        for p in params {
            if let Some(prev) = names.insert(p.name.name.as_str(), p.name.span) {
                return Err(Error::new(
                    p.name.span,
                    format!("parameter `{}` is declared twice", p.name.name),
                )
                .with_secondary(prev, "first declared here"));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- data

fn lower_data(el: &mut Elaborator, def: &ast::DataDef) -> Result<DataSpec> {
    let fields = lower_fields(el, &def.fields)?;
    if fields.is_empty() {
        return Err(Error::new(
            def.name.span,
            format!("data block `{}` has no fields", def.name.name),
        ));
    }
    let test = match &def.test {
        None => None,
        Some(ast::TestSpec::Fields { fields: tf, span }) => {
            let test_fields = lower_fields(el, tf)?;
            for f in &fields {
                if !test_fields.iter().any(|t| t.name == f.name) {
                    return Err(Error::new(
                        *span,
                        format!("the test set has no field `{}`", f.name),
                    )
                    .with_help("give the test set the same fields as the training set"));
                }
            }
            for (t, ast_field) in test_fields.iter().zip(tf) {
                match fields.iter().find(|f| f.name == t.name) {
                    None => {
                        return Err(Error::new(
                            ast_field.name.span,
                            format!("the training set has no field `{}`", t.name),
                        ))
                    }
                    Some(f) if f.dtype != t.dtype => {
                        return Err(Error::new(
                            ast_field.span,
                            format!(
                                "test field `{}` is {} but the training field is {}",
                                t.name, t.dtype, f.dtype
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            Some(TestSet::Fields(test_fields))
        }
        Some(ast::TestSpec::Expr { value, .. }) => {
            Some(TestSet::Split(split_fraction(el, value, "test")?))
        }
    };
    Ok(DataSpec {
        name: def.name.name.clone(),
        fields,
        test,
    })
}

fn lower_fields(el: &mut Elaborator, fields: &[ast::DataField]) -> Result<Vec<DataField>> {
    let mut out: Vec<DataField> = Vec::new();
    let mut spans: HashMap<&str, Span> = HashMap::new();
    for f in fields {
        if let Some(prev) = spans.insert(f.name.name.as_str(), f.name.span) {
            return Err(Error::new(
                f.name.span,
                format!("data field `{}` is defined twice", f.name.name),
            )
            .with_secondary(prev, "first defined here"));
        }
        let dtype = match &f.ty {
            None => DType::F32,
            Some(te) => match &te.kind {
                TypeKind::Tensor { dtype, .. } => {
                    let d = dtype.ir();
                    if !matches!(d, DType::F32 | DType::F64 | DType::I32) {
                        return Err(Error::new(
                            te.span,
                            format!("data fields are delivered as f32, f64 or i32, not {d}"),
                        ));
                    }
                    d
                }
                _ => {
                    return Err(Error::new(
                        te.span,
                        format!("expected an element type such as `f32` or `i32`, found `{te}`"),
                    ))
                }
            },
        };
        let (source, transforms) = lower_source(el, &f.value)?;
        if matches!(source, Source::Text { .. }) && dtype != DType::I32 {
            return Err(Error::new(
                f.span,
                format!(
                    "data field `{}` holds token ids, which are i32",
                    f.name.name
                ),
            )
            .with_help(format!("declare it `{}: i32 = text(...)`", f.name.name)));
        }
        out.push(DataField {
            name: f.name.name.clone(),
            dtype,
            source,
            transforms,
        });
    }
    Ok(out)
}

/// `source -> transform -> ...` as written in a data field.
fn lower_source(el: &mut Elaborator, e: &Expr) -> Result<(Source, Vec<Transform>)> {
    match &e.kind {
        ExprKind::Pipe { input, stage } => {
            let (source, mut transforms) = lower_source(el, input)?;
            let transform = lower_transform(el, &stage.callee, &stage.args, stage.span)?;
            check_stage(
                &source,
                &transforms,
                &transform,
                &stage.callee.name,
                stage.span,
            )?;
            transforms.push(transform);
            Ok((source, transforms))
        }
        ExprKind::Call { callee, args } => match callee.name.as_str() {
            "idx" => {
                let [path] = positional::<1>(el, callee, args, &["path"])?;
                Ok((
                    Source::Idx {
                        path: string(&path)?,
                    },
                    Vec::new(),
                ))
            }
            "csv" => lower_csv(el, callee, args),
            "images" => lower_images(el, callee, args),
            "text" | "text_labels" => lower_text(el, callee, args),
            "image_labels" | "cifar" | "cifar_labels" => {
                let [path] = positional::<1>(el, callee, args, &["path"])?;
                let path = string(&path)?;
                let source = match callee.name.as_str() {
                    "image_labels" => Source::ImageLabels { path },
                    "cifar" => Source::Cifar { path },
                    _ => Source::CifarLabels { path },
                };
                Ok((source, Vec::new()))
            }
            _ => {
                if TRANSFORMS.contains(&callee.name.as_str()) {
                    return Err(Error::new(
                        callee.span,
                        format!("`{}` is a transform; it needs a source", callee.name),
                    )
                    .with_help(format!("write `idx(\"file\") -> {}(...)`", callee.name)));
                }
                let mut err = Error::new(
                    callee.span,
                    format!("unknown data source `{}`", callee.name),
                )
                .with_label(format!(
                    "expected one of {}",
                    SOURCES.map(|t| format!("`{t}`")).join(", ")
                ));
                if let Some(h) = did_you_mean(&callee.name, SOURCES) {
                    err = err.with_help(h);
                }
                Err(err)
            }
        },
        _ => Err(Error::new(
            e.span,
            "expected a data source such as `idx(\"file.gz\")` or `csv(\"file.csv\", ...)`",
        )
        .with_label("not a data source")),
    }
}

const TRANSFORMS: [&str; 13] = [
    "scale",
    "one_hot",
    "normalize",
    "reshape",
    "standardize",
    "minmax",
    "random_crop",
    "hflip",
    "vflip",
    "rotate",
    "affine",
    "color_jitter",
    "gaussian_noise",
];

/// Where a transform may stand in its pipeline: augmentations change
/// images, not labels or token ids, and colour jitter needs values still
/// in `[0, 1]`.
fn check_stage(
    source: &Source,
    before: &[Transform],
    transform: &Transform,
    name: &str,
    span: Span,
) -> Result<()> {
    let Transform::Augment(augment) = transform else {
        return Ok(());
    };
    let what = match source {
        Source::CsvColumn { .. }
        | Source::ImageLabels { .. }
        | Source::CifarLabels { .. }
        | Source::TextLabels { .. } => Some("class labels"),
        Source::Text { .. } => Some("token ids"),
        _ => None,
    };
    if let Some(what) = what {
        return Err(Error::new(
            span,
            format!("`{name}` augments images, but this field holds {what}"),
        )
        .with_help("augment the image field; its label stays as it is"));
    }
    if before.iter().any(|t| matches!(t, Transform::OneHot(_))) {
        return Err(Error::new(
            span,
            format!("`{name}` cannot follow `one_hot`: it augments images"),
        ));
    }
    let rescaled = before.iter().any(|t| {
        matches!(
            t,
            Transform::Normalize { .. } | Transform::Standardize { .. } | Transform::MinMax { .. }
        )
    });
    if rescaled && matches!(augment, nnc_ir::Augment::ColorJitter { .. }) {
        return Err(Error::new(
            span,
            "`color_jitter` works on values in [0, 1] (it clamps to them), but an earlier \
             transform has normalized this field",
        )
        .with_help("put `color_jitter` after `scale(1 / 255)` and before `normalize`"));
    }
    Ok(())
}

/// An optional number argument that must lie in `range`.
fn number_in(
    slot: &Option<Evaluated>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
    what: &str,
) -> Result<f64> {
    let Some(a) = slot else {
        return Ok(default);
    };
    let v = number(a)?;
    if !range.contains(&v) {
        let (lo, hi) = (range.start(), range.end());
        let bounds = if hi.is_infinite() {
            format!(">= {lo}")
        } else {
            format!("in [{lo}, {hi}]")
        };
        return Err(Error::new(
            a.span,
            format!("{what} must be {bounds}, found {v}"),
        ));
    }
    Ok(v)
}

/// An optional `[lo, hi]` pair of numbers within `range`, `lo <= hi`.
fn pair_in(
    slot: &Option<Evaluated>,
    range: std::ops::RangeInclusive<f64>,
    what: &str,
) -> Result<Option<[f64; 2]>> {
    let Some(a) = slot else {
        return Ok(None);
    };
    let values = numbers(a)?;
    let [lo, hi] = values[..] else {
        return Err(Error::new(
            a.span,
            format!("{what} takes two numbers `[a, b]`, found {}", values.len()),
        ));
    };
    if !(range.contains(&lo) && range.contains(&hi)) {
        return Err(Error::new(
            a.span,
            format!(
                "{what} must lie in [{}, {}], found [{lo}, {hi}]",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(Some([lo, hi]))
}

/// `per: "element"` (the default) or `per: "channel"`.
fn fit_axis(slot: &Option<Evaluated>, callee: &str) -> Result<nnc_ir::FitAxis> {
    match slot {
        None => Ok(nnc_ir::FitAxis::Element),
        Some(a) => match &a.value {
            Value::Str(s) if s == "element" => Ok(nnc_ir::FitAxis::Element),
            Value::Str(s) if s == "channel" => Ok(nnc_ir::FitAxis::Channel),
            other => Err(Error::new(
                a.span,
                format!(
                    "`per` of `{callee}` is \"element\" or \"channel\", found {}",
                    match other {
                        Value::Str(s) => format!("\"{s}\""),
                        v => v.kind(),
                    }
                ),
            )),
        },
    }
}

const SOURCES: [&str; 8] = [
    "idx",
    "csv",
    "images",
    "image_labels",
    "cifar",
    "cifar_labels",
    "text",
    "text_labels",
];

struct Evaluated {
    value: Value,
    span: Span,
}

/// Evaluates the args of a data or optimizer call, positionally or by keyword.
fn named_args(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
    names: &[&str],
) -> Result<Vec<Option<Evaluated>>> {
    let mut given = Vec::with_capacity(args.len());
    for a in args {
        given.push(Given {
            keyword: a.name.clone(),
            span: a.span,
            value: Evaluated {
                value: el.scalar_value(&a.value)?,
                span: a.value.span,
            },
        });
    }
    let signature = format!("{}({})", callee.name, names.join(", "));
    assign(&callee.name, names, &signature, given, &|s, m| {
        Error::new(s, m)
    })
}

/// Every argument of `names`, each optional.
fn slots<const N: usize>(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
    names: &[&str; N],
) -> Result<[Option<Evaluated>; N]> {
    named_args(el, callee, args, names)?
        .try_into()
        .map_err(|_| Error::new(callee.span, "internal error: argument count"))
}

fn positional<const N: usize>(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
    names: &[&str; N],
) -> Result<[Evaluated; N]> {
    let slots = named_args(el, callee, args, names)?;
    let mut out = Vec::with_capacity(N);
    for (slot, name) in slots.into_iter().zip(names) {
        out.push(slot.ok_or_else(|| {
            Error::new(
                callee.span,
                format!("missing argument `{name}` of `{}`", callee.name),
            )
            .with_note(format!("`{}({})`", callee.name, names.join(", ")))
        })?);
    }
    out.try_into()
        .map_err(|_| Error::new(callee.span, "internal error: argument count"))
}

fn string(a: &Evaluated) -> Result<String> {
    match &a.value {
        Value::Str(s) if !s.is_empty() => Ok(s.clone()),
        Value::Str(_) => Err(Error::new(a.span, "the path is empty")),
        other => Err(Error::new(
            a.span,
            format!("expected a file path (a string), found {}", other.kind()),
        )),
    }
}

fn number(a: &Evaluated) -> Result<f64> {
    match a.value.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(Error::new(
            a.span,
            format!("expected a number, found {}", a.value.kind()),
        )),
    }
}

fn index(a: &Evaluated) -> Result<usize> {
    match a.value {
        Value::Int(v) if v >= 0 => Ok(v as usize),
        ref other => Err(Error::new(
            a.span,
            format!("expected a non-negative int, found {}", other.kind()),
        )),
    }
}

fn numbers(a: &Evaluated) -> Result<Vec<f64>> {
    match &a.value {
        Value::List(items) => items
            .iter()
            .map(|v| {
                v.as_f64().ok_or_else(|| {
                    Error::new(a.span, format!("expected numbers, found {}", v.kind()))
                })
            })
            .collect(),
        _ => Ok(vec![number(a)?]),
    }
}

fn lower_csv(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
) -> Result<(Source, Vec<Transform>)> {
    let slots = named_args(el, callee, args, &["path", "columns", "column"])?;
    let mut it = slots.into_iter();
    let path = it
        .next()
        .flatten()
        .ok_or_else(|| Error::new(callee.span, "`csv` needs a file path"))?;
    let path = string(&path)?;
    let (columns, column) = (it.next().flatten(), it.next().flatten());
    let source = match (columns, column) {
        (Some(c), None) => {
            let bounds = match &c.value {
                Value::List(v) if v.len() == 2 => v.clone(),
                _ => {
                    return Err(Error::new(c.span, "`columns` takes `[from, to]`, a half-open range of column indices")
                        .with_label(format!("found {}", c.value.kind())))
                }
            };
            let from = index(&Evaluated { value: bounds[0].clone(), span: c.span })?;
            let to = index(&Evaluated { value: bounds[1].clone(), span: c.span })?;
            if from >= to {
                return Err(Error::new(c.span, format!("`columns: [{from}, {to}]` selects no column")).with_help("the range is half-open: `[0, 64]` selects columns 0 to 63"));
            }
            Source::CsvColumns { path, from, to }
        }
        (None, Some(c)) => Source::CsvColumn { path, column: index(&c)? },
        (Some(_), Some(c)) => return Err(Error::new(c.span, "give either `columns: [from, to]` or `column: k`, not both")),
        (None, None) => {
            return Err(Error::new(callee.span, "`csv` needs `columns: [from, to]` or `column: k`")
                .with_help("e.g. `csv(\"digits.csv.gz\", columns: [0, 64])` for features, `csv(\"digits.csv.gz\", column: 64)` for labels"))
        }
    };
    Ok((source, Vec::new()))
}

/// `images(path, grayscale: bool, size: [h, w])`: an image folder, one
/// subfolder per class.
fn lower_images(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
) -> Result<(Source, Vec<Transform>)> {
    let slots = named_args(el, callee, args, &["path", "grayscale", "size"])?;
    let mut it = slots.into_iter();
    let path = it.next().flatten().ok_or_else(|| {
        Error::new(callee.span, "`images` needs a folder path").with_help(
            "e.g. `images(\"cifar10/train\")`, or a folder inside a tar archive: \
             `images(\"cifar10.tar.gz/train\")`",
        )
    })?;
    let path = string(&path)?;
    let grayscale = match it.next().flatten() {
        None => false,
        Some(g) => match g.value {
            Value::Bool(b) => b,
            ref other => {
                return Err(Error::new(
                    g.span,
                    format!(
                        "`grayscale` takes `true` or `false`, found {}",
                        other.kind()
                    ),
                ))
            }
        },
    };
    let size = it.next().flatten().map(|s| image_size(&s)).transpose()?;
    Ok((
        Source::Images {
            path,
            grayscale,
            size,
        },
        Vec::new(),
    ))
}

/// `text(path, column, length, min_count, max_size, ngrams, format)` and
/// `text_labels(path, column, format)`: a column of a text table.
fn lower_text(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
) -> Result<(Source, Vec<Transform>)> {
    let tokens = callee.name == "text";
    let names: &[&str] = if tokens {
        &[
            "path",
            "column",
            "length",
            "min_count",
            "max_size",
            "ngrams",
            "format",
        ]
    } else {
        &["path", "column", "format"]
    };
    let slots = named_args(el, callee, args, names)?;
    let mut given: HashMap<&str, Evaluated> = names
        .iter()
        .zip(slots)
        .filter_map(|(n, slot)| slot.map(|s| (*n, s)))
        .collect();
    let path = given.remove("path").ok_or_else(|| {
        Error::new(callee.span, format!("`{}` needs a file path", callee.name)).with_help(format!(
            "e.g. `{}(\"text/reuters-r8-train.tab\", column: \"{}\"{})`",
            callee.name,
            if tokens { "Text" } else { "Category" },
            if tokens { ", length: 200" } else { "" }
        ))
    })?;
    let path_span = path.span;
    let path = string(&path)?;
    let format = match given.remove("format") {
        Some(f) => match &f.value {
            Value::Str(s) => match s.as_str() {
                "tab" => TextFormat::Tab,
                "tsv" => TextFormat::Tsv,
                "csv" => TextFormat::Csv,
                _ => {
                    return Err(Error::new(
                        f.span,
                        format!("unknown text format {s:?}"),
                    )
                    .with_label("expected \"tab\", \"tsv\" or \"csv\""))
                }
            },
            other => {
                return Err(Error::new(
                    f.span,
                    format!(
                        "`format` takes \"tab\", \"tsv\" or \"csv\", found {}",
                        other.kind()
                    ),
                ))
            }
        },
        None => TextFormat::of_path(&path).ok_or_else(|| {
            Error::new(
                path_span,
                format!("cannot tell how `{path}` is laid out from its extension"),
            )
            .with_label("expected a `.tab`, `.tsv` or `.csv` file (optionally `.gz`)")
            .with_help("say which with `format: \"tab\"` (Orange, three header lines), `\"tsv\"` or `\"csv\"` (one header line)")
        })?,
    };
    let column = match given.remove("column") {
        Some(c) => match &c.value {
            Value::Str(name) if !name.is_empty() => TextColumn::Name(name.clone()),
            Value::Int(i) if *i >= 0 => TextColumn::Index(*i as usize),
            other => {
                return Err(Error::new(
                    c.span,
                    format!(
                        "`column` takes a header name or a 0-based index, found {}",
                        other.kind()
                    ),
                ))
            }
        },
        None => {
            return Err(Error::new(
                callee.span,
                format!("`{}` needs the column to read", callee.name),
            )
            .with_help(format!(
                "give its header name (`column: \"{}\"`) or its 0-based index",
                if tokens { "Text" } else { "Category" }
            )))
        }
    };
    if !tokens {
        return Ok((
            Source::TextLabels {
                path,
                format,
                column,
            },
            Vec::new(),
        ));
    }
    let mut int_in = |name: &str, min: usize, max: usize, why: &str| -> Result<Option<usize>> {
        let Some(a) = given.remove(name) else {
            return Ok(None);
        };
        match a.value {
            Value::Int(v) if v >= min as i64 && v <= max as i64 => Ok(Some(v as usize)),
            ref other => Err(Error::new(
                a.span,
                format!("`{name}` takes an int from {min} to {max}{why}"),
            )
            .with_label(format!("found {}", other.kind()))),
        }
    };
    let length = int_in("length", 1, 1 << 20, "")?.ok_or_else(|| {
        Error::new(callee.span, "`text` needs `length`, the tokens per sample")
            .with_help("longer texts keep their first `length` tokens, shorter ones are padded with id 0: e.g. `length: 200`")
    })?;
    let min_count = int_in("min_count", 1, i32::MAX as usize, "")?;
    let max_size = int_in(
        "max_size",
        3,
        i32::MAX as usize,
        " (ids 0 and 1 are padding and unknown, so 3 holds one word)",
    )?;
    let ngrams = int_in("ngrams", 1, 8, "")?;
    Ok((
        Source::Text {
            path,
            format,
            column,
            length,
            min_count,
            max_size,
            ngrams,
        },
        Vec::new(),
    ))
}

/// `size: [height, width]`. Sides are capped at 65535, JPEG's own limit,
/// so a typo such as `[32000000, 32]` is caught here rather than as a
/// failed allocation at run time.
fn image_size(a: &Evaluated) -> Result<[usize; 2]> {
    let err = |found: String| {
        Error::new(
            a.span,
            "`size` takes `[height, width]`, two ints from 1 to 65535",
        )
        .with_label(found)
    };
    let side = |v: &Value| match *v {
        Value::Int(n) if (1..=65535).contains(&n) => Ok(n as usize),
        ref other => Err(err(format!("found {}", other.kind()))),
    };
    match &a.value {
        Value::List(v) if v.len() == 2 => Ok([side(&v[0])?, side(&v[1])?]),
        Value::List(v) => Err(err(format!("found a list of {} values", v.len()))),
        other => Err(err(format!("found {}", other.kind()))),
    }
}

fn lower_transform(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
    span: Span,
) -> Result<Transform> {
    match callee.name.as_str() {
        "scale" => {
            let [f] = positional::<1>(el, callee, args, &["factor"])?;
            Ok(Transform::Scale(number(&f)?))
        }
        "one_hot" => {
            let [n] = positional::<1>(el, callee, args, &["classes"])?;
            match index(&n)? {
                0 => Err(Error::new(n.span, "`one_hot` needs at least one class")),
                k => Ok(Transform::OneHot(k)),
            }
        }
        "normalize" => {
            let [mean, std] = positional::<2>(el, callee, args, &["mean", "std"])?;
            let (m, s) = (numbers(&mean)?, numbers(&std)?);
            if m.len() != s.len() {
                return Err(Error::new(
                    span,
                    format!("`normalize` has {} means but {} stds", m.len(), s.len()),
                ));
            }
            if s.iter().any(|&v| v <= 0.0) {
                return Err(Error::new(std.span, "every std of `normalize` must be > 0"));
            }
            Ok(Transform::Normalize { mean: m, std: s })
        }
        "reshape" => {
            let [dims] = positional::<1>(el, callee, args, &["shape"])?;
            match &dims.value {
                Value::List(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::Int(d) if *d > 0 => Ok(*d as usize),
                        other => Err(Error::new(
                            dims.span,
                            format!(
                                "per-sample dims must be positive ints, found {}",
                                other.kind()
                            ),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Transform::Reshape),
                other => Err(Error::new(
                    dims.span,
                    format!("`reshape` takes a list of dims, found {}", other.kind()),
                )),
            }
        }
        "standardize" | "minmax" => {
            let [per] = slots::<1>(el, callee, args, &["per"])?;
            let per = fit_axis(&per, &callee.name)?;
            Ok(match callee.name.as_str() {
                "standardize" => Transform::Standardize { per },
                _ => Transform::MinMax { per },
            })
        }
        "random_crop" => {
            let [size, padding] = slots::<2>(el, callee, args, &["size", "padding"])?;
            let size = size.ok_or_else(|| {
                Error::new(callee.span, "missing argument `size` of `random_crop`")
                    .with_note("`random_crop(size, padding: 0)`")
            })?;
            let size = match &size.value {
                Value::Int(n) if *n > 0 => [*n as usize; 2],
                Value::List(items) => match items[..] {
                    [Value::Int(h), Value::Int(w)] if h > 0 && w > 0 => [h as usize, w as usize],
                    _ => {
                        return Err(Error::new(
                            size.span,
                            "the crop size is one positive int or two `[height, width]`",
                        ))
                    }
                },
                other => {
                    return Err(Error::new(
                        size.span,
                        format!(
                            "the crop size must be a positive int, found {}",
                            other.kind()
                        ),
                    ))
                }
            };
            let padding = match &padding {
                Some(p) => index(p)?,
                None => 0,
            };
            Ok(Transform::Augment(nnc_ir::Augment::RandomCrop {
                size,
                padding,
            }))
        }
        "hflip" | "vflip" => {
            let [p] = slots::<1>(el, callee, args, &["p"])?;
            let p = number_in(&p, 0.5, 0.0..=1.0, "a probability")?;
            Ok(Transform::Augment(nnc_ir::Augment::Flip {
                horizontal: callee.name == "hflip",
                p,
            }))
        }
        "rotate" => {
            let [degrees] = positional::<1>(el, callee, args, &["degrees"])?;
            let degrees = number_in(&Some(degrees), 0.0, 0.0..=180.0, "`degrees`")?;
            Ok(Transform::Augment(nnc_ir::Augment::Affine {
                degrees,
                translate: None,
                scale: None,
            }))
        }
        "affine" => {
            let [degrees, translate, scale_arg] =
                slots::<3>(el, callee, args, &["degrees", "translate", "scale"])?;
            let degrees = number_in(&degrees, 0.0, 0.0..=180.0, "`degrees`")?;
            let translate = pair_in(&translate, 0.0..=1.0, "`translate`")?;
            let scale = pair_in(&scale_arg, f64::MIN_POSITIVE..=f64::INFINITY, "`scale`")?;
            if let (Some([lo, hi]), Some(a)) = (scale, &scale_arg) {
                if lo > hi {
                    return Err(Error::new(
                        a.span,
                        format!("`scale` is `[lo, hi]` with lo <= hi, found [{lo}, {hi}]"),
                    ));
                }
            }
            Ok(Transform::Augment(nnc_ir::Augment::Affine {
                degrees,
                translate,
                scale,
            }))
        }
        "color_jitter" => {
            let [b, c, sat] =
                slots::<3>(el, callee, args, &["brightness", "contrast", "saturation"])?;
            let nonneg = 0.0..=f64::INFINITY;
            Ok(Transform::Augment(nnc_ir::Augment::ColorJitter {
                brightness: number_in(&b, 0.0, nonneg.clone(), "`brightness`")?,
                contrast: number_in(&c, 0.0, nonneg.clone(), "`contrast`")?,
                saturation: number_in(&sat, 0.0, nonneg, "`saturation`")?,
            }))
        }
        "gaussian_noise" => {
            let [std] = positional::<1>(el, callee, args, &["std"])?;
            let std = number_in(&Some(std), 0.0, 0.0..=f64::INFINITY, "the noise's `std`")?;
            Ok(Transform::Augment(nnc_ir::Augment::GaussianNoise { std }))
        }
        name if SOURCES.contains(&name) => Err(Error::new(
            callee.span,
            format!(
                "`{}` is a source; it starts a field, it cannot follow `->`",
                callee.name
            ),
        )),
        other => {
            let mut err = Error::new(callee.span, format!("unknown transform `{other}`"))
                .with_label(format!(
                    "expected one of {}",
                    TRANSFORMS.map(|t| format!("`{t}`")).join(", ")
                ));
            if let Some(h) = did_you_mean(other, TRANSFORMS) {
                err = err.with_help(h);
            }
            Err(err)
        }
    }
}

fn split_fraction(el: &mut Elaborator, e: &Expr, what: &str) -> Result<f64> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return Err(Error::new(
            e.span,
            format!("expected `split(fraction)` for the {what} set"),
        ));
    };
    if callee.name != "split" {
        return Err(Error::new(
            callee.span,
            format!(
                "expected `split(fraction)` for the {what} set, found `{}`",
                callee.name
            ),
        ));
    }
    let [f] = positional::<1>(el, callee, args, &["fraction"])?;
    let v = number(&f)?;
    if !(v > 0.0 && v < 1.0) {
        return Err(Error::new(
            f.span,
            format!("the {what} fraction must be between 0 and 1 (exclusive), found {v}"),
        ));
    }
    Ok(v)
}

fn check_inputs_have_fields(
    graph: &Graph,
    data: &DataSpec,
    def: &ast::DataDef,
    train: &ast::TrainDef,
) -> Result<()> {
    for (node, name) in graph.inputs() {
        // Fed by the training loop, not by data.
        if nnc_ir::module::is_loop_input(name) {
            continue;
        }
        let want = graph.ty(node).dtype;
        match data.fields.iter().find(|f| f.name == name) {
            None => {
                let mut e = Error::new(
                    train.data.span,
                    format!(
                        "data `{}` has no field `{name}` for the model's input `{name}`",
                        data.name
                    ),
                )
                .with_secondary(def.name.span, "data block defined here");
                if let Some(h) = did_you_mean(name, data.fields.iter().map(|f| f.name.as_str())) {
                    e = e.with_help(h);
                }
                return Err(e);
            }
            Some(f) if f.dtype != want => {
                let span = def
                    .fields
                    .iter()
                    .find(|d| d.name.name == name)
                    .map_or(train.data.span, |d| d.span);
                return Err(Error::new(
                    span,
                    format!(
                        "data field `{name}` is {} but the model's input `{name}` is {want}",
                        f.dtype
                    ),
                )
                .with_help(format!("annotate the field, e.g. `{name}: {want} = ...`")));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ train

const SETTINGS: [&str; 13] = [
    "loss",
    "optimizer",
    "clip_grad_value",
    "clip_grad_norm",
    "schedule",
    "early_stop",
    "prune",
    "batch",
    "epochs",
    "seed",
    "shuffle",
    "validate",
    "metrics",
];

/// The model elaborated in both modes, with its outputs in each.
struct Modes<'m, 'a> {
    train: &'m mut Elaborator<'a>,
    train_outputs: &'m [(String, NodeId)],
    eval: &'m mut Elaborator<'a>,
    eval_outputs: &'m [(String, NodeId)],
}

/// The train block: its settings, and the loss and metrics added to the
/// model of each mode (the objective, and the evaluation graph).
fn lower_train(
    modes: Modes,
    train: &ast::TrainDef,
    data: &DataSpec,
    data_def: &ast::DataDef,
) -> Result<TrainSpec> {
    let Modes {
        train: el,
        train_outputs: outputs,
        eval: ev,
        eval_outputs,
    } = modes;
    let mut settings: HashMap<&str, &ast::Setting> = HashMap::new();
    for s in &train.settings {
        if !SETTINGS.contains(&s.key.name.as_str()) {
            let mut e = Error::new(
                s.key.span,
                format!("unknown train setting `{}`", s.key.name),
            )
            .with_label(format!(
                "expected one of {}",
                SETTINGS.map(|t| format!("`{t}`")).join(", ")
            ));
            if let Some(h) = did_you_mean(&s.key.name, SETTINGS) {
                e = e.with_help(h);
            }
            return Err(e);
        }
        if let Some(prev) = settings.insert(s.key.name.as_str(), s) {
            return Err(
                Error::new(s.key.span, format!("`{}` is set twice", s.key.name))
                    .with_secondary(prev.key.span, "first set here"),
            );
        }
    }
    let required = |key: &str, example: &str| {
        settings.get(key).copied().ok_or_else(|| {
            Error::new(train.model.span, format!("the train block has no `{key}`"))
                .with_help(format!("add `{key} = {example}`"))
        })
    };
    let loss_setting = required("loss", "cross_entropy(logits, label)")?;
    let optimizer_setting = required("optimizer", "adam(lr: 1e-3)")?;
    add_loss(el, &loss_setting.value, train, data, data_def, outputs)?;
    let (optimizer, no_decay) = lower_optimizer(el, &optimizer_setting.value)?;
    let clip = lower_clip(el, &settings)?;
    let (schedule, plateau_monitor) = match settings.get("schedule") {
        None => (None, None),
        Some(s) => {
            let (schedule, monitor) = lower_schedule(el, &s.value)?;
            (Some(schedule), monitor)
        }
    };
    let (early_stop, early_stop_monitor) = match settings.get("early_stop") {
        None => (None, None),
        Some(s) => {
            let (early_stop, monitor) = lower_early_stop(el, &s.value)?;
            (Some(early_stop), Some(monitor))
        }
    };
    let positive = |el: &mut Elaborator, key: &str, default: usize| -> Result<usize> {
        match settings.get(key) {
            None => Ok(default),
            Some(s) => match el.scalar_value(&s.value)? {
                Value::Int(v) if v >= 1 => Ok(v as usize),
                other => Err(Error::new(
                    s.value.span,
                    format!("`{key}` must be a positive int, found {}", other.kind()),
                )),
            },
        }
    };
    let batch = positive(el, "batch", 32)?;
    let epochs = positive(el, "epochs", 1)?;
    let prune = match settings.get("prune") {
        None => None,
        Some(s) => Some(lower_prune(el, &s.value)?),
    };
    let seed = match settings.get("seed") {
        None => 0,
        Some(s) => match el.scalar_value(&s.value)? {
            Value::Int(v) if v >= 0 => v as u64,
            other => {
                return Err(Error::new(
                    s.value.span,
                    format!("`seed` must be a non-negative int, found {}", other.kind()),
                ))
            }
        },
    };
    let shuffle = match settings.get("shuffle") {
        None => true,
        Some(s) => match el.scalar_value(&s.value)? {
            Value::Bool(b) => b,
            other => {
                return Err(Error::new(
                    s.value.span,
                    format!(
                        "`shuffle` must be `true` or `false`, found {}",
                        other.kind()
                    ),
                ))
            }
        },
    };
    let binary_loss = is_binary_loss(&loss_setting.value);
    let (validate, kfold) = match settings.get("validate") {
        None => (None, None),
        Some(s) => lower_validate(el, &s.value, outputs)?,
    };
    let metrics = match settings.get("metrics") {
        None => Vec::new(),
        Some(s) => lower_metrics(el, &s.value, outputs, binary_loss)?,
    };
    for monitor in plateau_monitor.iter().chain(&early_stop_monitor) {
        let holds_out = validate.is_some() || kfold.is_some();
        check_monitor(monitor, holds_out, &metrics, train)?;
    }
    // The same loss and metrics on the evaluation model, for validation
    // and test. Any error was reported on the objective already, so these
    // succeed unless the loss itself depends on `training`.
    add_loss(ev, &loss_setting.value, train, data, data_def, eval_outputs)?;
    if let Some(s) = settings.get("metrics") {
        lower_metrics(ev, &s.value, eval_outputs, binary_loss)?;
    }
    let objective = finished(&el.graph);
    let mut evaluation = finished(&ev.graph);
    evaluation.name = "evaluation".into();
    Ok(TrainSpec {
        objective,
        evaluation,
        data: data.name.clone(),
        optimizer,
        no_decay,
        clip,
        batch,
        epochs,
        seed,
        shuffle,
        validate,
        kfold,
        schedule,
        early_stop,
        prune,
        metrics,
        written: train
            .settings
            .iter()
            .map(|s| (s.key.name.clone(), ast::Infix(&s.value).to_string()))
            .collect(),
    })
}

/// Adds the `loss` output to the model elaborated by `el`, whose outputs
/// are `outputs`.
fn add_loss(
    el: &mut Elaborator,
    loss_expr: &Expr,
    train: &ast::TrainDef,
    data: &DataSpec,
    data_def: &ast::DataDef,
    outputs: &[(String, NodeId)],
) -> Result<()> {
    // The loss sees the model's outputs and the data fields that are not
    // model inputs; those become graph inputs once their type is known.
    let mut scope = Vec::new();
    for f in &data.fields {
        if el.graph.find_leaf(&f.name).is_some() {
            continue;
        }
        let ast_field = data_def.fields.iter().find(|d| d.name.name == f.name);
        let annotated = ast_field.and_then(|d| d.ty.as_ref());
        let ty = match annotated {
            Some(te) if matches!(&te.kind, TypeKind::Tensor { dims: Some(_), .. }) => {
                let empty = el.scope_with([]);
                Some(el.resolve_type(&empty, te, true)?)
            }
            _ => None,
        };
        el.pending.insert(
            f.name.clone(),
            PendingField {
                dtype: Some(f.dtype).filter(|_| annotated.is_some()),
                ty,
                span: ast_field.map_or(train.data.span, |d| d.span),
            },
        );
        scope.push((f.name.clone(), Value::Pending(f.name.clone())));
    }
    for (name, node) in outputs {
        scope.push((name.clone(), Value::Tensor(*node)));
    }
    // The model's symbolic dims (`B`) are names in the loss too.
    let inputs: Vec<NodeId> = el.graph.inputs().into_iter().map(|(n, _)| n).collect();
    for node in inputs {
        for d in el.graph.ty(node).shape.clone() {
            if let nnc_ir::Dim::Sym(sym) = d {
                scope.insert(0, (sym.clone(), Value::Sym(sym)));
            }
        }
    }
    let scope = el.scope_with(scope);
    el.in_loss = true;
    let loss = el.eval(&scope, loss_expr);
    el.in_loss = false;
    let loss = loss?;
    let loss = el.tensor(loss, loss_expr.span, "the loss")?;
    let loss_ty = el.graph.ty(loss).clone();
    if !loss_ty.shape.is_empty() || !loss_ty.dtype.is_float() {
        return Err(Error::new(
            loss_expr.span,
            format!("the loss must be a float scalar, found {loss_ty}"),
        )
        .with_label("not a scalar")
        .with_help("reduce it, e.g. `mean(...)`"));
    }
    el.graph.set_output(LOSS, loss);
    Ok(())
}

const DECAYS: [&str; 6] = [
    "step",
    "exponential",
    "cosine",
    "multistep",
    "onecycle",
    "plateau",
];

/// A call in a schedule: its name and arguments.
type Part<'e> = (&'e ast::Ident, &'e [ast::Arg]);

/// A monitor as written, checked against the metrics once they are known.
struct WrittenMonitor {
    monitor: Monitor,
    /// The `monitor:` argument, or the call when it is left at its default.
    span: Span,
}

/// `[warmup(steps: n) ->] decay`, where the decay is `step(every: k,
/// gamma: g)`, `exponential(gamma: g)`, `cosine(min_lr: m)`,
/// `multistep(milestones: [..], gamma: g)`, `onecycle(max_lr: m, ..)` or
/// `plateau(..)`. Also returns plateau's monitor, for [`check_monitor`].
fn lower_schedule(el: &mut Elaborator, e: &Expr) -> Result<(Schedule, Option<WrittenMonitor>)> {
    let expected = "expected a schedule such as `step(every: 5, gamma: 0.5)`, `cosine()` or `warmup(steps: 500) -> cosine()`";
    let (first, decay): (Part, Option<Part>) = match &e.kind {
        ExprKind::Call { callee, args } => ((callee, args), None),
        ExprKind::Ident(id) => ((id, &[]), None),
        ExprKind::Pipe { input, stage } => match &input.kind {
            ExprKind::Call { callee, args } => {
                ((callee, args), Some((&stage.callee, stage.args.as_slice())))
            }
            ExprKind::Ident(id) => ((id, &[]), Some((&stage.callee, stage.args.as_slice()))),
            _ => {
                return Err(
                    Error::new(input.span, "a schedule chains at most two parts")
                        .with_help("write `warmup(steps: 500) -> cosine()`"),
                )
            }
        },
        _ => return Err(Error::new(e.span, expected)),
    };
    if first.0.name != "warmup" {
        if let Some((stage, _)) = decay {
            let mut err = Error::new(
                stage.span,
                format!("`{}` cannot follow `{}`", stage.name, first.0.name),
            );
            if stage.name == "warmup" {
                err = err.with_help("the warmup comes first: `warmup(steps: 500) -> cosine()`");
            } else {
                err = err.with_label("only `warmup(...) -> decay` chains");
            }
            return Err(err);
        }
        let (decay, monitor) = lower_decay(el, first.0, first.1)?;
        return Ok((
            Schedule {
                warmup: None,
                decay: Some(decay),
            },
            monitor,
        ));
    }
    let warmup = lower_warmup(el, first.0, first.1)?;
    let (decay, monitor) = match decay {
        None => (None, None),
        Some((callee, args)) => {
            let (decay, monitor) = lower_decay(el, callee, args)?;
            if decay.warms_up() {
                return Err(Error::new(
                    callee.span,
                    format!("`{}` cannot follow a warmup", callee.name),
                )
                .with_label("it warms up itself")
                .with_help("set its `pct_start` instead"));
            }
            (Some(decay), monitor)
        }
    };
    Ok((
        Schedule {
            warmup: Some(warmup),
            decay,
        },
        monitor,
    ))
}

/// A number argument with a default and a range, named in the error.
fn ranged(
    a: &Option<Evaluated>,
    name: &str,
    default: f64,
    ok: fn(f64) -> bool,
    rule: &str,
) -> Result<f64> {
    match a {
        None => Ok(default),
        Some(v) => {
            let x = number(v)?;
            if ok(x) {
                Ok(x)
            } else {
                Err(
                    Error::new(v.span, format!("`{name}` must be {rule}, found {x}"))
                        .with_label(format!("invalid `{name}`")),
                )
            }
        }
    }
}

/// A count argument (`patience`, `cooldown`): a non-negative int.
fn count(a: &Option<Evaluated>, name: &str, default: usize) -> Result<usize> {
    match a {
        None => Ok(default),
        Some(v) => match v.value {
            Value::Int(n) if n >= 0 => Ok(n as usize),
            ref other => Err(Error::new(
                v.span,
                format!(
                    "`{name}` must be a non-negative int, found {}",
                    match other {
                        Value::Int(n) => n.to_string(),
                        other => other.kind().to_string(),
                    }
                ),
            )),
        },
    }
}

fn boolean(a: &Option<Evaluated>, name: &str, default: bool) -> Result<bool> {
    match a {
        None => Ok(default),
        Some(Evaluated {
            value: Value::Bool(b),
            ..
        }) => Ok(*b),
        Some(v) => Err(Error::new(
            v.span,
            format!(
                "`{name}` must be `true` or `false`, found {}",
                v.value.kind()
            ),
        )),
    }
}

/// PyTorch's `LinearLR(start_factor, total_iters=steps)`, per step.
fn lower_warmup(el: &mut Elaborator, callee: &ast::Ident, args: &[ast::Arg]) -> Result<Warmup> {
    let s = named_args(el, callee, args, &["steps", "start_factor"])?;
    let steps = match &s[0] {
        None => {
            return Err(Error::new(
                callee.span,
                "`warmup` needs `steps`, the optimizer steps it lasts",
            )
            .with_help("e.g. `schedule = warmup(steps: 500) -> cosine()`"))
        }
        Some(a) => match a.value {
            Value::Int(n) if n >= 1 => n as usize,
            ref other => {
                return Err(Error::new(
                    a.span,
                    format!(
                        "`steps` must be a positive int, found {}",
                        match other {
                            Value::Int(n) => n.to_string(),
                            other => other.kind().to_string(),
                        }
                    ),
                ))
            }
        },
    };
    let start_factor = ranged(
        &s[1],
        "start_factor",
        1.0 / 3.0,
        |x| x > 0.0 && x <= 1.0,
        "in (0, 1]",
    )?;
    Ok(Warmup {
        steps,
        start_factor,
    })
}

/// The `monitor:` argument of `plateau` or `early_stop`, read from the
/// source (its value is a metric's name, not an expression), and the
/// other arguments.
fn take_monitor(callee: &ast::Ident, args: &[ast::Arg]) -> Result<(WrittenMonitor, Vec<ast::Arg>)> {
    let mut monitor = WrittenMonitor {
        monitor: Monitor {
            validation: true,
            metric: "loss".into(),
        },
        span: callee.span,
    };
    let mut rest = Vec::new();
    for a in args {
        if a.name.as_ref().is_none_or(|n| n.name != "monitor") {
            rest.push(a.clone());
            continue;
        }
        let name = match &a.value.kind {
            ExprKind::Ident(id) => id.name.clone(),
            ExprKind::Str(s) => s.clone(),
            _ => {
                return Err(Error::new(
                    a.value.span,
                    "expected a metric name such as `val_loss`",
                ))
            }
        };
        let (validation, metric) = match name.strip_prefix("val_") {
            Some(m) => (true, m),
            None => (false, name.as_str()),
        };
        if !MONITORED.contains(&metric) && !is_set_metric_name(metric) {
            let known: Vec<String> = MONITORED
                .iter()
                .flat_map(|m| [format!("val_{m}"), m.to_string()])
                .collect();
            let mut err =
                Error::new(a.value.span, format!("unknown monitor `{name}`")).with_label(format!(
                    "expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            if let Some(h) = did_you_mean(&name, known.iter().map(String::as_str)) {
                err = err.with_help(h);
            }
            return Err(err);
        }
        monitor = WrittenMonitor {
            monitor: Monitor {
                validation,
                metric: metric.into(),
            },
            span: a.value.span,
        };
    }
    Ok((monitor, rest))
}

/// The metrics a monitor can watch on the training samples too, without
/// the `val_` prefix; the set metrics (`f1`, `r2`, ...) are measured on
/// held-out samples only.
const MONITORED: [&str; 2] = ["loss", "accuracy"];

/// Whether `name` is a set metric's value name ([`SetMetric::value_name`]):
/// `f1`, `precision_weighted`, `top_3_accuracy`, `r2`, ...
fn is_set_metric_name(name: &str) -> bool {
    let averaged = ["precision", "recall", "f1"].iter().any(|base| {
        name.strip_prefix(base)
            .is_some_and(|rest| ["", "_micro", "_weighted"].contains(&rest))
    });
    let top_k = name
        .strip_prefix("top_")
        .and_then(|r| r.strip_suffix("_accuracy"))
        .is_some_and(|k| k.parse::<usize>().is_ok());
    averaged || top_k || ["binary_accuracy", "mae", "rmse", "r2"].contains(&name)
}

/// Whether `metrics` computes the metric `name` (the loss always is).
fn computes(metrics: &[Metric], name: &str) -> bool {
    name == "loss"
        || metrics.iter().any(|m| match m {
            Metric::Accuracy => name == "accuracy",
            Metric::Set(set, _) => set.value_name().as_deref() == Some(name),
        })
}

/// A monitor must watch something the run computes: validation samples
/// for `val_*`, the metric in `metrics`.
fn check_monitor(
    written: &WrittenMonitor,
    holds_out: bool,
    metrics: &[Metric],
    train: &ast::TrainDef,
) -> Result<()> {
    let m = &written.monitor;
    if !m.validation && !MONITORED.contains(&m.metric.as_str()) {
        return Err(Error::new(
            written.span,
            format!(
                "`{}` is measured on held-out samples only, not on the training batches",
                m.metric
            ),
        )
        .with_help(format!("monitor `val_{}`", m.metric)));
    }
    if m.validation && !holds_out {
        return Err(Error::new(
            written.span,
            format!("monitor `{m}` needs validation samples, but the train block holds none out"),
        )
        .with_secondary(train.model.span, "this train block has no `validate`")
        .with_help(format!(
            "add `validate = split(0.1)`, or monitor the training samples' `{}`",
            m.metric
        )));
    }
    if !computes(metrics, &m.metric) {
        return Err(Error::new(
            written.span,
            format!(
                "monitor `{m}` watches `{}`, which the run never computes",
                m.metric
            ),
        )
        .with_help(format!("add `metrics = [{}]`", m.metric)));
    }
    Ok(())
}

/// One of [`DECAYS`], and plateau's monitor.
fn lower_decay(
    el: &mut Elaborator,
    callee: &ast::Ident,
    args: &[ast::Arg],
) -> Result<(Decay, Option<WrittenMonitor>)> {
    let positive_int = |a: &Evaluated| match a.value {
        Value::Int(v) if v >= 1 => Ok(v as usize),
        ref other => Err(Error::new(
            a.span,
            format!("expected a positive int, found {}", other.kind()),
        )),
    };
    let gamma = |a: &Option<Evaluated>, default: f64| -> Result<f64> {
        match a {
            None => Ok(default),
            Some(a) => {
                let g = number(a)?;
                if g > 0.0 && g <= 1.0 {
                    Ok(g)
                } else {
                    Err(Error::new(
                        a.span,
                        format!("`gamma` must be in (0, 1], found {g}"),
                    ))
                }
            }
        }
    };
    let decay = match callee.name.as_str() {
        "step" => {
            let s = named_args(el, callee, args, &["every", "gamma"])?;
            let every = match &s[0] {
                Some(a) => positive_int(a)?,
                None => {
                    return Err(Error::new(
                        callee.span,
                        "`step` needs `every`, the number of epochs between decays",
                    )
                    .with_help("e.g. `schedule = step(every: 2, gamma: 0.5)`"))
                }
            };
            Decay::Step {
                every,
                gamma: gamma(&s[1], 0.1)?,
            }
        }
        "exponential" => {
            let s = named_args(el, callee, args, &["gamma"])?;
            if s[0].is_none() {
                return Err(Error::new(
                    callee.span,
                    "`exponential` needs `gamma`, the factor per epoch",
                ));
            }
            Decay::Exponential {
                gamma: gamma(&s[0], 1.0)?,
            }
        }
        "cosine" => {
            let s = named_args(el, callee, args, &["min_lr"])?;
            Decay::Cosine {
                min_lr: ranged(&s[0], "min_lr", 0.0, |x| x >= 0.0, ">= 0")?,
            }
        }
        "multistep" => {
            let s = named_args(el, callee, args, &["milestones", "gamma"])?;
            let Some(list) = &s[0] else {
                return Err(Error::new(
                    callee.span,
                    "`multistep` needs `milestones`, the epochs at which the rate drops",
                )
                .with_help("e.g. `schedule = multistep(milestones: [30, 80], gamma: 0.1)`"));
            };
            Decay::MultiStep {
                milestones: milestones(list)?,
                gamma: gamma(&s[1], 0.1)?,
            }
        }
        "onecycle" => {
            let s = named_args(
                el,
                callee,
                args,
                &[
                    "max_lr",
                    "pct_start",
                    "div_factor",
                    "final_div_factor",
                    "anneal",
                    "three_phase",
                ],
            )?;
            if s[0].is_none() {
                return Err(Error::new(
                    callee.span,
                    "`onecycle` needs `max_lr`, the peak learning rate",
                )
                .with_help("e.g. `schedule = onecycle(max_lr: 0.1)`"));
            }
            let max_lr = ranged(&s[0], "max_lr", 0.0, |x| x > 0.0, "> 0")?;
            let three_phase = boolean(&s[5], "three_phase", false)?;
            let pct_start = if three_phase {
                // The second phase mirrors the first, so both fit in the run.
                ranged(
                    &s[1],
                    "pct_start",
                    0.3,
                    |x| x > 0.0 && x <= 0.5,
                    "in (0, 0.5] with `three_phase`",
                )?
            } else {
                ranged(&s[1], "pct_start", 0.3, |x| x > 0.0 && x < 1.0, "in (0, 1)")?
            };
            let anneal = match &s[4] {
                None => Anneal::Cos,
                Some(a) => match &a.value {
                    Value::Str(m) if m == "cos" => Anneal::Cos,
                    Value::Str(m) if m == "linear" => Anneal::Linear,
                    _ => return Err(Error::new(a.span, "`anneal` must be \"cos\" or \"linear\"")),
                },
            };
            Decay::OneCycle(OneCycle {
                max_lr,
                pct_start,
                div_factor: ranged(&s[2], "div_factor", 25.0, |x| x > 0.0, "> 0")?,
                final_div_factor: ranged(&s[3], "final_div_factor", 1e4, |x| x > 0.0, "> 0")?,
                anneal,
                three_phase,
            })
        }
        "plateau" => {
            let (monitor, rest) = take_monitor(callee, args)?;
            let s = named_args(
                el,
                callee,
                &rest,
                &["patience", "factor", "threshold", "cooldown", "min_lr"],
            )?;
            let plateau = Plateau {
                monitor: monitor.monitor.clone(),
                patience: count(&s[0], "patience", 10)?,
                factor: ranged(&s[1], "factor", 0.1, |x| x > 0.0 && x < 1.0, "in (0, 1)")?,
                threshold: ranged(&s[2], "threshold", 1e-4, |x| x >= 0.0, ">= 0")?,
                cooldown: count(&s[3], "cooldown", 0)?,
                min_lr: ranged(&s[4], "min_lr", 0.0, |x| x >= 0.0, ">= 0")?,
            };
            return Ok((Decay::Plateau(plateau), Some(monitor)));
        }
        other => {
            let mut err = Error::new(callee.span, format!("unknown schedule `{other}`"))
                .with_label(format!(
                    "expected {} or `warmup(...) -> ...`",
                    DECAYS.map(|d| format!("`{d}`")).join(", ")
                ));
            if let Some(h) = did_you_mean(other, DECAYS.into_iter().chain(["warmup"])) {
                err = err.with_help(h);
            }
            return Err(err);
        }
    };
    Ok((decay, None))
}

/// `multistep`'s milestones: positive epoch counts, strictly increasing.
fn milestones(a: &Evaluated) -> Result<Vec<usize>> {
    let Value::List(items) = &a.value else {
        return Err(Error::new(
            a.span,
            format!(
                "`milestones` must be a list of epochs, found {}",
                a.value.kind()
            ),
        )
        .with_help("e.g. `milestones: [30, 80]`"));
    };
    if items.is_empty() {
        return Err(Error::new(a.span, "`milestones` is empty"));
    }
    let mut out: Vec<usize> = Vec::with_capacity(items.len());
    for v in items {
        match *v {
            Value::Int(m) if m >= 1 => {
                let m = m as usize;
                if let Some(&prev) = out.last().filter(|&&p| p >= m) {
                    return Err(Error::new(
                        a.span,
                        format!("`milestones` must be strictly increasing, but {m} follows {prev}"),
                    )
                    .with_label("out of order"));
                }
                out.push(m);
            }
            ref other => {
                return Err(Error::new(
                    a.span,
                    format!(
                        "`milestones` must be positive epoch counts, found {}",
                        match other {
                            Value::Int(n) => n.to_string(),
                            other => other.kind().to_string(),
                        }
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `early_stop(monitor: val_loss, patience: 5, min_delta: 0,
/// restore_best: true)`, and its monitor.
fn lower_early_stop(el: &mut Elaborator, e: &Expr) -> Result<(EarlyStop, WrittenMonitor)> {
    let (callee, args): (&ast::Ident, &[ast::Arg]) = match &e.kind {
        ExprKind::Call { callee, args } => (callee, args),
        ExprKind::Ident(id) => (id, &[]),
        _ => {
            return Err(Error::new(
                e.span,
                "expected `early_stop(monitor: val_loss, patience: 5)`",
            ))
        }
    };
    if callee.name != "early_stop" {
        let mut err = Error::new(
            callee.span,
            format!("expected `early_stop(...)`, found `{}`", callee.name),
        );
        if let Some(h) = did_you_mean(&callee.name, ["early_stop"]) {
            err = err.with_help(h);
        }
        return Err(err);
    }
    let (monitor, rest) = take_monitor(callee, args)?;
    let s = named_args(
        el,
        callee,
        &rest,
        &["patience", "min_delta", "restore_best"],
    )?;
    Ok((
        EarlyStop {
            monitor: monitor.monitor.clone(),
            patience: count(&s[0], "patience", 5)?,
            min_delta: ranged(&s[1], "min_delta", 0.0, |x| x >= 0.0, ">= 0")?,
            restore_best: boolean(&s[2], "restore_best", true)?,
        },
        monitor,
    ))
}

/// `prune = magnitude(sparsity: 0.8, start: 1, end: 4, every: 100,
/// scope: layer)`: only `sparsity` is required; `end` defaults to the
/// run's last epoch.
fn lower_prune(el: &mut Elaborator, e: &Expr) -> Result<Prune> {
    let expected = "expected `magnitude(sparsity: 0.8)`";
    let (callee, args): (&ast::Ident, &[ast::Arg]) = match &e.kind {
        ExprKind::Call { callee, args } => (callee, args),
        ExprKind::Ident(id) => (id, &[]),
        _ => return Err(Error::new(e.span, expected)),
    };
    if callee.name != "magnitude" {
        let mut err = Error::new(
            callee.span,
            format!("unknown pruning method `{}`", callee.name),
        )
        .with_label("expected `magnitude`");
        if let Some(h) = did_you_mean(&callee.name, ["magnitude"]) {
            err = err.with_help(h);
        }
        return Err(err);
    }
    // `scope:` names a choice (`layer`, `global`), not a value.
    let mut scope = PruneScope::Layer;
    let mut rest = Vec::new();
    for a in args {
        if a.name.as_ref().is_none_or(|n| n.name != "scope") {
            rest.push(a.clone());
            continue;
        }
        let name = match &a.value.kind {
            ExprKind::Ident(id) => id.name.clone(),
            ExprKind::Str(s) => s.clone(),
            _ => {
                return Err(Error::new(a.value.span, "expected `layer` or `global`")
                    .with_label("invalid `scope`"))
            }
        };
        scope = match name.as_str() {
            "layer" => PruneScope::Layer,
            "global" => PruneScope::Global,
            other => {
                let mut err = Error::new(a.value.span, format!("unknown scope `{other}`"))
                    .with_label("expected `layer` or `global`");
                if let Some(h) = did_you_mean(other, ["layer", "global"]) {
                    err = err.with_help(h);
                }
                return Err(err);
            }
        };
    }
    let s = named_args(el, callee, &rest, &["sparsity", "start", "end", "every"])?;
    let sparsity = match &s[0] {
        None => {
            return Err(
                Error::new(callee.span, "missing argument `sparsity` of `magnitude`")
                    .with_help("the share of weights to prune: `magnitude(sparsity: 0.8)`"),
            )
        }
        Some(_) => ranged(
            &s[0],
            "sparsity",
            0.0,
            |x| (0.0..1.0).contains(&x),
            "in [0, 1)",
        )?,
    };
    let positive = |a: &Option<Evaluated>, name: &str, default: usize| -> Result<usize> {
        match a {
            None => Ok(default),
            Some(v) => match v.value {
                Value::Int(n) if n >= 1 => Ok(n as usize),
                ref other => Err(Error::new(
                    v.span,
                    format!(
                        "`{name}` must be a positive int, found {}",
                        match other {
                            Value::Int(n) => n.to_string(),
                            other => other.kind().to_string(),
                        }
                    ),
                )
                .with_label(format!("invalid `{name}`"))),
            },
        }
    };
    let start = positive(&s[1], "start", 1)?;
    let end = match &s[2] {
        None => None,
        Some(v) => {
            let end = positive(&s[2], "end", 1)?;
            if end < start {
                let mut err = Error::new(
                    v.span,
                    format!("pruning ends at epoch {end}, before it starts at epoch {start}"),
                )
                .with_label("`end` must be at least `start`");
                if let Some(a) = &s[1] {
                    err = err.with_secondary(a.span, "starts here");
                }
                return Err(err);
            }
            Some(end)
        }
    };
    let every = positive(&s[3], "every", 100)?;
    Ok(Prune {
        sparsity,
        start,
        end,
        every,
        scope,
        span: Some(nnc_ir::Span {
            start: e.span.start as u32,
            end: e.span.end as u32,
        }),
    })
}

/// `validate = split(f)` or `validate = kfold(k)`.
fn lower_validate(
    el: &mut Elaborator,
    e: &Expr,
    outputs: &[(String, NodeId)],
) -> Result<(Option<f64>, Option<KFold>)> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return Err(Error::new(
            e.span,
            "expected `split(fraction)` or `kfold(k)` for the validation set",
        ));
    };
    if callee.name != "kfold" {
        return Ok((Some(split_fraction(el, e, "validation")?), None));
    }
    let [k] = positional::<1>(el, callee, args, &["k"])?;
    let k = match k.value {
        Value::Int(v) if v >= 2 => v as usize,
        Value::Int(v) => {
            return Err(
                Error::new(k.span, format!("`kfold` needs at least 2 folds, found {v}"))
                    .with_label("fewer than 2 folds")
                    .with_help(
                        "one fold would leave nothing to train on; use `kfold(5)` or `split(0.2)`",
                    ),
            )
        }
        ref other => {
            return Err(Error::new(
                k.span,
                format!("`kfold` takes a number of folds, found {}", other.kind()),
            ))
        }
    };
    let stratify = MetricShapes::of(el, outputs)
        .classes
        .map(|(label, _)| label);
    Ok((None, Some(KFold { k, stratify })))
}

/// Whether the loss is the binary cross-entropy, so that a single output
/// per sample is a binary classifier rather than a regression.
fn is_binary_loss(loss: &Expr) -> bool {
    match &loss.kind {
        ExprKind::Call { callee, .. } => callee.name == "binary_cross_entropy",
        _ => false,
    }
}

/// What the model's first output and the loss's label fields can be
/// scored as.
struct MetricShapes {
    output: Option<(String, nnc_ir::TensorType)>,
    /// An `i32` label of the output's shape without its last axis, which
    /// holds `classes` scores: a classifier.
    classes: Option<(String, usize)>,
    /// A label with one value per output value (its dtype), when each
    /// sample has one output value: a binary classifier or a regression.
    single: Option<(String, DType)>,
    /// A float label with one value per output value: a regression.
    regression: Option<String>,
    /// Each label the loss reads, for messages.
    labels: Vec<(String, nnc_ir::TensorType)>,
}

impl MetricShapes {
    fn of(el: &Elaborator, outputs: &[(String, NodeId)]) -> MetricShapes {
        let labels: Vec<(String, nnc_ir::TensorType)> = el
            .resolved_fields
            .iter()
            .filter_map(|name| {
                let node = el.graph.find_leaf(name)?;
                Some((name.clone(), el.graph.ty(node).clone()))
            })
            .collect();
        let mut shapes = MetricShapes {
            output: None,
            classes: None,
            single: None,
            regression: None,
            labels,
        };
        let Some((out_name, out)) = outputs.first() else {
            return shapes;
        };
        let out_ty = el.graph.ty(*out).clone();
        let shape = &out_ty.shape;
        let rank = shape.len();
        let without_last = &shape[..rank.saturating_sub(1)];
        let last = shape.last().and_then(|d| d.as_const());
        let one_per_sample = rank >= 1 && shape[1..].iter().all(|d| d.as_const() == Some(1));
        for (name, ty) in &shapes.labels {
            let per_value = ty.shape == *shape || (last == Some(1) && ty.shape == without_last);
            if ty.dtype == DType::I32 && rank >= 2 && ty.shape == without_last {
                if let Some(c) = last.filter(|&c| c >= 2) {
                    shapes.classes.get_or_insert((name.clone(), c));
                }
            }
            if per_value && one_per_sample {
                shapes.single.get_or_insert((name.clone(), ty.dtype));
            }
            if per_value && ty.dtype.is_float() && out_ty.dtype.is_float() {
                shapes.regression.get_or_insert(name.clone());
            }
        }
        shapes.output = Some((out_name.clone(), out_ty));
        shapes
    }

    /// "the model's output `y` is f32[B, 1] and the loss reads `t` (f32[B, 3])".
    fn describe(&self) -> String {
        let out = match &self.output {
            Some((n, t)) => format!("the model's output `{n}` is {t}"),
            None => "the model has no output".to_string(),
        };
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(n, t)| format!("`{n}` ({t})"))
            .collect();
        match labels.is_empty() {
            true => format!("{out} and the loss reads no data field"),
            false => format!("{out} and the loss reads {}", labels.join(", ")),
        }
    }
}

const METRICS: [&str; 10] = [
    "accuracy",
    "precision",
    "recall",
    "f1",
    "confusion",
    "top_k",
    "binary_accuracy",
    "mae",
    "rmse",
    "r2",
];

fn lower_metrics(
    el: &mut Elaborator,
    e: &Expr,
    outputs: &[(String, NodeId)],
    binary_loss: bool,
) -> Result<Vec<Metric>> {
    let ExprKind::List(items) = &e.kind else {
        return Err(Error::new(
            e.span,
            "`metrics` takes a list, e.g. `[accuracy]`",
        ));
    };
    let shapes = MetricShapes::of(el, outputs);
    let mut metrics = Vec::new();
    for item in items {
        let (id, args): (&ast::Ident, &[ast::Arg]) = match &item.kind {
            ExprKind::Ident(id) => (id, &[]),
            ExprKind::Call { callee, args } => (callee, args),
            _ => {
                return Err(Error::new(
                    item.span,
                    "expected a metric such as `accuracy` or `f1(average: \"macro\")`",
                ))
            }
        };
        let name = id.name.as_str();
        if !METRICS.contains(&name) {
            let mut err =
                Error::new(id.span, format!("unknown metric `{name}`")).with_label(format!(
                    "expected one of {}",
                    METRICS.map(|t| format!("`{t}`")).join(", ")
                ));
            if let Some(h) = did_you_mean(name, METRICS) {
                err = err.with_help(h);
            }
            return Err(err);
        }
        if name == "accuracy" {
            if !args.is_empty() {
                return Err(Error::new(item.span, "`accuracy` takes no arguments")
                    .with_help("for a binary classifier use `binary_accuracy(threshold: 0.5)`"));
            }
            add_accuracy(el, item.span, outputs)?;
            metrics.push(Metric::Accuracy);
            continue;
        }
        let metric = lower_set_metric(el, id, args, &shapes, binary_loss)?;
        if metrics.contains(&metric) {
            return Err(Error::new(
                item.span,
                format!("metric `{name}` is listed twice"),
            ));
        }
        metrics.push(metric);
    }
    Ok(metrics)
}

/// One metric computed over a whole set, checked against the model.
fn lower_set_metric(
    el: &mut Elaborator,
    id: &ast::Ident,
    args: &[ast::Arg],
    shapes: &MetricShapes,
    binary_loss: bool,
) -> Result<Metric> {
    let name = id.name.as_str();
    let output = || {
        shapes
            .output
            .as_ref()
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    };
    let misfit = |what: &str, help: &str| {
        Error::new(id.span, format!("`{name}` needs {what}"))
            .with_label(format!("does not fit the output `{}`", output()))
            .with_note(shapes.describe())
            .with_help(help.to_string())
    };
    let threshold = |a: &Option<Evaluated>| -> Result<f64> {
        match a {
            None => Ok(0.5),
            Some(a) => {
                let t = number(a)?;
                if (0.0..=1.0).contains(&t) {
                    Ok(t)
                } else {
                    Err(Error::new(
                        a.span,
                        format!("`threshold` must be a probability in [0, 1], found {t}"),
                    ))
                }
            }
        }
    };
    let logits = |a: &Option<Evaluated>| -> Result<bool> {
        match a {
            None => Ok(false),
            Some(a) => match a.value {
                Value::Bool(b) => Ok(b),
                ref other => Err(Error::new(
                    a.span,
                    format!("`logits` must be `true` or `false`, found {}", other.kind()),
                )),
            },
        }
    };
    let binary_target = |t: f64, l: bool| -> Result<MetricTarget> {
        match &shapes.single {
            Some((label, _)) => Ok(MetricTarget {
                output: output(),
                label: label.clone(),
                kind: TargetKind::Binary {
                    threshold: t,
                    logits: l,
                },
            }),
            None => Err(misfit(
                "a binary classifier: one output value per sample and a 0/1 label",
                "a binary classifier ends in one unit, e.g. `dense(1) -> sigmoid`",
            )),
        }
    };
    let classes_target = || -> Result<MetricTarget> {
        match &shapes.classes {
            Some((label, c)) => Ok(MetricTarget {
                output: output(),
                label: label.clone(),
                kind: TargetKind::Classes(*c),
            }),
            None => Err(misfit(
                "a classifier: class scores on the output's last axis and an `i32` label",
                "precision, recall, F1, the confusion matrix and top-k score classifiers; \
                 a regression has `mae`, `rmse` and `r2`",
            )),
        }
    };
    let (metric, target) = match name {
        "precision" | "recall" | "f1" | "confusion" => {
            let s = match name {
                "confusion" => named_args(el, id, args, &["threshold", "logits"])?,
                _ => named_args(el, id, args, &["average", "threshold", "logits"])?,
            };
            let (average_arg, threshold_arg, logits_arg) = match name {
                "confusion" => (&None, &s[0], &s[1]),
                _ => (&s[0], &s[1], &s[2]),
            };
            let average = match average_arg {
                None => Average::Macro,
                Some(a) => match &a.value {
                    Value::Str(v) if v == "macro" => Average::Macro,
                    Value::Str(v) if v == "micro" => Average::Micro,
                    Value::Str(v) if v == "weighted" => Average::Weighted,
                    other => {
                        return Err(Error::new(
                            a.span,
                            format!(
                                "`average` must be \"macro\", \"micro\" or \"weighted\", found {}",
                                other.kind()
                            ),
                        ))
                    }
                },
            };
            let binary = shapes.classes.is_none()
                && shapes.single.is_some()
                && (threshold_arg.is_some()
                    || logits_arg.is_some()
                    || binary_loss
                    || shapes
                        .single
                        .as_ref()
                        .is_some_and(|(_, d)| *d == DType::I32));
            let target = if binary || threshold_arg.is_some() || logits_arg.is_some() {
                if let Some(a) = average_arg {
                    return Err(Error::new(
                        a.span,
                        "a binary classifier's precision, recall and F1 are of the positive class",
                    )
                    .with_label("`average` does not apply")
                    .with_help("remove `average:`"));
                }
                binary_target(threshold(threshold_arg)?, logits(logits_arg)?)?
            } else {
                classes_target()?
            };
            let metric = match name {
                "precision" => SetMetric::Precision(average),
                "recall" => SetMetric::Recall(average),
                "f1" => SetMetric::F1(average),
                _ => SetMetric::Confusion,
            };
            (metric, target)
        }
        "top_k" => {
            let [k] = positional::<1>(el, id, args, &["k"])?;
            let target = classes_target()?;
            let TargetKind::Classes(classes) = target.kind else {
                return Err(Error::new(id.span, "internal error: top_k target"));
            };
            let k = match k.value {
                Value::Int(v) if v >= 1 && (v as usize) < classes => v as usize,
                ref other => {
                    return Err(Error::new(
                        k.span,
                        format!(
                            "`top_k` needs a k from 1 to {} (the model has {classes} classes), found {}",
                            classes - 1,
                            other.kind()
                        ),
                    ))
                }
            };
            (SetMetric::TopK(k), target)
        }
        "binary_accuracy" => {
            let s = named_args(el, id, args, &["threshold", "logits"])?;
            let target = binary_target(threshold(&s[0])?, logits(&s[1])?)?;
            (SetMetric::BinaryAccuracy, target)
        }
        _ => {
            named_args(el, id, args, &[])?;
            let metric = match name {
                "mae" => SetMetric::Mae,
                "rmse" => SetMetric::Rmse,
                _ => SetMetric::R2,
            };
            let Some(label) = &shapes.regression else {
                let what = match &shapes.classes {
                    Some((label, _)) => {
                        format!("real-valued targets, but `{label}` holds integer class labels")
                    }
                    None => "a float label with one value per output value".to_string(),
                };
                return Err(misfit(
                    &what,
                    "a classifier is scored by `accuracy`, `f1`, `precision`, `recall`",
                ));
            };
            let target = MetricTarget {
                output: output(),
                label: label.clone(),
                kind: TargetKind::Regression,
            };
            (metric, target)
        }
    };
    Ok(Metric::Set(metric, target))
}

/// Accuracy as graph outputs, so it is compiled with the step: the share of
/// samples whose arg-max of the first output equals the integer label the
/// loss reads.
fn add_accuracy(el: &mut Elaborator, span: Span, outputs: &[(String, NodeId)]) -> Result<()> {
    let Some((out_name, out)) = outputs.first() else {
        return Err(Error::new(span, "accuracy needs a model output"));
    };
    let out_ty = el.graph.ty(*out).clone();
    let class_shape = &out_ty.shape[..out_ty.rank().saturating_sub(1)];
    let label = el.resolved_fields.iter().find_map(|name| {
        let node = el.graph.find_leaf(name)?;
        let t = el.graph.ty(node);
        (t.dtype == DType::I32 && t.shape == class_shape).then_some(node)
    });
    let Some(label) = label else {
        return Err(Error::new(span, "accuracy needs integer class labels")
            .with_label(format!(
                "no i32 data field read by the loss matches the classes of `{out_name}` ({out_ty})"
            ))
            .with_help("annotate the label field as `i32` and use it in the loss"));
    };
    let internal = |e: nnc_ir::ShapeError| {
        Error::new(
            span,
            format!("internal error building accuracy: {}", e.message),
        )
    };
    el.graph.current_span = Some(nnc_ir::Span {
        start: span.start as u32,
        end: span.end as u32,
    });
    let axis = out_ty.rank().saturating_sub(1);
    let pred = el.graph.argmax(*out, axis).map_err(internal)?;
    let hit = el
        .graph
        .binary(nnc_ir::BinaryOp::Eq, pred, label)
        .map_err(internal)?;
    let hit = el.graph.cast(hit, DType::F32).map_err(internal)?;
    let rank = el.graph.ty(hit).rank();
    let acc = el
        .graph
        .reduce(nnc_ir::ReduceOp::Mean, hit, (0..rank).collect(), false)
        .map_err(internal)?;
    el.graph.set_output("accuracy", acc);
    Ok(())
}

/// The optimizer and the params its weight decay skips (`no_decay:`).
fn lower_optimizer(el: &mut Elaborator, e: &Expr) -> Result<(Optimizer, Vec<String>)> {
    let (callee, args): (&ast::Ident, &[ast::Arg]) = match &e.kind {
        ExprKind::Call { callee, args } => (callee, args),
        ExprKind::Ident(id) => (id, &[]),
        _ => {
            return Err(Error::new(
                e.span,
                "expected an optimizer such as `adam(lr: 1e-3)` or `sgd(lr: 0.1)`",
            ))
        }
    };
    let check = |a: &Option<Evaluated>,
                 name: &str,
                 default: f64,
                 ok: fn(f64) -> bool,
                 rule: &str|
     -> Result<f64> {
        match a {
            None => Ok(default),
            Some(v) => {
                let x = number(v)?;
                if ok(x) {
                    Ok(x)
                } else {
                    Err(
                        Error::new(v.span, format!("`{name}` must be {rule}, found {x}"))
                            .with_label(format!("invalid `{name}`")),
                    )
                }
            }
        }
    };
    let flag = |a: &Option<Evaluated>, name: &str| -> Result<bool> {
        match a {
            None => Ok(false),
            Some(Evaluated {
                value: Value::Bool(b),
                ..
            }) => Ok(*b),
            Some(v) => Err(Error::new(
                v.span,
                format!("`{name}` must be true or false, found {}", v.value.kind()),
            )),
        }
    };
    let lr = |a: &Option<Evaluated>, default: f64| check(a, "lr", default, |x| x > 0.0, "> 0");
    let unit = |a: &Option<Evaluated>, name: &str, default: f64| {
        check(a, name, default, |x| (0.0..1.0).contains(&x), "in [0, 1)")
    };
    let non_negative = |a: &Option<Evaluated>, name: &str, default: f64| {
        check(a, name, default, |x| x >= 0.0, ">= 0")
    };
    // Every optimizer takes `no_decay` last.
    let with_no_decay = |names: &[&'static str]| {
        let mut all = names.to_vec();
        all.push("no_decay");
        all
    };
    let (optimizer, s) = match callee.name.as_str() {
        "sgd" => {
            let s = named_args(
                el,
                callee,
                args,
                &with_no_decay(&["lr", "momentum", "nesterov", "weight_decay"]),
            )?;
            if s[0].is_none() {
                return Err(Error::new(callee.span, "`sgd` needs a learning rate")
                    .with_help("write `sgd(lr: 0.1)`"));
            }
            let lr = lr(&s[0], 0.0)?;
            let momentum = unit(&s[1], "momentum", 0.0)?;
            let nesterov = flag(&s[2], "nesterov")?;
            if nesterov && momentum == 0.0 {
                return Err(Error::new(e.span, "Nesterov momentum needs `momentum` > 0"));
            }
            let weight_decay = non_negative(&s[3], "weight_decay", 0.0)?;
            let optimizer = Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            };
            (optimizer, s)
        }
        name @ ("adam" | "adamw") => {
            let s = named_args(
                el,
                callee,
                args,
                &with_no_decay(&["lr", "beta1", "beta2", "eps", "weight_decay"]),
            )?;
            let (lr, beta1, beta2, eps) = (
                lr(&s[0], 1e-3)?,
                unit(&s[1], "beta1", 0.9)?,
                unit(&s[2], "beta2", 0.999)?,
                non_negative(&s[3], "eps", 1e-8)?,
            );
            let optimizer = if name == "adam" {
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay: non_negative(&s[4], "weight_decay", 0.0)?,
                }
            } else {
                Optimizer::AdamW {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay: non_negative(&s[4], "weight_decay", 1e-2)?,
                }
            };
            (optimizer, s)
        }
        "rmsprop" => {
            let s = named_args(
                el,
                callee,
                args,
                &with_no_decay(&["lr", "alpha", "eps", "weight_decay", "momentum", "centered"]),
            )?;
            let optimizer = Optimizer::RmsProp {
                lr: lr(&s[0], 1e-2)?,
                alpha: unit(&s[1], "alpha", 0.99)?,
                eps: non_negative(&s[2], "eps", 1e-8)?,
                weight_decay: non_negative(&s[3], "weight_decay", 0.0)?,
                momentum: unit(&s[4], "momentum", 0.0)?,
                centered: flag(&s[5], "centered")?,
            };
            (optimizer, s)
        }
        "adagrad" => {
            let s = named_args(
                el,
                callee,
                args,
                &with_no_decay(&[
                    "lr",
                    "lr_decay",
                    "weight_decay",
                    "initial_accumulator_value",
                    "eps",
                ]),
            )?;
            let optimizer = Optimizer::Adagrad {
                lr: lr(&s[0], 1e-2)?,
                lr_decay: non_negative(&s[1], "lr_decay", 0.0)?,
                weight_decay: non_negative(&s[2], "weight_decay", 0.0)?,
                initial_accumulator_value: non_negative(&s[3], "initial_accumulator_value", 0.0)?,
                eps: non_negative(&s[4], "eps", 1e-10)?,
            };
            (optimizer, s)
        }
        other => {
            const OPTIMIZERS: [&str; 5] = ["sgd", "adam", "adamw", "rmsprop", "adagrad"];
            let mut err = Error::new(callee.span, format!("unknown optimizer `{other}`"))
                .with_label("expected `sgd`, `adam`, `adamw`, `rmsprop` or `adagrad`");
            if let Some(h) = did_you_mean(other, OPTIMIZERS) {
                err = err.with_help(h);
            }
            return Err(err);
        }
    };
    let no_decay = match s.last().and_then(Option::as_ref) {
        None => Vec::new(),
        Some(patterns) => {
            let weight_decay = match optimizer {
                Optimizer::Sgd { weight_decay, .. }
                | Optimizer::Adam { weight_decay, .. }
                | Optimizer::AdamW { weight_decay, .. }
                | Optimizer::RmsProp { weight_decay, .. }
                | Optimizer::Adagrad { weight_decay, .. } => weight_decay,
            };
            if weight_decay == 0.0 {
                return Err(Error::new(
                    patterns.span,
                    "`no_decay` has no effect without weight decay",
                )
                .with_label("every param is already undecayed")
                .with_help("set `weight_decay`, or drop `no_decay`"));
            }
            no_decay_params(el, args, patterns)?
        }
    };
    Ok((optimizer, no_decay))
}

/// The params matched by the `no_decay` patterns (`*` matches any run of
/// characters, dots included), in the model's param order. Each pattern
/// must match some param; its error points at the pattern.
fn no_decay_params(
    el: &Elaborator,
    args: &[ast::Arg],
    patterns: &Evaluated,
) -> Result<Vec<String>> {
    let Value::List(items) = &patterns.value else {
        return Err(Error::new(
            patterns.span,
            format!(
                "`no_decay` takes a list of param name patterns, found {}",
                patterns.value.kind()
            ),
        )
        .with_help("e.g. `no_decay: [\"*.b\", \"batchnorm*\"]`"));
    };
    // Each pattern's own span when the list is written out.
    let item_spans: Vec<Span> = args
        .iter()
        .find(|a| a.value.span == patterns.span)
        .and_then(|a| match &a.value.kind {
            ExprKind::List(exprs) if exprs.len() == items.len() => {
                Some(exprs.iter().map(|x| x.span).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| vec![patterns.span; items.len()]);
    let params: Vec<String> = el
        .graph
        .params()
        .into_iter()
        .map(|(_, name)| name.to_string())
        .collect();
    let mut matched = vec![false; params.len()];
    for (item, &span) in items.iter().zip(&item_spans) {
        let Value::Str(pattern) = item else {
            return Err(Error::new(
                span,
                format!(
                    "a `no_decay` pattern is a string such as \"*.b\", found {}",
                    item.kind()
                ),
            ));
        };
        let mut any = false;
        for (name, hit) in params.iter().zip(&mut matched) {
            if glob_matches(pattern, name) {
                *hit = true;
                any = true;
            }
        }
        if !any {
            return Err(Error::new(
                span,
                format!("the `no_decay` pattern \"{pattern}\" matches no param"),
            )
            .with_label("matches nothing")
            .with_note(format!("the params are {}", params.join(", "))));
        }
    }
    Ok(params
        .into_iter()
        .zip(matched)
        .filter_map(|(name, hit)| hit.then_some(name))
        .collect())
}

/// Whether `name` is matched by `pattern`, whose `*` stands for any run of
/// characters (possibly empty); everything else matches itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `clip_grad_value = v` and `clip_grad_norm = max_norm`: positive numbers.
fn lower_clip(el: &mut Elaborator, settings: &HashMap<&str, &ast::Setting>) -> Result<GradClip> {
    let mut positive = |key: &str| -> Result<Option<f64>> {
        let Some(s) = settings.get(key) else {
            return Ok(None);
        };
        match el.scalar_value(&s.value)?.as_f64() {
            Some(v) if v > 0.0 && v.is_finite() => Ok(Some(v)),
            Some(v) => Err(Error::new(
                s.value.span,
                format!("`{key}` must be a positive number, found {v}"),
            )
            .with_label("not > 0")),
            None => Err(Error::new(
                s.value.span,
                format!("`{key}` must be a positive number"),
            )),
        }
    };
    Ok(GradClip {
        value: positive("clip_grad_value")?,
        norm: positive("clip_grad_norm")?,
    })
}
