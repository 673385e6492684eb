//! The sweep's written report: `report.md` (a table a person reads) and `report.json`
//! (the same numbers plus every input's sha256, for reproduction and comparison).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{SettingResult, SourceResult};
use crate::error::Result;

/// One input file of a sweep and its sha256.
#[derive(Clone, Debug, Serialize)]
pub struct InputFile {
    /// `source`, `text`, `calibration` or `compare`.
    pub role: String,
    /// Its path as given.
    pub path: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// Everything a sweep measured, and what it measured it on.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// lowbit version that produced it.
    pub lowbit_version: String,
    /// Every input file with its sha256 (source, text, calibration texts, compare files).
    pub inputs: Vec<InputFile>,
    /// Source model path.
    pub source: String,
    /// Its sha256.
    pub source_sha256: String,
    /// Evaluation text path.
    pub text: String,
    /// Its sha256.
    pub text_sha256: String,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks evaluated (None = all).
    pub chunks: Option<usize>,
    /// Calibration texts (empty: none; settings were quantized without an importance
    /// matrix and per-tensor errors are plain weight errors).
    pub calib: Vec<String>,
    /// Calibration chunks of 512 tokens.
    pub calib_chunks: usize,
    /// Tokens per generated continuation (when prompts were measured).
    pub gen_tokens: usize,
    /// The source's own evaluation.
    pub source_result: SourceResult,
    /// Settings, then peer files, in the order run.
    pub results: Vec<SettingResult>,
}

/// Indices of the results on the Pareto front (no other result is as small or smaller and
/// closer to the source), sorted by size. Sizes within 0.1 % count as equal, so a few
/// bytes of metadata do not put a worse file of the same mix on the front.
pub fn pareto_front(results: &[SettingResult]) -> Vec<usize> {
    let dominated = |i: usize| {
        let (si, ki) = (results[i].file_bytes as f64, results[i].kld_mean);
        results.iter().enumerate().any(|(j, r)| {
            let sj = r.file_bytes as f64;
            j != i
                && sj <= si * 1.001
                && (r.kld_mean < ki || (r.kld_mean == ki && sj < si) || (r.kld_mean == ki && sj == si && j < i))
        })
    };
    let mut front: Vec<usize> = (0..results.len()).filter(|&i| !dominated(i)).collect();
    front.sort_by(|&a, &b| results[a].file_bytes.cmp(&results[b].file_bytes));
    front
}

/// One table cell: what is shown, and the number it sorts by (HTML report).
struct Cell {
    text: String,
    key: Option<f64>,
}

fn num(text: String, key: f64) -> Cell {
    Cell { text, key: Some(key) }
}

fn txt(text: impl Into<String>) -> Cell {
    Cell { text: text.into(), key: None }
}

fn opt_pct(v: Option<f64>) -> Cell {
    v.map_or_else(|| txt("–"), |v| num(format!("{:.1}", 100.0 * v), v))
}

/// The task and generation columns of [`table`].
const BEHAVIOUR_COLUMNS: [&str; 5] = ["HS acc_norm %", "HS same %", "gen exact %", "gen 1st diff", "ROUGE-L"];

/// The results table, once for both renderings: column headers, then one row per result.
/// Task and generation columns appear when the sweep measured them.
fn table(r: &SweepReport) -> (Vec<&'static str>, Vec<Vec<Cell>>) {
    let s = &r.source_result;
    let behaviour = s.behaviour.hellaswag_acc_norm.is_some() || !s.behaviour.continuations.is_empty();
    let mut head =
        vec!["setting", "kind", "size MB", "bpw", "bpw linear", "PPL", "ΔPPL", "KLD mean", "KLD p99", "top-1 %"];
    if behaviour {
        head.extend(BEHAVIOUR_COLUMNS);
    }
    head.extend(["quantize s", "Pareto"]);
    let front = pareto_front(&r.results);
    let rows = r
        .results
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut row = vec![
                txt(x.name.clone()),
                txt(x.kind.clone()),
                num(format!("{:.2}", x.file_bytes as f64 / 1e6), x.file_bytes as f64),
                num(format!("{:.3}", x.bpw), x.bpw),
                num(format!("{:.3}", x.bpw_linear), x.bpw_linear),
                num(format!("{:.4} ± {:.4}", x.ppl, x.ppl_err), x.ppl),
                num(format!("{:+.2}%", 100.0 * (x.ppl / s.ppl - 1.0)), x.ppl / s.ppl),
                num(format!("{:.5} ± {:.5}", x.kld_mean, x.kld_err), x.kld_mean),
                num(format!("{:.4}", x.kld_p99), x.kld_p99),
                num(format!("{:.2}", 100.0 * x.top1), x.top1),
            ];
            if behaviour {
                let b = &x.behaviour;
                row.extend([
                    opt_pct(b.hellaswag_acc_norm),
                    opt_pct(b.hellaswag_agreement),
                    opt_pct(b.exact_match),
                    b.first_divergence.map_or_else(|| txt("–"), |v| num(format!("{v:.1}"), v)),
                    b.rouge_l.map_or_else(|| txt("–"), |v| num(format!("{v:.3}"), v)),
                ]);
            }
            row.push(x.quantize_seconds.map_or_else(|| txt("–"), |t| num(format!("{t:.1}"), t)));
            row.push(txt(if front.contains(&i) { "●" } else { "" }));
            row
        })
        .collect();
    (head, rows)
}

/// The sentence under the title: what was measured, on what.
fn summary(r: &SweepReport) -> String {
    let s = &r.source_result;
    let chunks = r.chunks.map_or("all".to_string(), |c| c.to_string());
    let mut out = format!(
        "Text `{}`, {chunks} chunks of {} tokens ({} scored). Source: {:.2} MB, {:.3} bpw, PPL {:.4} ± {:.4}. \
         KLD is KL(source ‖ quantized) in nats per token over the same tokens; ΔPPL relative to the source.",
        r.text,
        r.ctx,
        s.scored_tokens,
        s.file_bytes as f64 / 1e6,
        s.bpw,
        s.ppl,
        s.ppl_err
    );
    let b = &s.behaviour;
    if let Some(acc) = b.hellaswag_acc_norm {
        out.push_str(&format!(
            " HS: HellaSwag acc_norm on {} tasks (llama.cpp's draw; source {:.1} %), and how often the file \
             chooses the source's ending.",
            b.choices.len(),
            100.0 * acc
        ));
    }
    if !b.continuations.is_empty() {
        out.push_str(&format!(
            " gen: greedy continuations of {} bundled prompts ({} tokens) against the source's: \
             share identical, tokens before the first difference, ROUGE-L F1.",
            b.continuations.len(),
            r.gen_tokens
        ));
    }
    out
}

/// Renders the Markdown report.
pub fn markdown(r: &SweepReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# lowbit sweep: {}\n", r.source);
    let _ = writeln!(md, "{}\n", summary(r));
    // The task and generation columns go to a second table (with the setting's name
    // again), so each stays readable in a terminal.
    let (head, rows) = table(r);
    let second: Vec<usize> = (0..head.len()).filter(|&c| BEHAVIOUR_COLUMNS.contains(&head[c])).collect();
    let first: Vec<usize> = (0..head.len()).filter(|c| !second.contains(c)).collect();
    for (n, cols) in [first, [vec![0], second].concat()].into_iter().enumerate() {
        if cols.len() < 2 {
            continue;
        }
        if n > 0 {
            md.push('\n');
        }
        let _ = writeln!(md, "| {} |", cols.iter().map(|&c| head[c]).collect::<Vec<_>>().join(" | "));
        let align: Vec<&str> = cols
            .iter()
            .map(|&c| match head[c] {
                "setting" | "kind" => "---",
                "Pareto" => ":---:",
                _ => "---:",
            })
            .collect();
        let _ = writeln!(md, "|{}|", align.join("|"));
        for row in &rows {
            let cells: Vec<&str> = cols.iter().map(|&c| row[c].text.as_str()).collect();
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
    }
    if !r.calib.is_empty() {
        let _ = writeln!(
            md,
            "\nQuantized with an importance matrix from {} ({} chunks of 512 tokens, `imatrix.gguf`); per-tensor errors weighted by it.",
            r.calib.join(" + "),
            r.calib_chunks
        );
    }
    let _ = writeln!(
        md,
        "\nInputs: lowbit {}, source sha256 `{}`, text sha256 `{}`.",
        r.lowbit_version, r.source_sha256, r.text_sha256
    );
    let _ = writeln!(md, "\n![size vs KLD](pareto.png)\n\n![per-tensor error](layers.png)");
    if r.source_result.behaviour.hellaswag_acc_norm.is_some() {
        let _ = writeln!(md, "\n![KLD vs task accuracy drop](tasks.png)");
    }
    md
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Sorts a table by the clicked column (numbers by their `data-v`, text otherwise);
/// a second click reverses.
const SORT_JS: &str = r#"
document.querySelectorAll('table.sortable th').forEach((th, col) => {
  th.addEventListener('click', () => {
    const body = th.closest('table').tBodies[0];
    const asc = th.dataset.dir !== 'asc';
    th.closest('tr').querySelectorAll('th').forEach(h => { delete h.dataset.dir; });
    th.dataset.dir = asc ? 'asc' : 'desc';
    const key = td => td.dataset.v !== undefined ? parseFloat(td.dataset.v) : td.textContent;
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a.cells[col]), y = key(b.cells[col]);
      const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
"#;

/// Renders `report.html`: the table (sortable by clicking a header) and the plots read
/// from `dir` (inline SVG), with no external assets.
pub fn html(r: &SweepReport, dir: &Path) -> String {
    let mut h = String::new();
    let title = format!("lowbit sweep: {}", r.source);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; font-size: 14px; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}\n\
         td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         th {{ background: #f0f0f0; cursor: pointer; user-select: none; }}\n\
         th[data-dir=asc]::after {{ content: ' ▲'; }} th[data-dir=desc]::after {{ content: ' ▼'; }}\n\
         tr.compare td {{ background: #fff4f4; }}\n\
         figure {{ margin: 2em 0; }} svg {{ max-width: 100%; height: auto; }}\n\
         code {{ font-size: 12px; }}\n</style></head><body>\n<h1>{}</h1>\n<p>{}</p>\n",
        escape(&title),
        escape(&title),
        escape(&summary(r))
    );
    let (head, rows) = table(r);
    h.push_str("<table class=\"sortable\"><thead><tr>");
    for c in &head {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (row, x) in rows.iter().zip(&r.results) {
        let _ = write!(h, "<tr class=\"{}\">", escape(&x.kind));
        for c in row {
            match c.key {
                Some(v) if v.is_finite() => {
                    let _ = write!(h, "<td class=\"n\" data-v=\"{v}\">{}</td>", escape(&c.text));
                }
                _ => {
                    let _ = write!(h, "<td>{}</td>", escape(&c.text));
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    if !r.calib.is_empty() {
        let _ = writeln!(
            h,
            "<p>Quantized with an importance matrix from {} ({} chunks of 512 tokens).</p>",
            escape(&r.calib.join(" + ")),
            r.calib_chunks
        );
    }
    for (file, caption) in [
        ("pareto.svg", "Size vs. mean KL divergence from the source"),
        ("tasks.svg", "Mean KL divergence vs. HellaSwag accuracy drop"),
        ("layers.svg", "Per-tensor relative weight error"),
    ] {
        // A plot that was not drawn (no tasks measured) is left out.
        if let Ok(svg) = std::fs::read_to_string(dir.join(file)) {
            let svg = svg.trim_start_matches(|c| c != '<');
            let svg = svg.strip_prefix("<?xml").map_or(svg, |rest| &rest[rest.find("?>").map_or(0, |i| i + 2)..]);
            let _ = writeln!(h, "<figure>{svg}<figcaption>{}</figcaption></figure>", escape(caption));
        }
    }
    let _ = write!(
        h,
        "<p><small>lowbit {}; inputs (sha256): {}</small></p>\n<script>{SORT_JS}</script>\n</body></html>\n",
        escape(&r.lowbit_version),
        r.inputs
            .iter()
            .map(|i| format!(
                "{} <code>{}</code> {}",
                escape(&i.role),
                escape(&i.path),
                &i.sha256[..12.min(i.sha256.len())]
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    h
}

/// Writes `report.md`, `report.html` and `report.json` into `dir` (atomically); the
/// plots must be drawn first (the HTML embeds them).
pub fn write_report(r: &SweepReport, dir: &Path) -> Result<()> {
    crate::atomic::write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    crate::atomic::write_atomic(&dir.join("report.html"), html(r, dir).as_bytes())?;
    let json = serde_json::to_vec_pretty(r).expect("report serialises");
    crate::atomic::write_atomic(&dir.join("report.json"), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, bytes: u64, kld: f64) -> SettingResult {
        SettingResult {
            name: name.into(),
            kind: "lowbit".into(),
            key: String::new(),
            file_bytes: bytes,
            bpw: 0.0,
            bpw_linear: 0.0,
            ppl: 0.0,
            ppl_err: 0.0,
            kld_mean: kld,
            kld_err: 0.0,
            kld_p99: 0.0,
            top1: 0.0,
            quantize_seconds: None,
            behaviour: Default::default(),
            tensors: vec![],
        }
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let r = vec![
            result("big-good", 100, 0.01),
            result("small-bad", 50, 0.5),
            result("dominated", 80, 0.6),
            result("mid", 70, 0.1),
            result("same-size-worse", 70, 0.2),
        ];
        let names: Vec<&str> = pareto_front(&r).into_iter().map(|i| r[i].name.as_str()).collect();
        assert_eq!(names, ["small-bad", "mid", "big-good"]);
    }

    #[test]
    fn a_few_metadata_bytes_do_not_put_a_worse_file_on_the_front() {
        let r = vec![result("lowbit", 100_000, 0.01), result("peer", 99_920, 0.02), result("tiny", 50_000, 0.5)];
        let names: Vec<&str> = pareto_front(&r).into_iter().map(|i| r[i].name.as_str()).collect();
        assert_eq!(names, ["tiny", "lowbit"]);
    }
}
