//! The refinement after a block-format sweep: with the codes fixed, every block's float
//! super-scales (d, and dmin where the format has one) are refitted in closed form to
//! minimise the row's output error under the regularised H (the layer-wise refinement of
//! AdaQuant / decoupleQ, for the parameters a block format leaves free); kept per row only
//! where the error drops.
//!
//! A row's reconstruction is ŵ = A·θ (θ the blocks' scales, A block-sparse: column k is
//! the basis of parameter k inside its block), and E(θ) = (w − Aθ)ᵀH'(w − Aθ) is minimised
//! by AᵀH'A·θ = AᵀH'w, with H' = keep·H + diag(added) the regularised Hessian
//! ([`Factor`]). Building AᵀHA touches all of H once per row and parameter kind, so it is
//! done for [`REFINE_ROWS`] rows at a time as matrix products: for each block b,
//! T = A[:, b]ᵀ-rows · H[b, :] (one `gemm`), whose segments dotted with A give the
//! block's row of AᵀHA and whose dot with w gives (AᵀHw)_b; the diagonal part only meets
//! a block's own parameters.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use rayon::prelude::*;

use super::{Factor, ScalarTile};
use crate::format::encode::levels::BlockLevels;
use crate::tensor::{matmul_strided, StridedMat};

/// Rows refined together (a multiple of the sweep's row tile): each pass over H serves
/// this many rows.
const REFINE_ROWS: usize = 64;

/// Refines every row of a block-format sweep. `w`: the original rows; `tiles`: the
/// sweep's per-tile codes and block levels; `h`: the Hessian and `f` its factor (whose
/// regularisation the refit uses); `out`: the encoded rows (blocks of `ts` bytes), whose
/// scales are rewritten where that helps.
pub(super) fn refine(
    w: &[f32],
    ncols: usize,
    h: &[f32],
    f: &Factor,
    ts: usize,
    tiles: &mut [ScalarTile],
    out: &mut [u8],
) {
    let rows = w.len() / ncols;
    let row_bytes = out.len() / rows;
    let per = REFINE_ROWS / super::ROW_TILE;
    tiles
        .par_chunks_mut(per)
        .zip(w.par_chunks(REFINE_ROWS * ncols))
        .zip(out.par_chunks_mut(REFINE_ROWS * row_bytes))
        .for_each(|((tiles, w), out)| {
            // Ctrl-C: the remaining chunks are skipped (the caller reports the interruption).
            if crate::interrupt::requested() {
                return;
            }
            let mut rows: Vec<(&[u8], &mut [BlockLevels])> = Vec::with_capacity(REFINE_ROWS);
            for t in tiles.iter_mut() {
                let ScalarTile { levels, codes } = t;
                rows.extend(codes.chunks_exact(ncols).zip(levels.iter_mut().map(|l| l.as_mut_slice())));
            }
            refine_chunk(w, ncols, h, f, ts, &mut rows, out, row_bytes);
        });
}

/// [`refine`] for one chunk of rows.
#[allow(clippy::too_many_arguments)]
fn refine_chunk(
    w: &[f32],
    n: usize,
    h: &[f32],
    f: &Factor,
    ts: usize,
    rows: &mut [(&[u8], &mut [BlockLevels])],
    out: &mut [u8],
    row_bytes: usize,
) {
    let r_count = rows.len();
    let n_blocks = rows[0].1.len();
    let bs = n / n_blocks;
    let per_block = if rows[0].1[0].has_min() { 2 } else { 1 };
    let p = n_blocks * per_block;
    // coef[(k·R + r)·n + i]: the coefficient of row r's parameter kind k at position i.
    let mut coef = vec![0.0f32; per_block * r_count * n];
    for (r, (codes, levels)) in rows.iter().enumerate() {
        for (i, &c) in codes.iter().enumerate() {
            let (ad, am) = levels[i / bs].basis(i % bs, c);
            coef[r * n + i] = ad;
            if per_block == 2 {
                coef[(r_count + r) * n + i] = am;
            }
        }
    }
    // Per row: G = AᵀHA (p × p) and AᵀHw (p).
    let mut g = vec![0.0f64; r_count * p * p];
    let mut rhs = vec![0.0f64; r_count * p];
    let m = per_block * r_count;
    let mut t = vec![0.0f32; m * n];
    let keep = f.keep as f64;
    for b in 0..n_blocks {
        let lhs = StridedMat { data: &coef, offset: b * bs, row_stride: n, col_stride: 1 };
        let hb = StridedMat { data: h, offset: b * bs * n, row_stride: n, col_stride: 1 };
        matmul_strided(m, n, bs, &lhs, &hb, &mut t, n);
        for r in 0..r_count {
            let wr = &w[r * n..(r + 1) * n];
            for k in 0..per_block {
                let tr = &t[(k * r_count + r) * n..(k * r_count + r + 1) * n];
                let row = b * per_block + k;
                let ck = &coef[(k * r_count + r) * n + b * bs..(k * r_count + r) * n + (b + 1) * bs];
                let added = &f.added[b * bs..(b + 1) * bs];
                let own = b * bs..(b + 1) * bs;
                rhs[r * p + row] = keep * dot(tr, wr) + dot3(ck, added, &wr[own]);
                for k2 in 0..per_block {
                    let c = &coef[(k2 * r_count + r) * n..(k2 * r_count + r + 1) * n];
                    for b2 in 0..n_blocks {
                        let seg = b2 * bs..(b2 + 1) * bs;
                        g[(r * p + row) * p + b2 * per_block + k2] = keep * dot(&tr[seg.clone()], &c[seg]);
                    }
                    g[(r * p + row) * p + b * per_block + k2] += dot3(ck, added, &c[b * bs..(b + 1) * bs]);
                }
            }
        }
    }
    for (r, (_, levels)) in rows.iter_mut().enumerate() {
        let o = &mut out[r * row_bytes..(r + 1) * row_bytes];
        solve_row(&g[r * p * p..(r + 1) * p * p], &rhs[r * p..(r + 1) * p], levels, per_block, ts, o);
    }
}

/// Σ x·y·z in f64.
fn dot3(x: &[f32], y: &[f32], z: &[f32]) -> f64 {
    x.iter().zip(y).zip(z).map(|((a, b), c)| *a as f64 * *b as f64 * *c as f64).sum()
}

/// Σ x·y in f64.
fn dot(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Solves one row's G·θ = rhs, stores θ as the format stores scales, and keeps it if the
/// output error went down. E(θ) − wᵀHw = θᵀGθ − 2θᵀ·rhs is exact for any θ, including the
/// stored (rounded) one, so the comparison needs no wᵀHw.
fn solve_row(g: &[f64], rhs: &[f64], levels: &mut [BlockLevels], per_block: usize, ts: usize, out: &mut [u8]) {
    let p = rhs.len();
    let params = |levels: &[BlockLevels]| -> Vec<f64> {
        (0..p)
            .map(|k| {
                let lv = &levels[k / per_block];
                if k % per_block == 0 {
                    lv.d as f64
                } else {
                    lv.dmin as f64
                }
            })
            .collect()
    };
    let error = |theta: &[f64]| {
        let quad: f64 = (0..p).map(|k| theta[k] * (0..p).map(|l| g[k * p + l] * theta[l]).sum::<f64>()).sum();
        quad - 2.0 * (0..p).map(|k| theta[k] * rhs[k]).sum::<f64>()
    };
    let theta_now = params(levels);
    let before = error(&theta_now);
    // A parameter no code uses (all-zero column) keeps its value: a unit row fixes it.
    let mut system = Mat::<f64>::from_fn(p, p, |k, l| g[k * p + l]);
    let mut target = Mat::<f64>::from_fn(p, 1, |k, _| rhs[k]);
    let trace = (0..p).map(|k| g[k * p + k]).sum::<f64>() / p as f64;
    for k in 0..p {
        if g[k * p + k] <= 1e-12 * trace.max(f64::MIN_POSITIVE) {
            for col in 0..p {
                system[(k, col)] = 0.0;
                system[(col, k)] = 0.0;
            }
            system[(k, k)] = 1.0;
            target[(k, 0)] = theta_now[k];
        }
    }
    let Ok(llt) = system.llt(Side::Lower) else { return };
    let theta = llt.solve(&target);
    if (0..p).any(|k| !theta[(k, 0)].is_finite()) {
        return;
    }
    let saved: Vec<BlockLevels> = levels.to_vec();
    let saved_bytes = out.to_vec();
    for (b, lv) in levels.iter_mut().enumerate() {
        let d = theta[(b * per_block, 0)] as f32;
        let dmin = if per_block == 2 { theta[(b * per_block + 1, 0)] as f32 } else { 0.0 };
        lv.store_scales(&mut out[b * ts..(b + 1) * ts], d, dmin);
    }
    if error(&params(levels)).partial_cmp(&before) != Some(std::cmp::Ordering::Less) {
        levels.clone_from_slice(&saved);
        out.copy_from_slice(&saved_bytes);
    }
}
