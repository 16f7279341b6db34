//! The on-disk format: segment headers and records, and hint files. `docs/FORMAT.md` is the
//! prose version of this module; keep the two in step.
//!
//! Decoding never panics and never allocates from a length it has not checked: every
//! decoder takes a byte slice and returns a typed error for anything it does not accept.

mod hint;
mod record;
mod segment;

// Public (but hidden) only so that the fuzz crate can reach the hint codec.
#[doc(hidden)]
pub use hint::{
    decode_hint, encode_hint, HintEntries, HintEntry, HintError, HintHeader, HintWriter,
    HINT_ENTRY_LEN, HINT_HEADER_LEN, HINT_MAGIC, HINT_TRAILER_LEN, HINT_VERSION,
};
pub use record::{
    decode_record, decode_state, encoded_len, DecodeError, Decoded, Hides, RecordHeader,
    RecordKind, SealInfo, StateValue, CHAIN_VERSION, MAX_FINGERPRINT_LEN, RECORD_ALIGN,
    RECORD_HEADER_LEN, STATE_PREFIX_LEN,
};
pub(crate) use record::{
    encode_record, encode_seal, encode_state, peek_trusted, trusted_span, REMOVE_VALUE_LEN,
    SEAL_LEN,
};
pub use segment::{HeaderError, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};

/// The largest key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// The largest record payload, in bytes.
pub const MAX_VALUE_LEN: usize = 32 * 1024;

/// The largest outcome `complete` stores, in bytes.
pub const MAX_OUTCOME_LEN: usize = 16 * 1024;
const _: () = assert!(STATE_PREFIX_LEN + MAX_FINGERPRINT_LEN + MAX_OUTCOME_LEN <= MAX_VALUE_LEN);

/// The largest possible record, padding included.
pub const MAX_RECORD_LEN: usize = align_up(RECORD_HEADER_LEN + MAX_KEY_LEN + MAX_VALUE_LEN);

/// Masks a CRC so that a run of zero bytes, or a CRC stored next to the data it covers,
/// does not validate by accident (the LevelDB/sled trick).
pub(crate) fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Rounds `n` up to the record alignment.
pub const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Little-endian field readers over a slice that the caller has length-checked. They
/// return 0 rather than panic if that check was wrong, so a bug shows as a decode error.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

pub(crate) fn le_u128(b: &[u8], at: usize) -> u128 {
    b.get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u128::from_le_bytes)
}
