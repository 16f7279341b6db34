//! Memory-mapped segment files. Every `unsafe` of the crate that touches a mapping is here.
//!
//! What this module relies on:
//!
//! - Nobody truncates or rewrites a segment file while this process has it mapped. The
//!   directory lock keeps other oncelog processes out; other programs must not touch the
//!   files of an open store (documented in README "Limits"). Reading a mapped page past a
//!   truncated end raises SIGBUS.
//! - Writable segments are fully allocated on disk (`posix_fallocate`) before they are
//!   mapped, so writing into the mapping never needs a block allocation: a full disk shows up
//!   as an error when a segment is created, not as SIGBUS on a page fault.
//! - A writable mapping has exactly one [`Appender`], which writes only bytes at or beyond its
//!   tail; readers only read bytes below a tail the appender has published to them through a
//!   lock (the index stripe lock). So no byte is ever read and written at the same time.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::iohook::{Io, IoOp};

enum Inner {
    /// A zero-length file (mmap cannot map zero bytes).
    Empty,
    /// Held only to keep the mapping alive; reads go through `base`.
    ReadOnly(#[allow(dead_code)] Mmap),
    Writable(MmapMut),
}

/// A mapped segment file.
pub(crate) struct SegmentMap {
    inner: Inner,
    /// Base address of the mapping; valid for `len` bytes for as long as `inner` lives.
    base: *mut u8,
    len: usize,
    appender_taken: AtomicBool,
}

// SAFETY: the mapping is plain memory owned by `inner`; concurrent access follows the
// discipline in the module docs (disjoint writes by the single appender, reads of
// published bytes only), and memmap2's types are themselves Send + Sync.
unsafe impl Send for SegmentMap {}
// SAFETY: as above.
unsafe impl Sync for SegmentMap {}

impl SegmentMap {
    /// Maps `file` read-only for its current length.
    pub(crate) fn read_only(file: &File) -> io::Result<SegmentMap> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to map"))?;
        if len == 0 {
            // mmap of zero bytes fails; an empty file reads as an empty slice.
            return Ok(SegmentMap::empty());
        }
        // SAFETY: the file is not truncated or modified by others while mapped (module docs).
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        let base = map.as_ptr().cast_mut();
        Ok(SegmentMap {
            inner: Inner::ReadOnly(map),
            base,
            len,
            appender_taken: AtomicBool::new(true),
        })
    }

    /// Maps `file` writable for its current length, which the caller has pre-allocated.
    pub(crate) fn writable(file: &File) -> io::Result<SegmentMap> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to map"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty segment for writing",
            ));
        }
        // SAFETY: as for `read_only`; in addition the file is fully allocated (see
        // `preallocate`), so stores into the mapping cannot fault for lack of space.
        let mut map = unsafe { MmapOptions::new().len(len).map_mut(file)? };
        let base = map.as_mut_ptr();
        Ok(SegmentMap {
            inner: Inner::Writable(map),
            base,
            len,
            appender_taken: AtomicBool::new(false),
        })
    }

    fn empty() -> SegmentMap {
        SegmentMap {
            inner: Inner::Empty,
            base: std::ptr::null_mut(),
            len: 0,
            appender_taken: AtomicBool::new(true),
        }
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The whole mapping, for scanning during recovery, before any appender exists.
    pub(crate) fn scan_bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: recovery scans a segment before it hands out an appender for it, so no
        // byte of the mapping is being written; `base` is valid for `len` bytes.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// The first `end` bytes of a sealed segment (all of them if `end` is past the end).
    ///
    /// # Safety
    ///
    /// The segment must be sealed, and the seal published to the caller (`Usage::sealed`
    /// read with Acquire): nothing is written to it any more.
    pub(crate) unsafe fn sealed_bytes(&self, end: usize) -> &[u8] {
        let end = end.min(self.len);
        if end == 0 {
            return &[];
        }
        // SAFETY: in bounds; per the caller's contract no byte is written any more.
        unsafe { std::slice::from_raw_parts(self.base, end) }
    }

    /// Bytes `[offset, offset + len)`, or `None` if out of bounds.
    ///
    /// # Safety
    ///
    /// The range must have been written completely, and that write must happen-before this
    /// call (it is published through a lock), and must not be written again while the
    /// returned slice lives. The index upholds this: it only points at records whose append
    /// finished before the entry was inserted under the stripe lock, and records are never
    /// rewritten in place.
    pub(crate) unsafe fn published(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); no concurrent write per the caller's contract.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(offset), len) })
    }

    /// Faults in every page of a writable mapping from `from` to the end, writable, so that
    /// later appends do not take page faults while the writer lock is held (the kernel's
    /// zeroing of fresh page-cache pages is most of an append's cost otherwise). Only page
    /// tables change, never a byte of the file, so this may run while the appender writes.
    /// Works a MiB at a time and stops early once `stop` is set. Best effort: kernels
    /// without `MADV_POPULATE_WRITE` (before 5.14) just skip it.
    pub(crate) fn populate(&self, from: usize, stop: &AtomicBool) {
        #[cfg(target_os = "linux")]
        if let Inner::Writable(map) = &self.inner {
            const STEP: usize = 1 << 20;
            let mut at = from;
            while at < self.len && !stop.load(Ordering::Relaxed) {
                let len = STEP.min(self.len - at);
                if map
                    .advise_range(memmap2::Advice::PopulateWrite, at, len)
                    .is_err()
                {
                    break;
                }
                at += len;
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (from, stop);
    }

    /// Drops this mapping's page-table entries for `[offset, offset + len)` (whole pages
    /// within it), with one batched TLB flush, leaving the pages and their dirty state in
    /// the page cache; a later access maps a page again from there, with the same bytes.
    /// For a segment whose appends are over, before its sync: writeback write-protects
    /// every writable entry it cleans, one page and one flush of every core's TLB at a
    /// time (an interrupt to each core running the process, 16k of them for a 64 MiB
    /// segment); with no entries left there is nothing to write-protect. Best effort, and
    /// only on Linux, where `MADV_DONTNEED` on a shared file mapping loses nothing.
    pub(crate) fn drop_page_tables(&self, offset: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Inner::Writable(map) = &self.inner {
            let page = page_size();
            let start = offset.div_ceil(page) * page;
            let end = offset.saturating_add(len).min(self.len) / page * page;
            if end > start {
                // SAFETY: the mapping is a shared mapping of a file (`MmapMut::map_mut`), for
                // which MADV_DONTNEED only unmaps pages: their contents stay in the page
                // cache (dirty ones still dirty, and written back by the next sync) and
                // any later access, including by a reader holding a slice of it, faults
                // them back in unchanged. Nothing is freed and no byte changes.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    /// Makes `[offset, offset + len)` durable (msync with MS_SYNC; on Linux a data sync of
    /// that file range).
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.len);
        if end <= offset {
            return Ok(());
        }
        match &self.inner {
            Inner::Writable(map) => map.flush_range(offset, end - offset),
            Inner::ReadOnly(_) | Inner::Empty => Ok(()),
        }
    }

    /// The single appender of a writable mapping, starting at `tail`.
    pub(crate) fn appender(self: &Arc<Self>, tail: usize) -> Option<Appender> {
        let is_writable = matches!(self.inner, Inner::Writable(_));
        if !is_writable || tail > self.len || self.appender_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Appender {
            map: Arc::clone(self),
            tail,
        })
    }
}

/// The only writer of a writable mapping: appends bytes at its tail, never before it.
pub(crate) struct Appender {
    map: Arc<SegmentMap>,
    tail: usize,
}

impl Appender {
    /// Where the next append goes.
    pub(crate) fn tail(&self) -> usize {
        self.tail
    }

    /// Bytes left before the end of the mapping.
    pub(crate) fn remaining(&self) -> usize {
        self.map.len - self.tail
    }

    /// Lets `fill` write exactly `len` bytes at the tail, then advances the tail. Returns
    /// the offset written at, or `None` (nothing written) if `len` bytes do not fit.
    pub(crate) fn append(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<usize> {
        if len > self.remaining() {
            return None;
        }
        let at = self.tail;
        // SAFETY: `[at, at + len)` is in bounds (checked above) and at or beyond the tail, so
        // no reader has been handed it (module docs); this appender is the only writer.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.map.base.add(at), len) };
        fill(dst);
        self.tail = at + len;
        self.prefetch_ahead();
        Some(at)
    }

    /// Asks the CPU to fetch the cache lines a few appends ahead of the tail. A fresh line
    /// of the mapping is otherwise first fetched by the store that writes it, and the
    /// unlock that follows waits for that fetch while other threads wait for the lock.
    #[inline]
    fn prefetch_ahead(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            const AHEAD: usize = 512;
            let at = self.tail + AHEAD;
            if at < self.map.len {
                // SAFETY: `at` is inside the mapping (checked); a prefetch reads nothing
                // into the program and cannot fault.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>(self.map.base.add(at).cast_const().cast());
                }
            }
        }
    }

    /// Finds the non-zero bytes from the tail to the end of the mapping and, if `zero` is
    /// set, zeroes them. Returns the offset of the first non-zero byte and the end of the
    /// last one, or `None` if the rest is clean. A cut torn tail must not leave stale bytes
    /// that could later line up as valid records; `Strict` recovery calls this with
    /// `zero == false` to report them without changing anything.
    ///
    /// Only the file's data regions are read (`SEEK_DATA`/`SEEK_HOLE`): the unwritten rest
    /// of a pre-allocated segment is skipped without being paged in.
    pub(crate) fn dirty_rest(
        &mut self,
        file: &File,
        zero: bool,
    ) -> io::Result<Option<(usize, usize)>> {
        use std::os::unix::fs::FileExt;
        let mut dirty: Option<(usize, usize)> = None;
        // Read with pread rather than through the mapping: faulting in megabytes of
        // never-written pages one by one is several times slower.
        let mut buf = vec![0u8; 1 << 20];
        for (start, end) in data_regions(file, self.tail, self.map.len)? {
            let mut at = start;
            while at < end {
                let want = (end - at).min(buf.len());
                let chunk = buf.get_mut(..want).unwrap_or(&mut []);
                let got = file.read_at(chunk, at as u64)?;
                if got == 0 {
                    break;
                }
                let read = chunk.get(..got).unwrap_or(&[]);
                if let (Some(first), Some(last)) = (
                    read.iter().position(|&b| b != 0),
                    read.iter().rposition(|&b| b != 0),
                ) {
                    dirty = Some((dirty.map_or(at + first, |d| d.0), at + last + 1));
                    if zero {
                        // Only the dirty span: zeroing clean bytes would dirty pages for
                        // nothing, and in a sparse file could need blocks a full disk lacks.
                        // SAFETY: as in `append`: `[at + first, at + last + 1)` is at or
                        // beyond the tail (data_regions clamps to [tail, len)) and owned by
                        // this appender.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                self.map.base.add(at + first),
                                last + 1 - first,
                            )
                        };
                        dst.fill(0);
                    }
                }
                at += got;
            }
        }
        Ok(dirty)
    }
}

/// The `[start, end)` ranges within `[from, to)` that may hold data, per `SEEK_DATA` and
/// `SEEK_HOLE`. Where the filesystem does not support them, the whole range is returned.
fn data_regions(file: &File, from: usize, to: usize) -> io::Result<Vec<(usize, usize)>> {
    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos = from;
    while pos < to {
        let Ok(at) = libc::off_t::try_from(pos) else {
            break;
        };
        // SAFETY: plain syscall on a valid, open file descriptor.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // No data at or after `pos`.
                Some(libc::ENXIO) => break,
                // Not supported here: treat everything as data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    regions.push((pos, to));
                    break;
                }
                _ => return Err(err),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let start = usize::try_from(data).unwrap_or(to).max(pos).min(to);
        let end = usize::try_from(hole).unwrap_or(to).min(to);
        if end <= start {
            break;
        }
        regions.push((start, end));
        pos = end;
    }
    Ok(regions)
}

/// The system's page size (4 KiB if it cannot be read).
pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Reserves disk blocks for the whole file so that writes through a mapping cannot hit a
/// full disk (see the module docs).
pub(crate) fn preallocate(io: &Io, file: &File, path: &Path, len: u64) -> io::Result<()> {
    io.run(IoOp::Allocate { path, len }, || allocate(file, len))
}

fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: plain syscall wrapper on a valid, open file descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: fall back to extending the file; space is then
        // allocated lazily (documented limitation).
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes, `data` written at its start, mapped writable.
    fn mapped(dir: &std::path::Path, len: u64, data: &[u8]) -> (File, Arc<SegmentMap>) {
        let path = dir.join("seg");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        f.write_all(data).unwrap();
        let map = Arc::new(SegmentMap::writable(&f).unwrap());
        (f, map)
    }

    /// Dropping the page tables of written pages changes no byte: not what the mapping
    /// reads, not what the file reads, and a sync afterwards still succeeds.
    #[test]
    fn dropping_page_tables_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let len = 64 << 10;
        let (_f, map) = mapped(dir.path(), len as u64, b"");
        let mut app = map.appender(0).unwrap();
        let bytes: Vec<u8> = (0..len - 100).map(|i| (i * 7 + 3) as u8).collect();
        let mut at = 0;
        while at < bytes.len() {
            let n = 1000.min(bytes.len() - at);
            assert!(app
                .append(n, |b| b.copy_from_slice(&bytes[at..at + n]))
                .is_some());
            at += n;
        }
        map.drop_page_tables(0, bytes.len());
        // SAFETY: nothing writes to the mapping while the slice lives.
        let read = unsafe { map.published(0, bytes.len()) }.unwrap();
        assert!(read == &bytes[..], "the mapping reads other bytes");
        let on_file = std::fs::read(dir.path().join("seg")).unwrap();
        assert!(
            on_file[..bytes.len()] == bytes[..],
            "the file reads other bytes"
        );
        map.sync_range(0, bytes.len()).unwrap();
        let on_file = std::fs::read(dir.path().join("seg")).unwrap();
        assert!(on_file[..bytes.len()] == bytes[..]);
    }

    #[test]
    fn one_appender_writes_at_its_tail_and_never_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, map) = mapped(dir.path(), 4096, b"");
        let mut app = map.appender(64).expect("the first appender");
        assert!(map.appender(64).is_none(), "a second appender");
        assert_eq!(app.append(8, |b| b.copy_from_slice(b"abcdefgh")), Some(64));
        assert_eq!((app.tail(), app.remaining()), (72, 4096 - 72));
        assert_eq!(app.append(4096, |_| panic!("filled past the end")), None);
        assert_eq!(app.tail(), 72, "a refused append moved the tail");
        assert_eq!(app.append(4096 - 72, |b| b.fill(1)), Some(72));
        assert_eq!(app.remaining(), 0);
        assert_eq!(&map.scan_bytes()[64..72], b"abcdefgh");
        map.sync_range(0, 4096).unwrap();
    }

    #[test]
    fn a_read_only_mapping_has_no_appender_and_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (f, _) = mapped(dir.path(), 128, b"hello");
        let ro = Arc::new(SegmentMap::read_only(&f).unwrap());
        assert!(ro.appender(0).is_none());
        assert_eq!(ro.len(), 128);
        assert_eq!(&ro.scan_bytes()[..5], b"hello");
    }

    #[test]
    fn the_dirty_rest_is_found_and_zeroed_only_past_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 300];
        data[10] = 1; // before the tail: not looked at
        data[200] = 7;
        data[250] = 9;
        let (f, map) = mapped(dir.path(), 8192, &data);
        let mut app = map.appender(100).unwrap();
        assert_eq!(app.dirty_rest(&f, false).unwrap(), Some((200, 251)));
        assert_eq!(map.scan_bytes()[200], 7, "reported without zeroing");
        assert_eq!(app.dirty_rest(&f, true).unwrap(), Some((200, 251)));
        assert!(map.scan_bytes()[100..].iter().all(|&b| b == 0));
        assert_eq!(map.scan_bytes()[10], 1);
        map.sync_range(0, 8192).unwrap();
        assert_eq!(app.dirty_rest(&f, false).unwrap(), None);
    }
}
