//! Memory for the block-by-block passes (sequential GPTQ, the statistics file), and what
//! `--max-memory` changes: the calibration chunks' hidden states go to disk
//! ([`super::hidden::HiddenStates`]) when the model, one block's work and the states
//! together would exceed the budget; a budget too small for the model and one block is
//! refused before any work, naming what it needs.
//!
//! One block's work is estimated from the shapes, term by term, as the code allocates it
//! (f64 Σxxᵀ accumulators while recording; for each matrix GPTQ quantizes, its f32 Hessian,
//! the f64 Cholesky factor and f32 inverse factor, the matrix's dense, working and decoded
//! copies, and the decoded matrices before it in the block), plus the block's stored
//! weights, paged in from the model file while the block runs and released after it. Checked against the
//! resident-set trace of an 8B model's first block (`quantize --model syn8b --type Q4_K_M
//! --calib emma.txt --calib-chunks 8`, sampled every second), which still had the Gram
//! scratch of n² floats (0.82 GB) that bands have since replaced: recording held 2.9 GB
//! above the loaded model (estimate 2.05 GB + activations + that scratch: 2.9 GB), the
//! down projection's factor 5.42 GB (estimate 4.63 GB + the scratch: 5.45 GB). The
//! statistics pass (`calibrate -o stats.safetensors`) on the same shapes with 4 blocks
//! (`synthetic_llama --layers 4`) peaked at 4.04 GB against an estimate of 3.82 GB before
//! the 10 % slack below.
//! The model's own share is what the process holds when the pass starts (read from
//! `/proc/self/status`), so mapped weights and embeddings count as they really are.

use std::collections::BTreeMap;

use super::shared_input_key;
use crate::error::{Error, Result};
use crate::model::LoadedLm;
use crate::units::human_bytes;

/// What memory a block-by-block pass may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryLimit {
    /// No limit: the hidden states stay in memory.
    #[default]
    Unlimited,
    /// At most this many bytes (`--max-memory`): the hidden states go to disk when they
    /// would not fit; a budget below the model and one block is refused.
    Bytes(u64),
    /// The hidden states on disk whatever their size (what a tight budget does; for tests
    /// and for machines whose free memory is below what the estimate assumes).
    SpillHidden,
}

impl MemoryLimit {
    /// The byte budget, if there is one.
    pub fn bytes(self) -> Option<u64> {
        match self {
            MemoryLimit::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// How a block-by-block pass uses memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// `--max-memory`, if given (bytes).
    pub budget: Option<u64>,
    /// What the process held when the pass started (the loaded model).
    pub base: u64,
    /// Estimated peak of one block's work above that.
    pub block: u64,
    /// The calibration chunks' hidden states (f32).
    pub hidden: u64,
    /// Whether the hidden states are kept on disk.
    pub spill: bool,
}

impl MemoryPlan {
    /// The estimated peak: model, one block's work, and the hidden states in memory (or
    /// two chunks of them when spilled).
    pub fn estimate(&self) -> u64 {
        self.base + self.block + if self.spill { 0 } else { self.hidden }
    }

    /// One line for people: the budget, the estimate and where the states live.
    pub fn describe(&self) -> String {
        let budget = self.budget.map(|b| format!("budget {}, ", human_bytes(b))).unwrap_or_default();
        let states = if self.spill { "spilled to disk" } else { "in memory" };
        format!(
            "{budget}estimated peak {} (model {}, one block {}; hidden states {} {states})",
            human_bytes(self.estimate()),
            human_bytes(self.base),
            human_bytes(self.block),
            human_bytes(self.hidden)
        )
    }
}

/// Plans memory for a pass over `lm` on chunks of `rows` tokens: GPTQ on each block when
/// `gptq`, statistics only otherwise, within `limit` ([`MemoryPlan::fit`]).
pub fn plan_memory(lm: &mut LoadedLm, rows: &[usize], limit: MemoryLimit, gptq: bool) -> Result<MemoryPlan> {
    let base = crate::units::resident_bytes().unwrap_or(0);
    let longest = rows.iter().copied().max().unwrap_or(0);
    let block = (0..lm.model.block_count())
        .map(|il| {
            let linears = lm.model.block_linears_of(il);
            // The block's stored weights are paged in while it runs (and released after).
            let stored: u64 = linears.iter().map(|l| l.weight.stored_bytes() as u64).sum();
            let layers: Vec<(String, usize, usize)> =
                linears.iter().map(|l| (shared_input_key(&l.name), l.in_features, l.out_features)).collect();
            stored + block_work(&layers, longest, lm.model.hidden_size(), gptq)
        })
        .max()
        .unwrap_or(0);
    // Allocator slack, thread stacks and buffers the terms leave out: the statistics pass
    // on an 8B-shaped model (4 blocks, 8 chunks of 512) peaked 5 % above the bare terms.
    let block = block + block / 10;
    let hidden = super::hidden::HiddenStates::bytes(rows, lm.model.hidden_size());
    let chunk = 4 * (longest * lm.model.hidden_size()) as u64;
    MemoryPlan { budget: None, base, block, hidden, spill: false }.fit(limit, chunk)
}

impl MemoryPlan {
    /// This plan under `limit`: with a byte budget, the hidden states spill to disk when
    /// the model, one block and the states would exceed it, and a budget below the model,
    /// one block and two `chunk`s of states (the one read and the one written) is an error.
    pub fn fit(mut self, limit: MemoryLimit, chunk: u64) -> Result<MemoryPlan> {
        self.budget = limit.bytes();
        self.spill = limit == MemoryLimit::SpillHidden;
        if let Some(b) = self.budget {
            self.spill = self.estimate() > b;
            if self.base + self.block + 2 * chunk > b {
                return Err(Error::Usage(format!(
                    "--max-memory {}: too small for this model; it needs about {} (the loaded model {} and one \
                     block's work {}, with the calibration hidden states on disk)",
                    human_bytes(b),
                    human_bytes(self.base + self.block + 2 * chunk),
                    human_bytes(self.base),
                    human_bytes(self.block)
                )));
            }
        }
        Ok(self)
    }
}

/// One block's peak bytes: `layers` are (input key, in, out) in the order the block runs
/// them, chunks of up to `rows` tokens, hidden size `d`.
fn block_work(layers: &[(String, usize, usize)], rows: usize, d: usize, gptq: bool) -> u64 {
    let sq = |n: usize| (n * n) as u64;
    let mut width: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_use: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (k, n, _)) in layers.iter().enumerate() {
        width.entry(k).or_insert(*n);
        last_use.insert(k, i);
    }
    // Running the block: activations (every layer's output and a few hidden-size rows per
    // token, one chunk at a time), plus the f64 accumulators while recording.
    let outputs: usize = layers.iter().map(|l| l.2).sum();
    let activations = 4 * (rows * (outputs + 4 * d)) as u64;
    let accumulators: u64 = width.values().map(|&n| 8 * sq(n)).sum();
    let recording = accumulators + activations;
    if !gptq {
        // Writing the statistics: every accumulator and one input's f32 copy.
        let widest = width.values().copied().max().unwrap_or(0);
        return recording + 4 * sq(widest);
    }
    let mut peak = recording;
    let mut taken: Vec<&str> = Vec::new();
    let mut decoded = 0u64;
    for (i, (k, n, m)) in layers.iter().enumerate() {
        if !taken.contains(&k.as_str()) {
            taken.push(k);
        }
        let untaken: u64 = width.iter().filter(|(k, _)| !taken.contains(k)).map(|(_, &n)| 8 * sq(n)).sum();
        let hessians: u64 = taken.iter().filter(|k| last_use[*k] >= i).map(|k| 4 * sq(width[*k])).sum();
        let factor = 12 * sq(*n);
        let matrix = 12 * (m * n) as u64;
        peak = peak.max(untaken + hessians + factor + matrix + decoded);
        decoded += 4 * (m * n) as u64;
    }
    // The quantized block runs once more (its outputs are the next block's inputs).
    peak.max(decoded + activations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_block(d: usize, kv: usize, ffn: usize) -> Vec<(String, usize, usize)> {
        let l = |k: &str, n, m| (k.to_string(), n, m);
        vec![
            l("attn_qkv", d, d),
            l("attn_qkv", d, kv),
            l("attn_qkv", d, kv),
            l("attn_output", d, d),
            l("ffn_gate_up", d, ffn),
            l("ffn_gate_up", d, ffn),
            l("ffn_down", ffn, d),
        ]
    }

    #[test]
    fn an_8b_block_is_dominated_by_the_down_projections_factor() {
        let b = llama_block(4096, 1024, 14336);
        let gptq = block_work(&b, 512, 4096, true);
        // The down projection: H (4n²) + factor (12n²) + three copies of the matrix
        // (12mn) + the block's other decoded matrices.
        let n = 14336u64;
        let floor = 16 * n * n + 12 * n * 4096;
        assert!(gptq > floor && gptq < floor + 1_000_000_000, "{gptq}");
        let stats = block_work(&b, 512, 4096, false);
        assert!(stats < gptq, "statistics only need the accumulators: {stats} vs {gptq}");
        assert!(stats > 8 * n * n, "{stats}");
    }

    #[test]
    fn the_plan_spills_and_refuses_by_the_budget() {
        let p = MemoryPlan { budget: None, base: 100, block: 50, hidden: 30, spill: false };
        assert_eq!(p.estimate(), 180);
        let fit = |limit| p.fit(limit, 5);
        let roomy = fit(MemoryLimit::Bytes(180)).unwrap();
        assert!(!roomy.spill && roomy.budget == Some(180) && roomy.describe().contains("in memory"));
        let tight = fit(MemoryLimit::Bytes(179)).unwrap();
        assert!(tight.spill && tight.estimate() == 150 && tight.describe().contains("spilled to disk"));
        assert!(fit(MemoryLimit::Bytes(160)).unwrap().spill);
        let e = fit(MemoryLimit::Bytes(159)).unwrap_err().to_string();
        assert!(e.contains("--max-memory") && e.contains("needs about 160 B"), "{e}");
        assert!(fit(MemoryLimit::SpillHidden).unwrap().spill);
        assert!(!fit(MemoryLimit::Unlimited).unwrap().spill);
    }
}
