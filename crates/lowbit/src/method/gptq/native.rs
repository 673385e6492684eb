//! GPTQ for lowbit's native group formats (`intN_gG[_zp]`, `nf4_gG`, `fp8_gG`, `fp4_gG`) —
//! the setting GPTQ was first published for (group-wise integers): when the sweep reaches
//! a group's first column, the group's scale (and offset) are fitted by the format's own
//! importance-weighted search ([`NativeFormat::encode_row`] on that group, with H's
//! diagonal as importance) on the weights as updated so far; each weight is then rounded
//! to the nearest of the values that scale can represent, and its error pushed onto the
//! columns not yet quantized. The output is an ordinary row of the format.
//!
//! Why: with calibration, ggml block formats and VQ already went through GPTQ while the
//! native formats were fitted block by block, so an allocation choosing between them
//! compared a compensated format with an uncompensated one.

use rayon::prelude::*;

use super::{compensate, prepare, working_copy, Factor, GptqOptions, ROW_TILE};
use crate::format::encode::{EncodeError, Fit};
use crate::format::native::{write_bits, NativeFormat};

/// Quantizes the row-major matrix `w` (rows of `ncols`) to the native format `f` by GPTQ
/// against the input Hessian `h` (ncols × ncols, row-major). Returns the encoded rows.
pub fn gptq_native(
    f: NativeFormat,
    w: &[f32],
    ncols: usize,
    h: &[f32],
    opts: &GptqOptions,
) -> Result<Vec<u8>, EncodeError> {
    let g = f.group;
    if ncols == 0 || !ncols.is_multiple_of(g) || !w.len().is_multiple_of(ncols) {
        return Err(EncodeError::PartialGroup { format: f.to_string(), n: ncols, group: g });
    }
    let (factor, dead) = prepare(w, ncols, h, opts)?;
    let row_bytes = ncols / g * f.group_bytes();
    let mut out = vec![0u8; w.len() / ncols * row_bytes];
    out.par_chunks_mut(ROW_TILE * row_bytes)
        .zip(w.par_chunks(ROW_TILE * ncols))
        .try_for_each(|(o, rows)| sweep_tile(&f, rows, ncols, &factor, &dead, o))?;
    Ok(out)
}

/// The values a group's header lets its codes take, sorted, with their codes.
fn group_levels(f: &NativeFormat, group: &[u8], levels: &mut Vec<(f32, u32)>) {
    let n = 1u32 << f.code_bits();
    let mut one = vec![0u8; f.group_bytes()];
    let header = f.group_bytes() - f.group * f.code_bits() / 8;
    one[..header].copy_from_slice(&group[..header]);
    let mut decoded = vec![0f32; f.group];
    levels.clear();
    // Every code through the format's own decoder (code q in the group's first slot).
    for q in 0..n {
        one[header..].fill(0);
        write_bits(&mut one[header..], 0, f.code_bits(), q);
        f.decode_row(&one, &mut decoded);
        if decoded[0].is_finite() {
            levels.push((decoded[0], q));
        }
    }
    levels.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The level nearest to `x` (the lower one on a tie).
fn nearest(levels: &[(f32, u32)], x: f32) -> (u32, f32) {
    let i = levels.partition_point(|l| l.0 < x);
    let pick = match (i.checked_sub(1).map(|j| levels[j]), levels.get(i)) {
        (Some(lo), Some(hi)) => {
            if x - lo.0 <= hi.0 - x {
                lo
            } else {
                *hi
            }
        }
        (Some(lo), None) => lo,
        (None, Some(hi)) => *hi,
        (None, None) => (0.0, 0),
    };
    (pick.1, pick.0)
}

/// The GPTQ sweep over one tile of rows.
fn sweep_tile(
    f: &NativeFormat,
    rows: &[f32],
    ncols: usize,
    fac: &Factor,
    dead: &[bool],
    out: &mut [u8],
) -> Result<(), EncodeError> {
    let (g, gb, bits) = (f.group, f.group_bytes(), f.code_bits());
    let header = gb - g * bits / 8;
    let n_rows = rows.len() / ncols;
    let row_bytes = ncols / g * gb;
    let mut work = working_copy(rows, ncols, dead);
    let mut levels: Vec<Vec<(f32, u32)>> = vec![Vec::new(); n_rows];
    let mut codes = vec![0u32; n_rows * g];
    for j in 0..ncols {
        let (grp, pos) = (j / g, j % g);
        if pos == 0 {
            for r in 0..n_rows {
                let x = &work[r * ncols + j..r * ncols + j + g];
                let o = &mut out[r * row_bytes + grp * gb..r * row_bytes + (grp + 1) * gb];
                f.encode_row(x, Some(&fac.diag[j..j + g]), Fit::Search, o)?;
                group_levels(f, o, &mut levels[r]);
            }
        }
        let u_row = &fac.u[j * ncols + j..(j + 1) * ncols];
        let inv_diag = 1.0 / u_row[0];
        for r in 0..n_rows {
            let row = &mut work[r * ncols + j..(r + 1) * ncols];
            let (c, q) = nearest(&levels[r], row[0]);
            codes[r * g + pos] = c;
            compensate(row, q, u_row, inv_diag);
        }
        if pos == g - 1 {
            for r in 0..n_rows {
                let o = &mut out[r * row_bytes + grp * gb + header..r * row_bytes + (grp + 1) * gb];
                o.fill(0);
                for (k, &c) in codes[r * g..(r + 1) * g].iter().enumerate() {
                    write_bits(o, k * bits, bits, c);
                }
            }
        }
    }
    Ok(())
}
