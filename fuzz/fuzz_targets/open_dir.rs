//! The input is written as the only segment file of a fresh directory, which is then
//! opened as a store. Opening may fail (that is what corrupted files should do), but it
//! must never panic; if it opens, a `get`, a `claim` and `close` must not panic either.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

mod common;
use common::{options, scratch_dir};

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir();
    std::fs::write(dir.path().join("seg-0000000000000001.olog"), data).expect("write segment");
    if let Ok(store) = options().open(dir.path()) {
        let _ = store.get("evt_fuzz");
        let _ = store.claim("evt_fuzz", Duration::from_secs(60));
        let _ = store.get("evt_fuzz");
        let _ = store.close();
    }
});
