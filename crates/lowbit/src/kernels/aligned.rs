//! Buffers on whole cache lines for the kernels' tables and rearranged activations: every
//! 64-byte register load from a 64-byte-aligned offset then reads one line. A `Vec`
//! falls where the allocator puts it (16-byte alignment), so such loads straddle two
//! lines; measured on the VQ byte tables, that cost smollm2 vq4x256+128 11 % of its tg128
//! (92–98 against 103–111 t/s, interleaved). For the rearranged activations (`ByValue`,
//! read once per row) it made no measurable difference (smollm2 Q4_0, IQ4_XS, IQ2_XS,
//! int4_g64 and VQ tg128 within ±5 % run to run, interleaved); they share the type so that
//! every 64-byte-aligned offset the kernels load from is a line.

use std::ops::{Deref, DerefMut};

/// 64 bytes on a cache line of their own.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Plain values a line may hold: any bit pattern is one, no padding, size dividing 64.
///
/// # Safety
/// Implementors must be `Copy` types of size 1, 2, 4 or 8 for which every bit pattern
/// (all zeros included) is a valid value.
pub(crate) unsafe trait Plain: Copy + 'static {}
// SAFETY: integers and floats of 1 or 4 bytes: every bit pattern is a value.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

/// `len` values of `T` from the start of whole cache lines (zero past `len`).
pub(crate) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    /// `len` zero values.
    pub(crate) fn zeroed(len: usize) -> Aligned<T> {
        let lines = (len * size_of::<T>()).div_ceil(64);
        Aligned { lines: vec![Line([0; 64]); lines], len, _t: std::marker::PhantomData }
    }

    /// A copy of `v`.
    pub(crate) fn from_slice(v: &[T]) -> Aligned<T> {
        let mut a = Aligned::zeroed(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl<T: Plain> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `Line` is `repr(C)` around `[u8; 64]` with alignment 64, so the lines
        // are `64 × lines` contiguous initialised bytes, aligned for any `T: Plain`
        // (size ≤ 8 divides 64); `len · size_of::<T>()` of them fit (see `zeroed`), and
        // every bit pattern is a `T` (`Plain`'s contract). Borrowed as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably as long as `self` is; any `T` written is
        // a valid byte pattern for the lines.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read back as written, zero-initialised, from a 64-byte boundary.
    #[test]
    fn aligned_buffers_hold_their_values_on_cache_lines() {
        for n in [0usize, 1, 16, 17, 100, 1024] {
            let b: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let a = Aligned::from_slice(&b);
            assert_eq!(&a[..], &b[..]);
            assert!(n == 0 || (a.as_ptr() as usize).is_multiple_of(64));
            let mut f = Aligned::<f32>::zeroed(n);
            assert!(f.iter().all(|&v| v == 0.0));
            f.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 0.5);
            assert!(f.iter().enumerate().all(|(i, &v)| v == i as f32 * 0.5));
            assert!(n == 0 || (f.as_ptr() as usize).is_multiple_of(64));
        }
    }
}
