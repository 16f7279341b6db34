//! Memory: giving freed heap back to the operating system, and cache prefetch hints.
//!
//! When most keys expire at once, maintenance sweeps them out and the index tables shrink,
//! but the allocator keeps the freed pages for later: the process stays as large as it was
//! at its peak. glibc's `malloc_trim` returns free pages at the top of the heap and inside
//! it (`madvise(MADV_DONTNEED)`), so a store whose keys expired gives its memory back. The
//! one thing it leaves is the free top of an arena other than the main one (each thread may
//! get its own arena): glibc shrinks those only from `free`, past a threshold that grows
//! with the largest block the process has freed.
//! Elsewhere (musl, other systems) there is nothing to call, and nothing is done.
#![allow(unsafe_code)]

/// Asks the allocator to return free memory to the system; best effort.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds as free; it touches
    // no live allocation and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the CPU to bring `value`'s cache line in ahead of use (recovery looks up the next
/// entries' slots while it inserts the current one). A hint: does nothing where there is
/// no such instruction.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the pointer comes from a live reference, and a prefetch neither reads nor
    // writes anything the program can observe and cannot fault; SSE, which the
    // instruction belongs to, is part of every x86_64 target.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
