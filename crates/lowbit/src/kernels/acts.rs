//! Activations prepared for the kernels, once per token row: quantized to the integer
//! blocks llama.cpp's CPU backend uses on x86 (`quantize_row_q8_0/q8_1` of
//! `ggml-cpu/arch/x86/quants.c`: `id = 127/amax`, rounding half to even; `q8_K`:
//! `quantize_row_q8_K_ref`, whose `nearest_int` also rounds half to even; also what
//! [`crate::format::activation::fake_quantize_row`] reads back), or kept in f32 with the
//! per-16 sums the minimum terms need (exact numerics).

use crate::format::GgmlType;

/// One activation row quantized to Q8_0, Q8_1 (32-value blocks) or Q8_K (256-value).
#[derive(Clone, Debug, Default)]
pub struct QuantRow {
    /// Codes, widened to i16 once so the kernels' multiply-adds need no sign extension.
    pub q: Vec<i16>,
    /// Per-block scale (the f16-rounded value for Q8_0/Q8_1, f32 for Q8_K).
    pub d: Vec<f32>,
    /// Q8_1: per-block `d·Σq` rounded to f16 (ggml's `s`); empty otherwise.
    pub s: Vec<f32>,
    /// Q8_K: per-16 sums of the codes (ggml's `bsums`); empty otherwise.
    pub bsums: Vec<i32>,
}

impl QuantRow {
    /// Quantizes `x` to `ty` (Q8_0, Q8_1 or Q8_K), reusing this row's buffers. `x.len()`
    /// must be a whole number of blocks (the caller checks).
    pub fn quantize(&mut self, x: &[f32], ty: GgmlType) {
        self.q.clear();
        self.d.clear();
        self.s.clear();
        self.bsums.clear();
        match ty {
            GgmlType::Q8_0 | GgmlType::Q8_1 => {
                let nb = x.len() / 32;
                self.q.resize(x.len(), 0);
                for (b, q) in x.chunks_exact(32).zip(self.q.chunks_exact_mut(32)) {
                    let amax = abs_max(b);
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let mut sum = 0i32;
                    for (q, &v) in q.iter_mut().zip(b) {
                        *q = (v * id).round_ties_even() as i16;
                        sum += *q as i32;
                    }
                    self.d.push(half::f16::from_f32(d).to_f32());
                    if ty == GgmlType::Q8_1 {
                        self.s.push(half::f16::from_f32(sum as f32 * d).to_f32());
                    }
                }
                debug_assert_eq!(self.d.len(), nb);
            }
            GgmlType::Q8_K => {
                self.q.resize(x.len(), 0);
                for (b, q) in x.chunks_exact(256).zip(self.q.chunks_exact_mut(256)) {
                    let max = b.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    if max == 0.0 {
                        q.fill(0);
                        self.bsums.extend(std::iter::repeat_n(0, 16));
                        self.d.push(0.0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    for (g, qg) in b.chunks_exact(16).zip(q.chunks_exact_mut(16)) {
                        let mut sum = 0i32;
                        for (q, &v) in qg.iter_mut().zip(g) {
                            *q = ((iscale * v).round_ties_even() as i32).min(127) as i16;
                            sum += *q as i32;
                        }
                        self.bsums.push(sum);
                    }
                    self.d.push(1.0 / iscale);
                }
            }
            other => panic!("QuantRow::quantize: {other} is not an activation type"),
        }
    }
}

/// Largest |v| (16 lanes, then across them: the order does not change a maximum).
fn abs_max(b: &[f32]) -> f32 {
    let mut m = [0f32; 16];
    for c in b.chunks_exact(16) {
        for l in 0..16 {
            m[l] = m[l].max(c[l].abs());
        }
    }
    m.iter().fold(0f32, |a, &v| a.max(v))
}

/// One f32 activation row and its per-16 sums (for the `dmin·min` terms).
#[derive(Clone, Debug, Default)]
pub struct ExactRow {
    /// The values.
    pub x: Vec<f32>,
    /// Sums of each 16 consecutive values (in order), when `x.len()` is a multiple of 16.
    pub sum16: Vec<f32>,
}

impl ExactRow {
    /// Copies `x` and computes its sums, reusing this row's buffers.
    pub fn set(&mut self, x: &[f32]) {
        self.x.clear();
        self.x.extend_from_slice(x);
        self.sum16.clear();
        if x.len().is_multiple_of(16) {
            self.sum16.extend(x.chunks_exact(16).map(|g| g.iter().sum::<f32>()));
        }
    }
}

/// `count` rows of `cols` uniform values in [−1, 1) quantized to `ty` (Q8_0 or Q8_K),
/// for the integer kernels' tests.
#[cfg(test)]
pub(super) fn random_quant_rows(cols: usize, count: usize, ty: GgmlType, rng: &mut impl rand::Rng) -> Vec<QuantRow> {
    (0..count)
        .map(|_| {
            let x: Vec<f32> = (0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            let mut q = QuantRow::default();
            q.quantize(&x, ty);
            q
        })
        .collect()
}

/// [`random_quant_rows`] as Q8_0.
#[cfg(test)]
pub(super) fn random_q8_rows(cols: usize, count: usize, rng: &mut impl rand::Rng) -> Vec<QuantRow> {
    random_quant_rows(cols, count, GgmlType::Q8_0, rng)
}

/// A quantized row's values (`q · d` per block of `block` values: 32 for Q8_0, 256 for
/// Q8_K) in f64, what the integer kernels' tests compare against.
#[cfg(test)]
pub(super) fn quant_values(a: &QuantRow, block: usize) -> Vec<f64> {
    a.q.iter().enumerate().map(|(i, &q)| q as f64 * a.d[i / block] as f64).collect()
}

/// [`quant_values`] of a Q8_0 row.
#[cfg(test)]
pub(super) fn q8_values(a: &QuantRow) -> Vec<f64> {
    quant_values(a, 32)
}

/// `len` random bytes in blocks of `block_bytes`, each block starting with a finite f16
/// scale in [−0.05, 0.05) (random bytes there could be NaN or ∞): random blocks of a
/// type whose scale leads, for the kernels' tests.
#[cfg(test)]
pub(super) fn random_blocks(len: usize, block_bytes: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    for b in bytes.chunks_exact_mut(block_bytes) {
        b[..2].copy_from_slice(&half::f16::from_f32(rng.random::<f32>() * 0.1 - 0.05).to_le_bytes());
    }
    bytes
}

/// Asserts that a kernel's `got` for stored row `w` (decoded) and activation values `x`
/// is their f64 dot product up to f32 summation: within `1e-5·Σ|w·x| + slack + 1e-6`
/// (`slack`: a kernel's own documented rounding, 0 for exact integer paths).
#[cfg(test)]
pub(super) fn assert_dot(got: f32, w: &[f32], x: &[f64], slack: f64, what: &str) {
    let want: f64 = w.iter().zip(x).map(|(&w, &x)| w as f64 * x).sum();
    let abs: f64 = w.iter().zip(x).map(|(&w, &x)| (w as f64 * x).abs()).sum();
    assert!((got as f64 - want).abs() <= 1e-5 * abs + slack + 1e-6, "{what}: {got} vs {want}");
}
