//! Activation buffers kept per thread and reused, instead of freed and allocated again.
//!
//! The forward pass makes and drops buffers of megabytes every layer (projection outputs,
//! norm copies, the attention heads' outputs). mimalloc hands freed large blocks back to the
//! kernel after its purge delay, and the next ones come back as fresh pages the kernel
//! zeroes one fault at a time: an 8-chunk smollm2 `eval` took 31,251 page faults and ran at
//! 428 tokens/s; with mimalloc told never to purge (`MIMALLOC_PURGE_DELAY=-1`, which only
//! the environment can set before the process starts) 3,361 faults and 463 tokens/s.
//! A buffer taken here ([`zeroed`], [`copy_of`]) and handed back with [`give`] when its
//! holder is done stays with the thread that gave it, so those pages are never returned.
//!
//! Only buffers of at least [`MIN_LEN`] values are kept (the allocator's own caches serve
//! smaller ones), at most [`MAX_BUFFERS`] and [`MAX_BYTES`] per thread. What a buffer held
//! before never shows: [`zeroed`] fills it with zeros, [`copy_of`] with the copied values.

use std::cell::RefCell;

/// Smallest buffer (in f32 values, 64 KiB) worth keeping: an attention task's scores
/// (64 queries × 512 keys) are 128 KiB.
pub const MIN_LEN: usize = 1 << 14;
/// Buffers kept per thread: a decoder block has about ten live at once.
pub const MAX_BUFFERS: usize = 16;
/// Bytes kept per thread at most (an 8B model's 512-token MLP activations are 29 MB each).
pub const MAX_BYTES: usize = 256 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` zeros: a kept one where this thread has one large enough (the
/// smallest such), else a new one.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.resize(len, 0.0);
    v
}

/// A copy of `x` in a kept buffer where there is one (as [`zeroed`]).
pub fn copy_of(x: &[f32]) -> Vec<f32> {
    let mut v = take(x.len());
    v.extend_from_slice(x);
    v
}

/// An empty buffer with room for `len` values.
fn take(len: usize) -> Vec<f32> {
    if len < MIN_LEN {
        return Vec::with_capacity(len);
    }
    let kept = POOL.with_borrow_mut(|pool| {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    });
    match kept {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(len),
    }
}

/// Hands `v` back for this thread's later [`zeroed`]/[`copy_of`] calls (dropped instead
/// when it is small or the thread keeps enough already).
pub fn give(v: Vec<f32>) {
    if v.capacity() < MIN_LEN {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        let bytes: usize = pool.iter().map(|b| 4 * b.capacity()).sum();
        if pool.len() < MAX_BUFFERS && bytes + 4 * v.capacity() <= MAX_BYTES {
            pool.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_buffers_come_back_zeroed_or_copied_and_the_pool_is_bounded() {
        let mut a = zeroed(MIN_LEN + 5);
        assert!(a.iter().all(|&v| v == 0.0) && a.len() == MIN_LEN + 5);
        a.iter_mut().for_each(|v| *v = 7.0);
        let at = a.as_ptr();
        give(a);
        // The same allocation comes back, cleaned.
        let b = zeroed(MIN_LEN);
        assert_eq!(b.as_ptr(), at);
        assert!(b.len() == MIN_LEN && b.iter().all(|&v| v == 0.0));
        give(b);
        let x: Vec<f32> = (0..MIN_LEN).map(|i| i as f32).collect();
        let c = copy_of(&x);
        assert_eq!(c.as_ptr(), at);
        assert_eq!(c, x);
        give(c);
        // Too large for what is kept: a new buffer.
        let d = zeroed(2 * MIN_LEN);
        assert_ne!(d.as_ptr(), at);
        // Small ones are not kept; the count is bounded.
        give(vec![1.0; 10]);
        for _ in 0..2 * MAX_BUFFERS {
            give(vec![1.0; MIN_LEN]);
        }
        POOL.with_borrow(|p| {
            assert!(p.len() <= MAX_BUFFERS && p.iter().all(|v| v.capacity() >= MIN_LEN));
        });
        // Another thread has its own.
        std::thread::spawn(|| POOL.with_borrow(|p| assert!(p.is_empty()))).join().unwrap();
        give(d);
    }
}
