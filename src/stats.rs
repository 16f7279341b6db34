//! [`Stats`]: what a store has done since it opened, and what it holds now.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::engine::Engine;
use crate::maintain::Maintenance;
use crate::recovery::RecoveryStats;

/// Counters and sizes, from [`Store::stats`](crate::Store::stats). Counters count since `open`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys in the index (live, or expired and not yet reclaimed).
    pub keys: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes of segment files on disk (segments are allocated in full when created).
    pub disk_bytes: u64,
    /// Heap bytes held by the index tables. Besides them, each index stripe takes 256
    /// bytes from `open` on (256 KiB with the default 1024 stripes), not counted here.
    pub index_bytes: u64,
    /// Claim answers given (`new + duplicates`), counting each key of `claim_many`.
    pub claims: u64,
    /// Claims answered `New`.
    pub new: u64,
    /// Claims answered `Duplicate`.
    pub duplicates: u64,
    /// `New` claims that replaced an expired entry of the same key.
    pub expired: u64,
    /// Keys removed by `remove` (that were held).
    pub removes: u64,
    /// Leases acquired by `begin`.
    pub acquired: u64,
    /// Attempts completed by `complete`.
    pub completed: u64,
    /// Attempts abandoned by `abandon`.
    pub abandoned: u64,
    /// Leases extended by `extend`.
    pub extended: u64,
    /// Syncs (fsync-equivalents) of segment data since open.
    pub syncs: u64,
    /// Callers (threads and futures) waiting now for their record to become durable.
    pub durability_waiters: u64,
    /// Records replayed when the store opened.
    pub recovered_records: u64,
    /// Bytes of a torn tail cut from the newest segment when the store opened (0 after a
    /// clean shutdown).
    pub recovery_truncated_bytes: u64,
    /// Bytes missing from the end of the newest segment's file when the store opened (the
    /// file was cut short: by a copy that stopped early, say), which `open` put back as
    /// zeros (in the default mode, and in `Salvage` when that is the segment's only
    /// damage). Records that were in them, if any, are gone. 0 unless the file was damaged;
    /// [`RecoveryMode::Strict`](crate::RecoveryMode::Strict) refuses such a segment
    /// instead.
    pub recovery_extended_bytes: u64,
    /// How long `open` took to rebuild the index.
    pub recovery_time: Duration,
    /// Segments that `open` rebuilt from their hint files instead of reading them.
    pub recovery_hinted_segments: u64,
    /// Bytes that a [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage) open dropped
    /// because they did not decode: damaged segment headers, damaged records and the bytes
    /// around them up to the next record that decodes, garbage after a seal. 0 in the other
    /// modes, and when there was nothing to drop.
    pub recovery_salvaged_bytes: u64,
    /// Damaged places that a `Salvage` open skipped or mended: damaged headers, damaged
    /// regions, missing seals, garbage after a seal, sealed segments cut short. The first
    /// few are listed by [`Store::salvaged`](crate::Store::salvaged).
    pub recovery_salvaged_places: u64,
    /// Segments that a `Salvage` open rewrote without their damage.
    pub recovery_salvaged_segments: u64,
    /// The store refuses writes after a failed sync, or after its maintenance thread
    /// panicked; reopen it.
    pub poisoned: bool,
    /// Keys claimed and not expired (`keys - expired_unswept`).
    pub live_keys: u64,
    /// Entries whose claim has expired but that maintenance has not yet swept out of the
    /// index (they already answer as absent). Counting them walks the index.
    pub expired_unswept: u64,
    /// Bytes of records that must be kept: claims the index points at, and removes whose
    /// hidden claim has not yet expired while a segment that may hold it is left.
    /// `disk_bytes` minus this is what maintenance can
    /// still reclaim (plus the unused room of the active segment).
    pub live_bytes: u64,
    /// Maintenance runs since open (background and [`Store::compact`](crate::Store::compact)).
    pub maintenance_runs: u64,
    /// Maintenance runs that failed (an I/O error, say); the next run tries again.
    pub maintenance_errors: u64,
    /// Expired entries swept out of the index by maintenance.
    pub entries_swept: u64,
    /// Segments rewritten by compaction.
    pub compactions: u64,
    /// Segments deleted because nothing in them was needed any more.
    pub segments_deleted: u64,
    /// Disk bytes freed by deletion and compaction.
    pub bytes_reclaimed: u64,
    /// Sealed segments in which maintenance found a damaged record (segments replayed from
    /// their hint files at open are checked by the first maintenance run). Their other
    /// records still answer; compaction leaves them alone. Reopen with
    /// [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage) to mend them.
    pub damaged_segments: u64,
}

impl Stats {
    /// Gathers the figures of an open store.
    pub(crate) fn collect(engine: &Engine, maint: &Maintenance, recovery: &RecoveryStats) -> Stats {
        let now = engine.now();
        let ix = engine.index_figures(now);
        let c = ix.counters;
        let (segments, disk_bytes) = engine.segment_figures();
        Stats {
            keys: ix.keys,
            segments,
            disk_bytes,
            index_bytes: ix.heap_bytes,
            claims: c.new + c.duplicates,
            new: c.new,
            duplicates: c.duplicates,
            expired: c.expired_reclaimed,
            removes: c.removes,
            acquired: c.acquired,
            completed: c.completed,
            abandoned: c.abandoned,
            extended: c.extended,
            syncs: engine.syncs(),
            durability_waiters: engine.commit_waiters() as u64,
            recovered_records: recovery.records,
            recovery_truncated_bytes: recovery.truncated_bytes,
            recovery_extended_bytes: recovery.extended_bytes,
            recovery_time: recovery.duration,
            recovery_hinted_segments: recovery.hinted_segments,
            recovery_salvaged_bytes: recovery.salvaged.bytes,
            recovery_salvaged_places: recovery.salvaged.places,
            recovery_salvaged_segments: recovery.salvaged.segments,
            poisoned: engine.is_poisoned(),
            live_keys: ix.keys.saturating_sub(ix.expired_unswept),
            expired_unswept: ix.expired_unswept,
            live_bytes: engine.live_bytes(now),
            maintenance_runs: maint.runs.load(Ordering::Relaxed),
            maintenance_errors: maint.errors.load(Ordering::Relaxed),
            entries_swept: maint.swept.load(Ordering::Relaxed),
            compactions: maint.compactions.load(Ordering::Relaxed),
            segments_deleted: maint.segments_deleted.load(Ordering::Relaxed),
            bytes_reclaimed: maint.bytes_reclaimed.load(Ordering::Relaxed),
            damaged_segments: engine
                .sealed_segments_now()
                .iter()
                .filter(|(_, seg)| seg.usage.damaged())
                .count() as u64,
        }
    }
}
