//! The public contract: answers, `Seen` times, expiry, removal, stats, and every kind of bad
//! input (invariant 5: a clear error, never a panic, never a changed directory).

mod common;

use std::time::Duration;

use common::{clock, opts, opts_no_bg, t0, temporaries, TTL};
use oncelog::{Claim, ClaimRequest, Durability, Error, Options, Store, MAX_KEY_LEN};

#[test]
fn claim_answers_new_once_then_duplicate_with_times() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert_eq!(store.claim("evt_1", TTL).unwrap(), Claim::New);
    clock.advance(Duration::from_secs(5));
    match store.claim("evt_1", TTL).unwrap() {
        Claim::Duplicate(seen) => {
            assert_eq!(seen.first_seen, t0());
            assert_eq!(seen.expires_at, t0() + TTL);
        }
        Claim::New => panic!("second claim answered New"),
    }
    let seen = store.get("evt_1").unwrap().expect("claimed");
    assert_eq!(seen.first_seen, t0());
    assert_eq!(store.get("evt_2").unwrap(), None);
    // get does not claim.
    assert_eq!(store.claim("evt_2", TTL).unwrap(), Claim::New);
    store.close().unwrap();
}

#[test]
fn expiry_is_exact_to_the_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    let ttl = Duration::from_millis(1500);
    assert!(store.claim("k", ttl).unwrap().is_new());
    clock.advance(Duration::from_millis(1499));
    assert!(
        !store.claim("k", ttl).unwrap().is_new(),
        "expired 1 ms early"
    );
    assert!(store.get("k").unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get("k").unwrap(), None, "still claimed at its expiry");
    assert!(
        store.claim("k", ttl).unwrap().is_new(),
        "not claimable at expiry"
    );
    // The new window starts at the new claim.
    let seen = store.get("k").unwrap().unwrap();
    assert_eq!(seen.first_seen, t0() + Duration::from_millis(1500));
    assert_eq!(store.stats().expired, 1);
}

#[test]
fn sub_millisecond_ttl_rounds_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim("k", Duration::from_nanos(1)).unwrap().is_new());
    let seen = store.get("k").unwrap().unwrap();
    assert_eq!(seen.expires_at, t0() + Duration::from_millis(1));
}

#[test]
fn remove_forgets_a_key_and_reports_whether_it_was_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(!store.remove("k").unwrap(), "removed a key never claimed");
    assert!(store.claim("k", TTL).unwrap().is_new());
    assert!(store.remove("k").unwrap());
    assert!(!store.remove("k").unwrap(), "removed twice");
    assert_eq!(store.get("k").unwrap(), None);
    assert!(store.claim("k", TTL).unwrap().is_new());
    // An expired key is not "claimed": remove says false.
    clock.advance(TTL);
    assert!(!store.remove("k").unwrap());
    assert_eq!(store.stats().removes, 1);
}

#[test]
fn claim_many_answers_in_order_and_dedupes_within_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim("b", TTL).unwrap().is_new());
    let keys = ["a", "b", "c", "a", "c", "d"];
    let answers = store.claim_many(&keys, TTL).unwrap();
    let new: Vec<bool> = answers.iter().map(Claim::is_new).collect();
    assert_eq!(new, [true, false, true, false, false, true]);
    for a in &answers[3..5] {
        match a {
            Claim::Duplicate(seen) => assert_eq!(seen.expires_at, t0() + TTL),
            Claim::New => unreachable!(),
        }
    }
    assert!(store
        .claim_many(&Vec::<String>::new(), TTL)
        .unwrap()
        .is_empty());
    let s = store.stats();
    assert_eq!((s.new, s.duplicates, s.claims, s.keys), (4, 3, 7, 4));
}

#[test]
fn claim_batch_gives_each_request_its_ttl_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim_with_outcome("b", b"old", TTL).unwrap().is_new());
    let short = Duration::from_secs(5);
    let batch = [
        ClaimRequest::new("a", short).with_outcome(b"first"),
        ClaimRequest::new("b", short).with_outcome(b"new"),
        ClaimRequest::new("a", TTL).with_outcome(b"second"),
        ClaimRequest::new("c", TTL),
    ];
    let answers = store.claim_batch(&batch).unwrap();
    let new: Vec<bool> = answers.iter().map(Claim::is_new).collect();
    assert_eq!(new, [true, false, false, true]);
    let seen = |i: usize| match &answers[i] {
        Claim::Duplicate(seen) => seen.clone(),
        Claim::New => unreachable!(),
    };
    // A live key keeps what it had; a repeat sees what the batch's first claim stored.
    assert_eq!(seen(1).outcome.as_deref(), Some(&b"old"[..]));
    assert_eq!(seen(1).expires_at, t0() + TTL);
    assert_eq!(seen(2).outcome.as_deref(), Some(&b"first"[..]));
    assert_eq!(seen(2).expires_at, t0() + short);
    assert_eq!(store.get("c").unwrap().unwrap().expires_at, t0() + TTL);
    let s = store.stats();
    assert_eq!((s.new, s.duplicates, s.keys), (3, 2, 3));
    // One bad request refuses the whole batch, and nothing is claimed or counted.
    let long = vec![0u8; oncelog::MAX_OUTCOME_LEN + 1];
    let bad = [
        ClaimRequest::new("d", TTL),
        ClaimRequest::new("e", TTL).with_outcome(&long),
    ];
    assert!(matches!(
        store.claim_batch(&bad),
        Err(Error::OutcomeTooLarge { .. })
    ));
    let zero = [
        ClaimRequest::new("d", TTL),
        ClaimRequest::new("a", Duration::ZERO),
    ];
    assert!(matches!(
        store.claim_batch(&zero),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(store.get("d").unwrap().is_none());
    let s = store.stats();
    assert_eq!((s.new, s.duplicates, s.keys), (3, 2, 3));
    // After the TTL of "a", it is free again.
    clock.advance(short);
    assert!(store.claim("a", TTL).unwrap().is_new());
}

#[test]
fn keys_are_bytes_of_1_to_max_key_len() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    let longest = vec![0xffu8; MAX_KEY_LEN];
    assert!(store.claim(&longest, TTL).unwrap().is_new());
    assert!(!store.claim(&longest, TTL).unwrap().is_new());
    let binary = [0u8, 0xc3, 0x28, 0xff, 0];
    assert!(store.claim(binary, TTL).unwrap().is_new());
    assert!(
        store.claim(&binary[..4], TTL).unwrap().is_new(),
        "a prefix is another key"
    );
    for bad in [Vec::new(), vec![b'k'; MAX_KEY_LEN + 1], vec![1u8; 70_000]] {
        let len = bad.len();
        let is_bad_key = |r: Result<_, Error>| matches!(r, Err(Error::InvalidKey { len: l, max: MAX_KEY_LEN }) if l == len);
        assert!(
            is_bad_key(store.claim(&bad, TTL).map(|_| ())),
            "claim {len}"
        );
        assert!(is_bad_key(store.get(&bad).map(|_| ())), "get {len}");
        assert!(is_bad_key(store.remove(&bad).map(|_| ())), "remove {len}");
        let batch = vec![b"fine".to_vec(), bad.clone()];
        assert!(
            is_bad_key(store.claim_many(&batch, TTL).map(|_| ())),
            "claim_many {len}"
        );
    }
    // The batch with a bad key claimed nothing, not even its good key.
    assert!(store.claim("fine", TTL).unwrap().is_new());
}

#[test]
fn zero_and_unrepresentable_ttls_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    for ttl in [
        Duration::ZERO,
        Duration::MAX,
        Duration::from_secs(u64::MAX / 1000),
        // Past the end of year 9999 from 2023.
        Duration::from_secs(8_000 * 365 * 86_400),
    ] {
        assert!(
            matches!(store.claim("k", ttl), Err(Error::InvalidTtl { ttl: t }) if t == ttl),
            "{ttl:?}"
        );
        assert!(matches!(
            store.claim_many(&["k"], ttl),
            Err(Error::InvalidTtl { .. })
        ));
    }
    // A thousand years is fine.
    assert!(store
        .claim("k", Duration::from_secs(1000 * 365 * 86_400))
        .unwrap()
        .is_new());
    assert_eq!(store.stats().keys, 1);
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    match Store::open(dir.path()) {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("second open: {other:?}"),
    }
    let e = Store::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    store.close().unwrap();
    // Released on close.
    Store::open(dir.path()).unwrap().close().unwrap();
    // And on drop.
    let store = Store::open(dir.path()).unwrap();
    drop(store);
    Store::open(dir.path()).unwrap().close().unwrap();
}

#[test]
fn a_directory_that_cannot_be_created_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = Store::open(file.join("store")).unwrap_err();
    match &e {
        Error::Io { path, .. } => assert_eq!(path, &file.join("store")),
        other => panic!("{other:?}"),
    }
    assert!(
        std::error::Error::source(&e).is_some(),
        "Io carries its cause"
    );
    // A file where the directory should be.
    assert!(matches!(Store::open(&file), Err(Error::Io { .. })));
}

#[test]
fn an_unwritable_directory_is_an_io_error_not_a_panic() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("ro");
    std::fs::create_dir(&store_dir).unwrap();
    std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Permission bits do not bind root: find out whether they bind us.
    if std::fs::write(store_dir.join("probe"), b"").is_ok() {
        // Root: use a directory that refuses new files whoever asks (sysfs).
        eprintln!("permission bits not enforced (root): opening /sys instead");
        assert!(matches!(Store::open("/sys"), Err(Error::Io { .. })));
        return;
    }
    assert!(matches!(Store::open(&store_dir), Err(Error::Io { .. })));
    // Nothing was left behind.
    assert_eq!(std::fs::read_dir(&store_dir).unwrap().count(), 0);
}

#[test]
fn invalid_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for o in [
        Options::new().segment_size(1000),
        Options::new().durability(Durability::Periodic(Duration::ZERO)),
        Options::new().stripes(usize::MAX),
    ] {
        assert!(matches!(
            o.open(dir.path()),
            Err(Error::InvalidOption { .. })
        ));
    }
    // Nothing was created for a refused open.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn public_types_are_debug_and_errors_display_without_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(format!("{store:?}").contains("Store"));
    assert!(format!("{:?}", store.stats()).contains("keys"));
    assert!(format!("{:?}", opts(&clock)).contains("Buffered"));
    assert!(format!("{clock:?}").contains("ManualClock"));
    let e = Error::InvalidKey {
        len: 0,
        max: MAX_KEY_LEN,
    };
    assert_eq!(
        e.to_string(),
        "invalid key of 0 bytes: keys must be 1 to 4096 bytes"
    );
    let io = Store::open("/dev/null/x").unwrap_err();
    let source = std::error::Error::source(&io).expect("source").to_string();
    assert!(
        !io.to_string().contains(&source),
        "Display repeats the source: {io}"
    );
}

#[test]
fn stats_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    for i in 0..10 {
        assert!(store.claim(format!("k{i}"), TTL).unwrap().is_new());
    }
    for i in 0..4 {
        assert!(!store.claim(format!("k{i}"), TTL).unwrap().is_new());
    }
    assert!(store.remove("k9").unwrap());
    let s = store.stats();
    assert_eq!(
        (s.keys, s.new, s.duplicates, s.claims, s.removes),
        (9, 10, 4, 14, 1)
    );
    assert_eq!(s.segments, 1);
    assert_eq!(s.disk_bytes, oncelog::MIN_SEGMENT_SIZE);
    assert!(s.index_bytes > 0);
    assert!(!s.poisoned);
    store.close().unwrap();
    let store = opts(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!((s.keys, s.new, s.recovered_records), (9, 0, 11));
    assert_eq!(s.recovery_truncated_bytes, 0);
}

/// A stripe whose last key is removed gives its table back at once.
#[test]
fn removing_every_key_of_a_stripe_gives_its_table_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    // No maintenance: only `remove` can give the tables back here (a sweep would too).
    let store = opts_no_bg(&clock).stripes(4).open(dir.path()).unwrap();
    let keys: Vec<String> = (0..2_000).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        assert!(store.claim(k, TTL).unwrap().is_new());
    }
    let full = store.stats().index_bytes;
    assert!(full > 0);
    let (last, rest) = keys.split_last().unwrap();
    for k in rest {
        assert!(store.remove(k).unwrap());
    }
    let one_left = store.stats().index_bytes;
    assert!(one_left > 0, "the stripe of the last key still holds it");
    assert!(one_left < full, "the emptied stripes kept their tables");
    assert!(store.remove(last).unwrap());
    assert_eq!(store.stats().index_bytes, 0);
    // An emptied stripe allocates again on its next key.
    assert!(store.claim(&keys[0], TTL).unwrap().is_new());
    assert!(!store.claim(&keys[0], TTL).unwrap().is_new());
    assert!(store.stats().index_bytes > 0);
    assert_eq!(store.stats().keys, 1);
}

/// Segments are prepared in the background once the active one is half full. Across many
/// rotations every claim lands, closing leaves no temporary file behind, and a reopen
/// finds every key.
#[test]
fn rotations_with_prepared_segments_lose_nothing_and_leave_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    let key = |i: u32| format!("evt_{i:08}_{}", "x".repeat(200));
    let n = 3000u32; // ~250 bytes a record: about a dozen 64 KiB segments
    {
        let store = Options::new()
            .durability(Durability::Buffered)
            .segment_size(64 << 10)
            .open(dir.path())
            .unwrap();
        for i in 0..n {
            assert!(store.claim(key(i), ttl).unwrap().is_new(), "key {i}");
        }
        assert!(store.stats().segments > 8, "too few rotations to test");
        store.close().unwrap();
    }
    let temporaries = temporaries(dir.path());
    assert!(temporaries.is_empty(), "left behind: {temporaries:?}");
    let store = Options::new()
        .segment_size(64 << 10)
        .open(dir.path())
        .unwrap();
    assert_eq!(store.stats().keys, u64::from(n));
    for i in (0..n).step_by(97) {
        assert!(!store.claim(key(i), ttl).unwrap().is_new(), "key {i} lost");
    }
}
