//! Rebuilding the index from the segments when a store opens.
//!
//! Invariants:
//!
//! - Records are replayed in log order (segment id, then offset); the last record of a key
//!   decides its state, exactly as it did while the store ran.
//! - Every record's checksum is verified before it is applied.
//! - Only the newest segment may end in a torn write; with
//!   [`RecoveryMode::TolerateTornTail`] it is cut and zeroed (and counted), anywhere else
//!   damage fails `open` with the file and offset. [`RecoveryMode::Salvage`] first
//!   rewrites damaged segments without their damage (`crate::salvage`), then goes on as
//!   the default mode.
//! - A claim that expired before `now` is not brought back; a remove record deletes the
//!   key's entry.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    decode_hint, decode_record, DecodeError, HeaderError, RecordKind, SegmentHeader,
    FORMAT_VERSION, HINT_ENTRY_LEN, HINT_HEADER_LEN, HINT_TRAILER_LEN, RECORD_HEADER_LEN, SEAL_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::index::{Entry, Index, Stripe};
use crate::iohook::Io;
use crate::log::{
    new_store_id, preallocate, Location, Log, LogConfig, NewSegment, Segment, SegmentMap,
    SegmentTable, Totals, Writer, MAX_SEGMENTS,
};
use crate::options::{OpenProgress, Options, RecoveryMode, MAX_SEGMENT_SIZE};
use crate::salvage::{self, Salvaged};

/// What recovery found; reported through [`Stats`](crate::Stats).
#[derive(Debug, Default, Clone)]
pub(crate) struct RecoveryStats {
    pub(crate) segments: u64,
    pub(crate) records: u64,
    pub(crate) truncated_bytes: u64,
    pub(crate) duration: Duration,
    /// The newest segment and the directory were fsynced before the log was handed out.
    pub(crate) synced: bool,
    /// Segments replayed from their hint file.
    pub(crate) hinted_segments: u64,
    /// What `RecoveryMode::Salvage` dropped.
    pub(crate) salvaged: Salvaged,
}

/// Scans `dir`, rebuilds the index, and returns it with the log ready for appends.
///
/// Order matters for two promises. *Nothing is changed on disk until every check has
/// passed*: headers are checked first, older segments are replayed read-only, and only then
/// are temporaries deleted, a short newest segment re-extended and a torn tail cut — so an
/// `open` that fails with [`Error::Corruption`] leaves the directory as it found it.
/// *What recovery keeps is durable before anything new is acknowledged*: after a process
/// crash the page cache may still hold records the dead process never synced, so the
/// newest segment is synced before it is appended to or given a successor.
pub(crate) fn recover(dir: &Path, opts: &Options, now: u64) -> Result<(Index, Log, RecoveryStats)> {
    let started = Instant::now();
    let index_owned = Index::new(opts.stripes);
    let index = &index_owned;
    let mut stats = RecoveryStats::default();
    let mut listing = fs::list_dir(dir)?;
    if adopt_successor(&opts.io, dir, &listing)? {
        listing = fs::list_dir(dir)?;
    }
    let table = Arc::new(SegmentTable::new());
    let strict = opts.recovery == RecoveryMode::Strict;
    let count = listing.segments.len();
    // Every segment, and maybe one new one, must fit the table: refuse now rather than
    // after a file has been changed.
    if count + 1 > MAX_SEGMENTS {
        return Err(Error::TooManySegments {
            needed: count + 1,
            max: MAX_SEGMENTS,
        });
    }
    if opts.recovery == RecoveryMode::Salvage {
        // Damaged segments are rewritten clean (hints of rewritten ones deleted); what
        // follows is the default mode's recovery of a directory with nothing to salvage.
        stats.salvaged = salvage::repair(&opts.io, &listing, now, new_store_id)?;
        listing = fs::list_dir(dir)?;
    }

    // 1. Open and check every header before replaying anything: a foreign or newer-version
    //    segment fails `open` at once, whatever its position.
    let mut store_id: Option<u128> = None;
    let mut checked = Vec::with_capacity(count);
    for (i, (id, path)) in listing.segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let c = check_segment(path, *id, is_last, &mut store_id)?;
        if strict && !is_last && c.len < c.header.capacity {
            // A sealed segment keeps its full length; shorter means something cut it.
            return Err(Error::corruption(path, c.len, CorruptionKind::Truncated));
        }
        checked.push(c);
    }

    // 2. Replay in log order: from a segment's hint file when it has a good one, else by
    //    reading the segment.
    let use_hints = !strict && opts.default_hasher;
    let capacity_total: u64 = checked.iter().map(|c| c.header.capacity).sum();
    if use_hints {
        // Size the index for the entries the hint files hold, so that it does not grow a
        // step at a time under the replay (an estimate: some entries are removes or
        // superseded, and segments without hints add more; growth covers the rest). A
        // hint file's size is only a claim: never more entries than the segments could
        // hold records.
        let entries: u64 = listing
            .hints
            .iter()
            .filter(|(id, _)| listing.has_segment(*id))
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|m| m.len() / HINT_ENTRY_LEN as u64)
            .sum::<u64>()
            .min(capacity_total / RECORD_HEADER_LEN as u64);
        index.reserve(usize::try_from(entries).unwrap_or(usize::MAX));
    }
    let mut active: Option<(Arc<Segment>, u16, Scan)> = None;
    let mut newest: Option<(Arc<Segment>, File)> = None;
    let mut last_id = 0u64;
    let mut capacity_done = 0u64;
    for (i, c) in checked.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let id = c.header.segment_id;
        if capacity_done > 0 {
            // Size the index for the records still to come at the rate seen so far, so
            // that it grows a few times in all rather than a fifth at a time (a guess that
            // only sets the index's size: too high costs memory until maintenance shrinks
            // it, too low costs growth).
            let projected =
                u128::from(stats.records) * u128::from(capacity_total) / u128::from(capacity_done);
            index.reserve(usize::try_from(projected).unwrap_or(usize::MAX));
        }
        capacity_done += c.header.capacity;
        let store = c.header.store_id;
        let (segment, file) = map_segment(&opts.io, c, strict)?;
        let segment = Arc::new(segment);
        let slot = table.install(Arc::clone(&segment))?;
        let mut replay = Replay {
            index,
            table: &table,
            now,
            ops: Vec::with_capacity(REPLAY_BATCH),
        };
        let hinted = match listing.hints.binary_search_by_key(&id, |(h, _)| *h) {
            Ok(at) if use_hints && !is_last => listing
                .hints
                .get(at)
                .and_then(|(_, path)| replay_hint(&segment, slot, store, path, &mut replay)),
            _ => None,
        };
        let scan = match hinted {
            Some(scan) => {
                segment.usage.set_hinted();
                segment.usage.set_unverified(true);
                stats.hinted_segments += 1;
                scan
            }
            None => scan_segment(&segment, slot, is_last, opts, &mut replay)?,
        };
        replay.flush();
        if scan.sealed {
            segment
                .usage
                .seal(scan.totals, scan.end - SEAL_LEN, scan.sealed_at);
        }
        stats.segments += 1;
        stats.records += scan.totals.records;
        if let Some(progress) = &opts.open_progress {
            progress(&OpenProgress {
                segments_done: stats.segments,
                segments_total: count as u64,
                segments_hinted: stats.hinted_segments,
                records: stats.records,
            });
        }
        last_id = id;
        if let Some(file) = file {
            newest = Some((Arc::clone(&segment), file));
        }
        if !scan.sealed {
            // Only the newest segment may be unsealed (scan_segment checked).
            active = Some((segment, slot, scan));
        }
    }

    // 3. The writer's segment: the unsealed newest one, its torn tail cut; or a new one.
    let store_id = store_id.unwrap_or_else(new_store_id);
    let io = &opts.io;
    let config = LogConfig {
        dir: dir.to_path_buf(),
        io: io.clone(),
        segment_size: opts.segment_size,
        store_id,
    };
    let mut appender = match &active {
        Some((segment, _, scan)) => Some(segment.map.appender(scan.end).ok_or_else(|| {
            Error::corruption(&segment.path, scan.end as u64, CorruptionKind::Truncated)
        })?),
        None => None,
    };
    // The active segment, if any, is the newest one: its file is open.
    let active_file = newest.as_ref().map(|(_, file)| file);
    if let (Some((segment, _, _)), Some(appender), Some(file)) =
        (&active, &mut appender, active_file)
    {
        if strict {
            let dirty = appender
                .dirty_rest(file, false)
                .map_err(|e| Error::io("read segment tail", &segment.path, e))?;
            if let Some((first, _)) = dirty {
                return Err(Error::corruption(
                    &segment.path,
                    first as u64,
                    CorruptionKind::TrailingGarbage,
                ));
            }
        }
    }
    // Every check has passed; from here on recovery may change files. Temporaries go, and
    // so do hints whose segment is gone (maintenance deletes the segment first).
    let stray_hints: Vec<&PathBuf> = listing
        .hints
        .iter()
        .filter(|(id, _)| !listing.has_segment(*id))
        .map(|(_, p)| p)
        .collect();
    if !listing.temporaries.is_empty() || !stray_hints.is_empty() {
        for tmp in listing.temporaries.iter().chain(stray_hints) {
            fs::remove_file(io, tmp)?;
        }
        fs::sync_dir(io, dir)?;
    }
    if let (Some((segment, _, scan)), Some(appender), Some(file)) =
        (&active, &mut appender, active_file)
    {
        let dirty = appender
            .dirty_rest(file, true)
            .map_err(|e| Error::io("clear cut tail", &segment.path, e))?;
        if let Some((_, last)) = dirty {
            stats.truncated_bytes = (last - scan.end) as u64;
        }
    }
    if let Some((segment, file)) = &newest {
        // Records a crashed process wrote but never synced, the zeroed tail and a
        // re-extended length: all durable before the first new acknowledgement, and before
        // a successor of a sealed newest segment becomes visible.
        // So is the directory: the crashed process may have renamed the newest segment
        // into place without reaching its directory fsync, and appending to a file whose
        // name a power cut can still undo would lose what is appended.
        fs::sync_file(io, file, &segment.path)
            .map_err(|e| Error::io("sync segment", &segment.path, e))?;
        fs::sync_dir(io, dir)?;
        stats.synced = true;
    }
    let writer = match (active, appender) {
        (Some((segment, slot, scan)), Some(appender)) => {
            Writer::new(segment, slot, appender, scan.totals)
        }
        _ => {
            let size = config.first_segment_size();
            let made = NewSegment::create(io, dir, last_id + 1, size, store_id, now)?;
            if let Err(e) = made.rename_into_place(io) {
                let path = made.segment.path.clone();
                made.discard(io);
                return Err(Error::io("rename new segment", &path, e));
            }
            fs::sync_dir(io, dir)?;
            // `NewSegment::create` synced the new file; the directory now holds its name.
            stats.synced = true;
            let NewSegment {
                segment, appender, ..
            } = made;
            let segment = Arc::new(segment);
            let slot = table.install(Arc::clone(&segment))?;
            Writer::new(segment, slot, appender, Totals::default())
        }
    };
    let log = Log::new(config, table, writer);
    // A directory written by an older format version gets a new active segment, so that
    // new record kinds never land in a segment whose header promises the old version.
    log.upgrade_active(now)?;
    stats.duration = started.elapsed();
    Ok((index_owned, log, stats))
}

/// A segment file whose header has been checked.
struct Checked {
    path: PathBuf,
    opened: Opened,
    header: SegmentHeader,
    len: u64,
}

/// How a checked segment is held until recovery replays it. Only the newest segment keeps
/// its file open (recovery may extend, zero and fsync it); the others are mapped read-only
/// at once and their files closed, so that opening a directory of many segments needs no
/// more than a few file descriptors.
enum Opened {
    Mapped(SegmentMap),
    Newest(File),
}

/// Opens a segment file (read-write if it is the newest) and checks its header against its
/// name and the directory's other segments. Changes nothing.
fn check_segment(
    path: &Path,
    id: u64,
    writable: bool,
    store_id: &mut Option<u128>,
) -> Result<Checked> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| Error::io("open segment", path, e))?;
    let header = read_header(&file, path)?;
    if header.segment_id != id {
        return Err(Error::corruption(
            path,
            0,
            CorruptionKind::SegmentIdMismatch,
        ));
    }
    match store_id {
        Some(s) if *s != header.store_id => {
            return Err(Error::corruption(path, 0, CorruptionKind::ForeignSegment));
        }
        _ => *store_id = Some(header.store_id),
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat segment", path, e))?
        .len();
    if len > MAX_SEGMENT_SIZE {
        return Err(Error::corruption(path, 0, CorruptionKind::BadSegmentHeader));
    }
    let opened = if writable {
        Opened::Newest(file)
    } else {
        // Mapping a file read-only changes nothing; the file closes here.
        Opened::Mapped(SegmentMap::read_only(&file).map_err(|e| Error::io("map segment", path, e))?)
    };
    Ok(Checked {
        path: path.to_path_buf(),
        opened,
        header,
        len,
    })
}

/// Maps a checked segment: read-only, or writable for the newest one, whose file is
/// returned too.
fn map_segment(io: &Io, c: Checked, strict: bool) -> Result<(Segment, Option<File>)> {
    let Checked {
        path,
        opened,
        header,
        len,
    } = c;
    let file = match opened {
        Opened::Mapped(map) => return Ok((Segment::new(path, header, map), None)),
        Opened::Newest(file) => file,
    };
    if len < header.capacity {
        // The newest segment lost its tail (a torn truncation, or a copy cut short).
        // Segments are created at full length, so this is damage: `Strict` reports it;
        // otherwise the file gets its allocation back and the zeros read as the end.
        if strict {
            return Err(Error::corruption(&path, len, CorruptionKind::Truncated));
        }
        preallocate(io, &file, &path, header.capacity)
            .map_err(|e| Error::io("allocate segment", &path, e))?;
    }
    let map = SegmentMap::writable(&file).map_err(|e| Error::io("map segment", &path, e))?;
    Ok((Segment::new(path, header, map), Some(file)))
}

/// Gives its name to the segment a crash caught between rotation and the end of its seal
/// job (docs/FORMAT.md §7.3): appends went on into `seg-N+1.olog.tmp` while segment N was
/// being synced. It is adopted when N, the newest named segment, ends in a seal that its
/// records lead up to (so N was sealed, at least in the page cache), and its header names
/// it N+1 of the same store; then it is renamed and the directory fsynced, and recovery
/// goes on as if the rotation had finished. Otherwise it is an ordinary temporary, deleted
/// later (a power cut that took N's seal took nothing `Sync` acknowledged in N+1: durable
/// never passes into N+1 before its name is durable). `true` if it adopted one.
fn adopt_successor(io: &Io, dir: &Path, listing: &fs::Listing) -> Result<bool> {
    let Some((last_id, last_path)) = listing.segments.last() else {
        return Ok(false);
    };
    let next = dir.join(fs::segment_name(last_id.saturating_add(1)));
    let tmp = fs::tmp_path(&next);
    if !listing.temporaries.contains(&tmp) {
        return Ok(false);
    }
    let header_of = |path: &Path| {
        File::open(path)
            .ok()
            .and_then(|f| read_header(&f, path).ok())
    };
    let (Some(last), Some(successor)) = (header_of(last_path), header_of(&tmp)) else {
        return Ok(false);
    };
    if successor.segment_id != last.segment_id.saturating_add(1)
        || successor.store_id != last.store_id
    {
        return Ok(false);
    }
    let bytes = std::fs::read(last_path).map_err(|e| Error::io("read segment", last_path, e))?;
    if !ends_in_a_seal(&bytes) {
        return Ok(false);
    }
    fs::rename(io, &tmp, &next).map_err(|e| Error::io("rename new segment", &next, e))?;
    fs::sync_dir(io, dir)?;
    Ok(true)
}

/// Whether the segment in `bytes` holds valid records from its header on up to a seal
/// that counts them and whose `data_end` is where it sits (what the replay checks).
fn ends_in_a_seal(bytes: &[u8]) -> bool {
    let (mut at, mut records) = (SEGMENT_HEADER_LEN, 0u64);
    while let Some(rest) = bytes.get(at..) {
        match decode_record(rest) {
            Ok(r) if r.header.kind == RecordKind::Seal => {
                return r
                    .seal()
                    .is_some_and(|s| s.data_end == at as u64 && s.records == records);
            }
            Ok(r) if r.len > 0 => {
                at += r.len;
                records += 1;
            }
            _ => return false,
        }
    }
    false
}

fn read_header(file: &File, path: &Path) -> Result<SegmentHeader> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match file.read_at(rest, got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read segment header", path, e)),
        }
    }
    let header = match SegmentHeader::decode(buf.get(..got).unwrap_or(&[])) {
        Ok(h) => h,
        Err(HeaderError::Version(found)) => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
        Err(HeaderError::Bad) => {
            return Err(Error::corruption(path, 0, CorruptionKind::BadSegmentHeader))
        }
    };
    let min = (SEGMENT_HEADER_LEN + SEAL_LEN) as u64;
    if header.capacity < min || header.capacity > MAX_SEGMENT_SIZE {
        return Err(Error::corruption(path, 0, CorruptionKind::BadSegmentHeader));
    }
    Ok(header)
}

struct Scan {
    totals: Totals,
    /// Offset just past the last valid record (where appends continue if not sealed), or
    /// past the seal.
    end: usize,
    sealed: bool,
    /// The seal record's time, if sealed.
    sealed_at: u64,
}

/// Replays a sealed segment from its hint file, if the hint is whole (its checksums and
/// every entry check out) and describes exactly this segment (its id, store, and seal
/// record). `None` means: read the segment instead. Nothing is applied before the whole
/// hint has been checked.
fn replay_hint(
    segment: &Segment,
    slot: u16,
    store_id: u128,
    path: &Path,
    replay: &mut Replay<'_>,
) -> Option<Scan> {
    // A hint names at most one entry per record the segment can hold: a larger file is
    // not a hint of it (and is never read into memory whole).
    let most =
        HINT_HEADER_LEN + HINT_TRAILER_LEN + segment.map.len() / RECORD_HEADER_LEN * HINT_ENTRY_LEN;
    let len = std::fs::metadata(path).ok()?.len();
    if len > most as u64 {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let (header, entries) = decode_hint(&bytes).ok()?;
    let data_end = usize::try_from(header.data_end).ok()?;
    let seg_bytes = segment.map.scan_bytes();
    let seal = decode_record(seg_bytes.get(data_end..)?).ok()?;
    let seal_info = seal.seal()?;
    let seal_crc = u32::from_le_bytes(seg_bytes.get(data_end..data_end + 4)?.try_into().ok()?);
    if header.segment_id != segment.id
        || header.store_id != store_id
        || header.seal_crc != seal_crc
        || seal_info.data_end != header.data_end
        || seal_info.records != u64::from(header.entries)
    {
        return None;
    }
    let mut totals = Totals::default();
    for e in entries {
        let remove = e.kind == RecordKind::Remove;
        totals.add(e.kind, e.len as usize, e.expires);
        replay.push(Replayed {
            stripe: replay.index.stripe_of(e.hash),
            hash: e.hash,
            loc: Location {
                slot,
                offset: e.offset,
            },
            expires: e.expires,
            len: e.len,
            remove,
        });
    }
    Some(Scan {
        totals,
        end: data_end + SEAL_LEN,
        sealed: true,
        sealed_at: seal.header.time,
    })
}

fn scan_segment(
    segment: &Segment,
    slot: u16,
    is_last: bool,
    opts: &Options,
    replay: &mut Replay<'_>,
) -> Result<Scan> {
    let bytes = segment.map.scan_bytes();
    let path = &segment.path;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut scan = Scan {
        totals: Totals::default(),
        end: pos,
        sealed: false,
        sealed_at: 0,
    };
    let tolerate = is_last && opts.recovery != RecoveryMode::Strict;
    loop {
        let rest = bytes.get(pos..).unwrap_or(&[]);
        let rec = match decode_record(rest) {
            Ok(rec) => rec,
            Err(DecodeError::End) => break,
            Err(e) if tolerate => {
                let _ = e;
                break;
            }
            Err(e) => {
                let kind = match e {
                    DecodeError::Checksum => CorruptionKind::Checksum,
                    DecodeError::Truncated => CorruptionKind::Truncated,
                    DecodeError::Malformed | DecodeError::End => CorruptionKind::MalformedRecord,
                };
                return Err(Error::corruption(path, pos as u64, kind));
            }
        };
        match rec.header.kind {
            RecordKind::Seal => {
                let seal = rec.seal();
                let consistent = seal
                    .is_some_and(|s| s.records == scan.totals.records && s.data_end == pos as u64);
                if !consistent {
                    if tolerate {
                        break;
                    }
                    return Err(Error::corruption(
                        path,
                        pos as u64,
                        CorruptionKind::MalformedRecord,
                    ));
                }
                scan.sealed = true;
                scan.sealed_at = rec.header.time;
                pos += rec.len;
                scan.end = pos;
                break;
            }
            RecordKind::Claim | RecordKind::Remove | RecordKind::Lease | RecordKind::Done => {
                let loc = Location {
                    slot,
                    offset: pos as u32,
                };
                let hash = (opts.hasher)(rec.key);
                replay.push(Replayed {
                    stripe: replay.index.stripe_of(hash),
                    hash,
                    loc,
                    expires: rec.header.expires,
                    len: rec.len as u32,
                    remove: rec.header.kind == RecordKind::Remove,
                });
                scan.totals
                    .add(rec.header.kind, rec.len, rec.header.expires);
                pos += rec.len;
                scan.end = pos;
            }
        }
    }
    if opts.recovery == RecoveryMode::Strict && scan.sealed {
        let trailing = bytes.get(scan.end..).unwrap_or(&[]);
        if let Some(p) = trailing.iter().position(|&b| b != 0) {
            return Err(Error::corruption(
                path,
                (scan.end + p) as u64,
                CorruptionKind::TrailingGarbage,
            ));
        }
    }
    if !scan.sealed && !is_last {
        return Err(Error::corruption(
            path,
            scan.end as u64,
            CorruptionKind::Unsealed,
        ));
    }
    Ok(scan)
}

/// Records replayed per batch (see `Replay`).
const REPLAY_BATCH: usize = 65_536;

/// How many records ahead the replay prefetches index slots: enough to cover a memory
/// access while the records in between are applied.
const PREFETCH_AHEAD: usize = 8;

/// A batch at least this large is applied by two threads, each on its own half of the
/// stripes (when the machine has two cores or more).
const PARALLEL_BATCH: usize = 16_384;

/// One record read during recovery, waiting to be applied to the index.
struct Replayed {
    stripe: usize,
    hash: u64,
    loc: Location,
    expires: u64,
    /// Bytes of the record.
    len: u32,
    remove: bool,
}

/// Applies records to the index in batches, each batch grouped by stripe: one lock per
/// stripe per batch instead of one per record. The unlock after each single insert used to
/// wait for that insert's cache miss; grouped, the misses of one stripe's inserts overlap.
/// Recovery was twice as fast for it. A key's records all fall in its stripe and the sort
/// is stable, so each key still sees its operations in log order.
struct Replay<'a> {
    index: &'a Index,
    table: &'a SegmentTable,
    now: u64,
    ops: Vec<Replayed>,
}

impl Replay<'_> {
    fn push(&mut self, op: Replayed) {
        self.ops.push(op);
        if self.ops.len() >= REPLAY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        // A counting sort by stripe: stable, and linear (a comparison sort took a sixth of
        // recovery's time).
        let mut starts = vec![0usize; self.index.stripes() + 1];
        for op in &self.ops {
            if let Some(c) = starts.get_mut(op.stripe + 1) {
                *c += 1;
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; self.ops.len()];
        for (i, op) in self.ops.iter().enumerate() {
            if let Some(at) = starts.get_mut(op.stripe) {
                if let Some(o) = order.get_mut(*at) {
                    *o = i as u32;
                }
                *at += 1;
            }
        }
        // `starts[s]` is now where stripe `s`'s records end in `order`. Stripes are
        // independent (a key's records all fall in its stripe), so two threads can apply
        // disjoint runs of them; split where about half the records are.
        let parallel = self.ops.len() >= PARALLEL_BATCH
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        let split = if parallel {
            let half = self.ops.len() / 2;
            starts
                .iter()
                .copied()
                .find(|&end| end >= half)
                .unwrap_or(order.len())
                .min(order.len())
        } else {
            order.len()
        };
        let (first, second) = order.split_at(split);
        if second.is_empty() {
            self.apply(first);
        } else {
            let this = &*self;
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("oncelog-recover".into())
                    .spawn_scoped(scope, move || this.apply(second));
                this.apply(first);
                match other {
                    Ok(handle) => {
                        if let Err(panic) = handle.join() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                    // No thread to be had: apply the second half here too.
                    Err(_) => this.apply(second),
                }
            });
        }
        self.ops.clear();
    }

    /// Applies the records `order` names (indexes into `ops`, grouped by stripe, each
    /// stripe's in log order), one stripe lock per run of a stripe.
    fn apply(&self, order: &[u32]) {
        let op_at = |n: usize| order.get(n).and_then(|&i| self.ops.get(i as usize));
        let table = self.table;
        let mut current: Option<(usize, parking_lot::MutexGuard<'_, Stripe>)> = None;
        for n in 0..order.len() {
            let Some(op) = op_at(n) else {
                continue;
            };
            if current.as_ref().map(|c| c.0) != Some(op.stripe) {
                drop(current.take()); // unlock before locking the next stripe
                current = Some((op.stripe, self.index.lock_stripe(op.stripe)));
            }
            let Some((_, stripe)) = current.as_mut() else {
                continue;
            };
            // Each insert's first slot is a cache miss: fetch a few ahead (those in this
            // stripe) while this one is applied.
            if let Some(ahead) = op_at(n + PREFETCH_AHEAD).filter(|a| a.stripe == op.stripe) {
                stripe.prefetch(ahead.hash);
            }
            // Keys are read (from the segments) only to tell apart entries whose hash bits
            // match: with hints, most records are applied without touching their segment.
            let same_key = |e: &Entry| match (table.record(e.location()), table.record(op.loc)) {
                (Some((_, a)), Some((_, b))) => a == b,
                _ => false,
            };
            // Every record that ends up without an entry pointing at it is dead; the
            // segments' byte accounting starts from here (see `Usage` in `src/log/segment.rs`).
            if !op.remove && op.expires > self.now {
                let entry = Entry::new(op.hash as u32, op.loc, op.expires, op.len as usize);
                if let Some(old) = stripe.place(op.hash, same_key).put(entry) {
                    table.record_died(old.slot, old.record_len());
                }
            } else {
                if let Some(old) = stripe.remove(op.hash, same_key) {
                    table.record_died(old.slot, old.record_len());
                }
                if !op.remove {
                    // An expired state record: never pointed at.
                    table.record_died(op.loc.slot, u64::from(op.len));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::log::MAX_SEGMENTS;
    use crate::options::Options;

    /// Too many segments is a limit of the store, not a failure of the disk: it has an
    /// error of its own, and the directory is left as it was.
    #[test]
    fn a_directory_with_more_segments_than_fit_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=MAX_SEGMENTS as u64 {
            std::fs::File::create(dir.path().join(crate::fs::segment_name(id))).unwrap();
        }
        match Options::new().open(dir.path()) {
            Err(Error::TooManySegments { needed, max }) => {
                assert_eq!((needed, max), (MAX_SEGMENTS + 1, MAX_SEGMENTS));
            }
            other => panic!("{other:?}"),
        }
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            left,
            MAX_SEGMENTS + 1,
            "files changed (the LOCK is the one more)"
        );
        let e = Error::TooManySegments {
            needed: 70_000,
            max: MAX_SEGMENTS,
        };
        assert_eq!(
            e.to_string(),
            "70000 segments needed; one store holds at most 65536"
        );
    }
}
