//! Crash at every step of compaction, segment deletion and hint writing.
//!
//! The directory is prepared through the library with a clock two hours in the past, so
//! that by the real clock some claims have expired (their segments become sparse or wholly
//! dead) while others, and the tombstones of removed keys, are still needed. Then a child
//! process (this test binary, run again) opens the store with an `IoHook` that aborts the
//! process at one step of maintenance (a crash: no destructors, no syncs) and runs
//! `compact`. The test checks that the child did abort there, reopens, and checks
//! invariants 3 and 4 of docs/DESIGN.md: every acknowledged claim that has not expired is
//! still claimed, and no removed or expired key came back. Then it lets maintenance finish
//! and checks again, across one more restart.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oncelog::{Durability, IoHook, IoOp, ManualClock, Options, Store, MIN_SEGMENT_SIZE};

const STEPS: [&str; 6] = [
    "delete-before-unlink",
    "delete-after-unlink",
    "compact-before-rename",
    "compact-after-rename",
    "compact-after-sync",
    "hint-before-rename",
];

const LONG: u64 = 1500;

fn long_key(i: u64) -> String {
    format!("long_{i:027}")
}

fn short_key(i: u64) -> String {
    format!("short_{i:026}")
}

/// Long keys are claimed for 72 h; every tenth is then removed. Short keys expired an hour
/// ago. Segments: first long and short keys mixed 1:3 (sparse once the short ones expire),
/// then short keys alone with the removes among them (dead but for the tombstones), then
/// short keys alone (wholly dead).
fn prepare(dir: &Path) {
    let past = SystemTime::now() - Duration::from_secs(2 * 3600);
    let store = Options::new()
        .durability(Durability::Buffered)
        .clock(ManualClock::new(past))
        .segment_size(MIN_SEGMENT_SIZE)
        .background_maintenance(false)
        .open(dir)
        .unwrap();
    let long = Duration::from_secs(72 * 3600);
    let short = Duration::from_secs(3600);
    let mut s = 0;
    for i in 0..LONG {
        assert!(store.claim(long_key(i), long).unwrap().is_new());
        for _ in 0..3 {
            assert!(store.claim(short_key(s), short).unwrap().is_new());
            s += 1;
        }
    }
    for i in (0..LONG).step_by(10) {
        assert!(store.remove(long_key(i)).unwrap());
        for _ in 0..20 {
            assert!(store.claim(short_key(s), short).unwrap().is_new());
            s += 1;
        }
    }
    for _ in 0..4000 {
        assert!(store.claim(short_key(s), short).unwrap().is_new());
        s += 1;
    }
    store.close().unwrap();
}

fn check(store: &Store, when: &str) {
    for i in 0..LONG {
        let claimed = store.get(long_key(i)).unwrap().is_some();
        assert_eq!(claimed, i % 10 != 0, "{when}: long key {i}");
    }
    for s in (0..10_000).step_by(7) {
        assert!(
            store.get(short_key(s)).unwrap().is_none(),
            "{when}: expired key {s} came back"
        );
    }
}

/// Aborts the process at one step of maintenance, named as in `STEPS` and recognised by the
/// file-system operation that makes it (docs/FORMAT.md §9 has the crash analysis of each).
struct CrashAt {
    step: &'static str,
    /// A compacted copy has been renamed into place (for "compact-after-sync").
    renamed: AtomicBool,
}

fn ends_with(path: &Path, suffix: &str) -> bool {
    path.to_str().is_some_and(|p| p.ends_with(suffix))
}

impl IoHook for CrashAt {
    fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
        let here = match (self.step, op) {
            ("delete-before-unlink", IoOp::Remove { path }) => ends_with(path, ".olog"),
            ("compact-before-rename", IoOp::Rename { to, .. }) => ends_with(to, ".olog"),
            ("hint-before-rename", IoOp::Rename { to, .. }) => ends_with(to, ".hint"),
            _ => false,
        };
        if here {
            std::process::abort();
        }
        Ok(())
    }

    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &std::io::Error>) {
        if outcome.is_err() {
            return;
        }
        let here = match (self.step, op) {
            ("delete-after-unlink", IoOp::Remove { path }) => ends_with(path, ".olog"),
            ("compact-after-rename", IoOp::Rename { to, .. }) => ends_with(to, ".olog"),
            ("compact-after-sync", IoOp::Rename { to, .. }) => {
                self.renamed
                    .fetch_or(ends_with(to, ".olog"), Ordering::SeqCst);
                false
            }
            ("compact-after-sync", IoOp::SyncDir { .. }) => self.renamed.load(Ordering::SeqCst),
            _ => false,
        };
        if here {
            std::process::abort();
        }
    }
}

/// Set in the child process: the step to crash at and the directory.
const CHILD_ENV: &str = "ONCELOG_TEST_MAINTENANCE_CRASH";

/// The child: open, then compact until the hook aborts the process. Exits 3 if it never did.
fn child(spec: &str) -> ! {
    let (step, dir) = spec.split_once(':').expect("step:dir");
    let step = STEPS
        .into_iter()
        .find(|s| *s == step)
        .expect("a known step");
    let hook = Arc::new(CrashAt {
        step,
        renamed: AtomicBool::new(false),
    });
    let store = Options::new()
        .background_maintenance(false)
        .io_hook(hook)
        .open(dir)
        .unwrap();
    store.compact().unwrap();
    std::process::exit(3);
}

fn open(dir: &Path) -> Store {
    Options::new()
        .background_maintenance(false)
        .open(dir)
        .unwrap()
}

#[test]
fn a_crash_at_any_maintenance_step_loses_nothing_and_resurrects_nothing() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    for step in STEPS {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let spec = format!("{step}:{}", dir.path().display());
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_crash_at_any_maintenance_step_loses_nothing_and_resurrects_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{step}: the step was never reached ({}; stderr {})",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let store = open(dir.path());
        check(&store, &format!("after a crash at {step}"));
        let report = store.compact().unwrap();
        check(&store, &format!("after maintenance following {step}"));
        drop(store);
        let store = open(dir.path());
        check(&store, &format!("reopened after {step}"));
        let s = store.stats();
        assert_eq!(
            s.recovery_hinted_segments + 1,
            s.segments,
            "{step}: {report:?}"
        );
        eprintln!("{step}: recovered; then {report:?}");
    }
}
