//! Equivalent transforms folded into the weights before quantization (issue 18): the
//! transformed model computes the same function as the source (up to f32 rounding) and is
//! an ordinary GGUF llama.cpp loads, but its weights round with less damage.
//!
//! - **rotate** (QuaRot / SpinQuant's R1): every RMSNorm weight is folded into the linears
//!   that read the norm's output (the norms become 1), then the residual stream is rotated
//!   by a seeded randomized Hadamard matrix Q ([`orthogonal`]): embedding rows E·Q, input
//!   projections (q, k, v, gate, up, output head) W·Q, output projections (o, down) Qᵀ·W.
//!   RMSNorm without a weight commutes with Q (‖Qᵀx‖ = ‖x‖). A **tied embedding is untied**:
//!   the lookup table becomes E·Q but the head E·diag(g)·Q (g the final norm weight), so the
//!   file gains a vocab × d `output.weight` — its bytes count against any size target
//!   (smollm2: 28.3M more weights). Llama-family only: Gemma 3 normalises each block's
//!   output (post-attention and post-FFN RMSNorm with their own weights) *before* adding it
//!   to the residual stream, and a rotation cannot pass through a weighted RMSNorm there
//!   without an online rotation llama.cpp does not have; for Gemma 3 use `awq`.
//! - **awq**: AWQ's per-input-channel scales ([`awq`]) for q/k/v (folded into the
//!   attention norm), gate/up (into the FFN norm), down (into up's rows) and o (into v's
//!   rows, one scale per KV-head channel), searched per group on the input Hessians of the
//!   calibration text with the type each tensor will be quantized to.
//!
//! Both together: rotate first, then AWQ on the rotated model (the Hessians of the
//! rotated inputs are Qᵀ·G⁻¹·H·G⁻¹·Q, computed, not re-measured).
//!
//! The transformed model is written once as an F32 GGUF under `$LOWBIT_HOME/transformed/`
//! (keyed by source, transforms, calibration and types) and quantized from there like any
//! source. Its tensors are held in f32 memory while it is made: fine for the zoo models, not
//! for 8B-class ones (a streaming version needs only the norms and Q in memory).

pub mod awq;
use crate::method::orthogonal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::calibrate::Hessian;
use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::format::GgmlType;
use crate::gguf::{is_companion, tensor_specs, GgufFile, GgufWriter, Value};
use crate::method::MethodOptions;

/// The rotation's seed (fixed: the same command gives the same file).
pub const SEED: u64 = 0x5eed_0f10_7a7e;

/// Which transforms to fold in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Transforms {
    /// The residual-stream rotation (llama family).
    pub rotate: bool,
    /// AWQ channel scales.
    pub awq: bool,
}

impl Transforms {
    /// Parses `none`, `awq`, `rotate`, `rotate+awq` (or comma-separated).
    pub fn parse(text: &str) -> Result<Transforms> {
        let mut t = Transforms::default();
        for part in text.split([',', '+']).map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "awq" => t.awq = true,
                "rotate" => t.rotate = true,
                other => {
                    return Err(Error::Usage(format!(
                        "--transform '{other}': expected awq, rotate, rotate+awq or none"
                    )))
                }
            }
        }
        Ok(t)
    }

    /// Nothing to do.
    pub fn is_none(&self) -> bool {
        !self.rotate && !self.awq
    }

    /// The name reports and metadata use (`rotate+awq`, `none`).
    pub fn name(&self) -> String {
        let parts: Vec<&str> =
            [(self.rotate, "rotate"), (self.awq, "awq")].iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}

/// What was folded in.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TransformReport {
    /// The transforms.
    pub transforms: String,
    /// With a rotation: its order, whether it is a randomized Hadamard matrix (else random
    /// orthogonal), and whether the tied embedding was untied.
    pub rotation: Option<(usize, bool, bool)>,
    /// With AWQ: each group's choice, by its first weight's name.
    pub awq: Vec<(String, awq::AwqChoice)>,
}

/// A model's tensors in f32, in file order.
struct Tensors {
    order: Vec<String>,
    map: HashMap<String, (Vec<u64>, Vec<f32>)>,
}

impl Tensors {
    fn get_mut(&mut self, path: &Path, name: &str) -> Result<&mut (Vec<u64>, Vec<f32>)> {
        self.map.get_mut(name).ok_or_else(|| Error::tensor(path, name, "missing: the transform needs it".to_string()))
    }
    fn get(&self, path: &Path, name: &str) -> Result<&(Vec<u64>, Vec<f32>)> {
        self.map.get(name).ok_or_else(|| Error::tensor(path, name, "missing: the transform needs it".to_string()))
    }
}

/// The shapes the transforms need, from the GGUF's metadata.
struct Shape {
    arch: String,
    d: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
}

impl Shape {
    fn read(g: &GgufFile) -> Result<Shape> {
        let arch = g.architecture().unwrap_or("").to_string();
        let get = |k: &str| g.arch_u64(k);
        let need = |k: &str| {
            get(k).map(|v| v as usize).ok_or_else(|| Error::Usage(format!("{}: no {arch}.{k}", g.path().display())))
        };
        let d = need("embedding_length")?;
        let n_head = need("attention.head_count")?.max(1);
        Ok(Shape {
            d,
            n_layer: need("block_count")?,
            n_head,
            n_head_kv: get("attention.head_count_kv").map_or(n_head, |v| v as usize).max(1),
            head_dim: get("attention.key_length").map_or(d / n_head, |v| v as usize),
            arch,
        })
    }
}

/// The transformed source for `transforms`, made once in `dir` (the quantize job uses
/// `$LOWBIT_HOME/transformed/`) and reused from there. `awq_type(name, columns)` is the type a weight will be
/// quantized to (AWQ's search measures rounding with it); `hessians` gives the source's
/// input Hessians by weight name (called only when AWQ needs them). `progress(done,
/// total)` counts AWQ groups.
pub fn transformed_source(
    dir: &Path,
    source: &Path,
    transforms: Transforms,
    key_extra: &str,
    awq_type: &dyn Fn(&str, usize) -> StorageType,
    hessians: &mut dyn FnMut() -> Result<HashMap<String, Arc<Hessian>>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf> {
    let g = crate::hf::open_model(source)?;
    let shape = Shape::read(&g)?;
    if transforms.rotate && shape.arch != "llama" {
        return Err(Error::Usage(format!(
            "{}: --transform rotate folds a residual-stream rotation into llama-family models; this is {}{}",
            source.display(),
            shape.arch,
            if shape.arch == "gemma3" {
                " — Gemma 3 normalises each block's output with a weighted RMSNorm before the residual add, \
                 which a folded rotation cannot pass: use --transform awq"
            } else {
                ""
            }
        )));
    }
    let key = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION"));
        h.update(crate::eval::file_identity(source));
        h.update(format!("{} {SEED}", transforms.name()));
        if transforms.awq {
            h.update(key_extra);
            for t in &g.tensors {
                let cols = t.dims.first().copied().unwrap_or(1) as usize;
                h.update(format!("{}={};", t.name, awq_type(&t.name, cols)));
            }
        }
        crate::hex(&h.finalize()[..12])
    };
    let out = dir.join(format!("{key}.gguf"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut t = load(&g)?;
    let mut report = TransformReport { transforms: transforms.name(), ..Default::default() };
    let mut q = None;
    if transforms.rotate {
        let (rot, hadamard) = orthogonal::random_orthogonal(shape.d, SEED);
        let untied = rotate(&mut t, source, &shape, &rot)?;
        report.rotation = Some((shape.d, hadamard, untied));
        q = Some(rot);
    }
    if transforms.awq {
        let mut h = hessians()?;
        if let Some(q) = &q {
            rotate_hessians(&mut h, &g, &shape, q)?;
        }
        report.awq = apply_awq(&mut t, source, &shape, &h, awq_type, progress)?;
    }
    write(&g, &t, &transforms, &out)?;
    let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
    crate::atomic::write_atomic(&out.with_extension("json"), &json)?;
    Ok(out)
}

fn load(g: &GgufFile) -> Result<Tensors> {
    let mut order = Vec::new();
    let mut map = HashMap::new();
    for t in &g.tensors {
        if is_companion(g, &t.name) {
            continue;
        }
        let values = g.dequantize(&t.name)?;
        g.release(&t.name);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(g.path(), &t.name, crate::quantize::damaged(i, values[i])));
        }
        order.push(t.name.clone());
        map.insert(t.name.clone(), (t.dims.clone(), values));
    }
    Ok(Tensors { order, map })
}

fn blk(i: usize, s: &str) -> String {
    format!("blk.{i}.{s}.weight")
}

/// Folds the norms into their readers, unties a tied head, rotates. Returns whether it
/// untied the embedding.
fn rotate(t: &mut Tensors, path: &Path, shape: &Shape, q: &[f32]) -> Result<bool> {
    let d = shape.d;
    let untied = !t.map.contains_key("output.weight");
    if untied {
        let embd = t.get(path, "token_embd.weight")?.clone();
        let at = t.order.iter().position(|n| n == "output_norm.weight").map_or(t.order.len(), |p| p + 1);
        t.order.insert(at, "output.weight".into());
        t.map.insert("output.weight".into(), embd);
    }
    let mut folds: Vec<(String, Vec<String>)> = (0..shape.n_layer)
        .flat_map(|i| {
            [
                (blk(i, "attn_norm"), vec![blk(i, "attn_q"), blk(i, "attn_k"), blk(i, "attn_v")]),
                (blk(i, "ffn_norm"), vec![blk(i, "ffn_gate"), blk(i, "ffn_up")]),
            ]
        })
        .collect();
    folds.push(("output_norm.weight".into(), vec!["output.weight".into()]));
    for (norm, readers) in &folds {
        let g = std::mem::replace(&mut t.get_mut(path, norm)?.1, vec![1.0; d]);
        for r in readers {
            scale_columns(&mut t.get_mut(path, r)?.1, &g);
        }
    }
    // Qᵀ, row-major: W·Q = matmul_wt(W, Qᵀ).
    let qt = transpose(q, d, d);
    let mut inputs = vec!["token_embd.weight".to_string(), "output.weight".to_string()];
    let mut outputs = Vec::new();
    for i in 0..shape.n_layer {
        inputs.extend(["attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"].map(|s| blk(i, s)));
        outputs.extend(["attn_output", "ffn_down"].map(|s| blk(i, s)));
    }
    for name in &inputs {
        let w = &mut t.get_mut(path, name)?.1;
        *w = times_q(w, d, &qt);
    }
    for name in &outputs {
        // Qᵀ·W = (Wᵀ·Q)ᵀ.
        let w = &mut t.get_mut(path, name)?.1;
        let m = w.len() / d;
        let wt = transpose(w, d, m);
        *w = transpose(&times_q(&wt, d, &qt), m, d);
    }
    Ok(untied)
}

/// W·Q for W with rows of `d` values, given Qᵀ.
fn times_q(w: &[f32], d: usize, qt: &[f32]) -> Vec<f32> {
    let rows = w.len() / d;
    let mut out = vec![0f32; w.len()];
    crate::tensor::matmul_wt(w, rows, d, qt, d, &mut out);
    out
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// W·diag(s) for W with rows of s.len() values.
fn scale_columns(w: &mut [f32], s: &[f32]) {
    for row in w.chunks_exact_mut(s.len()) {
        row.iter_mut().zip(s).for_each(|(x, s)| *x *= s);
    }
}

/// The source's Hessians of the inputs the rotation changed (those after the attention
/// and FFN norms), as the rotated model's: Qᵀ·G⁻¹·H·G⁻¹·Q with G the folded norm weight.
fn rotate_hessians(h: &mut HashMap<String, Arc<Hessian>>, g: &GgufFile, shape: &Shape, q: &[f32]) -> Result<()> {
    let d = shape.d;
    let qt = transpose(q, d, d);
    for i in 0..shape.n_layer {
        for (norm, readers) in [
            (blk(i, "attn_norm"), ["attn_q", "attn_k", "attn_v"].as_slice()),
            (blk(i, "ffn_norm"), ["ffn_gate", "ffn_up"].as_slice()),
        ] {
            let gw = g.dequantize(&norm)?;
            let Some(old) = h.get(&blk(i, readers[0])).cloned() else { continue };
            let mut m = old.xtx.to_vec();
            for a in 0..d {
                for b in 0..d {
                    let s = gw[a] * gw[b];
                    m[a * d + b] = if s == 0.0 { 0.0 } else { m[a * d + b] / s };
                }
            }
            // Qᵀ·M·Q = (M·Q)ᵀ·Q, M symmetric.
            let mq = times_q(&m, d, &qt);
            let rotated = times_q(&transpose(&mq, d, d), d, &qt);
            let new = Arc::new(Hessian { n: d, xtx: rotated.into(), count: old.count });
            for r in readers {
                h.insert(blk(i, r), new.clone());
            }
        }
    }
    Ok(())
}

/// Where a group's scales are divided back out.
enum Producer {
    /// A norm weight (one value per channel).
    Norm(String),
    /// A weight's rows (row r divided by the scale of column `column_of_row[r]`'s class).
    Rows(String),
}

/// One AWQ group: where its scales fold back, the weights reading the input, and the
/// column classes that must share a scale.
type Group<'a> = (Producer, Vec<String>, Option<&'a [usize]>);

/// Searches and folds AWQ scales for every block.
fn apply_awq(
    t: &mut Tensors,
    path: &Path,
    shape: &Shape,
    hessians: &HashMap<String, Arc<Hessian>>,
    awq_type: &dyn Fn(&str, usize) -> StorageType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(String, awq::AwqChoice)>> {
    let options = MethodOptions::default();
    let hd = shape.head_dim;
    let group = shape.n_head / shape.n_head_kv;
    // o's column c reads v's row class(c): the KV head of query head c / hd.
    let o_class: Vec<usize> = (0..shape.n_head * hd).map(|c| (c / hd) / group * hd + c % hd).collect();
    let mut choices = Vec::new();
    let total = shape.n_layer * 4;
    progress(0, total);
    for i in 0..shape.n_layer {
        let groups: [Group; 4] = [
            (Producer::Norm(blk(i, "attn_norm")), vec![blk(i, "attn_q"), blk(i, "attn_k"), blk(i, "attn_v")], None),
            (Producer::Norm(blk(i, "ffn_norm")), vec![blk(i, "ffn_gate"), blk(i, "ffn_up")], None),
            (Producer::Rows(blk(i, "ffn_up")), vec![blk(i, "ffn_down")], None),
            (Producer::Rows(blk(i, "attn_v")), vec![blk(i, "attn_output")], Some(&o_class)),
        ];
        for (producer, readers, tie) in groups {
            crate::interrupt::check()?;
            let Some(h) = hessians.get(&readers[0]) else { continue };
            let (s, choice) = {
                let mut weights = Vec::new();
                for r in &readers {
                    let (dims, values) = t.get(path, r)?;
                    if dims[0] as usize != h.n {
                        return Err(Error::tensor(path, r, format!("rows of {} values, Hessian of {}", dims[0], h.n)));
                    }
                    weights.push(awq::GroupWeight { values, ty: awq_type(r, h.n) });
                }
                awq::search(&weights, h, tie, &options)?
            };
            if choice.alpha > 0.0 {
                for r in &readers {
                    scale_columns(&mut t.get_mut(path, r)?.1, &s);
                }
                match producer {
                    Producer::Norm(n) => {
                        let w = &mut t.get_mut(path, &n)?.1;
                        w.iter_mut().zip(&s).for_each(|(x, s)| *x /= s);
                    }
                    Producer::Rows(n) => {
                        // One scale per producer row: the class's (every column of a class
                        // carries the same scale).
                        let mut row_scale = vec![1f32; s.len()];
                        for (c, &sc) in s.iter().enumerate() {
                            let r = tie.map_or(c, |k| k[c]);
                            row_scale[r] = sc;
                        }
                        let (dims, w) = t.get_mut(path, &n)?;
                        let cols = dims[0] as usize;
                        let rows = w.len() / cols;
                        row_scale.truncate(rows);
                        for (row, sc) in w.chunks_exact_mut(cols).zip(&row_scale) {
                            row.iter_mut().for_each(|x| *x /= sc);
                        }
                    }
                }
            }
            choices.push((readers[0].clone(), choice));
            progress(choices.len(), total);
        }
    }
    Ok(choices)
}

/// Writes the transformed model as an F32 GGUF with the source's metadata.
fn write(g: &GgufFile, t: &Tensors, transforms: &Transforms, out: &Path) -> Result<()> {
    let mut metadata: Vec<(String, Value)> = g
        .metadata
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "general.file_type") && !k.starts_with("lowbit."))
        .cloned()
        .collect();
    metadata.push(("general.file_type".into(), Value::U32(0)));
    metadata.push(("lowbit.transform".into(), Value::String(transforms.name())));
    let f32_type = StorageType::Ggml(GgmlType::F32);
    let mut specs = Vec::new();
    for name in &t.order {
        specs.extend(tensor_specs(name, &t.map[name].0, f32_type).expect("F32 fits every shape"));
    }
    let mut w = GgufWriter::create(out, &metadata, specs)?;
    for name in &t.order {
        let bytes: Vec<u8> = t.map[name].1.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(name, &bytes)?;
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_names_parse() {
        assert_eq!(Transforms::parse("rotate+awq").unwrap(), Transforms { rotate: true, awq: true });
        assert_eq!(Transforms::parse("awq").unwrap().name(), "awq");
        assert_eq!(Transforms::parse("awq,rotate").unwrap().name(), "rotate+awq");
        assert!(Transforms::parse("none").unwrap().is_none());
        assert!(Transforms::parse("spin").is_err());
    }
}
