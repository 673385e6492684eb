//! One tokenizer type for every model: Hugging Face `tokenizer.json` files load directly
//! into the `tokenizers` crate, and the vocabularies embedded in GGUF files (GPT-2-style
//! byte-level BPE, SentencePiece/llama with scores and byte fallback) are converted into
//! an equivalent `tokenizers::Tokenizer`, so token ids match llama.cpp's.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// Which family of tokenizer a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen…).
    ByteLevelBpe,
    /// SentencePiece-style BPE with scores and byte fallback (Llama 2, Gemma…).
    SentencePiece,
    /// Anything loaded from a `tokenizer.json` (WordPiece for BERT, …).
    HuggingFace,
}

/// A model's tokenizer plus the special-token facts evaluation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The family.
    pub kind: TokenizerKind,
    /// Beginning-of-sequence token, if any.
    pub bos: Option<u32>,
    /// End-of-sequence token, if any.
    pub eos: Option<u32>,
    /// Whether the model expects BOS in front of a sequence.
    pub add_bos: bool,
    /// Vocabulary size (ids are below this).
    pub vocab_size: usize,
    /// A hash of what defines the tokenizer (its GGUF metadata or `tokenizer.json`), so
    /// a result computed with it can be remembered ([`Tokenizer::fingerprint`]).
    fingerprint: u64,
}

/// Feeds formatted text to a hasher without building the string.
struct HashWriter<'a>(&'a mut std::collections::hash_map::DefaultHasher);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        std::hash::Hasher::write(self.0, s.as_bytes());
        Ok(())
    }
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let v = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format(g.path(), format!("missing tokenizer metadata '{key}'")))?;
    v.iter().map(|x| x.as_str().ok_or_else(|| Error::format(g.path(), format!("'{key}' holds a non-string")))).collect()
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot build the tokenizer: {e}"))
}

/// The regular expression llama.cpp uses for a GGUF `tokenizer.ggml.pre` value, when it
/// is not plain GPT-2 (`None` = GPT-2's, which `ByteLevel` applies itself).
fn pre_tokenizer_for(pre: &str) -> Option<Option<(&'static str, bool)>> {
    // (regex, split digits individually first)
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => None,
        "smollm" | "starcoder" | "refact" | "codeshell" => Some(("", true)),
        "llama-bpe" | "llama3" | "llama-v3" => Some((
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            false,
        )),
        "qwen2" => Some((
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            false,
        )),
        _ => return None,
    })
}

impl Tokenizer {
    /// Builds the tokenizer embedded in a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let path = g.path();
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format(path, "no tokenizer in the file (tokenizer.ggml.model missing)"))?;
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let add_bos_meta = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool);
        let add_space_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool);
        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let (inner, kind, add_bos_default) = match model {
            "gpt2" => {
                let merges: Vec<(String, String)> = string_array(g, "tokenizer.ggml.merges")?
                    .iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| Error::format(path, format!("merge {m:?} is not two tokens")))
                    })
                    .collect::<Result<_>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
                    .build()
                    .map_err(|e| tok_err(path, e))?;
                let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
                let split = pre_tokenizer_for(pre)
                    .ok_or_else(|| Error::unsupported(path, format!("BPE pre-tokenizer '{pre}'")))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let pre_tok: PreTokenizerWrapper = match split {
                    None => ByteLevel::new(false, true, true).into(),
                    Some(("", digits)) => {
                        let mut v: Vec<PreTokenizerWrapper> = Vec::new();
                        if digits {
                            v.push(Digits::new(true).into());
                        }
                        v.push(ByteLevel::new(false, true, true).into());
                        PreSequence::new(v).into()
                    }
                    Some((re, _)) => {
                        let split =
                            Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                                .map_err(|e| tok_err(path, e))?;
                        PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
                    }
                };
                t.with_pre_tokenizer(Some(pre_tok));
                t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
                (t, TokenizerKind::ByteLevelBpe, false)
            }
            "llama" => {
                let scores: Vec<f32> = g
                    .get("tokenizer.ggml.scores")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Error::format(path, "SentencePiece vocabulary without tokenizer.ggml.scores"))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect();
                if scores.len() != tokens.len() {
                    return Err(Error::format(path, format!("{} scores for {} tokens", scores.len(), tokens.len())));
                }
                let merges = merges_from_scores(&tokens, &scores, &vocab);
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
                    .byte_fallback(true)
                    .build()
                    .map_err(|e| tok_err(path, e))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let mut norms: Vec<NormalizerWrapper> = Vec::new();
                if add_space_prefix.unwrap_or(true) {
                    norms.push(Prepend::new("▁".into()).into());
                }
                norms.push(Replace::new(" ", "▁").map_err(|e| tok_err(path, e))?.into());
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms))).map_err(|e| tok_err(path, e))?;
                let decoder = DecoderSequence::new(vec![
                    tokenizers::decoders::DecoderWrapper::Replace(
                        Replace::new("▁", " ").map_err(|e| tok_err(path, e))?,
                    ),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ]);
                t.with_decoder(Some(decoder));
                (t, TokenizerKind::SentencePiece, true)
            }
            other => return Err(Error::unsupported(path, format!("tokenizer model '{other}'"))),
        };
        let mut inner = inner;
        // llama.cpp splits user-defined tokens (GGUF token type 4: e.g. Gemma's "\n" and
        // runs of spaces) out of the raw text before the model runs, longest first, even
        // when special tokens are not parsed. Added tokens do the same in `tokenizers`.
        if let Some(types) = g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            let user_defined: Vec<tokenizers::AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64() == Some(4))
                .map(|(_, text)| tokenizers::AddedToken::from(text.to_string(), false).normalized(false))
                .collect();
            inner.add_tokens(user_defined).map_err(|e| tok_err(path, e))?;
        }
        // Every `tokenizer.*` entry, as it is in the file (the same entries give the same
        // tokenizer).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (key, value) in g.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
            use std::fmt::Write;
            std::hash::Hasher::write(&mut h, key.as_bytes());
            write!(HashWriter(&mut h), "{value:?}").expect("hashing cannot fail");
        }
        Ok(Tokenizer {
            inner,
            kind,
            bos,
            eos,
            add_bos: add_bos_meta.unwrap_or(add_bos_default) && bos.is_some(),
            vocab_size: tokens.len(),
            fingerprint: std::hash::Hasher::finish(&h),
        })
    }

    /// The tokenizer as Hugging Face `tokenizer.json` text (for exporting a GGUF model's
    /// vocabulary to a model folder).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Usage(format!("cannot serialise the tokenizer: {e}")))
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        if !path.exists() {
            return Err(Error::format(path, "tokenizer.json is missing; the model folder needs one"));
        }
        let json = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&json).map_err(|e| tok_err(path, e))?;
        let find = |s: &str| inner.token_to_id(s);
        let bos = find("[CLS]").or_else(|| find("<s>"));
        let eos = find("[SEP]").or_else(|| find("</s>"));
        let vocab_size = inner.get_vocab_size(true);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hasher::write(&mut h, &json);
        let fingerprint = std::hash::Hasher::finish(&h);
        Ok(Tokenizer { inner, kind: TokenizerKind::HuggingFace, bos, eos, add_bos: false, vocab_size, fingerprint })
    }

    /// Token ids of `text`. `add_special` adds what the model expects around a sequence
    /// (BOS for LLMs; [CLS]/[SEP] for BERT). Special-token text inside `text` is not
    /// parsed as special tokens (as `llama-perplexity` does).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special && self.kind == TokenizerKind::HuggingFace)
            .map_err(|e| Error::Usage(format!("tokenization failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos && self.kind != TokenizerKind::HuggingFace {
            ids.insert(0, self.bos.expect("add_bos implies bos"));
        }
        Ok(ids)
    }

    /// Token ids plus attention mask and type ids, for encoders (BERT).
    pub fn encode_for_encoder(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self.inner.encode_fast(text, true).map_err(|e| Error::Usage(format!("tokenization failed: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Usage(format!("detokenization failed: {e}")))
    }

    /// A hash of what defines this tokenizer: equal for two tokenizers built from the same
    /// metadata (or `tokenizer.json`) in one process, so equal texts give equal tokens.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The text of one token as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// SentencePiece BPE merges recovered from scores: every split of a token into two
/// tokens is a merge, ranked by the merged token's score (highest first), which is how
/// llama.cpp's SPM tokenizer picks the next bigram to merge.
fn merges_from_scores(tokens: &[&str], scores: &[f32], vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let chars: Vec<usize> = tok.char_indices().map(|(i, _)| i).skip(1).collect();
        for &split in &chars {
            let (a, b) = tok.split_at(split);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                merges.push((scores[id], id as u32, ia, ib));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges.into_iter().map(|(_, _, a, b)| (tokens[a as usize].to_string(), tokens[b as usize].to_string())).collect()
}
