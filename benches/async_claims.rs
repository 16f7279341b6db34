//! Durability under load, blocking and async, side by side in one run: how far group commit
//! carries `Durability::Sync`.
//!
//! `cargo bench --bench async_claims` runs, each on a fresh store for a few seconds, claims
//! of distinct 32-byte keys from
//!
//! - 1, 2 and 64 blocking threads under `Sync`,
//! - 10,000 tasks on a 2-worker tokio runtime under `Sync`, and the same under `Buffered`
//!   (each task yields after every claim, so that the tasks take turns in both modes),
//!
//! measures the directory's fdatasync latency, and prints each rate with the ratios the
//! project's targets name. Knobs: `ONCELOG_ASYNC_TASKS` (10000), `ONCELOG_ASYNC_SECS` (3),
//! `ONCELOG_BENCH_DIR` (where the stores go; the default is the system's temporary
//! directory, which may be a RAM disk: point it at the disk you care about).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncelog::{Durability, Options, Store};

const TTL: Duration = Duration::from_secs(72 * 3600);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn base_dir() -> PathBuf {
    std::env::var_os("ONCELOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn open(dir: &Path, durability: Durability) -> Store {
    Options::new()
        .durability(durability)
        .background_maintenance(false)
        .open(dir)
        .expect("open")
}

/// Key number `i`: 32 bytes, distinct for distinct `i`.
fn key(i: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    k[..8].copy_from_slice(&x.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

/// Claims per second from `threads` blocking threads for `secs`.
fn blocking(threads: usize, secs: Duration) -> f64 {
    let dir = tempfile::tempdir_in(base_dir()).expect("temp dir");
    let store = Arc::new(open(dir.path(), Durability::Sync));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, next, stop) = (Arc::clone(&store), Arc::clone(&next), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    assert!(store.claim(key(i), TTL).expect("claim").is_new());
                }
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker");
    }
    next.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Claims per second from `tasks` tasks on a `workers`-thread tokio runtime for `secs`,
/// and the claims each sync covered on average.
fn tasks(durability: Durability, tasks: u64, workers: usize, secs: Duration) -> (f64, f64) {
    let dir = tempfile::tempdir_in(base_dir()).expect("temp dir");
    let store = Arc::new(open(dir.path(), durability));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("runtime");
    let next = Arc::new(AtomicU64::new(0));
    let syncs_before = store.stats().syncs;
    let elapsed = rt.block_on(async {
        let deadline = Instant::now() + secs;
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (store, next) = (Arc::clone(&store), Arc::clone(&next));
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let c = store.claim_async(key(i), TTL).await.expect("claim");
                        assert!(c.is_new());
                        // Tasks take turns, as a server's requests do: a claim under
                        // Buffered never waits, and without this two tasks would run
                        // alone while the other 9,998 wait for them to finish.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        start.elapsed()
    });
    let claims = next.load(Ordering::Relaxed) as f64;
    let syncs = (store.stats().syncs - syncs_before).max(1) as f64;
    (claims / elapsed.as_secs_f64(), claims / syncs)
}

/// The median time of 200 fdatasyncs of a 4 KiB write in `dir`.
fn fdatasync_p50(dir: &Path) -> Duration {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe");
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            f.write_all(&[7u8; 4096]).expect("write");
            let t = Instant::now();
            f.sync_data().expect("sync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs = Duration::from_secs(env_u64("ONCELOG_ASYNC_SECS", if benching { 3 } else { 0 }))
        .max(Duration::from_millis(200));
    let n_tasks = env_u64("ONCELOG_ASYNC_TASKS", 10_000);
    let probe = tempfile::tempdir_in(base_dir()).expect("temp dir");
    let fsync = fdatasync_p50(probe.path());
    println!(
        "stores in {}; fdatasync p50 {:?}",
        base_dir().display(),
        fsync
    );

    let one = blocking(1, secs);
    let two = blocking(2, secs);
    let many = blocking(64, secs);
    let (async_sync, per_sync) = tasks(Durability::Sync, n_tasks, 2, secs);
    let (async_buffered, _) = tasks(Durability::Buffered, n_tasks, 2, secs);
    let ideal64 = 64.0 / fsync.as_secs_f64();

    println!("{:<44} {:>12}", "workload", "claims/s");
    println!("{:<44} {:>12.0}", "blocking Sync, 1 thread", one);
    println!("{:<44} {:>12.0}", "blocking Sync, 2 threads", two);
    println!("{:<44} {:>12.0}", "blocking Sync, 64 threads", many);
    println!(
        "{:<44} {:>12.0}   ({per_sync:.0} claims per sync)",
        format!("async Sync, {n_tasks} tasks, 2 workers"),
        async_sync
    );
    println!(
        "{:<44} {:>12.0}",
        format!("async Buffered, {n_tasks} tasks, 2 workers"),
        async_buffered
    );
    println!();
    println!(
        "2 threads / 1 thread                 {:>6.2}x  (target >= 1.7)",
        two / one
    );
    println!(
        "64 threads / (64 / fsync latency)    {:>6.2}x  (target >= 0.5)",
        many / ideal64
    );
    println!(
        "async Sync / async Buffered          {:>6.2}x  (target >= 0.5)",
        async_sync / async_buffered
    );
    println!(
        "async Sync / 64 blocking threads     {:>6.2}x  (target >= 5)",
        async_sync / many
    );
}
