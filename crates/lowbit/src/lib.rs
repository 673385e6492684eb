//! # lowbit
//!
//! Low-bit quantization of neural networks, with an honest account of what it costs.
//!
//! Data flows as `docs/DESIGN.md` describes: a model file or Hugging Face folder is opened
//! ([`gguf`], [`hf`], [`safetensors`]) with lazily mapped tensors; calibration text is run through it; a plan
//! chooses a [`format`] and a method per tensor; quantized tensors are streamed into a GGUF
//! file; an evaluator compares the result against the source. This crate holds all of it
//! except argument parsing, which lives in `lowbit-cli`.
#![warn(missing_docs)]
// `unsafe` only where a module allows it by name (the mmaps, the gemm calls), each with a
// SAFETY note.
#![deny(unsafe_code)]

pub mod allocate;
pub mod atomic;
pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod data;
pub mod error;
pub mod eval;
pub mod format;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod inspect;
pub mod interrupt;
pub mod kernels;
pub mod method;
pub mod model;
pub mod plan;
pub mod quantize;
pub mod safetensors;
pub mod saved_logits;
pub mod scratch;
pub mod sequential;
pub mod sweep;
pub mod tensor;
pub mod tokenizer;
pub mod transform;
pub mod units;
pub mod zoo;

pub use error::{Error, Result};

/// Lower-case hex of `bytes` (cache keys and digests: one formatting for all of them).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
