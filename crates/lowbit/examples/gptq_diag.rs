//! Per-layer diagnostic for GPTQ: the output error ‖(W − Ŵ)Xᵀ‖² of a few smollm2-135m
//! layers under a calibration Hessian and a held-out one, for plain search, importance-
//! weighted search and GPTQ. Usage: gptq_diag SOURCE.gguf CALIB.safetensors HELD.safetensors
//! TYPE [DAMP] [SHRINK] [REFINE 0|1] (statistics from `lowbit calibrate -o FILE.safetensors`).
use lowbit::calibrate::CalibrationStats;
use lowbit::format::encode::quantize_rows;
use lowbit::format::{dequantize_to_vec, GgmlType};
use lowbit::gguf::GgufFile;
use lowbit::method::gptq::{gptq_rows, output_error, GptqOptions};
use lowbit::method::Method;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g = GgufFile::open(std::path::Path::new(&a[1])).unwrap();
    let cal = CalibrationStats::read(std::path::Path::new(&a[2])).unwrap();
    let held = CalibrationStats::read(std::path::Path::new(&a[3])).unwrap();
    let ty = GgmlType::from_name(&a[4]).unwrap();
    let (hc, hh) = (cal.hessians_by_weight(), held.hessians_by_weight());
    let imp = cal.imatrix.importance();
    let damp: f64 = a.get(5).map(|s| s.parse().unwrap()).unwrap_or(0.01);
    let shrink: f64 = a.get(6).map(|s| s.parse().unwrap()).unwrap_or(0.0);
    let refine = a.get(7).is_some_and(|s| s == "1");
    for name in [
        "blk.2.attn_q.weight",
        "blk.2.ffn_down.weight",
        "blk.10.attn_output.weight",
        "blk.10.ffn_up.weight",
        "blk.20.ffn_down.weight",
        "blk.28.attn_v.weight",
    ] {
        let w = g.dequantize(name).unwrap();
        let n = hc[name].n;
        if n % ty.block_size() != 0 {
            continue;
        }
        let s =
            dequantize_to_vec(ty, &quantize_rows(ty, &w, n, Some(&imp[name]), Method::Search.fit()).unwrap(), w.len())
                .unwrap();
        let p = dequantize_to_vec(ty, &quantize_rows(ty, &w, n, None, Method::Search.fit()).unwrap(), w.len()).unwrap();
        let q = dequantize_to_vec(
            ty,
            &gptq_rows(ty, &w, n, &hc[name].xtx, &GptqOptions { damp, shrink, refine }).unwrap(),
            w.len(),
        )
        .unwrap();
        let e = |x: &[f32], h: &[f32]| output_error(&w, x, n, h);
        println!("{name:28} cal: plain {:.3e} imp {:.3e} gptq {:.3e} | held: plain {:.3e} imp {:.3e} gptq {:.3e} ratio {:.3}",
            e(&p, &hc[name].xtx), e(&s, &hc[name].xtx), e(&q, &hc[name].xtx), e(&p, &hh[name].xtx), e(&s, &hh[name].xtx), e(&q, &hh[name].xtx), e(&q, &hh[name].xtx)/e(&s, &hh[name].xtx));
    }
}
