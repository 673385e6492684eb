//! The row loops: a run of stored weight rows times a few activation rows (generation,
//! short batches). Each output is one row's dot product with one activation row, computed
//! the same way whatever the thread split — so logits do not depend on the thread count.
//!
//! Integer kernels (llama.cpp numerics) sum `w·q` exactly in i32 per block and scale once
//! per block, as ggml's `vec_dot_*` do; exact kernels sum `w·x` in 16 fixed f32 lanes per
//! block. Output layout: `out[r·t + i]` for stored row `r` and activation row `i`.

use super::acts::{ExactRow, QuantRow};
use super::blocks::{Small, SmallBlock, Super, SuperBlock};
use super::isa::multiversion;
use super::simd::Simd;
use super::vq_bytes::ByValue;

/// Most activation rows the row loops take at once (longer batches go through tiles).
pub const MAX_ROWS: usize = 8;

/// Asks for the stored row after `row` (at `row_bytes` past it) to be fetched into cache
/// while this one is computed: generation streams every weight once, and the hardware
/// prefetcher alone leaves the loads waiting (measured: `cargo bench --bench kernels`
/// with ROWS=49152 COLS=576).
#[inline(always)]
pub(crate) fn prefetch_next(rows: &[u8], start: usize, row_bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let next = start + row_bytes;
        let end = (next + row_bytes).min(rows.len());
        let mut i = next;
        while i < end {
            // SAFETY: `i < rows.len()`, so the address is inside `rows`; a prefetch has
            // no architectural effect besides the cache.
            unsafe {
                std::arch::x86_64::_mm_prefetch(rows.as_ptr().add(i).cast(), std::arch::x86_64::_MM_HINT_T0);
            }
            i += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, start, row_bytes);
}

/// The two-rows-at-a-time driver of the byte kernels ([`super::nibbles::rows_q8`],
/// [`super::bytes32::rows_q8`]): stored rows `rows` (`row_bytes` each) × the `t` Q8_0
/// activation rows rearranged in `bv` ([`ByValue::q8`], vectors of one value), into
/// `out[r·t + i]`. `pair(starts, xq, xs, dl)` returns the dot products of the rows starting
/// at `starts` with one activation row's codes, lane sums and lane scales. Two stored rows
/// per call (the second repeats the first past the end) share every activation load; the
/// next pair is prefetched.
pub(crate) fn pairs_q8(
    rows: &[u8],
    row_bytes: usize,
    t: usize,
    bv: &ByValue,
    out: &mut [f32],
    pair: impl Fn([usize; 2], &[i8], &[i32], &[f32]) -> [f32; 2],
) {
    let ByValue::Q8 { xq, xs, dl, padded } = bv else { unreachable!("Q8_0 rows are rearranged as codes") };
    let (padded, lanes) = (*padded, *padded / 4);
    let count = rows.len() / row_bytes;
    for r in (0..count).step_by(2) {
        let r1 = (r + 1).min(count - 1);
        prefetch_next(rows, (r + 2) * row_bytes, 2 * row_bytes);
        for i in 0..t {
            let (xq, xs, dl) = (&xq[i * padded..(i + 1) * padded], &xs[i * lanes..(i + 1) * lanes], &dl[i * lanes..]);
            let sums = pair([r * row_bytes, r1 * row_bytes], xq, xs, dl);
            out[r * t + i] = sums[0];
            out[r1 * t + i] = sums[1];
        }
    }
}

/// Sums 16 lanes in a fixed tree order.
#[inline(always)]
pub(crate) fn hsum16(l: &[f32; 16]) -> f32 {
    let mut a = [0f32; 8];
    for i in 0..8 {
        a[i] = l[i] + l[i + 8];
    }
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (b[0] + b[2]) + (b[1] + b[3])
}

/// `Σ a[j]·b[j]`: 64 values at a time in four 16-lane accumulators (four independent
/// chains, so the adds do not wait on each other; one chain held decoded-row generation
/// at ~4 values per cycle), then the remaining 16s in the first, the tail in order.
#[inline(always)]
pub(crate) fn dot_f32<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    let n64 = a.len() / 64 * 64;
    let n16 = a.len() / 16 * 16;
    let (mut l0, mut l1, mut l2, mut l3) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    for (ac, bc) in a[..n64].chunks_exact(64).zip(b[..n64].chunks_exact(64)) {
        S::mul_add16(&mut l0, &ac[..16], &bc[..16]);
        S::mul_add16(&mut l1, &ac[16..32], &bc[16..32]);
        S::mul_add16(&mut l2, &ac[32..48], &bc[32..48]);
        S::mul_add16(&mut l3, &ac[48..], &bc[48..]);
    }
    for (ac, bc) in a[n64..n16].chunks_exact(16).zip(b[n64..n16].chunks_exact(16)) {
        S::mul_add16(&mut l0, ac, bc);
    }
    let mut sum = [0f32; 16];
    for l in 0..16 {
        sum[l] = (l0[l] + l1[l]) + (l2[l] + l3[l]);
    }
    let mut s = hsum16(&sum);
    for (x, y) in a[n16..].iter().zip(&b[n16..]) {
        s += x * y;
    }
    s
}

multiversion! {
    /// Super-block rows × Q8_K activation rows.
    fn super_q8k<K: SuperBlock>(rows: &[u8], row_bytes: usize, acts: &[QuantRow], out: &mut [f32]) {
        let t = acts.len();
        let mut s = Super::default();
        if let [a] = acts {
            // One activation row (generation): the same arithmetic, accumulators in
            // registers.
            for (r, (row, o)) in rows.chunks_exact(row_bytes).zip(out.iter_mut()).enumerate() {
                prefetch_next(rows, r * row_bytes, row_bytes);
                let mut acc = [0f32; 16];
                let mut mn = 0f32;
                for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                    K::unpack::<S>(b, &mut s);
                    S::madd_scale(&mut acc, &s.w, &a.q[256 * ib..256 * ib + 256], a.d[ib] * s.d);
                    if K::HAS_MIN {
                        let mut summ = 0i32;
                        for (m, b) in s.mins.iter().zip(&a.bsums[16 * ib..16 * ib + 16]) {
                            summ += *m as i32 * b;
                        }
                        mn += a.d[ib] * s.dmin * summ as f32;
                    }
                }
                *o = hsum16(&acc) - mn;
            }
            return;
        }
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            let mut acc = [[0f32; 16]; MAX_ROWS];
            let mut mins = [0f32; MAX_ROWS];
            for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(b, &mut s);
                for ((a, acc), mn) in acts.iter().zip(acc.iter_mut()).zip(mins.iter_mut()) {
                    S::madd_scale(acc, &s.w, &a.q[256 * ib..256 * ib + 256], a.d[ib] * s.d);
                    if K::HAS_MIN {
                        let mut summ = 0i32;
                        for (m, b) in s.mins.iter().zip(&a.bsums[16 * ib..16 * ib + 16]) {
                            summ += *m as i32 * b;
                        }
                        *mn += a.d[ib] * s.dmin * summ as f32;
                    }
                }
            }
            for ((o, acc), mn) in o.iter_mut().zip(&acc).zip(&mins) {
                *o = hsum16(acc) - mn;
            }
        }
    }
}

multiversion! {
    /// Super-block rows × f32 activation rows.
    fn super_f32<K: SuperBlock>(rows: &[u8], row_bytes: usize, xs: &[ExactRow], out: &mut [f32]) {
        let t = xs.len();
        let mut s = Super::default();
        if let [x] = xs {
            for (r, (row, o)) in rows.chunks_exact(row_bytes).zip(out.iter_mut()).enumerate() {
                prefetch_next(rows, r * row_bytes, row_bytes);
                let mut acc = [0f32; 16];
                let mut mn = 0f32;
                for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                    K::unpack::<S>(b, &mut s);
                    S::fma_scale(&mut acc, &s.w, &x.x[256 * ib..256 * ib + 256], s.d);
                    if K::HAS_MIN {
                        let mut m = 0f32;
                        for (v, sum) in s.mins.iter().zip(&x.sum16[16 * ib..16 * ib + 16]) {
                            m += *v as f32 * sum;
                        }
                        mn += s.dmin * m;
                    }
                }
                *o = hsum16(&acc) - mn;
            }
            return;
        }
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            let mut acc = [[0f32; 16]; MAX_ROWS];
            let mut mins = [0f32; MAX_ROWS];
            for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(b, &mut s);
                for ((x, acc), mn) in xs.iter().zip(acc.iter_mut()).zip(mins.iter_mut()) {
                    S::fma_scale(acc, &s.w, &x.x[256 * ib..256 * ib + 256], s.d);
                    if K::HAS_MIN {
                        let mut m = 0f32;
                        for (mn, sum) in s.mins.iter().zip(&x.sum16[16 * ib..16 * ib + 16]) {
                            m += *mn as f32 * sum;
                        }
                        *mn += s.dmin * m;
                    }
                }
            }
            for ((o, acc), mn) in o.iter_mut().zip(&acc).zip(&mins) {
                *o = hsum16(acc) - mn;
            }
        }
    }
}

multiversion! {
    /// 32-value-block rows × Q8_0/Q8_1 activation rows.
    fn small_q8<K: SmallBlock>(rows: &[u8], row_bytes: usize, acts: &[QuantRow], out: &mut [f32]) {
        let t = acts.len();
        let mut s = Small::default();
        if let [a] = acts {
            for (r, (row, o)) in rows.chunks_exact(row_bytes).zip(out.iter_mut()).enumerate() {
                prefetch_next(rows, r * row_bytes, row_bytes);
                let mut acc = [0f32; 16];
                let mut mn = 0f32;
                for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                    K::unpack::<S>(b, &mut s);
                    S::madd_scale(&mut acc, &s.w, &a.q[32 * ib..32 * ib + 32], s.d * a.d[ib]);
                    if K::HAS_MIN {
                        mn += s.m * a.s[ib];
                    }
                }
                *o = hsum16(&acc) + mn;
            }
            return;
        }
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            let mut acc = [[0f32; 16]; MAX_ROWS];
            let mut mins = [0f32; MAX_ROWS];
            for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(b, &mut s);
                for ((a, acc), mn) in acts.iter().zip(acc.iter_mut()).zip(mins.iter_mut()) {
                    S::madd_scale(acc, &s.w, &a.q[32 * ib..32 * ib + 32], s.d * a.d[ib]);
                    if K::HAS_MIN {
                        *mn += s.m * a.s[ib];
                    }
                }
            }
            for ((o, acc), mn) in o.iter_mut().zip(&acc).zip(&mins) {
                *o = hsum16(acc) + mn;
            }
        }
    }
}

multiversion! {
    /// 32-value-block rows × f32 activation rows.
    fn small_f32<K: SmallBlock>(rows: &[u8], row_bytes: usize, xs: &[ExactRow], out: &mut [f32]) {
        let t = xs.len();
        let mut s = Small::default();
        if let [x] = xs {
            for (r, (row, o)) in rows.chunks_exact(row_bytes).zip(out.iter_mut()).enumerate() {
                prefetch_next(rows, r * row_bytes, row_bytes);
                let mut acc = [0f32; 16];
                let mut mn = 0f32;
                for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                    K::unpack::<S>(b, &mut s);
                    S::fma_scale(&mut acc, &s.w, &x.x[32 * ib..32 * ib + 32], s.d);
                    if K::HAS_MIN {
                        mn += s.m * (x.sum16[2 * ib] + x.sum16[2 * ib + 1]);
                    }
                }
                *o = hsum16(&acc) + mn;
            }
            return;
        }
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            let mut acc = [[0f32; 16]; MAX_ROWS];
            let mut mins = [0f32; MAX_ROWS];
            for (ib, b) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(b, &mut s);
                for ((x, acc), mn) in xs.iter().zip(acc.iter_mut()).zip(mins.iter_mut()) {
                    S::fma_scale(acc, &s.w, &x.x[32 * ib..32 * ib + 32], s.d);
                    if K::HAS_MIN {
                        *mn += s.m * (x.sum16[2 * ib] + x.sum16[2 * ib + 1]);
                    }
                }
            }
            for ((o, acc), mn) in o.iter_mut().zip(&acc).zip(&mins) {
                *o = hsum16(acc) + mn;
            }
        }
    }
}

multiversion! {
    /// 32-value blocks decoded to f32: `d·w + m`.
    fn small_decode<K: SmallBlock>(bytes: &[u8], out: &mut [f32]) {
        let mut s = Small::default();
        for (b, o) in bytes.chunks_exact(K::BYTES).zip(out.chunks_exact_mut(32)) {
            K::unpack::<S>(b, &mut s);
            for (v, &w) in o.iter_mut().zip(&s.w) {
                *v = s.d * w as f32 + s.m;
            }
        }
    }
}

multiversion! {
    /// Super-blocks decoded to f32: `d·w − dmin·min`.
    fn super_decode<K: SuperBlock>(bytes: &[u8], out: &mut [f32]) {
        let mut s = Super::default();
        for (b, o) in bytes.chunks_exact(K::BYTES).zip(out.chunks_exact_mut(256)) {
            K::unpack::<S>(b, &mut s);
            for (g, (og, wg)) in o.chunks_exact_mut(16).zip(s.w.chunks_exact(16)).enumerate() {
                let m = s.dmin * s.mins[g] as f32;
                for (v, &w) in og.iter_mut().zip(wg) {
                    *v = s.d * w as f32 - m;
                }
            }
        }
    }
}

multiversion! {
    /// Rows of any type × f32 activation rows: each row decoded to f32 once (by
    /// `decode`), then dotted with every activation row — the path for types without an
    /// integer form, and for llama.cpp numerics on activations already rounded.
    fn decoded_f32<D: Fn(&[u8], &mut [f32])>(
        decode: &D,
        rows: &[u8],
        row_bytes: usize,
        xs: &[ExactRow],
        out: &mut [f32],
        buf: &mut Vec<f32>,
    ) {
        let t = xs.len();
        let k = xs.first().map_or(0, |x| x.x.len());
        buf.resize(k, 0.0);
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            decode(row, buf);
            for (x, o) in xs.iter().zip(o.iter_mut()) {
                *o = dot_f32::<S>(buf, &x.x);
            }
        }
    }
}
