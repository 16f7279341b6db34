//! Maintenance: sweeping expired entries out of the index, deleting segments nothing needs,
//! compacting sparse segments, and writing hint files. Run by the store's background thread
//! every `Options::maintenance_interval`, and on demand by [`Store::compact`].
//!
//! Invariants (docs/FORMAT.md §9 has the crash analysis of every step):
//!
//! - **Only dead records are dropped.** A claim record is dropped only when no index entry
//!   points at it (its key was removed, re-claimed, or the entry was swept) or it has
//!   expired; a remove record (tombstone) only once its `expires` has passed — it carries
//!   the expiry of the claim it hides, so from then on that claim is expired too, wherever
//!   a copy of it may still be read. Nothing else is ever dropped, so a removed or expired
//!   key never comes back (DESIGN invariant 4).
//! - **Log order is kept.** A compacted segment keeps its id and so its place in the replay
//!   order; its records keep their relative order. Records are never moved to another
//!   position in the log, so a tombstone can never end up after a newer claim of its key.
//! - **Each file step is atomic.** The compacted copy is written and fsynced under a
//!   temporary name, then renamed over the original: after a crash the directory holds the
//!   old segment or the new one, and both replay to the same state. A deletion unlinks one
//!   file, which is whole whether or not the unlink survives.
//! - **No entry ever points into a segment that is gone.** A segment leaves the table only
//!   after every entry pointing into it was dropped or repointed (each under its stripe
//!   lock), and after every stripe lock was taken once more, so that no reader still holds
//!   a reference into it.
//! - **No pause grows with the store.** The sweep takes a stripe lock for one slice of
//!   `SWEEP_SLICE` table buckets at a time, however many keys the stripe holds.
//!
//! [`Store::compact`]: crate::Store::compact

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock::to_millis;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    decode_hint, decode_record, encode_hint, encode_seal, HintEntry, HintHeader, RecordKind,
    SealInfo, SegmentHeader, FORMAT_VERSION, SEAL_LEN, SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::index::SWEEP_SLICE;
use crate::iohook::Io;
use crate::log::{Segment, SegmentMap, Totals, MAX_SEGMENTS};
use crate::store::Inner;

/// What one maintenance run did, returned by [`Store::compact`](crate::Store::compact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Expired entries removed from the index.
    pub entries_swept: u64,
    /// Segments read to be compacted.
    pub segments_read: u64,
    /// Compacted segments written (each replaces the one it was read from).
    pub segments_written: u64,
    /// Segments deleted outright: nothing in them was needed any more.
    pub segments_deleted: u64,
    /// Bytes of the segments read for compaction.
    pub bytes_read: u64,
    /// Bytes of the compacted segments written.
    pub bytes_written: u64,
    /// Disk bytes freed: deleted segments, and what compaction cut from the ones it rewrote.
    pub bytes_reclaimed: u64,
    /// Hint files written.
    pub hints_written: u64,
    /// How long the run took.
    pub duration: Duration,
}

/// Maintenance settings, from [`Options`](crate::Options).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaintConfig {
    /// Compact a sealed segment once what must be kept falls below this fraction of it.
    pub(crate) threshold: f64,
    /// Write hint files (only with the default hasher: hints store its hashes).
    pub(crate) hints: bool,
}

/// Maintenance state shared by the background thread and `Store::compact`.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    /// One run at a time.
    running: Mutex<()>,
    pub(crate) runs: AtomicU64,
    pub(crate) swept: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
    pub(crate) bytes_reclaimed: AtomicU64,
    pub(crate) hints_written: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// Runs one round of maintenance: sweep, delete, compact, write hints.
pub(crate) fn run(inner: &Inner) -> Result<CompactionReport> {
    let _one = inner.maint.running.lock();
    let started = Instant::now();
    let mut report = CompactionReport::default();
    let result = run_locked(inner, &mut report);
    report.duration = started.elapsed();
    let m = &inner.maint;
    m.runs.fetch_add(1, Ordering::Relaxed);
    m.swept.fetch_add(report.entries_swept, Ordering::Relaxed);
    m.compactions
        .fetch_add(report.segments_written, Ordering::Relaxed);
    m.segments_deleted
        .fetch_add(report.segments_deleted, Ordering::Relaxed);
    m.bytes_reclaimed
        .fetch_add(report.bytes_reclaimed, Ordering::Relaxed);
    m.hints_written
        .fetch_add(report.hints_written, Ordering::Relaxed);
    if result.is_err() {
        m.errors.fetch_add(1, Ordering::Relaxed);
    }
    result.map(|()| report)
}

fn run_locked(inner: &Inner, report: &mut CompactionReport) -> Result<()> {
    inner.log.check_poison()?;
    #[cfg(test)]
    if inner
        .panic_in_maintenance
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        panic!("injected maintenance panic");
    }
    let now = to_millis(inner.clock.now());
    let active = inner.log.active_id();
    let segments: Vec<(u16, Arc<Segment>)> = inner
        .log
        .table
        .segments()
        .into_iter()
        .filter(|(_, s)| s.id != active && s.usage.is_sealed())
        .collect();

    // 1-2. Sweep expired entries out of the index and delete the segments nothing needs.
    //    A segment emptied by this sweep is deleted by a second pass right away.
    let mut gone = delete_unneeded(inner, &segments, now, report)?;
    // (A deleted segment's slot may already hold a new segment: never look at it again.)
    let left: Vec<(u16, Arc<Segment>)> = segments
        .iter()
        .filter(|(slot, _)| !gone.contains(*slot))
        .cloned()
        .collect();
    if left.iter().any(|(_, seg)| unneeded(seg, now)) {
        let more = delete_unneeded(inner, &left, now, report)?;
        for (slot, _) in &left {
            if more.contains(*slot) {
                gone.insert(*slot);
            }
        }
    }

    // 3. Compact sparse segments.
    if inner.maint_config.threshold > 0.0 {
        for (slot, seg) in &left {
            if gone.contains(*slot) {
                continue;
            }
            if worth_compacting(seg, now, inner.maint_config.threshold) {
                compact_segment(inner, *slot, seg, now, report)?;
            }
        }
    }

    // 4. Hints for sealed segments that have none.
    if inner.maint_config.hints && inner.default_hasher {
        let mut wrote = false;
        for (_, seg) in inner.log.table.segments() {
            if seg.id == active || !seg.usage.is_sealed() || seg.usage.hinted() {
                continue;
            }
            write_hint(inner, &seg)?;
            report.hints_written += 1;
            wrote = true;
        }
        if wrote {
            // Not needed for correctness (a lost hint means a scan), but it keeps the
            // next open fast after a power cut.
            fs::sync_dir(inner.log.io(), &inner.dir)?;
        }
    }
    Ok(())
}

/// Whether nothing in `seg` is needed: no entry points into it, and its tombstones (if
/// any) have expired.
fn unneeded(seg: &Segment, now: u64) -> bool {
    let u = &seg.usage;
    let tombs_needed = u.tomb_bytes.load(Ordering::Relaxed) > 0
        && u.tomb_max_expires.load(Ordering::Relaxed) > now;
    u.live_bytes() == 0 && !tombs_needed
}

/// Sweeps expired entries out of every stripe that may hold some, and deletes the segments
/// that were unneeded when it started. Returns the slots of the segments deleted.
///
/// The byte accounting says which segments no entry points into; the sweep, which visits
/// every entry when there is a segment to delete, checks it, and spares a segment if an
/// unexpired entry still points there (a bug: never delete what an entry needs). Every
/// stripe lock is taken after the segments were picked, so no reader is inside one of
/// them any more when they are removed.
fn delete_unneeded(
    inner: &Inner,
    segments: &[(u16, Arc<Segment>)],
    now: u64,
    report: &mut CompactionReport,
) -> Result<SlotSet> {
    let mut doomed = SlotSet::new();
    for (slot, seg) in segments {
        if unneeded(seg, now) {
            doomed.insert(*slot);
        }
    }
    let mut spared = SlotSet::new();
    let table = &inner.log.table;
    let any_doomed = !doomed.is_empty();
    for i in 0..inner.index.stripes() {
        // One slice per lock hold: claims on this stripe wait for one slice at most.
        loop {
            let mut stripe = inner.index.lock_stripe(i);
            if !any_doomed && !stripe.may_have_expired(now) && !stripe.sweeping() {
                break;
            }
            let slice = stripe.sweep_slice(
                now,
                SWEEP_SLICE,
                |e| {
                    if doomed.contains(e.slot) {
                        debug_assert!(false, "live entry in a segment thought unneeded");
                        spared.insert(e.slot);
                    }
                    false
                },
                |e| table.retire(e),
            );
            report.entries_swept += slice.dropped as u64;
            if slice.done {
                break;
            }
        }
    }
    let mut gone = SlotSet::new();
    // As in compaction: what made these segments' records dead must be durable first.
    if segments
        .iter()
        .any(|(slot, _)| doomed.contains(*slot) && !spared.contains(*slot))
    {
        inner.log.sync()?;
    }
    for (slot, seg) in segments {
        if !doomed.contains(*slot) || spared.contains(*slot) {
            continue;
        }
        delete_segment(inner, *slot, seg, report)?;
        gone.insert(*slot);
    }
    if !gone.is_empty() {
        fs::sync_dir(inner.log.io(), &inner.dir)?;
    }
    Ok(gone)
}

/// Deletes a segment no entry points into (and no reader is inside) and its hint.
fn delete_segment(
    inner: &Inner,
    slot: u16,
    seg: &Segment,
    report: &mut CompactionReport,
) -> Result<()> {
    crate::failpoint::crash_point("delete-before-unlink");
    fs::remove_file(inner.log.io(), &seg.path)?;
    crate::failpoint::crash_point("delete-after-unlink");
    fs::remove_file(inner.log.io(), &hint_path(inner, seg.id))?;
    inner.log.table.uninstall(slot);
    report.segments_deleted += 1;
    report.bytes_reclaimed += seg.disk_len();
    Ok(())
}

/// Whether what must be kept of `seg` is below `threshold` of its data.
fn worth_compacting(seg: &Segment, now: u64, threshold: f64) -> bool {
    let u = &seg.usage;
    let data = u
        .data_end
        .load(Ordering::Relaxed)
        .saturating_sub(SEGMENT_HEADER_LEN as u64);
    if data == 0 {
        return false;
    }
    let tombs = if u.tomb_max_expires.load(Ordering::Relaxed) > now {
        u.tomb_bytes.load(Ordering::Relaxed)
    } else {
        0
    };
    let keep = u.live_bytes() + tombs;
    if (keep as f64) >= threshold * data as f64 {
        return false;
    }
    // A segment that will have expired whole within the time it took to fill is left to
    // be deleted then: with one TTL for all keys every segment passes through a sparse
    // phase on its way out, and rewriting it then would only add writes.
    let active_for = u
        .sealed_at
        .load(Ordering::Relaxed)
        .saturating_sub(seg.created_at);
    u.max_expires.load(Ordering::Relaxed) > now.saturating_add(active_for)
}

/// A record kept by compaction: where it was, where it goes.
struct Kept {
    hash: u64,
    old: u32,
    new: u32,
    len: u32,
    claim: bool,
}

/// Rewrites segment `seg` (in `slot`) without its dead records, under the same id.
fn compact_segment(
    inner: &Inner,
    slot: u16,
    seg: &Arc<Segment>,
    now: u64,
    report: &mut CompactionReport,
) -> Result<()> {
    let table = &inner.log.table;
    let data_end = seg.usage.data_end.load(Ordering::Relaxed) as usize;
    let bytes = seg.sealed_bytes().unwrap_or(&[]);
    report.segments_read += 1;
    report.bytes_read += seg.disk_len();

    // Pass 1: pick what to keep. A claim is kept if its entry still points at it and it has
    // not expired; an expired one loses its entry here, so no entry is left pointing into
    // the old copy.
    let mut out = vec![0u8; SEGMENT_HEADER_LEN];
    let mut kept: Vec<Kept> = Vec::new();
    let mut totals = Totals::default();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < data_end {
        let rec = decode_record(bytes.get(pos..).unwrap_or(&[])).map_err(|_| {
            Error::corruption(&seg.path, pos as u64, CorruptionKind::MalformedRecord)
        })?;
        let len = rec.len;
        let claim = rec.header.kind.is_state();
        let hash = if claim { (inner.hasher)(rec.key) } else { 0 };
        let keep = match rec.header.kind {
            RecordKind::Seal => break,
            RecordKind::Remove => rec.header.expires > now,
            RecordKind::Claim | RecordKind::Lease | RecordKind::Done => {
                let loc = crate::log::Location {
                    slot,
                    offset: pos as u32,
                };
                let mut stripe = inner.index.lock(hash);
                match stripe.at_location(hash, loc) {
                    None => false,
                    Some(_) if rec.header.expires <= now => {
                        if let Some(e) = stripe.remove_at_location(hash, loc) {
                            seg.usage.died(e.record_len());
                            report.entries_swept += 1;
                        }
                        false
                    }
                    Some(_) => true,
                }
            }
        };
        if keep {
            let src = bytes.get(pos..pos + len).unwrap_or(&[]);
            kept.push(Kept {
                hash,
                old: pos as u32,
                new: out.len() as u32,
                len: len as u32,
                claim,
            });
            totals.add(rec.header.kind, len, rec.header.expires);
            out.extend_from_slice(src);
        }
        pos += len;
    }

    // Every record that made one of this segment's records dead (a newer record of its
    // key, a remove) must be durable before the dead one is gone for good: else a power cut
    // could take the newer record and leave the key with neither, and a claim or lease the
    // store had made durable would be lost. Under `Sync` most are already; under
    // `Periodic` or `Buffered` this is a sync of the log.
    inner.log.sync()?;

    if kept.is_empty() {
        // Nothing left: delete the segment instead of writing an empty copy.
        inner.index.quiesce();
        delete_segment(inner, slot, seg, report)?;
        return fs::sync_dir(inner.log.io(), &inner.dir);
    }

    // Pass 2: write the copy under a temporary name, sync it, rename it over the original.
    let new_end = out.len();
    let mut seal = [0u8; SEAL_LEN];
    // The copy keeps the original's creation and seal times: they say when its records
    // were written, which `worth_compacting` looks at.
    let sealed_at = seg.usage.sealed_at.load(Ordering::Relaxed);
    encode_seal(
        &mut seal,
        SealInfo {
            records: totals.records,
            data_end: new_end as u64,
            max_expires: totals.max_expires,
        },
        sealed_at,
    );
    out.extend_from_slice(&seal);
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        segment_id: seg.id,
        created_at: seg.created_at,
        capacity: out.len() as u64,
        store_id: inner.log.store_id(),
    };
    if let Some(h) = out.get_mut(..SEGMENT_HEADER_LEN) {
        h.copy_from_slice(&header.encode());
    }
    let tmp = tmp_path(&seg.path);
    let file = write_synced(inner.log.io(), &tmp, &out)?;
    crate::failpoint::crash_point("compact-before-rename");
    if let Err(e) = fs::rename(inner.log.io(), &tmp, &seg.path) {
        let _ = fs::remove_file(inner.log.io(), &tmp);
        return Err(Error::io("rename compacted segment", &seg.path, e));
    }
    crate::failpoint::crash_point("compact-after-rename");
    // The old hint describes the old copy; its fingerprint would not match, but do not
    // leave it to be read.
    let _ = fs::remove_file(inner.log.io(), &hint_path(inner, seg.id));
    fs::sync_dir(inner.log.io(), &inner.dir)?;
    crate::failpoint::crash_point("compact-after-sync");

    // Pass 3: install the copy and move the entries over, each under its stripe lock. An
    // entry that changed meanwhile (removed, or replaced after expiry) is left alone, and
    // its copied record is dead from the start.
    let map = SegmentMap::read_only(&file).map_err(|e| Error::io("map segment", &seg.path, e))?;
    drop(file);
    let fresh = Arc::new(Segment::new(seg.path.clone(), header, map));
    fresh.usage.seal(totals, new_end, sealed_at);
    let new_slot = table.install(Arc::clone(&fresh))?;
    for k in kept.iter().filter(|k| k.claim) {
        let old = crate::log::Location {
            slot,
            offset: k.old,
        };
        let mut stripe = inner.index.lock(k.hash);
        match stripe.at_location(k.hash, old) {
            Some(e) => {
                e.slot = new_slot;
                e.offset = k.new;
            }
            None => fresh.usage.died(u64::from(k.len)),
        }
    }
    inner.index.quiesce();
    table.uninstall(slot);
    report.segments_written += 1;
    report.bytes_written += out.len() as u64;
    report.bytes_reclaimed += seg.disk_len().saturating_sub(out.len() as u64);
    Ok(())
}

/// Writes `seg`'s hint file: every claim and remove record with its key's hash.
fn write_hint(inner: &Inner, seg: &Segment) -> Result<()> {
    let data_end = seg.usage.data_end.load(Ordering::Relaxed) as usize;
    let bytes = seg.sealed_bytes().unwrap_or(&[]);
    let mut entries = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let seal_crc;
    loop {
        let rec = decode_record(bytes.get(pos..).unwrap_or(&[])).map_err(|_| {
            Error::corruption(&seg.path, pos as u64, CorruptionKind::MalformedRecord)
        })?;
        if rec.header.kind == RecordKind::Seal {
            seal_crc = bytes
                .get(pos..pos + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            break;
        }
        entries.push(HintEntry {
            hash: (inner.hasher)(rec.key),
            offset: pos as u32,
            kind: rec.header.kind,
            len: rec.len as u32,
            expires: rec.header.expires,
        });
        pos += rec.len;
    }
    let Some(seal_crc) = seal_crc.filter(|_| pos == data_end) else {
        return Err(Error::corruption(
            &seg.path,
            pos as u64,
            CorruptionKind::MalformedRecord,
        ));
    };
    let header = HintHeader {
        segment_id: seg.id,
        store_id: inner.log.store_id(),
        data_end: data_end as u64,
        seal_crc,
        entries: entries.len() as u32,
    };
    let mut buf = Vec::with_capacity(64 + entries.len() * 24 + 4);
    encode_hint(&mut buf, &header, &entries);
    debug_assert!(decode_hint(&buf).is_ok());
    let path = hint_path(inner, seg.id);
    let tmp = tmp_path(&path);
    drop(write_synced(inner.log.io(), &tmp, &buf)?);
    crate::failpoint::crash_point("hint-before-rename");
    if let Err(e) = fs::rename(inner.log.io(), &tmp, &path) {
        let _ = fs::remove_file(inner.log.io(), &tmp);
        return Err(Error::io("rename hint", &path, e));
    }
    seg.usage.set_hinted();
    Ok(())
}

fn hint_path(inner: &Inner, id: u64) -> PathBuf {
    inner.dir.join(fs::hint_file_name(id))
}

fn tmp_path(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(fs::TMP_SUFFIX);
    PathBuf::from(s)
}

/// Creates `path` with `bytes`, fsynced (data and length). Deletes it on failure.
fn write_synced(io: &Io, path: &std::path::Path, bytes: &[u8]) -> Result<std::fs::File> {
    let made = (|| {
        let f = fs::create(io, path)?;
        fs::write_at(io, &f, path, 0, bytes)?;
        fs::sync_file(io, &f, path)?;
        Ok(f)
    })();
    made.map_err(|e| {
        let _ = fs::remove_file(io, path);
        Error::io("write file", path, e)
    })
}

/// A set of segment-table slots.
struct SlotSet(Vec<u64>);

impl SlotSet {
    fn new() -> SlotSet {
        SlotSet(vec![0; MAX_SEGMENTS / 64])
    }

    fn insert(&mut self, slot: u16) {
        if let Some(w) = self.0.get_mut(usize::from(slot) / 64) {
            *w |= 1 << (slot % 64);
        }
    }

    fn contains(&self, slot: u16) -> bool {
        self.0
            .get(usize::from(slot) / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}
