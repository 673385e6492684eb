//! Architectures from Hugging Face folders (issue 17), each a tiny seeded folder with
//! SmolLM2's tokenizer, read as the GGUF llama.cpp's converter writes and run by lowbit as
//! llama.cpp runs it: the KL divergence of lowbit's logits from `llama-perplexity`'s own
//! (its `--kl-divergence-base` file) on the quantized file stays at the numerics floor, far
//! below what leaving out the feature under test does.
//! - Qwen3 (`Qwen3ForCausalLM`: per-head q/k RMSNorms, head_dim ≠ hidden / heads, tied
//!   embedding) → arch `qwen3`, `attention.key_length`, the q/k norm tensors.
//! - Llama 3.1 rotary scaling (`rope_scaling.rope_type = "llama3"`) → the converter's
//!   `rope_freqs.weight` factors, which both runtimes divide the angles by.

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
const HD: usize = 32; // Qwen3: ≠ D / HEADS, so the converter writes attention.key_length
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

/// What a test folder is.
struct Spec {
    arch: &'static str,
    qk_norm: bool,
    head_dim: usize,
    /// Store q/k norm weights of 1 (a different model whenever the norms matter).
    qk_norm_one: bool,
    rope_scaling: Option<serde_json::Value>,
}

/// A two-block folder of `spec` in `dir/name`.
fn folder(dir: &Path, name: &str, smol: &Path, spec: &Spec) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir(&out).unwrap();
    let hd = spec.head_dim;
    let mut tensors = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, D])];
    for i in 0..2 {
        let l = |s: &str| format!("model.layers.{i}.{s}.weight");
        tensors.push((l("input_layernorm"), vec![D]));
        for (p, rows, cols) in
            [("q_proj", HEADS * hd, D), ("k_proj", KV * hd, D), ("v_proj", KV * hd, D), ("o_proj", D, HEADS * hd)]
        {
            tensors.push((l(&format!("self_attn.{p}")), vec![rows, cols]));
        }
        if spec.qk_norm {
            tensors.push((l("self_attn.q_norm"), vec![hd]));
            tensors.push((l("self_attn.k_norm"), vec![hd]));
        }
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
            (0..len).map(|j| if qk && !spec.qk_norm_one { 1.0 + 0.9 * noise(k, j) } else { 1.0 }).collect()
        } else {
            // Large enough that attention and the norms shape the logits.
            let scale = if k == 0 { 1.0 } else { 2.0 / (s[1] as f32).sqrt() };
            (0..len).map(|j| scale * noise(k, j)).collect()
        };
        w.write(n, &v).unwrap();
    }
    w.finish().unwrap();
    let model_type = if spec.arch == "Qwen3ForCausalLM" { "qwen3" } else { "llama" };
    let mut config = serde_json::json!({
        "architectures": [spec.arch], "model_type": model_type, "hidden_size": D,
        "intermediate_size": FF, "num_hidden_layers": 2, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": hd, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
        "max_position_embeddings": 4096, "vocab_size": VOCAB, "tie_word_embeddings": true
    });
    if let Some(r) = &spec.rope_scaling {
        config["rope_scaling"] = r.clone();
    }
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    write_tokenizer_files(&GgufFile::open(smol).unwrap(), &out).unwrap();
    out
}

/// Mean KL divergence of lowbit's logits (llama.cpp numerics) on each of `models` from
/// llama-perplexity's on `models[0]` (wiki.valid, 2 chunks of 128), or `None` without
/// llama.cpp.
fn kld_from_llama_cpp(dir: &Path, models: &[&Path]) -> Option<Vec<f64>> {
    let bin = support::llama_bin()?;
    let text = support::shared_data("wikitext-2/wiki.valid.raw");
    let base = dir.join("llama.kld");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = ["-m", &s(models[0]), "-f", &s(&text), "-c", "128", "--chunks", "2", "-t", "2", "-fa", "off"];
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
    Some(models.iter().map(|m| kld(m)).collect())
}

fn q8_0(src: &Path, out: &Path) {
    let opts = QuantizeOptions::new(Mix::from_name("Q8_0").unwrap(), Method::Rtn);
    quantize_gguf(src, out, &opts, &mut |_, _| {}).unwrap();
}

#[test]
fn a_qwen3_folder_converts_and_runs_as_llama_cpp_runs_it() {
    let Some(smol) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec { arch: "Qwen3ForCausalLM", qk_norm: true, head_dim: HD, qk_norm_one: false, rope_scaling: None };
    let hf = folder(dir.path(), "hf", &smol, &spec);
    let hf_ones = folder(dir.path(), "hf-ones", &smol, &Spec { qk_norm_one: true, ..spec });
    let (q, q_ones) = (dir.path().join("qwen3.gguf"), dir.path().join("qwen3-ones.gguf"));
    q8_0(&hf, &q);
    q8_0(&hf_ones, &q_ones);
    let g = GgufFile::open(&q).unwrap();
    assert_eq!(g.architecture(), Some("qwen3"));
    assert_eq!(g.get("qwen3.attention.key_length").and_then(|v| v.as_u64()), Some(HD as u64));
    assert_eq!(g.get("qwen3.rope.dimension_count").and_then(|v| v.as_u64()), Some(HD as u64));
    assert_eq!(g.tensor_info("blk.1.attn_k_norm.weight").map(|t| t.dims.clone()), Some(vec![HD as u64]));
    assert!(g.tensor_info("output.weight").is_none(), "a tied head is written once");

    let Some(k) = kld_from_llama_cpp(dir.path(), &[&q, &q_ones]) else { return };
    let (same, ones) = (k[0], k[1]);
    eprintln!("KLD from llama.cpp's logits: lowbit {same:.2e}; the model without its q/k norms {ones:.2e}");
    // Same weights, two implementations: f32 summation order and llama.cpp's f16 KV cache
    // (the zoo models measure ~4e-3 nats at 512 tokens; these logits are sharper).
    assert!(same < 0.02, "lowbit's qwen3 forward is {same} nats from llama.cpp's");
    assert!(ones > 20.0 * same, "the q/k norms barely matter here ({ones} vs {same}): the test would not catch them");
}

#[test]
fn llama_3_1_rope_scaling_converts_and_runs_as_llama_cpp_runs_it() {
    let Some(smol) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    // A short original context, so the 128-token chunks reach scaled and blended frequencies.
    let scaling = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64
    });
    let spec = Spec {
        arch: "LlamaForCausalLM",
        qk_norm: false,
        head_dim: 16,
        qk_norm_one: false,
        rope_scaling: Some(scaling),
    };
    let hf = folder(dir.path(), "hf", &smol, &spec);
    let plain = folder(dir.path(), "hf-plain", &smol, &Spec { rope_scaling: None, ..spec });
    let (q, q_plain) = (dir.path().join("l31.gguf"), dir.path().join("plain.gguf"));
    q8_0(&hf, &q);
    q8_0(&plain, &q_plain);
    let g = GgufFile::open(&q).unwrap();
    assert!(g.get("llama.rope.scaling.type").is_none(), "llama3 scaling is the factors tensor, not a scaling type");
    let factors = g.dequantize("rope_freqs.weight").unwrap();
    assert_eq!(factors.len(), 8);
    // θ = 500000, head 16: wavelengths 6.3 … 2.5e5; below 64/4 = 16 → 1, above 64 → 8, a
    // blend between (the converter's formula).
    assert_eq!(factors[0], 1.0);
    assert_eq!(factors[7], 8.0);
    assert!(factors.windows(2).all(|w| w[0] <= w[1]), "{factors:?}");
    assert!(factors.iter().any(|&f| f > 1.0 && f < 8.0), "{factors:?}");
    assert!(GgufFile::open(&q_plain).unwrap().tensor_info("rope_freqs.weight").is_none());

    let Some(k) = kld_from_llama_cpp(dir.path(), &[&q, &q_plain]) else { return };
    let (same, plain) = (k[0], k[1]);
    eprintln!("KLD from llama.cpp's logits: lowbit {same:.2e}; without the rope factors {plain:.2e}");
    assert!(same < 0.02, "lowbit's scaled-rope forward is {same} nats from llama.cpp's");
    assert!(plain > 20.0 * same, "the rope factors barely matter here ({plain} vs {same})");
}

/// A tiny Gemma 3 text model written three ways — `Gemma3ForCausalLM`, and as the text half
/// of a `Gemma3ForConditionalGeneration` checkpoint under both transformers namings (with
/// `text_config` and vision tensors) — gives the same GGUF tensors and hyper-parameters.
#[test]
fn multimodal_gemma3_checkpoints_give_their_text_model() {
    let Some(smol) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let hd = 16;
    let mut text = vec![("embed_tokens.weight".to_string(), vec![VOCAB, D])];
    for i in 0..2 {
        let l = |s: &str| format!("layers.{i}.{s}.weight");
        for (p, rows, cols) in
            [("q_proj", HEADS * hd, D), ("k_proj", KV * hd, D), ("v_proj", KV * hd, D), ("o_proj", D, HEADS * hd)]
        {
            text.push((l(&format!("self_attn.{p}")), vec![rows, cols]));
        }
        for n in
            ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]
        {
            text.push((l(n), vec![D]));
        }
        text.push((l("self_attn.q_norm"), vec![hd]));
        text.push((l("self_attn.k_norm"), vec![hd]));
        text.push((l("mlp.gate_proj"), vec![FF, D]));
        text.push((l("mlp.up_proj"), vec![FF, D]));
        text.push((l("mlp.down_proj"), vec![D, FF]));
    }
    text.push(("norm.weight".to_string(), vec![D]));
    let text_cfg = serde_json::json!({
        "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": 2, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": hd, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "sliding_window": 32, "max_position_embeddings": 4096, "vocab_size": VOCAB, "model_type": "gemma3_text"
    });
    // (folder, language-model prefix, vision tower prefix and projector tensor, config)
    let mut multimodal =
        serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"});
    multimodal["text_config"] = text_cfg.clone();
    let mut causal = text_cfg.clone();
    causal["architectures"] = serde_json::json!(["Gemma3ForCausalLM"]);
    let variants = [
        ("causal", "model.", None, causal),
        (
            "mm-old",
            "language_model.model.",
            Some(("vision_tower.vision_model.", "multi_modal_projector.mm_input_projection_weight")),
            multimodal.clone(),
        ),
        (
            "mm-new",
            "model.language_model.",
            Some(("model.vision_tower.vision_model.", "model.multi_modal_projector.mm_input_projection_weight")),
            multimodal,
        ),
    ];
    let mut outs = Vec::new();
    for (name, prefix, vision, config) in variants {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let mut tensors: Vec<(String, Vec<usize>)> =
            text.iter().map(|(n, s)| (format!("{prefix}{n}"), s.clone())).collect();
        if let Some((tower, projector)) = vision {
            tensors.push((format!("{tower}encoder.layers.0.self_attn.q_proj.weight"), vec![32, 32]));
            tensors.push((projector.to_string(), vec![32, D]));
        }
        let planned = tensors.iter().map(|(n, s)| PlannedTensor { name: n.clone(), shape: s.clone() }).collect();
        let mut w = ShardedWriter::new(&out, planned, StDtype::BF16, None);
        for (n, s) in &tensors {
            let len: usize = s.iter().product();
            // The same values for the same text tensor in every variant.
            let key = text.iter().position(|(t, _)| n.ends_with(t.as_str())).unwrap_or(999);
            w.write(n, &(0..len).map(|j| 0.3 * noise(key, j)).collect::<Vec<f32>>()).unwrap();
        }
        w.finish().unwrap();
        std::fs::write(out.join("config.json"), config.to_string()).unwrap();
        write_tokenizer_files(&GgufFile::open(&smol).unwrap(), &out).unwrap();
        let q = dir.path().join(format!("{name}.gguf"));
        q8_0(&out, &q);
        outs.push(q);
    }
    let files: Vec<GgufFile> = outs.iter().map(|p| GgufFile::open(p).unwrap()).collect();
    let names = |g: &GgufFile| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    for g in &files[1..] {
        assert_eq!(g.architecture(), Some("gemma3"));
        assert_eq!(names(g), names(&files[0]), "the same text tensors, nothing of the vision half");
        for t in &files[0].tensors {
            assert_eq!(g.tensor_bytes(&t.name).unwrap().1, files[0].tensor_bytes(&t.name).unwrap().1, "{}", t.name);
        }
        for k in [
            "gemma3.embedding_length",
            "gemma3.block_count",
            "gemma3.attention.key_length",
            "gemma3.attention.sliding_window",
        ] {
            assert_eq!(g.get(k).and_then(|v| v.as_u64()), files[0].get(k).and_then(|v| v.as_u64()), "{k}");
        }
    }
    assert_eq!(files[1].get("gemma3.attention.sliding_window").and_then(|v| v.as_u64()), Some(32));
    lowbit::model::load_gguf_lm(&outs[2], Default::default()).unwrap();
}
