//! The forward pass's element-wise functions — softmax over attention scores and the
//! gated activations of the feed-forward (SwiGLU, GeGLU) — vectorised.
//!
//! Why: with the matrix products on the integer tile path, libm's scalar `expf`/`tanhf`
//! and the scalar softmax were a third of smollm2's prompt processing (`perf`, pp512).
//! Here `exp` is written in plain f32 arithmetic (Cephes' `expf`: Cody–Waite reduction,
//! degree-6 polynomial, the power of two built from the exponent bits; ≤ 2 ulp, as
//! ggml's `ggml_v_expf`), so the compiler keeps 16 lanes of it in one register, and each
//! function is compiled for AVX-512, AVX2 and the baseline and picked at run time. No
//! fused multiply-adds and sums in 16 fixed lanes: every level gives the same bits.

use super::isa::Level;

/// Defines `pub fn $name(args)` whose body is compiled for AVX-512, AVX2 and the
/// baseline, running the variant [`Level::detected`] names.
macro_rules! per_level {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            fn v4($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn v3($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match Level::detected() {
                // SAFETY: `Level::detected` reports AVX-512 only where the CPU has every
                // feature `v4` enables (is_x86_feature_detected).
                Level::Avx512 => return unsafe { v4($($arg),*) },
                // SAFETY: as above, for AVX2, FMA and F16C.
                Level::Avx2 => return unsafe { v3($($arg),*) },
                Level::Portable => {}
            }
            body($($arg),*)
        }
    };
}

/// `e^x` (Cephes' `expf`): within 2 ulp on [−87, 88]; 0 below −87.3, +∞ above 88,
/// NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let z = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = z - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // z's low mantissa bits hold 2²² + n.
    let i = z.to_bits() as i32 - MAGIC.to_bits() as i32;
    let v = y * f32::from_bits(((i + 127) << 23) as u32);
    if x < -87.33 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        v
    }
}

/// Sums 16 lanes in a fixed tree order.
#[inline(always)]
fn hsum16(l: &[f32; 16]) -> f32 {
    super::rows::hsum16(l)
}

/// The largest value of `x`, in 16 lanes (inlined into each level's body, so it is
/// vectorised there).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let n16 = x.len() / 16 * 16;
    for c in x[..n16].chunks_exact(16) {
        for l in 0..16 {
            m[l] = m[l].max(c[l]);
        }
    }
    x[n16..].iter().fold(m.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)), |a, &v| a.max(v))
}

per_level! {
    /// `x ← softmax(x)`, the sum in 16 fixed lanes.
    fn softmax(x: &mut [f32]) {
        let n16 = x.len() / 16 * 16;
        let max = row_max(x);
        let mut s = [0f32; 16];
        for c in x[..n16].chunks_exact_mut(16) {
            for l in 0..16 {
                c[l] = exp(c[l] - max);
                s[l] += c[l];
            }
        }
        let mut sum = hsum16(&s);
        for v in x[n16..].iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }
}

/// SiLU(x) = x·σ(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU, tanh approximation (Gemma, GPT-2), as `x·σ(2y)` = `0.5·x·(1 + tanh y)`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x));
    x / (1.0 + exp(-2.0 * y))
}

per_level! {
    /// SwiGLU: `g ← SiLU(g)·u`.
    fn silu_gate(g: &mut [f32], u: &[f32]) {
        for (g, u) in g.iter_mut().zip(u) {
            *g = silu(*g) * u;
        }
    }
}

per_level! {
    /// GeGLU (tanh): `g ← GELU(g)·u`.
    fn gelu_gate(g: &mut [f32], u: &[f32]) {
        for (g, u) in g.iter_mut().zip(u) {
            *g = gelu_tanh(*g) * u;
        }
    }
}

/// Sums 16 f64 lanes in a fixed tree order.
#[inline(always)]
fn hsum16_f64(l: &[f64; 16]) -> f64 {
    let mut v = *l;
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            v[i] += v[i + w];
        }
        w /= 2;
    }
    v[0]
}

per_level! {
    /// `x ← log-softmax(x)` = `x − (max + ln Σ e^(x − max))`: the exponentials in f32,
    /// their sum in 16 f64 lanes. The sensitivity passes' version of what evaluation does
    /// in f64 throughout (`eval::log_softmax`: libm's f64 `exp` there was 9 % of smollm2's
    /// sensitivity profile); each log-probability is within a few 1e-7 of it.
    fn log_softmax(x: &mut [f32]) -> f32 {
        let n16 = x.len() / 16 * 16;
        let max = row_max(x);
        let mut s = [0f64; 16];
        for c in x[..n16].chunks_exact(16) {
            for l in 0..16 {
                s[l] += exp(c[l] - max) as f64;
            }
        }
        let sum = x[n16..].iter().fold(hsum16_f64(&s), |a, &v| a + exp(v - max) as f64);
        let lse = (max as f64 + sum.ln()) as f32;
        x.iter_mut().for_each(|v| *v -= lse);
        lse
    }
}

per_level! {
    /// `(Σ p·(z − z'), Σ e^(z' − shift))` over one row: the two sums over a vocabulary
    /// subset that the sensitivity passes' KL divergence needs ([`crate::allocate::sensitivity`]),
    /// exponentials in f32, differences and sums in 16 f64 lanes.
    fn head_terms(p: &[f32], z: &[f32], zq: &[f32], shift: f32) -> (f64, f64) {
        let n16 = p.len() / 16 * 16;
        let (mut a, mut b) = ([0f64; 16], [0f64; 16]);
        for ((pc, zc), qc) in p[..n16].chunks_exact(16).zip(z[..n16].chunks_exact(16)).zip(zq[..n16].chunks_exact(16)) {
            for l in 0..16 {
                a[l] += pc[l] as f64 * (zc[l] as f64 - qc[l] as f64);
                b[l] += exp(qc[l] - shift) as f64;
            }
        }
        let (mut a, mut b) = (hsum16_f64(&a), hsum16_f64(&b));
        for i in n16..p.len() {
            a += p[i] as f64 * (z[i] as f64 - zq[i] as f64);
            b += exp(zq[i] - shift) as f64;
        }
        (a, b)
    }
}

per_level! {
    /// `Σ e^p·(p − q)`: the KL divergence of the distribution with log-probabilities `q`
    /// from the one with `p` (nats), the exponentials in f32, differences and sums in 16
    /// f64 lanes.
    fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
        let n16 = p.len().min(q.len()) / 16 * 16;
        let mut s = [0f64; 16];
        for (a, b) in p[..n16].chunks_exact(16).zip(q[..n16].chunks_exact(16)) {
            for l in 0..16 {
                s[l] += exp(a[l]) as f64 * (a[l] as f64 - b[l] as f64);
            }
        }
        p[n16..].iter().zip(&q[n16..]).fold(hsum16_f64(&s), |acc, (&a, &b)| acc + exp(a) as f64 * (a as f64 - b as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32 - b.to_bits() as i32).unsigned_abs()
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), ((x as f64).exp()) as f32);
            worst = worst.max(ulps(got, want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn log_softmax_and_kl_divergence_match_f64() {
        let x: Vec<f32> = (0..70_001).map(|i| ((i as f32) * 0.731).sin() * 14.0 - (i % 7) as f32).collect();
        for n in [1, 15, 16, 17, 1000, 70_001] {
            let mut p = x[..n].to_vec();
            let lse_got = log_softmax(&mut p);
            let max = x[..n].iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let lse = max + x[..n].iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            assert!((lse_got as f64 - lse).abs() <= 4e-6 * (1.0 + lse.abs()), "n={n}: {lse_got} vs {lse}");
            for (g, &v) in p.iter().zip(&x[..n]) {
                // f32 rounding of the result (|v − lse| ≤ ~40: 2⁻¹⁸) and of lse, the sum's
                // exponentials within 2 ulp each.
                let want = v as f64 - lse;
                assert!((*g as f64 - want).abs() <= 8e-6 * (1.0 + want.abs()), "n={n}: {g} vs {want}");
            }
            // q: p shifted by a small perturbation, renormalised.
            let mut q: Vec<f32> = p.iter().enumerate().map(|(i, &v)| v + 0.01 * ((i as f32) * 1.3).cos()).collect();
            log_softmax(&mut q);
            let terms: Vec<f64> = p.iter().zip(&q).map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64)).collect();
            let (want, magnitude) = (terms.iter().sum::<f64>(), terms.iter().map(|t| t.abs()).sum::<f64>());
            let got = kl_divergence(&p, &q);
            // Each exponential within 2 ulp (2.4e-7), of terms of both signs.
            assert!((got - want).abs() <= 2.5e-7 * magnitude + 1e-15, "n={n}: {got} vs {want}");
            assert_eq!(kl_divergence(&p, &p), 0.0);
        }
    }

    #[test]
    fn softmax_and_gates_match_the_definitions() {
        let x: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.731).sin() * 12.0).collect();
        for n in [1, 15, 16, 17, 1000] {
            let mut got = x[..n].to_vec();
            softmax(&mut got);
            let max = x[..n].iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let sum: f64 = x[..n].iter().map(|&v| (v as f64 - max).exp()).sum();
            for (g, &v) in got.iter().zip(&x[..n]) {
                let want = (v as f64 - max).exp() / sum;
                // f32 rounding of v − max is |v − max|·2⁻²⁴ of the exponent; exp's 2 ulp,
                // the sum and the division a few more.
                let tol = want * ((v as f64 - max).abs() + 8.0) * 6e-8;
                assert!((*g as f64 - want).abs() <= tol + 1e-30, "n={n}: {g} vs {want}");
            }
        }
        let u: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.377).cos()).collect();
        let (mut s, mut g) = (x.clone(), x.clone());
        silu_gate(&mut s, &u);
        gelu_gate(&mut g, &u);
        for i in 0..x.len() {
            let (v, w) = (x[i] as f64, u[i] as f64);
            let silu = v / (1.0 + (-v).exp()) * w;
            let gelu = 0.5 * v * (1.0 + (0.797_884_560_802_865_4 * (v + 0.044715 * v * v * v)).tanh()) * w;
            assert!((s[i] as f64 - silu).abs() <= 1e-6 * (v.abs() * w.abs()) + 1e-30, "silu {v}: {} vs {silu}", s[i]);
            assert!((g[i] as f64 - gelu).abs() <= 1e-6 * (v.abs() * w.abs()) + 1e-30, "gelu {v}: {} vs {gelu}", g[i]);
        }
    }
}
