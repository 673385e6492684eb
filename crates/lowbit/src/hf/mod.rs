//! Hugging Face model folders read as the GGUF llama.cpp's `convert_hf_to_gguf.py` would
//! have written — without writing it. [`open`] maps the safetensors shards and returns a
//! [`GgufFile`] whose metadata (architecture, hyper-parameters, tokenizer) and tensor
//! names are the converter's, and whose tensors point into the shards: stored bytes are
//! used as they are (BF16/F16/F32), except where the converter changes them — q/k rows
//! of llama-architecture models regrouped for adjacent-pair rotary, 1-D tensors widened to
//! f32, Gemma's norm weights stored as w − 1 given back their 1. So every command that
//! takes a GGUF (quantize with any method, calibrate, eval, run) takes a folder, one
//! tensor in memory at a time.
//!
//! Supported: Llama, Mistral and SmolLM (`LlamaForCausalLM`, `MistralForCausalLM` → arch
//! `llama`), Qwen2 (`Qwen2ForCausalLM` → `qwen2`), Qwen3 (`Qwen3ForCausalLM` → `qwen3`:
//! Qwen2's layout with per-head q/k RMSNorms and no q/k/v biases), Gemma 3 text models
//! (`Gemma3ForCausalLM` → `gemma3`) and the text model of multimodal Gemma 3 checkpoints
//! (`Gemma3ForConditionalGeneration`: `text_config`'s hyper-parameters, the language
//! model's tensors under either transformers naming, the vision tower and projector left
//! out — llama.cpp writes those to a separate mmproj file). Conventions mirror llama.cpp's converter
//! (`convert_hf_to_gguf.py`: `LlamaModel`, `Qwen2Model`, `Qwen3Model`, `Gemma3Model`).

pub mod export;
mod vocab;

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::format::GgmlType;
use crate::gguf::{GgufFile, TensorInfo, TensorType, Transform, Value};
use crate::safetensors::{SafetensorsModel, StDtype, StTensor};

pub use vocab::tokenizer_metadata;

/// One supported architecture: its `config.json` names and how the converter treats it.
struct Arch {
    /// `architectures[0]` values.
    hf: &'static [&'static str],
    /// `general.architecture` in GGUF.
    gguf: &'static str,
    /// q/k rows permuted for llama.cpp's adjacent-pair rotary (the `llama` arch only).
    permute_qk: bool,
    /// Norm weights stored as w − 1 (Gemma).
    norm_plus_one: bool,
    /// Per-block tensor names: (Hugging Face suffix after `model.layers.N.`, GGUF name
    /// after `blk.N.`), without `.weight`/`.bias`.
    block: &'static [(&'static str, &'static str)],
}

const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

const QWEN3_BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

const GEMMA3_BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

const ARCHES: &[Arch] = &[
    Arch {
        hf: &["LlamaForCausalLM", "MistralForCausalLM"],
        gguf: "llama",
        permute_qk: true,
        norm_plus_one: false,
        block: LLAMA_BLOCK,
    },
    Arch { hf: &["Qwen2ForCausalLM"], gguf: "qwen2", permute_qk: false, norm_plus_one: false, block: LLAMA_BLOCK },
    Arch { hf: &["Qwen3ForCausalLM"], gguf: "qwen3", permute_qk: false, norm_plus_one: false, block: QWEN3_BLOCK },
    Arch {
        hf: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
        gguf: "gemma3",
        permute_qk: false,
        norm_plus_one: true,
        block: GEMMA3_BLOCK,
    },
];

/// Opens a model source as GGUF: a GGUF file as it is, a Hugging Face folder through
/// [`open`]. Every command that reads a source model calls this.
pub fn open_model(path: &Path) -> Result<GgufFile> {
    if path.is_dir() {
        open(path)
    } else {
        GgufFile::open(path)
    }
}

/// The `architectures[0]` names [`open`] accepts.
pub fn supported_architectures() -> Vec<&'static str> {
    ARCHES.iter().flat_map(|a| a.hf.iter().copied()).collect()
}

/// Whether `dir` is a Hugging Face folder of a causal LM [`open`] reads.
pub fn is_causal_lm_folder(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("config.json")) else { return false };
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    let arch = cfg.pointer("/architectures/0").and_then(|a| a.as_str()).unwrap_or("");
    ARCHES.iter().any(|a| a.hf.contains(&arch))
}

/// The ggml type a safetensors dtype is stored as.
fn ggml_of(dtype: StDtype) -> Option<GgmlType> {
    match dtype {
        StDtype::F32 => Some(GgmlType::F32),
        StDtype::F16 => Some(GgmlType::F16),
        StDtype::BF16 => Some(GgmlType::BF16),
        StDtype::I64 => None,
    }
}

/// Opens the Hugging Face folder `dir` as the GGUF llama.cpp's converter would write.
pub fn open(dir: &Path) -> Result<GgufFile> {
    let st = SafetensorsModel::open(dir)?;
    let cfg_path = dir.join("config.json");
    let cfg = text_config(&st.config);
    let name = st.architecture().unwrap_or("").to_string();
    let arch = ARCHES.iter().find(|a| a.hf.contains(&name.as_str())).ok_or_else(|| {
        Error::unsupported(
            &cfg_path,
            format!("architecture '{name}' (lowbit reads {} folders)", supported_architectures().join(", ")),
        )
    })?;
    let int = |k: &str| cfg.get(k).and_then(|v| v.as_u64());
    let need = |k: &str| int(k).ok_or_else(|| Error::format(&cfg_path, format!("missing or non-integer '{k}'")));
    let d = need("hidden_size")?;
    let n_layer = need("num_hidden_layers")?;
    let n_head = need("num_attention_heads")?;
    let n_head_kv = int("num_key_value_heads").unwrap_or(n_head);
    let d_ff = need("intermediate_size")?;
    let vocab_size = need("vocab_size")?;
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(Error::format(
            &cfg_path,
            format!("{n_head} attention heads cannot share {n_head_kv} key/value heads"),
        ));
    }
    let head_dim = int("head_dim").unwrap_or(d / n_head);
    let scaling = cfg.get("rope_scaling").filter(|v| !v.is_null());
    let scaling_kind = scaling
        .map(|s| s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("?").to_string());
    match scaling_kind.as_deref() {
        None | Some("linear" | "default") => {}
        Some("llama3") if arch.gguf == "llama" => {}
        Some(kind) => {
            return Err(Error::unsupported(
                &cfg_path,
                format!("rope_scaling of type '{kind}' (lowbit converts none, 'linear' and Llama 3.1's 'llama3')"),
            ))
        }
    }

    // Metadata, in the converter's order and spelling.
    let a = arch.gguf;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(model_name(dir, &cfg))),
    ];
    let mut hp = |k: &str, v: Value| md.push((format!("{a}.{k}"), v));
    let u32v = |v: u64| Value::U32(v as u32);
    if let Some(ctx) = int("max_position_embeddings") {
        hp("context_length", u32v(ctx));
    }
    hp("embedding_length", u32v(d));
    hp("block_count", u32v(n_layer));
    hp("feed_forward_length", u32v(d_ff));
    hp("attention.head_count", u32v(n_head));
    hp("attention.head_count_kv", u32v(n_head_kv));
    let eps = cfg.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6);
    hp("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
    if let Some(theta) = cfg.get("rope_theta").and_then(|v| v.as_f64()) {
        hp("rope.freq_base", Value::F32(theta as f32));
    }
    if scaling_kind.as_deref() == Some("linear") {
        if let Some(f) = cfg.pointer("/rope_scaling/factor").and_then(|v| v.as_f64()) {
            hp("rope.scaling.type", Value::String("linear".into()));
            hp("rope.scaling.factor", Value::F32(f as f32));
        }
    }
    if a == "gemma3" {
        hp("attention.key_length", u32v(head_dim));
        hp("attention.value_length", u32v(head_dim));
        if let Some(w) = int("sliding_window") {
            hp("attention.sliding_window", u32v(w));
        }
        if let Some(c) = cfg.get("final_logit_softcapping").and_then(|v| v.as_f64()) {
            hp("final_logit_softcapping", Value::F32(c as f32));
        }
    } else {
        hp("vocab_size", u32v(vocab_size));
        hp("rope.dimension_count", u32v(head_dim));
        if head_dim != d / n_head {
            hp("attention.key_length", u32v(head_dim));
            hp("attention.value_length", u32v(head_dim));
        }
    }
    md.extend(tokenizer_metadata(dir, vocab_size as usize)?);

    // Tensors: every stored one must map to a GGUF name (nothing silently dropped).
    let tied = cfg.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(a == "gemma3");
    let (shards, stored) = st.into_shards();
    let shard_path = |t: &StTensor| shards[t.location().0].0.clone();
    let mut tensors = Vec::with_capacity(stored.len());
    for t in stored.values() {
        let Some(gguf_name) = gguf_name(arch, &t.name) else {
            if t.name.ends_with("rotary_emb.inv_freq") || is_vision(&t.name) {
                continue; // a buffer the converter skips too; a multimodal model's vision half
            }
            return Err(Error::tensor(shard_path(t), &t.name, format!("not a tensor of a {name} model lowbit knows")));
        };
        if gguf_name == "output.weight" && tied {
            continue; // the converter writes a tied head once, as token_embd
        }
        let ty = ggml_of(t.dtype).ok_or_else(|| {
            Error::tensor(shard_path(t), &t.name, format!("dtype {:?} is not a weight type", t.dtype))
        })?;
        let dims: Vec<u64> = t.shape.iter().rev().map(|&x| x as u64).collect();
        let n_elements: u64 = dims.iter().product();
        let mut transform = Transform::default();
        let mut stored_ty = ty;
        if dims.len() == 1 {
            let add = if arch.norm_plus_one && gguf_name.contains("norm") { 1.0 } else { 0.0 };
            if ty != GgmlType::F32 || add != 0.0 {
                transform.to_f32 = Some((ty, add));
                stored_ty = GgmlType::F32;
            }
        }
        if arch.permute_qk {
            if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_q.bias") {
                transform.permute_heads = Some(n_head as usize);
            } else if gguf_name.ends_with("attn_k.weight") || gguf_name.ends_with("attn_k.bias") {
                transform.permute_heads = Some(n_head_kv as usize);
            }
            if let Some(h) = transform.permute_heads {
                let rows = t.shape[0];
                if rows % (2 * h) != 0 {
                    return Err(Error::tensor(
                        shard_path(t),
                        &t.name,
                        format!("{rows} rows cannot be split into {h} heads of rotary pairs"),
                    ));
                }
            }
        }
        if let Some(want) = expected_shape(&gguf_name, d, n_head, n_head_kv, head_dim, d_ff, vocab_size) {
            if t.shape != want {
                return Err(Error::format(
                    &cfg_path,
                    format!("config.json implies shape {want:?} for '{}', but the folder stores {:?}", t.name, t.shape),
                ));
            }
        }
        let (segment, start) = t.location();
        let n_bytes = n_elements * stored_ty.type_size() as u64 / stored_ty.block_size() as u64;
        tensors.push(TensorInfo {
            name: gguf_name,
            dims,
            ty: TensorType::Known(StorageType::Ggml(stored_ty)),
            offset: 0,
            n_elements,
            n_bytes: Some(n_bytes),
            segment,
            start: start as u64,
            transform,
        });
    }
    // The converter's order: embeddings, blocks in order, then the output norm and head.
    let rank = |n: &str| -> (u64, u64, String) {
        if n == "token_embd.weight" {
            return (0, 0, String::new());
        }
        match n.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((i, rest)) => {
                let pos = arch.block.iter().position(|(_, g)| rest.starts_with(g)).unwrap_or(99) as u64;
                (1 + i.parse::<u64>().unwrap_or(0), pos, rest.to_string())
            }
            None => (u64::MAX, 0, n.to_string()),
        }
    };
    tensors.sort_by_key(|t| rank(&t.name));
    if !tensors.iter().any(|t| t.name == "token_embd.weight") {
        return Err(Error::format(dir, "no model.embed_tokens.weight in the folder"));
    }
    if !tied && !tensors.iter().any(|t| t.name == "output.weight") {
        return Err(Error::format(&cfg_path, "no lm_head.weight, and tie_word_embeddings is false"));
    }
    // Llama 3.1: the converter computes the rotary frequency factors into a tensor.
    let mut owned = Vec::new();
    if scaling_kind.as_deref() == Some("llama3") {
        let theta = cfg.get("rope_theta").and_then(|v| v.as_f64()).unwrap_or(10000.0);
        let factors = llama3_rope_factors(scaling.expect("llama3 scaling"), theta, head_dim as usize);
        let n = factors.len() as u64;
        tensors.insert(
            0,
            TensorInfo {
                name: "rope_freqs.weight".into(),
                dims: vec![n],
                ty: TensorType::Known(StorageType::Ggml(GgmlType::F32)),
                offset: 0,
                n_elements: n,
                n_bytes: Some(4 * n),
                segment: shards.len(),
                start: 0,
                transform: Transform::default(),
            },
        );
        owned.push(factors.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let maps = shards.into_iter().map(|(_, m)| m).collect();
    GgufFile::assemble(dir.to_path_buf(), md, tensors, maps, owned)
}

/// Llama 3.1's rotary frequency factors, as llama.cpp's converter computes them
/// (`LlamaModel.generate_extra_tensors`): per frequency of a `head_dim`-wide head, 1 for
/// wavelengths below `original_max_position_embeddings / high_freq_factor`, `factor`
/// above `… / low_freq_factor`, and a smooth blend between.
fn llama3_rope_factors(scaling: &serde_json::Value, theta: f64, head_dim: usize) -> Vec<f32> {
    let get = |k: &str, d: f64| scaling.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let factor = get("factor", 8.0);
    let (low, high) = (get("low_freq_factor", 1.0), get("high_freq_factor", 4.0));
    let old_context = get("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    // The converter's arithmetic is torch's f32 (Python scalars meet f32 tensors); the two
    // thresholds are Python floats.
    let (factor32, low32, high32, old32) = (factor as f32, low as f32, high as f32, old_context as f32);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if (wavelen as f64) < high_wavelen {
                1.0
            } else if (wavelen as f64) > low_wavelen {
                factor32
            } else {
                let smooth = (old32 / wavelen - low32) / (high32 - low32);
                1.0 / ((1.0 - smooth) / factor32 + smooth)
            }
        })
        .collect()
}

/// The PyTorch shape config.json implies for a weight (GGUF name), if it is a matrix
/// whose shape it fixes.
fn expected_shape(gguf: &str, d: u64, heads: u64, kv: u64, hd: u64, ff: u64, vocab: u64) -> Option<Vec<usize>> {
    let kind = gguf.rsplit('.').nth(1)?;
    let (rows, cols) = match kind {
        "token_embd" | "output" => (vocab, d),
        "attn_q" => (heads * hd, d),
        "attn_k" | "attn_v" => (kv * hd, d),
        "attn_output" => (d, heads * hd),
        "ffn_gate" | "ffn_up" => (ff, d),
        "ffn_down" => (d, ff),
        _ => return None,
    };
    if !gguf.ends_with(".weight") {
        return None;
    }
    Some(vec![rows as usize, cols as usize])
}

/// A multimodal checkpoint's text hyper-parameters: `text_config`'s entries over the top
/// level's (the converter reads them the same way); other configs as they are.
fn text_config(cfg: &serde_json::Value) -> serde_json::Value {
    let mut merged = cfg.clone();
    if let (Some(m), Some(text)) = (merged.as_object_mut(), cfg.get("text_config").and_then(|t| t.as_object())) {
        for (k, v) in text {
            m.insert(k.clone(), v.clone());
        }
    }
    merged
}

/// Whether a tensor belongs to a multimodal checkpoint's vision tower or projector.
fn is_vision(name: &str) -> bool {
    ["vision_tower.", "multi_modal_projector."]
        .iter()
        .any(|p| name.starts_with(p) || name.starts_with(&format!("model.{p}")))
}

/// The GGUF name of a Hugging Face tensor name, if it is one of `arch`'s. A multimodal
/// checkpoint's language model is read under both transformers namings
/// (`language_model.model.…` and, since 4.52, `model.language_model.…`).
fn gguf_name(arch: &Arch, hf: &str) -> Option<String> {
    let unprefixed = match (hf.strip_prefix("model.language_model."), hf.strip_prefix("language_model.")) {
        (Some(rest), _) => format!("model.{rest}"),
        (None, Some(rest)) => rest.to_string(),
        (None, None) => hf.to_string(),
    };
    let hf = unprefixed.as_str();
    let (stem, kind) = hf.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let top = match stem {
        "model.embed_tokens" => Some("token_embd"),
        "model.norm" => Some("output_norm"),
        "lm_head" => Some("output"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{kind}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (i, inner) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (_, g) = arch.block.iter().find(|(h, _)| *h == inner)?;
    Some(format!("blk.{i}.{g}.{kind}"))
}

/// `general.name`: the checkpoint's own name when config.json has one, else the folder's.
fn model_name(dir: &Path, cfg: &serde_json::Value) -> String {
    let from_cfg = cfg.get("_name_or_path").and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let raw = from_cfg.map(str::to_string).unwrap_or_else(|| {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    });
    raw.rsplit('/').next().unwrap_or(&raw).to_string()
}
