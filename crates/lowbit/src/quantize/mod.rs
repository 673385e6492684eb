//! `lowbit quantize`: source GGUF → plan → quantized GGUF. Tensors stream one at a time
//! (decode to f32, encode rows in parallel, write), so memory stays near the largest
//! tensor; the output is written to a temporary file and renamed into place, and the
//! input is never overwritten. A tensor whose source type already is its target type is
//! copied byte for byte (as llama-quantize does), so re-quantizing a model to the mix it
//! came in reproduces it exactly.
//!
//! [`run`] is the whole job in one call (calibrate → plan → quantize → write), as the CLI
//! and the sweep use it; [`quantize_gguf`] is the writing half, given resolved options.

mod job;

pub use job::{mix_for_type, plan_job, resolve, run, sensitivities, CalibrationInput, QuantizeJob, Stage};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::calibrate::Hessian;
use crate::error::{Error, Result};
use crate::format::encode::EncodeError;
use crate::format::storage::StorageType;
use crate::format::vq::codebook_name;
use crate::gguf::{
    codebook_of, incoherence_entry, is_companion, low_rank_names, low_rank_of, low_rank_specs, native_entry,
    rotation_of, tensor_specs, GgufFile, GgufWriter, TensorSpec, TensorType, Value, ValueType,
};
use crate::method::{quantize_tensor, Calibration, Encoded, Method, MethodOptions, VqFit};
use crate::plan::{allows_quantization, make_plan, Mix, ModelShape, Override, PlannedTensor, TensorEntry};

/// What to produce.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The named mix (default type plus llama.cpp's promotion rules).
    pub mix: Mix,
    /// Per-tensor `REGEX=TYPE` overrides, first match wins.
    pub overrides: Vec<Override>,
    /// How tensors are quantized ([`Method::Gptq`] for the tensors with a Hessian in
    /// `hessians`; the others fall back to the search).
    pub method: Method,
    /// Per-tensor column importances (an importance matrix), by tensor name.
    pub importance: Option<HashMap<String, Vec<f32>>>,
    /// Input Hessians by tensor name: with [`Method::Gptq`], every weight that has one and
    /// whose target is a ggml block type, a native group format or a VQ format is
    /// quantized by GPTQ ([`crate::method::quantize_tensor`]); the rest (embedding,
    /// output) by the importance-weighted search.
    pub hessians: Option<HashMap<String, Arc<Hessian>>>,
    /// Tensors already encoded (by [`crate::sequential::sequential_gptq`]), by name; they
    /// are written as given.
    pub pre_encoded: crate::sequential::checkpoint::PreEncoded,
    /// Method tunables (GPTQ dampening, k-means, …).
    pub method_options: MethodOptions,
    /// With a rank, every quantized block matrix gets a low-rank branch of that rank fitted
    /// to its quantization error ([`crate::method::low_rank`]; lowbit-only files).
    pub low_rank: Option<usize>,
    /// Store every block matrix whose type is lowbit-native or VQ rotated on its input side
    /// (per-layer incoherence, [`crate::method::incoherence`]); the runtime rotates inputs.
    pub incoherence: bool,
}

impl QuantizeOptions {
    /// `mix` by `method`, with no overrides, statistics, branch or rotation — the
    /// starting point the other fields are set from.
    pub fn new(mix: Mix, method: Method) -> QuantizeOptions {
        QuantizeOptions {
            mix,
            overrides: vec![],
            method,
            importance: None,
            hessians: None,
            pre_encoded: Default::default(),
            method_options: Default::default(),
            low_rank: None,
            incoherence: false,
        }
    }

    /// The method's name as reports show it (`gptq` when Hessians drive it).
    pub fn method_name(&self) -> &'static str {
        if !self.pre_encoded.is_empty() {
            SEQUENTIAL_GPTQ
        } else if self.method == Method::Gptq && self.hessians.is_some() {
            "gptq"
        } else if self.importance.is_some() && self.method == Method::Search {
            "importance"
        } else {
            self.method.name()
        }
    }
}

/// The method name of sequential GPTQ's files (and of their plans, before the blocks are
/// encoded).
pub(crate) const SEQUENTIAL_GPTQ: &str = "gptq-sequential";

/// Totals for one storage type in a plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TypeTotal {
    /// The type.
    pub ty: StorageType,
    /// Tensors stored in it.
    pub tensors: usize,
    /// Their elements.
    pub elements: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The measured outcome of a plan (sizes always; time once quantized).
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizeSummary {
    /// Mix name.
    pub mix: String,
    /// Method name.
    pub method: String,
    /// Per-tensor decisions.
    pub tensors: Vec<PlannedTensor>,
    /// Per-type totals, largest first.
    pub by_type: Vec<TypeTotal>,
    /// Bytes of all tensor data.
    pub tensor_bytes: u64,
    /// Elements of all tensors.
    pub elements: u64,
    /// Bits per weight over all tensor data.
    pub bpw: f64,
    /// Bits per weight over the quantizable weight matrices (embedding included).
    pub bpw_quantized: f64,
    /// Whole output file size (header included), once written.
    pub file_bytes: Option<u64>,
    /// Wall time of quantization, once done.
    pub seconds: Option<f64>,
    /// Codebook utilisation of every VQ tensor, once quantized.
    pub codebooks: Vec<CodebookUse>,
    /// With a size target: the allocation the plan follows.
    pub recipe: Option<crate::allocate::Recipe>,
    /// For a block-by-block (sequential) run: how memory was planned.
    pub memory: Option<crate::calibrate::budget::MemoryPlan>,
}

/// How much of its codebooks a VQ tensor uses (a collapse guard: entries no vector uses
/// are wasted bits).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CodebookUse {
    /// Tensor name.
    pub tensor: String,
    /// Main-codebook entries used, of `entries`.
    pub used: usize,
    /// Main-codebook size.
    pub entries: usize,
    /// Residual-codebook entries used, of `residual_entries`.
    pub used_residual: usize,
    /// Residual-codebook size (0 without one).
    pub residual_entries: usize,
    /// Layer output error on the calibration inputs relative to the layer's output,
    /// ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖², when quantized with a Hessian.
    pub relative_output_error: Option<f64>,
}

impl CodebookUse {
    fn new(tensor: &str, target: StorageType, v: &VqFit) -> CodebookUse {
        let (entries, residual_entries) = match target {
            StorageType::Vq(f) => (f.entries(), f.residual_entries()),
            _ => (0, 0),
        };
        CodebookUse {
            tensor: tensor.to_string(),
            used: v.used,
            entries,
            used_residual: v.used_residual,
            residual_entries,
            relative_output_error: v.relative_output_error,
        }
    }
}

/// Reads what the plan rules need from a GGUF's metadata.
pub fn model_shape(g: &GgufFile, has_imatrix: bool) -> ModelShape {
    let arch = g.architecture().unwrap_or("").to_string();
    let get = |k: &str| g.arch_u64(k);
    let n_layer = get("block_count").unwrap_or(0) as usize;
    let heads = get("attention.head_count").unwrap_or(1).max(1);
    let kv = get("attention.head_count_kv").unwrap_or(heads).max(1);
    ModelShape {
        arch: arch.clone(),
        n_layer,
        n_gqa: (heads / kv) as usize,
        n_expert: get("expert_count").unwrap_or(0) as usize,
        has_imatrix,
    }
}

/// The plan for quantizing `g` with `opts`, with its size totals.
pub fn plan_model(g: &GgufFile, opts: &QuantizeOptions) -> Result<QuantizeSummary> {
    plan_model_with(g, opts, opts.importance.is_some())
}

/// [`plan_model`], saying whether an importance matrix will be there when the tensors are
/// encoded (llama.cpp's rules for some mixes depend on it).
pub fn plan_model_with(g: &GgufFile, opts: &QuantizeOptions, has_imatrix: bool) -> Result<QuantizeSummary> {
    let mut entries = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        // A VQ tensor's codebook and a low-rank branch's factors travel with their tensor.
        if is_companion(g, &t.name) {
            continue;
        }
        let source = match t.ty {
            TensorType::Known(st) => st,
            TensorType::Unknown(id) => {
                return Err(Error::tensor(g.path(), &t.name, format!("unknown tensor type {id}: cannot quantize")))
            }
        };
        entries.push(TensorEntry { name: t.name.clone(), dims: t.dims.clone(), source });
    }
    let shape = model_shape(g, has_imatrix);
    let mut tensors = make_plan(&entries, &shape, &opts.mix, &opts.overrides)?;
    if opts.incoherence {
        let rotated: Vec<&PlannedTensor> = tensors.iter().filter(|t| gets_rotation(t)).collect();
        if rotated.is_empty() {
            return Err(Error::Usage(
                "--incoherence rotates block matrices of lowbit-native or VQ types, and this plan has none (choose such a --type or --override, or --size without --llama-cpp)".into(),
            ));
        }
        let max = crate::method::incoherence::MAX_ORDER;
        if let Some(t) = rotated.iter().find(|t| t.dims[0] as usize > max) {
            return Err(Error::Usage(format!(
                "--incoherence: '{}' has {}-wide rows; the rotation is a dense matrix, built up to {max} (wider needs a fast Hadamard transform)",
                t.name, t.dims[0]
            )));
        }
    }
    if let Some(rank) = opts.low_rank {
        for t in tensors.iter_mut().filter(|t| gets_low_rank(t)) {
            t.bytes += branch_bytes_of(t, rank);
            t.reason.push_str(&format!(" + rank-{rank} branch"));
        }
    }
    Ok(summarize(opts, tensors))
}

/// Whether a planned tensor gets a low-rank branch when one is asked for: the blocks'
/// quantized weight matrices (not the embedding or output, not float types, not a tensor
/// kept in its source type — copied as stored, it has no error to correct).
pub fn gets_low_rank(t: &PlannedTensor) -> bool {
    if t.target == t.source {
        return false;
    }
    let float = matches!(
        t.target,
        StorageType::Ggml(crate::format::GgmlType::F32 | crate::format::GgmlType::F16 | crate::format::GgmlType::BF16)
    );
    block_matrix(&t.name, &t.dims) && !float
}

/// Whether a planned tensor is stored rotated when incoherence is asked for: the blocks'
/// matrices in lowbit-native or VQ formats (llama.cpp could not undo the rotation).
pub fn gets_rotation(t: &PlannedTensor) -> bool {
    block_matrix(&t.name, &t.dims) && !t.target.is_ggml()
}

/// A block's quantizable weight matrix (what may get a low-rank branch).
pub(crate) fn block_matrix(name: &str, dims: &[u64]) -> bool {
    name.starts_with("blk.") && dims.len() == 2 && allows_quantization(name, dims)
}

/// The bytes of a rank-`rank` branch (capped at the matrix's sides) for a matrix of `dims`.
pub(crate) fn branch_bytes_for(dims: &[u64], rank: usize) -> u64 {
    crate::method::low_rank::branch_bytes(dims[1], dims[0], effective_rank(dims, rank) as u64)
}

fn branch_bytes_of(t: &PlannedTensor, rank: usize) -> u64 {
    branch_bytes_for(&t.dims, rank)
}

fn effective_rank(dims: &[u64], rank: usize) -> usize {
    rank.min(dims[0] as usize).min(dims[1] as usize)
}

fn summarize(opts: &QuantizeOptions, tensors: Vec<PlannedTensor>) -> QuantizeSummary {
    let mut by_type: Vec<TypeTotal> = Vec::new();
    for t in &tensors {
        match by_type.iter_mut().find(|x| x.ty == t.target) {
            Some(x) => {
                x.tensors += 1;
                x.elements += t.n_elements();
                x.bytes += t.bytes;
            }
            None => by_type.push(TypeTotal { ty: t.target, tensors: 1, elements: t.n_elements(), bytes: t.bytes }),
        }
    }
    by_type.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let tensor_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    let elements: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let (qb, qn) = tensors
        .iter()
        .filter(|t| allows_quantization(&t.name, &t.dims))
        .fold((0u64, 0u64), |(b, n), t| (b + t.bytes, n + t.n_elements()));
    QuantizeSummary {
        mix: opts.mix.name.to_string(),
        method: opts.method_name().to_string(),
        tensors,
        by_type,
        tensor_bytes,
        elements,
        bpw: 8.0 * tensor_bytes as f64 / elements.max(1) as f64,
        bpw_quantized: 8.0 * qb as f64 / qn.max(1) as f64,
        file_bytes: None,
        seconds: None,
        codebooks: Vec::new(),
        recipe: None,
        memory: None,
    }
}

/// Decodes one tensor of `g` to f32 and encodes it as its planned type
/// ([`quantize_tensor`]), with its codebook use for a VQ tensor.
fn encode_tensor(
    g: &GgufFile,
    input: &Path,
    t: &PlannedTensor,
    opts: &QuantizeOptions,
) -> Result<(Encoded, Option<CodebookUse>)> {
    let (values, hessian, importance) = tensor_inputs(g, t, opts)?;
    let ncols = t.dims.first().copied().unwrap_or(1) as usize;
    let calibration = Calibration { importance: importance.as_deref(), hessian: hessian.as_deref() };
    let encoded = quantize_tensor(t.target, &values, ncols, opts.method, &calibration, &opts.method_options)
        .map_err(|e| encode_error(input, &t.name, t.target, e))?;
    // A Hessian mapped from a statistics file gives its pages back (an 8B model's would
    // otherwise fill memory with all 33 GB of them); a later reader pages it in again.
    if let Some(h) = opts.hessians.as_ref().and_then(|m| m.get(&t.name)) {
        h.xtx.release();
    }
    let usage = encoded.vq.as_ref().map(|v| CodebookUse::new(&t.name, t.target, v));
    Ok((encoded, usage))
}

/// What a tensor is encoded from: its weights, input Hessian and importance — in the
/// rotated basis when the tensor is stored rotated (`W·Qᵀ`, `Q·H·Qᵀ`, `diag(Q·H·Qᵀ)`).
type Inputs<'a> = (Vec<f32>, Option<std::borrow::Cow<'a, [f32]>>, Option<std::borrow::Cow<'a, [f32]>>);

fn tensor_inputs<'a>(g: &GgufFile, t: &PlannedTensor, opts: &'a QuantizeOptions) -> Result<Inputs<'a>> {
    use std::borrow::Cow;
    let values = g.dequantize(&t.name)?;
    let hessian = opts.hessians.as_ref().and_then(|m| m.get(&t.name)).map(|h| Cow::Borrowed(&h.xtx[..]));
    let importance = opts.importance.as_ref().and_then(|m| m.get(&t.name)).map(|v| Cow::Borrowed(v.as_slice()));
    if !(opts.incoherence && gets_rotation(t)) {
        return Ok((values, hessian, importance));
    }
    let cols = t.dims[0] as usize;
    let r = crate::method::incoherence::Rotation::shared(cols, crate::method::incoherence::SEED);
    let values = r.rotate_rows(&values, values.len() / cols);
    let hessian = hessian.filter(|h| h.len() == cols * cols).map(|h| r.rotate_hessian(&h));
    let importance = importance.map(|i| Cow::Owned(r.rotate_importance(&i, hessian.as_deref())));
    Ok((values, hessian.map(Cow::Owned), importance))
}

/// The error for a tensor that could not be encoded: a non-finite weight means the
/// source is damaged.
pub(crate) fn encode_error(input: &Path, name: &str, target: StorageType, e: EncodeError) -> Error {
    let what = match e {
        EncodeError::Interrupted => return Error::Interrupted,
        EncodeError::NonFinite { index, value } => damaged(index, value),
        e => e.to_string(),
    };
    Error::tensor(input, name, format!("cannot quantize to {target}: {what}"))
}

/// What a non-finite source weight means.
pub(crate) fn damaged(index: usize, value: f32) -> String {
    format!("weight {index} is {value}: the source is damaged")
}

/// The GGUF tensors an encoded tensor is written as: itself, and a VQ tensor's codebook.
fn encoded_parts(t: &PlannedTensor, e: Encoded) -> Vec<(String, Vec<u8>)> {
    let mut parts = vec![(t.name.clone(), e.bytes)];
    parts.extend(e.vq.map(|v| (codebook_name(&t.name), v.codebook)));
    parts
}

/// The low-rank factors of tensor `t` (its stored bytes `bytes`, with `codebook` for a VQ
/// tensor), fitted to its quantization error in the metric of its Hessian or importance
/// ([`crate::method::low_rank::fit`]), as the two parts written after it.
fn fit_branch(
    g: &GgufFile,
    t: &PlannedTensor,
    bytes: &[u8],
    codebook: Option<&[u8]>,
    rank: usize,
    opts: &QuantizeOptions,
) -> Result<Vec<(String, Vec<u8>)>> {
    let cols = t.dims[0] as usize;
    // In the basis the rows are stored in (rotated, with incoherence).
    let (weights, hessian, importance) = tensor_inputs(g, t, opts)?;
    let decoded = crate::format::storage::decode(t.target, bytes, codebook, weights.len(), cols)
        .map_err(|e| Error::tensor(g.path(), &t.name, e.to_string()))?;
    let error: Vec<f32> = weights.iter().zip(&decoded).map(|(w, q)| w - q).collect();
    let damp = opts.method_options.gptq.damp;
    let lr = crate::method::low_rank::fit(&error, cols, rank, hessian.as_deref(), importance.as_deref(), damp);
    if lr.rank != rank {
        return Err(Error::tensor(g.path(), &t.name, "the low-rank fit failed (SVD did not converge)"));
    }
    let (a, b) = low_rank_names(&t.name);
    Ok(vec![(a, lr.a_bytes()), (b, lr.b_bytes())])
}

/// Quantizes `input` (a GGUF) into `output` following `opts`. `progress(done, total)` is
/// called with elements processed so far. Returns the summary with file size and time.
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    opts: &QuantizeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<QuantizeSummary> {
    let g = crate::hf::open_model(input)?;
    let summary = plan_model(&g, opts)?;
    write_planned(&g, summary, output, opts, progress)
}

/// The rank of `t`'s low-rank branch, where `opts` asks for branches and `t` gets one.
fn branch_rank(t: &PlannedTensor, opts: &QuantizeOptions) -> Option<usize> {
    opts.low_rank.filter(|_| gets_low_rank(t)).map(|r| effective_rank(&t.dims, r))
}

/// A GGUF's metadata, in file order.
type Metadata = Vec<(String, Value)>;

/// The output file's metadata and tensor list for `summary`'s plan: the source's keys
/// (less its file type and lowbit's own), the file type, lowbit's keys (version, mix,
/// method, overrides, native formats, incoherence seeds, low rank), every tensor's spec.
/// [`write_planned`] writes exactly this; [`planned_file_bytes`] sizes it.
fn output_layout(
    g: &GgufFile,
    summary: &QuantizeSummary,
    opts: &QuantizeOptions,
) -> Result<(Metadata, Vec<TensorSpec>)> {
    let input = g.path();
    let mut metadata: Vec<(String, Value)> = g
        .metadata
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "general.file_type" | "general.quantization_version"))
        // A transformed source's `lowbit.transform` says what the weights went through.
        .filter(|(k, _)| !k.starts_with("lowbit.") || k == "lowbit.transform")
        .cloned()
        .collect();
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    // With native formats in the file, llama.cpp's file type is only a guess (its
    // LLAMA_FTYPE_GUESSED); llama.cpp cannot run such files anyway.
    let any_native = summary.tensors.iter().any(|t| !t.target.is_ggml());
    let file_type = if any_native { 1024 } else { opts.mix.file_type };
    metadata.push(("general.file_type".into(), Value::U32(file_type)));
    metadata.push(("lowbit.version".into(), Value::String(env!("CARGO_PKG_VERSION").into())));
    metadata.push(("lowbit.quantize.mix".into(), Value::String(opts.mix.name.into())));
    metadata.push(("lowbit.quantize.method".into(), Value::String(opts.method_name().into())));
    if !opts.overrides.is_empty() {
        let texts = opts.overrides.iter().map(|o| Value::String(o.text.clone())).collect();
        metadata.push(("lowbit.quantize.overrides".into(), Value::Array(ValueType::String, texts)));
    }
    for t in &summary.tensors {
        metadata.extend(native_entry(&t.name, t.target));
        if opts.incoherence && gets_rotation(t) {
            metadata.push(incoherence_entry(&t.name, crate::method::incoherence::SEED));
        }
    }
    if let Some(rank) = opts.low_rank {
        metadata.push(("lowbit.quantize.low_rank".into(), Value::U32(rank as u32)));
    }
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(summary.tensors.len());
    for t in &summary.tensors {
        specs.extend(tensor_specs(&t.name, &t.dims, t.target).ok_or_else(|| {
            Error::tensor(input, &t.name, format!("rows of {} values are not whole {} blocks", t.dims[0], t.target))
        })?);
        if let Some(rank) = branch_rank(t, opts) {
            specs.extend(low_rank_specs(&t.name, &t.dims, rank));
        }
    }
    Ok((metadata, specs))
}

/// The exact size in bytes of the file [`quantize_gguf`] would write from `g` with `opts`
/// (planned, not encoded): what a size target is checked against.
pub fn planned_file_bytes(g: &GgufFile, opts: &QuantizeOptions) -> Result<u64> {
    let summary = plan_model(g, opts)?;
    let (metadata, specs) = output_layout(g, &summary, opts)?;
    crate::gguf::file_bytes(&metadata, &specs)
}

/// Writes `output` from the already opened source `g` following `summary`'s plan (from
/// [`plan_model`] on `g`): the second half of [`quantize_gguf`], for callers that plan
/// first (sequential GPTQ quantizes blocks between planning and writing).
pub fn write_planned(
    g: &GgufFile,
    mut summary: QuantizeSummary,
    output: &Path,
    opts: &QuantizeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<QuantizeSummary> {
    let input = g.path();
    if crate::atomic::same_file(input, output) {
        return Err(Error::Usage(format!("{}: the output would overwrite the input", output.display())));
    }
    let start = Instant::now();
    // The plan may have been made before pre-encoded tensors arrived (sequential GPTQ).
    summary.method = opts.method_name().to_string();
    let (metadata, specs) = output_layout(g, &summary, opts)?;
    let total = summary.elements;
    let mut done = 0u64;
    let mut summary_codebooks = Vec::new();
    let mut w = GgufWriter::create(output, &metadata, specs)?;
    // Encoded tensors go to a writer thread through a short queue, so writing one tensor
    // overlaps encoding the next (memory: at most two encoded tensors in flight).
    let (send, receive) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(1);
    let written = std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(move || -> Result<GgufWriter> {
            for (name, bytes) in receive {
                w.write_tensor(&name, &bytes)?;
            }
            Ok(w)
        });
        let mut encode_all = || -> Result<()> {
            for t in &summary.tensors {
                crate::interrupt::check()?;
                let (_, src) = g.tensor_bytes(&t.name)?;
                let rank = branch_rank(t, opts);
                let own_bytes = t.bytes - rank.map_or(0, |_| branch_bytes_of(t, opts.low_rank.unwrap_or(0)));
                // A source tensor with a branch of its own is re-encoded (its bytes alone
                // are not the weights).
                let copy = t.target == t.source
                    && low_rank_of(g, &t.name)?.is_none()
                    && rotation_of(g, &t.name)?.is_none()
                    && !(opts.incoherence && gets_rotation(t));
                let mut parts = match opts.pre_encoded.get(&t.name)? {
                    Some(e) if e.stored_bytes() == own_bytes => encoded_parts(t, e),
                    _ if copy => {
                        // Copied as stored, but never a damaged value (a NaN norm weight
                        // used to pass through into the output).
                        let values = g.dequantize(&t.name)?;
                        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                            let what = damaged(i, values[i]);
                            return Err(Error::tensor(input, &t.name, format!("cannot copy it: {what}")));
                        }
                        let mut parts = vec![(t.name.clone(), src.to_vec())];
                        let codebook = codebook_of(g, &t.name, t.source)?;
                        parts.extend(codebook.map(|c| (codebook_name(&t.name), c.to_vec())));
                        parts
                    }
                    _ => {
                        let (encoded, usage) = encode_tensor(g, input, t, opts)?;
                        summary_codebooks.extend(usage);
                        encoded_parts(t, encoded)
                    }
                };
                if let Some(rank) = rank {
                    parts.extend(fit_branch(g, t, &parts[0].1, parts.get(1).map(|p| p.1.as_slice()), rank, opts)?);
                }
                g.release(&t.name);
                if parts.into_iter().any(|p| send.send(p).is_err()) {
                    break; // the writer stopped on an error, reported below
                }
                done += t.n_elements();
                progress(done, total);
            }
            Ok(())
        };
        let encoded = encode_all();
        drop(send);
        let w = writer.join().expect("the writer thread does not panic")?;
        encoded?;
        summary.file_bytes = Some(w.finish()?);
        Ok(())
    });
    written?;
    summary.codebooks = summary_codebooks;
    summary.seconds = Some(start.elapsed().as_secs_f64());
    Ok(summary)
}
