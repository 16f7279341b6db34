//! Helpers shared by the targets that open stores.
#![allow(dead_code)]

use oncelog::format::{encoded_len, SEGMENT_HEADER_LEN};
use oncelog::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// The format's CRC masking (`mask_crc` in src/format).
fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// What `fix_crcs` does at bytes that cannot start a record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gaps {
    /// Stop: the rest is left as it is (what the default recovery reads).
    Stop,
    /// Go on at the next 8-aligned offset (what salvage's resynchronisation reads).
    Skip,
}

/// Recomputes the header checksum of a segment image and the checksum of every record
/// that fits, walking records in order, so that mutations reach the checks behind the
/// checksums.
pub fn fix_crcs(buf: &mut [u8], gaps: Gaps) {
    if buf.len() < SEGMENT_HEADER_LEN {
        return;
    }
    let crc = mask_crc(crc32fast::hash(&buf[..60]));
    buf[60..64].copy_from_slice(&crc.to_le_bytes());
    let mut pos = SEGMENT_HEADER_LEN;
    while pos + 32 <= buf.len() {
        let head = &buf[pos..pos + 32];
        let key_len = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let value_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        let gap =
            head.iter().all(|&b| b == 0) || key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN;
        if gap {
            match gaps {
                Gaps::Stop => break,
                Gaps::Skip => {
                    pos += 8;
                    continue;
                }
            }
        }
        let len = encoded_len(key_len, value_len);
        let Some(rec) = buf.get_mut(pos..pos + len) else {
            break;
        };
        let crc = mask_crc(crc32fast::hash(&rec[4..]));
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        pos += len;
    }
}

/// A fresh directory, in memory when the machine has `/dev/shm`: opening fsyncs, and on a
/// disk that would be most of each execution.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// Small segments and few stripes: a new segment is allocated in full and the index's
/// stripes up front, and each execution opens a fresh store. What is decoded does not
/// depend on either.
pub fn options() -> oncelog::Options {
    oncelog::Options::new()
        .segment_size(oncelog::MIN_SEGMENT_SIZE)
        .stripes(4)
        .background_maintenance(false)
}
