//! Sequential GPTQ: the model is quantized block by block, and each block's input
//! Hessians are recorded from the outputs of the blocks before it *as already
//! quantized* (as the GPTQ paper does), so every block compensates the errors that
//! reach it rather than those of an ideal float model.
//!
//! Memory is bounded by one block: the calibration chunks' hidden states (chunks × ctx ×
//! hidden floats; in the work folder instead when `--max-memory` asks, see
//! [`crate::calibrate::budget`]), one block's Hessians and its weights as dense f32 while
//! it is quantized; finished blocks go back to the source's mapped weights (their pages
//! released) and their encoded tensors to the work folder ([`checkpoint`]), from which the
//! output is written and an interrupted run resumes.

pub mod checkpoint;

use std::collections::HashMap;
use std::sync::Arc;

use crate::calibrate::budget::{plan_memory, MemoryLimit, MemoryPlan};
use crate::calibrate::hidden::HiddenStates;
use crate::calibrate::record::{advance_chunks, record_block};
use crate::calibrate::{calibration_chunks, CalibrationText, Imatrix, ImatrixEntry};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::gguf::GgufFile;
use crate::method::{quantize_tensor, Calibration, Encoded, Method, MethodOptions};
use crate::model::LoadedLm;
use crate::plan::PlannedTensor;
use checkpoint::{Checkpoint, PreEncoded};

/// What sequential GPTQ produced: the encoded bytes of every block weight the plan
/// re-encodes (in the work folder), and the importance matrix seen along the way.
pub struct SequentialResult {
    /// Encoded tensors (the rest of the model is encoded as usual).
    pub encoded: PreEncoded,
    /// Per-weight importance from the sequential pass.
    pub imatrix: Imatrix,
    /// How memory was used.
    pub memory: MemoryPlan,
}

/// Quantizes the block weights of `lm` (loaded from `g`, sharing its memory map, so that
/// finished blocks' pages can be released) following `plan`, block by block on the
/// calibration `text`, continuing after the blocks `checkpoint` has finished, within
/// `memory` (the hidden states may then live in the work folder).
/// `progress(done, total, tokens, plan)` counts blocks, each running `tokens` calibration
/// tokens, within the memory `plan` (known before the first block, so it can be shown).
#[allow(clippy::too_many_arguments)]
pub fn sequential_gptq(
    lm: &mut LoadedLm,
    g: &GgufFile,
    plan: &[PlannedTensor],
    text: &CalibrationText,
    eval: &EvalOptions,
    options: &MethodOptions,
    checkpoint: &Checkpoint,
    blocks_done: usize,
    memory: MemoryLimit,
    progress: &mut dyn FnMut(usize, usize, usize, &MemoryPlan),
) -> Result<SequentialResult> {
    let source = g.path();
    let chunks = calibration_chunks(lm, &text.text, eval)?;
    let rows: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
    let memory = plan_memory(lm, &rows, memory, true)?;
    let targets: HashMap<&str, &PlannedTensor> = plan.iter().map(|t| (t.name.as_str(), t)).collect();
    let n_blocks = lm.model.block_count();
    let start = blocks_done.min(n_blocks);
    let width = lm.model.hidden_size();
    let mut hidden = if memory.spill {
        HiddenStates::on_disk(width, rows, &checkpoint.dir().join("hidden-live.bin"))?
    } else {
        HiddenStates::in_memory(width, rows)
    };
    if start > 0 {
        checkpoint.load_hidden(&mut hidden)?;
    } else {
        for (i, c) in chunks.iter().enumerate() {
            hidden.set(i, &lm.model.embed(c)?)?;
        }
    }
    let tokens: usize = chunks.iter().map(|c| c.len()).sum();
    progress(start, n_blocks, tokens, &memory);
    for il in start..n_blocks {
        crate::interrupt::check()?;
        // 1. This block's input statistics, with the quantized blocks before it.
        let mut recording = record_block(lm, il, &mut hidden, false, true)?;
        let entries = recording.entries();
        // 2. Quantize the block's weights and put the quantized values in the model.
        let mut encoded: Vec<(String, Encoded)> = Vec::new();
        let mut importances: Vec<(String, ImatrixEntry)> = Vec::new();
        let mut originals = Vec::new();
        // Each input's Hessian is taken out of its recorder once (dropping the f64
        // accumulator: 1.6 GB for an 8B model's down projection) and dropped after the
        // last layer that reads that input.
        let mut uses: HashMap<String, usize> = HashMap::new();
        for (_, key) in &recording.layers {
            *uses.entry(key.clone()).or_default() += 1;
        }
        let mut taken: HashMap<String, Arc<Vec<f32>>> = HashMap::new();
        for lin in lm.model.block_linears_of(il) {
            crate::interrupt::check()?;
            let key = recording.key(&lin.name).to_string();
            if !taken.contains_key(&key) {
                let r = recording.recorders.remove(&key).expect("one recorder per input");
                taken.insert(key.clone(), Arc::new(r.hessian().expect("recorded with a Hessian")));
            }
            let xtx = taken[&key].clone();
            let left = uses.get_mut(&key).expect("counted");
            *left -= 1;
            if *left == 0 {
                taken.remove(&key);
            }
            let entry = &entries[&key];
            let importance: Vec<f32> = entry.sums.iter().map(|s| s / entry.count.max(1.0)).collect();
            importances.push((lin.name.clone(), entry.clone()));
            let Some(t) = targets.get(lin.name.as_str()) else { continue };
            if t.target == t.source {
                continue; // copied unchanged, as the weights already are
            }
            let n = lin.in_features;
            let calibration = Calibration { importance: Some(&importance), hessian: Some(&xtx) };
            let dense = lin.weight.dense();
            let e = quantize_tensor(t.target, &dense, n, Method::Gptq, &calibration, options)
                .map_err(|e| crate::quantize::encode_error(source, &lin.name, t.target, e))?;
            let decoded = e
                .decode(t.target, dense.len(), n)
                .map_err(|e| Error::tensor(source, &lin.name, format!("cannot decode its {}: {e}", t.target)))?;
            let original = std::mem::replace(&mut lin.weight, crate::model::Weight::Dense(decoded));
            originals.push((lin.name.clone(), original));
            encoded.push((lin.name.clone(), e));
        }
        drop(recording);
        // 3. The next block's inputs, through the quantized block.
        advance_chunks(lm, il, &mut hidden)?;
        // 4. The block is done: back to the source's mapped weights (never run again,
        //    their pages released), its results to the work folder.
        for lin in lm.model.block_linears_of(il) {
            if let Some(i) = originals.iter().position(|(n, _)| n == &lin.name) {
                lin.weight = originals.swap_remove(i).1;
            }
            g.release(&lin.name);
        }
        checkpoint.save_block(il, &encoded, &importances, &mut hidden)?;
        progress(il + 1, n_blocks, tokens, &memory);
    }
    drop(hidden);
    let (encoded, entries) = checkpoint.load(n_blocks)?;
    let imatrix = Imatrix {
        datasets: vec![text.dataset.clone()],
        chunk_count: chunks.len() as u32,
        chunk_size: eval.ctx as u32,
        entries: entries.into_iter().collect(),
    };
    Ok(SequentialResult { encoded, imatrix, memory })
}
