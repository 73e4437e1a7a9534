//! The HTML run report `nnc run --report-html PATH` writes: one
//! self-contained file (inline SVG and CSS, no script, nothing fetched)
//! with the curves of every metric per epoch, the learning rate, the
//! confusion matrix as a heat map, the final metrics, the model summary,
//! the settings and the timings.
//!
//! It is drawn from the JSON [`Report`] (turned into a JSON value, so every
//! metric the report holds gets its curve without this file naming it),
//! and is well-formed XML (XHTML syntax), so tests read it back with an
//! XML parser. Every number taken from the report is in a `data-value`
//! attribute in its shortest round-trip form, next to the rounded text a
//! reader sees.

use crate::report::Report;
use crate::RuntimeError;
use nnc_ir::Summary;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// What the HTML report shows besides the JSON report.
pub struct HtmlReport<'a> {
    pub report: &'a Report,
    pub summary: &'a Summary,
    /// The settings the run used, as (name, value) pairs.
    pub settings: Vec<(String, String)>,
}

/// The colors of the train and validation series (color-blind safe).
const TRAIN: &str = "#0072b2";
const VALIDATION: &str = "#d55e00";

/// Keys of a metrics object that are not a per-epoch curve.
const NOT_CURVES: [&str; 1] = ["samples"];

impl HtmlReport<'_> {
    pub fn render(&self) -> String {
        let json = serde_json::to_value(self.report).unwrap_or(Value::Null);
        let r = self.report;
        let mut out = String::new();
        out.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
        let _ = writeln!(out, "<title>{} — nnc run report</title>", esc(&r.model));
        out.push_str(STYLE);
        out.push_str("</head>\n<body>\n");
        let _ = writeln!(
            out,
            "<h1>{}</h1>\n<p class=\"sub\">{} on the {} backend · nnc {} · {} epochs trained</p>",
            esc(&r.model),
            if r.mode == "eval" {
                "evaluated"
            } else {
                "trained"
            },
            esc(&r.backend),
            esc(&r.nnc_version),
            r.epochs
        );
        out.push_str(&results_table(&json));
        out.push_str(&early_stop(&json));
        out.push_str(&sparsity(&json));
        out.push_str(&curves(&json));
        out.push_str(&confusion_matrices(&json));
        out.push_str(&cross_validation(&json));
        out.push_str(&summary_table(self.summary));
        out.push_str(&settings_table(&self.settings));
        out.push_str(&timings(&json));
        out.push_str("</body>\n</html>\n");
        out
    }

    /// Writes the report to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), RuntimeError> {
        crate::checkpoint::write_atomic(path, self.render().as_bytes()).map_err(|e| {
            RuntimeError::Setup(format!(
                "cannot write HTML report `{}`: {e}",
                path.display()
            ))
        })
    }
}

const STYLE: &str = "<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.1em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
p.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #333; }
svg .axis { stroke: #999; stroke-width: 1; }
svg .grid { stroke: #eee; stroke-width: 1; }
</style>
";

/// The final metrics of each split: a row per split, a column per metric.
fn results_table(json: &Value) -> String {
    let splits: Vec<(&str, &Value)> = ["train", "validation", "test"]
        .iter()
        .filter_map(|&s| json.get(s).filter(|v| v.is_object()).map(|v| (s, v)))
        .collect();
    if splits.is_empty() {
        return String::new();
    }
    let mut keys: Vec<&str> = Vec::new();
    for (_, m) in &splits {
        for k in scalar_keys(m) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut out = String::from("<h2>Results</h2>\n<table>\n<tr><th>split</th>");
    for k in &keys {
        let _ = write!(out, "<th class=\"num\">{}</th>", esc(k));
    }
    out.push_str("</tr>\n");
    for (split, m) in &splits {
        let _ = write!(out, "<tr><td>{split}</td>");
        for k in &keys {
            match scalar(m, k) {
                Some(v) => {
                    let _ = write!(out, "<td class=\"num\">{}</td>", number(v, k));
                }
                None => out.push_str("<td class=\"num\">—</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// What early stopping did: when it stopped, the best epoch and value of
/// the monitored metric, and whose weights the model ends with.
fn early_stop(json: &Value) -> String {
    let Some(e) = json.get("early_stop").filter(|v| v.is_object()) else {
        return String::new();
    };
    let int = |k: &str| e.get(k).and_then(Value::as_u64);
    let monitor = e.get("monitor").and_then(Value::as_str).unwrap_or("");
    let when = match int("stopped_after") {
        Some(epoch) => format!("stopped after epoch {epoch}"),
        None => "did not stop training".into(),
    };
    let best = e.get("best").and_then(Value::as_f64).unwrap_or(f64::NAN);
    format!(
        "<p class=\"early-stop\">Early stopping {when}: best {} {} at epoch {}; the model holds the weights of epoch {}.</p>\n",
        esc(monitor),
        number(best, monitor),
        int("best_epoch").unwrap_or(0),
        int("kept_epoch").unwrap_or(0)
    )
}

/// A pruned model's sparsity: the target, and each pruned weight's zeros.
fn sparsity(json: &Value) -> String {
    let Some(e) = json.get("sparsity").filter(|v| v.is_object()) else {
        return String::new();
    };
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut out = String::from("<h2>Sparsity</h2>\n");
    let _ = writeln!(
        out,
        "<p class=\"sparsity\">Magnitude pruning ({} scope) to a target of {}: {} of the pruned weights are zero.</p>",
        esc(e.get("scope").and_then(Value::as_str).unwrap_or("")),
        number(num(e, "target"), "target"),
        number(num(e, "overall"), "overall")
    );
    out.push_str("<table class=\"sparsity\">\n<tr><th>weight</th><th>size</th><th>zeros</th><th>sparsity</th></tr>\n");
    for w in e
        .get("weights")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(w.get("name").and_then(Value::as_str).unwrap_or("")),
            number(num(w, "size"), "size"),
            number(num(w, "zeros"), "zeros"),
            number(num(w, "sparsity"), "sparsity")
        );
    }
    out.push_str("</table>\n");
    out
}

/// A line chart per metric over the epochs (train and validation), and
/// one of the learning rate.
fn curves(json: &Value) -> String {
    let Some(epochs) = json.get("per_epoch").and_then(Value::as_array) else {
        return String::new();
    };
    if epochs.is_empty() {
        return String::new();
    }
    let mut keys: Vec<&str> = Vec::new();
    for e in epochs {
        for split in ["train", "validation"] {
            if let Some(m) = e.get(split) {
                for k in scalar_keys(m) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
        }
    }
    let series = |split: &str, key: &str| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|e| {
                let x = e.get("epoch")?.as_f64()?;
                let y = scalar(e.get(split)?, key)?;
                Some((x, y))
            })
            .collect()
    };
    let mut out = String::from("<h2>Curves</h2>\n<div class=\"charts\">\n");
    for key in keys {
        let lines = [
            Series {
                label: "train",
                color: TRAIN,
                points: series("train", key),
            },
            Series {
                label: "validation",
                color: VALIDATION,
                points: series("validation", key),
            },
        ];
        out.push_str(&line_chart(key, &lines));
    }
    let lr: Vec<(f64, f64)> = epochs
        .iter()
        .filter_map(|e| Some((e.get("epoch")?.as_f64()?, e.get("lr")?.as_f64()?)))
        .collect();
    if !lr.is_empty() {
        out.push_str(&line_chart(
            "learning rate",
            &[Series {
                label: "lr",
                color: "#009e73",
                points: lr,
            }],
        ));
    }
    out.push_str("</div>\n");
    out
}

/// One line of a chart.
struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 440.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// An SVG line chart of `series` over the epochs, with axes, ticks, a
/// legend and a `<title>` on each point giving its exact value.
fn line_chart(title: &str, series: &[Series<'_>]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    if all().next().is_none() {
        return String::new();
    }
    let (x0, x1) = padded_range(all().map(|p| p.0), 0.0);
    let (y0, y1) = padded_range(all().map(|p| p.1), 0.05);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let py = |y: f64| HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\">\n<text x=\"{LEFT}\" y=\"16\" style=\"font-size: 13px; font-weight: bold\">{t}</text>\n",
        t = esc(title)
    );
    let (y_ticks, decimals) = ticks(y0, y1);
    for tick in y_ticks {
        let y = py(tick);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick_label(tick, decimals)
        );
    }
    for tick in ticks(x0, x1).0.into_iter().filter(|t| t.fract() == 0.0) {
        let x = px(tick);
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}</text>",
            HEIGHT - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\"/><line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">epoch</text>",
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 6.0,
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
    );
    let mut legend_x = WIDTH - RIGHT;
    for s in series.iter().rev().filter(|s| !s.points.is_empty()) {
        legend_x -= 8.0 + 7.0 * s.label.len() as f64 + 14.0;
        let _ = writeln!(
            out,
            "<rect x=\"{legend_x:.1}\" y=\"8\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"17\">{}</text>",
            s.color,
            legend_x + 14.0,
            esc(s.label)
        );
    }
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            s.color,
            path.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\" data-series=\"{}\" data-epoch=\"{x}\" data-value=\"{}\"><title>{} {}, epoch {x}: {}</title></circle>",
                px(x),
                py(y),
                s.color,
                esc(s.label),
                exact(y),
                esc(s.label),
                esc(title),
                exact(y)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The range of `values`, widened by `pad` of its span on each side, and
/// never empty.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// About five round tick values inside `[lo, hi]`, with the decimals
/// that tell them apart.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 12 {
        // Snap away the float noise of repeated addition (0.30000000000000004).
        out.push((t / step).round() * step);
        t += step;
    }
    // 2.5 × 10^k needs one decimal more than 10^k.
    let decimals =
        (-step.log10().floor()).max(0.0) as usize + usize::from((step / magnitude) == 2.5);
    (out, decimals)
}

fn tick_label(v: f64, decimals: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-4..1e6).contains(&a) {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// The confusion matrix of the final metrics of each held-out split
/// (`per_class.confusion`: rows the true class, columns the predicted
/// one) as a heat map, each cell shaded by its share of its row, and the
/// per-class precision, recall, F1 and support beside it.
fn confusion_matrices(json: &Value) -> String {
    let mut out = String::new();
    for split in ["test", "validation"] {
        let Some(per_class) = json.get(split).and_then(|m| m.get("per_class")) else {
            continue;
        };
        let Some(rows) = per_class.get("confusion").and_then(matrix) else {
            continue;
        };
        if out.is_empty() {
            out.push_str("<h2>Confusion matrix</h2>\n<div class=\"charts\">\n");
        }
        out.push_str(&heat_map(&format!("confusion ({split})"), &rows));
        out.push_str(&class_table(split, per_class));
    }
    if !out.is_empty() {
        out.push_str("</div>\n");
    }
    out
}

/// Precision, recall, F1 and support of each class.
fn class_table(split: &str, per_class: &Value) -> String {
    let columns = ["precision", "recall", "f1", "support"];
    let values: Vec<Vec<f64>> = columns
        .iter()
        .map(|c| {
            per_class
                .get(*c)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    let n = values.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = format!(
        "<table>\n<tr><th>class ({split})</th>{}</tr>\n",
        columns
            .iter()
            .map(|c| format!("<th class=\"num\">{c}</th>"))
            .collect::<String>()
    );
    for class in 0..n {
        let _ = write!(out, "<tr><td>{class}</td>");
        for (c, column) in columns.iter().zip(&values) {
            match column.get(class) {
                Some(&v) => {
                    let _ = write!(out, "<td class=\"num\">{}</td>", number(v, c));
                }
                None => out.push_str("<td class=\"num\">—</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// A square matrix of numbers.
fn matrix(v: &Value) -> Option<Vec<Vec<f64>>> {
    let rows = v.as_array()?;
    let m: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.as_array()?.iter().map(Value::as_f64).collect())
        .collect::<Option<_>>()?;
    (!m.is_empty() && m.iter().all(|r| r.len() == m.len())).then_some(m)
}

fn heat_map(title: &str, rows: &[Vec<f64>]) -> String {
    let n = rows.len();
    let cell = (360.0 / n as f64).clamp(14.0, 40.0);
    let left = 48.0;
    let top = 40.0;
    let side = cell * n as f64;
    let (w, h) = (left + side + 12.0, top + side + 36.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"{t}\">\n<text x=\"{left}\" y=\"16\" style=\"font-size: 13px; font-weight: bold\">{t}</text>\n<text x=\"{:.1}\" y=\"32\" text-anchor=\"middle\">predicted</text>\n<text x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">true</text>\n",
        left + side / 2.0,
        top + side / 2.0,
        top + side / 2.0,
        t = esc(title)
    );
    for (i, row) in rows.iter().enumerate() {
        let total: f64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0.0 { v / total } else { 0.0 };
            // White to the train blue, by the share of the true class.
            let mix = |to: f64| (255.0 + (to - 255.0) * share).round() as u8;
            let (x, y) = (left + j as f64 * cell, top + i as f64 * cell);
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"#{:02x}{:02x}{:02x}\" stroke=\"#fff\" data-row=\"{i}\" data-col=\"{j}\" data-value=\"{}\"><title>true {i}, predicted {j}: {}</title></rect>",
                mix(0.0),
                mix(114.0),
                mix(178.0),
                exact(v),
                count(v)
            );
            if cell >= 20.0 {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill: {}\">{}</text>",
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    if share > 0.5 { "#fff" } else { "#333" },
                    count(v)
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{i}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{i}</text>",
            left - 4.0,
            top + i as f64 * cell + cell / 2.0 + 4.0,
            left + i as f64 * cell + cell / 2.0,
            top + side + 14.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// With `validate = kfold(k)`: each metric's mean ± sample standard
/// deviation over the folds, and its value in each fold.
fn cross_validation(json: &Value) -> String {
    let Some(cv) = json.get("cross_validation").filter(|v| v.is_object()) else {
        return String::new();
    };
    let Some(summary) = cv.get("summary").and_then(Value::as_object) else {
        return String::new();
    };
    let k = cv.get("k").and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "<h2>Cross-validation ({k} folds)</h2>\n<table>\n<tr><th>metric</th><th class=\"num\">mean</th><th class=\"num\">std</th>{}</tr>\n",
        (1..=k)
            .map(|f| format!("<th class=\"num\">fold {f}</th>"))
            .collect::<String>()
    );
    for (name, entry) in summary {
        let cell = |v: Option<f64>| {
            v.map_or("<td class=\"num\">—</td>".to_string(), |v| {
                format!("<td class=\"num\">{}</td>", number(v, name))
            })
        };
        let _ = write!(
            out,
            "<tr><td>{}</td>{}{}",
            esc(name),
            cell(entry.get("mean").and_then(Value::as_f64)),
            cell(entry.get("std").and_then(Value::as_f64))
        );
        for v in entry
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&cell(v.as_f64()));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

fn summary_table(s: &Summary) -> String {
    let mut out = String::from(
        "<h2>Model</h2>\n<table>\n<tr><th>layer</th><th>calls</th><th>output</th><th class=\"num\">params</th><th class=\"num\">states</th></tr>\n",
    );
    for r in &s.rows {
        let outputs: Vec<String> = r.outputs.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&r.name),
            esc(&r.layer),
            esc(&outputs.join(", ")),
            count(r.params as f64),
            count(r.states as f64)
        );
    }
    let _ = writeln!(
        out,
        "<tr><th colspan=\"3\">total</th><th class=\"num\">{}</th><th class=\"num\">{}</th></tr>\n</table>",
        count(s.params as f64),
        count(s.states as f64)
    );
    out
}

fn settings_table(settings: &[(String, String)]) -> String {
    let mut out = String::from("<h2>Settings</h2>\n<table>\n");
    for (k, v) in settings {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            esc(k),
            esc(v)
        );
    }
    out.push_str("</table>\n");
    out
}

fn timings(json: &Value) -> String {
    let mut out = String::from("<h2>Timings</h2>\n<table>\n");
    for (key, label, unit) in [
        ("compile_seconds", "compile (parse to first step)", "s"),
        ("total_seconds", "total", "s"),
        ("samples_per_second", "samples per second", ""),
        ("peak_rss_bytes", "peak memory (RSS)", "MiB"),
    ] {
        if let Some(v) = json.get(key).and_then(Value::as_f64) {
            let shown = match unit {
                "MiB" => format!(
                    "<span data-key=\"{key}\" data-value=\"{}\">{:.1}</span>",
                    exact(v),
                    v / (1024.0 * 1024.0)
                ),
                _ => number(v, key),
            };
            let _ = writeln!(
                out,
                "<tr><th>{label}</th><td class=\"num\">{shown} {unit}</td></tr>"
            );
        }
    }
    out.push_str("</table>\n");
    if let Some(epochs) = json.get("per_epoch").and_then(Value::as_array) {
        if !epochs.is_empty() {
            out.push_str("<table>\n<tr><th>epoch</th><th class=\"num\">seconds</th><th class=\"num\">samples per second</th></tr>\n");
            for e in epochs {
                let cell = |k: &str| {
                    e.get(k)
                        .and_then(Value::as_f64)
                        .map_or("—".to_string(), |v| number(v, k))
                };
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    cell("epoch"),
                    cell("seconds"),
                    cell("samples_per_second")
                );
            }
            out.push_str("</table>\n");
        }
    }
    out
}

/// The scalar values of a metrics object: its numbers and those of its
/// `metrics` map (the set metrics: `f1`, `r2`, ...).
fn scalars(m: &Value) -> Vec<(&str, f64)> {
    let Some(o) = m.as_object() else {
        return Vec::new();
    };
    let mut out = numbers_of(o);
    if let Some(set) = o.get("metrics").and_then(Value::as_object) {
        out.extend(numbers_of(set));
    }
    out
}

fn numbers_of(o: &serde_json::Map<String, Value>) -> Vec<(&str, f64)> {
    o.iter()
        .filter(|(k, _)| !NOT_CURVES.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str(), v.as_f64()?)))
        .collect()
}

/// The names of a metrics object's scalar values: `loss` first, then
/// `accuracy`, then by name.
fn scalar_keys(m: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = scalars(m).into_iter().map(|(k, _)| k).collect();
    keys.sort_by_key(|k| (*k != "loss", *k != "accuracy", *k));
    keys
}

/// The scalar value `key` of a metrics object.
fn scalar(m: &Value, key: &str) -> Option<f64> {
    scalars(m)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A number as a reader wants it, with its exact value in `data-value`.
fn number(v: f64, key: &str) -> String {
    let shown = if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if key.contains("seconds") || v.abs() >= 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    format!(
        "<span data-key=\"{}\" data-value=\"{}\">{shown}</span>",
        esc(key),
        exact(v)
    )
}

/// A count as people read one: `1,181,994`; a count that is not a whole
/// number (it never is) as its exact value.
fn count(v: f64) -> String {
    if v.fract() != 0.0 || v.abs() >= 1e15 {
        return exact(v);
    }
    let sign = if v < 0.0 { "-" } else { "" };
    format!("{sign}{}", nnc_ir::summary::thousands(v.abs() as usize))
}

/// The shortest text that reads back to the same `f64`.
fn exact(v: f64) -> String {
    format!("{v:?}")
}

/// Text escaped for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{esc, padded_range, tick_label, ticks, HtmlReport};
    use crate::report::{EpochEntry, MetricsEntry, Report};
    use nnc_ir::{DType, Dim, Summary, SummaryRow, TensorType};

    fn metrics(loss: f64, accuracy: f64) -> MetricsEntry {
        MetricsEntry {
            loss,
            accuracy: Some(accuracy),
            samples: 90,
            metrics: [("f1".to_string(), accuracy / 2.0)].into_iter().collect(),
            per_class: None,
        }
    }

    fn report() -> Report {
        let epoch = |e: usize, loss: f64, acc: f64| EpochEntry {
            epoch: e,
            lr: 0.1 / e as f64,
            train: metrics(loss, acc),
            validation: Some(metrics(loss * 1.1, acc - 0.01)),
            seconds: 1.25 + e as f64,
            samples_per_second: 72.5 / e as f64,
        };
        Report {
            model: "A<B>&C".into(),
            backend: "jit".into(),
            mode: "train".into(),
            nnc_version: "0.1.0".into(),
            epochs: 3,
            first_epoch: 1,
            per_epoch: vec![
                epoch(1, 2.25, 0.1),
                epoch(2, 0.75, 0.55),
                epoch(3, 0.123456789, 0.9),
            ],
            train: Some(metrics(0.123456789, 0.9)),
            validation: Some(metrics(0.1358024679, 0.89)),
            test: Some(metrics(0.2, 0.875)),
            samples_per_second: 31.4159,
            total_seconds: 7.5,
            compile_seconds: 0.042,
            peak_rss_bytes: Some(123_456_789),
            early_stop: Some(crate::report::EarlyStopEntry {
                monitor: "val_loss".into(),
                stopped_after: None,
                best_epoch: 3,
                best: 0.1358024679,
                kept_epoch: 3,
            }),
            sparsity: Some(crate::report::SparsityEntry {
                target: 0.8,
                scope: "layer".into(),
                overall: 0.7996,
                weights: vec![crate::report::WeightSparsityEntry {
                    name: "dense.w".into(),
                    size: 7840,
                    zeros: 6272,
                    sparsity: 0.8,
                }],
            }),
            cross_validation: None,
        }
    }

    fn summary() -> Summary {
        Summary {
            rows: vec![SummaryRow {
                name: "dense".into(),
                layer: "dense".into(),
                outputs: vec![TensorType::new(
                    DType::F32,
                    [Dim::Sym("B".into()), Dim::Const(10)],
                )],
                params: 7850,
                states: 0,
            }],
            params: 7850,
            states: 0,
        }
    }

    /// Every number of the JSON report, with its key path.
    fn numbers(v: &serde_json::Value, path: String, out: &mut Vec<(String, f64)>) {
        match v {
            serde_json::Value::Number(n) => out.push((path, n.as_f64().unwrap())),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    numbers(x, format!("{path}[{i}]"), out);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    numbers(x, format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn early_stopping_is_told_only_when_the_run_had_it() {
        let mut r = report();
        let render = |r: &Report| {
            HtmlReport {
                report: r,
                summary: &summary(),
                settings: Vec::new(),
            }
            .render()
        };
        let html = render(&r);
        assert!(
            html.contains("Early stopping did not stop training: best val_loss <span data-key=\"val_loss\" data-value=\"0.1358024679\">0.1358</span> at epoch 3; the model holds the weights of epoch 3."),
            "{html}"
        );
        r.early_stop = None;
        assert!(!render(&r).contains("Early stopping"));
    }

    #[test]
    fn a_pruned_models_sparsity_is_a_table_of_its_weights() {
        let mut r = report();
        let render = |r: &Report| {
            HtmlReport {
                report: r,
                summary: &summary(),
                settings: Vec::new(),
            }
            .render()
        };
        let html = render(&r);
        assert!(html.contains("<h2>Sparsity</h2>"), "{html}");
        assert!(
            html.contains("<tr><td>dense.w</td><td><span data-key=\"size\" data-value=\"7840.0\">7840</span></td><td><span data-key=\"zeros\" data-value=\"6272.0\">6272</span></td>"),
            "{html}"
        );
        r.sparsity = None;
        assert!(!render(&r).contains("Sparsity"));
    }

    #[test]
    fn the_report_parses_as_xml_and_holds_every_number_of_the_json_report() {
        let r = report();
        let html = HtmlReport {
            report: &r,
            summary: &summary(),
            settings: vec![("optimizer".into(), "sgd(lr: 0.1)".into())],
        }
        .render();
        let doc = roxmltree::Document::parse_with_options(
            &html,
            roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("not well-formed: {e}\n{html}"));
        let values: Vec<f64> = doc
            .descendants()
            .filter_map(|n| n.attribute("data-value"))
            .map(|v| v.parse().unwrap())
            .collect();
        let mut all = Vec::new();
        numbers(&serde_json::to_value(&r).unwrap(), String::new(), &mut all);
        for (path, v) in all {
            // Counts and epoch numbers show as text; every measured value
            // is in a `data-value`.
            if path.ends_with(".samples")
                || path.ends_with(".epoch")
                || path == ".epochs"
                || path == ".first_epoch"
            {
                continue;
            }
            assert!(values.contains(&v), "{path} = {v} is not in the HTML");
        }
        let svgs = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
        // loss, accuracy, f1, learning rate.
        assert_eq!(svgs, 4);
        // Each chart of a metric has a train and a validation point per epoch.
        let loss_points = doc
            .descendants()
            .filter(|n| n.has_tag_name("svg") && n.attribute("aria-label") == Some("loss"))
            .flat_map(|s| s.descendants().filter(|n| n.has_tag_name("circle")))
            .count();
        assert_eq!(loss_points, 6);
        assert!(html.contains("A&lt;B&gt;&amp;C"));
    }

    #[test]
    fn a_confusion_matrix_is_a_heat_map_with_a_cell_per_count() {
        let r = report();
        let mut json = serde_json::to_value(&r).unwrap();
        json["test"]["per_class"] = serde_json::json!({
            "precision": [5.0 / 7.0, 0.75, 0.0],
            "recall": [5.0 / 6.0, 1.0, 0.0],
            "f1": [0.77, 0.86, 0.0],
            "support": [6, 3, 2],
            "confusion": [[5, 1, 0], [0, 3, 0], [2, 0, 0]],
        });
        let out = super::confusion_matrices(&json);
        let xml = out.replace("<h2>Confusion matrix</h2>", "");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let cells: Vec<(String, String, String)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .map(|n| {
                (
                    n.attribute("data-row").unwrap().into(),
                    n.attribute("data-col").unwrap().into(),
                    n.attribute("data-value").unwrap().into(),
                )
            })
            .collect();
        assert_eq!(cells.len(), 9);
        // The per-class table beside it.
        assert!(out.contains(&format!("data-value=\"{:?}\"", 5.0f64 / 7.0)));
        assert!(out.contains("<td>2</td>"));
        assert!(cells.contains(&("0".into(), "1".into(), "1.0".into())));
        assert!(cells.contains(&("2".into(), "0".into(), "2.0".into())));
        // A row with no sample (class 2 predicted never) is still drawn.
        assert!(out.contains("true 2, predicted 2: 0<"));
    }

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(super::count(1_181_994.0), "1,181,994");
        assert_eq!(super::count(857.0), "857");
        assert_eq!(super::count(0.0), "0");
        assert_eq!(super::count(-1234.0), "-1,234");
        assert_eq!(super::count(2.5), "2.5");
    }

    #[test]
    fn ranges_and_ticks_are_never_empty() {
        assert_eq!(padded_range([3.0, 3.0].into_iter(), 0.05), (2.7, 3.3));
        assert_eq!(padded_range([0.0].into_iter(), 0.05), (-1.0, 1.0));
        assert_eq!(padded_range(std::iter::empty(), 0.05), (0.0, 1.0));
        let labels = |lo, hi| {
            let (t, d) = ticks(lo, hi);
            t.into_iter().map(|v| tick_label(v, d)).collect::<Vec<_>>()
        };
        assert_eq!(labels(0.0, 1.0), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        // A flat learning rate: ticks close together still read apart.
        assert_eq!(
            labels(0.0009, 0.0011),
            ["0.00090", "0.00095", "0.00100", "0.00105", "0.00110"]
        );
        assert_eq!(labels(0.0, 25.0), ["0", "5", "10", "15", "20", "25"]);
        assert!(ticks(1e-9, 3e-9).0.len() >= 2);
        assert_eq!(esc("a<\"b\">&'"), "a&lt;&quot;b&quot;&gt;&amp;&#39;");
    }
}
