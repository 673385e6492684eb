//! The quantized runtime computes what the dense-f32 forward pass computes: the same model
//! with its block matrices packed (kernels on the stored bytes) and decoded to dense f32
//! gives the same logits — for a prompt (the tile path) and token by token (the row
//! loops) — in exact numerics, and in llama.cpp numerics (integer kernels against the
//! f32 product of rounded activations), on a real model (smollm2, Q4_1 and Q4_K_M mixes).

mod support;

use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions, LoadedLm, Weight};
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};

fn densify(lm: &mut LoadedLm) {
    for lin in lm.model.block_linears_mut() {
        lin.weight = Weight::Dense(lin.weight.dense().into_owned());
    }
}

/// Logits of a 24-token prompt in one batch, then 4 tokens one at a time.
fn logits(lm: &LoadedLm, tokens: &[u32]) -> Vec<f32> {
    let m = &lm.model;
    let (p, d) = (24, m.hidden_size());
    let mut cache = m.new_cache(tokens.len());
    let hidden = m.forward_hidden(&tokens[..p], &mut cache).unwrap();
    let mut out = m.logits(&hidden, p);
    for &tok in &tokens[p..] {
        let h = m.forward_hidden(&[tok], &mut cache).unwrap();
        assert_eq!(h.len(), d);
        out.extend(m.logits(&h, 1));
    }
    out
}

#[test]
fn packed_weights_give_the_dense_forward_pass() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let q4km = dir.path().join("q4km.gguf");
    let opts = QuantizeOptions {
        mix: Mix::from_name("Q4_K_M").unwrap(),
        overrides: vec![],
        method: Method::Rtn,
        importance: None,
        hessians: None,
        pre_encoded: Default::default(),
        method_options: Default::default(),
    };
    quantize_gguf(&src, &q4km, &opts, &mut |_, _| {}).unwrap();
    let tokens: Vec<u32> = (0..28u32).map(|i| 100 + 37 * i).collect();
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let mut dense_exact = None;
    for (file, modes) in [(&src, &[false][..]), (&q4km, &[false, true][..])] {
        for &llama_cpp_numerics in modes {
            let o = LoadOptions { llama_cpp_numerics };
            let packed = load_gguf_lm(file, o).unwrap();
            let mut dense = load_gguf_lm(file, o).unwrap();
            densify(&mut dense);
            let (a, b) = (logits(&packed, &tokens), logits(&dense, &tokens));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = max_diff(&a, &b);
            eprintln!(
                "{}: llama.cpp numerics {llama_cpp_numerics}: max |Δlogit| {worst:.2e} of {scale:.1}",
                file.display()
            );
            if !llama_cpp_numerics {
                // Exact numerics: the two differ only in f32 summation order — a few ulps
                // per layer through 30 layers (measured ≤ 3e-6 of the largest logit).
                assert!(worst <= 1e-4 * scale, "exact numerics: logits differ by {worst} (largest {scale})");
                if file == &q4km {
                    dense_exact = Some(b);
                }
            } else {
                // Rounding activations is discontinuous: an ulp of difference before a
                // Q8 rounding can flip a code, and flips propagate. So the integer kernels
                // and the rounded-f32 product agree only to the size of the rounding's own
                // effect: their difference must stay below how far rounding moves the
                // logits from exact f32 (a wrong kernel is far above it).
                let rounding = max_diff(&b, dense_exact.as_ref().expect("exact ran first"));
                assert!(
                    worst <= rounding,
                    "llama.cpp numerics: packed and dense differ by {worst}, more than rounding's own {rounding}"
                );
                // On average too (a max can hinge on one flipped code).
                let mean_diff = |x: &[f32], y: &[f32]| {
                    x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64).sum::<f64>() / x.len() as f64
                };
                let e = dense_exact.as_ref().expect("exact ran first");
                let (impl_mean, rounding_mean) = (mean_diff(&a, &b), mean_diff(&b, e));
                eprintln!("mean |Δlogit|: packed vs dense {impl_mean:.3e}, rounding {rounding_mean:.3e}");
                assert!(impl_mean <= rounding_mean, "mean |Δ|: packed vs dense {impl_mean}, rounding {rounding_mean}");
            }
        }
    }
}
