//! `lowbit bench`: prompt-processing and generation speed, reported as llama-bench does.

use anyhow::Result;
use lowbit::bench::{bench, BenchOptions};
use lowbit::model::{load_lm, LoadOptions};

/// Arguments of `lowbit bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model (GGUF path or zoo name).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Prompt tokens processed in one batch (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub prompt: usize,
    /// Tokens generated one at a time (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub generate: usize,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Timed repetitions of each test (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
    /// Exact f32 activations instead of llama.cpp's quantized ones (the numerics
    /// llama-bench's figures come from).
    #[arg(long)]
    pub exact: bool,
    /// How the KV cache stores keys and values (f32; llama.cpp's f16, q8_0, q4_0, …;
    /// KVQuant-style kvq4, kvq3, kvq2, kvq4o, …; see `lowbit eval --help`).
    #[arg(long, default_value = "f32")]
    pub kv_type: lowbit::model::kv::KvType,
    /// Print JSON (`pp` and `tg` in tokens/s, and the details).
    #[arg(long)]
    pub json: bool,
}

/// Runs `lowbit bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    if a.threads == Some(0) || a.repetitions == 0 {
        anyhow::bail!("-t and -r must be at least 1");
    }
    let path = crate::resolve_model(&a.model)?;
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let lm = load_lm(&path, LoadOptions { llama_cpp_numerics: !a.exact, kv_type: a.kv_type })?;
    if let Some(ctx) = lm.context_length {
        if a.prompt > ctx || a.generate > ctx {
            anyhow::bail!("-p {} / -n {} exceed the model's trained context of {ctx} tokens", a.prompt, a.generate);
        }
    }
    let o = BenchOptions { prompt: a.prompt, generate: a.generate, repetitions: a.repetitions };
    let r = pool.install(|| bench(&lm, &o))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if a.json {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "size_bytes": size,
            "numerics": if a.exact { "exact" } else { "llama.cpp" },
            "threads": r.threads,
            "isa": format!("{:?}", lowbit::kernels::isa::Level::detected()),
            "pp": r.pp.as_ref().map(|s| s.mean),
            "tg": r.tg.as_ref().map(|s| s.mean),
            "pp_samples": r.pp.as_ref().map(|s| &s.samples),
            "tg_samples": r.tg.as_ref().map(|s| &s.samples),
            "weight_bytes_per_token": r.weight_bytes_per_token,
            "read_bandwidth_bytes_per_s": r.read_bandwidth,
            "tg_bandwidth_fraction": r.tg_bandwidth_fraction,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let name = path.file_name().map_or_else(|| a.model.clone(), |n| n.to_string_lossy().to_string());
    let numerics = if a.exact { "exact" } else { "llama.cpp" };
    let numerics = format!("{numerics}, {:?}", lowbit::kernels::isa::Level::detected());
    println!("| model | size | numerics | threads | test | t/s |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    let mib = size as f64 / (1 << 20) as f64;
    if let Some(s) = &r.pp {
        println!(
            "| {name} | {mib:.2} MiB | {numerics} | {} | pp{} | {:.2} ± {:.2} |",
            r.threads, a.prompt, s.mean, s.std
        );
    }
    if let Some(s) = &r.tg {
        println!(
            "| {name} | {mib:.2} MiB | {numerics} | {} | tg{} | {:.2} ± {:.2} |",
            r.threads, a.generate, s.mean, s.std
        );
    }
    if let Some(f) = r.tg_bandwidth_fraction {
        println!(
            "\ntg reads {:.1} MB of weights per token; measured read bandwidth {:.1} GB/s bounds it at {:.1} t/s: {:.0}% of the bound",
            r.weight_bytes_per_token as f64 / 1e6,
            r.read_bandwidth / 1e9,
            r.read_bandwidth / r.weight_bytes_per_token as f64,
            100.0 * f
        );
    }
    Ok(())
}
