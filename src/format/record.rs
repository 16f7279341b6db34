//! Records: the unit appended to a segment.
//!
//! ```text
//! offset  size  field
//!      0     4  crc       masked CRC-32 (IEEE) of bytes [4, len): header rest, key, value, padding
//!      4     1  kind      1 = claim, 2 = remove, 3 = seal
//!      5     1  flags     0 in format version 1
//!      6     2  key_len   1..=4096 for claim and remove, 0 for seal
//!      8     4  value_len 0 for claim and remove, 16 for seal
//!     12     4  reserved  0 in format version 1
//!     16     8  time      claim: first seen; remove: removed at; seal: sealed at (ms since epoch)
//!     24     8  expires   claim: expires at; remove: expiry of the removed claim; seal: latest
//!                         expiry of any claim in the segment (ms since epoch)
//!     32     -  key, then value, then zero padding up to a multiple of 8 bytes
//! ```
//!
//! All integers are little-endian.

use super::{align_up, le_u16, le_u32, le_u64, mask_crc, MAX_KEY_LEN, MAX_VALUE_LEN};

/// Bytes before the key.
pub const RECORD_HEADER_LEN: usize = 32;
/// Every record starts at a multiple of this within its segment.
pub const RECORD_ALIGN: usize = 8;

const CRC_AT: usize = 0;
const KIND_AT: usize = CRC_AT + 4;
const FLAGS_AT: usize = KIND_AT + 1;
const KEY_LEN_AT: usize = FLAGS_AT + 1;
const VALUE_LEN_AT: usize = KEY_LEN_AT + 2;
const RESERVED_AT: usize = VALUE_LEN_AT + 4;
const TIME_AT: usize = RESERVED_AT + 4;
const EXPIRES_AT: usize = TIME_AT + 8;
const _: () = assert!(EXPIRES_AT + 8 == RECORD_HEADER_LEN);

/// Payload of a seal record: record count and end of data, 8 bytes each.
const SEAL_VALUE_LEN: usize = 16;
/// Length of a seal record; every segment keeps this much room free for its seal.
pub(crate) const SEAL_LEN: usize = align_up(RECORD_HEADER_LEN + SEAL_VALUE_LEN);

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The key was claimed at `time` until `expires`.
    Claim,
    /// The key was removed at `time`; `expires` is when the removed claim would have expired.
    Remove,
    /// Closes a segment; nothing valid follows it.
    Seal,
}

impl RecordKind {
    /// The `kind` byte on disk; hint files use the same numbers.
    pub(super) fn to_byte(self) -> u8 {
        match self {
            RecordKind::Claim => 1,
            RecordKind::Remove => 2,
            RecordKind::Seal => 3,
        }
    }

    /// The kind a `kind` byte stands for, if any.
    pub(super) fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Claim),
            2 => Some(RecordKind::Remove),
            3 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// The fixed-size part of a decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record says.
    pub kind: RecordKind,
    /// Length of the key in bytes.
    pub key_len: u16,
    /// Length of the value in bytes.
    pub value_len: u32,
    /// First-seen, removal or seal time, ms since the epoch.
    pub time: u64,
    /// Expiry, ms since the epoch.
    pub expires: u64,
}

/// A record decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The header fields.
    pub header: RecordHeader,
    /// The key bytes.
    pub key: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
    /// Bytes the record occupies, padding included: the next record starts this far on.
    pub len: usize,
}

/// What a seal record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    /// Records in the segment before the seal.
    pub records: u64,
    /// Offset of the seal record itself (the end of the data it seals).
    pub data_end: u64,
    /// Latest expiry among the segment's claims, ms since the epoch.
    pub max_expires: u64,
}

impl Decoded<'_> {
    /// The seal's contents, if this is a well-formed seal record.
    pub fn seal(&self) -> Option<SealInfo> {
        if self.header.kind != RecordKind::Seal {
            return None;
        }
        Some(SealInfo {
            records: le_u64(self.value, 0),
            data_end: le_u64(self.value, 8),
            max_expires: self.header.expires,
        })
    }
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Only zero bytes here: the clean end of the data in a pre-allocated segment.
    End,
    /// The record's lengths run past the end of the bytes.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the fields are impossible (unknown kind, bad lengths).
    Malformed,
}

/// Bytes a record with these lengths occupies, padding included.
pub fn encoded_len(key_len: usize, value_len: usize) -> usize {
    align_up(RECORD_HEADER_LEN + key_len + value_len)
}

/// Writes one record into `out`, which must be exactly `encoded_len(key.len(), value.len())`
/// bytes long. Callers validate lengths first; a mismatch is a bug and is caught by the
/// debug assertion (release builds write what fits and the CRC will not verify).
pub(crate) fn encode_record(
    out: &mut [u8],
    kind: RecordKind,
    key: &[u8],
    value: &[u8],
    time: u64,
    expires: u64,
) {
    debug_assert_eq!(out.len(), encoded_len(key.len(), value.len()));
    debug_assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
    out.fill(0);
    put(out, KIND_AT, &[kind.to_byte()]);
    put(out, KEY_LEN_AT, &(key.len() as u16).to_le_bytes());
    put(out, VALUE_LEN_AT, &(value.len() as u32).to_le_bytes());
    put(out, TIME_AT, &time.to_le_bytes());
    put(out, EXPIRES_AT, &expires.to_le_bytes());
    put(out, RECORD_HEADER_LEN, key);
    put(out, RECORD_HEADER_LEN + key.len(), value);
    let crc = mask_crc(crc32fast::hash(out.get(KIND_AT..).unwrap_or(&[])));
    put(out, CRC_AT, &crc.to_le_bytes());
}

/// Encodes a seal record.
pub(crate) fn encode_seal(out: &mut [u8; SEAL_LEN], info: SealInfo, sealed_at: u64) {
    let mut value = [0u8; SEAL_VALUE_LEN];
    put(&mut value, 0, &info.records.to_le_bytes());
    put(&mut value, 8, &info.data_end.to_le_bytes());
    encode_record(
        out,
        RecordKind::Seal,
        &[],
        &value,
        sealed_at,
        info.max_expires,
    );
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Decodes the record at the start of `buf`. Never panics, whatever `buf` holds.
pub fn decode_record(buf: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let Some(head) = buf.get(..RECORD_HEADER_LEN) else {
        return Err(if buf.iter().all(|&b| b == 0) {
            DecodeError::End
        } else {
            DecodeError::Truncated
        });
    };
    if head.iter().all(|&b| b == 0) {
        return Err(DecodeError::End);
    }
    let key_len = le_u16(head, KEY_LEN_AT);
    let value_len = le_u32(head, VALUE_LEN_AT);
    if usize::from(key_len) > MAX_KEY_LEN || value_len as usize > MAX_VALUE_LEN {
        return Err(DecodeError::Malformed);
    }
    let len = encoded_len(usize::from(key_len), value_len as usize);
    let Some(rec) = buf.get(..len) else {
        return Err(DecodeError::Truncated);
    };
    let stored = le_u32(rec, CRC_AT);
    let actual = mask_crc(crc32fast::hash(rec.get(KIND_AT..).unwrap_or(&[])));
    if stored != actual {
        return Err(DecodeError::Checksum);
    }
    let kind = RecordKind::from_byte(head.get(KIND_AT).copied().unwrap_or(0))
        .ok_or(DecodeError::Malformed)?;
    let flags = head.get(FLAGS_AT).copied().unwrap_or(0);
    let reserved = le_u32(head, RESERVED_AT);
    let lengths_ok = match kind {
        RecordKind::Claim | RecordKind::Remove => key_len > 0 && value_len == 0,
        RecordKind::Seal => key_len == 0 && value_len as usize == SEAL_VALUE_LEN,
    };
    let data_end = RECORD_HEADER_LEN + usize::from(key_len) + value_len as usize;
    let padding_zero = rec
        .get(data_end..)
        .is_some_and(|p| p.iter().all(|&b| b == 0));
    if flags != 0 || reserved != 0 || !lengths_ok || !padding_zero {
        return Err(DecodeError::Malformed);
    }
    let key = rec
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + usize::from(key_len))
        .ok_or(DecodeError::Malformed)?;
    let value = rec
        .get(RECORD_HEADER_LEN + usize::from(key_len)..data_end)
        .ok_or(DecodeError::Malformed)?;
    Ok(Decoded {
        header: RecordHeader {
            kind,
            key_len,
            value_len,
            time: le_u64(head, TIME_AT),
            expires: le_u64(head, EXPIRES_AT),
        },
        key,
        value,
        len,
    })
}

/// Reads the fields of a record this process wrote itself (already validated), without
/// recomputing its checksum: the hot path of duplicate detection.
pub(crate) fn peek_trusted(buf: &[u8]) -> Option<(RecordHeader, &[u8])> {
    let head = buf.get(..RECORD_HEADER_LEN)?;
    let kind = RecordKind::from_byte(*head.get(KIND_AT)?)?;
    let key_len = le_u16(head, KEY_LEN_AT);
    let key = buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + usize::from(key_len))?;
    Some((
        RecordHeader {
            kind,
            key_len,
            value_len: le_u32(head, VALUE_LEN_AT),
            time: le_u64(head, TIME_AT),
            expires: le_u64(head, EXPIRES_AT),
        },
        key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: RecordKind, key: &[u8], time: u64, expires: u64) -> Vec<u8> {
        let mut out = vec![0u8; encoded_len(key.len(), 0)];
        encode_record(&mut out, kind, key, &[], time, expires);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = encode(RecordKind::Claim, b"evt_1", 10, 20);
        assert_eq!(bytes.len(), 40);
        let d = decode_record(&bytes).expect("decodes");
        assert_eq!(d.header.kind, RecordKind::Claim);
        assert_eq!(d.key, b"evt_1");
        assert_eq!((d.header.time, d.header.expires), (10, 20));
        assert_eq!(d.len, 40);
        let (h, k) = peek_trusted(&bytes).expect("peeks");
        assert_eq!((h, k), (d.header, d.key));
    }

    #[test]
    fn seal_round_trip() {
        let mut out = [0u8; SEAL_LEN];
        let info = SealInfo {
            records: 7,
            data_end: 4096,
            max_expires: 99,
        };
        encode_seal(&mut out, info, 5);
        let d = decode_record(&out).expect("decodes");
        assert_eq!(d.seal(), Some(info));
    }

    #[test]
    fn zeros_are_the_end_not_a_record() {
        assert_eq!(decode_record(&[0u8; 64]), Err(DecodeError::End));
        assert_eq!(decode_record(&[0u8; 5]), Err(DecodeError::End));
        assert_eq!(decode_record(&[]), Err(DecodeError::End));
        // The masked CRC of a zeroed record body is not zero, so a zeroed CRC field never
        // validates even if the rest of a header were plausible.
        assert_ne!(mask_crc(crc32fast::hash(&[0u8; 36])), 0);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode(RecordKind::Remove, b"some key", 1, 2);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode_record(&b).is_err(),
                    "flip at byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(RecordKind::Claim, b"k", 1, 2);
        for cut in 1..bytes.len() {
            assert!(matches!(
                decode_record(&bytes[..cut]),
                Err(DecodeError::Truncated)
            ));
        }
    }

    #[test]
    fn oversized_lengths_are_rejected_before_reading() {
        let mut bytes = encode(RecordKind::Claim, b"k", 1, 2);
        bytes[KEY_LEN_AT..KEY_LEN_AT + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode_record(&bytes), Err(DecodeError::Malformed));
        let mut bytes = encode(RecordKind::Claim, b"k", 1, 2);
        bytes[VALUE_LEN_AT..VALUE_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_record(&bytes), Err(DecodeError::Malformed));
    }
}
