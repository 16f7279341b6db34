//! A real full disk: a small tmpfs mounted for the test (when running as root; skipped with
//! a message otherwise), filled by a store under `Durability::Sync` until the file system
//! says ENOSPC.
//!
//! Must hold: the claim that finds the disk full gets an error carrying ENOSPC and nothing
//! panics; every claim acknowledged before stays claimed, and duplicates of them are still
//! answered (no write needed); the directory reopens on the full disk; once there is room
//! again, writes go on, and nothing acknowledged was lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{clock, fixed_key, sync_opts, temporaries};
use oncelog::{Error, Store};

const TTL: Duration = Duration::from_secs(3600);
/// Keys of 53 bytes: every claim record has the same size.
const KEY_LEN: usize = 53;

/// A tmpfs mounted at a fresh directory, unmounted when dropped.
struct Mount {
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn new(size: &str) -> Result<Mount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let at = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount { at, _dir: dir })
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.at)
            .output()
            .expect("mount -o remount");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn open(dir: &Path) -> oncelog::Result<Store> {
    sync_opts().open(dir)
}

fn is_enospc(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
}

#[test]
fn a_full_file_system_refuses_writes_and_loses_nothing() {
    let mount = match Mount::new("1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: a real full disk needs a tmpfs mount ({why})");
            return;
        }
    };
    let dir = mount.at.join("store");
    let store = open(&dir).unwrap();
    let mut acked = 0u64;
    let err = loop {
        match store.claim(fixed_key(acked, KEY_LEN), TTL) {
            Ok(c) => {
                assert!(c.is_new(), "key {acked}");
                acked += 1;
            }
            Err(e) => break e,
        }
        assert!(acked < 1_000_000, "the disk never filled");
    };
    assert!(
        is_enospc(&err),
        "the claim that found the disk full: {err:?}"
    );
    assert!(acked > 1_000, "filled after only {acked} claims");
    eprintln!("disk full after {acked} claims: {err}");

    // Full: new keys are refused with the same error, again and again; what was
    // acknowledged still answers, and a duplicate needs no write.
    for i in acked..acked + 50 {
        let e = store.claim(fixed_key(i, KEY_LEN), TTL).unwrap_err();
        assert!(is_enospc(&e), "{e:?}");
    }
    for i in (0..acked).step_by(97) {
        assert!(
            store.get(fixed_key(i, KEY_LEN)).unwrap().is_some(),
            "key {i}"
        );
        assert!(
            !store.claim(fixed_key(i, KEY_LEN), TTL).unwrap().is_new(),
            "key {i}"
        );
    }
    // A remove needs a tombstone, so it is refused too, and the key stays claimed.
    let e = store.remove(fixed_key(0, KEY_LEN)).unwrap_err();
    assert!(is_enospc(&e), "{e:?}");
    assert!(store.get(fixed_key(0, KEY_LEN)).unwrap().is_some());
    // Maintenance has nothing to reclaim here, and no room for the hint files it writes:
    // it fails with ENOSPC, leaves no temporary file behind, and poisons nothing.
    if let Err(e) = store.compact() {
        assert!(is_enospc(&e), "{e:?}");
    }
    assert!(!store.stats().poisoned);
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    assert!(!store.claim(fixed_key(1, KEY_LEN), TTL).unwrap().is_new());
    drop(store);

    // Reopening on the full disk works and keeps everything.
    let store = open(&dir).unwrap();
    for i in 0..acked {
        assert!(
            store.get(fixed_key(i, KEY_LEN)).unwrap().is_some(),
            "key {i} after reopen"
        );
    }
    assert!(store.claim(fixed_key(acked, KEY_LEN), TTL).is_err());

    // Room again: writes go on without a reopen (a failed allocation acknowledged nothing
    // and poisons nothing), and after one.
    mount.resize("4m");
    for i in acked..acked + 1_000 {
        assert!(
            store.claim(fixed_key(i, KEY_LEN), TTL).unwrap().is_new(),
            "key {i}"
        );
    }
    store.close().unwrap();
    let store = open(&dir).unwrap();
    for i in acked + 1_000..acked + 2_000 {
        assert!(
            store.claim(fixed_key(i, KEY_LEN), TTL).unwrap().is_new(),
            "key {i}"
        );
    }
    store.close().unwrap();
    let store = open(&dir).unwrap();
    for i in 0..acked + 2_000 {
        assert!(
            store.get(fixed_key(i, KEY_LEN)).unwrap().is_some(),
            "key {i} at the end"
        );
    }
    store.close().unwrap();
}

/// The way out of a full disk without more space: claims expire, maintenance deletes the
/// segments that held them, and the freed room takes new claims, in the same process.
#[test]
fn expiry_and_maintenance_free_a_full_file_system() {
    let mount = match Mount::new("1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: a real full disk needs a tmpfs mount ({why})");
            return;
        }
    };
    let clock = clock();
    let dir = mount.at.join("store");
    let store = sync_opts().clock(clock.clone()).open(&dir).unwrap();
    let short = Duration::from_secs(60);
    let mut acked = 0u64;
    let err = loop {
        // The first half of what fits lives a minute, the rest an hour.
        let ttl = if acked < 5_000 { short } else { TTL };
        match store.claim(fixed_key(acked, KEY_LEN), ttl) {
            Ok(c) => {
                assert!(c.is_new());
                acked += 1;
            }
            Err(e) => break e,
        }
        assert!(acked < 1_000_000, "the disk never filled");
    };
    assert!(is_enospc(&err), "{err:?}");
    assert!(acked > 5_000, "filled after {acked} claims");
    clock.advance(short);
    // No hints here: they would need room too; what frees room must not depend on it.
    let report = store.compact();
    let deleted = store.stats().segments_deleted;
    assert!(deleted > 0, "nothing deleted: {report:?}");
    for i in acked..acked + 1_000 {
        assert!(
            store.claim(fixed_key(i, KEY_LEN), TTL).unwrap().is_new(),
            "key {i}"
        );
    }
    for i in 0..acked + 1_000 {
        let claimed = store.get(fixed_key(i, KEY_LEN)).unwrap().is_some();
        assert_eq!(claimed, i >= 5_000, "key {i}");
    }
    store.close().unwrap();
    eprintln!("full after {acked} claims; expiry freed {deleted} segments");
}
