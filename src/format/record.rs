//! Records: the unit appended to a segment.
//!
//! ```text
//! offset  size  field
//!      0     4  crc       masked CRC-32 (IEEE) of bytes [4, len): header rest, key, value, padding
//!      4     1  kind      1 = claim, 2 = remove, 3 = seal, 4 = lease, 5 = done
//!      5     1  flags     0
//!      6     2  key_len   1..=4096, 0 for seal
//!      8     4  value_len 0 for claim, 16 for seal, >= 24 for lease and done; remove: 16,
//!                         or 0 in segments written before format version 3
//!     12     4  attempt   lease and done: the attempt number (>= 1); 0 for the others
//!     16     8  time      claim: first seen; lease, done: first seen (the chain's first
//!                         attempt); remove: removed at; seal: sealed at (ms since epoch)
//!     24     8  expires   how long the record matters (ms since epoch). claim: its expiry;
//!                         lease, done: until when the record is kept (>= `until` below);
//!                         remove: the `expires` of the record it hides; seal: the latest
//!                         `expires` of any record in the segment
//!     32     -  key, then value, then zero padding up to a multiple of 8 bytes
//! ```
//!
//! The value of a lease or done record (a key's two-phase state):
//!
//! ```text
//! offset  size  field
//!      0     8  token     the attempt's fencing token (0: the attempt was abandoned)
//!      8     8  until     lease: the lease's deadline; done: when the outcome expires (ms)
//!     16     1  fp_len    0..=64: bytes of payload fingerprint
//!     17     7  chain     the id of the segment the key's chain of lease and done records
//!                         began in, or below it (56 bits; 0: not known, as in every record
//!                         written before format version 4)
//!     24     -  fingerprint (fp_len bytes), then (done only) the outcome
//! ```
//!
//! The value of a remove record (format version 3; older removes have none):
//!
//! ```text
//! offset  size  field
//!      0     8  from      the oldest segment id that may hold a record this remove hides
//!      8     8  to        the newest such segment id (the one its key's entry pointed into)
//! ```
//!
//! All integers are little-endian. Kinds 4 and 5 were added after the first release of
//! format version 1; directories written before them contain none and read unchanged.

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
const ATTEMPT_AT: usize = VALUE_LEN_AT + 4;
const TIME_AT: usize = ATTEMPT_AT + 4;
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
    /// Its value says which segments may hold the records it hides (see [`Hides`]).
    Remove,
    /// Closes a segment; nothing valid follows it.
    Seal,
    /// The key is held by an attempt until the lease's deadline (`begin`, `extend`,
    /// `abandon`); after the deadline it is free, and the record only remembers the attempt.
    Lease,
    /// The key's work is done, with its outcome, until `until` (`complete`, or `claim` of a
    /// key that has a lease history).
    Done,
}

impl RecordKind {
    /// The `kind` byte on disk; hint files use the same numbers.
    pub(super) fn to_byte(self) -> u8 {
        match self {
            RecordKind::Claim => 1,
            RecordKind::Remove => 2,
            RecordKind::Seal => 3,
            RecordKind::Lease => 4,
            RecordKind::Done => 5,
        }
    }

    /// The kind a `kind` byte stands for, if any.
    pub(super) fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Claim),
            2 => Some(RecordKind::Remove),
            3 => Some(RecordKind::Seal),
            4 => Some(RecordKind::Lease),
            5 => Some(RecordKind::Done),
            _ => None,
        }
    }

    /// Whether a record of this kind states a key's state (and so can be what the key's
    /// index entry points at): claim, lease, done. Removes and seals cannot.
    pub fn is_state(self) -> bool {
        matches!(
            self,
            RecordKind::Claim | RecordKind::Lease | RecordKind::Done
        )
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
    /// Lease and done records: the attempt number; 0 for the other kinds.
    pub attempt: u32,
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
    /// What a remove record hides, if this is one.
    pub fn hides(&self) -> Option<Hides> {
        if self.header.kind != RecordKind::Remove {
            return None;
        }
        Hides::decode(self.value)
    }

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

/// The segments that may hold records a remove record hides: those with ids in
/// `from..=to`. Every record of the key that the remove hides lies in one of them, so once
/// none of them is left (deleted for good), the remove hides nothing (see `maintain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hides {
    /// The oldest segment id that may hold a hidden record.
    pub from: u64,
    /// The newest one.
    pub to: u64,
}

impl Hides {
    /// What a remove without a value (written before format version 3) hides: any record
    /// before it.
    pub const ANY: Hides = Hides {
        from: 0,
        to: u64::MAX,
    };

    /// The encoded value of a remove record.
    pub(crate) fn encode(self) -> [u8; REMOVE_VALUE_LEN] {
        let mut value = [0u8; REMOVE_VALUE_LEN];
        put(&mut value, 0, &self.from.to_le_bytes());
        put(&mut value, 8, &self.to.to_le_bytes());
        value
    }

    /// Decodes a remove record's value: `ANY` if empty, `None` if malformed.
    pub(crate) fn decode(value: &[u8]) -> Option<Hides> {
        match value.len() {
            0 => Some(Hides::ANY),
            REMOVE_VALUE_LEN => {
                let h = Hides {
                    from: le_u64(value, 0),
                    to: le_u64(value, 8),
                };
                (h.from <= h.to).then_some(h)
            }
            _ => None,
        }
    }

    /// The smallest range that covers both.
    pub(crate) fn union(self, other: Hides) -> Hides {
        Hides {
            from: self.from.min(other.from),
            to: self.to.max(other.to),
        }
    }
}

/// Payload of a remove record (format version 3): the `Hides` range, 8 bytes each end.
pub(crate) const REMOVE_VALUE_LEN: usize = 16;

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
    attempt: u32,
    time: u64,
    expires: u64,
) {
    debug_assert_eq!(out.len(), encoded_len(key.len(), value.len()));
    debug_assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
    out.fill(0);
    put(out, KIND_AT, &[kind.to_byte()]);
    put(out, KEY_LEN_AT, &(key.len() as u16).to_le_bytes());
    put(out, VALUE_LEN_AT, &(value.len() as u32).to_le_bytes());
    put(out, ATTEMPT_AT, &attempt.to_le_bytes());
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
        0,
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
    let attempt = le_u32(head, ATTEMPT_AT);
    let data_end = RECORD_HEADER_LEN + usize::from(key_len) + value_len as usize;
    let key = rec
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + usize::from(key_len))
        .ok_or(DecodeError::Malformed)?;
    let value = rec
        .get(RECORD_HEADER_LEN + usize::from(key_len)..data_end)
        .ok_or(DecodeError::Malformed)?;
    let fields_ok = match kind {
        RecordKind::Claim => key_len > 0 && value_len == 0 && attempt == 0,
        RecordKind::Remove => key_len > 0 && attempt == 0 && Hides::decode(value).is_some(),
        RecordKind::Seal => key_len == 0 && value_len as usize == SEAL_VALUE_LEN && attempt == 0,
        RecordKind::Lease | RecordKind::Done => {
            let expires = le_u64(head, EXPIRES_AT);
            key_len > 0
                && attempt > 0
                && decode_state(value).is_some_and(|s| {
                    s.until <= expires && (kind == RecordKind::Done || s.outcome.is_empty())
                })
        }
    };
    let padding_zero = rec
        .get(data_end..)
        .is_some_and(|p| p.iter().all(|&b| b == 0));
    if flags != 0 || !fields_ok || !padding_zero {
        return Err(DecodeError::Malformed);
    }
    Ok(Decoded {
        header: RecordHeader {
            kind,
            key_len,
            value_len,
            attempt,
            time: le_u64(head, TIME_AT),
            expires: le_u64(head, EXPIRES_AT),
        },
        key,
        value,
        len,
    })
}

/// How many bytes from a trusted record's start `peek_trusted` needs to see its header and
/// key, and its value too if `with_value`: read from the header alone (`head` holds at least
/// `RECORD_HEADER_LEN` bytes), so that a reader can take exactly that much.
pub(crate) fn trusted_span(head: &[u8], with_value: bool) -> Option<usize> {
    let head = head.get(..RECORD_HEADER_LEN)?;
    let key_len = usize::from(le_u16(head, KEY_LEN_AT));
    let value_len = if with_value {
        le_u32(head, VALUE_LEN_AT) as usize
    } else {
        0
    };
    Some(RECORD_HEADER_LEN + key_len + value_len)
}

/// Reads the fields of a record this process wrote itself (already validated), without
/// recomputing its checksum: the hot path of duplicate detection. `buf` holds at least the
/// header and key; the value, if `buf` holds it too, is returned (empty otherwise).
pub(crate) fn peek_trusted(buf: &[u8]) -> Option<(RecordHeader, &[u8], &[u8])> {
    let head = buf.get(..RECORD_HEADER_LEN)?;
    let kind = RecordKind::from_byte(*head.get(KIND_AT)?)?;
    let key_len = le_u16(head, KEY_LEN_AT);
    let value_len = le_u32(head, VALUE_LEN_AT);
    let key_end = RECORD_HEADER_LEN + usize::from(key_len);
    let key = buf.get(RECORD_HEADER_LEN..key_end)?;
    let value = buf
        .get(key_end..key_end + value_len as usize)
        .unwrap_or(&[]);
    Some((
        RecordHeader {
            kind,
            key_len,
            value_len,
            attempt: le_u32(head, ATTEMPT_AT),
            time: le_u64(head, TIME_AT),
            expires: le_u64(head, EXPIRES_AT),
        },
        key,
        value,
    ))
}

/// Bytes before the fingerprint in a lease or done record's value.
pub const STATE_PREFIX_LEN: usize = 24;

/// The largest payload fingerprint, in bytes (a SHA-256 or SHA-512 digest fits).
pub const MAX_FINGERPRINT_LEN: usize = 64;

/// The value of a lease or done record, decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateValue<'a> {
    /// The attempt's fencing token; 0 once the attempt was abandoned.
    pub token: u64,
    /// Lease: its deadline; done: when the outcome expires (ms since the epoch).
    pub until: u64,
    /// The payload fingerprint given to `begin`, if any (empty if none).
    pub fingerprint: &'a [u8],
    /// The stored outcome (done records; empty for leases).
    pub outcome: &'a [u8],
    /// The id of the segment the key's chain of lease and done records began in (the
    /// records since it last had no unexpired state), or a lower one; 0 if not known. A
    /// remove of the key hides records in that segment and the ones after it only.
    pub chain: u64,
}

/// The first format version whose lease and done records hold `StateValue::chain` (zero
/// before).
pub const CHAIN_VERSION: u16 = 4;

/// The largest `StateValue::chain` the 7 bytes hold; a larger id is stored as 0 (not
/// known), which only keeps a tombstone longer.
const MAX_CHAIN: u64 = (1 << 56) - 1;

/// Decodes the value of a lease or done record; `None` if it is malformed.
pub fn decode_state(value: &[u8]) -> Option<StateValue<'_>> {
    let prefix = value.get(..STATE_PREFIX_LEN)?;
    let fp_len = usize::from(*prefix.get(16)?);
    if fp_len > MAX_FINGERPRINT_LEN {
        return None;
    }
    let mut chain = [0u8; 8];
    chain[..7].copy_from_slice(prefix.get(17..24)?);
    let fingerprint = value.get(STATE_PREFIX_LEN..STATE_PREFIX_LEN + fp_len)?;
    let outcome = value.get(STATE_PREFIX_LEN + fp_len..)?;
    Some(StateValue {
        token: le_u64(prefix, 0),
        until: le_u64(prefix, 8),
        fingerprint,
        outcome,
        chain: u64::from_le_bytes(chain),
    })
}

/// Appends the encoded value of a lease or done record to `out`. The caller checked the
/// fingerprint's length (at most `MAX_FINGERPRINT_LEN`; longer ones are cut).
pub(crate) fn encode_state(out: &mut Vec<u8>, s: &StateValue<'_>) {
    let fp = s
        .fingerprint
        .get(..s.fingerprint.len().min(MAX_FINGERPRINT_LEN))
        .unwrap_or(&[]);
    out.extend_from_slice(&s.token.to_le_bytes());
    out.extend_from_slice(&s.until.to_le_bytes());
    out.push(fp.len() as u8);
    let chain = if s.chain <= MAX_CHAIN { s.chain } else { 0 };
    out.extend_from_slice(&chain.to_le_bytes()[..7]);
    out.extend_from_slice(fp);
    out.extend_from_slice(s.outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: RecordKind, key: &[u8], time: u64, expires: u64) -> Vec<u8> {
        let mut out = vec![0u8; encoded_len(key.len(), 0)];
        encode_record(&mut out, kind, key, &[], 0, time, expires);
        out
    }

    fn encode_state_record(kind: RecordKind, s: &StateValue<'_>, expires: u64) -> Vec<u8> {
        let mut value = Vec::new();
        encode_state(&mut value, s);
        let mut out = vec![0u8; encoded_len(3, value.len())];
        encode_record(&mut out, kind, b"key", &value, 2, 10, expires);
        out
    }

    fn encode_remove(value: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; encoded_len(3, value.len())];
        encode_record(&mut out, RecordKind::Remove, b"key", value, 0, 10, 20);
        out
    }

    #[test]
    fn a_remove_says_what_it_hides_and_an_old_one_hides_anything() {
        let hides = Hides { from: 3, to: 9 };
        let bytes = encode_remove(&hides.encode());
        assert_eq!(bytes.len(), 56);
        let d = decode_record(&bytes).unwrap();
        assert_eq!(
            (d.header.kind, d.hides()),
            (RecordKind::Remove, Some(hides))
        );
        let old = encode_remove(&[]);
        assert_eq!(decode_record(&old).unwrap().hides(), Some(Hides::ANY));
        // Only removes hide anything.
        let claim = encode(RecordKind::Claim, b"key", 10, 20);
        assert_eq!(decode_record(&claim).unwrap().hides(), None);
    }

    #[test]
    fn a_remove_with_a_wrong_value_is_malformed() {
        let backwards = Hides { from: 9, to: 3 }.encode();
        assert_eq!(
            decode_record(&encode_remove(&backwards)),
            Err(DecodeError::Malformed)
        );
        for len in [1, 8, 15, 17, 24] {
            let bytes = encode_remove(&vec![0u8; len]);
            assert_eq!(decode_record(&bytes), Err(DecodeError::Malformed), "{len}");
        }
        let same = Hides { from: 4, to: 4 };
        assert!(decode_record(&encode_remove(&same.encode())).is_ok());
    }

    #[test]
    fn a_trusted_span_covers_exactly_what_peek_reads() {
        let s = StateValue {
            token: 7,
            until: 500,
            fingerprint: b"fp",
            outcome: b"out",
            chain: 0,
        };
        let bytes = encode_state_record(RecordKind::Done, &s, 900);
        let key_only = trusted_span(&bytes, false).expect("span");
        let whole = trusted_span(&bytes, true).expect("span");
        assert_eq!(key_only, RECORD_HEADER_LEN + 3);
        let (h, key, value) = peek_trusted(&bytes[..whole]).expect("peeks");
        assert_eq!((key, h.value_len as usize), (&b"key"[..], value.len()));
        assert_eq!(whole, key_only + value.len());
        assert_eq!(decode_state(value), Some(s));
        assert_eq!(trusted_span(&bytes[..RECORD_HEADER_LEN - 1], true), None);
    }

    #[test]
    fn state_records_round_trip() {
        let s = StateValue {
            token: 0xfeed,
            until: 500,
            fingerprint: b"fp",
            outcome: b"shipped",
            chain: 0x00ab_cdef_0123_4567,
        };
        let bytes = encode_state_record(RecordKind::Done, &s, 900);
        let d = decode_record(&bytes).expect("decodes");
        assert_eq!(d.header.kind, RecordKind::Done);
        assert_eq!(
            (d.header.attempt, d.header.time, d.header.expires),
            (2, 10, 900)
        );
        assert_eq!(decode_state(d.value), Some(s));
        let (h, k, v) = peek_trusted(&bytes).expect("peeks");
        assert_eq!((h, k, v), (d.header, d.key, d.value));
        for bit in 0..8 * bytes.len() {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&b).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn a_chain_too_large_for_its_bytes_is_stored_as_not_known() {
        let s = StateValue {
            token: 1,
            until: 5,
            fingerprint: b"",
            outcome: b"",
            chain: 1 << 56,
        };
        let mut value = Vec::new();
        encode_state(&mut value, &s);
        assert_eq!(decode_state(&value).map(|d| d.chain), Some(0));
        let largest = StateValue {
            chain: MAX_CHAIN,
            ..s
        };
        value.clear();
        encode_state(&mut value, &largest);
        assert_eq!(decode_state(&value).map(|d| d.chain), Some(MAX_CHAIN));
    }

    #[test]
    fn impossible_state_records_are_malformed_even_with_a_good_crc() {
        let lease =
            |s: &StateValue<'_>, expires| encode_state_record(RecordKind::Lease, s, expires);
        let ok = StateValue {
            token: 1,
            until: 500,
            fingerprint: b"",
            outcome: b"",
            chain: 7,
        };
        assert!(decode_record(&lease(&ok, 500)).is_ok());
        // Kept for less time than the state lasts.
        assert_eq!(decode_record(&lease(&ok, 499)), Err(DecodeError::Malformed));
        // A lease with an outcome.
        let with_outcome = StateValue {
            outcome: b"x",
            ..ok
        };
        assert_eq!(
            decode_record(&lease(&with_outcome, 500)),
            Err(DecodeError::Malformed)
        );
        // Attempt 0, and a claim with an attempt.
        let mut value = Vec::new();
        encode_state(&mut value, &ok);
        let mut out = vec![0u8; encoded_len(1, value.len())];
        encode_record(&mut out, RecordKind::Lease, b"k", &value, 0, 1, 600);
        assert_eq!(decode_record(&out), Err(DecodeError::Malformed));
        let mut out = vec![0u8; encoded_len(1, 0)];
        encode_record(&mut out, RecordKind::Claim, b"k", &[], 3, 1, 600);
        assert_eq!(decode_record(&out), Err(DecodeError::Malformed));
        // A value too short for its prefix, or a fingerprint length past the value.
        assert_eq!(decode_state(&[0u8; 23]), None);
        let mut v = vec![0u8; 24];
        v[16] = 1;
        assert_eq!(decode_state(&v), None);
        v[16] = 65;
        v.resize(24 + 65, 0);
        assert_eq!(decode_state(&v), None);
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
        let (h, k, v) = peek_trusted(&bytes).expect("peeks");
        assert_eq!((h, k, v), (d.header, d.key, d.value));
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
