//! Gemma 3: interleaved sliding-window (local) and global attention layers with their own
//! rotary bases, QK-norm, norms before and after attention and MLP, GELU-tanh gated MLP,
//! embeddings scaled by √d. Norm weights are used as stored in GGUF (the converter has
//! already added Gemma's +1).

use super::decoder::{Activation, Block, Decoder, DecoderConfig, LayerAttention};
use super::GgufWeights;
use crate::error::Result;
use crate::gguf::GgufFile;

/// Every `SWA_PATTERN`-th layer is global; the others use the sliding window (llama.cpp's
/// `set_swa_pattern(6)` for Gemma 3).
pub const SWA_PATTERN: usize = 6;
/// Rotary base of the local (sliding-window) layers.
pub const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Loads a Gemma 3 text model from GGUF.
pub fn load(file: &GgufFile, opts: super::LoadOptions) -> Result<Decoder> {
    let w = GgufWeights { file, llama_cpp_numerics: opts.llama_cpp_numerics };
    let p = |k: &str| format!("gemma3.{k}");
    let d = w.hparam(&p("embedding_length"))?;
    let n_layer = w.hparam(&p("block_count"))?;
    let n_head = w.hparam(&p("attention.head_count"))?;
    let n_head_kv = w.hparam(&p("attention.head_count_kv")).unwrap_or(n_head);
    let d_ff = w.hparam(&p("feed_forward_length"))?;
    let head_dim = w.hparam(&p("attention.key_length")).unwrap_or(256);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(crate::Error::format(
            file.path(),
            format!("{n_head} heads cannot share {n_head_kv} key/value heads"),
        ));
    }
    let eps = w.hparam_f32(&p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
    let global_base = w.hparam_f32(&p("rope.freq_base")).unwrap_or(1_000_000.0);
    let window = w.hparam(&p("attention.sliding_window")).unwrap_or(512);
    let vocab = file.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).unwrap_or(0) as usize;
    let cfg = DecoderConfig {
        d_model: d,
        n_head,
        n_head_kv,
        head_dim,
        d_ff,
        eps,
        rope_dim: head_dim,
        rope_neox: true,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        vocab,
        embed_scale: (d as f32).sqrt(),
        activation: Activation::GeluTanh,
    };
    let tok_embd = w.get("token_embd.weight", &[d, vocab])?;
    // The tied output layer multiplies by the embedding table in its stored type.
    let tied_act_quant = w.act_quant_for("token_embd.weight");
    let mut blocks = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let local = i % SWA_PATTERN < SWA_PATTERN - 1;
        blocks.push(Block {
            attn_norm: w.get(&n("attn_norm"), &[d])?,
            wq: w.linear(&n("attn_q"), d, n_head * head_dim)?,
            wk: w.linear(&n("attn_k"), d, n_head_kv * head_dim)?,
            wv: w.linear(&n("attn_v"), d, n_head_kv * head_dim)?,
            wo: w.linear(&n("attn_output"), n_head * head_dim, d)?,
            q_norm: Some(w.get(&n("attn_q_norm"), &[head_dim])?),
            k_norm: Some(w.get(&n("attn_k_norm"), &[head_dim])?),
            attn_post_norm: Some(w.get(&n("post_attention_norm"), &[d])?),
            ffn_norm: w.get(&n("ffn_norm"), &[d])?,
            w_gate: w.linear(&n("ffn_gate"), d, d_ff)?,
            w_up: w.linear(&n("ffn_up"), d, d_ff)?,
            w_down: w.linear(&n("ffn_down"), d_ff, d)?,
            ffn_post_norm: Some(w.get(&n("post_ffw_norm"), &[d])?),
            attention: if local {
                LayerAttention { rope_base: LOCAL_ROPE_BASE, window: Some(window) }
            } else {
                LayerAttention { rope_base: global_base, window: None }
            },
        });
    }
    let out_norm = w.get("output_norm.weight", &[d])?;
    let output = if w.has("output.weight") { Some(w.linear("output.weight", d, vocab)?) } else { None };
    Ok(Decoder { cfg, tok_embd, blocks, out_norm, output, tied_act_quant })
}
