//! GGUF, llama.cpp's model container: a header of typed key–value metadata and tensor
//! infos, then aligned tensor data. [`GgufFile`] reads versions 2 and 3 through a memory
//! map without trusting a single length in the file; [`GgufWriter`] streams version 3.

mod metadata;
mod native;
mod reader;
mod writer;

pub use metadata::{Value, ValueType};
pub use native::{
    codebook_of, extra_bytes, incoherence_entry, incoherence_key, is_codebook, is_companion, low_rank_names,
    low_rank_of, low_rank_specs, native_entry, native_key, rotation_of, tensor_specs,
};
pub(crate) use reader::{permute_heads, Transform};
pub use reader::{GgufFile, TensorInfo, TensorType};
pub use writer::{file_bytes, metadata_bytes, tensor_info_bytes, GgufWriter, TensorSpec};

/// The four magic bytes at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have.
pub const MAX_DIMS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::GgmlType;

    fn sample_metadata() -> Vec<(String, Value)> {
        vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.alignment".into(), Value::U32(64)),
            ("a.u8".into(), Value::U8(7)),
            ("a.i8".into(), Value::I8(-7)),
            ("a.u16".into(), Value::U16(65535)),
            ("a.i16".into(), Value::I16(-2)),
            ("a.i32".into(), Value::I32(-70000)),
            ("a.f32".into(), Value::F32(1.25)),
            ("a.bool".into(), Value::Bool(true)),
            ("a.u64".into(), Value::U64(1 << 40)),
            ("a.i64".into(), Value::I64(-(1 << 40))),
            ("a.f64".into(), Value::F64(-0.125)),
            (
                "a.strings".into(),
                Value::Array(ValueType::String, vec![Value::String("x".into()), Value::String("ÿ€".into())]),
            ),
            (
                "a.nested".into(),
                Value::Array(ValueType::Array, vec![Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)])]),
            ),
        ]
    }

    #[test]
    fn writer_output_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.gguf");
        let md = sample_metadata();
        let specs = vec![
            TensorSpec { name: "w".into(), dims: vec![64, 3], ty: GgmlType::Q8_0 },
            TensorSpec { name: "n".into(), dims: vec![5], ty: GgmlType::F32 },
        ];
        let w_bytes: Vec<u8> = (0..6 * 34).map(|i| if i % 34 == 1 { 0x3c } else { i as u8 }).collect();
        let n_bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut w = GgufWriter::create(&path, &md, specs).unwrap();
        w.write_tensor("w", &w_bytes).unwrap();
        w.write_tensor("n", &n_bytes).unwrap();
        let size = w.finish().unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 64);
        assert_eq!(g.metadata, md);
        assert_eq!(g.tensor_bytes("w").unwrap().1, &w_bytes[..]);
        assert_eq!(g.dequantize("n").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(g.tensors[1].offset % 64, 0);
        // No temporary file is left beside the output.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.gguf");
        let specs = vec![TensorSpec { name: "n".into(), dims: vec![4], ty: GgmlType::F32 }];
        let w = GgufWriter::create(&path, &[], specs).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let specs = vec![TensorSpec { name: "q".into(), dims: vec![33], ty: GgmlType::Q4_0 }];
        assert!(GgufWriter::create(&path, &[], specs).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
