//! A reference model's output distributions saved once and reused (`lowbit eval
//! --save-logits`), so comparing many quantized files against one source runs the source
//! only once. Like llama.cpp's `--kl-divergence-base` files it stores every scored
//! token's log-probabilities as 16-bit codes; lowbit's layout is its own:
//!
//! - magic `LBLOGIT1`, u32 length of a JSON header, the header ([`LogitsHeader`]: what
//!   was evaluated, so a mismatching text or context is refused), then one record per
//!   scored token:
//! - u32 argmax token, f32 negative log-likelihood of the actual next token (both exact),
//!   f32 floor `m`, then `vocab` u16 codes: log p = m·(1 − code/65535), i.e. the range
//!   [m, 0] in 65535 steps, with m the row's smallest log-probability but at least
//!   [`LOG_PROB_FLOOR`].
//!
//! Decoding renormalises each row, so the stored distribution sums to one; the
//! quantization error of a log-probability is at most m/131070 (≤ 2.3·10⁻⁴ nats), which
//! moves a mean KL divergence by far less than its standard error.
//!
//! llama.cpp's `--kl-divergence-base` files are read and written too
//! ([`LogitsFormat::LlamaCpp`], tools/perplexity/perplexity.cpp): magic `_logits_`, i32
//! n_ctx, n_vocab, n_chunk, the n_chunk·n_ctx evaluated tokens (i32, before BOS is put
//! first in each chunk), then per scored token `2·⌈n_vocab/2⌉ + 4` u16: two f32 (scale,
//! min_log_prob) and one code per token, log p = scale·code + min_log_prob, covering the
//! 16 nats below the row's largest logit. As llama.cpp does, a KL sum over such a row
//! skips tokens at or below log p = −16, and the row is not renormalised.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File magic and version.
const MAGIC: &[u8; 8] = b"LBLOGIT1";

/// llama.cpp's magic.
const LLAMA_MAGIC: &[u8; 8] = b"_logits_";

/// How saved distributions are laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFormat {
    /// lowbit's own (a JSON header naming what was evaluated; 30 nats of range).
    Lowbit,
    /// llama.cpp's `--kl-divergence-base` file.
    LlamaCpp,
}

/// llama.cpp skips base log-probabilities at or below this in its KL sum (and its codes
/// cannot represent less than 16 nats below the top).
const LLAMA_LOG_PROB_CUT: f32 = -16.0;

impl LogitsFormat {
    /// Bytes of one record for a vocabulary of `vocab`.
    pub fn record_bytes(self, vocab: usize) -> usize {
        match self {
            LogitsFormat::Lowbit => 12 + 2 * vocab,
            LogitsFormat::LlamaCpp => 2 * (2 * vocab.div_ceil(2) + 4),
        }
    }

    /// The bytes a file starts with. `tokens` are the evaluated chunks' tokens as
    /// tokenised (llama.cpp's files store them; lowbit's store their hash in `header`).
    pub fn head_bytes(self, header: &LogitsHeader, tokens: &[u32]) -> Vec<u8> {
        match self {
            LogitsFormat::Lowbit => header_bytes(header),
            LogitsFormat::LlamaCpp => {
                let mut out = LLAMA_MAGIC.to_vec();
                for v in [header.ctx, header.vocab, header.chunks] {
                    out.extend_from_slice(&(v as i32).to_le_bytes());
                }
                for t in &tokens[..header.ctx * header.chunks] {
                    out.extend_from_slice(&(*t as i32).to_le_bytes());
                }
                out
            }
        }
    }

    /// Encodes one row of log-probabilities (`lp`, natural log, normalised) into `out`.
    pub fn encode_row(self, lp: &[f64], argmax: usize, target_nll: f64, out: &mut Vec<u8>) {
        match self {
            LogitsFormat::Lowbit => encode_lowbit(lp, argmax, target_nll, out),
            LogitsFormat::LlamaCpp => encode_llama(lp, out),
        }
    }

    /// Decodes one record into `lp`; `target` is the token that followed (llama.cpp's
    /// records do not store its likelihood separately).
    pub fn decode_row(self, rec: &[u8], target: usize, lp: &mut [f64]) -> SavedRow {
        match self {
            LogitsFormat::Lowbit => decode_lowbit(rec, lp),
            LogitsFormat::LlamaCpp => decode_llama(rec, target, lp),
        }
    }
}

/// llama.cpp's record: its `log_softmax` in perplexity.cpp, from log-probabilities
/// (a row's logits minus their log-sum-exp, so differences are the same).
fn encode_llama(lp: &[f64], out: &mut Vec<u8>) {
    let max = lp.iter().map(|&v| v as f32).fold(f32::NEG_INFINITY, f32::max);
    let min = lp.iter().map(|&v| v as f32).fold(f32::INFINITY, f32::min).max(max + LLAMA_LOG_PROB_CUT);
    let scale = (max - min) / 65535.0;
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&min.to_le_bytes());
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for &v in lp {
        let v = v as f32;
        let code = if v > min { (inv * (v - min)).round_ties_even().clamp(0.0, 65535.0) as u16 } else { 0 };
        out.extend_from_slice(&code.to_le_bytes());
    }
    if lp.len() % 2 == 1 {
        out.extend_from_slice(&[0, 0]);
    }
}

fn decode_llama(rec: &[u8], target: usize, lp: &mut [f64]) -> SavedRow {
    let f32_at = |i: usize| f32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
    let (scale, min) = (f32_at(0), f32_at(4));
    let mut argmax = 0;
    let mut best = f32::NEG_INFINITY;
    let mut target_lp = 0.0f32;
    for (i, (v, c)) in lp.iter_mut().zip(rec[8..].chunks_exact(2)).enumerate() {
        let p = scale * u16::from_le_bytes([c[0], c[1]]) as f32 + min;
        if i == 0 || p > best {
            (best, argmax) = (p, i);
        }
        if i == target {
            target_lp = p;
        }
        *v = if p > LLAMA_LOG_PROB_CUT { p as f64 } else { f64::NEG_INFINITY };
    }
    SavedRow { argmax, target_nll: -target_lp as f64 }
}

/// Log-probabilities below this are stored as this (e^-30 ≈ 10⁻¹³: no weight in a KL sum).
pub const LOG_PROB_FLOOR: f64 = -30.0;

/// What the saved logits were computed on; a reuse must match it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitsHeader {
    /// The lowbit version that wrote the file.
    pub lowbit_version: String,
    /// The model whose logits these are (as given on the command line).
    pub model: String,
    /// Vocabulary size (entries per row).
    pub vocab: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks stored.
    pub chunks: usize,
    /// Scored tokens per chunk.
    pub scored_per_chunk: usize,
    /// sha256 of the evaluated token ids (all chunks, as little-endian u32), so that a
    /// different text, tokenizer or BOS handling is detected.
    pub tokens_sha256: String,
}

/// One decoded row: normalised log-probabilities and the exact summary values.
pub struct SavedRow {
    /// Most likely token.
    pub argmax: usize,
    /// −log p(actual next token), exact.
    pub target_nll: f64,
}

/// lowbit's record (see the module header).
fn encode_lowbit(lp: &[f64], argmax: usize, target_nll: f64, out: &mut Vec<u8>) {
    let floor = lp.iter().copied().fold(0.0f64, f64::min).clamp(LOG_PROB_FLOOR, -1e-6);
    out.extend_from_slice(&(argmax as u32).to_le_bytes());
    out.extend_from_slice(&(target_nll as f32).to_le_bytes());
    out.extend_from_slice(&(floor as f32).to_le_bytes());
    let floor = floor as f32 as f64;
    for &v in lp {
        let code = ((1.0 - v.max(floor) / floor) * 65535.0).round().clamp(0.0, 65535.0) as u16;
        out.extend_from_slice(&code.to_le_bytes());
    }
}

/// Decodes one of lowbit's records into `lp` (renormalised log-probabilities).
fn decode_lowbit(rec: &[u8], lp: &mut [f64]) -> SavedRow {
    let u32_at = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
    let argmax = u32_at(0) as usize;
    let target_nll = f32::from_bits(u32_at(4)) as f64;
    let floor = f32::from_bits(u32_at(8)) as f64;
    for (v, c) in lp.iter_mut().zip(rec[12..].chunks_exact(2)) {
        let code = u16::from_le_bytes([c[0], c[1]]) as f64;
        *v = floor * (1.0 - code / 65535.0);
    }
    let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + lp.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    lp.iter_mut().for_each(|v| *v -= lse);
    SavedRow { argmax, target_nll }
}

/// The bytes a saved-logits file starts with: magic, header length, JSON header.
pub fn header_bytes(header: &LogitsHeader) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("header serialises");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Streams records into a new file, written atomically (temporary file, then rename).
pub struct LogitsWriter {
    out: Option<BufWriter<tempfile::NamedTempFile>>,
    target: PathBuf,
}

impl LogitsWriter {
    /// Starts `path` with `head` ([`LogitsFormat::head_bytes`]).
    pub fn create(path: &Path, head: &[u8]) -> Result<LogitsWriter> {
        let tmp = crate::atomic::temp_beside(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        out.write_all(head).map_err(|e| Error::io(path, e))?;
        Ok(LogitsWriter { out: Some(out), target: path.to_path_buf() })
    }

    /// Appends one row encoded by [`LogitsFormat::encode_row`].
    pub fn push_encoded(&mut self, record: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer is open until finish");
        out.write_all(record).map_err(|e| Error::io(&self.target, e))
    }

    /// Flushes, syncs and renames into place.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().expect("finish is called once");
        let tmp = out.into_inner().map_err(|e| Error::io(&self.target, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&self.target, e))?;
        tmp.persist(&self.target).map_err(|e| Error::io(&self.target, e.error))?;
        Ok(())
    }
}

/// Reads records back in order.
pub struct LogitsReader {
    input: BufReader<File>,
    path: PathBuf,
    /// What the file holds (for llama.cpp's files: its sizes; no version, name or hash).
    pub header: LogitsHeader,
    /// How the records are laid out.
    pub format: LogitsFormat,
    /// The evaluated tokens, for llama.cpp's files (which store them).
    pub tokens: Option<Vec<u32>>,
    rec: Vec<u8>,
}

impl LogitsReader {
    /// Whether `path` starts with lowbit's or llama.cpp's saved-logits magic (so
    /// `--reference` can take either a model or a saved-logits file).
    pub fn is_logits_file(path: &Path) -> bool {
        let mut magic = [0u8; 8];
        File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
            && (&magic == MAGIC || &magic == LLAMA_MAGIC)
    }

    /// Opens `path` (either format) and checks its header and length.
    pub fn open(path: &Path) -> Result<LogitsReader> {
        let bad = |what: String| Error::Format { path: path.to_path_buf(), what };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(|_| bad("too short for a saved-logits file".into()))?;
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let (header, format, tokens, head_len) = if &head[..8] == MAGIC {
            let n = u32_at(&head, 8) as usize;
            if n as u64 > len {
                return Err(bad(format!("header length {n} exceeds the file")));
            }
            let mut json = vec![0u8; n];
            input.read_exact(&mut json).map_err(|_| bad("truncated header".into()))?;
            let header: LogitsHeader =
                serde_json::from_slice(&json).map_err(|e| bad(format!("unreadable header: {e}")))?;
            (header, LogitsFormat::Lowbit, None, 12 + n as u64)
        } else if &head[..8] == LLAMA_MAGIC {
            let mut rest = [0u8; 8];
            input.read_exact(&mut rest).map_err(|_| bad("truncated header".into()))?;
            let (ctx, vocab, chunks) = (u32_at(&head, 8), u32_at(&rest, 0), u32_at(&rest, 4));
            // i32 fields: a negative or absurd value is a damaged file, not an allocation.
            if !(8..=1 << 24).contains(&ctx) || !(1..=1 << 24).contains(&vocab) || chunks > 1 << 24 {
                return Err(bad(format!("implausible header: n_ctx {ctx}, n_vocab {vocab}, n_chunk {chunks}")));
            }
            let n_tokens = ctx as u64 * chunks as u64;
            if 20 + 4 * n_tokens > len {
                return Err(bad(format!("{len} bytes, too short for {chunks} chunks of {ctx} tokens (truncated?)")));
            }
            let mut raw = vec![0u8; 4 * n_tokens as usize];
            input.read_exact(&mut raw).map_err(|_| bad("truncated token list".into()))?;
            let tokens: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect();
            if let Some(t) = tokens.iter().find(|&&t| t >= vocab) {
                return Err(bad(format!("token id {t} is outside the vocabulary of {vocab}")));
            }
            let (ctx, vocab, chunks) = (ctx as usize, vocab as usize, chunks as usize);
            let header = LogitsHeader {
                lowbit_version: String::new(),
                model: "(llama.cpp --kl-divergence-base file)".into(),
                vocab,
                ctx,
                chunks,
                scored_per_chunk: ctx - 1 - ctx / 2,
                tokens_sha256: String::new(),
            };
            (header, LogitsFormat::LlamaCpp, Some(tokens), 20 + 4 * n_tokens)
        } else {
            return Err(bad("not a saved-logits file (neither lowbit's nor llama.cpp's magic)".into()));
        };
        let rec_bytes = format.record_bytes(header.vocab);
        let need = head_len + (header.chunks * header.scored_per_chunk) as u64 * rec_bytes as u64;
        if len != need {
            return Err(bad(format!("{len} bytes, expected {need} for {} chunks (truncated?)", header.chunks)));
        }
        Ok(LogitsReader { input, path: path.to_path_buf(), header, format, tokens, rec: vec![0u8; rec_bytes] })
    }

    /// Reads the next row into `lp`; `target` is the token that followed.
    pub fn next_row(&mut self, target: usize, lp: &mut [f64]) -> Result<SavedRow> {
        self.input.read_exact(&mut self.rec).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.format.decode_row(&self.rec, target, lp))
    }

    /// Reads the next `n` records undecoded into `out` (each
    /// [`LogitsFormat::record_bytes`] long), so the caller can decode them in parallel.
    pub fn next_records(&mut self, n: usize, out: &mut Vec<u8>) -> Result<()> {
        out.resize(n * self.rec.len(), 0);
        self.input.read_exact(out).map_err(|e| Error::io(&self.path, e))
    }

    /// Skips the next `n` records (a resumed evaluation's finished chunks).
    pub fn skip_records(&mut self, n: usize) -> Result<()> {
        let bytes = (n * self.rec.len()) as i64;
        self.input.seek_relative(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step_and_stay_normalised() {
        let logits: Vec<f64> = (0..1000).map(|i| ((i * 7919) % 1000) as f64 / 40.0 - 10.0).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let lp: Vec<f64> = logits.iter().map(|v| v - lse).collect();
        let mut rec = Vec::new();
        LogitsFormat::Lowbit.encode_row(&lp, 3, 1.25, &mut rec);
        assert_eq!(rec.len(), LogitsFormat::Lowbit.record_bytes(lp.len()));
        let mut back = vec![0.0; lp.len()];
        let row = LogitsFormat::Lowbit.decode_row(&rec, 0, &mut back);
        assert_eq!((row.argmax, row.target_nll), (3, 1.25));
        let floor = lp.iter().copied().fold(0.0, f64::min).max(LOG_PROB_FLOOR);
        // Half a step per value, plus the renormalisation shift (itself under half a step).
        for (a, b) in lp.iter().zip(&back) {
            if *a > floor {
                assert!((a - b).abs() <= -floor / 65535.0 + 1e-9, "{a} vs {b}");
            }
        }
        let total: f64 = back.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_truncated_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.logits");
        let header = LogitsHeader {
            lowbit_version: "test".into(),
            model: "m".into(),
            vocab: 4,
            ctx: 8,
            chunks: 1,
            scored_per_chunk: 3,
            tokens_sha256: "x".into(),
        };
        for format in [LogitsFormat::Lowbit, LogitsFormat::LlamaCpp] {
            let tokens = [1u32, 2, 3, 0, 1, 2, 3, 0];
            let mut w = LogitsWriter::create(&path, &format.head_bytes(&header, &tokens)).unwrap();
            for _ in 0..3 {
                let mut rec = Vec::new();
                format.encode_row(&[-0.1, -2.0, -3.0, -4.0], 0, 0.1, &mut rec);
                w.push_encoded(&rec).unwrap();
            }
            w.finish().unwrap();
            assert!(LogitsReader::is_logits_file(&path));
            let mut r = LogitsReader::open(&path).unwrap();
            assert_eq!(r.format, format);
            assert_eq!((r.header.vocab, r.header.ctx, r.header.chunks, r.header.scored_per_chunk), (4, 8, 1, 3));
            assert_eq!(r.tokens.is_some(), format == LogitsFormat::LlamaCpp);
            let mut lp = [0.0; 4];
            assert_eq!(r.next_row(0, &mut lp).unwrap().argmax, 0);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
            let err = LogitsReader::open(&path).err().expect("truncated file refused").to_string();
            assert!(err.contains("ref.logits") && err.contains("truncated"), "{err}");
        }
    }

    #[test]
    fn llama_cpp_rows_keep_sixteen_nats_at_quarter_millinat_steps() {
        // An odd vocabulary exercises the padding code.
        let logits: Vec<f64> = (0..1001).map(|i| ((i * 7919) % 1001) as f64 / 30.0 - 20.0).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let lp: Vec<f64> = logits.iter().map(|v| v - lse).collect();
        let f = LogitsFormat::LlamaCpp;
        let mut rec = Vec::new();
        f.encode_row(&lp, 0, 0.0, &mut rec);
        assert_eq!(rec.len(), f.record_bytes(lp.len()));
        let mut back = vec![0.0; lp.len()];
        let row = f.decode_row(&rec, 17, &mut back);
        let top = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let step = 16.0 / 65535.0;
        assert!((row.target_nll + lp[17]).abs() <= step || lp[17] < top - 16.0);
        assert_eq!(lp[row.argmax], top);
        for (a, b) in lp.iter().zip(&back) {
            if *a > top - 16.0 + step && *a > -16.0 + step {
                assert!((a - b).abs() <= step / 2.0 + 1e-5, "{a} vs {b}");
            } else if *a <= -16.0 - step {
                assert_eq!(*b, f64::NEG_INFINITY);
            }
        }
    }
}
