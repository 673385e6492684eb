//! How much one tensor's quantization error costs the model's output, measured end to end.
//!
//! The proxy (EXL3's, with a real quantizer instead of noise): the KL divergence a tensor's
//! error causes is, to first order, proportional to the error's energy at that layer's
//! input distribution, `kld_t(c) ≈ S_t · err_t(c)`, with
//! `err_t(c) = Σ_rows Σ_j imp_j (w_ij − ŵ_ij)²` (`imp_j` the mean squared input of column
//! `j`: the importance matrix). `S_t` is measured once per tensor: quantize only that
//! tensor with a *probe* type (about 3.5 bits per weight — the regime allocation decides
//! in), run the calibration chunks through the rest of the source model, and divide the
//! KL divergence from the source's own output by the probe's error. Every other type's
//! cost is then its error times `S_t`; [`super::validate`] checks that against real swaps.
//! Measured (`lowbit sensitivity --model smollm2-135m --calib austen --validate 40`, one
//! chunk of 512 tokens, positions from 64 scored): over 40 held-out swaps (other types
//! than the probe, lossless copies excluded) the Spearman rank correlation of predicted and
//! measured KL divergence is 0.994, measured / predicted 0.65–1.79 with median 0.98 — so
//! first order in the error energy (exponent 1) is kept. (Two chunks with only their second
//! halves scored gave 0.990, 0.62–3.9, median 0.97.)
//!
//! Cost: one forward pass from the tensor's block onwards per tensor (the source's hidden
//! states at every block input are kept, so a tensor in block `b` re-runs blocks `b..`),
//! with logits only at the scored rows.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::method::{quantize_tensor, Calibration, Method, MethodOptions};
use crate::model::{LoadedLm, Weight};

/// The source's side of the measurement: the calibration chunks, the hidden states at
/// every block's input, and the log-probabilities at the scored rows.
pub struct Reference {
    chunks: Vec<Vec<u32>>,
    /// `block_inputs[b][c]`: chunk `c`'s hidden states entering block `b`.
    block_inputs: Vec<Vec<Vec<f32>>>,
    /// Per chunk, the positions whose next-token distribution is compared.
    rows: Vec<Vec<usize>>,
    /// The source's log-probabilities at those rows (rows × vocabulary, all chunks).
    log_probs: Vec<f32>,
}

/// What a cached measurement was made under (part of the cache key): bump it when the
/// measurement itself changes.
pub const PROTOCOL: &str = "kld at rows from 64 of each chunk, up to 2^27 log-probabilities, f32 exponentials";

/// Rows of logits kept per measurement: at most this many values (rows × vocabulary, f32:
/// 512 MB), at least [`MIN_ROWS`] rows — every scored row of one 512-token chunk (448) for
/// SmolLM2's 49k, Llama 3's 128k and Gemma 3's 262k vocabularies. Was 2^25, which left
/// Gemma 3 112 rows: measured on gemma3-270m at llama.cpp's Q4_K_S size (`quantize --size
/// 249887712 --llama-cpp --calib austen --no-sequential`, KLD on wiki.valid 40 × 512),
/// 112 rows gave KLD 0.006822 (0.52× llama.cpp + imatrix's 0.013091), all 448 rows
/// **0.005929** (0.45×). The cost is time on large-vocabulary models, whose logits then
/// dominate each measurement: gemma3's sensitivities took 621 s for 127 tensors on a
/// machine shared with a test run (about 2.2× the 112-row pass by the count of
/// multiply-adds; peak RSS 3.2 GB). SmolLM2 is unchanged (it had all its rows already).
const LOGIT_VALUES: usize = 1 << 27;
/// The fewest scored rows, whatever the vocabulary.
const MIN_ROWS: usize = 128;
/// Positions before this (or before the middle of a shorter chunk) are context only: a
/// measurement scores every position that has seen this many tokens, so one chunk's
/// forward pass yields 7/8 of its rows (perplexity's second-half rule would waste half).
const MIN_CONTEXT: usize = 64;

impl Reference {
    /// Runs `chunks` through the source `lm` once and keeps what every later measurement
    /// compares against. Scored rows are the positions from [`MIN_CONTEXT`] on (from the
    /// middle of a shorter chunk), evenly thinned to fit [`LOGIT_VALUES`].
    pub fn new(lm: &LoadedLm, chunks: Vec<Vec<u32>>) -> Result<Reference> {
        let m = &lm.model;
        let vocab = m.vocab_size();
        let first = |c: &Vec<u32>| (c.len() / 2).min(MIN_CONTEXT);
        let total_rows: usize = chunks.iter().map(|c| c.len() - first(c)).sum();
        let keep = (LOGIT_VALUES / vocab).max(MIN_ROWS).min(total_rows).max(1);
        let stride = total_rows.div_ceil(keep);
        let rows: Vec<Vec<usize>> = chunks.iter().map(|c| (first(c)..c.len()).step_by(stride).collect()).collect();
        let mut block_inputs = vec![Vec::with_capacity(chunks.len()); m.block_count() + 1];
        for c in &chunks {
            let mut x = m.embed(c)?;
            for (b, inputs) in block_inputs.iter_mut().enumerate() {
                inputs.push(x.clone());
                if b < m.block_count() {
                    m.run_block(b, &mut x, c.len());
                }
            }
        }
        let mut r = Reference { chunks, block_inputs, rows, log_probs: Vec::new() };
        r.log_probs = r.log_probs_from(lm, r.block_count(), false)?;
        Ok(r)
    }

    fn block_count(&self) -> usize {
        self.block_inputs.len() - 1
    }

    /// Calibration tokens the measurement runs (all chunks).
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Rows whose distributions are compared.
    pub fn scored_rows(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    /// Log-probabilities at the scored rows with the model as it is now, running blocks
    /// `start..` from the kept inputs (`start == 0` with `embed_again`: from fresh
    /// embeddings, for a changed token embedding).
    fn log_probs_from(&self, lm: &LoadedLm, start: usize, embed_again: bool) -> Result<Vec<f32>> {
        let m = &lm.model;
        let d = m.hidden_size();
        let mut picked = Vec::with_capacity(self.scored_rows() * d);
        for (c, chunk) in self.chunks.iter().enumerate() {
            let mut x = if embed_again { m.embed(chunk)? } else { self.block_inputs[start][c].clone() };
            for b in start..self.block_count() {
                m.run_block(b, &mut x, chunk.len());
            }
            for &r in &self.rows[c] {
                picked.extend_from_slice(&x[r * d..(r + 1) * d]);
            }
        }
        m.final_norm(&mut picked);
        let n = self.scored_rows();
        let mut logits = m.logits(&picked, n);
        logits.par_chunks_exact_mut(m.vocab_size()).for_each(crate::kernels::pointwise::log_softmax);
        Ok(logits)
    }

    /// Mean KL divergence (nats per scored row) of the model as it is now from the
    /// source, when only tensor `name` changed.
    pub fn kld_with_change(&self, lm: &LoadedLm, name: &str) -> Result<f64> {
        let (start, embed_again) = match name {
            "token_embd.weight" => (0, true),
            "output.weight" => (self.block_count(), false),
            _ => (crate::plan::layer_of(name).unwrap_or(0), false),
        };
        let q = self.log_probs_from(lm, start, embed_again)?;
        let vocab = lm.model.vocab_size();
        // Per-row sums in parallel, added in row order: the same total on any thread count.
        let per_row: Vec<f64> = self
            .log_probs
            .par_chunks_exact(vocab)
            .zip(q.par_chunks_exact(vocab))
            .map(|(p, q)| crate::kernels::pointwise::kl_divergence(p, q))
            .collect();
        Ok(per_row.iter().sum::<f64>() / self.scored_rows().max(1) as f64)
    }
}

/// One tensor's measured sensitivity.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TensorSensitivity {
    /// GGUF name.
    pub name: String,
    /// The type it was probed with.
    pub probe: String,
    /// The probe's importance-weighted squared error, over the whole tensor.
    pub probe_error: f64,
    /// The KL divergence (nats per row) with only this tensor probed.
    pub probe_kld: f64,
}

impl TensorSensitivity {
    /// `S_t`: KL divergence per unit of importance-weighted squared error.
    pub fn scale(&self) -> f64 {
        if self.probe_error > 0.0 {
            self.probe_kld.max(0.0) / self.probe_error
        } else {
            0.0
        }
    }
}

/// The importance-weighted squared difference of `a` and `b` (rows of `cols`), with
/// `importance` per column (uniform without one).
pub fn weighted_error(a: &[f32], b: &[f32], cols: usize, importance: Option<&[f32]>) -> f64 {
    let imp = importance.filter(|i| i.len() == cols);
    a.chunks_exact(cols)
        .zip(b.chunks_exact(cols))
        .map(|(ra, rb)| {
            ra.iter()
                .zip(rb)
                .enumerate()
                .map(|(j, (&x, &y))| {
                    let e = (x - y) as f64;
                    imp.map_or(1.0, |i| i[j] as f64) * e * e
                })
                .sum::<f64>()
        })
        .sum()
}

/// Encodes `weights` as `ty` the way the candidates' errors are estimated (the
/// importance-weighted block search) and decodes it back.
pub fn round_trip(ty: StorageType, weights: &[f32], cols: usize, importance: Option<&[f32]>) -> Result<Vec<f32>> {
    let calibration = Calibration { importance, hessian: None };
    let e = quantize_tensor(ty, weights, cols, Method::Search, &calibration, &MethodOptions::default())
        .map_err(|e| Error::Usage(format!("cannot encode as {ty}: {e}")))?;
    e.decode(ty, weights.len(), cols).map_err(|e| Error::Usage(format!("cannot decode {ty}: {e}")))
}

/// Swaps tensor `name`'s source values for their round trip through `ty`, measures the KL
/// divergence from `reference`, and puts the source values back. Returns the round trip's
/// importance-weighted error and that KL divergence.
pub fn swap_kld(
    lm: &mut LoadedLm,
    reference: &Reference,
    name: &str,
    ty: StorageType,
    importance: Option<&[f32]>,
) -> Result<(f64, f64)> {
    let w = lm.model.weight_mut(name).ok_or_else(|| Error::Usage(format!("tensor '{name}': not a model matrix")))?;
    let cols = match w.packed() {
        Some(p) => p.cols(),
        None => return Err(Error::Usage(format!("tensor '{name}': expected stored weights"))),
    };
    let dense = w.dense().into_owned();
    let swapped = round_trip(ty, &dense, cols, importance)?;
    let error = weighted_error(&dense, &swapped, cols, importance);
    let original = std::mem::replace(lm.model.weight_mut(name).expect("found above"), Weight::Dense(swapped));
    let kld = reference.kld_with_change(lm, name);
    *lm.model.weight_mut(name).expect("found above") = original;
    Ok((error, kld?))
}

/// Measures `S_t` for each `(tensor, probe type)` in `probes` ([`swap_kld`] with the
/// probe). `progress(done, total)` counts tensors.
pub fn measure(
    lm: &mut LoadedLm,
    reference: &Reference,
    probes: &[(String, StorageType)],
    importance: &HashMap<String, Vec<f32>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<TensorSensitivity>> {
    let mut out = Vec::with_capacity(probes.len());
    progress(0, probes.len());
    for (i, (name, probe)) in probes.iter().enumerate() {
        crate::interrupt::check()?;
        let imp = importance.get(name).map(Vec::as_slice);
        let (probe_error, probe_kld) = swap_kld(lm, reference, name, *probe, imp)?;
        out.push(TensorSensitivity { name: name.clone(), probe: probe.to_string(), probe_error, probe_kld });
        progress(i + 1, probes.len());
    }
    Ok(out)
}
