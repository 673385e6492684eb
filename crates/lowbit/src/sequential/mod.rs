//! Sequential GPTQ: the model is quantized block by block, and each block's input
//! Hessians are recorded from the outputs of the blocks before it *as already
//! quantized* (as the GPTQ paper does), so every block compensates the errors that
//! reach it rather than those of an ideal float model.
//!
//! Memory is bounded by one block: the calibration chunks' hidden states (chunks × ctx ×
//! hidden floats), one block's Hessians and its weights as dense f32 while it is
//! quantized; finished blocks go back to the source's mapped weights (their pages
//! released) and their encoded tensors to the work folder ([`checkpoint`]), from which the
//! output is written and an interrupted run resumes.

pub mod checkpoint;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::calibrate::{calibration_chunks, shared_input_key, CalibrationText, Imatrix, ImatrixEntry};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::gguf::GgufFile;
use crate::method::{quantize_tensor, Calibration, Encoded, Method, MethodOptions};
use crate::model::{InputRecorder, LoadedLm};
use crate::plan::PlannedTensor;
use checkpoint::{Checkpoint, PreEncoded};

/// What sequential GPTQ produced: the encoded bytes of every block weight the plan
/// re-encodes (in the work folder), and the importance matrix seen along the way.
pub struct SequentialResult {
    /// Encoded tensors (the rest of the model is encoded as usual).
    pub encoded: PreEncoded,
    /// Per-weight importance from the sequential pass.
    pub imatrix: Imatrix,
}

/// Quantizes the block weights of `lm` (loaded from `g`, sharing its memory map, so that
/// finished blocks' pages can be released) following `plan`, block by block on the
/// calibration `text`, continuing after the blocks `checkpoint` has finished.
/// `progress(done, total, tokens)` counts blocks, each running `tokens` calibration tokens.
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
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<SequentialResult> {
    let source = g.path();
    let chunks = calibration_chunks(lm, &text.text, eval)?;
    let targets: HashMap<&str, &PlannedTensor> = plan.iter().map(|t| (t.name.as_str(), t)).collect();
    let n_blocks = lm.model.block_count();
    let start = blocks_done.min(n_blocks);
    let mut hidden: Vec<Vec<f32>> = if start > 0 {
        let h = checkpoint.load_hidden()?;
        let fits =
            h.len() == chunks.len() && h.iter().zip(&chunks).all(|(h, c)| h.len() == c.len() * lm.model.hidden_size());
        if !fits {
            return Err(Error::format(
                checkpoint.dir(),
                "the saved hidden states do not fit this run; delete the folder",
            ));
        }
        h
    } else {
        chunks.iter().map(|c| lm.model.embed(c)).collect::<Result<_>>()?
    };
    let tokens: usize = chunks.iter().map(|c| c.len()).sum();
    progress(start, n_blocks, tokens);
    for il in start..n_blocks {
        crate::interrupt::check()?;
        // 1. This block's input statistics, with the quantized blocks before it.
        let mut recorders: BTreeMap<String, Arc<InputRecorder>> = BTreeMap::new();
        let mut inputs: Vec<(String, String)> = Vec::new();
        for lin in lm.model.block_linears_of(il) {
            let key = shared_input_key(&lin.name);
            inputs.push((lin.name.clone(), key.clone()));
            if let std::collections::btree_map::Entry::Vacant(slot) = recorders.entry(key) {
                let r = Arc::new(InputRecorder::with_hessian(lin.in_features));
                lin.recorder = Some(r.clone());
                slot.insert(r);
            }
        }
        for (c, h) in chunks.iter().zip(&hidden) {
            let mut x = h.clone();
            lm.model.run_block(il, &mut x, c.len());
        }
        for lin in lm.model.block_linears_of(il) {
            lin.recorder = None;
        }
        // 2. Quantize the block's weights and put the quantized values in the model.
        let mut encoded: Vec<(String, Encoded)> = Vec::new();
        let mut importances: Vec<(String, ImatrixEntry)> = Vec::new();
        let mut originals = Vec::new();
        // Each input's statistics are taken out of its recorder once (dropping the f64
        // accumulator: 1.6 GB for an 8B model's down projection) and dropped after the
        // last layer that reads that input.
        let mut uses: HashMap<String, usize> = HashMap::new();
        for (_, key) in &inputs {
            *uses.entry(key.clone()).or_default() += 1;
        }
        let mut taken: HashMap<String, (ImatrixEntry, Arc<Vec<f32>>)> = HashMap::new();
        for lin in lm.model.block_linears_of(il) {
            let key = inputs.iter().find(|(n, _)| n == &lin.name).expect("recorded above").1.clone();
            if !taken.contains_key(&key) {
                let r = recorders.remove(&key).expect("one recorder per input");
                let (sums, count) = r.totals();
                let entry = ImatrixEntry { sums: sums.iter().map(|&v| v as f32).collect(), count: count as f32 };
                let xtx = Arc::new(r.hessian().expect("recorded with a Hessian"));
                taken.insert(key.clone(), (entry, xtx));
            }
            let (entry, xtx) = taken[&key].clone();
            let left = uses.get_mut(&key).expect("counted");
            *left -= 1;
            if *left == 0 {
                taken.remove(&key);
            }
            let importance: Vec<f32> = entry.sums.iter().map(|s| s / entry.count.max(1.0)).collect();
            importances.push((lin.name.clone(), entry));
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
        drop(recorders);
        // 3. The next block's inputs, through the quantized block.
        for (c, h) in chunks.iter().zip(hidden.iter_mut()) {
            lm.model.run_block(il, h, c.len());
        }
        // 4. The block is done: back to the source's mapped weights (never run again,
        //    their pages released), its results to the work folder.
        for lin in lm.model.block_linears_of(il) {
            if let Some(i) = originals.iter().position(|(n, _)| n == &lin.name) {
                lin.weight = originals.swap_remove(i).1;
            }
            g.release(&lin.name);
        }
        checkpoint.save_block(il, &encoded, &importances, &hidden)?;
        progress(il + 1, n_blocks, tokens);
    }
    let (encoded, entries) = checkpoint.load(n_blocks)?;
    let imatrix = Imatrix {
        datasets: vec![text.dataset.clone()],
        chunk_count: chunks.len() as u32,
        chunk_size: eval.ctx as u32,
        entries: entries.into_iter().collect(),
    };
    Ok(SequentialResult { encoded, imatrix })
}
