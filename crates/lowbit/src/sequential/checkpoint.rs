//! Sequential GPTQ's work folder: what is finished survives a crash or `kill -9`, and the
//! same command run again continues from the last finished block with the same bytes.
//!
//! The folder is `.<output name>.lowbit-work/` beside the output. It holds:
//! - `block-NNNN.bin` per finished block: its encoded tensors and importance entries;
//! - `hidden.bin`: the calibration chunks' hidden states after the last finished block
//!   (f32, so a resumed run computes exactly what an uninterrupted one would);
//! - `state.json`: `{key, blocks_done}`, written last, atomically: a block counts only once
//!   its files are complete. `key` hashes everything that decides the result (source
//!   identity, plan, calibration text, chunking, method options, lowbit version); a work
//!   folder with another key is discarded rather than resumed.
//!
//! Encoded tensors are read back one at a time when the output is written
//! ([`PreEncoded`]), so they never all sit in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::calibrate::hidden::HiddenStates;
use crate::calibrate::ImatrixEntry;
use crate::error::{Error, Result};
use crate::method::{Encoded, VqFit};

/// The work folder of one sequential run.
pub struct Checkpoint {
    dir: PathBuf,
    key: String,
}

/// Tensors encoded before the output is written: in memory, or in a work folder's block
/// files (read back one at a time).
#[derive(Clone, Debug, Default)]
pub struct PreEncoded {
    memory: HashMap<String, Encoded>,
    on_disk: HashMap<String, (PathBuf, u64)>,
}

impl PreEncoded {
    /// Whether no tensor is pre-encoded.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.on_disk.is_empty()
    }

    /// Adds a tensor held in memory.
    pub fn insert(&mut self, name: String, e: Encoded) {
        self.memory.insert(name, e);
    }

    /// The encoded tensor `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<Encoded>> {
        if let Some(e) = self.memory.get(name) {
            return Ok(Some(e.clone()));
        }
        let Some((path, offset)) = self.on_disk.get(name) else { return Ok(None) };
        let mut r = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
        r.seek(SeekFrom::Start(*offset)).map_err(|e| Error::io(path, e))?;
        let (_, e) = read_tensor(&mut r).map_err(|e| Error::io(path, e))?;
        Ok(Some(e))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

impl Checkpoint {
    /// The work folder for `output`, and how many blocks it has finished for `key` (0 when
    /// starting afresh; a folder for another key is emptied).
    pub fn open(output: &Path, key: String) -> Result<(Checkpoint, usize)> {
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = parent.join(format!(".{name}.lowbit-work"));
        let state: Option<serde_json::Value> =
            std::fs::read(dir.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let done = match &state {
            Some(s) if s["key"].as_str() == Some(&key) => s["blocks_done"].as_u64().unwrap_or(0) as usize,
            _ => {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
                }
                0
            }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok((Checkpoint { dir, key }, done))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block_path(&self, il: usize) -> PathBuf {
        self.dir.join(format!("block-{il:04}.bin"))
    }

    /// Records block `il` as finished: its encoded tensors, importance entries and the
    /// hidden states after it, then the state (last, so a crash never counts a half-saved
    /// block).
    pub fn save_block(
        &self,
        il: usize,
        tensors: &[(String, Encoded)],
        imatrix: &[(String, ImatrixEntry)],
        hidden: &mut HiddenStates,
    ) -> Result<()> {
        let mut block = Vec::new();
        block.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
        for (name, e) in tensors {
            write_tensor(&mut block, name, e);
        }
        block.extend_from_slice(&(imatrix.len() as u32).to_le_bytes());
        for (name, m) in imatrix {
            put_str(&mut block, name);
            block.extend_from_slice(&m.count.to_le_bytes());
            put_f32s(&mut block, &m.sums);
        }
        crate::atomic::write_atomic(&self.block_path(il), &block)?;
        let hidden_path = self.dir.join("hidden.bin");
        let mut tmp = crate::atomic::temp_beside(&hidden_path)?;
        {
            let mut w = BufWriter::with_capacity(1 << 22, tmp.as_file_mut());
            w.write_all(&(hidden.len() as u32).to_le_bytes()).map_err(io(&hidden_path))?;
            for i in 0..hidden.len() {
                let h = hidden.get(i)?;
                let mut buf = Vec::with_capacity(8 + 4 * h.len());
                put_f32s(&mut buf, &h);
                w.write_all(&buf).map_err(io(&hidden_path))?;
            }
            w.flush().map_err(io(&hidden_path))?;
        }
        tmp.as_file().sync_all().map_err(io(&hidden_path))?;
        tmp.persist(&hidden_path).map_err(|e| Error::io(&hidden_path, e.error))?;
        let state = serde_json::json!({"key": self.key, "blocks_done": il + 1});
        crate::atomic::write_atomic(&self.dir.join("state.json"), state.to_string().as_bytes())
    }

    /// Reads the hidden states after the last finished block into `hidden` (chunk by
    /// chunk); states of another shape (another calibration set-up) are an error.
    pub fn load_hidden(&self, hidden: &mut HiddenStates) -> Result<()> {
        let path = self.dir.join("hidden.bin");
        let mut r = BufReader::new(File::open(&path).map_err(io(&path))?);
        let n = read_u32(&mut r).map_err(io(&path))?;
        let unfit = || Error::format(&path, "the saved hidden states do not fit this run; delete the folder");
        if n as usize != hidden.len() {
            return Err(unfit());
        }
        for i in 0..hidden.len() {
            let h = read_f32s(&mut r).map_err(io(&path))?;
            if h.len() != hidden.rows(i) * hidden.width() {
                return Err(unfit());
            }
            hidden.set(i, &h)?;
        }
        Ok(())
    }

    /// The encoded tensors and importance entries of blocks `0..blocks`.
    pub fn load(&self, blocks: usize) -> Result<(PreEncoded, Vec<(String, ImatrixEntry)>)> {
        let mut pre = PreEncoded::default();
        let mut imatrix = Vec::new();
        for il in 0..blocks {
            let path = self.block_path(il);
            let mut r = BufReader::new(File::open(&path).map_err(io(&path))?);
            let n = read_u32(&mut r).map_err(io(&path))?;
            for _ in 0..n {
                let offset = r.stream_position().map_err(io(&path))?;
                let (name, _) = read_tensor(&mut r).map_err(io(&path))?;
                pre.on_disk.insert(name, (path.clone(), offset));
            }
            let n = read_u32(&mut r).map_err(io(&path))?;
            for _ in 0..n {
                let name = read_str(&mut r).map_err(io(&path))?;
                let mut c = [0u8; 4];
                r.read_exact(&mut c).map_err(io(&path))?;
                let sums = read_f32s(&mut r).map_err(io(&path))?;
                imatrix.push((name, ImatrixEntry { sums, count: f32::from_le_bytes(c) }));
            }
        }
        Ok((pre, imatrix))
    }

    /// Removes the folder if no block has finished in it (a run refused or stopped before
    /// its first block leaves nothing behind).
    pub fn discard_if_empty(&self) {
        if !self.dir.join("state.json").exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Removes the folder (the output is complete).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

fn write_tensor(out: &mut Vec<u8>, name: &str, e: &Encoded) {
    put_str(out, name);
    put_bytes(out, &e.bytes);
    match &e.vq {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_bytes(out, &v.codebook);
            out.extend_from_slice(&(v.used as u64).to_le_bytes());
            out.extend_from_slice(&(v.used_residual as u64).to_le_bytes());
            out.extend_from_slice(&v.relative_output_error.unwrap_or(f64::NAN).to_le_bytes());
        }
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A length read from a work file, refused when it cannot be right (a damaged file).
fn len(n: u64) -> std::io::Result<usize> {
    usize::try_from(n)
        .ok()
        .filter(|&n| n < 1 << 40)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged work file (length)"))
}

fn read_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let n = len(read_u64(r)?)?;
    let mut b = Vec::new();
    r.take(n as u64).read_to_end(&mut b)?;
    if b.len() != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(b)
}

fn read_str(r: &mut impl Read) -> std::io::Result<String> {
    let n = read_u32(r)? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged work file (name)"))
}

fn read_f32s(r: &mut impl Read) -> std::io::Result<Vec<f32>> {
    let b = {
        let n = len(read_u64(r)?)?;
        let mut b = Vec::new();
        r.take(4 * n as u64).read_to_end(&mut b)?;
        if b.len() != 4 * n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        b
    };
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

fn read_tensor(r: &mut impl Read) -> std::io::Result<(String, Encoded)> {
    let name = read_str(r)?;
    let bytes = read_bytes(r)?;
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let vq = if flag[0] == 1 {
        let codebook = read_bytes(r)?;
        let used = read_u64(r)? as usize;
        let used_residual = read_u64(r)? as usize;
        let err = f64::from_bits(read_u64(r)?);
        Some(VqFit { codebook, used, used_residual, relative_output_error: (!err.is_nan()).then_some(err) })
    } else {
        None
    };
    Ok((name, Encoded { bytes, vq }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_another_key_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let (c, done) = Checkpoint::open(&out, "k1".into()).unwrap();
        assert_eq!(done, 0);
        let vq = VqFit { codebook: vec![1, 2, 3], used: 7, used_residual: 0, relative_output_error: Some(0.25) };
        let t = vec![
            ("a".to_string(), Encoded { bytes: vec![9; 10], vq: None }),
            ("b".to_string(), Encoded { bytes: vec![8; 3], vq: Some(vq) }),
        ];
        let m = vec![("a".to_string(), ImatrixEntry { sums: vec![1.0, 2.0], count: 4.0 })];
        let mut hidden = HiddenStates::in_memory(1, vec![2, 1]);
        hidden.set(0, &[0.5, -1.0]).unwrap();
        hidden.set(1, &[3.0]).unwrap();
        c.save_block(0, &t, &m, &mut hidden).unwrap();
        let (c, done) = Checkpoint::open(&out, "k1".into()).unwrap();
        assert_eq!(done, 1);
        let mut back = HiddenStates::on_disk(1, vec![2, 1], &dir.path().join("spill.bin")).unwrap();
        c.load_hidden(&mut back).unwrap();
        assert_eq!((back.get(0).unwrap(), back.get(1).unwrap()), (vec![0.5, -1.0], vec![3.0]));
        drop(back);
        let mut other = HiddenStates::in_memory(1, vec![1, 2]);
        assert!(c.load_hidden(&mut other).unwrap_err().to_string().contains("do not fit"));
        let (pre, imatrix) = c.load(1).unwrap();
        assert_eq!(pre.get("a").unwrap().unwrap().bytes, vec![9; 10]);
        let b = pre.get("b").unwrap().unwrap();
        assert_eq!((b.bytes.len(), b.vq.as_ref().unwrap().used), (3, 7));
        assert!(pre.get("c").unwrap().is_none());
        assert_eq!(imatrix[0].1.sums, vec![1.0, 2.0]);
        let (c, done) = Checkpoint::open(&out, "k2".into()).unwrap();
        assert_eq!(done, 0);
        assert!(!c.dir().join("state.json").exists());
        c.remove().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
