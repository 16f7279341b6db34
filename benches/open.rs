//! `open` of an existing store: recovery replays every record to rebuild the index, by
//! reading each segment (`open/records`) or, for sealed segments that have one, their hint
//! file (`open/hinted`).
//!
//! `cargo bench --bench open` (sizes up to `ONCELOG_BENCH_MAX_KEYS`, default 10M)

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use oncelog::Options;

mod common;
use common::sizes;

const TTL: Duration = Duration::from_secs(72 * 3600);

/// Times `open` of the store in `dir` (`n` keys), checking that `hinted` says whether its
/// sealed segments were read from hints. The store is opened without background
/// maintenance, so that nothing writes a hint between two opens (the default's thread
/// would after a second); that changes nothing in what `open` does but start no thread.
/// Each store is dropped (closing it, freeing its index) outside the timing, and before
/// the next open: a store holds its directory's lock.
fn bench_open(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, dir: &Path, n: u64, hinted: bool) {
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = Options::new()
                    .background_maintenance(false)
                    .open(dir)
                    .expect("reopen");
                total += start.elapsed();
                let s = store.stats();
                assert_eq!(s.keys, n);
                assert_eq!(s.recovery_hinted_segments > 0, hinted, "{s:?}");
                drop(store);
            }
            total
        })
    });
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    for n in sizes(&[1_000_000, 10_000_000]) {
        let dir = tempfile::tempdir().expect("temp dir");
        // `fill` runs without background maintenance: no hint files yet.
        common::fill(dir.path(), n, TTL);
        bench_open(&mut g, "records", dir.path(), n, false);
        // The same store with a hint file for every sealed segment (all but the newest,
        // which `open` always reads). At 1M keys the whole store is one segment (64 MiB
        // holds 1,048,574 records of 32-byte keys): nothing to hint, nothing to compare.
        let store = Options::new().open(dir.path()).expect("open");
        let report = store.compact().expect("compact");
        store.close().expect("close");
        if report.hints_written == 0 {
            eprintln!("open/hinted/{n}: skipped, the store has no sealed segment to hint");
            continue;
        }
        bench_open(&mut g, "hinted", dir.path(), n, true);
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
