//! Rebuilding the index from the segments when a store opens.
//!
//! Invariants:
//!
//! - Records are replayed in log order (segment id, then offset); the last record of a key
//!   decides its state, exactly as it did while the store ran.
//! - Every record's checksum is verified before it is applied.
//! - Only the newest segment may end in a torn write; with
//!   [`RecoveryMode::TolerateTornTail`] it is cut and zeroed (and counted), anywhere else
//!   damage fails `open` with the file and offset.
//! - A claim that expired before `now` is not brought back; a remove record deletes the
//!   key's entry.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    decode_record, DecodeError, HeaderError, RecordKind, SegmentHeader, FORMAT_VERSION, SEAL_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::index::{Entry, Index, Slot, Stripe};
use crate::log::{
    create_segment, preallocate, Location, Log, LogConfig, Segment, SegmentMap, SegmentTable,
    Writer, MAX_SEGMENTS,
};
use crate::options::{Options, RecoveryMode, MAX_SEGMENT_SIZE};

/// What recovery found; reported through [`Stats`](crate::Stats).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecoveryStats {
    pub(crate) segments: u64,
    pub(crate) records: u64,
    pub(crate) truncated_bytes: u64,
    pub(crate) duration: Duration,
    /// The newest segment and the directory were fsynced before the log was handed out.
    pub(crate) synced: bool,
}

/// Scans `dir`, fills `index`, and returns the log ready for appends.
///
/// Order matters for two promises. *Nothing is changed on disk until every check has
/// passed*: headers are checked first, older segments are replayed read-only, and only then
/// are temporaries deleted, a short newest segment re-extended and a torn tail cut — so an
/// `open` that fails with [`Error::Corruption`] leaves the directory as it found it.
/// *What recovery keeps is durable before anything new is acknowledged*: after a process
/// crash the page cache may still hold records the dead process never synced, so the
/// newest segment is synced before it is appended to or given a successor.
pub(crate) fn recover(
    dir: &Path,
    opts: &Options,
    index: &Index,
    now: u64,
) -> Result<(Log, RecoveryStats)> {
    let started = Instant::now();
    let mut stats = RecoveryStats::default();
    let listing = fs::list_dir(dir)?;
    let table = Arc::new(SegmentTable::new());
    let strict = opts.recovery == RecoveryMode::Strict;
    let count = listing.segments.len();
    // Every segment, and maybe one new one, must fit the table: refuse now rather than
    // after a file has been changed.
    if count + 1 > MAX_SEGMENTS {
        return Err(Error::Poisoned {
            reason: format!("{count} segments in one directory; at most {MAX_SEGMENTS} fit"),
        });
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

    // 2. Replay in log order.
    let mut active: Option<(Arc<Segment>, u16, Scan)> = None;
    let mut newest: Option<Arc<Segment>> = None;
    let mut last_id = 0u64;
    for (i, c) in checked.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let id = c.header.segment_id;
        let segment = Arc::new(map_segment(c, is_last, strict)?);
        let slot = table.install(Arc::clone(&segment))?;
        let scan = scan_segment(&segment, slot, is_last, opts, index, &table, now)?;
        stats.segments += 1;
        stats.records += scan.records;
        last_id = id;
        if is_last {
            newest = Some(Arc::clone(&segment));
        }
        if !scan.sealed {
            // Only the newest segment may be unsealed (scan_segment checked).
            active = Some((segment, slot, scan));
        }
    }

    // 3. The writer's segment: the unsealed newest one, its torn tail cut; or a new one.
    let store_id = store_id.unwrap_or_else(new_store_id);
    let config = LogConfig {
        dir: dir.to_path_buf(),
        segment_size: opts.segment_size,
        store_id,
    };
    let mut appender = match &active {
        Some((segment, _, scan)) => Some(segment.map.appender(scan.end).ok_or_else(|| {
            Error::corruption(&segment.path, scan.end as u64, CorruptionKind::Truncated)
        })?),
        None => None,
    };
    if let (Some((segment, _, _)), Some(appender)) = (&active, &mut appender) {
        if strict {
            let dirty = appender
                .dirty_rest(segment.file(), false)
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
    // Every check has passed; from here on recovery may change files.
    if !listing.temporaries.is_empty() {
        for tmp in &listing.temporaries {
            fs::remove_file(tmp)?;
        }
        fs::sync_dir(dir)?;
    }
    if let (Some((segment, _, scan)), Some(appender)) = (&active, &mut appender) {
        let dirty = appender
            .dirty_rest(segment.file(), true)
            .map_err(|e| Error::io("clear cut tail", &segment.path, e))?;
        if let Some((_, last)) = dirty {
            stats.truncated_bytes = (last - scan.end) as u64;
        }
    }
    if let Some(segment) = &newest {
        // Records a crashed process wrote but never synced, the zeroed tail and a
        // re-extended length: all durable before the first new acknowledgement, and before
        // a successor of a sealed newest segment becomes visible.
        // So is the directory: the crashed process may have renamed the newest segment
        // into place without reaching its directory fsync, and appending to a file whose
        // name a power cut can still undo would lose what is appended.
        segment
            .file()
            .sync_all()
            .map_err(|e| Error::io("sync segment", &segment.path, e))?;
        fs::sync_dir(dir)?;
        stats.synced = true;
    }
    let writer = match (active, appender) {
        (Some((segment, slot, scan)), Some(appender)) => Writer {
            segment,
            slot,
            appender,
            records: scan.records,
            max_expires: scan.max_expires,
            next_prepared: false,
        },
        _ => {
            let (segment, appender, tmp) =
                create_segment(dir, last_id + 1, opts.segment_size, store_id, now)?;
            std::fs::rename(&tmp, &segment.path)
                .map_err(|e| Error::io("rename new segment", &segment.path, e))?;
            fs::sync_dir(dir)?;
            // create_segment synced the new file; the directory now holds its name.
            stats.synced = true;
            let segment = Arc::new(segment);
            let slot = table.install(Arc::clone(&segment))?;
            Writer {
                segment,
                slot,
                appender,
                records: 0,
                max_expires: 0,
                next_prepared: false,
            }
        }
    };
    stats.duration = started.elapsed();
    Ok((Log::new(config, table, writer), stats))
}

/// A segment file whose header has been checked, not yet mapped.
struct Checked {
    path: PathBuf,
    file: File,
    header: SegmentHeader,
    len: u64,
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
    Ok(Checked {
        path: path.to_path_buf(),
        file,
        header,
        len,
    })
}

/// Maps a checked segment: read-only, or writable for the newest one.
fn map_segment(c: Checked, writable: bool, strict: bool) -> Result<Segment> {
    let Checked {
        path,
        file,
        header,
        len,
    } = c;
    let map = if writable {
        if len < header.capacity {
            // The newest segment lost its tail (a torn truncation, or a copy cut short).
            // Segments are created at full length, so this is damage: `Strict` reports it;
            // otherwise the file gets its allocation back and the zeros read as the end.
            if strict {
                return Err(Error::corruption(&path, len, CorruptionKind::Truncated));
            }
            preallocate(&file, header.capacity)
                .map_err(|e| Error::io("allocate segment", &path, e))?;
        }
        SegmentMap::writable(&file).map_err(|e| Error::io("map segment", &path, e))?
    } else {
        SegmentMap::read_only(&file).map_err(|e| Error::io("map segment", &path, e))?
    };
    Ok(Segment::new(path, header, map, file))
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
    records: u64,
    max_expires: u64,
    /// Offset just past the last valid record (where appends continue if not sealed).
    end: usize,
    sealed: bool,
}

fn scan_segment(
    segment: &Segment,
    slot: u16,
    is_last: bool,
    opts: &Options,
    index: &Index,
    table: &SegmentTable,
    now: u64,
) -> Result<Scan> {
    let bytes = segment.map.scan_bytes();
    let path = &segment.path;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut scan = Scan {
        records: 0,
        max_expires: 0,
        end: pos,
        sealed: false,
    };
    let tolerate = is_last && opts.recovery == RecoveryMode::TolerateTornTail;
    let mut replay = Replay {
        index,
        table,
        now,
        ops: Vec::with_capacity(REPLAY_BATCH),
    };
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
                let consistent =
                    seal.is_some_and(|s| s.records == scan.records && s.data_end == pos as u64);
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
                pos += rec.len;
                scan.end = pos;
                break;
            }
            RecordKind::Claim | RecordKind::Remove => {
                let loc = Location {
                    slot,
                    offset: pos as u32,
                };
                let hash = (opts.hasher)(rec.key);
                replay.push(Replayed {
                    stripe: index.stripe_of(hash),
                    hash,
                    loc,
                    expires: rec.header.expires,
                    remove: rec.header.kind == RecordKind::Remove,
                });
                scan.records += 1;
                scan.max_expires = scan.max_expires.max(rec.header.expires);
                pos += rec.len;
                scan.end = pos;
            }
        }
    }
    replay.flush();
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
const REPLAY_BATCH: usize = 8192;

/// One record read during recovery, waiting to be applied to the index.
struct Replayed {
    stripe: usize,
    hash: u64,
    loc: Location,
    expires: u64,
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
        let sorted = order.iter().filter_map(|&i| self.ops.get(i as usize));
        let table = self.table;
        let mut current: Option<(usize, parking_lot::MutexGuard<'_, Stripe>)> = None;
        for op in sorted {
            if current.as_ref().map(|c| c.0) != Some(op.stripe) {
                drop(current.take()); // unlock before locking the next stripe
                current = Some((op.stripe, self.index.lock_stripe(op.stripe)));
            }
            let Some((_, stripe)) = current.as_mut() else {
                continue;
            };
            // The record was just decoded from this installed segment.
            let Some((_, key)) = table.record(op.loc) else {
                continue;
            };
            let same_key = |e: &Entry| table.record(e.location()).is_some_and(|(_, k)| k == key);
            if !op.remove && op.expires > self.now {
                match stripe.slot(op.hash, same_key) {
                    Slot::Occupied(mut o) => {
                        *o.get_mut() = Entry::new(op.hash as u32, op.loc, op.expires)
                    }
                    Slot::Vacant(v, h) => {
                        v.insert(Entry::new(h, op.loc, op.expires));
                    }
                }
            } else {
                stripe.remove(op.hash, same_key);
            }
        }
        drop(current);
        self.ops.clear();
    }
}

/// A directory id that differs between directories with overwhelming probability; not
/// secret, only there to catch segments copied in from another store.
fn new_store_id() -> u128 {
    let mut seed = Vec::with_capacity(64);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    seed.extend_from_slice(&t.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let local = 0u8;
    seed.extend_from_slice(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    seed.extend_from_slice(&(Instant::now().elapsed().as_nanos()).to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&seed)
}
