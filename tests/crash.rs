//! Process-crash test through the real CLI: `oncelog filter` is killed with SIGKILL at
//! pseudo-random moments while it claims a stream of ids, and restarted on the same
//! directory, round after round.
//!
//! What it checks (invariants 1 and 3 of docs/DESIGN.md):
//!
//! - every id the child printed is an acknowledged `New` (filter prints an id only after
//!   its batch's `claim_many` returned); across all rounds and restarts no id is ever
//!   printed twice, although ids from earlier rounds are fed again;
//! - after every kill, the directory opens and every id printed so far is claimed;
//! - a last, clean round feeds every id ever fed once more: the child exits normally,
//!   prints only ids never printed before, and afterwards every fed id is claimed.
//!
//! `ONCELOG_CRASH_ROUNDS` (default 8) sets the number of killed rounds; rounds alternate
//! between `--durability sync` and `--durability buffered`. `ONCELOG_CRASH_SEED` changes
//! the pseudo-random choices (the kill moments themselves also depend on scheduling,
//! which is the point: the test holds whatever instant the kill lands on).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{env_u64, Rng};
use oncelog::{Durability, Options};

const DEFAULT_ROUNDS: u64 = 8;
const DEFAULT_SEED: u64 = 0x6f6e_6365_6c6f_6721;
/// Most fresh ids the writer feeds in one round (the child is normally killed long before).
const MAX_FRESH_PER_ROUND: u64 = 50_000;
/// How long to wait for the child's first acknowledged id before declaring it stuck.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `i`th fresh id of `round`. Every other id carries a long tail (256 to 4055 bytes),
/// so that rounds fill the store's 64 MiB segments and later rounds cross segment
/// rotations (and may be killed in the middle of one).
fn fresh_id(round: u64, i: u64) -> String {
    let mut id = format!("evt_{round}_{i}");
    if i % 2 == 1 {
        let len = 256 + (i.wrapping_mul(2_654_435_761) ^ round) % 3800;
        id.push('_');
        id.extend((0..len).map(|j| char::from(b'a' + ((i + j) % 26) as u8)));
    }
    id
}

/// Which fresh id `id` is: `(round, i)` if `id == fresh_id(round, i)`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.strip_prefix("evt_")?.splitn(3, '_');
    let r = parts.next()?.parse().ok()?;
    let i = parts.next()?.parse().ok()?;
    (fresh_id(r, i) == id).then_some((r, i))
}

/// An id for a message: long ids are cut short.
fn show(round: u64, i: u64) -> String {
    let id = fresh_id(round, i);
    if id.len() > 40 {
        format!("{}…({} bytes)", &id[..40], id.len())
    } else {
        id
    }
}

fn durability_of(round: u64) -> (&'static str, Durability) {
    if round.is_multiple_of(2) {
        ("sync", Durability::Sync)
    } else {
        ("buffered", Durability::Buffered)
    }
}

fn spawn_filter(dir: &Path, mode: &str, batch: u64) -> Child {
    Command::new(common::example::oncelog_binary())
        .arg("filter")
        .arg("--dir")
        .arg(dir)
        .args(["--ttl", "72h", "--durability", mode, "--batch"])
        .arg(batch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncelog filter")
}

/// What the writer fed in one round.
struct Fed {
    /// Fresh ids `evt_{round}_{0..fresh}` were generated (and written, unless the pipe broke).
    fresh: u64,
    /// Ids from earlier rounds fed again.
    old: u64,
    /// Fresh ids of this round fed a second time.
    repeats: u64,
}

/// Feeds ids in small chunks until `stop`, a broken pipe (the child died), or the cap.
/// Ids of earlier rounds are drawn from `earlier` (fresh counts per round).
fn spawn_writer(
    stdin: ChildStdin,
    round: u64,
    earlier: Vec<u64>,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Fed> {
    thread::spawn(move || {
        let mut out = stdin;
        let mut fed = Fed {
            fresh: 0,
            old: 0,
            repeats: 0,
        };
        let old_total: u64 = earlier.iter().sum();
        let mut chunk = String::new();
        while !stop.load(Ordering::Relaxed) && fed.fresh < MAX_FRESH_PER_ROUND {
            chunk.clear();
            let n = rng.range(1, 200);
            for _ in 0..n {
                let roll = rng.range(0, 99);
                if roll < 25 && old_total > 0 {
                    // An id from an earlier round: printed then, or maybe not (killed).
                    let mut k = rng.range(0, old_total - 1);
                    let mut r = 0;
                    while k >= earlier[r as usize] {
                        k -= earlier[r as usize];
                        r += 1;
                    }
                    chunk.push_str(&fresh_id(r, k));
                    fed.old += 1;
                } else if roll < 32 && fed.fresh > 0 {
                    // A recent id of this round again: same batch or a later one.
                    let back = rng.range(1, fed.fresh.min(64));
                    chunk.push_str(&fresh_id(round, fed.fresh - back));
                    fed.repeats += 1;
                } else {
                    chunk.push_str(&fresh_id(round, fed.fresh));
                    fed.fresh += 1;
                }
                chunk.push('\n');
            }
            if out
                .write_all(chunk.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                break; // the child is gone
            }
            // Pace the stream so that a round acknowledges thousands of ids, not millions;
            // the child batches whatever has arrived.
            thread::sleep(Duration::from_micros(rng.range(100, 1500)));
        }
        fed
    })
}

/// Reads the child's stdout: every complete line is an acknowledged New. A fragment
/// without its newline (the kill landed mid-write) is not a whole id and is dropped.
fn spawn_reader(stdout: impl Read + Send + 'static) -> (mpsc::Receiver<String>, JoinHandle<u64>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut input = BufReader::new(stdout);
        let mut line = Vec::new();
        let mut fragments = 0;
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return fragments,
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        fragments += 1;
                        return fragments;
                    }
                    line.pop();
                    let id = String::from_utf8(line.clone()).expect("child printed non-UTF-8");
                    if tx.send(id).is_err() {
                        return fragments;
                    }
                }
            }
        }
    });
    (rx, handle)
}

fn spawn_stderr(stderr: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

#[derive(Default)]
struct Totals {
    killed: u64,
    clean_exits: u64,
    early_kills: u64,
    fed_fresh: u64,
    fed_old: u64,
    fed_repeats: u64,
    acked: u64,
    checks: u64,
    fragments: u64,
    segments: u64,
}

/// Records an acknowledged id; fails if it was acknowledged before.
fn record_ack(printed: &mut HashSet<(u64, u64)>, id: String, round: u64, fed_rounds: u64) {
    let never_fed = || {
        let cut: String = id.chars().take(60).collect();
        panic!(
            "round {round}: child printed {cut:?} ({} bytes), which was never fed",
            id.len()
        )
    };
    let (r, i) = parse_id(&id).unwrap_or_else(never_fed);
    if r >= fed_rounds {
        never_fed();
    }
    assert!(
        printed.insert((r, i)),
        "round {round}: {} was answered New twice (printed again after a restart)",
        show(r, i)
    );
}

/// Opens the directory as the child would and checks every printed id is claimed.
/// Returns the checks made and the store's segment count.
fn check_claimed(
    dir: &Path,
    durability: Durability,
    printed: &HashSet<(u64, u64)>,
    round: u64,
) -> (u64, u64) {
    let store = Options::new()
        .durability(durability)
        .open(dir)
        .unwrap_or_else(|e| panic!("round {round}: reopening after the kill failed: {e}"));
    let mut missing = Vec::new();
    for &(r, i) in printed {
        match store.get(fresh_id(r, i)) {
            Ok(Some(_)) => {}
            Ok(None) => missing.push((r, i)),
            Err(e) => panic!("round {round}: get({}) failed: {e}", show(r, i)),
        }
    }
    let stats = store.stats();
    store
        .close()
        .unwrap_or_else(|e| panic!("round {round}: close failed: {e}"));
    if !missing.is_empty() {
        missing.sort();
        panic!(
            "round {round}: {} of {} acknowledged ids are not claimed after the crash \
             (recovered_records={}, recovery_truncated_bytes={}); first few: {:?}",
            missing.len(),
            printed.len(),
            stats.recovered_records,
            stats.recovery_truncated_bytes,
            missing
                .iter()
                .take(10)
                .map(|&(r, i)| show(r, i))
                .collect::<Vec<_>>()
        );
    }
    (printed.len() as u64, stats.segments)
}

/// A long key claimed before the first round.
fn filler_id(j: u64) -> String {
    let mut id = format!("fill_{j}_");
    id.extend(std::iter::repeat_n('f', 4000));
    id
}

/// Claims long filler keys until the store's first segment (`FIRST_SEGMENT_SIZE`) is
/// 15/16 full, so that the killed rounds cross a segment rotation (the CLI has no
/// segment-size option).
/// Returns how many fillers were claimed.
fn prefill(dir: &Path) -> u64 {
    let store = Options::new()
        .durability(Durability::Buffered)
        .open(dir)
        .expect("open to prefill");
    let record = (filler_id(0).len() as u64 + 32).div_ceil(8) * 8;
    let n = oncelog::FIRST_SEGMENT_SIZE * 15 / 16 / record;
    let keys: Vec<String> = (0..n).map(filler_id).collect();
    for chunk in keys.chunks(1024) {
        let answers = store
            .claim_many(chunk, Duration::from_secs(72 * 3600))
            .expect("prefill");
        assert!(answers.iter().all(|a| a.is_new()), "a filler was not new");
    }
    assert_eq!(store.stats().segments, 1, "prefill expected one segment");
    store.close().expect("close after prefill");
    n
}

fn describe(status: ExitStatus, stderr: &str) -> String {
    format!("status {status:?}, stderr: {:?}", stderr.trim())
}

#[test]
fn sigkill_during_filter_never_loses_or_repeats_an_acknowledged_id() {
    let rounds = env_u64("ONCELOG_CRASH_ROUNDS", DEFAULT_ROUNDS);
    let seed = env_u64("ONCELOG_CRASH_SEED", DEFAULT_SEED);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    // Acknowledged ids, as (round, i) of fresh_id.
    let mut printed: HashSet<(u64, u64)> = HashSet::new();
    // Fresh ids generated per round: round r fed evt_r_0 .. evt_r_{fresh[r]-1}.
    let mut fresh: Vec<u64> = Vec::new();
    let mut t = Totals::default();
    let fillers = prefill(dir.path());
    eprintln!(
        "crash test: prefilled {fillers} long keys in {:.1?}",
        started.elapsed()
    );

    for round in 0..rounds {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0x1000_0000_01b3));
        let (mode, durability) = durability_of(round);
        let batch = [1, 3, 16, 128, 1024][rng.range(0, 4) as usize];
        // One round in four is killed at a delay counted from spawn, which may land while
        // the child is still opening (recovering) the store; the others after its first
        // acknowledged id, while it is claiming.
        let early = rng.chance(1, 4);
        let delay = Duration::from_millis(if early {
            rng.range(0, 40)
        } else {
            rng.range(3, 200)
        });

        let mut child = spawn_filter(dir.path(), mode, batch);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(
            child.stdin.take().expect("stdin"),
            round,
            fresh.clone(),
            Rng::new(rng.next()),
            Arc::clone(&stop),
        );
        let (lines, reader) = spawn_reader(child.stdout.take().expect("stdout"));
        let stderr = spawn_stderr(child.stderr.take().expect("stderr"));

        let mut round_acks = 0u64;
        if !early {
            match lines.recv_timeout(FIRST_LINE_TIMEOUT) {
                Ok(id) => {
                    record_ack(&mut printed, id, round, round + 1);
                    round_acks += 1;
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait");
                    stop.store(true, Ordering::Relaxed);
                    panic!(
                        "round {round}: no acknowledged id from the child ({e:?}); {}",
                        describe(status, &stderr.join().unwrap_or_default())
                    );
                }
            }
        }
        thread::sleep(delay);
        // SIGKILL on unix. An error means the child already exited (checked below).
        let _ = child.kill();
        let status = child.wait().expect("wait for child");
        stop.store(true, Ordering::Relaxed);
        let fed = writer.join().expect("writer thread");
        t.fragments += reader.join().expect("reader thread");
        for id in lines.try_iter() {
            record_ack(&mut printed, id, round, round + 1);
            round_acks += 1;
        }
        let err = stderr.join().unwrap_or_default();
        {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(9) => t.killed += 1,
                _ if status.success() => t.clean_exits += 1, // input ran out first
                _ => panic!(
                    "round {round}: the child failed on its own: {}",
                    describe(status, &err)
                ),
            }
        }
        t.early_kills += u64::from(early);
        fresh.push(fed.fresh);
        t.fed_fresh += fed.fresh;
        t.fed_old += fed.old;
        t.fed_repeats += fed.repeats;
        t.acked += round_acks;

        let (checks, segments) = check_claimed(dir.path(), durability, &printed, round);
        t.checks += checks;
        t.segments = segments;
        eprintln!(
            "crash round {round}: --durability {mode} --batch {batch} {} after {delay:?}: \
             fed {} fresh + {} old + {} repeats, {round_acks} acknowledged, {} claimed in total, {segments} segment(s)",
            if early {
                "killed (from spawn)"
            } else {
                "killed (after first ack)"
            },
            fed.fresh,
            fed.old,
            fed.repeats,
            printed.len()
        );
    }

    // A clean last round: feed every id ever fed (a fresh one included, so the child has
    // something to print), let the child finish, and check nothing was answered New twice
    // and everything is claimed afterwards.
    let final_round = rounds;
    let mut child = spawn_filter(dir.path(), "sync", 256);
    let stdin = child.stdin.take().expect("stdin");
    let (lines, reader) = spawn_reader(child.stdout.take().expect("stdout"));
    let stderr = spawn_stderr(child.stderr.take().expect("stderr"));
    // (round, count of fresh ids): every fresh id of every round, and one new one.
    let all_fed: Vec<(u64, u64)> = (0..)
        .zip(fresh.iter().copied())
        .chain(std::iter::once((final_round, 1)))
        .collect();
    let feeder = {
        let all = all_fed.clone();
        thread::spawn(move || {
            let mut out = std::io::BufWriter::new(stdin);
            for &(r, n) in &all {
                for i in 0..n {
                    writeln!(out, "{}", fresh_id(r, i)).expect("feed the clean round");
                }
            }
            out.flush().expect("feed the clean round");
            // Dropping stdin closes it: the child drains, closes the store and exits.
        })
    };
    let mut final_acks = 0u64;
    for id in lines.iter() {
        record_ack(&mut printed, id, final_round, final_round + 1);
        final_acks += 1;
    }
    feeder.join().expect("feeder thread");
    let status = child.wait().expect("wait for child");
    let err = stderr.join().unwrap_or_default();
    assert_eq!(
        reader.join().expect("reader thread"),
        0,
        "clean run printed a partial line"
    );
    assert!(
        status.success(),
        "clean round failed: {}",
        describe(status, &err)
    );
    assert!(
        printed.contains(&(final_round, 0)),
        "the clean round did not answer its one fresh id New"
    );
    // Now every id ever fed has been claimed by someone.
    let store = Options::new()
        .open(dir.path())
        .expect("open after the clean round");
    for &(r, n) in &all_fed {
        for i in 0..n {
            assert!(
                store.get(fresh_id(r, i)).expect("get").is_some(),
                "{} was fed and the child exited cleanly, yet it is not claimed",
                show(r, i)
            );
            t.checks += 1;
        }
    }
    for j in 0..fillers {
        assert!(
            store.get(filler_id(j)).expect("get").is_some(),
            "filler {j}, claimed before the first round, is not claimed any more"
        );
    }
    store.close().expect("close");

    println!(
        "crash test: {rounds} killed rounds + 1 clean ({} SIGKILLed, {} exited before the kill, \
         {} killed early), fed {} fresh + {} old + {} repeated ids, {} ids acknowledged New \
         ({} in the clean round), {} claimed-after-restart checks, {} partial lines dropped, \
         {} segment(s), seed {seed:#x}, {:.1?}",
        t.killed,
        t.clean_exits,
        t.early_kills,
        t.fed_fresh,
        t.fed_old,
        t.fed_repeats,
        printed.len(),
        final_acks,
        t.checks,
        t.fragments,
        t.segments,
        started.elapsed()
    );
    assert_eq!(printed.len() as u64, t.acked + final_acks);
    assert!(
        t.segments > 1,
        "no segment rotation happened: the rounds did not cross one"
    );
}
