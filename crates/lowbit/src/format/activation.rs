//! Activation quantization as llama.cpp's CPU backend applies it: before a dot product
//! with quantized weights, each activation row is quantized to the weight type's
//! `vec_dot_type` (Q8_0, Q8_1 or Q8_K; F16 for F16 weights). lowbit's forward pass can
//! reproduce this ("llama.cpp numerics") so its perplexities match `llama-perplexity` on
//! the same file; by default lowbit computes in exact f32.

use super::GgmlType;

/// The activation type llama.cpp pairs with weights of type `w` (`None`: plain f32); from
/// the type's table entry.
pub fn vec_dot_type(w: GgmlType) -> Option<GgmlType> {
    w.facts().vec_dot
}

/// Replaces each value of `row` by its value after quantizing to `ty` and back, as
/// ggml's x86 CPU backend quantizes activations (`quantize_row_q8_0/q8_1` in
/// `arch/x86/quants.c`: `id = 127/amax`, half to even; `q8_K`: the reference, whose
/// `nearest_int` rounds half to even too), when the row length allows it.
pub fn fake_quantize_row(row: &mut [f32], ty: GgmlType) {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q8_1 if row.len().is_multiple_of(32) => {
            for b in row.chunks_exact_mut(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let dh = half::f16::from_f32(d).to_f32();
                for v in b.iter_mut() {
                    *v = (*v * id).round_ties_even() * dh;
                }
            }
        }
        GgmlType::Q8_K if row.len().is_multiple_of(256) => {
            for b in row.chunks_exact_mut(256) {
                let max = b.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                if max == 0.0 {
                    b.iter_mut().for_each(|v| *v = 0.0);
                    continue;
                }
                let iscale = -127.0 / max;
                let d = 1.0 / iscale;
                for v in b.iter_mut() {
                    let q = ((iscale * *v).round_ties_even() as i32).min(127);
                    *v = q as f32 * d;
                }
            }
        }
        GgmlType::F16 => row.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        GgmlType::BF16 => row.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let mut row: Vec<f32> = (0..256).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let orig = row.clone();
        fake_quantize_row(&mut row, GgmlType::Q8_K);
        let step = 3.0 / 127.0;
        for (a, b) in row.iter().zip(&orig) {
            assert!((a - b).abs() <= 0.5 * step + 1e-6);
        }
        let mut row = orig.clone();
        fake_quantize_row(&mut row, GgmlType::Q8_0);
        for (blk, oblk) in row.chunks(32).zip(orig.chunks(32)) {
            let amax = oblk.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Half a step of rounding, plus the f16 rounding of the scale (relative 2^-11)
            // magnified by codes of up to 127.
            let step = amax / 127.0;
            for (a, b) in blk.iter().zip(oblk) {
                assert!((a - b).abs() <= (0.5 + 127.0 / 2048.0) * step + 1e-6);
            }
        }
    }
}
