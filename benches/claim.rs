//! The store end to end: `claim` of new and duplicate keys at several store sizes,
//! `claim_many` batches, the durable (`Sync`) path, and two-phase claims (`begin` +
//! `complete`) next to `claim`.
//!
//! `cargo bench --bench claim` (sizes up to `ONCELOG_BENCH_MAX_KEYS`, default 10M)

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oncelog::{Begin, Claim, Durability, Options, Store};

mod common;
use common::{key, sizes, Rng};

const TTL: Duration = Duration::from_secs(72 * 3600);

fn filled(n: u64, durability: Durability) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    common::fill(dir.path(), n, TTL);
    let store = Options::new()
        .durability(durability)
        .open(dir.path())
        .expect("reopen");
    (dir, store)
}

/// `claim` of keys the store has never seen, with `n` keys already in it. The keys of each
/// timed run are made before the clock starts; afterwards they are removed (untimed) so the
/// store stays near `n` keys however many iterations criterion asks for.
fn claim_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_new");
    g.throughput(Throughput::Elements(1));
    for n in sizes(&[1_000, 1_000_000, 10_000_000]) {
        let (_dir, store) = filled(n, Durability::Buffered);
        let mut next = n;
        g.bench_function(BenchmarkId::new("buffered", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(100_000);
                    let keys: Vec<[u8; 32]> = (next..next + chunk).map(key).collect();
                    next += chunk;
                    let start = Instant::now();
                    for k in &keys {
                        let answer = store.claim(k, TTL).expect("claim");
                        assert!(answer.is_new());
                    }
                    total += start.elapsed();
                    for k in &keys {
                        store.remove(k).expect("remove");
                    }
                    left -= chunk;
                }
                total
            })
        });
    }
    g.finish();
}

/// `claim` of keys already claimed (the answer every retry gets), chosen at random among
/// the `n` in the store.
fn claim_duplicate(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_duplicate");
    g.throughput(Throughput::Elements(1));
    for n in sizes(&[1_000, 1_000_000, 10_000_000]) {
        let (_dir, store) = filled(n, Durability::Buffered);
        let mut rng = Rng(n);
        g.bench_function(BenchmarkId::new("buffered", n), |b| {
            b.iter_custom(|iters| {
                let keys: Vec<[u8; 32]> = (0..iters).map(|_| key(rng.below(n))).collect();
                let start = Instant::now();
                for k in &keys {
                    let answer = store.claim(k, TTL).expect("claim");
                    assert!(matches!(answer, Claim::Duplicate(_)));
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// `claim_many` batches of new keys into a store of 1M keys, buffered and durable: each
/// batch is one append of all its records and, under `Sync`, one sync.
fn claim_many(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_many");
    let n = sizes(&[1_000_000]).first().copied().unwrap_or(1_000);
    for (name, durability) in [
        ("buffered", Durability::Buffered),
        ("sync", Durability::Sync),
    ] {
        let (_dir, store) = filled(n, durability);
        let mut next = n;
        for batch in [64u64, 1024] {
            g.throughput(Throughput::Elements(batch));
            g.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let keys: Vec<[u8; 32]> = (next..next + batch).map(key).collect();
                        next += batch;
                        let start = Instant::now();
                        let answers = store.claim_many(&keys, TTL).expect("claim_many");
                        total += start.elapsed();
                        assert!(answers.iter().all(Claim::is_new));
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

/// Two-phase claims next to `claim`, in a store of 1M keys (buffered, one thread): a new
/// key through `claim`, through `begin` + `complete` (two records, the second with a
/// 32-byte outcome), and a retry of a completed key (`begin` answering `Done` with the
/// outcome). Keys are made before the clock starts and removed after (untimed).
fn two_phase(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_phase");
    g.throughput(Throughput::Elements(1));
    let n = sizes(&[1_000_000]).first().copied().unwrap_or(1_000);
    let (_dir, store) = filled(n, Durability::Buffered);
    let lease = Duration::from_secs(30);
    let outcome = [7u8; 32];
    let mut next = n;
    let mut fresh = |iters: u64| {
        let keys: Vec<[u8; 32]> = (next..next + iters).map(key).collect();
        next += iters;
        keys
    };
    g.bench_function("claim_new", |b| {
        b.iter_custom(|iters| {
            let keys = fresh(iters);
            let start = Instant::now();
            for k in &keys {
                assert!(store.claim(k, TTL).expect("claim").is_new());
            }
            let took = start.elapsed();
            for k in &keys {
                store.remove(k).expect("remove");
            }
            took
        })
    });
    g.bench_function("begin_complete_new", |b| {
        b.iter_custom(|iters| {
            let keys = fresh(iters);
            let start = Instant::now();
            for k in &keys {
                let Begin::Acquired(t) = store.begin(k, lease).expect("begin") else {
                    panic!("a new key is acquired")
                };
                store.complete(&t, &outcome, TTL).expect("complete");
            }
            let took = start.elapsed();
            for k in &keys {
                store.remove(k).expect("remove");
            }
            took
        })
    });
    let done: Vec<[u8; 32]> = fresh(10_000);
    for k in &done {
        let Begin::Acquired(t) = store.begin(k, lease).expect("begin") else {
            panic!("a new key is acquired")
        };
        store.complete(&t, &outcome, TTL).expect("complete");
    }
    let mut rng = Rng(7);
    g.bench_function("begin_done", |b| {
        b.iter_custom(|iters| {
            let picks: Vec<&[u8; 32]> = (0..iters)
                .filter_map(|_| done.get(rng.below(done.len() as u64) as usize))
                .collect();
            let start = Instant::now();
            for k in &picks {
                let answer = store.begin(k, lease).expect("begin");
                assert!(matches!(answer, Begin::Done(_)));
            }
            start.elapsed()
        })
    });
    g.finish();
}

/// One thread's `claim` under `Sync`: the latency of one durable acknowledgement (one
/// sync of the log per claim, since nothing else is waiting to share it).
fn claim_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_sync");
    g.throughput(Throughput::Elements(1));
    let (_dir, store) = filled(1_000, Durability::Sync);
    let mut next = 1_000u64;
    g.bench_function("new", |b| {
        b.iter(|| {
            next += 1;
            store.claim(key(next), TTL).expect("claim")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = claim_new, claim_duplicate, claim_many, claim_sync, two_phase
}
criterion_main!(benches);
