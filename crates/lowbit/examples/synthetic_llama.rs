//! Writes a synthetic llama-architecture model as a sharded BF16 Hugging Face folder, to
//! measure what quantizing a real model of that size costs in memory and time (issue 17:
//! no real 8B model is reachable from the package registries). Its quality numbers mean
//! nothing; its shapes, sizes and weight statistics are a real model's:
//!
//! - shapes of Llama-3-8B (`--preset llama3-8b`: hidden 4096, 32 layers, 32/8 heads,
//!   intermediate 14336, untied head) or a small one for tests (`--preset tiny`);
//! - SmolLM2's tokenizer (vocabulary 49152), copied from the zoo's GGUF;
//! - weights w[i][j] = s_i · c_j · t_ij / √fan_in: t heavy-tailed (a scale mixture of
//!   near-normal values, kurtosis ≈ 8), per-row scales s_i log-normal (σ = 0.3), a few
//!   outlier input channels (c_j = 8 for 0.2 % of columns, the same columns in every
//!   layer reading the residual stream); norm weights 1 + N(0, 0.05²).
//!
//! Deterministic: each row has its own generator seeded from (seed, tensor, row), so the
//! bytes do not depend on the thread count.
//!
//! Usage: `cargo run --release -p lowbit --example synthetic_llama -- OUT_DIR
//! [--preset llama3-8b|tiny] [--layers N] [--seed N] [--shard-gb 5]` (needs `lowbit fetch
//! smollm2-135m` for the tokenizer). `--layers` keeps the preset's shapes with fewer
//! blocks: an 8B-shaped model whose statistics file fits a small disk (1 GB per block).

use std::path::PathBuf;
use std::time::Instant;

use lowbit::gguf::GgufFile;
use lowbit::hf::export::{write_tokenizer_files, PlannedTensor, ShardedWriter};
use lowbit::safetensors::StDtype;
use rayon::prelude::*;

struct Preset {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
}

/// SplitMix64: a small, fast, well-mixed generator; one per row.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (−1, 1).
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Approximately N(0, 1): Irwin–Hall sum of four uniforms, scaled.
    fn normal(&mut self) -> f32 {
        (self.sym() + self.sym() + self.sym() + self.sym()) * 0.866_025_4
    }

    /// Heavy-tailed, unit variance: a normal with scale 0.7 (p = .6), 1.15 (.35), 2.6 (.05).
    fn heavy(&mut self) -> f32 {
        let u = self.next() % 100;
        let s = if u < 60 {
            0.7
        } else if u < 95 {
            1.15
        } else {
            2.6
        };
        // Normalised so that E[t²] = 1.
        self.normal() * s / 1.0297
    }
}

fn seed_of(seed: u64, name: &str, row: usize) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The rows of one tensor (shape [rows, cols], PyTorch order).
fn generate(seed: u64, name: &str, rows: usize, cols: usize, outliers: &[bool]) -> Vec<f32> {
    let mut v = vec![0.0f32; rows * cols];
    let is_norm = cols == 1;
    v.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, row)| {
        let mut rng = Rng(seed_of(seed, name, r));
        if is_norm {
            row[0] = 1.0 + 0.05 * rng.normal();
            return;
        }
        let s = (0.3 * rng.normal()).exp() / (cols as f32).sqrt();
        let reads_residual = outliers.len() == cols;
        for (j, x) in row.iter_mut().enumerate() {
            let c = if reads_residual && outliers[j] { 8.0 } else { 1.0 };
            *x = s * c * rng.heavy();
        }
    });
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = None;
    let (mut preset, mut seed, mut shard_gb) = ("llama3-8b".to_string(), 1u64, 5.0f64);
    let mut layers: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" => preset = it.next().expect("--preset NAME").clone(),
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).expect("--seed N"),
            "--layers" => layers = Some(it.next().and_then(|s| s.parse().ok()).expect("--layers N")),
            "--shard-gb" => shard_gb = it.next().and_then(|s| s.parse().ok()).expect("--shard-gb X"),
            other if out.is_none() && !other.starts_with('-') => out = Some(PathBuf::from(other)),
            other => panic!("unknown argument {other}"),
        }
    }
    let out =
        out.expect("usage: synthetic_llama OUT_DIR [--preset llama3-8b|tiny] [--layers N] [--seed N] [--shard-gb X]");
    let mut p = match preset.as_str() {
        "llama3-8b" => Preset { hidden: 4096, layers: 32, heads: 32, kv_heads: 8, ffn: 14336 },
        "tiny" => Preset { hidden: 256, layers: 2, heads: 4, kv_heads: 2, ffn: 512 },
        other => panic!("unknown preset {other} (llama3-8b, tiny)"),
    };
    p.layers = layers.unwrap_or(p.layers);
    let tok_src = lowbit::zoo::fetch("smollm2-135m", &mut |m| eprintln!("{m}")).expect("the smollm2-135m tokenizer");
    let tok = GgufFile::open(&tok_src).expect("smollm2 GGUF");
    let vocab = 49152usize;
    assert!(!out.exists(), "{} exists", out.display());
    std::fs::create_dir_all(&out).expect("create the folder");

    let (d, hd) = (p.hidden, p.hidden / p.heads);
    let mut planned: Vec<(String, usize, usize)> = vec![("model.embed_tokens.weight".into(), vocab, d)];
    for i in 0..p.layers {
        let l = |s: &str| format!("model.layers.{i}.{s}.weight");
        planned.push((l("input_layernorm"), d, 1));
        planned.push((l("self_attn.q_proj"), p.heads * hd, d));
        planned.push((l("self_attn.k_proj"), p.kv_heads * hd, d));
        planned.push((l("self_attn.v_proj"), p.kv_heads * hd, d));
        planned.push((l("self_attn.o_proj"), d, p.heads * hd));
        planned.push((l("post_attention_layernorm"), d, 1));
        planned.push((l("mlp.gate_proj"), p.ffn, d));
        planned.push((l("mlp.up_proj"), p.ffn, d));
        planned.push((l("mlp.down_proj"), d, p.ffn));
    }
    planned.push(("model.norm.weight".into(), d, 1));
    planned.push(("lm_head.weight".into(), vocab, d));
    let shape = |(n, r, c): &(String, usize, usize)| PlannedTensor {
        name: n.clone(),
        shape: if *c == 1 { vec![*r] } else { vec![*r, *c] },
    };
    let max_shard = (shard_gb * 1e9) as u64;
    let mut writer = ShardedWriter::new(&out, planned.iter().map(shape).collect(), StDtype::BF16, Some(max_shard));
    // Outlier channels of the residual stream: 0.2 % of columns, fixed by the seed.
    let mut rng = Rng(seed_of(seed, "outliers", 0));
    let outliers: Vec<bool> = (0..d).map(|_| rng.next() % 1000 < 2).collect();
    let total: usize = planned.iter().map(|(_, r, c)| r * c).sum();
    let (mut done, t0) = (0usize, Instant::now());
    for (name, rows, cols) in &planned {
        let v = generate(seed, name, *rows, *cols, &outliers);
        writer.write(name, &v).expect("write");
        done += rows * cols;
        let secs = t0.elapsed().as_secs_f64();
        eprint!(
            "\r{:.1}/{:.1} G parameters, {:.0} s, ETA {:.0} s   ",
            done as f64 / 1e9,
            total as f64 / 1e9,
            secs,
            secs * (total - done) as f64 / done as f64
        );
    }
    writer.finish().expect("finish");
    eprintln!();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": d, "intermediate_size": p.ffn, "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads, "num_key_value_heads": p.kv_heads, "head_dim": hd,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
        "vocab_size": vocab, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "_name_or_path": format!("lowbit-synthetic-{preset}"),
    });
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).expect("config");
    write_tokenizer_files(&tok, &out).expect("tokenizer files");
    println!("{} ({:.2} G parameters)", out.display(), total as f64 / 1e9);
}
