//! I/O fault injection: a workload of claims, batches, removes and compactions runs once to
//! count its file-system operations, then once per operation with that operation failed —
//! with `EIO`, and, for creates, allocations and writes, with `ENOSPC` (once, and as a disk
//! that stays full from then on). Every run checks (invariants 3 and 5 of docs/DESIGN.md):
//!
//! - nothing panics, and a failed operation reaches the caller as an error or is absorbed
//!   by best-effort work (preparing the next segment, writing a hint);
//! - after a failed sync of a segment, the store refuses every write until reopened;
//! - nothing acknowledged is lost: the directory as it stands, and the directory a power
//!   cut right after the run could leave (`tests/common/powercut.rs`), both open and hold
//!   every acknowledged claim, and no acknowledged remove is undone.
//!
//! `ONCELOG_FAULT_OPS` (default 120) sets the workload's length.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::powercut::{PowerSim, Rng};
use common::{env_u64, sync_opts};
use oncelog::{Error, IoHook, IoOp, RecoveryMode, Store};

const TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Fail operation `at` with EIO.
    Eio,
    /// Fail operation `at` with ENOSPC, if it is a create, allocation or write.
    NoSpaceOnce,
    /// From operation `at` on, fail every create, allocation and write with ENOSPC.
    DiskFull,
}

struct Faults {
    sim: Arc<PowerSim>,
    events: AtomicU64,
    /// Each operation's kind, in order (read from the clean run).
    kinds: std::sync::Mutex<Vec<&'static str>>,
    at: u64,
    mode: Mode,
    /// The failed operation: its kind and whether it was a sync of a live segment.
    failed: std::sync::Mutex<Vec<(String, bool)>>,
}

fn takes_space(op: &IoOp<'_>) -> bool {
    matches!(
        op,
        IoOp::Create { .. } | IoOp::Allocate { .. } | IoOp::Write { .. }
    )
}

impl IoHook for Faults {
    fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        self.kinds.lock().unwrap().push(op.kind());
        if std::env::var("ONCELOG_FAULT_TRACE").is_ok() && self.at != u64::MAX {
            eprintln!("event {n} (fail at {}) {op:?}", self.at);
        }
        let fail = match self.mode {
            Mode::Eio => n == self.at,
            Mode::NoSpaceOnce => n == self.at && takes_space(op),
            Mode::DiskFull => n >= self.at && takes_space(op),
        };
        if fail {
            let name = op.path().file_name().unwrap().to_string_lossy().to_string();
            let segment_sync = op.is_sync() && name.ends_with(".olog");
            self.failed
                .lock()
                .unwrap()
                .push((format!("{} {name}", op.kind()), segment_sync));
            let errno = if self.mode == Mode::Eio { 5 } else { 28 };
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        self.sim.before(op)
    }

    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &std::io::Error>) {
        self.sim.after(op, outcome);
    }
}

fn key(i: u64) -> String {
    if i.is_multiple_of(3) {
        format!("evt_{i}_{}", "k".repeat(2000 + (i as usize * 53) % 1500))
    } else {
        format!("evt_{i}")
    }
}

/// What the workload had acknowledged.
#[derive(Default)]
struct Acked {
    claimed: BTreeSet<u64>,
    removed: BTreeSet<u64>,
    /// Keys whose remove failed: an operation that returned an error may or may not have
    /// taken effect, so these are not checked.
    maybe_removed: BTreeSet<u64>,
}

/// Runs the workload; returns what was acknowledged and whether every write after a
/// failed segment sync was refused.
fn workload(store: &Store, n_ops: u64, hook: Option<&Faults>) -> (Acked, u64) {
    let mut acked = Acked::default();
    let mut rng = Rng(0x0f_a017);
    let mut next = 0u64;
    let mut refused_after_failed_sync = 0;
    for _ in 0..n_ops {
        let poisoned_before = hook.is_some_and(|h| h.failed.lock().unwrap().iter().any(|f| f.1));
        let wrote_ok = match rng.below(10) {
            0..=4 => {
                next += 1;
                let ok = store.claim(key(next), TTL);
                if let Ok(c) = &ok {
                    assert!(c.is_new(), "fresh key {next} answered duplicate");
                    acked.claimed.insert(next);
                }
                ok.is_ok()
            }
            5 | 6 => {
                let keys: Vec<u64> = (0..1 + rng.below(5)).map(|j| next + 1 + j).collect();
                next += keys.len() as u64;
                let names: Vec<String> = keys.iter().map(|&k| key(k)).collect();
                let ok = store.claim_many(&names, TTL);
                if let Ok(v) = &ok {
                    assert!(v.iter().all(|c| c.is_new()));
                    acked.claimed.extend(&keys);
                }
                ok.is_ok()
            }
            7 | 8 if next > 0 => {
                let k = 1 + rng.below(next);
                // Removing a key already gone writes nothing, and may answer even when the
                // store refuses writes.
                let ok = store.remove(key(k));
                match ok {
                    Ok(true) => {
                        acked.removed.insert(k);
                    }
                    Ok(false) => {}
                    Err(_) => {
                        acked.maybe_removed.insert(k);
                    }
                }
                matches!(ok, Ok(true))
            }
            _ => {
                // Compaction failing is fine; it must not take acknowledged work along.
                let _ = store.compact();
                false
            }
        };
        if poisoned_before {
            assert!(
                !wrote_ok,
                "a write was acknowledged after a failed segment sync: {:?}",
                hook.map(|h| h.failed.lock().unwrap().clone())
            );
            refused_after_failed_sync += 1;
        }
    }
    (acked, refused_after_failed_sync)
}

/// Every acknowledged claim is claimed and no acknowledged remove is undone.
fn check(store: &Store, acked: &Acked, what: &str) {
    for k in acked.claimed.difference(&acked.maybe_removed) {
        let seen = store.get(key(*k)).unwrap();
        if acked.removed.contains(k) {
            assert!(seen.is_none(), "{what}: removed key {k} came back");
        } else {
            assert!(seen.is_some(), "{what}: acknowledged claim {k} lost");
        }
    }
}

#[test]
fn injected_io_failures_never_panic_or_lose_acknowledged_work() {
    let n_ops = env_u64("ONCELOG_FAULT_OPS", 120);

    // Count the operations of a clean run.
    let tmp = tempfile::tempdir().unwrap();
    let sim = PowerSim::new(&tmp.path().join("s"));
    let counter = Arc::new(Faults {
        sim,
        events: AtomicU64::new(0),
        kinds: Default::default(),
        at: u64::MAX,
        mode: Mode::Eio,
        failed: Default::default(),
    });
    let store = sync_opts()
        .io_hook(counter.clone())
        .open(tmp.path().join("s"))
        .unwrap();
    let (acked, _) = workload(&store, n_ops, None);
    check(&store, &acked, "clean run");
    store.close().unwrap();
    let total = counter.events.load(Ordering::SeqCst);
    let kinds = counter.kinds.lock().unwrap().clone();

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut runs = 0;
    let mut refused = 0;
    let mut cut_rng = Rng(0xc07);
    for mode in [Mode::Eio, Mode::NoSpaceOnce, Mode::DiskFull] {
        for at in 0..total {
            // ENOSPC only hits operations that take space; elsewhere the run is the clean
            // one (operation numbers can shift a little with thread timing: a sample).
            let space = ["create", "allocate", "write"].contains(&kinds[at as usize]);
            if mode != Mode::Eio && !space {
                continue;
            }
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("s");
            let hook = Arc::new(Faults {
                sim: PowerSim::new(&dir),
                events: AtomicU64::new(0),
                kinds: Default::default(),
                at,
                mode,
                failed: Default::default(),
            });
            let store = match sync_opts().io_hook(hook.clone()).open(&dir) {
                Ok(s) => s,
                Err(Error::Io { .. }) => continue, // failed at open: a clear error
                Err(e) => panic!("open with a failure at {at} ({mode:?}): {e}"),
            };
            runs += 1;
            let (acked, r) = workload(&store, n_ops, Some(&hook));
            refused += r;
            for f in hook.failed.lock().unwrap().iter() {
                *injected
                    .entry(format!("{mode:?} {}", f.0.split(' ').next().unwrap()))
                    .or_default() += 1;
            }
            // A power cut right now, then the directory as it stands.
            let cut_dir = tmp.path().join("cut");
            hook.sim.cut(&cut_dir, &mut cut_rng);
            // Dropping closes (best effort): it may only make more durable.
            drop(store);
            // Salvage must keep the same promises: an injected failure leaves no damage
            // but what a crash or a power cut leaves.
            let salvage_dir = tmp.path().join("cut-salvage");
            let _ = std::fs::remove_dir_all(&salvage_dir);
            std::fs::create_dir_all(&salvage_dir).unwrap();
            common::copy_dir(&cut_dir, &salvage_dir);
            for (d, what, recovery) in [
                (
                    &cut_dir,
                    "after a power cut",
                    RecoveryMode::TolerateTornTail,
                ),
                (
                    &salvage_dir,
                    "after a power cut, salvaged",
                    RecoveryMode::Salvage,
                ),
                (&dir, "after a crash", RecoveryMode::TolerateTornTail),
            ] {
                let s = sync_opts()
                    .recovery_mode(recovery)
                    .open(d)
                    .unwrap_or_else(|e| {
                        panic!(
                        "{what}, failure at {at} ({mode:?}) left a store that does not open: {e}"
                    )
                    });
                let failed = hook.failed.lock().unwrap().clone();
                check(
                    &s,
                    &acked,
                    &format!("{what}, failure at {at} ({mode:?}: {failed:?})"),
                );
                s.close().unwrap();
            }
        }
    }
    println!(
        "faults: {total} file-system operations in the workload; {runs} runs with an injected \
         failure ({} injected: {injected:?}); {refused} writes refused after a failed segment \
         sync; each run checked as it stood and after a power cut, opened as usual and salvaged; \
         0 violations",
        injected.values().sum::<u64>()
    );
    assert!(runs > 0 && !injected.is_empty());
}
