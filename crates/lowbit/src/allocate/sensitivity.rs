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
//! with logits only at the scored rows, and for a tensor inside the blocks only for the
//! vocabulary's head ([`Head`]: the entries holding 97 % of each row's probability, the
//! rest of the KL divergence to second order). Probes of block matrices run as many at once
//! as there are threads, each a one-tensor override of the shared model (`Prepared`).

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::method::{quantize_tensor, Calibration, Method, MethodOptions};
use crate::model::{Linear, LoadedLm, Weight};

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
    /// The vocabulary entries that carry the source's probability at the scored rows, for
    /// measuring a change inside the blocks without every logit ([`Head`]); `None` where
    /// they are most of the vocabulary.
    head: Option<Head>,
}

/// Probability a scored row may leave outside the [`Head`]'s vocabulary entries. Measured
/// on smollm2-135m (`lowbit sensitivity --calib austen`, all 210 probes inside the blocks,
/// each also measured over every logit): 3e-2 keeps 15,249 of 49,152 entries, and the
/// head's KL divergence is 0.987–1.018× the full one (median 1.0001, 90 % within ±0.5 %),
/// the logits' share of the measurements 34 s instead of 100 s on a loaded machine; 1e-2
/// kept 21,182 entries, 1e-3 more than half the vocabulary (no head). Without the tail's
/// second-order term the ratio was 0.985–0.988 at 1e-2.
const TAIL_MASS: f64 = 3e-2;

/// A change inside the blocks moves every logit, but the KL divergence is carried by the
/// few vocabulary entries that hold the source's probability: `KL = Σ p̃ᵢ (zᵢ − z'ᵢ) + ln
/// (Σ e^z'ᵢ / Σ e^zᵢ)`. Over the head (entries holding all but [`TAIL_MASS`] of every
/// scored row's probability) both sums are exact; over the tail, logits are linear in the
/// final hidden state (`z'ᵢ − zᵢ = wᵢ·δh`), so `Σ p̃ᵢ (zᵢ − z'ᵢ) = −u·δh` exactly with
/// `u = Σ_tail p̃ᵢ wᵢ`, and `Σ e^z'ᵢ` is taken to second order (`e^zᵢ (1 + wᵢ·δh +
/// ½ (wᵢ·δh)²)`), the second-order term with every row's tail shaped as the rows' average
/// tail. What it saves: the tail's logits (gemma3's 262k vocabulary: the logits were most
/// of each measurement).
struct Head {
    /// The entries' rows of the output matrix (entries × hidden, f32; ascending entries).
    w: Vec<f32>,
    /// The source's logits of the entries at each scored row (rows × entries).
    z: Vec<f32>,
    /// The source's probabilities of the entries (rows × entries), `e^(z − lse) / norm`.
    p: Vec<f32>,
    /// Per row: the log-sum-exp the source's log-probabilities were shifted by.
    lse: Vec<f32>,
    /// Per row: the tail's probability.
    tail: Vec<f64>,
    /// Per row: `Σ_head e^(z − lse) + tail` (1 up to rounding; makes a null change 0).
    norm: Vec<f64>,
    /// Per row: `Σ_tail p̃ᵢ wᵢ` (rows × hidden).
    u: Vec<f32>,
    /// The source's final hidden states at the scored rows (rows × hidden).
    hidden: Vec<f32>,
    /// `Σ q̄ᵢ wᵢ wᵢᵀ / Σ q̄ᵢ` (hidden × hidden), `q̄ᵢ` a tail entry's probability summed
    /// over the rows: the tail's second-order term, each row's taken as its tail mass
    /// times this average.
    second: Vec<f32>,
}

impl Head {
    /// The head of the source's distributions (`log_probs`, rows × vocabulary, shifted by
    /// `lse` per row, from the final `hidden` states), or `None` where it would hold more
    /// than half the vocabulary or the logits are not the output matrix times the hidden
    /// state (checked on the head: a soft-cap or bias would break the linear tail).
    fn new(lm: &LoadedLm, log_probs: &[f32], lse: &[f32], hidden: &[f32]) -> Option<Head> {
        let (v, d) = (lm.model.vocab_size(), lm.model.hidden_size());
        let rows = lse.len();
        // Entries by their largest probability at any row, until every row has all but
        // TAIL_MASS of its probability in the head.
        let mut most = vec![f32::NEG_INFINITY; v];
        for row in log_probs.chunks_exact(v) {
            most.iter_mut().zip(row).for_each(|(m, &lp)| *m = m.max(lp));
        }
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| most[b].total_cmp(&most[a]).then(a.cmp(&b)));
        let mut covered = vec![0f64; rows];
        let mut pending = rows;
        let mut k = 0;
        while pending > 0 && k < v / 2 {
            let i = order[k];
            for (r, c) in covered.iter_mut().enumerate() {
                let short = *c < 1.0 - TAIL_MASS;
                *c += (log_probs[r * v + i] as f64).exp();
                if short && *c >= 1.0 - TAIL_MASS {
                    pending -= 1;
                }
            }
            k += 1;
        }
        if pending > 0 {
            return None;
        }
        let mut tokens = order[..k].to_vec();
        tokens.sort_unstable();
        let mut w = vec![0f32; k * d];
        w.par_chunks_exact_mut(d).zip(&tokens).for_each(|(row, &i)| lm.model.output_rows(i, row));
        let mut z = vec![0f32; rows * k];
        crate::tensor::matmul_wt(hidden, rows, d, &w, k, &mut z);
        // The logits must be the output matrix times the hidden state.
        let linear = (0..rows).all(|r| {
            tokens.iter().enumerate().all(|(j, &i)| {
                let exact = log_probs[r * v + i] + lse[r];
                (z[r * k + j] - exact).abs() <= 1e-3 * (1.0 + exact.abs())
            })
        });
        if !linear {
            return None;
        }
        let mut in_head = vec![false; v];
        tokens.iter().for_each(|&i| in_head[i] = true);
        let tail: Vec<f64> = log_probs
            .par_chunks_exact(v)
            .map(|row| row.iter().zip(&in_head).filter(|(_, &h)| !h).map(|(&lp, _)| (lp as f64).exp()).sum())
            .collect();
        let mut p = vec![0f32; rows * k];
        let mut norm = vec![0f64; rows];
        p.par_chunks_exact_mut(k).zip(z.par_chunks_exact(k)).zip(norm.par_iter_mut()).enumerate().for_each(
            |(r, ((p, z), norm))| {
                let zero = vec![0f32; k];
                // Σ e^(z − lse) as a measurement will sum it, so a null change gives 0.
                let (_, b) = crate::kernels::pointwise::head_terms(&zero, z, z, lse[r]);
                *norm = b + tail[r];
                p.iter_mut().zip(z).for_each(|(p, &z)| *p = (((z - lse[r]) as f64).exp() / *norm) as f32);
            },
        );
        // u = Σ_tail p̃ᵢ wᵢ, a block of output rows at a time.
        const BLOCK: usize = 4096;
        let mut u = vec![0f32; rows * d];
        let mut wt = vec![0f32; d * BLOCK];
        let mut wb = vec![0f32; BLOCK * d];
        let mut pb = vec![0f32; rows * BLOCK];
        let mut part = vec![0f32; rows * d];
        let mut second = vec![0f32; d * d];
        let mut second_part = vec![0f32; d * d];
        let mut tail_total = 0f64;
        for i0 in (0..v).step_by(BLOCK) {
            let n = BLOCK.min(v - i0);
            lm.model.output_rows(i0, &mut wb[..n * d]);
            for (j, row) in wb[..n * d].chunks_exact(d).enumerate() {
                row.iter().enumerate().for_each(|(c, &x)| wt[c * n + j] = x);
            }
            for r in 0..rows {
                for j in 0..n {
                    let i = i0 + j;
                    pb[r * n + j] =
                        if in_head[i] { 0.0 } else { ((log_probs[r * v + i] as f64).exp() / norm[r]) as f32 };
                }
            }
            crate::tensor::matmul_wt(&pb[..rows * n], rows, n, &wt[..d * n], d, &mut part);
            u.iter_mut().zip(&part).for_each(|(u, p)| *u += p);
            // Σ q̄ᵢ wᵢ wᵢᵀ: the block's output rows scaled by √q̄ᵢ, times themselves.
            let q: Vec<f64> = (0..n).map(|j| (0..rows).map(|r| pb[r * n + j] as f64).sum()).collect();
            tail_total += q.iter().sum::<f64>();
            for c in 0..d {
                wt[c * n..(c + 1) * n].iter_mut().zip(&q).for_each(|(x, &q)| *x *= q.sqrt() as f32);
            }
            crate::tensor::matmul_wt(&wt[..d * n], d, n, &wt[..d * n], d, &mut second_part);
            second.iter_mut().zip(&second_part).for_each(|(m, p)| *m += p);
        }
        if tail_total > 0.0 {
            second.iter_mut().for_each(|m| *m = (*m as f64 / tail_total) as f32);
        }
        Some(Head { w, z, p, lse: lse.to_vec(), tail, norm, u, hidden: hidden.to_vec(), second })
    }

    /// Mean KL divergence (nats per row) from the source of the model whose final hidden
    /// states at the scored rows are `hidden` (its output matrix the source's).
    fn kld(&self, hidden: &[f32]) -> f64 {
        let rows = self.lse.len();
        let (k, d) = (self.p.len() / rows.max(1), self.hidden.len() / rows.max(1));
        let mut zq = vec![0f32; rows * k];
        crate::tensor::matmul_wt(hidden, rows, d, &self.w, k, &mut zq);
        // δh and δh·M (M symmetric), for the tail's first- and second-order terms.
        let dh: Vec<f32> = hidden.iter().zip(&self.hidden).map(|(&a, &b)| a - b).collect();
        let mut dhm = vec![0f32; rows * d];
        crate::tensor::matmul_wt(&dh, rows, d, &self.second, d, &mut dhm);
        let per_row: Vec<f64> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let span = r * k..(r + 1) * k;
                let (a, b) = crate::kernels::pointwise::head_terms(
                    &self.p[span.clone()],
                    &self.z[span.clone()],
                    &zq[span],
                    self.lse[r],
                );
                let hs = r * d..(r + 1) * d;
                let ud: f64 = self.u[hs.clone()].iter().zip(&dh[hs.clone()]).map(|(&u, &x)| u as f64 * x as f64).sum();
                let quad: f64 = dh[hs.clone()].iter().zip(&dhm[hs]).map(|(&x, &y)| x as f64 * y as f64).sum();
                let ratio = (b + self.tail[r] + self.norm[r] * ud + 0.5 * self.tail[r] * quad) / self.norm[r];
                a - ud + ratio.max(f64::MIN_POSITIVE).ln()
            })
            .collect();
        per_row.iter().sum::<f64>() / rows.max(1) as f64
    }
}

/// What a cached measurement was made under (part of the cache key): bump it when the
/// measurement itself changes.
pub const PROTOCOL: &str =
    "kld at rows from 64 of each chunk, up to 2^27 log-probabilities, f32 exponentials, head of 0.97 with a second-order tail";

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
        let mut r = Reference { chunks, block_inputs, rows, log_probs: Vec::new(), head: None };
        let hidden = r.final_hidden(lm, r.block_count(), false, None)?;
        let (log_probs, lse) = log_probs_of(lm, &hidden);
        r.head = Head::new(lm, &log_probs, &lse, &hidden);
        r.log_probs = log_probs;
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

    /// The final (normed) hidden states at the scored rows with the model as it is now
    /// (block `start`'s layer `swap`, if any, in place of the model's own), running
    /// blocks `start..` from the kept inputs (`start == 0` with `embed_again`: from fresh
    /// embeddings, for a changed token embedding).
    fn final_hidden(&self, lm: &LoadedLm, start: usize, embed_again: bool, swap: Option<&Linear>) -> Result<Vec<f32>> {
        let m = &lm.model;
        let d = m.hidden_size();
        let mut picked = Vec::with_capacity(self.scored_rows() * d);
        for (c, chunk) in self.chunks.iter().enumerate() {
            let mut x = if embed_again { m.embed(chunk)? } else { self.block_inputs[start][c].clone() };
            for b in start..self.block_count() {
                match swap {
                    Some(s) if b == start => m.run_block_swapped(b, &mut x, chunk.len(), s),
                    _ => m.run_block(b, &mut x, chunk.len()),
                }
            }
            for &r in &self.rows[c] {
                picked.extend_from_slice(&x[r * d..(r + 1) * d]);
            }
        }
        m.final_norm(&mut picked);
        Ok(picked)
    }

    /// Mean KL divergence (nats per scored row) of the model as it is now from the
    /// source, when only tensor `name` changed — in the model, or given as `swap` (a
    /// block matrix standing in for the model's own).
    pub fn kld_with_change(&self, lm: &LoadedLm, name: &str, swap: Option<&Linear>) -> Result<f64> {
        let (start, embed_again) = match name {
            "token_embd.weight" => (0, true),
            "output.weight" => (self.block_count(), false),
            _ => (crate::plan::layer_of(name).unwrap_or(0), false),
        };
        let hidden = self.final_hidden(lm, start, embed_again, swap)?;
        // A change of the output matrix (or of the embedding it may be tied to) moves the
        // logits in other ways: those get every logit.
        let output_changed = matches!(name, "token_embd.weight" | "output.weight");
        if let (Some(head), false) = (&self.head, output_changed) {
            return Ok(head.kld(&hidden));
        }
        let (q, _) = log_probs_of(lm, &hidden);
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

/// Log-probabilities for final hidden states `hidden` (rows × vocabulary), and the
/// log-sum-exp each row was shifted by.
fn log_probs_of(lm: &LoadedLm, hidden: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let m = &lm.model;
    let n = hidden.len() / m.hidden_size().max(1);
    let mut logits = m.logits(hidden, n);
    let lse = logits.par_chunks_exact_mut(m.vocab_size()).map(crate::kernels::pointwise::log_softmax).collect();
    (logits, lse)
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
    if let Some(p) = Prepared::new(lm, name)? {
        return p.kld(lm, reference, ty, importance);
    }
    let w = lm.model.weight_mut(name).ok_or_else(|| Error::Usage(format!("tensor '{name}': not a model matrix")))?;
    let cols = match w.packed() {
        Some(p) => p.cols(),
        None => return Err(Error::Usage(format!("tensor '{name}': expected stored weights"))),
    };
    let dense = w.dense().into_owned();
    let swapped = round_trip(ty, &dense, cols, importance)?;
    let error = weighted_error(&dense, &swapped, cols, importance);
    let original = std::mem::replace(lm.model.weight_mut(name).expect("found above"), Weight::Dense(swapped));
    let kld = reference.kld_with_change(lm, name, None);
    *lm.model.weight_mut(name).expect("found above") = original;
    Ok((error, kld?))
}

/// A block matrix's probe made ready to run beside others: its source values and what
/// its stand-in layer copies from the model's (so the model itself is never changed).
struct Prepared {
    dense: Vec<f32>,
    layer: Linear,
}

impl Prepared {
    /// `Some` for a block matrix of `lm` in its stored format; `None` for the token
    /// embedding and the output matrix (which are swapped into the model instead).
    fn new(lm: &mut LoadedLm, name: &str) -> Result<Option<Prepared>> {
        let Some(l) = lm.model.block_linears_mut().into_iter().find(|l| l.name == name) else { return Ok(None) };
        if l.weight.packed().is_none() {
            return Err(Error::Usage(format!("tensor '{name}': expected stored weights")));
        }
        let layer = Linear {
            name: l.name.clone(),
            weight: Weight::Dense(Vec::new()),
            bias: l.bias.clone(),
            in_features: l.in_features,
            out_features: l.out_features,
            act_quant: l.act_quant,
        };
        Ok(Some(Prepared { dense: l.weight.dense().into_owned(), layer }))
    }

    /// The round trip through `ty`'s importance-weighted error and the KL divergence with
    /// it in place of the source's matrix.
    fn kld(
        &self,
        lm: &LoadedLm,
        reference: &Reference,
        ty: StorageType,
        importance: Option<&[f32]>,
    ) -> Result<(f64, f64)> {
        let cols = self.layer.in_features;
        let swapped = round_trip(ty, &self.dense, cols, importance)?;
        let error = weighted_error(&self.dense, &swapped, cols, importance);
        let layer = Linear {
            name: self.layer.name.clone(),
            weight: Weight::Dense(swapped),
            bias: self.layer.bias.clone(),
            in_features: self.layer.in_features,
            out_features: self.layer.out_features,
            act_quant: self.layer.act_quant,
        };
        Ok((error, reference.kld_with_change(lm, &layer.name, Some(&layer))?))
    }
}

/// Measures `S_t` for each `(tensor, probe type)` in `probes` ([`swap_kld`] with the
/// probe). Consecutive block matrices are probed as many at once as there are threads (a
/// probe runs one 512-token chunk, too little to keep two threads busy on its own:
/// smollm2's 211 probes took 258 s instead of 298 s, interleaved on a loaded machine); each
/// probe's numbers do not depend on which ran beside it (the same cost table, byte for
/// byte).
/// `progress(done, total)` counts tensors.
pub fn measure(
    lm: &mut LoadedLm,
    reference: &Reference,
    probes: &[(String, StorageType)],
    importance: &HashMap<String, Vec<f32>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<TensorSensitivity>> {
    let group = rayon::current_num_threads().max(1);
    let mut out = Vec::with_capacity(probes.len());
    let done = |name: &String, probe: &StorageType, (probe_error, probe_kld): (f64, f64)| TensorSensitivity {
        name: name.clone(),
        probe: probe.to_string(),
        probe_error,
        probe_kld,
    };
    progress(0, probes.len());
    let mut i = 0;
    while i < probes.len() {
        crate::interrupt::check()?;
        let mut ready = Vec::new();
        while ready.len() < group && i + ready.len() < probes.len() {
            match Prepared::new(lm, &probes[i + ready.len()].0)? {
                Some(p) => ready.push(p),
                None => break,
            }
        }
        if ready.is_empty() {
            let (name, probe) = &probes[i];
            out.push(done(
                name,
                probe,
                swap_kld(lm, reference, name, *probe, importance.get(name).map(Vec::as_slice))?,
            ));
            i += 1;
        } else {
            let lm: &LoadedLm = lm;
            let batch = &probes[i..i + ready.len()];
            let measured: Vec<Result<(f64, f64)>> = ready
                .par_iter()
                .zip(batch)
                .map(|(p, (name, probe))| p.kld(lm, reference, *probe, importance.get(name).map(Vec::as_slice)))
                .collect();
            for ((name, probe), m) in batch.iter().zip(measured) {
                out.push(done(name, probe, m?));
            }
            i += batch.len();
        }
        progress(i, probes.len());
    }
    Ok(out)
}
