//! One block's input statistics from the calibration chunks' hidden states — the step both
//! block-by-block passes share (sequential GPTQ, [`super::write_stats_blockwise`]).
//!
//! One [`InputRecorder`] per distinct input ([`shared_input_key`]: q/k/v read one input,
//! gate/up another), attached to the first layer that reads it, as the whole-model
//! [`super::compute_stats`] does, so both give the same numbers.

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

/// Runs every chunk of `hidden` through block `il` and records its layers' inputs; with
/// `advance`, each chunk's states become the block's output, otherwise they are left as
/// they were (and the block's last projection is not computed).
pub fn record_block(lm: &mut LoadedLm, il: usize, hidden: &mut HiddenStates, advance: bool) -> Result<BlockRecording> {
    let mut recorders: BTreeMap<String, Arc<InputRecorder>> = BTreeMap::new();
    let mut layers = Vec::new();
    for lin in lm.model.block_linears_of(il) {
        let key = shared_input_key(&lin.name);
        layers.push((lin.name.clone(), key.clone()));
        if let std::collections::btree_map::Entry::Vacant(slot) = recorders.entry(key) {
            let r = Arc::new(InputRecorder::with_hessian(lin.in_features));
            lin.recorder = Some(r.clone());
            slot.insert(r);
        }
    }
    let ran = if advance { run_chunks(lm, il, hidden, true) } else { record_chunks(lm, il, hidden) };
    for lin in lm.model.block_linears_of(il) {
        lin.recorder = None;
    }
    ran?;
    Ok(BlockRecording { recorders, layers })
}

/// Runs every chunk of `hidden` through block `il`, keeping the outputs when `advance`.
pub fn run_chunks(lm: &LoadedLm, il: usize, hidden: &mut HiddenStates, advance: bool) -> Result<()> {
    for i in 0..hidden.len() {
        crate::interrupt::check()?;
        let mut x = hidden.get(i)?;
        lm.model.run_block(il, &mut x, hidden.rows(i));
        if advance {
            hidden.set(i, &x)?;
        }
    }
    Ok(())
}

/// Runs every chunk of `hidden` through block `il` as far as its recorders need
/// ([`crate::model::CausalLm::record_block`]), leaving the states as they were.
fn record_chunks(lm: &LoadedLm, il: usize, hidden: &mut HiddenStates) -> Result<()> {
    for i in 0..hidden.len() {
        crate::interrupt::check()?;
        lm.model.record_block(il, &hidden.get(i)?, hidden.rows(i));
    }
    Ok(())
}
