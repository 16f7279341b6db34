//! [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage): before recovery replays
//! anything, every segment that a `Strict` open would refuse is rewritten without what does
//! not decode, so that the usual recovery then finds a clean directory.
//!
//! Per segment (docs/FORMAT.md §7.7):
//!
//! - **Header.** A header that does not decode (short file, bad magic or checksum, impossible
//!   fields) is rebuilt: the id from the file name, the store id from the directory's other
//!   segments, the current time for `created_at`. A header that *does* decode but says the
//!   file belongs elsewhere — another store, another id, a newer version — is not damage:
//!   `open` fails as in the other modes. So does a file over 1 GiB.
//! - **Records.** From offset 64 on, records are decoded in order. Where one does not decode,
//!   the scan resynchronises: it tries every following 8-aligned offset (records are
//!   8-aligned, `RECORD_ALIGN`), skipping runs of zeros, until a record decodes. The bytes in
//!   between are a *damaged region*, dropped and counted. A seal record ends the segment
//!   only if it seals exactly where it stands (its `data_end`).
//! - **Rewrite.** A segment with a damaged header or region, without a seal (unless it is
//!   the newest), with non-zero bytes after its seal, or shorter than its capacity, is
//!   rewritten: header, every record that decoded in its original order, a new seal (the
//!   old seal's time if it had a good one), under `seg-N.olog.tmp`, fsynced, renamed over
//!   the original; its hint file is deleted. The copy is sealed even if the original was
//!   the newest segment: recovery then starts a new one after it.
//! - **The newest segment's tail.** Bytes after the newest segment's last record that are
//!   not followed by any record that decodes are a torn tail, and are left to the usual cut
//!   (`Stats::recovery_truncated_bytes`), exactly as in the default mode.
//!
//! Every file change (create, write, sync, rename, remove) goes through the store's
//! `IoHook`, as everywhere else. Nothing is written before every segment has been
//! examined, so an `open` that fails (foreign segment, newer version, I/O error while
//! reading) has changed nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::format::{
    decode_record, DecodeError, HeaderError, Hides, RecordHeader, RecordKind, SegmentHeader,
    FORMAT_VERSION, MAX_RECORD_LEN, RECORD_ALIGN, SEAL_LEN, SEGMENT_HEADER_LEN,
};
use crate::fs::{self, Listing};
use crate::iohook::Io;
use crate::log::{SealedWriter, SegmentMap};
use crate::options::MAX_SEGMENT_SIZE;

/// How many damaged places `open` remembers ([`Store::salvaged`](crate::Store::salvaged)).
pub const MAX_SALVAGED_PLACES: usize = 16;

/// What salvage found and dropped.
#[derive(Debug, Default, Clone)]
pub(crate) struct Salvaged {
    /// Bytes dropped: damaged headers, damaged regions, garbage after a seal.
    pub(crate) bytes: u64,
    /// Damaged places: headers, regions, missing seals, garbage after a seal, short files.
    pub(crate) places: u64,
    /// Segments rewritten.
    pub(crate) segments: u64,
    /// The first `MAX_SALVAGED_PLACES` places, at their offsets in the original files.
    pub(crate) first: Vec<Corruption>,
}

impl Salvaged {
    fn note(&mut self, path: &Path, offset: usize, kind: CorruptionKind, bytes: usize) {
        self.places += 1;
        self.bytes += bytes as u64;
        if self.first.len() < MAX_SALVAGED_PLACES {
            self.first.push(Corruption {
                path: path.to_path_buf(),
                offset: offset as u64,
                kind,
            });
        }
    }
}

/// One segment as found, and what to do about it.
struct Examined {
    id: u64,
    path: PathBuf,
    /// `None`: the header did not decode and is rebuilt.
    header: Option<SegmentHeader>,
    scan: Scan,
    rewrite: bool,
}

/// Rewrites every segment of `listing` that a `Strict` open would refuse (see the module
/// docs) and reports what it dropped. `now` is the store clock's time, ms.
pub(crate) fn repair(
    io: &Io,
    listing: &Listing,
    now: u64,
    new_store_id: impl FnOnce() -> u128,
) -> Result<Salvaged> {
    let mut report = Salvaged::default();
    let mut store_id: Option<u128> = None;
    let mut examined = Vec::with_capacity(listing.segments.len());
    let count = listing.segments.len();
    for (i, (id, path)) in listing.segments.iter().enumerate() {
        let newest = i + 1 == count;
        let (file, len) = open(path)?;
        let map = SegmentMap::read_only(&file).map_err(|e| Error::io("map segment", path, e))?;
        let bytes = map.scan_bytes();
        let header = match SegmentHeader::decode(bytes) {
            Ok(h) => Some(h),
            Err(HeaderError::Version(found)) => {
                return Err(Error::UnsupportedVersion {
                    path: path.clone(),
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Err(HeaderError::Bad) => None,
        };
        let min_capacity = (SEGMENT_HEADER_LEN + SEAL_LEN) as u64;
        let header = header.filter(|h| (min_capacity..=MAX_SEGMENT_SIZE).contains(&h.capacity));
        if let Some(h) = &header {
            if h.segment_id != *id {
                return Err(Error::corruption(
                    path,
                    0,
                    CorruptionKind::SegmentIdMismatch,
                ));
            }
            match store_id {
                Some(s) if s != h.store_id => {
                    return Err(Error::corruption(path, 0, CorruptionKind::ForeignSegment));
                }
                _ => store_id = Some(h.store_id),
            }
        }
        let scan = scan(bytes, |_, _, _| Ok::<(), Error>(()))?;
        let short = header.is_some_and(|h| len < h.capacity);
        let rewrite = header.is_none()
            || scan.regions > 0
            || (scan.seal.is_some() && scan.tail.is_some())
            || (!newest && (scan.seal.is_none() || scan.tail.is_some() || short));
        if rewrite {
            if header.is_none() {
                let dropped = bytes.len().min(SEGMENT_HEADER_LEN);
                report.note(path, 0, CorruptionKind::BadSegmentHeader, dropped);
            }
            for &(start, end, kind) in &scan.first_regions {
                report.note(path, start, kind, end - start);
            }
            // Regions beyond the few remembered still count.
            let unlisted = scan.regions - scan.first_regions.len() as u64;
            report.places += unlisted;
            report.bytes += scan.region_bytes
                - scan
                    .first_regions
                    .iter()
                    .map(|&(s, e, _)| (e - s) as u64)
                    .sum::<u64>();
            if let Some((first, last, kind)) = scan.tail {
                report.note(path, first, kind, last - first);
            }
            if scan.seal.is_none() && !newest {
                // Where the seal should have been (the file may end before).
                let at = scan.end.min(bytes.len());
                report.note(path, at, CorruptionKind::Unsealed, 0);
            } else if short {
                report.note(path, len as usize, CorruptionKind::Truncated, 0);
            }
        }
        if newest && !rewrite && short {
            // Re-extended with zeros by the usual recovery; what was cut off is not known,
            // but the operator should know that something cut the file.
            report.note(path, len as usize, CorruptionKind::Truncated, 0);
        }
        examined.push(Examined {
            id: *id,
            path: path.clone(),
            header,
            scan,
            rewrite,
        });
    }

    let store_id = store_id.unwrap_or_else(new_store_id);
    let mut rewrote = false;
    for e in examined.iter().filter(|e| e.rewrite) {
        rewrite(io, e, store_id, now)?;
        fs::remove_file(io, &e.path.with_file_name(fs::hint_file_name(e.id)))?;
        report.segments += 1;
        rewrote = true;
    }
    if rewrote {
        if let Some(dir) = examined.first().and_then(|e| e.path.parent()) {
            fs::sync_dir(io, dir)?;
        }
    }
    Ok(report)
}

fn open(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat segment", path, e))?
        .len();
    if len > MAX_SEGMENT_SIZE {
        return Err(Error::corruption(path, 0, CorruptionKind::BadSegmentHeader));
    }
    Ok((file, len))
}

/// Writes the clean copy of `e` and renames it over the original.
fn rewrite(io: &Io, e: &Examined, store_id: u128, now: u64) -> Result<()> {
    let (file, _) = open(&e.path)?;
    let map = SegmentMap::read_only(&file).map_err(|err| Error::io("map segment", &e.path, err))?;
    let created_at = e.header.map_or(now, |h| h.created_at);
    let mut copy = SealedWriter::create(io, &e.path, e.id, created_at, store_id)?;
    // (The copy's totals are not used: `open` scans the copy after salvage.)
    scan(map.scan_bytes(), |_, record, header| {
        copy.push(record, header.kind, header.expires, Hides::ANY)
    })?;
    let copy = copy.finish(e.scan.seal.map_or(now, |(_, time)| time))?;
    copy.rename_into_place(io)
}

/// What a resynchronising scan of one segment found.
#[derive(Debug, Default)]
struct Scan {
    /// Records that decoded (the seal not counted), their bytes and latest `expires`.
    records: u64,
    record_bytes: usize,
    max_expires: u64,
    /// Damaged regions followed by a record that decodes: how many, their bytes, and the
    /// first few as (start, end, kind of the first failure).
    regions: u64,
    region_bytes: u64,
    first_regions: Vec<(usize, usize, CorruptionKind)>,
    /// The seal that ends the data: its offset and time.
    seal: Option<(usize, u64)>,
    /// Just past the last record that decoded (the seal not counted).
    end: usize,
    /// Non-zero bytes after the data that no record follows, as [first, last + 1), and
    /// why the first of them did not decode: after a seal, garbage; else a torn tail or
    /// damage running to the end of the file.
    tail: Option<(usize, usize, CorruptionKind)>,
}

/// Scans a segment's bytes from the end of its header, resynchronising after damage (module
/// docs), and calls `on_record` with the offset, the bytes and the header of every record
/// that decodes, in order.
///
/// A file that ends inside a record reads as if it went on with zeros, as a re-extended
/// newest segment does: a record that lost only its zero padding is whole.
fn scan<E>(
    bytes: &[u8],
    mut on_record: impl FnMut(usize, &[u8], &RecordHeader) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut s = Scan {
        end: SEGMENT_HEADER_LEN,
        ..Scan::default()
    };
    let mut pos = SEGMENT_HEADER_LEN;
    // The start of the damaged region the scan is in, and why its first bytes failed.
    let mut damaged: Option<(usize, CorruptionKind)> = None;
    let mut padded = Vec::new();
    while pos < bytes.len() {
        let mut here = bytes.get(pos..).unwrap_or(&[]);
        if matches!(decode_record(here), Err(DecodeError::Truncated)) {
            padded.clear();
            padded.extend_from_slice(here);
            padded.resize(MAX_RECORD_LEN, 0);
            here = &padded;
        }
        let rec = match decode_record(here) {
            Ok(rec) if rec.header.kind != RecordKind::Seal => Some(rec),
            // A seal ends the data only where it says the data ends.
            Ok(rec) if rec.seal().is_some_and(|i| i.data_end == pos as u64) => Some(rec),
            Ok(_) => None,
            Err(e) => {
                damaged.get_or_insert((pos, kind_of(e)));
                None
            }
        };
        let Some(rec) = rec else {
            damaged.get_or_insert((pos, CorruptionKind::MalformedRecord));
            pos = next_candidate(bytes, pos + RECORD_ALIGN);
            continue;
        };
        if let Some((start, kind)) = damaged.take() {
            s.regions += 1;
            s.region_bytes += (pos - start) as u64;
            if s.first_regions.len() < MAX_SALVAGED_PLACES {
                s.first_regions.push((start, pos, kind));
            }
        }
        if rec.header.kind == RecordKind::Seal {
            s.seal = Some((pos, rec.header.time));
            pos += rec.len;
            break;
        }
        on_record(pos, here.get(..rec.len).unwrap_or(&[]), &rec.header)?;
        s.records += 1;
        s.record_bytes += rec.len;
        s.max_expires = s.max_expires.max(rec.header.expires);
        pos += rec.len;
        s.end = pos;
    }
    let (from, kind) = match damaged {
        Some(d) => d,
        None => (pos, CorruptionKind::TrailingGarbage),
    };
    let rest = bytes.get(from..).unwrap_or(&[]);
    if let Some(first) = rest.iter().position(|&b| b != 0) {
        let last = rest.iter().rposition(|&b| b != 0).unwrap_or(first);
        s.tail = Some((from + first, from + last + 1, kind));
    }
    Ok(s)
}

/// The first offset at or after `from` (8-aligned) where a record may start: a record's
/// `kind` byte (offset 4) is never zero, so none starts more than 7 bytes before the next
/// non-zero byte.
fn next_candidate(bytes: &[u8], from: usize) -> usize {
    match bytes
        .get(from..)
        .and_then(|r| r.iter().position(|&b| b != 0))
    {
        Some(p) => from + (p & !(RECORD_ALIGN - 1)),
        None => bytes.len(),
    }
}

fn kind_of(e: DecodeError) -> CorruptionKind {
    match e {
        DecodeError::Checksum => CorruptionKind::Checksum,
        DecodeError::Truncated => CorruptionKind::Truncated,
        DecodeError::Malformed | DecodeError::End => CorruptionKind::MalformedRecord,
    }
}
