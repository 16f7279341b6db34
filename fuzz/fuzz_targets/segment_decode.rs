//! The input is the bytes of a segment file: decode its header, then walk its records
//! the way recovery does. Decoding must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncelog::format::{decode_record, RecordKind, SegmentHeader, SEGMENT_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SegmentHeader::decode(data) {
        // A header that decodes re-encodes to the same bytes.
        assert_eq!(&h.encode()[..], &data[..SEGMENT_HEADER_LEN]);
        std::hint::black_box((
            h.version,
            h.segment_id,
            h.created_at,
            h.capacity,
            h.store_id,
        ));
    }
    let mut pos = SEGMENT_HEADER_LEN;
    while let Some(rest) = data.get(pos..) {
        let Ok(rec) = decode_record(rest) else { break };
        // Touch every field; the reported lengths must agree with the slices.
        assert!(rec.len > 0 && rec.len <= rest.len());
        assert_eq!(rec.key.len(), usize::from(rec.header.key_len));
        assert_eq!(rec.value.len(), rec.header.value_len as usize);
        // A remove that decodes says what it hides, as a range.
        let hides = rec.hides();
        assert_eq!(hides.is_some(), rec.header.kind == RecordKind::Remove);
        assert!(hides.is_none_or(|h| h.from <= h.to));
        std::hint::black_box((
            rec.header.kind,
            rec.header.time,
            rec.header.expires,
            rec.key,
            rec.value,
            rec.seal(),
        ));
        pos += rec.len;
    }
});
