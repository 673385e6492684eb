//! Model architectures: configuration, weights and forward passes. Every linear layer is
//! a [`Linear`], the one place where later stages record inputs for calibration and swap
//! in quantized weights.

pub mod bert;
pub mod decoder;
pub mod gemma3;
pub mod kv;
pub mod llama;

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::activation::{fake_quantize_row, vec_dot_type};
use crate::format::GgmlType;
use crate::gguf::{GgufFile, TensorType, Value};
use crate::kernels::PackedMatrix;
use crate::method::incoherence::Rotation;
use crate::method::low_rank::LowRank;
use crate::tensor::matmul_wt;
use crate::tokenizer::Tokenizer;

/// A linear layer's weights (`out_features` rows of `in_features`, row-major).
pub enum Weight {
    /// Dense f32: what a float checkpoint holds, or a matrix quantized in memory and
    /// decoded (sequential GPTQ).
    Dense(Vec<f32>),
    /// In its stored format (borrowed from the memory-mapped file): the quantized
    /// runtime computes on it directly ([`crate::kernels`]).
    Packed(PackedMatrix),
    /// In its stored format with what lowbit adds around a stored matrix: an input
    /// rotation and/or a low-rank branch ([`Extended`]).
    Extended(Extended),
}

/// A stored matrix `Ŵ'` with lowbit's additions: the weights are `(Ŵ' + A·B)·Q` — with
/// an input rotation `Q` ([`crate::method::incoherence`]) the stored rows (and the branch)
/// multiply rotated inputs `Q·x`; a low-rank branch `A·B` ([`crate::method::low_rank`])
/// runs as two thin products.
#[derive(Clone)]
pub struct Extended {
    /// The stored matrix.
    pub matrix: PackedMatrix,
    /// The input rotation, if the matrix is stored rotated.
    pub rotation: Option<std::sync::Arc<Rotation>>,
    /// The low-rank branch, if any (in the rotated basis when both).
    pub branch: Option<std::sync::Arc<LowRank>>,
}

impl Weight {
    /// The weights as f32 (a copy for packed weights: for the paths that need dense
    /// values, one layer at a time — GPTQ, statistics).
    pub fn dense(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Weight::Dense(v) => std::borrow::Cow::Borrowed(v),
            Weight::Packed(p) => std::borrow::Cow::Owned(p.to_dense()),
            Weight::Extended(e) => {
                let mut w = e.matrix.to_dense();
                if let Some(lr) = &e.branch {
                    lr.add_to(&mut w);
                }
                if let Some(r) = &e.rotation {
                    w = r.unrotate_rows(&w, e.matrix.rows());
                }
                std::borrow::Cow::Owned(w)
            }
        }
    }

    /// The stored matrix, for weights kept in their stored format.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        match self {
            Weight::Dense(_) => None,
            Weight::Packed(p) => Some(p),
            Weight::Extended(e) => Some(&e.matrix),
        }
    }

    /// The low-rank branch, if the weights have one.
    pub fn branch(&self) -> Option<&LowRank> {
        match self {
            Weight::Extended(e) => e.branch.as_deref(),
            _ => None,
        }
    }

    /// The input rotation, if the stored matrix multiplies rotated inputs.
    pub fn rotation(&self) -> Option<&std::sync::Arc<Rotation>> {
        match self {
            Weight::Extended(e) => e.rotation.as_ref(),
            _ => None,
        }
    }

    /// Bytes held in memory or mapped.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Weight::Dense(v) => 4 * v.len(),
            Weight::Packed(p) => p.stored_bytes(),
            Weight::Extended(e) => {
                e.matrix.stored_bytes() + e.branch.as_ref().map_or(0, |lr| 2 * (lr.a.len() + lr.b.len()))
            }
        }
    }

    /// `t` rows of `x` (each `in_f` wide) times the weights transposed: `t × out_f`.
    pub fn project(&self, x: &[f32], t: usize, in_f: usize, out_f: usize, act_quant: Option<GgmlType>) -> Vec<f32> {
        match self {
            Weight::Dense(w) => project(x, t, in_f, w, out_f, act_quant),
            Weight::Packed(p) => {
                let mut out = crate::scratch::zeroed(t * out_f);
                p.matmul(x, t, act_quant, &mut out);
                out
            }
            Weight::Extended(e) => {
                let rotated = e.rotation.as_ref().map(|r| r.rotate_rows(x, t));
                let x = rotated.as_deref().unwrap_or(x);
                let mut out = crate::scratch::zeroed(t * out_f);
                e.matrix.matmul(x, t, act_quant, &mut out);
                if let Some(lr) = &e.branch {
                    lr.apply(x, t, &mut out);
                }
                out
            }
        }
    }
}

/// A linear layer `y = x·Wᵀ (+ b)`.
pub struct Linear {
    /// The tensor name it was loaded from.
    pub name: String,
    /// Weights, `out_features` rows of `in_features`.
    pub weight: Weight,
    /// Optional bias.
    pub bias: Option<Vec<f32>>,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
    /// When set, inputs are quantized to this type first (llama.cpp's CPU numerics).
    pub act_quant: Option<GgmlType>,
}

/// Per-column sums of squared inputs of one linear layer, and the number of input rows:
/// the importance matrix's raw statistics (llama.cpp's `in_sum2` and `counts`); and,
/// when asked for, the full Σ xxᵀ (the input Hessian GPTQ needs).
#[derive(Debug)]
pub struct InputRecorder {
    sums: std::sync::Mutex<(Vec<f64>, u64)>,
    xtx: Option<std::sync::Mutex<Vec<f64>>>,
}

impl InputRecorder {
    /// A recorder of per-column squares for inputs `in_features` wide.
    pub fn new(in_features: usize) -> InputRecorder {
        InputRecorder { sums: std::sync::Mutex::new((vec![0.0; in_features], 0)), xtx: None }
    }

    /// A recorder that also sums xxᵀ (in_features² values).
    pub fn with_hessian(in_features: usize) -> InputRecorder {
        let xtx = Some(std::sync::Mutex::new(vec![0.0; in_features * in_features]));
        InputRecorder { xtx, ..InputRecorder::new(in_features) }
    }

    /// Adds `t` rows of `x`. Each call's products are summed in f32 (one batch of
    /// rows), the running totals in f64.
    pub fn record(&self, x: &[f32], t: usize) {
        let in_f = x.len() / t.max(1);
        let mut partial = vec![0.0f64; in_f];
        for row in x.chunks_exact(in_f) {
            for (s, &v) in partial.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        if let Some(xtx) = &self.xtx {
            // The lower triangle only; `hessian` mirrors it.
            crate::tensor::gram_lower_accumulate(x, t, in_f, xtx);
        }
        let mut g = self.sums.lock().expect("recorder lock");
        g.0.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
        g.1 += t as u64;
    }

    /// Rows seen.
    pub fn rows(&self) -> u64 {
        self.sums.lock().expect("recorder lock").1
    }

    /// (Σ x² per column, rows seen).
    pub fn totals(&self) -> (Vec<f64>, u64) {
        self.sums.lock().expect("recorder lock").clone()
    }

    /// Σ xxᵀ (row-major, in_features², summed in f64, returned as f32), when recorded.
    pub fn hessian(&self) -> Option<Vec<f32>> {
        self.xtx.as_ref().map(|m| {
            let n = self.sums.lock().expect("recorder lock").0.len();
            let total = m.lock().expect("recorder lock");
            let mut h: Vec<f32> = total.iter().map(|&v| v as f32).collect();
            crate::tensor::mirror_lower(&mut h, n);
            h
        })
    }
}

/// `t` rows of `x` (each `in_f` wide) times `weight`ᵀ (`out_f` rows of `in_f`), with the
/// rows first quantized to `act_quant` when it is set (llama.cpp numerics). The one
/// projection every linear layer and tied output layer goes through.
pub fn project(
    x: &[f32],
    t: usize,
    in_f: usize,
    weight: &[f32],
    out_f: usize,
    act_quant: Option<GgmlType>,
) -> Vec<f32> {
    let mut out = crate::scratch::zeroed(t * out_f);
    if let Some(ty) = act_quant {
        let mut xq = x.to_vec();
        xq.chunks_exact_mut(in_f).for_each(|r| fake_quantize_row(r, ty));
        matmul_wt(&xq, t, in_f, weight, out_f, &mut out);
    } else {
        matmul_wt(x, t, in_f, weight, out_f, &mut out);
    }
    out
}

/// Applies several layers to the same `t` rows of `x` (a block's q/k/v, or gate/up): for
/// packed weights, one parallel pass over all of them ([`crate::kernels::matmul_batch`]);
/// the same results as calling [`Linear::forward`] on each.
pub fn forward_many(layers: &[&Linear], x: &[f32], t: usize) -> Vec<Vec<f32>> {
    let all_packed = layers.iter().all(|l| l.weight.packed().is_some());
    // Layers that share an input rotation rotate the input once; mixed ones go alone.
    let rotation = layers.first().and_then(|l| l.weight.rotation()).cloned();
    let same_rotation =
        layers.iter().all(|l| l.weight.rotation().map(|r| (r.n, r.seed)) == rotation.as_ref().map(|r| (r.n, r.seed)));
    if !all_packed || !same_rotation {
        return layers.iter().map(|l| l.forward(x, t)).collect();
    }
    let rotated = rotation.map(|r| r.rotate_rows(x, t));
    let x = rotated.as_deref().unwrap_or(x);
    let mut outs: Vec<Vec<f32>> = layers.iter().map(|l| crate::scratch::zeroed(t * l.out_features)).collect();
    let mut products: Vec<crate::kernels::Product> = layers
        .iter()
        .zip(outs.iter_mut())
        .map(|(l, out)| {
            let m = l.weight.packed().expect("checked above");
            crate::kernels::Product { m, act: l.act_quant, out }
        })
        .collect();
    crate::kernels::matmul_batch(x, t, &mut products);
    for (l, out) in layers.iter().zip(outs.iter_mut()) {
        if let Some(lr) = l.weight.branch() {
            lr.apply(x, t, out);
        }
        l.add_bias(out);
    }
    outs
}

impl Linear {
    fn add_bias(&self, out: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(self.out_features) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
    }

    /// Applies the layer to `t` rows of `x`.
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = self.weight.project(x, t, self.in_features, self.out_features, self.act_quant);
        self.add_bias(&mut out);
        out
    }
}

/// Reads named tensors from a GGUF file as f32, checking shapes.
pub struct GgufWeights<'a> {
    /// The file.
    pub file: &'a GgufFile,
    /// Reproduce llama.cpp's activation quantization in every linear layer.
    pub llama_cpp_numerics: bool,
    /// How the model's KV caches store keys and values.
    pub kv_type: kv::KvType,
}

impl GgufWeights<'_> {
    /// Tensor `name` as f32, checking its GGUF dims (innermost first) equal `dims`.
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let info = self
            .file
            .tensor_info(name)
            .ok_or_else(|| Error::tensor(self.file.path(), name, "required by the architecture but missing"))?;
        let have: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        let mut want = dims.to_vec();
        while want.len() > have.len() && want.last() == Some(&1) {
            want.pop();
        }
        if have != want {
            return Err(Error::tensor(self.file.path(), name, format!("shape {have:?}, expected {want:?}")));
        }
        if let TensorType::Unknown(id) = info.ty {
            return Err(Error::tensor(self.file.path(), name, format!("unknown tensor type {id}")));
        }
        let v = self.file.dequantize(name)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(self.file.path(), name, format!("element {i} is {} (NaN/inf weights)", v[i])));
        }
        Ok(v)
    }

    /// Tensor `name`, `rows` rows of `cols` values, in its stored format (no copy: bytes
    /// borrowed from the memory map; a tensor a Hugging Face folder stores differently,
    /// such as llama's q/k rows, is transformed into an owned copy). Checks the shape and
    /// that every value decodes to a finite number (one pass over the rows, nothing kept).
    pub fn packed(&self, name: &str, cols: usize, rows: usize) -> Result<PackedMatrix> {
        let (info, bytes) = self
            .file
            .tensor_shared(name)
            .map_err(|_| Error::tensor(self.file.path(), name, "required by the architecture but missing"))?;
        let have: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        if have != [cols, rows] {
            return Err(Error::tensor(self.file.path(), name, format!("shape {have:?}, expected {:?}", [cols, rows])));
        }
        let TensorType::Known(st) = info.ty else {
            return Err(Error::tensor(self.file.path(), name, format!("unknown tensor type {}", info.ty)));
        };
        let codebook = crate::gguf::codebook_of(self.file, name, st)?;
        let m = PackedMatrix::new(st, bytes, codebook.as_deref(), rows, cols)
            .map_err(|e| Error::tensor(self.file.path(), name, e.to_string()))?;
        if let Some((i, v)) = m.first_non_finite() {
            return Err(Error::tensor(self.file.path(), name, format!("element {i} is {v} (NaN/inf weights)")));
        }
        // The scan read every page; they come back when the matrix is used. Without this,
        // loading a model counts its whole file as resident at once.
        self.file.release(name);
        Ok(m)
    }

    /// Whether tensor `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.file.tensor_info(name).is_some()
    }

    /// A linear layer stored as GGUF dims [in, out].
    pub fn linear(&self, name: &str, in_features: usize, out_features: usize) -> Result<Linear> {
        let packed = self.packed(name, in_features, out_features)?;
        let branch = crate::gguf::low_rank_of(self.file, name)?.map(std::sync::Arc::new);
        let rotation = crate::gguf::rotation_of(self.file, name)?.map(|seed| Rotation::shared(in_features, seed));
        let weight = match (branch, rotation) {
            (None, None) => Weight::Packed(packed),
            (branch, rotation) => Weight::Extended(Extended { matrix: packed, rotation, branch }),
        };
        let act_quant = self.act_quant_for(name);
        Ok(Linear { name: name.to_string(), weight, bias: None, in_features, out_features, act_quant })
    }

    /// The activation type llama.cpp would quantize inputs to before multiplying by
    /// tensor `name` (only in llama.cpp-numerics mode; `None` means exact f32).
    /// lowbit's VQ formats have no ggml counterpart: they take the activations llama.cpp
    /// gives its 32-value block types (Q8_0), which the byte-table kernel multiplies as
    /// integers (`kernels::vq_bytes::rows_q8`).
    pub fn act_quant_for(&self, name: &str) -> Option<GgmlType> {
        if !self.llama_cpp_numerics {
            return None;
        }
        let info = self.file.tensor_info(name)?;
        match info.ty {
            TensorType::Known(crate::format::storage::StorageType::Vq(_)) => {
                info.dims.first().is_some_and(|c| c.is_multiple_of(32)).then_some(GgmlType::Q8_0)
            }
            // 4-bit int/NF4/FP4 groups: Q8_0 activations and an integer dot product of the
            // levels as bytes, as llama.cpp's Q4_0 and IQ4_NL (`kernels::nibbles::rows_q8`).
            TensorType::Known(crate::format::storage::StorageType::Native(f))
                if crate::kernels::nibbles_take_q8(&f) =>
            {
                info.dims.first().is_some_and(|c| c.is_multiple_of(64)).then_some(GgmlType::Q8_0)
            }
            _ => info.ty.ggml().and_then(vec_dot_type),
        }
    }

    /// A required integer hyper-parameter.
    pub fn hparam(&self, key: &str) -> Result<usize> {
        self.file
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::format(self.file.path(), format!("missing or non-integer hyper-parameter '{key}'")))
    }

    /// An optional float hyper-parameter.
    pub fn hparam_f32(&self, key: &str) -> Option<f32> {
        self.file.get(key).and_then(Value::as_f64).map(|v| v as f32)
    }
}

/// The position scale of linear rope scaling (`<arch>.rope.scaling.factor` f → 1/f; 1
/// without scaling). Other scaling types (YaRN, LongRoPE) are refused by name.
pub(crate) fn rope_scale(w: &GgufWeights, arch: &str) -> Result<f32> {
    let kind = w.file.get(&format!("{arch}.rope.scaling.type")).and_then(Value::as_str).unwrap_or("linear");
    let factor = w.hparam_f32(&format!("{arch}.rope.scaling.factor")).unwrap_or(1.0);
    match kind {
        "none" => Ok(1.0),
        "linear" if factor > 0.0 => Ok(1.0 / factor),
        other => Err(Error::unsupported(
            w.file.path(),
            format!(
                "rope scaling '{other}' with factor {factor} (lowbit runs linear scaling and Llama 3.1's rope_freqs)"
            ),
        )),
    }
}

/// A causal language model: tokens in, next-token logits out.
pub trait CausalLm: Send + Sync {
    /// Vocabulary size (width of a logits row).
    fn vocab_size(&self) -> usize;
    /// Hidden width.
    fn hidden_size(&self) -> usize;
    /// A fresh KV cache for sequences of up to `max_tokens`.
    fn new_cache(&self, max_tokens: usize) -> decoder::KvCache;
    /// Runs `tokens` (positions `cache.len()`…) and returns final hidden states, one row
    /// per token, already normalised for the output layer.
    fn forward_hidden(&self, tokens: &[u32], cache: &mut decoder::KvCache) -> Result<Vec<f32>>;
    /// Runs several independent sequences in one pass (each its new tokens after what its
    /// own cache holds); their hidden rows come back one sequence after the other. One
    /// sequence gives exactly `forward_hidden`'s result; more share each weight pass.
    fn forward_batch(&self, seqs: &mut [(&[u32], &mut decoder::KvCache)]) -> Result<Vec<f32>>;
    /// Logits for `t` rows of final hidden states.
    fn logits(&self, hidden: &[f32], t: usize) -> Vec<f32>;
    /// Rows `r0..` of the output matrix (the token embedding where they are tied) as f32,
    /// as many as `out` holds (`hidden_size` values each): the weights whose dot product
    /// with a final hidden state is that vocabulary entry's logit.
    fn output_rows(&self, r0: usize, out: &mut [f32]);
    /// Applies the final norm to hidden states that came out of the last block (what
    /// `forward_hidden` does after [`CausalLm::run_block`]'s work), ready for `logits`.
    fn final_norm(&self, x: &mut [f32]);
    /// The weights of tensor `name` (a block matrix, the token embedding or the output
    /// matrix), to swap in other values (sensitivity measurement); `None` for others.
    fn weight_mut(&mut self, name: &str) -> Option<&mut Weight>;
    /// The blocks' linear layers (not the output projection), for calibration and for
    /// swapping in quantized weights.
    fn block_linears_mut(&mut self) -> Vec<&mut Linear>;
    /// Number of blocks (for block-by-block work: sequential calibration).
    fn block_count(&self) -> usize;
    /// The first block's input for `tokens` (the scaled embeddings).
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Runs block `il` in place on `t` rows of hidden states, one sequence from position 0.
    fn run_block(&self, il: usize, x: &mut [f32], t: usize);
    /// [`CausalLm::run_block`] with the block's layer named `swap.name` replaced by
    /// `swap`, the model itself unchanged — so several such runs can share it at once
    /// (sensitivity probes of different tensors).
    fn run_block_swapped(&self, il: usize, x: &mut [f32], t: usize, swap: &Linear);
    /// The distinct inputs of block `il`'s linear layers for `t` rows of hidden states `x`
    /// (the rows those layers multiply in [`CausalLm::run_block`]), each with the name of the
    /// first layer that reads it, in the block's order. With `advance`, `x` becomes the
    /// block's output (as [`CausalLm::run_block`] leaves it); without, `x` is left as it
    /// was and the block's last projection is skipped, a quarter of a block's
    /// multiply-adds (a statistics pass that discards the output: sequential GPTQ).
    fn block_inputs(&self, il: usize, x: &mut [f32], t: usize, advance: bool) -> Vec<(String, Vec<f32>)>;
    /// Block `il`'s linear layers.
    fn block_linears_of(&mut self, il: usize) -> Vec<&mut Linear>;
    /// Bytes of weight matrices one generated token reads: every block's linear layers
    /// and the output matrix (the bound on generation speed is bandwidth / this).
    fn weight_bytes_per_token(&self) -> u64;
}

/// A loaded language model and its tokenizer.
pub struct LoadedLm {
    /// The model.
    pub model: Box<dyn CausalLm>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Architecture name.
    pub architecture: String,
    /// The context length the model was trained for (`<arch>.context_length`,
    /// `max_position_embeddings`), when the file says.
    pub context_length: Option<usize>,
}

/// How to load a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Quantize activations before each linear layer exactly as llama.cpp's CPU backend
    /// does, so perplexities match `llama-perplexity` on the same file. Off: exact f32.
    pub llama_cpp_numerics: bool,
    /// How the KV cache stores keys and values (`f32` exact; llama.cpp's cache types;
    /// KVQuant-style low bits).
    pub kv_type: kv::KvType,
}

/// Opens a language model: a GGUF file of any supported architecture, or a Hugging Face
/// folder of one (read as the GGUF llama.cpp's converter would write: `crate::hf`).
pub fn load_lm(path: &Path, opts: LoadOptions) -> Result<LoadedLm> {
    load_gguf_lm(path, opts)
}

/// Opens a language model of any supported architecture from a GGUF file or a Hugging
/// Face folder.
pub fn load_gguf_lm(path: &Path, opts: LoadOptions) -> Result<LoadedLm> {
    load_lm_from(&crate::hf::open_model(path)?, opts)
}

/// A language model over an open file: its weights share `file`'s memory map (so
/// `file.release(name)` drops a tensor's pages from the model's resident memory too).
pub fn load_lm_from(file: &GgufFile, opts: LoadOptions) -> Result<LoadedLm> {
    let path = file.path();
    let arch = file.architecture().ok_or_else(|| Error::format(path, "general.architecture is missing"))?.to_string();
    let tokenizer = Tokenizer::from_gguf(file)?;
    let model: Box<dyn CausalLm> = match arch.as_str() {
        "llama" | "mistral" | "qwen2" | "qwen3" => Box::new(llama::load(file, opts)?),
        "gemma3" => Box::new(gemma3::load(file, opts)?),
        other => {
            return Err(Error::unsupported(
                path,
                format!("architecture '{other}' (supported: llama, mistral, qwen2, qwen3, gemma3)"),
            ))
        }
    };
    let context_length =
        file.get(&format!("{arch}.context_length")).and_then(|v| v.as_u64()).map(|v| v as usize).filter(|&v| v > 0);
    Ok(LoadedLm { model, tokenizer, architecture: arch, context_length })
}
