//! Bit allocation to a size target: every quantizable tensor gets the storage type that
//! minimises the model's predicted KL divergence from the source under a byte budget
//! (`lowbit quantize --size 90MB` / `--bpw 3.4`), instead of a mix's fixed rules.
//!
//! 1. [`cost_table`]: for every tensor, its sensitivity `S_t` measured end to end
//!    ([`sensitivity`]), and for every candidate type its bytes and importance-weighted
//!    error (the block search on up to [`CostOptions::sample_rows`] evenly spaced rows,
//!    scaled to the whole tensor); predicted cost = `S_t × error`. Cached under
//!    `$LOWBIT_HOME/allocation/`, so several sizes of one model measure once.
//! 2. [`allocate`]: the exact multiple-choice knapsack over those costs ([`knapsack`]),
//!    within the target less the bytes of tensors that stay as they are and a bound on
//!    the GGUF header, so the file is never larger than asked. [`refine`] then measures
//!    the swaps the chosen allocation re-quantizes end to end (at most
//!    [`CostOptions::refine`]), puts the measurements in place of the predictions and
//!    allocates again, until what is chosen was measured.
//! 3. The result is a [`Recipe`]: one exact-name override per tensor, which the ordinary
//!    plan and writer then follow (printed by `--dry-run`, written beside the output and in
//!    the GGUF's `lowbit.quantize.overrides`, reusable with `--recipe FILE`).
//!
//! Candidates with `--llama-cpp` are the ggml types llama.cpp runs (and lowbit writes);
//! without it also lowbit-native group-wise formats ([`NATIVE_CANDIDATES`]), whose files
//! only lowbit runs. VQ candidates are not searched yet (a codebook is fitted to the whole
//! tensor, so a row sample's error would not estimate it).

pub mod knapsack;
pub mod sensitivity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::calibrate::CalibrationText;
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::format::storage::StorageType;
use crate::format::GgmlType;
use crate::gguf::{GgufFile, TensorType};
use crate::model::LoadedLm;
use crate::plan::{allows_quantization, Mix, Override};
use knapsack::Choice;
use rayon::prelude::*;
use sensitivity::{round_trip, weighted_error, Reference, TensorSensitivity};

/// What size the output should have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeTarget {
    /// At most this many bytes for the whole file.
    Bytes(u64),
    /// At most this many bits per weight over the whole file (file bits / all elements,
    /// as llama.cpp reports a file's BPW).
    Bpw(f64),
}

impl SizeTarget {
    /// Parses `--size`: bytes (`94371840`) or a number with a unit (`90MB`, `85.5MiB`,
    /// `1.2GB`, `500kB`; SI units are powers of 1000, `Ki`/`Mi`/`Gi` of 1024).
    pub fn parse_size(text: &str) -> Result<SizeTarget> {
        crate::units::parse_bytes("--size", text).map(SizeTarget::Bytes)
    }

    /// The byte budget for a model of `elements` weights in all.
    pub fn bytes(&self, elements: u64) -> u64 {
        match *self {
            SizeTarget::Bytes(b) => b,
            SizeTarget::Bpw(bpw) => (bpw * elements as f64 / 8.0).floor() as u64,
        }
    }
}

/// ggml types llama.cpp runs that allocation chooses among (lowbit writes all of them).
/// The 1-bit i-quants are left out: below IQ2_XXS the damage is larger than any byte
/// saving buys back at the sizes llama.cpp's mixes cover.
const LLAMA_CPP_TYPES: &[GgmlType] = &[
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::Q2_K,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::Q3_K,
    GgmlType::IQ4_XS,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// lowbit-native candidates (without `--llama-cpp`): group-wise integers and NF4 with
/// groups of 64 or 128, which fit rows where ggml's 256-value blocks do not. Gemma 3's
/// 640-wide rows admit no ggml type below 4.5 bits per weight (Q4_0/IQ4_NL), so at
/// `--size 150MB` llama.cpp's types left 231M of its 268M weights at 4.5 bits and pushed
/// attn_output/ffn_down to 2 bits; these give the allocation 2.5–6 bits there.
const NATIVE_CANDIDATES: &[&str] =
    &["int2_g64_zp", "int3_g128", "int3_g64_zp", "int4_g128", "nf4_g64", "int5_g128", "int6_g128"];

/// The candidate types for a tensor whose rows have `ncols` values: the ggml types
/// llama.cpp runs, and with `native` also [`NATIVE_CANDIDATES`].
pub fn candidates(ncols: u64, native: bool) -> Vec<StorageType> {
    let ggml = LLAMA_CPP_TYPES.iter().map(|&t| StorageType::Ggml(t));
    let natives = NATIVE_CANDIDATES
        .iter()
        .filter(|_| native)
        .map(|n| StorageType::from_name(n).expect("native candidates are valid names"));
    ggml.chain(natives)
        .filter(|t| ncols.is_multiple_of(t.block_size() as u64))
        .filter(StorageType::can_encode)
        .collect()
}

/// The probe type for a tensor: the candidate nearest 3.5 bits per weight.
pub fn probe_type(cands: &[StorageType]) -> StorageType {
    let bpw = |t: &StorageType| match t {
        StorageType::Ggml(g) => g.bits_per_weight(),
        _ => 16.0,
    };
    *cands.iter().min_by(|a, b| (bpw(a) - 3.5).abs().total_cmp(&(bpw(b) - 3.5).abs())).expect("Q8_0 always fits")
}

/// One candidate type of one tensor.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CandidateCost {
    /// The type's name.
    pub ty: String,
    /// Bytes the tensor takes in it.
    pub bytes: u64,
    /// Importance-weighted squared error (estimated from the sampled rows).
    pub error: f64,
}

impl CandidateCost {
    /// The storage type the table names; a clear error for a table naming a type this
    /// build does not know (a cost table written by another version).
    pub fn storage_type(&self) -> Result<StorageType> {
        StorageType::from_name(&self.ty).ok_or_else(|| Error::Usage(format!("cost table: unknown type '{}'", self.ty)))
    }
}

/// Everything allocation knows about one tensor.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TensorCosts {
    /// GGUF name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Its measured sensitivity.
    pub sensitivity: TensorSensitivity,
    /// Its candidate types.
    pub candidates: Vec<CandidateCost>,
    /// Whole-tensor swaps measured end to end by [`refine`] (empty in a fresh table).
    #[serde(default)]
    pub measured: Vec<MeasuredSwap>,
}

/// The KL divergence measured with only one tensor swapped to one candidate type (on the
/// sensitivity chunks, as the probe was).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MeasuredSwap {
    /// The candidate's type name.
    pub ty: String,
    /// KL divergence from the source, nats per scored row.
    pub kld: f64,
}

impl TensorCosts {
    /// Predicted KL divergence (nats per token) of candidate `k`: `S_t × error`.
    pub fn predicted(&self, k: usize) -> f64 {
        self.sensitivity.scale() * self.candidates[k].error
    }

    /// What candidate `k` costs the allocation: the measured KL divergence where the swap
    /// to it was run end to end — the probe always, others after [`refine`] — else
    /// [`TensorCosts::predicted`]. A lossless candidate (error 0) costs 0.
    pub fn cost(&self, k: usize) -> f64 {
        self.measured_kld(k).unwrap_or_else(|| self.predicted(k))
    }

    /// What candidate `k` adds to the file: its data padded to `align`, and what its type
    /// adds to the header ([`crate::gguf::extra_bytes`]: a native format's metadata entry).
    pub fn file_bytes(&self, k: usize, align: u64) -> Result<u64> {
        let c = &self.candidates[k];
        Ok(stored_bytes(&self.name, c.storage_type()?, c.bytes, align))
    }

    /// The measured KL divergence of candidate `k`, if it was measured.
    pub fn measured_kld(&self, k: usize) -> Option<f64> {
        let c = &self.candidates[k];
        if c.error <= 0.0 {
            return Some(0.0);
        }
        if c.ty == self.sensitivity.probe {
            return Some(self.sensitivity.probe_kld.max(0.0));
        }
        self.measured.iter().find(|m| m.ty == c.ty).map(|m| m.kld.max(0.0))
    }
}

/// The measured costs of every quantizable tensor of one source model.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CostTable {
    /// What the table was measured for (source, text, settings), hashed.
    pub key: String,
    /// Calibration tokens run per sensitivity measurement.
    pub tokens: usize,
    /// Rows whose distributions were compared.
    pub scored_rows: usize,
    /// Per tensor.
    pub tensors: Vec<TensorCosts>,
}

/// How the costs are measured.
#[derive(Clone, Copy, Debug)]
pub struct CostOptions {
    /// Chunks of the calibration text for the sensitivity passes.
    pub chunks: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Rows of a tensor each candidate's error is estimated on (evenly spaced; all rows of
    /// a smaller tensor); the error is scaled by rows / sampled rows.
    pub sample_rows: usize,
    /// Only the ggml types llama.cpp runs (`--llama-cpp`); otherwise lowbit-native
    /// formats too (files only lowbit runs).
    pub llama_cpp_only: bool,
    /// At most this many whole-tensor swaps [`refine`] measures per allocation (0: use
    /// the predictions alone).
    pub refine: usize,
}

impl Default for CostOptions {
    /// One chunk of 512 tokens (448 scored rows): measured on smollm2-135m at `--size
    /// 75MB` (Austen calibration, KLD on wiki.valid 40 × 512), one chunk gave KLD 0.1452
    /// and two 0.1469 — 8 of 211 tensors typed differently — for 0.81× the CPU time of the
    /// whole quantization. 256 rows per candidate error keep 17 candidate encodes of every
    /// tensor under a minute.
    fn default() -> Self {
        CostOptions { chunks: 1, ctx: 512, sample_rows: 256, llama_cpp_only: false, refine: REFINE_SWAPS }
    }
}

/// Swaps [`refine`] measures by default: none, since measuring them did not pay (one
/// sensitivity chunk, Austen calibration, KLD on wiki.valid 40 × 512, `--no-sequential`):
/// gemma3-270m at llama.cpp's Q4_K_S size (249,887,712 bytes, `--llama-cpp`) 0.006822
/// without and 0.006951 with 48 swaps measured (+1.9 %; the calibration-chunk prediction
/// fell from 0.00617 to 0.00601); smollm2-135m at 75 MB 0.14483 without and 0.14416 with
/// (−0.5 %), for 70 s more. The measured swaps agree with the proxy (measured/predicted
/// quartiles 0.83–1.10 on gemma3), so refinement re-orders a few close swaps, fitted to one
/// 512-token chunk (then 112 scored rows for Gemma 3's 262k vocabulary; all 448 since
/// [`sensitivity`] keeps 2^27 log-probabilities) that differs from other text by more than
/// those swaps do. Not re-measured with 448 rows.
pub const REFINE_SWAPS: usize = 0;

/// The two steps of measuring a cost table, for progress: the sensitivities (a forward
/// pass per tensor), then every candidate's error on each tensor's sampled rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostStep {
    /// [`sensitivity::measure`].
    Sensitivity,
    /// The candidates' errors.
    Candidates,
}

fn cache_path(key: &str) -> PathBuf {
    crate::zoo::home().join("allocation").join(format!("{key}.json"))
}

/// Writes `table` to its cache file. The cache is an optimisation: a read-only home only
/// costs a re-measurement.
fn save_table(table: &CostTable) {
    let path = cache_path(&table.key);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = crate::atomic::write_atomic(&path, &serde_json::to_vec(table).expect("serializable"));
    }
}

fn table_key(source: &Path, text: &CalibrationText, importance_key: &str, opts: &CostOptions) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update(crate::eval::file_identity(source));
    h.update(text.text.as_bytes());
    h.update(importance_key);
    h.update(format!("{} {} {} {:?}", opts.chunks, opts.ctx, opts.sample_rows, LLAMA_CPP_TYPES));
    if !opts.llama_cpp_only {
        h.update(format!("{NATIVE_CANDIDATES:?}"));
    }
    h.update(sensitivity::PROTOCOL);
    crate::hex(&h.finalize()[..16])
}

/// Measures (or reads from the cache) the cost table of `g` (opened from `source`):
/// sensitivities on `text`, candidate errors weighted by `importance`.
/// `importance_key` names where the importances came from (part of the cache key).
/// `progress(step, done, total)` counts tensors, in each step.
pub fn cost_table(
    source: &Path,
    g: &GgufFile,
    text: &CalibrationText,
    importance: &HashMap<String, Vec<f32>>,
    importance_key: &str,
    opts: &CostOptions,
    progress: &mut dyn FnMut(CostStep, usize, usize),
) -> Result<CostTable> {
    let key = table_key(source, text, importance_key, opts);
    let path = cache_path(&key);
    if let Some(t) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<CostTable>(&b).ok()) {
        if t.key == key {
            return Ok(t);
        }
    }
    let (mut lm, reference) = source_reference(g, text, opts)?;
    let mut probes = Vec::new();
    let mut entries = Vec::new();
    for t in &g.tensors {
        if !allows_quantization(&t.name, &t.dims) || t.dims.len() != 2 || lm.model.weight_mut(&t.name).is_none() {
            continue;
        }
        if !matches!(t.ty, TensorType::Known(_)) {
            continue;
        }
        let cands = candidates(t.dims[0], !opts.llama_cpp_only);
        probes.push((t.name.clone(), probe_type(&cands)));
        entries.push((t.name.clone(), t.dims.clone(), cands));
    }
    let sens = sensitivity::measure(&mut lm, &reference, &probes, importance, &mut |d, t| {
        progress(CostStep::Sensitivity, d, t)
    })?;
    drop(lm);
    let n = entries.len();
    let mut tensors = Vec::with_capacity(n);
    progress(CostStep::Candidates, 0, n);
    for ((name, dims, cands), s) in entries.into_iter().zip(sens) {
        crate::interrupt::check()?;
        let cols = dims[0] as usize;
        let values = g.dequantize(&name)?;
        let rows = values.len() / cols;
        let step = rows.div_ceil(opts.sample_rows.max(1)).max(1);
        let sample: Vec<f32> =
            (0..rows).step_by(step).flat_map(|r| values[r * cols..(r + 1) * cols].to_vec()).collect();
        let scale = rows as f64 / (sample.len() / cols) as f64;
        let imp = importance.get(&name).map(Vec::as_slice);
        // Candidates encode in parallel (a 256-row sample is too small to split by rows);
        // collected in candidate order, so the table is the same on any thread count.
        let costs = cands
            .par_iter()
            .map(|&ty| {
                let bytes = ty.tensor_bytes(&dims).expect("candidates fit the rows");
                let back =
                    round_trip(ty, &sample, cols, imp).map_err(|e| Error::tensor(source, &name, e.to_string()))?;
                Ok(CandidateCost {
                    ty: ty.to_string(),
                    bytes,
                    error: scale * weighted_error(&sample, &back, cols, imp),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        g.release(&name);
        tensors.push(TensorCosts { name, dims, sensitivity: s, candidates: costs, measured: Vec::new() });
        progress(CostStep::Candidates, tensors.len(), n);
    }
    let table = CostTable { key, tokens: reference.tokens(), scored_rows: reference.scored_rows(), tensors };
    save_table(&table);
    Ok(table)
}

/// Measures, end to end, the swaps the allocation within `budget` relies on, until every
/// tensor it re-quantizes costs what was measured for it or `opts.refine` swaps have been
/// run: allocate; measure each chosen type not measured yet (largest predicted cost
/// first) with only that tensor swapped, on the sensitivity chunks; record it in the
/// table ([`TensorCosts::cost`] then uses it); allocate again — a measurement above its
/// prediction can move the choice to a candidate still predicted, which the next round
/// measures. The proxy ranks single swaps well (Spearman 0.994) but its ratio to the
/// measurement spreads 0.65–1.79; where an allocation hinges on a few swaps (a target
/// just below the source's size) that spread decides it.
///
/// Measured swaps are cached with the table, but the table returned holds only the ones
/// this refinement chose (a cached swap counts as if measured again), so the allocation
/// is the same whatever earlier runs left in the cache. `progress(done, most)` counts
/// swaps. Returns the swaps chosen.
#[allow(clippy::too_many_arguments)]
pub fn refine(
    g: &GgufFile,
    table: &mut CostTable,
    text: &CalibrationText,
    importance: &HashMap<String, Vec<f32>>,
    opts: &CostOptions,
    budget: u64,
    fixed: &[Override],
    align: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    let mut stored: HashMap<(String, String), f64> = HashMap::new();
    for t in &mut table.tensors {
        for m in std::mem::take(&mut t.measured) {
            stored.insert((t.name.clone(), m.ty), m.kld);
        }
    }
    let mut source: Option<(LoadedLm, Reference)> = None;
    let mut fresh = false;
    let mut measure = |name: &str, ty: StorageType| -> Result<f64> {
        if let Some(&kld) = stored.get(&(name.to_string(), ty.to_string())) {
            return Ok(kld);
        }
        if source.is_none() {
            source = Some(source_reference(g, text, opts)?);
        }
        let (lm, reference) = source.as_mut().expect("loaded above");
        let (_, kld) = sensitivity::swap_kld(lm, reference, name, ty, importance.get(name).map(Vec::as_slice))?;
        stored.insert((name.to_string(), ty.to_string()), kld);
        fresh = true;
        Ok(kld)
    };
    let done = refine_with(table, opts.refine, budget, fixed, align, &mut measure, progress)?;
    if fresh {
        let mut all = table.clone();
        for t in &mut all.tensors {
            t.measured = stored
                .iter()
                .filter(|((n, _), _)| *n == t.name)
                .map(|((_, ty), &kld)| MeasuredSwap { ty: ty.clone(), kld })
                .collect();
            t.measured.sort_by(|a, b| a.ty.cmp(&b.ty));
        }
        save_table(&all);
    }
    Ok(done)
}

/// [`refine`]'s loop, with `measure(tensor, type)` giving a swap's KL divergence.
pub fn refine_with(
    table: &mut CostTable,
    most: usize,
    budget: u64,
    fixed: &[Override],
    align: u64,
    measure: &mut dyn FnMut(&str, StorageType) -> Result<f64>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    let mut done = 0;
    while done < most {
        let recipe = allocate(table, budget, fixed, align)?;
        let mut todo: Vec<(f64, usize, usize)> = Vec::new();
        for (i, (t, e)) in table.tensors.iter().zip(&recipe.entries).enumerate() {
            if fixed.iter().any(|o| o.pattern.is_match(&t.name)) {
                continue;
            }
            let ty = e.ty.to_string();
            if let Some(k) = t.candidates.iter().position(|c| c.ty == ty) {
                if t.measured_kld(k).is_none() {
                    todo.push((t.predicted(k), i, k));
                }
            }
        }
        if todo.is_empty() {
            break;
        }
        todo.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        todo.truncate(most - done);
        progress(done, most);
        for (_, i, k) in todo {
            crate::interrupt::check()?;
            let t = &mut table.tensors[i];
            let ty = t.candidates[k].storage_type()?;
            let kld = measure(&t.name, ty)?;
            t.measured.push(MeasuredSwap { ty: ty.to_string(), kld });
            done += 1;
            progress(done, most);
        }
    }
    Ok(done)
}

/// The source model and its reference run on the sensitivity chunks.
fn source_reference(g: &GgufFile, text: &CalibrationText, opts: &CostOptions) -> Result<(LoadedLm, Reference)> {
    let lm = crate::model::load_lm_from(g, crate::model::LoadOptions::default())?;
    let eval = EvalOptions { ctx: opts.ctx, max_chunks: Some(opts.chunks.max(1)), ..Default::default() };
    let chunks = crate::calibrate::calibration_chunks(&lm, &text.text, &eval)?;
    let reference = Reference::new(&lm, chunks)?;
    Ok((lm, reference))
}

/// One real swap against its prediction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SwapCheck {
    /// Tensor.
    pub name: String,
    /// The type it was swapped to (never its probe type).
    pub ty: String,
    /// `S_t × error` from the cost table.
    pub predicted: f64,
    /// The KL divergence measured with only this tensor swapped.
    pub measured: f64,
}

/// How well the cost table predicts real single-tensor swaps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Validation {
    /// The swaps.
    pub swaps: Vec<SwapCheck>,
    /// Spearman rank correlation of predicted and measured (EXL3 reports ≥ 0.8 for its own
    /// proxy).
    pub spearman: f64,
    /// Median of measured / predicted.
    pub median_ratio: f64,
}

/// Measures `n` real swaps held out from the probes — tensors spread evenly over the table,
/// each swapped (whole, with the same encoder) to a candidate other than its probe and
/// other than a lossless copy, cycling through the candidates — and compares them with the
/// table's predictions.
pub fn validate(
    g: &GgufFile,
    table: &CostTable,
    text: &CalibrationText,
    importance: &HashMap<String, Vec<f32>>,
    opts: &CostOptions,
    n: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Validation> {
    let (mut lm, reference) = source_reference(g, text, opts)?;
    let n = n.min(table.tensors.len()).max(1);
    let mut swaps = Vec::with_capacity(n);
    progress(0, n);
    for i in 0..n {
        crate::interrupt::check()?;
        let t = &table.tensors[i * table.tensors.len() / n];
        // A candidate without error (the source's own type, copied) predicts 0 trivially.
        let others: Vec<usize> = (0..t.candidates.len())
            .filter(|&k| t.candidates[k].ty != t.sensitivity.probe && t.candidates[k].error > 0.0)
            .collect();
        let Some(&k) = others.get((i * 7) % others.len().max(1)) else { continue };
        let ty = t.candidates[k].storage_type()?;
        let imp = importance.get(&t.name).map(Vec::as_slice);
        let (error, measured) = sensitivity::swap_kld(&mut lm, &reference, &t.name, ty, imp)?;
        let predicted = t.sensitivity.scale() * error;
        swaps.push(SwapCheck { name: t.name.clone(), ty: ty.to_string(), predicted, measured });
        progress(i + 1, n);
    }
    let p: Vec<f64> = swaps.iter().map(|s| s.predicted).collect();
    let m: Vec<f64> = swaps.iter().map(|s| s.measured).collect();
    let mut ratios: Vec<f64> = swaps.iter().filter(|s| s.predicted > 0.0).map(|s| s.measured / s.predicted).collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(Validation { spearman: spearman(&p, &m), swaps, median_ratio })
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - mean) * (y - mean)).sum();
    let var = |r: &[f64]| r.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    cov / (var(&ra) * var(&rb)).sqrt()
}

/// One tensor's allocated type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecipeEntry {
    /// GGUF name.
    pub name: String,
    /// The chosen type.
    pub ty: StorageType,
    /// Its bytes.
    pub bytes: u64,
    /// Its KL divergence contribution: measured with only this tensor swapped where it
    /// was ([`TensorCosts::cost`]), else predicted.
    pub predicted_kld: f64,
    /// Whether `predicted_kld` was measured end to end.
    pub measured: bool,
}

/// An allocation: a type per tensor, and what it is predicted to cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recipe {
    /// Per allocated tensor, in file order.
    pub entries: Vec<RecipeEntry>,
    /// The byte budget the tensors were allocated within.
    pub budget: u64,
    /// Σ predicted KL divergence (nats per token; additive first-order estimate).
    pub predicted_kld: f64,
}

impl Recipe {
    /// The overrides the plan follows, each tensor matched by exactly one: block tensors of
    /// one role and type share one (`^blk\.(0|3|17)\.attn_q\.weight$=Q4_K`), the rest
    /// name their tensor. Grouped because they are recorded in the GGUF
    /// (`lowbit.quantize.overrides`) and count against the size: one per tensor took 36 KB
    /// on gemma3-270m, enough to force a re-quantized tensor at the source's own size.
    pub fn overrides(&self) -> Vec<Override> {
        self.overrides_over(&|_| None)
    }

    /// [`Recipe::overrides`] for only the tensors whose type differs from `planned(name)`
    /// — what the plan gives them without overrides (the recorded mix's own rules): the
    /// others need none. With the mix chosen well ([`closest_mix`]) an allocation that
    /// keeps every source tensor records no overrides at all.
    pub fn overrides_over(&self, planned: &dyn Fn(&str) -> Option<StorageType>) -> Vec<Override> {
        let mut groups: Vec<(String, StorageType, Vec<&str>)> = Vec::new();
        for e in self.entries.iter().filter(|e| planned(&e.name) != Some(e.ty)) {
            let (key, block) = match e.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
                Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    (rest.to_string(), Some(n))
                }
                _ => (e.name.clone(), None),
            };
            match (block, groups.iter_mut().find(|(k, ty, b)| *k == key && *ty == e.ty && !b.is_empty())) {
                (Some(n), Some(g)) => g.2.push(n),
                (Some(n), None) => groups.push((key, e.ty, vec![n])),
                (None, _) => groups.push((key, e.ty, Vec::new())),
            }
        }
        groups
            .iter()
            .map(|(key, ty, blocks)| {
                let text = if blocks.is_empty() {
                    format!("^{}$={ty}", regex::escape(key))
                } else {
                    format!(r"^blk\.({})\.{}$={ty}", blocks.join("|"), regex::escape(key))
                };
                Override::parse(&text).expect("a valid override")
            })
            .collect()
    }

    /// The mix recorded as the file type ([`dominant_mix`] by bytes).
    pub fn mix(&self) -> Mix {
        dominant_mix(self.entries.iter().map(|e| (e.ty, e.bytes)))
    }

    /// The recipe as text: one `NAME=TYPE` line per tensor (what `--recipe` reads), with a
    /// comment header.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# lowbit allocation: {} tensors, {} bytes of {} budgeted, predicted KLD {:.5}\n",
            self.entries.len(),
            self.entries.iter().map(|e| e.bytes).sum::<u64>(),
            self.budget,
            self.predicted_kld
        );
        for e in &self.entries {
            s.push_str(&format!("{}={}\n", e.name, e.ty));
        }
        s
    }
}

/// The mix whose default type holds the largest weight among `(type, weight)` pairs
/// (the file type an allocation records; llama.cpp only displays it). Q8_0 when none.
pub fn dominant_mix(types: impl Iterator<Item = (StorageType, u64)>) -> Mix {
    let mut by_type: HashMap<GgmlType, u64> = HashMap::new();
    for (ty, w) in types {
        if let StorageType::Ggml(g) = ty {
            *by_type.entry(g).or_default() += w;
        }
    }
    let mut ranked: Vec<(GgmlType, u64)> = by_type.into_iter().collect();
    ranked.sort_by_key(|&(t, b)| (std::cmp::Reverse(b), t.to_string()));
    ranked
        .iter()
        .find_map(|(t, _)| crate::plan::MIXES.iter().find(|m| m.default == *t))
        .copied()
        .unwrap_or_else(|| Mix::from_name("Q8_0").expect("Q8_0 is a mix"))
}

/// Reads a recipe file (`NAME=TYPE` lines, `#` comments) as exact-name overrides.
pub fn read_recipe(path: &Path) -> Result<Vec<Override>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, ty) = line
            .rsplit_once('=')
            .ok_or_else(|| Error::format(path, format!("line {}: expected NAME=TYPE, got '{line}'", i + 1)))?;
        let o = Override::parse(&format!("^{}$={}", regex::escape(name.trim()), ty.trim()))
            .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        out.push(o);
    }
    if out.is_empty() {
        return Err(Error::format(path, "the recipe names no tensor"));
    }
    Ok(out)
}

/// Allocates `table`'s tensors within `budget` bytes (their bytes padded to `align`, as
/// the file stores them, and what their types add to the header:
/// [`TensorCosts::file_bytes`]). Tensors in `fixed` (an override the user gave) keep that type
/// and count against the budget.
pub fn allocate(table: &CostTable, budget: u64, fixed: &[Override], align: u64) -> Result<Recipe> {
    let mut items = Vec::with_capacity(table.tensors.len());
    // Per tensor and option: its type and, where the table holds it, its candidate index.
    let mut kinds: Vec<Vec<(StorageType, Option<usize>)>> = Vec::with_capacity(table.tensors.len());
    for t in &table.tensors {
        let mut options = Vec::new();
        let mut types = Vec::new();
        let forced = fixed.iter().find(|o| o.pattern.is_match(&t.name)).map(|o| o.ty);
        if let Some(ty) = forced {
            let bytes = ty.tensor_bytes(&t.dims).ok_or_else(|| {
                Error::Usage(format!("override {ty} for '{}': its rows are not whole {ty} blocks", t.name))
            })?;
            let k = t.candidates.iter().position(|c| c.ty == ty.to_string());
            options.push(Choice { bytes: stored_bytes(&t.name, ty, bytes, align), cost: k.map_or(0.0, |k| t.cost(k)) });
            types.push((ty, k));
        } else {
            for (k, c) in t.candidates.iter().enumerate() {
                let ty = c.storage_type()?;
                options.push(Choice { bytes: t.file_bytes(k, align)?, cost: t.cost(k) });
                types.push((ty, Some(k)));
            }
        }
        items.push(options);
        kinds.push(types);
    }
    let smallest: u64 = items.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap_or(0)).sum();
    let choice = knapsack::solve(&items, budget).ok_or_else(|| {
        Error::Usage(format!(
            "the size target leaves {budget} bytes for the quantized tensors, but even the smallest types need {smallest}"
        ))
    })?;
    let entries: Vec<RecipeEntry> = table
        .tensors
        .iter()
        .zip(&choice)
        .enumerate()
        .map(|(i, (t, &k))| RecipeEntry {
            name: t.name.clone(),
            ty: kinds[i][k].0,
            bytes: items[i][k].bytes,
            predicted_kld: items[i][k].cost,
            measured: kinds[i][k].1.is_some_and(|c| t.measured_kld(c).is_some()),
        })
        .collect();
    let predicted_kld = entries.iter().map(|e| e.predicted_kld).sum();
    Ok(Recipe { entries, budget, predicted_kld })
}

/// What tensor `name` of `bytes` data stored as `ty` takes in the file: its data padded to
/// `align`, and what its type adds to the header ([`crate::gguf::extra_bytes`]).
fn stored_bytes(name: &str, ty: StorageType, bytes: u64, align: u64) -> u64 {
    padded(bytes, align) + crate::gguf::extra_bytes(name, ty, align)
}

/// What a tensor of `bytes` takes in the file: padded to the data alignment.
fn padded(bytes: u64, align: u64) -> u64 {
    bytes.div_ceil(align.max(1)) * align.max(1)
}

/// Spends what the budget's bounds left unused: the knapsack works on a byte grid and on
/// an upper bound of the header, so the file it gives may sit some kilobytes under the
/// target (on gemma3 at its source's size: one re-quantized tensor that fitted once
/// counted exactly). `size_of` gives the exact size of a recipe's file; while upgrades fit,
/// the one with the most predicted KLD saved per byte that still gives a file within `want`
/// is taken. Tensors `fixed` by the user keep their type. Deterministic (ties by order).
pub fn spend_slack(
    table: &CostTable,
    recipe: &mut Recipe,
    fixed: &[Override],
    align: u64,
    want: u64,
    size_of: &mut dyn FnMut(&Recipe) -> Result<u64>,
) -> Result<u64> {
    let mut size = size_of(recipe)?;
    // A bound on exact sizings (each plans the whole model): ample for the few upgrades
    // a grid cell's slack allows.
    const MAX_TRIALS: usize = 256;
    let mut trials = 0;
    while size <= want && trials < MAX_TRIALS {
        let slack = want - size;
        let mut ups: Vec<(f64, usize, usize)> = Vec::new();
        for (i, t) in table.tensors.iter().enumerate() {
            if fixed.iter().any(|o| o.pattern.is_match(&t.name)) {
                continue;
            }
            let cur = &recipe.entries[i];
            for k in 0..t.candidates.len() {
                let (cost, bytes) = (t.cost(k), t.file_bytes(k, align)?);
                if cost < cur.predicted_kld && bytes <= cur.bytes + slack {
                    let more = bytes.saturating_sub(cur.bytes).max(1);
                    ups.push(((cur.predicted_kld - cost) / more as f64, i, k));
                }
            }
        }
        ups.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut taken = false;
        for &(_, i, k) in &ups {
            if trials >= MAX_TRIALS {
                break;
            }
            trials += 1;
            let t = &table.tensors[i];
            let ty = t.candidates[k].storage_type()?;
            let mut next = recipe.clone();
            next.entries[i] = RecipeEntry {
                name: t.name.clone(),
                ty,
                bytes: t.file_bytes(k, align)?,
                predicted_kld: t.cost(k),
                measured: t.measured_kld(k).is_some(),
            };
            next.predicted_kld = next.entries.iter().map(|e| e.predicted_kld).sum();
            let s = size_of(&next)?;
            if s <= want {
                (*recipe, size, taken) = (next, s, true);
                break;
            }
        }
        if !taken {
            break;
        }
    }
    Ok(size)
}

/// Bytes the output file spends outside the allocated tensors: every other tensor as
/// planned (kept as it is, padded to the alignment), and an upper bound on the GGUF
/// header — the source's metadata, every tensor's info, the header's padding. The
/// recipe's overrides are counted apart ([`worst_overrides_bytes`]).
pub fn fixed_bytes(g: &GgufFile, table: &CostTable) -> u64 {
    let allocated: std::collections::HashSet<&str> = table.tensors.iter().map(|t| t.name.as_str()).collect();
    let kept: u64 = g
        .tensors
        .iter()
        .filter(|t| !allocated.contains(t.name.as_str()))
        .map(|t| match t.ty {
            TensorType::Known(st) => padded(st.tensor_bytes(&t.dims).unwrap_or(0), g.alignment),
            TensorType::Unknown(_) => 0,
        })
        .sum();
    let metadata = crate::gguf::metadata_bytes(&g.metadata);
    let infos: u64 = g.tensors.iter().map(|t| crate::gguf::tensor_info_bytes(&t.name, t.dims.len())).sum();
    // Tensors are padded to the alignment in their own bytes (kept here, allocated ones
    // in `allocate`'s choices); the header's padding is at most one alignment. lowbit's
    // own keys and the header's fixed fields take well under 1 KiB.
    kept + metadata + infos + g.alignment + 1024
}

/// The most bytes any recipe's overrides over `table` can take in the GGUF: one per
/// tensor, `^NAME$=TYPE` with every dot escaped (the name twice at worst) and its
/// 8-byte length. [`fixed_bytes`] leaves them out: an allocation is made with this
/// allowance and then, if its own overrides take less, again with theirs
/// ([`overrides_bytes`]).
pub fn worst_overrides_bytes(table: &CostTable) -> u64 {
    table.tensors.iter().map(|t| 2 * t.name.len() as u64 + 3 + 8 + 8).sum()
}

/// The bytes `overrides` take as a GGUF string array: each text and its 8-byte length.
pub fn overrides_bytes(overrides: &[Override]) -> u64 {
    overrides.iter().map(|o| o.text.len() as u64 + 8).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_overrides_give_every_tensor_its_own_type_and_take_less_room() {
        let ty = |n: &str| StorageType::from_name(n).unwrap();
        let mut entries = Vec::new();
        for b in 0..30 {
            for (role, t) in
                [("attn_q.weight", if b % 3 == 0 { "Q4_K" } else { "IQ4_NL" }), ("ffn_down.weight", "Q6_K")]
            {
                entries.push(RecipeEntry {
                    name: format!("blk.{b}.{role}"),
                    ty: ty(t),
                    bytes: 1,
                    predicted_kld: 0.0,
                    measured: false,
                });
            }
        }
        entries.push(RecipeEntry {
            name: "token_embd.weight".into(),
            ty: ty("Q8_0"),
            bytes: 1,
            predicted_kld: 0.0,
            measured: false,
        });
        entries.push(RecipeEntry {
            name: "blk.x.odd".into(),
            ty: ty("Q8_0"),
            bytes: 1,
            predicted_kld: 0.0,
            measured: false,
        });
        let recipe = Recipe { entries, budget: 0, predicted_kld: 0.0 };
        let o = recipe.overrides();
        assert_eq!(o.len(), 5, "{:?}", o.iter().map(|o| &o.text).collect::<Vec<_>>());
        for e in &recipe.entries {
            let hits: Vec<_> = o.iter().filter(|o| o.pattern.is_match(&e.name)).collect();
            assert_eq!(hits.len(), 1, "{}", e.name);
            assert_eq!(hits[0].ty, e.ty, "{}", e.name);
        }
        // `blk.1.` must not match `blk.10.`/`blk.11.` and so on.
        assert!(!o.iter().any(|o| o.pattern.is_match("blk.1.attn_q.weight.extra")));
        let one_each: u64 =
            recipe.entries.iter().map(|e| format!("^{}$={}", regex::escape(&e.name), e.ty).len() as u64 + 8).sum();
        assert!(overrides_bytes(&o) * 3 < one_each, "{} vs {one_each}", overrides_bytes(&o));
    }

    #[test]
    fn native_candidates_reach_below_ggml_where_its_blocks_do_not_fit() {
        let bpw = |t: &StorageType| t.tensor_bytes(&[640, 1024]).unwrap() as f64 * 8.0 / (640.0 * 1024.0);
        let lowest = |c: Vec<StorageType>| c.iter().map(bpw).fold(f64::INFINITY, f64::min);
        // Gemma 3's 640-wide rows: ggml's smallest fitting type is 4.5 bits per weight.
        assert_eq!(lowest(candidates(640, false)), 4.5);
        assert!(candidates(640, false).iter().all(StorageType::is_ggml));
        assert_eq!(lowest(candidates(640, true)), 2.5, "int2_g64_zp");
        // Every candidate fits the rows it is offered for; 576-wide rows drop the g128 ones.
        for cols in [576u64, 640, 1536, 2048] {
            for t in candidates(cols, true) {
                assert!(cols.is_multiple_of(t.block_size() as u64), "{t} offered for {cols} columns");
            }
        }
        assert!(!candidates(576, true).iter().any(|t| t.to_string().ends_with("g128")));
    }

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[0.1, 0.5, 0.7, 0.9]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[9.0, 5.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        let s = spearman(&a, &[1.0, 3.0, 2.0, 4.0]);
        assert!((s - 0.8).abs() < 1e-12, "{s}");
    }

    #[test]
    fn sizes_parse_with_units() {
        let b = |s: &str| match SizeTarget::parse_size(s).unwrap() {
            SizeTarget::Bytes(b) => b,
            SizeTarget::Bpw(_) => unreachable!(),
        };
        assert_eq!(b("94371840"), 94_371_840);
        assert_eq!(b("90MB"), 90_000_000);
        assert_eq!(b("85.5MiB"), (85.5 * 1024.0 * 1024.0) as u64);
        assert_eq!(b(" 1.2 GB "), 1_200_000_000);
        assert_eq!(b("500kB"), 500_000);
        for bad in ["", "MB", "-3MB", "12 parsecs", "1e9", "0", "0.4"] {
            assert!(SizeTarget::parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(SizeTarget::Bpw(4.0).bytes(1000), 500);
    }

    fn table() -> CostTable {
        let t = |name: &str, scale: f64| TensorCosts {
            name: name.into(),
            dims: vec![256, 8],
            sensitivity: TensorSensitivity {
                name: name.into(),
                // Not a candidate: every cost here is the prediction.
                probe: "Q5_K".into(),
                probe_error: 1.0,
                probe_kld: scale,
            },
            candidates: [("Q2_K", 0.2), ("Q3_K", 0.1), ("Q4_K", 0.05), ("Q8_0", 0.001)]
                .iter()
                .map(|&(ty, error)| CandidateCost {
                    ty: ty.into(),
                    bytes: StorageType::from_name(ty).unwrap().tensor_bytes(&[256, 8]).unwrap(),
                    error,
                })
                .collect(),
            measured: Vec::new(),
        };
        CostTable { key: "k".into(), tokens: 0, scored_rows: 0, tensors: vec![t("a", 10.0), t("b", 1.0), t("c", 0.1)] }
    }

    #[test]
    fn more_bytes_never_predict_more_damage_and_sensitive_tensors_get_more_bits() {
        let table = table();
        let mut last = f64::INFINITY;
        for budget in (1_000..=9_000).step_by(250) {
            let Ok(r) = allocate(&table, budget, &[], 1) else { continue };
            assert!(r.entries.iter().map(|e| e.bytes).sum::<u64>() <= budget);
            assert!(r.predicted_kld <= last + 1e-12, "budget {budget}");
            last = r.predicted_kld;
            let bits = |n: &str| r.entries.iter().find(|e| e.name == n).unwrap().bytes;
            assert!(bits("a") >= bits("b") && bits("b") >= bits("c"), "budget {budget}: {r:?}");
        }
        assert!(allocate(&table, 100, &[], 1).is_err());
        // A user's override is kept and counted.
        let fixed = [Override::parse("^b$=Q8_0").unwrap()];
        let r = allocate(&table, 4_000, &fixed, 1).unwrap();
        assert_eq!(r.entries[1].ty, StorageType::from_name("Q8_0").unwrap());
    }

    /// What the grid and the header bound leave is spent exactly: the best upgrades per
    /// byte while the exact size stays within the target, never over it; fixed tensors
    /// keep their type.
    #[test]
    fn slack_is_spent_up_to_the_exact_size_and_never_past_it() {
        let table = table();
        let header = 100;
        let size = |r: &Recipe| header + r.entries.iter().map(|e| e.bytes).sum::<u64>();
        let low = allocate(&table, 2_100, &[], 1).unwrap();
        for want in [size(&low), size(&low) + 300, size(&low) + 2_000, 20_000] {
            let mut r = low.clone();
            let got = spend_slack(&table, &mut r, &[], 1, want, &mut |r| Ok(size(r))).unwrap();
            assert_eq!(got, size(&r));
            assert!(got <= want && r.predicted_kld <= low.predicted_kld, "{want}: {got}");
            // Nothing left that would still fit and lower the prediction.
            for (i, t) in table.tensors.iter().enumerate() {
                for (k, c) in t.candidates.iter().enumerate() {
                    let fits = got - r.entries[i].bytes + c.bytes <= want;
                    assert!(!(fits && t.cost(k) < r.entries[i].predicted_kld), "{want}: {} {}", t.name, c.ty);
                }
            }
        }
        let fixed = [Override::parse("^a$=Q2_K").unwrap()];
        let mut r = allocate(&table, 2_100, &fixed, 1).unwrap();
        spend_slack(&table, &mut r, &fixed, 1, 20_000, &mut |r| Ok(size(r))).unwrap();
        assert_eq!(r.entries[0].ty, StorageType::from_name("Q2_K").unwrap());
        assert_eq!(r.entries[1].ty, StorageType::from_name("Q8_0").unwrap());
    }

    /// Refinement measures exactly what the allocation chose until nothing chosen is left
    /// unmeasured, and then allocates as if the true costs had been known for those.
    #[test]
    fn refinement_measures_the_chosen_swaps_and_moves_off_underestimated_ones() {
        // "c"'s cheap types cost 200× what the proxy predicts; the others are as predicted.
        let truth = |name: &str, ty: StorageType, predicted: f64| {
            if name == "c" && ty.to_string() != "Q8_0" {
                200.0 * predicted
            } else {
                predicted
            }
        };
        let base = table();
        let budget = 3_000;
        let naive = allocate(&base, budget, &[], 1).unwrap();
        let c_naive = naive.entries[2].ty;
        let mut t = base.clone();
        let predicted = |n: &str, ty: StorageType| {
            let tc = base.tensors.iter().find(|x| x.name == n).unwrap();
            tc.predicted(tc.candidates.iter().position(|c| c.ty == ty.to_string()).unwrap())
        };
        let mut calls = Vec::new();
        let n = refine_with(
            &mut t,
            100,
            budget,
            &[],
            1,
            &mut |n, ty| {
                calls.push((n.to_string(), ty));
                Ok(truth(n, ty, predicted(n, ty)))
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(n, calls.len());
        let r = allocate(&t, budget, &[], 1).unwrap();
        assert!(r.entries.iter().all(|e| e.measured), "{r:?}");
        // No swap measured twice; "c" moved up once its real cost was seen.
        let mut seen = calls.clone();
        seen.sort_by_key(|(n, ty)| (n.clone(), ty.to_string()));
        seen.dedup();
        assert_eq!(seen.len(), calls.len());
        assert!(r.entries[2].bytes > naive.entries[2].bytes, "c stayed at {c_naive}: {r:?}");
        // The true cost of the refined allocation is below the naive one's.
        let true_cost =
            |r: &Recipe| r.entries.iter().map(|e| truth(&e.name, e.ty, predicted(&e.name, e.ty))).sum::<f64>();
        assert!(true_cost(&r) < true_cost(&naive), "{} vs {}", true_cost(&r), true_cost(&naive));
        // A cap stops it: one swap, the largest predicted cost first.
        let mut capped = base.clone();
        let mut first = None;
        assert_eq!(
            refine_with(
                &mut capped,
                1,
                budget,
                &[],
                1,
                &mut |n, ty| {
                    first = Some(n.to_string());
                    Ok(predicted(n, ty))
                },
                &mut |_, _| {}
            )
            .unwrap(),
            1
        );
        let biggest = naive.entries.iter().max_by(|a, b| a.predicted_kld.total_cmp(&b.predicted_kld)).unwrap();
        assert_eq!(first.as_deref(), Some(biggest.name.as_str()));
    }

    /// Overrides are recorded only where the mix's own plan differs.
    #[test]
    fn overrides_skip_what_the_plan_gives_anyway() {
        let r = allocate(&table(), 5_000, &[], 1).unwrap();
        assert_eq!(r.overrides_over(&|n| r.entries.iter().find(|e| e.name == n).map(|e| e.ty)).len(), 0);
        let o = r.overrides_over(&|n| (n != "b").then(|| r.entries.iter().find(|e| e.name == n).unwrap().ty));
        assert_eq!(o.len(), 1);
        assert!(o[0].pattern.is_match("b") && o[0].ty == r.entries[1].ty);
    }

    #[test]
    fn recipes_round_trip_through_text() {
        let r = allocate(&table(), 5_000, &[], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.txt");
        std::fs::write(&path, r.to_text()).unwrap();
        let back = read_recipe(&path).unwrap();
        assert_eq!(back.len(), 3);
        for (o, e) in back.iter().zip(&r.entries) {
            assert!(o.pattern.is_match(&e.name) && o.ty == e.ty);
        }
        // Exact names: `a` does not match `ab`.
        assert!(!back[0].pattern.is_match("ab"));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read_recipe(&path).is_err());
        std::fs::write(&path, "a=Q9_K\n").unwrap();
        assert!(read_recipe(&path).is_err());
    }
}
