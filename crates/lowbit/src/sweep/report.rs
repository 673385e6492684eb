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

/// Renders the Markdown table.
pub fn markdown(r: &SweepReport) -> String {
    let s = &r.source_result;
    let mut md = String::new();
    let chunks = r.chunks.map_or("all".to_string(), |c| c.to_string());
    let _ = writeln!(md, "# lowbit sweep: {}\n", r.source);
    let _ = writeln!(
        md,
        "Text `{}`, {chunks} chunks of {} tokens ({} scored). Source: {:.2} MB, {:.3} bpw, PPL {:.4} ± {:.4}. \
         KLD is KL(source ‖ quantized) in nats per token over the same tokens; ΔPPL relative to the source.\n",
        r.text,
        r.ctx,
        s.scored_tokens,
        s.file_bytes as f64 / 1e6,
        s.bpw,
        s.ppl,
        s.ppl_err
    );
    let front = pareto_front(&r.results);
    let _ = writeln!(
        md,
        "| setting | kind | size MB | bpw | bpw linear | PPL | ΔPPL | KLD mean | KLD p99 | top-1 % | quantize s | Pareto |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for (i, x) in r.results.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.3} | {:.3} | {:.4} ± {:.4} | {:+.2}% | {:.5} ± {:.5} | {:.4} | {:.2} | {} | {} |",
            x.name,
            x.kind,
            x.file_bytes as f64 / 1e6,
            x.bpw,
            x.bpw_linear,
            x.ppl,
            x.ppl_err,
            100.0 * (x.ppl / s.ppl - 1.0),
            x.kld_mean,
            x.kld_err,
            x.kld_p99,
            100.0 * x.top1,
            x.quantize_seconds.map_or("–".to_string(), |t| format!("{t:.1}")),
            if front.contains(&i) { "●" } else { "" }
        );
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
    md
}

/// Writes `report.md` and `report.json` into `dir` (atomically).
pub fn write_report(r: &SweepReport, dir: &Path) -> Result<()> {
    crate::atomic::write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
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
