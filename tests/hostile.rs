//! Hostile input at the API and in the directory, around the edges that `tests/api.rs`,
//! `tests/lease.rs` and `tests/recovery.rs` leave.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::{clock, key, opts, TTL};
use oncelog::{Begin, Error, ManualClock, Options, RecoveryMode, Store, Ticket};

const LEASE: Duration = Duration::from_secs(30);

fn o(clock: &ManualClock) -> Options {
    opts(clock).background_maintenance(false)
}

fn acquire(store: &Store, key: impl AsRef<[u8]>) -> Ticket {
    match store.begin(key, LEASE).unwrap() {
        Begin::Acquired(t) => t,
        other => panic!("{other:?}"),
    }
}

/// Found by this file: index entries keep a coarse expiry in 32-bit seconds, which ends in
/// February 2106; once the clock was past it, every entry whose coarse expiry had saturated
/// counted as expired, and the sweep dropped live claims (a duplicate answered `New`).
#[test]
fn a_clock_past_2106_does_not_sweep_live_claims() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) + 1000));
    let store = o(&clock).open(dir.path()).unwrap();
    let year = Duration::from_secs(365 * 86_400);
    assert!(store.claim("k", year).unwrap().is_new());
    let t = acquire(&store, "l");
    store.complete(&t, b"out", year).unwrap();
    store.compact().unwrap();
    assert!(
        !store.claim("k", year).unwrap().is_new(),
        "a live claim was swept"
    );
    assert_eq!(store.stats().expired_unswept, 0);
    assert!(matches!(store.begin("l", LEASE).unwrap(), Begin::Done(_)));
    clock.advance(year);
    assert_eq!(store.get("k").unwrap(), None);
    store.compact().unwrap();
    assert!(store.claim("k", year).unwrap().is_new());
}

/// A directory with 3000 claims (keys 0..3000) in several segments.
fn filled(dir: &Path, clock: &ManualClock) {
    let store = o(clock).open(dir).unwrap();
    for i in 0..3_000 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
}

fn has_all(store: &Store) {
    for i in (0..3_000).step_by(97) {
        assert!(store.get(key(i)).unwrap().is_some(), "key {i}");
    }
}

/// Makes a FIFO at `path`.
///
/// By `mkfifo(3)`, not the `mkfifo` command: a child process forked while another test's
/// store is open holds that store's `LOCK` until it execs, and a reopen in that window
/// would be refused as `Locked`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `f` (which may open the FIFO at `fifo` for reading) in a thread, and opens the
/// FIFO for writing until `f` has returned: so a reader that blocks in `open(2)` is let go
/// instead of hanging the test, and `f`'s result shows what it did.
fn unblocking<T: Send + 'static>(fifo: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::unix::fs::OpenOptionsExt;
    let h = std::thread::spawn(f);
    let mut writers = Vec::new();
    while !h.is_finished() {
        // Fails (ENXIO) while nobody is reading; lets a blocked reader go once one is.
        if let Ok(w) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            writers.push(w);
        }
        std::thread::yield_now();
    }
    h.join().unwrap()
}

/// Found by this file: `open` opened a FIFO with a segment name to read its header, and
/// blocked for ever; a FIFO with a hint's name blocked it too.
#[test]
fn a_fifo_named_like_a_segment_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    filled(dir.path(), &clock);
    // As the first segment (opened read-only) and, in another directory, as the newest.
    let first = dir.path().join("seg-0000000000000000.olog");
    mkfifo(&first);
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Strict,
        RecoveryMode::Salvage,
    ] {
        let (d, c) = (dir.path().to_path_buf(), clock.clone());
        let got = unblocking(&first, move || o(&c).recovery_mode(mode).open(d).map(drop));
        match got {
            Err(Error::Io { op, path, source }) => {
                assert_eq!((op, &path), ("open segment", &first), "{mode:?}");
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{mode:?}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
    }
    std::fs::remove_file(&first).unwrap();
    let newest = dir.path().join("seg-00000000000000ff.olog");
    mkfifo(&newest);
    let (d, c) = (dir.path().to_path_buf(), clock.clone());
    let got = unblocking(&newest, move || o(&c).open(d).map(drop));
    assert!(
        matches!(&got, Err(Error::Io { path, .. }) if *path == newest),
        "{got:?}"
    );
    std::fs::remove_file(&newest).unwrap();
    // A FIFO with a hint's name is not read (the segment is scanned) and left alone.
    let store = o(&clock).open(dir.path()).unwrap();
    store.compact().unwrap();
    store.close().unwrap();
    let hint = dir.path().join("seg-0000000000000001.hint");
    std::fs::remove_file(&hint).unwrap();
    mkfifo(&hint);
    let tmp = dir.path().join("seg-0000000000000002.hint.tmp");
    mkfifo(&tmp);
    let (d, c) = (dir.path().to_path_buf(), clock.clone());
    let hinted = unblocking(&hint, move || {
        let store = o(&c).open(d).unwrap();
        has_all(&store);
        store.stats().recovery_hinted_segments
    });
    let segments = common::segments(dir.path()).len();
    assert_eq!(
        hinted as usize,
        segments - 2,
        "all but the newest and the FIFO's"
    );
    for f in [&hint, &tmp] {
        assert!(f.symlink_metadata().unwrap().file_type().is_fifo(), "{f:?}");
    }
}

#[test]
fn a_directory_or_broken_link_named_like_a_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    filled(dir.path(), &clock);
    let name = dir.path().join("seg-0000000000000000.olog");
    // (Opened in place: a refused open changes nothing.)
    let refused = |what: &str| {
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Strict,
            RecoveryMode::Salvage,
        ] {
            let got = o(&clock).recovery_mode(mode).open(dir.path());
            assert!(
                matches!(&got, Err(Error::Io { path, .. }) if *path == name),
                "{what}, {mode:?}: {:?}",
                got.map(drop)
            );
        }
    };
    std::fs::create_dir(&name).unwrap();
    refused("a directory");
    std::fs::remove_dir(&name).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), &name).unwrap();
    refused("a broken link");
    // A link to a segment is read as the segment.
    std::fs::remove_file(&name).unwrap();
    let first = dir.path().join("seg-0000000000000001.olog");
    let moved = tempfile::tempdir().unwrap();
    let target = moved.path().join("one.olog");
    std::fs::rename(&first, &target).unwrap();
    std::os::unix::fs::symlink(&target, &first).unwrap();
    let store = o(&clock).open(dir.path()).unwrap();
    has_all(&store);
    // Temporaries that are directories are not ours: left alone, not an error.
    drop(store);
    let tmp_dir = dir.path().join("seg-0000000000000009.olog.tmp");
    std::fs::create_dir(&tmp_dir).unwrap();
    let store = o(&clock).open(dir.path()).unwrap();
    has_all(&store);
    assert!(tmp_dir.is_dir());
}
