//! Memory: giving freed heap back to the operating system, zeroed slices the system fills
//! in lazily, and cache prefetch hints.
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

/// Types for which all-zero bytes are a valid value, so that `zeroed_slice` may make them.
///
/// # Safety
///
/// Every byte of the type must belong to a field of an integer type (or an array or a
/// `#[repr(C)]` struct of such fields, with no padding), so that all-zero bytes are a
/// valid value.
pub(crate) unsafe trait Zeroable: Copy {}

/// A slice of `n` all-zero values, asked of the allocator as zeroed memory rather than
/// written: for a large slice the allocator maps fresh pages, which the system fills with
/// zeros only when each is first touched, so making it costs no page faults. Where the
/// allocator serves the slice from a free block of its heap instead (glibc does for
/// blocks under its mmap threshold, which rises to 32 MiB once the process has freed
/// large blocks, unless the threshold is set: see README, "Performance"), it clears the
/// block at once; the pages are then mostly in memory already.
pub(crate) fn zeroed_slice<T: Zeroable>(n: usize) -> Box<[T]> {
    let Ok(layout) = std::alloc::Layout::array::<T>(n) else {
        panic!("a slice of {n} elements is too large");
    };
    if layout.size() == 0 {
        return std::iter::repeat_n(zero_value::<T>(), n).collect();
    }
    // SAFETY: `layout` has a non-zero size (checked above). The memory is zeroed and an
    // all-zero `T` is a valid value (`Zeroable`'s contract), so all `n` elements are
    // initialised; it comes from the global allocator with `Layout::array::<T>(n)`, the
    // layout a `Box<[T]>` of `n` elements is freed with.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

/// Writes `value` over `*place` in a way the compiler may not skip even when it can tell
/// the memory already holds it: writing a page is what makes the system supply it.
pub(crate) fn touch<T: Zeroable>(place: &mut T, value: T) {
    // SAFETY: `place` is a live, aligned, exclusive reference, valid for writes.
    unsafe { std::ptr::write_volatile(place, value) }
}

fn zero_value<T: Zeroable>() -> T {
    // SAFETY: an all-zero `T` is a valid value (`Zeroable`'s contract).
    unsafe { std::mem::zeroed() }
}
