//! `lowbit calibrate`: the importance matrix of a model on a calibration text, and with
//! it (for GPTQ) the Hessian of every linear layer's input.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::calibrate::{calibrate_files, CalibrationStats};
use lowbit::eval::EvalOptions;

/// Arguments of `lowbit calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    /// The model (GGUF path, Hugging Face folder or zoo name).
    #[arg(long)]
    model: String,
    /// Calibration text files, concatenated in the order given (BENCHMARKS.md: emma.txt,
    /// persuasion.txt, sense-and-sensibility.txt); bundled names (`austen`), or
    /// `self[:TOKENS]` for text sampled from the model itself.
    #[arg(long, num_args = 1.., required = true)]
    text: Vec<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Chunks to run, from the start (0 = all).
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Output file: an importance matrix (llama.cpp's GGUF format, or legacy `.dat`), or
    /// with a `.safetensors` name (or --format stats) the full statistics including every
    /// layer input's Hessian, for `lowbit quantize --stats`.
    #[arg(short, long)]
    output: PathBuf,
    /// `gguf`, `dat` (llama.cpp's legacy format) or `stats` (importance and Hessians);
    /// by default from the output's extension (.dat, .safetensors, else gguf).
    #[arg(long)]
    format: Option<String>,
    /// With the statistics format: memory to stay within (8GB, 6GiB, …); the calibration
    /// hidden states go to a file beside the output when they would not fit beside the
    /// model and one block's statistics.
    #[arg(long)]
    max_memory: Option<String>,
}

/// A progress bar (and log lines off a terminal) over `unit` (chunks or blocks), with
/// calibration tokens through the model per second: `update(done, total, tokens per
/// unit)` (a chunk's tokens; a block's share of all tokens).
fn progress(unit: &'static str) -> (ProgressBar, impl FnMut(usize, usize, f64)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "calibrate [{{bar:30}}] {{pos}}/{{len}} {unit}{{msg}}, {{elapsed}} elapsed, ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    let mut log = crate::LogProgress::new("calibrate");
    let start = std::time::Instant::now();
    let shown = bar.clone();
    let update = move |d: usize, n: usize, tokens: f64| {
        let secs = start.elapsed().as_secs_f64();
        let rate =
            if d > 0 && secs > 0.0 { format!(", {:.0} tokens/s", d as f64 * tokens / secs) } else { String::new() };
        log.update(d as u64, n as u64, &format!("{unit}{rate}"));
        shown.set_message(rate);
        shown.set_length(n as u64);
        shown.set_position(d as u64);
    };
    (bar, update)
}

/// Runs the calibration texts through the model at `path` for an importance matrix, with
/// a progress bar over the chunks.
fn calibrate(path: &Path, texts: &[PathBuf], opts: &EvalOptions) -> Result<CalibrationStats> {
    let (bar, mut update) = progress("chunks");
    let stats = calibrate_files(path, texts, opts, false, &mut |d, t| update(d, t, opts.ctx as f64));
    bar.finish_and_clear();
    Ok(stats?)
}

/// The statistics file with Hessians, written block by block
/// ([`lowbit::calibrate::write_stats_blockwise`]: one block's Hessians in memory, within
/// `memory`), with a progress bar over the blocks.
fn calibrate_blockwise(
    path: &Path,
    texts: &[PathBuf],
    opts: &EvalOptions,
    output: &Path,
    memory: lowbit::calibrate::budget::MemoryLimit,
) -> Result<lowbit::calibrate::BlockwiseSummary> {
    let t = lowbit::calibrate::read_texts(texts)?;
    let g = lowbit::hf::open_model(path)?;
    let mut lm = lowbit::model::load_lm_from(&g, lowbit::model::LoadOptions::default())?;
    let (bar, mut update) = progress("blocks");
    let mut shown = false;
    let s = lowbit::calibrate::write_stats_blockwise(
        &mut lm,
        Some(&g),
        &t,
        opts,
        output,
        memory,
        &mut |d, n, tokens, plan| {
            if !std::mem::replace(&mut shown, true) {
                bar.suspend(|| eprintln!("lowbit: memory: {}", plan.describe()));
            }
            update(d, n, tokens as f64 / n.max(1) as f64)
        },
    );
    bar.finish_and_clear();
    Ok(s?)
}

/// Runs `lowbit calibrate`.
pub fn run(mut args: CalibrateArgs) -> Result<()> {
    let ext = args.output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let format = args.format.clone().unwrap_or_else(|| match ext.as_str() {
        "dat" => "dat".into(),
        "safetensors" => "stats".into(),
        _ => "gguf".into(),
    });
    anyhow::ensure!(
        matches!(format.as_str(), "gguf" | "dat" | "stats"),
        "unknown --format '{format}' (gguf, dat, stats)"
    );
    lowbit::atomic::check_output(&args.output)?;
    args.text = crate::calib_texts(&args.text, &args.model, args.ctx)?;
    let path = crate::resolve_model(&args.model)?;
    let mut inputs = vec![("--model", path.as_path())];
    inputs.extend(args.text.iter().map(|t| ("--text", t.as_path())));
    lowbit::atomic::refuse_overwriting_inputs(&args.output, &inputs)?;
    let opts =
        EvalOptions { ctx: args.ctx, max_chunks: (args.chunks > 0).then_some(args.chunks), ..Default::default() };
    let memory = crate::memory_limit(args.max_memory.as_deref())?;
    anyhow::ensure!(
        args.max_memory.is_none() || format == "stats",
        "--max-memory applies to the statistics file (a .safetensors output); an importance matrix is small"
    );
    if format == "stats" {
        let s = calibrate_blockwise(&path, &args.text, &opts, &args.output, memory)?;
        println!(
            "{}: importance and {} input Hessians of {} linear layers over {} chunks of {} tokens",
            args.output.display(),
            s.hessians,
            s.layers,
            s.chunks,
            s.ctx
        );
        crate::print_memory(Some(&s.memory), memory.bytes());
        return Ok(());
    }
    let stats = calibrate(&path, &args.text, &opts)?;
    let m = &stats.imatrix;
    match format.as_str() {
        "dat" => m.write_legacy(&args.output)?,
        _ => m.write_gguf(&args.output)?,
    }
    println!(
        "{}: importance matrix of {} linear layers over {} chunks of {} tokens",
        args.output.display(),
        m.entries.len(),
        m.chunk_count,
        m.chunk_size
    );
    Ok(())
}
