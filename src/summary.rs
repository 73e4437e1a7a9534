//! `nnc summary`: the model as a table of its calls, as Keras'
//! `model.summary()` prints it.

use nnc_ir::summary::thousands;
use nnc_ir::{Module, Summary};

/// The summary of `module` as text: a row per call of the model's body
/// (layer instance, what it calls, output type, params), then the totals.
pub fn render(module: &Module) -> String {
    render_summary(&module.name, &module.summary())
}

fn render_summary(model: &str, s: &Summary) -> String {
    let header = ["Layer", "Calls", "Output", "Params"];
    let rows: Vec<[String; 4]> = s
        .rows
        .iter()
        .map(|r| {
            let outputs: Vec<String> = r.outputs.iter().map(|t| t.to_string()).collect();
            let mut params = thousands(r.params);
            if r.states > 0 {
                params = format!("{params} (+{} state)", thousands(r.states));
            }
            [r.name.clone(), r.layer.clone(), outputs.join(", "), params]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            match i {
                0 => out.push_str(&format!("{cell:<w$}")),
                3 => out.push_str(&format!("  {cell:>w$}")),
                _ => out.push_str(&format!("  {cell:<w$}")),
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let rule = "─".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)) + "\n";
    let mut out = format!("Model: {model}\n{rule}");
    out.push_str(&line(header));
    out.push_str(&rule);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3]]));
    }
    out.push_str(&rule);
    let total = s.params + s.states;
    out.push_str(&format!(
        "Total params: {} ({})\nTrainable params: {} ({})\nNon-trainable params: {} ({})\n",
        thousands(total),
        bytes(total),
        thousands(s.params),
        bytes(s.params),
        thousands(s.states),
        bytes(s.states),
    ));
    out
}

/// The size of `n` f32 values, as Keras prints it.
fn bytes(n: usize) -> String {
    let b = n as f64 * 4.0;
    match b {
        b if b >= 1024.0 * 1024.0 => format!("{:.2} MiB", b / (1024.0 * 1024.0)),
        b if b >= 1024.0 => format!("{:.2} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes, thousands};

    #[test]
    fn counts_read_as_keras_prints_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(10), "40 B");
        assert_eq!(bytes(101_770), "397.54 KiB");
    }
}
