//! The segment log: append, rotate, group commit, and reading records back.
//!
//! Invariants kept here:
//!
//! - Records are appended in one total order (the writer mutex); a log sequence number
//!   (`lsn = segment_id << 32 | end offset`) grows with it. Operations on one key are
//!   additionally ordered by that key's index stripe lock, so the log order of a key's
//!   records is the order its operations took effect.
//! - `durable` is an lsn below which every byte is on stable storage. Only a successful
//!   sync moves it; a sync covers a prefix of the log, never a hole.
//! - Every segment but the newest ends with a seal record and was fully synced before its
//!   successor's name became visible (see `rotate`).
//! - After a failed sync the log is poisoned: nothing more is appended or acknowledged.

#![allow(unsafe_code)]

mod map;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::format::{
    encode_record, encode_seal, encoded_len, peek_trusted, RecordHeader, RecordKind, SealInfo,
    SegmentHeader, FORMAT_VERSION, RECORD_HEADER_LEN, SEAL_LEN, SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::iohook::{Io, IoOp};

pub(crate) use map::{preallocate, Appender, SegmentMap};

/// Packs a position in the log into one ordered number.
pub(crate) fn lsn(segment_id: u64, offset: usize) -> u64 {
    (segment_id << 32) | (offset as u64 & 0xffff_ffff)
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
/// Invariant: `claim_bytes - dead_bytes` is the size of the claim records that index
/// entries point at. Every claim record is live when appended (its entry is installed
/// under the same stripe lock) and dies exactly once: when its entry is replaced, removed,
/// swept after expiry, or was never installed (recovery skipping an expired or superseded
/// claim, compaction output whose key changed meanwhile). `dead_bytes` may run ahead of
/// `claim_bytes` while the segment is active: the totals are set when it is sealed.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// The segment is sealed and the totals below are final.
    pub(crate) sealed: AtomicBool,
    /// Offset of the seal record (the end of the data); 0 until sealed.
    pub(crate) data_end: AtomicU64,
    /// Bytes of claim records.
    pub(crate) claim_bytes: AtomicU64,
    /// Bytes of claim records no index entry points at any more.
    pub(crate) dead_bytes: AtomicU64,
    /// Bytes of remove records (tombstones).
    pub(crate) tomb_bytes: AtomicU64,
    /// Latest `expires` of the remove records: until then a tombstone may be needed.
    pub(crate) tomb_max_expires: AtomicU64,
    /// Latest `expires` of any record.
    pub(crate) max_expires: AtomicU64,
    /// Claim and remove records.
    pub(crate) records: AtomicU64,
    /// The seal record's time: when the segment stopped taking appends, ms.
    pub(crate) sealed_at: AtomicU64,
    /// A hint file matching this segment exists.
    hinted: AtomicBool,
}

/// Totals of a segment's records, known once it is sealed (from the writer, a scan or a hint).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) records: u64,
    pub(crate) claim_bytes: u64,
    pub(crate) tomb_bytes: u64,
    pub(crate) tomb_max_expires: u64,
    pub(crate) max_expires: u64,
}

impl Totals {
    /// Counts one claim or remove record.
    pub(crate) fn add(&mut self, kind: RecordKind, len: usize, expires: u64) {
        self.records += 1;
        self.max_expires = self.max_expires.max(expires);
        if kind == RecordKind::Remove {
            self.tomb_bytes += len as u64;
            self.tomb_max_expires = self.tomb_max_expires.max(expires);
        } else {
            self.claim_bytes += len as u64;
        }
    }
}

impl Usage {
    /// Records the segment's final totals.
    pub(crate) fn seal(&self, t: Totals, data_end: usize, sealed_at: u64) {
        self.sealed_at.store(sealed_at, Ordering::Relaxed);
        self.claim_bytes.store(t.claim_bytes, Ordering::Relaxed);
        self.tomb_bytes.store(t.tomb_bytes, Ordering::Relaxed);
        self.tomb_max_expires
            .store(t.tomb_max_expires, Ordering::Relaxed);
        self.max_expires.store(t.max_expires, Ordering::Relaxed);
        self.records.store(t.records, Ordering::Relaxed);
        self.data_end.store(data_end as u64, Ordering::Relaxed);
        self.sealed.store(true, Ordering::Release);
    }

    /// Notes that a claim record of `len` bytes lost its index entry.
    pub(crate) fn died(&self, len: u64) {
        self.dead_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Bytes of claim records still pointed at (0 while unsealed: not known yet).
    pub(crate) fn live_bytes(&self) -> u64 {
        let claims = self.claim_bytes.load(Ordering::Relaxed);
        claims.saturating_sub(self.dead_bytes.load(Ordering::Relaxed))
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
    /// the active segment.
    pub(crate) fn sealed_bytes(&self) -> Option<&[u8]> {
        if !self.usage.is_sealed() {
            return None;
        }
        let end = self.usage.data_end.load(Ordering::Relaxed) as usize + SEAL_LEN;
        // SAFETY: the Acquire load in `is_sealed` pairs with the Release store in
        // `Usage::seal`, made after the seal was written; nothing is written after it.
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

const CHUNK: usize = 256;
type Chunk = [AtomicPtr<Segment>; CHUNK];

/// Maps the 16-bit slot numbers stored in index entries to segments, without locks on the
/// read path.
///
/// A segment stays installed, and so readable, for as long as any index entry points at it;
/// slots are freed only when no entry does (compaction and expiry will rely on this).
pub(crate) struct SegmentTable {
    chunks: Box<[AtomicPtr<Chunk>]>,
    free: Mutex<Vec<u16>>,
    next_slot: AtomicUsize,
    installed: AtomicUsize,
    disk_bytes: AtomicU64,
}

/// Most segments one store can hold at once (slots are 16 bits).
pub(crate) const MAX_SEGMENTS: usize = 1 << 16;

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
                    return Err(Error::Poisoned {
                        reason: format!("more than {MAX_SEGMENTS} segments in one store"),
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
        let key_len = usize::from(u16::from_le_bytes([*head.get(6)?, *head.get(7)?]));
        let value_len = if value {
            u32::from_le_bytes(head.get(8..12)?.try_into().ok()?) as usize
        } else {
            0
        };
        // SAFETY: as above; the key and value follow the header within the same record.
        let rec = unsafe {
            seg.map
                .published(offset, RECORD_HEADER_LEN + key_len + value_len)
        }?;
        peek_trusted(rec)
    }

    /// Tells the segment `entry` points into that the entry is gone, so its record is dead
    /// (see `Usage`). Called for every entry that is replaced, removed or swept.
    pub(crate) fn retire(&self, entry: &crate::index::Entry) {
        if let Some(seg) = self.get(entry.slot) {
            seg.usage.died(entry.record_len());
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

/// The active segment and the state needed to seal it.
pub(crate) struct Writer {
    pub(crate) segment: Arc<Segment>,
    pub(crate) slot: u16,
    pub(crate) appender: Appender,
    /// What has been appended to the segment so far.
    pub(crate) totals: Totals,
    /// Whether the next segment is being (or has been) prepared in the background.
    pub(crate) next_prepared: bool,
}

/// A record appended to the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    pub(crate) loc: Location,
    /// The lsn just past the record: it is durable once `durable >= lsn_end`.
    pub(crate) lsn_end: u64,
}

struct CommitState {
    /// Syncs running now.
    in_flight: usize,
    /// Callers inside `wait_durable`'s slow path.
    waiting: usize,
    /// The highest lsn a running (or finished) sync has promised to cover.
    covering: u64,
}

/// Most syncs of one log that may run at once (see `wait_durable`).
const MAX_SYNCS_IN_FLIGHT: usize = 2;

/// A second sync may start only while at most this many callers wait (see `wait_durable`).
const OVERLAP_MAX_WAITING: usize = 2;

/// One record to append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSpec<'a> {
    pub(crate) kind: RecordKind,
    pub(crate) key: &'a [u8],
    /// Empty for claims and removes; the encoded `StateValue` for leases and done records.
    pub(crate) value: &'a [u8],
    pub(crate) attempt: u32,
    pub(crate) time: u64,
    pub(crate) expires: u64,
}

impl<'a> RecordSpec<'a> {
    /// A record without value or attempt (claim or remove).
    pub(crate) fn plain(kind: RecordKind, key: &'a [u8], time: u64, expires: u64) -> Self {
        RecordSpec {
            kind,
            key,
            value: &[],
            attempt: 0,
            time,
            expires,
        }
    }

    /// Bytes the record takes in a segment.
    pub(crate) fn len(&self) -> usize {
        encoded_len(self.key.len(), self.value.len())
    }

    /// Encodes the record into `out`, which is `len()` bytes long.
    fn encode(&self, out: &mut [u8]) {
        let (k, v) = (self.key, self.value);
        encode_record(out, self.kind, k, v, self.attempt, self.time, self.expires);
    }
}

/// A segment created under its temporary name, with its appender and that name.
pub(crate) type Spare = (Segment, Appender, PathBuf);

/// Configuration the log needs.
pub(crate) struct LogConfig {
    pub(crate) dir: PathBuf,
    pub(crate) io: Io,
    pub(crate) segment_size: u64,
    pub(crate) store_id: u128,
}

/// The segment log of one store.
pub(crate) struct Log {
    config: LogConfig,
    pub(crate) table: Arc<SegmentTable>,
    writer: Mutex<Writer>,
    commit: Mutex<CommitState>,
    commit_done: Condvar,
    durable: AtomicU64,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    syncs: AtomicU64,
    /// Background preparation of the next segment (see `prepare_next`); the thread returns
    /// the spare it made, if it made one.
    prep: Mutex<Option<Prep>>,
    /// Test hook run by the sync leader before it reads the tail and syncs.
    #[cfg(test)]
    pub(crate) before_sync: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Test failpoint: while set, every data sync fails with EIO.
    #[cfg(test)]
    pub(crate) fail_syncs: AtomicBool,
}

impl Log {
    /// Wires up a log whose segments recovery has installed and whose active segment's
    /// content up to the writer's tail is already durable.
    pub(crate) fn new(config: LogConfig, table: Arc<SegmentTable>, writer: Writer) -> Log {
        let durable = lsn(writer.segment.id, writer.appender.tail());
        // Fault in the rest of the active segment off the append path.
        let map = Arc::clone(&writer.segment.map);
        let from = writer.appender.tail();
        let populate = Prep::spawn(move |stop| {
            map.populate(from, stop);
            None
        });
        let log = Log {
            config,
            table,
            writer: Mutex::new(writer),
            commit: Mutex::new(CommitState {
                in_flight: 0,
                waiting: 0,
                covering: 0,
            }),
            commit_done: Condvar::new(),
            durable: AtomicU64::new(durable),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            syncs: AtomicU64::new(0),
            prep: Mutex::new(None),
            #[cfg(test)]
            before_sync: Mutex::new(None),
            #[cfg(test)]
            fail_syncs: AtomicBool::new(false),
        };
        *log.prep.lock() = populate;
        log
    }

    /// The id of the segment appended to.
    pub(crate) fn active_id(&self) -> u64 {
        self.writer.lock().segment.id
    }

    /// The id shared by every segment of this store.
    pub(crate) fn store_id(&self) -> u128 {
        self.config.store_id
    }

    /// What the active segment holds so far, and its usage counters.
    pub(crate) fn active_totals(&self) -> (Totals, Arc<Segment>) {
        let w = self.writer.lock();
        (w.totals, Arc::clone(&w.segment))
    }

    /// Appends one record.
    pub(crate) fn append(&self, rec: RecordSpec<'_>) -> Result<Appended> {
        // Small records (every claim of a key up to ~200 bytes) are encoded and checksummed
        // before the writer lock is taken, so the lock covers little more than a copy.
        let len = rec.len();
        let mut buf = [0u8; PRE_ENCODED_MAX];
        let pre = buf.get_mut(..len).map(|b| {
            rec.encode(b);
            &*b
        });
        let mut out = None;
        self.append_locked(std::slice::from_ref(&rec), pre, |_, a| out = Some(a))?;
        out.ok_or_else(|| self.poison("append produced no record".to_string()))
    }

    /// Appends `recs` in order as one unit: either all are written, or — when a new segment
    /// cannot be created (a full disk, say) — none is, and the log is unchanged. Every
    /// segment the batch needs is created before the first byte is written. `done` learns
    /// where each record went.
    pub(crate) fn append_all(
        &self,
        recs: &[RecordSpec<'_>],
        done: impl FnMut(usize, Appended),
    ) -> Result<()> {
        self.append_locked(recs, None, done)
    }

    /// `append_all`, where `pre`, if given, is the already encoded form of the one record
    /// in `recs`.
    fn append_locked(
        &self,
        recs: &[RecordSpec<'_>],
        pre: Option<&[u8]>,
        mut done: impl FnMut(usize, Appended),
    ) -> Result<()> {
        let mut w = self.writer.lock();
        self.check_poison()?;
        let usable = self.config.segment_size as usize - SEGMENT_HEADER_LEN - SEAL_LEN;
        let mut room = w.appender.remaining().saturating_sub(SEAL_LEN);
        let mut needed = 0usize;
        for rec in recs {
            let len = rec.len();
            if len > room {
                needed += 1;
                room = usable;
            }
            room = room.saturating_sub(len);
        }
        let mut spares = Vec::with_capacity(needed);
        let now = recs.first().map_or(0, |r| r.time);
        for next_id in (w.segment.id + 1..).take(needed) {
            if next_id == w.segment.id + 1 {
                if let Some(spare) = self.take_prepared(next_id) {
                    spares.push(spare);
                    continue;
                }
            }
            match create_segment(
                &self.config.io,
                &self.config.dir,
                next_id,
                self.config.segment_size,
                self.config.store_id,
                now,
            ) {
                Ok(s) => spares.push(s),
                Err(e) => {
                    for (_, _, tmp) in &spares {
                        let _ = fs::remove_file(&self.config.io, tmp);
                    }
                    return Err(e);
                }
            }
        }
        let mut spares = spares.into_iter();
        for (i, rec) in recs.iter().enumerate() {
            let len = rec.len();
            if w.appender.remaining() < len + SEAL_LEN {
                let Some(spare) = spares.next() else {
                    return Err(self.poison("segment plan fell short".to_string()));
                };
                self.rotate(&mut w, spare, rec.time)?;
            }
            let at = w
                .appender
                .append(len, |buf| match pre {
                    Some(bytes) if bytes.len() == buf.len() => buf.copy_from_slice(bytes),
                    _ => rec.encode(buf),
                })
                .ok_or_else(|| self.poison("record does not fit a fresh segment".to_string()))?;
            w.totals.add(rec.kind, len, rec.expires);
            done(
                i,
                Appended {
                    loc: Location {
                        slot: w.slot,
                        offset: at as u32,
                    },
                    lsn_end: lsn(w.segment.id, at + len),
                },
            );
        }
        for (_, _, tmp) in spares {
            let _ = fs::remove_file(&self.config.io, &tmp);
        }
        if !w.next_prepared && w.appender.remaining() < usable / 2 {
            w.next_prepared = true;
            self.prepare_next(w.segment.id + 1, now);
        }
        Ok(())
    }

    /// Starts making segment `id` in the background — created under its temporary name,
    /// allocated, header synced, pages faulted in — so that the append that fills the
    /// active segment finds its successor ready instead of doing all that under the writer
    /// lock. Best effort: if the thread cannot start or fails, rotation creates the segment
    /// itself and reports any error then. A crash meanwhile leaves only a temporary file,
    /// which `open` deletes.
    fn prepare_next(&self, id: u64, now: u64) {
        let mut prep = self.prep.lock();
        if let Some(old) = prep.take() {
            if let Some((_, _, tmp)) = old.finish() {
                let _ = fs::remove_file(&self.config.io, &tmp);
            }
        }
        let (dir, io) = (self.config.dir.clone(), self.config.io.clone());
        let (size, store_id) = (self.config.segment_size, self.config.store_id);
        *prep = Prep::spawn(move |stop| {
            let spare = create_segment(&io, &dir, id, size, store_id, now).ok()?;
            spare.0.map.populate(SEGMENT_HEADER_LEN, stop);
            Some(spare)
        });
    }

    /// The segment `prepare_next` made, if it made segment `id`.
    fn take_prepared(&self, id: u64) -> Option<Spare> {
        let job = self.prep.lock().take()?;
        match job.finish() {
            Some(spare) if spare.0.id == id => Some(spare),
            Some((_, _, tmp)) => {
                let _ = fs::remove_file(&self.config.io, &tmp);
                None
            }
            None => None,
        }
    }

    /// Seals the active segment and makes `spare` (created by `create_segment`) the new one.
    /// Runs under the writer lock.
    ///
    /// Order, and why (crash analysis in docs/FORMAT.md):
    /// 1. (before) `seg-N+1.olog.tmp` was created, allocated, and its header synced — a crash
    ///    then leaves only a temporary file, deleted on open;
    /// 2. append the seal record to segment N and sync all of N — N is complete on disk;
    /// 3. rename the temporary to `seg-N+1.olog` and fsync the directory — only now can
    ///    recovery see N+1, and it always finds N sealed.
    ///
    /// A failure in 2 or 3 poisons the log: segment N is sealed, so nothing more may be
    /// appended to it, and the store must be reopened.
    fn rotate(&self, w: &mut Writer, spare: Spare, now: u64) -> Result<()> {
        let (segment, appender, tmp) = spare;
        let next_id = segment.id;
        let data_end = w.appender.tail();
        let info = SealInfo {
            records: w.totals.records,
            data_end: data_end as u64,
            max_expires: w.totals.max_expires,
        };
        let mut seal = [0u8; SEAL_LEN];
        encode_seal(&mut seal, info, now);
        if w.appender
            .append(SEAL_LEN, |b| b.copy_from_slice(&seal))
            .is_none()
        {
            // Cannot happen: appends always leave SEAL_LEN free. Refuse rather than write an
            // unsealed segment followed by a newer one.
            let _ = fs::remove_file(&self.config.io, &tmp);
            return Err(self.poison("no room left for the seal record".to_string()));
        }
        let sealed_end = w.appender.tail();
        if let Err(e) = self.sync_range(&w.segment, 0, sealed_end) {
            let _ = fs::remove_file(&self.config.io, &tmp);
            return Err(self.poison_io("sync sealed segment", &w.segment.path, e));
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        w.segment.usage.seal(w.totals, data_end, now);
        if let Err(e) = fs::rename(&self.config.io, &tmp, &segment.path) {
            let _ = fs::remove_file(&self.config.io, &tmp);
            return Err(self.poison_io("rename new segment", &segment.path, e));
        }
        if let Err(e) = fs::sync_dir(&self.config.io, &self.config.dir) {
            // As for the steps above: the caller gets the I/O error, and the poison reason
            // keeps its cause (an `Error`'s message leaves its source out).
            self.poison(match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            });
            return Err(e);
        }
        let segment = Arc::new(segment);
        let slot = match self.table.install(Arc::clone(&segment)) {
            Ok(s) => s,
            Err(e) => return Err(self.poison(e.to_string())),
        };
        self.durable
            .fetch_max(lsn(w.segment.id, sealed_end), Ordering::AcqRel);
        *w = Writer {
            segment,
            slot,
            appender,
            totals: Totals::default(),
            next_prepared: false,
        };
        self.durable
            .fetch_max(lsn(next_id, SEGMENT_HEADER_LEN), Ordering::AcqRel);
        Ok(())
    }

    /// Seals the active segment and starts a new one if the active one was written by an
    /// older format version: records of the current version go only into segments whose
    /// header says so (docs/FORMAT.md §4), so that an older build refuses the directory
    /// instead of misreading it. Called once by `open`.
    pub(crate) fn upgrade_active(&self, now: u64) -> Result<()> {
        let mut w = self.writer.lock();
        self.check_poison()?;
        if w.segment.version >= FORMAT_VERSION {
            return Ok(());
        }
        let next_id = w.segment.id + 1;
        let spare = create_segment(
            &self.config.io,
            &self.config.dir,
            next_id,
            self.config.segment_size,
            self.config.store_id,
            now,
        )?;
        self.rotate(&mut w, spare, now)
    }

    /// Returns once everything up to `lsn_end` is on stable storage, syncing if needed.
    ///
    /// Group commit with overlap at low concurrency. A caller whose record no running sync
    /// will cover starts one at once if none is running — or if fewer than
    /// `MAX_SYNCS_IN_FLIGHT` are and at most `OVERLAP_MAX_WAITING` callers are waiting;
    /// everyone else waits for the sync that covers them. Each sync covers `[durable when it starts, tail when
    /// it starts)`: everything below its start is already durable, so when it completes the
    /// whole prefix up to its end is, whatever the other syncs are doing — `durable` only
    /// ever moves to the end of a completed sync. Letting a second sync start while the
    /// first is in flight, rather than queueing behind it, is what lets claims that arrive
    /// during a sync be acknowledged one sync later instead of two.
    pub(crate) fn wait_durable(&self, lsn_end: u64) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= lsn_end {
            return Ok(());
        }
        let mut st = self.commit.lock();
        st.waiting += 1;
        let res = self.wait_durable_locked(&mut st, lsn_end);
        st.waiting -= 1;
        res
    }

    fn wait_durable_locked(
        &self,
        st: &mut parking_lot::MutexGuard<'_, CommitState>,
        lsn_end: u64,
    ) -> Result<()> {
        loop {
            if self.durable.load(Ordering::Acquire) >= lsn_end {
                return Ok(());
            }
            self.check_poison()?;
            // Overlap only at low concurrency: with more waiters, the next sync covers more
            // of them if it starts when the current one ends.
            let may_start = st.in_flight == 0
                || (st.in_flight < MAX_SYNCS_IN_FLIGHT && st.waiting <= OVERLAP_MAX_WAITING);
            if st.covering >= lsn_end || !may_start {
                self.commit_done.wait(st);
                continue;
            }
            st.in_flight += 1;
            // Until this sync has read the tail it covers nothing: others may start their own.
            let res = parking_lot::MutexGuard::unlocked(st, || {
                self.sync_written(|target| {
                    let mut st = self.commit.lock();
                    st.covering = st.covering.max(target);
                })
            });
            st.in_flight -= 1;
            self.commit_done.notify_all();
            res?;
        }
    }

    /// Syncs everything written so far.
    pub(crate) fn sync(&self) -> Result<()> {
        let target = {
            let w = self.writer.lock();
            lsn(w.segment.id, w.appender.tail())
        };
        self.wait_durable(target)
    }

    /// Reads the tail, tells `started` what it will cover, syncs up to it and moves
    /// `durable` there.
    fn sync_written(&self, started: impl FnOnce(u64)) -> Result<()> {
        #[cfg(test)]
        {
            let hook = self.before_sync.lock().clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        // `durable` is read before the tail: everything below it is durable, and the range
        // synced below starts there, so no byte between the two can be missed.
        let durable = self.durable.load(Ordering::Acquire);
        let (segment, tail) = {
            let w = self.writer.lock();
            (Arc::clone(&w.segment), w.appender.tail())
        };
        let target = lsn(segment.id, tail);
        started(target);
        if durable >= target {
            return Ok(());
        }
        let from = if durable >> 32 == segment.id {
            (durable & 0xffff_ffff) as usize
        } else {
            // `durable` is in an older segment, which rotation synced whole before this
            // one's name became visible.
            0
        };
        if let Err(e) = self.sync_range(&segment, from, tail - from.min(tail)) {
            return Err(self.poison_io("sync segment", &segment.path, e));
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Every data sync of the running log goes through here.
    fn sync_range(&self, segment: &Segment, from: usize, len: usize) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        segment.sync_range(&self.config.io, &segment.path, from, len)
    }

    /// Fails if an earlier sync failed.
    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let reason = self
                .poison_reason
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown failure".to_string());
            return Err(Error::Poisoned { reason });
        }
        Ok(())
    }

    /// Marks the log poisoned; returns the error to give the caller who hit the failure.
    pub(crate) fn poison(&self, reason: String) -> Error {
        let mut r = self.poison_reason.lock();
        if r.is_none() {
            *r = Some(reason.clone());
        }
        self.poisoned.store(true, Ordering::Release);
        Error::Poisoned { reason }
    }

    fn poison_io(&self, op: &'static str, path: &Path, e: std::io::Error) -> Error {
        self.poison(format!("{op} {}: {e}", path.display()));
        Error::io(op, path, e)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Everything before this lsn is on stable storage.
    #[cfg(test)]
    pub(crate) fn durable_lsn(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The lsn just past the last record written.
    #[cfg(test)]
    pub(crate) fn tail_lsn(&self) -> u64 {
        let w = self.writer.lock();
        lsn(w.segment.id, w.appender.tail())
    }

    /// The hook every file-system change goes through.
    pub(crate) fn io(&self) -> &Io {
        &self.config.io
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for Log {
    /// Waits for background preparation and deletes an unused prepared segment, so that a
    /// closed store leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some(job) = self.prep.get_mut().take() {
            if let Some((_, _, tmp)) = job.finish() {
                let _ = fs::remove_file(&self.config.io, &tmp);
            }
        }
    }
}

/// A background job preparing segments (see `Log::prepare_next`).
struct Prep {
    handle: JoinHandle<Option<Spare>>,
    stop: Arc<AtomicBool>,
}

impl Prep {
    fn spawn(job: impl FnOnce(&AtomicBool) -> Option<Spare> + Send + 'static) -> Option<Prep> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("oncelog-prep".into())
            .spawn(move || job(&flag))
            .ok()?;
        Some(Prep { handle, stop })
    }

    /// Cuts the job short (the rest of its populating is skipped: it is only an
    /// optimisation) and returns what it made. Waiting is short: at most one MiB of
    /// page faults, or the creation of a segment.
    fn finish(self) -> Option<Spare> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// Records up to this many bytes are encoded before the writer lock is taken.
const PRE_ENCODED_MAX: usize = 256;

/// Creates segment `id` under its temporary name: allocated, header written and synced.
/// The caller renames it into place (and fsyncs the directory) when the time is right.
pub(crate) fn create_segment(
    io: &Io,
    dir: &Path,
    id: u64,
    capacity: u64,
    store_id: u128,
    now: u64,
) -> Result<Spare> {
    let path = dir.join(fs::segment_name(id));
    let tmp = dir.join(format!("{}{}", fs::segment_name(id), fs::TMP_SUFFIX));
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
        Ok((segment, appender)) => Ok((segment, appender, tmp)),
        Err(e) => {
            let _ = fs::remove_file(io, &tmp);
            Err(e)
        }
    }
}
