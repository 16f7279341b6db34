//! The segment log: a directory of segment files, appended to in one order, made durable by
//! group commit, read back by location. It knows nothing of keys' index entries.
//!
//! | file | job |
//! |---|---|
//! | `map.rs` | memory-mapped segment files (unsafe, in one place) |
//! | `segment.rs` | a segment: lsn and `Location`, byte accounting, creating a new file |
//! | `table.rs` | the lock-free slot → segment table that index entries address (unsafe) |
//! | `writer.rs` | appending, rotation, preparing the next segment in the background |
//! | `commit.rs` | group commit: the durable lsn, waiting for it, poisoning |
//! | `sealed.rs` | writing a whole sealed segment through the file API |
//!
//! Invariants kept here:
//!
//! - Records are appended in one total order (the writer mutex), and their lsns grow with
//!   it. Operations on one key are additionally ordered by that key's index stripe lock, so
//!   the log order of a key's records is the order its operations took effect.
//! - Everything below the durable lsn is on stable storage; a sync covers a prefix of the
//!   log, never a hole (`commit.rs`).
//! - Every segment but the newest ends with a seal record and was fully synced before its
//!   successor's name became visible (`writer.rs`; the sync and the rename run beside the
//!   appenders, which meanwhile write into the successor under its temporary name).
//! - After a failed sync the log is poisoned: nothing more is appended or acknowledged.

mod commit;
mod map;
mod sealed;
mod segment;
mod table;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::iohook::Io;

use crate::options::FIRST_SEGMENT_SIZE;
pub(crate) use commit::{Committer, Durable};
use commit::{GroupCommit, Poison, Syncer};
pub(crate) use map::{preallocate, SegmentMap};
pub(crate) use sealed::SealedWriter;
pub(crate) use segment::{
    lsn, new_store_id, random_u64, Location, NewSegment, Segment, SegmentIds, Totals,
};
pub(crate) use table::SegmentTable;
pub use table::MAX_SEGMENTS;
use writer::Prep;
pub(crate) use writer::{Appended, RecordSpec, Writer};

/// Configuration the log needs.
pub(crate) struct LogConfig {
    pub(crate) dir: PathBuf,
    pub(crate) io: Io,
    /// The largest segment the log creates (`Options::segment_size`).
    pub(crate) segment_size: u64,
    pub(crate) store_id: u128,
}

impl LogConfig {
    /// The size of the segment a new store starts with.
    pub(crate) fn first_segment_size(&self) -> u64 {
        self.segment_size.min(FIRST_SEGMENT_SIZE)
    }

    /// The size of the segment that follows one of `size` bytes: twice as large, from the
    /// first segment's size up to `segment_size`. Segments double until they reach
    /// `segment_size`, so a store that grows to `segment_size` bytes has made about
    /// `log2(segment_size / FIRST_SEGMENT_SIZE)` smaller ones on the way.
    pub(crate) fn size_after(&self, size: u64) -> u64 {
        size.saturating_mul(2)
            .clamp(self.first_segment_size(), self.segment_size)
    }
}

/// The segment log of one store.
pub(crate) struct Log {
    config: LogConfig,
    table: Arc<SegmentTable>,
    writer: Mutex<Writer>,
    commit: Arc<GroupCommit>,
    poison: Arc<Poison>,
    /// The last rotation's seal job, while it may still run (see `Log::rotate`).
    sealing: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    /// Background preparation of the next segment (see `Log::prepare_next`); the thread
    /// returns the spare it made, if it made one.
    prep: Mutex<Option<Prep>>,
    /// The active segment's id, read without the writer lock (it only grows). On a cache
    /// line of its own: claims read it, and the writer lock's line changes at every append.
    active: ActiveId,
}

#[repr(align(128))]
struct ActiveId(AtomicU64);

impl Log {
    /// Wires up a log whose segments recovery has installed and whose active segment's
    /// content up to the writer's tail is already durable.
    pub(crate) fn new(config: LogConfig, table: Arc<SegmentTable>, writer: Writer) -> Log {
        let durable = writer.tail_lsn();
        let active = writer.segment.id;
        // Fault in the rest of the active segment off the append path.
        let map = Arc::clone(&writer.segment.map);
        let from = writer.appender.tail();
        let populate = Prep::spawn(move |stop| {
            map.populate(from, stop);
            None
        });
        Log {
            config,
            table,
            writer: Mutex::new(writer),
            commit: Arc::new(GroupCommit::new(durable)),
            poison: Arc::default(),
            sealing: Mutex::new(None),
            prep: Mutex::new(populate),
            active: ActiveId(AtomicU64::new(active)),
        }
    }

    /// The segments, by the slots index entries address them with.
    pub(crate) fn table(&self) -> &SegmentTable {
        &self.table
    }

    /// The id of the segment appended to.
    pub(crate) fn active_id(&self) -> u64 {
        self.writer.lock().segment.id
    }

    /// The active segment's id, without the writer lock: it may already be behind by a
    /// rotation, never ahead. A record appended after this call goes into this segment or
    /// a later one.
    pub(crate) fn active_id_at_least(&self) -> u64 {
        self.active.0.load(Ordering::Acquire)
    }

    /// The id shared by every segment of this store.
    pub(crate) fn store_id(&self) -> u128 {
        self.config.store_id
    }

    /// The directory of the segments.
    pub(crate) fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The hook every file-system change goes through.
    pub(crate) fn io(&self) -> &Io {
        &self.config.io
    }

    /// Every sealed segment with its slot, in id order. The active segment is left out even
    /// while a rotation is sealing it. Waits first for the last rotation's seal job, if it
    /// still runs, so that maintenance sees the segment it sealed (a failed job has
    /// poisoned the log, which the caller checks).
    pub(crate) fn sealed_segments(&self) -> Vec<(u16, Arc<Segment>)> {
        let _ = self.finish_sealing();
        self.sealed_segments_now()
    }

    /// `sealed_segments` without waiting: a segment whose seal job still runs is left out.
    pub(crate) fn sealed_segments_now(&self) -> Vec<(u16, Arc<Segment>)> {
        let active = self.active_id();
        let mut all = self.table.segments();
        all.retain(|(_, s)| s.id != active && s.usage.is_sealed());
        all
    }

    /// Bytes of records that must be kept at `now`: state records that index entries point
    /// at, and tombstones that may still hide something (`Usage::needed_tomb_bytes`).
    pub(crate) fn live_bytes(&self, now: u64) -> u64 {
        let (active_totals, active) = {
            let w = self.writer.lock();
            (w.totals, Arc::clone(&w.segment))
        };
        let segments = self.table.segments();
        let present = SegmentIds::new(segments.iter().map(|(_, s)| s.id));
        let mut live = 0u64;
        for (_, seg) in segments {
            let u = &seg.usage;
            if seg.id == active.id {
                // Unsealed: its totals are the writer's so far.
                let dead = u.dead_bytes.load(std::sync::atomic::Ordering::Relaxed);
                live += active_totals.claim_bytes.saturating_sub(dead);
                let hidden = active_totals
                    .tomb_hides
                    .is_some_and(|h| present.hidden_in(h, seg.id));
                if active_totals.tomb_max_expires > now && hidden {
                    live += active_totals.tomb_bytes;
                }
            } else {
                // Sealed, or being sealed: its totals were recorded when it stopped taking
                // appends.
                live += u.live_bytes() + u.needed_tomb_bytes(now, seg.id, &present);
            }
        }
        live
    }

    /// The ids of every segment in the table (sealed, being sealed, or active).
    pub(crate) fn segment_ids(&self) -> SegmentIds {
        SegmentIds::new(self.table.segments().iter().map(|(_, s)| s.id))
    }

    /// Starts the thread that makes this log durable for its waiters (group commit, see
    /// `commit.rs`); it stops when the returned handle is dropped. Nothing waits for
    /// durability successfully without it.
    pub(crate) fn start_committer(self: &Arc<Self>) -> Result<Committer> {
        Committer::start(Arc::clone(&self.commit), Arc::clone(self))
            .map_err(|e| Error::io("spawn commit thread", self.dir(), e))
    }

    /// Returns once everything up to `lsn_end` is on stable storage, parking the thread
    /// meanwhile.
    pub(crate) fn wait_durable(&self, lsn_end: u64) -> Result<()> {
        self.commit.wait(lsn_end)
    }

    /// Resolves once everything up to `lsn_end` is on stable storage.
    pub(crate) fn durable(&self, lsn_end: u64) -> Durable<'_> {
        self.commit.wait_for(lsn_end)
    }

    /// The lsn just past the last record written: `durable(written())` is "everything
    /// written so far".
    pub(crate) fn written(&self) -> u64 {
        self.writer.lock().tail_lsn()
    }

    /// Syncs everything written so far.
    pub(crate) fn sync(&self) -> Result<()> {
        self.wait_durable(self.written())
    }

    /// Callers waiting for durability now.
    pub(crate) fn waiters(&self) -> usize {
        self.commit.waiters()
    }

    /// Fails if an earlier sync failed.
    pub(crate) fn check_poison(&self) -> Result<()> {
        self.poison.check()
    }

    /// Marks the log poisoned; returns the error to give the caller who hit the failure.
    pub(crate) fn poison(&self, reason: String) -> Error {
        self.poison.set(reason)
    }

    fn poison_io(&self, op: &'static str, path: &Path, e: std::io::Error) -> Error {
        self.poison(format!("{op} {}: {e}", path.display()));
        Error::io(op, path, e)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poison.is_set()
    }

    /// Syncs of segment data since open.
    pub(crate) fn syncs(&self) -> u64 {
        self.commit.syncs()
    }

    /// A log in the empty directory `dir`, with its first segment (for the log's own tests;
    /// a store's log comes from recovery).
    #[cfg(test)]
    pub(crate) fn create_empty(dir: &Path, io: Io, segment_size: u64) -> Result<Log> {
        let first = segment_size.min(FIRST_SEGMENT_SIZE);
        let made = NewSegment::create(&io, dir, 1, first, 1, 1_000)?;
        made.rename_into_place(&io)
            .map_err(|e| Error::io("rename new segment", dir, e))?;
        crate::fs::sync_dir(&io, dir)?;
        let NewSegment {
            segment, appender, ..
        } = made;
        let segment = Arc::new(segment);
        let table = Arc::new(SegmentTable::new());
        let slot = table.install(Arc::clone(&segment))?;
        let config = LogConfig {
            dir: dir.to_path_buf(),
            io,
            segment_size,
            store_id: 1,
        };
        Ok(Log::new(
            config,
            table,
            Writer::new(segment, slot, appender, Totals::default()),
        ))
    }

    /// Everything before this lsn is on stable storage.
    #[cfg(test)]
    pub(crate) fn durable_lsn(&self) -> u64 {
        self.commit.durable()
    }

    /// The lsn just past the last record written.
    #[cfg(test)]
    pub(crate) fn tail_lsn(&self) -> u64 {
        self.writer.lock().tail_lsn()
    }
}

impl Syncer for Log {
    /// The active segment when the tail was read, and the tail's offset in it.
    type Tail = (Arc<Segment>, usize);

    fn tail(&self) -> (u64, Self::Tail) {
        let w = self.writer.lock();
        let tail = w.appender.tail();
        (lsn(w.segment.id, tail), (Arc::clone(&w.segment), tail))
    }

    fn sync(&self, from: u64, (segment, tail): Self::Tail) -> Result<()> {
        // The segment before may still be sealing beside the appenders: this one may be
        // made durable only once that is done and its own name is durable.
        self.finish_sealing()?;
        let start = if segment::lsn_segment(from) == segment.id {
            segment::lsn_offset(from)
        } else {
            // `from` is in an older segment, which rotation synced whole before this one's
            // name became visible.
            0
        };
        // Pages wholly below the tail's page take no more appends: drop their page tables so
        // that the sync need not write-protect them one at a time, each with a TLB flush of
        // every core (`SegmentMap::drop_page_tables`). The tail's page stays mapped.
        let whole = tail / map::page_size() * map::page_size();
        if whole > start {
            segment.map.drop_page_tables(start, whole - start);
        }
        segment
            .sync_range(
                &self.config.io,
                &segment.path,
                start,
                tail - start.min(tail),
            )
            .map_err(|e| self.poison_io("sync segment", &segment.path, e))
    }

    fn check(&self) -> Result<()> {
        self.check_poison()
    }
}

impl Drop for Log {
    /// Waits for background preparation and deletes an unused prepared segment, so that a
    /// closed store leaves no temporary file behind.
    fn drop(&mut self) {
        // A rotation still sealing finishes (its result, if a failure, has poisoned the log
        // already), so that a closed store leaves its newest segment named.
        let _ = self.finish_sealing();
        if let Some(job) = self.prep.get_mut().take() {
            if let Some(unused) = job.finish() {
                unused.discard(&self.config.io);
            }
        }
    }
}
