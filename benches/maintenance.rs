//! Maintenance: `Store::compact` rewriting sparse segments, deleting segments whose
//! every key has expired, and a run with nothing to do on a store of many segments.
//!
//! `cargo bench --bench maintenance` (at most `ONCELOG_BENCH_MAX_KEYS` keys, default 10M;
//! these benches use about 1.2M, fewer with a lower cap)
//!
//! Every iteration builds its own store (untimed): a compaction changes the store it runs
//! on, so it cannot be repeated on the same one. The store runs without background
//! maintenance and on a `ManualClock`, which is moved past the TTLs instead of waiting.
//! The fill is synced before the clock starts, so the timing does not include writing it
//! back. Only `compact()` is timed; the store and its directory are dropped afterwards,
//! also untimed.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use oncelog::{CompactionReport, Durability, ManualClock, Options, Store};

mod common;
use common::key;

/// A record of a 32-byte key with no value: 32-byte header + key.
const RECORD_LEN: u64 = 64;
const SEGMENT_HEADER_LEN: u64 = 64;
const SEGMENT_SIZE: u64 = 16 << 20;
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(72 * 3600);

/// Keys and segment size for about 4.5 segments: four sealed ones for `compact` to work
/// on and the active one, which it leaves alone. 16 MiB segments hold 262 143 records;
/// under a lower `ONCELOG_BENCH_MAX_KEYS` the segments shrink to keep the same shape.
fn shape() -> (u64, u64) {
    let per_segment = (SEGMENT_SIZE - SEGMENT_HEADER_LEN - RECORD_LEN) / RECORD_LEN;
    let wanted = per_segment * 9 / 2;
    let n = wanted.min(common::max_keys());
    let segment = if n == wanted {
        SEGMENT_SIZE
    } else {
        (n * RECORD_LEN * 2 / 9).clamp(oncelog::MIN_SEGMENT_SIZE, SEGMENT_SIZE)
    };
    (n, segment)
}

/// A store in `dir` holding keys `0..n`: those with `short(i)` claimed with `SHORT`, the
/// rest with `LONG`, in log order. The clock is then moved past `SHORT` (not `LONG`).
fn build(dir: &Path, n: u64, segment: u64, short: impl Fn(u64) -> bool) -> Store {
    let clock = ManualClock::new(SystemTime::now());
    let store = Options::new()
        .durability(Durability::Buffered)
        .background_maintenance(false)
        .segment_size(segment)
        .clock(clock.clone())
        .open(dir)
        .expect("open");
    let (mut s, mut l) = (Vec::with_capacity(4096), Vec::with_capacity(4096));
    for start in (0..n).step_by(4096) {
        s.clear();
        l.clear();
        for i in start..(start + 4096).min(n) {
            if short(i) {
                s.push(key(i));
            } else {
                l.push(key(i));
            }
        }
        if !s.is_empty() {
            store.claim_many(&s, SHORT).expect("fill");
        }
        if !l.is_empty() {
            store.claim_many(&l, LONG).expect("fill");
        }
    }
    store.sync().expect("sync");
    clock.advance(SHORT + Duration::from_secs(1));
    store
}

/// Builds a store per iteration, times `compact()` on it, checks the report with `check`.
fn time_compactions(
    iters: u64,
    make: &dyn Fn(&Path) -> Store,
    check: &dyn Fn(&CompactionReport),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = make(dir.path());
        let start = Instant::now();
        let report = store.compact().expect("compact");
        total += start.elapsed();
        check(&report);
        drop(store);
        drop(dir);
    }
    total
}

/// Prints what one run does, so that the figures can be read per segment or per record.
fn describe(name: &str, n: u64, segment: u64, r: &CompactionReport) {
    eprintln!(
        "{name}: {n} keys in {:.1} MiB segments; compact() swept {} entries, read {} \
         segments ({} bytes), wrote {} ({} bytes), deleted {}, wrote {} hints, reclaimed {} \
         bytes",
        segment as f64 / f64::from(1 << 20),
        r.entries_swept,
        r.segments_read,
        r.bytes_read,
        r.segments_written,
        r.bytes_written,
        r.segments_deleted,
        r.hints_written,
        r.bytes_reclaimed
    );
}

fn compaction(c: &mut Criterion) {
    let (n, segment) = shape();
    let mut g = c.benchmark_group("compaction");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);

    // Sparse segments: 3 keys in 5 expire, so 40 % of each sealed segment must be kept,
    // under the default threshold (compact below 50 %), and no segment is empty. Every
    // sealed segment is read and rewritten; the swept entries' records are dropped.
    // Throughput: bytes of the segments read.
    let sparse = |dir: &Path| build(dir, n, segment, |i| i % 5 < 3);
    let probe = {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = sparse(dir.path()).compact().expect("compact");
        describe("compaction/segment", n, segment, &r);
        assert!(r.segments_written > 0, "nothing compacted: {r:?}");
        r
    };
    g.throughput(Throughput::Bytes(probe.bytes_read));
    g.bench_function(BenchmarkId::new("segment", n), |b| {
        b.iter_custom(|iters| {
            time_compactions(iters, &sparse, &|r| {
                assert!(r.segments_written > 0, "nothing compacted: {r:?}");
                assert_eq!(r.bytes_read, probe.bytes_read);
            })
        })
    });

    // Every key expired: the sweep empties the index and every sealed segment is deleted
    // without being read. Throughput: records (entries swept); `describe` prints how many
    // segments go, for the time per segment.
    let expired = |dir: &Path| build(dir, n, segment, |_| true);
    let probe = {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = expired(dir.path()).compact().expect("compact");
        describe("compaction/expire_whole", n, segment, &r);
        assert!(r.segments_deleted > 0 && r.segments_written == 0, "{r:?}");
        r
    };
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("expire_whole", n), |b| {
        b.iter_custom(|iters| {
            time_compactions(iters, &expired, &|r| {
                assert_eq!(r.entries_swept, n);
                assert_eq!(r.segments_deleted, probe.segments_deleted);
            })
        })
    });
    g.finish();

    // A run with nothing to do on a store of many small segments (64 KiB, about 2,900 of
    // them at 3M keys, every key live): what maintenance costs every second on such a
    // store. The same store serves every iteration, since the run changes nothing.
    let mut g = c.benchmark_group("maintenance");
    g.sample_size(10);
    let n = 3_000_000u64.min(common::max_keys());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = build(dir.path(), n, 64 << 10, |_| false);
    let first = store.compact().expect("compact");
    eprintln!(
        "maintenance/idle_run: {n} keys in {} segments of 64 KiB; the first run wrote {} hints",
        store.stats().segments,
        first.hints_written
    );
    g.bench_function(BenchmarkId::new("idle_run", n), |b| {
        b.iter(|| {
            let r = store.compact().expect("compact");
            assert_eq!((r.segments_read, r.segments_deleted), (0, 0), "{r:?}");
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    targets = compaction
}
criterion_main!(benches);
