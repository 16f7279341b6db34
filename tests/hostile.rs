//! Hostile input at the API and in the directory, around the edges that `tests/api.rs`,
//! `tests/lease.rs` and `tests/recovery.rs` leave.

use std::time::{Duration, UNIX_EPOCH};

use oncelog::{Begin, ManualClock, Options, Store, Ticket};

mod common;

use common::opts;

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
