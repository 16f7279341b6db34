//! A corruption sweep: every single-byte flip and every truncation of every file of a small
//! store directory (sealed segments, their hint files, the newest segment), opened in every
//! recovery mode. Each damaged copy must either be refused with `Error::Corruption` naming
//! the damaged file and an offset at or before the first damaged byte, or open and answer
//! for every undamaged key exactly as the undamaged directory does (invariant 5: damage is
//! reported or tolerated as documented, never a panic, never a wrong answer elsewhere).
//!
//! **Damaged keys.** A key is *damaged* by a flip at byte `b` of segment `S` if one of its
//! records in `S` (claim, remove, lease or done, padding included) covers `b`, and by a
//! truncation of `S` to `n` bytes if one of its records in `S` ends after `n`. The records
//! of a damaged key are the only ones the damage can change, so every other key must answer
//! exactly as before. Damaged keys may be lost or answered from their older records (or,
//! where a hint stands in for the segment, from the damaged bytes themselves: hinted replay
//! does not re-verify records, docs/FORMAT.md §10.2). A hint file damages no key: both of
//! its checksums cover every byte, so any damage makes `open` ignore it and read the
//! segment, and then *every* key must answer as before.
//!
//! On top of that, per mode (docs/FORMAT.md §8):
//!
//! - `Strict` either refuses the copy or, having found nothing wrong (only a hint was
//!   damaged), answers for every key exactly as before.
//! - `TolerateTornTail` refuses damage in a segment header or a sealed segment. Damage in
//!   the newest segment is cut as a torn tail, together with every record after it (the
//!   documented price): every key must then answer exactly as in the undamaged directory
//!   with the newest segment cut at the start of the first damaged record.
//! - `Salvage` opens every copy, undamaged keys answer exactly as before, the damage is
//!   counted (in `Stats` and `Store::salvaged`, at or before the first damaged byte of the
//!   damaged file) or cut as a torn tail, and nothing is counted for damage that reached
//!   no record. The salvaged directory is clean: a `Strict` open of it succeeds and
//!   answers as the salvaging store did, for every key.
//!
//! Answers compared for each key: `get`, then `claim` (so free keys with a remembered
//! attempt, and state transitions, show), then `get` again.
//!
//! The default run inverts every byte (XOR 0xff), flips single bits (0x01, 0x80) of every
//! eleventh byte, cuts every file at every length, and covers every byte of each file up to
//! a little past its data; beyond that the newest segment (64 KiB, pre-allocated) holds only
//! zeros, which every mode treats alike, and is sampled. `ONCELOG_SWEEP=full` makes the run
//! exhaustive: every bit of every byte, and every offset and length of every file, zero
//! tails included (several hours).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{clock, copy_dir, opts_no_bg};
use oncelog::format::{decode_record, RecordKind, SEGMENT_HEADER_LEN};
use oncelog::{Begin, Claim, CorruptionKind, Error, ManualClock, RecoveryMode, Seen, Store};
use tempfile::TempDir;

const HOUR: Duration = Duration::from_secs(3600);
const MIN: Duration = Duration::from_secs(60);

const MODES: [RecoveryMode; 3] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::Strict,
    RecoveryMode::Salvage,
];

fn mode_name(m: RecoveryMode) -> &'static str {
    match m {
        RecoveryMode::TolerateTornTail => "tolerate",
        RecoveryMode::Strict => "strict",
        RecoveryMode::Salvage => "salvage",
        _ => "other",
    }
}

/// Fills `dir` with two sealed, compacted and hinted segments, a gap where a segment
/// expired whole, and a newest segment: claims with keys of 1 to 300 bytes (one of them
/// binary), removes in the same and in a later segment, claims that expired, a claim
/// renewed after expiry, and two-phase keys done, in flight, abandoned and fingerprinted.
/// Leaves the clock at the time the checks run.
fn build(dir: &Path, clock: &ManualClock) {
    let store = opts_no_bg(clock).open(dir).unwrap();
    let acquire = |key: &[u8], lease: Duration| match store.begin(key, lease).unwrap() {
        Begin::Acquired(t) => t,
        other => panic!("{other:?}"),
    };
    let claim = |key: &[u8], ttl: Duration| assert!(store.claim(key, ttl).unwrap().is_new());
    let mut fill = 0u32;
    // Short-lived filler fills segments so that they rotate; compaction drops it again.
    let mut fill_until = |segments: u64| {
        while store.stats().segments < segments {
            claim(format!("filler-{fill:04}").as_bytes(), MIN);
            fill += 1;
        }
    };
    // Segment 1.
    claim(b"a", 100 * HOUR);
    claim(b"evt_0001", 100 * HOUR);
    claim(b"evt_00002", 100 * HOUR);
    claim(&[b'L'; 37], 100 * HOUR);
    claim(b"gone-same", 100 * HOUR);
    assert!(store.remove(b"gone-same").unwrap());
    claim(b"gone-later", 100 * HOUR);
    claim(b"expires", 40 * MIN);
    claim(b"renewed", 40 * MIN);
    let t = acquire(b"lease-done", MIN);
    store.complete(&t, b"order 17 shipped", 100 * HOUR).unwrap();
    let t = acquire(b"lease-abandoned", MIN);
    store.abandon(&t).unwrap();
    fill_until(2);
    // Segment 2.
    assert!(store.remove(b"gone-later").unwrap());
    let fp = oncelog::fingerprint(b"body");
    let Begin::Acquired(t) = store.begin_with_fingerprint(b"lease-fp", MIN, &fp).unwrap() else {
        panic!("lease-fp")
    };
    store.complete(&t, b"", 100 * HOUR).unwrap();
    let inflight = acquire(b"lease-inflight", 10 * HOUR);
    claim(&[0xff, 0, b'x', 0], 100 * HOUR);
    claim(&[b'M'; 300], 100 * HOUR);
    fill_until(3);
    // Segment 3 holds only filler: it expires whole and is deleted, leaving a gap.
    fill_until(4);
    clock.advance(31 * MIN);
    let report = store.compact().unwrap();
    assert_eq!(
        (
            report.segments_written,
            report.segments_deleted,
            report.hints_written
        ),
        (2, 1, 2),
        "{report:?}"
    );
    clock.advance(10 * MIN);
    // Segment 4, the newest (after one last filler record).
    claim(b"renewed", 100 * HOUR);
    store.extend(&inflight, 20 * HOUR).unwrap();
    claim(b"newest-1", 100 * HOUR);
    claim(&[b'N'; 9], 100 * HOUR);
    assert!(store.remove(b"a").unwrap());
    claim(b"short-ttl", 10 * MIN);
    store.close().unwrap();
    // The checks run when `expires` and `short-ttl` have expired.
    clock.advance(11 * MIN);
}

/// What the probe sees of one key.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    before: Option<Seen>,
    claim: Claim,
    after: Option<Seen>,
}

fn probe(store: &Store, keys: &[Vec<u8>]) -> Vec<Answer> {
    keys.iter()
        .map(|k| Answer {
            before: store.get(k).unwrap(),
            claim: store.claim(k, HOUR).unwrap(),
            after: store.get(k).unwrap(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FileKind {
    Sealed,
    Newest,
    Hint,
}

/// A byte range of a segment and the key (index into `Fixture::keys`) whose record it is.
#[derive(Debug)]
struct Span {
    start: usize,
    end: usize,
    key: Option<usize>,
}

#[derive(Debug)]
struct File {
    name: OsString,
    kind: FileKind,
    len: usize,
    bytes: Vec<u8>,
    /// End of the records (seal included): beyond it a segment holds only zeros.
    data_end: usize,
    records: Vec<Span>,
}

struct Fixture {
    dir: TempDir,
    clock: ManualClock,
    keys: Vec<Vec<u8>>,
    files: Vec<File>,
    expected: Vec<Answer>,
    /// Where copies go: tmpfs when there is one (syncs are free there; what is tested does
    /// not depend on the filesystem).
    scratch: Option<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        build(dir.path(), &clock);
        let mut names: Vec<OsString> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "LOCK")
            .collect();
        names.sort();
        let newest = names
            .iter()
            .filter(|n| n.to_string_lossy().ends_with(".olog"))
            .max()
            .unwrap()
            .clone();
        let mut keys: Vec<Vec<u8>> = vec![b"never-claimed".to_vec(), b"gone-same".to_vec()];
        let mut files = Vec::new();
        for name in names {
            let bytes = std::fs::read(dir.path().join(&name)).unwrap();
            let kind = if name.to_string_lossy().ends_with(".hint") {
                FileKind::Hint
            } else if name == newest {
                FileKind::Newest
            } else {
                FileKind::Sealed
            };
            let mut records = Vec::new();
            let mut pos = SEGMENT_HEADER_LEN;
            if kind != FileKind::Hint {
                while let Ok(r) = decode_record(&bytes[pos..]) {
                    let key = (r.header.kind != RecordKind::Seal).then(|| {
                        keys.push(r.key.to_vec());
                        r.key.to_vec()
                    });
                    records.push((pos, pos + r.len, key));
                    pos += r.len;
                }
            }
            files.push((name, kind, bytes, pos, records));
        }
        keys.sort();
        keys.dedup();
        let files = files
            .into_iter()
            .map(|(name, kind, bytes, data_end, records)| File {
                name,
                kind,
                len: bytes.len(),
                data_end: if kind == FileKind::Hint {
                    bytes.len()
                } else {
                    data_end
                },
                bytes,
                records: records
                    .into_iter()
                    .map(|(start, end, key)| Span {
                        start,
                        end,
                        key: key.map(|k| keys.binary_search(&k).unwrap()),
                    })
                    .collect(),
            })
            .collect();
        let scratch = Path::new("/dev/shm")
            .is_dir()
            .then(|| PathBuf::from("/dev/shm"))
            .filter(|p| tempfile::tempdir_in(p).is_ok());
        let mut fx = Fixture {
            dir,
            clock,
            keys,
            files,
            expected: Vec::new(),
            scratch,
        };
        let copy = fx.copy();
        let store = opts_no_bg(&fx.clock).open(copy.path()).unwrap();
        fx.expected = probe(&store, &fx.keys);
        drop(store);
        // The undamaged directory answers alike in every mode.
        for mode in MODES {
            let copy = fx.copy();
            let store = opts_no_bg(&fx.clock)
                .recovery_mode(mode)
                .open(copy.path())
                .unwrap();
            assert_eq!(probe(&store, &fx.keys), fx.expected, "{mode:?}");
        }
        fx
    }

    fn copy(&self) -> TempDir {
        let to = match &self.scratch {
            Some(p) => tempfile::tempdir_in(p).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        copy_dir(self.dir.path(), to.path());
        to
    }

    /// A copy of the directory with `damage` done to `file`.
    fn damaged(&self, file: &File, damage: Damage) -> TempDir {
        let copy = self.copy();
        let path = copy.path().join(&file.name);
        match damage {
            Damage::Flip { at, mask } => {
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[at] ^= mask;
                std::fs::write(&path, &bytes).unwrap();
            }
            Damage::Cut { len } => OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len as u64)
                .unwrap(),
        }
        copy
    }

    /// The answers of the undamaged directory with the newest segment cut (zeroed) from
    /// `from` on: what the default mode must answer when it cuts a torn tail there.
    fn cut_at(
        &self,
        newest: &File,
        from: usize,
        cache: &mut BTreeMap<usize, Vec<Answer>>,
    ) -> Vec<Answer> {
        cache
            .entry(from)
            .or_insert_with(|| {
                let copy = self.copy();
                let path = copy.path().join(&newest.name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[from..].fill(0);
                std::fs::write(&path, &bytes).unwrap();
                let store = opts_no_bg(&self.clock).open(copy.path()).unwrap();
                probe(&store, &self.keys)
            })
            .clone()
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One byte XORed with `mask`.
    Flip { at: usize, mask: u8 },
    /// The file cut to `len` bytes.
    Cut { len: usize },
}

impl Damage {
    /// The first byte the damage changed (or removed).
    fn first_byte(self) -> usize {
        match self {
            Damage::Flip { at, .. } => at,
            Damage::Cut { len } => len,
        }
    }

    /// Whether the damage changes any byte of `span` of `bytes` (the file). A cut that
    /// takes only zeros off a record (its padding) does not change it: zeros are what a
    /// re-extended file reads there.
    fn hits(self, span: &Span, bytes: &[u8]) -> bool {
        match self {
            Damage::Flip { at, .. } => span.start <= at && at < span.end,
            Damage::Cut { len } => {
                span.end > len && bytes[len.max(span.start)..span.end].iter().any(|&b| b != 0)
            }
        }
    }
}

fn full_sweep() -> bool {
    std::env::var("ONCELOG_SWEEP").is_ok_and(|v| v == "full")
}

/// Offsets to damage in `file`: all of them in a full sweep; otherwise every byte up to a
/// little past the data, then a sample of the zero tail (and its last byte).
fn offsets(file: &File) -> Vec<usize> {
    let dense = if full_sweep() {
        file.len
    } else {
        (file.data_end + 64).min(file.len)
    };
    let mut v: Vec<usize> = (0..dense).collect();
    v.extend((dense..file.len).step_by(4093));
    if dense < file.len {
        v.push(file.len - 1);
    }
    v.dedup();
    v
}

/// Counts per file kind, damage kind and mode: (opened, refused).
type Tally = BTreeMap<(FileKind, &'static str, &'static str), (u64, u64)>;

/// Opens the damaged copies of one case in every mode and checks the outcome.
fn check_case(
    fx: &Fixture,
    file: &File,
    damage: Damage,
    tally: &mut Tally,
    cuts: &mut BTreeMap<usize, Vec<Answer>>,
) {
    let what = format!("{damage:?} of {:?}", file.name);
    let b = damage.first_byte();
    let damaged_keys: Vec<usize> = file
        .records
        .iter()
        .filter(|s| damage.hits(s, &file.bytes))
        .filter_map(|s| s.key)
        .collect();
    let damage_kind = match damage {
        Damage::Flip { .. } => "flip",
        Damage::Cut { .. } => "truncate",
    };
    // A copy is reused by the next mode while opens fail: a failed open changes nothing.
    let mut copy: Option<TempDir> = None;
    for mode in MODES {
        let dir = copy
            .get_or_insert_with(|| fx.damaged(file, damage))
            .path()
            .to_path_buf();
        let counts = tally
            .entry((file.kind, damage_kind, mode_name(mode)))
            .or_default();
        let store = match opts_no_bg(&fx.clock).recovery_mode(mode).open(&dir) {
            Err(e) if mode == RecoveryMode::Salvage => panic!("{what}: salvage refused: {e:?}"),
            Err(Error::Corruption(c)) => {
                counts.1 += 1;
                assert_eq!(c.path, dir.join(&file.name), "{mode:?}, {what}: {c:?}");
                assert!(
                    c.offset as usize <= b,
                    "{mode:?}, {what}: reported after the damage: {c:?}"
                );
                assert_ne!(
                    file.kind,
                    FileKind::Hint,
                    "{mode:?}, {what}: a damaged hint refused"
                );
                if mode == RecoveryMode::TolerateTornTail && file.kind == FileKind::Newest {
                    assert!(b < SEGMENT_HEADER_LEN, "{what}: a torn tail refused: {c:?}");
                }
                let (kinds, at) = expected_refusal(file, damage, mode);
                assert!(
                    kinds.contains(&c.kind) && c.offset as usize == at,
                    "{mode:?}, {what}: {c:?}, expected one of {kinds:?} at {at}"
                );
                continue;
            }
            Err(other) => panic!("{mode:?}, {what}: {other:?}"),
            Ok(store) => store,
        };
        counts.0 += 1;
        // Strict reads every byte it relies on: only a damaged hint, which it never reads,
        // goes unnoticed.
        if mode == RecoveryMode::Strict {
            assert_eq!(file.kind, FileKind::Hint, "{what}: Strict opened it");
        }
        // This open may have changed files: the next mode gets a fresh copy.
        let dir = copy.take().unwrap();
        if mode == RecoveryMode::Salvage {
            check_salvage(fx, file, damage, store, dir.path(), &what, &damaged_keys);
            continue;
        }
        let got = probe(&store, &fx.keys);
        drop(store);
        let torn_from = match (mode, file.kind) {
            (RecoveryMode::TolerateTornTail, FileKind::Newest) => Some(
                file.records
                    .iter()
                    .find(|s| damage.hits(s, &file.bytes))
                    .map_or(file.data_end, |s| s.start),
            ),
            _ => None,
        };
        if let Some(from) = torn_from {
            let want = fx.cut_at(file, from, cuts);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "{mode:?}, {what}: key {:?} (cut at {from})",
                    key_name(&fx.keys[i])
                );
            }
            continue;
        }
        for (i, (g, w)) in got.iter().zip(&fx.expected).enumerate() {
            let may_differ = mode != RecoveryMode::Strict && damaged_keys.contains(&i);
            if !may_differ {
                assert_eq!(g, w, "{mode:?}, {what}: key {:?}", key_name(&fx.keys[i]));
            }
        }
    }
}

/// The checks of a `Salvage` open of a damaged copy in `dir` (see the module docs).
fn check_salvage(
    fx: &Fixture,
    file: &File,
    damage: Damage,
    store: Store,
    dir: &Path,
    what: &str,
    damaged_keys: &[usize],
) {
    let b = damage.first_byte();
    let st = store.stats();
    let places = store.salvaged().to_vec();
    let seen: Vec<Option<Seen>> = fx.keys.iter().map(|k| store.get(k).unwrap()).collect();
    drop(store);
    assert_eq!(
        places.len() as u64,
        st.recovery_salvaged_places.min(16),
        "{what}"
    );
    for p in &places {
        assert_eq!(p.path, dir.join(&file.name), "{what}: {p:?}");
        assert!(
            p.offset as usize <= b,
            "{what}: reported after the damage: {p:?}"
        );
    }
    let hit_record = file.records.iter().any(|s| damage.hits(s, &file.bytes));
    let counted = st.recovery_salvaged_places > 0 || st.recovery_truncated_bytes > 0;
    match file.kind {
        FileKind::Hint => assert_eq!(
            (st.recovery_salvaged_places, st.recovery_salvaged_segments),
            (0, 0),
            "{what}: a damaged hint salvaged a segment"
        ),
        _ if b < SEGMENT_HEADER_LEN || hit_record => {
            assert!(counted, "{what}: damage neither salvaged nor cut: {st:?}")
        }
        // A sealed segment cut short is rewritten at its exact length, even if only zeros
        // were cut off (`Strict` refuses a short sealed segment); a short newest segment is
        // re-extended, and counted.
        FileKind::Sealed if matches!(damage, Damage::Cut { .. }) => {
            assert_eq!(st.recovery_salvaged_segments, 1, "{what}: {places:?}")
        }
        FileKind::Newest if matches!(damage, Damage::Cut { .. }) => {
            assert_eq!(st.recovery_salvaged_places, 1, "{what}: {places:?}")
        }
        // Zeros past the data, or a cut that only took zeros off the end.
        _ => assert_eq!(
            (st.recovery_salvaged_places, st.recovery_salvaged_segments),
            (0, 0),
            "{what}: salvaged undamaged bytes: {places:?}"
        ),
    }
    if file.kind != FileKind::Hint && st.recovery_salvaged_segments > 0 {
        let hint = dir.join(&file.name).with_extension("hint");
        assert!(
            !hint.exists(),
            "{what}: the hint of a rewritten segment was kept"
        );
    }
    let store = opts_no_bg(&fx.clock)
        .recovery_mode(RecoveryMode::Strict)
        .open(dir)
        .unwrap_or_else(|e| panic!("{what}: salvage left damage behind: {e:?}"));
    let got = probe(&store, &fx.keys);
    for (i, ((g, s), w)) in got.iter().zip(&seen).zip(&fx.expected).enumerate() {
        let name = key_name(&fx.keys[i]);
        assert_eq!(
            &g.before, s,
            "{what}: key {name:?} changed after the salvaged reopen"
        );
        if !damaged_keys.contains(&i) {
            assert_eq!(g, w, "Salvage, {what}: key {name:?}");
        }
    }
}

/// What a refusal of `damage` to `file` must say: the kinds that fit, and the offset.
fn expected_refusal(
    file: &File,
    damage: Damage,
    mode: RecoveryMode,
) -> (Vec<CorruptionKind>, usize) {
    use CorruptionKind::*;
    let b = damage.first_byte();
    if b < SEGMENT_HEADER_LEN {
        return (vec![BadSegmentHeader], 0);
    }
    let strict = mode == RecoveryMode::Strict;
    match damage {
        // The first record that does not decode is the damaged one.
        Damage::Flip { at, .. } => {
            match file.records.iter().find(|s| s.start <= at && at < s.end) {
                Some(r) => (vec![Checksum, MalformedRecord, Truncated], r.start),
                // Past the data: within the header-sized slot after it, a record that does
                // not decode; beyond, a stray byte after the end (Strict).
                None if at < file.data_end + 32 => {
                    (vec![Checksum, MalformedRecord, Truncated], file.data_end)
                }
                None => (vec![TrailingGarbage], at),
            }
        }
        // Strict refuses a segment shorter than its capacity before reading it.
        Damage::Cut { len } if strict => (vec![Truncated], len),
        // The default mode reads up to the cut: the record it runs into is truncated, or,
        // cut at a record's start, the seal is missing.
        Damage::Cut { len } => match file.records.iter().find(|s| s.end > len) {
            Some(r) if r.start < len => (vec![Truncated], r.start),
            _ => (vec![Unsealed], len),
        },
    }
}

fn key_name(k: &[u8]) -> String {
    let s = String::from_utf8_lossy(k);
    if s.len() > 24 {
        format!("{}…({} bytes)", &s[..12], k.len())
    } else {
        s.into_owned()
    }
}

fn report(what: &str, tally: &Tally, started: Instant) {
    let mut outcomes = 0;
    eprintln!("{what}: file kind, damage, mode: opened / refused");
    for ((kind, damage, mode), (opened, refused)) in tally {
        eprintln!("  {kind:?} {damage} {mode}: {opened} / {refused}");
        outcomes += opened + refused;
    }
    let cases = outcomes / MODES.len() as u64;
    eprintln!(
        "{what}: {cases} damaged copies, each opened in {} modes, in {:?}",
        MODES.len(),
        started.elapsed()
    );
}

#[test]
fn every_byte_flip_of_every_file_is_refused_or_answers_right() {
    let started = Instant::now();
    let fx = Fixture::new();
    let mut tally = Tally::new();
    let mut cuts = BTreeMap::new();
    for file in &fx.files {
        for at in offsets(file) {
            // Every byte inverted; single bits on a sample (every bit of every byte in a
            // full sweep): a smaller change to a length field leads elsewhere.
            let masks: &[u8] = if full_sweep() {
                &[1, 2, 4, 8, 16, 32, 64, 128, 0xff]
            } else if at % 11 == 3 {
                &[0xff, 0x01, 0x80]
            } else {
                &[0xff]
            };
            for &mask in masks {
                check_case(&fx, file, Damage::Flip { at, mask }, &mut tally, &mut cuts);
            }
        }
    }
    report("flips", &tally, started);
}

#[test]
fn every_truncation_of_every_file_is_refused_or_answers_right() {
    let started = Instant::now();
    let fx = Fixture::new();
    let mut tally = Tally::new();
    let mut cuts = BTreeMap::new();
    for file in &fx.files {
        for len in offsets(file) {
            check_case(&fx, file, Damage::Cut { len }, &mut tally, &mut cuts);
        }
    }
    report("truncations", &tally, started);
}
