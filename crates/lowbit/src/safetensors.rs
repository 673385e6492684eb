//! Hugging Face model folders: `config.json` plus one `model.safetensors` or shards listed
//! in `model.safetensors.index.json`. Files are memory-mapped; headers are validated by
//! the `safetensors` crate (offsets, sizes, dtypes) and then against `config.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Element types lowbit reads from safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StDtype {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit integers (buffers such as `position_ids`).
    I64,
}

impl StDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
            StDtype::I64 => 8,
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct StTensor {
    /// Tensor name as in the file.
    pub name: String,
    /// Element type.
    pub dtype: StDtype,
    /// Shape, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    shard: usize,
    start: usize,
    end: usize,
}

impl StTensor {
    /// (shard index, first byte in that shard's file) of the tensor's data.
    pub(crate) fn location(&self) -> (usize, usize) {
        (self.shard, self.start)
    }
}

/// An open Hugging Face model folder.
pub struct SafetensorsModel {
    /// The folder (for a lone file opened with [`SafetensorsModel::open_file`], the file).
    pub dir: PathBuf,
    /// Parsed `config.json`.
    pub config: serde_json::Value,
    shards: Vec<(PathBuf, Mmap)>,
    /// All tensors, by name.
    pub tensors: BTreeMap<String, StTensor>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    #[allow(unsafe_code)]
    // SAFETY: read-only map of an input file lowbit never writes while it is open.
    unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

/// Parses and validates one safetensors file's header, recording its tensors.
fn read_shard(
    path: &Path,
    mmap: &[u8],
    shard: usize,
    into: &mut BTreeMap<String, StTensor>,
    only: Option<&dyn Fn(&str) -> bool>,
) -> Result<()> {
    if mmap.len() < 8 {
        return Err(Error::format(path, format!("too short to be safetensors ({} bytes)", mmap.len())));
    }
    let st = SafeTensors::deserialize(mmap).map_err(|e| Error::format(path, format!("invalid safetensors: {e}")))?;
    let header_len = 8 + u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes")) as usize;
    for (name, view) in st.tensors() {
        if only.is_some_and(|f| !f(&name)) {
            continue;
        }
        let dtype = match view.dtype() {
            Dtype::F32 => StDtype::F32,
            Dtype::F16 => StDtype::F16,
            Dtype::BF16 => StDtype::BF16,
            Dtype::I64 => StDtype::I64,
            other => {
                return Err(Error::tensor(
                    path,
                    &name,
                    format!("dtype {other:?} is not supported (F32, F16, BF16, I64)"),
                ))
            }
        };
        let data = view.data();
        // The view borrows from the map: recover its byte range for later zero-copy access.
        let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
        debug_assert!(start >= header_len);
        if into.contains_key(&name) {
            return Err(Error::tensor(path, &name, "appears in more than one shard"));
        }
        into.insert(
            name.clone(),
            StTensor { name, dtype, shape: view.shape().to_vec(), shard, start, end: start + data.len() },
        );
    }
    Ok(())
}

/// Parses and validates a safetensors image held in memory, returning its tensors
/// (used by the fuzzer and tests; `name` appears in error messages).
pub fn parse_header(name: &Path, bytes: &[u8]) -> Result<Vec<StTensor>> {
    let mut map = BTreeMap::new();
    read_shard(name, bytes, 0, &mut map, None)?;
    Ok(map.into_values().collect())
}

/// Rejects shard names that could escape the folder.
fn safe_relative(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::format(index, format!("shard name {name:?} is not a plain file name in the folder")));
    }
    Ok(dir.join(p))
}

impl SafetensorsModel {
    /// Opens one `.safetensors` file: the model folder it belongs to when it is that
    /// folder's `model.safetensors` or one of its shards (a `config.json` beside it), else
    /// the file alone (an adapter or single-file checkpoint: its tensors, no config), so
    /// that a broken file is named with its own problem.
    pub fn open_file(path: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::format(path, "not a file"));
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if dir.join("config.json").is_file() {
            let folder = SafetensorsModel::open(dir)?;
            let same = |p: &Path| p.canonicalize().ok() == path.canonicalize().ok();
            if folder.shards.iter().any(|(p, _)| same(p)) {
                return Ok(folder);
            }
        }
        let mmap = map_file(path)?;
        let mut tensors = BTreeMap::new();
        read_shard(path, &mmap, 0, &mut tensors, None)?;
        let config = serde_json::Value::Object(Default::default());
        Ok(SafetensorsModel { dir: path.to_path_buf(), config, shards: vec![(path.to_path_buf(), mmap)], tensors })
    }

    /// Opens the model folder `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::format(&dir, "expected a model folder holding config.json and *.safetensors"));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::format(&dir, "no config.json: a model folder needs config.json and *.safetensors"));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
        if !config.is_object() {
            return Err(Error::format(&config_path, "expected a JSON object"));
        }
        let mut tensors = BTreeMap::new();
        let mut shards = Vec::new();
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "missing \"weight_map\" object"))?;
            let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::format(&index_path, format!("weight_map entry for '{tensor}' is not a string"))
                })?;
                by_file.entry(file.to_string()).or_default().push(tensor.clone());
            }
            for (file, names) in &by_file {
                let path = safe_relative(&dir, &index_path, file)?;
                if !path.exists() {
                    return Err(Error::format(
                        &index_path,
                        format!(
                            "shard '{file}' (holding {} tensors, e.g. '{}') is missing from the folder",
                            names.len(),
                            names[0]
                        ),
                    ));
                }
                let mmap = map_file(&path)?;
                let idx = shards.len();
                let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
                read_shard(&path, &mmap, idx, &mut tensors, Some(&|n: &str| wanted.contains(n)))?;
                for n in names {
                    if !tensors.contains_key(n) {
                        return Err(Error::tensor(
                            &path,
                            n,
                            "listed in the index for this shard but not present in it",
                        ));
                    }
                }
                shards.push((path, mmap));
            }
        } else if single.exists() {
            let mmap = map_file(&single)?;
            read_shard(&single, &mmap, 0, &mut tensors, None)?;
            shards.push((single, mmap));
        } else {
            return Err(Error::format(&dir, "no model.safetensors or model.safetensors.index.json in the folder"));
        }
        let model = SafetensorsModel { dir, config, shards, tensors };
        model.check_config()?;
        Ok(model)
    }

    /// An integer field of `config.json`.
    pub fn config_usize(&self, key: &str) -> Option<usize> {
        self.config.get(key).and_then(|v| v.as_u64()).map(|v| v as usize)
    }

    /// The architecture named in `config.json` (`architectures[0]`, else `model_type`).
    pub fn architecture(&self) -> Option<&str> {
        self.config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| self.config.get("model_type").and_then(|v| v.as_str()))
    }

    /// Checks the shapes `config.json` promises against the tensors actually stored, so a
    /// lying config fails here with a clear message instead of deep inside a forward pass.
    fn check_config(&self) -> Result<()> {
        let cfg_path = self.dir.join("config.json");
        let hidden = self.config_usize("hidden_size");
        let vocab = self.config_usize("vocab_size");
        let layers = self.config_usize("num_hidden_layers");
        let ffn = self.config_usize("intermediate_size");
        let find_suffix = |suffix: &str| self.tensors.values().find(|t| t.name.ends_with(suffix));
        let expect = |t: &StTensor, want: &[Option<usize>], what: &str| -> Result<()> {
            let ok = t.shape.len() == want.len() && t.shape.iter().zip(want).all(|(s, w)| w.is_none_or(|w| w == *s));
            if ok {
                Ok(())
            } else {
                Err(Error::format(
                    &cfg_path,
                    format!(
                        "config.json {what} implies shape {want:?} for '{}', but the file stores {:?}",
                        t.name, t.shape
                    ),
                ))
            }
        };
        if let Some(t) = find_suffix("embeddings.word_embeddings.weight").or_else(|| find_suffix("embed_tokens.weight"))
        {
            expect(t, &[vocab, hidden], "vocab_size/hidden_size")?;
        }
        if let Some(t) =
            find_suffix("layer.0.intermediate.dense.weight").or_else(|| find_suffix("layers.0.mlp.up_proj.weight"))
        {
            expect(t, &[ffn, hidden], "intermediate_size/hidden_size")?;
        }
        if let Some(n) = layers {
            let present = |i: usize| {
                let a = format!("layer.{i}.");
                let b = format!("layers.{i}.");
                self.tensors.keys().any(|k| k.contains(&a) || k.contains(&b))
            };
            let has_any_layer = present(0);
            if has_any_layer {
                if let Some(missing) = (0..n).find(|&i| !present(i)) {
                    return Err(Error::format(
                        &cfg_path,
                        format!("num_hidden_layers is {n} but layer {missing} has no tensors"),
                    ));
                }
                if present(n) {
                    return Err(Error::format(
                        &cfg_path,
                        format!("num_hidden_layers is {n} but the files hold a layer {n}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shard file holding `name`.
    pub fn shard_path(&self, t: &StTensor) -> &Path {
        &self.shards[t.shard].0
    }

    /// Raw little-endian bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&StTensor, &[u8])> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::tensor(&self.dir, name, "no such tensor in the model folder"))?;
        Ok((t, &self.shards[t.shard].1[t.start..t.end]))
    }

    /// Tensor `name` as f32 values (row-major, PyTorch order).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (t, b) = self.tensor_bytes(name)?;
        Ok(match t.dtype {
            StDtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StDtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StDtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StDtype::I64 => {
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
        })
    }

    /// Takes the folder apart: the shard maps (in shard order) and the tensors, whose
    /// [`StTensor::location`] index into them. Used to present the folder as GGUF.
    pub(crate) fn into_shards(self) -> (Vec<(PathBuf, Mmap)>, BTreeMap<String, StTensor>) {
        (self.shards, self.tensors)
    }

    /// Total bytes of all shards.
    pub fn total_size(&self) -> u64 {
        self.shards.iter().map(|(_, m)| m.len() as u64).sum()
    }
}
