//! The command-line tool's `--recovery salvage`, run as a process. In a test binary of its
//! own: a child forked while another test's store is open holds that store's `LOCK` until
//! it execs, and that test's reopen in the window would be refused as `Locked`.

mod common;

use common::segfile::flip;
use common::{clock, key, opts, records, segments, TTL};

#[test]
fn the_command_line_tool_salvages_when_asked_and_says_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = opts(&clock).open(dir.path()).unwrap();
    for i in 0..3_000 {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    store.close().unwrap();
    let seg = segments(dir.path()).remove(0);
    let rec = records(&seg)[7].clone();
    flip(&seg, rec.offset + 9);
    let run = |args: &[&str]| {
        std::process::Command::new(common::example::oncelog_binary())
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let strict = run(&["stats", "--recovery", "strict"]);
    assert_eq!(strict.status.code(), Some(2));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains(&format!("offset {}", rec.offset)), "{err}");
    let out = run(&["stats", "--recovery", "salvage"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rewrote 1 segments"), "{err}");
    assert!(err.contains(&format!("offset {}", rec.offset)), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    assert_eq!(row("recovery_salvaged_places"), "1");
    assert_eq!(row("recovery_salvaged_bytes"), rec.len.to_string());
    // Mended: the default mode opens it, and says nothing about salvage.
    let again = run(&["stats"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(again.stderr.is_empty(), "{again:?}");
    let bad = run(&["stats", "--recovery", "lenient"]);
    assert_eq!(bad.status.code(), Some(2));
}
