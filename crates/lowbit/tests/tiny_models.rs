//! Forward passes of tiny synthetic models (random weights written to a real GGUF by
//! lowbit's writer) against a straightforward scalar implementation written here from
//! the architectures' definitions: llama (SwiGLU, adjacent-pair RoPE, GQA) and Gemma 3
//! (QK-norm, pre/post norms, GeGLU, split-half RoPE, √d embedding scale, sliding window).

use lowbit::format::GgmlType;
use lowbit::gguf::{GgufFile, GgufWriter, TensorSpec, Value};
use lowbit::model::{gemma3, llama, LoadOptions};
use rand::{Rng, SeedableRng};

const D: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 8;
const FF: usize = 48;
const VOCAB: usize = 40;
const LAYERS: usize = 2;

struct Weights(std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Weights {
    fn get(&self, n: &str) -> &[f32] {
        &self.0[n].1
    }
}

fn random_model(path: &std::path::Path, arch: &str, gemma: bool) -> Weights {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![("token_embd.weight".into(), vec![D, VOCAB])];
    for i in 0..LAYERS {
        let mut add = |n: &str, dims: Vec<usize>| tensors.push((format!("blk.{i}.{n}.weight"), dims));
        add("attn_norm", vec![D]);
        add("attn_q", vec![D, HEADS * HD]);
        add("attn_k", vec![D, KV_HEADS * HD]);
        add("attn_v", vec![D, KV_HEADS * HD]);
        add("attn_output", vec![HEADS * HD, D]);
        add("ffn_norm", vec![D]);
        add("ffn_gate", vec![D, FF]);
        add("ffn_up", vec![D, FF]);
        add("ffn_down", vec![FF, D]);
        if gemma {
            add("attn_q_norm", vec![HD]);
            add("attn_k_norm", vec![HD]);
            add("post_attention_norm", vec![D]);
            add("post_ffw_norm", vec![D]);
        }
    }
    tensors.push(("output_norm.weight".into(), vec![D]));
    let mut md = vec![("general.architecture".to_string(), Value::String(arch.into()))];
    let kv = |k: &str, v: u32| (format!("{arch}.{k}"), Value::U32(v));
    md.extend([
        kv("embedding_length", D as u32),
        kv("block_count", LAYERS as u32),
        kv("attention.head_count", HEADS as u32),
        kv("attention.head_count_kv", KV_HEADS as u32),
        kv("feed_forward_length", FF as u32),
        kv("attention.key_length", HD as u32),
        kv("rope.dimension_count", HD as u32),
        kv("attention.sliding_window", 3),
    ]);
    md.push((format!("{arch}.rope.freq_base"), Value::F32(10000.0)));
    md.push((format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)));
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, d)| TensorSpec { name: n.clone(), dims: d.iter().map(|&x| x as u64).collect(), ty: GgmlType::F32 })
        .collect();
    let mut w = GgufWriter::create(path, &md, specs).unwrap();
    let mut out = std::collections::HashMap::new();
    for (n, dims) in &tensors {
        let len: usize = dims.iter().product();
        let is_norm = n.contains("norm");
        let vals: Vec<f32> = (0..len)
            .map(|_| if is_norm { 1.0 + rng.random_range(-0.2..0.2) } else { rng.random_range(-0.3..0.3) })
            .collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(n, &bytes).unwrap();
        out.insert(n.clone(), (dims.clone(), vals));
    }
    w.finish().unwrap();
    Weights(out)
}

fn rms(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    x.iter().zip(w).map(|(v, w)| v / (ms + 1e-5).sqrt() * w).collect()
}

/// y = W x with W stored (out rows × in columns).
fn matvec(w: &[f32], x: &[f32], out: usize) -> Vec<f32> {
    (0..out).map(|o| (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum()).collect()
}

fn rope(x: &mut [f32], pos: usize, neox: bool) {
    for i in 0..HD / 2 {
        let theta = pos as f32 * 10000f32.powf(-2.0 * i as f32 / HD as f32);
        let (a, b) = if neox { (i, i + HD / 2) } else { (2 * i, 2 * i + 1) };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * theta.cos() - x1 * theta.sin();
        x[b] = x0 * theta.sin() + x1 * theta.cos();
    }
}

/// The scalar reference: logits for every position of `tokens`.
fn reference_logits(w: &Weights, tokens: &[usize], gemma: bool) -> Vec<Vec<f32>> {
    let emb = w.get("token_embd.weight");
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| emb[t * D..(t + 1) * D].iter().map(|v| if gemma { v * (D as f32).sqrt() } else { *v }).collect())
        .collect();
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let window = if gemma && l % 6 < 5 { Some(3) } else { None };
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = rms(x, w.get(&n("attn_norm")));
            // Per head: Gemma's QK-norm, then rotary position.
            let project_heads = |proj: &str, norm: &str, heads: usize| {
                let mut y = matvec(w.get(&n(proj)), &h, heads * HD);
                for s in y.chunks_exact_mut(HD) {
                    if gemma {
                        let r = rms(s, w.get(&n(norm)));
                        s.copy_from_slice(&r);
                    }
                    rope(s, p, gemma);
                }
                y
            };
            qs.push(project_heads("attn_q", "attn_q_norm", HEADS));
            ks.push(project_heads("attn_k", "attn_k_norm", KV_HEADS));
            vs.push(matvec(w.get(&n("attn_v")), &h, KV_HEADS * HD));
        }
        for p in 0..xs.len() {
            let mut attn = vec![0.0f32; HEADS * HD];
            for hh in 0..HEADS {
                let kvh = hh / (HEADS / KV_HEADS);
                let lo = window.map_or(0, |w: usize| (p + 1).saturating_sub(w));
                let scores: Vec<f32> = (lo..=p)
                    .map(|s| {
                        (0..HD).map(|i| qs[p][hh * HD + i] * ks[s][kvh * HD + i]).sum::<f32>() / (HD as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, s) in (lo..=p).enumerate() {
                    for i in 0..HD {
                        attn[hh * HD + i] += e[j] / z * vs[s][kvh * HD + i];
                    }
                }
            }
            let mut a = matvec(w.get(&n("attn_output")), &attn, D);
            if gemma {
                a = rms(&a, w.get(&n("post_attention_norm")));
            }
            xs[p].iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        }
        for x in xs.iter_mut() {
            let h = rms(x, w.get(&n("ffn_norm")));
            let g = matvec(w.get(&n("ffn_gate")), &h, FF);
            let u = matvec(w.get(&n("ffn_up")), &h, FF);
            let act: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| {
                    let a = if gemma {
                        0.5 * g * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
                    } else {
                        g / (1.0 + (-g).exp())
                    };
                    a * u
                })
                .collect();
            let mut m = matvec(w.get(&n("ffn_down")), &act, D);
            if gemma {
                m = rms(&m, w.get(&n("post_ffw_norm")));
            }
            x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
        }
    }
    xs.iter().map(|x| matvec(emb, &rms(x, w.get("output_norm.weight")), VOCAB)).collect()
}

fn check(arch: &str, gemma: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let w = random_model(&path, arch, gemma);
    let file = GgufFile::open(&path).unwrap();
    let model =
        if gemma { gemma3::load(&file, LoadOptions::default()) } else { llama::load(&file, LoadOptions::default()) }
            .unwrap();
    let tokens: Vec<u32> = vec![3, 17, 5, 39, 0, 22, 8];
    let want = reference_logits(&w, &tokens.iter().map(|&t| t as usize).collect::<Vec<_>>(), gemma);
    // Whole sequence at once, and the same sequence fed in two pieces through the cache.
    let mut cache = model.new_cache(tokens.len());
    let h = model.forward_hidden(&tokens, &mut cache).unwrap();
    let got = model.logits(&h, tokens.len());
    let mut cache2 = model.new_cache(tokens.len());
    let h1 = model.forward_hidden(&tokens[..4], &mut cache2).unwrap();
    let h2 = model.forward_hidden(&tokens[4..], &mut cache2).unwrap();
    let got2 = [model.logits(&h1, 4), model.logits(&h2, 3)].concat();
    for (p, row) in want.iter().enumerate() {
        for (v, &r) in row.iter().enumerate() {
            for g in [got[p * VOCAB + v], got2[p * VOCAB + v]] {
                // f32 sums over at most 48 terms of O(1) values: errors stay near 1e-5.
                assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "{arch}: position {p}, logit {v}: {g} vs {r}");
            }
        }
    }
}

#[test]
fn tiny_llama_matches_scalar_reference() {
    check("llama", false);
}

#[test]
fn tiny_gemma3_matches_scalar_reference() {
    check("gemma3", true);
}
