//! The segment table: maps the 16-bit slot numbers stored in index entries to segments,
//! without locks on the read path. Its raw pointers are the crate's only unsafe code outside
//! the memory mappings (`map.rs`).
//!
//! Invariants:
//!
//! - A segment stays installed, and so readable, for as long as any index entry points at
//!   it: a slot is freed (`uninstall`) only after no entry points into it and every reader
//!   that might still hold a reference from `get` or `record` has finished (readers hold a
//!   stripe lock while they use one).
//! - Chunks of slots are allocated on first use and freed only when the table is dropped.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::segment::{Location, Segment};
use crate::error::{Error, Result};
use crate::format::{peek_trusted, trusted_span, RecordHeader, RECORD_HEADER_LEN};

const CHUNK: usize = 256;
type Chunk = [AtomicPtr<Segment>; CHUNK];

/// Slot number → segment (see the module docs).
pub(crate) struct SegmentTable {
    chunks: Box<[AtomicPtr<Chunk>]>,
    free: Mutex<Vec<u16>>,
    next_slot: AtomicUsize,
    installed: AtomicUsize,
    disk_bytes: AtomicU64,
}

/// The most segments one store can hold at once: index entries address a segment by a
/// 16-bit slot.
pub const MAX_SEGMENTS: usize = 1 << 16;

impl SegmentTable {
    pub(crate) fn new() -> SegmentTable {
        SegmentTable {
            chunks: (0..MAX_SEGMENTS / CHUNK)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            free: Mutex::new(Vec::new()),
            next_slot: AtomicUsize::new(0),
            installed: AtomicUsize::new(0),
            disk_bytes: AtomicU64::new(0),
        }
    }

    /// Installs a segment and returns its slot.
    pub(crate) fn install(&self, segment: Arc<Segment>) -> Result<u16> {
        let slot = match self.free.lock().pop() {
            Some(s) => usize::from(s),
            None => {
                let s = self.next_slot.fetch_add(1, Ordering::Relaxed);
                if s >= MAX_SEGMENTS {
                    self.next_slot.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::TooManySegments {
                        needed: MAX_SEGMENTS + 1,
                        max: MAX_SEGMENTS,
                    });
                }
                s
            }
        };
        let chunk_ptr = self.chunk(slot / CHUNK, true);
        // SAFETY: `chunk` returned a pointer to a live chunk (chunks are freed only on drop).
        let chunk = unsafe { &*chunk_ptr };
        self.disk_bytes
            .fetch_add(segment.disk_len(), Ordering::Relaxed);
        let raw = Arc::into_raw(segment).cast_mut();
        if let Some(cell) = chunk.get(slot % CHUNK) {
            cell.store(raw, Ordering::Release);
        }
        self.installed.fetch_add(1, Ordering::Relaxed);
        Ok(slot as u16)
    }

    fn chunk(&self, index: usize, create: bool) -> *mut Chunk {
        let Some(cell) = self.chunks.get(index) else {
            return std::ptr::null_mut();
        };
        let p = cell.load(Ordering::Acquire);
        if !p.is_null() || !create {
            return p;
        }
        let fresh: Box<Chunk> =
            Box::new(std::array::from_fn(
                |_| AtomicPtr::new(std::ptr::null_mut()),
            ));
        let fresh = Box::into_raw(fresh);
        match cell.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(existing) => {
                // SAFETY: `fresh` came from Box::into_raw above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                existing
            }
        }
    }

    /// The segment in `slot`, if one is installed.
    pub(crate) fn get(&self, slot: u16) -> Option<&Segment> {
        let chunk = self.chunk(usize::from(slot) / CHUNK, false);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: chunks live until the table is dropped.
        let cell = unsafe { &*chunk }.get(usize::from(slot) % CHUNK)?;
        let p = cell.load(Ordering::Acquire);
        if p.is_null() {
            None
        } else {
            // SAFETY: an installed segment stays alive while the table holds its Arc, which
            // it does until the table is dropped (the borrow of `self` bounds the result).
            Some(unsafe { &*p })
        }
    }

    /// Takes the segment out of `slot` and frees the slot for reuse.
    ///
    /// The caller guarantees that no index entry points at `slot` any more and that no
    /// reader still holds a reference from `get` or `record`: readers hold a stripe lock
    /// while they use one, so after the entries are gone, taking every stripe lock once is
    /// enough (`Index::quiesce`).
    pub(crate) fn uninstall(&self, slot: u16) -> Option<Arc<Segment>> {
        let chunk = self.chunk(usize::from(slot) / CHUNK, false);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: chunks live until the table is dropped.
        let cell = unsafe { &*chunk }.get(usize::from(slot) % CHUNK)?;
        // The free-list lock also keeps `segments` from cloning the pointer meanwhile.
        let mut free = self.free.lock();
        let p = cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if p.is_null() {
            return None;
        }
        // SAFETY: installed pointers come from Arc::into_raw in `install`; the cell no
        // longer holds it, so this reference count is ours.
        let segment = unsafe { Arc::from_raw(p) };
        self.disk_bytes
            .fetch_sub(segment.disk_len(), Ordering::Relaxed);
        self.installed.fetch_sub(1, Ordering::Relaxed);
        free.push(slot);
        Some(segment)
    }

    /// Every installed segment with its slot, in id order.
    pub(crate) fn segments(&self) -> Vec<(u16, Arc<Segment>)> {
        let mut out = Vec::with_capacity(self.len());
        // Held while cloning, so that `uninstall` cannot free a segment under us.
        let _membership = self.free.lock();
        let used = self.next_slot.load(Ordering::Acquire).min(MAX_SEGMENTS);
        for slot in 0..used {
            let chunk = self.chunk(slot / CHUNK, false);
            if chunk.is_null() {
                continue;
            }
            // SAFETY: chunks live until the table is dropped.
            let Some(cell) = unsafe { &*chunk }.get(slot % CHUNK) else {
                continue;
            };
            let p = cell.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: the pointer came from Arc::into_raw and stays installed while the
            // free-list lock is held (`uninstall` takes it); this makes a count of our own.
            let seg = unsafe {
                Arc::increment_strong_count(p);
                Arc::from_raw(p)
            };
            out.push((slot as u16, seg));
        }
        out.sort_by_key(|(_, s)| s.id);
        out
    }

    /// Reads the header and key of the record at `loc`.
    pub(crate) fn record(&self, loc: Location) -> Option<(RecordHeader, &[u8])> {
        self.read(loc, false).map(|(h, k, _)| (h, k))
    }

    /// Reads the header, key and value of the record at `loc`.
    pub(crate) fn record_with_value(&self, loc: Location) -> Option<(RecordHeader, &[u8], &[u8])> {
        self.read(loc, true)
    }

    fn read(&self, loc: Location, value: bool) -> Option<(RecordHeader, &[u8], &[u8])> {
        let seg = self.get(loc.slot)?;
        let offset = loc.offset as usize;
        // SAFETY: locations come from index entries, which only point at records whose
        // append completed (and was published through the stripe lock) before the entry was
        // inserted; records are never rewritten in place. See `SegmentMap::published`.
        let head = unsafe { seg.map.published(offset, RECORD_HEADER_LEN) }?;
        let span = trusted_span(head, value)?;
        // SAFETY: as above; the key and value follow the header within the same record.
        let rec = unsafe { seg.map.published(offset, span) }?;
        peek_trusted(rec)
    }

    /// Tells the segment in `slot` that a state record of `len` bytes in it lost its index
    /// entry, so it is dead (see `Usage`). Called for every entry that is replaced, removed
    /// or swept.
    pub(crate) fn record_died(&self, slot: u16, len: u64) {
        if let Some(seg) = self.get(slot) {
            seg.usage.died(len);
        }
    }

    /// Number of installed segments.
    pub(crate) fn len(&self) -> usize {
        self.installed.load(Ordering::Relaxed)
    }

    /// Bytes of all installed segment files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for SegmentTable {
    fn drop(&mut self) {
        for cell in self.chunks.iter() {
            let chunk = cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if chunk.is_null() {
                continue;
            }
            // SAFETY: chunk pointers come from Box::into_raw in `chunk`; we own them now.
            let chunk = unsafe { Box::from_raw(chunk) };
            for seg in chunk.iter() {
                let p = seg.swap(std::ptr::null_mut(), Ordering::AcqRel);
                if !p.is_null() {
                    // SAFETY: installed pointers come from Arc::into_raw in `install`.
                    drop(unsafe { Arc::from_raw(p) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, encoded_len, RecordKind};
    use crate::iohook::Io;
    use crate::log::segment::NewSegment;

    /// A segment holding one claim record of `key` at offset 64.
    fn segment_with(dir: &std::path::Path, id: u64, key: &[u8]) -> Arc<Segment> {
        let io = Io::default();
        let mut made = NewSegment::create(&io, dir, id, 1 << 16, 1, 0).unwrap();
        let len = encoded_len(key.len(), 0);
        made.appender
            .append(len, |b| {
                encode_record(b, RecordKind::Claim, key, &[], 0, 10, 20);
            })
            .unwrap();
        Arc::new(made.segment)
    }

    #[test]
    fn installed_segments_are_found_by_slot_and_slots_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let table = SegmentTable::new();
        let a = table.install(segment_with(dir.path(), 1, b"a")).unwrap();
        let b = table.install(segment_with(dir.path(), 2, b"bb")).unwrap();
        assert_ne!(a, b);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(b).map(|s| s.id), Some(2));
        let (h, key) = table
            .record(Location {
                slot: b,
                offset: 64,
            })
            .unwrap();
        assert_eq!(
            (h.kind, key, h.expires),
            (RecordKind::Claim, &b"bb"[..], 20)
        );
        assert!(table.get(b + 1).is_none());

        let ids: Vec<u64> = table.segments().iter().map(|(_, s)| s.id).collect();
        assert_eq!(ids, [1, 2]);
        let gone = table.uninstall(a).unwrap();
        assert_eq!(gone.id, 1);
        assert!(table.get(a).is_none() && table.uninstall(a).is_none());
        assert_eq!(table.len(), 1);
        let c = table.install(segment_with(dir.path(), 3, b"c")).unwrap();
        assert_eq!(c, a, "a freed slot is reused");
        assert_eq!(table.disk_bytes(), 2 << 16);
    }

    #[test]
    fn a_dead_record_is_counted_in_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let table = SegmentTable::new();
        let seg = segment_with(dir.path(), 1, b"k");
        let slot = table.install(Arc::clone(&seg)).unwrap();
        table.record_died(slot, 40);
        table.record_died(slot + 1, 40); // no segment there: ignored
        assert_eq!(seg.usage.dead_bytes.load(Ordering::Relaxed), 40);
    }
}
