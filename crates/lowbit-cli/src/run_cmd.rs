//! `lowbit run`: streamed text generation.

use std::io::Write;

use anyhow::Result;
use lowbit::generate::{generate, Sampling};
use lowbit::model::{load_lm, LoadOptions};

/// Arguments of `lowbit run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The model (GGUF path or zoo name).
    #[arg(long)]
    pub model: String,
    /// The prompt to continue.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (nucleus) filter.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Exact f32 activations. By default activations are quantized before each linear
    /// layer as llama.cpp's CPU backend does (integer kernels: faster, and the text
    /// llama.cpp would generate from the same file).
    #[arg(long)]
    pub exact: bool,
    /// How the KV cache stores keys and values (f32; llama.cpp's f16, q8_0, q4_0, …;
    /// KVQuant-style kvq4, kvq3, kvq2, kvq4o, …; see `lowbit eval --help`).
    #[arg(long, default_value = "f32")]
    pub kv_type: lowbit::model::kv::KvType,
}

/// Runs `lowbit run`.
pub fn run(a: RunArgs) -> Result<()> {
    let s = Sampling { temperature: a.temp, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    s.check()?;
    let path = crate::resolve_model(&a.model)?;
    let lm = load_lm(&path, LoadOptions { llama_cpp_numerics: !a.exact, kv_type: a.kv_type })?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", a.prompt);
    let _ = out.flush();
    let start = std::time::Instant::now();
    let ids = generate(&lm, &a.prompt, a.n, &s, &mut |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    eprintln!(
        "lowbit: {} tokens in {:.2} s ({:.1} tokens/s)",
        ids.len(),
        start.elapsed().as_secs_f64(),
        ids.len() as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
