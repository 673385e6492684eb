//! Writing a model back out with every tensor decoded to a plain float type (F32 or
//! F16): the "source" as a float GGUF, for peers that need float input and for speed
//! baselines. Streams tensor by tensor; writes atomically; never overwrites its input.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::GgmlType;
use crate::gguf::{GgufWriter, TensorSpec, TensorType, Value};

/// llama.cpp's `general.file_type` for an all-F32 / mostly-F16 file.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F16 => 1,
        _ => 0,
    }
}

/// Writes `input` to `output` with every tensor stored as `ty` (F32 or F16); returns the
/// output size. `progress(done, total)` is called after each tensor.
pub fn dequantize_file(
    input: &Path,
    output: &Path,
    ty: GgmlType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<u64> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return Err(Error::Usage(format!("can only write F32 or F16, not {ty}")));
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::Usage(format!("{}: the output would overwrite the input", output.display())));
        }
    }
    let g = crate::hf::open_model(input)?;
    let mut metadata: Vec<(String, Value)> =
        g.metadata.iter().filter(|(k, _)| k != "general.file_type").cloned().collect();
    metadata.push(("general.file_type".into(), Value::U32(file_type(ty))));
    let mut specs = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        if let TensorType::Unknown(id) = t.ty {
            return Err(Error::tensor(input, &t.name, format!("unknown tensor type {id} cannot be converted")));
        }
        // 1-D tensors (norms, biases) stay F32 as llama.cpp keeps them.
        let out_ty = if t.dims.len() <= 1 { GgmlType::F32 } else { ty };
        specs.push(TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: out_ty });
    }
    let total = specs.len();
    let mut w = GgufWriter::create(output, &metadata, specs.clone())?;
    for (i, spec) in specs.iter().enumerate() {
        let values = g.dequantize(&spec.name)?;
        let bytes: Vec<u8> = match spec.ty {
            GgmlType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        w.write_tensor(&spec.name, &bytes)?;
        progress(i + 1, total);
    }
    w.finish()
}
