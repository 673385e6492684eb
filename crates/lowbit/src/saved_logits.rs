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

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File magic and version.
const MAGIC: &[u8; 8] = b"LBLOGIT1";

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

/// Bytes of one record for a vocabulary of `vocab`.
pub fn record_bytes(vocab: usize) -> usize {
    12 + 2 * vocab
}

/// Encodes one row of log-probabilities (`lp`, natural log, normalised) into `out`.
pub fn encode_row(lp: &[f64], argmax: usize, target_nll: f64, out: &mut Vec<u8>) {
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

/// Decodes one record into `lp` (renormalised log-probabilities).
pub fn decode_row(rec: &[u8], lp: &mut [f64]) -> SavedRow {
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
    buf: Vec<u8>,
}

impl LogitsWriter {
    /// Starts `path` with `header`.
    pub fn create(path: &Path, header: &LogitsHeader) -> Result<LogitsWriter> {
        let tmp = crate::atomic::temp_beside(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        out.write_all(&header_bytes(header)).map_err(|e| Error::io(path, e))?;
        Ok(LogitsWriter { out: Some(out), target: path.to_path_buf(), buf: Vec::new() })
    }

    /// Appends one row.
    pub fn push(&mut self, lp: &[f64], argmax: usize, target_nll: f64) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_row(lp, argmax, target_nll, &mut buf);
        let res = self.push_encoded(&buf);
        self.buf = buf;
        res
    }

    /// Appends one row already encoded by [`encode_row`].
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
    /// What the file holds.
    pub header: LogitsHeader,
    rec: Vec<u8>,
}

impl LogitsReader {
    /// Whether `path` starts with the saved-logits magic (so `--reference` can take either
    /// a model or a saved-logits file).
    pub fn is_logits_file(path: &Path) -> bool {
        let mut magic = [0u8; 8];
        File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
    }

    /// Opens `path` and checks its header and length.
    pub fn open(path: &Path) -> Result<LogitsReader> {
        let bad = |what: String| Error::Format { path: path.to_path_buf(), what };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(|_| bad("too short for a saved-logits file".into()))?;
        if &head[..8] != MAGIC {
            return Err(bad("not a lowbit saved-logits file (wrong magic)".into()));
        }
        let n = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
        if n as u64 > len {
            return Err(bad(format!("header length {n} exceeds the file")));
        }
        let mut json = vec![0u8; n];
        input.read_exact(&mut json).map_err(|_| bad("truncated header".into()))?;
        let header: LogitsHeader = serde_json::from_slice(&json).map_err(|e| bad(format!("unreadable header: {e}")))?;
        let need = 12 + n as u64 + (header.chunks * header.scored_per_chunk * record_bytes(header.vocab)) as u64;
        if len != need {
            return Err(bad(format!("{len} bytes, expected {need} for {} chunks (truncated?)", header.chunks)));
        }
        let rec = vec![0u8; record_bytes(header.vocab)];
        Ok(LogitsReader { input, path: path.to_path_buf(), header, rec })
    }

    /// Reads the next row into `lp`.
    pub fn next_row(&mut self, lp: &mut [f64]) -> Result<SavedRow> {
        self.input.read_exact(&mut self.rec).map_err(|e| Error::io(&self.path, e))?;
        Ok(decode_row(&self.rec, lp))
    }

    /// Reads the next `n` records undecoded into `out` (each [`record_bytes`] long), so
    /// the caller can decode them in parallel with [`decode_row`].
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
        encode_row(&lp, 3, 1.25, &mut rec);
        assert_eq!(rec.len(), record_bytes(lp.len()));
        let mut back = vec![0.0; lp.len()];
        let row = decode_row(&rec, &mut back);
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
        let mut w = LogitsWriter::create(&path, &header).unwrap();
        for _ in 0..3 {
            w.push(&[-0.1, -2.0, -3.0, -4.0], 0, 0.1).unwrap();
        }
        w.finish().unwrap();
        assert!(LogitsReader::is_logits_file(&path));
        let mut r = LogitsReader::open(&path).unwrap();
        assert_eq!(r.header, header);
        let mut lp = [0.0; 4];
        assert_eq!(r.next_row(&mut lp).unwrap().argmax, 0);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = LogitsReader::open(&path).err().expect("truncated file refused").to_string();
        assert!(err.contains("ref.logits") && err.contains("truncated"), "{err}");
    }
}
