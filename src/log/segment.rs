//! One segment file: where its records are addressed, its byte accounting, and how a new
//! one is made.
//!
//! Invariants:
//!
//! - A log sequence number (`lsn = segment_id << 32 | offset`) orders every byte of the log:
//!   segments by id, bytes within a segment by offset.
//! - A segment file is created whole before its name becomes visible: allocated to its full
//!   capacity, header written and synced under a temporary name (`NewSegment::create`). The
//!   caller renames it into place when the log is ready for it.
//! - `Usage::claim_bytes - Usage::dead_bytes` is the size of the state records that index
//!   entries point at (see `Usage`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::map::{preallocate, Appender, SegmentMap};
use crate::error::{Error, Result};
use crate::format::{
    Hides, RecordKind, SegmentHeader, FORMAT_VERSION, SEAL_LEN, SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::iohook::{Io, IoOp};

/// Packs a position in the log into one ordered number.
pub(crate) fn lsn(segment_id: u64, offset: usize) -> u64 {
    (segment_id << 32) | (offset as u64 & 0xffff_ffff)
}

/// The segment id of an lsn.
pub(crate) fn lsn_segment(lsn: u64) -> u64 {
    lsn >> 32
}

/// The offset within its segment of an lsn.
pub(crate) fn lsn_offset(lsn: u64) -> usize {
    (lsn & 0xffff_ffff) as usize
}

/// Where a record lives: a slot in the segment table and a byte offset in that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) slot: u16,
    pub(crate) offset: u32,
}

/// One segment file, mapped.
pub(crate) struct Segment {
    pub(crate) id: u64,
    /// When the segment was created (its header's `created_at`), ms.
    pub(crate) created_at: u64,
    /// The format version in its header.
    pub(crate) version: u16,
    pub(crate) path: PathBuf,
    pub(crate) map: Arc<SegmentMap>,
    /// What the segment holds and how much of it still matters (see `Usage`).
    pub(crate) usage: Usage,
    // No file descriptor is kept: a mapping stays valid after its file is closed, and a
    // descriptor per segment would cap the segment count at the process's open-file limit.
}

/// Byte accounting of one segment, which maintenance uses to decide what to delete and
/// what to compact.
///
/// Invariant: `claim_bytes - dead_bytes` is the size of the state records (claim, lease,
/// done) that index entries point at. Every such record is live when appended (its entry is
/// installed under the same stripe lock) and dies exactly once: when its entry is replaced,
/// removed, swept after expiry, or was never installed (recovery skipping an expired or
/// superseded record, compaction output whose key changed meanwhile). `dead_bytes` may run
/// ahead of `claim_bytes` while the segment is active: the totals are recorded when it
/// stops taking appends (rotation, `Usage::record_totals`), before it is marked sealed.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// The segment is sealed (durable, and open to maintenance); the totals below are final.
    sealed: AtomicBool,
    /// Offset of the seal record (the end of the data); 0 until the totals are recorded.
    pub(crate) data_end: AtomicU64,
    /// Bytes of state records.
    pub(crate) claim_bytes: AtomicU64,
    /// Bytes of state records no index entry points at any more.
    pub(crate) dead_bytes: AtomicU64,
    /// Bytes of remove records (tombstones).
    pub(crate) tomb_bytes: AtomicU64,
    /// Latest `expires` of the remove records: until then a tombstone may be needed.
    pub(crate) tomb_max_expires: AtomicU64,
    /// The union of what the remove records hide (`Hides`): while a segment with an id in
    /// `tomb_from..=tomb_to` other than this one exists, a tombstone may be needed.
    pub(crate) tomb_from: AtomicU64,
    pub(crate) tomb_to: AtomicU64,
    /// Latest `expires` of any record.
    pub(crate) max_expires: AtomicU64,
    /// State and remove records.
    pub(crate) records: AtomicU64,
    /// The seal record's time: when the segment stopped taking appends, ms.
    pub(crate) sealed_at: AtomicU64,
    /// A hint file matching this segment exists.
    hinted: AtomicBool,
    /// Replayed from its hint at open, so its records' checksums have not been checked
    /// yet: maintenance does that once (`crate::maintain`).
    unverified: AtomicBool,
    /// A record of it failed its check: compaction leaves it alone (reopen with
    /// `RecoveryMode::Salvage` to mend it).
    damaged: AtomicBool,
}

/// Totals of a segment's records, known once it takes no more appends (from the writer, a
/// scan or a hint).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) records: u64,
    pub(crate) claim_bytes: u64,
    pub(crate) tomb_bytes: u64,
    pub(crate) tomb_max_expires: u64,
    /// The union of what the remove records hide; `None` without removes.
    pub(crate) tomb_hides: Option<Hides>,
    pub(crate) max_expires: u64,
}

impl Totals {
    /// Counts one state or remove record; `hides` is what a remove hides (ignored for the
    /// other kinds; `Hides::ANY` when not known).
    pub(crate) fn add(&mut self, kind: RecordKind, len: usize, expires: u64, hides: Hides) {
        self.records += 1;
        self.max_expires = self.max_expires.max(expires);
        if kind == RecordKind::Remove {
            self.tomb_bytes += len as u64;
            self.tomb_max_expires = self.tomb_max_expires.max(expires);
            self.tomb_hides = Some(self.tomb_hides.map_or(hides, |h| h.union(hides)));
        } else {
            self.claim_bytes += len as u64;
        }
    }
}

impl Usage {
    /// Records the segment's final totals and marks it sealed.
    pub(crate) fn seal(&self, t: Totals, data_end: usize, sealed_at: u64) {
        self.record_totals(t, data_end, sealed_at);
        self.mark_sealed();
    }

    /// Records the segment's final totals, once it takes no more appends: rotation does,
    /// before its seal job makes the segment durable and marks it sealed, so that
    /// `Log::live_bytes` counts it meanwhile.
    pub(crate) fn record_totals(&self, t: Totals, data_end: usize, sealed_at: u64) {
        self.sealed_at.store(sealed_at, Ordering::Relaxed);
        self.claim_bytes.store(t.claim_bytes, Ordering::Relaxed);
        self.tomb_bytes.store(t.tomb_bytes, Ordering::Relaxed);
        self.tomb_max_expires
            .store(t.tomb_max_expires, Ordering::Relaxed);
        self.set_tomb_hides(t.tomb_hides);
        self.max_expires.store(t.max_expires, Ordering::Relaxed);
        self.records.store(t.records, Ordering::Relaxed);
        self.data_end.store(data_end as u64, Ordering::Relaxed);
    }

    /// Marks the segment sealed (its totals recorded): maintenance may now read, rewrite
    /// or delete it.
    pub(crate) fn mark_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Notes that a state record of `len` bytes lost its index entry.
    pub(crate) fn died(&self, len: u64) {
        self.dead_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Bytes of state records still pointed at (0 until the totals are recorded).
    pub(crate) fn live_bytes(&self) -> u64 {
        let claims = self.claim_bytes.load(Ordering::Relaxed);
        claims.saturating_sub(self.dead_bytes.load(Ordering::Relaxed))
    }

    /// Sets what the segment's removes hide (a segment replayed from its hint learns it
    /// only once maintenance reads its records).
    pub(crate) fn set_tomb_hides(&self, hides: Option<Hides>) {
        // No removes: an empty range.
        let h = hides.unwrap_or(Hides { from: 1, to: 0 });
        self.tomb_from.store(h.from, Ordering::Relaxed);
        self.tomb_to.store(h.to, Ordering::Relaxed);
    }

    /// Bytes of tombstones that may still be needed at `now` in segment `own`, with the
    /// segments `present` still on disk: all of them until the latest record they hide has
    /// expired, unless no segment other than `own` is left that may hold such a record.
    /// (A record of their key in `own` itself, before them, is dead: compaction drops it
    /// in the same copy, and deleting `own` takes it along.)
    pub(crate) fn needed_tomb_bytes(&self, now: u64, own: u64, present: &SegmentIds) -> u64 {
        let bytes = self.tomb_bytes.load(Ordering::Relaxed);
        let hides = Hides {
            from: self.tomb_from.load(Ordering::Relaxed),
            to: self.tomb_to.load(Ordering::Relaxed),
        };
        if bytes > 0
            && self.tomb_max_expires.load(Ordering::Relaxed) > now
            && present.hidden_in(hides, own)
        {
            bytes
        } else {
            0
        }
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn hinted(&self) -> bool {
        self.hinted.load(Ordering::Relaxed)
    }

    pub(crate) fn set_hinted(&self) {
        self.hinted.store(true, Ordering::Relaxed);
    }

    pub(crate) fn unverified(&self) -> bool {
        self.unverified.load(Ordering::Relaxed)
    }

    /// Notes whether the records' checksums are still to be checked.
    pub(crate) fn set_unverified(&self, unverified: bool) {
        self.unverified.store(unverified, Ordering::Relaxed);
    }

    pub(crate) fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    pub(crate) fn set_damaged(&self) {
        self.damaged.store(true, Ordering::Relaxed);
    }
}

/// The ids of a store's segments at one moment: which segments a tombstone's hidden
/// records may still be read from.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIds(BTreeSet<u64>);

impl SegmentIds {
    pub(crate) fn new(ids: impl IntoIterator<Item = u64>) -> Self {
        SegmentIds(ids.into_iter().collect())
    }

    /// Whether a remove record in segment `own` that hides `hides` may still hide
    /// something: some segment other than `own` with an id in `hides.from..=hides.to` is
    /// here. (A remove follows what it hides, so only ids below `own` count.)
    pub(crate) fn hidden_in(&self, hides: Hides, own: u64) -> bool {
        let to = hides.to.min(own.saturating_sub(1));
        hides.from <= to && self.0.range(hides.from..=to).next().is_some()
    }

    /// Forgets `id` (a segment about to be deleted).
    pub(crate) fn remove(&mut self, id: u64) {
        self.0.remove(&id);
    }
}

impl Segment {
    pub(crate) fn new(path: PathBuf, header: SegmentHeader, map: SegmentMap) -> Self {
        Segment {
            id: header.segment_id,
            created_at: header.created_at,
            version: header.version,
            path,
            map: Arc::new(map),
            usage: Usage::default(),
        }
    }

    /// The bytes of a sealed segment up to the end of its seal record; `None` while it is
    /// the active segment or being sealed.
    #[allow(unsafe_code)]
    pub(crate) fn sealed_bytes(&self) -> Option<&[u8]> {
        if !self.usage.is_sealed() {
            return None;
        }
        let end = self.usage.data_end.load(Ordering::Relaxed) as usize + SEAL_LEN;
        // SAFETY: the Acquire load in `is_sealed` pairs with the Release store in
        // `Usage::mark_sealed`, made after the seal record was written and `data_end`
        // recorded (on the rotating thread, before the seal job's thread was started);
        // nothing is written after it.
        Some(unsafe { self.map.sealed_bytes(end) })
    }

    /// Makes `[from, from + len)` of the mapping durable; `path` is the file's name now
    /// (its temporary name while it is being created).
    pub(crate) fn sync_range(
        &self,
        io: &Io,
        path: &Path,
        from: usize,
        len: usize,
    ) -> std::io::Result<()> {
        let op = IoOp::SyncRange {
            path,
            offset: from as u64,
            len: len as u64,
        };
        io.run(op, || self.map.sync_range(from, len))
    }

    /// Bytes the file takes on disk.
    pub(crate) fn disk_len(&self) -> u64 {
        self.map.len() as u64
    }
}

/// A segment created under its temporary name, not yet part of the log.
pub(crate) struct NewSegment {
    pub(crate) segment: Segment,
    /// Writes records into it, from just past its header.
    pub(crate) appender: Appender,
    /// The name it has until it is renamed to `segment.path`.
    pub(crate) tmp: PathBuf,
}

impl NewSegment {
    /// Creates segment `id` under its temporary name: allocated to `capacity`, header
    /// written and synced. The caller renames it into place (and fsyncs the directory) when
    /// the time is right, or `discard`s it.
    pub(crate) fn create(
        io: &Io,
        dir: &Path,
        id: u64,
        capacity: u64,
        store_id: u128,
        now: u64,
    ) -> Result<NewSegment> {
        let path = dir.join(fs::segment_name(id));
        let tmp = fs::tmp_path(&path);
        let file = fs::create(io, &tmp).map_err(|e| Error::io("create segment", &tmp, e))?;
        let made = (|| {
            preallocate(io, &file, &tmp, capacity)
                .map_err(|e| Error::io("allocate segment", &tmp, e))?;
            let map = SegmentMap::writable(&file).map_err(|e| Error::io("map segment", &tmp, e))?;
            let header = SegmentHeader {
                version: FORMAT_VERSION,
                segment_id: id,
                created_at: now,
                capacity,
                store_id,
            };
            let segment = Segment::new(path.clone(), header, map);
            let mut appender = segment
                .map
                .appender(0)
                .ok_or_else(|| Error::io("map segment", &tmp, std::io::ErrorKind::Other.into()))?;
            let bytes = header.encode();
            appender.append(SEGMENT_HEADER_LEN, |b| b.copy_from_slice(&bytes));
            segment
                .sync_range(io, &tmp, 0, SEGMENT_HEADER_LEN)
                .map_err(|e| Error::io("sync segment header", &tmp, e))?;
            fs::sync_file(io, &file, &tmp).map_err(|e| Error::io("sync segment", &tmp, e))?;
            // The file closes here; the mapping lives on in `segment`.
            Ok((segment, appender))
        })();
        match made {
            Ok((segment, appender)) => Ok(NewSegment {
                segment,
                appender,
                tmp,
            }),
            Err(e) => {
                let _ = fs::remove_file(io, &tmp);
                Err(e)
            }
        }
    }

    /// Gives its name to the segment (no directory fsync: the caller makes it durable).
    pub(crate) fn rename_into_place(&self, io: &Io) -> std::io::Result<()> {
        fs::rename(io, &self.tmp, &self.segment.path)
    }

    /// Deletes the unused segment (best effort: `open` deletes what a failure leaves).
    pub(crate) fn discard(self, io: &Io) {
        let _ = fs::remove_file(io, &self.tmp);
    }
}

/// 64 random bits: the process's random hasher keys (seeded by the OS) mixed with the
/// sources of `new_store_id`.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(new_store_id());
    h.finish()
}

/// A directory id that differs between directories with overwhelming probability; not
/// secret, only there to catch segments copied in from another store.
pub(crate) fn new_store_id() -> u128 {
    let mut seed = Vec::with_capacity(64);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    seed.extend_from_slice(&t.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let local = 0u8;
    seed.extend_from_slice(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    seed.extend_from_slice(&(std::time::Instant::now().elapsed().as_nanos()).to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_order_segments_then_offsets_and_split_back() {
        assert!(lsn(1, 0xffff_ffff) < lsn(2, 0));
        assert!(lsn(2, 64) < lsn(2, 65));
        let l = lsn(0xdead, 4096);
        assert_eq!((lsn_segment(l), lsn_offset(l)), (0xdead, 4096));
    }

    #[test]
    fn usage_counts_live_bytes_and_needed_tombstones() {
        let u = Usage::default();
        let mut t = Totals::default();
        t.add(RecordKind::Claim, 48, 1_000, Hides::ANY);
        t.add(RecordKind::Lease, 80, 2_000, Hides::ANY);
        t.add(RecordKind::Remove, 56, 5_000, Hides { from: 3, to: 3 });
        t.add(RecordKind::Remove, 56, 4_000, Hides { from: 5, to: 6 });
        assert!(!u.is_sealed());
        u.seal(t, 4096, 9);
        assert!(u.is_sealed());
        assert_eq!(u.records.load(Ordering::Relaxed), 4);
        assert_eq!(u.live_bytes(), 128);
        u.died(48);
        assert_eq!(u.live_bytes(), 80);
        // Segment 7 with 3 and 6 still there: needed until the latest hidden expiry.
        let all = SegmentIds::new([7, 3, 6]);
        assert_eq!(u.needed_tomb_bytes(4_999, 7, &all), 112);
        assert_eq!(u.needed_tomb_bytes(5_000, 7, &all), 0);
        // Segments 3 to 6 gone for good: nothing of theirs can come back to hide.
        let rest = SegmentIds::new([1, 2, 7, 8]);
        assert_eq!(u.needed_tomb_bytes(0, 7, &rest), 0);
        // One left in the range is enough to keep them.
        let one = SegmentIds::new([1, 4, 7]);
        assert_eq!(u.needed_tomb_bytes(0, 7, &one), 112);
        assert_eq!(u.max_expires.load(Ordering::Relaxed), 5_000);
    }

    #[test]
    fn a_tombstone_hides_only_in_older_segments_of_its_range() {
        let ids = SegmentIds::new([9, 2, 5]);
        let r = |from, to| Hides { from, to };
        assert!(ids.hidden_in(r(2, 2), 9));
        assert!(ids.hidden_in(r(3, 5), 9));
        assert!(!ids.hidden_in(r(3, 4), 9));
        assert!(!ids.hidden_in(r(6, 8), 9));
        // Its own segment does not count, nor anything newer.
        assert!(!ids.hidden_in(r(5, 5), 5));
        assert!(!ids.hidden_in(r(5, 9), 5));
        assert!(ids.hidden_in(r(2, 9), 5));
        // A remove from before format version 3: anything older than its own segment.
        assert!(ids.hidden_in(Hides::ANY, 5));
        assert!(!ids.hidden_in(Hides::ANY, 2));
        assert!(!SegmentIds::default().hidden_in(Hides::ANY, 1));
        let mut fewer = ids.clone();
        fewer.remove(2);
        assert!(!fewer.hidden_in(r(1, 4), 9));
    }

    #[test]
    fn a_new_segment_stays_under_its_temporary_name_until_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::default();
        let made = NewSegment::create(&io, dir.path(), 7, 1 << 16, 42, 1_000).unwrap();
        assert!(made.tmp.exists() && !made.segment.path.exists());
        assert_eq!(made.appender.tail(), SEGMENT_HEADER_LEN);
        let on_disk = std::fs::read(&made.tmp).unwrap();
        let header = SegmentHeader::decode(&on_disk).unwrap();
        assert_eq!((header.segment_id, header.store_id), (7, 42));
        assert_eq!(on_disk.len(), 1 << 16);
        made.rename_into_place(&io).unwrap();
        assert!(!made.tmp.exists() && made.segment.path.exists());

        let other = NewSegment::create(&io, dir.path(), 8, 1 << 16, 42, 1_000).unwrap();
        let tmp = other.tmp.clone();
        other.discard(&io);
        assert!(!tmp.exists());
    }
}
