//! The calibration chunks' hidden states between blocks, for the block-by-block passes
//! (sequential GPTQ, the statistics file): in memory, or — when they would not fit the
//! memory budget — in a file, read and rewritten one chunk at a time.
//!
//! Spilled states stay f32 (not f16, as llm-compressor's offloading does): a spilled run
//! then computes exactly what an in-memory run computes, so the output's bytes do not
//! depend on the budget, and Gemma's residual stream (values past f16's 65504 in some
//! channels) cannot overflow. The cost is twice the disk traffic: 4 bytes per token and
//! hidden unit per pass (an 8B model on 128 chunks of 2048 tokens: 4.3 GB).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Hidden states of `chunks` sequences, each `rows × width` f32.
pub struct HiddenStates {
    width: usize,
    rows: Vec<usize>,
    store: Store,
}

enum Store {
    Memory(Vec<Vec<f32>>),
    /// Chunk `i` at byte `4 · width · Σ rows[..i]` of the file (removed on drop).
    Disk {
        path: PathBuf,
        file: File,
    },
}

impl HiddenStates {
    /// Bytes the states of `rows` (per chunk) take at `width`.
    pub fn bytes(rows: &[usize], width: usize) -> u64 {
        4 * width as u64 * rows.iter().sum::<usize>() as u64
    }

    /// States kept in memory.
    pub fn in_memory(width: usize, rows: Vec<usize>) -> HiddenStates {
        let store = Store::Memory(rows.iter().map(|&r| vec![0.0; r * width]).collect());
        HiddenStates { width, rows, store }
    }

    /// States kept in a new file `path` (replaced if it exists; removed when dropped).
    pub fn on_disk(width: usize, rows: Vec<usize>, path: &Path) -> Result<HiddenStates> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(Self::bytes(&rows, width)).map_err(|e| Error::io(path, e))?;
        Ok(HiddenStates { width, rows, store: Store::Disk { path: path.to_path_buf(), file } })
    }

    /// Whether the states live in a file.
    pub fn spilled(&self) -> bool {
        matches!(self.store, Store::Disk { .. })
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no chunks.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows (tokens) of chunk `i`.
    pub fn rows(&self, i: usize) -> usize {
        self.rows[i]
    }

    /// Row width (the model's hidden size).
    pub fn width(&self) -> usize {
        self.width
    }

    fn offset(&self, i: usize) -> u64 {
        Self::bytes(&self.rows[..i], self.width)
    }

    /// A copy of chunk `i`'s states.
    pub fn get(&mut self, i: usize) -> Result<Vec<f32>> {
        let offset = self.offset(i);
        let n = self.rows[i] * self.width;
        match &mut self.store {
            Store::Memory(m) => Ok(m[i].clone()),
            Store::Disk { path, file } => {
                let mut bytes = vec![0u8; 4 * n];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut bytes))
                    .map_err(|e| Error::io(path, e))?;
                Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
        }
    }

    /// Replaces chunk `i`'s states with `x` (`rows(i) × width` values).
    pub fn set(&mut self, i: usize, x: &[f32]) -> Result<()> {
        assert_eq!(x.len(), self.rows[i] * self.width, "chunk {i} has another shape");
        let offset = self.offset(i);
        match &mut self.store {
            Store::Memory(m) => m[i].copy_from_slice(x),
            Store::Disk { path, file } => {
                let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.write_all(&bytes))
                    .map_err(|e| Error::io(path, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for HiddenStates {
    fn drop(&mut self) {
        if let Store::Disk { path, .. } = &self.store {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_disk_hold_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![3, 1, 2];
        let mut a = HiddenStates::in_memory(4, rows.clone());
        let mut b = HiddenStates::on_disk(4, rows.clone(), &dir.path().join("h.bin")).unwrap();
        assert!(b.spilled() && !a.spilled());
        for (i, &r) in rows.iter().enumerate() {
            let x: Vec<f32> = (0..r * 4).map(|k| (i * 100 + k) as f32 * 0.37 - 1e30 * (k % 2) as f32).collect();
            a.set(i, &x).unwrap();
            b.set(i, &x).unwrap();
        }
        b.set(1, &[7.0; 4]).unwrap();
        a.set(1, &[7.0; 4]).unwrap();
        for i in 0..rows.len() {
            assert_eq!(a.get(i).unwrap(), b.get(i).unwrap());
        }
        let path = dir.path().join("h.bin");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4 * 6);
        drop(b);
        assert!(!path.exists(), "the spill file is removed with the states");
    }
}
