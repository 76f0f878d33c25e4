//! A reusable per-thread buffer for im2col patches, so convolutions neither allocate per call nor
//! keep one patch matrix per layer alive (those would be most of a ResNet's memory).

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` floats with unspecified contents.
///
/// The buffer is taken out of the thread-local slot for the duration of `f`, so a nested call (e.g.
/// a rayon worker stealing another convolution while waiting) gets a fresh buffer instead of a
/// double borrow.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut slot = s.borrow_mut();
        if slot.len() < buf.len() {
            *slot = buf;
        }
    });
    r
}

/// `dst += src`, element-wise.
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// Keeps freed memory inside the process (glibc only): a training step frees and re-allocates the
/// same multi-megabyte activation tensors every step, and glibc's default adaptive thresholds hand
/// them back to the kernel (munmap / heap trim) each time, so every step paid for page faults and
/// page zeroing again (measured: ~13% of a ResNet-8 step). Process-wide and idempotent.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning parameters; it is called once, before the
        // engine allocates its tensors, and the values are valid for glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}
