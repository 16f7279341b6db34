//! The input is written as the only segment file of a fresh directory, which is then
//! opened as a store. Opening may fail (that is what corrupted files should do), but it
//! must never panic; if it opens, a `get`, a `claim` and `close` must not panic either.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

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
