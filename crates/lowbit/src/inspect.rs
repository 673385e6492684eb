//! What `lowbit inspect` shows: a model's architecture, hyper-parameters, tokenizer and
//! every tensor with its storage cost — read from headers only, so it is instant.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::gguf::{GgufFile, Value};
use crate::safetensors::SafetensorsModel;

/// One tensor as listed by `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Shape as stored (GGUF: innermost first; safetensors: outermost first).
    pub shape: Vec<u64>,
    /// Storage type name (`Q4_K`, `F32`, … or `unknown type N`).
    pub dtype: String,
    /// Elements.
    pub params: u64,
    /// Stored bytes (`None` for a type lowbit cannot size).
    pub bytes: Option<u64>,
}

/// Totals for one storage type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeTotals {
    /// Number of tensors of this type.
    pub tensors: usize,
    /// Elements stored in this type.
    pub params: u64,
    /// Bytes stored in this type.
    pub bytes: u64,
    /// 8 · bytes / params.
    pub bpw: f64,
}

/// Everything `inspect` reports about a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The file or folder inspected.
    pub path: String,
    /// `gguf` or `safetensors`.
    pub container: String,
    /// GGUF version, if GGUF.
    pub gguf_version: Option<u32>,
    /// Architecture name.
    pub architecture: Option<String>,
    /// Model name from metadata, if any.
    pub name: Option<String>,
    /// Architecture hyper-parameters (`{arch}.*` keys / config.json numbers).
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Tokenizer kind (`gpt2`, `llama`, `wordpiece`, …).
    pub tokenizer: Option<String>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Every tensor in file order.
    pub tensors: Vec<TensorSummary>,
    /// Tensors whose type lowbit does not know (listed, not fatal).
    pub unknown_type_tensors: Vec<String>,
    /// Total parameters.
    pub params: u64,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// 8 · tensor bytes / params, over all tensors.
    pub bpw: f64,
    /// Totals per storage type.
    pub by_type: BTreeMap<String, TypeTotals>,
    /// Size of the file(s) on disk.
    pub file_size: u64,
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn finish(mut s: ModelSummary) -> ModelSummary {
    for t in &s.tensors {
        s.params += t.params;
        let e = s.by_type.entry(t.dtype.clone()).or_default();
        e.tensors += 1;
        e.params += t.params;
        if let Some(b) = t.bytes {
            s.tensor_bytes += b;
            e.bytes += b;
        } else {
            s.unknown_type_tensors.push(t.name.clone());
        }
    }
    for e in s.by_type.values_mut() {
        e.bpw = if e.params > 0 { 8.0 * e.bytes as f64 / e.params as f64 } else { 0.0 };
    }
    s.bpw = if s.params > 0 { 8.0 * s.tensor_bytes as f64 / s.params as f64 } else { 0.0 };
    s
}

/// Summarises an open GGUF file.
pub fn summarize_gguf(g: &GgufFile) -> ModelSummary {
    let arch = g.architecture().map(str::to_owned);
    let mut hyper = BTreeMap::new();
    if let Some(a) = &arch {
        let prefix = format!("{a}.");
        for (k, v) in &g.metadata {
            if let Some(rest) = k.strip_prefix(&prefix) {
                hyper.insert(rest.to_string(), to_json(v));
            }
        }
    }
    let tensors = g
        .tensors
        .iter()
        .map(|t| TensorSummary {
            name: t.name.clone(),
            shape: t.dims.clone(),
            dtype: match t.ty.ggml() {
                Some(ty) => ty.name().to_string(),
                None => t.ty.to_string(),
            },
            params: t.n_elements,
            bytes: t.n_bytes,
        })
        .collect();
    finish(ModelSummary {
        path: g.path().display().to_string(),
        container: "gguf".into(),
        gguf_version: Some(g.version),
        architecture: arch,
        name: g.get("general.name").and_then(Value::as_str).map(str::to_owned),
        hyperparameters: hyper,
        tokenizer: g.get("tokenizer.ggml.model").and_then(Value::as_str).map(str::to_owned),
        vocab_size: g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(<[Value]>::len),
        tensors,
        unknown_type_tensors: vec![],
        params: 0,
        tensor_bytes: 0,
        bpw: 0.0,
        by_type: BTreeMap::new(),
        file_size: g.file_size(),
    })
}

/// Summarises an open safetensors folder.
pub fn summarize_safetensors(m: &SafetensorsModel) -> ModelSummary {
    let hyper = m
        .config
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_number() || v.is_boolean() || v.is_string())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let tok_path = m.dir.join("tokenizer.json");
    let (tokenizer, vocab_size) = std::fs::read_to_string(&tok_path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|j| {
            let model = &j["model"];
            let kind = model["type"].as_str().map(|s| s.to_lowercase());
            let n = model["vocab"].as_object().map(|v| v.len()).or_else(|| model["vocab"].as_array().map(|v| v.len()));
            (kind, n)
        })
        .unwrap_or((None, None));
    let tensors = m
        .tensors
        .values()
        .map(|t| {
            let params: u64 = t.shape.iter().map(|&d| d as u64).product();
            TensorSummary {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                dtype: format!("{:?}", t.dtype),
                params,
                bytes: Some(params * t.dtype.size() as u64),
            }
        })
        .collect();
    finish(ModelSummary {
        path: m.dir.display().to_string(),
        container: "safetensors".into(),
        gguf_version: None,
        architecture: m.architecture().map(str::to_owned),
        name: m.config.get("_name_or_path").and_then(|v| v.as_str()).map(str::to_owned),
        hyperparameters: hyper,
        tokenizer,
        vocab_size: vocab_size.or_else(|| m.config_usize("vocab_size")),
        tensors,
        unknown_type_tensors: vec![],
        params: 0,
        tensor_bytes: 0,
        bpw: 0.0,
        by_type: BTreeMap::new(),
        file_size: m.total_size(),
    })
}

/// Opens `path` (a GGUF file or a safetensors folder/file) and summarises it.
pub fn summarize(path: &Path) -> Result<ModelSummary> {
    if path.is_dir() {
        return Ok(summarize_safetensors(&SafetensorsModel::open(path)?));
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(summarize_safetensors(&SafetensorsModel::open_file(path)?));
    }
    Ok(summarize_gguf(&GgufFile::open(path)?))
}
