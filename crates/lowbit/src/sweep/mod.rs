//! `lowbit sweep`: quantize one source at several settings, evaluate every result
//! against the source on the same tokens, and write the degradation report (table,
//! JSON, Pareto plot, per-tensor error plot).
//!
//! Work is resumable: the source's distributions are saved once (`reference.logits`),
//! and each finished setting leaves `settings/<name>.json`, written atomically; a rerun
//! with the same inputs skips what is there and produces the same report.

mod behaviour;
mod plot;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::calibrate::{compute_stats, CalibrationStats, Imatrix};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalReport, Reference, SaveLogits};
use crate::gguf::GgufFile;
use crate::method::Method;
use crate::model::{load_gguf_lm, LoadOptions};
use crate::plan::allows_quantization;
use crate::quantize::{mix_for_type, CalibrationInput, QuantizeJob};
use crate::saved_logits::{LogitsFormat, LogitsReader};
use crate::zoo::sha256_file;

pub use behaviour::{Behaviour, Probe, SourceBehaviour};
pub use plot::{plot_layers, plot_pareto, plot_tasks};
pub use report::{markdown as report_markdown, write_report, InputFile, SweepReport};

/// One quantization setting: a mix (or a native or VQ format) and a method.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The type as given (`Q4_K_M`, `int4_g64`, `vq4x256+128`, …), as `lowbit quantize
    /// --type` takes it; for a size target, `size:90MB` or `bpw:3.4`.
    pub ty: String,
    /// How tensors are quantized (`search` unless the setting names another; `gptq` needs
    /// the sweep's calibration texts).
    pub method: Method,
    /// A size to allocate to (`size:90MB`, `bpw:3.4`; needs the sweep's calibration texts).
    pub target: Option<crate::allocate::SizeTarget>,
}

impl Setting {
    /// Parses `TYPE` or `TYPE:METHOD` (e.g. `Q4_K_M:rtn`, `Q4_K_M:gptq`), or a size
    /// target `size:SIZE[:METHOD]` / `bpw:BITS[:METHOD]` (e.g. `size:90MB:gptq`).
    pub fn parse(text: &str) -> Result<Setting> {
        for (prefix, is_size) in [("size:", true), ("bpw:", false)] {
            let Some(rest) = text.strip_prefix(prefix) else { continue };
            let (value, method) = rest.split_once(':').unwrap_or((rest, "search"));
            let method = Method::from_name(method).ok_or_else(|| {
                Error::Usage(format!("setting '{text}': unknown method '{method}' (search, rtn, gptq)"))
            })?;
            let target = if is_size {
                crate::allocate::SizeTarget::parse_size(value)
                    .map_err(|e| Error::Usage(format!("setting '{text}': {e}")))?
            } else {
                match value.parse::<f64>() {
                    Ok(b) if b.is_finite() && b > 0.0 && b <= 32.0 => crate::allocate::SizeTarget::Bpw(b),
                    _ => return Err(Error::Usage(format!("setting '{text}': bits per weight between 0 and 32"))),
                }
            };
            let ty = format!("{}{value}", prefix);
            return Ok(Setting { ty, method, target: Some(target) });
        }
        let (ty, method) = match text.split_once(':') {
            Some((t, m)) => (
                t,
                Method::from_name(m).ok_or_else(|| {
                    Error::Usage(format!("setting '{text}': unknown method '{m}' (search, rtn, gptq)"))
                })?,
            ),
            None => (text, Method::Search),
        };
        if mix_for_type(ty).is_none() {
            return Err(Error::Usage(format!(
                "setting '{text}': unknown type '{ty}' (a llama-quantize mix such as Q4_K_M, a native format such as int4_g64, or a VQ format such as vq4x256+128)"
            )));
        }
        Ok(Setting { ty: ty.to_string(), method, target: None })
    }

    /// The file-safe name of the setting (`Q4_K_M`, `Q4_K_M-rtn`, `size-90MB`).
    pub fn name(&self) -> String {
        let ty = self.ty.replace(':', "-");
        match self.method {
            Method::Search => ty,
            m => format!("{ty}-{}", m.name()),
        }
    }

    /// The quantization job this setting means, without calibration.
    pub fn job(&self) -> Result<QuantizeJob> {
        if let Some(target) = self.target {
            let q8 = crate::plan::Mix::from_name("Q8_0").expect("Q8_0 is a mix");
            return Ok(QuantizeJob { method: Some(self.method), target: Some(target), ..QuantizeJob::new(q8, vec![]) });
        }
        let (mix, overrides) =
            mix_for_type(&self.ty).ok_or_else(|| Error::Usage(format!("unknown type '{}'", self.ty)))?;
        Ok(QuantizeJob { method: Some(self.method), ..QuantizeJob::new(mix, overrides) })
    }

    /// The job in a sweep writing to `dir` with calibration texts `calib` (`calib_chunks`
    /// chunks of 512; the sweep saves `imatrix.gguf`, and for GPTQ settings
    /// `stats.safetensors`, there; a size target measures on the texts), checked.
    fn sweep_job(&self, dir: &Path, calib: &[PathBuf], calib_chunks: usize) -> Result<QuantizeJob> {
        let calibrated = !calib.is_empty();
        if self.target.is_some() {
            if !calibrated {
                return Err(Error::Usage(format!(
                    "setting '{}': a size target measures sensitivities on calibration texts (--calib)",
                    self.name()
                )));
            }
            let eval = EvalOptions { ctx: 512, max_chunks: Some(calib_chunks), ..Default::default() };
            let calibration = CalibrationInput::Texts { paths: calib.to_vec(), eval };
            // A sweep sets lowbit's curve beside llama.cpp's mixes: files llama.cpp runs too.
            let cost_options = crate::allocate::CostOptions { llama_cpp_only: true, ..Default::default() };
            // Every setting of a sweep calibrates on the float model (one statistics file serves
            // them all), so that its rows differ by the setting only.
            let job = QuantizeJob { calibration, cost_options, sequential: Some(false), ..self.job()? };
            job.check().map_err(|e| Error::Usage(format!("setting '{}': {e}", self.name())))?;
            return Ok(job);
        }
        let calibration = match (calibrated, self.method) {
            (false, Method::Gptq) => {
                return Err(Error::Usage(format!("setting '{}': gptq needs calibration texts (--calib)", self.name())))
            }
            (false, _) => CalibrationInput::None,
            (true, Method::Gptq) => CalibrationInput::Stats(dir.join("stats.safetensors")),
            (true, _) => CalibrationInput::Imatrix(dir.join("imatrix.gguf")),
        };
        let job = QuantizeJob { calibration, ..self.job()? };
        job.check().map_err(|e| Error::Usage(format!("setting '{}': {e}", self.name())))?;
        Ok(job)
    }
}

/// What a sweep runs on.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The settings, in report order.
    pub settings: Vec<Setting>,
    /// Peer files (e.g. llama.cpp's quantizations) evaluated the same way.
    pub compare: Vec<PathBuf>,
    /// Evaluation context and chunk count.
    pub eval: EvalOptions,
    /// Keep the quantized files in `DIR/models`.
    pub keep: bool,
    /// Calibration texts: when given, an importance matrix is computed once (saved as
    /// `DIR/imatrix.gguf` in llama.cpp's format), every setting is quantized with it, and
    /// per-tensor errors are weighted by it.
    pub calib: Vec<PathBuf>,
    /// Calibration chunks of 512 tokens (BENCHMARKS.md: 64).
    pub calib_chunks: usize,
    /// HellaSwag tasks every file is scored on (llama.cpp's draw; 0: none).
    pub tasks: usize,
    /// Bundled prompts every file continues greedily, compared with the source (0: none).
    pub prompts: usize,
    /// Tokens per continuation.
    pub gen_tokens: usize,
}

/// Relative weight error of one tensor: ‖W − Ŵ‖ / ‖W‖.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorError {
    /// Tensor name.
    pub name: String,
    /// Its storage type in the quantized file.
    pub ty: String,
    /// ‖W − Ŵ‖ / ‖W‖ over the whole tensor.
    pub relative_error: f64,
}

/// The measured outcome of one setting or peer file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SettingResult {
    /// Setting name, or the peer file's stem.
    pub name: String,
    /// `lowbit` for settings, `compare` for peer files.
    pub kind: String,
    /// The inputs this result was computed from (must match for reuse).
    pub key: String,
    /// Whole file bytes.
    pub file_bytes: u64,
    /// Bits per weight over all tensor data.
    pub bpw: f64,
    /// Bits per weight over the quantizable matrices.
    pub bpw_linear: f64,
    /// Perplexity and its standard error.
    pub ppl: f64,
    /// Standard error of the perplexity.
    pub ppl_err: f64,
    /// Mean KL divergence from the source (nats) and its standard error.
    pub kld_mean: f64,
    /// Standard error of the mean KLD.
    pub kld_err: f64,
    /// 99th percentile KLD.
    pub kld_p99: f64,
    /// Top-1 agreement with the source (0…1).
    pub top1: f64,
    /// Seconds to quantize (None for peer files).
    pub quantize_seconds: Option<f64>,
    /// Task accuracy and generation agreement with the source.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Per-tensor weight error of the quantized matrices.
    pub tensors: Vec<TensorError>,
}

/// The source model's own evaluation on the same tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceResult {
    /// The inputs (source and text hashes, ctx, chunks).
    pub key: String,
    /// Source file bytes.
    pub file_bytes: u64,
    /// Bits per weight over all tensor data.
    pub bpw: f64,
    /// Perplexity and its standard error.
    pub ppl: f64,
    /// Standard error of the perplexity.
    pub ppl_err: f64,
    /// Scored tokens.
    pub scored_tokens: usize,
    /// Evaluation throughput (tokens/s), for the record.
    pub tokens_per_second: f64,
    /// Its task answers and continuations, which settings are compared with.
    #[serde(default)]
    pub behaviour: SourceBehaviour,
}

/// Progress events, for a progress bar.
pub enum SweepEvent<'a> {
    /// Starting a step (its label, index, total steps).
    Step(&'a str, usize, usize),
    /// A step was found finished from an earlier run.
    Reused(&'a str),
    /// Units (`chunks`, `tasks`, `prompts`) done within the current step.
    Units(&'static str, usize, usize),
}

/// Inputs that identify the source evaluation.
fn source_key(source_sha: &str, text_sha: &str, eval: &EvalOptions, probe: &Probe) -> String {
    format!(
        "lowbit {} source {source_sha} text {text_sha} ctx {} chunks {:?} {}",
        env!("CARGO_PKG_VERSION"),
        eval.ctx,
        eval.max_chunks,
        probe.key()
    )
}

/// What `measure` found.
struct Measured {
    eval: EvalReport,
    tensors: Vec<TensorError>,
    file_bytes: u64,
    bpw: f64,
    bpw_linear: f64,
    behaviour: Behaviour,
}

/// Reads a JSON result if it exists and its key matches.
fn reuse<T: for<'de> Deserialize<'de>>(path: &Path, key: &str, key_of: impl Fn(&T) -> &str) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    let v: T = serde_json::from_slice(&bytes).ok()?;
    (key_of(&v) == key).then_some(v)
}

fn save_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(v).expect("results serialise");
    crate::atomic::write_atomic(path, &json)
}

/// Relative error of every quantizable matrix of `quantized` against `source`:
/// ‖W − Ŵ‖/‖W‖, or with per-column importances q (an importance matrix: mean squared
/// inputs) the output-error estimate √(Σⱼ qⱼ Σᵢ ΔWᵢⱼ² / Σⱼ qⱼ Σᵢ Wᵢⱼ²), which is
/// ‖(W − Ŵ)X‖/‖WX‖ when the input columns are uncorrelated.
pub fn tensor_errors(
    source: &GgufFile,
    quantized: &GgufFile,
    importance: Option<&HashMap<String, Vec<f32>>>,
) -> Result<Vec<TensorError>> {
    let mut out = Vec::new();
    for t in &quantized.tensors {
        if !allows_quantization(&t.name, &t.dims) || source.tensor_info(&t.name).is_none() {
            continue;
        }
        let (a, b) = (source.dequantize(&t.name)?, quantized.dequantize(&t.name)?);
        if a.len() != b.len() {
            return Err(Error::tensor(quantized.path(), &t.name, "shape differs from the source"));
        }
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let q = importance.and_then(|m| m.get(&t.name)).filter(|q| q.len() == cols);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let w = q.map_or(1.0, |q| q[i % cols] as f64);
            num += w * ((x - y) as f64).powi(2);
            den += w * (*x as f64).powi(2);
        }
        let relative_error = if den > 0.0 { (num / den).sqrt() } else { 0.0 };
        out.push(TensorError { name: t.name.clone(), ty: t.ty.to_string(), relative_error });
    }
    Ok(out)
}

/// Evaluates `model` against the saved reference and the source's answers, and measures
/// its tensors.
#[allow(clippy::too_many_arguments)]
fn measure(
    model: &Path,
    source: &GgufFile,
    logits: &Path,
    text: &str,
    eval: &EvalOptions,
    importance: Option<&HashMap<String, Vec<f32>>>,
    probe: (&Probe, &SourceBehaviour),
    progress: &mut dyn FnMut(SweepEvent),
) -> Result<Measured> {
    let lm = load_gguf_lm(model, LoadOptions::default())?;
    let mut reader = LogitsReader::open(logits)?;
    let r = evaluate(&lm, Some(Reference::Saved(&mut reader)), None, text, eval, &mut |d, t, _| {
        progress(SweepEvent::Units("chunks", d, t))
    })?;
    let behaviour = probe.0.compare(&lm, probe.1, &mut |u, d, t| progress(SweepEvent::Units(u, d, t)))?;
    drop(lm);
    let q = GgufFile::open(model)?;
    let errors = tensor_errors(source, &q, importance)?;
    let (bytes, params) =
        q.tensors.iter().fold((0u64, 0u64), |(b, n), t| (b + t.n_bytes.unwrap_or(0), n + t.n_elements));
    let (lb, ln) = q
        .tensors
        .iter()
        .filter(|t| allows_quantization(&t.name, &t.dims))
        .fold((0u64, 0u64), |(b, n), t| (b + t.n_bytes.unwrap_or(0), n + t.n_elements));
    let bpw = 8.0 * bytes as f64 / params.max(1) as f64;
    let bpw_linear = 8.0 * lb as f64 / ln.max(1) as f64;
    Ok(Measured { eval: r, tensors: errors, file_bytes: q.file_size(), bpw, bpw_linear, behaviour })
}

fn result_of(name: String, kind: &str, key: String, m: Measured, secs: Option<f64>) -> SettingResult {
    let Measured { eval: r, tensors, file_bytes, bpw, bpw_linear, behaviour } = m;
    let k = r.kld.expect("evaluated against a reference");
    SettingResult {
        name,
        kind: kind.into(),
        key,
        file_bytes,
        bpw,
        bpw_linear,
        ppl: r.ppl,
        ppl_err: r.ppl_err,
        kld_mean: k.mean,
        kld_err: k.mean_err,
        kld_p99: k.percentiles.p99,
        top1: k.top1_agreement,
        quantize_seconds: secs,
        behaviour,
        tensors,
    }
}

/// Runs (or resumes) a sweep of `source` on `text_path` into `dir`, then writes the
/// report and plots there. Returns the report.
pub fn run_sweep(
    source_path: &Path,
    text_path: &Path,
    dir: &Path,
    opts: &SweepOptions,
    progress: &mut dyn FnMut(SweepEvent),
) -> Result<SweepReport> {
    if opts.settings.is_empty() && opts.compare.is_empty() {
        return Err(Error::Usage("nothing to sweep: give at least one setting or --compare file".into()));
    }
    // Every setting's job is checked before any work (e.g. IQ2_XXS without --calib).
    let jobs =
        opts.settings.iter().map(|s| s.sweep_job(dir, &opts.calib, opts.calib_chunks)).collect::<Result<Vec<_>>>()?;
    let mut names: Vec<String> = opts.settings.iter().map(Setting::name).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Usage(format!("setting '{}' is listed twice", w[0])));
    }
    crate::atomic::check_output_folder(dir)?;
    let text = std::fs::read_to_string(text_path).map_err(|e| Error::io(text_path, e))?;
    for sub in ["settings", "models"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
    }
    let source_sha = sha256_file(source_path)?;
    let text_sha = sha256_file(text_path)?;
    // Every input file and its sha256, for the report.
    let mut inputs = vec![
        InputFile { role: "source".into(), path: source_path.display().to_string(), sha256: source_sha.clone() },
        InputFile { role: "text".into(), path: text_path.display().to_string(), sha256: text_sha.clone() },
    ];
    let source = crate::hf::open_model(source_path)?;
    let total = 1 + opts.settings.len() + opts.compare.len();
    let probe = Probe::load(opts.tasks, opts.prompts, opts.gen_tokens)?;
    let key = source_key(&source_sha, &text_sha, &opts.eval, &probe);

    // 1. The source on the text, its distributions saved for every comparison.
    let logits = dir.join("reference.logits");
    let source_json = dir.join("settings").join("_source.json");
    let source_result = match reuse::<SourceResult>(&source_json, &key, |r| &r.key).filter(|_| logits.is_file()) {
        Some(r) => {
            progress(SweepEvent::Reused("source"));
            r
        }
        None => {
            progress(SweepEvent::Step("source", 0, total));
            let lm = load_gguf_lm(source_path, LoadOptions::default())?;
            let save = SaveLogits {
                path: &logits,
                model_name: source_path.display().to_string(),
                format: LogitsFormat::Lowbit,
            };
            let r = evaluate(&lm, None, Some(save), &text, &opts.eval, &mut |d, t, _| {
                progress(SweepEvent::Units("chunks", d, t))
            })?;
            let behaviour = probe.source(&lm, &mut |u, d, t| progress(SweepEvent::Units(u, d, t)))?;
            let (bytes, params) =
                source.tensors.iter().fold((0u64, 0u64), |(b, n), t| (b + t.n_bytes.unwrap_or(0), n + t.n_elements));
            let s = SourceResult {
                key: key.clone(),
                file_bytes: source.file_size(),
                bpw: 8.0 * bytes as f64 / params.max(1) as f64,
                ppl: r.ppl,
                ppl_err: r.ppl_err,
                scored_tokens: r.scored_tokens,
                tokens_per_second: r.tokens_per_second,
                behaviour,
            };
            save_json(&source_json, &s)?;
            s
        }
    };

    // 2. With calibration texts: the importance matrix, once.
    let (importance, key) = if opts.calib.is_empty() {
        (None, key)
    } else {
        let mut calib_text = String::new();
        let mut shas = Vec::new();
        for p in &opts.calib {
            calib_text.push_str(&std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?);
            let sha = sha256_file(p)?;
            inputs.push(InputFile { role: "calibration".into(), path: p.display().to_string(), sha256: sha.clone() });
            shas.push(sha);
        }
        // GPTQ settings need the input Hessians too: then the full statistics are saved
        // beside the importance matrix.
        let hessians = opts.settings.iter().any(|s| s.method == Method::Gptq);
        let mut ikey = format!("{key} calib {} chunks {}", shas.join(","), opts.calib_chunks);
        if hessians {
            ikey.push_str(" hessians");
        }
        let path = dir.join("imatrix.gguf");
        let stats_path = dir.join("stats.safetensors");
        let ijson = dir.join("settings").join("_imatrix.json");
        let cached = reuse::<serde_json::Value>(&ijson, &ikey, |v| v["key"].as_str().unwrap_or(""))
            .filter(|_| !hessians || stats_path.is_file())
            .and_then(|_| Imatrix::read(&path).ok());
        let m = match cached {
            Some(m) => {
                progress(SweepEvent::Reused("importance matrix"));
                m
            }
            None => {
                progress(SweepEvent::Step("importance matrix", 0, total));
                let mut lm = load_gguf_lm(source_path, LoadOptions::default())?;
                let names: Vec<String> = opts.calib.iter().map(|p| p.display().to_string()).collect();
                let copts = EvalOptions { ctx: 512, max_chunks: Some(opts.calib_chunks), ..Default::default() };
                let stats: CalibrationStats =
                    compute_stats(&mut lm, &calib_text, &names.join("+"), &copts, hessians, &mut |d, t| {
                        progress(SweepEvent::Units("chunks", d, t))
                    })?;
                stats.imatrix.write_gguf(&path)?;
                if hessians {
                    stats.write(&stats_path)?;
                }
                save_json(&ijson, &serde_json::json!({ "key": ikey }))?;
                stats.imatrix
            }
        };
        (Some(m.importance()), ikey)
    };
    // 3. Every setting: quantize, evaluate, measure, record.
    let mut results = Vec::new();
    for (i, (setting, job)) in opts.settings.iter().zip(&jobs).enumerate() {
        crate::interrupt::check()?;
        let name = setting.name();
        let json = dir.join("settings").join(format!("{name}.json"));
        let skey = format!("{key} setting {name}");
        if let Some(r) = reuse::<SettingResult>(&json, &skey, |r| &r.key) {
            progress(SweepEvent::Reused(&name));
            results.push(r);
            continue;
        }
        progress(SweepEvent::Step(&name, i + 1, total));
        let model = dir.join("models").join(format!("{name}.gguf"));
        let t0 = Instant::now();
        crate::quantize::run(source_path, &model, job, &mut |_, _, _| {})?;
        let secs = t0.elapsed().as_secs_f64();
        let against = (&probe, &source_result.behaviour);
        let m = measure(&model, &source, &logits, &text, &opts.eval, importance.as_ref(), against, progress);
        if !opts.keep {
            let _ = std::fs::remove_file(&model);
        }
        let r = result_of(name, "lowbit", skey, m?, Some(secs));
        save_json(&json, &r)?;
        results.push(r);
    }

    // 4. Peer files, evaluated by the same code.
    for (i, peer) in opts.compare.iter().enumerate() {
        crate::interrupt::check()?;
        let stem = peer.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| format!("peer{i}"));
        let peer_sha = sha256_file(peer)?;
        inputs.push(InputFile { role: "compare".into(), path: peer.display().to_string(), sha256: peer_sha.clone() });
        let pkey = format!("{key} compare {peer_sha}");
        let json = dir.join("settings").join(format!("compare-{stem}.json"));
        if let Some(r) = reuse::<SettingResult>(&json, &pkey, |r| &r.key) {
            progress(SweepEvent::Reused(&stem));
            results.push(r);
            continue;
        }
        progress(SweepEvent::Step(&stem, 1 + opts.settings.len() + i, total));
        let against = (&probe, &source_result.behaviour);
        let m = measure(peer, &source, &logits, &text, &opts.eval, importance.as_ref(), against, progress)?;
        let r = result_of(stem, "compare", pkey, m, None);
        save_json(&json, &r)?;
        results.push(r);
    }

    let report = SweepReport {
        lowbit_version: env!("CARGO_PKG_VERSION").into(),
        inputs,
        source: source_path.display().to_string(),
        source_sha256: source_sha,
        text: text_path.display().to_string(),
        text_sha256: text_sha,
        ctx: opts.eval.ctx,
        chunks: opts.eval.max_chunks,
        calib: opts.calib.iter().map(|p| p.display().to_string()).collect(),
        calib_chunks: opts.calib_chunks,
        gen_tokens: opts.gen_tokens,
        source_result,
        results,
    };
    plot_pareto(&report, &dir.join("pareto.svg"), &dir.join("pareto.png"))?;
    plot_layers(&report, &dir.join("layers.svg"), &dir.join("layers.png"))?;
    if report.source_result.behaviour.hellaswag_acc_norm.is_some() {
        plot_tasks(&report, &dir.join("tasks.svg"), &dir.join("tasks.png"))?;
    }
    // Last: report.html embeds the plots.
    write_report(&report, dir)?;
    if !opts.keep {
        let _ = std::fs::remove_dir(dir.join("models"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_settings_parse_and_need_calibration() {
        let s = Setting::parse("size:90MB:gptq").unwrap();
        assert_eq!(s.target, Some(crate::allocate::SizeTarget::Bytes(90_000_000)));
        assert_eq!((s.method, s.name().as_str()), (Method::Gptq, "size-90MB-gptq"));
        let b = Setting::parse("bpw:3.4").unwrap();
        assert_eq!((b.target, b.name().as_str()), (Some(crate::allocate::SizeTarget::Bpw(3.4)), "bpw-3.4"));
        assert!(Setting::parse("size:lots").is_err() && Setting::parse("bpw:0").is_err());
        let dir = std::path::Path::new("unused");
        assert!(s.sweep_job(dir, &[], 64).unwrap_err().to_string().contains("--calib"));
        let job = b.sweep_job(dir, &[PathBuf::from("austen.txt")], 8).unwrap();
        assert!(matches!(job.calibration, CalibrationInput::Texts { .. }) && job.target.is_some());
    }

    #[test]
    fn settings_parse_types_and_methods() {
        let s = Setting::parse("Q4_K_M:rtn").unwrap();
        assert_eq!((s.ty.as_str(), s.method, s.name().as_str()), ("Q4_K_M", Method::Rtn, "Q4_K_M-rtn"));
        assert_eq!(Setting::parse("int4_g64").unwrap().name(), "int4_g64");
        assert!(Setting::parse("int4_g64").unwrap().job().unwrap().overrides.len() == 1);
        for bad in ["Q9_K", "Q4_K_M:gptq9", "int4"] {
            assert!(Setting::parse(bad).is_err(), "{bad}");
        }
    }
}
