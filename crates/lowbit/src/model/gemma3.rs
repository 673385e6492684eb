//! Gemma 3: interleaved sliding-window (local) and global attention layers with their own
//! rotary bases, QK-norm, norms before and after attention and MLP, GELU-tanh gated MLP,
//! embeddings scaled by √d. Norm weights are used as stored in GGUF (the converter has
//! already added Gemma's +1).

use super::decoder::{Activation, Block, Decoder, DecoderConfig, DecoderDims, LayerAttention};
use super::GgufWeights;
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::tensor::RopeFreqs;

/// Every `SWA_PATTERN`-th layer is global; the others use the sliding window (llama.cpp's
/// `set_swa_pattern(6)` for Gemma 3).
pub const SWA_PATTERN: usize = 6;
/// Rotary base of the local (sliding-window) layers.
pub const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Loads a Gemma 3 text model from GGUF.
pub fn load(file: &GgufFile, opts: super::LoadOptions) -> Result<Decoder> {
    let w = GgufWeights { file, llama_cpp_numerics: opts.llama_cpp_numerics, kv_type: opts.kv_type };
    let p = |k: &str| format!("gemma3.{k}");
    let DecoderDims { d_model: d, n_layer, n_head, n_head_kv, d_ff, head_dim, vocab } =
        DecoderDims::read(&w, "gemma3", |_, _| 256)?;
    let eps = w.hparam_f32(&p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
    let global_base = w.hparam_f32(&p("rope.freq_base")).unwrap_or(1_000_000.0);
    // Linear scaling applies to the global layers (llama.cpp: the sliding-window layers
    // keep base 10000 and scale 1).
    let global = RopeFreqs { scale: super::rope_scale(&w, "gemma3")?, ..RopeFreqs::plain(global_base) };
    let window = w.hparam(&p("attention.sliding_window")).unwrap_or(512);
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
                LayerAttention { rope: RopeFreqs::plain(LOCAL_ROPE_BASE), window: Some(window) }
            } else {
                LayerAttention { rope: global.clone(), window: None }
            },
        });
    }
    Decoder::assemble(&w, cfg, blocks)
}
