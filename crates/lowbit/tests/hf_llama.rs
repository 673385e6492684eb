//! A llama-family model from a Hugging Face folder computes what the same model as GGUF
//! computes. The folder is made from the zoo's SmolLM2 GGUF the way Hugging Face stores
//! it: PyTorch tensor names, q/k rows in rotate-half order (llama.cpp's converter permutes
//! them to adjacent pairs; here the permutation is undone), config.json, tokenizer.json.

mod support;

use std::collections::HashMap;

use lowbit::gguf::GgufFile;
use lowbit::model::{load_gguf_lm, load_lm, LoadOptions};
use safetensors::tensor::TensorView;

/// Undoes llama.cpp's q/k permutation: GGUF row h·hd + 2j + p came from HF row
/// h·hd + p·hd/2 + j.
fn unpermute(w: &[f32], n_head: usize, in_f: usize) -> Vec<f32> {
    let out_f = w.len() / in_f;
    let hd = out_f / n_head;
    let mut hf = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for p in 0..2 {
                let (g, f) = (h * hd + 2 * j + p, h * hd + p * hd / 2 + j);
                hf[f * in_f..(f + 1) * in_f].copy_from_slice(&w[g * in_f..(g + 1) * in_f]);
            }
        }
    }
    hf
}

#[test]
fn hf_folder_matches_gguf() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let g = GgufFile::open(&src).unwrap();
    let u = |k: &str| g.get(&format!("llama.{k}")).and_then(|v| v.as_u64()).unwrap() as usize;
    let (d, n_layer, n_head, n_kv, d_ff) = (
        u("embedding_length"),
        u("block_count"),
        u("attention.head_count"),
        u("attention.head_count_kv"),
        u("feed_forward_length"),
    );
    let vocab = g.tensor_info("token_embd.weight").unwrap().dims[1] as usize;
    let eps = g.get("llama.attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()).unwrap();
    let theta = g.get("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, v: Vec<f32>| tensors.push((name, shape, v));
    put("model.embed_tokens.weight".into(), vec![vocab, d], g.dequantize("token_embd.weight").unwrap());
    put("model.norm.weight".into(), vec![d], g.dequantize("output_norm.weight").unwrap());
    for i in 0..n_layer {
        let gg = |n: &str| g.dequantize(&format!("blk.{i}.{n}.weight")).unwrap();
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), vec![d], gg("attn_norm"));
        put(format!("{p}.post_attention_layernorm.weight"), vec![d], gg("ffn_norm"));
        put(format!("{p}.self_attn.q_proj.weight"), vec![d, d], unpermute(&gg("attn_q"), n_head, d));
        put(format!("{p}.self_attn.k_proj.weight"), vec![d * n_kv / n_head, d], unpermute(&gg("attn_k"), n_kv, d));
        put(format!("{p}.self_attn.v_proj.weight"), vec![d * n_kv / n_head, d], gg("attn_v"));
        put(format!("{p}.self_attn.o_proj.weight"), vec![d, d], gg("attn_output"));
        put(format!("{p}.mlp.gate_proj.weight"), vec![d_ff, d], gg("ffn_gate"));
        put(format!("{p}.mlp.up_proj.weight"), vec![d_ff, d], gg("ffn_up"));
        put(format!("{p}.mlp.down_proj.weight"), vec![d, d_ff], gg("ffn_down"));
    }
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.path().join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": d, "num_hidden_layers": n_layer, "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "intermediate_size": d_ff, "vocab_size": vocab,
        "rms_norm_eps": eps, "rope_theta": theta, "tie_word_embeddings": true
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let gguf_lm = load_gguf_lm(&src, LoadOptions::default()).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), gguf_lm.tokenizer.to_json().unwrap()).unwrap();

    let hf_lm = load_lm(dir.path(), LoadOptions::default()).unwrap();
    let text = "The capital of France is Paris. In 1867, 42 scientists met in Zürich!";
    let (a, b) = (gguf_lm.tokenizer.encode(text, true).unwrap(), hf_lm.tokenizer.encode(text, true).unwrap());
    assert_eq!(a, b, "same token ids");
    let logits = |lm: &lowbit::model::LoadedLm| {
        let mut cache = lm.model.new_cache(a.len());
        let h = lm.model.forward_hidden(&a, &mut cache).unwrap();
        lm.model.logits(&h, a.len())
    };
    let (la, lb) = (logits(&gguf_lm), logits(&hf_lm));
    // Same weights, same function; rotation pairs differ only in order, so sums differ
    // only in f32 rounding.
    let max_diff = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let scale = la.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-4 * scale, "max logit difference {max_diff} (largest logit {scale})");
}
