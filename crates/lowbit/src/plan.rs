//! Plans: which format each tensor gets. The named mixes reproduce llama-quantize's
//! per-tensor rules (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`) so a
//! lowbit `Q4_K_M` has the same tensor types — hence the same size — as llama.cpp's:
//! sensitive tensors (attn_v, ffn_down in some layers, attn_output) get more bits, the
//! output/tied embedding gets Q6_K or Q8_0, and rows that are not a whole number of
//! 256-blocks fall back to 32-block formats. One deliberate difference: llama.cpp counts
//! layers in its name-sorted tensor order (blk.0, blk.1, blk.10, …) when it picks "the first
//! and last eighth"; lowbit uses the real layer number from the name, which is what the
//! rule means. The number of tensors promoted, and so the file size, is the same.

use regex::Regex;

use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::format::GgmlType;

/// A named quantization mix: a default type plus llama.cpp's promotion rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mix {
    /// The name, as llama-quantize spells it (`Q4_K_M`).
    pub name: &'static str,
    /// llama.cpp's `llama_ftype` value, stored as `general.file_type`.
    pub file_type: u32,
    /// The type of every quantizable tensor no rule promotes.
    pub default: GgmlType,
}

/// Every mix lowbit can write, as llama-quantize names them.
pub const MIXES: &[Mix] = &[
    Mix { name: "F32", file_type: 0, default: GgmlType::F32 },
    Mix { name: "F16", file_type: 1, default: GgmlType::F16 },
    Mix { name: "BF16", file_type: 32, default: GgmlType::BF16 },
    Mix { name: "Q4_0", file_type: 2, default: GgmlType::Q4_0 },
    Mix { name: "Q4_1", file_type: 3, default: GgmlType::Q4_1 },
    Mix { name: "Q8_0", file_type: 7, default: GgmlType::Q8_0 },
    Mix { name: "Q5_0", file_type: 8, default: GgmlType::Q5_0 },
    Mix { name: "Q5_1", file_type: 9, default: GgmlType::Q5_1 },
    Mix { name: "Q2_K", file_type: 10, default: GgmlType::Q2_K },
    Mix { name: "Q3_K_S", file_type: 11, default: GgmlType::Q3_K },
    Mix { name: "Q3_K_M", file_type: 12, default: GgmlType::Q3_K },
    Mix { name: "Q3_K_L", file_type: 13, default: GgmlType::Q3_K },
    Mix { name: "Q4_K_S", file_type: 14, default: GgmlType::Q4_K },
    Mix { name: "Q4_K_M", file_type: 15, default: GgmlType::Q4_K },
    Mix { name: "Q5_K_S", file_type: 16, default: GgmlType::Q5_K },
    Mix { name: "Q5_K_M", file_type: 17, default: GgmlType::Q5_K },
    Mix { name: "Q6_K", file_type: 18, default: GgmlType::Q6_K },
    Mix { name: "IQ4_NL", file_type: 25, default: GgmlType::IQ4_NL },
    Mix { name: "IQ4_XS", file_type: 30, default: GgmlType::IQ4_XS },
    Mix { name: "IQ2_XXS", file_type: 19, default: GgmlType::IQ2_XXS },
    Mix { name: "IQ2_XS", file_type: 20, default: GgmlType::IQ2_XS },
    Mix { name: "Q2_K_S", file_type: 21, default: GgmlType::Q2_K },
    Mix { name: "IQ3_XS", file_type: 22, default: GgmlType::IQ3_S },
    Mix { name: "IQ3_XXS", file_type: 23, default: GgmlType::IQ3_XXS },
    Mix { name: "IQ1_S", file_type: 24, default: GgmlType::IQ1_S },
    Mix { name: "IQ3_S", file_type: 26, default: GgmlType::IQ3_S },
    Mix { name: "IQ3_M", file_type: 27, default: GgmlType::IQ3_S },
    Mix { name: "IQ2_S", file_type: 28, default: GgmlType::IQ2_XS },
    Mix { name: "IQ2_M", file_type: 29, default: GgmlType::IQ2_S },
    Mix { name: "IQ1_M", file_type: 31, default: GgmlType::IQ1_M },
    Mix { name: "MXFP4_MOE", file_type: 38, default: GgmlType::MXFP4 },
];

impl Mix {
    /// The mix called `name` (case-insensitive; `Q4_K` means `Q4_K_M`, `Q3_K` means
    /// `Q3_K_M`, `Q5_K` means `Q5_K_M`, `MXFP4` means `MXFP4_MOE`, as in llama-quantize).
    pub fn from_name(name: &str) -> Option<Mix> {
        let n = name.to_ascii_uppercase();
        let n = match n.as_str() {
            "Q4_K" => "Q4_K_M",
            "Q3_K" => "Q3_K_M",
            "Q5_K" => "Q5_K_M",
            "MXFP4" => "MXFP4_MOE",
            other => other,
        };
        MIXES.iter().find(|m| m.name == n).copied()
    }

    /// The mix names, for error messages and `--help`.
    pub fn names() -> Vec<&'static str> {
        MIXES.iter().map(|m| m.name).collect()
    }
}

/// What the rules need to know about the model.
#[derive(Clone, Debug)]
pub struct ModelShape {
    /// `general.architecture`.
    pub arch: String,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Query heads per key/value head (1 without grouped-query attention).
    pub n_gqa: usize,
    /// Experts per MoE layer (0 or 1 for dense models).
    pub n_expert: usize,
    /// Whether an importance matrix is supplied (two rules depend on it).
    pub has_imatrix: bool,
}

/// One tensor to plan for.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// GGUF name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// The type it has in the source.
    pub source: StorageType,
}

/// The plan's decision for one tensor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Type in the source.
    pub source: StorageType,
    /// Type to write.
    pub target: StorageType,
    /// Bytes the tensor will occupy.
    pub bytes: u64,
    /// Why this type (rule, override, fallback, kept).
    pub reason: String,
}

impl PlannedTensor {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A `REGEX=TYPE` override from the command line.
#[derive(Clone, Debug)]
pub struct Override {
    /// Matched (anywhere) against tensor names.
    pub pattern: Regex,
    /// The type matching tensors get (a ggml type or a native format).
    pub ty: StorageType,
    /// The text as given, for messages.
    pub text: String,
}

impl Override {
    /// Parses `REGEX=TYPE`.
    pub fn parse(text: &str) -> Result<Override> {
        let (re, ty) = text
            .rsplit_once('=')
            .ok_or_else(|| Error::Usage(format!("override '{text}': expected REGEX=TYPE, e.g. 'attn_v=Q6_K'")))?;
        let pattern = Regex::new(re).map_err(|e| Error::Usage(format!("override '{text}': bad regex: {e}")))?;
        let ty = StorageType::from_name(ty.trim()).filter(StorageType::can_encode).ok_or_else(|| {
            Error::Usage(format!(
                "override '{text}': '{ty}' is not a type lowbit can write (a ggml type such as Q4_K, or a native format such as int4_g128)"
            ))
        })?;
        Ok(Override { pattern, ty, text: text.to_string() })
    }

    /// `ty` for every block tensor (`^blk\.`), as a whole-model native or VQ `--type`
    /// asks for.
    pub fn blocks(ty: StorageType) -> Override {
        let re = r"^blk\.";
        Override { pattern: Regex::new(re).expect("a valid regex"), ty, text: format!("{re}={ty}") }
    }
}

/// Tensor roles the rules distinguish (llama.cpp's `tensor_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    for (pat, cat) in [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ] {
        if name.contains(pat) {
            return cat;
        }
    }
    Other
}

/// Whether llama-quantize would quantize this tensor at all: 2-D+ weights except norms,
/// positional/token-type embeddings, MoE routers and a few small special tensors.
pub fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    if dims.len() < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    const KEEP: &[&str] = &[
        "ffn_gate_inp.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "position_embd.weight",
        "token_types.weight",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "time_mix_",
        "attn_rel_b.weight",
    ];
    !KEEP.iter().any(|k| name.contains(k))
}

/// The layer number in `blk.N.…`, if any.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's "more bits here" layer pattern: the first and last eighth, and every third
/// layer in between.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The 1–2-bit i-quant mixes, which llama.cpp gives a rule set of their own.
fn is_low_iq_mix(f: &str) -> bool {
    matches!(f, "IQ2_XXS" | "IQ2_XS" | "IQ1_S" | "IQ2_S" | "IQ2_M" | "IQ1_M")
}

/// llama.cpp's rules for the tensors of the 1–2-bit i-quant mixes other than the output.
fn low_iq_rule(f: &str, shape: &ModelShape, cat: Category, layer: usize, ty: GgmlType) -> GgmlType {
    use GgmlType::*;
    let two_s = matches!(f, "IQ2_S" | "IQ2_M");
    let one = matches!(f, "IQ1_S" | "IQ1_M");
    match cat {
        Category::TokenEmbd => {
            if two_s {
                IQ3_S
            } else {
                Q2_K
            }
        }
        Category::AttnV | Category::AttnQkv | Category::AttnKvB => {
            if shape.n_gqa >= 4 || shape.n_expert >= 4 {
                Q4_K
            } else if two_s {
                IQ3_S
            } else {
                Q2_K
            }
        }
        Category::AttnK if shape.n_expert == 8 => Q4_K,
        Category::FfnDown if layer < shape.n_layer.max(1) / 8 => {
            if two_s {
                IQ3_S
            } else {
                Q2_K
            }
        }
        Category::AttnOutput if shape.n_expert == 8 => Q5_K,
        Category::AttnOutput if one => IQ2_XXS,
        Category::AttnOutput if two_s => IQ3_S,
        _ => ty,
    }
}

/// llama.cpp's rules for one tensor of a mix (before shape fallbacks).
fn mix_rule(mix: &Mix, shape: &ModelShape, cat: Category, name: &str, ncols: u64, has_tied: bool) -> GgmlType {
    use GgmlType::*;
    let f = mix.name;
    let ty = mix.default;
    let layer = layer_of(name).unwrap_or(0);
    let n = shape.n_layer.max(1);
    let falcon = shape.arch == "falcon";
    if cat == Category::Output || (has_tied && cat == Category::TokenEmbd) {
        return if f == "MXFP4_MOE" || falcon || !ncols.is_multiple_of(ty.block_size() as u64) {
            Q8_0
        } else if is_low_iq_mix(f) || f == "IQ3_XXS" {
            Q5_K
        } else if ty != Q8_0 {
            Q6_K
        } else {
            ty
        };
    }
    if f == "MXFP4_MOE" {
        return Q8_0; // dense tensors; expert tensors (3-D) are handled by the caller
    }
    if is_low_iq_mix(f) {
        return low_iq_rule(f, shape, cat, layer, ty);
    }
    match cat {
        Category::TokenEmbd if f == "IQ3_XXS" => IQ3_S,
        // llama.cpp tests "attn_v-like" (v, fused qkv, MLA kv_b) before its separate
        // fused-qkv rule, so fused qkv tensors get the attn_v rules; so do we.
        Category::AttnV | Category::AttnQkv | Category::AttnKvB if shape.n_expert == 8 => Q8_0,
        Category::AttnV | Category::AttnQkv | Category::AttnKvB => match f {
            "Q2_K" => {
                if shape.n_gqa >= 4 {
                    Q4_K
                } else {
                    Q3_K
                }
            }
            "Q3_K_M" => {
                if layer < 2 {
                    Q5_K
                } else {
                    Q4_K
                }
            }
            "Q3_K_L" => Q5_K,
            "Q2_K_S" if shape.n_gqa >= 4 => Q4_K,
            "IQ3_XXS" if shape.n_gqa >= 4 => Q4_K,
            "IQ3_XXS" if !shape.has_imatrix => IQ3_S,
            "IQ3_XS" | "IQ3_S" if shape.n_gqa >= 4 => Q4_K,
            "IQ3_M" => Q4_K,
            "IQ4_NL" | "IQ4_XS" if shape.n_gqa >= 4 => Q5_K,
            "Q4_K_M" | "Q5_K_M" if use_more_bits(layer, n) => Q6_K,
            "Q4_K_S" if layer < 4 => Q5_K,
            _ => ty,
        },
        Category::AttnK if shape.n_expert == 8 => Q8_0,
        Category::AttnK | Category::AttnQ if f == "IQ3_XS" => IQ3_XXS,
        Category::AttnK | Category::AttnQ if f == "IQ3_XXS" => IQ2_S,
        Category::FfnGate | Category::FfnUp if f == "IQ3_XS" && layer >= n / 8 && layer < 7 * n / 8 => IQ3_XXS,
        Category::FfnDown => match f {
            "Q2_K" => Q3_K,
            "Q2_K_S" if layer < n / 8 => Q4_K,
            "IQ3_XXS" if !shape.has_imatrix => {
                if layer < n / 8 {
                    Q4_K
                } else {
                    Q3_K
                }
            }
            "IQ3_M" if layer < n / 8 || (shape.n_expert == 8 && use_more_bits(layer, n)) => Q4_K,
            "Q3_K_M" => {
                if layer < n / 16 {
                    Q5_K
                } else if !falcon || use_more_bits(layer, n) {
                    Q4_K
                } else {
                    Q3_K
                }
            }
            "Q3_K_L" => {
                if falcon {
                    Q4_K
                } else {
                    Q5_K
                }
            }
            "Q4_K_M" => {
                if falcon {
                    if layer < n / 16 {
                        Q6_K
                    } else if use_more_bits(layer, n) {
                        Q5_K
                    } else {
                        Q4_K
                    }
                } else if use_more_bits(layer, n) {
                    Q6_K
                } else {
                    ty
                }
            }
            "IQ4_NL" | "IQ4_XS" if layer < n / 8 && !shape.has_imatrix => Q5_K,
            "Q5_K_M" if use_more_bits(layer, n) => Q6_K,
            "Q4_K_S" if !falcon && layer < n / 8 => Q5_K,
            "Q4_0" if shape.has_imatrix && layer < n / 8 => Q4_1,
            "Q5_0" if shape.has_imatrix && layer < n / 8 => Q5_1,
            _ => ty,
        },
        Category::AttnOutput => {
            if falcon {
                return if f == "Q3_K_L" { Q4_K } else { ty };
            }
            if shape.n_expert == 8 {
                return match f {
                    "Q2_K" | "Q3_K_S" | "Q3_K_M" | "IQ4_NL" | "Q4_K_S" | "Q4_K_M" | "IQ4_XS" | "IQ3_XS" | "IQ3_XXS"
                    | "IQ3_S" | "IQ3_M" => Q5_K,
                    _ => ty,
                };
            }
            match f {
                "Q2_K" => Q3_K,
                "IQ3_XXS" => IQ3_S,
                "IQ3_M" => Q4_K,
                "Q3_K_M" => Q4_K,
                "Q3_K_L" => Q5_K,
                _ => ty,
            }
        }
        _ => ty,
    }
}

/// llama.cpp's replacement when a row is not a whole number of the type's blocks
/// (`tensor_type_fallback`); F16 when even the replacement does not fit.
pub fn shape_fallback(ty: GgmlType, ncols: u64) -> GgmlType {
    use GgmlType::*;
    if ncols.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let alt = match ty {
        IQ4_XS | IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S => IQ4_NL,
        Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(alt.block_size() as u64) {
        alt
    } else {
        F16
    }
}

/// Chooses every tensor's type for `mix`, applying overrides (first match wins, as in
/// llama-quantize) before the mix's rules, then shape fallbacks. Errors if an override
/// matches no tensor (almost always a typo).
pub fn make_plan(
    tensors: &[TensorEntry],
    shape: &ModelShape,
    mix: &Mix,
    overrides: &[Override],
) -> Result<Vec<PlannedTensor>> {
    let has_tied = !tensors.iter().any(|t| t.name == "output.weight");
    let mut used = vec![false; overrides.len()];
    let mut plan = Vec::with_capacity(tensors.len());
    for t in tensors {
        let ncols = t.dims.first().copied().unwrap_or(1);
        let (target, reason) = if !allows_quantization(&t.name, &t.dims) {
            (t.source, "kept (not quantized)".to_string())
        } else if let Some((i, o)) = overrides.iter().enumerate().find(|(_, o)| o.pattern.is_match(&t.name)) {
            used[i] = true;
            let ty = match o.ty {
                StorageType::Ggml(g) => StorageType::Ggml(shape_fallback(g, ncols)),
                StorageType::Native(f) if ncols.is_multiple_of(f.group as u64) => o.ty,
                StorageType::Native(_) => StorageType::Ggml(shape_fallback(GgmlType::Q8_0, ncols)),
                StorageType::Vq(f) if f.row_bytes(ncols as usize).is_some() => o.ty,
                StorageType::Vq(_) => StorageType::Ggml(shape_fallback(GgmlType::Q8_0, ncols)),
            };
            let why =
                if ty == o.ty { format!("override {}", o.text) } else { format!("override {} → fallback", o.text) };
            (ty, why)
        } else if matches!(mix.default, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            (mix.default.into(), "mix default".to_string())
        } else if mix.name == "MXFP4_MOE" && t.dims.len() >= 3 && t.dims[2] > 1 {
            (shape_fallback(GgmlType::MXFP4, ncols).into(), "expert tensor".to_string())
        } else {
            let ruled = mix_rule(mix, shape, category(&t.name), &t.name, ncols, has_tied);
            let ty = shape_fallback(ruled, ncols);
            let why = match (ruled == mix.default, ty == ruled) {
                (true, true) => "mix default".to_string(),
                (false, true) => format!("{} rule", mix.name),
                (_, false) => format!("{ruled}: {ncols} columns not a multiple of {} → fallback", ruled.block_size()),
            };
            (ty.into(), why)
        };
        let bytes = target.tensor_bytes(&t.dims).ok_or_else(|| {
            Error::Usage(format!("tensor '{}': {ncols} columns cannot be stored as {target}", t.name))
        })?;
        plan.push(PlannedTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            source: t.source,
            target,
            bytes,
            reason,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::Usage(format!("override '{}' matches no tensor in the model", overrides[i].text)));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama-like model: `n` layers, hidden `d`, ffn `f`, tied embeddings.
    fn llama_like(n: usize, d: u64, f: u64) -> Vec<TensorEntry> {
        let mut t =
            vec![TensorEntry { name: "token_embd.weight".into(), dims: vec![d, 1000], source: GgmlType::F32.into() }];
        for i in 0..n {
            for (name, dims) in [
                ("attn_norm.weight", vec![d]),
                ("attn_q.weight", vec![d, d]),
                ("attn_k.weight", vec![d, d / 4]),
                ("attn_v.weight", vec![d, d / 4]),
                ("attn_output.weight", vec![d, d]),
                ("ffn_gate.weight", vec![d, f]),
                ("ffn_up.weight", vec![d, f]),
                ("ffn_down.weight", vec![f, d]),
            ] {
                t.push(TensorEntry { name: format!("blk.{i}.{name}"), dims, source: GgmlType::F32.into() });
            }
        }
        t
    }

    fn shape(n: usize, gqa: usize) -> ModelShape {
        ModelShape { arch: "llama".into(), n_layer: n, n_gqa: gqa, n_expert: 0, has_imatrix: false }
    }

    fn count(plan: &[PlannedTensor], part: &str, ty: GgmlType) -> usize {
        plan.iter().filter(|p| p.name.contains(part) && p.target == ty.into()).count()
    }

    #[test]
    fn q4_k_m_promotes_attn_v_and_ffn_down_like_llama_cpp() {
        let plan =
            make_plan(&llama_like(32, 512, 1024), &shape(32, 4), &Mix::from_name("Q4_K_M").unwrap(), &[]).unwrap();
        // use_more_bits over 32 layers: 0..4, 28..32, and 4 + 3k + 2 → 6, 9, …, 27: 16 layers.
        assert_eq!(count(&plan, "ffn_down", GgmlType::Q6_K), 16);
        assert_eq!(count(&plan, "attn_v", GgmlType::Q6_K), 16);
        assert_eq!(count(&plan, "attn_q", GgmlType::Q4_K), 32);
        let embd = plan.iter().find(|p| p.name == "token_embd.weight").unwrap();
        assert_eq!(embd.target, GgmlType::Q6_K.into()); // tied: treated as the output
        assert!(plan.iter().filter(|p| p.name.contains("norm")).all(|p| p.target == GgmlType::F32.into()));
    }

    #[test]
    fn rows_that_are_not_256_wide_fall_back_to_32_blocks() {
        let plan = make_plan(&llama_like(8, 576, 1536), &shape(8, 3), &Mix::from_name("Q4_K_M").unwrap(), &[]).unwrap();
        assert_eq!(count(&plan, "attn_q", GgmlType::Q5_0), 8);
        assert_eq!(count(&plan, "ffn_down", GgmlType::Q4_K) + count(&plan, "ffn_down", GgmlType::Q6_K), 8);
        assert_eq!(plan.iter().find(|p| p.name == "token_embd.weight").unwrap().target, GgmlType::Q8_0.into());
        assert_eq!(count(&plan, "attn_v", GgmlType::Q8_0) + count(&plan, "attn_v", GgmlType::Q5_0), 8);
        let q2 = make_plan(&llama_like(8, 576, 1536), &shape(8, 3), &Mix::from_name("Q2_K").unwrap(), &[]).unwrap();
        assert_eq!(count(&q2, "attn_q", GgmlType::Q4_0), 8);
        assert_eq!(count(&q2, "ffn_down", GgmlType::Q3_K), 8);
    }

    #[test]
    fn overrides_win_and_unused_overrides_are_errors() {
        let o = vec![Override::parse("attn_q=Q8_0").unwrap()];
        let plan = make_plan(&llama_like(4, 512, 1024), &shape(4, 4), &Mix::from_name("Q4_K_S").unwrap(), &o).unwrap();
        assert_eq!(count(&plan, "attn_q", GgmlType::Q8_0), 4);
        let bad = vec![Override::parse("attn_qq=Q8_0").unwrap()];
        assert!(make_plan(&llama_like(4, 512, 1024), &shape(4, 4), &Mix::from_name("Q4_K_S").unwrap(), &bad).is_err());
        assert!(Override::parse("attn_q=Q9_9").is_err());
        assert!(Override::parse("attn_q").is_err());
        assert!(Override::parse("(=Q4_0").is_err());
    }

    #[test]
    fn more_bits_pattern_matches_llama_cpp() {
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and 3 + 3k + 2.
        assert_eq!(got, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }
}
