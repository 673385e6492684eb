//! `lowbit eval`: perplexity (and KL divergence against a reference) with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::eval::{evaluate, file_identity, EvalOptions, Reference, Resume, SaveLogits};
use lowbit::model::{load_lm, LoadOptions};
use lowbit::saved_logits::{LogitsFormat, LogitsReader};

/// Arguments of `lowbit eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The model to evaluate (GGUF path or zoo name).
    #[arg(long)]
    pub model: String,
    /// The reference for KL divergence: a model (e.g. the source before quantization), a
    /// file written by an earlier `--save-logits` run of it (same text, ctx, chunks), or
    /// a `llama-perplexity --kl-divergence-base` file (its ctx, chunks and tokens are
    /// used; `--text` is then optional).
    #[arg(long)]
    pub reference: Option<String>,
    /// Save this model's output distributions (16-bit log-probabilities, about
    /// 2 bytes × vocabulary per scored token) to FILE for reuse as `--reference FILE`.
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// Layout of `--save-logits`: lowbit's own, or llama.cpp's, which
    /// `llama-perplexity --kl-divergence --kl-divergence-base FILE` reads.
    #[arg(long, value_enum, default_value_t = SaveFormat::Lowbit)]
    pub logits_format: SaveFormat,
    /// The text to evaluate on: a file or a bundled text's name (`lowbit data`).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens per chunk [default: 512, or a saved reference's].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Evaluate at most this many chunks, 0 = all [default: 40, or a saved reference's].
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Quantize activations before each linear layer as llama.cpp's CPU backend does, so
    /// numbers match `llama-perplexity` on the same file (default: exact f32 forward).
    #[arg(long)]
    pub llama_cpp_numerics: bool,
    /// How the model's KV cache stores keys and values: f32 (exact), a llama.cpp cache
    /// type (f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, iq4_nl: llama.cpp's `-ctk/-ctv`), or
    /// KVQuant-style kvq4/kvq3/kvq2 (keys per channel before RoPE, values per position;
    /// `…o`: each row's largest 1/128 kept apart). The reference always keeps f32.
    #[arg(long, default_value = "f32")]
    pub kv_type: lowbit::model::kv::KvType,
    /// Discard the finished chunks an interrupted run of this same evaluation kept, and
    /// start over (by default the run continues from them).
    #[arg(long)]
    pub fresh: bool,
    /// Measure task accuracy instead of perplexity: `hellaswag` scores the bundled
    /// HellaSwag validation tasks (or `--text FILE` in llama.cpp's 6-line format) as
    /// `llama-perplexity --hellaswag` does; with `--reference`, also how often the two
    /// models choose the same ending.
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    /// With `--task`: score this many tasks, drawn as llama.cpp draws them (0 = all).
    #[arg(long, default_value_t = 400)]
    pub tasks: usize,
    /// Compare greedy continuations of these prompts (one per line; a file or a bundled
    /// name, e.g. `prompts`) with `--reference`'s: exact match, first divergence,
    /// ROUGE-L and MiniLM semantic similarity.
    #[arg(long, value_name = "PROMPTS")]
    pub generate: Option<PathBuf>,
    /// With `--generate`: tokens to generate per prompt.
    #[arg(short = 'n', long = "tokens", default_value_t = 64)]
    pub n: usize,
    /// With `--generate`: use only the first this many prompts (0 = all).
    #[arg(long, default_value_t = 0)]
    pub prompts: usize,
}

/// `--task` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TaskKind {
    /// HellaSwag (10,042 validation tasks bundled; MIT).
    Hellaswag,
}

/// `--logits-format` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SaveFormat {
    /// lowbit's saved-logits file.
    Lowbit,
    /// llama.cpp's `--kl-divergence-base` file.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

/// Reads a text file as UTF-8, naming it in errors.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read the text", path.display()))?;
    String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text ({e}); convert it first, e.g. `iconv -f latin1 -t utf-8`", path.display())
    })
}

/// Whether `r` names a saved-logits file (lowbit's or llama.cpp's) rather than a model.
pub(crate) fn is_saved_reference(r: &str) -> bool {
    let p = std::path::Path::new(r);
    p.is_file() && LogitsReader::is_logits_file(p)
}

impl EvalArgs {
    /// How to load the evaluated model and how to load its reference model (the same
    /// numerics; the reference's KV cache always f32).
    pub(crate) fn load_options(&self) -> (LoadOptions, LoadOptions) {
        let model = LoadOptions { llama_cpp_numerics: self.llama_cpp_numerics, kv_type: self.kv_type };
        (model, LoadOptions { kv_type: Default::default(), ..model })
    }
}

/// The journal identity of an evaluation of `model_path` (with `args`' reference and
/// numerics); `prefix` names the mode so different modes never share a journal.
pub(crate) fn resume_for(args: &EvalArgs, model_path: &std::path::Path, prefix: &str) -> Resume {
    let identity = format!(
        "{prefix}model {} | reference {} | llama.cpp numerics {}{}",
        file_identity(model_path),
        args.reference
            .as_deref()
            .map_or("none".into(), |r| file_identity(&crate::resolve_model(r).unwrap_or(r.into()))),
        args.llama_cpp_numerics,
        // Older journals (f32 cache) keep their identity.
        if args.kv_type == lowbit::model::kv::KvType::F32 { String::new() } else { format!(" | kv {}", args.kv_type) }
    );
    Resume { root: lowbit::zoo::home().join("resume"), identity, fresh: args.fresh }
}

/// What a resumable evaluation has finished: says once when it continues an interrupted
/// run, and turns an interruption into the "they are kept" message.
pub(crate) struct Kept {
    unit: &'static str,
    announced: bool,
    finished: (usize, usize),
}

impl Kept {
    /// Tracks units named `unit` (`chunks`, `tasks`).
    pub(crate) fn new(unit: &'static str) -> Kept {
        Kept { unit, announced: false, finished: (0, 0) }
    }

    /// Records progress; the first report with finished units announces a resumed run.
    pub(crate) fn update(&mut self, bar: &ProgressBar, done: usize, total: usize) {
        if !self.announced && done > 0 {
            let unit = self.unit;
            bar.suspend(|| eprintln!("lowbit: resuming: {done} of {total} {unit} were finished by an interrupted run"));
        }
        self.announced = true;
        self.finished = (done, total);
    }

    /// The run's result, an interruption explained.
    pub(crate) fn result<T>(&self, r: lowbit::Result<T>) -> Result<T> {
        match r {
            Err(lowbit::Error::Interrupted) => anyhow::bail!(
                "interrupted after {} of {} {}; they are kept: run the same command again to continue (--fresh starts over)",
                self.finished.0,
                self.finished.1,
                self.unit
            ),
            r => Ok(r?),
        }
    }
}

/// Runs `lowbit eval`.
pub fn run(mut args: EvalArgs) -> Result<()> {
    if let Some(out) = &args.save_logits {
        lowbit::atomic::check_output(out)?;
    }
    // Outputs are checked first, then inputs.
    if let Some(TaskKind::Hellaswag) = args.task {
        return crate::eval_tasks_cmd::run_hellaswag(&args);
    }
    if args.generate.is_some() {
        return crate::eval_tasks_cmd::run_generate(&args);
    }
    let saved_reference = args.reference.as_deref().filter(|r| is_saved_reference(r)).map(PathBuf::from);
    let llama_reference = match &saved_reference {
        Some(p) => LogitsReader::open(p)?.tokens.is_some(),
        None => false,
    };
    let text = match &args.text {
        Some(t) => {
            let path = lowbit::data::resolve_one(t)?;
            let text = read_text(&path)?;
            args.text = Some(path);
            text
        }
        // A llama.cpp base file carries its tokens.
        None if llama_reference => String::new(),
        None => anyhow::bail!("--text is required (a file, or a bundled text's name: see `lowbit data`)"),
    };
    let model_path = crate::resolve_model(&args.model)?;
    if let Some(out) = &args.save_logits {
        let reference = args.reference.as_deref().map(std::path::Path::new);
        let mut inputs = vec![("--model", model_path.as_path())];
        inputs.extend(args.text.as_deref().map(|t| ("--text", t)));
        inputs.extend(reference.map(|r| ("--reference", r)));
        lowbit::atomic::refuse_overwriting_inputs(out, &inputs)?;
    }
    if model_path.is_dir() && !lowbit::hf::is_causal_lm_folder(&model_path) {
        return run_encoder(&args, &model_path, &text);
    }
    let (load, load_ref) = args.load_options();
    // A saved reference is checked before any model is loaded (cheap errors first).
    enum RefSource {
        Model(Box<lowbit::model::LoadedLm>),
        Saved(Box<LogitsReader>),
    }
    let mut ref_source = match &args.reference {
        Some(r) if saved_reference.is_some() => {
            eprintln!("lowbit: reference logits from {r}");
            Some(RefSource::Saved(Box::new(LogitsReader::open(std::path::Path::new(r))?)))
        }
        Some(r) => {
            let p = crate::resolve_model(r)?;
            eprintln!("lowbit: loading reference {}", p.display());
            Some(RefSource::Model(Box::new(load_lm(&p, load_ref)?)))
        }
        None => None,
    };
    eprintln!("lowbit: loading {}", model_path.display());
    let lm = load_lm(&model_path, load)?;
    let reference = match &mut ref_source {
        Some(RefSource::Model(m)) => Some(Reference::Model(m)),
        Some(RefSource::Saved(r)) => Some(Reference::Saved(r)),
        None => None,
    };
    let format = match args.logits_format {
        SaveFormat::Lowbit => LogitsFormat::Lowbit,
        SaveFormat::LlamaCpp => LogitsFormat::LlamaCpp,
    };
    let save = args.save_logits.as_deref().map(|path| SaveLogits { path, model_name: args.model.clone(), format });
    // A saved reference decides ctx and chunks unless they are given.
    let (saved_ctx, saved_chunks) = match &reference {
        Some(Reference::Saved(r)) => (Some(r.header.ctx), Some(r.header.chunks)),
        _ => (None, None),
    };
    // Finished chunks are journaled, so an interrupted run continues where it stopped.
    let resume = resume_for(&args, &model_path, "");
    let chunks = args.chunks.or(saved_chunks).unwrap_or(40);
    let opts = EvalOptions {
        ctx: args.ctx.or(saved_ctx).unwrap_or(512),
        max_chunks: (chunks > 0).then_some(chunks),
        resume: Some(resume),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chunks, {per_sec}, ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("eval");
    let start = std::time::Instant::now();
    let mut log = crate::LogProgress::new("eval");
    let mut kept = Kept::new("chunks");
    let report = evaluate(&lm, reference, save, &text, &opts, &mut |done, total, tokens| {
        kept.update(&bar, done, total);
        log.update(done as u64, total as u64, "chunks");
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        let secs = start.elapsed().as_secs_f64();
        if secs > 0.0 && tokens > 0 {
            bar.set_message(format!("eval {:.0} tok/s", tokens as f64 / secs));
        }
    });
    bar.finish_and_clear();
    let report = kept.result(report)?;
    // What the cache costs per position at this context, measured on its storage.
    let cache = lm.model.new_cache(0);
    let kv_bytes = cache.bytes_at(report.ctx) as f64 / report.ctx.max(1) as f64;
    if args.json {
        let mut j = serde_json::to_value(&report)?;
        j["kv_cache"] = serde_json::json!({ "type": cache.kind().name(), "bytes_per_position": kv_bytes });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("model:      {}", model_path.display());
    println!(
        "text:       {} ({} chunks of {} tokens, {} scored)",
        args.text.as_deref().map_or("tokens of the reference file".into(), |t| t.display().to_string()),
        report.chunks,
        report.ctx,
        report.scored_tokens
    );
    let running: Vec<String> =
        report.running_ppl.iter().enumerate().map(|(i, p)| format!("[{}]{p:.4}", i + 1)).collect();
    println!("running:    {}", running.join(","));
    println!("PPL:        {:.4} ± {:.5}", report.ppl, report.ppl_err);
    if let Some(k) = &report.kld {
        println!("reference PPL: {:.4}", k.reference_ppl);
        println!(
            "KLD:        mean {:.6} ± {:.6}, p99 {:.6}, max {:.6}",
            k.mean, k.mean_err, k.percentiles.p99, k.percentiles.max
        );
        println!("top-1 agreement: {:.3} %", 100.0 * k.top1_agreement);
        println!("\n{}", k.llama_cpp_text(report.ppl, report.ppl_err));
    }
    println!("KV cache:   {}, {:.0} bytes per position at ctx {}", cache.kind(), kv_bytes, report.ctx);
    println!("speed:      {:.1} tokens/s (prompt processing)", report.tokens_per_second);
    Ok(())
}

/// Encoder evaluation: embedding similarity to the reference over the text's lines.
fn run_encoder(args: &EvalArgs, model_path: &std::path::Path, text: &str) -> Result<()> {
    use lowbit::model::bert::Bert;
    let model = Bert::open(model_path)?;
    let ref_path = match &args.reference {
        Some(r) => crate::resolve_model(r)?,
        None => {
            anyhow::bail!("encoders are evaluated against a reference: pass --reference (e.g. the unquantized model)")
        }
    };
    let reference = Bert::open(&ref_path)?;
    let chunks = args.chunks.unwrap_or(40);
    let limit = if chunks > 0 { chunks * 25 } else { usize::MAX };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(limit).collect();
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("embed [{bar:30}] {pos}/{len} lines, ETA {eta}").expect("valid template"),
    );
    let r = lowbit::eval::compare_embeddings(&model, &reference, &lines, &mut |d, _| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("sentences:         {}", r.sentences);
        println!("cosine:            mean {:.6}, min {:.6}", r.mean_cosine, r.min_cosine);
        println!("top-10 agreement:  {:.2} %", 100.0 * r.top10_agreement);
    }
    Ok(())
}
