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

use super::panels::{lazy_sweep, panel_width};
use super::{prepare, working_copy, GptqOptions, ROW_TILE};
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
    let (fac, dead) = prepare(w, ncols, h, opts)?;
    let rows = w.len() / ncols;
    let (gb, bits) = (f.group_bytes(), f.code_bits());
    let header = gb - g * bits / 8;
    let row_bytes = ncols / g * gb;
    let mut out = vec![0u8; rows * row_bytes];
    let mut work = working_copy(w, ncols, &dead);
    // Per tile: each row's levels for its current group, and the group's codes.
    let mut tiles: Vec<(Vec<Levels>, Vec<u32>)> = (0..rows)
        .step_by(ROW_TILE)
        .map(|r0| {
            let n = ROW_TILE.min(rows - r0);
            (vec![Vec::new(); n], vec![0u32; n * g])
        })
        .collect();
    lazy_sweep(&mut work, ncols, &fac, panel_width(g), &mut out, row_bytes, &mut tiles, |(levels, codes), p| {
        for j in p.p0..p.p1 {
            let (grp, pos) = (j / g, j % g);
            if pos == 0 {
                for (r, lv) in levels.iter_mut().enumerate() {
                    let x = &p.work[r * ncols + j..r * ncols + j + g];
                    let o = &mut p.out[r * row_bytes + grp * gb..r * row_bytes + (grp + 1) * gb];
                    f.encode_row(x, Some(&fac.diag[j..j + g]), Fit::Search, o)?;
                    group_levels(&f, o, lv);
                }
            }
            for (r, lv) in levels.iter().enumerate() {
                let (c, q) = nearest(lv, p.at(r, j));
                codes[r * g + pos] = c;
                p.settle(r, j, q, &fac);
            }
            if pos == g - 1 {
                for r in 0..p.rows() {
                    let o = &mut p.out[r * row_bytes + grp * gb + header..r * row_bytes + (grp + 1) * gb];
                    o.fill(0);
                    for (k, &c) in codes[r * g..(r + 1) * g].iter().enumerate() {
                        write_bits(o, k * bits, bits, c);
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// A group's representable values, sorted, with their codes.
type Levels = Vec<(f32, u32)>;

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
