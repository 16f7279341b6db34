//! Like `open_dir`, but before writing the segment the header checksum and the checksum of
//! every record that fits are recomputed, so that mutations reach the checks behind the
//! CRCs (header fields, record kinds and lengths, seals, the capacity) instead of stopping
//! at a checksum mismatch. Never panics; and a key claimed `New` in a store that opened must
//! still be claimed after `close` and a second open.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oncelog::format::{encoded_len, SEGMENT_HEADER_LEN};
use oncelog::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// The format's CRC masking (format/mod.rs, `mask_crc`).
fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn fix_crcs(buf: &mut [u8]) {
    if buf.len() < SEGMENT_HEADER_LEN {
        return;
    }
    let crc = mask_crc(crc32fast::hash(&buf[..60]));
    buf[60..64].copy_from_slice(&crc.to_le_bytes());
    let mut pos = SEGMENT_HEADER_LEN;
    while pos + 32 <= buf.len() {
        let head = &buf[pos..pos + 32];
        if head.iter().all(|&b| b == 0) {
            break;
        }
        let key_len = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let value_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        if key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN {
            break;
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

fuzz_target!(|data: &[u8]| {
    let mut seg = data.to_vec();
    fix_crcs(&mut seg);
    let dir = scratch_dir();
    std::fs::write(dir.path().join("seg-0000000000000001.olog"), &seg).expect("write segment");
    let ttl = Duration::from_secs(3600);
    let Ok(store) = options().open(dir.path()) else {
        return;
    };
    let _ = store.get("evt_fuzz");
    let claimed = matches!(store.claim("evt_fuzz", ttl), Ok(oncelog::Claim::New));
    let closed = store.close().is_ok();
    if claimed && closed {
        let store = options().open(dir.path()).expect("reopen after a clean close");
        assert!(
            store.get("evt_fuzz").expect("get").is_some(),
            "a key claimed New before a clean close is not claimed after reopening"
        );
        let _ = store.close();
    }
});

/// A fresh directory, in memory when the machine has `/dev/shm`: opening fsyncs, and on a
/// disk that would be most of each execution.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// Small segments and few stripes: a new segment is allocated in full and the index's
/// stripes up front, and each execution opens a fresh store. What is decoded does not
/// depend on either.
fn options() -> oncelog::Options {
    oncelog::Options::new()
        .segment_size(oncelog::MIN_SEGMENT_SIZE)
        .stripes(4)
        .background_maintenance(false)
}
