//! `lowbit sweep`: arguments, progress display and the closing table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lowbit::eval::EvalOptions;
use lowbit::sweep::{run_sweep, Setting, SweepEvent, SweepOptions};

/// Arguments of `lowbit sweep`.
#[derive(Args)]
pub struct SweepArgs {
    /// Source model: a GGUF file or a zoo name.
    #[arg(long)]
    model: String,
    /// Settings, comma-separated: anything `lowbit quantize --type` takes (llama-quantize
    /// mixes, native formats, VQ formats), each optionally `:rtn`, `:search` (default) or
    /// `:gptq` (needs --calib), e.g. `Q4_K_M,Q4_K_M:rtn,Q4_K_M:gptq,int4_g64,vq4x256+128`;
    /// or a size target allocated by measured sensitivity (needs --calib), `size:90MB`,
    /// `bpw:3.4`, optionally with `:gptq`.
    #[arg(long, value_delimiter = ',', default_value = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K")]
    types: Vec<String>,
    /// Evaluation text: a path, or a bundled text by name (wikitext-2-valid; see `lowbit data`).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Chunks to evaluate (0 = all).
    #[arg(long, default_value_t = 40)]
    chunks: usize,
    /// Other quantized files of the same model (e.g. llama.cpp's) to evaluate and draw.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// Keep the quantized files in DIR/models.
    #[arg(long)]
    keep: bool,
    /// Calibration texts (e.g. the Austen novels of BENCHMARKS.md, or `self[:TOKENS]` as for
    /// `quantize --calib`): quantize every setting
    /// with their importance matrix (and `:gptq` settings with their Hessians) and weight
    /// per-tensor errors by it.
    #[arg(long, num_args = 1..)]
    calib: Vec<PathBuf>,
    /// Calibration chunks of 512 tokens.
    #[arg(long, default_value_t = 64)]
    calib_chunks: usize,
    /// HellaSwag tasks every file is scored on (llama.cpp's draw of the bundled set, so
    /// `llama-perplexity --hellaswag-tasks N` scores the same ones; 0 = none).
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Bundled prompts every file continues greedily, compared with the source's
    /// continuations (exact match, first divergence, ROUGE-L; 0 = none).
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// Tokens per continuation.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Output folder for report.md, report.html, report.json, pareto.{svg,png},
    /// layers.{svg,png}, tasks.{svg,png}.
    #[arg(short, long)]
    output: PathBuf,
}

/// Runs `lowbit sweep`.
pub fn run(mut args: SweepArgs) -> Result<()> {
    // The output folder first, then the inputs.
    lowbit::atomic::check_output_folder(&args.output)?;
    args.text = lowbit::data::resolve_one(&args.text)?;
    args.calib = crate::calib_texts(&args.calib, &args.model, 512)?;
    let settings = args
        .types
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Setting::parse(t.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &args.compare {
        anyhow::ensure!(c.is_file(), "{}: --compare file not found", c.display());
    }
    let source = crate::resolve_model(&args.model)?;
    let opts = SweepOptions {
        settings,
        compare: args.compare.clone(),
        eval: EvalOptions { ctx: args.ctx, max_chunks: (args.chunks > 0).then_some(args.chunks), ..Default::default() },
        keep: args.keep,
        calib: args.calib.clone(),
        calib_chunks: args.calib_chunks,
        tasks: args.tasks,
        prompts: args.prompts,
        gen_tokens: args.gen_tokens,
    };
    let bars = MultiProgress::new();
    let steps = bars.add(ProgressBar::new((1 + opts.settings.len() + opts.compare.len()) as u64));
    steps.set_style(
        ProgressStyle::with_template("sweep [{bar:25}] {pos}/{len} settings, {elapsed} elapsed  {msg}")
            .expect("valid template"),
    );
    let chunks = bars.add(ProgressBar::new(0));
    chunks.set_style(
        ProgressStyle::with_template("  eval [{bar:25}] {pos}/{len} {msg}, ETA {eta}").expect("valid template"),
    );
    // Plain lines when stderr is not a terminal (logs), as the bars say on one.
    let mut log = crate::LogProgress::new("sweep eval");
    let total_steps = 1 + opts.settings.len() + opts.compare.len();
    let report = run_sweep(&source, &args.text, &args.output, &opts, &mut |ev| match ev {
        SweepEvent::Step(name, i, _) => {
            if log.is_on() {
                eprintln!("sweep: step {}/{total_steps}: {name}: quantize + eval", i + 1);
            }
            log = crate::LogProgress::new(&format!("sweep {name} eval"));
            steps.set_position(i as u64);
            steps.set_message(format!("{name}: quantize + eval"));
            chunks.set_position(0);
        }
        SweepEvent::Reused(name) => {
            steps.inc(1);
            bars.suspend(|| eprintln!("lowbit: {name}: done in an earlier run, reused"));
        }
        SweepEvent::Units(unit, d, t) => {
            log.update(d as u64, t as u64, unit);
            chunks.set_message(unit);
            chunks.set_length(t as u64);
            chunks.set_position(d as u64);
        }
    });
    chunks.finish_and_clear();
    steps.finish_and_clear();
    let report = report?;
    let md = lowbit::sweep::report_markdown(&report);
    println!("{md}");
    println!(
        "written: {}/{{report.md, report.html, report.json, pareto.{{svg,png}}, layers.{{svg,png}}, tasks.{{svg,png}}}}",
        args.output.display()
    );
    Ok(())
}
