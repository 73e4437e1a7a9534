//! Parser tests: AST snapshots (compact S-expression printer from `ast.rs`),
//! span checks, error messages, nesting limits and a deterministic fuzz test.

use std::fmt::Write as _;

use nnc_dsl::ast::*;
use nnc_dsl::parse::{MAX_EXPR_DEPTH, MAX_NESTING};
use nnc_dsl::{describe_token, parse, ParseError, SourceFile, Span};

const EXAMPLE: &str = r#"// A layer is written in the DSL itself; `param` declares a trainable tensor.
layer dense(x: f32[..., in], units: int, bias: bool = true) {
    param w: f32[in, units] = xavier_uniform
    param b: f32[units] = zeros
    let y = matmul(x, w)
    return y + b
}

layer cross_entropy(logits: f32[...batch, classes], target: i32[...batch]) {
    return -mean(sum(one_hot(target, classes) * log_softmax(logits), axis: -1))
}

model MLP(hidden: int = 256, classes: int = 10) {
    input  image: f32[B, 784]
    h = image -> dense(hidden) -> relu
    logits = h
        -> dense(128) -> relu
        -> dense(classes)
    output logits
}

data Mnist {
    image = idx("mnist/train-images-idx3-ubyte.gz") -> scale(1 / 255) -> reshape([784])
    label: i32 = idx("mnist/train-labels-idx1-ubyte.gz")
    test {
        image = idx("mnist/t10k-images-idx3-ubyte.gz") -> scale(1 / 255) -> reshape([784])
        label: i32 = idx("mnist/t10k-labels-idx1-ubyte.gz")
    }
}

data Digits {
    image = csv("data/digits.csv.gz", columns: [0, 64]) -> scale(1 / 16)
    label: i32 = csv("data/digits.csv.gz", column: 64)
    test = split(0.2)
}

train MLP(hidden: 128) on Mnist {
    loss      = cross_entropy(logits, label)
    optimizer = adam(lr: 1e-3, beta1: 0.9)
    batch     = 128
    epochs    = 5
    seed      = 42
    validate  = split(0.1)
    metrics   = [accuracy]
}
"#;

fn src(text: &str) -> SourceFile {
    SourceFile::new("test.nn", text)
}

#[track_caller]
fn parse_ok(text: &str) -> Program {
    let file = src(text);
    match parse(&file) {
        Ok(p) => p,
        Err(e) => panic!("unexpected parse error:\n{}", e.render(&file)),
    }
}

#[track_caller]
fn parse_err(text: &str) -> ParseError {
    match parse(&src(text)) {
        Ok(p) => panic!("expected a parse error, got:\n{p}"),
        Err(e) => e,
    }
}

/// Parse the body of a model and print it.
#[track_caller]
fn model_body(body: &str) -> String {
    parse_ok(&format!("model M {{\n{body}\n}}")).to_string()
}

/// The first statement's value expression in `model M { <stmt> }`.
#[track_caller]
fn first_value(stmt: &str) -> Expr {
    let p = parse_ok(&format!("model M {{ {stmt} }}"));
    match &p.items[0] {
        Item::Model(m) => match &m.body[0] {
            Stmt::Let { value, .. } | Stmt::Return { value, .. } => value.clone(),
            s => panic!("not a value statement: {s}"),
        },
        i => panic!("not a model: {i}"),
    }
}

// ---------------------------------------------------------------- snapshots

#[test]
fn full_example() {
    insta::assert_snapshot!(parse_ok(EXAMPLE).to_string());
}

#[test]
fn crlf_bom_and_tabs() {
    let expected = parse_ok(EXAMPLE).to_string();
    let crlf = format!(
        "\u{FEFF}{}",
        EXAMPLE.replace('\n', "\r\n").replace("    ", "\t")
    );
    assert_eq!(parse_ok(&crlf).to_string(), expected);
    let err = parse_err("model M {\r\n  h = \"x\r\n}");
    assert_eq!(err.message, "unterminated string literal");
    assert_eq!(err.span, Span::new(17, 19));
    let err = parse_err("model M { h = μ }");
    assert_eq!(err.message, "expected an expression, found `μ`");
}

#[test]
fn operator_precedence() {
    insta::assert_snapshot!(model_body(
        r#"
        a = 1 + 2 * 3
        b = (1 + 2) * 3
        c = 1 - 2 - 3
        d = 8 / 4 / 2
        e = -x * y
        f = -(x * y)
        g = - -x
        h = x - -y
        i = a * b + c * d - e / f
        j = -f(x) + g(y) * -2
        k = x + y -> f -> g(1)
        l = (x -> f) + 1
        m = 2.5E+4 * 1e-3 + 0.5
    "#
    ));
}

#[test]
fn pipelines_across_lines() {
    insta::assert_snapshot!(model_body(
        r#"
        input x: f32[B, 10]
        y = x
            -> dense(64)
            -> relu

            -> dense(10, bias: false)
            -> softmax()
        z = x -> f(y -> g, 1 -> h(2))
        w = [x -> f, y]
        output y, z
    "#
    ));
}

#[test]
fn keyword_args() {
    insta::assert_snapshot!(model_body(
        r#"
        a = f(x, axis: -1)
        b = f(lr: 1e-3, beta1: 0.9, beta2: 0.999,)
        c = f()
        d = f(x, y, z: [1, 2], w: "s")
        e = f(axis:
              0)
    "#
    ));
}

#[test]
fn lists() {
    insta::assert_snapshot!(model_body(
        r#"
        a = []
        b = [1]
        c = [1, 2, 3,]
        d = [[1, 2], [3], []]
        e = [x + 1, f(y), "s", true, false, 1.5]
        f = reshape(x, [B, -1])
    "#
    ));
}

#[test]
fn dim_patterns() {
    insta::assert_snapshot!(parse_ok(
        r#"
        layer shapes(
            a: f32[],
            b: f64[3],
            c: i32[B, 784],
            d: u8[..., n],
            e: bool[...batch, h, w, 3],
            f: f32[...,],
            g: f32[ ...rest ],
            n: int = 3,
            s: str = "x",
            r: float = 0.5,
            flag: bool = false,
        ) {
            return a
        }
        data D {
            x: f32[28, 28] = idx("x.gz")
            y: u8 = idx("y.gz")
            z: bool = csv("z.csv", column: 1)
        }
    "#
    )
    .to_string());
}

#[test]
fn comments_and_semicolons() {
    insta::assert_snapshot!(parse_ok(
        r#"
        // line comment
        /* block
           comment with "quotes" and // slashes */
        model /* inline */ M // trailing
        { // after brace
            input x: f32[B, /* dims */ 4]; // semicolon
            y = x /* mid-expression */ -> relu;
            z = x // before a continued pipeline
                -> relu
            output y, z;
        }
        /**/ //
    "#
    )
    .to_string());
}

#[test]
fn every_statement_kind() {
    insta::assert_snapshot!(parse_ok(
        r#"
        layer all(x: f32[B, n], k: int = 2) {
            param w: f32[n, k] = xavier_uniform
            param b: f32[k] = zeros
            param s: f32[]
            let y = matmul(x, w)
            z = y + b
            return z
        }
        model Two {
            input a: f32[B, 4]
            input b: i32[B]
            output a, b
            output c = a -> all(k: 3)
            output d
        }
        model Empty() {}
        data Split {
            x = csv("d.csv", columns: [0, 4])
            test = split(0.25)
        }
        data NoTest { x = idx("x") }
        train Two on Split {}
        train Two() on NoTest { epochs = 1; seed = 7 }
    "#
    )
    .to_string());
}

#[test]
fn strings_and_numbers() {
    let e = first_value(r#"x = f("a\"b\\c\nd\te", "μ∑", "")"#);
    let ExprKind::Call { args, .. } = &e.kind else {
        panic!("not a call: {e}")
    };
    assert_eq!(args[0].value.kind, ExprKind::Str("a\"b\\c\nd\te".into()));
    assert_eq!(args[1].value.kind, ExprKind::Str("μ∑".into()));
    assert_eq!(args[2].value.kind, ExprKind::Str(String::new()));

    for (text, kind) in [
        ("0", ExprKind::Int(0)),
        ("123", ExprKind::Int(123)),
        ("18446744073709551615", ExprKind::Int(u64::MAX)),
        ("1.5", ExprKind::Float(1.5)),
        ("1e-3", ExprKind::Float(1e-3)),
        ("2.5E+4", ExprKind::Float(2.5e4)),
        ("3e2", ExprKind::Float(300.0)),
        ("1.0", ExprKind::Float(1.0)),
        ("007", ExprKind::Int(7)),
    ] {
        assert_eq!(first_value(&format!("x = {text}")).kind, kind, "{text}");
    }
    assert_eq!(first_value("x = true").kind, ExprKind::Bool(true));
    assert_eq!(first_value("x = false").kind, ExprKind::Bool(false));
}

#[test]
fn keywords_and_dtype_names_as_identifiers() {
    // Identifiers may start with a keyword; dtype and scalar-type names are
    // only special inside types.
    insta::assert_snapshot!(model_body(
        r#"
        layers = 1
        let_x = input_y
        f32 = int
        outputs = bool + str + float + u8 + trainer + datas + on_ + tests + true_
        return f32
    "#
    ));
}

#[test]
fn state_update_assert_and_computed_dims() {
    insta::assert_snapshot!(parse_ok(
        r#"
        layer norm(x: f32[b, c, ...s], groups: int = 1, kernel: ints = [3, 3]) {
            assert equal(c % groups, 0), "groups must divide the channels"
            param w: f32[c / groups, c - 1, 2 * (c + 1), -c] = ones
            state running: f32[c] = zeros
            let cols: f32[b, c, kh, kw] = x
            y: f32[b, n] = cols
            update running = running * 0.9
            return where(training, x, -inf)
        }
    "#
    )
    .to_string());
    // The new keywords are reserved; words that start with them are not.
    let e = parse_err("model M { let state = 1 }");
    assert_eq!(e.message, "expected an identifier, found `state`");
    parse_ok("model M { states = 1 updated = states asserts = updated }");
}

// ---------------------------------------------------------------- spans

fn span_line(out: &mut String, file: &SourceFile, depth: usize, what: &str, span: Span) {
    let _ = writeln!(
        out,
        "{:indent$}{what} {span} {:?}",
        "",
        file.slice(span),
        indent = depth * 2
    );
}

fn dump_expr(out: &mut String, file: &SourceFile, depth: usize, e: &Expr) {
    let what = match &e.kind {
        ExprKind::Int(_) => "int",
        ExprKind::Float(_) => "float",
        ExprKind::Str(_) => "str",
        ExprKind::Bool(_) => "bool",
        ExprKind::Ident(id) => {
            assert_eq!(id.span, e.span);
            "ident"
        }
        ExprKind::List(_) => "list",
        ExprKind::Call { .. } => "call",
        ExprKind::Binary { .. } => "binary",
        ExprKind::Neg(_) => "neg",
        ExprKind::Pipe { .. } => "pipe",
    };
    span_line(out, file, depth, what, e.span);
    match &e.kind {
        ExprKind::List(items) => items
            .iter()
            .for_each(|i| dump_expr(out, file, depth + 1, i)),
        ExprKind::Call { callee, args } => {
            span_line(out, file, depth + 1, "callee", callee.span);
            dump_args(out, file, depth + 1, args);
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            dump_expr(out, file, depth + 1, lhs);
            dump_expr(out, file, depth + 1, rhs);
        }
        ExprKind::Neg(x) => dump_expr(out, file, depth + 1, x),
        ExprKind::Pipe { input, stage } => {
            dump_expr(out, file, depth + 1, input);
            span_line(out, file, depth + 1, "stage", stage.span);
            span_line(out, file, depth + 2, "callee", stage.callee.span);
            dump_args(out, file, depth + 2, &stage.args);
        }
        _ => {}
    }
}

fn dump_args(out: &mut String, file: &SourceFile, depth: usize, args: &[Arg]) {
    for a in args {
        span_line(out, file, depth, "arg", a.span);
        if let Some(n) = &a.name {
            span_line(out, file, depth + 1, "name", n.span);
        }
        dump_expr(out, file, depth + 1, &a.value);
    }
}

fn dump_type(out: &mut String, file: &SourceFile, depth: usize, t: &TypeExpr) {
    span_line(out, file, depth, "type", t.span);
    if let TypeKind::Tensor {
        dims: Some(dims), ..
    } = &t.kind
    {
        for d in dims {
            span_line(out, file, depth + 1, "dim", d.span);
        }
    }
}

fn dump_program(file: &SourceFile, p: &Program) -> String {
    let mut out = String::new();
    for item in &p.items {
        span_line(&mut out, file, 0, "item", item.span());
        span_line(&mut out, file, 1, "name", item.name().span);
        let (params, body): (&[Param], &[Stmt]) = match item {
            Item::Layer(l) => (&l.params, &l.body),
            Item::Model(m) => (&m.params, &m.body),
            _ => (&[], &[]),
        };
        for prm in params {
            span_line(&mut out, file, 1, "param", prm.span);
            dump_type(&mut out, file, 2, &prm.ty);
            if let Some(d) = &prm.default {
                dump_expr(&mut out, file, 2, d);
            }
        }
        for s in body {
            span_line(&mut out, file, 1, "stmt", s.span());
            match s {
                Stmt::Param { ty, init, .. } => {
                    dump_type(&mut out, file, 2, ty);
                    if let Some(e) = init {
                        dump_expr(&mut out, file, 2, e);
                    }
                }
                Stmt::Input { ty, .. } => dump_type(&mut out, file, 2, ty),
                Stmt::Output { names, value, .. } => {
                    for n in names {
                        span_line(&mut out, file, 2, "name", n.span);
                    }
                    if let Some(e) = value {
                        dump_expr(&mut out, file, 2, e);
                    }
                }
                Stmt::Return { value, .. } => dump_expr(&mut out, file, 2, value),
                Stmt::Let {
                    name, ty, value, ..
                } => {
                    span_line(&mut out, file, 2, "name", name.span);
                    if let Some(t) = ty {
                        dump_type(&mut out, file, 2, t);
                    }
                    dump_expr(&mut out, file, 2, value);
                }
                Stmt::State { ty, init, .. } => {
                    dump_type(&mut out, file, 2, ty);
                    if let Some(e) = init {
                        dump_expr(&mut out, file, 2, e);
                    }
                }
                Stmt::Update { name, value, .. } => {
                    span_line(&mut out, file, 2, "name", name.span);
                    dump_expr(&mut out, file, 2, value);
                }
                Stmt::Assert { cond, message, .. } => {
                    dump_expr(&mut out, file, 2, cond);
                    dump_expr(&mut out, file, 2, message);
                }
                Stmt::Scan {
                    operands,
                    options,
                    body,
                    ..
                } => {
                    for o in operands {
                        span_line(&mut out, file, 2, "operand", o.span);
                        span_line(&mut out, file, 3, "name", o.name.span);
                        dump_expr(&mut out, file, 3, &o.value);
                    }
                    for o in options {
                        span_line(&mut out, file, 2, "option", o.span);
                    }
                    for s in body {
                        span_line(&mut out, file, 2, "stmt", s.span());
                    }
                }
                Stmt::Yield { name, value, .. } => {
                    span_line(&mut out, file, 2, "name", name.span);
                    dump_expr(&mut out, file, 2, value);
                }
            }
        }
        if let Item::Data(d) = item {
            let test_fields = match &d.test {
                Some(TestSpec::Fields { fields, .. }) => fields.as_slice(),
                _ => &[],
            };
            for f in d.fields.iter().chain(test_fields) {
                span_line(&mut out, file, 1, "field", f.span);
                if let Some(t) = &f.ty {
                    dump_type(&mut out, file, 2, t);
                }
                dump_expr(&mut out, file, 2, &f.value);
            }
            if let Some(t) = &d.test {
                span_line(&mut out, file, 1, "test", t.span());
            }
        }
        if let Item::Train(t) = item {
            dump_args(&mut out, file, 1, &t.model_args);
            span_line(&mut out, file, 1, "data", t.data.span);
            for s in &t.settings {
                span_line(&mut out, file, 1, "setting", s.span);
                span_line(&mut out, file, 2, "key", s.key.span);
                dump_expr(&mut out, file, 2, &s.value);
            }
        }
    }
    out
}

#[test]
fn spans() {
    // Trailing whitespace and comments must never be part of a span.
    let text = r#"layer dense(x: f32[..., in] , units: int /* c */ , bias: bool = true ) {
    param w: f32[in, units] = xavier_uniform   // c
    return -(y + b) * 2   ;
}
model M {
    output o = x
        -> f(1, k: [2, 3])   // c
        -> g  /* c */
    h = a - b
}
data D {
    x: u8 = idx("p")
    test { y = 1 }
}
train M(h: 1) on D { lr = f(x) }
"#;
    let file = src(text);
    let p = parse_ok(text);
    insta::assert_snapshot!(dump_program(&file, &p));
}

#[test]
fn example_spans_are_exact() {
    // Every span in the example starts and ends on a non-space character.
    let file = src(EXAMPLE);
    let dump = dump_program(&file, &parse_ok(EXAMPLE));
    for line in dump.lines() {
        let text = line.split_once('"').map_or("", |(_, t)| t);
        assert!(!text.starts_with(' ') && !text.ends_with(" \""), "{line}");
        assert!(!text.contains("//"), "comment in span: {line}");
    }
}

#[test]
fn line_col() {
    let f = SourceFile::new("x.nn", "ab\nμx\r\n\tz");
    assert_eq!(f.line_col(0), (1, 1));
    assert_eq!(f.line_col(2), (1, 3));
    assert_eq!(f.line_col(3), (2, 1));
    assert_eq!(f.line_col(5), (2, 2)); // after the 2-byte `μ`
    assert_eq!(f.line_col(4), (2, 1)); // inside `μ`: resolves to it
    assert_eq!(f.line_col(9), (3, 2));
    assert_eq!(f.line_col(1000), (3, 3));
    assert_eq!(f.line_text(2), Some("μx"));
    assert_eq!(f.line_text(4), None);
}

#[test]
fn describe_tokens() {
    let s = "foo  -> ... \"str\" x\n 12.5e3 ) \"open\n";
    assert_eq!(describe_token(s, 0), "`foo`");
    assert_eq!(describe_token(s, 5), "`->`");
    assert_eq!(describe_token(s, 8), "`...`");
    assert_eq!(describe_token(s, 12), "`\"str\"`");
    assert_eq!(describe_token(s, 21), "`12.5e3`");
    assert_eq!(describe_token(s, 28), "`)`");
    assert_eq!(describe_token(s, 30), "`\"open`");
    assert_eq!(describe_token(s, s.len()), "end of file");
    assert_eq!(describe_token("μ", 1), "`μ`");
}

// ---------------------------------------------------------------- errors

/// (input, message, span start, span end)
const ERRORS: &[(&str, &str, usize, usize)] = &[
    // missing `)`
    (
        "model M(hidden: int = 256 {}",
        "expected one of `,`, `)`, `->` or an operator, found `{`",
        26,
        26,
    ),
    (
        "model M { h = f(x }",
        "expected one of `:`, `,`, `)`, `(`, `->` or an operator, found `}`",
        18,
        18,
    ),
    // pipeline followed by arithmetic
    (
        "model M { h = x -> f + 1 }",
        "operator `+` cannot follow a pipeline stage",
        21,
        21,
    ),
    (
        "model M { h = g(x -> f(2) * 3) }",
        "operator `*` cannot follow a pipeline stage",
        26,
        26,
    ),
    (
        "model M { h = x -> 3 }",
        "expected a pipeline stage (a name or a call), found `3`",
        19,
        19,
    ),
    // bad numbers
    (
        "model M { h = 1e }",
        "invalid number `1e`: the exponent has no digits",
        14,
        16,
    ),
    (
        "model M { h = 2.5e+ }",
        "invalid number `2.5e+`: the exponent has no digits",
        14,
        19,
    ),
    (
        "model M { h = 1. }",
        "invalid number `1.`: expected digits after the decimal point",
        14,
        16,
    ),
    ("model M { h = 12ab }", "invalid number `12ab`", 14, 18),
    (
        "model M { h = .5 }",
        "expected an expression, found `.5`",
        14,
        14,
    ),
    (
        "model M { h = 18446744073709551616 }",
        "integer `18446744073709551616` is too large (the maximum is 18446744073709551615)",
        14,
        34,
    ),
    (
        "model M { h = 1e400 }",
        "number `1e400` is out of range for a 64-bit float",
        14,
        19,
    ),
    // strings
    (
        "model M { h = \"abc }\nmodel N {}",
        "unterminated string literal",
        14,
        20,
    ),
    (
        "model M { h = \"abc\\",
        "unterminated string literal",
        14,
        19,
    ),
    (
        "model M { h = \"a\\qb\" }",
        "unknown escape sequence `\\q` in string",
        16,
        18,
    ),
    (
        "model M { /* never closed",
        "unterminated block comment",
        10,
        12,
    ),
    // arguments
    (
        "model M { h = f(a: 1, 2) }",
        "positional argument after keyword argument",
        22,
        23,
    ),
    (
        "train M on D { o = adam(lr = 1) }",
        "expected one of `:`, `,`, `)`, `(`, `->` or an operator, found `=`",
        27,
        27,
    ),
    // keywords are not identifiers
    (
        "model M { let layer = 1 }",
        "expected an identifier, found `layer`",
        14,
        14,
    ),
    (
        "model M { test = 1 }",
        "expected `}` or a statement, found `test`",
        10,
        10,
    ),
    (
        "layer f(on: int) { return on }",
        "expected `)` or an identifier, found `on`",
        8,
        8,
    ),
    // types
    (
        "layer f(n: int[]) { return n }",
        "expected one of `=`, `,` or `)`, found `[`",
        14,
        14,
    ),
    (
        "layer f(x: f32[,]) { return x }",
        "expected `]` or a dimension, found `,`",
        15,
        15,
    ),
    (
        "layer f(x: f32[1.5]) { return x }",
        "a dimension must be a non-negative integer, a name or `...`, found `1.5`",
        15,
        18,
    ),
    (
        "layer f(x: f32[... b]) { return x }",
        "expected `,` or `]`, found `b`",
        19,
        19,
    ),
    (
        "layer f(x: f32[99999999999999999999]) { return x }",
        "integer `99999999999999999999` is too large (the maximum is 18446744073709551615)",
        15,
        35,
    ),
    (
        "model M { param w: f32 = zeros }",
        "expected `[`, found `=`",
        23,
        23,
    ),
    ("layer f(x) { return x }", "expected `:`, found `)`", 9, 9),
    (
        "data D { label: int = idx(\"l\") }",
        "expected a dtype or tensor type, found `int`",
        16,
        16,
    ),
    // structure
    (
        "train M on D { batch 128 }",
        "expected `=`, found `128`",
        21,
        21,
    ),
    (
        "layer f() { return 1 } }",
        "expected an item (`layer`, `model`, `data` or `train`) or end of file, found `}`",
        23,
        23,
    ),
    (
        "layer f() {\n  return 1\n",
        "expected one of `}`, a statement, `->` or an operator, found end of file",
        23,
        23,
    ),
    (
        "model M { h = a + }",
        "expected an expression, found `}`",
        18,
        18,
    ),
    (
        "train M(hidden: 1) Mnist {}",
        "expected `on`, found `Mnist`",
        19,
        19,
    ),
    (
        "data D { x = 1 test = 2 test { y = 1 } }",
        "duplicate `test` entry in data block",
        24,
        38,
    ),
    ("layer f { }", "expected `(`, found `{`", 8, 8),
    (
        "model M {\n  x = 1\n\nmodel N {}",
        "expected one of `}`, a statement, `->` or an operator, found `model`",
        19,
        19,
    ),
    (
        "model M { output a, }",
        "expected an identifier, found `}`",
        20,
        20,
    ),
    (
        "model M { h = x;; }",
        "expected `}` or a statement, found `;`",
        16,
        16,
    ),
];

#[test]
fn syntax_errors() {
    let mut n = 0;
    for &(input, message, start, end) in ERRORS {
        let err = parse_err(input);
        assert_eq!(err.message, message, "input: {input:?}");
        assert_eq!(err.span, Span::new(start, end), "input: {input:?}");
        for e in &err.expected {
            assert!(
                e.starts_with('`')
                    || e.starts_with("a ")
                    || e.starts_with("an ")
                    || e == "end of file",
                "raw name in expected list: {e:?}"
            );
        }
        n += 1;
    }
    assert!(n >= 12);
    assert!(parse_ok("").items.is_empty());
    assert!(parse_ok("  // only a comment\n").items.is_empty());
}

#[test]
fn error_helps() {
    let help = |input: &str| parse_err(input).help.unwrap_or_default();
    assert!(help("model M { h = x -> f + 1 }").contains("wrap the pipeline in parentheses"));
    assert!(help("model M { let layer = 1 }").contains("`layer` is a keyword"));
    assert!(help("layer f(n: int[]) { return n }").contains("`int` is a scalar type"));
    assert!(help("model M { h = .5 }").contains("`0.5`"));
    assert!(help("train M on D { o = adam(lr = 1) }").contains("`name: value`"));
    assert!(help("layer f(x = 1) { return x }").contains("needs a type"));
    assert!(help("layer f(x) { return x }").contains("needs a type"));
    assert!(help("model M { param w: f32 = zeros }").contains("`f32[n, k]`"));
    assert!(help("model M { test = 1 }").contains("`test` is a keyword"));
    assert!(
        help("model M {\n x = 1\nlayer f() {}").contains("is a `}` missing before this `layer`?")
    );
    assert!(help("layer f() { return 1 } }").contains("does not close"));
    assert!(help("layer f() {\n  return (1\n").contains("`(` opened at line 2, column 10"));
    assert!(help("model M { h = f(a: 1, 2) }").contains("before keyword arguments"));
    assert!(help("model M { h = 12ab }").contains("cannot start with a digit"));
    assert!(help("model M { h = x -> 3 }").contains("`x -> dense(128)`"));
}

#[test]
fn error_renders() {
    // Human-readable overview of all error cases, for review.
    let mut out = String::new();
    for &(input, ..) in ERRORS {
        let file = src(input);
        let err = parse_err(input);
        let (line, col) = file.line_col(err.span.start);
        let line_text = file.line_text(line).unwrap_or("");
        let width = file.slice(err.span).chars().count().max(1);
        let _ = writeln!(out, "{}", err.render(&file));
        let _ = writeln!(out, "  | {line_text}");
        let _ = writeln!(out, "  | {}{}\n", " ".repeat(col - 1), "^".repeat(width));
    }
    insta::assert_snapshot!(out);
}

// ---------------------------------------------------------------- limits

#[test]
fn nesting_limits() {
    // Exactly at the limit parses (in the default 2 MiB test-thread stack).
    let n = MAX_NESTING - 2; // `model {` and `f(` account for two levels
    let deep = format!(
        "model M {{ h = {}x{} }}",
        "f(a: [".repeat(n / 2),
        "])".repeat(n / 2)
    );
    parse_ok(&deep);
    let parens = format!(
        "model M {{ h = {}x{} }}",
        "(".repeat(MAX_NESTING - 1),
        ")".repeat(MAX_NESTING - 1)
    );
    parse_ok(&parens);

    // One more is an error at the offending bracket.
    let over = format!(
        "model M {{ h = {}x{} }}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    let err = parse_err(&over);
    assert_eq!(
        err.message,
        "brackets are nested too deeply (the limit is 64 levels)"
    );
    assert_eq!(err.span, Span::new(14 + MAX_NESTING - 1, 14 + MAX_NESTING));

    // Hostile inputs: no stack overflow, prompt errors.
    let err = parse_err(&"(".repeat(100_000));
    assert_eq!(err.span, Span::new(MAX_NESTING, MAX_NESTING + 1));
    parse_err(&format!("model M {{ h = {} }}", "f(".repeat(100_000)));
    parse_err(&format!("model M {{ h = {} }}", "[".repeat(100_000)));
    parse_err(&"{".repeat(100_000));
    parse_err(&")".repeat(100_000));
    // Unclosed nesting just below the limit fails without backtracking blowup.
    parse_err(&format!(
        "model M {{ h = {}",
        "f(a: g(".repeat(MAX_NESTING / 2 - 1)
    ));

    // Long operator chains / unary runs are limited by expression depth.
    let ok_chain = format!("model M {{ h = x{} }}", " + x".repeat(MAX_EXPR_DEPTH - 1));
    parse_ok(&ok_chain);
    for bad in [
        format!("model M {{ h = x{} }}", " + x".repeat(100_000)),
        format!("model M {{ h = x{} }}", " -> f".repeat(MAX_EXPR_DEPTH + 1)),
        format!("model M {{ h = {}x }}", "-".repeat(100_000)),
    ] {
        let err = parse_err(&bad);
        assert_eq!(
            err.message,
            "expression is nested too deeply (the limit is 256 levels)"
        );
    }

    // Flat repetition is not limited.
    let long_list = format!("model M {{ h = [{}] }}", "1, ".repeat(20_000));
    parse_ok(&long_list);
    let many_stmts: String = (0..2_000).map(|i| format!("x{i} = {i}\n")).collect();
    parse_ok(&format!("model M {{ {many_stmts} }}"));
}

// ---------------------------------------------------------------- fuzz

/// xorshift64*: tiny deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Parse must return (never panic); errors must be well-formed.
fn check_total(text: &str) {
    let file = src(text);
    match parse(&file) {
        Ok(p) => {
            let _ = p.to_string();
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(
                !e.message.contains("internal parser error"),
                "{e:?} for {text:?}"
            );
            assert!(e.span.start <= e.span.end && e.span.end <= text.len());
            assert!(text.is_char_boundary(e.span.start) && text.is_char_boundary(e.span.end));
            let _ = e.render(&file);
        }
    }
}

#[test]
fn fuzz_random_inputs() {
    const PIECES: &[&str] = &[
        "layer", "model", "data", "train", "on", "param", "input", "output", "return", "let",
        "test", "true", "f32", "i32", "int", "x", "dense", "(", ")", "[", "]", "{", "}", ",", ":",
        "=", "->", "+", "-", "*", "/", "...", "1", "2.5", "1e-3", "1e", "\"s\"", "\"", "\\", "//",
        "/*", "*/", "\n", " ", ";", ".", "μ",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..3000 {
        let len = rng.below(64);
        let text = if i % 2 == 0 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            (0..len)
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        check_total(&text);
    }
}

#[test]
fn fuzz_mutations_of_example() {
    let base = EXAMPLE.as_bytes();
    let mut rng = Rng(42);
    let mut ok = 0;
    for _ in 0..3000 {
        let mut bytes = base.to_vec();
        for _ in 0..1 + rng.below(3) {
            let len = bytes.len();
            let at = rng.below(len + 1);
            let n = 1 + rng.below(12);
            match rng.below(4) {
                0 => {
                    let end = (at + n).min(len);
                    bytes.drain(at..end);
                }
                1 => {
                    const JUNK: &[u8] = b"(){}[],:=->+*/.\"\\ 1ex\n";
                    let junk: Vec<u8> = (0..n).map(|_| JUNK[rng.below(JUNK.len())]).collect();
                    bytes.splice(at..at, junk);
                }
                2 => {
                    let end = (at + n).min(len);
                    let dup = bytes[at..end].to_vec();
                    bytes.splice(at..at, dup);
                }
                _ => {
                    let from = rng.below(len);
                    let end = (from + n).min(len);
                    let copy = bytes[from..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if parse(&src(&text)).is_ok() {
            ok += 1;
        }
        check_total(&text);
    }
    // Both outcomes must actually be exercised.
    assert!(ok > 100 && ok < 2900, "ok = {ok}");
}

#[test]
fn spec_examples_parse() {
    // Every ```nn block in the language reference must be a valid program.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/language.md");
    let spec = std::fs::read_to_string(path).expect("spec/language.md");
    let mut blocks = 0;
    for chunk in spec.split("```nn\n").skip(1) {
        let code = chunk.split("```").next().unwrap_or("");
        parse_ok(code);
        blocks += 1;
    }
    assert!(blocks >= 2);
}

const SCAN: &str = r#"layer cell(xs: f32[b, t, n], h0: f32[b, n]) {
    scan(x = each(xs), m = each(mask -> f), h = h0, axis: 1, reverse: true) {
        let y = x + h
        h = tanh(y)   // a carry rebound
        scan(v = each(y), s = h, axis: 0) { s = s + v }
        yield hs = h * 2;
    }
    return hs
}
"#;

#[test]
fn scan_statement() {
    insta::assert_snapshot!(parse_ok(SCAN).to_string());
}

#[test]
fn scan_statement_spans() {
    let file = src(SCAN);
    insta::assert_snapshot!(dump_program(&file, &parse_ok(SCAN)));
}

#[test]
fn scan_and_yield_are_keywords_only_where_a_statement_starts() {
    let p = parse_ok("model M { input x: f32[B, 2]\n scan = x\n yield = scan * 2\n output yield }");
    assert_eq!(
        p.to_string(),
        "model M\n  input x: f32[B, 2]\n  let scan = x\n  let yield = (* scan 2)\n  output yield"
    );
}

#[test]
fn scan_syntax_errors() {
    let e = parse_err("layer f(x: f32[b, t]) { scan(v = each(x, x)) { } return x }");
    assert_eq!(e.message, "`each` takes one sequence, found 2 arguments");
    let e = parse_err("layer f(x: f32[b, t]) { scan(v = each(x)) return x }");
    assert!(e.expected.iter().any(|x| x == "`{`"), "{:?}", e.expected);
}
