//! The parser of the textual IR: reads back exactly what `impl Display for
//! Graph` (print.rs) writes.
//!
//! ```text
//! graph forward {
//!   %0 = input "image" : f32[B,784]
//!   %1 = param "dense.w" init=xavier_uniform : f32[784,256]
//!   %2 = matmul %0, %1 : f32[B,256] @h
//!   output logits = %2
//!   update "dense.w" = %1
//! }
//! ```
//!
//! The text is line oriented: one statement per line, blank lines and `//`
//! comments are allowed. A `%N` must be defined on an earlier line than its
//! uses (the printer numbers nodes in topological order). Every node is built
//! through `Graph::add` or the leaf builders, so each node's type is inferred
//! from its operands and must equal the type declared after `:`. Graph-level
//! invariants (update targets, duplicate leaf names) are left to
//! `verify::verify`, so that any printed graph, valid or not, parses back.
//!
//! Names (graph, output, `@name`) are written bare when they are plain words
//! and quoted like Rust strings otherwise; both forms are accepted here.

use crate::graph::{Graph, NodeId, Output, Update};
use crate::infer::infer;
use crate::op::{Init, Literal, Op, OpKind, ReduceOp, Ties, Window};
use crate::scan::ScanBody;
use crate::types::{DType, Dim, TensorType};
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// A syntax or type error in IR text, at a 1-based line and column
/// (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TextError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a text holding exactly one `graph NAME { ... }` block.
pub fn parse_graph(src: &str) -> Result<Graph, TextError> {
    let mut p = Parser::new(src);
    p.skip_newlines();
    let graph = p.graph()?;
    p.skip_newlines();
    if !p.at(&Kind::Eof) {
        return Err(p.unexpected(
            "end of input after the graph (use `parse_module_graphs` for several graphs)",
        ));
    }
    Ok(graph)
}

/// Parses a text holding any number of `graph` blocks, in order.
pub fn parse_module_graphs(src: &str) -> Result<Vec<Graph>, TextError> {
    let mut p = Parser::new(src);
    let mut graphs = Vec::new();
    loop {
        p.skip_newlines();
        if p.at(&Kind::Eof) {
            return Ok(graphs);
        }
        graphs.push(p.graph()?);
    }
}

/// Whether the printer may write `name` bare: the lexer reads it back as
/// one word. Other names are printed quoted.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with("//") && name.chars().all(is_word_char)
}

// ---- lexer ----

fn is_punct(c: char) -> bool {
    matches!(
        c,
        '{' | '}' | '[' | ']' | '(' | ')' | ',' | '=' | ':' | '@' | '%' | '"'
    )
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !is_punct(c)
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A run of word characters: keywords, names, numbers, dims.
    Word,
    /// `%name`; the token text includes the `%`.
    Ref,
    /// A quoted string, unescaped.
    Str(String),
    Punct(char),
    Newline,
    Eof,
    /// A lexical error; the parser reports it when it reaches the token.
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
    line: usize,
    col: usize,
}

struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.src[self.pos..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn tokenize(src: &'a str) -> Vec<Tok<'a>> {
        let mut lx = Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
        };
        let mut toks = Vec::new();
        loop {
            // Skip blanks and comments.
            while let Some(c) = lx.peek() {
                if c == '/' && lx.peek2() == Some('/') {
                    while lx.peek().is_some_and(|c| c != '\n') {
                        lx.bump();
                    }
                } else if c != '\n' && c.is_whitespace() {
                    lx.bump();
                } else {
                    break;
                }
            }
            let (start, line, col) = (lx.pos, lx.line, lx.col);
            let Some(c) = lx.bump() else {
                toks.push(Tok {
                    kind: Kind::Eof,
                    text: "",
                    line,
                    col,
                });
                return toks;
            };
            let kind = match c {
                '\n' => Kind::Newline,
                '"' => match lx.string_rest() {
                    Ok(s) => Kind::Str(s),
                    Err((message, line, col)) => {
                        toks.push(Tok {
                            kind: Kind::Invalid(message),
                            text: &src[start..lx.pos],
                            line,
                            col,
                        });
                        toks.push(Tok {
                            kind: Kind::Eof,
                            text: "",
                            line: lx.line,
                            col: lx.col,
                        });
                        return toks;
                    }
                },
                '%' => {
                    lx.word_rest();
                    Kind::Ref
                }
                c if is_punct(c) => Kind::Punct(c),
                c if is_word_char(c) => {
                    lx.word_rest();
                    Kind::Word
                }
                c => Kind::Invalid(format!("unexpected character {:?}", c)),
            };
            toks.push(Tok {
                kind,
                text: &src[start..lx.pos],
                line,
                col,
            });
        }
    }

    fn word_rest(&mut self) {
        while self.peek().is_some_and(is_word_char) {
            self.bump();
        }
    }

    /// The rest of a string after its opening quote, with Rust's escapes
    /// (what `{:?}` writes). Errors carry their own position.
    fn string_rest(&mut self) -> Result<String, (String, usize, usize)> {
        let (line, col) = (self.line, self.col - 1);
        let mut out = String::new();
        loop {
            let (eline, ecol) = (self.line, self.col);
            match self.bump() {
                None | Some('\n') => return Err(("unterminated string".into(), line, col)),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let bad = |what: String| Err((what, eline, ecol));
                    let c = match self.bump() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('0') => '\0',
                        Some('\\') => '\\',
                        Some('"') => '"',
                        Some('\'') => '\'',
                        Some('u') => {
                            if self.bump() != Some('{') {
                                return bad("expected `{` after `\\u` in string".into());
                            }
                            let mut hex = String::new();
                            while let Some(h) = self.peek().filter(char::is_ascii_hexdigit) {
                                if hex.len() == 6 {
                                    break;
                                }
                                hex.push(h);
                                self.bump();
                            }
                            if self.bump() != Some('}') || hex.is_empty() {
                                return bad("expected `\\u{HEX}` in string".into());
                            }
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(c) => c,
                                None => return bad(format!("`\\u{{{hex}}}` is not a character")),
                            }
                        }
                        Some(other) if other != '\n' => {
                            return bad(format!("unknown escape `\\{other}` in string"))
                        }
                        _ => return Err(("unterminated string".into(), line, col)),
                    };
                    out.push(c);
                }
                Some(c) => out.push(c),
            }
        }
    }
}

// ---- parser ----

struct Parser<'a> {
    toks: Vec<Tok<'a>>,
    pos: usize,
    /// The scan bodies defined in each open block, innermost last.
    bodies: Vec<HashMap<String, Arc<ScanBody>>>,
}

/// What a `%N` refers to, and where it was defined.
struct Def {
    id: NodeId,
    line: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Parser<'a> {
        Parser {
            toks: Lexer::tokenize(src),
            pos: 0,
            bodies: Vec::new(),
        }
    }

    fn peek(&self) -> &Tok<'a> {
        // The token list always ends with `Eof`, and `bump` never passes it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Tok<'a> {
        let t = self.peek().clone();
        if t.kind != Kind::Eof {
            self.pos += 1;
        }
        t
    }

    fn at(&self, kind: &Kind) -> bool {
        self.peek().kind == *kind
    }

    fn at_word(&self, w: &str) -> bool {
        let t = self.peek();
        t.kind == Kind::Word && t.text == w
    }

    fn skip_newlines(&mut self) {
        while self.at(&Kind::Newline) {
            self.bump();
        }
    }

    fn error_at(tok: &Tok<'_>, message: impl Into<String>) -> TextError {
        TextError {
            line: tok.line,
            column: tok.col,
            message: message.into(),
        }
    }

    /// "expected X, found Y" at the next token (or the lexer's own error).
    fn unexpected(&self, expected: &str) -> TextError {
        let t = self.peek();
        if let Kind::Invalid(message) = &t.kind {
            return Self::error_at(t, message.clone());
        }
        Self::error_at(t, format!("expected {expected}, found {}", describe(t)))
    }

    fn expect_punct(&mut self, c: char, expected: &str) -> Result<Tok<'a>, TextError> {
        if self.at(&Kind::Punct(c)) {
            Ok(self.bump())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_word(&mut self, w: &str, expected: &str) -> Result<Tok<'a>, TextError> {
        if self.at_word(w) {
            Ok(self.bump())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn end_of_line(&mut self) -> Result<(), TextError> {
        match self.peek().kind {
            Kind::Newline => {
                self.bump();
                Ok(())
            }
            Kind::Eof => Ok(()),
            _ => Err(self.unexpected("end of line")),
        }
    }

    /// A bare word or a quoted string.
    fn name(&mut self, expected: &str) -> Result<String, TextError> {
        match &self.peek().kind {
            Kind::Word => Ok(self.bump().text.to_string()),
            Kind::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn string(&mut self, expected: &str) -> Result<String, TextError> {
        match &self.peek().kind {
            Kind::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn int(&mut self, expected: &str) -> Result<usize, TextError> {
        let t = self.peek();
        if t.kind == Kind::Word && t.text.bytes().all(|b| b.is_ascii_digit()) {
            let t = self.bump();
            return t
                .text
                .parse()
                .map_err(|_| Self::error_at(&t, format!("integer `{}` is too large", t.text)));
        }
        Err(self.unexpected(expected))
    }

    fn float(&mut self, expected: &str) -> Result<f64, TextError> {
        let t = self.peek();
        if t.kind == Kind::Word {
            if let Ok(v) = t.text.parse::<f64>() {
                self.bump();
                return Ok(v);
            }
        }
        Err(self.unexpected(expected))
    }

    /// `key=`, then a value parsed by `value`.
    fn attr<T>(
        &mut self,
        key: &str,
        mnemonic: &str,
        value: impl FnOnce(&mut Self, &str) -> Result<T, TextError>,
    ) -> Result<T, TextError> {
        let expected = format!("`{key}=` (an attribute of `{mnemonic}`)");
        self.expect_word(key, &expected)?;
        self.expect_punct('=', &format!("`=` after `{key}`"))?;
        value(self, &format!("the value of `{key}`"))
    }

    fn usize_attr(&mut self, key: &str, mnemonic: &str) -> Result<usize, TextError> {
        self.attr(key, mnemonic, |p, what| {
            p.int(&format!("an integer as {what}"))
        })
    }

    /// `[1,2]`.
    fn int_list(&mut self, what: &str) -> Result<Vec<usize>, TextError> {
        self.expect_punct('[', &format!("a list like `[0,1]` as {what}"))?;
        let mut items = Vec::new();
        if self.at(&Kind::Punct(']')) {
            self.bump();
            return Ok(items);
        }
        loop {
            items.push(self.int("an integer in the list")?);
            if self.at(&Kind::Punct(',')) {
                self.bump();
            } else {
                self.expect_punct(']', "`,` or `]`")?;
                return Ok(items);
            }
        }
    }

    /// `kernel=[..] stride=[..] padding=[..] dilation=[..]`.
    fn window(&mut self, mnemonic: &str) -> Result<Window, TextError> {
        let kernel = self.attr("kernel", mnemonic, |p, what| p.int_list(what))?;
        let stride = self.attr("stride", mnemonic, |p, what| p.int_list(what))?;
        let padding = self.attr("padding", mnemonic, |p, what| p.int_list(what))?;
        let dilation = self.attr("dilation", mnemonic, |p, what| p.int_list(what))?;
        Ok(Window {
            kernel,
            stride,
            padding,
            dilation,
        })
    }

    fn ties(&mut self, what: &str) -> Result<Ties, TextError> {
        for ties in [Ties::Split, Ties::First] {
            if self.at_word(ties.name()) {
                self.bump();
                return Ok(ties);
            }
        }
        Err(self.unexpected(&format!("`split` or `first` as {what}")))
    }

    fn bool_value(&mut self, what: &str) -> Result<bool, TextError> {
        if self.at_word("true") {
            self.bump();
            Ok(true)
        } else if self.at_word("false") {
            self.bump();
            Ok(false)
        } else {
            Err(self.unexpected(&format!("`true` or `false` as {what}")))
        }
    }

    /// `0.5` (a splat) or `[1.0, 2.0]` (dense values).
    fn literal(&mut self) -> Result<Literal, TextError> {
        if !self.at(&Kind::Punct('[')) {
            return Ok(Literal::Splat(self.float(
                "a number or a list `[1.0, 2.0]` as the constant's value",
            )?));
        }
        self.bump();
        let mut values = Vec::new();
        if self.at(&Kind::Punct(']')) {
            self.bump();
            return Ok(Literal::Dense(values));
        }
        loop {
            values.push(self.float("a number in the constant")?);
            if self.at(&Kind::Punct(',')) {
                self.bump();
            } else {
                self.expect_punct(']', "`,` or `]`")?;
                return Ok(Literal::Dense(values));
            }
        }
    }

    /// `(a, b, ...)` of `n` numbers after an init's name.
    fn float_args(&mut self, init: &str, n: usize) -> Result<Vec<f64>, TextError> {
        self.expect_punct('(', &format!("`(` after `{init}`"))?;
        let mut args = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                self.expect_punct(',', &format!("`,` and argument {} of `{init}`", i + 1))?;
            }
            args.push(self.float(&format!("a number as argument {} of `{init}`", i + 1))?);
        }
        self.expect_punct(')', &format!("`)` after the {n} argument(s) of `{init}`"))?;
        Ok(args)
    }

    fn init(&mut self, what: &str) -> Result<Init, TextError> {
        let t = self.peek().clone();
        if t.kind != Kind::Word {
            return Err(self.unexpected(what));
        }
        let init = match t.text {
            "zeros" => Init::Zeros,
            "ones" => Init::Ones,
            "xavier_uniform" => Init::XavierUniform,
            "xavier_normal" => Init::XavierNormal,
            "kaiming_uniform" => Init::KaimingUniform,
            "kaiming_normal" => Init::KaimingNormal,
            "constant" | "uniform" | "normal" => {
                self.bump();
                return Ok(match t.text {
                    "constant" => Init::Const(self.float_args("constant", 1)?[0]),
                    "uniform" => {
                        let a = self.float_args("uniform", 2)?;
                        Init::Uniform {
                            low: a[0],
                            high: a[1],
                        }
                    }
                    _ => {
                        let a = self.float_args("normal", 2)?;
                        Init::Normal {
                            mean: a[0],
                            std: a[1],
                        }
                    }
                });
            }
            other => {
                return Err(Self::error_at(
                    &t,
                    format!(
                        "unknown init `{}` (expected zeros, ones, constant(v), uniform(lo, hi), \
                         normal(mean, std), xavier_uniform, xavier_normal, kaiming_uniform \
                         or kaiming_normal)",
                        truncate(other)
                    ),
                ))
            }
        };
        self.bump();
        Ok(init)
    }

    /// `f32[B,784]`, `f32[]`.
    fn tensor_type(&mut self, expected: &str) -> Result<TensorType, TextError> {
        let t = self.peek().clone();
        if t.kind != Kind::Word {
            return Err(self.unexpected(expected));
        }
        let Some(dtype) = DType::from_name(t.text) else {
            return Err(Self::error_at(
                &t,
                format!(
                    "unknown element type `{}` (expected f32, f64, i32 or bool)",
                    truncate(t.text)
                ),
            ));
        };
        self.bump();
        self.expect_punct('[', "`[` and the shape after the element type")?;
        let mut shape = Vec::new();
        if self.at(&Kind::Punct(']')) {
            self.bump();
            return Ok(TensorType { dtype, shape });
        }
        loop {
            shape.push(self.dim()?);
            if self.at(&Kind::Punct(',')) {
                self.bump();
            } else {
                self.expect_punct(']', "`,` or `]` in the shape")?;
                return Ok(TensorType { dtype, shape });
            }
        }
    }

    fn dim(&mut self) -> Result<Dim, TextError> {
        let t = self.peek();
        if t.kind == Kind::Word {
            let first = t.text.chars().next().unwrap_or('0');
            if first.is_alphabetic() || first == '_' {
                return Ok(Dim::Sym(self.bump().text.to_string()));
            }
        }
        Ok(Dim::Const(
            self.int("a dimension (an integer or a symbol like `B`)")?,
        ))
    }

    /// `graph NAME { ... }`.
    fn graph(&mut self) -> Result<Graph, TextError> {
        self.expect_word("graph", "`graph`")?;
        let name = self.name("the graph's name")?;
        let open = self.expect_punct('{', "`{` after the graph's name")?;
        let mut graph = Graph::new(name);
        self.contents(&mut graph, &open, false)?;
        Ok(graph)
    }

    /// The lines of a graph or scan body up to its closing `}`; for a body,
    /// also its `inputs` line, whose nodes it returns.
    fn contents(
        &mut self,
        graph: &mut Graph,
        open: &Tok<'a>,
        is_body: bool,
    ) -> Result<Vec<NodeId>, TextError> {
        let mut defs: HashMap<&'a str, Def> = HashMap::new();
        let mut inputs = None;
        self.bodies.push(HashMap::new());
        loop {
            self.skip_newlines();
            let t = self.peek().clone();
            match t.kind {
                Kind::Ref => self.node(graph, &mut defs)?,
                Kind::Word if t.text == "body" => self.body()?,
                Kind::Word if t.text == "inputs" && is_body => {
                    self.bump();
                    let mut list = Vec::new();
                    loop {
                        list.push(self.reference(&defs)?);
                        if !self.at(&Kind::Punct(',')) {
                            break;
                        }
                        self.bump();
                    }
                    inputs = Some(list);
                    self.end_of_line()?;
                }
                Kind::Word if t.text == "output" => {
                    self.bump();
                    let name = self.name("the output's name")?;
                    if graph.outputs.iter().any(|o| o.name == name) {
                        return Err(Self::error_at(
                            &t,
                            format!("output `{name}` is defined twice"),
                        ));
                    }
                    self.expect_punct('=', "`=` after the output's name")?;
                    let node = self.reference(&defs)?;
                    graph.outputs.push(Output { name, node });
                    self.end_of_line()?;
                }
                Kind::Word if t.text == "update" => {
                    self.bump();
                    let target = self.name("the updated param or state's name in quotes")?;
                    self.expect_punct('=', "`=` after the update's target")?;
                    let value = self.reference(&defs)?;
                    graph.updates.push(Update { target, value });
                    self.end_of_line()?;
                }
                Kind::Punct('}') => {
                    self.bump();
                    self.end_of_line()?;
                    self.bodies.pop();
                    return match (is_body, inputs) {
                        (false, _) => Ok(Vec::new()),
                        (true, Some(inputs)) => Ok(inputs),
                        (true, None) => Err(Self::error_at(
                            &t,
                            "a scan body needs an `inputs %a, %b, ...` line before its `}`",
                        )),
                    };
                }
                Kind::Eof => {
                    let (line, what) = (open.line, if is_body { "body" } else { "graph" });
                    let message = format!(
                        "expected `}}` to close the {what} of line {line}, found end of input"
                    );
                    return Err(Self::error_at(&t, message));
                }
                _ => {
                    let expected = if is_body {
                        "a node `%N = ...`, `body`, `inputs`, `output` or `}`"
                    } else {
                        "a node `%N = ...`, `body`, `output`, `update` or `}`"
                    };
                    return Err(self.unexpected(expected));
                }
            }
        }
    }

    /// `body bN consts=C carries=K axis=A reverse=R { ... }`: a scan body
    /// the nodes after it in the same block name by `body=bN`.
    fn body(&mut self) -> Result<(), TextError> {
        let kw = self.bump();
        let name_tok = self.peek().clone();
        let name = self.name("the body's name, like `b0`")?;
        let m = "body";
        let consts = self.usize_attr("consts", m)?;
        let carries = self.usize_attr("carries", m)?;
        let axis = self.usize_attr("axis", m)?;
        let reverse = self.attr("reverse", m, |p, what| p.bool_value(what))?;
        let open = self.expect_punct('{', "`{` to open the body")?;
        self.end_of_line()?;
        let mut graph = Graph::new(name.clone());
        let inputs = self.contents(&mut graph, &open, true)?;
        let body = ScanBody::new(graph, inputs, consts, carries, axis, reverse)
            .map_err(|e| Self::error_at(&kw, e))?;
        let scope = self.bodies.last_mut().expect("inside a block");
        if scope.insert(name.clone(), body).is_some() {
            return Err(Self::error_at(
                &name_tok,
                format!("body `{name}` is defined twice"),
            ));
        }
        Ok(())
    }

    /// A use of a node, `%N`, defined on an earlier line.
    fn reference(&mut self, defs: &HashMap<&'a str, Def>) -> Result<NodeId, TextError> {
        if !self.at(&Kind::Ref) {
            return Err(self.unexpected("a node reference `%N`"));
        }
        let t = self.bump();
        if t.text.len() == 1 {
            return Err(Self::error_at(&t, "expected a node number after `%`"));
        }
        match defs.get(&t.text[1..]) {
            Some(d) => Ok(d.id),
            None => Err(Self::error_at(
                &t,
                format!("`{}` is not defined before this use", truncate(t.text)),
            )),
        }
    }

    /// `%N = MNEMONIC [%a, %b, ...] [attrs] : TYPE [@name]`.
    fn node(
        &mut self,
        graph: &mut Graph,
        defs: &mut HashMap<&'a str, Def>,
    ) -> Result<(), TextError> {
        let def = self.bump();
        let key = &def.text[1..];
        if key.is_empty() {
            return Err(Self::error_at(&def, "expected a node number after `%`"));
        }
        if let Some(first) = defs.get(key) {
            return Err(Self::error_at(
                &def,
                format!(
                    "`{}` is defined twice (first on line {})",
                    truncate(def.text),
                    first.line
                ),
            ));
        }
        self.expect_punct('=', &format!("`=` after `{}`", truncate(def.text)))?;
        let mn = self.peek().clone();
        if mn.kind != Kind::Word {
            return Err(self.unexpected("an op name"));
        }
        self.bump();
        let m = mn.text;
        // Operands come right after the mnemonic, attributes after them;
        // leaves have no operands.
        let mut args = Vec::new();
        if self.at(&Kind::Ref) {
            loop {
                args.push(self.reference(defs)?);
                if !self.at(&Kind::Punct(',')) {
                    break;
                }
                self.bump();
            }
        }
        let Some(kind) = OpKind::from_mnemonic(m) else {
            return Err(Self::error_at(&mn, format!("unknown op `{}`", truncate(m))));
        };
        let op = match kind {
            OpKind::Input => Op::Input {
                name: self.string("the input's name in quotes")?,
            },
            OpKind::Param | OpKind::State => {
                let name = self.string(&format!("the {m}'s name in quotes"))?;
                let init = self.attr("init", m, |p, what| p.init(&format!("an init as {what}")))?;
                if kind == OpKind::Param {
                    Op::Param { name, init }
                } else {
                    Op::State { name, init }
                }
            }
            OpKind::Const => Op::Const(self.literal()?),
            OpKind::Iota => Op::Iota {
                axis: self.usize_attr("axis", m)?,
            },
            OpKind::ArgMax => Op::ArgMax {
                axis: self.usize_attr("axis", m)?,
            },
            OpKind::Concat => Op::Concat {
                axis: self.usize_attr("axis", m)?,
            },
            OpKind::Gather => Op::Gather {
                axis: self.usize_attr("axis", m)?,
            },
            OpKind::ScatterAdd => Op::ScatterAdd {
                axis: self.usize_attr("axis", m)?,
            },
            OpKind::Reduce(op) => {
                let axes = self.attr("axes", m, |p, what| p.int_list(what))?;
                let keepdim = self.attr("keepdim", m, |p, what| p.bool_value(what))?;
                // Optional, as the printer leaves out the default.
                let ties = if op == ReduceOp::Max && self.at_word("ties") {
                    self.attr("ties", m, |p, what| p.ties(what))?
                } else {
                    Ties::Split
                };
                Op::Reduce {
                    op,
                    axes,
                    keepdim,
                    ties,
                }
            }
            OpKind::Transpose => Op::Transpose {
                perm: self.attr("perm", m, |p, what| p.int_list(what))?,
            },
            OpKind::Slice => {
                let axis = self.usize_attr("axis", m)?;
                let start = self.usize_attr("start", m)?;
                let end = self.usize_attr("end", m)?;
                Op::Slice { axis, start, end }
            }
            OpKind::Unfold => Op::Unfold {
                window: self.window(m)?,
                fill: self.attr("fill", m, |p, what| p.float(what))?,
            },
            OpKind::Fold => Op::Fold {
                window: self.window(m)?,
            },
            OpKind::Random => Op::Random {
                stream: {
                    let tok = self.peek().clone();
                    let s = self.usize_attr("stream", m)?;
                    u32::try_from(s)
                        .map_err(|_| Self::error_at(&tok, "`stream` must fit in 32 bits"))?
                },
            },
            OpKind::Scan => {
                let tok = self.peek().clone();
                let name = self.attr("body", m, |p, what| p.name(what))?;
                let Some(body) = self.bodies.last().and_then(|b| b.get(&name)).cloned() else {
                    return Err(Self::error_at(
                        &tok,
                        format!("no `body {name}` is defined before this scan in its block"),
                    ));
                };
                Op::Scan {
                    body,
                    result: self.usize_attr("result", m)?,
                }
            }
            OpKind::Unary(u) => Op::Unary(u),
            OpKind::Binary(b) => Op::Binary(b),
            OpKind::Select => Op::Select,
            OpKind::Cast => Op::Cast,
            OpKind::MatMul => Op::MatMul,
            OpKind::Reshape => Op::Reshape,
            OpKind::Broadcast => Op::Broadcast,
        };
        self.expect_punct(':', "`:` and a type")?;
        let ty_tok = self.peek().clone();
        let ty = self.tensor_type("a type like `f32[B,784]`")?;
        let name = if self.at(&Kind::Punct('@')) {
            self.bump();
            Some(self.name("a name after `@`")?)
        } else {
            None
        };
        self.end_of_line()?;

        let arg_types: Vec<&TensorType> = args.iter().map(|&a| graph.ty(a)).collect();
        let inferred =
            infer(&op, &arg_types, Some(&ty)).map_err(|e| Self::error_at(&mn, e.message))?;
        if inferred != ty {
            return Err(Self::error_at(
                &ty_tok,
                format!("`{m}` produces {inferred}, but {ty} was declared"),
            ));
        }
        let id = match op {
            Op::Input { name } => graph.input(&name, ty),
            Op::Param { name, init } => graph.param(&name, ty, init),
            Op::State { name, init } => graph.state(&name, ty, init),
            Op::Const(Literal::Splat(v)) => graph.splat(v, ty),
            op => graph
                .add(op, &args, Some(ty))
                .map_err(|e| Self::error_at(&mn, e.message))?,
        };
        graph.node_mut(id).name = name;
        defs.insert(key, Def { id, line: def.line });
        Ok(())
    }
}

/// How a token is named in "found ..." messages.
fn describe(t: &Tok<'_>) -> String {
    match &t.kind {
        Kind::Newline => "end of line".into(),
        Kind::Eof => "end of input".into(),
        Kind::Invalid(message) => message.clone(),
        _ => format!("`{}`", truncate(t.text)),
    }
}

/// Token text shortened for messages.
fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}
