//! The llama family (Llama 2/3, Mistral, Qwen2/Qwen3, SmolLM): RMSNorm, rotary positions
//! (adjacent pairs; split halves for Qwen), grouped-query attention, SwiGLU MLP, tied or
//! separate output; Qwen3 adds a per-head RMSNorm on queries and keys before rotary
//! (`attn_q_norm`/`attn_k_norm`, as llama.cpp's `qwen3` graph).

use super::decoder::{Activation, Block, Decoder, DecoderConfig, DecoderDims, LayerAttention};
use super::GgufWeights;
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::tensor::RopeFreqs;

/// Loads a llama-family model from GGUF (tensor names as written by llama.cpp's converter).
pub fn load(file: &GgufFile, opts: super::LoadOptions) -> Result<Decoder> {
    let w = GgufWeights { file, llama_cpp_numerics: opts.llama_cpp_numerics, kv_type: opts.kv_type };
    let arch = file.architecture().unwrap_or("llama");
    let p = |k: &str| format!("{arch}.{k}");
    let DecoderDims { d_model: d, n_layer, n_head, n_head_kv, d_ff, head_dim, vocab } =
        DecoderDims::read(&w, arch, |d, n_head| d / n_head)?;
    let eps = w.hparam_f32(&p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
    let rope_base = w.hparam_f32(&p("rope.freq_base")).unwrap_or(10000.0);
    let rope_dim = w.hparam(&p("rope.dimension_count")).unwrap_or(head_dim);
    // Llama 3.1's per-frequency factors (the converter's `rope_freqs.weight`) and linear
    // position scaling, as llama.cpp applies them.
    let factors = if w.has("rope_freqs.weight") {
        Some(std::sync::Arc::new(w.get("rope_freqs.weight", &[rope_dim / 2])?))
    } else {
        None
    };
    let rope = RopeFreqs { base: rope_base, scale: super::rope_scale(&w, arch)?, factors };
    let cfg = DecoderConfig {
        d_model: d,
        n_head,
        n_head_kv,
        head_dim,
        d_ff,
        eps,
        rope_dim,
        rope_neox: matches!(arch, "qwen2" | "qwen3"),
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        vocab,
        embed_scale: 1.0,
        activation: Activation::Silu,
    };
    let mut blocks = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let optional_norm = |name: &str| w.has(name).then(|| w.get(name, &[head_dim])).transpose();
        let mut wq = w.linear(&n("attn_q"), d, n_head * head_dim)?;
        let mut wk = w.linear(&n("attn_k"), d, n_head_kv * head_dim)?;
        let mut wv = w.linear(&n("attn_v"), d, n_head_kv * head_dim)?;
        for (lin, name) in [(&mut wq, "attn_q"), (&mut wk, "attn_k"), (&mut wv, "attn_v")] {
            let bias = format!("blk.{i}.{name}.bias");
            if w.has(&bias) {
                lin.bias = Some(w.get(&bias, &[lin.out_features])?);
            }
        }
        blocks.push(Block {
            attn_norm: w.get(&n("attn_norm"), &[d])?,
            wq,
            wk,
            wv,
            wo: w.linear(&n("attn_output"), n_head * head_dim, d)?,
            q_norm: optional_norm(&n("attn_q_norm"))?,
            k_norm: optional_norm(&n("attn_k_norm"))?,
            attn_post_norm: None,
            ffn_norm: w.get(&n("ffn_norm"), &[d])?,
            w_gate: w.linear(&n("ffn_gate"), d, d_ff)?,
            w_up: w.linear(&n("ffn_up"), d, d_ff)?,
            w_down: w.linear(&n("ffn_down"), d_ff, d)?,
            ffn_post_norm: None,
            attention: LayerAttention { rope: rope.clone(), window: None },
        });
    }
    Decoder::assemble(&w, cfg, blocks)
}
