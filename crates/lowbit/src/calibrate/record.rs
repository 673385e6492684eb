//! One block's input statistics from the calibration chunks' hidden states — the step every
//! statistics pass shares ([`super::compute_stats`], [`super::write_stats_blockwise`],
//! sequential GPTQ).
//!
//! One [`InputRecorder`] per distinct input ([`shared_input_key`]: q/k/v read one input,
//! gate/up another), fed the rows the first layer that reads it sees, chunk by chunk in
//! order, as a recorder attached to that layer in a chunk-by-chunk pass through the whole
//! model would be — so every pass gives the same numbers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::hidden::HiddenStates;
use super::{shared_input_key, ImatrixEntry};
use crate::error::Result;
use crate::model::{InputRecorder, LoadedLm};

/// What one block's calibration pass recorded.
pub struct BlockRecording {
    /// One recorder (with a Hessian) per distinct input, by [`shared_input_key`].
    pub recorders: BTreeMap<String, Arc<InputRecorder>>,
    /// Every block linear's (name, input key), in the block's layer order.
    pub layers: Vec<(String, String)>,
}

impl BlockRecording {
    /// The input key of layer `name`.
    pub fn key(&self, name: &str) -> &str {
        &self.layers.iter().find(|(n, _)| n == name).expect("a layer of this block").1
    }

    /// Σ x² per column and rows seen, per input key (each recorder read once).
    pub fn entries(&self) -> BTreeMap<String, ImatrixEntry> {
        self.recorders
            .iter()
            .map(|(k, r)| {
                let (sums, count) = r.totals();
                (k.clone(), ImatrixEntry { sums: sums.iter().map(|&v| v as f32).collect(), count: count as f32 })
            })
            .collect()
    }
}

/// Runs every chunk of `hidden` through block `il` and records its layers' inputs (with
/// each input's Hessian when `hessians`); with `advance`, each chunk's states become the
/// block's output, otherwise they are left as they were (and the block's last projection
/// is not computed).
pub fn record_block(
    lm: &mut LoadedLm,
    il: usize,
    hidden: &mut HiddenStates,
    advance: bool,
    hessians: bool,
) -> Result<BlockRecording> {
    let mut recorders: BTreeMap<String, Arc<InputRecorder>> = BTreeMap::new();
    let mut layers = Vec::new();
    for lin in lm.model.block_linears_of(il) {
        let key = shared_input_key(&lin.name);
        layers.push((lin.name.clone(), key.clone()));
        recorders.entry(key).or_insert_with(|| {
            let n = lin.in_features;
            Arc::new(if hessians { InputRecorder::with_hessian(n) } else { InputRecorder::new(n) })
        });
    }
    record_chunks(lm, il, hidden, &recorders, advance)?;
    Ok(BlockRecording { recorders, layers })
}

/// Runs every chunk of `hidden` through block `il` — as far as its layers' inputs, or with
/// `advance` the whole block, keeping the outputs ([`crate::model::CausalLm::block_inputs`])
/// — and adds the inputs to `recorders`. Several chunks run at once ([`in_groups`]); each
/// chunk's inputs are added in chunk order, so the sums are the ones a serial pass gives.
fn record_chunks(
    lm: &LoadedLm,
    il: usize,
    hidden: &mut HiddenStates,
    recorders: &BTreeMap<String, Arc<InputRecorder>>,
    advance: bool,
) -> Result<()> {
    in_groups(
        hidden,
        advance,
        |x, t| lm.model.block_inputs(il, x, t, advance),
        |inputs, t| {
            for (name, input) in inputs {
                recorders[&shared_input_key(&name)].record(&input, t);
            }
        },
    )
}

/// Runs every chunk of `hidden` through block `il` and keeps the outputs, several chunks
/// at once ([`in_groups`]), recording nothing.
pub fn advance_chunks(lm: &LoadedLm, il: usize, hidden: &mut HiddenStates) -> Result<()> {
    in_groups(hidden, true, |x, t| lm.model.run_block(il, x, t), |(), _| {})
}

/// Runs `work` on the chunks of `hidden`, as many at once as there are threads (each
/// chunk's own products still split over threads that run out of work: rayon's nested
/// stealing), so one chunk's serial steps — norms, residual adds, copies — overlap with
/// another's products; then `collect` takes each result in chunk order. With `advance`
/// the states `work` leaves replace the chunk's. Each chunk's numbers do not depend on
/// which thread ran it.
fn in_groups<R: Send>(
    hidden: &mut HiddenStates,
    advance: bool,
    work: impl Fn(&mut [f32], usize) -> R + Sync,
    mut collect: impl FnMut(R, usize),
) -> Result<()> {
    use rayon::prelude::*;
    let group = rayon::current_num_threads().max(1);
    let mut start = 0;
    while start < hidden.len() {
        crate::interrupt::check()?;
        let end = (start + group).min(hidden.len());
        let mut states = (start..end).map(|i| Ok((hidden.get(i)?, hidden.rows(i)))).collect::<Result<Vec<_>>>()?;
        let results: Vec<R> = states.par_iter_mut().map(|(x, t)| work(x, *t)).collect();
        for (i, ((x, t), r)) in (start..end).zip(states.iter().zip(results)) {
            collect(r, *t);
            if advance {
                hidden.set(i, x)?;
            }
        }
        start = end;
    }
    Ok(())
}
