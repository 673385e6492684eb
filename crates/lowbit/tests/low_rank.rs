//! Low-rank branches (`quantize --low-rank R`) on a real model (smollm2): every block
//! matrix gets its two f16 factors beside it, they shrink every matrix's quantization
//! error, the file's size grows by exactly their bytes, the quantized runtime (packed
//! kernels plus the branch's two thin products) computes what the dense weights
//! `Ŵ + A·B` compute, and the file is a valid source for another quantization.

mod support;

use lowbit::gguf::{low_rank_names, GgufFile};
use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions, Weight};
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};

fn options(mix: &str, low_rank: Option<usize>) -> QuantizeOptions {
    QuantizeOptions { low_rank, ..QuantizeOptions::new(Mix::from_name(mix).unwrap(), Method::Rtn) }
}

#[test]
fn low_rank_branches_are_written_run_and_reduce_the_error() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (plain, branched) = (dir.path().join("plain.gguf"), dir.path().join("lr.gguf"));
    const RANK: usize = 4;
    let s0 = quantize_gguf(&src, &plain, &options("Q3_K_S", None), &mut |_, _| {}).unwrap();
    let s1 = quantize_gguf(&src, &branched, &options("Q3_K_S", Some(RANK)), &mut |_, _| {}).unwrap();

    let (gs, gp, gb) =
        (GgufFile::open(&src).unwrap(), GgufFile::open(&plain).unwrap(), GgufFile::open(&branched).unwrap());
    assert_eq!(gb.get("lowbit.quantize.low_rank").and_then(|v| v.as_u64()), Some(RANK as u64));
    let mut branch_bytes = 0u64;
    let mut matrices = 0;
    for t in gp.tensors.iter().filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2) {
        let (a, b) = low_rank_names(&t.name);
        let (ia, ib) = (gb.tensor_info(&a).expect("factor A"), gb.tensor_info(&b).expect("factor B"));
        assert_eq!(ia.dims, vec![RANK as u64, t.dims[1]], "{a}");
        assert_eq!(ib.dims, vec![t.dims[0], RANK as u64], "{b}");
        branch_bytes += 2 * RANK as u64 * (t.dims[0] + t.dims[1]);
        matrices += 1;
        // The same stored rows as without a branch (the branch is fitted after them).
        assert_eq!(gp.tensor_bytes(&t.name).unwrap().1, gb.tensor_bytes(&t.name).unwrap().1, "{}", t.name);
        // Every matrix's error shrinks (the unweighted fit is the Frobenius optimum; f16
        // factors lose far less than a rank-4 correction gains).
        let w = gs.dequantize(&t.name).unwrap();
        let err = |q: &[f32]| w.iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let (e0, e1) = (err(&gp.dequantize(&t.name).unwrap()), err(&gb.dequantize(&t.name).unwrap()));
        assert!(e1 < e0, "{}: error {e1} with the branch, {e0} without", t.name);
    }
    assert_eq!(matrices, 30 * 7);
    assert_eq!(s1.tensor_bytes, s0.tensor_bytes + branch_bytes, "the plan counts the branches' bytes");
    let (f0, f1) = (s0.file_bytes.unwrap(), s1.file_bytes.unwrap());
    // The header grows by the factors' names and infos (under 100 bytes each).
    assert!(f1 >= f0 + branch_bytes && f1 <= f0 + branch_bytes + 2 * matrices as u64 * 100, "{f0} → {f1}");

    // The runtime: packed kernels plus the branch equal the dense Ŵ + A·B (exact numerics:
    // f32 summation order only, as in packed_runtime.rs).
    let packed = load_gguf_lm(&branched, LoadOptions::default()).unwrap();
    let mut dense = load_gguf_lm(&branched, LoadOptions::default()).unwrap();
    for lin in dense.model.block_linears_mut() {
        assert!(lin.weight.branch().is_some(), "{} loads with its branch", lin.name);
        let d = lin.weight.dense().into_owned();
        assert_eq!(d, gb.dequantize(&lin.name).unwrap(), "{}: one dense decode", lin.name);
        lin.weight = Weight::Dense(d);
    }
    let tokens: Vec<u32> = (0..20u32).map(|i| 100 + 37 * i).collect();
    let run = |lm: &lowbit::model::LoadedLm| {
        let m = &lm.model;
        let mut cache = m.new_cache(tokens.len());
        let h = m.forward_hidden(&tokens[..16], &mut cache).unwrap();
        let mut out = m.logits(&h, 16);
        for &t in &tokens[16..] {
            let h = m.forward_hidden(&[t], &mut cache).unwrap();
            out.extend(m.logits(&h, 1));
        }
        out
    };
    let (a, b) = (run(&packed), run(&dense));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "packed+branch vs dense: max |Δlogit| {worst} (largest {scale})");

    // As a source: the factors travel with their tensors (not planned as tensors of their
    // own) and the weights read are Ŵ + A·B.
    let again = dir.path().join("q8.gguf");
    quantize_gguf(&branched, &again, &options("Q8_0", None), &mut |_, _| {}).unwrap();
    let g8 = GgufFile::open(&again).unwrap();
    assert!(g8.tensors.iter().all(|t| !t.name.ends_with(".lr_a") && !t.name.ends_with(".lr_b")));
    let name = "blk.3.ffn_down.weight";
    let (w8, wb) = (g8.dequantize(name).unwrap(), gb.dequantize(name).unwrap());
    let rel = w8.iter().zip(&wb).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
        / wb.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    // Q8_0 of the same values: relative error near 1e-5, far below the branch's size.
    assert!(rel < 1e-4, "re-quantized {name}: relative error {rel}");
}
