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
        GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K if row.len().is_multiple_of(ty.block_size()) => {
            // The integer kernels' own quantization, read back: one place for the
            // arithmetic.
            let mut q = crate::kernels::acts::QuantRow::default();
            q.quantize(row, ty);
            let bs = ty.block_size();
            for ((b, qb), &d) in row.chunks_exact_mut(bs).zip(q.q.chunks_exact(bs)).zip(&q.d) {
                b.iter_mut().zip(qb).for_each(|(v, &c)| *v = c as f32 * d);
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
