//! Methods for choosing quantized values. A *format* says how numbers are stored; a
//! *method* decides which stored numbers best represent a weight row. This module holds
//! the calibration-free methods: round-to-nearest and the error-minimising search of
//! scales and minimums ([`search`]), both driven by optional per-weight importances.

pub mod gptq;
pub mod kmeans;
pub mod search;
pub mod vq;

/// How block scales and codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Method {
    /// Round to nearest with the scale set by the block's largest magnitude (llama.cpp's
    /// `quantize_row_*_ref` for the legacy types; no search anywhere).
    Rtn,
    /// Weighted least-squares search over candidate scales (and minimums), then the
    /// super-block scales themselves fitted by weighted search; at least as thorough as
    /// llama.cpp's `make_qx_quants` / `make_qkx*_quants` family.
    #[default]
    Search,
}

impl Method {
    /// Parses `rtn` or `search` (also accepted: `importance`, which is `search` driven by
    /// an importance matrix when one is given).
    pub fn from_name(name: &str) -> Option<Method> {
        match name.to_ascii_lowercase().as_str() {
            "rtn" => Some(Method::Rtn),
            "search" | "importance" => Some(Method::Search),
            _ => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Search => "search",
        }
    }
}
