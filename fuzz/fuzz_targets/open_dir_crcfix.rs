//! Like `open_dir`, but before writing the segment the header checksum and the checksum of
//! every record that fits are recomputed, so that mutations reach the checks behind the
//! CRCs (header fields, record kinds and lengths, seals, the capacity) instead of stopping
//! at a checksum mismatch. Never panics; and a key claimed `New` in a store that opened must
//! still be claimed after `close` and a second open.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

mod common;
use common::{fix_crcs, options, scratch_dir, Gaps};

fuzz_target!(|data: &[u8]| {
    let mut seg = data.to_vec();
    fix_crcs(&mut seg, Gaps::Stop);
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
        let store = options()
            .open(dir.path())
            .expect("reopen after a clean close");
        assert!(
            store.get("evt_fuzz").expect("get").is_some(),
            "a key claimed New before a clean close is not claimed after reopening"
        );
        let _ = store.close();
    }
});
