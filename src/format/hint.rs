//! Hint files: a compact, checksummed summary of one sealed segment's records, from which
//! `open` can rebuild the index without reading the segment itself.
//!
//! ```text
//! header (HINT_HEADER_LEN = 64 bytes)
//! offset  size  field
//!      0     8  magic        b"oncehint"
//!      8     2  version      hint format version (1)
//!     10     2  header_len   64
//!     12     2  entry_len    24
//!     14     2  reserved     0
//!     16     8  segment_id   the segment the hint summarises
//!     24    16  store_id     the store_id of that segment's header
//!     40     8  data_end     offset of the segment's seal record (the end of its data)
//!     48     4  seal_crc     the crc field (first 4 bytes) of that seal record
//!     52     4  entries      number of entries that follow
//!     56     4  reserved     0
//!     60     4  crc          masked CRC-32 (IEEE) of bytes [0, 60)
//!
//! then `entries` entries (HINT_ENTRY_LEN = 24 bytes each), one per claim or remove record
//! of the segment, in increasing offset order
//!      0     8  hash         xxh3_64 of the record's key
//!      8     4  offset       the record's offset in the segment
//!     12     1  kind         1 = claim, 2 = remove, 4 = lease, 5 = done (the record's kind byte)
//!     13     1  reserved     0
//!     14     2  len8         the record's length (padding included) divided by 8
//!     16     8  expires      the record's expires field, ms since the epoch
//!
//! then the trailer (HINT_TRAILER_LEN = 4 bytes)
//!      0     4  crc          masked CRC-32 (IEEE) of all entry bytes
//! ```
//!
//! All integers are little-endian. A hint file is exactly
//! `HINT_HEADER_LEN + HINT_ENTRY_LEN * entries + HINT_TRAILER_LEN` bytes long. Its bytes are
//! fully determined by its fields: a hint that decodes re-encodes to the same bytes.

use std::slice::ChunksExact;

use super::{
    align_up, le_u128, le_u16, le_u32, le_u64, mask_crc, RecordKind, MAX_RECORD_LEN, RECORD_ALIGN,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// Identifies an oncelog hint file.
pub const HINT_MAGIC: [u8; 8] = *b"oncehint";
/// The newest hint format version this build writes and reads.
pub const HINT_VERSION: u16 = 1;
/// Bytes before the first entry.
pub const HINT_HEADER_LEN: usize = 64;
/// Bytes per entry.
pub const HINT_ENTRY_LEN: usize = 24;
/// Bytes after the last entry: the entries' checksum.
pub const HINT_TRAILER_LEN: usize = 4;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const HEADER_LEN_AT: usize = VERSION_AT + 2;
const ENTRY_LEN_AT: usize = HEADER_LEN_AT + 2;
const RESERVED16_AT: usize = ENTRY_LEN_AT + 2;
const SEGMENT_ID_AT: usize = RESERVED16_AT + 2;
const STORE_ID_AT: usize = SEGMENT_ID_AT + 8;
const DATA_END_AT: usize = STORE_ID_AT + 16;
const SEAL_CRC_AT: usize = DATA_END_AT + 8;
const ENTRIES_AT: usize = SEAL_CRC_AT + 4;
const RESERVED32_AT: usize = ENTRIES_AT + 4;
const CRC_AT: usize = RESERVED32_AT + 4;
const _: () = assert!(CRC_AT + 4 == HINT_HEADER_LEN);

const ENTRY_HASH_AT: usize = 0;
const ENTRY_OFFSET_AT: usize = ENTRY_HASH_AT + 8;
const ENTRY_KIND_AT: usize = ENTRY_OFFSET_AT + 4;
const ENTRY_RESERVED_AT: usize = ENTRY_KIND_AT + 1;
const ENTRY_LEN8_AT: usize = ENTRY_RESERVED_AT + 1;
const ENTRY_EXPIRES_AT: usize = ENTRY_LEN8_AT + 2;
const _: () = assert!(ENTRY_EXPIRES_AT + 8 == HINT_ENTRY_LEN);

/// The shortest claim or remove record: a one-byte key, padded.
const MIN_ENTRY_RECORD_LEN: usize = align_up(RECORD_HEADER_LEN + 1);
/// `len8` counts units of the record alignment.
const LEN_UNIT: u32 = RECORD_ALIGN as u32;
const _: () = assert!(MAX_RECORD_LEN / RECORD_ALIGN <= u16::MAX as usize);

/// The decoded header of a hint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintHeader {
    /// The segment the hint summarises.
    pub segment_id: u64,
    /// The `store_id` of that segment's header.
    pub store_id: u128,
    /// Offset of the segment's seal record, that is, the end of its data. At most
    /// `u32::MAX`, since entry offsets are 32 bits.
    pub data_end: u64,
    /// The `crc` field of the segment's seal record: ties the hint to that exact seal.
    pub seal_crc: u32,
    /// Number of entries. `encode_hint` writes the length of its entry slice instead.
    pub entries: u32,
}

/// One claim or remove record of the summarised segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintEntry {
    /// The 64-bit hash of the record's key (xxh3_64).
    pub hash: u64,
    /// The record's offset in the segment.
    pub offset: u32,
    /// The record's kind: anything but `RecordKind::Seal` (a hint has no seal entries).
    pub kind: RecordKind,
    /// The record's length in bytes, padding included (a multiple of 8).
    pub len: u32,
    /// The record's `expires` field, ms since the epoch.
    pub expires: u64,
}

/// Why bytes did not decode as a hint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintError {
    /// Wrong magic, a bad checksum, a wrong length, or any impossible field or entry.
    Bad,
    /// A hint file, with a valid header checksum, of a newer hint format version.
    Version(u16),
}

/// Builds a hint file one entry at a time, for a writer that walks a segment's records.
///
/// Entries must be pushed in increasing offset order. The fields are written as given, and
/// `decode_hint` rejects a file whose entries break its checks. An entry that the layout
/// cannot even hold (a seal, or a length that is not a multiple of 8 or exceeds
/// `u16::MAX * 8`) trips a debug assertion; release builds write it with `len8` = 0 or kind 3,
/// which the decoder rejects.
#[derive(Debug)]
pub struct HintWriter {
    /// The header (count and CRC still zero), then the entries pushed so far.
    out: Vec<u8>,
    /// Entries pushed so far.
    count: u32,
    /// Running CRC-32 of the entry bytes.
    crc: crc32fast::Hasher,
}

impl HintWriter {
    /// Starts a hint file for a segment; `header.entries` is ignored (`finish` writes the
    /// number of entries pushed).
    pub fn new(header: &HintHeader) -> HintWriter {
        HintWriter::with_buffer(Vec::new(), header)
    }

    /// Like `new`, but writes into `out` (cleared first) to reuse its allocation.
    fn with_buffer(mut out: Vec<u8>, header: &HintHeader) -> HintWriter {
        let mut head = [0u8; HINT_HEADER_LEN];
        put(&mut head, MAGIC_AT, &HINT_MAGIC);
        put(&mut head, VERSION_AT, &HINT_VERSION.to_le_bytes());
        put(
            &mut head,
            HEADER_LEN_AT,
            &(HINT_HEADER_LEN as u16).to_le_bytes(),
        );
        put(
            &mut head,
            ENTRY_LEN_AT,
            &(HINT_ENTRY_LEN as u16).to_le_bytes(),
        );
        put(&mut head, SEGMENT_ID_AT, &header.segment_id.to_le_bytes());
        put(&mut head, STORE_ID_AT, &header.store_id.to_le_bytes());
        put(&mut head, DATA_END_AT, &header.data_end.to_le_bytes());
        put(&mut head, SEAL_CRC_AT, &header.seal_crc.to_le_bytes());
        out.clear();
        out.extend_from_slice(&head);
        HintWriter {
            out,
            count: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Appends one entry.
    pub fn push(&mut self, entry: &HintEntry) {
        debug_assert!(entry.kind != RecordKind::Seal);
        debug_assert!(
            entry.len.is_multiple_of(LEN_UNIT) && entry.len / LEN_UNIT <= u32::from(u16::MAX)
        );
        // A length the layout cannot hold is written as 0, which the decoder rejects.
        let len8 = if entry.len.is_multiple_of(LEN_UNIT) {
            u16::try_from(entry.len / LEN_UNIT).unwrap_or(0)
        } else {
            0
        };
        let mut bytes = [0u8; HINT_ENTRY_LEN];
        put(&mut bytes, ENTRY_HASH_AT, &entry.hash.to_le_bytes());
        put(&mut bytes, ENTRY_OFFSET_AT, &entry.offset.to_le_bytes());
        put(&mut bytes, ENTRY_KIND_AT, &[entry.kind.to_byte()]);
        put(&mut bytes, ENTRY_LEN8_AT, &len8.to_le_bytes());
        put(&mut bytes, ENTRY_EXPIRES_AT, &entry.expires.to_le_bytes());
        self.out.extend_from_slice(&bytes);
        self.crc.update(&bytes);
        self.count = self.count.saturating_add(1);
    }

    /// Entries pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no entry has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Fills in the entry count and both checksums, and returns the whole file.
    pub fn finish(self) -> Vec<u8> {
        let HintWriter {
            mut out,
            count,
            crc,
        } = self;
        put(&mut out, ENTRIES_AT, &count.to_le_bytes());
        let header_crc = mask_crc(crc32fast::hash(out.get(..CRC_AT).unwrap_or(&[])));
        put(&mut out, CRC_AT, &header_crc.to_le_bytes());
        out.extend_from_slice(&mask_crc(crc.finalize()).to_le_bytes());
        out
    }
}

/// Encodes a whole hint file into `out` (cleared first). The entry count written is
/// `entries.len()`; `header.entries` should agree (a debug assertion checks it).
pub fn encode_hint(out: &mut Vec<u8>, header: &HintHeader, entries: &[HintEntry]) {
    debug_assert_eq!(header.entries as usize, entries.len());
    let mut writer = HintWriter::with_buffer(std::mem::take(out), header);
    writer
        .out
        .reserve(HINT_ENTRY_LEN * entries.len() + HINT_TRAILER_LEN);
    for entry in entries {
        writer.push(entry);
    }
    *out = writer.finish();
}

/// Checks a whole hint file and returns its header and its entries. Never panics and
/// never allocates, whatever `bytes` holds.
///
/// Checked, in this order: the length (at least a header) and the magic; the header CRC;
/// the version (a newer one is `Version`, trusted only once the CRC holds); `header_len`,
/// `entry_len` and the reserved fields; `data_end` (8-aligned, at least
/// `SEGMENT_HEADER_LEN`, at most `u32::MAX`); the exact file length for `entries`; the
/// trailer CRC; then every entry: kind not seal, reserved 0, offset 8-aligned and not
/// inside the header or the previous entry's record (so offsets strictly increase), length
/// from the shortest claim record to `MAX_RECORD_LEN`, and the record ending by `data_end`.
pub fn decode_hint(bytes: &[u8]) -> Result<(HintHeader, HintEntries<'_>), HintError> {
    let head = bytes.get(..HINT_HEADER_LEN).ok_or(HintError::Bad)?;
    if head.get(MAGIC_AT..VERSION_AT) != Some(&HINT_MAGIC[..]) {
        return Err(HintError::Bad);
    }
    let stored = le_u32(head, CRC_AT);
    if stored != mask_crc(crc32fast::hash(head.get(..CRC_AT).unwrap_or(&[]))) {
        return Err(HintError::Bad);
    }
    // The version is trusted only once the checksum holds, and before anything else.
    let version = le_u16(head, VERSION_AT);
    if version > HINT_VERSION {
        return Err(HintError::Version(version));
    }
    if version != HINT_VERSION
        || usize::from(le_u16(head, HEADER_LEN_AT)) != HINT_HEADER_LEN
        || usize::from(le_u16(head, ENTRY_LEN_AT)) != HINT_ENTRY_LEN
        || le_u16(head, RESERVED16_AT) != 0
        || le_u32(head, RESERVED32_AT) != 0
    {
        return Err(HintError::Bad);
    }
    let header = HintHeader {
        segment_id: le_u64(head, SEGMENT_ID_AT),
        store_id: le_u128(head, STORE_ID_AT),
        data_end: le_u64(head, DATA_END_AT),
        seal_crc: le_u32(head, SEAL_CRC_AT),
        entries: le_u32(head, ENTRIES_AT),
    };
    if header.data_end > u64::from(u32::MAX)
        || header.data_end < SEGMENT_HEADER_LEN as u64
        || !header.data_end.is_multiple_of(RECORD_ALIGN as u64)
    {
        return Err(HintError::Bad);
    }
    // The count is checked against the file's actual length before it is used for anything.
    let body_len = usize::try_from(header.entries)
        .ok()
        .and_then(|n| n.checked_mul(HINT_ENTRY_LEN))
        .ok_or(HintError::Bad)?;
    let body_end = HINT_HEADER_LEN
        .checked_add(body_len)
        .ok_or(HintError::Bad)?;
    if body_end.checked_add(HINT_TRAILER_LEN) != Some(bytes.len()) {
        return Err(HintError::Bad);
    }
    let body = bytes.get(HINT_HEADER_LEN..body_end).ok_or(HintError::Bad)?;
    if le_u32(bytes, body_end) != mask_crc(crc32fast::hash(body)) {
        return Err(HintError::Bad);
    }
    let entries = HintEntries {
        chunks: body.chunks_exact(HINT_ENTRY_LEN),
    };
    let mut next_free = SEGMENT_HEADER_LEN as u64;
    for chunk in entries.chunks.clone() {
        let entry = read_entry(chunk).ok_or(HintError::Bad)?;
        let offset = u64::from(entry.offset);
        let end = offset + u64::from(entry.len);
        if offset < next_free
            || !offset.is_multiple_of(RECORD_ALIGN as u64)
            || (entry.len as usize) < MIN_ENTRY_RECORD_LEN
            || entry.len as usize > MAX_RECORD_LEN
            || end > header.data_end
        {
            return Err(HintError::Bad);
        }
        next_free = end;
    }
    Ok((header, entries))
}

/// The entries of a hint file that `decode_hint` accepted, decoded one at a time in place.
#[derive(Debug, Clone)]
pub struct HintEntries<'a> {
    /// The entry bytes, already validated.
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for HintEntries<'_> {
    type Item = HintEntry;

    fn next(&mut self) -> Option<HintEntry> {
        // `decode_hint` has checked every entry, so `read_entry` does not fail here.
        self.chunks.next().and_then(read_entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for HintEntries<'_> {}

/// Reads one entry: `None` if its kind is unknown or seal, or its reserved byte is set.
fn read_entry(chunk: &[u8]) -> Option<HintEntry> {
    let kind = match RecordKind::from_byte(*chunk.get(ENTRY_KIND_AT)?)? {
        RecordKind::Seal => return None,
        kind => kind,
    };
    if *chunk.get(ENTRY_RESERVED_AT)? != 0 {
        return None;
    }
    Some(HintEntry {
        hash: le_u64(chunk, ENTRY_HASH_AT),
        offset: le_u32(chunk, ENTRY_OFFSET_AT),
        kind,
        len: u32::from(le_u16(chunk, ENTRY_LEN8_AT)) * LEN_UNIT,
        expires: le_u64(chunk, ENTRY_EXPIRES_AT),
    })
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(entries: u32, data_end: u64) -> HintHeader {
        HintHeader {
            segment_id: 7,
            store_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            data_end,
            seal_crc: 0xdead_beef,
            entries,
        }
    }

    /// `n` back-to-back entries from offset 64, alternating kinds and lengths.
    fn entries(n: usize) -> Vec<HintEntry> {
        let mut offset = SEGMENT_HEADER_LEN as u32;
        (0..n)
            .map(|i| {
                let len = if i % 3 == 0 { 40 } else { 4128 };
                let e = HintEntry {
                    hash: xxhash_rust::xxh3::xxh3_64(format!("evt_{i}").as_bytes()),
                    offset,
                    kind: if i % 4 == 3 {
                        RecordKind::Remove
                    } else {
                        RecordKind::Claim
                    },
                    len,
                    expires: 1_700_000_000_000 + i as u64,
                };
                offset += len;
                e
            })
            .collect()
    }

    fn data_end(es: &[HintEntry]) -> u64 {
        es.last()
            .map_or(SEGMENT_HEADER_LEN as u64, |e| u64::from(e.offset + e.len))
    }

    fn encode(es: &[HintEntry]) -> Vec<u8> {
        let mut out = vec![1, 2, 3];
        encode_hint(&mut out, &header(es.len() as u32, data_end(es)), es);
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<(HintHeader, Vec<HintEntry>), HintError> {
        decode_hint(bytes).map(|(h, es)| {
            assert_eq!(es.len(), h.entries as usize);
            (h, es.collect())
        })
    }

    /// Recomputes both checksums, so that a test reaches the field checks behind them.
    fn fix_crcs(bytes: &mut [u8]) {
        let crc = mask_crc(crc32fast::hash(&bytes[..CRC_AT]));
        bytes[CRC_AT..HINT_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        let body_end = bytes.len() - HINT_TRAILER_LEN;
        let crc = mask_crc(crc32fast::hash(&bytes[HINT_HEADER_LEN..body_end]));
        bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        for n in [0, 1, 2, 1000] {
            let es = entries(n);
            let bytes = encode(&es);
            assert_eq!(
                bytes.len(),
                HINT_HEADER_LEN + n * HINT_ENTRY_LEN + HINT_TRAILER_LEN
            );
            let (h, got) = decode_all(&bytes).expect("decodes");
            assert_eq!(h, header(n as u32, data_end(&es)));
            assert_eq!(got, es);
        }
    }

    #[test]
    fn streaming_writer_matches_encode_hint() {
        let es = entries(9);
        let h = header(0, data_end(&es));
        let mut w = HintWriter::new(&h);
        assert!(w.is_empty());
        for e in &es {
            w.push(e);
        }
        assert_eq!(w.len(), 9);
        assert_eq!(w.finish(), encode(&es));
    }

    #[test]
    fn entries_iterator_is_exact_size() {
        let bytes = encode(&entries(5));
        let (_, mut it) = decode_hint(&bytes).expect("decodes");
        assert_eq!(it.len(), 5);
        it.next();
        assert_eq!(it.len(), 4);
        assert_eq!(it.by_ref().count(), 4);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let bytes = encode(&entries(3));
        for i in 0..bytes.len() {
            for flip in [0x01, 0x40, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                assert_eq!(
                    decode_all(&b).err(),
                    Some(HintError::Bad),
                    "flip {flip:#x} at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_detected() {
        let bytes = encode(&entries(3));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_all(&bytes[..cut]).err(),
                Some(HintError::Bad),
                "{cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_all(&longer).err(), Some(HintError::Bad));
        assert_eq!(decode_all(&[0u8; 92]).err(), Some(HintError::Bad));
    }

    #[test]
    fn newer_version_is_reported_only_behind_a_valid_crc() {
        let mut bytes = encode(&entries(2));
        bytes[VERSION_AT..HEADER_LEN_AT].copy_from_slice(&(HINT_VERSION + 1).to_le_bytes());
        assert_eq!(decode_all(&bytes).err(), Some(HintError::Bad));
        // A newer version may change every length, so it is reported before they are
        // checked.
        bytes[HEADER_LEN_AT..ENTRY_LEN_AT].copy_from_slice(&128u16.to_le_bytes());
        bytes.truncate(HINT_HEADER_LEN + 10);
        let crc = mask_crc(crc32fast::hash(&bytes[..CRC_AT]));
        bytes[CRC_AT..HINT_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_all(&bytes).err(),
            Some(HintError::Version(HINT_VERSION + 1))
        );
    }

    #[test]
    fn header_fields_are_checked_behind_the_crc() {
        let good = encode(&entries(2));
        let mut cases: Vec<(usize, Vec<u8>)> = vec![
            (VERSION_AT, 0u16.to_le_bytes().to_vec()),
            (HEADER_LEN_AT, 72u16.to_le_bytes().to_vec()),
            (ENTRY_LEN_AT, 32u16.to_le_bytes().to_vec()),
            (RESERVED16_AT, 1u16.to_le_bytes().to_vec()),
            (RESERVED32_AT, 1u32.to_le_bytes().to_vec()),
            (ENTRIES_AT, 3u32.to_le_bytes().to_vec()),
            (ENTRIES_AT, u32::MAX.to_le_bytes().to_vec()),
        ];
        for data_end in [0, 56, 4300, 1 << 32] {
            cases.push((DATA_END_AT, u64::to_le_bytes(data_end).to_vec()));
        }
        for (at, value) in cases {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(&value);
            fix_crcs(&mut b);
            assert_eq!(decode_all(&b).err(), Some(HintError::Bad), "{at} {value:?}");
        }
        let mut b = good.clone();
        fix_crcs(&mut b);
        assert!(decode_all(&b).is_ok(), "fix_crcs alone breaks nothing");
    }

    /// Edits a list of entries, given its data_end, and returns the data_end to write.
    type Edit = fn(&mut Vec<HintEntry>, u64) -> u64;

    #[test]
    fn entry_fields_are_checked_behind_the_crc() {
        let es = entries(3);
        let end = data_end(&es);
        // Each case edits the entries and returns the data_end to write; the encoder writes
        // the fields as given, with correct checksums, so only the field checks can object.
        let decode_edited = |edit: Edit| {
            let mut es = es.clone();
            let data_end = edit(&mut es, end);
            let mut out = Vec::new();
            encode_hint(&mut out, &header(es.len() as u32, data_end), &es);
            decode_all(&out).err()
        };
        assert_eq!(decode_edited(|_, end| end), None, "unedited entries decode");
        assert_eq!(
            decode_edited(|es, end| {
                es[2].offset += 8;
                end + 8
            }),
            None,
            "a gap between records is allowed"
        );
        let cases: [(&str, Edit); 10] = [
            ("out of order", |es, end| {
                es.swap(0, 1);
                end
            }),
            ("overlapping", |es, end| {
                es[1].offset -= 8;
                end
            }),
            ("equal offsets", |es, end| {
                es[1].offset = es[0].offset;
                end
            }),
            ("misaligned", |es, end| {
                es[2].offset += 4;
                end + 8
            }),
            ("inside the segment header", |es, end| {
                es[0].offset = 56;
                end
            }),
            ("past data_end", |_, end| end - 8),
            ("offset far past data_end", |es, end| {
                es[2].offset = u32::MAX - 7;
                end
            }),
            ("shorter than any record", |es, end| {
                es[2].len = 32;
                end
            }),
            ("zero length", |es, end| {
                es[2].len = 0;
                end
            }),
            ("longer than any record", |es, end| {
                es[2].len = MAX_RECORD_LEN as u32 + 8;
                end + MAX_RECORD_LEN as u64
            }),
        ];
        for (what, edit) in cases {
            assert_eq!(decode_edited(edit), Some(HintError::Bad), "{what}");
        }

        // Fields the encoder cannot express: patch the bytes, then fix the checksums.
        let good = encode(&es);
        let second = HINT_HEADER_LEN + HINT_ENTRY_LEN;
        for (at, value) in [
            (ENTRY_KIND_AT, &[0u8][..]),
            (ENTRY_KIND_AT, &[3]),
            (ENTRY_KIND_AT, &[6]),
            (ENTRY_RESERVED_AT, &[1]),
            (ENTRY_LEN8_AT, &[0, 0]),
        ] {
            let mut b = good.clone();
            b[second + at..second + at + value.len()].copy_from_slice(value);
            fix_crcs(&mut b);
            assert_eq!(decode_all(&b).err(), Some(HintError::Bad), "{at} {value:?}");
        }
        let mut b = good.clone();
        b[second + ENTRY_KIND_AT] = 2;
        fix_crcs(&mut b);
        assert!(decode_all(&b).is_ok(), "a remove is fine");
    }

    /// Arbitrary valid entries: back to back from offset 64, with occasional gaps.
    fn arb_entries() -> impl Strategy<Value = (Vec<HintEntry>, u64)> {
        let one = (
            any::<u64>(),
            any::<bool>(),
            (MIN_ENTRY_RECORD_LEN / 8) as u32..=(MAX_RECORD_LEN / 8) as u32,
            0u32..3,
            any::<u64>(),
        );
        (prop::collection::vec(one, 0..64), 0u64..3).prop_map(|(raw, tail_gap)| {
            let mut offset = SEGMENT_HEADER_LEN as u32;
            let es: Vec<HintEntry> = raw
                .into_iter()
                .map(|(hash, remove, len8, gap, expires)| {
                    offset += gap * 8;
                    let e = HintEntry {
                        hash,
                        offset,
                        kind: if remove {
                            RecordKind::Remove
                        } else {
                            RecordKind::Claim
                        },
                        len: len8 * 8,
                        expires,
                    };
                    offset += len8 * 8;
                    e
                })
                .collect();
            (es, u64::from(offset) + tail_gap * 8)
        })
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            (es, data_end) in arb_entries(),
            segment_id in any::<u64>(),
            store_id in any::<u128>(),
            seal_crc in any::<u32>(),
        ) {
            let entries = es.len() as u32;
            let h = HintHeader { segment_id, store_id, data_end, seal_crc, entries };
            let mut out = Vec::new();
            encode_hint(&mut out, &h, &es);
            prop_assert_eq!(decode_all(&out), Ok((h, es)));
        }

        #[test]
        fn prop_accepted_bytes_re_encode_identically(
            (es, data_end) in arb_entries(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            // Mutations behind fixed checksums reach the field checks; whatever passes
            // them must be the canonical encoding of what was decoded.
            let mut bytes = Vec::new();
            encode_hint(&mut bytes, &header(es.len() as u32, data_end), &es);
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            fix_crcs(&mut bytes);
            if let Ok((h, got)) = decode_all(&bytes) {
                let mut again = Vec::new();
                encode_hint(&mut again, &h, &got);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn prop_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&bytes);
        }
    }
}
