//! Crash at every step of compaction, segment deletion and hint writing.
//!
//! The directory is prepared through the library with a clock two hours in the past, so
//! that by the real clock some claims have expired (their segments become sparse or wholly
//! dead) while others, and the tombstones of removed keys, are still needed. Then
//! `oncelog compact` runs with `ONCELOG_CRASH_AT=<step>` and aborts at that step (a crash:
//! no destructors, no syncs). The test checks that it did abort there, reopens, and checks
//! DESIGN invariants 3 and 4: every acknowledged claim that has not expired is still
//! claimed, and no removed or expired key came back. Then it lets maintenance finish and
//! checks again, across one more restart.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use oncelog::{Durability, ManualClock, Options, Store, MIN_SEGMENT_SIZE};

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

fn open(dir: &Path) -> Store {
    Options::new()
        .background_maintenance(false)
        .open(dir)
        .unwrap()
}

#[test]
fn a_crash_at_any_maintenance_step_loses_nothing_and_resurrects_nothing() {
    for step in STEPS {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let out = Command::new(env!("CARGO_BIN_EXE_oncelog"))
            .args(["compact", "--dir"])
            .arg(dir.path())
            .env("ONCELOG_CRASH_AT", step)
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
