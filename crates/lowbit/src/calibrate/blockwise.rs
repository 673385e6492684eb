//! The statistics file written block by block: the calibration chunks' hidden states go
//! through one block at a time, that block's input Hessians and importances are recorded
//! and written, and freed before the next block runs. Memory holds the hidden states and
//! one block's statistics, never the whole model's (an 8B model's Hessians are 33 GB).
//!
//! The file is the one [`CalibrationStats::write`] writes (same tensors, same metadata;
//! the tensors are laid out block by block), so [`CalibrationStats::read`] and
//! `quantize --stats` read either. The safetensors header comes first and must give every
//! tensor's offsets, so it is built before any block runs: shapes come from the model and
//! every row count is the calibration token count (every token reaches every block
//! linear), checked after each block. Each block's statistics are the same numbers
//! [`super::compute_stats`] gets (the same rows, summed in the same chunk order).
//! With a memory budget the hidden states may live in a file beside the output
//! ([`super::budget`]); the numbers are the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::budget::{plan_memory, MemoryLimit, MemoryPlan};
use super::hidden::HiddenStates;
use super::record::record_block;
use super::stats::{StatsHeader, STATS_KEY};
use super::{calibration_chunks, shared_input_key, CalibrationText};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::gguf::GgufFile;
use crate::model::LoadedLm;

/// What [`write_stats_blockwise`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockwiseSummary {
    /// Block linear layers with an importance entry.
    pub layers: usize,
    /// Distinct layer inputs with a Hessian.
    pub hessians: usize,
    /// Calibration chunks.
    pub chunks: usize,
    /// Tokens per chunk (the last may be shorter).
    pub ctx: usize,
    /// How memory was used.
    pub memory: MemoryPlan,
}

/// One tensor of the file: name, shape and where its bytes go.
struct Slot {
    name: String,
    shape: Vec<usize>,
    offset: usize,
}

/// Runs `text` through `lm` block by block and writes importances and input Hessians to
/// `path` (atomically) as each block finishes, within `memory`. With `source` (the file
/// `lm` was loaded from, sharing its map), each finished block's weight pages are handed
/// back. `progress(blocks_done, blocks, tokens, plan)`, the memory plan known before the
/// first block.
pub fn write_stats_blockwise(
    lm: &mut LoadedLm,
    source: Option<&GgufFile>,
    text: &CalibrationText,
    opts: &EvalOptions,
    path: &Path,
    memory: MemoryLimit,
    progress: &mut dyn FnMut(usize, usize, usize, &MemoryPlan),
) -> Result<BlockwiseSummary> {
    let chunks = calibration_chunks(lm, &text.text, opts)?;
    let tokens: usize = chunks.iter().map(|c| c.len()).sum();
    let rows: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
    let memory = plan_memory(lm, &rows, memory, false)?;
    let n_blocks = lm.model.block_count();
    // The layout: per block, its inputs' Hessians (first reader's order), then its layers'
    // importances.
    let mut inputs: BTreeMap<String, String> = BTreeMap::new();
    let mut per_block: Vec<(Vec<Slot>, Vec<Slot>)> = Vec::with_capacity(n_blocks);
    let mut offset = 0usize;
    for il in 0..n_blocks {
        let (mut hessians, mut sums): (Vec<Slot>, Vec<Slot>) = (Vec::new(), Vec::new());
        let layers: Vec<(String, usize)> =
            lm.model.block_linears_of(il).iter().map(|l| (l.name.clone(), l.in_features)).collect();
        for (name, n) in &layers {
            let key = shared_input_key(name);
            if !hessians.iter().any(|s: &Slot| s.name == format!("hessian.{key}")) {
                hessians.push(Slot { name: format!("hessian.{key}"), shape: vec![*n, *n], offset });
                offset += 4 * n * n;
            }
            inputs.insert(name.clone(), key);
        }
        for (name, n) in &layers {
            sums.push(Slot { name: format!("in_sum2.{name}"), shape: vec![*n], offset });
            offset += 4 * n;
        }
        per_block.push((hessians, sums));
    }
    let header = StatsHeader {
        version: 1,
        datasets: vec![text.dataset.clone()],
        chunk_count: chunks.len() as u32,
        chunk_size: opts.ctx as u32,
        counts: inputs.keys().map(|w| (w.clone(), tokens as f32)).collect(),
        hessian_counts: inputs.values().map(|k| (k.clone(), tokens as u64)).collect(),
        inputs: inputs.clone(),
    };
    let mut json = serde_json::Map::new();
    let meta = serde_json::json!({ STATS_KEY: serde_json::to_string(&header).expect("serializable") });
    json.insert("__metadata__".into(), meta);
    for slot in per_block.iter().flat_map(|(h, s)| h.iter().chain(s)) {
        let bytes = 4 * slot.shape.iter().product::<usize>();
        let entry = serde_json::json!({ "dtype": "F32", "shape": slot.shape, "data_offsets": [slot.offset, slot.offset + bytes] });
        json.insert(slot.name.clone(), entry);
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(json)).expect("serializable");
    // safetensors pads its header with spaces to a multiple of 8 bytes.
    head.resize(head.len().next_multiple_of(8), b' ');

    let mut tmp = crate::atomic::temp_beside(path)?;
    let io = |e: std::io::Error| Error::io(path, e);
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 22, tmp.as_file_mut());
        out.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&head).map_err(io)?;
        let spill = path.with_file_name(format!(
            ".{}.hidden.tmp",
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let mut hidden = if memory.spill {
            HiddenStates::on_disk(lm.model.hidden_size(), rows, &spill)?
        } else {
            HiddenStates::in_memory(lm.model.hidden_size(), rows)
        };
        for (i, c) in chunks.iter().enumerate() {
            hidden.set(i, &lm.model.embed(c)?)?;
        }
        progress(0, n_blocks, tokens, &memory);
        let mut written = 0usize;
        for (il, (hessian_slots, sum_slots)) in per_block.iter().enumerate() {
            crate::interrupt::check()?;
            let recording = record_block(lm, il, &mut hidden, true, true)?;
            let entries = recording.entries();
            let mut emit = |slot: &Slot, values: &[f32]| -> Result<()> {
                debug_assert_eq!(slot.offset, written);
                for v in values {
                    out.write_all(&v.to_le_bytes()).map_err(io)?;
                }
                written += 4 * values.len();
                Ok(())
            };
            for slot in hessian_slots {
                let key = slot.name.strip_prefix("hessian.").expect("named above");
                check_count(recording.recorders[key].rows(), tokens, key, path)?;
                emit(slot, &recording.recorders[key].hessian().expect("recorded with a Hessian"))?;
            }
            for slot in sum_slots {
                let name = slot.name.strip_prefix("in_sum2.").expect("named above");
                emit(slot, &entries[recording.key(name)].sums)?;
            }
            if let Some(g) = source {
                for (name, _) in &recording.layers {
                    g.release(name);
                }
            }
            progress(il + 1, n_blocks, tokens, &memory);
        }
        out.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(BlockwiseSummary {
        layers: inputs.len(),
        hessians: per_block.iter().map(|(h, _)| h.len()).sum(),
        chunks: chunks.len(),
        ctx: opts.ctx,
        memory,
    })
}

/// Every calibration token must have reached the input: the header promised that count.
fn check_count(count: u64, tokens: usize, key: &str, path: &Path) -> Result<()> {
    if count != tokens as u64 {
        return Err(Error::format(
            path,
            format!("input {key} saw {count} rows of {tokens} calibration tokens (a model whose blocks skip tokens)"),
        ));
    }
    Ok(())
}
