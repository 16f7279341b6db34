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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    decode_hint, decode_record, DecodeError, HeaderError, Hides, RecordKind, SegmentHeader,
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
    /// Bytes missing from the end of the newest segment's file, put back as zeros.
    pub(crate) extended_bytes: u64,
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
    // Decoding (reading hints; checking, parsing and hashing records) runs on a thread of
    // its own, segments in log order, a batch or two ahead of this thread, which applies
    // the batches to the index (with a helper, `Replay::apply_batch`): both cores work
    // through the whole replay instead of one core decoding while the other waits.
    let ctx = Decoding {
        index,
        table: &table,
        opts,
        listing: &listing,
        use_hints,
        strict,
    };
    let mut rebuild = Rebuild {
        replay: Replay {
            index,
            table: &table,
            now,
        },
        stats: &mut stats,
        segments_total: count as u64,
        capacity_total,
        capacity_done: 0,
        progress: opts.open_progress.as_ref(),
        active: None,
        newest: None,
        last_id: 0,
    };
    let work = parking_lot::Mutex::new(Some(checked));
    let mut decoded: Result<()> = Ok(());
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
            let (work, ctx) = (&work, &ctx);
            let spawned = std::thread::Builder::new()
                .name("oncelog-decode".into())
                .spawn_scoped(scope, move || match work.lock().take() {
                    Some(checked) => decode(checked, ctx, &mut |d| tx.send(d).is_ok()),
                    None => Ok(()),
                });
            // If no thread could be had, `work` still holds the segments: decoded below.
            if let Ok(handle) = spawned {
                for d in rx {
                    rebuild.take(d);
                }
                decoded = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            }
        });
    }
    if let Some(checked) = work.lock().take() {
        decoded = decode(checked, &ctx, &mut |d| {
            rebuild.take(d);
            true
        });
    }
    decoded?;
    let Rebuild {
        active,
        newest,
        last_id,
        ..
    } = rebuild;

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
/// returned too, with the bytes its file was missing (put back as zeros).
fn map_segment(io: &Io, c: Checked, strict: bool) -> Result<(Segment, Option<File>, u64)> {
    let Checked {
        path,
        opened,
        header,
        len,
    } = c;
    let file = match opened {
        Opened::Mapped(map) => return Ok((Segment::new(path, header, map), None, 0)),
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
    let extended = header.capacity.saturating_sub(len);
    Ok((Segment::new(path, header, map), Some(file), extended))
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
    replay: &mut Batch<'_>,
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
        // A hint does not say what a remove hides: assume anything before it, until
        // maintenance reads the records (`crate::maintain`, step 0).
        totals.add(e.kind, e.len as usize, e.expires, Hides::ANY);
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
    replay: &mut Batch<'_>,
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
                let hides = rec.hides().unwrap_or(Hides::ANY);
                scan.totals
                    .add(rec.header.kind, rec.len, rec.header.expires, hides);
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

/// A batch at least this large is applied by two threads, taking its chunks in turn (when
/// the machine has two cores or more).
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

/// How many decoded batches may wait for the index (each up to `REPLAY_BATCH` records of
/// 40 bytes).
const DECODED_AHEAD: usize = 2;

/// What the decoding thread hands to the one that applies, in log order.
enum Decoded {
    /// Records of the segment being decoded.
    Records(Sorted),
    /// The segment whose records were all handed on before this.
    Segment(DecodedSegment),
}

struct DecodedSegment {
    segment: Arc<Segment>,
    slot: u16,
    scan: Scan,
    hinted: bool,
    /// Its header's capacity.
    capacity: u64,
    /// The newest segment's file, kept open (see `Opened`).
    file: Option<File>,
    /// Bytes its file was missing, put back as zeros (the newest segment only).
    extended: u64,
}

/// What decoding reads, shared with the thread that applies.
struct Decoding<'a> {
    index: &'a Index,
    table: &'a SegmentTable,
    opts: &'a Options,
    listing: &'a fs::Listing,
    use_hints: bool,
    strict: bool,
}

/// Maps and installs each checked segment in log order and decodes it, from its hint file
/// when it has a good one, else by reading the segment; hands each batch of records, then
/// the segment, to `sink`. Stops early, without error, when `sink` refuses (the receiver is
/// gone).
fn decode(
    checked: Vec<Checked>,
    ctx: &Decoding<'_>,
    sink: &mut dyn FnMut(Decoded) -> bool,
) -> Result<()> {
    let count = checked.len();
    for (i, c) in checked.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let id = c.header.segment_id;
        let store = c.header.store_id;
        let capacity = c.header.capacity;
        let (segment, file, extended) = map_segment(&ctx.opts.io, c, ctx.strict)?;
        let segment = Arc::new(segment);
        let slot = ctx.table.install(Arc::clone(&segment))?;
        let mut batch = Batch {
            index: ctx.index,
            ops: Vec::with_capacity(REPLAY_BATCH),
            sink: &mut *sink,
            refused: false,
        };
        let hint = match ctx.listing.hints.binary_search_by_key(&id, |(h, _)| *h) {
            Ok(at) if ctx.use_hints && !is_last => ctx.listing.hints.get(at),
            _ => None,
        };
        let hinted =
            hint.and_then(|(_, path)| replay_hint(&segment, slot, store, path, &mut batch));
        let (scan, hinted) = match hinted {
            Some(scan) => (scan, true),
            None => (
                scan_segment(&segment, slot, is_last, ctx.opts, &mut batch)?,
                false,
            ),
        };
        batch.send();
        if batch.refused {
            return Ok(());
        }
        let done = DecodedSegment {
            segment,
            slot,
            scan,
            hinted,
            capacity,
            file,
            extended,
        };
        if !sink(Decoded::Segment(done)) {
            return Ok(());
        }
    }
    Ok(())
}

/// How many chunks a sorted batch is cut into, for the threads that apply it.
const CHUNKS: usize = 16;

/// A batch of records in log order, and the order to apply them in: grouped by stripe
/// (`Replay` says why), each stripe's records in log order, cut into chunks at stripe
/// boundaries. Chunks touch disjoint stripes, so they may be applied in any order and at
/// once.
struct Sorted {
    ops: Vec<Replayed>,
    /// Indexes into `ops`.
    order: Vec<u32>,
    /// Where each chunk ends in `order`.
    chunk_ends: Vec<usize>,
}

impl Sorted {
    fn new(ops: Vec<Replayed>, stripes: usize) -> Sorted {
        // A counting sort by stripe: stable, and linear (a comparison sort took a sixth of
        // recovery's time).
        let mut starts = vec![0usize; stripes + 1];
        for op in &ops {
            if let Some(c) = starts.get_mut(op.stripe + 1) {
                *c += 1;
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            if let Some(at) = starts.get_mut(op.stripe) {
                if let Some(o) = order.get_mut(*at) {
                    *o = i as u32;
                }
                *at += 1;
            }
        }
        // `starts[s]` is now where stripe `s`'s records end in `order`: cut after the
        // stripe that first reaches each chunk's share.
        let share = ops.len().div_ceil(CHUNKS).max(1);
        let mut chunk_ends = Vec::with_capacity(CHUNKS + 1);
        let mut last = 0;
        for &end in &starts {
            if end >= last + share {
                chunk_ends.push(end);
                last = end;
            }
        }
        if last < order.len() {
            chunk_ends.push(order.len());
        }
        Sorted {
            ops,
            order,
            chunk_ends,
        }
    }
}

/// Collects one segment's decoded records into batches of `REPLAY_BATCH`.
struct Batch<'a> {
    index: &'a Index,
    ops: Vec<Replayed>,
    sink: &'a mut dyn FnMut(Decoded) -> bool,
    refused: bool,
}

impl Batch<'_> {
    fn push(&mut self, op: Replayed) {
        self.ops.push(op);
        if self.ops.len() >= REPLAY_BATCH {
            self.send();
        }
    }

    /// Hands on what is collected, if anything (nothing more once the sink refused).
    fn send(&mut self) {
        if self.ops.is_empty() || self.refused {
            self.ops.clear();
            return;
        }
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(REPLAY_BATCH));
        let sorted = Sorted::new(ops, self.index.stripes());
        self.refused = !(self.sink)(Decoded::Records(sorted));
    }
}

/// The applying side of the replay: the index, and what recovery keeps of each segment.
struct Rebuild<'a> {
    replay: Replay<'a>,
    stats: &'a mut RecoveryStats,
    segments_total: u64,
    capacity_total: u64,
    /// Capacity of the segments replayed so far.
    capacity_done: u64,
    progress: Option<&'a crate::options::ProgressFn>,
    active: Option<(Arc<Segment>, u16, Scan)>,
    newest: Option<(Arc<Segment>, File)>,
    last_id: u64,
}

impl Rebuild<'_> {
    fn take(&mut self, d: Decoded) {
        match d {
            Decoded::Records(batch) => self.replay.apply_batch(&batch),
            Decoded::Segment(done) => self.segment_done(done),
        }
    }

    fn segment_done(&mut self, done: DecodedSegment) {
        let DecodedSegment {
            segment,
            slot,
            scan,
            hinted,
            capacity,
            file,
            extended,
        } = done;
        let stats = &mut *self.stats;
        stats.extended_bytes += extended;
        if hinted {
            segment.usage.set_hinted();
            segment.usage.set_unverified(true);
            stats.hinted_segments += 1;
        }
        if scan.sealed {
            segment
                .usage
                .seal(scan.totals, scan.end - SEAL_LEN, scan.sealed_at);
        }
        stats.segments += 1;
        stats.records += scan.totals.records;
        if let Some(progress) = self.progress {
            progress(&OpenProgress {
                segments_done: stats.segments,
                segments_total: self.segments_total,
                segments_hinted: stats.hinted_segments,
                records: stats.records,
            });
        }
        self.last_id = segment.id;
        // Size the index for the records still to come at the rate seen so far, so that it
        // grows a few times in all rather than a fifth at a time (a guess that only sets
        // the index's size: too high costs memory until maintenance shrinks it, too low
        // costs growth).
        self.capacity_done += capacity;
        if self.capacity_done > 0 && self.capacity_done < self.capacity_total {
            let projected = u128::from(stats.records) * u128::from(self.capacity_total)
                / u128::from(self.capacity_done);
            self.replay
                .index
                .reserve(usize::try_from(projected).unwrap_or(usize::MAX));
        }
        if let Some(file) = file {
            self.newest = Some((Arc::clone(&segment), file));
        }
        if !scan.sealed {
            // Only the newest segment may be unsealed (scan_segment checked).
            self.active = Some((segment, slot, scan));
        }
    }
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
}

impl Replay<'_> {
    /// Applies a sorted batch: its chunks are taken in turn by this thread and, for a
    /// large batch on a machine with two cores or more, a helper. Chunks rather than halves,
    /// so that a thread the scheduler set aside (the decoding thread shares the cores)
    /// holds up at most one chunk.
    fn apply_batch(&self, batch: &Sorted) {
        let next = AtomicUsize::new(0);
        let work = || loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            let Some(&end) = batch.chunk_ends.get(c) else {
                return;
            };
            let start = match c.checked_sub(1) {
                Some(p) => batch.chunk_ends.get(p).copied().unwrap_or(0),
                None => 0,
            };
            if let Some(order) = batch.order.get(start..end) {
                self.apply(&batch.ops, order);
            }
        };
        let parallel = batch.ops.len() >= PARALLEL_BATCH
            && batch.chunk_ends.len() > 1
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if !parallel {
            work();
            return;
        }
        std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("oncelog-recover".into())
                .spawn_scoped(scope, work);
            work();
            if let Ok(handle) = helper {
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            // No thread to be had: this thread took every chunk.
        });
    }

    /// Applies the records `order` names (indexes into `ops`, grouped by stripe, each
    /// stripe's in log order), one stripe lock per run of a stripe.
    fn apply(&self, ops: &[Replayed], order: &[u32]) {
        let op_at = |n: usize| order.get(n).and_then(|&i| ops.get(i as usize));
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
    use super::{Replayed, Sorted, CHUNKS};
    use crate::error::Error;
    use crate::log::{Location, MAX_SEGMENTS};
    use crate::options::{Durability, Options};
    use std::time::Duration;

    fn op(stripe: usize, n: u32) -> Replayed {
        Replayed {
            stripe,
            hash: u64::from(n),
            loc: Location { slot: 0, offset: n },
            expires: 0,
            len: 0,
            remove: false,
        }
    }

    /// Chunks may be applied at once by different threads, so each stripe's records must
    /// lie in one chunk, in log order; and every record is applied exactly once.
    #[test]
    fn a_sorted_batch_keeps_each_stripe_whole_and_in_log_order() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for (len, stripes) in [(0, 4), (1, 1), (7, 64), (1000, 3), (65_536, 1024)] {
            let ops: Vec<Replayed> = (0..len as u32)
                .map(|n| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    op((rng % stripes as u64) as usize, n)
                })
                .collect();
            let sorted = Sorted::new(ops, stripes);
            let mut seen = vec![false; len];
            let mut chunk_of_stripe = vec![None; stripes];
            let mut last_in_stripe = vec![None; stripes];
            let mut start = 0;
            assert!(sorted.chunk_ends.len() <= CHUNKS + 1);
            for (c, &end) in sorted.chunk_ends.iter().enumerate() {
                assert!(end > start, "an empty chunk ({len} records)");
                for &i in &sorted.order[start..end] {
                    let op = &sorted.ops[i as usize];
                    assert!(!std::mem::replace(&mut seen[i as usize], true), "twice");
                    let chunk = chunk_of_stripe[op.stripe].get_or_insert(c);
                    assert_eq!(*chunk, c, "stripe {} in two chunks", op.stripe);
                    if let Some(prev) = last_in_stripe[op.stripe].replace(i) {
                        assert!(prev < i, "stripe {} out of log order", op.stripe);
                    }
                }
                start = end;
            }
            assert_eq!(start, len);
            assert!(seen.iter().all(|&s| s), "a record left out");
        }
    }

    /// A replay large enough for the decoding thread and both appliers, where most keys
    /// have several records next to each other: each key ends as its last record says.
    #[test]
    fn a_parallel_replay_ends_each_key_as_its_last_record_says() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || {
            Options::new()
                .durability(Durability::Buffered)
                .segment_size(1 << 20)
                .background_maintenance(false)
        };
        let ttl = Duration::from_secs(3600);
        let n = 60_000u32;
        let key = |i: u32| format!("key-{i:08}");
        {
            let store = opts().open(dir.path()).unwrap();
            for i in 0..n {
                assert!(store.claim(key(i), ttl).unwrap().is_new());
                match i % 3 {
                    0 => assert!(store.remove(key(i)).unwrap()),
                    1 => {
                        assert!(store.remove(key(i)).unwrap());
                        assert!(store.claim(key(i), ttl).unwrap().is_new());
                    }
                    _ => {}
                }
            }
            store.close().unwrap();
        }
        let store = opts().open(dir.path()).unwrap();
        let stats = store.stats();
        assert!(stats.segments > 1, "{stats:?}");
        assert_eq!(stats.keys, u64::from(n - n.div_ceil(3)));
        for i in 0..n {
            let held = store.get(key(i)).unwrap().is_some();
            assert_eq!(held, i % 3 != 0, "key {i}");
        }
    }

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
