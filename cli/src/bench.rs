//! `oncelog bench`: a load generator. Claims generated event-id-like keys from several
//! threads and reports throughput, latency percentiles, what background maintenance did
//! meanwhile, RAM and disk per key, and the time to reopen (recover) the store it filled.
//!
//! The store runs with the default maintenance settings (a background run every second),
//! so a run with `--short-ttl`/`--short-ratio` has sparse segments compacted while it
//! claims, and its latency percentiles include that. `--expire` then waits for every claim
//! to expire and shows what RAM and disk come back.
//!
//! Keys are made from a counter on the fly (no key list in RAM, so the resident-memory delta
//! is the store's), spread by a multiplicative hash so consecutive claims land in unrelated
//! index stripes, as real event ids do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oncelog::{Durability, Options, Store};

use oncelog_cli::progress::with_open_progress;

use crate::measure::{fmt_ns, rss_bytes, Histogram};

/// What to run.
#[derive(Clone)]
pub struct BenchArgs {
    pub dir: PathBuf,
    /// Claiming threads; with `tasks`, the worker threads that run the tasks.
    pub threads: usize,
    /// Concurrent tasks claiming with the async methods (0: blocking threads claim).
    pub tasks: usize,
    pub keys: u64,
    pub key_len: usize,
    pub dup_ratio: f64,
    pub ttl: Duration,
    pub durability: Durability,
    pub batch: usize,
    pub duration: Option<Duration>,
    pub reopen: bool,
    /// The TTL of the fraction `short_ratio` of claims (the rest use `ttl`).
    pub short_ttl: Option<Duration>,
    pub short_ratio: f64,
    /// After the run, wait until every claim has expired, `compact()`, and report.
    pub expire: bool,
    /// `compact()` before closing, so that the reopen reads every sealed segment's hint.
    pub hints_before_reopen: bool,
    /// Open the store with `Options::hints(false)`: no hint files, the reopen scans.
    pub no_hints: bool,
    /// Print maintenance's lag (claims expired and not yet swept) once a second.
    pub lag: bool,
    /// After the run, two maintenance runs, then the resident memory again.
    pub settle: bool,
    /// `Options::stripes`.
    pub stripes: usize,
}

impl BenchArgs {
    /// The TTL a claim gets when `short` (drawn with probability `short_ratio`).
    fn ttl_for(&self, short: bool) -> Duration {
        match self.short_ttl {
            Some(t) if short => t,
            _ => self.ttl,
        }
    }

    /// The longest TTL any claim of the run got.
    fn longest_ttl(&self) -> Duration {
        match self.short_ttl {
            Some(t) if self.short_ratio > 0.0 => t.max(self.ttl),
            _ => self.ttl,
        }
    }
}

/// Writes key number `i` into `buf` (of the requested length): `evt_` then hex digits of
/// a bijective mix of `i`, padded with more mixed digits. Distinct `i` give distinct keys.
fn make_key(i: u64, buf: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // An odd multiplier is a bijection on u64: distinct i, distinct x.
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut pad = x ^ 0xd6e8_feb8_6659_fd93;
    for (j, b) in buf.iter_mut().enumerate() {
        *b = match j {
            0 => b'e',
            1 => b'v',
            2 => b't',
            3 => b'_',
            // 16 hex digits of x: the part that makes keys distinct.
            4..=19 => HEX[((x >> ((19 - j) * 4)) & 0xf) as usize],
            _ => {
                pad = pad.rotate_left(5).wrapping_mul(0x2545_f491_4f6c_dd1d);
                HEX[(pad >> 60) as usize]
            }
        };
    }
}

/// Shortest key length that still holds the distinguishing digits.
pub const MIN_BENCH_KEY_LEN: usize = 20;

/// What one claimer (thread or task) did: its latency histogram, new and duplicate
/// counts, and when it finished.
type Outcome = (Histogram, u64, u64, Instant);

/// The calls of one claimer. Claimer `t` of `stride` claims the keys `t, t + stride,
/// t + 2*stride, …` below `keys` (fresh ones) and, with probability `dup_ratio`, a key it
/// claimed before (a duplicate). Each call (claim, or whole `claim_many` batch) gets the
/// short TTL with probability `short_ratio`.
struct Calls {
    t: u64,
    stride: u64,
    keys_total: u64,
    rng: u64,
    /// A second generator for the TTL draw, so that the keys claimed do not depend on it.
    ttl_rng: u64,
    next_fresh: u64,
    fresh_done: u64,
    dup_threshold: u64,
    short_threshold: u64,
    /// The keys of the next call.
    keys: Vec<Vec<u8>>,
}

impl Calls {
    fn new(args: &BenchArgs, t: usize, stride: usize) -> Calls {
        let rng = 0x853c_49e6_748f_ea9bu64 ^ (t as u64).wrapping_mul(0x9e37_79b9);
        Calls {
            t: t as u64,
            stride: stride as u64,
            keys_total: args.keys,
            rng,
            ttl_rng: rng ^ 0x2545_f491_4f6c_dd1d,
            next_fresh: t as u64,
            fresh_done: 0,
            dup_threshold: (args.dup_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            short_threshold: (args.short_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            keys: vec![vec![0u8; args.key_len]; args.batch.max(1)],
        }
    }

    /// Makes the next call's keys; returns how many, and whether it takes the short TTL.
    /// `None` when this claimer has no fresh key left.
    fn next(&mut self) -> Option<(usize, bool)> {
        let mut n = 0;
        while n < self.keys.len() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let dup = self.fresh_done > 0 && self.rng < self.dup_threshold;
            let i = if dup {
                // A key this claimer claimed before.
                self.t + (self.rng % self.fresh_done) * self.stride
            } else if self.next_fresh < self.keys_total {
                let i = self.next_fresh;
                self.next_fresh += self.stride;
                self.fresh_done += 1;
                i
            } else {
                break;
            };
            if let Some(k) = self.keys.get_mut(n) {
                make_key(i, k);
            }
            n += 1;
        }
        if n == 0 {
            return None;
        }
        self.ttl_rng ^= self.ttl_rng << 13;
        self.ttl_rng ^= self.ttl_rng >> 7;
        self.ttl_rng ^= self.ttl_rng << 17;
        Some((n, self.ttl_rng < self.short_threshold))
    }
}

/// Single claims are timed one in `SAMPLE` (two clock reads would otherwise cost a fifth of
/// a claim); batches are all timed.
const SAMPLE: u64 = 8;

/// What a claimer counts as it goes.
struct Tally {
    hist: Histogram,
    calls: u64,
    new: u64,
    dups: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new(),
            calls: 0,
            new: 0,
            dups: 0,
        }
    }

    /// Counts a call; its start time if it is one of those timed.
    fn start(&mut self, batched: bool) -> Option<Instant> {
        self.calls += 1;
        (batched || self.calls.is_multiple_of(SAMPLE)).then(Instant::now)
    }

    /// Counts a call's answers, and its latency if it was timed.
    fn answered(&mut self, started: Option<Instant>, answers: &[oncelog::Claim]) {
        let fresh = answers.iter().filter(|a| a.is_new()).count() as u64;
        self.new += fresh;
        self.dups += answers.len() as u64 - fresh;
        if let Some(started) = started {
            self.hist.record(started.elapsed().as_nanos() as u64);
        }
    }

    fn finish(self) -> Outcome {
        (self.hist, self.new, self.dups, Instant::now())
    }
}

/// A claiming thread (see `Calls`).
fn worker(
    store: &Store,
    args: &BenchArgs,
    t: usize,
    done: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Outcome, String> {
    let mut calls = Calls::new(args, t, args.threads);
    let mut tally = Tally::new();
    while !stop.load(Ordering::Relaxed) {
        let Some((n, short)) = calls.next() else {
            break;
        };
        let (ks, ttl) = (&calls.keys[..n], args.ttl_for(short));
        let started = tally.start(args.batch > 1);
        if args.batch == 1 {
            let answer = store.claim(&ks[0], ttl);
            let answer = answer.map_err(|e| format!("claim: {e}"))?;
            tally.answered(started, std::slice::from_ref(&answer));
        } else {
            let answers = store.claim_many(ks, ttl);
            tally.answered(started, &answers.map_err(|e| format!("claim_many: {e}"))?);
        }
        done.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(tally.finish())
}

/// A claiming task (see `Calls`): the same calls through the async methods.
async fn task(
    store: Arc<Store>,
    args: Arc<BenchArgs>,
    t: usize,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Outcome, String> {
    let mut calls = Calls::new(&args, t, args.tasks);
    let mut tally = Tally::new();
    while !stop.load(Ordering::Relaxed) {
        let Some((n, short)) = calls.next() else {
            break;
        };
        let (ks, ttl) = (&calls.keys[..n], args.ttl_for(short));
        let started = tally.start(args.batch > 1);
        if args.batch == 1 {
            let answer = store.claim_async(&ks[0], ttl).await;
            let answer = answer.map_err(|e| format!("claim_async: {e}"))?;
            tally.answered(started, std::slice::from_ref(&answer));
        } else {
            let answers = store.claim_many_async(ks, ttl).await;
            tally.answered(
                started,
                &answers.map_err(|e| format!("claim_many_async: {e}"))?,
            );
        }
        done.fetch_add(n as u64, Ordering::Relaxed);
        // Take turns, as a server's requests do (see `yield_now`).
        crate::tasks::yield_now().await;
    }
    Ok(tally.finish())
}

/// Starts the claimers: `args.threads` threads, or `args.tasks` tasks on `args.threads`
/// worker threads. Each returned thread yields the outcomes of the claimers it ran.
fn start(
    store: &Arc<Store>,
    args: &BenchArgs,
    done: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    barrier: &Arc<Barrier>,
) -> Vec<JoinHandle<Vec<Result<Outcome, String>>>> {
    let args = Arc::new(args.clone());
    if args.tasks > 0 {
        let (store, done, stop, barrier) = (
            Arc::clone(store),
            Arc::clone(done),
            Arc::clone(stop),
            Arc::clone(barrier),
        );
        return vec![std::thread::spawn(move || {
            let results: Arc<Mutex<Vec<Result<Outcome, String>>>> = Arc::default();
            let futures: Vec<_> = (0..args.tasks)
                .map(|t| {
                    let fut = task(
                        Arc::clone(&store),
                        Arc::clone(&args),
                        t,
                        Arc::clone(&done),
                        Arc::clone(&stop),
                    );
                    let results = Arc::clone(&results);
                    Box::pin(async move {
                        let r = fut.await;
                        results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
                })
                .collect();
            barrier.wait();
            crate::tasks::run_all(args.threads, futures);
            let outcomes = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
            outcomes
        })];
    }
    (0..args.threads)
        .map(|t| {
            let (store, done, stop, barrier, a) = (
                Arc::clone(store),
                Arc::clone(done),
                Arc::clone(stop),
                Arc::clone(barrier),
                Arc::clone(&args),
            );
            std::thread::spawn(move || {
                barrier.wait();
                vec![worker(&store, &a, t, &done, &stop)]
            })
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks() * 512
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchArgs) -> Result<(), String> {
    if args.key_len < MIN_BENCH_KEY_LEN || args.key_len > oncelog::MAX_KEY_LEN {
        return Err(format!(
            "--key-len must be {MIN_BENCH_KEY_LEN} to {}",
            oncelog::MAX_KEY_LEN
        ));
    }
    if !(0.0..=1.0).contains(&args.short_ratio) {
        return Err("--short-ratio must be from 0 to 1".into());
    }
    if args.short_ratio > 0.0 && args.short_ttl.is_none() {
        return Err("--short-ratio needs --short-ttl".into());
    }
    let rss_before = rss_bytes();
    let opened = Instant::now();
    let store = Arc::new(
        with_open_progress(
            Options::new()
                .durability(args.durability)
                .hints(!args.no_hints)
                .stripes(args.stripes),
        )
        .open(&args.dir)
        .map_err(|e| format!("open {}: {e}", args.dir.display()))?,
    );
    let open_time = opened.elapsed();
    let keys_before = store.stats().keys;
    if keys_before > 0 {
        return Err(format!(
            "{} already holds {keys_before} keys; bench generates the same keys every run, \
             so give it an empty or new directory",
            args.dir.display()
        ));
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let starters = if args.tasks > 0 { 1 } else { args.threads };
    let barrier = Arc::new(Barrier::new(starters + 1));
    let handles = start(&store, args, &done, &stop, &barrier);
    barrier.wait();
    let started = Instant::now();
    let mut last = (started, 0u64);
    // With `lag`: the largest count of expired, unswept claims seen, and when.
    let mut worst_lag = (0u64, 0.0f64);
    // Progress on stderr about once a second, until the workers finish or time is up.
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if args.duration.is_some_and(|d| now - started >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if now - last.0 >= Duration::from_secs(1) {
            let n = done.load(Ordering::Relaxed);
            let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
            let t = (now - started).as_secs_f64();
            if args.lag {
                let s = store.stats();
                if s.expired_unswept >= worst_lag.0 {
                    worst_lag = (s.expired_unswept, t);
                }
                println!(
                    "  {t:>6.1}s  {n:>12} claims  {rate:>12.0}/s  {:>10} keys  {:>10} expired, not yet swept",
                    s.keys, s.expired_unswept
                );
            } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                // A line redrawn in place: only on a terminal, not into a file or a pipe.
                eprint!("\r  {t:>6.1}s  {n:>12} claims  {rate:>12.0}/s   ");
            }
            last = (now, n);
        }
    }
    let mut hist = Histogram::new();
    let (mut new, mut dups) = (0u64, 0u64);
    let mut finished = started;
    for h in handles {
        for outcome in h.join().map_err(|_| "a worker thread panicked")? {
            let (hh, n, d, end) = outcome?;
            hist.merge(&hh);
            new += n;
            dups += d;
            finished = finished.max(end);
        }
    }
    // From the start to the last worker's finish, not to when this thread noticed.
    let elapsed = finished - started;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r{:60}\r", "");
    }
    let ops = new + dups;
    let stats = store.stats();
    let rss_after = rss_bytes();
    let live = stats.keys.max(1);
    let disk = dir_bytes(&args.dir);
    let mode = match args.durability {
        Durability::Sync => "sync".to_string(),
        Durability::Buffered => "buffered".to_string(),
        Durability::Periodic(d) => format!("periodic:{}ms", d.as_millis()),
    };
    let ttls = match args.short_ttl {
        Some(short) if args.short_ratio > 0.0 => format!(
            "TTL {} ({:.0} % of {}: {})",
            fmt_duration(args.ttl),
            args.short_ratio * 100.0,
            if args.batch > 1 { "batches" } else { "claims" },
            fmt_duration(short)
        ),
        _ => format!("TTL {}", fmt_duration(args.ttl)),
    };
    let claimers = if args.tasks > 0 {
        format!("{} async task(s) on {} thread(s)", args.tasks, args.threads)
    } else {
        format!("{} thread(s)", args.threads)
    };
    println!(
        "oncelog bench: {claimers}, {} key(s) of {} bytes, dup ratio {:.2}, {ttls}, {mode}, \
         {}, {} index stripes",
        args.keys,
        args.key_len,
        args.dup_ratio,
        if args.batch > 1 {
            format!("claim_many batches of {}", args.batch)
        } else {
            "claim".to_string()
        },
        args.stripes.next_power_of_two(),
    );
    println!(
        "  claims      {ops} ({new} new, {dups} duplicate) in {:.3} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  throughput  {:.0} claims/s",
        ops as f64 / elapsed.as_secs_f64()
    );
    let unit = if args.batch > 1 {
        "batch"
    } else {
        "claim (1 in 8 timed)"
    };
    println!(
        "  latency     per {unit}: p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        fmt_ns(hist.percentile(50.0)),
        fmt_ns(hist.percentile(99.0)),
        fmt_ns(hist.percentile(99.9)),
        fmt_ns(hist.percentile(99.99)),
        fmt_ns(hist.max)
    );
    // Counted since open, which was just before the run: what ran while it claimed. A run
    // still going adds its counts when it ends, so it is missing here (though the keys it
    // already swept are gone from `expired and not yet swept`).
    println!(
        "  maintenance {} run(s) meanwhile: {} compaction(s), {} segment(s) deleted, \
         {:.1} MB reclaimed, {} expired entries swept, {} expired and not yet swept",
        stats.maintenance_runs,
        stats.compactions,
        stats.segments_deleted,
        stats.bytes_reclaimed as f64 / 1e6,
        stats.entries_swept,
        stats.expired_unswept
    );
    if args.lag {
        println!(
            "  lag         at most {} claims expired and not yet swept (at {:.1} s), measured once a second",
            worst_lag.0, worst_lag.1
        );
    }
    println!(
        "  syncs       {} ({:.1} claims per sync)",
        stats.syncs,
        ops as f64 / stats.syncs.max(1) as f64
    );
    println!(
        "  memory      index tables {:.1} B/key; resident delta {:.1} B/key heap + {:.1} B/key \
         mapped log pages ({} keys)",
        stats.index_bytes as f64 / live as f64,
        rss_after.0.saturating_sub(rss_before.0) as f64 / live as f64,
        rss_after.1.saturating_sub(rss_before.1) as f64 / live as f64,
        stats.keys
    );
    println!(
        "  disk        {:.1} B/key allocated ({} segment(s), {} bytes)",
        disk as f64 / live as f64,
        stats.segments,
        disk
    );
    println!(
        "  open        {:.1} ms before the run ({} records recovered)",
        open_time.as_secs_f64() * 1e3,
        stats.recovered_records
    );
    let store = Arc::try_unwrap(store).map_err(|_| "store still shared")?;
    if args.settle {
        // Maintenance gives the heap back once the index tables have freed a lot, or once
        // they stop changing: the second run sees that nothing changed since the first.
        for _ in 0..2 {
            store.compact().map_err(|e| format!("compact: {e}"))?;
        }
        let rss = rss_bytes();
        println!(
            "  settled     resident delta {:.1} B/key heap after two maintenance runs \
             (index tables {:.1} B/key)",
            rss.0.saturating_sub(rss_before.0) as f64 / live as f64,
            store.stats().index_bytes as f64 / live as f64
        );
    }
    if args.expire {
        let before = Footprint {
            stats,
            heap: rss_after.0.saturating_sub(rss_before.0),
            mapped: rss_after.1.saturating_sub(rss_before.1),
            disk,
        };
        expire(&store, args, finished, &before, rss_before)?;
    }
    if args.hints_before_reopen {
        let r = store.compact().map_err(|e| format!("compact: {e}"))?;
        println!(
            "  hints       compact() before closing wrote {} hint file(s) in {:.1} ms",
            r.hints_written,
            r.duration.as_secs_f64() * 1e3
        );
    }
    store.close().map_err(|e| format!("close: {e}"))?;
    if args.durability == Durability::Sync {
        // The ideal for N claimers sharing syncs is N claims per fdatasync of this disk.
        let fsync = fdatasync_p50(&args.dir).map_err(|e| format!("fsync probe: {e}"))?;
        let claimers = if args.tasks > 0 {
            args.tasks
        } else {
            args.threads
        };
        let ideal = claimers as f64 * args.batch.max(1) as f64 / fsync.as_secs_f64();
        let rate = ops as f64 / elapsed.as_secs_f64();
        println!(
            "  fsync       disk fdatasync p50 {} (4 KiB writes, same directory); \
             {} claimer(s) / fsync = {:.0} claims/s; measured {:.2}x of that",
            fmt_ns(fsync.as_nanos() as u64),
            claimers,
            ideal,
            rate / ideal
        );
    }
    if args.reopen {
        let t = Instant::now();
        let store = with_open_progress(Options::new().durability(args.durability))
            .open(&args.dir)
            .map_err(|e| format!("reopen: {e}"))?;
        let took = t.elapsed();
        let s = store.stats();
        // The newest segment is always scanned; a sealed one is read from its hint file if
        // maintenance wrote one (a run every second does, unless --no-hints).
        println!(
            "  recovery    {} records in {:.1} ms ({:.1} M records/s), {} keys live; \
             {} of {} segment(s) from hints",
            s.recovered_records,
            took.as_secs_f64() * 1e3,
            s.recovered_records as f64 / took.as_secs_f64() / 1e6,
            s.keys,
            s.recovery_hinted_segments,
            s.segments
        );
        store.close().map_err(|e| format!("close: {e}"))?;
    }
    Ok(())
}

/// What the store holds and costs at one moment: for `--expire`'s before and after.
struct Footprint {
    stats: oncelog::Stats,
    /// Resident-memory growth since before the store was opened: heap, mapped log pages.
    heap: u64,
    mapped: u64,
    /// Bytes allocated to the store directory's files.
    disk: u64,
}

/// `--expire`: waits until every claim of the run (the last one made at `finished`) has
/// expired, runs `compact()`, and prints the footprint before and after. Background
/// maintenance keeps running while it waits, so most of the work may be done by the time
/// `compact()` runs; what it still found is printed too.
fn expire(
    store: &Store,
    args: &BenchArgs,
    finished: Instant,
    before: &Footprint,
    rss_before: (u64, u64),
) -> Result<(), String> {
    use std::io::Write;
    // The index judges expiry on whole seconds, rounded up (an entry is swept up to a
    // second after its claim expired); the record's expiry is a whole millisecond, rounded
    // up. A second and a little margin cover both.
    let deadline = finished + args.longest_ttl() + Duration::from_millis(1100);
    let wait = deadline.saturating_duration_since(Instant::now());
    print!(
        "  expire      waiting {:.1} s for every claim ({} TTL) to expire...",
        wait.as_secs_f64(),
        fmt_duration(args.longest_ttl())
    );
    let _ = std::io::stdout().flush();
    std::thread::sleep(wait);
    let r = store.compact().map_err(|e| format!("compact: {e}"))?;
    let rss = rss_bytes();
    let after = Footprint {
        stats: store.stats(),
        heap: rss.0.saturating_sub(rss_before.0),
        mapped: rss.1.saturating_sub(rss_before.1),
        disk: dir_bytes(&args.dir),
    };
    println!(
        " then compact(): {} entries swept, {} segment(s) deleted, {} compacted, in {:.1} ms \
         (background maintenance had swept {} entries and deleted {} segment(s))",
        r.entries_swept,
        r.segments_deleted,
        r.segments_written,
        r.duration.as_secs_f64() * 1e3,
        after.stats.entries_swept.saturating_sub(r.entries_swept),
        after
            .stats
            .segments_deleted
            .saturating_sub(r.segments_deleted)
    );
    // Per key of the run (the keys held before expiry), before and after.
    let per = before.stats.keys.max(1) as f64;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "              {:<24} {:>22} {:>22}",
        "", "before expiry", "after expiry"
    );
    let row = |name: &str, b: u64, a: u64| {
        println!(
            "              {name:<24} {:>9.1} MB {:>5.1} B/key {:>9.1} MB {:>5.1} B/key",
            mb(b),
            b as f64 / per,
            mb(a),
            a as f64 / per
        );
    };
    println!(
        "              {:<24} {:>22} {:>22}",
        "keys in the index", before.stats.keys, after.stats.keys
    );
    row(
        "index tables",
        before.stats.index_bytes,
        after.stats.index_bytes,
    );
    row("resident heap delta", before.heap, after.heap);
    row("resident mapped delta", before.mapped, after.mapped);
    println!(
        "              {:<24} {:>22} {:>22}",
        "segments", before.stats.segments, after.stats.segments
    );
    row("disk allocated", before.disk, after.disk);
    Ok(())
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Median time of a 4 KiB write plus `fdatasync` at successive offsets of a fresh,
/// pre-allocated file in `dir` (deleted afterwards): the disk's durable-write latency.
fn fdatasync_p50(dir: &std::path::Path) -> std::io::Result<Duration> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe.bench");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let result = (|| {
        const ROUNDS: usize = 500;
        file.set_len((ROUNDS * 4096) as u64)?;
        file.sync_all()?;
        let block = [0x5au8; 4096];
        let mut times = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            let t = Instant::now();
            file.write_at(&block, (i * 4096) as u64)?;
            file.sync_data()?;
            times.push(t.elapsed());
        }
        times.sort_unstable();
        Ok(times.get(ROUNDS / 2).copied().unwrap_or_default())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_of_the_asked_length() {
        let mut seen = std::collections::HashSet::new();
        for len in [20, 32, 100] {
            for i in 0..10_000 {
                let mut k = vec![0u8; len];
                make_key(i, &mut k);
                assert!(k.starts_with(b"evt_"));
                assert!(seen.insert(k), "key {i} of {len} bytes repeated");
            }
        }
    }
}
