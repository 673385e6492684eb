//! A Hugging Face tokenizer (`tokenizer.json`, `tokenizer_config.json`, and a
//! SentencePiece `tokenizer.model` when there is one) as GGUF `tokenizer.ggml.*` metadata,
//! as llama.cpp's converter writes it (`gguf-py` `vocab.py`, `convert_hf_to_gguf.py`
//! `get_vocab_base` / `_set_vocab_sentencepiece`):
//! - byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen2) → `gpt2`: tokens, merges, and the
//!   pre-tokenizer's llama.cpp name (`smollm`, `llama-bpe`, `qwen2`, `gpt-2`), recognised
//!   from the pre-tokenizer's configuration;
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma) → `llama`: tokens
//!   and scores (from `tokenizer.model`; without it, ranked so that a merge's product
//!   scores above every later merge's, which gives llama.cpp's score-ordered merging the
//!   same result as the merge list).
//!
//! Token types: special added tokens are CONTROL (3), other added tokens USER_DEFINED (4),
//! `<0xXX>` pieces of a byte-fallback vocabulary BYTE (6), the unknown token UNKNOWN (2),
//! ids the vocabulary does not fill up to `vocab_size` become `[PAD{id}]` UNUSED (5).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{Value, ValueType};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// llama.cpp's pre-tokenizer regular expressions, by its name for them.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::format(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The `tokenizer.ggml.*` (and `tokenizer.chat_template`) metadata for the folder `dir`,
/// whose model has `vocab_size` embedding rows.
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?
        .ok_or_else(|| Error::format(&tok_path, "missing: the model folder needs its tokenizer.json"))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let bad = |what: String| Error::format(&tok_path, what);
    let model = tok.get("model").ok_or_else(|| bad("no \"model\" section".into()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(Error::unsupported(
            &tok_path,
            format!("tokenizer model {} (lowbit converts BPE tokenizers)", model.get("type").unwrap_or(&Json::Null)),
        ));
    }
    // Ids → token text: the model's vocabulary, then added tokens.
    let mut texts: Vec<Option<String>> = Vec::new();
    let mut put = |id: usize, text: &str| -> Result<()> {
        if id >= vocab_size.max(1 << 24) {
            return Err(bad(format!("token id {id} is out of range")));
        }
        if texts.len() <= id {
            texts.resize(id + 1, None);
        }
        texts[id] = Some(text.to_string());
        Ok(())
    };
    let vocab = model.get("vocab").and_then(Json::as_object).ok_or_else(|| bad("no model.vocab".into()))?;
    for (text, id) in vocab {
        put(id.as_u64().ok_or_else(|| bad(format!("vocab entry {text:?} has no integer id")))? as usize, text)?;
    }
    let mut types: HashMap<usize, i32> = HashMap::new();
    for added in tok.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let (Some(id), Some(text)) =
            (added.get("id").and_then(Json::as_u64), added.get("content").and_then(Json::as_str))
        else {
            return Err(bad(format!("added token {added} lacks id or content")));
        };
        put(id as usize, text)?;
        let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
        types.insert(id as usize, if special { CONTROL } else { USER_DEFINED });
    }
    if texts.len() > vocab_size {
        return Err(bad(format!(
            "{} tokens, more than the model's vocab_size of {vocab_size} (config.json): tokenizer and model do not match",
            texts.len()
        )));
    }
    let ids: HashMap<&str, usize> =
        texts.iter().enumerate().filter_map(|(i, t)| t.as_deref().map(|t| (t, i))).collect();
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let unk = model.get("unk_token").and_then(Json::as_str).and_then(|u| ids.get(u).copied());
    let mut merges: Vec<String> = Vec::new();
    for m in model.get("merges").and_then(Json::as_array).into_iter().flatten() {
        merges.push(match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) if pair.len() == 2 => {
                format!("{} {}", pair[0].as_str().unwrap_or_default(), pair[1].as_str().unwrap_or_default())
            }
            other => return Err(bad(format!("merge {other} is not two tokens"))),
        });
    }

    let mut md: Vec<(String, Value)> = Vec::new();
    let strings = |v: Vec<String>| Value::Array(ValueType::String, v.into_iter().map(Value::String).collect());
    let token_type = |i: usize, text: &Option<String>| -> i32 {
        match text {
            None => UNUSED,
            Some(_) if types.contains_key(&i) => types[&i],
            Some(_) if Some(i) == unk => UNKNOWN,
            Some(t) if byte_fallback && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') => BYTE,
            Some(_) => NORMAL,
        }
    };
    let all_types: Vec<i32> = (0..vocab_size).map(|i| token_type(i, texts.get(i).unwrap_or(&None))).collect();
    let token_texts: Vec<String> =
        (0..vocab_size).map(|i| texts.get(i).cloned().flatten().unwrap_or_else(|| format!("[PAD{i}]"))).collect();
    let byte_level =
        json_mentions(tok.get("pre_tokenizer"), "ByteLevel") || json_mentions(tok.get("decoder"), "ByteLevel");
    let spm = read_sentencepiece(&dir.join("tokenizer.model"))?;
    if byte_level {
        md.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        let pre = pre_tokenizer_name(tok.get("pre_tokenizer")).ok_or_else(|| {
            Error::unsupported(
                &tok_path,
                "pre-tokenizer (llama.cpp names the ones it implements; lowbit recognises SmolLM's, Llama 3's, Qwen2's and GPT-2's)",
            )
        })?;
        md.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
        md.push(("tokenizer.ggml.tokens".into(), strings(token_texts)));
        md.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, all_types.iter().map(|&t| Value::I32(t)).collect()),
        ));
        md.push(("tokenizer.ggml.merges".into(), strings(merges)));
    } else if byte_fallback || spm.is_some() {
        md.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
        md.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
        let scores = match &spm {
            Some(pieces) => {
                let by_text: HashMap<&str, f32> = pieces.iter().map(|(p, s)| (p.as_str(), *s)).collect();
                token_texts.iter().map(|t| by_text.get(t.as_str()).copied().unwrap_or(0.0)).collect()
            }
            None => scores_from_merges(&token_texts, &merges),
        };
        md.push(("tokenizer.ggml.tokens".into(), strings(token_texts)));
        md.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
        ));
        md.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, all_types.iter().map(|&t| Value::I32(t)).collect()),
        ));
    } else {
        return Err(Error::unsupported(&tok_path, "BPE tokenizer that is neither byte-level nor byte-fallback"));
    }

    // A space put in front of the text: a Prepend("▁") normalizer, or a pre-tokenizer
    // (ByteLevel, Metaspace) told to add one.
    let prefix = json_mentions(tok.get("normalizer"), "Prepend")
        || json_flag(tok.get("pre_tokenizer"), "add_prefix_space")
        || json_flag(tok.get("pre_tokenizer"), "prepend_scheme");
    md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(prefix)));

    // Special tokens and flags from tokenizer_config.json (as gguf-py's SpecialVocab).
    let special = |key: &str| -> Option<u32> {
        let v = config.get(key)?;
        let text = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
        ids.get(text).map(|&i| i as u32)
    };
    for (key, gguf) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(id) = special(key).or_else(|| if key == "unk_token" { unk.map(|u| u as u32) } else { None }) {
            md.push((format!("tokenizer.ggml.{gguf}"), Value::U32(id)));
        }
    }
    let add_bos = config.get("add_bos_token").and_then(Json::as_bool).unwrap_or_else(|| {
        // Without the flag: whether the post-processor puts BOS in front.
        let bos = config.get("bos_token").and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()));
        bos.is_some_and(|b| {
            tok.pointer("/post_processor/single")
                .and_then(Json::as_array)
                .and_then(|s| s.first())
                .is_some_and(|first| first.pointer("/SpecialToken/id").and_then(Json::as_str) == Some(b))
        })
    });
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    if let Some(add_eos) = config.get("add_eos_token").and_then(Json::as_bool) {
        md.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    }
    let template = config
        .get("chat_template")
        .and_then(Json::as_str)
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(md)
}

/// Whether a JSON subtree names `kind` as a component type anywhere.
fn json_mentions(v: Option<&Json>, kind: &str) -> bool {
    match v {
        Some(Json::Object(o)) => {
            o.get("type").and_then(Json::as_str) == Some(kind) || o.values().any(|x| json_mentions(Some(x), kind))
        }
        Some(Json::Array(a)) => a.iter().any(|x| json_mentions(Some(x), kind)),
        _ => false,
    }
}

/// Whether a JSON subtree sets `key` to true (or, for `prepend_scheme`, to "always" or
/// "first") anywhere.
fn json_flag(v: Option<&Json>, key: &str) -> bool {
    match v {
        Some(Json::Object(o)) => {
            matches!(o.get(key), Some(Json::Bool(true)))
                || matches!(o.get(key).and_then(Json::as_str), Some("always" | "first"))
                || o.values().any(|x| json_flag(Some(x), key))
        }
        Some(Json::Array(a)) => a.iter().any(|x| json_flag(Some(x), key)),
        _ => false,
    }
}

/// llama.cpp's name for a byte-level pre-tokenizer configuration, if it is one it knows.
fn pre_tokenizer_name(pre: Option<&Json>) -> Option<&'static str> {
    let pre = pre?;
    let parts: Vec<&Json> = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p.get("type").and_then(Json::as_str)).collect();
    match kinds.as_slice() {
        ["ByteLevel"] => Some("gpt-2"),
        ["Digits", "ByteLevel"] if parts[0].get("individual_digits").and_then(Json::as_bool) == Some(true) => {
            Some("smollm")
        }
        ["Split", "ByteLevel"] => match parts[0].pointer("/pattern/Regex").and_then(Json::as_str) {
            Some(LLAMA3_REGEX) => Some("llama-bpe"),
            Some(QWEN2_REGEX) => Some("qwen2"),
            _ => None,
        },
        _ => None,
    }
}

/// Scores that order merges as the merge list does: the product of merge `r` scores
/// −r; tokens no merge produces score below all of them.
fn scores_from_merges(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges.iter().enumerate() {
        if let Some((a, b)) = m.split_once(' ') {
            rank.entry(format!("{a}{b}")).or_insert(r);
        }
    }
    let floor = merges.len() as f32;
    tokens.iter().map(|t| rank.get(t).map_or(-floor - 1.0, |&r| -(r as f32))).collect()
}

/// The pieces and scores of a SentencePiece model file (`ModelProto`: field 1 repeated
/// `SentencePiece { piece = 1; score = 2; type = 3 }`), if the file exists. Only these
/// fields are read; the protobuf wire format is walked with bounds checks.
fn read_sentencepiece(path: &Path) -> Result<Option<Vec<(String, f32)>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = || Error::format(path, "not a SentencePiece model (malformed protobuf)");
    let mut pieces = Vec::new();
    let mut r = Proto { b: &bytes, pos: 0 };
    while let Some((field, wire)) = r.key().ok_or_else(bad)? {
        if field == 1 && wire == 2 {
            let msg = r.bytes().ok_or_else(bad)?;
            let mut m = Proto { b: msg, pos: 0 };
            let (mut piece, mut score) = (String::new(), 0.0f32);
            while let Some((f, w)) = m.key().ok_or_else(bad)? {
                match (f, w) {
                    (1, 2) => piece = String::from_utf8_lossy(m.bytes().ok_or_else(bad)?).into_owned(),
                    (2, 5) => score = f32::from_le_bytes(m.fixed4().ok_or_else(bad)?),
                    _ => m.skip(w).ok_or_else(bad)?,
                }
            }
            pieces.push((piece, score));
        } else {
            r.skip(wire).ok_or_else(bad)?;
        }
    }
    Ok(Some(pieces))
}

/// A protobuf wire-format reader over a byte slice.
struct Proto<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next (field, wire type), `Some(None)` at the end, `None` when malformed.
    fn key(&mut self) -> Option<Option<(u64, u64)>> {
        if self.pos == self.b.len() {
            return Some(None);
        }
        let k = self.varint()?;
        Some(Some((k >> 3, k & 7)))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Some(s)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn fixed4(&mut self) -> Option<[u8; 4]> {
        self.take(4)?.try_into().ok()
    }

    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => None,
        }
    }
}
