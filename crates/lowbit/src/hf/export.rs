//! The reverse of [`super::open`]: a GGUF model written out as a Hugging Face folder
//! (`config.json`, `model.safetensors` or shards with `model.safetensors.index.json`,
//! `tokenizer.json`, `tokenizer_config.json`, and `tokenizer.model` for SentencePiece
//! vocabularies), with the converter's changes undone (q/k rows back in rotate-half order,
//! Gemma norms stored as w − 1). Used to test the folder path against the GGUF it came
//! from, and by the synthetic-model tool; values are the GGUF's decoded weights.
//!
//! [`ShardedWriter`] streams safetensors shards tensor by tensor (the header is written
//! first from the planned shapes), so a many-GB folder never sits in memory.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::ARCHES;
use crate::error::{Error, Result};
use crate::gguf::{permute_heads, GgufFile, Value};
use crate::safetensors::StDtype;
use crate::tokenizer::Tokenizer;

/// How to write the folder.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Element type of the weights (F32, BF16 or F16; norms follow it too).
    pub dtype: StDtype,
    /// Start a new shard once one holds this many bytes (`None`: one file).
    pub max_shard_bytes: Option<u64>,
}

/// One tensor planned for a safetensors folder.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// Hugging Face name.
    pub name: String,
    /// PyTorch shape (outermost first).
    pub shape: Vec<usize>,
}

/// Writes safetensors shards in a planned order, one tensor at a time.
pub struct ShardedWriter {
    dir: PathBuf,
    dtype: StDtype,
    /// (file name, tensors in it).
    shards: Vec<(String, Vec<PlannedTensor>)>,
    current: Option<(usize, BufWriter<std::fs::File>, usize)>,
}

fn dtype_name(d: StDtype) -> &'static str {
    match d {
        StDtype::F32 => "F32",
        StDtype::F16 => "F16",
        StDtype::BF16 => "BF16",
        StDtype::I64 => "I64",
    }
}

impl ShardedWriter {
    /// Plans the shards for `tensors` (in order) in `dir`, which must exist.
    pub fn new(dir: &Path, tensors: Vec<PlannedTensor>, dtype: StDtype, max_shard_bytes: Option<u64>) -> Self {
        let mut shards: Vec<Vec<PlannedTensor>> = vec![Vec::new()];
        let mut bytes = 0u64;
        for t in tensors {
            let n = (t.shape.iter().product::<usize>() * dtype.size()) as u64;
            if max_shard_bytes.is_some_and(|m| bytes > 0 && bytes + n > m) {
                shards.push(Vec::new());
                bytes = 0;
            }
            bytes += n;
            shards.last_mut().expect("one shard").push(t);
        }
        let count = shards.len();
        let shards = shards
            .into_iter()
            .enumerate()
            .map(|(i, ts)| {
                let name = if count == 1 {
                    "model.safetensors".to_string()
                } else {
                    format!("model-{:05}-of-{count:05}.safetensors", i + 1)
                };
                (name, ts)
            })
            .collect();
        ShardedWriter { dir: dir.to_path_buf(), dtype, shards, current: None }
    }

    /// Writes the next tensor's values (it must be the next planned one).
    pub fn write(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let (shard, pos) = match &self.current {
            Some((s, _, p)) if *p < self.shards[*s].1.len() => (*s, *p),
            Some((s, _, _)) => (*s + 1, 0),
            None => (0, 0),
        };
        if pos == 0 {
            self.finish_shard()?;
            self.start_shard(shard)?;
        }
        let planned = &self.shards[shard].1[pos];
        let path = self.dir.join(&self.shards[shard].0);
        if planned.name != name || planned.shape.iter().product::<usize>() != values.len() {
            return Err(Error::Usage(format!("{}: tensor {name} written out of plan", path.display())));
        }
        let (_, out, p) = self.current.as_mut().expect("a shard is open");
        let bytes: Vec<u8> = match self.dtype {
            StDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StDtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            StDtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            StDtype::I64 => return Err(Error::Usage("I64 is not a weight type".into())),
        };
        out.write_all(&bytes).map_err(|e| Error::io(&path, e))?;
        *p += 1;
        Ok(())
    }

    fn start_shard(&mut self, shard: usize) -> Result<()> {
        let (file, tensors) = &self.shards[shard];
        let path = self.dir.join(file);
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for t in tensors {
            let n = t.shape.iter().product::<usize>() * self.dtype.size();
            header.insert(
                t.name.clone(),
                json!({"dtype": dtype_name(self.dtype), "shape": t.shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut text = serde_json::to_string(&header).expect("header serialises").into_bytes();
        while !(8 + text.len()).is_multiple_of(8) {
            text.push(b' ');
        }
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 22, f);
        out.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&text))
            .map_err(|e| Error::io(&path, e))?;
        self.current = Some((shard, out, 0));
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        if let Some((s, out, _)) = self.current.take() {
            let path = self.dir.join(&self.shards[s].0);
            let f = out.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Closes the last shard and writes the index (for several shards).
    pub fn finish(mut self) -> Result<()> {
        self.finish_shard()?;
        if self.shards.len() > 1 {
            let mut map = serde_json::Map::new();
            let mut total = 0usize;
            for (file, tensors) in &self.shards {
                for t in tensors {
                    map.insert(t.name.clone(), json!(file));
                    total += t.shape.iter().product::<usize>() * self.dtype.size();
                }
            }
            let index = json!({"metadata": {"total_size": total}, "weight_map": map});
            let path = self.dir.join("model.safetensors.index.json");
            std::fs::write(&path, serde_json::to_string_pretty(&index).expect("json"))
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

/// The Hugging Face name of a GGUF tensor name for architecture `arch`.
fn hf_name(block: &[(&str, &str)], gguf: &str) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    match stem {
        "token_embd" => return Some(format!("model.embed_tokens.{kind}")),
        "output_norm" => return Some(format!("model.norm.{kind}")),
        "output" => return Some(format!("lm_head.{kind}")),
        _ => {}
    }
    let (i, inner) = stem.strip_prefix("blk.")?.split_once('.')?;
    let (h, _) = block.iter().find(|(_, g)| *g == inner)?;
    Some(format!("model.layers.{i}.{h}.{kind}"))
}

/// Writes the GGUF model `g` as a new Hugging Face folder `dir`: built in a temporary
/// folder beside it and renamed into place when complete, so an interrupted export leaves
/// no half-written model under the name.
pub fn export(g: &GgufFile, dir: &Path, opts: ExportOptions) -> Result<()> {
    let arch_name = g.architecture().unwrap_or("").to_string();
    if !ARCHES.iter().any(|a| a.gguf == arch_name) {
        return Err(Error::unsupported(g.path(), format!("architecture '{arch_name}' cannot be exported")));
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        return Err(Error::Usage(format!("{}: already exists; give a new folder", dir.display())));
    }
    crate::atomic::check_output(dir)?;
    crate::atomic::remove_stale_temps(dir);
    let tmp = crate::atomic::temp_path(dir);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = write_folder(g, &tmp, opts);
    match written.and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_folder(g: &GgufFile, dir: &Path, opts: ExportOptions) -> Result<()> {
    let arch_name = g.architecture().unwrap_or("").to_string();
    let arch = ARCHES.iter().find(|a| a.gguf == arch_name).expect("checked by export");
    let hp = |k: &str| g.get(&format!("{arch_name}.{k}"));
    let u = |k: &str| hp(k).and_then(Value::as_u64);
    let f = |k: &str| hp(k).and_then(Value::as_f64);
    let n_head = u("attention.head_count").unwrap_or(1) as usize;
    let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head as u64) as usize;
    let d = u("embedding_length").unwrap_or(0) as usize;
    let head_dim = u("attention.key_length").map_or(d / n_head.max(1), |v| v as usize);
    let embd =
        g.tensor_info("token_embd.weight").ok_or_else(|| Error::tensor(g.path(), "token_embd.weight", "missing"))?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0);
    let tied = g.tensor_info("output.weight").is_none();

    let mut planned = Vec::new();
    for t in &g.tensors {
        let name = hf_name(arch.block, &t.name)
            .ok_or_else(|| Error::tensor(g.path(), &t.name, "has no Hugging Face name in this architecture"))?;
        planned.push(PlannedTensor { name, shape: t.dims.iter().rev().map(|&x| x as usize).collect() });
    }
    let mut writer = ShardedWriter::new(dir, planned.clone(), opts.dtype, opts.max_shard_bytes);
    for (t, p) in g.tensors.iter().zip(&planned) {
        let mut v = g.dequantize(&t.name)?;
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        if t.dims.len() == 1 && arch.norm_plus_one && t.name.contains("norm") {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        if arch.permute_qk {
            if t.name.ends_with("attn_q.weight") {
                v = permute_heads(&v, cols, n_head, true);
            } else if t.name.ends_with("attn_k.weight") {
                v = permute_heads(&v, cols, n_head_kv, true);
            }
        }
        crate::interrupt::check()?;
        writer.write(&p.name, &v)?;
        g.release(&t.name);
    }
    writer.finish()?;

    let id_of = |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    let mut config = json!({
        "architectures": [arch.hf[0]],
        "model_type": match arch.gguf { "gemma3" => "gemma3_text", a => a },
        "hidden_size": d,
        "intermediate_size": u("feed_forward_length"),
        "num_hidden_layers": u("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"),
        "max_position_embeddings": u("context_length"),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": match opts.dtype { StDtype::BF16 => "bfloat16", StDtype::F16 => "float16", _ => "float32" },
        "bos_token_id": id_of("bos_token_id"),
        "eos_token_id": id_of("eos_token_id"),
        "_name_or_path": g.get("general.name").and_then(Value::as_str),
    });
    if arch.gguf == "gemma3" {
        config["sliding_window"] = json!(u("attention.sliding_window"));
        config["hidden_activation"] = json!("gelu_pytorch_tanh");
        config["query_pre_attn_scalar"] = json!(head_dim);
        config["rope_local_base_freq"] = json!(10000.0);
    } else {
        config["hidden_act"] = json!("silu");
    }
    write_json(&dir.join("config.json"), &config)?;
    write_tokenizer_files(g, dir)
}

/// Writes the tokenizer of the GGUF model `g` into the folder `dir` as Hugging Face
/// files: `tokenizer.json`, `tokenizer_config.json`, and `tokenizer.model` for a
/// SentencePiece vocabulary.
pub fn write_tokenizer_files(g: &GgufFile, dir: &Path) -> Result<()> {
    let tok = Tokenizer::from_gguf(g)?;
    let id_of = |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    // tokenizer.json: the vocabulary as `tokenizers` builds it, with control tokens
    // registered as special added tokens (as published tokenizers list them).
    let mut tj: serde_json::Value =
        serde_json::from_str(&tok.to_json()?).map_err(|e| Error::Usage(format!("tokenizer JSON: {e}")))?;
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let types: Vec<i64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_f64().map(|x| x as i64)).collect())
        .unwrap_or_default();
    let mut added: Vec<serde_json::Value> = tj["added_tokens"].as_array().cloned().unwrap_or_default();
    added.retain(|a| a["id"].as_u64().is_none_or(|i| types.get(i as usize) != Some(&3)));
    for (i, (&text, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == 3 {
            added.push(json!({"id": i, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true}));
        }
    }
    added.sort_by_key(|a| a["id"].as_u64());
    tj["added_tokens"] = json!(added);
    write_json(&dir.join("tokenizer.json"), &tj)?;
    let text = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).map(|t| json!(t));
    let mut tc = json!({
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(tok.add_bos),
        "bos_token": text(id_of("bos_token_id")),
        "eos_token": text(id_of("eos_token_id")),
        "unk_token": text(id_of("unknown_token_id")),
        "pad_token": text(id_of("padding_token_id")),
    });
    if let Some(e) = g.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool) {
        tc["add_eos_token"] = json!(e);
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
        tc["chat_template"] = json!(t);
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    if let Some(scores) = g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
        write_sentencepiece(&dir.join("tokenizer.model"), &tokens, scores, &types)?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json")).map_err(|e| Error::io(path, e))
}

/// A SentencePiece `ModelProto` holding only the pieces (text, score, type).
fn write_sentencepiece(path: &Path, tokens: &[&str], scores: &[Value], types: &[i64]) -> Result<()> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let mut piece = Vec::new();
        piece.push(0x0a);
        varint(&mut piece, t.len() as u64);
        piece.extend_from_slice(t.as_bytes());
        piece.push(0x15);
        piece.extend_from_slice(&(scores.get(i).and_then(Value::as_f64).unwrap_or(0.0) as f32).to_le_bytes());
        piece.push(0x18);
        varint(&mut piece, types.get(i).copied().unwrap_or(1).max(0) as u64);
        out.push(0x0a);
        varint(&mut out, piece.len() as u64);
        out.extend_from_slice(&piece);
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}
