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
use nnc_ir::{
    DType, DataField, DataSpec, Graph, Metric, Module, NodeId, Optimizer, Schedule, Source,
    TestSet, TextColumn, TextFormat, TrainSpec, Transform, LOSS,
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

    let Some(train) = train else {
        return Ok(Module {
            name,
            forward,
            data: None,
            train: None,
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
        data: Some(data),
        train: Some(spec),
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
                    let d = el.ir_dtype(*dtype, te.span)?;
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

const SETTINGS: [&str; 9] = [
    "loss",
    "optimizer",
    "schedule",
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
    let optimizer = lower_optimizer(el, &optimizer_setting.value)?;
    let schedule = match settings.get("schedule") {
        None => None,
        Some(s) => Some(lower_schedule(el, &s.value)?),
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
    let validate = match settings.get("validate") {
        None => None,
        Some(s) => Some(split_fraction(el, &s.value, "validation")?),
    };
    let metrics = match settings.get("metrics") {
        None => Vec::new(),
        Some(s) => lower_metrics(el, &s.value, outputs)?,
    };
    // The same loss and metrics on the evaluation model, for validation
    // and test. Any error was reported on the objective already, so these
    // succeed unless the loss itself depends on `training`.
    add_loss(ev, &loss_setting.value, train, data, data_def, eval_outputs)?;
    if let Some(s) = settings.get("metrics") {
        lower_metrics(ev, &s.value, eval_outputs)?;
    }
    let objective = finished(&el.graph);
    let mut evaluation = finished(&ev.graph);
    evaluation.name = "evaluation".into();
    Ok(TrainSpec {
        objective,
        evaluation,
        data: data.name.clone(),
        optimizer,
        batch,
        epochs,
        seed,
        shuffle,
        validate,
        schedule,
        metrics,
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
    let loss = el.eval(&scope, loss_expr)?;
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

/// `step(every: k, gamma: g)`, `exponential(gamma: g)` or `cosine(min_lr: m)`.
fn lower_schedule(el: &mut Elaborator, e: &Expr) -> Result<Schedule> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return Err(Error::new(e.span, "expected a schedule such as `step(every: 5, gamma: 0.5)`, `exponential(gamma: 0.9)` or `cosine()`"));
    };
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
    match callee.name.as_str() {
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
            Ok(Schedule::Step {
                every,
                gamma: gamma(&s[1], 0.1)?,
            })
        }
        "exponential" => {
            let s = named_args(el, callee, args, &["gamma"])?;
            if s[0].is_none() {
                return Err(Error::new(
                    callee.span,
                    "`exponential` needs `gamma`, the factor per epoch",
                ));
            }
            Ok(Schedule::Exponential {
                gamma: gamma(&s[0], 1.0)?,
            })
        }
        "cosine" => {
            let s = named_args(el, callee, args, &["min_lr"])?;
            let min_lr = match &s[0] {
                None => 0.0,
                Some(a) => {
                    let m = number(a)?;
                    if m < 0.0 {
                        return Err(Error::new(a.span, "`min_lr` must be >= 0"));
                    }
                    m
                }
            };
            Ok(Schedule::Cosine { min_lr })
        }
        other => {
            let mut err = Error::new(callee.span, format!("unknown schedule `{other}`"))
                .with_label("expected `step`, `exponential` or `cosine`");
            if let Some(h) = did_you_mean(other, ["step", "exponential", "cosine"]) {
                err = err.with_help(h);
            }
            Err(err)
        }
    }
}

fn lower_metrics(
    el: &mut Elaborator,
    e: &Expr,
    outputs: &[(String, NodeId)],
) -> Result<Vec<Metric>> {
    let ExprKind::List(items) = &e.kind else {
        return Err(Error::new(
            e.span,
            "`metrics` takes a list, e.g. `[accuracy]`",
        ));
    };
    let mut metrics = Vec::new();
    for item in items {
        let ExprKind::Ident(id) = &item.kind else {
            return Err(Error::new(
                item.span,
                "expected a metric name such as `accuracy`",
            ));
        };
        match id.name.as_str() {
            "accuracy" => {
                add_accuracy(el, item.span, outputs)?;
                metrics.push(Metric::Accuracy);
            }
            other => {
                let mut err = Error::new(id.span, format!("unknown metric `{other}`"))
                    .with_label("expected `accuracy`");
                if let Some(h) = did_you_mean(other, ["accuracy"]) {
                    err = err.with_help(h);
                }
                return Err(err);
            }
        }
    }
    Ok(metrics)
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

fn lower_optimizer(el: &mut Elaborator, e: &Expr) -> Result<Optimizer> {
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
    match callee.name.as_str() {
        "sgd" => {
            let s = named_args(
                el,
                callee,
                args,
                &["lr", "momentum", "nesterov", "weight_decay"],
            )?;
            if s[0].is_none() {
                return Err(Error::new(callee.span, "`sgd` needs a learning rate")
                    .with_help("write `sgd(lr: 0.1)`"));
            }
            let lr = check(&s[0], "lr", 0.0, |x| x > 0.0, "> 0")?;
            let momentum = check(
                &s[1],
                "momentum",
                0.0,
                |x| (0.0..1.0).contains(&x),
                "in [0, 1)",
            )?;
            let nesterov = match &s[2] {
                None => false,
                Some(Evaluated {
                    value: Value::Bool(b),
                    ..
                }) => *b,
                Some(v) => {
                    return Err(Error::new(
                        v.span,
                        format!("`nesterov` must be true or false, found {}", v.value.kind()),
                    ))
                }
            };
            if nesterov && momentum == 0.0 {
                return Err(Error::new(e.span, "Nesterov momentum needs `momentum` > 0"));
            }
            let weight_decay = check(&s[3], "weight_decay", 0.0, |x| x >= 0.0, ">= 0")?;
            Ok(Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            })
        }
        "adam" => {
            let s = named_args(
                el,
                callee,
                args,
                &["lr", "beta1", "beta2", "eps", "weight_decay"],
            )?;
            Ok(Optimizer::Adam {
                lr: check(&s[0], "lr", 1e-3, |x| x > 0.0, "> 0")?,
                beta1: check(
                    &s[1],
                    "beta1",
                    0.9,
                    |x| (0.0..1.0).contains(&x),
                    "in [0, 1)",
                )?,
                beta2: check(
                    &s[2],
                    "beta2",
                    0.999,
                    |x| (0.0..1.0).contains(&x),
                    "in [0, 1)",
                )?,
                eps: check(&s[3], "eps", 1e-8, |x| x >= 0.0, ">= 0")?,
                weight_decay: check(&s[4], "weight_decay", 0.0, |x| x >= 0.0, ">= 0")?,
            })
        }
        other => {
            let mut err = Error::new(callee.span, format!("unknown optimizer `{other}`"))
                .with_label("expected `sgd` or `adam`");
            if let Some(h) = did_you_mean(other, ["sgd", "adam"]) {
                err = err.with_help(h);
            }
            Err(err)
        }
    }
}
