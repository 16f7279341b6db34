//! The input is the bytes of a hint file. It is decoded twice: as given, and with its
//! header and trailer checksums recomputed first, so that mutations also reach the field
//! and entry checks behind the CRCs. Decoding must never panic, whatever the bytes; a hint
//! that decodes re-encodes to the same bytes, and its entries keep the promised invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncelog::format::{
    decode_hint, encode_hint, RecordKind, HINT_HEADER_LEN, HINT_TRAILER_LEN, SEGMENT_HEADER_LEN,
};

/// The format's CRC masking (format/mod.rs, `mask_crc`).
fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Recomputes the header CRC over [0, 60) and the trailer CRC over the bytes between the
/// header and the last 4 bytes, whatever the header's entry count says.
fn fix_crcs(buf: &mut [u8]) {
    if buf.len() < HINT_HEADER_LEN + HINT_TRAILER_LEN {
        return;
    }
    let crc = mask_crc(crc32fast::hash(&buf[..60]));
    buf[60..64].copy_from_slice(&crc.to_le_bytes());
    let body_end = buf.len() - HINT_TRAILER_LEN;
    let crc = mask_crc(crc32fast::hash(&buf[HINT_HEADER_LEN..body_end]));
    buf[body_end..].copy_from_slice(&crc.to_le_bytes());
}

fn check(data: &[u8]) {
    let Ok((header, entries)) = decode_hint(data) else {
        return;
    };
    assert_eq!(entries.len(), header.entries as usize);
    let mut next_free = SEGMENT_HEADER_LEN as u64;
    let mut all = Vec::with_capacity(entries.len());
    for e in entries {
        let offset = u64::from(e.offset);
        assert!(offset >= next_free && offset % 8 == 0);
        assert!(e.len >= 40 && e.len % 8 == 0);
        assert!(offset + u64::from(e.len) <= header.data_end);
        assert!(e.kind != RecordKind::Seal);
        next_free = offset + u64::from(e.len);
        all.push(e);
    }
    assert_eq!(all.len(), header.entries as usize);
    // A hint that decodes re-encodes to the same bytes.
    let mut again = Vec::new();
    encode_hint(&mut again, &header, &all);
    assert_eq!(again, data);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    fix_crcs(&mut fixed);
    check(&fixed);
});
