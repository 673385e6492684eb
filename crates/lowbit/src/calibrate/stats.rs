//! Full calibration statistics: the importance matrix plus, for every distinct layer
//! input, the Hessian H = Σ xxᵀ that GPTQ needs. Layers that read the same input (q, k
//! and v; gate and up) share one H, so it is computed and stored once
//! ([`shared_input_key`]).
//!
//! File format: safetensors (the `safetensors` crate, readable by any tool of the
//! field). Tensors `hessian.<input key>` (F32, n × n, Σ xxᵀ) and `in_sum2.<weight name>`
//! (F32, n, Σ x²); the metadata entry `lowbit.stats` holds JSON with the format version,
//! datasets, chunk count and size, row counts, and which input each weight reads.
//! [`CalibrationStats::read`] maps the file: Hessians stay in it ([`Floats::Mapped`])
//! and are paged in when a tensor needs them, so an 8B model's 33 GB of them never sit in
//! memory at once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::floats::Floats;
use super::{Imatrix, ImatrixEntry};
use crate::error::{Error, Result};

/// Σ xxᵀ over the calibration rows that reached one layer input.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    /// Input width.
    pub n: usize,
    /// Σ xxᵀ, row-major n × n (f32, as stored: the in-memory and saved paths agree); in
    /// memory, or mapped from a statistics file.
    pub xtx: Floats,
    /// Rows summed.
    pub count: u64,
}

/// Calibration statistics of a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CalibrationStats {
    /// Per-weight importance (always present).
    pub imatrix: Imatrix,
    /// Hessians by input key (empty when only the importance was recorded).
    pub hessians: BTreeMap<String, Arc<Hessian>>,
    /// For each weight, the key of the input it reads.
    pub inputs: BTreeMap<String, String>,
}

/// The key of the input a weight reads: weights fed the same activations share it
/// (`blk.3.attn_q.weight` → `blk.3.attn_qkv`, `blk.3.ffn_up.weight` → `blk.3.ffn_gate_up`;
/// Hugging Face names likewise); any other weight is its own key.
pub fn shared_input_key(weight: &str) -> String {
    let stem = weight.strip_suffix(".weight").unwrap_or(weight);
    for (parts, shared) in [
        (&["attn_q", "attn_k", "attn_v"][..], "attn_qkv"),
        (&["ffn_gate", "ffn_up"][..], "ffn_gate_up"),
        (&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..], "self_attn.qkv_proj"),
        (&["mlp.gate_proj", "mlp.up_proj"][..], "mlp.gate_up_proj"),
    ] {
        for p in parts {
            if let Some(prefix) = stem.strip_suffix(p) {
                if prefix.is_empty() || prefix.ends_with('.') {
                    return format!("{prefix}{shared}");
                }
            }
        }
    }
    stem.to_string()
}

/// The JSON in the file's `lowbit.stats` metadata entry.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StatsHeader {
    pub(super) version: u32,
    pub(super) datasets: Vec<String>,
    pub(super) chunk_count: u32,
    pub(super) chunk_size: u32,
    pub(super) counts: BTreeMap<String, f32>,
    pub(super) hessian_counts: BTreeMap<String, u64>,
    pub(super) inputs: BTreeMap<String, String>,
}

/// The metadata key holding [`StatsHeader`].
pub(super) const STATS_KEY: &str = "lowbit.stats";

impl CalibrationStats {
    /// The Hessian each weight reads, by weight name (shared entries are one Arc).
    pub fn hessians_by_weight(&self) -> HashMap<String, Arc<Hessian>> {
        self.inputs.iter().filter_map(|(w, k)| Some((w.clone(), self.hessians.get(k)?.clone()))).collect()
    }

    /// Writes the statistics as safetensors (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let header = StatsHeader {
            version: 1,
            datasets: self.imatrix.datasets.clone(),
            chunk_count: self.imatrix.chunk_count,
            chunk_size: self.imatrix.chunk_size,
            counts: self.imatrix.entries.iter().map(|(k, e)| (k.clone(), e.count)).collect(),
            hessian_counts: self.hessians.iter().map(|(k, h)| (k.clone(), h.count)).collect(),
            inputs: self.inputs.clone(),
        };
        let f32_bytes = |v: &mut dyn Iterator<Item = f32>| v.flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, h) in &self.hessians {
            buffers.push((format!("hessian.{k}"), vec![h.n, h.n], f32_bytes(&mut h.xtx.iter().copied())));
        }
        for (k, e) in &self.imatrix.entries {
            buffers.push((format!("in_sum2.{k}"), vec![e.sums.len()], f32_bytes(&mut e.sums.iter().copied())));
        }
        let views = buffers
            .iter()
            .map(|(name, shape, bytes)| {
                let v = TensorView::new(Dtype::F32, shape.clone(), bytes).expect("shape matches the bytes");
                (name.clone(), v)
            })
            .collect::<Vec<_>>();
        let meta = HashMap::from([(STATS_KEY.to_string(), serde_json::to_string(&header).expect("serializable"))]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::format(path, e.to_string()))?;
        crate::atomic::write_atomic(path, &bytes)
    }

    /// Reads statistics written by [`CalibrationStats::write`] (or block by block): the
    /// importances into memory, the Hessians left in the mapped file.
    pub fn read(path: &Path) -> Result<CalibrationStats> {
        let bad = |what: String| Error::format(path, format!("not a lowbit calibration statistics file: {what}"));
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            return Err(bad("it is a directory".into()));
        }
        // SAFETY: memmap2's `map` is unsafe because another process could change or
        // truncate the file under the map. The map is read-only, lowbit never writes a file
        // it has open for reading (outputs go to a temp file renamed into place, never onto
        // an input), and every tensor's range is checked against the map's size (by the
        // safetensors parser and by `Floats::mapped`) before it is read.
        #[allow(unsafe_code)]
        let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
        let data: &[u8] = &map;
        let (_, meta) = SafeTensors::read_metadata(data).map_err(|e| bad(e.to_string()))?;
        let header_text =
            meta.metadata().as_ref().and_then(|m| m.get(STATS_KEY)).ok_or_else(|| bad(format!("no {STATS_KEY}")))?;
        let header: StatsHeader = serde_json::from_str(header_text).map_err(|e| bad(e.to_string()))?;
        if header.version != 1 {
            return Err(bad(format!("version {} (this lowbit reads 1)", header.version)));
        }
        let st = SafeTensors::deserialize(data).map_err(|e| bad(e.to_string()))?;
        let floats = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| bad(format!("tensor {name} is missing")))?;
            if t.dtype() != Dtype::F32 || t.data().len() != 4 * len {
                return Err(bad(format!("tensor {name} is not F32 with {len} values")));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let mut stats = CalibrationStats {
            imatrix: Imatrix {
                datasets: header.datasets,
                chunk_count: header.chunk_count,
                chunk_size: header.chunk_size,
                ..Default::default()
            },
            inputs: header.inputs,
            ..Default::default()
        };
        for (k, count) in header.hessian_counts {
            let name = format!("hessian.{k}");
            let t = st.tensor(&name).map_err(|_| bad(format!("tensor {name} is missing")))?;
            let n = t.shape()[0];
            if t.dtype() != Dtype::F32 || t.shape() != [n, n] || t.data().len() != 4 * n * n {
                return Err(bad(format!("tensor {name} is not an F32 square matrix")));
            }
            let offset = t.data().as_ptr() as usize - data.as_ptr() as usize;
            let xtx = Floats::mapped(map.clone(), offset, n * n)
                .ok_or_else(|| bad(format!("tensor {name} is not 4-byte aligned in the file")))?;
            stats.hessians.insert(k, Arc::new(Hessian { n, xtx, count }));
        }
        for (k, count) in header.counts {
            let name = format!("in_sum2.{k}");
            let n = st.tensor(&name).map_err(|_| bad(format!("tensor {name} is missing")))?.shape()[0];
            stats.imatrix.entries.insert(k, ImatrixEntry { sums: floats(&name, n)?, count });
        }
        for (w, k) in &stats.inputs {
            if !stats.hessians.contains_key(k) {
                return Err(bad(format!("{w} reads input {k}, which has no Hessian")));
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_reading_one_input_share_a_key() {
        assert_eq!(shared_input_key("blk.3.attn_q.weight"), "blk.3.attn_qkv");
        assert_eq!(shared_input_key("blk.3.attn_v.weight"), "blk.3.attn_qkv");
        assert_eq!(shared_input_key("blk.3.ffn_up.weight"), "blk.3.ffn_gate_up");
        assert_eq!(shared_input_key("blk.3.ffn_down.weight"), "blk.3.ffn_down");
        assert_eq!(shared_input_key("blk.3.attn_output.weight"), "blk.3.attn_output");
        assert_eq!(shared_input_key("model.layers.0.self_attn.k_proj.weight"), "model.layers.0.self_attn.qkv_proj");
        assert_eq!(shared_input_key("model.layers.0.mlp.gate_proj.weight"), "model.layers.0.mlp.gate_up_proj");
    }

    #[test]
    fn statistics_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CalibrationStats::default();
        s.imatrix.datasets = vec!["emma.txt".into()];
        s.imatrix.chunk_count = 2;
        s.imatrix.chunk_size = 8;
        for w in ["blk.0.attn_q.weight", "blk.0.attn_k.weight"] {
            s.imatrix.entries.insert(w.into(), ImatrixEntry { sums: vec![1.0, 2.0], count: 16.0 });
            s.inputs.insert(w.into(), "blk.0.attn_qkv".into());
        }
        let xtx = vec![1.0, 0.5, 0.5, 2.0].into();
        s.hessians.insert("blk.0.attn_qkv".into(), Arc::new(Hessian { n: 2, xtx, count: 16 }));
        let p = dir.path().join("stats.safetensors");
        s.write(&p).unwrap();
        let back = CalibrationStats::read(&p).unwrap();
        assert_eq!(back, s);
        assert!(matches!(back.hessians["blk.0.attn_qkv"].xtx, Floats::Mapped { .. }), "Hessians stay in the file");
        let by_weight = back.hessians_by_weight();
        assert!(Arc::ptr_eq(&by_weight["blk.0.attn_q.weight"], &by_weight["blk.0.attn_k.weight"]));
        let data = std::fs::read(&p).unwrap();
        drop((back, by_weight));
        std::fs::write(&p, &data[..data.len() / 2]).unwrap();
        let e = CalibrationStats::read(&p).unwrap_err().to_string();
        assert!(e.contains("stats.safetensors") && e.contains("calibration statistics"), "{e}");
    }
}
