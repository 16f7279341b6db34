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
//!   a copy of it may still be read — or once no segment it may hide records in (its
//!   `Hides` range, older than its own) is left on disk, durably: what it hides in its own
//!   segment is dead, and goes with the same copy or deletion. Nothing else is ever
//!   dropped, so a removed or expired key never comes back (invariant 4 of
//!   docs/DESIGN.md).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::{Engine, Fate};
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    decode_hint, decode_record, encode_hint, Hides, HintEntry, HintHeader, RecordKind,
    SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::log::{Location, SealedWriter, Segment, SegmentIds, SegmentMap, MAX_SEGMENTS};

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
    /// Segments replayed from their hints at open whose records this run checked.
    pub segments_verified: u64,
    /// Of those, segments with a record that failed its check: they are counted in
    /// [`Stats::damaged_segments`](crate::Stats::damaged_segments) and left uncompacted.
    pub damaged_found: u64,
    /// How long the run took.
    pub duration: Duration,
}

/// How many bytes the index tables must have freed (growing replaces a table's array with
/// one a third larger; shrinking, with a smaller one) before maintenance gives the freed
/// heap back to the system: enough that a trim (which walks the allocator's free lists) is
/// worth its time.
const RELEASE_AFTER: u64 = 8 << 20;

/// Whether to give freed heap back, given the bytes the index tables have freed in all
/// (`freed`), when the heap was last given back (`last`) and at the end of the previous
/// run (`prev_run`): once `RELEASE_AFTER` more bytes are free (after mass expiry, and
/// while a store grows: the allocator would keep every array a table outgrew), and once
/// the tables have settled with less than that pending (nothing freed since the previous
/// run), so that a store that stopped growing or shrinking does not keep up to
/// `RELEASE_AFTER` of dead arrays for good.
fn should_release(freed: u64, last: u64, prev_run: u64) -> bool {
    let pending = freed.saturating_sub(last);
    pending >= RELEASE_AFTER || (pending > 0 && freed == prev_run)
}

/// Maintenance of one store: its settings, and counters shared by the background thread
/// and `Store::compact`.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    /// Compact a sealed segment once what must be kept falls below this fraction of it
    /// (`Options::compaction_threshold`).
    threshold: f64,
    /// Write hint files (`Options::hints`; only with the default hasher: hints store its
    /// hashes).
    hints: bool,
    /// One run at a time.
    running: Mutex<()>,
    pub(crate) runs: AtomicU64,
    pub(crate) swept: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
    pub(crate) bytes_reclaimed: AtomicU64,
    pub(crate) hints_written: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Bytes the index tables had freed when the heap was last given back.
    index_freed: AtomicU64,
    /// Bytes the index tables had freed at the end of the previous run.
    index_freed_prev_run: AtomicU64,
    /// The last run failed (see `run_locked`).
    unfinished: AtomicBool,
}

impl Maintenance {
    pub(crate) fn new(threshold: f64, hints: bool) -> Maintenance {
        Maintenance {
            threshold,
            hints,
            ..Maintenance::default()
        }
    }

    /// Runs one round of maintenance: sweep, delete, compact, write hints, then give freed
    /// heap back if the index shrank a lot.
    pub(crate) fn run(&self, engine: &Engine) -> Result<CompactionReport> {
        let _one = self.running.lock();
        let started = Instant::now();
        let mut report = CompactionReport::default();
        let result = self.run_locked(engine, &mut report);
        // A run that failed may have deleted a segment without making the deletion durable.
        self.unfinished.store(result.is_err(), Ordering::Relaxed);
        report.duration = started.elapsed();
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.swept
            .fetch_add(report.entries_swept, Ordering::Relaxed);
        self.compactions
            .fetch_add(report.segments_written, Ordering::Relaxed);
        self.segments_deleted
            .fetch_add(report.segments_deleted, Ordering::Relaxed);
        self.bytes_reclaimed
            .fetch_add(report.bytes_reclaimed, Ordering::Relaxed);
        self.hints_written
            .fetch_add(report.hints_written, Ordering::Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.release_heap(engine);
        result.map(|()| report)
    }

    /// 5. Gives freed heap back to the system (see `heap`) when `should_release` says so.
    fn release_heap(&self, engine: &Engine) {
        let (_, freed) = engine.index_heap_bytes();
        let last = self.index_freed.load(Ordering::Relaxed);
        let prev_run = self.index_freed_prev_run.swap(freed, Ordering::Relaxed);
        if should_release(freed, last, prev_run) {
            crate::heap::release_free_memory();
            self.index_freed.store(freed, Ordering::Relaxed);
        }
    }

    fn run_locked(&self, engine: &Engine, report: &mut CompactionReport) -> Result<()> {
        engine.check_poison()?;
        if self.unfinished.load(Ordering::Relaxed) {
            // Tombstones are dropped once the segments they hide records in are gone from
            // the table (`SegmentIds`): a deletion that a failed run did not make durable
            // could be undone by a power cut, so make it durable first.
            fs::sync_dir(engine.io(), engine.dir())?;
        }
        let now = engine.now();
        let segments = engine.sealed_segments();

        // 0. Check the records of segments replayed from hints at open, which nobody has
        //    read yet: damage there is found and counted once, and the segment is left out
        //    of compaction, instead of failing every run that would compact it.
        for (_, seg) in &segments {
            if seg.usage.unverified() {
                report.segments_verified += 1;
                match removes_hide(seg) {
                    // Now known: what its tombstones hide (the hint did not say).
                    Some(hides) => seg.usage.set_tomb_hides(hides),
                    None => {
                        seg.usage.set_damaged();
                        report.damaged_found += 1;
                    }
                }
                seg.usage.set_unverified(false);
            }
        }

        // 1-2. Sweep expired entries out of the index and delete the segments nothing
        //    needs. A segment emptied by this sweep is deleted by a second pass right away.
        let mut gone = delete_unneeded(engine, &segments, now, report)?;
        // (A deleted segment's slot may already hold a new segment: never look at it again.)
        let left: Vec<(u16, Arc<Segment>)> = segments
            .iter()
            .filter(|(slot, _)| !gone.contains(*slot))
            .cloned()
            .collect();
        let present = engine.segment_ids();
        if left.iter().any(|(_, seg)| unneeded(seg, now, &present)) {
            let more = delete_unneeded(engine, &left, now, report)?;
            for (slot, _) in &left {
                if more.contains(*slot) {
                    gone.insert(*slot);
                }
            }
        }

        // 3. Compact sparse segments. That can take seconds, while keys go on expiring:
        //    between two segments the index is swept again once `SWEEP_EVERY` has passed
        //    on the store's clock since the last sweep, so that expired entries (and their
        //    memory) do not wait for the next run.
        if self.threshold > 0.0 {
            let mut swept_at = now;
            // Every deletion so far is durable (each step syncs the directory), and so is
            // each one compaction makes below (a segment with nothing to keep goes whole).
            let mut present = engine.segment_ids();
            for (slot, seg) in &left {
                if gone.contains(*slot) {
                    continue;
                }
                if !seg.usage.damaged() && worth_compacting(seg, now, &present, self.threshold) {
                    let hints = self.hints && engine.hints_usable();
                    let deleted = report.segments_deleted;
                    compact_segment(engine, *slot, seg, now, &present, hints, report)?;
                    if report.segments_deleted != deleted {
                        present.remove(seg.id);
                    }
                    let t = engine.now();
                    if t.saturating_sub(swept_at) >= SWEEP_EVERY_MS {
                        sweep_expired(engine, t, report);
                        swept_at = t;
                    }
                }
            }
        }

        // 4. Hints for sealed segments that have none.
        if self.hints && engine.hints_usable() {
            let mut wrote = false;
            for (_, seg) in engine.sealed_segments() {
                if seg.usage.hinted() {
                    continue;
                }
                write_hint(engine, &seg)?;
                report.hints_written += 1;
                wrote = true;
            }
            if wrote {
                // Not needed for correctness (a lost hint means a scan), but it keeps the
                // next open fast after a power cut.
                fs::sync_dir(engine.io(), engine.dir())?;
            }
        }
        Ok(())
    }
}

/// How often (ms of the store's clock) a long maintenance run sweeps the index again
/// between compactions. Without it, a run of many compactions let expired entries pile
/// up: 9.6M at the peak of a 30M-key run with short TTLs, 1.7M with it (README,
/// Performance).
const SWEEP_EVERY_MS: u64 = 500;

/// Drops the entries expired at `now` from every stripe that may hold some, one slice per
/// lock hold (the sweep of `delete_unneeded`, without deleting anything).
fn sweep_expired(engine: &Engine, now: u64, report: &mut CompactionReport) {
    for i in 0..engine.stripes() {
        loop {
            let slice = engine.sweep_slice(i, now, false, |_| {});
            report.entries_swept += slice.dropped as u64;
            if slice.done {
                break;
            }
        }
    }
}

/// Whether nothing in `seg` is needed while the segments `present` are on disk: no entry
/// points into it, and none of its tombstones still hides anything
/// (`Usage::needed_tomb_bytes`).
fn unneeded(seg: &Segment, now: u64, present: &SegmentIds) -> bool {
    seg.usage.live_bytes() == 0 && seg.usage.needed_tomb_bytes(now, seg.id, present) == 0
}

/// Sweeps expired entries out of every stripe that may hold some, and deletes the segments
/// that were unneeded when it started. Returns the slots of the segments deleted.
///
/// The byte accounting says which segments no entry points into; the sweep, which visits
/// every entry when there is a segment to delete, checks it, and spares a segment if an
/// unexpired entry still points there (a bug: never delete what an entry needs). Every
/// stripe lock is taken after the segments were picked, so no reader is inside one of
/// them any more when they are removed.
///
/// A tombstone hides records only in the segments its `Hides` range names, all older than
/// its own: once those are deleted, it hides nothing. So a segment whose only content is
/// tombstones of segments deleted in the same pass goes too (`cascade`). Those are deleted
/// in id order, each after the deletions before it are durable, and all of them are spared
/// if any segment is: a tombstone must never be gone while a record it hides is still
/// there.
fn delete_unneeded(
    engine: &Engine,
    segments: &[(u16, Arc<Segment>)],
    now: u64,
    report: &mut CompactionReport,
) -> Result<SlotSet> {
    let mut doomed = SlotSet::new();
    // Segments doomed only because others before them go.
    let mut cascade = SlotSet::new();
    // The segments on disk now (every earlier deletion is durable: see `run`), and those
    // that will be left. A tombstone's range names only ids below its own segment's, and
    // segments come in id order, so `after` is final for every id a range can name.
    let present = engine.segment_ids();
    let mut after = present.clone();
    for (slot, seg) in segments {
        if unneeded(seg, now, &present) {
            doomed.insert(*slot);
            after.remove(seg.id);
        } else if unneeded(seg, now, &after) {
            doomed.insert(*slot);
            cascade.insert(*slot);
            after.remove(seg.id);
        }
    }
    let mut spared = SlotSet::new();
    let any_doomed = !doomed.is_empty();
    for i in 0..engine.stripes() {
        // One slice per lock hold: claims on this stripe wait for one slice at most.
        loop {
            let slice = engine.sweep_slice(i, now, any_doomed, |e| {
                if doomed.contains(e.slot) {
                    debug_assert!(false, "live entry in a segment thought unneeded");
                    spared.insert(e.slot);
                }
            });
            report.entries_swept += slice.dropped as u64;
            if slice.done {
                break;
            }
        }
    }
    if !spared.is_empty() {
        for (slot, _) in segments {
            if cascade.contains(*slot) {
                spared.insert(*slot);
            }
        }
    }
    let mut gone = SlotSet::new();
    // As in compaction: what made these segments' records dead must be durable first.
    if segments
        .iter()
        .any(|(slot, _)| doomed.contains(*slot) && !spared.contains(*slot))
    {
        engine.sync()?;
    }
    let mut unsynced = false;
    for (slot, seg) in segments {
        if !doomed.contains(*slot) || spared.contains(*slot) {
            continue;
        }
        if cascade.contains(*slot) && unsynced {
            // The segments before it must be gone for good before its tombstones are.
            fs::sync_dir(engine.io(), engine.dir())?;
        }
        delete_segment(engine, *slot, seg, report)?;
        gone.insert(*slot);
        unsynced = true;
    }
    if !gone.is_empty() {
        fs::sync_dir(engine.io(), engine.dir())?;
    }
    Ok(gone)
}

/// Deletes a segment no entry points into, and its hint.
fn delete_segment(
    engine: &Engine,
    slot: u16,
    seg: &Segment,
    report: &mut CompactionReport,
) -> Result<()> {
    fs::remove_file(engine.io(), &seg.path)?;
    fs::remove_file(engine.io(), &hint_path(engine, seg.id))?;
    engine.forget_segment(slot);
    report.segments_deleted += 1;
    report.bytes_reclaimed += seg.disk_len();
    Ok(())
}

/// Whether what must be kept of `seg` (with the segments `present` on disk) is below
/// `threshold` of its data.
fn worth_compacting(seg: &Segment, now: u64, present: &SegmentIds, threshold: f64) -> bool {
    let u = &seg.usage;
    let data = u
        .data_end
        .load(Ordering::Relaxed)
        .saturating_sub(SEGMENT_HEADER_LEN as u64);
    if data == 0 {
        return false;
    }
    let keep = u.live_bytes() + u.needed_tomb_bytes(now, seg.id, present);
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

/// A state record kept by compaction: its key's hash, where it was, where it goes, and its
/// length.
struct Kept {
    hash: u64,
    old: u32,
    new: u32,
    len: u32,
}

/// Rewrites segment `seg` (in `slot`) without its dead records, under the same id; with
/// `hints`, writes the copy's hint file too, from the records it kept (so the copy is
/// never read back for it). A tombstone is kept while its hidden records' expiry is ahead
/// and a segment it may hide them in is among `present` (`SegmentIds::hidden_in`).
fn compact_segment(
    engine: &Engine,
    slot: u16,
    seg: &Arc<Segment>,
    now: u64,
    present: &SegmentIds,
    hints: bool,
    report: &mut CompactionReport,
) -> Result<()> {
    let data_end = seg.usage.data_end.load(Ordering::Relaxed) as usize;
    let bytes = seg.sealed_bytes().unwrap_or(&[]);
    report.segments_read += 1;
    report.bytes_read += seg.disk_len();

    // Pass 1: pick what to keep. A state record is kept if its entry still points at it and
    // it has not expired; an expired one loses its entry here, so no entry is left pointing
    // into the old copy. The copy is written as the records are picked, under its
    // temporary name.
    // The copy keeps the original's creation and seal times: they say when its records
    // were written, which `worth_compacting` looks at.
    let sealed_at = seg.usage.sealed_at.load(Ordering::Relaxed);
    let mut copy = SealedWriter::create(
        engine.io(),
        &seg.path,
        seg.id,
        seg.created_at,
        engine.store_id(),
    )?;
    let mut kept: Vec<Kept> = Vec::new();
    // The copy's hint entries: every record kept, at its new offset.
    let mut hint_entries: Vec<HintEntry> = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < data_end {
        let rec = decode_record(bytes.get(pos..).unwrap_or(&[])).map_err(|_| {
            Error::corruption(&seg.path, pos as u64, CorruptionKind::MalformedRecord)
        })?;
        let len = rec.len;
        let keep = match rec.header.kind {
            RecordKind::Seal => break,
            RecordKind::Remove => {
                let hides = rec.hides().unwrap_or(Hides::ANY);
                rec.header.expires > now && present.hidden_in(hides, seg.id)
            }
            RecordKind::Claim | RecordKind::Lease | RecordKind::Done => {
                let hash = engine.hash(rec.key);
                let loc = Location {
                    slot,
                    offset: pos as u32,
                };
                let expired = rec.header.expires <= now;
                match engine.record_fate(hash, loc, expired) {
                    Fate::Current => {
                        kept.push(Kept {
                            hash,
                            old: pos as u32,
                            new: copy.offset() as u32,
                            len: len as u32,
                        });
                        true
                    }
                    Fate::Expired => {
                        report.entries_swept += 1;
                        false
                    }
                    Fate::Dead => false,
                }
            }
        };
        if keep {
            if hints {
                hint_entries.push(HintEntry {
                    hash: kept
                        .last()
                        .filter(|k| k.old == pos as u32)
                        .map_or_else(|| engine.hash(rec.key), |k| k.hash),
                    offset: copy.offset() as u32,
                    kind: rec.header.kind,
                    len: len as u32,
                    expires: rec.header.expires,
                });
            }
            let src = bytes.get(pos..pos + len).unwrap_or(&[]);
            let hides = rec.hides().unwrap_or(Hides::ANY);
            copy.push(src, rec.header.kind, rec.header.expires, hides)?;
        }
        pos += len;
    }
    let copy = copy.finish(sealed_at)?;

    // Every record that made one of this segment's records dead (a newer record of its
    // key, a remove) must be durable before the dead one is gone for good: else a power cut
    // could take the newer record and leave the key with neither, and a claim or lease the
    // store had made durable would be lost. Under `Sync` most are already; under
    // `Periodic` or `Buffered` this is a sync of the log.
    engine.sync()?;

    if copy.totals.records == 0 {
        // Nothing left: delete the segment instead of putting an empty copy in place.
        copy.discard(engine.io());
        delete_segment(engine, slot, seg, report)?;
        return fs::sync_dir(engine.io(), engine.dir());
    }

    // Pass 2: rename the synced copy over the original.
    copy.rename_into_place(engine.io())?;
    // The old hint describes the old copy; its fingerprint would not match, but do not
    // leave it to be read.
    let _ = fs::remove_file(engine.io(), &hint_path(engine, seg.id));
    fs::sync_dir(engine.io(), engine.dir())?;

    // Pass 3: put the copy in place of the original and move the entries over, each under
    // its stripe lock. An entry that changed meanwhile (removed, or replaced after expiry)
    // is left alone, and its copied record is dead from the start.
    let map =
        SegmentMap::read_only(&copy.file).map_err(|e| Error::io("map segment", &seg.path, e))?;
    let fresh = Arc::new(Segment::new(seg.path.clone(), copy.header, map));
    fresh.usage.seal(copy.totals, copy.data_end, sealed_at);
    let moves = kept.iter().map(|k| (k.hash, k.old, k.new, k.len));
    engine.replace_segment(slot, Arc::clone(&fresh), moves)?;
    report.segments_written += 1;
    report.bytes_written += copy.len();
    report.bytes_reclaimed += seg.disk_len().saturating_sub(copy.len());

    // The copy's hint, from what pass 1 kept. Written after the copy is in place: a crash
    // before leaves the copy without a hint (read whole at the next open, hinted by the
    // next maintenance run).
    if hints {
        store_hint(engine, &fresh, copy.data_end, copy.seal_crc, &hint_entries)?;
        report.hints_written += 1;
    }
    Ok(())
}

/// Checks that every record of sealed segment `seg` decodes and passes its checksum, and
/// that the seal sits where the segment says its data ends; if so, returns the union of
/// what its remove records hide (`None` inside: it has none). `None` if a check fails.
fn removes_hide(seg: &Segment) -> Option<Option<Hides>> {
    let data_end = seg.usage.data_end.load(Ordering::Relaxed) as usize;
    let bytes = seg.sealed_bytes().unwrap_or(&[]);
    let mut pos = SEGMENT_HEADER_LEN;
    let mut union: Option<Hides> = None;
    loop {
        let rec = decode_record(bytes.get(pos..).unwrap_or(&[])).ok()?;
        if rec.header.kind == RecordKind::Seal {
            return (pos == data_end).then_some(union);
        }
        if let Some(h) = rec.hides() {
            union = Some(union.map_or(h, |u| u.union(h)));
        }
        pos += rec.len;
    }
}

/// Writes `seg`'s hint file: every state and remove record with its key's hash.
fn write_hint(engine: &Engine, seg: &Segment) -> Result<()> {
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
            hash: engine.hash(rec.key),
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
    store_hint(engine, seg, data_end, seal_crc, &entries)
}

/// Writes the hint file of `seg` (whose data ends at `data_end` and whose seal opens with
/// `seal_crc`) with `entries`, under a temporary name renamed into place.
fn store_hint(
    engine: &Engine,
    seg: &Segment,
    data_end: usize,
    seal_crc: u32,
    entries: &[HintEntry],
) -> Result<()> {
    let header = HintHeader {
        segment_id: seg.id,
        store_id: engine.store_id(),
        data_end: data_end as u64,
        seal_crc,
        entries: entries.len() as u32,
    };
    let mut buf = Vec::with_capacity(64 + entries.len() * 24 + 4);
    encode_hint(&mut buf, &header, entries);
    debug_assert!(decode_hint(&buf).is_ok());
    let path = hint_path(engine, seg.id);
    let tmp = fs::tmp_path(&path);
    drop(fs::write_new(engine.io(), &tmp, &buf)?);
    if let Err(e) = fs::rename(engine.io(), &tmp, &path) {
        let _ = fs::remove_file(engine.io(), &tmp);
        return Err(Error::io("rename hint", &path, e));
    }
    seg.usage.set_hinted();
    Ok(())
}

fn hint_path(engine: &Engine, id: u64) -> PathBuf {
    engine.dir().join(fs::hint_file_name(id))
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

#[cfg(test)]
mod tests {
    use super::{should_release, RELEASE_AFTER};

    #[test]
    fn freed_heap_is_given_back_in_bulk_or_once_the_tables_settle() {
        // Nothing freed, or nothing new since the last release: nothing to give back.
        assert!(!should_release(0, 0, 0));
        assert!(!should_release(5 << 20, 5 << 20, 5 << 20));
        // Enough freed since the last release: at once, even while the tables still change.
        assert!(should_release(RELEASE_AFTER, 0, RELEASE_AFTER / 2));
        assert!(should_release(3 * RELEASE_AFTER, 2 * RELEASE_AFTER, 0));
        // Less than that, while the tables still free arrays: wait.
        assert!(!should_release(RELEASE_AFTER - 1, 0, 1));
        // Less than that, and nothing freed since the previous run: the tables have
        // settled, so give back what is pending.
        assert!(should_release(RELEASE_AFTER - 1, 0, RELEASE_AFTER - 1));
        assert!(should_release(
            RELEASE_AFTER + 1,
            RELEASE_AFTER,
            RELEASE_AFTER + 1
        ));
    }
}
