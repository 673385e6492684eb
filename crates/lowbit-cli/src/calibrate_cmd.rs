//! `lowbit calibrate`: the importance matrix of a model on a calibration text.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::calibrate::compute_imatrix;
use lowbit::eval::EvalOptions;
use lowbit::model::{load_lm, LoadOptions};

/// Arguments of `lowbit calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    /// The model (GGUF path, Hugging Face folder or zoo name).
    #[arg(long)]
    model: String,
    /// Calibration text files, concatenated in the order given (BENCHMARKS.md: emma.txt,
    /// persuasion.txt, sense-and-sensibility.txt).
    #[arg(long, num_args = 1.., required = true)]
    text: Vec<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Chunks to run, from the start (0 = all).
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Output imatrix file (llama.cpp's GGUF format; legacy `.dat` with --format dat).
    #[arg(short, long)]
    output: PathBuf,
    /// `gguf` (default) or `dat` (llama.cpp's legacy format).
    #[arg(long, default_value = "gguf")]
    format: String,
}

/// Runs `lowbit calibrate`.
pub fn run(args: CalibrateArgs) -> Result<()> {
    anyhow::ensure!(matches!(args.format.as_str(), "gguf" | "dat"), "unknown --format '{}' (gguf, dat)", args.format);
    let mut text = String::new();
    for p in &args.text {
        let t = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read the text", p.display()))?;
        text.push_str(&t);
    }
    let path = crate::resolve_model(&args.model)?;
    let mut lm = load_lm(&path, LoadOptions::default())?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("calibrate [{bar:30}] {pos}/{len} chunks, {elapsed} elapsed, ETA {eta}")
            .expect("valid template"),
    );
    let names: Vec<String> = args
        .text
        .iter()
        .map(|p| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().to_string()))
        .collect();
    let opts = EvalOptions { ctx: args.ctx, max_chunks: (args.chunks > 0).then_some(args.chunks) };
    let m = compute_imatrix(&mut lm, &text, &names.join("+"), &opts, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64);
    });
    bar.finish_and_clear();
    let m = m?;
    if args.format == "dat" {
        m.write_legacy(&args.output)?;
    } else {
        m.write_gguf(&args.output)?;
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
