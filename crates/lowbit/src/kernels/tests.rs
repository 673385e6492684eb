//! Every kernel against the scalar reference: random tensors of every type lowbit writes
//! (plus native and VQ formats), odd row counts, batch sizes on both paths, every
//! instruction-set level this CPU has, and 1 or 3 threads.

#![allow(clippy::needless_range_loop)]

use rand::{Rng, SeedableRng};

use super::isa::Level;
use super::*;
use crate::format::activation::{fake_quantize_row, vec_dot_type};
use crate::format::encode::{encodable_types, Fit};
use crate::format::storage::{decode, dot_reference, encode_rows};
use crate::method::{quantize_tensor, Calibration, Method, MethodOptions};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Heavy-ish tails and a few large values, like real weights and activations.
    (0..n)
        .map(|_| {
            let v: f32 = rng.random::<f32>() - 0.5;
            if rng.random::<f32>() < 0.01 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// (storage type, stored bytes, codebook) for a `rows × cols` random matrix.
fn packed(st: StorageType, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
    let w = random(rows * cols, seed);
    let enc = quantize_tensor(st, &w, cols, Method::Rtn, &Calibration::default(), &MethodOptions::default())
        .unwrap_or_else(|e| panic!("{st}: {e}"));
    let book = enc.vq.as_ref().map(|v| v.codebook.clone());
    PackedMatrix::new(st, WeightBytes::owned(enc.bytes), book.as_deref(), rows, cols).unwrap()
}

fn types() -> Vec<StorageType> {
    let mut v: Vec<StorageType> = encodable_types().into_iter().map(StorageType::Ggml).collect();
    for name in ["int4_g64", "int3_g64_zp", "nf4_g64", "fp8_g32", "vq4x256", "vq4x256+128o2", "vq8x256+256o4"] {
        v.push(StorageType::from_name(name).unwrap());
    }
    v
}

/// Reference: decode the matrix (the format's decoder), then dot in f64 — with the
/// activations first rounded to `act` when given.
fn reference(m: &PackedMatrix, x: &[f32], t: usize, act: Option<GgmlType>) -> Vec<f64> {
    let (k, n) = (m.cols(), m.rows());
    let w = m.to_dense();
    let mut out = vec![0.0f64; t * n];
    for i in 0..t {
        let mut xr = x[i * k..(i + 1) * k].to_vec();
        if let Some(a) = act {
            fake_quantize_row(&mut xr, a);
        }
        for r in 0..n {
            out[i * n + r] = w[r * k..(r + 1) * k].iter().zip(&xr).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    }
    out
}

/// f32 summation error bound: a few ulps of the sum of |products|, over k terms.
fn check(name: &str, got: &[f32], want: &[f64], m: &PackedMatrix, x: &[f32], t: usize, act: Option<GgmlType>) {
    let (k, n) = (m.cols(), m.rows());
    let w = m.to_dense();
    for i in 0..t {
        for r in 0..n {
            let (wr, xr) = (&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
            let abs: f64 = wr.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            // Q8_1 carries each block's Σx as an f16 (`s`), which llama.cpp multiplies by
            // the block minimum: 2^-11 relative of |min|·Σ|x| per block, |min| ≤ max|w|.
            let s_rounding: f64 = if act == Some(GgmlType::Q8_1) {
                wr.chunks(32)
                    .zip(xr.chunks(32))
                    .map(|(wb, xb)| {
                        let wmax = wb.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
                        wmax * xb.iter().map(|&v| v.abs() as f64).sum::<f64>() / 2048.0
                    })
                    .sum()
            } else {
                0.0
            };
            // VQ's integer path (few rows, Q8_0) holds codebooks off the int8 grids on an
            // int16 grid: half a step per weight, times the row's scale.
            let grid = match (&m.byte_book, act) {
                (Some(bb), Some(GgmlType::Q8_0)) if t <= MAX_ROWS => {
                    let scale = crate::format::f16_at(&m.bytes[r * m.row_bytes..], 0).abs() as f64;
                    bb.int_rounding() as f64 * scale * xr.iter().map(|&v| v.abs() as f64).sum::<f64>()
                }
                _ => 0.0,
            };
            let (g, e) = (got[i * n + r] as f64, want[i * n + r]);
            // Each f32 operation adds ≤ 2^-24 relative; sums of k terms in lanes and
            // blocks stay far below k·2^-24 of Σ|w·x|; the activation rounding itself
            // is in the reference.
            let tol = 4e-6 * abs + s_rounding + grid + 1e-6;
            assert!((g - e).abs() <= tol, "{name}: row {r}, x {i}: {g} vs {e} (tol {tol})");
        }
    }
}

#[test]
fn unpacked_blocks_decode_like_the_reference() {
    use super::blocks::{Small, SmallBlock, Super, SuperBlock};
    fn small<K: SmallBlock>() {
        let st = StorageType::Ggml(K::TYPE);
        let m = packed(st, 8, 256, 1);
        let dense = m.to_dense();
        let mut s = Small::default();
        for (b, want) in m.bytes.chunks_exact(K::BYTES).zip(dense.chunks_exact(32)) {
            K::unpack::<super::simd::Scalar>(b, &mut s);
            for j in 0..32 {
                let v = s.d * s.w[j] as f32 + s.m;
                assert!((v - want[j]).abs() <= 1e-6 * want[j].abs().max(s.d.abs() * 64.0), "{st}: {v} vs {}", want[j]);
            }
        }
    }
    fn sup<K: SuperBlock>() {
        let st = StorageType::Ggml(K::TYPE);
        let m = packed(st, 8, 512, 2);
        let dense = m.to_dense();
        let mut s = Super::default();
        for (b, want) in m.bytes.chunks_exact(K::BYTES).zip(dense.chunks_exact(256)) {
            K::unpack::<super::simd::Scalar>(b, &mut s);
            for j in 0..256 {
                let v = s.d * s.w[j] as f32 - s.dmin * s.mins[j / 16] as f32;
                let scale = s.d.abs() * 8192.0 + s.dmin.abs() * 64.0;
                assert!((v - want[j]).abs() <= 1e-6 * scale, "{st} value {j}: {v} vs {}", want[j]);
            }
        }
    }
    use super::blocks::*;
    small::<BQ4_0>();
    small::<BQ4_1>();
    small::<BQ5_0>();
    small::<BQ5_1>();
    small::<BQ8_0>();
    small::<BIq4Nl>();
    small::<BMxfp4>();
    sup::<BQ2K>();
    sup::<BQ3K>();
    sup::<BQ4K>();
    sup::<BQ5K>();
    sup::<BQ6K>();
    sup::<BIq4Xs>();
    sup::<BIq2Xxs>();
    sup::<BIq2Xs>();
    sup::<BIq2S>();
    sup::<BIq3Xxs>();
    sup::<BIq3S>();
    sup::<BIq1S>();
    sup::<BIq1M>();
}

#[test]
fn every_type_has_its_kernel_or_decodes() {
    // Every type lowbit writes with an activation type has an integer kernel.
    for t in encodable_types() {
        let f = t.facts();
        let integer = matches!(f.vec_dot, Some(GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K));
        assert_eq!(f.kernel.is_some(), integer, "{t}: kernel presence");
    }
}

#[test]
fn matmul_agrees_with_the_reference_for_every_type_level_and_batch() {
    let (rows, cols) = (37, 512);
    for (si, st) in types().into_iter().enumerate() {
        let m = packed(st, rows, cols, 10 + si as u64);
        let act = match st {
            StorageType::Ggml(g) => vec_dot_type(g),
            // llama.cpp numerics give VQ matrices Q8_0 activations (`model::Loader::linear`).
            StorageType::Vq(_) => Some(GgmlType::Q8_0),
            _ => None,
        };
        // 19 and 33: one and two full panels of the integer tile path plus a ragged one.
        for t in [1, 3, MAX_ROWS, MAX_ROWS + 1, 19, 2 * tiles::LANES + 1] {
            let x = random(t * cols, 100 + t as u64);
            for a in [None, act] {
                let want = reference(&m, &x, t, a);
                let mut first: Option<Vec<f32>> = None;
                for level in Level::supported() {
                    let mut got = vec![0.0f32; t * rows];
                    m.matmul_at(level, &x, t, a, &mut got);
                    check(&format!("{st} t={t} act={a:?} {level:?}"), &got, &want, &m, &x, t, a);
                    // Every level computes the same sums in the same order — except that
                    // many rows in llama.cpp numerics take the integer tile path only
                    // where it is fast (AVX-512; `tiles::used_at`), whose sums are
                    // ordered by block (its portable loop is checked bit for bit in
                    // `tiles::tests`); and that few Q4_0/IQ4_NL/Q5_0/Q8_0 rows in llama.cpp
                    // numerics take the byte path at AVX-512 (`bytes32::ByteBlock::at`),
                    // ordered by lane of 4 (its portable loop is checked bit for bit in
                    // `bytes32::tests`).
                    if t > MAX_ROWS && a.is_some() && matches!(m.kernel(), Some(k) if k.tiles_with(a.unwrap())) {
                        continue;
                    }
                    if let (StorageType::Ggml(ty), true, Some(GgmlType::Q8_0)) = (st, t <= MAX_ROWS, a) {
                        if super::bytes32::ByteBlock::at(level, ty, cols).is_some() {
                            continue;
                        }
                    }
                    // So do the grid i-quants against Q8_K (`iq_bytes`, checked the same way).
                    if let (StorageType::Ggml(ty), true, Some(_)) = (st, t <= MAX_ROWS, a) {
                        if super::iq_bytes::at(level, ty).is_some() {
                            continue;
                        }
                    }
                    match &first {
                        None => first = Some(got),
                        Some(f) => assert!(f == &got, "{st} t={t} {level:?} differs from the portable kernel"),
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (rows, cols) = (300, 1024);
    for name in ["Q4_K", "Q8_0", "IQ2_XS", "int4_g64", "vq4x256+128"] {
        let st = StorageType::from_name(name).unwrap();
        let m = packed(st, rows, cols, 7);
        for t in [1, 5, 40] {
            let x = random(t * cols, 8);
            let act = match st {
                StorageType::Ggml(g) => vec_dot_type(g),
                StorageType::Vq(_) => Some(GgmlType::Q8_0),
                _ => None,
            };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![0.0f32; t * rows];
                pool.install(|| m.matmul(&x, t, act, &mut out));
                out
            };
            assert!(run(1) == run(3), "{name} t={t}: 1 and 3 threads differ");
        }
    }
}

#[test]
fn packed_matrix_refuses_bytes_of_the_wrong_size() {
    let st = StorageType::Ggml(GgmlType::Q4_0);
    let e = PackedMatrix::new(st, WeightBytes::owned(vec![0; 17]), None, 1, 32).err().unwrap();
    assert!(e.to_string().contains("expected 18"), "{e}");
    let e = PackedMatrix::new(st, WeightBytes::owned(vec![0; 18]), None, 1, 33).err().unwrap();
    assert!(e.to_string().contains("cannot be stored"), "{e}");
    let bytes = encode_rows(st, &random(64, 1), 32, None, Fit::Rtn).unwrap();
    let m = PackedMatrix::new(st, WeightBytes::owned(bytes.clone()), None, 2, 32).unwrap();
    assert_eq!(m.to_dense(), decode(st, &bytes, None, 64, 32).unwrap());
    let row = dot_reference(st, &bytes[..18], &[1.0; 32]).unwrap();
    assert!((row - m.to_dense()[..32].iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-9);
}
