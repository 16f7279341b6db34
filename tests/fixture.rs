//! Directories written by earlier versions of the format still open and answer correctly.
//! See `tests/fixtures/README.md` for how each fixture was made.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{copy_dir, LEASE};
use oncelog::format::{SegmentHeader, FORMAT_VERSION};
use oncelog::{Begin, Claim, KeyState, Options, RecoveryMode};

/// A copy of `tests/fixtures/<name>`, to open (and so change) freely.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = tempfile::tempdir().unwrap();
    copy_dir(&src, dst.path());
    dst
}

fn is_claimed(store: &oncelog::Store, key: &str) -> bool {
    store.get(key).unwrap().is_some()
}

#[test]
fn a_directory_from_before_leases_opens_and_answers() {
    for (mode, hinted) in [
        (RecoveryMode::TolerateTornTail, 2),
        (RecoveryMode::Strict, 0),
    ] {
        let dir = copy_fixture("v1-claims");
        let store = Options::new()
            .recovery_mode(mode)
            .background_maintenance(false)
            .open(dir.path())
            .unwrap();
        let stats = store.stats();
        assert_eq!(stats.recovery_hinted_segments, hinted, "{mode:?}");
        assert_eq!(stats.recovery_truncated_bytes, 0, "{mode:?}");
        for i in 0..2000 {
            assert!(
                is_claimed(&store, &format!("live-{i:04}")),
                "live-{i} {mode:?}"
            );
        }
        for i in 0..100 {
            assert!(
                is_claimed(&store, &format!("tail-{i:04}")),
                "tail-{i} {mode:?}"
            );
        }
        for i in 0..500 {
            assert!(
                !is_claimed(&store, &format!("short-{i:04}")),
                "short-{i} {mode:?}"
            );
            assert!(
                !is_claimed(&store, &format!("removed-{i:04}")),
                "removed-{i} {mode:?}"
            );
        }
        // The new operations work on the old keys, and write new records next to them.
        match store.begin("live-0007", LEASE).unwrap() {
            Begin::Done(seen) => {
                assert_eq!(seen.state, KeyState::Claimed);
                assert_eq!((seen.attempt, seen.outcome), (1, None));
            }
            other => panic!("{other:?}"),
        }
        let Begin::Acquired(t) = store.begin("removed-0001", LEASE).unwrap() else {
            panic!("a removed key is free")
        };
        store
            .complete(&t, b"ok", Duration::from_secs(3600))
            .unwrap();
        assert!(matches!(
            store.claim("live-0008", LEASE).unwrap(),
            Claim::Duplicate(_)
        ));
        assert!(store.claim("short-0001", LEASE).unwrap().is_new());
        store.compact().unwrap();
        store.close().unwrap();
        // The old active segment was sealed at open and the new records went into a
        // segment of the current version: an older build refuses the directory rather
        // than misreading a kind it does not know.
        let v = versions(dir.path());
        assert!(v.contains(&1), "{v:?}");
        assert_eq!(v.iter().max(), Some(&FORMAT_VERSION), "{v:?}");
        let store = Options::new()
            .recovery_mode(mode)
            .background_maintenance(false)
            .open(dir.path())
            .unwrap();
        assert!(is_claimed(&store, "live-1999"));
        assert!(!is_claimed(&store, "removed-0002"));
        match store.begin("removed-0001", LEASE).unwrap() {
            Begin::Done(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"ok"[..])),
            other => panic!("{other:?}"),
        }
    }
}

/// The format versions of the segments in `dir`.
fn versions(dir: &Path) -> Vec<u16> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "olog"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            SegmentHeader::decode(&bytes).unwrap().version
        })
        .collect()
}

/// What every key of `v2-leases` answers, asked without changing anything.
fn check_v2_keys(store: &oncelog::Store, what: &str) {
    for i in 0..1000 {
        let seen = store.get(format!("live-{i:04}")).unwrap();
        assert_eq!(
            seen.map(|s| s.state),
            Some(KeyState::Claimed),
            "live-{i} {what}"
        );
    }
    for i in 0..100 {
        assert!(
            is_claimed(store, &format!("tail-{i:04}")),
            "tail-{i} {what}"
        );
    }
    for i in 0..300 {
        let seen = store.get(format!("done-{i:04}")).unwrap().expect("done");
        assert_eq!(seen.state, KeyState::Completed, "done-{i} {what}");
        assert_eq!(seen.outcome.as_deref(), Some(format!("out-{i}").as_bytes()));
    }
    for i in 0..100 {
        let seen = store.get(format!("held-{i:04}")).unwrap().expect("held");
        assert_eq!(
            (seen.state, seen.attempt),
            (KeyState::InFlight, 1),
            "held-{i} {what}"
        );
        // Abandoned: free, but the attempt is remembered.
        assert!(!is_claimed(store, &format!("abandoned-{i:04}")), "{what}");
    }
    for i in 0..300 {
        assert!(
            !is_claimed(store, &format!("removed-{i:04}")),
            "removed-{i} {what}"
        );
    }
    for i in 0..100 {
        let key = format!("removeddone-{i:04}");
        assert!(!is_claimed(store, &key), "{key} {what}");
    }
}

#[test]
fn a_directory_from_before_tombstone_ranges_opens_and_answers() {
    opens_and_answers_as_before("v2-leases", 2);
}

#[test]
fn a_directory_from_before_lease_chains_opens_and_answers() {
    opens_and_answers_as_before("v3-ranges", 3);
}

/// Opens a copy of fixture `name` (written by format version `version`, with the keys of
/// `check_v2_keys`) in both modes, runs maintenance, adds records of the current version
/// and reopens.
fn opens_and_answers_as_before(name: &str, version: u16) {
    for (mode, hinted) in [
        (RecoveryMode::TolerateTornTail, 2),
        (RecoveryMode::Strict, 0),
    ] {
        let dir = copy_fixture(name);
        let open = || {
            Options::new()
                .recovery_mode(mode)
                .background_maintenance(false)
                .open(dir.path())
                .unwrap()
        };
        let store = open();
        let stats = store.stats();
        assert_eq!(stats.recovery_hinted_segments, hinted, "{mode:?}");
        assert_eq!(stats.recovery_truncated_bytes, 0, "{mode:?}");
        check_v2_keys(&store, "at open");
        // Maintenance keeps the old tombstones (version 2: they do not say what they hide;
        // version 3: the removed claims' segment 2 is still there, and the chains they
        // hide do not say where they began), so the removed keys stay removed through it
        // and a reopen.
        store.compact().unwrap();
        check_v2_keys(&store, "after compaction");
        let removes = common::records(&dir.path().join("seg-0000000000000003.olog"))
            .iter()
            .filter(|r| r.kind == oncelog::format::RecordKind::Remove)
            .count();
        assert_eq!(removes, 400, "{mode:?}");
        match store.begin("held-0003", LEASE).unwrap() {
            Begin::InFlight { .. } => {}
            other => panic!("{other:?}"),
        }
        let Begin::Acquired(t) = store.begin("abandoned-0003", LEASE).unwrap() else {
            panic!("an abandoned key is free")
        };
        assert_eq!(t.attempt(), 2);
        match store
            .begin_with_fingerprint("held-0004", LEASE, b"other")
            .unwrap()
        {
            Begin::Mismatch(_) | Begin::InFlight { .. } => {}
            other => panic!("{other:?}"),
        }
        // New tombstones next to the old ones.
        assert!(store.remove("live-0005").unwrap());
        assert!(store.remove("done-0005").unwrap());
        store.compact().unwrap();
        store.close().unwrap();
        let v = versions(dir.path());
        assert!(v.contains(&version), "{v:?}");
        assert_eq!(v.iter().max(), Some(&FORMAT_VERSION), "{v:?}");

        let store = open();
        store.compact().unwrap();
        assert!(!is_claimed(&store, "live-0005"));
        assert!(!is_claimed(&store, "done-0005"));
        assert!(is_claimed(&store, "live-0006"));
        assert!(is_claimed(&store, "abandoned-0003"));
        for i in 0..300 {
            assert!(
                !is_claimed(&store, &format!("removed-{i:04}")),
                "removed-{i}"
            );
        }
        for i in 0..100 {
            assert!(!is_claimed(&store, &format!("removeddone-{i:04}")));
        }
    }
}
