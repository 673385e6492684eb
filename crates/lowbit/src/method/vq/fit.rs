//! The codebooks' first fit (step 3 of [`super`]): weighted k-means on a strided sample,
//! the residual codebook on what the first leaves, and the centroid refit between sweeps.

use super::*;

/// At most this many vectors per codebook entry go into k-means (an evenly strided,
/// deterministic sample); every vector is then assigned to the fitted codebook. 128 per
/// entry estimates each centroid to well under the quantization step, at a fraction of
/// the cost of clustering millions of vectors.
pub(super) const SAMPLE_PER_ENTRY: usize = 128;

/// k-means on an evenly strided sample of the `dim`-vectors of `x` (all of them when few).
pub(super) fn kmeans_sampled(x: &[f32], weights: &[f32], dim: usize, k: usize, opts: &KmeansOptions) -> Vec<f32> {
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
pub(super) fn fit_codebooks(f: &VqFormat, x: &[f32], weights: &[f32], opts: &VqOptions) -> Codes {
    let dim = f.dim;
    let main_centroids = kmeans_sampled(x, weights, dim, f.entries(), &opts.kmeans);
    let mut codebook = main_centroids;
    round_book(&mut codebook, opts.int8_grid);
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
        round_book(&mut residual_codebook, opts.int8_grid);
        residual = rest
            .par_chunks_exact(dim)
            .zip(weights.par_chunks_exact(dim))
            .map(|(v, w)| nearest(&residual_codebook, dim, v, w).0)
            .collect();
    }
    Codes { main, residual, codebook, residual_codebook, grid: opts.int8_grid, ..Codes::default() }
}

/// Least-squares update of every entry for fixed codes: the main entry c minimises
/// Σ w (x − c − r)² over its vectors (r their residual entries), i.e. the weighted mean of
/// x − r; then the residual entries likewise on x − c. Unused entries stay.
pub(super) fn refit_centroids(f: &VqFormat, x: &[f32], weights: &[f32], codes: &mut Codes) {
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
                *e = (n / d) as f32;
            }
        }
        round_book(book, codes.grid);
    }
}
