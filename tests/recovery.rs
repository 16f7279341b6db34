//! Reopening: what was acknowledged is kept (invariant 3), removed and expired keys stay
//! gone (invariant 4), a torn tail is cut at every possible byte, and damage elsewhere is
//! reported with its file and offset, never replayed and never a panic (invariant 5).

mod common;

use std::fs::OpenOptions;
use std::path::Path;
use std::time::Duration;

use common::segfile::{set_format_version, set_segment_id};
use common::{clock, copy_dir, fill, key, opts, opts_no_bg, records, segments, TTL};
use oncelog::format::{RecordKind, SegmentHeader, SEGMENT_HEADER_LEN};
use oncelog::{CorruptionKind, Error, RecoveryMode, Store};

/// Checks that after reopening, keys `0..n` are claimed except every tenth (removed).
fn check_filled(store: &Store, n: u64) {
    for i in 0..n {
        let claimed = store.get(key(i)).unwrap().is_some();
        assert_eq!(claimed, i % 10 != 0, "key {i}");
    }
}

#[test]
fn claims_and_removes_survive_reopen_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5_000;
    let clock = clock();
    fill(dir.path(), &clock, n);
    assert!(segments(dir.path()).len() > 3, "want several segments");
    for round in 0..3 {
        let store = opts(&clock).open(dir.path()).unwrap();
        // Key 0 is the one this loop removes and claims again; the rest are as filled.
        for i in 1..n {
            assert_eq!(store.get(key(i)).unwrap().is_some(), i % 10 != 0, "key {i}");
        }
        assert_eq!(store.get(key(0)).unwrap().is_some(), round > 0);
        let key0 = u64::from(round > 0);
        assert_eq!(store.stats().keys, n - n / 10 + key0, "round {round}");
        // Removed keys can be claimed again; after that they are duplicates for good.
        assert!(!store.claim(key(1), TTL).unwrap().is_new());
        if round == 0 {
            assert!(store.claim(key(0), TTL).unwrap().is_new());
        } else {
            assert!(!store.claim(key(0), TTL).unwrap().is_new());
        }
        assert!(store.remove(key(0)).unwrap());
        assert!(store.claim(key(0), TTL).unwrap().is_new());
        store.close().unwrap();
    }
}

#[test]
fn expiry_holds_across_reopen_and_expired_claims_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store
        .claim("short", Duration::from_secs(60))
        .unwrap()
        .is_new());
    assert!(store.claim("long", TTL).unwrap().is_new());
    store.close().unwrap();

    clock.advance(Duration::from_secs(59));
    let store = opts(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().keys, 2);
    assert!(!store
        .claim("short", Duration::from_secs(60))
        .unwrap()
        .is_new());
    store.close().unwrap();

    clock.advance(Duration::from_secs(1));
    let store = opts(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().keys, 1, "an expired claim came back at open");
    assert_eq!(store.get("short").unwrap(), None);
    assert!(store.get("long").unwrap().is_some());
    // Claim it anew: the new window holds across another reopen.
    assert!(store
        .claim("short", Duration::from_secs(60))
        .unwrap()
        .is_new());
    store.close().unwrap();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(!store
        .claim("short", Duration::from_secs(60))
        .unwrap()
        .is_new());
}

#[test]
fn drop_without_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    {
        let store = opts(&clock).open(dir.path()).unwrap();
        for i in 0..100 {
            assert!(store.claim(key(i), TTL).unwrap().is_new());
        }
    }
    let store = opts(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().keys, 100);
}

/// The newest segment of a store whose last record is a claim of a key of `key_len` bytes,
/// and that record's place. The store is closed.
fn store_with_last_record(dir: &Path, key_len: usize) -> (std::path::PathBuf, common::Rec) {
    let clock = clock();
    let store = opts(&clock).open(dir).unwrap();
    for i in 0..50 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    assert!(store.claim(vec![b'z'; key_len], TTL).unwrap().is_new());
    store.close().unwrap();
    let newest = segments(dir).pop().unwrap();
    let last = records(&newest).pop().unwrap();
    assert_eq!(last.key.len(), key_len);
    (newest, last)
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let original = tempfile::tempdir().unwrap();
    let key_len = 37; // 32 + 37 = 69, padded to 72: header, key and padding are all cut.
    let (newest, last) = store_with_last_record(original.path(), key_len);
    let name = newest.file_name().unwrap().to_owned();
    let clock = clock();
    let mut cases = 0;
    for cut in last.offset..last.offset + last.len {
        for how in ["truncate", "garble", "zero-from"] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let seg = dir.path().join(&name);
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            match how {
                // The file loses everything from `cut` on (a torn truncation).
                "truncate" => f.set_len(cut as u64).unwrap(),
                // The bytes from `cut` to the end of the record are garbage.
                "garble" => {
                    use std::os::unix::fs::FileExt;
                    let junk: Vec<u8> = (cut..last.offset + last.len)
                        .map(|i| (i as u8).wrapping_mul(31) | 1)
                        .collect();
                    f.write_at(&junk, cut as u64).unwrap();
                }
                // Only a prefix of the record reached the disk.
                _ => {
                    use std::os::unix::fs::FileExt;
                    f.write_at(&vec![0u8; last.offset + last.len - cut], cut as u64)
                        .unwrap();
                }
            }
            drop(f);
            let store = opts(&clock)
                .open(dir.path())
                .unwrap_or_else(|e| panic!("{how} at {cut}: open failed: {e}"));
            for i in 0..50 {
                assert!(
                    store.get(key(i)).unwrap().is_some(),
                    "{how} at {cut}: key {i}, before the torn record, was lost"
                );
            }
            let z = vec![b'z'; key_len];
            // Losing or zeroing only padding bytes (zeros already) leaves a whole record;
            // any other damage takes the record out.
            let data_end = last.offset + 32 + key_len;
            let intact = how != "garble" && cut >= data_end;
            assert_eq!(
                store.get(&z).unwrap().is_some(),
                intact,
                "{how} at {cut}: torn record replayed, or whole record lost"
            );
            if how == "garble" {
                assert!(store.stats().recovery_truncated_bytes > 0, "{how} at {cut}");
            }
            // What a cut took off the file is counted, whatever was in it.
            let capacity = SegmentHeader::decode(&std::fs::read(&seg).unwrap())
                .unwrap()
                .capacity;
            let extended = if how == "truncate" {
                capacity - cut as u64
            } else {
                0
            };
            assert_eq!(
                store.stats().recovery_extended_bytes,
                extended,
                "{how} at {cut}"
            );
            // The store carries on where the valid data ends, and its new records are found
            // again: the cut left no stale bytes behind them.
            assert_eq!(store.claim(&z, TTL).unwrap().is_new(), !intact);
            assert!(store.claim("after", TTL).unwrap().is_new());
            store.close().unwrap();
            let store = opts(&clock).open(dir.path()).unwrap();
            assert!(store.get(&z).unwrap().is_some(), "{how} at {cut}");
            assert!(store.get("after").unwrap().is_some(), "{how} at {cut}");
            assert_eq!(store.stats().recovery_truncated_bytes, 0, "{how} at {cut}");
            assert_eq!(store.stats().recovery_extended_bytes, 0, "{how} at {cut}");
            assert_eq!(store.stats().keys, 52);
            cases += 1;
        }
    }
    assert_eq!(cases, 3 * 72);
}

#[test]
fn strict_mode_reports_a_torn_tail_and_changes_nothing() {
    let original = tempfile::tempdir().unwrap();
    let (newest, last) = store_with_last_record(original.path(), 20);
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.write_at(&[0xee; 3], (last.offset + 35) as u64).unwrap();
    drop(f);
    // A leftover temporary, which a tolerant open would delete.
    let tmp = original.path().join("seg-00000000000000ff.olog.tmp");
    std::fs::write(&tmp, b"left by a crash").unwrap();
    let before = std::fs::read(&newest).unwrap();
    let clock = clock();
    let e = opts(&clock)
        .recovery_mode(RecoveryMode::Strict)
        .open(original.path())
        .unwrap_err();
    match e {
        Error::Corruption(c) => {
            assert_eq!(c.path, newest);
            assert_eq!(c.offset, last.offset as u64);
            assert_eq!(c.kind, CorruptionKind::Checksum);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        before,
        "strict open changed the file"
    );
    assert!(tmp.exists(), "strict open deleted a file");
    // The default mode cuts it and carries on.
    let store = opts(&clock).open(original.path()).unwrap();
    assert!(store.stats().recovery_truncated_bytes > 0);
    assert!(!tmp.exists());
}

#[test]
fn strict_mode_reports_bytes_after_the_end_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let (newest, last) = store_with_last_record(dir.path(), 8);
    use std::os::unix::fs::FileExt;
    let stray = last.offset + last.len + 1000;
    let f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.write_at(&[1], stray as u64).unwrap();
    drop(f);
    let before = std::fs::read(&newest).unwrap();
    let e = opts(&clock())
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption(ref c) if c.offset == stray as u64 && c.kind == CorruptionKind::TrailingGarbage
        ),
        "{e:?}"
    );
    assert_eq!(std::fs::read(&newest).unwrap(), before);
    // Tolerated by default (counted), and zeroed so it can never line up as a record.
    let store = opts(&clock()).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_truncated_bytes, 1001);
    store.close().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    assert_eq!(bytes[stray], 0);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_reported_with_file_and_offset() {
    let original = tempfile::tempdir().unwrap();
    fill(original.path(), &clock(), 3_000);
    let sealed = segments(original.path()).remove(0);
    let name = sealed.file_name().unwrap().to_owned();
    let recs = records(&sealed);
    assert!(recs.len() > 100);
    // Every byte of a few records (first, middle, the one before the seal) and of the seal.
    let picks = [0, recs.len() / 2, recs.len() - 2, recs.len() - 1];
    let mut cases = 0;
    for &r in &picks {
        let rec = &recs[r];
        for at in rec.offset..rec.offset + rec.len {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let seg = dir.path().join(&name);
            let mut bytes = std::fs::read(&seg).unwrap();
            bytes[at] ^= 0x10;
            std::fs::write(&seg, &bytes).unwrap();
            let before = bytes;
            match opts(&clock()).open(dir.path()) {
                Err(Error::Corruption(c)) => {
                    assert_eq!(c.path, seg, "byte {at}");
                    assert_eq!(c.offset, rec.offset as u64, "byte {at} of record {r}");
                    assert!(
                        matches!(
                            c.kind,
                            CorruptionKind::Checksum
                                | CorruptionKind::MalformedRecord
                                | CorruptionKind::Truncated
                        ),
                        "{:?}",
                        c.kind
                    );
                    let msg = Error::Corruption(c).to_string();
                    assert!(msg.contains(&format!("offset {}", rec.offset)), "{msg}");
                }
                other => panic!("flip at byte {at} of {name:?}: {other:?}"),
            }
            assert_eq!(std::fs::read(&seg).unwrap(), before, "a failed open wrote");
            cases += 1;
        }
    }
    assert!(recs[recs.len() - 1].kind == RecordKind::Seal);
    assert!(cases > 100);
}

#[test]
fn a_damaged_segment_header_is_reported_at_offset_zero() {
    let original = tempfile::tempdir().unwrap();
    fill(original.path(), &clock(), 2_000);
    let segs = segments(original.path());
    for (which, seg) in [(0, &segs[0]), (1, segs.last().unwrap())] {
        for at in 0..SEGMENT_HEADER_LEN {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let path = dir.path().join(seg.file_name().unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            match opts(&clock()).open(dir.path()) {
                Err(Error::Corruption(c)) => {
                    assert_eq!((c.path.as_path(), c.offset), (path.as_path(), 0));
                    assert_eq!(
                        c.kind,
                        CorruptionKind::BadSegmentHeader,
                        "segment {which} byte {at}"
                    );
                }
                other => panic!("segment {which}, header byte {at}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_segment_of_another_store_or_another_version_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fill(a.path(), &clock(), 10);
    fill(b.path(), &clock(), 2_000);
    // Put b's first segment in a's place as a's second one.
    let target = a.path().join("seg-0000000000000002.olog");
    let mut bytes = std::fs::read(segments(b.path()).remove(0)).unwrap();
    // Give it the right id (with a valid checksum) so the store id is what is wrong.
    set_segment_id(&mut bytes, 2);
    std::fs::write(&target, &bytes).unwrap();
    match opts(&clock()).open(a.path()) {
        Err(Error::Corruption(c)) => {
            assert_eq!(c.kind, CorruptionKind::ForeignSegment);
            assert_eq!(c.path, target);
        }
        other => panic!("{other:?}"),
    }
    // The same file under another id's name.
    std::fs::remove_file(&target).unwrap();
    let misnamed = a.path().join("seg-0000000000000009.olog");
    std::fs::write(&misnamed, &bytes).unwrap();
    assert!(matches!(
        opts(&clock()).open(a.path()),
        Err(Error::Corruption(c)) if c.kind == CorruptionKind::SegmentIdMismatch
    ));
    // A newer format version, with a valid checksum: refused as such, not as corruption.
    std::fs::remove_file(&misnamed).unwrap();
    let first = segments(a.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    set_format_version(&mut bytes, 7);
    std::fs::write(&first, &bytes).unwrap();
    match opts(&clock()).open(a.path()) {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported,
        }) => {
            assert_eq!(
                (path, found, supported),
                (first, 7, oncelog::format::FORMAT_VERSION)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn foreign_files_are_left_alone_and_temporaries_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &clock(), 100);
    std::fs::write(dir.path().join("README"), b"notes").unwrap();
    std::fs::write(dir.path().join("seg-1.olog"), b"not a segment name").unwrap();
    std::fs::write(dir.path().join("backup.tmp"), b"not ours").unwrap();
    let tmp = dir.path().join("seg-0000000000000042.olog.tmp");
    std::fs::write(&tmp, b"half-made segment").unwrap();
    let store = opts(&clock()).open(dir.path()).unwrap();
    check_filled(&store, 100);
    assert!(!tmp.exists());
    for f in ["README", "seg-1.olog", "backup.tmp"] {
        assert!(dir.path().join(f).exists(), "{f} was touched");
    }
}

#[test]
fn an_empty_or_short_file_with_a_segment_name_is_an_error_not_a_panic() {
    for len in [0usize, 10, 63, 64] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), &clock(), 10);
        let mut bytes = std::fs::read(segments(dir.path()).remove(0)).unwrap();
        bytes.truncate(len);
        std::fs::write(dir.path().join("seg-0000000000000000.olog"), &bytes).unwrap();
        let e = opts(&clock()).open(dir.path()).unwrap_err();
        assert!(
            matches!(&e, Error::Corruption(c) if c.kind == CorruptionKind::BadSegmentHeader || c.kind == CorruptionKind::SegmentIdMismatch || c.kind == CorruptionKind::Unsealed),
            "len {len}: {e:?}"
        );
    }
}

#[test]
fn the_newest_segment_cut_short_is_extended_again() {
    let dir = tempfile::tempdir().unwrap();
    let (newest, last) = store_with_last_record(dir.path(), 16);
    // Cut just after the last record: everything acknowledged is still there.
    let f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.set_len((last.offset + last.len) as u64).unwrap();
    drop(f);
    let short = std::fs::metadata(&newest).unwrap().len();
    let e = opts(&clock())
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap_err();
    assert!(
        matches!(e, Error::Corruption(ref c) if c.kind == CorruptionKind::Truncated),
        "{e:?}"
    );
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        short,
        "strict open extended it"
    );
    let store = opts(&clock()).open(dir.path()).unwrap();
    assert!(store.get(vec![b'z'; 16]).unwrap().is_some());
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        oncelog::MIN_SEGMENT_SIZE
    );
    for i in 0..2_000 {
        assert!(store.claim(format!("more-{i}"), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let store = opts(&clock()).open(dir.path()).unwrap();
    assert!(store.get("more-1999").unwrap().is_some());
    assert!(store.get(vec![b'z'; 16]).unwrap().is_some());
}

#[test]
fn a_failed_default_open_changes_nothing_either() {
    // Damage in an older segment fails the default open too; by then the newest segment is
    // short and there is a temporary: neither may have been touched.
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &clock(), 3_000);
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    let newest = segs.last().unwrap();
    let f = OpenOptions::new().write(true).open(newest).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    let tmp = dir.path().join("seg-00000000000000ff.olog.tmp");
    std::fs::write(&tmp, b"left by a crash").unwrap();
    let older = &segs[1];
    let mut bytes = std::fs::read(older).unwrap();
    bytes[SEGMENT_HEADER_LEN + 9] ^= 0x04;
    std::fs::write(older, &bytes).unwrap();
    let e = opts(&clock()).open(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Corruption(ref c) if &c.path == older),
        "{e:?}"
    );
    assert_eq!(
        std::fs::metadata(newest).unwrap().len(),
        4096,
        "newest extended"
    );
    assert!(tmp.exists(), "temporary deleted by a failed open");
    assert_eq!(std::fs::read(older).unwrap(), bytes);
}

#[test]
fn stray_bytes_across_megabytes_of_tail_are_found_and_zeroed() {
    // A segment bigger than the 1 MiB read buffer, with stray bytes in two places separated
    // by a hole: both chunks and both data regions are visited, and only they are zeroed.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let o = || opts(&clock).segment_size(4 << 20);
    let store = o().open(dir.path()).unwrap();
    for i in 0..10 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let newest = segments(dir.path()).pop().unwrap();
    let last = records(&newest).pop().unwrap();
    let end = last.offset + last.len;
    let (a, b) = (end + 100, (3 << 20) + 12_345);
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.write_at(&[7, 0, 7], a as u64).unwrap();
    f.write_at(&[9; 5], b as u64).unwrap();
    drop(f);
    let e = o()
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap_err();
    assert!(
        matches!(e, Error::Corruption(ref c) if c.offset == a as u64 && c.kind == CorruptionKind::TrailingGarbage),
        "{e:?}"
    );
    let store = o().open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_truncated_bytes, (b + 5 - end) as u64);
    assert_eq!(store.stats().keys, 10);
    store.close().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    assert!(bytes[end..].iter().all(|&x| x == 0), "stray bytes left");
    let store = o()
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap();
    assert_eq!(store.stats().keys, 10);
}

#[test]
fn strict_mode_reports_a_sealed_segment_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    // 3000-byte keys: 21 records fill a 64 KiB segment with about 1.6 KiB to spare, so the
    // sealed segment ends in zeros that can be cut without touching a record.
    let store = opts(&clock).open(dir.path()).unwrap();
    let big = |i: u32| format!("{i:04}").repeat(750);
    for i in 0..50 {
        assert!(store.claim(big(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let first = segments(dir.path()).remove(0);
    let seal = records(&first).pop().unwrap();
    assert_eq!(seal.kind, RecordKind::Seal);
    let cut = (seal.offset + seal.len) as u64;
    assert!(cut < oncelog::MIN_SEGMENT_SIZE);
    OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let e = opts(&clock)
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap_err();
    assert!(
        matches!(e, Error::Corruption(ref c) if c.path == first && c.offset == cut && c.kind == CorruptionKind::Truncated),
        "{e:?}"
    );
    // The default mode reads it: nothing it holds is lost.
    let store = opts(&clock).open(dir.path()).unwrap();
    for i in 0..50 {
        assert!(store.get(big(i)).unwrap().is_some(), "key {i}");
    }
}

/// The files of this process open under `dir` (from /proc/self/fd; other tests running
/// in this process open files elsewhere).
fn open_files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// How many memory mappings of this process map files under `dir`.
fn mappings_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with(dir))
        })
        .count()
}

/// Found by tests/torture.rs: every mapped segment kept its file open, so a directory of
/// ~20k segments hit the open-file limit (EMFILE) long before `MAX_SEGMENTS`. A mapping
/// stays valid after its file is closed; the store now keeps open only its `LOCK` file.
#[test]
fn segments_stay_mapped_without_an_open_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let clock = clock();
    fill(dir.path(), &clock, n);
    let count = segments(dir.path()).len();
    assert!(count > 20, "want many segments, got {count}");
    let store = opts(&clock).open(dir.path()).unwrap();
    let lock = dir.path().canonicalize().unwrap().join("LOCK");
    assert_eq!(open_files_under(dir.path()), vec![lock.clone()]);
    // What bounds the segment count instead: one memory mapping each (Linux caps a
    // process's mappings at `vm.max_map_count`, 65 530 by default).
    assert_eq!(mappings_under(dir.path()), count);
    check_filled(&store, n);
    // Writes that rotate into new segments, and compaction writing fresh copies, do not
    // leave files open either.
    for i in n..n + 2_000 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    for i in (0..n).filter(|i| i % 3 != 0) {
        store.remove(key(i)).unwrap();
    }
    let report = store.compact().unwrap();
    assert!(report.segments_written > 0, "{report:?}");
    assert_eq!(open_files_under(dir.path()), vec![lock]);
    for i in 0..n {
        let claimed = store.get(key(i)).unwrap().is_some();
        assert_eq!(claimed, i % 10 != 0 && i % 3 == 0, "key {i}");
    }
    store.close().unwrap();
    assert!(open_files_under(dir.path()).is_empty());
}

/// Segments of tens of thousands of records are replayed by two threads, each on half the
/// stripes: every key's newest record still decides its state (claims, removes, claims
/// again after a remove, expiry), from segments and from hint files alike.
#[test]
fn a_large_store_replays_the_same_on_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let open = |hints: bool| {
        oncelog::Options::new()
            .clock(clock.clone())
            .durability(oncelog::Durability::Buffered)
            .background_maintenance(false)
            .hints(hints)
            .open(dir.path())
            .unwrap()
    };
    let n = 120_000u64;
    let store = open(false);
    let short = Duration::from_secs(60);
    for i in 0..n {
        let ttl = if i % 5 == 0 { short } else { TTL };
        assert!(store.claim(key(i), ttl).unwrap().is_new());
    }
    for i in (0..n).step_by(7) {
        store.remove(key(i)).unwrap();
    }
    for i in (0..n).step_by(21) {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    clock.advance(2 * short);
    let answers = |store: &Store| -> Vec<bool> {
        (0..n)
            .map(|i| store.get(key(i)).unwrap().is_some())
            .collect()
    };
    let expected = answers(&store);
    let live = expected.iter().filter(|&&a| a).count();
    assert!(live > n as usize / 2 && live < n as usize, "{live}");
    let records = store.stats().claims + store.stats().removes;
    drop(store);

    let store = open(false);
    assert_eq!(store.stats().recovered_records, records);
    assert!(store.stats().segments >= 3, "{:?}", store.stats());
    assert_eq!(answers(&store), expected, "replayed from the segments");
    drop(store);
    // Hints for the sealed segments, then a replay from them.
    let store = open(true);
    assert!(store.compact().unwrap().hints_written > 0);
    drop(store);
    let store = open(true);
    assert!(store.stats().recovery_hinted_segments > 0);
    assert_eq!(answers(&store), expected, "replayed from hints");
}

/// Fails the rename that names one segment, from the rotation that made it on.
struct FailRename {
    name: String,
}

impl oncelog::IoHook for FailRename {
    fn before(&self, op: &oncelog::IoOp<'_>) -> std::io::Result<()> {
        if let oncelog::IoOp::Rename { to, .. } = op {
            if to.file_name().and_then(|n| n.to_str()) == Some(self.name.as_str()) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
}

/// Rotation lets appends go on into the new segment under its temporary name while the
/// full one is synced and the new one named (docs/FORMAT.md §7.3). If that never finishes
/// (here the rename fails, which poisons the store; a crash is the same on disk), the claims
/// `Buffered` acknowledged in the new segment are in the temporary file, and the next
/// `open` adopts it.
#[test]
fn claims_written_while_a_rotation_is_named_survive_its_failure() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let second = "seg-0000000000000002.olog";
    let hook = std::sync::Arc::new(FailRename {
        name: second.to_string(),
    });
    let store = opts_no_bg(&clock).io_hook(hook).open(dir.path()).unwrap();
    let mut acked = Vec::new();
    let mut refused = false;
    for i in 0..200_000u64 {
        match store.claim(key(i), TTL) {
            Ok(c) => {
                assert!(c.is_new());
                acked.push(i);
            }
            // The rename's error, or (for the claims after it) `Poisoned`.
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the failed rename never stopped the store");
    assert!(matches!(
        store.claim("one more", TTL),
        Err(Error::Poisoned { .. })
    ));
    let tmp = dir.path().join(format!("{second}.tmp"));
    assert!(tmp.exists(), "the new segment's temporary is gone");
    drop(store);

    let store = opts_no_bg(&clock).open(dir.path()).unwrap();
    assert!(dir.path().join(second).exists() && !tmp.exists());
    let s = store.stats();
    assert_eq!(s.keys, acked.len() as u64);
    for &i in &acked {
        assert!(
            !store.claim(key(i), TTL).unwrap().is_new(),
            "claim {i} lost"
        );
    }
    // The adopted segment is the active one: claims go on there.
    assert!(store.claim("after", TTL).unwrap().is_new());
    store.close().unwrap();
}
