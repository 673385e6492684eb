//! Choosing codes (step 4 of [`super`]): nearest entries, and the GPTQ sweep over
//! vector-wide column groups that pushes each vector's error onto the columns not yet
//! quantized; decoding the rows for the current codebooks.

use super::*;

/// The entry pair (main, residual) for normalised vector `v` under weights `w`: the
/// nearest main entry, then the residual entry nearest to what it leaves.
pub(super) fn choose(codes: &Codes, dim: usize, v: &[f32], w: &[f32], rest: &mut [f32]) -> (u32, u32) {
    let (c, _) = nearest(&codes.codebook, dim, v, w);
    if codes.residual_codebook.is_empty() {
        return (c, 0);
    }
    let e = &codes.codebook[c as usize * dim..(c as usize + 1) * dim];
    rest.iter_mut().zip(v).zip(e).for_each(|((r, a), b)| *r = a - b);
    (c, nearest(&codes.residual_codebook, dim, rest, w).0)
}

/// The decoded normalised vector of codes (c, c2).
pub(super) fn entry(codes: &Codes, dim: usize, c: u32, c2: u32, out: &mut [f32]) {
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
pub(super) fn sweep(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, u: &[f32], codes: &mut Codes) {
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
pub(super) fn decode_rows(
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
