//! The `oncelog` binary run as a process: help, version, usage errors and their exit codes,
//! `stats --json`, and the exit codes and output that scripts rely on.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn oncelog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oncelog"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run oncelog")
}

/// The command `args[0]` with `--dir DIR`, then the rest of `args`.
fn in_dir(dir: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = vec![args[0], "--dir", dir.to_str().unwrap()];
    all.extend(&args[1..]);
    oncelog(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_has_help_that_names_its_options() {
    let commands: [(&str, &[&str]); 9] = [
        (
            "claim",
            &["--dir", "--ttl", "--durability", "--recovery", "duplicate"],
        ),
        ("filter", &["--dir", "--ttl", "--batch", "stdin", "sort -u"]),
        ("get", &["--dir", "--recovery", "in-flight", "absent"]),
        ("begin", &["--lease", "--fingerprint", "--hold", "acquired"]),
        ("remove", &["--dir", "--durability", "claimed again"]),
        ("stats", &["--dir", "--json", "--recovery"]),
        ("compact", &["--dir", "hint files"]),
        (
            "serve",
            &[
                "--dir",
                "--listen",
                "--durability",
                "--requirepass",
                "--max-clients",
                "listening on",
            ],
        ),
        (
            "bench",
            &[
                "--threads",
                "--async",
                "--keys",
                "--key-len",
                "--dup-ratio",
                "--ttl",
                "--durability",
                "--batch",
                "--duration",
                "--no-reopen",
                "--short-ttl",
                "--short-ratio",
                "--expire",
                "--hints-before-reopen",
                "--no-hints",
                "--lag",
            ],
        ),
    ];
    for (command, words) in commands {
        let out = oncelog(&[command, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{command} --help: {out:?}");
        let text = stdout(&out);
        for word in words {
            assert!(
                text.contains(word),
                "{command} --help lacks {word:?}:\n{text}"
            );
        }
    }
    let top = oncelog(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    for (command, _) in commands {
        assert!(stdout(&top).contains(command), "{}", stdout(&top));
    }
}

#[test]
fn version_prints_the_version() {
    let out = oncelog(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("oncelog {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_command_is_a_usage_error() {
    let out = oncelog(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage:"), "{out:?}");
}

#[test]
fn a_missing_dir_is_named() {
    let out = oncelog(&["claim", "--ttl", "1h", "evt_1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--dir"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_duration_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = in_dir(dir.path(), &["claim", "--ttl", "5x", "evt_1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("'5x'") && err.contains("--ttl"), "{err}");
    assert!(err.contains("unknown unit \"x\""), "{err}");
    // Nothing was opened, so nothing was created.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let out = in_dir(dir.path(), &["begin", "--lease", "10", "evt_1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("10 has no unit"), "{}", stderr(&out));
}

#[test]
fn bad_modes_and_numbers_and_unknown_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["claim", "--ttl", "1h", "--durability", "fast", "k"],
            "expected sync, buffered or periodic:INTERVAL",
        ),
        (
            &["stats", "--recovery", "lenient"],
            "expected tolerate, strict or salvage",
        ),
        (
            &["filter", "--ttl", "1h", "--batch", "0"],
            "expected a positive whole number",
        ),
        (&["bench", "--dup-ratio", "1"], "0 <= F < 1"),
        (&["get", "--frobnicate", "k"], "--frobnicate"),
    ];
    for (args, why) in cases {
        let out = in_dir(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn claim_exits_1_on_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let first = in_dir(dir.path(), &["claim", "--ttl", "1h", "evt_1", "evt_2"]);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(stdout(&first), "new evt_1\nnew evt_2\n");
    let again = in_dir(dir.path(), &["claim", "--ttl", "1h", "evt_3", "evt_1"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let text = stdout(&again);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "new evt_3");
    assert!(
        lines[1].starts_with("duplicate evt_1 first_seen="),
        "{text}"
    );
    assert!(lines[1].contains(" expires_at="), "{text}");
    assert_eq!(lines.len(), 2);
    // A key that begins with a dash, after `--`.
    let dash = in_dir(dir.path(), &["claim", "--ttl", "1h", "--", "-evt"]);
    assert_eq!(stdout(&dash), "new -evt\n");
}

#[test]
fn filter_prints_first_seen_ids_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oncelog"))
            .args(["filter", "--ttl", "1h", "--batch", "2", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        stdout(&out)
    };
    assert_eq!(run("b\na\n\nb\nc\r\na\n"), "b\na\nc\n");
    assert_eq!(run("a\nd\nc\n"), "d\n");
}

#[test]
fn stats_json_is_one_object_with_the_text_form_names() {
    let dir = tempfile::tempdir().unwrap();
    let claimed = in_dir(dir.path(), &["claim", "--ttl", "1h", "a", "b", "c", "a"]);
    assert_eq!(claimed.status.code(), Some(1));
    let out = in_dir(dir.path(), &["stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("stats --json is JSON");
    assert_eq!(json["keys"], 3);
    assert_eq!(json["live_keys"], 3);
    assert_eq!(json["dir"], dir.path().to_str().unwrap());
    assert!(json["recovery_time_ms"].is_number(), "{json}");
    // The same names as the text form, and the same values.
    let text_form = stdout(&in_dir(dir.path(), &["stats"]));
    let object = json.as_object().unwrap();
    let mut rows = 0;
    for line in text_form.lines().filter(|l| !l.starts_with('(')) {
        let (name, value) = line.split_once(' ').unwrap();
        let got = &object[name];
        rows += 1;
        match (name, got) {
            ("dir", v) => assert_eq!(v, value.trim()),
            ("recovery_time_ms", v) => assert!(v.is_f64() || v.is_u64(), "{v}"),
            (_, v) => assert_eq!(v.to_string(), value.trim(), "{name}"),
        }
    }
    assert_eq!(rows, object.len(), "{text_form}\n{json}");
}

#[test]
fn stats_json_escapes_the_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a \"quoted\" \\ dir\tx");
    let out = in_dir(&dir, &["stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["dir"], dir.to_str().unwrap());
    assert_eq!(json["keys"], 0);
}

#[test]
fn a_command_that_succeeds_prints_nothing_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = in_dir(dir.path(), &["claim", "--ttl", "1h", "k"]);
    assert_eq!(out.status.code(), Some(0));
    let out = in_dir(dir.path(), &["get", "k"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// Runs `oncelog bench` with `args` on a fresh directory, under `Buffered` and without the
/// reopen, and returns what it printed (after checking it succeeded).
/// `--stripes` reaches the store: too many is refused by `Options` (naming the option), a
/// count is rounded up to a power of two, and `bench` names what it ran with.
#[test]
fn stripes_reach_the_store_in_bench_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = in_dir(
        &dir.path().join("b"),
        &["bench", "--keys", "100", "--stripes", "2000000"],
    );
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(stderr(&out).contains("stripes"), "{}", stderr(&out));
    // A server that took the store would serve until stopped: give it 20 s to refuse.
    let s = dir.path().join("s");
    let mut server = Command::new(env!("CARGO_BIN_EXE_oncelog"))
        .args([
            "serve",
            "--dir",
            s.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--stripes", "2000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncelog serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            server.kill().unwrap();
            let _ = server.wait();
            panic!("serve --stripes 2000000 started serving");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("stripes"), "{err}");
    let text = bench(&["--keys", "1000", "--stripes", "3000"]);
    assert!(text.contains("4096 index stripes"), "{text}");
}

fn bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("b");
    let mut all = vec!["bench", "--durability", "buffered", "--no-reopen"];
    all.extend_from_slice(args);
    let out = in_dir(&d, &all);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    stdout(&out)
}

/// The line of `text` whose first word is `word`.
fn line_of<'a>(text: &'a str, word: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(word))
        .unwrap_or_else(|| panic!("no {word} line: {text}"))
}

/// `bench --lag` prints the expired-and-unswept count each second and the largest one.
#[test]
fn bench_reports_the_maintenance_lag() {
    let text = bench(&[
        "--keys",
        "3000000",
        "--duration",
        "2500ms",
        "--short-ttl",
        "1s",
        "--short-ratio",
        "0.5",
        "--lag",
    ]);
    assert!(
        text.contains("expired, not yet swept"),
        "no per-second line: {text}"
    );
    let line = line_of(&text, "lag");
    assert!(line.contains("at most"), "{line}");
}

/// `bench --settle` runs maintenance after the run and measures the heap again.
#[test]
fn bench_settle_measures_memory_again_after_maintenance() {
    let text = bench(&["--keys", "20000", "--settle"]);
    let line = line_of(&text, "settled");
    assert!(
        line.contains("B/key heap after two maintenance runs"),
        "{line}"
    );
}
