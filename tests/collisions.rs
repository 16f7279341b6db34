//! Invariant 2, no false duplicates: keys whose hashes are equal are still different keys.
//! `Options::hasher` replaces xxh3 with hashers that collide on purpose.

mod common;

use common::{clock, key, opts, TTL};
use oncelog::Claim;

/// Every key has the same hash: one stripe, one probe chain, all entries alike.
fn constant(_: &[u8]) -> u64 {
    0x5555_5555_5555_5555
}

/// Keys collide in groups: equal length means equal hash.
fn by_length(key: &[u8]) -> u64 {
    key.len() as u64
}

/// The low 32 bits (kept in index entries) always collide; the stripe bits differ.
fn low_bits_collide(key: &[u8]) -> u64 {
    xxhash_like(key) << 32
}

fn xxhash_like(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn check(hasher: fn(&[u8]) -> u64, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).hasher(hasher).open(dir.path()).unwrap();
    for i in 0..n {
        assert_eq!(
            store.claim(key(i), TTL).unwrap(),
            Claim::New,
            "key {i} taken for a duplicate of a colliding key"
        );
    }
    for i in 0..n {
        assert!(
            !store.claim(key(i), TTL).unwrap().is_new(),
            "key {i} forgotten"
        );
    }
    // Prefixes and extensions of claimed keys are other keys.
    assert!(store.claim(format!("{}x", key(1)), TTL).unwrap().is_new());
    assert!(store.claim(&key(1)[..5], TTL).unwrap().is_new());
    // Removing one key of a colliding group leaves the others.
    for i in (0..n).step_by(3) {
        assert!(store.remove(key(i)).unwrap());
    }
    for i in 0..n {
        assert_eq!(store.get(key(i)).unwrap().is_some(), i % 3 != 0, "key {i}");
    }
    let batch: Vec<String> = (0..n).map(key).collect();
    let answers = store.claim_many(&batch, TTL).unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.is_new(), i % 3 == 0, "claim_many key {i}");
    }
    store.close().unwrap();

    // After a reopen, with the same colliding hasher and with the default one (hashes are
    // not stored on disk), every key is known and no other key is.
    for reopen in [opts(&clock).hasher(hasher), opts(&clock)] {
        let store = reopen.open(dir.path()).unwrap();
        for i in 0..n {
            assert!(store.get(key(i)).unwrap().is_some(), "key {i} after reopen");
        }
        assert_eq!(store.get(key(n)).unwrap(), None);
        assert_eq!(store.stats().keys, n + 2);
        store.close().unwrap();
    }
}

#[test]
fn all_keys_share_one_hash() {
    check(constant, 300);
}

#[test]
fn keys_of_equal_length_share_a_hash() {
    check(by_length, 2_000);
}

#[test]
fn entry_hash_bits_collide_across_stripes() {
    check(low_bits_collide, 2_000);
}
