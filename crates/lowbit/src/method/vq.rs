//! Learned vector codebooks for one tensor ([`crate::format::vq`]), after VPTQ (Liu et al.,
//! 2024) with the PV-Tuning idea of alternating discrete and continuous updates, without
//! gradients:
//!
//! 1. the format's outlier columns, if any, are the columns of largest importance (the
//!    Hessian diagonal: the channels with the largest inputs); they are stored apart as
//!    f16 values and left out of everything below;
//! 2. every row is normalised by its RMS (stored as the row's f16 scale);
//! 3. the codebook is fitted by weighted k-means ([`crate::method::kmeans`]) on the
//!    row vectors, each coordinate weighted by its column's importance and each row by
//!    its scale², so that the distortion k-means minimises is the weight error that
//!    matters; a residual codebook, if the format has one, is fitted the same way on what
//!    the first one leaves;
//! 4. with a calibration Hessian, codes are chosen by a GPTQ sweep over column groups of
//!    the vector length: each vector takes its nearest entry for the weights as updated so
//!    far, and its error is pushed onto the columns not yet quantized (the error feedback
//!    of GPTQ, as VPTQ does); the outlier values are then set to absorb exactly what the
//!    codes get wrong;
//! 5. then, alternating: both codebooks by least squares on the layer output error with
//!    the full Hessian, the row scales likewise, the outlier values again — and the sweep
//!    re-chooses every code for the new codebooks (candidate re-assignment); the state
//!    with the lowest output error ‖(W − Ŵ)Xᵀ‖² is kept.
//!
//! Without a Hessian, step 4 is plain nearest-entry assignment (what k-means ends with)
//! and the outlier values are the weights themselves.

use rayon::prelude::*;

use super::gptq::{inverse_factor, GptqOptions};
use super::kmeans::{kmeans, nearest, used_entries, KmeansOptions};
use crate::format::encode::EncodeError;
use crate::format::vq::{pack_row, Codebook, VqFormat};

/// Options of [`quantize_vq`].
#[derive(Clone, Copy, Debug)]
pub struct VqOptions {
    /// k-means settings (iterations, seed).
    pub kmeans: KmeansOptions,
    /// Codebook-update / re-assignment rounds after the first sweep (Hessian only).
    pub rounds: usize,
    /// Dampening and shrinkage of the Hessian for the sweep (as for GPTQ).
    pub gptq: GptqOptions,
    /// How the codebooks are refitted between sweeps.
    pub refit: CodebookRefit,
}

impl Default for VqOptions {
    fn default() -> Self {
        VqOptions {
            kmeans: KmeansOptions::default(),
            rounds: 2,
            gptq: GptqOptions::default(),
            refit: CodebookRefit::Auto,
        }
    }
}

/// The continuous step between sweeps (with a Hessian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodebookRefit {
    /// Every entry to the importance-weighted mean of the vectors using it (the k-means
    /// centroid step): the weight error, with the Hessian's diagonal only.
    Centroids,
    /// Both codebooks and the row scales by least squares on the layer output error with
    /// the full (regularised) Hessian.
    LeastSquares,
    /// Least squares at up to 2.5 code bits per weight, centroids above. Measured on
    /// smollm2-135m and gemma3-270m (Austen calibration, wiki.valid KLD): at 2 bits least
    /// squares lowers KLD by 9 % (1.944 → 1.778), at 3.5–3.8 bits it raises it by 5–11 %
    /// (0.2144 → 0.2379, 0.3301 → 0.3454), and also (0.1272 → 0.1308) with Hessians from
    /// wikitext-2, the evaluation's own domain: once the codes are fine, a lower layer output error
    /// stops meaning a lower KLD.
    Auto,
}

impl CodebookRefit {
    /// The refit `Auto` stands for with format `f`; others stand for themselves.
    pub fn resolve(self, f: &VqFormat) -> CodebookRefit {
        match self {
            CodebookRefit::Auto if f.code_bits() as f64 / f.dim as f64 <= 2.5 => CodebookRefit::LeastSquares,
            CodebookRefit::Auto => CodebookRefit::Centroids,
            other => other,
        }
    }
}

/// One tensor encoded as a VQ format.
#[derive(Clone, Debug)]
pub struct VqTensor {
    /// The stored rows (scale + codes).
    pub payload: Vec<u8>,
    /// The codebook tensor's bytes (f16, main entries then residual ones).
    pub codebook: Vec<u8>,
    /// Main-codebook entries some vector uses.
    pub used: usize,
    /// Residual-codebook entries some vector uses (0 without one).
    pub used_residual: usize,
    /// Layer output error ‖(W − Ŵ)Xᵀ‖² of the result, when a Hessian was given.
    pub output_error: Option<f64>,
    /// The same relative to the layer's output, ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖².
    pub relative_output_error: Option<f64>,
}

/// Codes of every vector and the codebooks, in normalised units, and the outlier
/// columns' values.
#[derive(Clone, Default)]
struct Codes {
    main: Vec<u32>,
    residual: Vec<u32>,
    codebook: Vec<f32>,
    residual_codebook: Vec<f32>,
    outliers: Outliers,
}

impl Codes {
    /// Decodes the rows with the current codebooks ([`decode_rows`]).
    fn decode(&self, dim: usize, scales: &[f32], with_outliers: bool) -> Vec<f32> {
        decode_rows(dim, self, &self.codebook, &self.residual_codebook, scales, with_outliers)
    }
}

/// The columns kept apart ([`VqFormat::outliers`]) and every row's values there.
#[derive(Clone, Default)]
struct Outliers {
    /// Ascending column indices.
    columns: Vec<usize>,
    /// Per column of the matrix, whether it is an outlier column (empty without any).
    mask: Vec<bool>,
    /// Every row's values there (f16-exact), rows × columns.
    values: Vec<f32>,
}

impl Outliers {
    /// The `n` columns of largest `column_weight` (ties to the lower index), ascending.
    fn choose(column_weight: &[f32], n: usize) -> Outliers {
        if n == 0 {
            return Outliers::default();
        }
        let mut order: Vec<usize> = (0..column_weight.len()).collect();
        order.sort_by(|&a, &b| column_weight[b].total_cmp(&column_weight[a]).then(a.cmp(&b)));
        let mut columns = order[..n].to_vec();
        columns.sort_unstable();
        let mut mask = vec![false; column_weight.len()];
        columns.iter().for_each(|&c| mask[c] = true);
        Outliers { columns, mask, ..Outliers::default() }
    }

    /// Whether column `j` is coded by the codebooks (not kept apart).
    fn coded(&self, j: usize) -> bool {
        self.mask.get(j).is_none_or(|o| !o)
    }

    /// Stores `raw` (rows × columns) as the f16 values decoding will see.
    fn set(&mut self, raw: &[f32]) {
        self.values = raw.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    }
}

/// Quantizes the row-major matrix `w` (rows of `cols`) as `f`. `importance` (one per
/// column) weighs the codebook fit; `hessian` (cols × cols) enables the GPTQ sweep and the
/// refinement rounds, and supplies the importance (its diagonal) when none is given.
pub fn quantize_vq(
    f: &VqFormat,
    w: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
    hessian: Option<&[f32]>,
    opts: &VqOptions,
) -> Result<VqTensor, EncodeError> {
    let dim = f.dim;
    if f.outliers as usize >= cols {
        return Err(EncodeError::Codebook(format!(
            "{f} keeps {} columns apart, but the rows have only {cols}",
            f.outliers
        )));
    }
    let row_bytes = f
        .row_bytes(cols)
        .filter(|_| w.len().is_multiple_of(cols))
        .ok_or_else(|| EncodeError::PartialGroup { format: f.to_string(), n: cols, group: dim })?;
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFinite { index, value });
    }
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(EncodeError::ImportanceLength { got: imp.len(), need: cols });
        }
    }
    if let Some(h) = hessian {
        if h.len() != cols * cols {
            return Err(EncodeError::ImportanceLength { got: h.len(), need: cols * cols });
        }
    }
    let rows = w.len() / cols;
    let vectors = w.len() / dim;
    if f.entries() > vectors / 2 {
        return Err(EncodeError::Codebook(format!(
            "a codebook of {} entries for only {vectors} vectors learns nothing: use fewer entries (or a residual codebook)",
            f.entries()
        )));
    }
    let column_weight: Vec<f32> = match (importance, hessian) {
        (Some(imp), _) => imp.iter().map(|v| v.max(0.0)).collect(),
        (None, Some(h)) => (0..cols).map(|i| h[i * cols + i].max(0.0)).collect(),
        (None, None) => vec![1.0; cols],
    };
    let mut outliers = Outliers::choose(&column_weight, f.outliers as usize);
    let coded_cols = cols - outliers.columns.len();
    // Row scales as stored (f16): the RMS over the coded columns; the normalised rows.
    let mut scales: Vec<f32> = w
        .chunks_exact(cols)
        .map(|r| {
            let sq: f32 = r.iter().enumerate().filter(|(j, _)| outliers.coded(*j)).map(|(_, v)| v * v).sum();
            half::f16::from_f32((sq / coded_cols as f32).sqrt()).to_f32()
        })
        .collect();
    let x: Vec<f32> = w
        .chunks_exact(cols)
        .zip(&scales)
        .flat_map(|(r, &s)| r.iter().map(move |v| if s > 0.0 { v / s } else { 0.0 }))
        .collect();
    // A column no input ever reaches (zero importance) would give k-means nothing to fit;
    // an outlier column is not the codebooks' to fit.
    let floor = column_weight.iter().sum::<f32>() / cols as f32 * 1e-6;
    let column_weight: Vec<f32> =
        column_weight.iter().enumerate().map(|(j, &c)| if outliers.coded(j) { c + floor } else { 0.0 }).collect();
    let weights: Vec<f32> = scales.iter().flat_map(|&s| column_weight.iter().map(move |&c| c * s * s)).collect();
    let raw: Vec<f32> = w.chunks_exact(cols).flat_map(|r| outliers.columns.iter().map(|&c| r[c])).collect();
    outliers.set(&raw);
    let mut codes = Codes { outliers, ..fit_codebooks(f, &x, &weights, opts) };
    let output_error = match hessian {
        None => None,
        Some(h) => {
            let factor = inverse_factor(h, cols, &opts.gptq).map_err(EncodeError::Hessian)?;
            // The continuous refits and the choice between rounds use the regularised H
            // (dampened, off-diagonal shrunk) as the sweep does: fitted to the raw
            // calibration Hessian, they would let the error grow along the directions
            // the calibration text barely excites.
            let hr = &factor.regularised;
            let compensation = OutlierCompensation::new(&codes.outliers, hr, cols);
            sweep(f, w, &scales, cols, &factor.u, &mut codes);
            compensation.refit(f, w, &scales, cols, &mut codes);
            let mut best = (output_error(f, w, &scales, cols, &codes, hr), codes.clone(), scales.clone());
            let mut keep_if_better = |codes: &Codes, scales: &[f32]| {
                let e = output_error(f, w, scales, cols, codes, hr);
                if e < best.0 {
                    best = (e, codes.clone(), scales.to_vec());
                }
            };
            for _ in 0..opts.rounds {
                if opts.refit.resolve(f) == CodebookRefit::LeastSquares {
                    refit_codebooks(f, w, &scales, cols, hr, &mut codes);
                    refit_scales(f, w, &mut scales, cols, hr, &codes);
                } else {
                    refit_centroids(f, &x, &weights, &mut codes);
                }
                compensation.refit(f, w, &scales, cols, &mut codes);
                keep_if_better(&codes, &scales);
                sweep(f, w, &scales, cols, &factor.u, &mut codes);
                compensation.refit(f, w, &scales, cols, &mut codes);
                keep_if_better(&codes, &scales);
            }
            (_, codes, scales) = best;
            Some(output_error(f, w, &scales, cols, &codes, h))
        }
    };
    // Store the codebooks as f16 (what decoding will see).
    let codebook = Codebook {
        entries: codes.codebook.iter().chain(&codes.residual_codebook).copied().collect(),
        outlier_columns: codes.outliers.columns.clone(),
    }
    .to_bytes();
    let per_row = cols / dim;
    let n_out = codes.outliers.columns.len();
    let mut payload = vec![0u8; rows * row_bytes];
    payload.par_chunks_mut(row_bytes).enumerate().for_each(|(r, out)| {
        let main = &codes.main[r * per_row..(r + 1) * per_row];
        let residual =
            if codes.residual.is_empty() { &[][..] } else { &codes.residual[r * per_row..(r + 1) * per_row] };
        pack_row(f, scales[r], main, residual, &codes.outliers.values[r * n_out..(r + 1) * n_out], out);
    });
    Ok(VqTensor {
        payload,
        codebook,
        used: used_entries(&codes.main, f.entries()),
        used_residual: used_entries(&codes.residual, f.residual_entries()),
        output_error,
        relative_output_error: output_error
            .zip(hessian)
            .map(|(e, h)| e / quadratic_form(w, cols, h).max(f64::MIN_POSITIVE)),
    })
}

/// Rounds codebook entries to f16, as they will be stored.
fn to_f16(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
}

/// At most this many vectors per codebook entry go into k-means (an evenly strided,
/// deterministic sample); every vector is then assigned to the fitted codebook. 128 per
/// entry estimates each centroid to well under the quantization step, at a fraction of
/// the cost of clustering millions of vectors.
const SAMPLE_PER_ENTRY: usize = 128;

/// k-means on an evenly strided sample of the `dim`-vectors of `x` (all of them when few).
fn kmeans_sampled(x: &[f32], weights: &[f32], dim: usize, k: usize, opts: &KmeansOptions) -> Vec<f32> {
    let n = x.len() / dim;
    let cap = (SAMPLE_PER_ENTRY * k).max(16384);
    if n <= cap {
        return kmeans(x, weights, dim, k, opts).centroids;
    }
    let stride = n.div_ceil(cap);
    let pick = |v: &[f32]| -> Vec<f32> { v.chunks_exact(dim).step_by(stride).flatten().copied().collect() };
    kmeans(&pick(x), &pick(weights), dim, k, opts).centroids
}

/// k-means for the main codebook, then for the residual one on what remains.
fn fit_codebooks(f: &VqFormat, x: &[f32], weights: &[f32], opts: &VqOptions) -> Codes {
    let dim = f.dim;
    let main_centroids = kmeans_sampled(x, weights, dim, f.entries(), &opts.kmeans);
    let mut codebook = main_centroids;
    to_f16(&mut codebook);
    let main: Vec<u32> = x
        .par_chunks_exact(dim)
        .zip(weights.par_chunks_exact(dim))
        .map(|(v, w)| nearest(&codebook, dim, v, w).0)
        .collect();
    let (mut residual, mut residual_codebook) = (Vec::new(), Vec::new());
    if f.residual_bits > 0 {
        // What the first codebook leaves of every vector.
        let mut rest = x.to_vec();
        for (v, &c) in rest.chunks_exact_mut(dim).zip(&main) {
            v.iter_mut().zip(&codebook[c as usize * dim..]).for_each(|(a, b)| *a -= b);
        }
        let seeded = KmeansOptions { seed: opts.kmeans.seed.wrapping_add(1), ..opts.kmeans };
        residual_codebook = kmeans_sampled(&rest, weights, dim, f.residual_entries(), &seeded);
        to_f16(&mut residual_codebook);
        residual = rest
            .par_chunks_exact(dim)
            .zip(weights.par_chunks_exact(dim))
            .map(|(v, w)| nearest(&residual_codebook, dim, v, w).0)
            .collect();
    }
    Codes { main, residual, codebook, residual_codebook, ..Codes::default() }
}

/// The entry pair (main, residual) for normalised vector `v` under weights `w`: the
/// nearest main entry, then the residual entry nearest to what it leaves.
fn choose(codes: &Codes, dim: usize, v: &[f32], w: &[f32], rest: &mut [f32]) -> (u32, u32) {
    let (c, _) = nearest(&codes.codebook, dim, v, w);
    if codes.residual_codebook.is_empty() {
        return (c, 0);
    }
    let e = &codes.codebook[c as usize * dim..(c as usize + 1) * dim];
    rest.iter_mut().zip(v).zip(e).for_each(|((r, a), b)| *r = a - b);
    (c, nearest(&codes.residual_codebook, dim, rest, w).0)
}

/// The decoded normalised vector of codes (c, c2).
fn entry(codes: &Codes, dim: usize, c: u32, c2: u32, out: &mut [f32]) {
    out.copy_from_slice(&codes.codebook[c as usize * dim..(c as usize + 1) * dim]);
    if !codes.residual_codebook.is_empty() {
        let e = &codes.residual_codebook[c2 as usize * dim..(c2 as usize + 1) * dim];
        out.iter_mut().zip(e).for_each(|(a, b)| *a += b);
    }
}

/// GPTQ sweep: column groups of `dim` in order; each row's vector takes its entry for the
/// weights as updated so far (weighted by each column's conditional precision 1/U_jj²),
/// then the group's errors are pushed onto the later columns through U. An outlier
/// column takes its updated weight as it is (no error to push), and its final value
/// becomes the row's stored outlier value.
fn sweep(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, u: &[f32], codes: &mut Codes) {
    let dim = f.dim;
    let per_row = cols / dim;
    let prec: Vec<f32> = (0..cols)
        .map(|j| if codes.outliers.coded(j) { 1.0 / (u[j * cols + j] * u[j * cols + j]) } else { 0.0 })
        .collect();
    let shared = &*codes;
    // Per row: its (main, residual) codes and its final outlier values.
    type SweptRow = (Vec<(u32, u32)>, Vec<f32>);
    let rows: Vec<SweptRow> = w
        .par_chunks_exact(cols)
        .zip(scales.par_iter())
        .map(|(row, &s)| {
            let mut work = row.to_vec();
            let mut out = Vec::with_capacity(per_row);
            let (mut v, mut rest, mut q) = (vec![0.0f32; dim], vec![0.0f32; dim], vec![0.0f32; dim]);
            for g in 0..per_row {
                let j0 = g * dim;
                if s <= 0.0 {
                    out.push((0, 0));
                    continue;
                }
                v.iter_mut().zip(&work[j0..j0 + dim]).for_each(|(a, b)| *a = b / s);
                let (c, c2) = choose(shared, dim, &v, &prec[j0..j0 + dim], &mut rest);
                entry(shared, dim, c, c2, &mut q);
                for (k, &qk) in q.iter().enumerate() {
                    let j = j0 + k;
                    if !shared.outliers.coded(j) {
                        continue;
                    }
                    let u_row = &u[j * cols + j..(j + 1) * cols];
                    let err = (work[j] - s * qk) / u_row[0];
                    work[j] = s * qk;
                    for (x, &uk) in work[j + 1..].iter_mut().zip(&u_row[1..]) {
                        *x -= err * uk;
                    }
                }
                out.push((c, c2));
            }
            let kept = shared.outliers.columns.iter().map(|&c| work[c]).collect();
            (out, kept)
        })
        .collect();
    codes.main = rows.iter().flat_map(|r| r.0.iter().map(|p| p.0)).collect();
    if f.residual_bits > 0 {
        codes.residual = rows.iter().flat_map(|r| r.0.iter().map(|p| p.1)).collect();
    }
    let raw: Vec<f32> = rows.into_iter().flat_map(|r| r.1).collect();
    codes.outliers.set(&raw);
}

/// Decodes rows from codes with the codebooks `main_book` (and `residual_book`, empty
/// without one) and the row scales: row r, vector g is s_r · (main[c] + residual[c2]);
/// outlier columns hold their stored values if `with_outliers`, else 0 (the part of the
/// row the codebooks decide, a linear map of them).
fn decode_rows(
    dim: usize,
    codes: &Codes,
    main_book: &[f32],
    residual_book: &[f32],
    scales: &[f32],
    with_outliers: bool,
) -> Vec<f32> {
    let per_row = codes.main.len() / scales.len();
    let cols = per_row * dim;
    let n_out = codes.outliers.columns.len();
    let mut out = vec![0.0f32; scales.len() * cols];
    out.par_chunks_mut(cols).zip(scales.par_iter()).enumerate().for_each(|(r, (row, &s))| {
        for (g, v) in row.chunks_exact_mut(dim).enumerate() {
            let i = r * per_row + g;
            let c = codes.main[i] as usize;
            v.iter_mut().zip(&main_book[c * dim..(c + 1) * dim]).for_each(|(a, b)| *a = s * b);
            if !residual_book.is_empty() {
                let c2 = codes.residual[i] as usize;
                v.iter_mut().zip(&residual_book[c2 * dim..(c2 + 1) * dim]).for_each(|(a, b)| *a += s * b);
            }
        }
        for (t, &c) in codes.outliers.columns.iter().enumerate() {
            row[c] = if with_outliers { codes.outliers.values[r * n_out + t] } else { 0.0 };
        }
    });
    out
}

/// Rows per partial sum of [`scatter`]: a fixed split, so that the sums (and the bytes
/// written) do not depend on the number of threads.
const SCATTER_ROWS: usize = 32;

/// The adjoint of [`decode_rows`] without outliers (a linear map of the codebooks):
/// gathers `g` (rows × cols) onto the entries, Σ over the vectors using an entry of
/// s_r · g's slice, outlier columns left out. Returns main entries then residual entries.
fn scatter(dim: usize, codes: &Codes, n_main: usize, n_residual: usize, scales: &[f32], g: &[f32]) -> Vec<f64> {
    let per_row = codes.main.len() / scales.len();
    let cols = per_row * dim;
    let coded: Vec<f64> = (0..cols).map(|j| if codes.outliers.coded(j) { 1.0 } else { 0.0 }).collect();
    let partials: Vec<Vec<f64>> = g
        .par_chunks(SCATTER_ROWS * cols)
        .enumerate()
        .map(|(chunk, block)| {
            let mut acc = vec![0.0f64; n_main + n_residual];
            for (k, row) in block.chunks_exact(cols).enumerate() {
                let r = chunk * SCATTER_ROWS + k;
                let s = scales[r] as f64;
                for (gi, (v, live)) in row.chunks_exact(dim).zip(coded.chunks_exact(dim)).enumerate() {
                    let i = r * per_row + gi;
                    let c = codes.main[i] as usize * dim;
                    for ((a, &b), l) in acc[c..c + dim].iter_mut().zip(v).zip(live) {
                        *a += s * l * b as f64;
                    }
                    if n_residual > 0 {
                        let c2 = n_main + codes.residual[i] as usize * dim;
                        for ((a, &b), l) in acc[c2..c2 + dim].iter_mut().zip(v).zip(live) {
                            *a += s * l * b as f64;
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; n_main + n_residual];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Least-squares update of every entry for fixed codes: the main entry c minimises
/// Σ w (x − c − r)² over its vectors (r their residual entries), i.e. the weighted mean of
/// x − r; then the residual entries likewise on x − c. Unused entries stay.
fn refit_centroids(f: &VqFormat, x: &[f32], weights: &[f32], codes: &mut Codes) {
    let dim = f.dim;
    let mut q = vec![0.0f32; dim];
    for pass in 0..if f.residual_bits > 0 { 2 } else { 1 } {
        let k = if pass == 0 { f.entries() } else { f.residual_entries() };
        let (mut num, mut den) = (vec![0.0f64; k * dim], vec![0.0f64; k * dim]);
        for (i, (v, wv)) in x.chunks_exact(dim).zip(weights.chunks_exact(dim)).enumerate() {
            let (c, c2) = (codes.main[i], codes.residual.get(i).copied().unwrap_or(0));
            // Target for the entry being refitted: x minus the other codebook's part.
            entry(codes, dim, c, c2, &mut q);
            let (own, idx) = if pass == 0 {
                (&codes.codebook[c as usize * dim..(c as usize + 1) * dim], c as usize)
            } else {
                (&codes.residual_codebook[c2 as usize * dim..(c2 as usize + 1) * dim], c2 as usize)
            };
            for j in 0..dim {
                let other = q[j] - own[j];
                num[idx * dim + j] += wv[j] as f64 * (v[j] - other) as f64;
                den[idx * dim + j] += wv[j] as f64;
            }
        }
        let book = if pass == 0 { &mut codes.codebook } else { &mut codes.residual_codebook };
        for ((e, &n), &d) in book.iter_mut().zip(&num).zip(&den) {
            if d > 0.0 {
                *e = half::f16::from_f64(n / d).to_f32();
            }
        }
    }
}

/// Conjugate-gradient steps of [`refit_codebooks`]: the normal equations converge to a
/// small fraction of the initial residual well within this many on real layers.
const CG_STEPS: usize = 24;

/// Least-squares codebooks for fixed codes, scales and outlier values: both codebooks
/// together minimise the layer output error Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ — the full
/// Hessian, so that entries absorb the correlations between the columns a vector spans
/// and the vectors a row holds (the continuous step of PV-Tuning, solved instead of
/// followed by gradients). The normal equations Pᵀ S H S P c = Pᵀ S H (w − o) (P: codes →
/// positions, S: row scales, o: outlier values) are solved by conjugate gradients
/// preconditioned by their diagonal, starting from the current codebooks; each step is
/// one decode, one product with H and one gather.
fn refit_codebooks(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, h: &[f32], codes: &mut Codes) {
    let dim = f.dim;
    let rows = scales.len();
    let (n_main, n_residual) = (codes.codebook.len(), codes.residual_codebook.len());
    let times_h = |q: &[f32]| {
        let mut out = vec![0.0f32; q.len()];
        crate::tensor::matmul_wt(q, rows, cols, h, cols, &mut out);
        out
    };
    // Diagonal preconditioner: Σ s_r² H_jj over the positions an entry coordinate takes.
    let mut diag = vec![0.0f64; n_main + n_residual];
    let per_row = cols / dim;
    for (i, &c) in codes.main.iter().enumerate() {
        let (r, g) = (i / per_row, i % per_row);
        let s2 = (scales[r] as f64).powi(2);
        for k in (0..dim).filter(|k| codes.outliers.coded(g * dim + k)) {
            let hjj = h[(g * dim + k) * (cols + 1)] as f64 * s2;
            diag[c as usize * dim + k] += hjj;
            if n_residual > 0 {
                diag[n_main + codes.residual[i] as usize * dim + k] += hjj;
            }
        }
    }
    let mut x: Vec<f64> = codes.codebook.iter().chain(&codes.residual_codebook).map(|&v| v as f64).collect();
    let split = |v: &[f64]| -> (Vec<f32>, Vec<f32>) {
        (v[..n_main].iter().map(|&a| a as f32).collect(), v[n_main..].iter().map(|&a| a as f32).collect())
    };
    let apply = |v: &[f64]| -> Vec<f64> {
        let (a, b) = split(v);
        scatter(dim, codes, n_main, n_residual, scales, &times_h(&decode_rows(dim, codes, &a, &b, scales, false)))
    };
    // r = Pᵀ S H (w − ŵ)
    let decoded = codes.decode(dim, scales, true);
    let diff: Vec<f32> = w.iter().zip(&decoded).map(|(a, b)| a - b).collect();
    let mut r = scatter(dim, codes, n_main, n_residual, scales, &times_h(&diff));
    let precondition =
        |r: &[f64]| -> Vec<f64> { r.iter().zip(&diag).map(|(a, d)| if *d > 0.0 { a / d } else { 0.0 }).collect() };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut z = precondition(&r);
    let mut p = z.clone();
    let mut rz = dot(&r, &z);
    let rz0 = rz;
    for _ in 0..CG_STEPS {
        if rz <= 1e-10 * rz0 || rz <= 0.0 {
            break;
        }
        let ap = apply(&p);
        let pap = dot(&p, &ap);
        if pap <= 0.0 {
            break;
        }
        let alpha = rz / pap;
        x.iter_mut().zip(&p).for_each(|(a, b)| *a += alpha * b);
        r.iter_mut().zip(&ap).for_each(|(a, b)| *a -= alpha * b);
        z = precondition(&r);
        let rz_next = dot(&r, &z);
        let beta = rz_next / rz;
        p.iter_mut().zip(&z).for_each(|(a, b)| *a = b + beta * *a);
        rz = rz_next;
    }
    let (mut main, mut residual) = split(&x);
    to_f16(&mut main);
    to_f16(&mut residual);
    (codes.codebook, codes.residual_codebook) = (main, residual);
}

/// Least-squares row scales for fixed codes, codebooks and outlier values:
/// s_r = ((w_r − o_r) H u_rᵀ)/(u_r H u_rᵀ) for the decoded unit-scale row u_r (0 at the
/// outlier columns, whose values o_r do not scale), stored as f16. A row whose code
/// decodes to zero keeps its scale.
fn refit_scales(f: &VqFormat, w: &[f32], scales: &mut [f32], cols: usize, h: &[f32], codes: &Codes) {
    let rows = scales.len();
    let unit = codes.decode(f.dim, &vec![1.0; rows], false);
    let mut uh = vec![0.0f32; unit.len()];
    crate::tensor::matmul_wt(&unit, rows, cols, h, cols, &mut uh);
    let n_out = codes.outliers.columns.len();
    let mut target = vec![0.0f32; cols];
    for (r, s) in scales.iter_mut().enumerate() {
        let span = r * cols..(r + 1) * cols;
        // The part of the row the scale multiplies: w_r − o_r.
        target.copy_from_slice(&w[span.clone()]);
        for (&c, &o) in codes.outliers.columns.iter().zip(&codes.outliers.values[r * n_out..(r + 1) * n_out]) {
            target[c] -= o;
        }
        let num: f64 = target.iter().zip(&uh[span.clone()]).map(|(a, b)| *a as f64 * *b as f64).sum();
        let den: f64 = unit[span.clone()].iter().zip(&uh[span]).map(|(a, b)| *a as f64 * *b as f64).sum();
        if den > 0.0 && num > 0.0 {
            *s = half::f16::from_f64(num / den).to_f32();
        }
    }
}

/// The best outlier values for everything else fixed: with e_r the row's error on the
/// coded columns, the values o_r = w_{r,O} + H_OO⁻¹ H_{O,·} e_rᵀ minimise the output
/// error — the outlier columns absorb, exactly, what the codebooks get wrong (the
/// optimal-brain-surgeon update, restricted to the columns kept apart).
struct OutlierCompensation {
    /// H_OO⁻¹ H_{O,·}: outliers × cols, row-major (empty without outliers).
    gain: Vec<f32>,
}

impl OutlierCompensation {
    fn new(outliers: &Outliers, h: &[f32], cols: usize) -> OutlierCompensation {
        let o = &outliers.columns;
        let n = o.len();
        if n == 0 {
            return OutlierCompensation { gain: Vec::new() };
        }
        let mean_diag = o.iter().map(|&c| h[c * cols + c] as f64).sum::<f64>() / n as f64;
        let damp = 1e-6 * mean_diag.max(f64::MIN_POSITIVE);
        let hoo =
            faer::Mat::<f64>::from_fn(n, n, |a, b| h[o[a] * cols + o[b]] as f64 + if a == b { damp } else { 0.0 });
        let rhs = faer::Mat::<f64>::from_fn(n, cols, |a, j| h[o[a] * cols + j] as f64);
        let Ok(llt) = hoo.llt(faer::Side::Lower) else {
            return OutlierCompensation { gain: Vec::new() };
        };
        use faer::linalg::solvers::Solve;
        let g = llt.solve(&rhs);
        OutlierCompensation { gain: (0..n * cols).map(|k| g[(k / cols, k % cols)] as f32).collect() }
    }

    /// Replaces the outlier values of `codes` by the best ones for the rest.
    fn refit(&self, f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, codes: &mut Codes) {
        if self.gain.is_empty() {
            return;
        }
        let coded = codes.decode(f.dim, scales, false);
        let o = &codes.outliers.columns;
        let raw: Vec<f32> = w
            .par_chunks_exact(cols)
            .zip(coded.par_chunks_exact(cols))
            .flat_map_iter(|(wr, qr)| {
                let e: Vec<f32> = wr
                    .iter()
                    .zip(qr)
                    .enumerate()
                    .map(|(j, (a, b))| if codes.outliers.coded(j) { a - b } else { 0.0 })
                    .collect();
                o.iter()
                    .enumerate()
                    .map(move |(t, &c)| {
                        let g = &self.gain[t * cols..(t + 1) * cols];
                        wr[c] + g.iter().zip(&e).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect::<Vec<f32>>()
            })
            .collect();
        codes.outliers.set(&raw);
    }
}

/// Σ_rows d H dᵀ for the rows of `d` (a gemm, then an f64 sum): with d = w it is the
/// layer's output energy ‖WXᵀ‖² on the calibration inputs, with d = w − ŵ the output
/// error. [`crate::method::gptq::output_error`] is the same quantity as a plain loop.
fn quadratic_form(d: &[f32], cols: usize, h: &[f32]) -> f64 {
    let mut dh = vec![0.0f32; d.len()];
    crate::tensor::matmul_wt(d, d.len() / cols, cols, h, cols, &mut dh);
    d.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// ‖(W − Ŵ)Xᵀ‖² = Σ_rows δ H δᵀ for the decoded codes.
fn output_error(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, codes: &Codes, h: &[f32]) -> f64 {
    let decoded = codes.decode(f.dim, scales, true);
    let delta: Vec<f32> = w.iter().zip(&decoded).map(|(a, b)| a - b).collect();
    quadratic_form(&delta, cols, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::vq::VqFormat;
    use rand::{Rng, SeedableRng};

    fn gaussian(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (a, b): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
            })
            .collect()
    }

    fn decode(f: &VqFormat, t: &VqTensor, cols: usize) -> Vec<f32> {
        f.decode(&t.payload, &t.codebook, cols).unwrap()
    }

    #[test]
    fn gaussian_distortion_matches_the_codebook_size() {
        // Unit Gaussian weights, vq2x16 (2 bits per value) and vq4x256 (2 bits per value):
        // a trained codebook of 2^(2·dim) entries lands between Shannon's bound 2^(−2R) = 0.0625
        // and the scalar Lloyd–Max quantizer's 0.1175 (itself a product codebook), a little
        // above the optimum for the finite sample and the f16 storage.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (rows, cols) = (256, 256);
        let w = gaussian(&mut rng, rows * cols);
        for name in ["vq2x16", "vq4x256"] {
            let f = VqFormat::from_name(name).unwrap();
            let t = quantize_vq(&f, &w, cols, None, None, &VqOptions::default()).unwrap();
            let y = decode(&f, &t, cols);
            let mse: f64 = w.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / w.len() as f64;
            eprintln!("{name}: mse {mse:.4}, used {}/{}", t.used, f.entries());
            assert!(mse > 0.0625 && mse < 0.1175, "{name}: mse {mse:.4}");
            assert!(t.used * 10 >= f.entries() * 9, "{name}: only {} of {} entries used", t.used, f.entries());
        }
    }

    #[test]
    fn residual_codebook_lowers_the_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (rows, cols) = (128, 256);
        let w = gaussian(&mut rng, rows * cols);
        let err = |name: &str| {
            let f = VqFormat::from_name(name).unwrap();
            let t = quantize_vq(&f, &w, cols, None, None, &VqOptions::default()).unwrap();
            let y = decode(&f, &t, cols);
            w.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / w.len() as f64
        };
        let (one, two) = (err("vq4x16"), err("vq4x16+16"));
        eprintln!("vq4x16 {one:.4}, vq4x16+16 {two:.4}");
        // 1 bit per value → 2 bits per value: the error should fall by well over a third.
        assert!(two < 0.66 * one, "{two:.4} vs {one:.4}");
    }

    /// The Hessian (Gram matrix) of `t` correlated inputs of `cols` features: `factors`
    /// latent Gaussian factors mixed into every feature, plus Gaussian noise of `noise`.
    fn correlated_hessian(rng: &mut rand::rngs::StdRng, t: usize, cols: usize, factors: usize, noise: f32) -> Vec<f32> {
        let z = gaussian(rng, t * factors);
        let mix = gaussian(rng, factors * cols);
        let e = gaussian(rng, t * cols);
        let x: Vec<f32> = (0..t * cols)
            .map(|i| {
                let latent: f32 = (0..factors).map(|k| z[(i / cols) * factors + k] * mix[k * cols + i % cols]).sum();
                latent + noise * e[i]
            })
            .collect();
        let mut h = vec![0.0f32; cols * cols];
        crate::tensor::gram(&x, t, cols, &mut h);
        h
    }

    #[test]
    fn hessian_sweep_lowers_the_output_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (rows, cols, t) = (64, 128, 512);
        let h = correlated_hessian(&mut rng, t, cols, 8, 0.3);
        let w = gaussian(&mut rng, rows * cols);
        let f = VqFormat::from_name("vq4x256").unwrap();
        let diag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
        let plain = quantize_vq(&f, &w, cols, Some(&diag), None, &VqOptions::default()).unwrap();
        let y = decode(&f, &plain, cols);
        let e_plain = crate::method::gptq::output_error(&w, &y, cols, &h);
        for refit in [CodebookRefit::Centroids, CodebookRefit::LeastSquares] {
            let opts = VqOptions { refit, ..VqOptions::default() };
            let swept = quantize_vq(&f, &w, cols, None, Some(&h), &opts).unwrap();
            let e_swept = crate::method::gptq::output_error(&w, &decode(&f, &swept, cols), cols, &h);
            eprintln!("output error: importance k-means {e_plain:.4e}, with sweep and {refit:?} {e_swept:.4e}");
            assert!(e_swept < 0.7 * e_plain, "{refit:?}: {e_swept:.4e} vs {e_plain:.4e}");
            // The reported error is the error of what decodes.
            let reported = swept.output_error.unwrap();
            assert!((reported - e_swept).abs() < 1e-3 * e_swept, "{refit:?}: {reported} vs {e_swept}");
            // Relative to the layer's output energy Σ w H wᵀ.
            let zero = vec![0.0f32; w.len()];
            let energy = crate::method::gptq::output_error(&w, &zero, cols, &h);
            let relative = swept.relative_output_error.unwrap();
            assert!((relative - e_swept / energy).abs() < 1e-3 * relative, "{relative} vs {}", e_swept / energy);
        }
        assert_eq!(CodebookRefit::Auto.resolve(&f), CodebookRefit::LeastSquares);
        let fine = VqFormat::from_name("vq4x256+256").unwrap();
        assert_eq!(CodebookRefit::Auto.resolve(&fine), CodebookRefit::Centroids);
    }

    /// Minimises Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ over the codebooks by building the normal
    /// equations densely and solving them (Gaussian elimination, a tiny ridge for the
    /// main/residual shift the objective cannot see); returns the minimum.
    fn dense_optimum(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, h: &[f32], codes: &Codes) -> f64 {
        let (dim, per_row) = (f.dim, cols / f.dim);
        let (n_main, n) = (codes.codebook.len(), codes.codebook.len() + codes.residual_codebook.len());
        let index = |r: usize, j: usize| -> Vec<usize> {
            let i = r * per_row + j / dim;
            let mut v = vec![codes.main[i] as usize * dim + j % dim];
            if n > n_main {
                v.push(n_main + codes.residual[i] as usize * dim + j % dim);
            }
            v
        };
        let (mut a, mut b) = (vec![vec![0.0f64; n + 1]; n], vec![0.0f64; n]);
        for (r, &s) in scales.iter().enumerate() {
            let s = s as f64;
            for j in 0..cols {
                for j2 in 0..cols {
                    let hv = h[j * cols + j2] as f64;
                    for &p in &index(r, j) {
                        b[p] += s * hv * w[r * cols + j2] as f64;
                        for &q in &index(r, j2) {
                            a[p][q] += s * s * hv;
                        }
                    }
                }
            }
        }
        let ridge = 1e-9 * (0..n).map(|i| a[i][i]).sum::<f64>() / n as f64;
        for i in 0..n {
            a[i][i] += ridge.max(1e-12);
            a[i][n] = b[i];
        }
        for c in 0..n {
            let p = (c..n).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs())).unwrap();
            a.swap(c, p);
            let pivot = a[c].clone();
            for (_, row) in a.iter_mut().enumerate().filter(|(r, _)| *r != c) {
                let m = row[c] / pivot[c];
                row.iter_mut().zip(&pivot).skip(c).for_each(|(x, p)| *x -= m * p);
            }
        }
        let x: Vec<f32> = (0..n).map(|i| (a[i][n] / a[i][i]) as f32).collect();
        let optimal =
            Codes { codebook: x[..n_main].to_vec(), residual_codebook: x[n_main..].to_vec(), ..codes.clone() };
        output_error(f, w, scales, cols, &optimal, h)
    }

    #[test]
    fn codebook_refit_reaches_the_least_squares_optimum() {
        // Correlated inputs, so that the full Hessian matters; random codes. The refitted
        // codebooks (conjugate gradients, then f16) must reach the dense solution's output
        // error within the f16 rounding (relative 2⁻¹¹ on entries: ~1e-5 of the error here).
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (rows, cols, t) = (24, 16, 256);
        let h = correlated_hessian(&mut rng, t, cols, 3, 0.2);
        let w = gaussian(&mut rng, rows * cols);
        let scales: Vec<f32> = (0..rows).map(|r| 0.5 + 0.05 * r as f32).collect();
        for name in ["vq2x8", "vq4x4+4"] {
            let f = VqFormat::from_name(name).unwrap();
            let vectors = rows * cols / f.dim;
            let mut codes = Codes {
                main: (0..vectors).map(|_| rng.random_range(0..f.entries() as u32)).collect(),
                residual: (0..vectors).map(|_| rng.random_range(0..f.residual_entries().max(1) as u32)).collect(),
                codebook: gaussian(&mut rng, f.entries() * f.dim),
                residual_codebook: gaussian(&mut rng, f.residual_entries() * f.dim),
                ..Codes::default()
            };
            if f.residual_bits == 0 {
                codes.residual.clear();
            }
            let before = output_error(&f, &w, &scales, cols, &codes, &h);
            let optimum = dense_optimum(&f, &w, &scales, cols, &h, &codes);
            refit_codebooks(&f, &w, &scales, cols, &h, &mut codes);
            let after = output_error(&f, &w, &scales, cols, &codes, &h);
            eprintln!("{name}: before {before:.5e}, refit {after:.5e}, optimum {optimum:.5e}");
            assert!(after <= optimum * (1.0 + 1e-4), "{name}: {after:.6e} vs optimum {optimum:.6e}");
            assert!(after < 0.9 * before, "{name}: {after:.4e} vs {before:.4e}");
            // The scale refit cannot raise the error either (beyond the f16 rounding).
            let mut s2 = scales.clone();
            refit_scales(&f, &w, &mut s2, cols, &h, &codes);
            let rescaled = output_error(&f, &w, &s2, cols, &codes, &h);
            assert!(rescaled <= after * (1.0 + 1e-3), "{name}: scales {rescaled:.6e} vs {after:.6e}");
        }
    }

    #[test]
    fn outlier_columns_take_the_massive_inputs() {
        // Four input channels 30× larger than the rest (LLM "massive activations"): kept
        // apart as f16 values, they stop dominating the 1-bit codes' output error.
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (rows, cols, t) = (64, 128, 512);
        let hot = [5usize, 40, 41, 99];
        let mut x = gaussian(&mut rng, t * cols);
        for (i, v) in x.iter_mut().enumerate() {
            if hot.contains(&(i % cols)) {
                *v *= 30.0;
            }
        }
        let mut h = vec![0.0f32; cols * cols];
        crate::tensor::gram(&x, t, cols, &mut h);
        let w = gaussian(&mut rng, rows * cols);
        let run = |name: &str| {
            let f = VqFormat::from_name(name).unwrap();
            let q = quantize_vq(&f, &w, cols, None, Some(&h), &VqOptions::default()).unwrap();
            let y = decode(&f, &q, cols);
            let e = crate::method::gptq::output_error(&w, &y, cols, &h);
            let reported = q.output_error.unwrap();
            assert!((reported - e).abs() < 1e-3 * e, "{name}: reported {reported} vs decoded {e}");
            (f, q, y, e)
        };
        let (_, _, _, plain) = run("vq4x16");
        let (f, q, y, kept) = run("vq4x16o4");
        eprintln!("output error: vq4x16 {plain:.4e}, vq4x16o4 {kept:.4e}");
        assert!(kept < 0.5 * plain, "{kept:.4e} vs {plain:.4e}");
        let book = f.parse_codebook(&q.codebook, cols).unwrap();
        assert_eq!(book.outlier_columns, hot);
        // The outlier values minimise the output error for the rest fixed: no single
        // value moved by ±1 % of its column's largest magnitude lowers it.
        let h64 = |d: &[f32]| -> f64 {
            let mut dh = vec![0.0f32; d.len()];
            crate::tensor::matmul_wt(d, rows, cols, &h, cols, &mut dh);
            d.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let base = h64(&w.iter().zip(&y).map(|(a, b)| a - b).collect::<Vec<f32>>());
        for &c in &hot {
            let step = 0.01 * (0..rows).map(|r| y[r * cols + c].abs()).fold(0.0f32, f32::max);
            for r in [0, rows / 2, rows - 1] {
                for sign in [-1.0f32, 1.0] {
                    let mut z = y.clone();
                    z[r * cols + c] += sign * step;
                    let e = h64(&w.iter().zip(&z).map(|(a, b)| a - b).collect::<Vec<f32>>());
                    assert!(e >= base * (1.0 - 1e-6), "column {c}, row {r}: {e:.6e} < {base:.6e}");
                }
            }
        }
        // No Hessian: the outlier columns are the most important ones and hold the
        // weights as f16.
        let imp: Vec<f32> = (0..cols).map(|j| if hot.contains(&j) { 900.0 } else { 1.0 }).collect();
        let q = quantize_vq(&f, &w, cols, Some(&imp), None, &VqOptions::default()).unwrap();
        let y = decode(&f, &q, cols);
        for &c in &hot {
            for r in 0..rows {
                let d = (w[r * cols + c] - y[r * cols + c]).abs();
                assert!(d <= w[r * cols + c].abs() / 2048.0 + 1e-7, "column {c}, row {r}: {d}");
            }
        }
    }

    #[test]
    fn deterministic_and_bad_input_is_an_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let w = gaussian(&mut rng, 32 * 64);
        let f = VqFormat::from_name("vq8x16+16").unwrap();
        let a = quantize_vq(&f, &w, 64, None, None, &VqOptions::default()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let b = pool.install(|| quantize_vq(&f, &w, 64, None, None, &VqOptions::default()).unwrap());
        assert_eq!((a.payload, a.codebook), (b.payload, b.codebook));
        // With a Hessian too (sweep, least-squares refits and their fixed-split sums).
        let x = gaussian(&mut rng, 200 * 64);
        let mut h = vec![0.0f32; 64 * 64];
        crate::tensor::gram(&x, 200, 64, &mut h);
        let a = quantize_vq(&f, &w, 64, None, Some(&h), &VqOptions::default()).unwrap();
        let b = pool.install(|| quantize_vq(&f, &w, 64, None, Some(&h), &VqOptions::default()).unwrap());
        assert_eq!((a.payload, a.codebook), (b.payload, b.codebook));
        assert!(quantize_vq(&f, &w, 60, None, None, &VqOptions::default()).is_err());
        let mut bad = w.clone();
        bad[7] = f32::NAN;
        assert!(matches!(
            quantize_vq(&f, &bad, 64, None, None, &VqOptions::default()),
            Err(EncodeError::NonFinite { index: 7, .. })
        ));
        assert!(quantize_vq(&f, &w, 64, Some(&[1.0; 3]), None, &VqOptions::default()).is_err());
        let wide = VqFormat::from_name("vq8x16o64").unwrap(); // all 64 columns apart
        assert!(matches!(quantize_vq(&wide, &w, 64, None, None, &VqOptions::default()), Err(EncodeError::Codebook(_))));
        let big = VqFormat::from_name("vq8x1024").unwrap(); // 256 vectors
        assert!(matches!(quantize_vq(&big, &w, 64, None, None, &VqOptions::default()), Err(EncodeError::Codebook(_))));
    }
}
