//! Giving freed heap memory back to the operating system.
//!
//! When most keys expire at once, maintenance sweeps them out and the index tables shrink,
//! but the allocator keeps the freed pages for later: the process stays as large as it was
//! at its peak. glibc's `malloc_trim` returns free pages at the top of the heap and inside
//! it (`madvise(MADV_DONTNEED)`), so a store whose keys expired gives its memory back.
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
