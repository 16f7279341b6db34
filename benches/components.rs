//! Components on their own: record encoding and decoding, the index, log appends, sweep
//! slices.
//!
//! `cargo bench --bench components`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oncelog::format::{decode_record, encoded_len};
use oncelog::{Durability, Options};

mod common;
use common::{key, sizes, Rng};

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for key_len in [32usize, 256] {
        let k = vec![b'k'; key_len];
        let mut buf = vec![0u8; encoded_len(key_len, 0)];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", key_len), &k, |b, k| {
            b.iter(|| oncelog::bench::encode_claim(black_box(&mut buf), k, 1, 2))
        });
        oncelog::bench::encode_claim(&mut buf, &k, 1, 2);
        g.bench_with_input(BenchmarkId::new("decode", key_len), &buf, |b, buf| {
            b.iter(|| decode_record(black_box(buf)).is_ok())
        });
    }
    g.finish();
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    for n in sizes(&[1_000, 1_000_000, 10_000_000]) {
        let hash = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        let index = oncelog::bench::Index::new(oncelog::DEFAULT_STRIPES);
        for i in 0..n {
            index.insert(hash(i), i as u32);
        }
        let mut rng = Rng(7);
        g.bench_function(BenchmarkId::new("lookup_hit", n), |b| {
            b.iter(|| {
                let i = rng.below(n);
                assert!(index.contains(hash(i), i as u32));
            })
        });
        g.bench_function(BenchmarkId::new("lookup_miss", n), |b| {
            b.iter(|| {
                let i = n + rng.below(n);
                black_box(index.contains(hash(i), i as u32))
            })
        });
        // Inserts into a table that already holds `n` entries: a fresh id each time, so the
        // table grows by the iteration count (at most a few percent at the larger sizes).
        let mut next = n;
        g.bench_function(BenchmarkId::new("insert", n), |b| {
            b.iter(|| {
                next += 1;
                index.insert(hash(next), next as u32)
            })
        });
        println!(
            "index: {n} entries, {:.1} heap bytes per entry",
            index.heap_bytes() as f64 / (next as f64)
        );
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    g.throughput(Throughput::Bytes(encoded_len(32, 0) as u64));
    for (name, durability) in [
        ("buffered", Durability::Buffered),
        ("sync", Durability::Sync),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = Options::new().durability(durability);
        let log = oncelog::bench::Log::open(dir.path(), &opts).expect("open log");
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let keys: Vec<[u8; 32]> = (n..n + iters).map(key).collect();
                n += iters;
                let start = Instant::now();
                for k in &keys {
                    log.append_claim(k, 1, u64::MAX >> 8).expect("append");
                    if durability == Durability::Sync {
                        log.sync().expect("sync");
                    }
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The longest a sweep holds a stripe lock: one slice, whatever the stripe's size, against
/// the whole-stripe pass a sweep took per lock hold before slices (`budget` unbounded).
/// One stripe of `n` entries, none expired, so nothing changes between iterations.
fn sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("sweep_lock_hold");
    for n in sizes(&[100_000, 1_000_000]) {
        let hash = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        let index = oncelog::bench::Index::new(1);
        for i in 0..n {
            index.insert(hash(i), i as u32);
        }
        g.bench_function(BenchmarkId::new("slice", n), |b| {
            b.iter(|| index.sweep_slice(0, 1000, oncelog::bench::SWEEP_SLICE))
        });
        g.bench_function(BenchmarkId::new("whole_stripe", n), |b| {
            b.iter(|| assert!(index.sweep_slice(0, 1000, usize::MAX)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = record, index, append, sweep
}
criterion_main!(benches);
