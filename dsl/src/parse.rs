//! Parsing `.nn` source into an [`ast::Program`](crate::ast::Program).
//!
//! Three phases:
//! 1. a byte-level *pre-scan* reports lexical errors (unterminated strings
//!    and block comments, unknown escapes) and rejects bracket nesting deeper
//!    than [`MAX_NESTING`], so that neither pest nor the walker can overflow
//!    the stack on hostile input;
//! 2. pest parses with `grammar.pest`; its errors are translated into
//!    human-readable [`ParseError`]s ("expected one of `)`, `,` or an
//!    expression, found `}`");
//! 3. a walker turns pest pairs into AST nodes, validating number literals,
//!    argument order and expression depth. The walker never panics: any
//!    unexpected tree shape becomes an "internal parser error".

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::*;
use crate::span::{SourceFile, Span};

/// The pest parser; private so that grammar rule names are not part of the
/// public API.
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "grammar.pest"]
    pub struct NnParser;
}

use grammar::{NnParser, Rule};

/// Maximum nesting of `(`, `[` and `{` (checked before parsing).
pub const MAX_NESTING: usize = 64;

/// Maximum depth of an expression tree (e.g. the number of operators in a
/// single `a + b + c + ...` chain).
pub const MAX_EXPR_DEPTH: usize = 256;

/// A syntax error.
///
/// For an unexpected token, `span` is a point span at the token's first byte
/// and `expected` lists human-readable alternatives (e.g. "`)`",
/// "an expression"). Errors about a whole construct (a bad number literal,
/// an unknown escape, a positional argument after a keyword argument) span
/// that construct and have an empty `expected`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    pub span: Span,
    pub expected: Vec<String>,
    pub help: Option<String>,
}

impl ParseError {
    pub fn new(message: impl Into<String>, span: Span) -> ParseError {
        ParseError {
            message: message.into(),
            span,
            expected: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> ParseError {
        self.help = Some(help.into());
        self
    }

    /// Plain-text rendering: `path:line:col: error: message` plus a
    /// `help:` line if there is one.
    pub fn render(&self, src: &SourceFile) -> String {
        let (line, col) = src.line_col(self.span.start);
        let mut out = format!("{}:{line}:{col}: error: {}", src.path, self.message);
        if let Some(h) = &self.help {
            out.push_str("\n  help: ");
            out.push_str(h);
        }
        out
    }
}

type PResult<T> = Result<T, ParseError>;

/// Parse a whole `.nn` file.
pub fn parse(src: &SourceFile) -> Result<Program, ParseError> {
    let text = src.text.as_str();
    let unclosed = prescan(text)?;
    let mut pairs = match NnParser::parse(Rule::program, text) {
        Ok(p) => p,
        Err(e) => return Err(convert_pest_error(text, e, unclosed.last().copied())),
    };
    let program = pairs
        .next()
        .ok_or_else(|| internal(Span::point(0), "no program node"))?;
    Walker { src: text }.program(program)
}

// ------------------------------------------------------------------ pre-scan

/// Lexical checks and bracket nesting. Returns the brackets still open at
/// end of file (byte, offset), innermost last, for "never closed" hints.
fn prescan(text: &str) -> PResult<Vec<(u8, usize)>> {
    let b = text.as_bytes();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                Some(k) => i = i + 2 + k + 2,
                None => {
                    return Err(
                        ParseError::new("unterminated block comment", Span::new(i, i + 2))
                            .with_help("close it with `*/` (block comments do not nest)"),
                    );
                }
            },
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None | Some(b'\n') => {
                            let end = if i > start + 1 && b[i - 1] == b'\r' {
                                i - 1
                            } else {
                                i
                            };
                            return Err(ParseError::new(
                                "unterminated string literal",
                                Span::new(start, end),
                            )
                            .with_help("close the string with `\"` on the same line"));
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match b.get(i + 1) {
                            Some(b'"' | b'\\' | b'n' | b't') => i += 2,
                            None | Some(b'\n') => i += 1, // reported as unterminated
                            Some(_) => {
                                let ch = text[i + 1..].chars().next().unwrap_or('?');
                                return Err(unknown_escape(ch, i));
                            }
                        },
                        Some(_) => i += 1,
                    }
                }
            }
            open @ (b'(' | b'[' | b'{') => {
                stack.push((open, i));
                if stack.len() > MAX_NESTING {
                    return Err(ParseError::new(
                        format!(
                            "brackets are nested too deeply (the limit is {MAX_NESTING} levels)"
                        ),
                        Span::new(i, i + 1),
                    ));
                }
                i += 1;
            }
            close @ (b')' | b']' | b'}') => {
                let open = match close {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                if stack.last().map(|&(c, _)| c) == Some(open) {
                    stack.pop();
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(stack)
}

fn unknown_escape(ch: char, at: usize) -> ParseError {
    ParseError::new(
        format!("unknown escape sequence `\\{ch}` in string"),
        Span::new(at, at + 1 + ch.len_utf8()),
    )
    .with_help("the valid escapes are `\\\"`, `\\\\`, `\\n` and `\\t`")
}

// ------------------------------------------------------------------ pest errors

const KEYWORDS: &[&str] = &[
    "layer", "model", "data", "train", "on", "param", "input", "output", "return", "let", "true",
    "false", "test", "state", "update", "assert",
];

/// Human name of a grammar rule, as used in "expected ..." lists.
fn human_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::program | Rule::item => "an item (`layer`, `model`, `data` or `train`)",
        Rule::layer_def | Rule::kw_layer => "`layer`",
        Rule::model_def | Rule::kw_model => "`model`",
        Rule::data_def | Rule::kw_data => "`data`",
        Rule::train_def | Rule::kw_train => "`train`",
        Rule::param => "a parameter",
        Rule::block | Rule::lbrace => "`{`",
        Rule::data_entry => "a data field or `test`",
        Rule::field => "a data field",
        Rule::test_spec | Rule::kw_test => "`test`",
        Rule::setting => "a setting",
        Rule::stmt
        | Rule::param_stmt
        | Rule::state_stmt
        | Rule::update_stmt
        | Rule::assert_stmt
        | Rule::input_stmt
        | Rule::output_stmt
        | Rule::return_stmt
        | Rule::let_stmt
        | Rule::bind_stmt
        | Rule::scan_stmt
        | Rule::yield_stmt => "a statement",
        Rule::scan_operand | Rule::scan_bind => {
            "a scan operand (`NAME = each(SEQ)`, `NAME = INIT` or `axis: N`)"
        }
        Rule::kw_scan => "`scan`",
        Rule::kw_yield => "`yield`",
        Rule::type_expr | Rule::scalar_type => "a type",
        Rule::field_type => "a dtype or tensor type",
        Rule::tensor_type => "a tensor type",
        Rule::dtype => "a dtype (`f32`, `f64`, `i32`, `u8` or `bool`)",
        Rule::dim | Rule::rest_dim => "a dimension",
        Rule::expr
        | Rule::arith
        | Rule::term
        | Rule::unary
        | Rule::neg
        | Rule::paren
        | Rule::list
        | Rule::call
        | Rule::arg
        | Rule::kwarg => "an expression",
        Rule::stage => "a pipeline stage (a name or a call)",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::ident | Rule::keyword => "an identifier",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::boolean => "`true` or `false`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::rbrace => "`}`",
        Rule::lbracket => "`[`",
        Rule::rbracket => "`]`",
        Rule::comma => "`,`",
        Rule::colon => "`:`",
        Rule::assign => "`=`",
        Rule::arrow => "`->`",
        Rule::kw_on => "`on`",
        Rule::kw_param => "`param`",
        Rule::kw_input => "`input`",
        Rule::kw_output => "`output`",
        Rule::kw_return => "`return`",
        Rule::kw_let => "`let`",
        Rule::kw_state => "`state`",
        Rule::kw_update => "`update`",
        Rule::kw_assert => "`assert`",
        // Silent rules never appear in pest's attempts; mapped for completeness.
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
        Rule::param_list => "a parameter",
        Rule::pipe_rest => "`->`",
        Rule::primary | Rule::arg_list => "an expression",
        Rule::ident_char => "an identifier",
    }
}

/// Order of names in an "expected" list: concrete tokens first, then
/// categories, then end of file, then expression continuations.
fn expected_class(name: &str) -> u8 {
    match name {
        "`->`" => 3,
        "an operator" => 4,
        "end of file" => 2,
        _ if name.starts_with('`') => 0,
        _ => 1,
    }
}

/// The raw token at `offset`: an identifier/number run, a string literal (up
/// to its closing quote or end of line), a multi-char operator, or a single
/// char; `None` at end of file. Long tokens are truncated.
fn token_at(src: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let rest = &src[offset..];
    let c = rest.chars().next()?;
    let len = if c.is_alphanumeric()
        || c == '_'
        || (c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit()))
    {
        rest.find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '.'))
            .unwrap_or(rest.len())
    } else if c == '"' {
        match rest[1..].find(['"', '\n']) {
            Some(k) if rest.as_bytes()[1 + k] == b'"' => k + 2,
            Some(k) => k + 1,
            None => rest.len(),
        }
    } else if ["->", "...", "//", "/*", "*/"]
        .iter()
        .any(|op| rest.starts_with(op))
    {
        if rest.starts_with("...") {
            3
        } else {
            2
        }
    } else {
        c.len_utf8()
    };
    let tok = rest[..len].trim_end_matches('\r');
    const MAX: usize = 30;
    if tok.chars().count() > MAX {
        let cut: String = tok.chars().take(MAX).collect();
        Some(format!("{cut}…"))
    } else {
        Some(tok.to_string())
    }
}

/// Describe the token at byte `offset` of `src` for an error message:
/// "`foo`", "`}`", "`\"abc\"`" or "end of file".
pub fn describe_token(src: &str, offset: usize) -> String {
    match token_at(src, offset) {
        Some(t) => format!("`{t}`"),
        None => "end of file".to_string(),
    }
}

fn format_expected(expected: &[String]) -> String {
    match expected {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        [init @ .., last] => format!("one of {} or {last}", init.join(", ")),
    }
}

fn convert_pest_error(
    src: &str,
    err: pest::error::Error<Rule>,
    unclosed: Option<(u8, usize)>,
) -> ParseError {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    }
    .min(src.len());
    let found_tok = token_at(src, pos);
    let found = describe_token(src, pos);
    let positives = match err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        ErrorVariant::CustomError { message } => {
            let msg = if message.contains("limit") {
                "input is nested too deeply to parse".to_string()
            } else {
                message
            };
            return ParseError::new(msg, Span::point(pos));
        }
    };

    // Attempts are recorded innermost first; list the outer (structural)
    // alternatives first, then group by class.
    let mut expected: Vec<String> = Vec::new();
    for rule in positives.iter().rev() {
        let name = human_name(*rule).to_string();
        if !expected.contains(&name) {
            expected.push(name);
        }
    }
    expected.sort_by_key(|n| expected_class(n));

    // After a pipeline stage an arithmetic operator can never be consumed
    // (anywhere else the expression grammar would have taken it), so an
    // operator at the error position with `->` among the alternatives means
    // `x -> f + 1`.
    if let Some(op @ ("+" | "-" | "*" | "/" | "%")) = found_tok.as_deref() {
        if expected.iter().any(|e| e == "`->`") {
            return ParseError {
                message: format!("operator `{op}` cannot follow a pipeline stage"),
                span: Span::point(pos),
                expected,
                help: Some(format!(
                    "`->` has the lowest precedence and a stage is only a name or a call; \
                     wrap the pipeline in parentheses, e.g. `(x -> f) {op} y`"
                )),
            };
        }
    }

    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", format_expected(&expected))
    };
    let mut error = ParseError {
        message,
        span: Span::point(pos),
        expected,
        help: None,
    };
    error.help = error_help(src, pos, found_tok.as_deref(), &error.expected, unclosed);
    error
}

/// Targeted hints for common mistakes.
fn error_help(
    src: &str,
    pos: usize,
    found: Option<&str>,
    expected: &[String],
    unclosed: Option<(u8, usize)>,
) -> Option<String> {
    let has = |name: &str| expected.iter().any(|e| e == name);
    let Some(found) = found else {
        let (open, at) = unclosed?;
        let file = SourceFile::new("", src);
        let (line, col) = file.line_col(at);
        return Some(format!(
            "the `{}` opened at line {line}, column {col} is never closed",
            open as char
        ));
    };
    if matches!(found, "layer" | "model" | "data" | "train") && has("`}`") {
        return Some(format!(
            "items cannot be nested; is a `}}` missing before this `{found}`?"
        ));
    }
    if KEYWORDS.contains(&found) && (has("an identifier") || has("a statement")) {
        return Some(format!(
            "`{found}` is a keyword and cannot be used as a name"
        ));
    }
    if has("a pipeline stage (a name or a call)") {
        return Some(
            "a pipeline stage is a layer or function name, optionally called with extra \
             arguments: `x -> relu`, `x -> dense(128)`"
                .to_string(),
        );
    }
    if found == "[" {
        let before = src[..pos].trim_end();
        for scalar in ["int", "float", "str"] {
            if before.ends_with(scalar) {
                return Some(format!(
                    "`{scalar}` is a scalar type and has no dimensions; tensor types start \
                     with a dtype, e.g. `f32[3]` or `i32[]`"
                ));
            }
        }
    }
    if found == "=" && has("`(`") && has("`:`") {
        return Some("keyword arguments are written `name: value`".to_string());
    }
    if expected == ["`[`"] {
        return Some(
            "`param` and `input` take a tensor type with dimensions, e.g. `f32[n, k]` \
             (`f32[]` is a scalar tensor)"
                .to_string(),
        );
    }
    if expected == ["`:`"] {
        return Some("a parameter needs a type, e.g. `x: f32[B, 4]` or `n: int = 3`".to_string());
    }
    if found.len() > 1
        && found.starts_with('.')
        && found[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        return Some(format!("numbers need a leading digit: write `0{found}`"));
    }
    if found == "}" && has("end of file") {
        return Some("this `}` does not close any open block".to_string());
    }
    None
}

// ------------------------------------------------------------------ walker

fn internal(span: Span, what: &str) -> ParseError {
    ParseError::new(format!("internal parser error: {what}"), span)
}

/// Exact span of a pair: pest includes trailing whitespace/comments in a
/// non-atomic rule that ends in an unmatched `?`/`*`, so take the end of
/// the last inner pair instead.
fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    let mut end = s.end();
    let mut cur = pair.clone();
    while let Some(last) = cur.clone().into_inner().next_back() {
        end = last.as_span().end();
        cur = last;
    }
    Span::new(s.start(), end)
}

/// Punctuation/keyword pairs carry no information beyond their position.
fn is_token(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::lparen
            | Rule::rparen
            | Rule::lbrace
            | Rule::rbrace
            | Rule::lbracket
            | Rule::rbracket
            | Rule::comma
            | Rule::colon
            | Rule::assign
            | Rule::arrow
            | Rule::kw_layer
            | Rule::kw_model
            | Rule::kw_data
            | Rule::kw_train
            | Rule::kw_on
            | Rule::kw_param
            | Rule::kw_input
            | Rule::kw_output
            | Rule::kw_return
            | Rule::kw_let
            | Rule::kw_test
            | Rule::kw_state
            | Rule::kw_update
            | Rule::kw_assert
            | Rule::EOI
    )
}

/// The meaningful children of a pair, consumed in order.
struct Kids<'i> {
    it: std::iter::Peekable<std::vec::IntoIter<Pair<'i, Rule>>>,
    span: Span,
}

impl<'i> Kids<'i> {
    fn of(pair: Pair<'i, Rule>) -> Kids<'i> {
        let span = span_of(&pair);
        let v: Vec<_> = pair
            .into_inner()
            .filter(|p| !is_token(p.as_rule()))
            .collect();
        Kids {
            it: v.into_iter().peekable(),
            span,
        }
    }

    fn next(&mut self) -> PResult<Pair<'i, Rule>> {
        self.it
            .next()
            .ok_or_else(|| internal(self.span, "missing child node"))
    }

    fn expect(&mut self, rule: Rule) -> PResult<Pair<'i, Rule>> {
        let p = self.next()?;
        if p.as_rule() == rule {
            Ok(p)
        } else {
            Err(internal(
                span_of(&p),
                &format!("expected {rule:?} node, found {:?}", p.as_rule()),
            ))
        }
    }

    fn accept(&mut self, rule: Rule) -> Option<Pair<'i, Rule>> {
        if self.it.peek().map(|p| p.as_rule()) == Some(rule) {
            self.it.next()
        } else {
            None
        }
    }

    fn peek_rule(&mut self) -> Option<Rule> {
        self.it.peek().map(|p| p.as_rule())
    }

    fn end(mut self) -> PResult<()> {
        match self.it.next() {
            None => Ok(()),
            Some(p) => Err(internal(
                span_of(&p),
                &format!("unexpected {:?} node", p.as_rule()),
            )),
        }
    }
}

/// An expression with its tree depth (for the [`MAX_EXPR_DEPTH`] check).
struct Built {
    expr: Expr,
    depth: usize,
}

fn built(kind: ExprKind, span: Span, depth: usize) -> PResult<Built> {
    if depth > MAX_EXPR_DEPTH {
        return Err(ParseError::new(
            format!("expression is nested too deeply (the limit is {MAX_EXPR_DEPTH} levels)"),
            span,
        )
        .with_help("split it into several `let` bindings"));
    }
    Ok(Built {
        expr: Expr { kind, span },
        depth,
    })
}

struct Walker<'s> {
    src: &'s str,
}

impl Walker<'_> {
    fn program(&self, pair: Pair<'_, Rule>) -> PResult<Program> {
        let mut items = Vec::new();
        let mut k = Kids::of(pair);
        while let Some(item) = k.accept(Rule::item) {
            items.push(self.item(item)?);
        }
        k.end()?;
        Ok(Program { items })
    }

    fn item(&self, pair: Pair<'_, Rule>) -> PResult<Item> {
        let mut k = Kids::of(pair);
        let p = k.next()?;
        let item = match p.as_rule() {
            Rule::layer_def => Item::Layer(self.layer_def(p)?),
            Rule::model_def => Item::Model(self.model_def(p)?),
            Rule::data_def => Item::Data(self.data_def(p)?),
            Rule::train_def => Item::Train(self.train_def(p)?),
            r => return Err(internal(span_of(&p), &format!("unexpected {r:?} item"))),
        };
        k.end()?;
        Ok(item)
    }

    fn layer_def(&self, pair: Pair<'_, Rule>) -> PResult<LayerDef> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let name = ident(k.expect(Rule::ident)?);
        let params = self.params(&mut k)?;
        let body = self.block(k.expect(Rule::block)?)?;
        k.end()?;
        Ok(LayerDef {
            name,
            params,
            body,
            span,
        })
    }

    fn model_def(&self, pair: Pair<'_, Rule>) -> PResult<ModelDef> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let name = ident(k.expect(Rule::ident)?);
        let params = self.params(&mut k)?;
        let body = self.block(k.expect(Rule::block)?)?;
        k.end()?;
        Ok(ModelDef {
            name,
            params,
            body,
            span,
        })
    }

    fn params(&self, k: &mut Kids<'_>) -> PResult<Vec<Param>> {
        let mut params = Vec::new();
        while let Some(p) = k.accept(Rule::param) {
            let span = span_of(&p);
            let mut pk = Kids::of(p);
            let name = ident(pk.expect(Rule::ident)?);
            let ty = self.type_expr(pk.expect(Rule::type_expr)?)?;
            let default = match pk.accept(Rule::expr) {
                Some(e) => Some(self.expr(e)?.expr),
                None => None,
            };
            pk.end()?;
            params.push(Param {
                name,
                ty,
                default,
                span,
            });
        }
        Ok(params)
    }

    fn block(&self, pair: Pair<'_, Rule>) -> PResult<Vec<Stmt>> {
        let mut k = Kids::of(pair);
        let mut stmts = Vec::new();
        while let Some(s) = k.accept(Rule::stmt) {
            stmts.push(self.stmt(s)?);
        }
        k.end()?;
        Ok(stmts)
    }

    fn stmt(&self, pair: Pair<'_, Rule>) -> PResult<Stmt> {
        let mut outer = Kids::of(pair);
        let p = outer.next()?;
        outer.end()?;
        let rule = p.as_rule();
        let span = span_of(&p);
        let mut k = Kids::of(p);
        let stmt = match rule {
            Rule::param_stmt => {
                let name = ident(k.expect(Rule::ident)?);
                let ty = self.tensor_type(k.expect(Rule::tensor_type)?)?;
                let init = match k.accept(Rule::expr) {
                    Some(e) => Some(self.expr(e)?.expr),
                    None => None,
                };
                Stmt::Param {
                    name,
                    ty,
                    init,
                    span,
                }
            }
            Rule::input_stmt => {
                let name = ident(k.expect(Rule::ident)?);
                let ty = self.tensor_type(k.expect(Rule::tensor_type)?)?;
                Stmt::Input { name, ty, span }
            }
            Rule::output_stmt => {
                let mut names = vec![ident(k.expect(Rule::ident)?)];
                let value = match k.accept(Rule::expr) {
                    Some(e) => Some(self.expr(e)?.expr),
                    None => {
                        while let Some(n) = k.accept(Rule::ident) {
                            names.push(ident(n));
                        }
                        None
                    }
                };
                Stmt::Output { names, value, span }
            }
            Rule::return_stmt => {
                let value = self.expr(k.expect(Rule::expr)?)?.expr;
                Stmt::Return { value, span }
            }
            Rule::state_stmt => {
                let name = ident(k.expect(Rule::ident)?);
                let ty = self.tensor_type(k.expect(Rule::tensor_type)?)?;
                let init = match k.accept(Rule::expr) {
                    Some(e) => Some(self.expr(e)?.expr),
                    None => None,
                };
                Stmt::State {
                    name,
                    ty,
                    init,
                    span,
                }
            }
            Rule::update_stmt => {
                let name = ident(k.expect(Rule::ident)?);
                let value = self.expr(k.expect(Rule::expr)?)?.expr;
                Stmt::Update { name, value, span }
            }
            Rule::assert_stmt => {
                let cond = self.expr(k.expect(Rule::expr)?)?.expr;
                let message = self.expr(k.expect(Rule::expr)?)?.expr;
                Stmt::Assert {
                    cond,
                    message,
                    span,
                }
            }
            Rule::let_stmt | Rule::bind_stmt => {
                let name = ident(k.expect(Rule::ident)?);
                let ty = match k.accept(Rule::tensor_type) {
                    Some(t) => Some(self.tensor_type(t)?),
                    None => None,
                };
                let value = self.expr(k.expect(Rule::expr)?)?.expr;
                Stmt::Let {
                    name,
                    ty,
                    value,
                    span,
                }
            }
            Rule::scan_stmt => {
                k.expect(Rule::kw_scan)?;
                let mut operands = Vec::new();
                let mut options = Vec::new();
                while let Some(o) = k.accept(Rule::scan_operand) {
                    let mut ok = Kids::of(o);
                    let p = ok.next()?;
                    ok.end()?;
                    let ospan = span_of(&p);
                    let rule = p.as_rule();
                    let mut pk = Kids::of(p);
                    let name = ident(pk.expect(Rule::ident)?);
                    let value = self.expr(pk.expect(Rule::expr)?)?.expr;
                    pk.end()?;
                    if rule == Rule::kwarg {
                        options.push(Arg {
                            name: Some(name),
                            value,
                            span: ospan,
                        });
                        continue;
                    }
                    let (value, each) = each_operand(value)?;
                    operands.push(ScanOperand {
                        name,
                        value,
                        each,
                        span: ospan,
                    });
                }
                let body = self.block(k.expect(Rule::block)?)?;
                Stmt::Scan {
                    operands,
                    options,
                    body,
                    span,
                }
            }
            Rule::yield_stmt => {
                k.expect(Rule::kw_yield)?;
                let name = ident(k.expect(Rule::ident)?);
                let value = self.expr(k.expect(Rule::expr)?)?.expr;
                Stmt::Yield { name, value, span }
            }
            r => return Err(internal(span, &format!("unexpected {r:?} statement"))),
        };
        k.end()?;
        Ok(stmt)
    }

    fn data_def(&self, pair: Pair<'_, Rule>) -> PResult<DataDef> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let name = ident(k.expect(Rule::ident)?);
        let mut fields = Vec::new();
        let mut test: Option<TestSpec> = None;
        while let Some(entry) = k.accept(Rule::data_entry) {
            let mut ek = Kids::of(entry);
            let p = ek.next()?;
            ek.end()?;
            match p.as_rule() {
                Rule::field => fields.push(self.field(p)?),
                Rule::test_spec => {
                    let spec = self.test_spec(p)?;
                    if let Some(prev) = &test {
                        let file = SourceFile::new("", self.src);
                        let (line, _) = file.line_col(prev.span().start);
                        return Err(ParseError::new(
                            "duplicate `test` entry in data block",
                            spec.span(),
                        )
                        .with_help(format!(
                            "a data block has at most one `test` entry; the first is on line {line}"
                        )));
                    }
                    test = Some(spec);
                }
                r => return Err(internal(span_of(&p), &format!("unexpected {r:?} entry"))),
            }
        }
        k.end()?;
        Ok(DataDef {
            name,
            fields,
            test,
            span,
        })
    }

    fn field(&self, pair: Pair<'_, Rule>) -> PResult<DataField> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let name = ident(k.expect(Rule::ident)?);
        let ty = match k.accept(Rule::field_type) {
            Some(t) => Some(self.field_type(t)?),
            None => None,
        };
        let value = self.expr(k.expect(Rule::expr)?)?.expr;
        k.end()?;
        Ok(DataField {
            name,
            ty,
            value,
            span,
        })
    }

    fn test_spec(&self, pair: Pair<'_, Rule>) -> PResult<TestSpec> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        if let Some(e) = k.accept(Rule::expr) {
            let value = self.expr(e)?.expr;
            k.end()?;
            return Ok(TestSpec::Expr { value, span });
        }
        let mut fields = Vec::new();
        while let Some(f) = k.accept(Rule::field) {
            fields.push(self.field(f)?);
        }
        k.end()?;
        Ok(TestSpec::Fields { fields, span })
    }

    fn train_def(&self, pair: Pair<'_, Rule>) -> PResult<TrainDef> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let model = ident(k.expect(Rule::ident)?);
        let model_args = self.args(&mut k)?;
        let data = ident(k.expect(Rule::ident)?);
        let mut settings = Vec::new();
        while let Some(s) = k.accept(Rule::setting) {
            let span = span_of(&s);
            let mut sk = Kids::of(s);
            let key = ident(sk.expect(Rule::ident)?);
            let value = self.expr(sk.expect(Rule::expr)?)?.expr;
            sk.end()?;
            settings.push(Setting { key, value, span });
        }
        k.end()?;
        Ok(TrainDef {
            model,
            model_args,
            data,
            settings,
            span,
        })
    }

    // ---------------------------------------------------------- types

    fn type_expr(&self, pair: Pair<'_, Rule>) -> PResult<TypeExpr> {
        let mut k = Kids::of(pair);
        let p = k.next()?;
        k.end()?;
        match p.as_rule() {
            Rule::tensor_type => self.tensor_type(p),
            Rule::scalar_type => {
                let span = span_of(&p);
                let kind = match p.as_str() {
                    "int" => TypeKind::Int,
                    "float" => TypeKind::Float,
                    "bool" => TypeKind::Bool,
                    "str" => TypeKind::Str,
                    "ints" => TypeKind::Ints,
                    other => return Err(internal(span, &format!("unknown scalar type {other}"))),
                };
                Ok(TypeExpr { kind, span })
            }
            r => Err(internal(span_of(&p), &format!("unexpected {r:?} type"))),
        }
    }

    fn field_type(&self, pair: Pair<'_, Rule>) -> PResult<TypeExpr> {
        let mut k = Kids::of(pair);
        let p = k.next()?;
        k.end()?;
        match p.as_rule() {
            Rule::tensor_type => self.tensor_type(p),
            Rule::dtype => Ok(TypeExpr {
                kind: TypeKind::Tensor {
                    dtype: dtype(&p)?,
                    dims: None,
                },
                span: span_of(&p),
            }),
            r => Err(internal(span_of(&p), &format!("unexpected {r:?} type"))),
        }
    }

    fn tensor_type(&self, pair: Pair<'_, Rule>) -> PResult<TypeExpr> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let dtype = dtype(&k.expect(Rule::dtype)?)?;
        let mut dims = Vec::new();
        while let Some(d) = k.accept(Rule::dim) {
            dims.push(self.dim(d)?);
        }
        k.end()?;
        Ok(TypeExpr {
            kind: TypeKind::Tensor {
                dtype,
                dims: Some(dims),
            },
            span,
        })
    }

    fn dim(&self, pair: Pair<'_, Rule>) -> PResult<DimPattern> {
        let mut k = Kids::of(pair);
        let p = k.next()?;
        k.end()?;
        let span = span_of(&p);
        let kind = match p.as_rule() {
            Rule::rest_dim => {
                let mut rk = Kids::of(p);
                let name = rk.accept(Rule::ident).map(ident);
                rk.end()?;
                DimKind::Rest(name)
            }
            // A lone number or name is the common case and keeps its own
            // kind; anything else is a size computed when the type is used.
            Rule::arith => {
                let text = p.as_str().trim();
                let e = self.arith(p)?.expr;
                match e.kind {
                    ExprKind::Int(n) => DimKind::Const(n),
                    ExprKind::Ident(id) => DimKind::Named(id),
                    ExprKind::Float(_) => {
                        return Err(ParseError::new(
                            format!(
                                "a dimension must be a non-negative integer, a name or `...`, found `{text}`"
                            ),
                            span,
                        ))
                    }
                    _ => DimKind::Expr(Box::new(e)),
                }
            }
            r => return Err(internal(span, &format!("unexpected {r:?} dimension"))),
        };
        Ok(DimPattern { kind, span })
    }

    // ---------------------------------------------------------- expressions

    /// `expr = arith (-> stage)* pipe_bad_op?`
    fn expr(&self, pair: Pair<'_, Rule>) -> PResult<Built> {
        let mut k = Kids::of(pair);
        let mut acc = self.arith(k.expect(Rule::arith)?)?;
        while let Some(rule) = k.peek_rule() {
            let p = k.next()?;
            match rule {
                Rule::stage => {
                    let (stage, depth) = self.stage(p)?;
                    let span = acc.expr.span.to(stage.span);
                    let depth = acc.depth.max(depth) + 1;
                    acc = built(
                        ExprKind::Pipe {
                            input: Box::new(acc.expr),
                            stage,
                        },
                        span,
                        depth,
                    )?;
                }
                r => {
                    return Err(internal(
                        span_of(&p),
                        &format!("unexpected {r:?} in pipeline"),
                    ))
                }
            }
        }
        Ok(acc)
    }

    fn stage(&self, pair: Pair<'_, Rule>) -> PResult<(Stage, usize)> {
        let span = span_of(&pair);
        let mut k = Kids::of(pair);
        let p = k.next()?;
        k.end()?;
        match p.as_rule() {
            Rule::ident => Ok((
                Stage {
                    callee: ident(p),
                    args: Vec::new(),
                    parens: false,
                    span,
                },
                1,
            )),
            Rule::call => {
                let (callee, args, depth) = self.call_parts(p)?;
                Ok((
                    Stage {
                        callee,
                        args,
                        parens: true,
                        span,
                    },
                    depth,
                ))
            }
            r => Err(internal(span, &format!("unexpected {r:?} stage"))),
        }
    }

    /// Left-associative chain `operand (op operand)*` for `arith`/`term`.
    fn chain(
        &self,
        pair: Pair<'_, Rule>,
        operand: fn(&Self, Pair<'_, Rule>) -> PResult<Built>,
    ) -> PResult<Built> {
        let mut k = Kids::of(pair);
        let first = k.next()?;
        let mut acc = operand(self, first)?;
        while let Some(op_pair) = k.it.next() {
            let op = match op_pair.as_str() {
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Rem,
                other => {
                    return Err(internal(
                        span_of(&op_pair),
                        &format!("unknown operator {other:?}"),
                    ))
                }
            };
            let rhs = operand(self, k.next()?)?;
            let span = acc.expr.span.to(rhs.expr.span);
            let depth = acc.depth.max(rhs.depth) + 1;
            acc = built(
                ExprKind::Binary {
                    op,
                    lhs: Box::new(acc.expr),
                    rhs: Box::new(rhs.expr),
                },
                span,
                depth,
            )?;
        }
        Ok(acc)
    }

    fn arith(&self, pair: Pair<'_, Rule>) -> PResult<Built> {
        self.chain(pair, |w, p| w.chain(p, Self::unary))
    }

    fn unary(&self, pair: Pair<'_, Rule>) -> PResult<Built> {
        let mut k = Kids::of(pair);
        let mut negs = Vec::new();
        while let Some(n) = k.accept(Rule::neg) {
            negs.push(span_of(&n).start);
        }
        let mut acc = self.primary(k.next()?)?;
        k.end()?;
        for start in negs.into_iter().rev() {
            let span = Span::new(start, acc.expr.span.end);
            let depth = acc.depth + 1;
            acc = built(ExprKind::Neg(Box::new(acc.expr)), span, depth)?;
        }
        Ok(acc)
    }

    fn primary(&self, pair: Pair<'_, Rule>) -> PResult<Built> {
        let span = span_of(&pair);
        match pair.as_rule() {
            Rule::number => built(parse_number(pair.as_str(), span)?, span, 1),
            Rule::string => built(ExprKind::Str(decode_string(pair.as_str(), span)?), span, 1),
            Rule::boolean => built(ExprKind::Bool(pair.as_str() == "true"), span, 1),
            Rule::ident => built(ExprKind::Ident(ident(pair)), span, 1),
            Rule::paren => {
                let mut k = Kids::of(pair);
                let mut inner = self.expr(k.expect(Rule::expr)?)?;
                k.end()?;
                // The parenthesised expression's span includes the parens.
                inner.expr.span = span;
                Ok(inner)
            }
            Rule::list => {
                let mut k = Kids::of(pair);
                let mut items = Vec::new();
                let mut depth = 0;
                while let Some(e) = k.accept(Rule::expr) {
                    let b = self.expr(e)?;
                    depth = depth.max(b.depth);
                    items.push(b.expr);
                }
                k.end()?;
                built(ExprKind::List(items), span, depth + 1)
            }
            Rule::call => {
                let (callee, args, depth) = self.call_parts(pair)?;
                built(ExprKind::Call { callee, args }, span, depth)
            }
            r => Err(internal(span, &format!("unexpected {r:?} expression"))),
        }
    }

    /// Callee, arguments and depth of a `call` node.
    fn call_parts(&self, pair: Pair<'_, Rule>) -> PResult<(Ident, Vec<Arg>, usize)> {
        let mut k = Kids::of(pair);
        let callee = ident(k.expect(Rule::ident)?);
        let mut depth = 0;
        let args = self.args_with_depth(&mut k, &mut depth)?;
        k.end()?;
        Ok((callee, args, depth + 1))
    }

    fn args(&self, k: &mut Kids<'_>) -> PResult<Vec<Arg>> {
        let mut depth = 0;
        self.args_with_depth(k, &mut depth)
    }

    /// Consecutive `arg` nodes; positional arguments must come first.
    fn args_with_depth(&self, k: &mut Kids<'_>, depth: &mut usize) -> PResult<Vec<Arg>> {
        let mut args: Vec<Arg> = Vec::new();
        while let Some(a) = k.accept(Rule::arg) {
            let span = span_of(&a);
            let mut ak = Kids::of(a);
            let p = ak.next()?;
            ak.end()?;
            let (name, value) = match p.as_rule() {
                Rule::kwarg => {
                    let mut kk = Kids::of(p);
                    let name = ident(kk.expect(Rule::ident)?);
                    let value = self.expr(kk.expect(Rule::expr)?)?;
                    kk.end()?;
                    (Some(name), value)
                }
                Rule::expr => (None, self.expr(p)?),
                r => return Err(internal(span, &format!("unexpected {r:?} argument"))),
            };
            if name.is_none() {
                if let Some(kw) = args.iter().find_map(|a| a.name.as_ref()) {
                    return Err(ParseError::new(
                        "positional argument after keyword argument",
                        span,
                    )
                    .with_help(format!(
                        "move positional arguments before keyword arguments such as `{}:`",
                        kw.name
                    )));
                }
            }
            *depth = (*depth).max(value.depth);
            args.push(Arg {
                name,
                value: value.expr,
                span,
            });
        }
        Ok(args)
    }
}

/// A scan operand's value: `each(SEQ)` is a sequence, anything else the
/// initial value of a carry.
fn each_operand(value: Expr) -> PResult<(Expr, bool)> {
    match value.kind {
        ExprKind::Call { callee, mut args } if callee.name == "each" => {
            if args.len() != 1 || args[0].name.is_some() {
                return Err(ParseError::new(
                    format!("`each` takes one sequence, found {} arguments", args.len()),
                    value.span,
                )
                .with_help("write `NAME = each(SEQUENCE)`; the options `axis:` and `reverse:` belong to `scan(...)` itself"));
            }
            Ok((args.remove(0).value, true))
        }
        kind => Ok((
            Expr {
                kind,
                span: value.span,
            },
            false,
        )),
    }
}

fn ident(pair: Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn dtype(pair: &Pair<'_, Rule>) -> PResult<DType> {
    DType::from_name(pair.as_str())
        .ok_or_else(|| internal(span_of(pair), &format!("unknown dtype {}", pair.as_str())))
}

/// Validate and convert a number literal matched by the (loose) `number`
/// rule: `DIGITS ("." DIGITS)? ([eE] [+-]? DIGITS)?`.
fn parse_number(text: &str, span: Span) -> PResult<ExprKind> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(0);
    let mut is_float = false;
    if b.get(i) == Some(&b'.') {
        let j = digits(i + 1);
        if j == i + 1 {
            return Err(ParseError::new(
                format!("invalid number `{text}`: expected digits after the decimal point"),
                span,
            )
            .with_help(format!("write `{}.0`", &text[..i])));
        }
        i = j;
        is_float = true;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let k = digits(j);
        if k == j {
            return Err(ParseError::new(
                format!("invalid number `{text}`: the exponent has no digits"),
                span,
            )
            .with_help("write the exponent in full, e.g. `1e-3` or `2.5E+4`"));
        }
        i = k;
        is_float = true;
    }
    if i != b.len() {
        let help = if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            "names cannot start with a digit"
        } else {
            "a number is `123`, `1.5`, `1e-3` or `2.5E+4`"
        };
        return Err(ParseError::new(format!("invalid number `{text}`"), span).with_help(help));
    }
    if is_float {
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(ExprKind::Float(x)),
            _ => Err(ParseError::new(
                format!("number `{text}` is out of range for a 64-bit float"),
                span,
            )),
        }
    } else {
        text.parse::<u64>().map(ExprKind::Int).map_err(|_| {
            ParseError::new(
                format!(
                    "integer `{text}` is too large (the maximum is {})",
                    u64::MAX
                ),
                span,
            )
        })
    }
}

/// Decode a string literal including its quotes.
fn decode_string(text: &str, span: Span) -> PResult<String> {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(|| ParseError::new("unterminated string literal", span))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some((_, '"')) => out.push('"'),
            Some((_, '\\')) => out.push('\\'),
            Some((_, 'n')) => out.push('\n'),
            Some((_, 't')) => out.push('\t'),
            Some((_, other)) => return Err(unknown_escape(other, span.start + 1 + i)),
            None => return Err(ParseError::new("unterminated string literal", span)),
        }
    }
    Ok(out)
}
