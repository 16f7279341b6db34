//! A lease holder killed with SIGKILL: its lease survives the crash with its deadline, the
//! key cannot be acquired before the deadline, and can be after it (as the next attempt).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use oncelog::{Begin, KeyState, ManualClock, Options, Store};

fn open(dir: &std::path::Path, at: SystemTime) -> Store {
    Options::new()
        .clock(ManualClock::new(at))
        .background_maintenance(false)
        .open(dir)
        .unwrap()
}

#[test]
fn a_killed_holder_keeps_the_key_until_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::example::oncelog_binary())
        .args(["begin", "--dir"])
        .arg(dir.path())
        .args(["--lease", "1h", "--hold", "evt_1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("acquired evt_1 attempt=1 "), "{line:?}");
    // The holder is "working" (blocked on its stdin) with the directory open: kill it.
    let acquired_by = SystemTime::now();
    child.kill().unwrap();
    child.wait().unwrap();

    // Right after the crash: in flight, with the deadline the holder was given.
    let store = open(dir.path(), SystemTime::now());
    let deadline = match store.begin("evt_1", Duration::from_secs(30)).unwrap() {
        Begin::InFlight { until } => until,
        other => panic!("after the crash: {other:?}"),
    };
    assert!(
        deadline >= acquired_by + Duration::from_secs(3599),
        "{deadline:?}"
    );
    assert!(
        deadline <= acquired_by + Duration::from_secs(3600),
        "{deadline:?}"
    );
    let seen = store.get("evt_1").unwrap().expect("in flight");
    assert_eq!((seen.state, seen.attempt), (KeyState::InFlight, 1));
    drop(store);

    // A millisecond before the deadline it still cannot be acquired...
    let store = open(dir.path(), deadline - Duration::from_millis(1));
    assert!(matches!(
        store.begin("evt_1", Duration::from_secs(30)).unwrap(),
        Begin::InFlight { .. }
    ));
    drop(store);
    // ...at the deadline it can, as attempt 2, which knows an earlier attempt got started.
    let store = open(dir.path(), deadline);
    match store.begin("evt_1", Duration::from_secs(30)).unwrap() {
        Begin::Acquired(t) => {
            assert_eq!(t.attempt(), 2);
            store
                .complete(&t, b"done", Duration::from_secs(60))
                .unwrap();
        }
        other => panic!("at the deadline: {other:?}"),
    }
    drop(store);
    let store = open(dir.path(), deadline);
    let seen = store.get("evt_1").unwrap().expect("completed");
    assert_eq!((seen.state, seen.attempt), (KeyState::Completed, 2));
}

#[test]
fn a_holder_that_lets_go_abandons_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    // stdin closed at once: --hold abandons right after acquiring.
    let out = Command::new(common::example::oncelog_binary())
        .args(["begin", "--dir"])
        .arg(dir.path())
        .args(["--lease", "1h", "--hold", "evt_2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("abandoned evt_2 attempt=1"), "{text}");
    let out = Command::new(common::example::oncelog_binary())
        .args(["begin", "--dir"])
        .arg(dir.path())
        .args(["--lease", "1h", "evt_2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("acquired evt_2 attempt=2 "), "{text}");
    // get shows the in-flight attempt and its deadline.
    let out = Command::new(common::example::oncelog_binary())
        .args(["get", "--dir"])
        .arg(dir.path())
        .arg("evt_2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("in-flight evt_2 attempt=2 first_seen="),
        "{text}"
    );
    assert!(text.contains(" deadline="), "{text}");
}
