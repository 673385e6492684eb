//! Speed of the quantized kernels alone: one matrix–vector product (generation's shape)
//! and one 512-row product (prompt processing's) per type, single-threaded and at each
//! instruction-set level, in weights/ns and weight-bytes/ns. Interleaved repetitions,
//! median reported. Run: `cargo bench -p lowbit --bench kernels [-- TYPE…]`.

use std::time::Instant;

use lowbit::format::activation::vec_dot_type;
use lowbit::format::storage::StorageType;
use lowbit::kernels::isa::Level;
use lowbit::kernels::{PackedMatrix, WeightBytes};
use lowbit::method::{quantize_tensor, Calibration, Method, MethodOptions};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let names = if args.is_empty() {
        ["Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS", "IQ2_XS", "F16", "int4_g64", "nf4_g64"]
            .map(String::from)
            .to_vec()
    } else {
        args
    };
    let rows: usize = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1536);
    let cols: usize = std::env::var("COLS").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i as f32) * 0.37).sin() * 0.05).collect();
    println!("| type | level | numerics | tg GB/s | tg weights/ns | pp512 GFLOP/s |");
    println!("|---|---|---|---:|---:|---:|");
    for name in names {
        let st = StorageType::from_name(&name).expect("a type name");
        let enc =
            quantize_tensor(st, &w, cols, Method::Rtn, &Calibration::default(), &MethodOptions::default()).unwrap();
        let book = enc.vq.as_ref().map(|v| v.codebook.clone());
        let m = PackedMatrix::new(st, WeightBytes::owned(enc.bytes), book.as_deref(), rows, cols).unwrap();
        // The activations llama.cpp numerics give each type (`GgufWeights::act_quant_for`):
        // VQ and 4-bit int/NF4/FP4 matrices take Q8_0, as the 32-value block types do.
        let act = match st {
            StorageType::Ggml(g) => vec_dot_type(g),
            StorageType::Vq(_) if cols.is_multiple_of(32) => Some(lowbit::format::GgmlType::Q8_0),
            StorageType::Native(f) if lowbit::kernels::nibbles_take_q8(&f) && cols.is_multiple_of(64) => {
                Some(lowbit::format::GgmlType::Q8_0)
            }
            _ => None,
        };
        for level in Level::supported() {
            for a in [act, None] {
                if a.is_none() && act.is_some() && level != Level::detected() {
                    continue;
                }
                let x: Vec<f32> = (0..512 * cols).map(|i| ((i as f32) * 0.11).cos()).collect();
                let mut out = vec![0.0f32; 512 * rows];
                let (mut tg, mut pp) = (Vec::new(), Vec::new());
                pool.install(|| {
                    for _ in 0..5 {
                        let start = Instant::now();
                        for _ in 0..20 {
                            m.matmul_at(level, &x[..cols], 1, a, &mut out[..rows]);
                        }
                        tg.push(start.elapsed().as_secs_f64() / 20.0);
                        let start = Instant::now();
                        m.matmul_at(level, &x, 512, a, &mut out);
                        pp.push(start.elapsed().as_secs_f64());
                    }
                });
                let (tg, pp) = (median(&mut tg), median(&mut pp));
                let numerics = if a.is_some() { "llama.cpp" } else { "exact" };
                println!(
                    "| {name} | {level:?} | {numerics} | {:.2} | {:.2} | {:.1} |",
                    m.stored_bytes() as f64 / tg / 1e9,
                    (rows * cols) as f64 / tg / 1e9,
                    2.0 * (rows * cols * 512) as f64 / pp / 1e9
                );
            }
        }
    }
}
