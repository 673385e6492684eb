//! GGUF, llama.cpp's model container: a header of typed key–value metadata and tensor
//! infos, then aligned tensor data. [`GgufFile`] reads versions 2 and 3 through a memory
//! map without trusting a single length in the file; [`GgufWriter`] streams version 3.

mod metadata;
mod reader;
mod writer;

pub use metadata::{Value, ValueType};
pub use reader::{GgufFile, TensorInfo, TensorType};
pub use writer::{GgufWriter, TensorSpec};

/// The four magic bytes at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have.
pub const MAX_DIMS: usize = 4;
