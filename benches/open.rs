//! `open` of an existing store: recovery replays every record to rebuild the index, by
//! reading each segment (`open/records`) or, for sealed segments that have one, their hint
//! file (`open/hinted`); and of an empty directory (`open/empty`). `open/hint_baseline` is
//! the yardstick for `open/hinted`: read the same hint files and insert their entries into
//! a pre-sized `hashbrown` map on one thread, nothing else (no segment, no checks).
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

/// `open` of an empty directory, as a new store (or a test) starts: each iteration opens a
/// fresh directory with the defaults, claims one key (so the store is in use, as it would
/// be) and closes it; printed once: the disk the directory then takes.
fn open_empty(g: &mut BenchmarkGroup<'_, WallTime>) {
    let mut disk = None;
    g.bench_function("empty", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("temp dir");
                let start = Instant::now();
                let store = Options::new().open(dir.path()).expect("open");
                total += start.elapsed();
                assert!(store.claim("evt_1", TTL).expect("claim").is_new());
                store.close().expect("close");
                disk.get_or_insert_with(|| common::dir_bytes(dir.path()));
            }
            total
        })
    });
    if let Some(bytes) = disk {
        eprintln!("open/empty: a store with one key takes {bytes} bytes of disk");
    }
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// See the module comment: every hint file of `dir` read, decoded and its entries put into
/// a `hashbrown` map sized for them, on one thread; the last entry of a hash wins, as the
/// last record of a key does in a replay.
fn hint_baseline(g: &mut BenchmarkGroup<'_, WallTime>, dir: &Path, n: u64) {
    let hints: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    let mut entries = 0u64;
    for p in &hints {
        let bytes = std::fs::read(p).expect("read hint");
        let (header, _) = oncelog::format::decode_hint(&bytes).expect("hint");
        entries += u64::from(header.entries);
    }
    g.throughput(Throughput::Elements(entries));
    g.bench_function(BenchmarkId::new("hint_baseline", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut map: hashbrown::HashMap<
                    u64,
                    (u32, u64),
                    std::hash::BuildHasherDefault<Identity>,
                > = hashbrown::HashMap::with_capacity_and_hasher(
                    entries as usize,
                    Default::default(),
                );
                for p in &hints {
                    let bytes = std::fs::read(p).expect("read hint");
                    let (_, list) = oncelog::format::decode_hint(&bytes).expect("hint");
                    for e in list {
                        map.insert(e.hash, (e.offset, e.expires));
                    }
                }
                total += start.elapsed();
                assert!(map.len() as u64 <= entries);
                drop(map);
            }
            total
        })
    });
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    open_empty(&mut g);
    for n in sizes(&[1_000_000, 10_000_000]) {
        let dir = tempfile::tempdir().expect("temp dir");
        // `fill` runs without background maintenance: no hint files yet.
        common::fill(dir.path(), n, TTL);
        bench_open(&mut g, "records", dir.path(), n, false);
        // The same store with a hint file for every sealed segment (all but the newest,
        // which `open` always reads). Segments start at 1 MiB and double, so even the 1M
        // store has sealed segments to hint; a store with none is skipped.
        let store = Options::new().open(dir.path()).expect("open");
        let report = store.compact().expect("compact");
        store.close().expect("close");
        if report.hints_written == 0 {
            eprintln!("open/hinted/{n}: skipped, the store has no sealed segment to hint");
            continue;
        }
        bench_open(&mut g, "hinted", dir.path(), n, true);
        hint_baseline(&mut g, dir.path(), n);
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
