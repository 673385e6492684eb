//! Qwen3 (issue 17): a tiny Hugging Face Qwen3 folder (`Qwen3ForCausalLM`: per-head q/k
//! RMSNorms, head_dim ≠ hidden / heads, tied embedding; SmolLM2's tokenizer) is read as the
//! GGUF llama.cpp's converter writes (arch `qwen3`, `attention.key_length`, the q/k norm
//! tensors), and lowbit's forward pass on the quantized file gives llama.cpp's logits:
//! KL divergence from `llama-perplexity`'s own logits (its `--kl-divergence-base` file) at
//! the numerics floor, far below what dropping the q/k norms does.

mod support;

use std::path::{Path, PathBuf};

use lowbit::eval::{evaluate, EvalOptions, Reference};
use lowbit::gguf::GgufFile;
use lowbit::hf::export::{write_tokenizer_files, PlannedTensor, ShardedWriter};
use lowbit::method::Method;
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};
use lowbit::safetensors::StDtype;
use lowbit::saved_logits::LogitsReader;

const D: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 32; // ≠ D / HEADS: the converter writes attention.key_length
const FF: usize = 128;
const VOCAB: usize = 49152;

/// Deterministic values in [-1, 1).
fn noise(k: usize, j: usize) -> f32 {
    let mut x = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (j as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// A two-block Qwen3 folder; `qk_norm_one` stores q/k norm weights of 1 (a different model
/// whenever the norms matter).
fn folder(dir: &Path, smol: &Path, qk_norm_one: bool) -> PathBuf {
    let out = dir.join(if qk_norm_one { "hf-ones" } else { "hf" });
    std::fs::create_dir(&out).unwrap();
    let mut tensors = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, D])];
    for i in 0..2 {
        let l = |s: &str| format!("model.layers.{i}.{s}.weight");
        tensors.push((l("input_layernorm"), vec![D]));
        for (p, rows, cols) in
            [("q_proj", HEADS * HD, D), ("k_proj", KV * HD, D), ("v_proj", KV * HD, D), ("o_proj", D, HEADS * HD)]
        {
            tensors.push((l(&format!("self_attn.{p}")), vec![rows, cols]));
        }
        tensors.push((l("self_attn.q_norm"), vec![HD]));
        tensors.push((l("self_attn.k_norm"), vec![HD]));
        tensors.push((l("post_attention_layernorm"), vec![D]));
        tensors.push((l("mlp.gate_proj"), vec![FF, D]));
        tensors.push((l("mlp.up_proj"), vec![FF, D]));
        tensors.push((l("mlp.down_proj"), vec![D, FF]));
    }
    tensors.push(("model.norm.weight".to_string(), vec![D]));
    let planned = tensors.iter().map(|(n, s)| PlannedTensor { name: n.clone(), shape: s.clone() }).collect();
    let mut w = ShardedWriter::new(&out, planned, StDtype::BF16, None);
    for (k, (n, s)) in tensors.iter().enumerate() {
        let len: usize = s.iter().product();
        let v: Vec<f32> = if s.len() == 1 {
            let qk = n.contains("q_norm") || n.contains("k_norm");
            (0..len).map(|j| if qk && !qk_norm_one { 1.0 + 0.9 * noise(k, j) } else { 1.0 }).collect()
        } else {
            // Large enough that attention and the norms shape the logits.
            let scale = if k == 0 { 1.0 } else { 2.0 / (s[1] as f32).sqrt() };
            (0..len).map(|j| scale * noise(k, j)).collect()
        };
        w.write(n, &v).unwrap();
    }
    w.finish().unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": D,
        "intermediate_size": FF, "num_hidden_layers": 2, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": HD, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 4096, "vocab_size": VOCAB, "tie_word_embeddings": true
    });
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    write_tokenizer_files(&GgufFile::open(smol).unwrap(), &out).unwrap();
    out
}

fn q8_0(src: &Path, out: &Path) {
    let opts = QuantizeOptions {
        mix: Mix::from_name("Q8_0").unwrap(),
        overrides: vec![],
        method: Method::Rtn,
        importance: None,
        hessians: None,
        pre_encoded: Default::default(),
        method_options: Default::default(),
        low_rank: None,
        incoherence: false,
    };
    quantize_gguf(src, out, &opts, &mut |_, _| {}).unwrap();
}

#[test]
fn a_qwen3_folder_converts_and_runs_as_llama_cpp_runs_it() {
    let Some(smol) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hf, hf_ones) = (folder(dir.path(), &smol, false), folder(dir.path(), &smol, true));
    let (q, q_ones) = (dir.path().join("qwen3.gguf"), dir.path().join("qwen3-ones.gguf"));
    q8_0(&hf, &q);
    q8_0(&hf_ones, &q_ones);
    let g = GgufFile::open(&q).unwrap();
    assert_eq!(g.architecture(), Some("qwen3"));
    assert_eq!(g.get("qwen3.attention.key_length").and_then(|v| v.as_u64()), Some(HD as u64));
    assert_eq!(g.get("qwen3.rope.dimension_count").and_then(|v| v.as_u64()), Some(HD as u64));
    assert_eq!(g.tensor_info("blk.1.attn_k_norm.weight").map(|t| t.dims.clone()), Some(vec![HD as u64]));
    assert!(g.tensor_info("output.weight").is_none(), "a tied head is written once");

    let Some(bin) = support::llama_bin() else { return };
    let text = support::shared_data("wikitext-2/wiki.valid.raw");
    let base = dir.path().join("llama.kld");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = ["-m", &s(&q), "-f", &s(&text), "-c", "128", "--chunks", "2", "-t", "2", "-fa", "off"];
    let out = std::process::Command::new(bin.join("llama-perplexity"))
        .args(args)
        .args(["--kl-divergence-base", &s(&base)])
        .output()
        .unwrap();
    assert!(out.status.success(), "llama-perplexity: {}", String::from_utf8_lossy(&out.stderr));
    let eval = EvalOptions { ctx: 128, max_chunks: Some(2), resume: None };
    let kld = |model: &Path| {
        let o = lowbit::model::LoadOptions { llama_cpp_numerics: true, ..Default::default() };
        let lm = lowbit::model::load_gguf_lm(model, o).unwrap();
        let mut reader = LogitsReader::open(&base).unwrap();
        evaluate(&lm, Some(Reference::Saved(&mut reader)), None, "", &eval, &mut |_, _, _| {})
            .unwrap()
            .kld
            .unwrap()
            .mean
    };
    let (same, ones) = (kld(&q), kld(&q_ones));
    eprintln!("KLD from llama.cpp's logits: lowbit {same:.2e}; the model without its q/k norms {ones:.2e}");
    // Same weights, two implementations: f32 summation order and llama.cpp's f16 KV cache
    // (the zoo models measure ~4e-3 nats at 512 tokens; these logits are sharper).
    assert!(same < 0.02, "lowbit's qwen3 forward is {same} nats from llama.cpp's");
    assert!(ones > 20.0 * same, "the q/k norms barely matter here ({ones} vs {same}): the test would not catch them");
}
