//! Byte-level surgery on a store's files, computed independently of the crate: the
//! format's masked CRC (docs/FORMAT.md §3.3), re-sealing a segment header or a record
//! after an edit, and flipping a byte in place.

use std::path::Path;

/// Bytes of a segment header covered by its checksum; the checksum follows them.
const HEADER_CRC_AT: usize = 60;

/// The format's masked CRC (docs/FORMAT.md §3.3).
pub fn mask(c: u32) -> u32 {
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32 (IEEE), bitwise: slow and obviously right.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The masked CRC of `bytes`, as the format stores it.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    mask(crc32(bytes))
}

/// Recomputes the checksum of the segment header at the start of `bytes` (after an edit
/// of its fields), so that only what was edited is wrong.
pub fn reseal_header(bytes: &mut [u8]) {
    let crc = masked_crc(&bytes[..HEADER_CRC_AT]);
    bytes[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the segment id in the header at the start of `bytes`, with a valid checksum.
pub fn set_segment_id(bytes: &mut [u8], id: u64) {
    bytes[16..24].copy_from_slice(&id.to_le_bytes());
    reseal_header(bytes);
}

/// Sets the format version in the header at the start of `bytes`, with a valid checksum.
pub fn set_format_version(bytes: &mut [u8], version: u16) {
    bytes[8..10].copy_from_slice(&version.to_le_bytes());
    reseal_header(bytes);
}

/// Recomputes the checksum of the record `rec` (its first 4 bytes, over the rest).
pub fn reseal_record(rec: &mut [u8]) {
    let crc = masked_crc(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Flips bits of the byte at `at` of the file at `path` (XOR 0x5a).
pub fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, &bytes).unwrap();
}
