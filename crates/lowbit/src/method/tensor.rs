//! The one entry point for quantizing a weight matrix: [`quantize_tensor`] takes the
//! target storage, the dense weights, what calibration knows about the layer's inputs and
//! a [`Method`], and returns the stored bytes. The file quantizer
//! ([`crate::quantize`]), sequential GPTQ ([`crate::sequential`]) and the sweep all call
//! it, so a method or format added here is available everywhere.

use super::gptq::{gptq_native, gptq_rows, supports, GptqOptions};
use super::vq::{quantize_vq, VqOptions};
use super::Method;
use crate::format::encode::EncodeError;
use crate::format::storage::{decode, encode_rows, StorageType};
use crate::format::DecodeError;

/// What calibration knows about one weight matrix's inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calibration<'a> {
    /// Per-column importance (mean squared input: a row of an importance matrix). Weighs
    /// the block fits' errors and the codebook fits.
    pub importance: Option<&'a [f32]>,
    /// The input Hessian Σ xxᵀ (columns × columns, row-major). Used by [`Method::Gptq`];
    /// one of another size is ignored.
    pub hessian: Option<&'a [f32]>,
}

/// Tunables of the methods (defaults cite the measurements behind them).
#[derive(Clone, Copy, Debug, Default)]
pub struct MethodOptions {
    /// Dampening, shrinkage and refinement of GPTQ; also used by the VQ sweep (it
    /// replaces `vq.gptq`).
    pub gptq: GptqOptions,
    /// k-means, rounds and refits of learned codebooks.
    pub vq: VqOptions,
}

/// A quantized tensor, as it is stored.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The tensor's own bytes (for a VQ format: the rows of scales and codes).
    pub bytes: Vec<u8>,
    /// For a VQ format, its codebook tensor's bytes and what the fit reports.
    pub vq: Option<VqFit>,
}

impl Encoded {
    /// Bytes stored, codebook included (what a plan counts for the tensor).
    pub fn stored_bytes(&self) -> u64 {
        (self.bytes.len() + self.vq.as_ref().map_or(0, |v| v.codebook.len())) as u64
    }

    /// The values these bytes stand for (`n` values in rows of `cols`), stored as `target`.
    pub fn decode(&self, target: StorageType, n: usize, cols: usize) -> Result<Vec<f32>, DecodeError> {
        decode(target, &self.bytes, self.vq.as_ref().map(|v| v.codebook.as_slice()), n, cols)
    }
}

/// What a learned-codebook fit produced beside the rows.
#[derive(Clone, Debug)]
pub struct VqFit {
    /// The codebook tensor's bytes (f16, main entries then residual ones).
    pub codebook: Vec<u8>,
    /// Main-codebook entries some vector uses.
    pub used: usize,
    /// Residual-codebook entries some vector uses (0 without one).
    pub used_residual: usize,
    /// Layer output error relative to the layer's output on the calibration inputs,
    /// ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖², when fitted with a Hessian.
    pub relative_output_error: Option<f64>,
}

/// Quantizes the row-major matrix `weights` (rows of `cols` values) as `target` with
/// `method`:
/// - a learned-codebook (VQ) format is fitted by weighted k-means, then with
///   [`Method::Gptq`] and a Hessian by the GPTQ sweep and codebook refits ([`super::vq`]);
/// - a ggml block format GPTQ supports or a native group format, with [`Method::Gptq`]
///   and a Hessian, by GPTQ ([`super::gptq`]);
/// - everything else block by block with the method's [`Method::fit`], importance-weighted
///   when an importance is given.
///
/// Deterministic: the bytes do not depend on the number of threads.
pub fn quantize_tensor(
    target: StorageType,
    weights: &[f32],
    cols: usize,
    method: Method,
    calibration: &Calibration,
    options: &MethodOptions,
) -> Result<Encoded, EncodeError> {
    let hessian = calibration.hessian.filter(|h| method == Method::Gptq && h.len() == cols * cols);
    match (target, hessian) {
        (StorageType::Vq(f), h) => {
            let opts = VqOptions { gptq: options.gptq, ..options.vq };
            let v = quantize_vq(&f, weights, cols, calibration.importance, h, &opts)?;
            Ok(Encoded {
                bytes: v.payload,
                vq: Some(VqFit {
                    codebook: v.codebook,
                    used: v.used,
                    used_residual: v.used_residual,
                    relative_output_error: v.relative_output_error,
                }),
            })
        }
        (StorageType::Ggml(ty), Some(h)) if supports(ty) => {
            Ok(Encoded { bytes: gptq_rows(ty, weights, cols, h, &options.gptq)?, vq: None })
        }
        (StorageType::Native(f), Some(h)) => {
            Ok(Encoded { bytes: gptq_native(f, weights, cols, h, &options.gptq)?, vq: None })
        }
        _ => Ok(Encoded { bytes: encode_rows(target, weights, cols, calibration.importance, method.fit())?, vq: None }),
    }
}
