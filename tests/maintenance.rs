//! Expiry, segment deletion, compaction and hints (issue: memory and disk stay bounded).
//!
//! Time is moved with `ManualClock`; maintenance is run with `Store::compact` (or, where
//! the background thread is what is tested, waited for with a bounded poll).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::segfile::flip;
use common::{clock, fixed_key, opts_no_bg, records, segments};
use oncelog::{Claim, ManualClock, Store, MIN_SEGMENT_SIZE};

const HOUR: Duration = Duration::from_secs(3600);
/// Keys of 32 bytes: every claim record has the same size.
const KEY_LEN: usize = 32;

/// Files in `dir` whose names end with `suffix`, and their total size. A file renamed
/// meanwhile (a rotation's seal job names the new segment on a thread of its own) is
/// skipped.
fn files(dir: &Path, suffix: &str) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(suffix) {
            match e.metadata() {
                Ok(m) => {
                    n += 1;
                    bytes += m.len();
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("{}: {err}", e.path().display()),
            }
        }
    }
    (n, bytes)
}

/// Polls `cond` (which another thread will make true); bounded, so a bug fails the test.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::yield_now();
    }
}

#[test]
fn expiry_empties_the_index_deletes_segments_and_gives_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let empty_index = store.stats().index_bytes;
    let n = 20_000;
    for i in 0..n {
        assert!(store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new());
    }
    let full = store.stats();
    assert_eq!(full.live_keys, n);
    assert!(full.segments > 10, "{} segments", full.segments);
    // Counted in the store: the newest segment's file keeps its temporary name until its
    // predecessor's seal job is done.
    let segs_before = full.segments as usize;

    clock.advance(HOUR);
    // Invisible at once, before any maintenance ran.
    assert_eq!(store.get(fixed_key(7, KEY_LEN)).unwrap(), None);
    let st = store.stats();
    assert_eq!((st.live_keys, st.expired_unswept), (0, n));

    let report = store.compact().unwrap();
    assert_eq!(report.entries_swept, n);
    assert_eq!(
        report.segments_written, 0,
        "nothing to rewrite: all expired"
    );
    assert_eq!(report.segments_deleted as usize, segs_before - 1);
    let st = store.stats();
    assert_eq!((st.keys, st.expired_unswept), (0, 0));
    assert_eq!(st.segments, 1, "only the active segment is left");
    assert_eq!(files(dir.path(), ".olog").0, 1);
    assert_eq!(
        files(dir.path(), ".hint").0,
        0,
        "hints go with their segments: {report:?}"
    );
    assert!(
        st.index_bytes <= empty_index + 64 * 1024,
        "index kept {} bytes after expiry (empty: {empty_index}, full: {})",
        st.index_bytes,
        full.index_bytes
    );
    eprintln!(
        "index bytes: empty {empty_index}, {n} keys {} ({:.1} B/key), after expiry {}",
        full.index_bytes,
        full.index_bytes as f64 / n as f64,
        st.index_bytes
    );
    assert!(store.claim(fixed_key(7, KEY_LEN), HOUR).unwrap().is_new());
    drop(store);
    // And the deletions hold across a restart.
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().live_keys, 1);
    assert!(!store.claim(fixed_key(7, KEY_LEN), HOUR).unwrap().is_new());
    assert!(store.claim(fixed_key(8, KEY_LEN), HOUR).unwrap().is_new());
}

#[test]
fn the_background_thread_sweeps_and_deletes_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock)
        .background_maintenance(true)
        .maintenance_interval(Duration::from_millis(5))
        .open(dir.path())
        .unwrap();
    for i in 0..10_000 {
        assert!(store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new());
    }
    assert!(store.stats().segments > 5);
    clock.advance(HOUR);
    // The counters are added up when a run ends, after its work.
    wait_until("maintenance swept and deleted", || {
        let s = store.stats();
        s.keys == 0 && s.segments == 1 && s.entries_swept == 10_000
    });
    let s = store.stats();
    assert!(s.segments_deleted > 5, "{s:?}");
    assert_eq!(s.maintenance_errors, 0);
    store.close().unwrap();
}

/// Many TTL periods of a steady stream with one TTL: segments are deleted whole as they
/// expire (a FIFO), nothing is rewritten, and the disk never holds more than twice the
/// live records plus one segment.
#[test]
fn a_long_run_with_a_uniform_ttl_keeps_disk_bounded_without_rewriting() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let ttl = Duration::from_secs(100);
    let per_second = 200u64;
    let seconds = 1000u64; // ten TTL periods
    let record = 64u64; // a claim of a 32-byte key
    let mut next = 0u64;
    let mut worst = 0f64;
    let mut appended = 0u64;
    let mut written = 0u64;
    for t in 0..seconds {
        for _ in 0..per_second {
            assert!(store.claim(fixed_key(next, KEY_LEN), ttl).unwrap().is_new());
            next += 1;
            appended += record;
        }
        clock.advance(Duration::from_secs(1));
        if t % 5 == 4 {
            written += store.compact().unwrap().bytes_written;
        }
        // Live: the claims of the last 100 seconds. (Synced first, so that no segment is
        // between its two names while the files are counted.)
        store.sync().unwrap();
        let live = per_second * (t + 1).min(100) * record;
        let (_, disk) = files(dir.path(), ".olog");
        let (_, tmp) = files(dir.path(), ".tmp");
        let bound = 2 * live + MIN_SEGMENT_SIZE;
        assert!(
            disk + tmp <= bound,
            "second {t}: {disk} + {tmp} segment bytes on disk, bound {bound} (live {live})"
        );
        if t >= 100 {
            worst = worst.max((disk + tmp) as f64 / live as f64);
        }
    }
    let s = store.stats();
    assert_eq!(s.compactions, 0, "a uniform TTL never needs a rewrite");
    assert!(s.segments_deleted > 100, "{} deleted", s.segments_deleted);
    let amplification = (appended + written) as f64 / appended as f64;
    assert!(amplification <= 1.1, "write amplification {amplification}");
    eprintln!(
        "uniform TTL, {seconds} s at {per_second}/s: write amplification {amplification:.3}, \
         worst disk/live {worst:.2}, {} segments deleted",
        s.segments_deleted
    );
}

/// Removed keys and mixed TTLs leave sparse segments; compaction rewrites them, and what
/// it keeps (and drops) survives a restart with the same answers.
#[test]
fn compaction_rewrites_sparse_segments_and_keeps_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let n = 12_000u64;
    for i in 0..n {
        // Every third key lives long; the rest expire in a minute.
        let ttl = if i % 3 == 0 {
            HOUR
        } else {
            Duration::from_secs(60)
        };
        assert!(store.claim(fixed_key(i, KEY_LEN), ttl).unwrap().is_new());
    }
    // Remove half of the long-lived ones.
    for i in (0..n).filter(|i| i % 6 == 0) {
        assert!(store.remove(fixed_key(i, KEY_LEN)).unwrap());
    }
    clock.advance(Duration::from_secs(61));
    let disk_before = store.stats().disk_bytes;
    let report = store.compact().unwrap();
    assert!(report.segments_written > 0, "{report:?}");
    assert!(report.bytes_reclaimed > 0, "{report:?}");
    let after = store.stats();
    assert!(after.disk_bytes < disk_before);
    eprintln!("mixed TTLs and removes: {report:?}");
    let expect = |i: u64| i.is_multiple_of(3) && !i.is_multiple_of(6);
    let check = |store: &Store| {
        for i in 0..n {
            assert_eq!(
                store.get(fixed_key(i, KEY_LEN)).unwrap().is_some(),
                expect(i),
                "key {i} after compaction"
            );
        }
    };
    check(&store);
    // A second run finds nothing more worth doing.
    let again = store.compact().unwrap();
    assert_eq!((again.segments_written, again.segments_deleted), (0, 0));
    drop(store);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    check(&store);
    for i in 0..n {
        let answer = store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap();
        assert_eq!(answer.is_new(), !expect(i), "claim of key {i} after reopen");
    }
}

/// A tombstone is kept as long as the claim it hides has not expired, even when its own
/// segment is rewritten and the claim's segment stays: otherwise the removed key would
/// come back on the next open.
#[test]
fn a_removed_key_stays_removed_through_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let short = Duration::from_secs(10);
    // Segment A: the victim's claim, mostly among long-lived keys (A stays as it is).
    assert!(store.claim("victim", HOUR).unwrap().is_new());
    for i in 0..700 {
        assert!(store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new());
    }
    let mut i = 10_000;
    let segments = store.stats().segments;
    while store.stats().segments == segments {
        assert!(store.claim(fixed_key(i, KEY_LEN), short).unwrap().is_new());
        i += 1;
    }
    // Segment B: the remove among short-lived keys (B becomes sparse).
    assert!(store.remove("victim").unwrap());
    for j in i..i + 3000 {
        assert!(store.claim(fixed_key(j, KEY_LEN), short).unwrap().is_new());
    }
    clock.advance(short);
    let report = store.compact().unwrap();
    assert!(report.segments_written >= 1, "{report:?}");
    assert_eq!(store.get("victim").unwrap(), None);
    drop(store);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(
        store.get("victim").unwrap(),
        None,
        "resurrected by compaction"
    );
    // Compact again after the restart (hints, rewritten segments) and reopen once more.
    store.compact().unwrap();
    drop(store);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.get("victim").unwrap(), None);
    assert!(store.get(fixed_key(5, KEY_LEN)).unwrap().is_some());
    // Once the hidden claim's own expiry passes, the tombstone may go.
    clock.advance(HOUR);
    store.compact().unwrap();
    assert!(store.claim("victim", HOUR).unwrap().is_new());
}

/// Several threads claim the same keys while compaction and expiry run: every key is
/// `New` exactly once.
#[test]
fn claims_stay_exactly_once_while_maintenance_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Arc::new(opts_no_bg(&clock).open(dir.path()).unwrap());
    // Dead weight for compaction: expired keys, and removed ones.
    let old = 8_000u64;
    for i in 0..old {
        assert!(store
            .claim(fixed_key(i, KEY_LEN), Duration::from_secs(5))
            .unwrap()
            .is_new());
    }
    for i in 0..old / 2 {
        assert!(store.remove(fixed_key(i, KEY_LEN)).unwrap());
    }
    for i in old..old + 4000 {
        assert!(store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new());
    }
    clock.advance(Duration::from_secs(6));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let compactor = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut runs = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || runs < 3 {
                store.compact().unwrap();
                runs += 1;
            }
            runs
        })
    };
    // Every key of 0..old+8000 is claimed by every thread: the old ones (expired or
    // removed) and the new ones must each be New exactly once; the live ones never.
    let threads = 4;
    let total = old + 8000;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut news = Vec::new();
                for j in 0..total {
                    // Different orders per thread.
                    let i = (j * 7919 + t * 1009) % total;
                    if store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new() {
                        news.push(i);
                    }
                }
                news
            })
        })
        .collect();
    let mut count: HashMap<u64, u32> = HashMap::new();
    for w in workers {
        for i in w.join().unwrap() {
            *count.entry(i).or_default() += 1;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = compactor.join().unwrap();
    for i in 0..total {
        let expected = u32::from(!(old..old + 4000).contains(&i));
        assert_eq!(count.get(&i).copied().unwrap_or(0), expected, "key {i}");
    }
    let s = store.stats();
    assert!(
        s.compactions + s.segments_deleted > 0,
        "maintenance did nothing"
    );
    eprintln!("{runs} maintenance runs during the claims; {s:?}");
    drop(store);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for i in 0..total {
        assert!(
            store.get(fixed_key(i, KEY_LEN)).unwrap().is_some(),
            "key {i} after reopen"
        );
    }
}

/// Answers of `get` for keys `0..n`, plus a few never claimed.
fn answers(store: &Store, n: u64) -> Vec<Option<(SystemTime, SystemTime)>> {
    (0..n + 50)
        .map(|i| {
            store
                .get(fixed_key(i, KEY_LEN))
                .unwrap()
                .map(|s| (s.first_seen, s.expires_at))
        })
        .collect()
}

/// Fills a directory with several segments, some removes and re-claims, and hints.
fn hinted_store(dir: &Path, clock: &ManualClock, n: u64) -> Vec<Option<(SystemTime, SystemTime)>> {
    let store = opts_no_bg(clock).open(dir).unwrap();
    for i in 0..n {
        assert!(store.claim(fixed_key(i, KEY_LEN), HOUR).unwrap().is_new());
    }
    for i in (0..n).step_by(5) {
        assert!(store.remove(fixed_key(i, KEY_LEN)).unwrap());
    }
    for i in (0..n).step_by(10) {
        assert!(store
            .claim(fixed_key(i, KEY_LEN), 2 * HOUR)
            .unwrap()
            .is_new());
    }
    let report = store.compact().unwrap();
    assert!(report.hints_written > 3, "{report:?}");
    let expected = answers(&store, n);
    drop(store);
    expected
}

#[test]
fn hints_rebuild_the_same_index_and_damaged_or_missing_ones_fall_back_to_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let n = 8000;
    let expected = hinted_store(dir.path(), &clock, n);
    let (hints, _) = files(dir.path(), ".hint");
    let sealed = files(dir.path(), ".olog").0 - 1;
    assert_eq!(hints, sealed, "one hint per sealed segment");

    // Good hints: every sealed segment is replayed from its hint.
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_hinted_segments as usize, sealed);
    assert_eq!(answers(&store, n), expected);
    drop(store);

    // Damage: flip one byte in each of two hints, truncate a third, and swap in another
    // segment's (valid) hint for a fourth.
    let mut paths: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    paths.sort();
    for (i, p) in paths.iter().take(2).enumerate() {
        let mut b = std::fs::read(p).unwrap();
        let at = 70 + i * 24 + 9;
        b[at] ^= 0x10;
        std::fs::write(p, b).unwrap();
    }
    let b = std::fs::read(&paths[2]).unwrap();
    std::fs::write(&paths[2], &b[..b.len() - 30]).unwrap();
    std::fs::copy(&paths[5], &paths[4]).unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_hinted_segments as usize, sealed - 4);
    assert_eq!(answers(&store, n), expected, "with damaged hints");
    // Maintenance replaces the bad hints.
    assert_eq!(store.compact().unwrap().hints_written, 4);
    drop(store);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_hinted_segments as usize, sealed);
    drop(store);

    // Missing: delete every hint.
    for p in &paths {
        std::fs::remove_file(p).unwrap();
    }
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_hinted_segments, 0);
    assert_eq!(answers(&store, n), expected, "without hints");
    drop(store);

    // A store with its own hasher ignores hints (they hold xxh3 hashes).
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    store.compact().unwrap();
    drop(store);
    let store = opts_no_bg(&clock)
        .hasher(|k| k.len() as u64)
        .open(dir.path())
        .unwrap();
    assert_eq!(store.stats().recovery_hinted_segments, 0);
    assert_eq!(answers(&store, n), expected, "custom hasher");
}

#[test]
fn open_reports_progress_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    hinted_store(dir.path(), &clock, 4000);
    let segments = files(dir.path(), ".olog").0 as u64;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let store = opts_no_bg(&clock)
        .open_progress(move |p| s.lock().push(*p))
        .open(dir.path())
        .unwrap();
    let seen = seen.lock();
    assert_eq!(seen.len() as u64, segments);
    for (i, p) in seen.iter().enumerate() {
        assert_eq!(p.segments_done, i as u64 + 1);
        assert_eq!(p.segments_total, segments);
    }
    let last = seen.last().unwrap();
    assert_eq!(last.records, store.stats().recovered_records);
    assert_eq!(last.segments_hinted, segments - 1);
}

#[test]
fn claim_after_expiry_is_new_even_before_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.claim("k", Duration::from_secs(5)).unwrap().is_new());
    clock.advance(Duration::from_secs(5));
    assert_eq!(store.claim("k", HOUR).unwrap(), Claim::New);
    assert_eq!(store.stats().expired, 1);
}

/// The hint files of a directory, by name, with their bytes.
fn hint_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".hint"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Compaction writes each copy's hint from the records it kept, in the same pass: the
/// hint is byte for byte the one a scan of the copy writes, and a reopen replays the
/// copies from them with the same answers.
#[test]
fn compaction_writes_each_copys_hint_from_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let long = Duration::from_secs(24 * 3600);
    let short = Duration::from_secs(60);
    for i in 0..4_000u64 {
        let ttl = if i % 4 == 0 { long } else { short };
        assert!(store.claim(fixed_key(i, 32), ttl).unwrap().is_new());
        if i % 40 == 8 {
            assert!(store.remove(fixed_key(i - 8, 32)).unwrap());
        }
    }
    clock.advance(2 * short);
    let report = store.compact().unwrap();
    assert!(report.segments_written >= 2, "{report:?}");
    let (sealed, _) = files(dir.path(), ".olog");
    let by_compaction = hint_files(dir.path());
    assert_eq!(
        by_compaction.len(),
        sealed - 1,
        "one hint per sealed segment"
    );
    let answers = |store: &Store| -> Vec<bool> {
        (0..4_000u64)
            .map(|i| store.get(fixed_key(i, 32)).unwrap().is_some())
            .collect()
    };
    let before = answers(&store);
    drop(store);

    // The same directory without hints: maintenance scans every segment for its hint.
    for name in by_compaction.keys() {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_hinted_segments, 0);
    let report = store.compact().unwrap();
    assert_eq!(report.segments_written, 0, "{report:?}");
    assert_eq!(hint_files(dir.path()), by_compaction);
    drop(store);

    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert_eq!(
        store.stats().recovery_hinted_segments as usize,
        by_compaction.len()
    );
    assert_eq!(answers(&store), before);
}

/// A record damaged inside a sealed segment that `open` replayed from its hint (so nobody
/// read it) is found by the first maintenance run, counted, and that segment is left out of
/// compaction: the runs go on succeeding instead of failing on it every time.
#[test]
fn damage_in_a_hinted_segment_is_found_once_and_does_not_fail_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let short = Duration::from_secs(60);
    let long = Duration::from_secs(24 * 3600);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    for i in 0..3_000u64 {
        let ttl = if i % 10 == 0 { long } else { short };
        assert!(store.claim(fixed_key(i, 32), ttl).unwrap().is_new());
    }
    assert!(store.compact().unwrap().hints_written >= 2);
    drop(store);
    // Damage a record in the middle of the first (sealed, hinted) segment.
    let first = segments(dir.path()).remove(0);
    let recs = records(&first);
    flip(&first, recs[recs.len() / 2].offset + 20);

    clock.advance(2 * short);
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(store.stats().recovery_hinted_segments >= 2);
    let report = store.compact().unwrap();
    assert!(report.segments_verified >= 2, "{report:?}");
    assert_eq!(report.damaged_found, 1, "{report:?}");
    assert_eq!(store.stats().damaged_segments, 1);
    // The damaged segment is not compacted; the other sparse ones are.
    assert!(report.segments_written >= 1, "{report:?}");
    assert!(first.exists());
    let again = store.compact().unwrap();
    assert_eq!((again.segments_verified, again.damaged_found), (0, 0));
    assert_eq!(store.stats().maintenance_errors, 0);
    assert_eq!(store.stats().damaged_segments, 1);
    // Undamaged long-lived keys still answer.
    assert!(store.get(fixed_key(2_990, 32)).unwrap().is_some());
}

/// A tombstone is kept while the claim it hides may still be read, which used to mean
/// until that claim's own expiry. Once every segment before the tombstone's is gone, it
/// hides nothing: the segment holding only it (and dead records) goes in the same run, and
/// the removed key stays removed across a reopen. Both ways a segment can go are checked:
/// deleted whole by the sweep's pass (compaction off), and by compaction too.
#[test]
fn a_tombstone_goes_once_the_segments_before_it_are_gone() {
    for compaction in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let opts = || {
            let o = opts_no_bg(&clock);
            if compaction {
                o
            } else {
                o.compaction_threshold(0.0)
            }
        };
        let store = opts().open(dir.path()).unwrap();
        let long = Duration::from_secs(100 * 3600);
        let mut i = 0u64;
        let mut fill_until = |store: &Store, n: usize| {
            fill_segments(store, n, || {
                i += 1;
                format!("filler-{i:06}")
            });
        };
        // Segment 1: the victim's claim, then filler that expires soon.
        assert!(store.claim("victim", long).unwrap().is_new());
        fill_until(&store, 2);
        // Segment 2: the victim's tombstone (it carries the claim's 100 h expiry), filler.
        assert!(store.remove("victim").unwrap());
        fill_until(&store, 3);
        let first_two: Vec<_> = segments(dir.path()).into_iter().take(2).collect();
        clock.advance(Duration::from_secs(120));
        let report = store.compact().unwrap();
        for seg in &first_two {
            assert!(
                !seg.exists(),
                "compaction {compaction}: {} kept ({report:?})",
                seg.file_name().unwrap().to_string_lossy()
            );
        }
        // Both went whole (segment 2 right after segment 1, in the same run).
        assert_eq!(report.segments_written, 0, "{report:?}");
        assert!(store.get("victim").unwrap().is_none());
        store.close().unwrap();
        let store = opts().open(dir.path()).unwrap();
        assert!(
            store.get("victim").unwrap().is_none(),
            "the removed key came back"
        );
        assert!(store.claim("victim", long).unwrap().is_new());
        store.close().unwrap();
    }
}

/// Compaction of the oldest segment drops its tombstones: the claims they hid were before
/// them in the same segment, and are dead.
#[test]
fn compacting_the_oldest_segment_drops_its_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    let long = Duration::from_secs(100 * 3600);
    assert!(store.claim("keep", long).unwrap().is_new());
    assert!(store.claim("victim", long).unwrap().is_new());
    assert!(store.remove("victim").unwrap());
    let mut i = 0u64;
    while segments(dir.path()).len() < 2 {
        let k = format!("filler-{i:06}");
        assert!(store.claim(k, Duration::from_secs(60)).unwrap().is_new());
        i += 1;
    }
    let first = segments(dir.path()).remove(0);
    let kinds = |p: &Path| records(p).iter().map(|r| r.kind).collect::<Vec<_>>();
    assert!(kinds(&first).contains(&oncelog::format::RecordKind::Remove));
    clock.advance(Duration::from_secs(120));
    let report = store.compact().unwrap();
    assert_eq!(report.segments_written, 1, "{report:?}");
    let left: Vec<Vec<u8>> = records(&first)
        .into_iter()
        .filter(|r| r.kind != oncelog::format::RecordKind::Seal)
        .map(|r| r.key)
        .collect();
    assert_eq!(left, vec![b"keep".to_vec()], "the tombstone was kept");
    store.close().unwrap();
    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(
        store.get("victim").unwrap().is_none(),
        "the removed key came back"
    );
    assert!(store.get("keep").unwrap().is_some());
    store.close().unwrap();
}

/// Claims short-lived filler keys (`filler-<n>`, from `*next`) until `dir` holds `n`
/// segments.
fn fill_until(store: &Store, dir: &Path, next: &mut u64, n: usize) {
    fill_segments(store, n, || {
        let key = format!("filler-{next:06}");
        *next += 1;
        key
    });
    assert_eq!(segments(dir).len(), n);
}

/// Claims `key()`s for a minute until the store has `n` segments, then syncs, which
/// makes the newest segment's name visible. Counting the files instead would race with
/// the seal job, which renames a new segment into place while claims already go into it.
fn fill_segments(store: &Store, n: usize, mut key: impl FnMut() -> String) {
    while (store.stats().segments as usize) < n {
        assert!(store
            .claim(key(), Duration::from_secs(60))
            .unwrap()
            .is_new());
    }
    store.sync().unwrap();
}

/// `begin(key, lease)`, which must acquire the key.
fn acquire(store: &Store, key: &str, lease: Duration) -> oncelog::Ticket {
    match store.begin(key, lease).unwrap() {
        oncelog::Begin::Acquired(ticket) => ticket,
        other => panic!("{key} not acquired: {other:?}"),
    }
}

/// The kinds of the records in segment file `p`.
fn kinds(p: &Path) -> Vec<oncelog::format::RecordKind> {
    records(p).iter().map(|r| r.kind).collect()
}

/// A tombstone that hides a plain claim says which segment the claim was in, and goes
/// once that segment is gone, even while an older segment lives on (here kept by a
/// long-lived claim): it is not kept for the hidden claim's 100 h. It goes with its
/// segment when nothing else there is live (`keeper` false; compaction off, so that the
/// segment is deleted whole), or is left out of the segment's compacted copy (`keeper`
/// true: a long-lived claim beside it). With `reopen`
/// the store is reopened from hint files first, which do not say what a tombstone hides:
/// maintenance learns it when it reads the records.
#[test]
fn a_tombstone_goes_with_the_segment_of_the_claim_it_hides() {
    use oncelog::format::RecordKind;
    for keeper in [false, true] {
        for reopen in [false, true] {
            let what = format!("keeper {keeper}, reopen {reopen}");
            let dir = tempfile::tempdir().unwrap();
            let clock = clock();
            let long = Duration::from_secs(100 * 3600);
            let opts = || {
                let o = opts_no_bg(&clock);
                if keeper {
                    o
                } else {
                    o.compaction_threshold(0.0)
                }
            };
            let mut store = opts().open(dir.path()).unwrap();
            let mut next = 0;
            // Segment 1: a claim that keeps it alive. Segment 2: the victim's claim.
            assert!(store.claim("anchor", long).unwrap().is_new());
            fill_until(&store, dir.path(), &mut next, 2);
            assert!(store.claim("victim", long).unwrap().is_new());
            fill_until(&store, dir.path(), &mut next, 3);
            // Segment 3: the victim's tombstone, and maybe a claim that keeps it alive.
            assert!(store.remove("victim").unwrap());
            if keeper {
                assert!(store.claim("keeper", long).unwrap().is_new());
            }
            fill_until(&store, dir.path(), &mut next, 4);
            let all = segments(dir.path());
            assert!(kinds(&all[2]).contains(&RecordKind::Remove), "{what}");
            if reopen {
                // Hints for the sealed segments, then a reopen that replays from them.
                assert_eq!(store.compact().unwrap().segments_deleted, 0, "{what}");
                store.close().unwrap();
                store = opts().open(dir.path()).unwrap();
                assert_eq!(store.stats().recovery_hinted_segments, 3, "{what}");
            }
            clock.advance(Duration::from_secs(120));
            let report = store.compact().unwrap();
            assert!(all[0].exists(), "{what}: the anchor's segment went");
            assert!(!all[1].exists(), "{what}: the victim's segment was kept");
            if keeper {
                // Segment 3 was compacted (so was segment 1, around the anchor).
                assert!(report.segments_written >= 1, "{what}: {report:?}");
                let left = kinds(&all[2]);
                assert!(!left.contains(&RecordKind::Remove), "{what}: {left:?}");
                assert_eq!(left, [RecordKind::Claim, RecordKind::Seal], "{what}");
                assert!(store.get("keeper").unwrap().is_some());
            } else {
                assert!(
                    !all[2].exists(),
                    "{what}: the tombstone was kept ({report:?})"
                );
                assert_eq!(report.segments_written, 0, "{what}: {report:?}");
            }
            store.close().unwrap();
            let store = opts().open(dir.path()).unwrap();
            assert!(store.get("victim").unwrap().is_none(), "{what}: came back");
            assert!(store.get("anchor").unwrap().is_some(), "{what}");
            assert!(store.claim("victim", long).unwrap().is_new(), "{what}");
            store.close().unwrap();
        }
    }
}

/// A tombstone that hides a lease chain's last record hides the whole chain, back to the
/// segment its `begin` record is in. Here the lease is in segment 1 (kept alive by another
/// claim), the done record in segment 2, the tombstone in segment 3. Segment 2 going must
/// not take the tombstone along, or the lease would replay and the key read as in flight.
/// With compaction on, segment 1's copy loses the dead lease in the same run; with it off,
/// segment 1 keeps it, so a tombstone wrongly dropped would let it replay.
#[test]
fn a_tombstone_over_a_lease_chain_stays_while_the_chain_s_first_segment_does() {
    for threshold in [0.0, 0.5] {
        lease_chain_tombstone(threshold);
    }
}

fn lease_chain_tombstone(threshold: f64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let long = Duration::from_secs(100 * 3600);
    let opts = || opts_no_bg(&clock).compaction_threshold(threshold);
    let store = opts().open(dir.path()).unwrap();
    let mut next = 0;
    assert!(store.claim("anchor", long).unwrap().is_new());
    let ticket = acquire(&store, "job", HOUR);
    fill_until(&store, dir.path(), &mut next, 2);
    store.complete(&ticket, b"done", long).unwrap();
    fill_until(&store, dir.path(), &mut next, 3);
    assert!(store.remove("job").unwrap());
    fill_until(&store, dir.path(), &mut next, 4);
    let all = segments(dir.path());
    clock.advance(Duration::from_secs(120));
    store.compact().unwrap();
    assert!(
        !all[1].exists(),
        "{threshold}: the done record's segment was kept"
    );
    assert!(
        all[2].exists() && kinds(&all[2]).contains(&oncelog::format::RecordKind::Remove),
        "{threshold}: the tombstone went while the lease's segment is there"
    );
    store.close().unwrap();
    let store = opts().open(dir.path()).unwrap();
    let got = store.get("job").unwrap();
    assert!(
        got.is_none(),
        "{threshold}: the removed key came back: {got:?}"
    );
    store.close().unwrap();
}

/// A lease chain records the segment it began in, so a tombstone over it goes once the
/// segments from there to the hidden record's are gone, even while an older segment lives
/// on: here the lease is in segment 2, the outcome in segment 3, the tombstone in segment
/// 4, and segment 1 holds a long-lived claim. Compaction off deletes segments whole; on,
/// it may rewrite some of them first.
#[test]
fn a_tombstone_over_a_lease_chain_goes_with_the_chain_s_segments() {
    for threshold in [0.0, 0.5] {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let long = Duration::from_secs(100 * 3600);
        let opts = || opts_no_bg(&clock).compaction_threshold(threshold);
        let store = opts().open(dir.path()).unwrap();
        let mut next = 0;
        assert!(store.claim("anchor", long).unwrap().is_new());
        fill_until(&store, dir.path(), &mut next, 2);
        let ticket = acquire(&store, "job", HOUR);
        // A chain begun by a claim with an outcome, in the same segment.
        assert!(store
            .claim_with_outcome("paid", b"receipt", long)
            .unwrap()
            .is_new());
        fill_until(&store, dir.path(), &mut next, 3);
        store.complete(&ticket, b"done", long).unwrap();
        fill_until(&store, dir.path(), &mut next, 4);
        assert!(store.remove("job").unwrap());
        assert!(store.remove("paid").unwrap());
        fill_until(&store, dir.path(), &mut next, 5);
        let all = segments(dir.path());
        clock.advance(Duration::from_secs(120));
        let report = store.compact().unwrap();
        assert!(all[0].exists(), "{threshold}: the anchor's segment went");
        for seg in &all[1..4] {
            assert!(!seg.exists(), "{threshold}: {seg:?} kept ({report:?})");
        }
        store.close().unwrap();
        let store = opts().open(dir.path()).unwrap();
        assert!(
            store.get("job").unwrap().is_none(),
            "{threshold}: came back"
        );
        let paid = store.get("paid").unwrap();
        assert!(paid.is_none(), "{threshold}: came back: {paid:?}");
        assert!(store.get("anchor").unwrap().is_some());
        store.close().unwrap();
    }
}

/// A chain goes on through an attempt whose lease ran out: the next `begin` continues it,
/// so a tombstone over the chain's end still hides the first attempt's lease. Here that
/// lease is in segment 2, kept alive by a claim beside it; the second attempt and its
/// outcome are in segment 3, the tombstone in segment 4. Segment 3 going must not take the
/// tombstone along: the first lease would replay, and the next `begin` would be attempt 2.
#[test]
fn a_tombstone_hides_every_attempt_of_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let long = Duration::from_secs(100 * 3600);
    let opts = || opts_no_bg(&clock).compaction_threshold(0.0);
    let store = opts().open(dir.path()).unwrap();
    let mut next = 0;
    assert!(store.claim("anchor", long).unwrap().is_new());
    fill_until(&store, dir.path(), &mut next, 2);
    assert!(store.claim("anchor-2", long).unwrap().is_new());
    let lease = Duration::from_secs(30);
    let first = acquire(&store, "job", lease);
    assert_eq!(first.attempt(), 1);
    fill_until(&store, dir.path(), &mut next, 3);
    clock.advance(Duration::from_secs(31));
    let second = acquire(&store, "job", HOUR);
    assert_eq!(second.attempt(), 2);
    store.complete(&second, b"done", long).unwrap();
    fill_until(&store, dir.path(), &mut next, 4);
    assert!(store.remove("job").unwrap());
    fill_until(&store, dir.path(), &mut next, 5);
    let all = segments(dir.path());
    clock.advance(Duration::from_secs(120));
    store.compact().unwrap();
    assert!(all[1].exists(), "the first lease's segment went");
    assert!(!all[2].exists(), "the second attempt's segment was kept");
    assert!(
        all[3].exists(),
        "the tombstone went while the first lease is there"
    );
    store.close().unwrap();
    let store = opts().open(dir.path()).unwrap();
    match store.begin("job", HOUR).unwrap() {
        oncelog::Begin::Acquired(t) => assert_eq!(t.attempt(), 1, "the first lease came back"),
        other => panic!("{other:?}"),
    }
    store.close().unwrap();
}

/// Fails the first directory sync once armed, and records every operation after that.
#[derive(Default)]
struct FailDirSyncOnce {
    armed: std::sync::atomic::AtomicBool,
    ops: std::sync::Mutex<Vec<&'static str>>,
}

impl oncelog::IoHook for FailDirSyncOnce {
    fn before(&self, op: &oncelog::IoOp<'_>) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if let oncelog::IoOp::SyncDir { .. } = op {
            if self.armed.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected"));
            }
        }
        self.ops.lock().unwrap().push(op.kind());
        Ok(())
    }
}

/// A run that deleted a segment but failed to make that durable (its directory sync
/// failed) leaves the next run to sync the directory before anything else: a tombstone
/// may go because a segment is gone, and a power cut must not bring that segment back.
#[test]
fn a_run_after_a_failed_directory_sync_syncs_the_directory_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let hook = Arc::new(FailDirSyncOnce::default());
    let store = opts_no_bg(&clock)
        .io_hook(hook.clone())
        .open(dir.path())
        .unwrap();
    let mut next = 0;
    fill_until(&store, dir.path(), &mut next, 3);
    clock.advance(Duration::from_secs(120));
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = store.compact();
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        hook.ops.lock().unwrap().contains(&"remove"),
        "nothing deleted"
    );
    hook.ops.lock().unwrap().clear();
    store.compact().unwrap();
    let ops = hook.ops.lock().unwrap().clone();
    assert_eq!(ops.first(), Some(&"sync-dir"), "{ops:?}");
    // Only after a failed run.
    hook.ops.lock().unwrap().clear();
    store.compact().unwrap();
    let ops = hook.ops.lock().unwrap().clone();
    assert_ne!(ops.first(), Some(&"sync-dir"), "{ops:?}");
}

/// Moves the store's clock forward once, at the first segment renamed into place after it
/// was armed (`done` cleared): keys expire in the middle of a maintenance run.
struct TimeJumpAtCompaction {
    clock: ManualClock,
    by: Duration,
    done: std::sync::atomic::AtomicBool,
}

impl oncelog::IoHook for TimeJumpAtCompaction {
    fn before(&self, op: &oncelog::IoOp<'_>) -> std::io::Result<()> {
        if let oncelog::IoOp::Rename { to, .. } = op {
            let segment = to.extension().is_some_and(|x| x == "olog");
            if segment && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.clock.advance(self.by);
            }
        }
        Ok(())
    }
}

/// A run that compacts several segments sweeps the index again between them once time has
/// passed, so that keys expiring during a long run do not wait for the next one.
#[test]
fn a_long_compaction_run_sweeps_what_expires_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let hook = Arc::new(TimeJumpAtCompaction {
        clock: clock.clone(),
        by: Duration::from_secs(2 * 3600),
        done: std::sync::atomic::AtomicBool::new(true),
    });
    let store = opts_no_bg(&clock)
        .io_hook(hook.clone())
        .open(dir.path())
        .unwrap();
    let (short, mid, long) = (
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(100 * 3600),
    );
    // Per 10 keys: 7 expire within the minute (so segments turn sparse), 2 within the hour,
    // 1 lives on (so no segment expires whole and compaction rewrites them).
    let mut mids = 0u64;
    let mut i = 0u64;
    while segments(dir.path()).len() < 4 {
        let ttl = match i % 10 {
            0..=6 => short,
            7 | 8 => {
                mids += 1;
                mid
            }
            _ => long,
        };
        assert!(store.claim(fixed_key(i, 32), ttl).unwrap().is_new());
        i += 1;
    }
    store.sync().unwrap();
    clock.advance(Duration::from_secs(120));
    // Rotation renames segments too: armed only now, the jump comes with the first
    // compacted segment.
    hook.done.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = store.compact().unwrap();
    assert!(
        hook.done.load(std::sync::atomic::Ordering::SeqCst),
        "no compaction renamed"
    );
    assert!(report.segments_written >= 2, "{report:?}");
    let s = store.stats();
    assert_eq!(
        s.expired_unswept, 0,
        "{mids} keys expired during the run and were left for the next ({report:?})"
    );
    assert!(report.entries_swept >= mids, "{report:?}");
    store.close().unwrap();
}
