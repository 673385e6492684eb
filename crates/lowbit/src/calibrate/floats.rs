//! f32 values held in memory or borrowed from a memory-mapped statistics file, so that
//! `quantize --stats` on an 8B model (33 GB of Hessians) reads each Hessian's pages only
//! while its tensor is quantized, and hands them back after ([`Floats::release`]).

use std::ops::Deref;
use std::sync::Arc;

use memmap2::Mmap;

/// f32 values: owned, or `len` little-endian floats at byte `offset` of a read-only map.
#[derive(Clone)]
pub enum Floats {
    /// In memory.
    Owned(Vec<f32>),
    /// In a mapped file (the map is shared by every tensor of the file).
    Mapped {
        /// The file's map.
        map: Arc<Mmap>,
        /// Byte offset of the first value (a multiple of 4).
        offset: usize,
        /// Number of values.
        len: usize,
    },
}

impl Floats {
    /// Values `offset..offset + 4·len` of `map`; `None` when they do not lie inside it or
    /// are not 4-byte aligned (or the machine is big-endian, where the bytes would need
    /// swapping).
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Floats> {
        let end = offset.checked_add(len.checked_mul(4)?)?;
        let aligned = (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<f32>());
        (cfg!(target_endian = "little") && end <= map.len() && aligned).then_some(Floats::Mapped { map, offset, len })
    }

    /// Hands a mapped range's pages back to the system (they are read again from the
    /// file if used later); nothing for owned values.
    pub fn release(&self) {
        let Floats::Mapped { map, offset, len } = self else { return };
        const PAGE: usize = 4096;
        // Whole pages inside the range only: a neighbour's pages may still be in use.
        let first = offset.div_ceil(PAGE) * PAGE;
        let last = (offset + 4 * len) / PAGE * PAGE;
        if last > first {
            assert!(last <= map.len());
            // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED discards no
            // data: a later access faults the same bytes back in from the file, and slices
            // borrowed from the map stay valid (the mapping itself is unchanged). The range
            // is checked to lie inside the map.
            #[allow(unsafe_code)]
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
        }
    }
}

impl Deref for Floats {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Floats::Owned(v) => v,
            Floats::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + 4 * len];
                assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()));
                // SAFETY: `bytes` lies inside the map (the slice above is bounds-checked),
                // is 4-byte aligned (asserted) and holds 4·len bytes; every bit pattern is
                // a valid f32, and the machine is little-endian (checked in `mapped`, the
                // only constructor), so the bytes read as the stored floats. The map is
                // read-only and lives as long as `self`.
                #[allow(unsafe_code)]
                unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len)
                }
            }
        }
    }
}

impl From<Vec<f32>> for Floats {
    fn from(v: Vec<f32>) -> Floats {
        Floats::Owned(v)
    }
}

impl PartialEq for Floats {
    fn eq(&self, other: &Floats) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for Floats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if matches!(self, Floats::Owned(_)) { "owned" } else { "mapped" };
        write!(f, "Floats({} values, {how})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_floats_read_as_written_and_survive_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let values: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5 - 7.25).collect();
        let mut bytes = vec![0u8; 8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        // SAFETY: a read-only map of a file this test owns and does not change.
        #[allow(unsafe_code)]
        let map = Arc::new(unsafe { Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap());
        let f = Floats::mapped(map.clone(), 8, values.len()).unwrap();
        assert_eq!(&f[..], &values[..]);
        f.release();
        assert_eq!(&f[..], &values[..], "released pages come back from the file");
        assert_eq!(f, Floats::from(values.clone()));
        assert!(Floats::mapped(map.clone(), 8, values.len() + 1).is_none(), "past the end");
        assert!(Floats::mapped(map, 6, 4).is_none(), "misaligned");
    }
}
