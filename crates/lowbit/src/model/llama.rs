//! The llama family (Llama 2/3, Mistral, Qwen2-style, SmolLM): RMSNorm, rotary positions
//! on adjacent pairs, grouped-query attention, SwiGLU MLP, tied or separate output.

use super::decoder::{Activation, Block, Decoder, DecoderConfig, LayerAttention};
use super::GgufWeights;
use crate::error::Result;
use crate::gguf::GgufFile;

/// Loads a llama-family model from GGUF (tensor names as written by llama.cpp's converter).
pub fn load(file: &GgufFile, opts: super::LoadOptions) -> Result<Decoder> {
    let w = GgufWeights { file, llama_cpp_numerics: opts.llama_cpp_numerics };
    let arch = file.architecture().unwrap_or("llama");
    let p = |k: &str| format!("{arch}.{k}");
    let d = w.hparam(&p("embedding_length"))?;
    let n_layer = w.hparam(&p("block_count"))?;
    let n_head = w.hparam(&p("attention.head_count"))?;
    let n_head_kv = w.hparam(&p("attention.head_count_kv")).unwrap_or(n_head);
    let d_ff = w.hparam(&p("feed_forward_length"))?;
    let head_dim = w.hparam(&p("attention.key_length")).unwrap_or(d / n_head.max(1));
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(crate::Error::format(
            file.path(),
            format!("{n_head} heads cannot share {n_head_kv} key/value heads"),
        ));
    }
    let eps = w.hparam_f32(&p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
    let rope_base = w.hparam_f32(&p("rope.freq_base")).unwrap_or(10000.0);
    let rope_dim = w.hparam(&p("rope.dimension_count")).unwrap_or(head_dim);
    let embd_info = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| crate::Error::tensor(file.path(), "token_embd.weight", "missing"))?;
    let vocab = embd_info.dims.get(1).copied().unwrap_or(0) as usize;
    let cfg = DecoderConfig {
        d_model: d,
        n_head,
        n_head_kv,
        head_dim,
        d_ff,
        eps,
        rope_dim,
        rope_neox: arch == "qwen2",
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        vocab,
        embed_scale: 1.0,
        activation: Activation::Silu,
    };
    let tok_embd = w.get("token_embd.weight", &[d, vocab])?;
    // The tied output layer multiplies by the embedding table in its stored type.
    let tied_act_quant = w.act_quant_for("token_embd.weight");
    let mut blocks = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
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
            q_norm: None,
            k_norm: None,
            attn_post_norm: None,
            ffn_norm: w.get(&n("ffn_norm"), &[d])?,
            w_gate: w.linear(&n("ffn_gate"), d, d_ff)?,
            w_up: w.linear(&n("ffn_up"), d, d_ff)?,
            w_down: w.linear(&n("ffn_down"), d_ff, d)?,
            ffn_post_norm: None,
            attention: LayerAttention { rope_base, window: None },
        });
    }
    let out_norm = w.get("output_norm.weight", &[d])?;
    let output = if w.has("output.weight") { Some(w.linear("output.weight", d, vocab)?) } else { None };
    Ok(Decoder { cfg, tok_embd, blocks, out_norm, output, tied_act_quant })
}
