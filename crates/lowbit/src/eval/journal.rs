//! What an interrupted `evaluate` keeps: every finished chunk's per-token results (and,
//! with `--save-logits`, its saved records), so the same command run again continues from
//! the first unfinished chunk and reports exactly what an uninterrupted run would.
//!
//! State lives in one folder per evaluation, named by a hash of everything that decides
//! the result (the models' identities, numerics, tokens, ctx, chunks, the save target, the
//! lowbit version), so a changed input never resumes stale work:
//! - `chunks.bin`: per finished chunk, per scored token, 26 bytes (f64 nll, f64 KL or NaN,
//!   f64 reference nll, u8 top-1 agreement, u8 padding), appended and synced chunk by chunk;
//! - `logits.part` (when saving): the saved-logits file being built; synced before its
//!   chunk's stats are appended, so it always holds at least the journaled chunks.
//!
//! A torn tail (killed mid-write) is cut back to the last whole chunk. Finishing moves
//! `logits.part` to the target (rename, or a copy across file systems) and removes the
//! folder.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes of one scored token's journal entry.
const ROW_BYTES: usize = 26;

/// One scored token's results, as `evaluate` accumulates them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Row {
    pub nll: f64,
    /// (KL divergence, top-1 agreement, reference nll) when there is a reference.
    pub kl: Option<(f64, bool, f64)>,
}

/// An open evaluation journal.
pub(super) struct Journal {
    dir: PathBuf,
    chunks: File,
    logits: Option<File>,
    rows_per_chunk: usize,
    /// Chunks already finished when the journal was opened.
    pub done: usize,
    /// Their rows, in order.
    pub rows: Vec<Row>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Opens (creating if needed) a journal file for reading and appending, keeping its contents.
fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io(path))
}

impl Journal {
    /// Opens (or starts) the journal in `dir`. `logits_head` is the saved-logits file's
    /// header bytes when saving, `record_bytes` the size of one saved record.
    pub fn open(dir: &Path, rows_per_chunk: usize, logits_head: Option<(&[u8], usize)>) -> Result<Journal> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let chunks_path = dir.join("chunks.bin");
        let mut chunks = open_rw(&chunks_path)?;
        let mut bytes = Vec::new();
        chunks.read_to_end(&mut bytes).map_err(io(&chunks_path))?;
        let chunk_bytes = rows_per_chunk * ROW_BYTES;
        let mut done = bytes.len() / chunk_bytes.max(1);
        let mut logits = None;
        if let Some((head, rec)) = logits_head {
            let path = dir.join("logits.part");
            let mut f = open_rw(&path)?;
            let mut existing = vec![0u8; head.len()];
            let len = f.metadata().map_err(io(&path))?.len() as usize;
            let same_head = len >= head.len() && f.read_exact(&mut existing).is_ok() && existing == head;
            if same_head {
                done = done.min((len - head.len()) / (rows_per_chunk * rec));
            } else {
                done = 0;
                f.set_len(0).map_err(io(&path))?;
                f.seek(SeekFrom::Start(0)).map_err(io(&path))?;
                f.write_all(head).map_err(io(&path))?;
            }
            let keep = (head.len() + done * rows_per_chunk * rec) as u64;
            f.set_len(keep).map_err(io(&path))?;
            f.seek(SeekFrom::Start(keep)).map_err(io(&path))?;
            logits = Some(f);
        }
        chunks.set_len((done * chunk_bytes) as u64).map_err(io(&chunks_path))?;
        chunks.seek(SeekFrom::End(0)).map_err(io(&chunks_path))?;
        let rows = bytes[..done * chunk_bytes].chunks_exact(ROW_BYTES).map(decode).collect();
        Ok(Journal { dir: dir.to_path_buf(), chunks, logits, rows_per_chunk, done, rows })
    }

    /// Records one finished chunk: its saved records first (synced), then its rows.
    pub fn append(&mut self, rows: &[Row], records: &[u8]) -> Result<()> {
        debug_assert_eq!(rows.len(), self.rows_per_chunk);
        if let Some(f) = self.logits.as_mut() {
            let path = self.dir.join("logits.part");
            f.write_all(records).and_then(|_| f.sync_data()).map_err(io(&path))?;
        }
        let path = self.dir.join("chunks.bin");
        let bytes: Vec<u8> = rows.iter().flat_map(encode).collect();
        self.chunks.write_all(&bytes).and_then(|_| self.chunks.sync_data()).map_err(io(&path))
    }

    /// Moves the saved logits (if any) to `target` and removes the journal.
    pub fn finish(self, target: Option<&Path>) -> Result<()> {
        drop(self.chunks);
        if let (Some(f), Some(target)) = (self.logits, target) {
            drop(f);
            let part = self.dir.join("logits.part");
            crate::atomic::check_output(target)?;
            if fs::rename(&part, target).is_err() {
                // Another file system: copy through a temporary file beside the target.
                let mut tmp = crate::atomic::temp_beside(target)?;
                let mut src = File::open(&part).map_err(io(&part))?;
                std::io::copy(&mut src, tmp.as_file_mut()).map_err(io(target))?;
                tmp.as_file().sync_all().map_err(io(target))?;
                tmp.persist(target).map_err(|e| Error::io(target, e.error))?;
            }
        }
        fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

fn encode(r: &Row) -> [u8; ROW_BYTES] {
    let mut b = [0u8; ROW_BYTES];
    let (kl, agree, ref_nll) = r.kl.unwrap_or((f64::NAN, false, f64::NAN));
    b[..8].copy_from_slice(&r.nll.to_le_bytes());
    b[8..16].copy_from_slice(&kl.to_le_bytes());
    b[16..24].copy_from_slice(&ref_nll.to_le_bytes());
    b[24] = agree as u8;
    b
}

fn decode(b: &[u8]) -> Row {
    let f = |i: usize| f64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let kl = f(8);
    Row { nll: f(0), kl: (!kl.is_nan()).then(|| (kl, b[24] != 0, f(16))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(c: usize, n: usize) -> Vec<Row> {
        (0..n).map(|i| Row { nll: (c * 10 + i) as f64, kl: (i % 2 == 0).then_some((0.5, i % 4 == 0, 1.5)) }).collect()
    }

    #[test]
    fn reopening_keeps_whole_chunks_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("j");
        let head = b"HEAD".as_slice();
        let mut a = Journal::open(&j, 3, Some((head, 5))).unwrap();
        assert_eq!(a.done, 0);
        a.append(&rows(0, 3), &[1; 15]).unwrap();
        a.append(&rows(1, 3), &[2; 15]).unwrap();
        drop(a);
        // A torn write: half a chunk of stats, a few record bytes.
        let mut f = OpenOptions::new().append(true).open(j.join("chunks.bin")).unwrap();
        f.write_all(&[7; 30]).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.join("logits.part")).unwrap();
        f.write_all(&[3; 9]).unwrap();
        let mut b = Journal::open(&j, 3, Some((head, 5))).unwrap();
        assert_eq!(b.done, 2);
        assert_eq!(b.rows, [rows(0, 3), rows(1, 3)].concat());
        b.append(&rows(2, 3), &[4; 15]).unwrap();
        let target = dir.path().join("out.logits");
        b.finish(Some(&target)).unwrap();
        let saved = fs::read(&target).unwrap();
        assert_eq!(saved, [head, &[1; 15], &[2; 15], &[4; 15]].concat());
        assert!(!j.exists());
    }

    #[test]
    fn saved_records_shorter_than_the_stats_limit_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("j");
        let mut a = Journal::open(&j, 2, Some((b"H", 4))).unwrap();
        a.append(&rows(0, 2), &[1; 8]).unwrap();
        a.append(&rows(1, 2), &[2; 8]).unwrap();
        drop(a);
        let part = j.join("logits.part");
        let len = fs::metadata(&part).unwrap().len();
        OpenOptions::new().write(true).open(&part).unwrap().set_len(len - 3).unwrap();
        assert_eq!(Journal::open(&j, 2, Some((b"H", 4))).unwrap().done, 1);
        // A different header (another save target's model name): start over.
        assert_eq!(Journal::open(&j, 2, Some((b"X", 4))).unwrap().done, 0);
    }
}
