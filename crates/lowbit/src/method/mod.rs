//! Methods for choosing quantized values. A *format* ([`crate::format`]) says how numbers
//! are stored and how one block is fitted on its own; a *method* decides which stored
//! numbers best represent a whole weight matrix, possibly looking across blocks and rows
//! with calibration statistics. [`quantize_tensor`] is the one entry point every caller
//! (the file quantizer, sequential GPTQ, the sweep) goes through.

pub mod gptq;
pub mod incoherence;
pub mod kmeans;
pub mod low_rank;
pub mod orthogonal;
mod tensor;
pub mod vq;

pub use tensor::{quantize_tensor, Calibration, Encoded, MethodOptions, VqFit};

use crate::format::encode::Fit;

/// How a weight matrix is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Method {
    /// Every block rounded to nearest on its own ([`Fit::Rtn`]).
    Rtn,
    /// Every block fitted on its own by the weighted least-squares search ([`Fit::Search`]),
    /// importance-weighted when an importance matrix is given.
    #[default]
    Search,
    /// GPTQ: blocks chosen in column order with the input Hessian, each block's rounding
    /// error pushed onto the columns not yet quantized ([`gptq`]); learned-codebook (VQ)
    /// formats get the Hessian sweep and refits of [`vq`], native group formats the sweep
    /// with each group's scale fitted when it is reached. Falls back to
    /// [`Method::Search`] for formats GPTQ does not support and tensors without a Hessian.
    Gptq,
}

impl Method {
    /// Parses `rtn`, `search` (also accepted: `importance`, which is `search` driven by an
    /// importance matrix when one is given) or `gptq`.
    pub fn from_name(name: &str) -> Option<Method> {
        match name.to_ascii_lowercase().as_str() {
            "rtn" => Some(Method::Rtn),
            "search" | "importance" => Some(Method::Search),
            "gptq" => Some(Method::Gptq),
            _ => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Search => "search",
            Method::Gptq => "gptq",
        }
    }

    /// How a single block is fitted where this method fits blocks on their own.
    pub fn fit(self) -> Fit {
        match self {
            Method::Rtn => Fit::Rtn,
            Method::Search | Method::Gptq => Fit::Search,
        }
    }
}
