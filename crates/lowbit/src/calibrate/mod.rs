//! Calibration statistics: the importance matrix (per-column mean of squared inputs of
//! every linear layer), computed by running a text through the model, and read from or
//! written to llama.cpp's imatrix files so users can bring their own or hand lowbit's to
//! `llama-quantize`.
//!
//! Formats (as llama.cpp's `imatrix-loader.cpp` reads them):
//! - GGUF: `general.type = imatrix`, `imatrix.datasets` (strings), `imatrix.chunk_count`,
//!   `imatrix.chunk_size` (u32), and per weight two F32 tensors, `<name>.in_sum2` (raw
//!   Σx² per column) and `<name>.counts` (rows summed).
//! - legacy `.dat`: i32 entry count; per entry i32 name length, name, i32 ncall, i32 nval,
//!   nval f32 values (mean of squares × ncall); then optionally i32 chunk count, i32
//!   length and the dataset name.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::format::GgmlType;
use crate::gguf::{GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use crate::model::LoadedLm;
use hidden::HiddenStates;

mod blockwise;
pub mod budget;
pub mod floats;
pub mod hidden;
pub mod record;
pub mod self_text;
pub mod stats;

pub use blockwise::{write_stats_blockwise, BlockwiseSummary};
pub use stats::{shared_input_key, CalibrationStats, Hessian};

/// One weight's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// Σ x² per input column (summed over `count` rows).
    pub sums: Vec<f32>,
    /// Rows summed.
    pub count: f32,
}

/// An importance matrix for a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// Entries by weight name (`blk.0.attn_q.weight`, …).
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The texts it was computed on.
    pub datasets: Vec<String>,
    /// Chunks processed.
    pub chunk_count: u32,
    /// Tokens per chunk.
    pub chunk_size: u32,
}

impl Imatrix {
    /// Per-column importances by weight name (mean of squares), as llama-quantize derives
    /// them; these feed `QuantizeOptions::importance`.
    pub fn importance(&self) -> std::collections::HashMap<String, Vec<f32>> {
        self.entries
            .iter()
            .map(|(k, e)| {
                let v =
                    if e.count > 0.0 { e.sums.iter().map(|s| s / e.count).collect() } else { vec![1.0; e.sums.len()] };
                (k.clone(), v)
            })
            .collect()
    }

    /// Reads a GGUF or legacy `.dat` imatrix.
    pub fn read(path: &Path) -> Result<Imatrix> {
        let head = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if head.starts_with(b"GGUF") {
            Self::read_gguf(path)
        } else {
            Self::read_legacy(path, &head)
        }
    }

    fn read_gguf(path: &Path) -> Result<Imatrix> {
        let g = GgufFile::open(path)?;
        let u = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let datasets = g
            .get("imatrix.datasets")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut m = Imatrix {
            datasets,
            chunk_count: u("imatrix.chunk_count").unwrap_or(0),
            chunk_size: u("imatrix.chunk_size").unwrap_or(0),
            ..Default::default()
        };
        for t in &g.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else { continue };
            let counts_name = format!("{name}.counts");
            if g.tensor_info(&counts_name).is_none() {
                return Err(Error::tensor(path, &t.name, "has no matching .counts tensor"));
            }
            let sums = g.dequantize(&t.name)?;
            let counts = g.dequantize(&counts_name)?;
            if counts.len() != 1 {
                return Err(Error::tensor(path, &counts_name, "per-expert counts (MoE) are not supported yet"));
            }
            m.entries.insert(name.to_string(), ImatrixEntry { sums, count: counts[0] });
        }
        if m.entries.is_empty() {
            return Err(Error::format(path, "no '<name>.in_sum2' tensors: not an imatrix file"));
        }
        Ok(m)
    }

    fn read_legacy(path: &Path, b: &[u8]) -> Result<Imatrix> {
        let bad = |what: &str| Error::format(path, format!("not a llama.cpp imatrix (legacy .dat): {what}"));
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize| -> Result<i32> {
            let v = b.get(*pos..*pos + 4).ok_or_else(|| bad("truncated"))?;
            *pos += 4;
            Ok(i32::from_le_bytes(v.try_into().expect("4 bytes")))
        };
        let n = i32_at(&mut pos)?;
        if n < 1 || n as usize > b.len() / 12 {
            return Err(bad(&format!("entry count {n}")));
        }
        let mut m = Imatrix::default();
        for _ in 0..n {
            let len = i32_at(&mut pos)?;
            if !(1..=4096).contains(&len) {
                return Err(bad(&format!("name length {len}")));
            }
            let name = b.get(pos..pos + len as usize).ok_or_else(|| bad("truncated name"))?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
            pos += len as usize;
            let ncall = i32_at(&mut pos)?;
            let nval = i32_at(&mut pos)?;
            if nval < 1 || (nval as usize) > (b.len() - pos) / 4 {
                return Err(bad(&format!("entry '{name}' has {nval} values")));
            }
            let vals: Vec<f32> = b[pos..pos + 4 * nval as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            pos += 4 * nval as usize;
            // Legacy values are mean-of-squares × ncall: keep them as sums over ncall rows.
            m.entries.insert(name, ImatrixEntry { sums: vals, count: ncall.max(0) as f32 });
        }
        if pos + 4 <= b.len() {
            m.chunk_count = i32_at(&mut pos)?.max(0) as u32;
            if let Ok(len) = i32_at(&mut pos) {
                if len > 0 {
                    if let Some(d) = b.get(pos..pos + len as usize) {
                        m.datasets.push(String::from_utf8_lossy(d).to_string());
                    }
                }
            }
        }
        Ok(m)
    }

    /// Writes llama.cpp's GGUF imatrix format (atomically).
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        let md = vec![
            ("general.type".to_string(), Value::String("imatrix".into())),
            (
                "imatrix.datasets".to_string(),
                Value::Array(ValueType::String, self.datasets.iter().map(|d| Value::String(d.clone())).collect()),
            ),
            ("imatrix.chunk_count".to_string(), Value::U32(self.chunk_count)),
            ("imatrix.chunk_size".to_string(), Value::U32(self.chunk_size)),
        ];
        let mut specs = Vec::new();
        for (name, e) in &self.entries {
            specs.push(TensorSpec {
                name: format!("{name}.in_sum2"),
                dims: vec![e.sums.len() as u64, 1],
                ty: GgmlType::F32,
            });
            specs.push(TensorSpec { name: format!("{name}.counts"), dims: vec![1, 1], ty: GgmlType::F32 });
        }
        let mut w = GgufWriter::create(path, &md, specs)?;
        for (name, e) in &self.entries {
            let bytes: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_tensor(&format!("{name}.in_sum2"), &bytes)?;
            w.write_tensor(&format!("{name}.counts"), &e.count.to_le_bytes())?;
        }
        w.finish()?;
        Ok(())
    }

    /// Writes the legacy `.dat` format (atomically).
    pub fn write_legacy(&self, path: &Path) -> Result<()> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(e.count as i32).to_le_bytes());
            b.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            for v in &e.sums {
                b.write_all(&v.to_le_bytes()).expect("vec write");
            }
        }
        b.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let d = self.datasets.first().cloned().unwrap_or_default();
        b.extend_from_slice(&(d.len() as i32).to_le_bytes());
        b.extend_from_slice(d.as_bytes());
        crate::atomic::write_atomic(path, &b)
    }
}

/// Calibration text and the name an importance matrix records for it.
#[derive(Clone, Debug)]
pub struct CalibrationText {
    /// The texts, concatenated.
    pub text: String,
    /// Their file names joined by `+` (`emma.txt+persuasion.txt`).
    pub dataset: String,
}

/// The calibration texts at `paths`, concatenated in order, and a dataset name listing
/// their file names, as the importance matrix records it.
pub fn read_texts(paths: &[std::path::PathBuf]) -> Result<CalibrationText> {
    let mut text = String::new();
    for p in paths {
        let bytes =
            std::fs::read(p).map_err(|e| Error::Usage(format!("{}: cannot read the text: {e}", p.display())))?;
        let t = String::from_utf8(bytes).map_err(|e| {
            Error::Usage(format!(
                "{}: not UTF-8 text ({e}); convert it first, e.g. `iconv -f latin1 -t utf-8`",
                p.display()
            ))
        })?;
        text.push_str(&t);
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().to_string()))
        .collect();
    Ok(CalibrationText { text, dataset: names.join("+") })
}

/// The calibration chunks of `text`: consecutive `ctx`-token pieces from the start (the
/// first token of each replaced by BOS where the model wants one), at most
/// `opts.max_chunks` of them.
pub fn calibration_chunks(lm: &LoadedLm, text: &str, opts: &EvalOptions) -> Result<Vec<Vec<u32>>> {
    let tokens = tokens_of(lm, text)?;
    let ctx = opts.ctx;
    let available = tokens.len() / ctx.max(1);
    if ctx < 8 || available == 0 {
        return Err(Error::Usage(format!(
            "the calibration text has {} tokens, fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let n_chunks = opts.max_chunks.map_or(available, |c| c.min(available));
    Ok((0..n_chunks)
        .map(|c| {
            let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
            if lm.tokenizer.add_bos {
                chunk[0] = lm.tokenizer.bos.expect("add_bos implies bos");
            }
            chunk
        })
        .collect())
}

/// `text`'s tokens (with the model's BOS), remembered for the next call with the same text
/// and tokenizer ([`crate::tokenizer::Tokenizer::fingerprint`]): a quantize run with a size
/// target cuts its chunks from one text three times (the allocation's importances, the
/// sensitivities, sequential GPTQ), and tokenizing the three Austen novels took ~3 s of
/// one thread each time (a third of a 4-chunk `calibrate` run's CPU time, perf). One text
/// is kept (a few MB of ids).
fn tokens_of(lm: &LoadedLm, text: &str) -> Result<Arc<Vec<u32>>> {
    type Key = (u64, u64, usize);
    static LAST: std::sync::Mutex<Option<(Key, Arc<Vec<u32>>)>> = std::sync::Mutex::new(None);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hasher::write(&mut h, text.as_bytes());
    let key = (lm.tokenizer.fingerprint(), std::hash::Hasher::finish(&h), text.len());
    if let Some((k, tokens)) = LAST.lock().expect("token memo lock").as_ref() {
        if *k == key {
            return Ok(tokens.clone());
        }
    }
    let tokens = Arc::new(lm.tokenizer.encode(text, true)?);
    *LAST.lock().expect("token memo lock") = Some((key, tokens.clone()));
    Ok(tokens)
}

/// Runs `text` through `lm` in `ctx`-token chunks (BOS first where the model wants it)
/// and records every block linear layer's input statistics. `progress(done, total)`.
pub fn compute_imatrix(
    lm: &mut LoadedLm,
    text: &str,
    dataset: &str,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Imatrix> {
    Ok(compute_stats(lm, text, dataset, opts, false, progress)?.imatrix)
}

/// The calibration texts at `paths` (concatenated) run through the model at `source`:
/// [`read_texts`], load, [`compute_stats`]. `progress(done, total)` counts chunks.
pub fn calibrate_files(
    source: &Path,
    paths: &[std::path::PathBuf],
    opts: &EvalOptions,
    hessians: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CalibrationStats> {
    let t = read_texts(paths)?;
    let mut lm = crate::model::load_lm(source, crate::model::LoadOptions::default())?;
    compute_stats(&mut lm, &t.text, &t.dataset, opts, hessians, progress)
}

/// As [`compute_imatrix`], and with `hessians` also Σ xxᵀ of every distinct layer input
/// (one per [`shared_input_key`]: the shared input is recorded once). The chunks go
/// through the model a block at a time, as many chunks at once as there are threads
/// ([`record::record_block`]), their inputs recorded in chunk order: the numbers a
/// chunk-by-chunk pass through the whole model gives (measured: no faster than that pass
/// on smollm2's 16 chunks, 13 s either way; it is the one recording path, not a speed-up).
/// Holds every chunk's hidden states (chunks × ctx × hidden floats).
/// `progress(done, total)` counts chunks' worth of work (each block runs every chunk).
pub fn compute_stats(
    lm: &mut LoadedLm,
    text: &str,
    dataset: &str,
    opts: &EvalOptions,
    hessians: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CalibrationStats> {
    let chunks = calibration_chunks(lm, text, opts)?;
    let n_chunks = chunks.len();
    let mut hidden = HiddenStates::in_memory(lm.model.hidden_size(), chunks.iter().map(Vec::len).collect());
    for (i, c) in chunks.iter().enumerate() {
        hidden.set(i, &lm.model.embed(c)?)?;
    }
    let mut stats = CalibrationStats {
        imatrix: Imatrix {
            datasets: vec![dataset.to_string()],
            chunk_count: n_chunks as u32,
            chunk_size: opts.ctx as u32,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut inputs: BTreeMap<String, String> = BTreeMap::new();
    let n_blocks = lm.model.block_count();
    progress(0, n_chunks);
    for il in 0..n_blocks {
        crate::interrupt::check()?;
        // The last block's output is not needed.
        let recording = record::record_block(lm, il, &mut hidden, il + 1 < n_blocks, hessians)?;
        let entries = recording.entries();
        for (name, key) in recording.layers {
            stats.imatrix.entries.insert(name.clone(), entries[&key].clone());
            inputs.insert(name, key);
        }
        if hessians {
            for (key, r) in &recording.recorders {
                let (sums, count) = r.totals();
                let xtx = r.hessian().expect("recorded with a Hessian");
                stats.hessians.insert(key.clone(), Arc::new(Hessian { n: sums.len(), xtx: xtx.into(), count }));
            }
        }
        progress(n_chunks * (il + 1) / n_blocks.max(1), n_chunks);
    }
    if hessians {
        stats.inputs = inputs;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m =
            Imatrix { datasets: vec!["emma.txt".into()], chunk_count: 3, chunk_size: 512, ..Default::default() };
        m.entries.insert("blk.0.attn_q.weight".into(), ImatrixEntry { sums: vec![1.5, 3.0, 0.25, 8.0], count: 1536.0 });
        m.entries.insert("blk.0.ffn_down.weight".into(), ImatrixEntry { sums: vec![2.0; 8], count: 1536.0 });
        m
    }

    #[test]
    fn gguf_and_legacy_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        let (g, d) = (dir.path().join("m.gguf"), dir.path().join("m.dat"));
        m.write_gguf(&g).unwrap();
        m.write_legacy(&d).unwrap();
        assert_eq!(Imatrix::read(&g).unwrap(), m);
        let back = Imatrix::read(&d).unwrap();
        assert_eq!(
            (back.entries.clone(), back.chunk_count, back.datasets.clone()),
            (m.entries.clone(), 3, m.datasets.clone())
        );
        let imp = m.importance();
        assert_eq!(imp["blk.0.attn_q.weight"], vec![1.5 / 1536.0, 3.0 / 1536.0, 0.25 / 1536.0, 8.0 / 1536.0]);
    }

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.dat");
        std::fs::write(&p, b"\x05\x00\x00\x00\xff\xff\xff\x7f").unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("junk.dat") && e.contains("imatrix"), "{e}");
    }
}
