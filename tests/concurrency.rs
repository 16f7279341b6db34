//! Invariant 1, exactly once: many threads claim overlapping keys, through `claim` and
//! `claim_many`; every key is answered `New` exactly once in total, and stays claimed after
//! a reopen.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{clock, key, opts, TTL};
use oncelog::{Claim, Durability, Store};

/// How each thread asks.
#[derive(Clone, Copy, Debug)]
enum Via {
    Claim,
    Many(usize),
}

/// `threads` threads each ask for all `keys` keys, in a thread-specific order, via `via[t]`.
/// Returns how many times each key was answered New.
fn race(store: &Arc<Store>, keys: u64, via: &[Via]) -> Vec<u32> {
    let wins: Arc<Vec<AtomicU32>> = Arc::new((0..keys).map(|_| AtomicU32::new(0)).collect());
    let barrier = Arc::new(Barrier::new(via.len()));
    let handles: Vec<_> = via
        .iter()
        .enumerate()
        .map(|(t, &via)| {
            let store = Arc::clone(store);
            let wins = Arc::clone(&wins);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                // Each thread walks the keys in its own order: forwards, backwards, or
                // strided, so that threads meet on the same keys at different moments.
                let order: Vec<u64> = match t % 3 {
                    0 => (0..keys).collect(),
                    1 => (0..keys).rev().collect(),
                    _ => {
                        let stride = 7919 % keys.max(1);
                        (0..keys)
                            .map(|i| (i * stride.max(1) + t as u64) % keys)
                            .collect()
                    }
                };
                barrier.wait();
                match via {
                    Via::Claim => {
                        for &i in &order {
                            if store.claim(key(i), TTL).unwrap() == Claim::New {
                                wins[i as usize].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Via::Many(batch) => {
                        for chunk in order.chunks(batch) {
                            let ks: Vec<String> = chunk.iter().map(|&i| key(i)).collect();
                            let answers = store.claim_many(&ks, TTL).unwrap();
                            assert_eq!(answers.len(), ks.len());
                            for (&i, a) in chunk.iter().zip(&answers) {
                                if a.is_new() {
                                    wins[i as usize].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("claimer thread");
    }
    wins.iter().map(|w| w.load(Ordering::Relaxed)).collect()
}

fn check_exactly_once(wins: &[u32], what: &str) {
    let bad: Vec<(usize, u32)> = wins
        .iter()
        .enumerate()
        .filter(|(_, &w)| w != 1)
        .map(|(i, &w)| (i, w))
        .take(10)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: keys not answered New exactly once (key, times): {bad:?}"
    );
}

fn run(durability: Durability, keys: u64, via: &[Via], stripes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Arc::new(
        opts(&clock)
            .durability(durability)
            .stripes(stripes)
            .open(dir.path())
            .unwrap(),
    );
    let wins = race(&store, keys, via);
    let what = format!("{durability:?} {via:?} stripes={stripes}");
    check_exactly_once(&wins, &what);
    let s = store.stats();
    assert_eq!(s.new, keys, "{what}");
    assert_eq!(s.duplicates, keys * (via.len() as u64 - 1), "{what}");
    assert!(
        s.segments > 1,
        "{what}: expected rotations, got one segment"
    );
    Arc::try_unwrap(store).expect("sole owner").close().unwrap();

    let store = opts(&clock).open(dir.path()).unwrap();
    for i in 0..keys {
        assert!(
            !store.claim(key(i), TTL).unwrap().is_new(),
            "{what}: key {i} is claimable again after reopen"
        );
    }
}

#[test]
fn claim_from_four_threads_buffered() {
    run(Durability::Buffered, 20_000, &[Via::Claim; 4], 1024);
}

#[test]
fn claim_from_four_threads_on_two_stripes() {
    // Few stripes: every thread fights over the same locks.
    run(Durability::Buffered, 5_000, &[Via::Claim; 4], 2);
}

#[test]
fn claim_many_from_four_threads_buffered() {
    run(
        Durability::Buffered,
        20_000,
        &[Via::Many(64), Via::Many(1000), Via::Many(7), Via::Many(1)],
        1024,
    );
}

#[test]
fn claim_and_claim_many_mixed_under_sync() {
    // Sync: durable-before-visible waits and group commit are in play.
    run(
        Durability::Sync,
        3_000,
        &[Via::Claim, Via::Many(100), Via::Claim, Via::Many(16)],
        64,
    );
}
