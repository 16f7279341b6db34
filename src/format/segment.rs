//! The segment header: the first 64 bytes of every segment file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"oncelog\0"
//!      8     2  version      format version (1 or 2; 2 may hold lease and done records)
//!     10     2  header_len   64
//!     12     4  flags        0 in format version 1
//!     16     8  segment_id   equals the id in the file name
//!     24     8  created_at   ms since the epoch
//!     32     8  capacity     file length the segment was created with
//!     40    16  store_id     random, the same for every segment of one directory
//!     56     4  reserved     0
//!     60     4  crc          masked CRC-32 (IEEE) of bytes [0, 60)
//! ```
//!
//! The version is checked before anything else is trusted.

use super::{le_u128, le_u16, le_u32, le_u64, mask_crc};

/// Identifies an oncelog segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"oncelog\0";
/// The newest format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 4;
/// Bytes before the first record.
pub const SEGMENT_HEADER_LEN: usize = 64;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const HEADER_LEN_AT: usize = VERSION_AT + 2;
const FLAGS_AT: usize = HEADER_LEN_AT + 2;
const SEGMENT_ID_AT: usize = FLAGS_AT + 4;
const CREATED_AT: usize = SEGMENT_ID_AT + 8;
const CAPACITY_AT: usize = CREATED_AT + 8;
const STORE_ID_AT: usize = CAPACITY_AT + 8;
const RESERVED_AT: usize = STORE_ID_AT + 16;
const CRC_AT: usize = RESERVED_AT + 4;
const _: () = assert!(CRC_AT + 4 == SEGMENT_HEADER_LEN);

/// The decoded header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written with.
    pub version: u16,
    /// Sequence number; segments are replayed in this order.
    pub segment_id: u64,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
    /// The file length the segment was created with.
    pub capacity: u64,
    /// Identifies the directory the segment belongs to.
    pub store_id: u128,
}

/// Why bytes did not decode as a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Wrong magic, bad checksum, impossible fields, or too few bytes.
    Bad,
    /// A well-formed header of a newer format version.
    Version(u16),
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&SEGMENT_MAGIC);
        out[VERSION_AT..HEADER_LEN_AT].copy_from_slice(&self.version.to_le_bytes());
        out[HEADER_LEN_AT..FLAGS_AT].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        out[SEGMENT_ID_AT..CREATED_AT].copy_from_slice(&self.segment_id.to_le_bytes());
        out[CREATED_AT..CAPACITY_AT].copy_from_slice(&self.created_at.to_le_bytes());
        out[CAPACITY_AT..STORE_ID_AT].copy_from_slice(&self.capacity.to_le_bytes());
        out[STORE_ID_AT..RESERVED_AT].copy_from_slice(&self.store_id.to_le_bytes());
        let crc = mask_crc(crc32fast::hash(&out[..CRC_AT]));
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header from the start of `buf`. Never panics.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let head = buf.get(..SEGMENT_HEADER_LEN).ok_or(HeaderError::Bad)?;
        if head.get(MAGIC_AT..VERSION_AT) != Some(&SEGMENT_MAGIC[..]) {
            return Err(HeaderError::Bad);
        }
        let stored = le_u32(head, CRC_AT);
        if stored != mask_crc(crc32fast::hash(head.get(..CRC_AT).unwrap_or(&[]))) {
            return Err(HeaderError::Bad);
        }
        // The version is trusted only once the checksum holds, and before anything else.
        let version = le_u16(head, VERSION_AT);
        if version > FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if version == 0
            || usize::from(le_u16(head, HEADER_LEN_AT)) != SEGMENT_HEADER_LEN
            || le_u32(head, FLAGS_AT) != 0
            || le_u32(head, RESERVED_AT) != 0
        {
            return Err(HeaderError::Bad);
        }
        Ok(SegmentHeader {
            version,
            segment_id: le_u64(head, SEGMENT_ID_AT),
            created_at: le_u64(head, CREATED_AT),
            capacity: le_u64(head, CAPACITY_AT),
            store_id: le_u128(head, STORE_ID_AT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            version: FORMAT_VERSION,
            segment_id: 42,
            created_at: 1_700_000_000_000,
            capacity: 1 << 20,
            store_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes;
            b[i] ^= 0x40;
            assert!(SegmentHeader::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    /// docs/FORMAT.md §3.5 shows these bytes.
    #[test]
    fn the_documented_example_header_is_what_encode_writes() {
        let h = SegmentHeader {
            segment_id: 1,
            capacity: 64 << 20,
            ..sample()
        };
        let hex: Vec<String> = h.encode().iter().map(|b| format!("{b:02x}")).collect();
        let expected = "6f 6e 63 65 6c 6f 67 00 04 00 40 00 00 00 00 00 \
                        01 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 \
                        00 00 00 04 00 00 00 00 77 66 55 44 33 22 11 00 \
                        ef cd ab 89 67 45 23 01 00 00 00 00 b7 9c 85 c9";
        assert_eq!(
            hex.join(" "),
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut h = sample();
        h.version = FORMAT_VERSION + 1;
        assert_eq!(
            SegmentHeader::decode(&h.encode()),
            Err(HeaderError::Version(FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn short_or_zero_input_is_bad() {
        assert_eq!(SegmentHeader::decode(&[]), Err(HeaderError::Bad));
        assert_eq!(
            SegmentHeader::decode(&[0u8; SEGMENT_HEADER_LEN]),
            Err(HeaderError::Bad)
        );
    }
}
