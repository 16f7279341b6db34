//! Hostile input at the API and in the directory, around the edges that `tests/api.rs`,
//! `tests/lease.rs` and `tests/recovery.rs` leave: every key length around the limit for
//! every operation, keys of any bytes, TTLs that cannot be represented for every operation
//! that takes one, clocks set back past the records, before the Unix epoch and far ahead,
//! fingerprints and outcomes around their limits, foreign and odd files in the directory,
//! and options at their extremes. Each gets a clear error or its documented behaviour,
//! never a panic, a hang or a changed answer (invariant 5).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::segfile::set_segment_id;
use common::{acquire, clock, copy_dir, key, ms, opts_no_bg, t0, LEASE, TTL};
use oncelog::{
    Begin, Claim, CorruptionKind, Durability, Error, ManualClock, Options, RecoveryMode, Store,
    MAX_FINGERPRINT_LEN, MAX_KEY_LEN, MAX_OUTCOME_LEN, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};

/// The latest expiry the format holds: the last millisecond of year 9999 (FORMAT.md §3.1).
const MAX_EXPIRES_MS: u64 = 253_402_300_799_999;

#[test]
fn every_key_length_around_the_limit_for_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let lens = [
        0,
        1,
        2,
        MAX_KEY_LEN - 2,
        MAX_KEY_LEN - 1,
        MAX_KEY_LEN,
        MAX_KEY_LEN + 1,
        MAX_KEY_LEN + 2,
    ];
    // Distinct keys per operation and length: `c` claimed, `b` begun, `m` by claim_many.
    let k = |tag: u8, len: usize| {
        let mut v = vec![tag; len];
        if let Some(last) = v.get_mut(1..).and_then(|r| r.last_mut()) {
            *last = b'0' + (len % 10) as u8;
        }
        v
    };
    let fp = [7u8; 16];
    for len in lens {
        let valid = (1..=MAX_KEY_LEN).contains(&len);
        let bad = |r: Result<(), Error>| match r {
            Err(Error::InvalidKey { len: l, max }) => {
                assert_eq!((l, max), (len, MAX_KEY_LEN));
                false
            }
            Err(other) => panic!("len {len}: {other:?}"),
            Ok(()) => true,
        };
        assert_eq!(bad(store.claim(k(b'c', len), TTL).map(|_| ())), valid);
        assert_eq!(
            bad(store.claim_many(&[k(b'm', len)], TTL).map(|_| ())),
            valid
        );
        assert_eq!(bad(store.get(k(b'g', len)).map(|_| ())), valid);
        assert_eq!(bad(store.remove(k(b'g', len)).map(|_| ())), valid);
        let begun = store.begin(k(b'b', len), LEASE);
        if let Ok(Begin::Acquired(t)) = &begun {
            store.complete(t, b"done", TTL).unwrap();
        }
        assert_eq!(bad(begun.map(|_| ())), valid);
        let fingerprinted = store.begin_with_fingerprint(k(b'f', len), LEASE, &fp);
        assert_eq!(bad(fingerprinted.map(|_| ())), valid);
    }
    // The valid ones are kept across a reopen, a compaction and a reopen from hints.
    let check = |store: &Store, when: &str| {
        for len in lens
            .iter()
            .copied()
            .filter(|l| (1..=MAX_KEY_LEN).contains(l))
        {
            for tag in [b'c', b'm', b'b', b'f'] {
                assert!(
                    store.get(k(tag, len)).unwrap().is_some(),
                    "{when}: {} of {len}",
                    tag as char
                );
            }
            assert_eq!(store.get(k(b'g', len)).unwrap(), None);
        }
    };
    check(&store, "open");
    for i in 0..2_000 {
        assert!(store
            .claim(key(i), Duration::from_secs(1))
            .unwrap()
            .is_new());
    }
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    check(&store, "reopened");
    clock.advance(Duration::from_secs(2));
    assert!(store.compact().unwrap().hints_written > 0);
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.stats().recovery_hinted_segments > 0);
    check(&store, "hinted");
}

#[test]
fn keys_are_any_bytes_nul_and_invalid_utf8_included() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let keys: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0, 0],
        vec![0; MAX_KEY_LEN],
        vec![0xff],
        vec![0xc3, 0x28],             // invalid UTF-8
        vec![0xed, 0xa0, 0x80],       // a UTF-16 surrogate in UTF-8 form
        vec![0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
        b"k".to_vec(),
        b"k\0".to_vec(),
        b"\0k".to_vec(),
        b"k\0\0".to_vec(),
        "é".as_bytes().to_vec(),
        "e\u{301}".as_bytes().to_vec(), // the same text, another byte string
        vec![b'\n', b'\r', b'\t'],
    ];
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for k in &keys {
        assert!(store.claim(k, TTL).unwrap().is_new(), "{k:?}");
    }
    for k in &keys {
        assert!(!store.claim(k, TTL).unwrap().is_new(), "{k:?}");
    }
    // Removing one leaves its neighbours (prefixes, extensions) alone.
    assert!(store.remove(b"k\0").unwrap());
    let check = |store: &Store| {
        for k in &keys {
            let want = k.as_slice() != b"k\0";
            assert_eq!(store.get(k).unwrap().is_some(), want, "{k:?}");
        }
    };
    check(&store);
    store.close().unwrap();
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Strict,
        RecoveryMode::Salvage,
    ] {
        let store = opts_no_bg(&clock)
            .recovery_mode(mode)
            .open(dir.path())
            .unwrap();
        check(&store);
    }
}

/// TTLs that overflow: as a `Duration`, as u64 milliseconds, when added to now, or past the
/// end of year 9999. `now` is the clock's time in ms.
fn unrepresentable(now: u64) -> Vec<Duration> {
    vec![
        Duration::MAX,
        Duration::new(u64::MAX, 0),
        Duration::from_secs(u64::MAX / 1000 + 1), // more ms than u64 holds
        Duration::from_millis(u64::MAX),
        Duration::from_millis(u64::MAX - now + 1), // overflows when added to now
        Duration::from_millis(MAX_EXPIRES_MS - now + 1),
        Duration::from_millis(MAX_EXPIRES_MS - now) + Duration::from_nanos(1), // rounds up past it
    ]
}

#[test]
fn unrepresentable_ttls_are_errors_for_every_operation_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let now = ms(clock.now());
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let t = acquire(&store, "held");
    let fp = [1u8; 32];
    for ttl in unrepresentable(now) {
        let invalid = |r: Result<(), Error>| {
            assert!(
                matches!(r, Err(Error::InvalidTtl { ttl: got }) if got == ttl),
                "{ttl:?}: {r:?}"
            )
        };
        invalid(store.claim("k", ttl).map(|_| ()));
        invalid(store.claim_many(&["k", "l"], ttl).map(|_| ()));
        invalid(store.begin("k", ttl).map(|_| ()));
        invalid(store.begin_with_fingerprint("k", ttl, &fp).map(|_| ()));
        invalid(store.complete(&t, b"outcome", ttl));
        invalid(store.extend(&t, ttl));
    }
    assert_eq!(store.get("k").unwrap(), None);
    assert_eq!(store.get("l").unwrap(), None);
    // The ticket still holds its key, with its first deadline.
    match store.begin("held", LEASE).unwrap() {
        Begin::InFlight { until } => assert_eq!(until, t.deadline()),
        other => panic!("{other:?}"),
    }
    // Exactly the last millisecond of year 9999 is fine, for every operation.
    let last = Duration::from_millis(MAX_EXPIRES_MS - now);
    let end = UNIX_EPOCH + Duration::from_millis(MAX_EXPIRES_MS);
    assert!(store.claim("k", last).unwrap().is_new());
    assert!(store.claim_many(&["l"], last).unwrap()[0].is_new());
    store.extend(&t, last).unwrap();
    let u = acquire(&store, "u");
    store.complete(&u, b"kept", last).unwrap();
    let v = match store.begin_with_fingerprint("v", last, &fp).unwrap() {
        Begin::Acquired(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.deadline(), end);
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for k in ["k", "l", "u"] {
        assert_eq!(store.get(k).unwrap().unwrap().expires_at, end, "{k}");
    }
    assert_eq!(store.get("held").unwrap().unwrap().expires_at, end);
    // Far in the future, but still ahead: nothing has expired.
    clock.set(end - Duration::from_secs(1));
    assert!(!store.claim("k", Duration::from_millis(1)).unwrap().is_new());
}

#[test]
fn sub_millisecond_leases_and_outcome_ttls_round_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let ns = Duration::from_nanos(1);
    let t = match store.begin("k", ns).unwrap() {
        Begin::Acquired(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(t.deadline(), t0() + Duration::from_millis(1));
    store.extend(&t, ns).unwrap();
    store.complete(&t, b"", ns).unwrap();
    assert_eq!(
        store.get("k").unwrap().unwrap().expires_at,
        t0() + Duration::from_millis(1)
    );
    clock.advance(Duration::from_millis(1));
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::Acquired(_)
    ));
}

#[test]
fn fingerprints_and_outcomes_of_every_length_around_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for len in [
        0,
        1,
        MAX_FINGERPRINT_LEN - 1,
        MAX_FINGERPRINT_LEN,
        MAX_FINGERPRINT_LEN + 1,
        MAX_FINGERPRINT_LEN + 2,
        usize::from(u8::MAX) + 1, // would wrap the one-byte length on disk
    ] {
        let fp = vec![0xa5u8; len];
        let key = format!("fp-{len}");
        match store.begin_with_fingerprint(&key, LEASE, &fp) {
            Ok(Begin::Acquired(t)) => {
                assert!((1..=MAX_FINGERPRINT_LEN).contains(&len), "{len}");
                store.complete(&t, b"x", TTL).unwrap();
                // The same fingerprint is Done, another one a Mismatch.
                assert!(matches!(
                    store.begin_with_fingerprint(&key, LEASE, &fp).unwrap(),
                    Begin::Done(_)
                ));
                let mut other = fp.clone();
                other[0] ^= 1;
                assert!(matches!(
                    store.begin_with_fingerprint(&key, LEASE, &other).unwrap(),
                    Begin::Mismatch(_)
                ));
            }
            Err(Error::InvalidFingerprint { len: l, max }) => {
                assert_eq!((l, max), (len, MAX_FINGERPRINT_LEN));
                assert!(len == 0 || len > MAX_FINGERPRINT_LEN);
                assert_eq!(store.get(&key).unwrap(), None, "{len}: changed the key");
            }
            other => panic!("{len}: {other:?}"),
        }
    }
    let outcomes = [
        0,
        1,
        MAX_OUTCOME_LEN - 1,
        MAX_OUTCOME_LEN,
        MAX_OUTCOME_LEN + 1,
        MAX_OUTCOME_LEN + 2,
    ];
    for len in outcomes {
        let key = format!("out-{len}");
        // With the largest fingerprint too: the record is as long as a record gets.
        let t = match store
            .begin_with_fingerprint(&key, LEASE, &[3u8; MAX_FINGERPRINT_LEN])
            .unwrap()
        {
            Begin::Acquired(t) => t,
            other => panic!("{other:?}"),
        };
        let outcome = vec![(len % 251) as u8; len];
        match store.complete(&t, &outcome, TTL) {
            Ok(()) => assert!(len <= MAX_OUTCOME_LEN),
            Err(Error::OutcomeTooLarge { len: l, max }) => {
                assert_eq!((l, max), (len, MAX_OUTCOME_LEN));
                // Nothing changed: the ticket still holds the key and can complete.
                store.complete(&t, b"small", TTL).unwrap();
            }
            Err(other) => panic!("{len}: {other:?}"),
        }
    }
    // The longest key with the largest fingerprint and outcome: the largest record.
    let long = vec![b'L'; MAX_KEY_LEN];
    let t = match store
        .begin_with_fingerprint(&long, LEASE, &[9u8; MAX_FINGERPRINT_LEN])
        .unwrap()
    {
        Begin::Acquired(t) => t,
        other => panic!("{other:?}"),
    };
    store
        .complete(&t, &vec![0xee; MAX_OUTCOME_LEN], TTL)
        .unwrap();
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for len in outcomes {
        let seen = store.get(format!("out-{len}")).unwrap().unwrap();
        let want = if len > MAX_OUTCOME_LEN {
            b"small".to_vec()
        } else {
            vec![(len % 251) as u8; len]
        };
        // An empty outcome reads as None.
        assert_eq!(
            seen.outcome.as_deref().unwrap_or(&[]),
            &want[..],
            "outcome of {len}"
        );
    }
    let seen = store.get(&long).unwrap().unwrap();
    assert_eq!(seen.outcome.unwrap().len(), MAX_OUTCOME_LEN);
}

#[test]
fn a_clock_set_back_before_the_records_keeps_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let hour = Duration::from_secs(3600);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.claim("a", hour).unwrap().is_new());
    let a = store.get("a").unwrap().unwrap();
    let t = acquire(&store, "leased");
    store.close().unwrap();
    // Two hours back: the records are from the future now.
    clock.set(t0() - 2 * hour);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.get("a").unwrap(), Some(a.clone()));
    assert!(!store.claim("a", hour).unwrap().is_new());
    // The lease's deadline is further away than it was: still in flight, still the
    // ticket's; a ticket of the future can extend and complete.
    assert!(matches!(
        store.begin("leased", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    store.extend(&t, LEASE).unwrap();
    // A claim made now expires before the old ones do.
    assert!(store.claim("b", hour).unwrap().is_new());
    assert!(store.remove("a").unwrap());
    // Nothing live is swept or compacted away at this time.
    store.compact().unwrap();
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.get("a").unwrap(), None, "the remove was lost");
    assert!(store.get("b").unwrap().is_some());
    store.complete(&t, b"late", hour).unwrap();
    // And forward again, past everything.
    clock.set(t0() + 3 * hour);
    store.compact().unwrap();
    assert_eq!(store.get("b").unwrap(), None);
    assert!(store.claim("a", hour).unwrap().is_new());
}

#[test]
fn a_clock_before_the_unix_epoch_reads_as_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH - Duration::from_secs(86_400));
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(store.claim("k", hour).unwrap(), Claim::New);
    let seen = store.get("k").unwrap().unwrap();
    assert_eq!(seen.first_seen, UNIX_EPOCH);
    assert_eq!(seen.expires_at, UNIX_EPOCH + hour);
    let t = acquire(&store, "l");
    assert_eq!(t.deadline(), UNIX_EPOCH + LEASE);
    store.complete(&t, b"", hour).unwrap();
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(!store.claim("k", hour).unwrap().is_new());
    // Time starts moving: an hour after the epoch the claim has expired.
    clock.set(UNIX_EPOCH + hour);
    assert!(store.claim("k", hour).unwrap().is_new());
}

/// Found by this file: index entries keep a coarse expiry in 32-bit seconds, which ends in
/// February 2106; once the clock was past it, every entry whose coarse expiry had saturated
/// counted as expired, and the sweep dropped live claims (a duplicate answered `New`).
#[test]
fn a_clock_past_2106_does_not_sweep_live_claims() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) + 1000));
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
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

#[test]
fn a_clock_past_year_9999_refuses_claims_and_keeps_reading() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.claim("k", TTL).unwrap().is_new());
    store.close().unwrap();
    clock.set(UNIX_EPOCH + Duration::from_millis(MAX_EXPIRES_MS + 1));
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.get("k").unwrap(), None);
    assert!(matches!(
        store.claim("k", Duration::from_millis(1)),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        store.begin("k", Duration::from_millis(1)),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(!store.remove("k").unwrap());
    store.compact().unwrap();
    // A clock at the largest time there is.
    clock.set(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2));
    assert_eq!(store.get("k").unwrap(), None);
    store.compact().unwrap();
    store.close().unwrap();
    drop(opts_no_bg(&clock).open(dir.path()).unwrap());
}

/// A directory with 3000 claims (keys 0..3000) in several segments.
fn filled(dir: &Path, clock: &ManualClock) {
    let store = opts_no_bg(clock).open(dir).unwrap();
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

#[test]
fn foreign_names_symlinks_and_odd_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    filled(dir.path(), &clock);
    let p = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("target"), b"not ours").unwrap();
    let odd = [
        "seg-.olog",
        "seg-00000000000000001.olog", // 17 digits
        "seg-000000000000000G.olog",
        "SEG-0000000000000001.OLOG",
        "seg-0000000000000001.olog~",
        "seg-0000000000000001.hint.bak",
        ".seg-0000000000000001.olog",
        "LOCK.tmp",
        "random-4f2a",
    ];
    for name in odd {
        std::fs::write(p.join(name), b"garbage").unwrap();
    }
    std::fs::write(
        p.join(std::ffi::OsStr::from_bytes(b"seg-\xff\xfe.olog")),
        b"x",
    )
    .unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("target"), p.join("link")).unwrap();
    std::os::unix::fs::symlink(p.join("nowhere"), p.join("dangling")).unwrap();
    std::fs::create_dir(p.join("subdir")).unwrap();
    std::fs::write(p.join("subdir").join("seg-0000000000000001.olog"), b"x").unwrap();
    for mode in [
        RecoveryMode::Strict,
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Salvage,
    ] {
        let store = opts_no_bg(&clock).recovery_mode(mode).open(p).unwrap();
        has_all(&store);
        assert_eq!(store.stats().recovery_salvaged_places, 0, "{mode:?}");
        drop(store);
        for name in odd {
            assert_eq!(std::fs::read(p.join(name)).unwrap(), b"garbage", "{name}");
        }
        assert!(p.join("dangling").symlink_metadata().is_ok(), "{mode:?}");
        assert_eq!(std::fs::read(p.join("link")).unwrap(), b"not ours");
        assert!(p.join("subdir").join("seg-0000000000000001.olog").exists());
        assert!(p
            .join(std::ffi::OsStr::from_bytes(b"seg-\xff\xfe.olog"))
            .exists());
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
        let got = unblocking(&first, move || {
            opts_no_bg(&c).recovery_mode(mode).open(d).map(drop)
        });
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
    let got = unblocking(&newest, move || opts_no_bg(&c).open(d).map(drop));
    assert!(
        matches!(&got, Err(Error::Io { path, .. }) if *path == newest),
        "{got:?}"
    );
    std::fs::remove_file(&newest).unwrap();
    // A FIFO with a hint's name is not read (the segment is scanned) and left alone.
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    store.compact().unwrap();
    store.close().unwrap();
    let hint = dir.path().join("seg-0000000000000001.hint");
    std::fs::remove_file(&hint).unwrap();
    mkfifo(&hint);
    let tmp = dir.path().join("seg-0000000000000002.hint.tmp");
    mkfifo(&tmp);
    let (d, c) = (dir.path().to_path_buf(), clock.clone());
    let hinted = unblocking(&hint, move || {
        let store = opts_no_bg(&c).open(d).unwrap();
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
            let got = opts_no_bg(&clock).recovery_mode(mode).open(dir.path());
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
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    has_all(&store);
    // Temporaries that are directories are not ours: left alone, not an error.
    drop(store);
    let tmp_dir = dir.path().join("seg-0000000000000009.olog.tmp");
    std::fs::create_dir(&tmp_dir).unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    has_all(&store);
    assert!(tmp_dir.is_dir());
}

#[test]
fn a_lock_file_that_is_a_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("LOCK")).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Io {
                op: "open lock file",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(std::error::Error::source(&e).is_some());
}

/// Writes `bytes` as segment `id` of `dir`.
fn put_segment(dir: &Path, id: u64, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(format!("seg-{id:016x}.olog"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A valid 64-byte header for segment `id` of the store whose segment is `model`.
fn header_for(model: &Path, id: u64) -> Vec<u8> {
    let mut h = std::fs::read(model).unwrap()[..64].to_vec();
    set_segment_id(&mut h, id);
    h
}

#[test]
fn short_and_partial_files_named_like_segments_in_every_position_and_mode() {
    use CorruptionKind::{BadSegmentHeader, Truncated, Unsealed};
    let base = tempfile::tempdir().unwrap();
    let clock = clock();
    filled(base.path(), &clock);
    let segs = common::segments(base.path());
    let last_id = segs.len() as u64;
    let newest = segs.last().unwrap().file_name().unwrap().to_owned();
    let newest_bytes = std::fs::read(segs.last().unwrap()).unwrap();
    let newest_end = {
        let r = common::records(segs.last().unwrap()).pop().unwrap();
        (r.offset + r.len) as u64
    };
    let rec = common::records(segs.last().unwrap())[3].clone();
    let cut = rec.offset + rec.len / 2;
    let contents = |id: u64| -> [(&'static str, Vec<u8>); 5] {
        let header = header_for(&segs[0], id);
        let mut mid_record = header.clone();
        mid_record.extend_from_slice(&newest_bytes[64..cut]);
        [
            ("empty", vec![]),
            ("1 byte", vec![0x6f]),
            ("63 bytes", header[..63].to_vec()),
            ("header only", header),
            ("cut mid-record", mid_record),
        ]
    };
    // Which file a refusal names: the odd file, or the segment that was the newest before
    // the odd file came after it (it is not sealed: damage once a newer segment exists).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum At {
        Odd(u64),
        OldNewest(u64),
    }
    // What the default mode and Strict do (Salvage opens them all).
    let expect = |place: &str, what: &str, strict: bool| -> Option<(CorruptionKind, At)> {
        let garbage = !matches!(what, "header only" | "cut mid-record");
        let len = if what == "header only" {
            64
        } else {
            cut as u64
        };
        match (place, garbage, strict) {
            (_, true, _) => Some((BadSegmentHeader, At::Odd(0))),
            // Before every other segment: it has no seal.
            ("first", false, false) if what == "header only" => Some((Unsealed, At::Odd(64))),
            ("first", false, false) => Some((Truncated, At::Odd(rec.offset as u64))),
            ("first", false, true) => Some((Truncated, At::Odd(len))),
            ("newer", false, _) => Some((Unsealed, At::OldNewest(newest_end))),
            // In place of the newest: a short newest segment is re-extended by default.
            ("newest", false, false) => None,
            ("newest", false, true) => Some((Truncated, At::Odd(len))),
            _ => unreachable!(),
        }
    };
    let mut cases = 0;
    for (place, id) in [("first", 0), ("newer", last_id + 1), ("newest", last_id)] {
        for (what, bytes) in contents(id) {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(base.path(), dir.path());
            let odd = put_segment(dir.path(), id, &bytes);
            for mode in [
                RecoveryMode::TolerateTornTail,
                RecoveryMode::Strict,
                RecoveryMode::Salvage,
            ] {
                let case = format!("{what} as the {place} segment, {mode:?}");
                let copy = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), copy.path());
                let want = match mode {
                    RecoveryMode::Salvage => None,
                    m => expect(place, what, m == RecoveryMode::Strict),
                };
                match (
                    opts_no_bg(&clock).recovery_mode(mode).open(copy.path()),
                    want,
                ) {
                    (Ok(store), None) => {
                        if place != "newest" {
                            // Every claim made before the odd file came is still there.
                            has_all(&store);
                        }
                        let s = store.stats();
                        if mode == RecoveryMode::Salvage {
                            // A header was rebuilt, a seal written, or a short file found.
                            assert!(s.recovery_salvaged_places > 0, "{case}");
                        }
                    }
                    (Err(Error::Corruption(c)), Some((kind, at))) => {
                        let (name, offset) = match at {
                            At::Odd(off) => (odd.file_name().unwrap().to_owned(), off),
                            At::OldNewest(off) => (newest.clone(), off),
                        };
                        assert_eq!(
                            (c.kind, c.path.clone(), c.offset),
                            (kind, copy.path().join(name), offset),
                            "{case}"
                        );
                        // Refused: nothing changed.
                        let file = copy.path().join(odd.file_name().unwrap());
                        assert_eq!(std::fs::read(file).unwrap(), bytes, "{case}");
                    }
                    (got, want) => panic!("{case}: {:?}, expected {want:?}", got.map(drop)),
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 45);
}

#[test]
fn stray_hints_and_temporaries_go_and_garbage_hints_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    filled(dir.path(), &clock);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.compact().unwrap().hints_written > 0);
    store.close().unwrap();
    let p = dir.path();
    let hint_of_nothing = p.join("seg-00000000000000aa.hint");
    std::fs::copy(p.join("seg-0000000000000001.hint"), &hint_of_nothing).unwrap();
    let tmps = [
        p.join("seg-0000000000000001.hint.tmp"),
        p.join("seg-00000000000000ab.olog.tmp"),
    ];
    for t in &tmps {
        std::fs::write(t, b"half written").unwrap();
    }
    // Garbage where a hint should be: empty, short, and another segment's hint.
    let hints: Vec<_> = common::segments(p)
        .iter()
        .map(|s| s.with_extension("hint"))
        .filter(|h| h.exists())
        .collect();
    assert!(hints.len() >= 3, "{hints:?}");
    std::fs::copy(&hints[0], &hints[2]).unwrap();
    std::fs::write(&hints[0], b"").unwrap();
    std::fs::write(&hints[1], b"oncehint").unwrap();
    for mode in [
        RecoveryMode::Strict,
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Salvage,
    ] {
        let store = opts_no_bg(&clock).recovery_mode(mode).open(p).unwrap();
        has_all(&store);
        assert!(!hint_of_nothing.exists(), "{mode:?}");
        for t in &tmps {
            assert!(!t.exists(), "{mode:?}: {t:?}");
        }
        let s = store.stats();
        let sealed = common::segments(p).len() as u64 - 1;
        let expect_hinted = if mode == RecoveryMode::Strict {
            0
        } else {
            sealed - 3
        };
        assert_eq!(s.recovery_hinted_segments, expect_hinted, "{mode:?}");
        assert_eq!(s.recovery_salvaged_places, 0, "{mode:?}");
    }
}

#[test]
fn options_at_their_extremes_open_work_and_close() {
    let clock = clock();
    let extremes: Vec<(&str, Options)> = vec![
        ("0 stripes", opts_no_bg(&clock).stripes(0)),
        ("1 stripe", opts_no_bg(&clock).stripes(1)),
        ("most stripes", opts_no_bg(&clock).stripes(1 << 20)),
        (
            "largest segments",
            opts_no_bg(&clock).segment_size(MAX_SEGMENT_SIZE),
        ),
        (
            "smallest segments",
            opts_no_bg(&clock).segment_size(MIN_SEGMENT_SIZE),
        ),
        (
            "maintenance every ns",
            opts_no_bg(&clock)
                .background_maintenance(true)
                .maintenance_interval(Duration::from_nanos(1)),
        ),
        (
            "maintenance never",
            opts_no_bg(&clock)
                .background_maintenance(true)
                .maintenance_interval(Duration::MAX),
        ),
        (
            "sync every ns",
            opts_no_bg(&clock).durability(Durability::Periodic(Duration::from_nanos(1))),
        ),
        (
            "sync never",
            opts_no_bg(&clock).durability(Durability::Periodic(Duration::MAX)),
        ),
        (
            "sync each claim",
            opts_no_bg(&clock).durability(Durability::Sync),
        ),
        (
            "no compaction",
            opts_no_bg(&clock).compaction_threshold(0.0),
        ),
        (
            "always compact",
            opts_no_bg(&clock).compaction_threshold(1.0),
        ),
        ("no hints", opts_no_bg(&clock).hints(false)),
        (
            "no attempt memory",
            opts_no_bg(&clock).attempt_memory(Duration::ZERO),
        ),
        (
            "endless attempt memory",
            opts_no_bg(&clock).attempt_memory(Duration::MAX),
        ),
    ];
    for (what, options) in extremes {
        let dir = tempfile::tempdir().unwrap();
        let store = options.clone().open(dir.path()).unwrap();
        for i in 0..1_500 {
            assert!(store.claim(key(i), TTL).unwrap().is_new(), "{what}");
        }
        let t = acquire(&store, "leased");
        assert!(store.remove(key(3)).unwrap());
        clock.advance(LEASE);
        // The lease ran out: the next attempt is 2, unless attempts are not remembered.
        let next = acquire(&store, "leased");
        let want = if what == "no attempt memory" { 1 } else { 2 };
        assert_eq!(next.attempt(), want, "{what}");
        drop(t);
        store
            .complete(&next, b"ok", Duration::from_secs(60))
            .unwrap();
        clock.advance(Duration::from_secs(30));
        store.compact().unwrap();
        store.close().unwrap();
        let store = options.open(dir.path()).unwrap();
        for i in (0..1_500).step_by(37) {
            assert_eq!(
                store.get(key(i)).unwrap().is_some(),
                i != 3,
                "{what}: key {i}"
            );
        }
        assert!(
            matches!(store.begin("leased", LEASE).unwrap(), Begin::Done(_)),
            "{what}"
        );
        // The outcome ran out: the key starts over at attempt 1, whatever the memory.
        clock.advance(Duration::from_secs(31));
        store.compact().unwrap();
        assert_eq!(acquire(&store, "leased").attempt(), 1, "{what}");
        store.close().unwrap();
    }
}

/// A hint file's size is only a claim. One grown (sparse) to 64 GiB was read into memory
/// whole, and its size sized the index: now a hint larger than its segment could need is
/// not read (the segment is scanned instead), and the index is sized from what the
/// segments can hold.
#[test]
fn a_huge_hint_file_is_neither_read_nor_trusted_for_sizing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let mut i = 0u64;
    while common::segments(dir.path()).len() < 3 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
        i += 1;
    }
    assert!(store.compact().unwrap().hints_written >= 2);
    store.close().unwrap();
    let hint = dir.path().join("seg-0000000000000001.hint");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hint)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(s.keys, i);
    assert!(
        s.index_bytes < 64 << 20,
        "index sized from the hint's size: {} bytes",
        s.index_bytes
    );
    for j in 0..i {
        assert!(store.get(key(j)).unwrap().is_some(), "key {j}");
    }
    store.close().unwrap();
}
