//! Learned vector codebooks for one tensor ([`crate::format::vq`]), after VPTQ (Liu et al.,
//! 2024) with the PV-Tuning idea of alternating discrete and continuous updates, without
//! gradients:
//!
//! 1. every row is normalised by its RMS (stored as the row's f16 scale);
//! 2. the codebook is fitted by weighted k-means ([`crate::method::kmeans`]) on the
//!    row vectors, each coordinate weighted by its column's importance (the Hessian
//!    diagonal) and each row by its scale², so that the distortion k-means minimises is
//!    the weight error that matters; a residual codebook, if the format has one, is
//!    fitted the same way on what the first one leaves;
//! 3. with a calibration Hessian, codes are chosen by a GPTQ sweep over column groups of
//!    the vector length: each vector takes its nearest entry for the weights as updated so
//!    far, and its error is pushed onto the columns not yet quantized (the error feedback
//!    of GPTQ, as VPTQ does);
//! 4. then, alternating: every codebook entry is refitted by weighted least squares to the
//!    vectors that use it, and the sweep re-chooses every code for the new codebook
//!    (candidate re-assignment); the round with the lowest layer output error
//!    ‖(W − Ŵ)Xᵀ‖² is kept.
//!
//! Without a Hessian, step 3 is plain nearest-entry assignment (what k-means ends with).

use rayon::prelude::*;

use super::gptq::{inverse_factor, GptqOptions};
use super::kmeans::{kmeans, nearest, used_entries, KmeansOptions};
use crate::format::encode::EncodeError;
use crate::format::vq::{pack_row, VqFormat};

/// Options of [`quantize_vq`].
#[derive(Clone, Copy, Debug)]
pub struct VqOptions {
    /// k-means settings (iterations, seed).
    pub kmeans: KmeansOptions,
    /// Codebook-update / re-assignment rounds after the first sweep (Hessian only).
    pub rounds: usize,
    /// Dampening and shrinkage of the Hessian for the sweep (as for GPTQ).
    pub gptq: GptqOptions,
}

impl Default for VqOptions {
    fn default() -> Self {
        VqOptions { kmeans: KmeansOptions::default(), rounds: 2, gptq: GptqOptions::default() }
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
}

/// Codes of every vector and the codebooks, in normalised units.
struct Codes {
    main: Vec<u32>,
    residual: Vec<u32>,
    codebook: Vec<f32>,
    residual_codebook: Vec<f32>,
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
    // Row scales as stored (f16), and the normalised rows.
    let scales: Vec<f32> = w
        .chunks_exact(cols)
        .map(|r| half::f16::from_f32((r.iter().map(|v| v * v).sum::<f32>() / cols as f32).sqrt()).to_f32())
        .collect();
    let x: Vec<f32> = w
        .chunks_exact(cols)
        .zip(&scales)
        .flat_map(|(r, &s)| r.iter().map(move |v| if s > 0.0 { v / s } else { 0.0 }))
        .collect();
    let column_weight: Vec<f32> = match (importance, hessian) {
        (Some(imp), _) => imp.iter().map(|v| v.max(0.0)).collect(),
        (None, Some(h)) => (0..cols).map(|i| h[i * cols + i].max(0.0)).collect(),
        (None, None) => vec![1.0; cols],
    };
    // A column no input ever reaches (zero importance) would give k-means nothing to fit.
    let floor = column_weight.iter().sum::<f32>() / cols as f32 * 1e-6;
    let weights: Vec<f32> =
        scales.iter().flat_map(|&s| column_weight.iter().map(move |&c| (c + floor) * s * s)).collect();
    let mut codes = fit_codebooks(f, &x, &weights, opts);
    let output_error = match hessian {
        None => None,
        Some(h) => {
            let factor = inverse_factor(h, cols, &opts.gptq).map_err(EncodeError::Hessian)?;
            sweep(f, w, &scales, cols, &factor.u, &mut codes);
            let mut best = (output_error(f, w, &scales, cols, &codes, h), codes.main.clone(), codes.residual.clone());
            let mut best_books = (codes.codebook.clone(), codes.residual_codebook.clone());
            for _ in 0..opts.rounds {
                refit_codebooks(f, &x, &weights, &mut codes);
                sweep(f, w, &scales, cols, &factor.u, &mut codes);
                let e = output_error(f, w, &scales, cols, &codes, h);
                if e < best.0 {
                    best = (e, codes.main.clone(), codes.residual.clone());
                    best_books = (codes.codebook.clone(), codes.residual_codebook.clone());
                }
            }
            (codes.main, codes.residual) = (best.1, best.2);
            (codes.codebook, codes.residual_codebook) = best_books;
            Some(best.0)
        }
    };
    // Store the codebooks as f16 (what decoding will see).
    let codebook: Vec<u8> = codes
        .codebook
        .iter()
        .chain(&codes.residual_codebook)
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let per_row = cols / dim;
    let mut payload = vec![0u8; rows * row_bytes];
    payload.par_chunks_mut(row_bytes).enumerate().for_each(|(r, out)| {
        let main = &codes.main[r * per_row..(r + 1) * per_row];
        let residual =
            if codes.residual.is_empty() { &[][..] } else { &codes.residual[r * per_row..(r + 1) * per_row] };
        pack_row(f, scales[r], main, residual, out);
    });
    Ok(VqTensor {
        payload,
        codebook,
        used: used_entries(&codes.main, f.entries()),
        used_residual: used_entries(&codes.residual, f.residual_entries()),
        output_error,
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
    Codes { main, residual, codebook, residual_codebook }
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
/// then the group's errors are pushed onto the later columns through U.
fn sweep(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, u: &[f32], codes: &mut Codes) {
    let dim = f.dim;
    let per_row = cols / dim;
    let prec: Vec<f32> = (0..cols).map(|j| 1.0 / (u[j * cols + j] * u[j * cols + j])).collect();
    let shared = &*codes;
    let chosen: Vec<(u32, u32)> = w
        .par_chunks_exact(cols)
        .zip(scales.par_iter())
        .flat_map_iter(|(row, &s)| {
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
                    let u_row = &u[j * cols + j..(j + 1) * cols];
                    let err = (work[j] - s * qk) / u_row[0];
                    work[j] = s * qk;
                    for (x, &uk) in work[j + 1..].iter_mut().zip(&u_row[1..]) {
                        *x -= err * uk;
                    }
                }
                out.push((c, c2));
            }
            out
        })
        .collect();
    codes.main = chosen.iter().map(|p| p.0).collect();
    if f.residual_bits > 0 {
        codes.residual = chosen.iter().map(|p| p.1).collect();
    }
}

/// Least-squares update of every entry for fixed codes: the main entry c minimises
/// Σ w (x − c − r)² over its vectors (r their residual entries), i.e. the weighted mean of
/// x − r; then the residual entries likewise on x − c. Unused entries stay.
fn refit_codebooks(f: &VqFormat, x: &[f32], weights: &[f32], codes: &mut Codes) {
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

/// ‖(W − Ŵ)Xᵀ‖² = Σ_rows δ H δᵀ for the decoded codes.
fn output_error(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, codes: &Codes, h: &[f32]) -> f64 {
    let dim = f.dim;
    let per_row = cols / dim;
    let rows = w.len() / cols;
    let mut delta = vec![0.0f32; w.len()];
    delta.par_chunks_mut(cols).enumerate().for_each(|(r, d)| {
        let mut q = vec![0.0f32; dim];
        for g in 0..per_row {
            let i = r * per_row + g;
            entry(codes, dim, codes.main[i], codes.residual.get(i).copied().unwrap_or(0), &mut q);
            for (k, &qk) in q.iter().enumerate() {
                let j = g * dim + k;
                d[j] = w[r * cols + j] - scales[r] * qk;
            }
        }
    });
    let mut dh = vec![0.0f32; w.len()];
    crate::tensor::matmul_wt(&delta, rows, cols, h, cols, &mut dh);
    delta.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum()
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

    #[test]
    fn hessian_sweep_lowers_the_output_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (rows, cols, t) = (64, 128, 512);
        // Correlated inputs: a few latent factors plus noise.
        let z = gaussian(&mut rng, t * 8);
        let a = gaussian(&mut rng, 8 * cols);
        let e = gaussian(&mut rng, t * cols);
        let x: Vec<f32> = (0..t * cols)
            .map(|i| (0..8).map(|k| z[(i / cols) * 8 + k] * a[k * cols + i % cols]).sum::<f32>() + 0.3 * e[i])
            .collect();
        let mut h = vec![0.0f32; cols * cols];
        crate::tensor::gram(&x, t, cols, &mut h);
        let w = gaussian(&mut rng, rows * cols);
        let f = VqFormat::from_name("vq4x256").unwrap();
        let diag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
        let plain = quantize_vq(&f, &w, cols, Some(&diag), None, &VqOptions::default()).unwrap();
        let y = decode(&f, &plain, cols);
        let e_plain = crate::method::gptq::output_error(&w, &y, cols, &h);
        let swept = quantize_vq(&f, &w, cols, None, Some(&h), &VqOptions::default()).unwrap();
        let e_swept = crate::method::gptq::output_error(&w, &decode(&f, &swept, cols), cols, &h);
        eprintln!("output error: importance k-means {e_plain:.4e}, with sweep {e_swept:.4e}");
        assert!(e_swept < 0.7 * e_plain, "{e_swept:.4e} vs {e_plain:.4e}");
        // The reported error is the error of what decodes.
        let reported = swept.output_error.unwrap();
        assert!((reported - e_swept).abs() < 1e-3 * e_swept, "{reported} vs {e_swept}");
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
        assert!(quantize_vq(&f, &w, 60, None, None, &VqOptions::default()).is_err());
        let mut bad = w.clone();
        bad[7] = f32::NAN;
        assert!(matches!(
            quantize_vq(&f, &bad, 64, None, None, &VqOptions::default()),
            Err(EncodeError::NonFinite { index: 7, .. })
        ));
        assert!(quantize_vq(&f, &w, 64, Some(&[1.0; 3]), None, &VqOptions::default()).is_err());
        let big = VqFormat::from_name("vq8x1024").unwrap(); // 256 vectors
        assert!(matches!(quantize_vq(&big, &w, 64, None, None, &VqOptions::default()), Err(EncodeError::Codebook(_))));
    }
}
