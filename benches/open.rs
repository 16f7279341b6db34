//! `open` of an existing store: recovery replays every record to rebuild the index.
//!
//! `cargo bench --bench open` (sizes up to `ONCELOG_BENCH_MAX_KEYS`, default 10M)

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oncelog::Store;

mod common;
use common::sizes;

const TTL: Duration = Duration::from_secs(72 * 3600);

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    for n in sizes(&[1_000_000, 10_000_000]) {
        let dir = tempfile::tempdir().expect("temp dir");
        common::fill(dir.path(), n, TTL);
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::new("records", n), |b| {
            // Each store is dropped (closing it, freeing its index) outside the timing, and
            // before the next open: a store holds its directory's lock.
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let start = std::time::Instant::now();
                    let store = Store::open(dir.path()).expect("reopen");
                    total += start.elapsed();
                    assert_eq!(store.stats().keys, n);
                    drop(store);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    targets = open
}
criterion_main!(benches);
