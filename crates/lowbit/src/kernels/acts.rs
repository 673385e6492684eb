//! Activations prepared for the kernels, once per token row: quantized to the integer
//! blocks llama.cpp's CPU backend uses (`quantize_row_q8_0/q8_1/q8_K`, the same
//! arithmetic as [`crate::format::activation::fake_quantize_row`]), or kept in f32 with
//! the per-16 sums the minimum terms need (exact numerics).

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
                for b in x.chunks_exact(32) {
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let mut sum = 0i32;
                    for &v in b {
                        let q = (v * id).round() as i16;
                        sum += q as i32;
                        self.q.push(q);
                    }
                    self.d.push(half::f16::from_f32(d).to_f32());
                    if ty == GgmlType::Q8_1 {
                        self.s.push(half::f16::from_f32(sum as f32 * d).to_f32());
                    }
                }
            }
            GgmlType::Q8_K => {
                for b in x.chunks_exact(256) {
                    let max = b.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    if max == 0.0 {
                        self.q.extend(std::iter::repeat_n(0, 256));
                        self.bsums.extend(std::iter::repeat_n(0, 16));
                        self.d.push(0.0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    for g in b.chunks_exact(16) {
                        let mut sum = 0i32;
                        for &v in g {
                            let q = ((iscale * v).round() as i32).min(127) as i16;
                            sum += q as i32;
                            self.q.push(q);
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
