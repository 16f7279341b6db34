//! `RecoveryMode::Salvage` on damaged input. The input, checksums fixed up as in
//! `open_dir_crcfix` so that mutations reach the decoder, is segment 1 of a fresh
//! directory; if its header decodes, a header-only segment 2 of the same store follows, so
//! that segment 1 is a sealed-position segment (salvage rewrites those). Must hold: no
//! panic; if salvage opens the directory, it is clean afterwards — a `Strict` open succeeds
//! and holds the same keys — and a key claimed `New` then is still claimed after reopening.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oncelog::format::SegmentHeader;
use oncelog::RecoveryMode;

mod common;
use common::{fix_crcs, options, scratch_dir, Gaps};

fuzz_target!(|data: &[u8]| {
    let mut seg = data.to_vec();
    fix_crcs(&mut seg, Gaps::Skip);
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
    let salvage = options().recovery_mode(RecoveryMode::Salvage);
    let Ok(store) = salvage.clone().open(dir.path()) else {
        return;
    };
    let keys = store.stats().keys;
    let ttl = Duration::from_secs(3600);
    let claimed = matches!(store.claim("evt_fuzz", ttl), Ok(oncelog::Claim::New));
    if store.close().is_err() {
        return;
    }
    let strict = options()
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path());
    let store = match strict {
        Ok(s) => s,
        Err(e) => panic!("after a salvage open, a strict open fails: {e:?}"),
    };
    let after = store.stats().keys;
    assert_eq!(
        after,
        keys + u64::from(claimed),
        "keys after salvage, then strict"
    );
    if claimed {
        assert!(store.get("evt_fuzz").expect("get").is_some());
    }
    let _ = store.close();
});
