//! Sequential GPTQ: the model is quantized block by block, and each block's input
//! Hessians are recorded from the outputs of the blocks before it *as already
//! quantized* (as the GPTQ paper does), so every block compensates the errors that
//! reach it rather than those of an ideal float model. Memory: the calibration chunks'
//! hidden states (chunks × ctx × hidden floats) plus one block's Hessians at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::calibrate::{calibration_chunks, shared_input_key, CalibrationText, Imatrix, ImatrixEntry};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::method::{quantize_tensor, Calibration, Encoded, Method, MethodOptions};
use crate::model::{InputRecorder, LoadedLm};
use crate::plan::PlannedTensor;

/// What sequential GPTQ produced: the encoded bytes of every block weight the plan
/// re-encodes, by tensor name, and the importance matrix seen along the way.
pub struct SequentialResult {
    /// Encoded tensors (the rest of the model is encoded as usual).
    pub encoded: HashMap<String, Encoded>,
    /// Per-weight importance from the sequential pass.
    pub imatrix: Imatrix,
}

/// Quantizes the block weights of `lm` (loaded from `source`, the plan's source) following `plan`,
/// block by block on the calibration `text`. `progress(done, total)` counts blocks.
pub fn sequential_gptq(
    lm: &mut LoadedLm,
    source: &Path,
    plan: &[PlannedTensor],
    text: &CalibrationText,
    eval: &EvalOptions,
    options: &MethodOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SequentialResult> {
    let chunks = calibration_chunks(lm, &text.text, eval)?;
    let targets: HashMap<&str, &PlannedTensor> = plan.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut hidden: Vec<Vec<f32>> = chunks.iter().map(|c| lm.model.embed(c)).collect::<Result<_>>()?;
    let n_blocks = lm.model.block_count();
    let mut result = SequentialResult {
        encoded: HashMap::new(),
        imatrix: Imatrix {
            datasets: vec![text.dataset.clone()],
            chunk_count: chunks.len() as u32,
            chunk_size: eval.ctx as u32,
            ..Default::default()
        },
    };
    progress(0, n_blocks);
    for il in 0..n_blocks {
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
        for lin in lm.model.block_linears_of(il) {
            let key = &inputs.iter().find(|(n, _)| n == &lin.name).expect("recorded above").1;
            let r = &recorders[key];
            let (sums, count) = r.totals();
            let entry = ImatrixEntry { sums: sums.iter().map(|&v| v as f32).collect(), count: count as f32 };
            let importance: Vec<f32> = entry.sums.iter().map(|s| s / entry.count.max(1.0)).collect();
            result.imatrix.entries.insert(lin.name.clone(), entry);
            let Some(t) = targets.get(lin.name.as_str()) else { continue };
            if t.target == t.source {
                continue; // copied unchanged, as the weights already are
            }
            let n = lin.in_features;
            let xtx = r.hessian().expect("recorded with a Hessian");
            let calibration = Calibration { importance: Some(&importance), hessian: Some(&xtx) };
            let dense = lin.weight.dense();
            let encoded = quantize_tensor(t.target, &dense, n, Method::Gptq, &calibration, options)
                .map_err(|e| crate::quantize::encode_error(source, &lin.name, t.target, e))?;
            let decoded = encoded
                .decode(t.target, dense.len(), n)
                .map_err(|e| Error::tensor(source, &lin.name, format!("cannot decode its {}: {e}", t.target)))?;
            lin.weight = crate::model::Weight::Dense(decoded);
            result.encoded.insert(lin.name.clone(), encoded);
        }
        // 3. The next block's inputs, through the quantized block.
        for (c, h) in chunks.iter().zip(hidden.iter_mut()) {
            lm.model.run_block(il, h, c.len());
        }
        progress(il + 1, n_blocks);
    }
    Ok(result)
}
