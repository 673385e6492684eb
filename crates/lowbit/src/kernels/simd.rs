//! The few vector operations the row loops are made of, once per instruction set. Each
//! level computes exactly the same numbers (integer sums are exact and small enough to
//! convert to f32 exactly; float lanes are multiplied and added separately, never fused),
//! so results do not depend on the CPU — `kernels::tests` checks it bit for bit.
//!
//! Lane layout, shared by every level: 16 lanes; for 32 consecutive i16 values, lane `l`
//! takes values `2l` and `2l + 1` (`vpmaddwd`'s pairs); for 16 f32 values, lane `l` takes
//! value `l`.

#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The row loops' vector operations.
pub trait Simd {
    /// `lo[j] = table[qs[j] & 15]`, `hi[j] = table[qs[j] >> 4]` for 16 bytes (a 4-bit
    /// non-linear type's lookup: IQ4_NL/IQ4_XS levels, MXFP4 values).
    fn lut16(table: &[i8; 16], qs: &[u8], lo: &mut [i16], hi: &mut [i16]);
    /// `o[j] = ±point.byte(j) · sc` for j < 8, negative where bit j of `signs` is set (a
    /// lattice i-quant's grid point with its signs).
    fn grid8(point: u64, signs: u8, sc: i16, o: &mut [i16]);
    /// `acc[l] += (Σ over the pairs of lane l of w·q) · s`, over 32·n values.
    fn madd_scale(acc: &mut [f32; 16], w: &[i16], q: &[i16], s: f32);
    /// `acc[l] += (Σ over lane l of w·x) · s`, over 16·n values.
    fn fma_scale(acc: &mut [f32; 16], w: &[i16], x: &[f32], s: f32);
    /// `acc[l] += a[l]·b[l]` for 16 f32 values (multiply, then add).
    fn mul_add16(acc: &mut [f32; 16], a: &[f32], b: &[f32]);
}

/// Plain Rust (the build's baseline instruction set).
pub struct Scalar;

impl Simd for Scalar {
    #[inline(always)]
    fn grid8(point: u64, signs: u8, sc: i16, o: &mut [i16]) {
        let bytes = point.to_le_bytes();
        let o = &mut o[..8];
        for j in 0..8 {
            let neg = ((signs >> j) & 1) as i16;
            let g = bytes[j] as i16 * sc;
            o[j] = (g ^ -neg) + neg;
        }
    }

    #[inline(always)]
    fn lut16(table: &[i8; 16], qs: &[u8], lo: &mut [i16], hi: &mut [i16]) {
        for j in 0..16 {
            lo[j] = table[(qs[j] & 15) as usize] as i16;
            hi[j] = table[(qs[j] >> 4) as usize] as i16;
        }
    }

    #[inline(always)]
    fn madd_scale(acc: &mut [f32; 16], w: &[i16], q: &[i16], s: f32) {
        let mut p = [0i32; 16];
        for (wc, qc) in w.chunks_exact(32).zip(q.chunks_exact(32)) {
            for l in 0..16 {
                p[l] += wc[2 * l] as i32 * qc[2 * l] as i32 + wc[2 * l + 1] as i32 * qc[2 * l + 1] as i32;
            }
        }
        for l in 0..16 {
            acc[l] += p[l] as f32 * s;
        }
    }

    #[inline(always)]
    fn fma_scale(acc: &mut [f32; 16], w: &[i16], x: &[f32], s: f32) {
        let mut p = [0f32; 16];
        for (wc, xc) in w.chunks_exact(16).zip(x.chunks_exact(16)) {
            for l in 0..16 {
                p[l] += wc[l] as f32 * xc[l];
            }
        }
        for l in 0..16 {
            acc[l] += p[l] * s;
        }
    }

    #[inline(always)]
    fn mul_add16(acc: &mut [f32; 16], a: &[f32], b: &[f32]) {
        let (a, b) = (&a[..16], &b[..16]);
        for l in 0..16 {
            acc[l] += a[l] * b[l];
        }
    }
}

/// [`Simd::lut16`] with `pshufb` (AVX2 and AVX-512 alike: one 128-bit lookup).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lut16_pshufb(table: &[i8; 16], qs: &[u8], lo: &mut [i16], hi: &mut [i16]) {
    assert!(qs.len() >= 16 && lo.len() >= 16 && hi.len() >= 16);
    // SAFETY: called only from the AVX2 and AVX-512 impls, which run only where
    // `Level::supported` found AVX2 (which implies SSSE3); loads 16 bytes of `table` and
    // `qs`, stores 16 i16 into `lo` and `hi` (lengths checked above).
    unsafe {
        let t = _mm_loadu_si128(table.as_ptr().cast());
        let q = _mm_loadu_si128(qs.as_ptr().cast());
        let m = _mm_set1_epi8(15);
        let l = _mm_shuffle_epi8(t, _mm_and_si128(q, m));
        let h = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(q, 4), m));
        _mm256_storeu_si256(lo.as_mut_ptr().cast(), _mm256_cvtepi8_epi16(l));
        _mm256_storeu_si256(hi.as_mut_ptr().cast(), _mm256_cvtepi8_epi16(h));
    }
}

/// AVX-512 (F, BW): one 512-bit register holds the 16 lanes.
#[cfg(target_arch = "x86_64")]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    #[inline(always)]
    fn grid8(point: u64, signs: u8, sc: i16, o: &mut [i16]) {
        assert!(o.len() >= 8);
        // SAFETY: runs only where `Level::supported` found AVX-512 F/BW/VL; stores 8 i16
        // into `o` (length checked above).
        unsafe {
            let v = _mm_mullo_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(point as i64)), _mm_set1_epi16(sc));
            let r = _mm_mask_sub_epi16(v, signs, _mm_setzero_si128(), v);
            _mm_storeu_si128(o.as_mut_ptr().cast(), r);
        }
    }

    #[inline(always)]
    fn lut16(table: &[i8; 16], qs: &[u8], lo: &mut [i16], hi: &mut [i16]) {
        lut16_pshufb(table, qs, lo, hi)
    }

    #[inline(always)]
    fn madd_scale(acc: &mut [f32; 16], w: &[i16], q: &[i16], s: f32) {
        assert!(w.len() == q.len() && w.len().is_multiple_of(32));
        // SAFETY: only called from the AVX-512 variants of the row loops, which run only
        // where `Level::supported` found avx512f and avx512bw; every load reads 32 i16
        // inside `w` or `q` (length checked above), and `acc` is 16 f32.
        unsafe {
            let mut p = _mm512_setzero_si512();
            for i in (0..w.len()).step_by(32) {
                let a = _mm512_loadu_si512(w.as_ptr().add(i).cast());
                let b = _mm512_loadu_si512(q.as_ptr().add(i).cast());
                p = _mm512_add_epi32(p, _mm512_madd_epi16(a, b));
            }
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(s));
            let a = _mm512_loadu_ps(acc.as_ptr());
            _mm512_storeu_ps(acc.as_mut_ptr(), _mm512_add_ps(a, f));
        }
    }

    #[inline(always)]
    fn fma_scale(acc: &mut [f32; 16], w: &[i16], x: &[f32], s: f32) {
        assert!(w.len() == x.len() && w.len().is_multiple_of(16));
        // SAFETY: as in `madd_scale`; every load reads 16 values inside `w` or `x`.
        unsafe {
            let mut p = _mm512_setzero_ps();
            for i in (0..w.len()).step_by(16) {
                let wi = _mm512_cvtepi16_epi32(_mm256_loadu_si256(w.as_ptr().add(i).cast()));
                let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                p = _mm512_add_ps(p, _mm512_mul_ps(_mm512_cvtepi32_ps(wi), xv));
            }
            let f = _mm512_mul_ps(p, _mm512_set1_ps(s));
            let a = _mm512_loadu_ps(acc.as_ptr());
            _mm512_storeu_ps(acc.as_mut_ptr(), _mm512_add_ps(a, f));
        }
    }

    #[inline(always)]
    fn mul_add16(acc: &mut [f32; 16], a: &[f32], b: &[f32]) {
        assert!(a.len() >= 16 && b.len() >= 16);
        // SAFETY: AVX-512 F is present (as in `madd_scale`); reads 16 f32 of `a` and `b`
        // (lengths checked above), reads and writes the 16 of `acc`.
        unsafe {
            let p = _mm512_mul_ps(_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(b.as_ptr()));
            _mm512_storeu_ps(acc.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(acc.as_ptr()), p));
        }
    }
}

/// AVX2: two 256-bit registers hold the 16 lanes.
#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    fn grid8(point: u64, signs: u8, sc: i16, o: &mut [i16]) {
        assert!(o.len() >= 8);
        // SAFETY: runs only where `Level::supported` found AVX2 (SSE4.1 included); stores
        // 8 i16 into `o` (length checked above).
        unsafe {
            let v = _mm_mullo_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(point as i64)), _mm_set1_epi16(sc));
            let bits = _mm_set_epi16(128, 64, 32, 16, 8, 4, 2, 1);
            let m = _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(signs as i16), bits), bits);
            let r = _mm_sub_epi16(_mm_xor_si128(v, m), m);
            _mm_storeu_si128(o.as_mut_ptr().cast(), r);
        }
    }

    #[inline(always)]
    fn lut16(table: &[i8; 16], qs: &[u8], lo: &mut [i16], hi: &mut [i16]) {
        lut16_pshufb(table, qs, lo, hi)
    }

    #[inline(always)]
    fn madd_scale(acc: &mut [f32; 16], w: &[i16], q: &[i16], s: f32) {
        assert!(w.len() == q.len() && w.len().is_multiple_of(32));
        // SAFETY: only called from the AVX2 variants of the row loops, which run only
        // where `Level::supported` found avx2; every load reads 16 i16 inside `w` or `q`
        // (length checked above), and `acc` is 16 f32.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for i in (0..w.len()).step_by(32) {
                let a0 = _mm256_loadu_si256(w.as_ptr().add(i).cast());
                let b0 = _mm256_loadu_si256(q.as_ptr().add(i).cast());
                let a1 = _mm256_loadu_si256(w.as_ptr().add(i + 16).cast());
                let b1 = _mm256_loadu_si256(q.as_ptr().add(i + 16).cast());
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a0, b0));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(a1, b1));
            }
            let sv = _mm256_set1_ps(s);
            let f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), sv);
            let f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), sv);
            _mm256_storeu_ps(acc.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr()), f0));
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr().add(8)), f1));
        }
    }

    #[inline(always)]
    fn fma_scale(acc: &mut [f32; 16], w: &[i16], x: &[f32], s: f32) {
        assert!(w.len() == x.len() && w.len().is_multiple_of(16));
        // SAFETY: as in `madd_scale`; every load reads 8 values inside `w` or `x`.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for i in (0..w.len()).step_by(16) {
                let w0 = _mm256_cvtepi16_epi32(_mm_loadu_si128(w.as_ptr().add(i).cast()));
                let w1 = _mm256_cvtepi16_epi32(_mm_loadu_si128(w.as_ptr().add(i + 8).cast()));
                let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
                let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_cvtepi32_ps(w0), x0));
                hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_cvtepi32_ps(w1), x1));
            }
            let sv = _mm256_set1_ps(s);
            let (f0, f1) = (_mm256_mul_ps(lo, sv), _mm256_mul_ps(hi, sv));
            _mm256_storeu_ps(acc.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr()), f0));
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr().add(8)), f1));
        }
    }

    #[inline(always)]
    fn mul_add16(acc: &mut [f32; 16], a: &[f32], b: &[f32]) {
        assert!(a.len() >= 16 && b.len() >= 16);
        // SAFETY: AVX2 is present (as in `madd_scale`); reads 16 f32 of `a` and `b`
        // (lengths checked above), reads and writes the 16 of `acc`.
        unsafe {
            for h in [0, 8] {
                let p = _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(h)), _mm256_loadu_ps(b.as_ptr().add(h)));
                let r = _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr().add(h)), p);
                _mm256_storeu_ps(acc.as_mut_ptr().add(h), r);
            }
        }
    }
}
