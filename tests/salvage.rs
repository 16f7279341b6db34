//! `RecoveryMode::Salvage`: damage is dropped with a count instead of failing `open`, the
//! directory is rewritten clean, undamaged keys keep their answers, and what salvage cannot
//! promise (a lost tombstone, a record embedded in a key) happens as documented.
//! `tests/corruption.rs` runs it against every single-byte flip and truncation.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::segfile::{flip, reseal_record, set_format_version, set_segment_id};
use common::{clock, copy_dir, fill, key, opts, opts_no_bg, records, segments, Rec, TTL};
use oncelog::format::{RecordKind, SEGMENT_HEADER_LEN};
use oncelog::{
    CorruptionKind, Error, ManualClock, Options, RecoveryMode, Seen, Store, MAX_SALVAGED_PLACES,
};

fn salvage(clock: &ManualClock) -> Options {
    opts_no_bg(clock).recovery_mode(RecoveryMode::Salvage)
}

fn answers(store: &Store, n: u64) -> Vec<Option<Seen>> {
    (0..n).map(|i| store.get(key(i)).unwrap()).collect()
}

/// Every file of `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The key index `i` of a claim record's key, if it is one of `key(0..n)`.
fn key_index(rec: &Rec, n: u64) -> Option<u64> {
    (0..n).find(|&i| key(i).as_bytes() == rec.key)
}

#[test]
fn an_undamaged_directory_is_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    fill(dir.path(), &clock, 3_000);
    let store = opts(&clock).open(dir.path()).unwrap();
    let expected = answers(&store, 3_000);
    assert!(store.compact().unwrap().hints_written > 0);
    store.close().unwrap();
    let before = snapshot(dir.path());
    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(
        (
            s.recovery_salvaged_bytes,
            s.recovery_salvaged_places,
            s.recovery_salvaged_segments
        ),
        (0, 0, 0)
    );
    assert!(store.salvaged().is_empty());
    assert!(s.recovery_hinted_segments > 0, "good hints are still used");
    assert_eq!(answers(&store, 3_000), expected);
    drop(store);
    assert_eq!(
        snapshot(dir.path()),
        before,
        "salvage changed a clean directory"
    );
}

#[test]
fn a_damaged_record_in_a_sealed_segment_is_dropped_counted_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let n = 3_000;
    fill(dir.path(), &clock, n);
    let expected = answers(&opts(&clock).open(dir.path()).unwrap(), n);
    let segs = segments(dir.path());
    let first = &segs[0];
    let recs = records(first);
    // A claim of a key that is not removed later.
    let (victim, rec) = recs
        .iter()
        .filter(|r| r.kind == RecordKind::Claim)
        .filter_map(|r| key_index(r, n).map(|i| (i, r)))
        .find(|(i, _)| i % 10 != 0 && *i > 100)
        .unwrap();
    flip(first, rec.offset + 33);
    let e = opts(&clock).open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Corruption(c) if c.path == *first && c.offset == rec.offset as u64),
        "{e:?}"
    );

    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(s.recovery_salvaged_bytes, rec.len as u64);
    assert_eq!(s.recovery_salvaged_places, 1);
    assert_eq!(s.recovery_salvaged_segments, 1);
    let place = &store.salvaged()[0];
    assert_eq!(
        (&place.path, place.offset, place.kind),
        (first, rec.offset as u64, CorruptionKind::Checksum)
    );
    let mut want = expected.clone();
    want[victim as usize] = None;
    assert_eq!(answers(&store, n), want);
    assert!(store.claim(key(victim), TTL).unwrap().is_new());
    store.close().unwrap();

    // The segment was rewritten: its records but the damaged one, then a seal, at its exact
    // length. Every mode opens the directory now, with the same answers.
    let rewritten = records(first);
    assert_eq!(rewritten.len(), recs.len() - 1);
    assert_eq!(rewritten.last().unwrap().kind, RecordKind::Seal);
    let last = rewritten.last().unwrap();
    assert_eq!(
        std::fs::metadata(first).unwrap().len(),
        (last.offset + last.len) as u64
    );
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateTornTail] {
        let store = opts(&clock).recovery_mode(mode).open(dir.path()).unwrap();
        let got = answers(&store, n);
        for i in 0..n {
            if i != victim {
                assert_eq!(got[i as usize], expected[i as usize], "{mode:?} key {i}");
            }
        }
        assert!(got[victim as usize].is_some(), "the new claim was lost");
        assert_eq!(store.stats().recovery_salvaged_places, 0);
    }
}

#[test]
fn a_lost_tombstone_lets_the_claim_it_hid_come_back() {
    // The documented cost of salvage: a remove record that is dropped no longer hides the
    // claim before it, which answers again until its own expiry.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim("removed", TTL).unwrap().is_new());
    let claimed = store.get("removed").unwrap().unwrap();
    for i in 0..2_000 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    assert!(store.stats().segments > 1);
    assert!(store.remove("removed").unwrap());
    for i in 2_000..4_000 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let (seg, tomb) = segments(dir.path())
        .into_iter()
        .find_map(|s| {
            let t = records(&s)
                .into_iter()
                .find(|r| r.kind == RecordKind::Remove)?;
            Some((s, t))
        })
        .unwrap();
    assert_ne!(
        seg,
        segments(dir.path())[0],
        "the tombstone follows the claim's segment"
    );
    flip(&seg, tomb.offset + 33);
    let store = salvage(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_salvaged_places, 1);
    assert_eq!(store.get("removed").unwrap(), Some(claimed));
    assert!(!store.claim("removed", TTL).unwrap().is_new());
    // Until the hidden claim's own expiry.
    clock.advance(TTL);
    assert!(store.claim("removed", TTL).unwrap().is_new());
}

#[test]
fn damage_inside_the_newest_segment_keeps_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    for i in 0..100 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let newest = segments(dir.path()).pop().unwrap();
    let recs = records(&newest);
    let rec = &recs[40];
    let victim = key_index(rec, 100).unwrap();
    flip(&newest, rec.offset + 5);
    let original = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), original.path());

    // The default mode cuts the rest of the segment as a torn tail.
    let store = opts(&clock).open(original.path()).unwrap();
    assert!(store.stats().recovery_truncated_bytes > 0);
    let kept = (0..100)
        .filter(|&i| store.get(key(i)).unwrap().is_some())
        .count();
    assert_eq!(kept, 40);
    drop(store);

    // Salvage keeps everything but the damaged record; the segment is sealed as it is and
    // appends go to a new one.
    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(
        (s.recovery_salvaged_places, s.recovery_salvaged_segments),
        (1, 1)
    );
    assert_eq!(s.recovery_truncated_bytes, 0);
    assert_eq!(s.segments, 2);
    for i in 0..100 {
        assert_eq!(store.get(key(i)).unwrap().is_some(), i != victim, "key {i}");
    }
    assert!(store.claim(key(victim), TTL).unwrap().is_new());
    assert!(store.claim("after", TTL).unwrap().is_new());
    store.close().unwrap();
    assert_eq!(records(&newest).last().unwrap().kind, RecordKind::Seal);
    let store = opts(&clock)
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap();
    for i in 0..100 {
        assert!(store.get(key(i)).unwrap().is_some(), "key {i}");
    }
    assert!(store.get("after").unwrap().is_some());
}

#[test]
fn a_damaged_header_is_rebuilt_with_the_store_id_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let n = 3_000;
    fill(dir.path(), &clock, n);
    let expected = answers(&opts(&clock).open(dir.path()).unwrap(), n);
    let segs = segments(dir.path());
    let store_id = |p: &Path| std::fs::read(p).unwrap()[40..56].to_vec();
    let id = store_id(&segs[1]);
    // The first segment's header (the one `open` takes the store id from) and the newest
    // segment's.
    flip(&segs[0], 41);
    flip(segs.last().unwrap(), 3);
    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(
        (s.recovery_salvaged_places, s.recovery_salvaged_segments),
        (2, 2)
    );
    assert_eq!(s.recovery_salvaged_bytes, 2 * SEGMENT_HEADER_LEN as u64);
    for p in store.salvaged() {
        assert_eq!((p.offset, p.kind), (0, CorruptionKind::BadSegmentHeader));
    }
    assert_eq!(answers(&store, n), expected);
    store.close().unwrap();
    for seg in segments(dir.path()) {
        assert_eq!(store_id(&seg), id, "{seg:?}");
    }
    let store = opts(&clock)
        .recovery_mode(RecoveryMode::Strict)
        .open(dir.path())
        .unwrap();
    assert_eq!(answers(&store, n), expected);
}

#[test]
fn a_directory_whose_only_header_is_damaged_gets_a_new_store_id() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    fill(dir.path(), &clock, 50);
    let seg = segments(dir.path()).remove(0);
    let old = std::fs::read(&seg).unwrap()[40..56].to_vec();
    flip(&seg, 50);
    let store = salvage(&clock).open(dir.path()).unwrap();
    for i in 0..50 {
        assert_eq!(store.get(key(i)).unwrap().is_some(), i % 10 != 0, "key {i}");
    }
    store.close().unwrap();
    let segs = segments(dir.path());
    let ids: Vec<Vec<u8>> = segs
        .iter()
        .map(|s| std::fs::read(s).unwrap()[40..56].to_vec())
        .collect();
    assert_ne!(ids[0], old);
    assert!(ids.iter().all(|i| *i == ids[0]), "one store id for all");
}

#[test]
fn a_zeroed_page_in_a_sealed_segment_is_skipped() {
    // A disk that returns zeros for a lost page: the scan finds the next record after it.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let n = 3_000;
    fill(dir.path(), &clock, n);
    let expected = answers(&opts(&clock).open(dir.path()).unwrap(), n);
    let seg = segments(dir.path()).remove(0);
    let recs = records(&seg);
    let (from, to) = (8192, 12_288);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[from..to].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let hit: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.offset < to && r.offset + r.len > from)
        .collect();
    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    let start = hit[0].offset;
    let end = hit.last().map(|r| r.offset + r.len).unwrap();
    assert_eq!(s.recovery_salvaged_places, 1);
    assert_eq!(s.recovery_salvaged_bytes, (end - start) as u64);
    assert_eq!(store.salvaged()[0].offset, start as u64);
    let lost: Vec<u64> = hit.iter().filter_map(|r| key_index(r, n)).collect();
    let got = answers(&store, n);
    for i in 0..n {
        if !lost.contains(&i) {
            assert_eq!(got[i as usize], expected[i as usize], "key {i}");
        }
    }
}

#[test]
fn many_damaged_places_are_all_counted_and_the_first_few_listed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    fill(dir.path(), &clock, 3_000);
    let seg = segments(dir.path()).remove(0);
    let recs = records(&seg);
    let damaged: Vec<&Rec> = recs.iter().step_by(10).take(40).collect();
    let mut bytes = std::fs::read(&seg).unwrap();
    for r in &damaged {
        bytes[r.offset + 20] ^= 1;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let store = salvage(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(s.recovery_salvaged_places, damaged.len() as u64);
    let bytes: usize = damaged.iter().map(|r| r.len).sum();
    assert_eq!(s.recovery_salvaged_bytes, bytes as u64);
    let listed: Vec<u64> = store.salvaged().iter().map(|p| p.offset).collect();
    let first: Vec<u64> = damaged
        .iter()
        .take(MAX_SALVAGED_PLACES)
        .map(|r| r.offset as u64)
        .collect();
    assert_eq!(listed, first);
}

#[test]
fn foreign_and_newer_segments_are_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let clock = clock();
    fill(dir.path(), &clock, 3_000);
    fill(other.path(), &clock, 10);
    // Damage that salvage would mend, and a temporary it would delete: neither may be
    // touched by an open that fails.
    let segs = segments(dir.path());
    flip(&segs[0], SEGMENT_HEADER_LEN + 3);
    std::fs::write(dir.path().join("seg-0000000000000001.olog.tmp"), b"x").unwrap();
    // Another store's segment, with this one's id (and a valid checksum).
    let mut foreign = std::fs::read(segments(other.path()).remove(0)).unwrap();
    set_segment_id(&mut foreign, 2);
    let mut renamed = std::fs::read(&segs[1]).unwrap();
    set_segment_id(&mut renamed, 77);
    let mut future = std::fs::read(&segs[1]).unwrap();
    set_format_version(&mut future, 9);
    for (bytes, want) in [
        (foreign, "foreign"),
        (renamed, "mismatch"),
        (future, "version"),
    ] {
        let before = std::fs::read(&segs[1]).unwrap();
        std::fs::write(&segs[1], &bytes).unwrap();
        let snap = snapshot(dir.path());
        let e = salvage(&clock).open(dir.path()).unwrap_err();
        let ok = match (&e, want) {
            (Error::Corruption(c), "foreign") => c.kind == CorruptionKind::ForeignSegment,
            (Error::Corruption(c), "mismatch") => c.kind == CorruptionKind::SegmentIdMismatch,
            (Error::UnsupportedVersion { found: 9, .. }, "version") => true,
            _ => false,
        };
        assert!(ok, "{want}: {e:?}");
        let mut after = snapshot(dir.path());
        after.remove(&dir.path().join("LOCK"));
        let mut snap = snap;
        snap.remove(&dir.path().join("LOCK"));
        assert_eq!(
            after, snap,
            "{want}: a refused salvage changed the directory"
        );
        std::fs::write(&segs[1], &before).unwrap();
    }
    // Put right, it opens.
    let store = salvage(&clock).open(dir.path()).unwrap();
    assert_eq!(store.stats().recovery_salvaged_places, 1);
}

#[test]
fn a_record_hidden_in_a_damaged_key_is_replayed() {
    // The documented limit of resynchronisation: the checksum vouches for a record's bytes,
    // not for where a record starts. A key that holds the bytes of a whole record is
    // harmless until the header of the record that carries it is damaged; salvage then
    // replays the record inside.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let now = 1_700_000_000_000u64;
    let hidden = encode_claim(b"never-claimed", now, now + 3_600_000);
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim("before", TTL).unwrap().is_new());
    assert!(store.claim(&hidden, TTL).unwrap().is_new());
    assert!(store.claim("after", TTL).unwrap().is_new());
    assert_eq!(store.get("never-claimed").unwrap(), None);
    store.close().unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let carrier = records(&seg).into_iter().find(|r| r.key == hidden).unwrap();
    flip(&seg, carrier.offset + 1);
    let store = salvage(&clock).open(dir.path()).unwrap();
    assert!(store.get("before").unwrap().is_some());
    assert!(store.get("after").unwrap().is_some());
    assert_eq!(store.get(&hidden).unwrap(), None, "the carrier is lost");
    assert!(
        store.get("never-claimed").unwrap().is_some(),
        "the hidden record was not replayed: update the docs of RecoveryMode::Salvage"
    );
}

#[test]
fn a_seal_hidden_in_a_damaged_key_does_not_end_the_segment() {
    // A seal ends the data only where it says the data ends: one inside a key (which names
    // some other offset) is skipped like any other damage, and the records after it kept.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut hidden = vec![0u8; 48];
    hidden[4] = 3;
    hidden[8..12].copy_from_slice(&16u32.to_le_bytes());
    hidden[32..40].copy_from_slice(&1u64.to_le_bytes());
    hidden[40..48].copy_from_slice(&64u64.to_le_bytes());
    reseal_record(&mut hidden);
    let store = opts(&clock).open(dir.path()).unwrap();
    assert!(store.claim("before", TTL).unwrap().is_new());
    assert!(store.claim(&hidden, TTL).unwrap().is_new());
    for i in 0..10 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let carrier = records(&seg).into_iter().find(|r| r.key == hidden).unwrap();
    flip(&seg, carrier.offset + 1);
    let store = salvage(&clock).open(dir.path()).unwrap();
    assert!(store.get("before").unwrap().is_some());
    for i in 0..10 {
        assert!(
            store.get(key(i)).unwrap().is_some(),
            "key {i} after the hidden seal"
        );
    }
    assert_eq!(store.stats().recovery_salvaged_places, 1);
}

/// A claim record as docs/FORMAT.md §3 lays it out, built independently of the crate.
fn encode_claim(key: &[u8], time: u64, expires: u64) -> Vec<u8> {
    let len = (32 + key.len()).div_ceil(8) * 8;
    let mut r = vec![0u8; len];
    r[4] = 1;
    r[6..8].copy_from_slice(&(key.len() as u16).to_le_bytes());
    r[16..24].copy_from_slice(&time.to_le_bytes());
    r[24..32].copy_from_slice(&expires.to_le_bytes());
    r[32..32 + key.len()].copy_from_slice(key);
    reseal_record(&mut r);
    r
}

#[test]
fn salvage_is_counted_in_stats_only_when_chosen() {
    // A damaged sealed segment: the default mode refuses it and reports no salvage; the
    // counters stay 0 in a default open after the salvage.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    fill(dir.path(), &clock, 3_000);
    let seg = segments(dir.path()).remove(0);
    flip(&seg, SEGMENT_HEADER_LEN + 100);
    assert!(matches!(
        opts(&clock).open(dir.path()),
        Err(Error::Corruption(_))
    ));
    drop(salvage(&clock).open(dir.path()).unwrap());
    let store = opts(&clock).open(dir.path()).unwrap();
    let s = store.stats();
    assert_eq!(
        (
            s.recovery_salvaged_bytes,
            s.recovery_salvaged_places,
            s.recovery_salvaged_segments
        ),
        (0, 0, 0)
    );
    assert!(store.salvaged().is_empty());
}
