//! The few dense f32 operations the forward passes need. Matrix products go through the
//! `gemm` crate (the engine under faer); the element-wise ops are plain loops that the
//! compiler vectorises.

use rayon::prelude::*;

/// `out[t×n] = x[t×k] · w[n×k]ᵀ` — a linear layer on a batch of `t` rows, with `w`
/// stored row-major as (out features × in features), as GGUF and PyTorch store it.
pub fn matmul_wt(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k, "matmul_wt: x is not t×k");
    assert_eq!(w.len(), n * k, "matmul_wt: w is not n×k");
    assert_eq!(out.len(), t * n, "matmul_wt: out is not t×n");
    if t == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if threads > 1 && t >= 2 * SPLIT_ROWS && t * n * k > 1 << 16 {
        // One band of rows per thread, each a single-threaded product: `gemm`'s own
        // parallelism ran these shapes at 0.7–0.95× of this (smollm2's and gemma3's
        // block products on 512 rows, 2 threads), and each element is the same sum.
        let per = t.div_ceil(threads.min(t / SPLIT_ROWS));
        out.par_chunks_mut(per * n).zip(x.par_chunks(per * k)).for_each(|(o, xb)| {
            // SAFETY: `xb` holds rows×k values and `o` rows×n (matching chunks of the
            // checked slices), `w` n×k; `o` is this task's own &mut, aliasing nothing.
            #[allow(unsafe_code)]
            unsafe {
                gemm_xwt(o.as_mut_ptr(), n, xb, xb.len() / k, k, w, n, gemm::Parallelism::None)
            };
        });
        return;
    }
    let par =
        if threads > 1 && t * n * k > 1 << 16 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the three slices were checked above to hold exactly t×k, n×k and t×n
    // elements; `out` (row stride n) is a distinct &mut, so it does not alias the inputs.
    #[allow(unsafe_code)]
    unsafe {
        gemm_xwt(out.as_mut_ptr(), n, x, t, k, w, n, par)
    };
}

/// The fewest rows per thread for which [`matmul_wt`] splits a product by rows (fewer,
/// as in generation, leave the split to `gemm`, over the output's columns).
const SPLIT_ROWS: usize = 64;

/// `dst[t×n] = x[t×k] · w[n×k]ᵀ` through `gemm`, `dst` addressed with row stride `dst_rs`
/// and column stride 1: the one call both the dense linear layer ([`matmul_wt`]) and the
/// quantized runtime's tiles (which write a column range of a wider output) make.
///
/// # Safety
/// `x` must hold at least t×k values (row stride k) and `w` at least n×k (row stride k,
/// read as its transpose: element (i, j) at w[j·k + i]); `dst` must be valid for writes of
/// element (r, c) at `dst + r·dst_rs + c` for r < t, c < n, not aliasing `x` or `w`, and no
/// other thread may access those elements during the call.
#[allow(unsafe_code, clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_xwt(
    dst: *mut f32,
    dst_rs: usize,
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    n: usize,
    par: gemm::Parallelism,
) {
    debug_assert!(x.len() >= t * k && w.len() >= n * k);
    // SAFETY: forwarded from this function's contract; the strides address exactly the
    // elements it names.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out[n×n] = xᵀx` for `t` rows of `x` (each `n` wide): the Gram matrix of a batch of
/// layer inputs, the raw material of a calibration Hessian.
///
/// Only the lower triangle is computed (in bands of [`GRAM_BAND`] rows, one product each,
/// bands in parallel) and then mirrored: half the multiply-adds of a full product, which
/// made Hessians 60 % of a calibration pass. Each element is summed over `t` in the same
/// order whatever the thread count, and the result is exactly symmetric.
pub fn gram(x: &[f32], t: usize, n: usize, out: &mut [f32]) {
    gram_lower(x, t, n, out);
    mirror_lower(out, n);
}

/// [`gram`]'s lower triangle (`out[i·n + j]` for `j ≤ i`; the rest of `out` is left
/// unspecified).
pub fn gram_lower(x: &[f32], t: usize, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * n, "gram: x is not t×n");
    assert_eq!(out.len(), n * n, "gram: out is not n×n");
    use rayon::prelude::*;
    out.par_chunks_mut(GRAM_BAND * n.max(1)).enumerate().for_each(|(b, band)| {
        gram_band(x, t, n, b * GRAM_BAND, band);
    });
}

/// Adds [`gram`]'s lower triangle, computed in f32, to the f64 running total (n×n; the
/// upper triangle is left alone): for sums of many batches, which mirror once at the end.
/// The f32 product is made one band of [`GRAM_BAND`] rows at a time, so the scratch is
/// GRAM_BAND·n floats per thread, not n² (0.8 GB for an 8B model's down projection); each
/// element is the same f32 sum [`gram_lower`] gives. The lock is held only while a band
/// is added (never across rayon work, which could otherwise deadlock callers that record
/// from inside the pool).
pub fn gram_lower_accumulate(x: &[f32], t: usize, n: usize, total: &std::sync::Mutex<Vec<f64>>) {
    assert_eq!(x.len(), t * n, "gram: x is not t×n");
    use rayon::prelude::*;
    (0..n.div_ceil(GRAM_BAND)).into_par_iter().for_each(|b| {
        let r0 = b * GRAM_BAND;
        let rows = GRAM_BAND.min(n - r0);
        GRAM_BAND_SCRATCH.with_borrow_mut(|product| {
            product.clear();
            product.resize(rows * n, 0.0);
            gram_band(x, t, n, r0, product);
            let mut total = total.lock().expect("gram total lock");
            assert_eq!(total.len(), n * n, "gram: total is not n×n");
            for (i, (a, p)) in total[r0 * n..].chunks_exact_mut(n).zip(product.chunks_exact(n)).enumerate() {
                a[..=r0 + i].iter_mut().zip(&p[..=r0 + i]).for_each(|(a, &p)| *a += p as f64);
            }
        });
    });
}

thread_local! {
    /// One band of [`gram_lower_accumulate`]'s f32 product per thread, reused (a fresh
    /// buffer per band costs page faults comparable to the band's product).
    static GRAM_BAND_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows r0.. of xᵀx (as many as `band` holds, n wide) up to and including the diagonal;
/// right of it, unspecified.
fn gram_band(x: &[f32], t: usize, n: usize, r0: usize, band: &mut [f32]) {
    let rows = band.len() / n.max(1);
    if t == 0 {
        band.fill(0.0);
        return;
    }
    // Rows r0..r0+rows of xᵀ (element (i, s) = x[s·n + r0 + i]) times columns 0..r0+rows
    // of x: everything up to and including the diagonal block.
    let lhs = StridedMat { data: x, offset: r0, row_stride: 1, col_stride: n };
    let rhs = StridedMat { data: x, offset: 0, row_stride: n, col_stride: 1 };
    matmul_strided(rows, r0 + rows, t, &lhs, &rhs, band, n);
}

/// Copies the lower triangle of the `n×n` row-major `m` onto its upper triangle.
pub fn mirror_lower<T: Copy>(m: &mut [T], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            m[i * n + j] = m[j * n + i];
        }
    }
}

/// Rows per band of [`gram`]'s lower triangle: small enough that the triangle's ragged
/// edge wastes little, large enough for the microkernel's tiles.
const GRAM_BAND: usize = 64;

/// Strided single-threaded product `dst = lhs · rhs` (m×k times k×n) for attention
/// heads, where operands are views into larger buffers.
pub struct StridedMat<'a> {
    /// The buffer the view lives in.
    pub data: &'a [f32],
    /// Offset of element (0, 0).
    pub offset: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl StridedMat<'_> {
    fn last_index(&self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst (m×n, row stride dst_rs, contiguous columns) = lhs (m×k) · rhs (k×n)`.
pub fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &StridedMat,
    rhs: &StridedMat,
    dst: &mut [f32],
    dst_rs: usize,
) {
    strided_product(m, n, k, lhs, rhs, dst, dst_rs, false, 1.0);
}

/// `dst (m×n, row stride dst_rs) −= lhs (m×k) · rhs (k×n)`: GPTQ's deferred update of the
/// columns after a panel (single-threaded; callers split rows across threads).
pub fn matmul_sub_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &StridedMat,
    rhs: &StridedMat,
    dst: &mut [f32],
    dst_rs: usize,
) {
    strided_product(m, n, k, lhs, rhs, dst, dst_rs, true, -1.0);
}

/// `dst = [dst +] beta · lhs · rhs` (dst read when `read_dst`), single-threaded.
#[allow(clippy::too_many_arguments)]
fn strided_product(
    m: usize,
    n: usize,
    k: usize,
    lhs: &StridedMat,
    rhs: &StridedMat,
    dst: &mut [f32],
    dst_rs: usize,
    read_dst: bool,
    beta: f32,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(lhs.last_index(m, k) < lhs.data.len(), "matmul_strided: lhs view out of bounds");
    assert!(rhs.last_index(k, n) < rhs.data.len(), "matmul_strided: rhs view out of bounds");
    assert!((m - 1) * dst_rs + n <= dst.len() && n <= dst_rs, "matmul_strided: dst view out of bounds");
    // SAFETY: the asserts above prove that every element the views address lies inside
    // its slice; `dst` is a distinct &mut and so does not alias `lhs` or `rhs`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            read_dst,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// RMSNorm of each `d`-wide row of `x` in place, times `weight`.
pub fn rms_norm(x: &mut [f32], d: usize, weight: &[f32], eps: f32) {
    x.par_chunks_mut(d).for_each(|row| {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    });
}

/// LayerNorm of each `d`-wide row of `x` in place: (x − mean)/σ · weight + bias.
pub fn layer_norm(x: &mut [f32], d: usize, weight: &[f32], bias: &[f32], eps: f32) {
    x.par_chunks_mut(d).for_each(|row| {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    });
}

/// GELU with the exact error function (BERT).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// erf(x), accurate to f32 precision: W. J. Cody's rational approximations evaluated in
/// f64 (std has no erf; a cruder approximation would show up in BERT's GELU).
#[allow(clippy::excessive_precision)] // the published coefficients, kept verbatim
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let ax = x.abs();
    let r = if ax < 0.5 {
        let t = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_020_2e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_6,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [
            2.844_236_833_439_170_6e3,
            1.282_616_526_077_372_3e3,
            2.440_246_379_344_441_7e2,
            2.360_129_095_234_412_1e1,
            1.0,
        ];
        let num = p[0] + t * (p[1] + t * (p[2] + t * (p[3] + t * p[4])));
        let den = q[0] + t * (q[1] + t * (q[2] + t * (q[3] + t * q[4])));
        return (x * num / den) as f32;
    } else if ax < 4.0 {
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_5e3,
            1.712_047_612_634_070_6e3,
            8.819_522_212_417_691e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_376,
            5.641_884_969_886_701e-1,
            2.153_115_354_744_038_3e-8,
        ];
        let q = [
            1.230_339_354_803_749_5e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_3e3,
            5.371_811_018_620_098_5e2,
            1.176_939_508_913_125e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let mut num = p[8];
        let mut den = q[8];
        for i in (0..8).rev() {
            num = num * ax + p[i];
            den = den * ax + q[i];
        }
        1.0 - (-ax * ax).exp() * num / den
    } else {
        1.0
    };
    (if x < 0.0 { -r } else { r }) as f32
}

/// How a layer's rotary angles are made from positions: the base frequency, a position
/// scale (linear rope scaling: 1 / factor; llama.cpp's `freq_scale`) and optional
/// per-frequency divisors (Llama 3.1's `rope_freqs.weight`; llama.cpp's freq factors).
#[derive(Clone, Debug)]
pub struct RopeFreqs {
    /// Base frequency (`rope.freq_base`).
    pub base: f32,
    /// Positions are multiplied by this (1 without scaling).
    pub scale: f32,
    /// Angle i is divided by `factors[i]`, when given (`rope_dim / 2` values).
    pub factors: Option<std::sync::Arc<Vec<f32>>>,
}

impl RopeFreqs {
    /// Plain rotary angles with base `base`.
    pub fn plain(base: f32) -> RopeFreqs {
        RopeFreqs { base, scale: 1.0, factors: None }
    }
}

/// The (sin, cos) of every rotary angle at position `pos`: `rope_dim / 2` pairs, angle
/// i = scale · pos · base^(−2i/rope_dim) / factors[i], the powers accumulated by repeated
/// multiplication and the divisor and scale applied in that order, as llama.cpp's
/// `ggml_rope_ext` does (without YaRN). Computed once per position and shared by all heads.
pub fn rope_angles(pos: usize, rope_dim: usize, f: &RopeFreqs) -> Vec<(f32, f32)> {
    let theta_scale = f.base.powf(-2.0 / rope_dim as f32);
    let mut theta = pos as f32;
    (0..rope_dim / 2)
        .map(|i| {
            let extrapolated = match &f.factors {
                Some(ff) => theta / ff[i],
                None => theta,
            };
            let sc = (f.scale * extrapolated).sin_cos();
            theta *= theta_scale;
            sc
        })
        .collect()
}

/// Rotates `x` (one head) by rotary position embedding with precomputed `angles`: pairs
/// (2i, 2i+1) when `neox` is false (llama.cpp's NORM mode), (i, i+d/2) when true (NEOX
/// mode), d = 2 · angles.len(); values past d are left alone.
pub fn apply_rope(x: &mut [f32], angles: &[(f32, f32)], neox: bool) {
    let half = angles.len();
    for (i, &(sin, cos)) in angles.iter().enumerate() {
        let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

/// Query rows per attention task: each task multiplies only the keys its rows see, so a
/// causal chunk of 512 computes 56 % of the full score matrix (64-row blocks) instead of
/// all of it, and the (head, row block) tasks keep both threads busy where 9 heads alone
/// split 5 : 4.
const QUERY_BLOCK: usize = 64;

/// Multi-head attention over packed rows. `q` holds `t` rows of `n_head × hd` (already
/// scaled), `k` and `v` hold `s` rows of `n_kv × hd`; query head h reads key/value head
/// h / (n_head / n_kv) (grouped-query attention). Query i attends to the keys in
/// `visible(i)` (causal, sliding window, or all). Each (head, block of [`QUERY_BLOCK`]
/// rows) is one parallel task over the keys its rows see (the union of their ranges; the
/// others get weight 0, what e^−∞ gives, without being computed). Returns `t` rows of
/// `n_head × hd`.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    s: usize,
    n_head: usize,
    n_kv: usize,
    hd: usize,
    visible: impl Fn(usize) -> std::ops::Range<usize> + Sync,
) -> Vec<f32> {
    let (q_row, kv_row) = (n_head * hd, n_kv * hd);
    let blocks = t.div_ceil(QUERY_BLOCK);
    let parts: Vec<Vec<f32>> = (0..n_head * blocks)
        .into_par_iter()
        .map(|task| {
            let (head, i0) = (task / blocks, (task % blocks) * QUERY_BLOCK);
            let rows = QUERY_BLOCK.min(t - i0);
            let kvh = head / (n_head / n_kv);
            let (lo, hi) = (i0..i0 + rows).map(&visible).fold((s, 0), |(lo, hi), r| (lo.min(r.start), hi.max(r.end)));
            let mut out = vec![0.0f32; rows * hd];
            if lo >= hi {
                return out;
            }
            let w = hi - lo;
            let mut scores = crate::scratch::zeroed(rows * w);
            let qv = StridedMat { data: q, offset: i0 * q_row + head * hd, row_stride: q_row, col_stride: 1 };
            let kt = StridedMat { data: k, offset: lo * kv_row + kvh * hd, row_stride: 1, col_stride: kv_row };
            matmul_strided(rows, w, hd, &qv, &kt, &mut scores, w);
            for (i, r) in scores.chunks_exact_mut(w).enumerate() {
                let keep = visible(i0 + i);
                let (a, b) = (keep.start.max(lo) - lo, keep.end.max(keep.start).max(lo) - lo);
                r[..a].fill(0.0);
                r[b..].fill(0.0);
                crate::kernels::pointwise::softmax(&mut r[a..b]);
            }
            let sv = StridedMat { data: &scores, offset: 0, row_stride: w, col_stride: 1 };
            let vv = StridedMat { data: v, offset: lo * kv_row + kvh * hd, row_stride: kv_row, col_stride: 1 };
            matmul_strided(rows, hd, w, &sv, &vv, &mut out, hd);
            crate::scratch::give(scores);
            out
        })
        .collect();
    let mut merged = crate::scratch::zeroed(t * q_row);
    for (task, o) in parts.iter().enumerate() {
        let (head, i0) = (task / blocks, (task % blocks) * QUERY_BLOCK);
        for (i, row) in o.chunks_exact(hd).enumerate() {
            let at = (i0 + i) * q_row + head * hd;
            merged[at..at + hd].copy_from_slice(row);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive() {
        let (t, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; t * n];
        matmul_wt(&x, t, k, &w, n, &mut out);
        for r in 0..t {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                assert!((out[r * n + c] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn matmul_split_by_rows_is_the_single_threaded_product_bit_for_bit() {
        // A ragged row count (bands of 101 and 100) and one below the split.
        for t in [201, 3] {
            let (k, n) = (37, 29);
            let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut split = vec![0.0; t * n];
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap()
                .install(|| matmul_wt(&x, t, k, &w, n, &mut split));
            let mut one = vec![0.0; t * n];
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| matmul_wt(&x, t, k, &w, n, &mut one));
            assert!(split.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "t = {t}");
        }
    }

    #[test]
    fn gram_accumulated_band_by_band_is_the_gram_added_in_f64() {
        let (t, n) = (29, 2 * GRAM_BAND + 5);
        let x: Vec<f32> = (0..t * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut g = vec![0.0; n * n];
        gram_lower(&x, t, n, &mut g);
        let start: Vec<f64> = (0..n * n).map(|i| i as f64 * 0.25).collect();
        let total = std::sync::Mutex::new(start.clone());
        gram_lower_accumulate(&x, t, n, &total);
        let total = total.into_inner().unwrap();
        for i in 0..n {
            for j in 0..n {
                let want = if j <= i { start[i * n + j] + g[i * n + j] as f64 } else { start[i * n + j] };
                assert_eq!(total[i * n + j].to_bits(), want.to_bits(), "({i}, {j})");
            }
        }
    }

    #[test]
    fn gram_matches_naive() {
        // n spans two bands and a ragged third: every band edge and the mirror are checked.
        let (t, n) = (37, 2 * GRAM_BAND + 17);
        let x: Vec<f32> = (0..t * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0.0; n * n];
        gram(&x, t, n, &mut out);
        for i in 0..n {
            for j in 0..n {
                let want: f32 = (0..t).map(|s| x[s * n + i] * x[s * n + j]).sum();
                assert!((out[i * n + j] - want).abs() < 1e-4, "({i}, {j})");
                assert_eq!(out[i * n + j].to_bits(), out[j * n + i].to_bits(), "symmetric at ({i}, {j})");
            }
        }
    }

    /// Attention written out with no blocking: every score, e^−∞ for what is not visible.
    #[allow(clippy::too_many_arguments)]
    fn naive_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        t: usize,
        s: usize,
        (nh, nkv, hd): (usize, usize, usize),
        visible: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; t * nh * hd];
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..t {
                let keep = visible(i);
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        if !keep.contains(&j) {
                            return f64::NEG_INFINITY;
                        }
                        (0..hd)
                            .map(|d| q[i * nh * hd + h * hd + d] as f64 * k[j * nkv * hd + kvh * hd + d] as f64)
                            .sum()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let o: f64 = (0..s).map(|j| e[j] / z * v[j * nkv * hd + kvh * hd + d] as f64).sum();
                    out[i * nh * hd + h * hd + d] = o as f32;
                }
            }
        }
        out
    }

    #[test]
    fn blocked_attention_matches_every_score_written_out() {
        // Two full query blocks and a ragged one, after 9 cached positions; causal, a
        // sliding window narrower than a block, and bidirectional.
        let (t, pos0, nh, nkv, hd) = (2 * QUERY_BLOCK + 13, 9, 4, 2, 8);
        let s = pos0 + t;
        let q: Vec<f32> = (0..t * nh * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..s * nkv * hd).map(|i| (i as f32 * 0.23).cos()).collect();
        let v: Vec<f32> = (0..s * nkv * hd).map(|i| (i as f32 * 0.61).sin()).collect();
        let causal = |i: usize| 0..pos0 + i + 1;
        let window = |i: usize| (pos0 + i + 1).saturating_sub(20)..pos0 + i + 1;
        let all = |_: usize| 0..s;
        for (name, got, want) in [
            (
                "causal",
                multi_head_attention(&q, &k, &v, t, s, nh, nkv, hd, causal),
                naive_attention(&q, &k, &v, t, s, (nh, nkv, hd), causal),
            ),
            (
                "window",
                multi_head_attention(&q, &k, &v, t, s, nh, nkv, hd, window),
                naive_attention(&q, &k, &v, t, s, (nh, nkv, hd), window),
            ),
            (
                "all",
                multi_head_attention(&q, &k, &v, t, s, nh, nkv, hd, all),
                naive_attention(&q, &k, &v, t, s, (nh, nkv, hd), all),
            ),
        ] {
            // Each output is a convex combination of |v| ≤ 1 values: f32 rounding over
            // at most s terms bounds the difference well below 1e-5.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{name}: element {i}: {g} against {w}");
            }
        }
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
            (-1.5, -0.966_105_146_5),
        ] {
            assert!((erf(x) as f64 - want).abs() < 1e-6, "erf({x})");
        }
    }

    #[test]
    fn rope_preserves_norm_and_is_identity_at_zero() {
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        apply_rope(&mut x, &rope_angles(0, 8, &RopeFreqs::plain(10000.0)), false);
        assert_eq!(x, orig);
        apply_rope(&mut x, &rope_angles(17, 8, &RopeFreqs::plain(10000.0)), true);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }
}
