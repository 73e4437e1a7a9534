//! Matching call arguments to parameters — one rule for layer calls,
//! builtins, initializers and the data and train blocks: positional
//! arguments fill parameters in order, keyword arguments by name, and each
//! parameter is given at most once.

use crate::ast::Ident;
use crate::elaborate::plural;
use crate::error::{did_you_mean, Error};
use crate::span::Span;

/// One argument as written: its keyword (if any), where it is, its value.
pub(crate) struct Given<T> {
    pub keyword: Option<Ident>,
    pub span: Span,
    pub value: T,
}

/// Assigns `args` to the parameters `params` of `fname`; `signature` is shown
/// in notes (`dense(x: f32[..., in], units: int)`), and `locate` turns a span
/// and message into an error (so the elaborator can relocate errors raised
/// inside the prelude).
pub(crate) fn assign<T>(
    fname: &str,
    params: &[&str],
    signature: &str,
    args: impl IntoIterator<Item = Given<T>>,
    locate: &dyn Fn(Span, String) -> Error,
) -> Result<Vec<Option<T>>, Error> {
    let mut slots: Vec<Option<T>> = params.iter().map(|_| None).collect();
    let mut positional = 0;
    for arg in args {
        let index = match &arg.keyword {
            None => {
                positional += 1;
                positional - 1
            }
            Some(kw) => params.iter().position(|p| *p == kw.name).ok_or_else(|| {
                let mut err = locate(kw.span, format!("`{fname}` has no parameter `{}`", kw.name))
                    .with_label("unknown keyword argument")
                    .with_note(format!("`{fname}` is declared as `{signature}`"));
                if let Some(h) = did_you_mean(&kw.name, params.iter().copied()) {
                    err = err.with_help(h);
                }
                err
            })?,
        };
        if index >= params.len() {
            return Err(locate(
                arg.span,
                format!(
                    "`{fname}` takes {} argument{} but more were given",
                    params.len(),
                    plural(params.len())
                ),
            )
            .with_label("unexpected argument")
            .with_note(format!("`{fname}` is declared as `{signature}`")));
        }
        if slots[index].is_some() {
            return Err(locate(
                arg.span,
                format!("argument `{}` of `{fname}` is given twice", params[index]),
            )
            .with_label("given again here"));
        }
        slots[index] = Some(arg.value);
    }
    Ok(slots)
}
