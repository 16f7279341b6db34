//! `RecoveryMode::Salvage` on damaged input. The input, checksums fixed up as in
//! `open_dir_crcfix` so that mutations reach the decoder, is segment 1 of a fresh
//! directory; if its header decodes, a header-only segment 2 of the same store follows, so
//! that segment 1 is a sealed-position segment (salvage rewrites those). Must hold: no
//! panic; if salvage opens the directory, it is clean afterwards — a `Strict` open succeeds
//! and holds the same keys — and a key claimed `New` then is still claimed after reopening.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oncelog::format::{encoded_len, SegmentHeader, SEGMENT_HEADER_LEN};
use oncelog::{Options, RecoveryMode, MAX_KEY_LEN, MAX_VALUE_LEN};

fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Recomputes the header's checksum and those of the records that fit, in order.
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
            // Salvage resynchronises past zeros: go on at the next aligned offset.
            pos += 8;
            continue;
        }
        let key_len = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let value_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        if key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN {
            pos += 8;
            continue;
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
    if let Ok(h) = SegmentHeader::decode(&seg) {
        let next = SegmentHeader {
            segment_id: 2,
            capacity: 64 * 1024,
            ..h
        };
        let mut two = next.encode().to_vec();
        two.resize(64 * 1024, 0);
        std::fs::write(dir.path().join("seg-0000000000000002.olog"), &two).expect("write");
    }
    // Small segments: a new segment is allocated in full, and on `/dev/shm` that is memory.
    let options = Options::new()
        .segment_size(oncelog::MIN_SEGMENT_SIZE)
        .stripes(4)
        .background_maintenance(false);
    let salvage = options.clone().recovery_mode(RecoveryMode::Salvage);
    let Ok(store) = salvage.clone().open(dir.path()) else {
        return;
    };
    let keys = store.stats().keys;
    let ttl = Duration::from_secs(3600);
    let claimed = matches!(store.claim("evt_fuzz", ttl), Ok(oncelog::Claim::New));
    if store.close().is_err() {
        return;
    }
    let strict = options.recovery_mode(RecoveryMode::Strict).open(dir.path());
    let store = match strict {
        Ok(s) => s,
        Err(e) => panic!("after a salvage open, a strict open fails: {e:?}"),
    };
    let after = store.stats().keys;
    assert_eq!(after, keys + u64::from(claimed), "keys after salvage, then strict");
    if claimed {
        assert!(store.get("evt_fuzz").expect("get").is_some());
    }
    let _ = store.close();
});

/// A fresh directory, in memory when the machine has `/dev/shm`: opening fsyncs, and on a
/// disk that would be most of each execution.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}
