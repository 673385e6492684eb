//! Dequantization of every ggml type must equal llama.cpp's bit for bit. The reference is
//! the PyPI `gguf` package's `gguf.quants.dequantize` (a port of ggml-quants.c), run on
//! random blocks of every type it implements, and on every tensor of both real GGUF models.

mod support;

use std::collections::HashMap;
use std::process::Command;

use lowbit::format::{dequantize_to_vec, GgmlType};
use lowbit::gguf::{GgufFile, TensorType};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Byte offsets of f16 scale fields per type; random bytes there are replaced with finite
/// f16 values so the comparison is about layout, not NaN payload propagation.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        TQ1_0 => &[52],
        TQ2_0 => &[64],
        _ => &[],
    }
}

fn random_finite_f16(rng: &mut impl Rng) -> u16 {
    let v: f32 = rng.random_range(-4.0..4.0);
    half::f16::from_f32(v * 10f32.powi(rng.random_range(-3..1))).to_bits()
}

/// Random but well-formed bytes for `n_blocks` blocks of `ty`.
fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
    let ts = ty.type_size();
    let mut bytes = vec![0u8; ts * n_blocks];
    rng.fill(&mut bytes[..]);
    for b in bytes.chunks_exact_mut(ts) {
        for &off in f16_fields(ty) {
            b[off..off + 2].copy_from_slice(&random_finite_f16(rng).to_le_bytes());
        }
        match ty {
            GgmlType::F16 => b.copy_from_slice(&random_finite_f16(rng).to_le_bytes()),
            GgmlType::IQ1_M => {
                // The block scale is spread over the top nibbles of four u16 at byte 48.
                let d = random_finite_f16(rng);
                for k in 0..4 {
                    let off = 48 + 2 * k;
                    let cur = u16::from_le_bytes([b[off], b[off + 1]]) & 0x0FFF;
                    let nib = (d >> (4 * k)) & 0xF;
                    b[off..off + 2].copy_from_slice(&(cur | (nib << 12)).to_le_bytes());
                }
            }
            _ => {}
        }
    }
    bytes
}

/// Types `gguf.quants.dequantize` implements (it has none for Q8_1, Q8_K, Q1_0 or the
/// integer types; those are checked against hand-derived values in the unit tests).
const PY_TYPES: &[GgmlType] = {
    use GgmlType::*;
    &[
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
        IQ3_S, IQ1_S, IQ1_M, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4,
    ]
};

#[test]
fn every_type_matches_gguf_py_on_random_blocks() {
    let Some(py) = support::reference_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for &ty in PY_TYPES {
        // 2 rows of 512 elements (16 rows for plain types) keeps every type's geometry legal.
        let row_elems = 512usize.max(ty.block_size());
        let rows = 4;
        let n_blocks = rows * row_elems / ty.block_size();
        let bytes = random_blocks(ty, n_blocks, &mut rng);
        let inp = dir.path().join(format!("{}.bin", ty.name()));
        let out = dir.path().join(format!("{}.f32", ty.name()));
        std::fs::write(&inp, &bytes).unwrap();
        let row_bytes = row_elems / ty.block_size() * ty.type_size();
        let status = Command::new(&py)
            .arg(support::ref_script())
            .args(["blocks", &ty.id().to_string()])
            .arg(&inp)
            .arg(&out)
            .arg(row_bytes.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "reference failed for {ty}");
        let want: Vec<u32> =
            std::fs::read(&out).unwrap().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        let got = dequantize_to_vec(ty, &bytes, rows * row_elems).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}: length");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == *w || (g.is_nan() && f32::from_bits(*w).is_nan()),
                "{ty}: element {i} (block {}) is {g} ({:#x}), llama.cpp gives {} ({w:#x})",
                i / ty.block_size(),
                g.to_bits(),
                f32::from_bits(*w)
            );
        }
    }
}

fn check_model(name: &str) {
    let Some(path) = support::zoo_model(name) else {
        return;
    };
    let Some(py) = support::reference_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hashes.json");
    let status = Command::new(&py).arg(support::ref_script()).arg("hashes").arg(&path).arg(&out).status().unwrap();
    assert!(status.success(), "reference failed on {name}");
    let want: HashMap<String, String> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(want.len(), g.tensors.len());
    for t in &g.tensors {
        assert!(matches!(t.ty, TensorType::Known(_)));
        let values = g.dequantize(&t.name).unwrap();
        let mut h = Sha256::new();
        for v in &values {
            h.update(v.to_le_bytes());
        }
        assert_eq!(format!("{:x}", h.finalize()), want[&t.name], "{name}: tensor {} ({}) differs", t.name, t.ty);
    }
}

#[test]
fn smollm2_tensors_match_gguf_py() {
    check_model("smollm2-135m");
}

#[test]
fn gemma3_tensors_match_gguf_py() {
    check_model("gemma3-270m");
}
