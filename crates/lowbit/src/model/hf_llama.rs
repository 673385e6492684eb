//! llama-family models from a Hugging Face folder (`config.json`, `model.safetensors` or
//! sharded, `tokenizer.json`): Llama, Mistral, Qwen2 and SmolLM checkpoints as published.
//!
//! Hugging Face stores q/k projections for "rotate-half" rotary embeddings, which is the
//! NeoX pairing; llama.cpp's converter permutes them into adjacent pairs instead. Loading
//! the unpermuted weights with NeoX rotation computes the same function, so nothing is
//! permuted here.

use std::path::Path;

use super::decoder::{Activation, Block, Decoder, DecoderConfig, LayerAttention};
use super::{Linear, LoadedLm, Weight};
use crate::error::{Error, Result};
use crate::safetensors::SafetensorsModel;
use crate::tokenizer::Tokenizer;

/// `architectures[0]` values this loader accepts.
pub const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// Whether the folder holds a causal LM this loader reads (as opposed to an encoder).
pub fn is_hf_causal_lm(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("config.json")) else { return false };
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    cfg.get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .is_some_and(|a| ARCHITECTURES.contains(&a))
}

/// Loads a llama-family model and its tokenizer from a Hugging Face folder.
pub fn load(dir: &Path) -> Result<LoadedLm> {
    let st = SafetensorsModel::open(dir)?;
    let cfg_path = dir.join("config.json");
    let arch = st.architecture().unwrap_or("").to_string();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(Error::unsupported(
            &cfg_path,
            format!("architecture '{arch}' (supported: {})", ARCHITECTURES.join(", ")),
        ));
    }
    let need =
        |k: &str| st.config_usize(k).ok_or_else(|| Error::format(&cfg_path, format!("missing or non-integer '{k}'")));
    let float = |k: &str, default: f32| st.config.get(k).and_then(|v| v.as_f64()).map_or(default, |v| v as f32);
    let d = need("hidden_size")?;
    let n_layer = need("num_hidden_layers")?;
    let n_head = need("num_attention_heads")?;
    let n_head_kv = st.config_usize("num_key_value_heads").unwrap_or(n_head);
    let d_ff = need("intermediate_size")?;
    let vocab = need("vocab_size")?;
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(Error::format(
            &cfg_path,
            format!("{n_head} attention heads cannot share {n_head_kv} key/value heads"),
        ));
    }
    let head_dim = st.config_usize("head_dim").unwrap_or(d / n_head);
    let tied = st.config.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
    let cfg = DecoderConfig {
        d_model: d,
        n_head,
        n_head_kv,
        head_dim,
        d_ff,
        eps: float("rms_norm_eps", 1e-6),
        rope_dim: head_dim,
        rope_neox: true,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        vocab,
        embed_scale: 1.0,
        activation: Activation::Silu,
    };
    let rope_base = float("rope_theta", 10000.0);
    // A tensor with its PyTorch shape checked.
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let (t, _) = st.tensor_bytes(name)?;
        if t.shape != shape {
            return Err(Error::tensor(
                st.shard_path(t),
                name,
                format!("shape {:?}, config.json implies {shape:?}", t.shape),
            ));
        }
        let v = st.to_f32(name)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(st.shard_path(t), name, format!("element {i} is {} (NaN/inf weights)", v[i])));
        }
        Ok(v)
    };
    let linear = |name: &str, in_f: usize, out_f: usize| -> Result<Linear> {
        let weight = get(&format!("{name}.weight"), &[out_f, in_f])?;
        let bias_name = format!("{name}.bias");
        let bias = if st.tensor_bytes(&bias_name).is_ok() { Some(get(&bias_name, &[out_f])?) } else { None };
        Ok(Linear {
            name: format!("{name}.weight"),
            weight: Weight::Dense(weight),
            bias,
            in_features: in_f,
            out_features: out_f,
            act_quant: None,
            recorder: None,
        })
    };
    let mut blocks = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let p = format!("model.layers.{i}");
        blocks.push(Block {
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[d])?,
            wq: linear(&format!("{p}.self_attn.q_proj"), d, n_head * head_dim)?,
            wk: linear(&format!("{p}.self_attn.k_proj"), d, n_head_kv * head_dim)?,
            wv: linear(&format!("{p}.self_attn.v_proj"), d, n_head_kv * head_dim)?,
            wo: linear(&format!("{p}.self_attn.o_proj"), n_head * head_dim, d)?,
            q_norm: None,
            k_norm: None,
            attn_post_norm: None,
            ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
            w_gate: linear(&format!("{p}.mlp.gate_proj"), d, d_ff)?,
            w_up: linear(&format!("{p}.mlp.up_proj"), d, d_ff)?,
            w_down: linear(&format!("{p}.mlp.down_proj"), d_ff, d)?,
            ffn_post_norm: None,
            attention: LayerAttention { rope_base, window: None },
        });
    }
    let tok_embd = Weight::Dense(get("model.embed_tokens.weight", &[vocab, d])?);
    let out_norm = get("model.norm.weight", &[d])?;
    let has_head = st.tensor_bytes("lm_head.weight").is_ok();
    let output = if has_head && !tied { Some(linear("lm_head", d, vocab)?) } else { None };
    if output.is_none() && !tied && !has_head {
        return Err(Error::format(&cfg_path, "no lm_head.weight and tie_word_embeddings is not set"));
    }
    let model = Decoder { cfg, tok_embd, blocks, out_norm, output, tied_act_quant: None };
    let tokenizer = Tokenizer::from_json_file(&dir.join("tokenizer.json"))?;
    if tokenizer.vocab_size > vocab {
        return Err(Error::format(
            dir.join("tokenizer.json"),
            format!("{} tokens, more than the model's vocab_size {vocab}", tokenizer.vocab_size),
        ));
    }
    let context_length =
        st.config.get("max_position_embeddings").and_then(|v| v.as_u64()).map(|v| v as usize).filter(|&v| v > 0);
    Ok(LoadedLm { model: Box::new(model), tokenizer, architecture: arch, context_length })
}
