//! Kill-torture: a mixed workload runs in a child process and is killed with SIGKILL at
//! random moments, round after round, on one directory; after every kill the parent reopens
//! the directory and checks the invariants of docs/DESIGN.md against what the child acknowledged.
//!
//! The child is this test binary run again (`--exact kill_torture`, with `ONCELOG_TORTURE_CHILD`
//! set). It runs one or two worker threads doing `claim`, `claim_many`, `remove`, `get`,
//! `begin` (with and without fingerprint), `complete`, `abandon`, `extend` and the odd
//! `compact`, on keys that earlier rounds used too, with 64 KiB segments, background
//! maintenance every 20–50 ms, TTLs of 1–3 s on a third of the claims (2 min on the rest),
//! leases of 0.15–1.5 s on most begins and an `attempt_memory` of 8 s — so segments rotate,
//! expire, get sparse, are compacted and deleted, tombstones come and go, and attempts are
//! forgotten while it runs (one round in four claims only keys with short TTLs, so that the
//! segments it fills expire whole). Rounds cycle through `Sync`, `Periodic` and `Buffered`:
//! a process kill keeps the page cache, so every acknowledged answer must survive in every
//! mode.
//!
//! Before each call a worker writes `>tid seq ms op args` to its stdout, and once the call has
//! returned `<tid seq ms answer`; each line is one write(2) of less than PIPE_BUF bytes to a
//! pipe, so it is whole or absent. A call with an intent and no answer was in flight when the
//! process died: it may or may not have taken effect. The order of the lines gives every
//! call an interval in one global order, and the wall-clock times bound when the store read
//! its clock (the child uses the system clock).
//!
//! From those intervals the parent knows, for each key, which calls may have changed it and
//! in what order, and checks:
//!
//! - every answer during the run, where the order of calls settles it: `claim` (and each
//!   key of `claim_many`) says `New` only if the key is free, `remove` says whether it was
//!   held, `begin` answers `Acquired` with the next attempt number, `InFlight` with the
//!   holder's deadline, or `Done` with the stored outcome, and a ticket's `complete`,
//!   `abandon` and `extend` succeed exactly while the ticket's lease is the key's newest;
//! - after every kill, the same for what the reopened store says: an acknowledged `New`
//!   whose TTL has not run out is still claimed (`get` shows it, `claim` says `Duplicate`),
//!   a removed key stays removed, an expired one stays expired, a completed key is `Done`
//!   with its outcome, a lease is `InFlight` until its deadline and then (or once abandoned)
//!   `Acquired` by the next attempt — or by attempt 1 once the store may have forgotten the
//!   earlier ones (every claim key is checked; the lease keys of the round and a sample of
//!   the others, so that some are left alone long enough to be forgotten);
//! - no key is answered `New` twice within one TTL window unless a remove may lie between,
//!   and no two `Acquired` answers of a key carry the same attempt number unless a remove,
//!   an expired outcome or a forgotten attempt may lie between — across all rounds,
//!   restarts and threads.
//!
//! A check whose answer depends on what the record cannot settle — two calls on one key
//! overlapping, a call in flight at a kill, a TTL or deadline within 50 ms of the call, a
//! ticket whose attempt may have been forgotten — is skipped, and counted. The run ends
//! with a clean round (no kill) that also claims every claim key once more, then a
//! compaction and the checks once more, before and after one more restart.
//!
//! Environment: `ONCELOG_TORTURE_ROUNDS` (default 40) killed rounds before the clean one;
//! `ONCELOG_TORTURE_SEED` (decimal or 0x-hex) seeds the workload and the kill delays (the
//! kill moments also depend on scheduling). The totals are printed at the end, one line per
//! round with `--nocapture`; a long run:
//!
//! ```sh
//! ONCELOG_TORTURE_ROUNDS=2000 cargo test --release --test torture -- --nocapture
//! ```
//!
//! The directory settles at a few thousand small segments in a long run. (Before the store
//! stopped keeping one open file per segment, a run with hour-long TTLs reached ~19.9 k
//! segments and failed with EMFILE; `tests/recovery.rs` checks that only `LOCK` stays open.)

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{env_u64, ms, Rng};
use oncelog::{
    fingerprint, Begin, Claim, Durability, Error, KeyState, Options, Seen, Store, Ticket,
    MIN_SEGMENT_SIZE,
};

/// The name of the one test, which the child re-runs.
const TEST_NAME: &str = "kill_torture";
/// Set in the child's environment: `seed round final dir`.
const CHILD_ENV: &str = "ONCELOG_TORTURE_CHILD";
const DEFAULT_ROUNDS: u64 = 40;
const DEFAULT_SEED: u64 = 0x746f_7274_7572_6521;
/// A TTL or deadline this close to a call's clock reading leaves its answer open.
const MARGIN_MS: u64 = 50;
/// The TTL of long-lived claims and outcomes: longer than a default run, shorter than a long
/// one (so that their tombstones run out too, and the directory reaches a steady size).
const LONG_MS: u64 = 120_000;
/// `Options::attempt_memory` of every open: lapsed and abandoned attempts (and the
/// tombstones of lease keys) are forgotten within a long run too.
const ATTEMPT_MEMORY_MS: u64 = 8_000;
/// Calls per worker in the clean last round.
const FINAL_OPS_PER_THREAD: u64 = 2_000;
/// The parent's thread id in tickets and outcomes.
const PARENT_TID: u64 = 9;

#[test]
fn kill_torture() {
    match std::env::var(CHILD_ENV) {
        Ok(spec) => child_main(&spec),
        Err(_) => parent_main(),
    }
}

// ---------------------------------------------------------------------------------------
// Shared by both sides: randomness, the round's plan, keys, the wire format of answers.

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// What a round runs with; the parent and the child derive it from the seed alike.
#[derive(Clone, Copy, Debug)]
struct Plan {
    round: u64,
    durability: Durability,
    threads: u64,
    maintenance_ms: u64,
    threshold: f64,
    stripes: usize,
    /// Claim keys `c0 .. c{claim_keys-1}` are in play (the range grows with the rounds).
    claim_keys: u64,
    /// Lease keys `l0 .. l{lease_keys-1}`.
    lease_keys: u64,
    /// Only claims with short TTLs (and their removes): the segments this round fills
    /// expire whole, so that maintenance deletes them.
    short_only: bool,
    worker_seed: u64,
}

impl Plan {
    fn new(seed: u64, round: u64) -> Plan {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0x1000_0000_01b3));
        let durability = match round % 3 {
            0 => Durability::Sync,
            1 => Durability::Periodic(Duration::from_millis(rng.range(5, 50))),
            _ => Durability::Buffered,
        };
        Plan {
            round,
            durability,
            threads: if rng.chance(1, 5) { 1 } else { 2 },
            maintenance_ms: rng.range(20, 50),
            threshold: [0.5, 0.7, 0.9][rng.range(0, 2) as usize],
            stripes: [4, 64, 1024][rng.range(0, 2) as usize],
            claim_keys: (2_000 + 100 * round).min(40_000),
            lease_keys: (300 + 20 * round).min(5_000),
            short_only: rng.chance(1, 4),
            worker_seed: rng.next(),
        }
    }

    fn options(&self) -> Options {
        Options::new()
            .durability(self.durability)
            .segment_size(MIN_SEGMENT_SIZE)
            .maintenance_interval(Duration::from_millis(self.maintenance_ms))
            .compaction_threshold(self.threshold)
            .stripes(self.stripes)
            .attempt_memory(Duration::from_millis(ATTEMPT_MEMORY_MS))
    }

    fn mode(&self) -> String {
        match self.durability {
            Durability::Sync => "sync".into(),
            Durability::Periodic(d) => format!("periodic({}ms)", d.as_millis()),
            Durability::Buffered => "buffered".into(),
        }
    }
}

/// A key, named `c<i>` (claimed with `claim`/`claim_many`/`remove`/`get`) or `l<i>` (used
/// with `begin` and tickets, and `remove`) on the wire. The stored key adds a tail, so that
/// records are 40 bytes to 2 KiB long and 64 KiB segments fill quickly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Key {
    C(u32),
    L(u32),
}

impl Key {
    fn bytes(self) -> Vec<u8> {
        let (tag, i) = match self {
            Key::C(i) => ('c', i),
            Key::L(i) => ('l', i),
        };
        let mut k = format!("{tag}{i}_").into_bytes();
        let h = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let tail = if h.is_multiple_of(16) {
            600 + h % 1400
        } else {
            8 + h % 90
        };
        k.extend((0..tail).map(|j| b'a' + ((j + u64::from(i)) % 26) as u8));
        k
    }

    /// A third of the claim keys are claimed with TTLs of 1–3 s, the rest for an hour.
    fn short_ttl(self) -> bool {
        matches!(self, Key::C(i) if i % 3 == 0)
    }

    fn parse(s: &str) -> Option<Key> {
        let n = s.get(1..)?.parse().ok()?;
        match s.as_bytes().first()? {
            b'c' => Some(Key::C(n)),
            b'l' => Some(Key::L(n)),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::C(i) => write!(f, "c{i}"),
            Key::L(i) => write!(f, "l{i}"),
        }
    }
}

/// A ticket's name: the round, thread and call that acquired it.
fn ticket_id(round: u64, tid: u64, seq: u64) -> u64 {
    (round << 40) | (tid << 36) | seq
}

/// The outcome a `complete` call stores: named after the call, so the parent knows it.
fn outcome_of(round: u64, tid: u64, seq: u64) -> String {
    format!("o{round}.{tid}.{seq}")
}

fn claim_answer(c: &Claim) -> &'static str {
    if c.is_new() {
        "N"
    } else {
        "D"
    }
}

/// `S <expires ms> <state> <attempt>` with state `c` (claimed), `i` (in flight) or `d`
/// (completed); `-` for a free key.
fn get_answer(seen: &Option<Seen>) -> String {
    match seen {
        Some(s) => {
            let state = match s.state {
                KeyState::Claimed => 'c',
                KeyState::InFlight => 'i',
                KeyState::Completed => 'd',
                _ => '?',
            };
            format!("S {} {state} {}", ms(s.expires_at), s.attempt)
        }
        None => "-".into(),
    }
}

fn begin_answer(b: &Begin) -> String {
    match b {
        Begin::Acquired(t) => format!("A {} {}", t.attempt(), ms(t.deadline())),
        Begin::InFlight { until } => format!("I {}", ms(*until)),
        Begin::Done(seen) => {
            let outcome = seen
                .outcome
                .as_ref()
                .map_or("-".into(), |o| String::from_utf8_lossy(o).into_owned());
            format!("D {} {outcome}", seen.attempt)
        }
        Begin::Mismatch(_) => "M".into(),
    }
}

/// Whether a `get` answer shows a key in `state` with `attempt`, expiring within `lo..=hi`.
fn seen_matches(answer: &str, lo: u64, hi: u64, state: char, attempt: u32) -> bool {
    let mut w = answer.split(' ');
    w.next() == Some("S")
        && w.next()
            .and_then(|e| e.parse::<u64>().ok())
            .is_some_and(|e| (lo..=hi).contains(&e))
        && w.next() == Some(state.encode_utf8(&mut [0; 4]))
        && w.next() == Some(attempt.to_string().as_str())
}

/// `K` if a ticket's call succeeded, `S` if the ticket was stale; other errors are errors.
fn ticket_answer(r: oncelog::Result<()>) -> oncelog::Result<&'static str> {
    match r {
        Ok(()) => Ok("K"),
        Err(Error::StaleTicket { .. }) => Ok("S"),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------
// The child.

/// Stdout as a file: each line goes out in one write(2), unbuffered, so that a line the
/// parent reads was written whole before the call it announces or after the call it answers.
struct Wire(File);

impl Wire {
    fn send(&self, line: &str) {
        if (&self.0).write_all(line.as_bytes()).is_err() {
            // The parent is gone.
            std::process::exit(2);
        }
    }
}

fn child_main(spec: &str) {
    let mut parts = spec.splitn(4, ' ');
    let mut num = || -> u64 {
        parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad {CHILD_ENV}: {spec:?}"))
    };
    let (seed, round, last) = (num(), num(), num() == 1);
    let dir = PathBuf::from(parts.next().expect("directory in the child spec"));
    let plan = Plan::new(seed, round);
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .expect("duplicate stdout");
    let wire = Wire(File::from(stdout));
    // Starts with a newline, in case the test harness left a line open.
    wire.send("\n@start\n");
    let store = match plan.options().open(&dir) {
        Ok(s) => s,
        Err(e) => {
            wire.send(&format!("!open {e}\n"));
            std::process::exit(3);
        }
    };
    wire.send("@open\n");
    let budget = last.then_some(FINAL_OPS_PER_THREAD);
    thread::scope(|s| {
        for tid in 0..plan.threads {
            let (store, wire) = (&store, &wire);
            s.spawn(move || {
                let mut w = Worker::new(tid, store, wire, plan);
                let mut done = 0u64;
                while budget.is_none_or(|b| done < b) {
                    w.step();
                    done += 1;
                }
            });
        }
    });
    if last {
        // Every claim key once more, as a stream of batches.
        let mut w = Worker::new(plan.threads, &store, &wire, plan);
        let keys: Vec<Key> = (0..plan.claim_keys as u32).map(Key::C).collect();
        for chunk in keys.chunks(64) {
            w.claim_many(chunk, LONG_MS);
        }
        w.report_stats();
        match store.close() {
            Ok(()) => wire.send("@closed\n"),
            Err(e) => {
                wire.send(&format!("!close {e}\n"));
                std::process::exit(3);
            }
        }
    }
}

struct Worker<'a> {
    tid: u64,
    seq: u64,
    rng: Rng,
    store: &'a Store,
    wire: &'a Wire,
    plan: Plan,
    /// Tickets this thread holds, with the sequence number of the `begin` that got each.
    held: Vec<(Ticket, u64, Key)>,
}

impl<'a> Worker<'a> {
    fn new(tid: u64, store: &'a Store, wire: &'a Wire, plan: Plan) -> Worker<'a> {
        Worker {
            tid,
            seq: 0,
            rng: Rng::new(plan.worker_seed ^ tid.wrapping_mul(0xA24B_AED4_963E_E407)),
            store,
            wire,
            plan,
            held: Vec::new(),
        }
    }

    /// Announces a call; returns its sequence number.
    fn intent(&mut self, op: fmt::Arguments<'_>) -> u64 {
        self.seq += 1;
        let line = format!(">{} {} {} {op}\n", self.tid, self.seq, now_ms());
        self.wire.send(&line);
        self.seq
    }

    /// Acknowledges a call that has returned.
    fn answer(&self, seq: u64, answer: &str) {
        let line = format!("<{} {seq} {} {answer}\n", self.tid, now_ms() + 1);
        self.wire.send(&line);
    }

    fn failed(&self, seq: u64, e: &Error) -> ! {
        // With the causes: an `Error`'s message leaves its source out.
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        let msg = msg.replace('\n', " ");
        self.wire.send(&format!("!{} {seq} {msg}\n", self.tid));
        std::process::exit(3);
    }

    fn claim_key(&mut self) -> Key {
        let i = self.rng.range(0, self.plan.claim_keys - 1) as u32;
        Key::C(if self.plan.short_only { i - i % 3 } else { i })
    }

    fn lease_key(&mut self) -> Key {
        Key::L(self.rng.range(0, self.plan.lease_keys - 1) as u32)
    }

    fn short_ms(&mut self) -> u64 {
        self.rng.range(1_000, 3_000)
    }

    fn step(&mut self) {
        if self.tid == 0 && self.seq % 128 == 127 {
            self.report_stats();
        }
        if self.rng.chance(1, 400) {
            let seq = self.intent(format_args!("compact"));
            match self.store.compact() {
                Ok(_) => self.answer(seq, "K"),
                Err(e) => self.failed(seq, &e),
            }
            return;
        }
        if !self.held.is_empty() && self.rng.chance(1, 4) {
            return self.ticket_op();
        }
        let mut roll = self.rng.range(0, 99);
        if self.plan.short_only {
            roll = roll * 68 / 100; // claims, batches, removes and gets only
        }
        match roll {
            0..=39 => {
                let key = self.claim_key();
                let ttl = if key.short_ttl() || self.plan.short_only {
                    self.short_ms()
                } else {
                    LONG_MS
                };
                let bytes = key.bytes();
                let seq = self.intent(format_args!("claim {key} {ttl}"));
                match self.store.claim(&bytes, Duration::from_millis(ttl)) {
                    Ok(c) => self.answer(seq, claim_answer(&c)),
                    Err(e) => self.failed(seq, &e),
                }
            }
            40..=49 => {
                let n = self.rng.range(1, 24);
                // One batch in four draws from eight neighbouring keys, so keys repeat.
                let narrow = self.rng.chance(1, 4);
                let base = self.rng.range(0, self.plan.claim_keys - 1);
                let keys: Vec<Key> = (0..n)
                    .map(|_| {
                        if narrow {
                            let i = (base + self.rng.range(0, 7)) % self.plan.claim_keys;
                            Key::C(if self.plan.short_only { i - i % 3 } else { i } as u32)
                        } else {
                            self.claim_key()
                        }
                    })
                    .collect();
                let ttl = if self.plan.short_only || self.rng.chance(1, 3) {
                    self.short_ms()
                } else {
                    LONG_MS
                };
                self.claim_many(&keys, ttl);
            }
            50..=62 => {
                // Mostly keys with short TTLs: a tombstone lives as long as the claim it hides,
                // and segments pinned by hour-long tombstones could never be deleted.
                let mut key = self.claim_key();
                if let Key::C(i) = key {
                    if self.rng.chance(4, 5) {
                        key = Key::C(i - i % 3);
                    }
                }
                self.remove(key);
            }
            63..=67 => {
                let key = self.claim_key();
                let bytes = key.bytes();
                let seq = self.intent(format_args!("get {key}"));
                match self.store.get(&bytes) {
                    Ok(seen) => self.answer(seq, &get_answer(&seen)),
                    Err(e) => self.failed(seq, &e),
                }
            }
            68..=95 => self.begin(),
            _ => {
                let key = self.lease_key();
                self.remove(key);
            }
        }
    }

    fn claim_many(&mut self, keys: &[Key], ttl: u64) {
        let names: Vec<String> = keys.iter().map(Key::to_string).collect();
        let bytes: Vec<Vec<u8>> = keys.iter().map(|k| k.bytes()).collect();
        let seq = self.intent(format_args!("many {ttl} {}", names.join(",")));
        match self.store.claim_many(&bytes, Duration::from_millis(ttl)) {
            Ok(answers) => {
                let s: String = answers.iter().map(claim_answer).collect();
                self.answer(seq, &s);
            }
            Err(e) => self.failed(seq, &e),
        }
    }

    fn remove(&mut self, key: Key) {
        let bytes = key.bytes();
        let seq = self.intent(format_args!("remove {key}"));
        match self.store.remove(&bytes) {
            Ok(held) => self.answer(seq, if held { "T" } else { "F" }),
            Err(e) => self.failed(seq, &e),
        }
    }

    fn begin(&mut self) {
        let key = self.lease_key();
        let lease = if self.rng.chance(3, 5) {
            self.rng.range(150, 1_500)
        } else {
            self.rng.range(5_000, 30_000)
        };
        let with_fp = self.rng.chance(1, 2);
        let bytes = key.bytes();
        let fp = fingerprint(&bytes);
        let seq = self.intent(format_args!("begin {key} {lease}"));
        let d = Duration::from_millis(lease);
        let r = if with_fp {
            self.store.begin_with_fingerprint(&bytes, d, &fp)
        } else {
            self.store.begin(&bytes, d)
        };
        match r {
            Ok(b) => {
                self.answer(seq, &begin_answer(&b));
                if let Begin::Acquired(t) = b {
                    self.held.push((t, seq, key));
                    if self.held.len() > 6 {
                        // Forgotten: its lease runs out (or stays in flight) on its own.
                        self.held.remove(0);
                    }
                }
            }
            Err(e) => self.failed(seq, &e),
        }
    }

    fn ticket_op(&mut self) {
        let i = self.rng.range(0, self.held.len() as u64 - 1) as usize;
        let (ticket, tseq, key) = self.held[i].clone();
        match self.rng.range(0, 99) {
            0..=49 => {
                let ttl = if self.rng.chance(3, 5) {
                    self.short_ms()
                } else {
                    LONG_MS
                };
                let seq = self.intent(format_args!("complete {key} {tseq} {ttl}"));
                let outcome = outcome_of(self.plan.round, self.tid, seq);
                let r =
                    self.store
                        .complete(&ticket, outcome.as_bytes(), Duration::from_millis(ttl));
                match ticket_answer(r) {
                    Ok(a) => self.answer(seq, a),
                    Err(e) => self.failed(seq, &e),
                }
                self.held.remove(i);
            }
            50..=69 => {
                let seq = self.intent(format_args!("abandon {key} {tseq}"));
                match ticket_answer(self.store.abandon(&ticket)) {
                    Ok(a) => self.answer(seq, a),
                    Err(e) => self.failed(seq, &e),
                }
                self.held.remove(i);
            }
            70..=87 => {
                let lease = self.rng.range(100, 3_000);
                let seq = self.intent(format_args!("extend {key} {tseq} {lease}"));
                let r = self.store.extend(&ticket, Duration::from_millis(lease));
                match ticket_answer(r) {
                    Ok(a) => {
                        self.answer(seq, a);
                        if a == "S" {
                            self.held.remove(i);
                        }
                    }
                    Err(e) => self.failed(seq, &e),
                }
            }
            _ => {
                // Dropped without a word, like a handler that hangs.
                self.held.remove(i);
            }
        }
    }

    fn report_stats(&self) {
        let s = self.store.stats();
        self.wire.send(&format!(
            "@stats {} {} {} {}\n",
            s.maintenance_runs, s.compactions, s.segments_deleted, s.entries_swept
        ));
    }
}

// ---------------------------------------------------------------------------------------
// The parent: running a round.

/// What one run of the child left behind.
struct RoundRun {
    lines: Vec<String>,
    /// The wall clock (ms) once the child was dead: no call of it read the clock later.
    ended_ms: u64,
    status: ExitStatus,
    stderr: String,
    killed: bool,
    /// Killed at a delay counted from spawn (maybe while opening), not from the open.
    early: bool,
    delay: Duration,
    partial_line: bool,
}

fn spawn_child(dir: &Path, seed: u64, round: u64, last: bool) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            TEST_NAME,
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(
            CHILD_ENV,
            format!("{seed} {round} {} {}", u8::from(last), dir.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child")
}

fn run_round(dir: &Path, plan: &Plan, seed: u64, last: bool, rng: &mut Rng) -> RoundRun {
    let round = plan.round;
    let mut child = spawn_child(dir, seed, round, last);
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (opened_tx, opened_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let mut input = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return (lines, false),
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        // The kill landed in the middle of a write: not a line.
                        return (lines, true);
                    }
                    line.pop();
                    let s = String::from_utf8(line.clone()).expect("the child wrote non-UTF-8");
                    if s == "@open" {
                        let _ = opened_tx.send(());
                    }
                    lines.push(s);
                }
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // One round in six is killed at a delay counted from spawn, which may land while the
    // child opens the store (recovery, hint loading); the others at a delay counted from the
    // open, spread over three orders of magnitude. Short-only rounds run long enough to fill
    // whole segments with records that all expire.
    let early = !last && !plan.short_only && rng.chance(1, 6);
    let delay = Duration::from_millis(if early {
        rng.range(0, 30)
    } else if plan.short_only {
        rng.range(200, 700)
    } else {
        let cap = [5, 40, 150, 400, 800][rng.range(0, 4) as usize];
        rng.range(1, cap)
    });
    if !last {
        // (An error means the child's stdout closed before it opened the store: it died,
        // and its status below says why.)
        if early || opened_rx.recv().is_ok() {
            // The random moment of the kill.
            thread::sleep(delay);
        }
        // SIGKILL. An error means the child is already gone; its status says why.
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for the child");
    let ended_ms = now_ms() + 1;
    let (lines, partial_line) = reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    RoundRun {
        lines,
        ended_ms,
        killed: status.signal() == Some(libc::SIGKILL),
        status,
        stderr,
        early,
        delay,
        partial_line,
    }
}

// ---------------------------------------------------------------------------------------
// The parent: the record of calls, and the model.

/// When a call ran: its intent and answer positions in the global order of lines, and the
/// wall clock (ms) before it started and after it returned. A call in flight at a kill ends
/// at the kill.
#[derive(Clone, Copy, Debug)]
struct Span {
    a: u64,
    b: u64,
    ta: u64,
    tb: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Claim { key: Key, ttl: u64 },
    Many { ttl: u64, keys: Vec<Key> },
    Remove { key: Key },
    Get { key: Key },
    Begin { key: Key },
    Complete { key: Key, ticket: u64, ttl: u64 },
    Abandon { key: Key, ticket: u64 },
    Extend { key: Key, ticket: u64, lease: u64 },
    Compact,
}

impl Op {
    fn parse(s: &str, round: u64, tid: u64) -> Option<Op> {
        let mut w = s.split(' ');
        let name = w.next()?;
        let mut arg = || w.next();
        let key = |s: Option<&str>| s.and_then(Key::parse);
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
        let ticket = |s: Option<&str>| num(s).map(|seq| ticket_id(round, tid, seq));
        Some(match name {
            "claim" => Op::Claim {
                key: key(arg())?,
                ttl: num(arg())?,
            },
            "many" => {
                let ttl = num(arg())?;
                let keys = arg()?.split(',').map(Key::parse).collect::<Option<_>>()?;
                Op::Many { ttl, keys }
            }
            "remove" => Op::Remove { key: key(arg())? },
            "get" => Op::Get { key: key(arg())? },
            "begin" => Op::Begin { key: key(arg())? },
            "complete" => Op::Complete {
                key: key(arg())?,
                ticket: ticket(arg())?,
                ttl: num(arg())?,
            },
            "abandon" => Op::Abandon {
                key: key(arg())?,
                ticket: ticket(arg())?,
            },
            "extend" => Op::Extend {
                key: key(arg())?,
                ticket: ticket(arg())?,
                lease: num(arg())?,
            },
            "compact" => Op::Compact,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Claim { .. } => "claim",
            Op::Many { .. } => "claim_many",
            Op::Remove { .. } => "remove",
            Op::Get { .. } => "get",
            Op::Begin { .. } => "begin",
            Op::Complete { .. } => "complete",
            Op::Abandon { .. } => "abandon",
            Op::Extend { .. } => "extend",
            Op::Compact => "compact",
        }
    }
}

/// One call, as the record shows it.
#[derive(Clone, Debug)]
struct Call {
    round: u64,
    tid: u64,
    seq: u64,
    span: Span,
    op: Op,
    /// `None`: in flight when the child was killed.
    answer: Option<String>,
}

impl Call {
    fn who(&self) -> String {
        if self.tid == PARENT_TID {
            format!("round {} reopen check", self.round)
        } else {
            format!("round {} thread {} call {}", self.round, self.tid, self.seq)
        }
    }
}

/// A call that changed a key, or may have.
#[derive(Clone, Debug)]
struct Change {
    span: Span,
    what: What,
}

#[derive(Clone, Debug)]
enum What {
    /// `claim` or `claim_many` answered `New`.
    New { ttl: u64 },
    /// `remove` returned (either answer: it leaves the key free with no past attempts).
    Removed,
    Acquired {
        ticket: u64,
        attempt: u32,
        deadline: u64,
    },
    Extended {
        ticket: u64,
        attempt: u32,
        lease: u64,
    },
    Completed {
        attempt: u32,
        ttl: u64,
        outcome: String,
    },
    Abandoned {
        attempt: u32,
        /// The attempt is remembered at least until then (its lease's deadline plus the
        /// attempt memory; an earlier, longer lease of the key may keep it longer).
        remembered_until: u64,
    },
    /// In flight at a kill: it may or may not have written.
    Unknown,
}

/// Why a check was skipped.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Skip {
    /// Another call on the key overlapped: their order is unknown.
    Concurrent,
    /// The key's latest change may have been a call in flight at a kill.
    InFlightAtKill,
    /// A TTL or deadline within the margin of the call's clock reading.
    NearTime,
    /// A lapsed or abandoned attempt that the store may have forgotten by now.
    Forgetting,
}

impl Skip {
    fn label(self) -> &'static str {
        match self {
            Skip::Concurrent => "overlapping calls",
            Skip::InFlightAtKill => "in flight at a kill",
            Skip::NearTime => "near a TTL or deadline",
            Skip::Forgetting => "attempt memory may have run out",
        }
    }
}

/// A claim key's state at a call.
#[derive(Clone, Debug)]
enum ClaimState {
    /// Claimed, expiring within `lo..=hi`.
    Live {
        lo: u64,
        hi: u64,
    },
    Free(&'static str),
}

impl ClaimState {
    fn label(&self) -> &'static str {
        match self {
            ClaimState::Live { .. } => "claimed",
            ClaimState::Free(why) => why,
        }
    }
}

/// A lease key's state at a call.
#[derive(Clone, Debug)]
enum LeaseState {
    /// The lease of `ticket`, until `lo..=hi`.
    InFlight {
        ticket: u64,
        attempt: u32,
        lo: u64,
        hi: u64,
    },
    /// The lease of `ticket` ran out; nobody took over, so the ticket may still act —
    /// unless the store may have forgotten the attempt (`forgetting`), which frees the key
    /// as if it never had one.
    Lapsed {
        ticket: u64,
        attempt: u32,
        forgetting: bool,
    },
    Done {
        attempt: u32,
        outcome: String,
    },
    /// Free, the next attempt being `next` (or 1, if `forgetting`: the store may have
    /// forgotten the earlier attempts by now).
    Free {
        next: u32,
        why: &'static str,
        forgetting: bool,
    },
}

impl LeaseState {
    fn label(&self) -> &'static str {
        match self {
            LeaseState::InFlight { .. } => "in flight",
            LeaseState::Lapsed {
                forgetting: false, ..
            } => "lapsed",
            LeaseState::Lapsed { .. } => "lapsed, maybe forgotten",
            LeaseState::Done { .. } => "done",
            LeaseState::Free {
                forgetting: true, ..
            } => "abandoned, maybe forgotten",
            LeaseState::Free { why, .. } => why,
        }
    }

    fn held_by(&self, t: u64) -> bool {
        match self {
            LeaseState::InFlight { ticket, .. } | LeaseState::Lapsed { ticket, .. } => *ticket == t,
            LeaseState::Done { .. } | LeaseState::Free { .. } => false,
        }
    }

    /// Whether `begin` may answer `Acquired` with `attempt`.
    fn next_attempt_may_be(&self, attempt: u32) -> bool {
        let (next, forgetting) = match self {
            LeaseState::Lapsed {
                attempt: a,
                forgetting,
                ..
            } => (a + 1, *forgetting),
            LeaseState::Free {
                next, forgetting, ..
            } => (*next, *forgetting),
            LeaseState::InFlight { .. } | LeaseState::Done { .. } => return false,
        };
        attempt == next || (forgetting && attempt == 1)
    }
}

/// A remove that may separate two `New` answers of a key.
#[derive(Clone, Copy, Debug)]
struct Separator {
    span: Span,
    /// Acknowledged `true`: certainly removed a claim.
    certain: bool,
}

/// A `New` answer, for the exactly-once check.
#[derive(Clone, Copy, Debug)]
struct NewAnswer {
    span: Span,
    ttl: u64,
}

/// An `Acquired` answer, for the attempt check.
#[derive(Clone, Copy, Debug)]
struct Acquisition {
    span: Span,
    attempt: u32,
}

/// Something after which attempts may count from 1 again: a remove (at once) or a
/// completion (once its outcome expires, no earlier than `from`).
#[derive(Clone, Copy, Debug)]
struct Reset {
    span: Span,
    from: u64,
    /// From this time on it has certainly reset (`None`: it may never have happened).
    certain_after: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Run,
    Reopen,
}

#[derive(Default)]
struct Model {
    /// The next position in the global order.
    pos: u64,
    /// Per key, the calls that changed it or may have, by intent position (pruned to the
    /// last one that settles the key's state, and what came after).
    changes: HashMap<Key, Vec<Change>>,
    news: HashMap<Key, Vec<NewAnswer>>,
    separators: HashMap<Key, Vec<Separator>>,
    acquisitions: HashMap<Key, Vec<Acquisition>>,
    resets: HashMap<Key, Vec<Reset>>,
    /// Attempt numbers and deadlines of the tickets acquired in the current round.
    tickets: HashMap<u64, (u32, u64)>,
    touched: BTreeSet<Key>,
    violations: Vec<String>,
    /// Checks made, by phase and by operation (run) or state (reopen).
    checks: BTreeMap<(Phase, &'static str), u64>,
    skipped: BTreeMap<(Phase, Skip), u64>,
    news_checked: u64,
    same_window_pairs: u64,
    acquisitions_checked: u64,
    same_attempt_pairs: u64,
}

impl Model {
    fn span(&mut self, ta: u64, tb: u64) -> Span {
        let a = self.pos;
        self.pos += 2;
        Span {
            a,
            b: a + 1,
            ta,
            tb,
        }
    }

    fn violation(&mut self, call: &Call, key: Option<Key>, msg: String) {
        let history = key
            .and_then(|k| self.changes.get(&k))
            .map(|h| {
                let from = h.len().saturating_sub(6);
                format!("; latest changes of the key: {:?}", &h[from..])
            })
            .unwrap_or_default();
        let key = key.map(|k| format!(" {k}")).unwrap_or_default();
        self.violations.push(format!(
            "{}: {}{key} ({:?}, answered {:?}): {msg}{history}",
            call.who(),
            call.op.name(),
            call.span,
            call.answer.as_deref().unwrap_or("nothing"),
        ));
    }

    fn count(&mut self, phase: Phase, what: &'static str) {
        *self.checks.entry((phase, what)).or_default() += 1;
    }

    fn skip(&mut self, phase: Phase, why: Skip) {
        *self.skipped.entry((phase, why)).or_default() += 1;
    }

    fn push_change(&mut self, key: Key, span: Span, what: What) {
        self.changes
            .entry(key)
            .or_default()
            .push(Change { span, what });
    }

    /// Records what `call` changed, or may have (first pass over a round).
    fn apply(&mut self, call: &Call) {
        let span = call.span;
        let ans = call.answer.as_deref();
        match &call.op {
            Op::Claim { key, ttl } => {
                self.touched.insert(*key);
                match ans {
                    Some("N") => self.push_change(*key, span, What::New { ttl: *ttl }),
                    Some(_) => {}
                    None => self.push_change(*key, span, What::Unknown),
                }
            }
            Op::Many { ttl, keys } => {
                let answers: Option<Vec<char>> = ans.map(|a| a.chars().collect());
                let mut seen = HashSet::new();
                for (i, key) in keys.iter().enumerate() {
                    self.touched.insert(*key);
                    if !seen.insert(*key) {
                        continue; // a repeat within the batch changes nothing
                    }
                    match answers.as_ref().map(|a| a.get(i)) {
                        Some(Some('N')) => self.push_change(*key, span, What::New { ttl: *ttl }),
                        Some(_) => {}
                        None => self.push_change(*key, span, What::Unknown),
                    }
                }
            }
            Op::Remove { key } => {
                self.touched.insert(*key);
                let what = if ans.is_some() {
                    What::Removed
                } else {
                    What::Unknown
                };
                self.push_change(*key, span, what);
                match key {
                    Key::C(_) if ans != Some("F") => {
                        self.separators.entry(*key).or_default().push(Separator {
                            span,
                            certain: ans == Some("T"),
                        });
                    }
                    Key::C(_) => {}
                    Key::L(_) => self.resets.entry(*key).or_default().push(Reset {
                        span,
                        from: 0,
                        certain_after: ans.map(|_| 0),
                    }),
                }
            }
            Op::Get { key } => {
                self.touched.insert(*key);
            }
            Op::Begin { key } => {
                self.touched.insert(*key);
                match ans {
                    Some(a) if a.starts_with('A') => {
                        let mut w = a.split(' ').skip(1).map(|s| s.parse::<u64>().ok());
                        if let (Some(Some(attempt)), Some(Some(deadline))) = (w.next(), w.next()) {
                            let ticket = ticket_id(call.round, call.tid, call.seq);
                            let attempt = attempt as u32;
                            self.tickets.insert(ticket, (attempt, deadline));
                            self.forgetting_may_reset(*key, span, deadline);
                            self.push_change(
                                *key,
                                span,
                                What::Acquired {
                                    ticket,
                                    attempt,
                                    deadline,
                                },
                            );
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.push_change(*key, span, What::Unknown);
                        self.forgetting_may_reset(*key, span, span.ta);
                    }
                }
            }
            Op::Complete { key, ticket, ttl } => {
                match ans {
                    Some("K") => {
                        let attempt = self.tickets.get(ticket).map_or(0, |t| t.0);
                        let outcome = outcome_of(call.round, call.tid, call.seq);
                        self.push_change(
                            *key,
                            span,
                            What::Completed {
                                attempt,
                                ttl: *ttl,
                                outcome,
                            },
                        );
                    }
                    Some(_) => return,
                    None => self.push_change(*key, span, What::Unknown),
                }
                self.resets.entry(*key).or_default().push(Reset {
                    span,
                    from: span.ta + ttl,
                    certain_after: ans.map(|_| span.tb + ttl),
                });
            }
            Op::Abandon { key, ticket } => match ans {
                Some("K") => {
                    let (attempt, deadline) = self.tickets.get(ticket).copied().unwrap_or((0, 0));
                    let remembered_until = deadline + ATTEMPT_MEMORY_MS;
                    let what = What::Abandoned {
                        attempt,
                        remembered_until,
                    };
                    self.push_change(*key, span, what);
                }
                Some(_) => {}
                None => self.push_change(*key, span, What::Unknown),
            },
            Op::Extend { key, ticket, lease } => match ans {
                Some("K") => {
                    let attempt = self.tickets.get(ticket).map_or(0, |t| t.0);
                    self.forgetting_may_reset(*key, span, span.ta + lease);
                    self.push_change(
                        *key,
                        span,
                        What::Extended {
                            ticket: *ticket,
                            attempt,
                            lease: *lease,
                        },
                    );
                }
                Some(_) => {}
                None => {
                    self.push_change(*key, span, What::Unknown);
                    self.forgetting_may_reset(*key, span, span.ta);
                }
            },
            Op::Compact => {}
        }
    }

    /// Notes that once a lease ending at `deadline` lapses, the store may forget the
    /// attempt after `ATTEMPT_MEMORY_MS`, so that attempts count from 1 again.
    fn forgetting_may_reset(&mut self, key: Key, span: Span, deadline: u64) {
        self.resets.entry(key).or_default().push(Reset {
            span,
            from: deadline + ATTEMPT_MEMORY_MS,
            certain_after: None,
        });
    }

    /// The change that left `key` as the call at `x` found it: `Ok(None)` if nothing ever
    /// changed it, `Err` if the record cannot tell which.
    fn last_change(&self, key: Key, x: Span) -> Result<Option<&Change>, Skip> {
        let Some(h) = self.changes.get(&key) else {
            return Ok(None);
        };
        let mut before: Vec<&Change> = Vec::new();
        let mut latest_certain_start: Option<u64> = None;
        for c in h {
            if c.span.a > x.b {
                break; // started after the call answered
            }
            if c.span.a == x.a {
                continue; // the call itself
            }
            if c.span.b > x.a {
                return Err(Skip::Concurrent);
            }
            if !matches!(c.what, What::Unknown) {
                latest_certain_start = latest_certain_start.max(Some(c.span.a));
            }
            before.push(c);
        }
        // A change is possibly the last one unless a certain change started after it ended.
        let last: Vec<&Change> = before
            .into_iter()
            .filter(|c| latest_certain_start.is_none_or(|s| s <= c.span.b))
            .collect();
        match last.as_slice() {
            [] => Ok(None),
            [c] if !matches!(c.what, What::Unknown) => Ok(Some(c)),
            cs if cs.iter().any(|c| matches!(c.what, What::Unknown)) => Err(Skip::InFlightAtKill),
            _ => Err(Skip::Concurrent),
        }
    }

    fn claim_state(&self, key: Key, x: Span) -> Result<ClaimState, Skip> {
        let Some(c) = self.last_change(key, x)? else {
            return Ok(ClaimState::Free("never claimed"));
        };
        match c.what {
            What::New { ttl } => {
                let (lo, hi) = (c.span.ta + ttl, c.span.tb + ttl);
                if lo > x.tb + MARGIN_MS {
                    Ok(ClaimState::Live { lo, hi })
                } else if hi + MARGIN_MS <= x.ta {
                    Ok(ClaimState::Free("expired"))
                } else {
                    Err(Skip::NearTime)
                }
            }
            What::Removed => Ok(ClaimState::Free("removed")),
            _ => unreachable!("a lease change on claim key {key}: {c:?}"),
        }
    }

    fn lease_state(&self, key: Key, x: Span) -> Result<LeaseState, Skip> {
        let Some(c) = self.last_change(key, x)? else {
            return Ok(LeaseState::Free {
                next: 1,
                why: "never begun",
                forgetting: false,
            });
        };
        let lease = |ticket, attempt, lo: u64, hi: u64| {
            if lo > x.tb + MARGIN_MS {
                Ok(LeaseState::InFlight {
                    ticket,
                    attempt,
                    lo,
                    hi,
                })
            } else if hi + MARGIN_MS <= x.ta {
                Ok(LeaseState::Lapsed {
                    ticket,
                    attempt,
                    forgetting: lo + ATTEMPT_MEMORY_MS <= x.tb + MARGIN_MS,
                })
            } else {
                Err(Skip::NearTime)
            }
        };
        match &c.what {
            What::Acquired {
                ticket,
                attempt,
                deadline,
            } => lease(*ticket, *attempt, *deadline, *deadline),
            What::Extended {
                ticket,
                attempt,
                lease: d,
            } => lease(*ticket, *attempt, c.span.ta + d, c.span.tb + d),
            What::Completed {
                attempt,
                ttl,
                outcome,
                ..
            } => {
                let (lo, hi) = (c.span.ta + ttl, c.span.tb + ttl);
                if lo > x.tb + MARGIN_MS {
                    Ok(LeaseState::Done {
                        attempt: *attempt,
                        outcome: outcome.clone(),
                    })
                } else if hi + MARGIN_MS <= x.ta {
                    Ok(LeaseState::Free {
                        next: 1,
                        why: "outcome expired",
                        forgetting: false,
                    })
                } else {
                    Err(Skip::NearTime)
                }
            }
            What::Abandoned {
                attempt,
                remembered_until,
            } => Ok(LeaseState::Free {
                next: attempt + 1,
                why: "abandoned",
                forgetting: *remembered_until <= x.tb + MARGIN_MS,
            }),
            What::Removed => Ok(LeaseState::Free {
                next: 1,
                why: "removed lease key",
                forgetting: false,
            }),
            What::New { .. } | What::Unknown => unreachable!("{c:?} as a last change"),
        }
    }

    /// Checks a claim-like answer (`New` or not) of `key`; returns the state it expected.
    fn check_claim(
        &mut self,
        phase: Phase,
        call: &Call,
        key: Key,
        new: bool,
    ) -> Option<ClaimState> {
        match self.claim_state(key, call.span) {
            Err(skip) => {
                self.skip(phase, skip);
                None
            }
            Ok(st) => {
                self.count_state(phase, call, st.label());
                let free = matches!(st, ClaimState::Free(_));
                if new != free {
                    let expected = if free { "New" } else { "Duplicate" };
                    self.violation(call, Some(key), format!("expected {expected}: {st:?}"));
                }
                Some(st)
            }
        }
    }

    fn count_state(&mut self, phase: Phase, call: &Call, state: &'static str) {
        match phase {
            Phase::Run => self.count(phase, call.op.name()),
            Phase::Reopen => self.count(phase, state),
        }
    }

    /// Checks one call's answer against the state the earlier calls left (second pass).
    /// Returns the state label it checked against, if it checked.
    fn check(&mut self, phase: Phase, call: &Call) -> Option<&'static str> {
        let ans = call.answer.clone()?;
        let span = call.span;
        match &call.op {
            Op::Claim { key, ttl } => {
                if ans != "N" && ans != "D" {
                    self.violation(call, Some(*key), "unparseable answer".into());
                    return None;
                }
                let st = self.check_claim(phase, call, *key, ans == "N");
                if ans == "N" {
                    self.check_new_twice(call, *key, NewAnswer { span, ttl: *ttl });
                }
                st.map(|s| s.label())
            }
            Op::Many { ttl, keys } => {
                let answers: Vec<char> = ans.chars().collect();
                if answers.len() != keys.len() || answers.iter().any(|c| !"ND".contains(*c)) {
                    self.violation(call, None, "unparseable answer".into());
                    return None;
                }
                let mut seen = HashSet::new();
                for (key, a) in keys.iter().zip(answers) {
                    if !seen.insert(*key) {
                        self.count(phase, "claim_many repeat");
                        if a != 'D' {
                            self.violation(
                                call,
                                Some(*key),
                                "a repeat in one batch was New".into(),
                            );
                        }
                        continue;
                    }
                    self.check_claim(phase, call, *key, a == 'N');
                    if a == 'N' {
                        self.check_new_twice(call, *key, NewAnswer { span, ttl: *ttl });
                    }
                }
                None
            }
            Op::Remove { key } => {
                if ans != "T" && ans != "F" {
                    self.violation(call, Some(*key), "unparseable answer".into());
                    return None;
                }
                let held = match key {
                    Key::C(_) => self.claim_state(*key, span).map(|s| {
                        let held = matches!(s, ClaimState::Live { .. });
                        (held, s.label(), format!("{s:?}"))
                    }),
                    Key::L(_) => self.lease_state(*key, span).map(|s| {
                        let held =
                            matches!(s, LeaseState::InFlight { .. } | LeaseState::Done { .. });
                        (held, s.label(), format!("{s:?}"))
                    }),
                };
                match held {
                    Err(skip) => {
                        self.skip(phase, skip);
                        None
                    }
                    Ok((held, label, st)) => {
                        self.count_state(phase, call, label);
                        if held != (ans == "T") {
                            self.violation(call, Some(*key), format!("expected {held}: {st}"));
                        }
                        Some(label)
                    }
                }
            }
            Op::Get {
                key: key @ Key::C(_),
            } => match self.claim_state(*key, span) {
                Err(skip) => {
                    self.skip(phase, skip);
                    None
                }
                Ok(st) => {
                    self.count_state(phase, call, st.label());
                    let ok = match &st {
                        ClaimState::Live { lo, hi } => seen_matches(&ans, *lo, *hi, 'c', 1),
                        ClaimState::Free(_) => ans == "-",
                    };
                    if !ok {
                        self.violation(call, Some(*key), format!("expected {st:?}"));
                    }
                    Some(st.label())
                }
            },
            Op::Get {
                key: key @ Key::L(_),
            } => match self.lease_state(*key, span) {
                Err(skip) => {
                    self.skip(phase, skip);
                    None
                }
                Ok(st) => {
                    // Counted with the `begin` that follows it.
                    let ok = match &st {
                        LeaseState::InFlight {
                            lo, hi, attempt, ..
                        } => seen_matches(&ans, *lo, *hi, 'i', *attempt),
                        LeaseState::Done { attempt, .. } => {
                            seen_matches(&ans, 0, u64::MAX, 'd', *attempt)
                        }
                        LeaseState::Lapsed { .. } | LeaseState::Free { .. } => ans == "-",
                    };
                    if !ok {
                        self.violation(call, Some(*key), format!("get: expected {st:?}"));
                    }
                    Some(st.label())
                }
            },
            Op::Begin { key } => {
                if let Some(rest) = ans.strip_prefix("A ") {
                    let attempt = rest.split(' ').next().and_then(|s| s.parse::<u32>().ok());
                    match attempt {
                        Some(attempt) => {
                            self.check_attempt_twice(call, *key, Acquisition { span, attempt })
                        }
                        None => self.violation(call, Some(*key), "unparseable answer".into()),
                    }
                }
                if ans == "M" {
                    self.violation(
                        call,
                        Some(*key),
                        "Mismatch, yet every begin of a key passes the same fingerprint or none"
                            .into(),
                    );
                }
                match self.lease_state(*key, span) {
                    Err(skip) => {
                        self.skip(phase, skip);
                        None
                    }
                    Ok(st) => {
                        self.count_state(phase, call, st.label());
                        let ok = match &st {
                            LeaseState::InFlight { lo, hi, .. } => ans
                                .strip_prefix("I ")
                                .and_then(|u| u.parse::<u64>().ok())
                                .is_some_and(|u| (*lo..=*hi).contains(&u)),
                            LeaseState::Lapsed { .. } | LeaseState::Free { .. } => ans
                                .strip_prefix("A ")
                                .and_then(|r| r.split(' ').next())
                                .and_then(|a| a.parse::<u32>().ok())
                                .is_some_and(|a| st.next_attempt_may_be(a)),
                            LeaseState::Done { attempt, outcome } => {
                                ans == format!("D {attempt} {outcome}")
                            }
                        };
                        if !ok {
                            self.violation(call, Some(*key), format!("expected {st:?}"));
                        }
                        Some(st.label())
                    }
                }
            }
            Op::Complete { key, ticket, .. }
            | Op::Abandon { key, ticket }
            | Op::Extend { key, ticket, .. } => {
                if ans != "K" && ans != "S" {
                    self.violation(call, Some(*key), "unparseable answer".into());
                    return None;
                }
                match self.lease_state(*key, span) {
                    Err(skip) => {
                        self.skip(phase, skip);
                        None
                    }
                    Ok(LeaseState::Lapsed {
                        ticket: t,
                        forgetting: true,
                        ..
                    }) if t == *ticket => {
                        // Succeeds if the attempt is still remembered, is stale if not.
                        self.skip(phase, Skip::Forgetting);
                        None
                    }
                    Ok(st) => {
                        self.count_state(phase, call, st.label());
                        let holds = st.held_by(*ticket);
                        if holds != (ans == "K") {
                            let expected = if holds { "success" } else { "StaleTicket" };
                            self.violation(
                                call,
                                Some(*key),
                                format!("expected {expected} for ticket {ticket:#x}: {st:?}"),
                            );
                        }
                        Some(st.label())
                    }
                }
            }
            Op::Compact => None,
        }
    }

    /// Exactly once: two `New` answers of a key certainly within the first one's TTL need
    /// a remove that may lie between them.
    fn check_new_twice(&mut self, call: &Call, key: Key, x: NewAnswer) {
        self.news_checked += 1;
        let seps = self.separators.get(&key).map_or(&[][..], |v| &v[..]);
        let mut bad = None;
        let mut pairs = 0;
        for n in self.news.get(&key).map_or(&[][..], |v| &v[..]) {
            let (first, second) = if n.span.b < x.span.a {
                (n, &x)
            } else if x.span.b < n.span.a {
                (&x, n)
            } else {
                (n, &x) // overlapping: both orders must be in one window
            };
            let overlap = first.span.b >= second.span.a;
            let in_window =
                |f: &NewAnswer, s: &NewAnswer| s.span.tb + MARGIN_MS < f.span.ta + f.ttl;
            let same_window = in_window(first, second) && (!overlap || in_window(second, first));
            if !same_window {
                continue;
            }
            pairs += 1;
            let lo = first.span.a.min(second.span.a);
            let hi = first.span.b.max(second.span.b);
            if !seps.iter().any(|s| s.span.b > lo && s.span.a < hi) {
                bad = Some(*n);
            }
        }
        self.same_window_pairs += pairs;
        self.news.entry(key).or_default().push(x);
        if let Some(n) = bad {
            self.violation(
                call,
                Some(key),
                format!("New twice within one TTL window, no remove between: earlier New {n:?}"),
            );
        }
    }

    /// Two `Acquired` answers of a key with one attempt number need a reset that may lie
    /// between them.
    fn check_attempt_twice(&mut self, call: &Call, key: Key, x: Acquisition) {
        self.acquisitions_checked += 1;
        let resets = self.resets.get(&key).map_or(&[][..], |v| &v[..]);
        let mut bad = None;
        let mut pairs = 0;
        for q in self.acquisitions.get(&key).map_or(&[][..], |v| &v[..]) {
            if q.attempt != x.attempt {
                continue;
            }
            pairs += 1;
            let lo = q.span.a.min(x.span.a);
            let hi = q.span.b.max(x.span.b);
            let tb = q.span.tb.max(x.span.tb);
            if !resets
                .iter()
                .any(|r| r.span.b > lo && r.span.a < hi && r.from <= tb + MARGIN_MS)
            {
                bad = Some(*q);
            }
        }
        self.same_attempt_pairs += pairs;
        self.acquisitions.entry(key).or_default().push(x);
        if let Some(q) = bad {
            self.violation(
                call,
                Some(key),
                format!(
                    "attempt {} acquired twice, no reset between: earlier {q:?}",
                    x.attempt
                ),
            );
        }
    }

    /// Drops what no later check can need. `now`: every later call starts after it.
    fn prune(&mut self, now: u64) {
        self.tickets.clear();
        for h in self.changes.values_mut() {
            // The last certain change that came after every earlier one settles the state;
            // what came before it no longer matters.
            let mut anchor = 0;
            let mut max_b = 0;
            for (i, c) in h.iter().enumerate() {
                if i > 0 && max_b < c.span.a && !matches!(c.what, What::Unknown) {
                    anchor = i;
                }
                max_b = max_b.max(c.span.b);
            }
            h.drain(..anchor);
        }
        for (key, news) in self.news.iter_mut() {
            let seps = self.separators.entry(*key).or_default();
            let cut = seps.iter().filter(|s| s.certain).map(|s| s.span.a).max();
            // A New is done with once a certain remove followed it, or once its TTL ended.
            news.retain(|n| {
                cut.is_none_or(|c| n.span.b >= c) && n.span.ta + n.ttl > now + MARGIN_MS
            });
            let oldest = news.iter().map(|n| n.span.a).min();
            seps.retain(|s| oldest.is_some_and(|o| s.span.b > o));
        }
        self.news.retain(|_, v| !v.is_empty());
        self.separators.retain(|_, v| !v.is_empty());
        for (key, acqs) in self.acquisitions.iter_mut() {
            let resets = self.resets.entry(*key).or_default();
            let cut = resets
                .iter()
                .filter(|r| r.certain_after.is_some_and(|t| t + MARGIN_MS <= now))
                .map(|r| r.span.a)
                .max();
            acqs.retain(|q| cut.is_none_or(|c| q.span.b >= c));
            let oldest = acqs.iter().map(|q| q.span.a).min();
            resets.retain(|r| oldest.is_some_and(|o| r.span.b > o));
        }
        self.acquisitions.retain(|_, v| !v.is_empty());
        self.resets.retain(|_, v| !v.is_empty());
    }

    /// Reads a round's lines into calls: positions, times, answers. Calls without an answer
    /// end at `ended_ms`, when the child was dead.
    fn read_round(&mut self, round: u64, run: &RoundRun, stats: &mut ChildStats) -> Vec<Call> {
        let mut calls: Vec<Call> = Vec::new();
        let mut open: HashMap<(u64, u64), usize> = HashMap::new();
        for line in &run.lines {
            let (kind, rest) = match line.as_bytes().first() {
                Some(b'>') | Some(b'<') => (line.as_bytes()[0], &line[1..]),
                Some(b'@') => {
                    stats.note(line);
                    continue;
                }
                _ => continue, // the test harness's own output, or a `!` error line
            };
            let pos = self.pos;
            self.pos += 1;
            let mut w = rest.splitn(4, ' ');
            let mut num = || w.next().and_then(|s| s.parse::<u64>().ok());
            let (Some(tid), Some(seq), Some(t)) = (num(), num(), num()) else {
                panic!("round {round}: malformed line {line:?}");
            };
            let body = w.next().unwrap_or("");
            if kind == b'>' {
                let op = Op::parse(body, round, tid)
                    .unwrap_or_else(|| panic!("round {round}: malformed call {line:?}"));
                open.insert((tid, seq), calls.len());
                calls.push(Call {
                    round,
                    tid,
                    seq,
                    span: Span {
                        a: pos,
                        b: u64::MAX,
                        ta: t,
                        tb: u64::MAX,
                    },
                    op,
                    answer: None,
                });
            } else {
                let i = open
                    .remove(&(tid, seq))
                    .unwrap_or_else(|| panic!("round {round}: answer to no call: {line:?}"));
                calls[i].span.b = pos;
                calls[i].span.tb = t;
                calls[i].answer = Some(body.to_string());
            }
        }
        let killed_at = self.pos;
        self.pos += 1;
        for &i in open.values() {
            calls[i].span.b = killed_at;
            calls[i].span.tb = run.ended_ms;
        }
        calls
    }
}

/// What the child said about its maintenance (its last `@stats` line per round).
#[derive(Default)]
struct ChildStats {
    last: Option<[u64; 4]>,
    maintenance_runs: u64,
    compactions: u64,
    segments_deleted: u64,
    entries_swept: u64,
}

impl ChildStats {
    fn note(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("@stats ") {
            let v: Vec<u64> = rest.split(' ').filter_map(|s| s.parse().ok()).collect();
            if let Ok(v) = <[u64; 4]>::try_from(v) {
                self.last = Some(v);
            }
        }
    }

    /// Adds the round's last sample (counters count since the child opened the store).
    fn end_round(&mut self) {
        if let Some([runs, compactions, deleted, swept]) = self.last.take() {
            self.maintenance_runs += runs;
            self.compactions += compactions;
            self.segments_deleted += deleted;
            self.entries_swept += swept;
        }
    }
}

#[derive(Default)]
struct Totals {
    killed: u64,
    killed_early: u64,
    never_opened: u64,
    answers: u64,
    answered_keys: u64,
    in_flight: u64,
    by_op: BTreeMap<&'static str, u64>,
    new_answers: u64,
    partial_lines: u64,
    truncated_bytes: u64,
    torn_rounds: u64,
    segments: u64,
    disk_bytes: u64,
    live_bytes: u64,
    hinted: u64,
}

/// Reopens the directory after a round and checks every key that was ever used.
fn reopen_and_check(
    dir: &Path,
    round: u64,
    leases: Option<&HashSet<Key>>,
    model: &mut Model,
    rng: &mut Rng,
    t: &mut Totals,
) {
    let store = reopen(dir, round);
    let stats = store.stats();
    t.truncated_bytes += stats.recovery_truncated_bytes;
    t.torn_rounds += u64::from(stats.recovery_truncated_bytes > 0);
    t.segments = stats.segments;
    t.disk_bytes = stats.disk_bytes;
    t.live_bytes = stats.live_bytes;
    t.hinted += stats.recovery_hinted_segments;
    check_keys(&store, round, leases, model, rng);
    store
        .close()
        .unwrap_or_else(|e| panic!("round {round}: close after the checks: {e}"));
}

/// Opens the directory for the parent's checks: no background maintenance, so that the
/// store changes only through the checks' own calls.
fn reopen(dir: &Path, round: u64) -> Store {
    Options::new()
        .durability(Durability::Buffered)
        .segment_size(MIN_SEGMENT_SIZE)
        .background_maintenance(false)
        .attempt_memory(Duration::from_millis(ATTEMPT_MEMORY_MS))
        .open(dir)
        .unwrap_or_else(|e| panic!("round {round}: reopening the directory failed: {e}"))
}

/// Checks what the store says of the keys ever used: `get` and `claim` for every claim key;
/// `get` and `begin` for the lease keys in `leases` and one in sixteen of the others, or
/// for all with `None` (and lets go of a lease `begin` acquires). Lease keys left alone
/// for a while let the store forget their attempts.
fn check_keys(
    store: &Store,
    round: u64,
    leases: Option<&HashSet<Key>>,
    model: &mut Model,
    rng: &mut Rng,
) {
    let keys: Vec<Key> = model.touched.iter().copied().collect();
    for key in keys {
        let bytes = key.bytes();
        if let (Key::L(_), Some(set)) = (key, leases) {
            if !set.contains(&key) && !rng.chance(1, 16) {
                continue;
            }
        }
        match key {
            Key::C(_) => {
                let t0 = now_ms();
                let seen = store
                    .get(&bytes)
                    .unwrap_or_else(|e| panic!("round {round}: get {key}: {e}"));
                let span = model.span(t0, now_ms() + 1);
                let call = parent_call(round, span, Op::Get { key }, get_answer(&seen));
                if model.check(Phase::Reopen, &call) == Some("claimed") {
                    // Acknowledged and not expired: a claim must say Duplicate.
                    let t0 = now_ms();
                    let c = store
                        .claim(&bytes, Duration::from_millis(LONG_MS))
                        .unwrap_or_else(|e| panic!("round {round}: claim {key}: {e}"));
                    let span = model.span(t0, now_ms() + 1);
                    let op = Op::Claim { key, ttl: LONG_MS };
                    let call = parent_call(round, span, op, claim_answer(&c).into());
                    model.apply(&call);
                    model.check(Phase::Reopen, &call);
                }
            }
            Key::L(_) => {
                let t0 = now_ms();
                let seen = store
                    .get(&bytes)
                    .unwrap_or_else(|e| panic!("round {round}: get {key}: {e}"));
                let span = model.span(t0, now_ms() + 1);
                let call = parent_call(round, span, Op::Get { key }, get_answer(&seen));
                model.check(Phase::Reopen, &call);
                let t0 = now_ms();
                let b = store
                    .begin(&bytes, Duration::from_secs(1))
                    .unwrap_or_else(|e| panic!("round {round}: begin {key}: {e}"));
                let span = model.span(t0, now_ms() + 1);
                let call = parent_call(round, span, Op::Begin { key }, begin_answer(&b));
                model.apply(&call);
                model.check(Phase::Reopen, &call);
                let Begin::Acquired(ticket) = b else { continue };
                // Let it go again, by abandoning it or completing it with a short TTL, so
                // the key moves on to a next attempt or a fresh one.
                let tid = ticket_id(round, PARENT_TID, call.seq);
                let t0 = now_ms();
                let (op, r) = if rng.chance(1, 2) {
                    (Op::Abandon { key, ticket: tid }, store.abandon(&ticket))
                } else {
                    let ttl = rng.range(300, 2_500);
                    let outcome = outcome_of(round, PARENT_TID, model.pos);
                    let r = store.complete(&ticket, outcome.as_bytes(), Duration::from_millis(ttl));
                    (
                        Op::Complete {
                            key,
                            ticket: tid,
                            ttl,
                        },
                        r,
                    )
                };
                let ans = ticket_answer(r)
                    .unwrap_or_else(|e| panic!("round {round}: releasing {key}: {e}"));
                let span = model.span(t0, now_ms() + 1);
                let call = parent_call(round, span, op, ans.into());
                model.apply(&call);
                model.check(Phase::Reopen, &call);
            }
        }
    }
}

/// Fails the test if the model found violations.
fn fail_on_violations(model: &Model, round: u64, reproduce: &str) {
    if model.violations.is_empty() {
        return;
    }
    let n = model.violations.len();
    let first: Vec<String> = model
        .violations
        .iter()
        .take(10)
        .map(|s| format!("  - {s}"))
        .collect();
    panic!(
        "round {round}: {n} violation(s); first ones:\n{}\nreproduce (kill moments vary): {reproduce}",
        first.join("\n")
    );
}

/// A call the parent makes; its sequence number is its position, so that tickets and
/// outcomes it names are unique.
fn parent_call(round: u64, span: Span, op: Op, answer: String) -> Call {
    Call {
        round,
        tid: PARENT_TID,
        seq: span.a,
        span,
        op,
        answer: Some(answer),
    }
}

/// The child's exit, the errors it reported, and the end of its stderr.
fn describe(run: &RoundRun) -> String {
    let errors: Vec<&String> = run.lines.iter().filter(|l| l.starts_with('!')).collect();
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("{:?}, errors {errors:?}, stderr:\n{tail}", run.status)
}

fn parent_main() {
    let rounds = env_u64("ONCELOG_TORTURE_ROUNDS", DEFAULT_ROUNDS);
    let seed = env_u64("ONCELOG_TORTURE_SEED", DEFAULT_SEED);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let mut model = Model::default();
    let mut t = Totals::default();
    let mut child_stats = ChildStats::default();
    let reproduce = format!(
        "ONCELOG_TORTURE_SEED={seed:#x} ONCELOG_TORTURE_ROUNDS={rounds} \
         cargo test --test torture -- --nocapture"
    );

    for round in 0..=rounds {
        let last = round == rounds;
        let plan = Plan::new(seed, round);
        let mut rng = Rng::new(seed ^ 0x6b69_6c6c ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let run = run_round(dir.path(), &plan, seed, last, &mut rng);
        if last {
            assert!(
                run.status.success() && run.lines.iter().any(|l| l == "@closed"),
                "clean round {round} failed: {}",
                describe(&run)
            );
        } else if !run.killed {
            panic!(
                "round {round}: the child ended on its own: {}",
                describe(&run)
            );
        }
        t.killed += u64::from(run.killed);
        t.killed_early += u64::from(run.killed && run.early);
        t.never_opened += u64::from(!run.lines.iter().any(|l| l == "@open"));
        t.partial_lines += u64::from(run.partial_line);

        let calls = model.read_round(round, &run, &mut child_stats);
        child_stats.end_round();
        let (mut acked, mut in_flight) = (0u64, 0u64);
        for c in &calls {
            if c.answer.is_some() {
                acked += 1;
                *t.by_op.entry(c.op.name()).or_default() += 1;
                if let Op::Many { keys, .. } = &c.op {
                    t.answered_keys += keys.len() as u64;
                } else {
                    t.answered_keys += 1;
                }
                let a = c.answer.as_deref().unwrap_or("");
                t.new_answers += match c.op {
                    Op::Claim { .. } => u64::from(a == "N"),
                    Op::Many { .. } => a.chars().filter(|&c| c == 'N').count() as u64,
                    _ => 0,
                };
            } else {
                in_flight += 1;
            }
        }
        assert!(
            !last || in_flight == 0,
            "the clean round left {in_flight} calls unanswered"
        );
        t.answers += acked;
        t.in_flight += in_flight;
        for c in &calls {
            model.apply(c);
        }
        for c in &calls {
            model.check(Phase::Run, c);
        }
        let before = model.checks.clone();
        let leases: HashSet<Key> = calls
            .iter()
            .filter_map(|c| match c.op {
                Op::Begin { key }
                | Op::Complete { key, .. }
                | Op::Abandon { key, .. }
                | Op::Extend { key, .. }
                | Op::Remove {
                    key: key @ Key::L(_),
                } => Some(key),
                _ => None,
            })
            .collect();
        reopen_and_check(
            dir.path(),
            round,
            Some(&leases),
            &mut model,
            &mut rng,
            &mut t,
        );
        let reopen_checks: u64 = model
            .checks
            .iter()
            .filter(|(k, _)| k.0 == Phase::Reopen)
            .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
            .sum();
        eprintln!(
            "torture round {round}: {}{} threads={} maint={}ms {}: {acked} answered, {in_flight} in flight; \
             reopened with {} segment(s) ({} KiB live), checked {reopen_checks} keys",
            plan.mode(),
            if plan.short_only { " short-only" } else { "" },
            plan.threads,
            plan.maintenance_ms,
            if last {
                "clean".to_string()
            } else if run.early {
                format!("killed {:?} after spawn", run.delay)
            } else {
                format!("killed {:?} after open", run.delay)
            },
            t.segments,
            t.live_bytes >> 10,
        );
        fail_on_violations(&model, round, &reproduce);
        model.prune(now_ms());
    }

    // Last, maintenance on the final state (by now many short TTLs have run out), then the
    // checks again, and again after one more restart.
    let mut rng = Rng::new(seed ^ 0x636f_6d70);
    let store = reopen(dir.path(), rounds + 1);
    let compaction = store
        .compact()
        .unwrap_or_else(|e| panic!("final compaction: {e}"));
    check_keys(&store, rounds + 1, None, &mut model, &mut rng);
    store.close().expect("close after the final compaction");
    fail_on_violations(&model, rounds + 1, &reproduce);
    model.prune(now_ms());
    reopen_and_check(dir.path(), rounds + 2, None, &mut model, &mut rng, &mut t);
    fail_on_violations(&model, rounds + 2, &reproduce);

    let fmt_map = |phase: Phase| {
        model
            .checks
            .iter()
            .filter(|(k, _)| k.0 == phase)
            .map(|(k, v)| format!("{} {v}", k.1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let skipped = |phase: Phase| {
        let parts: Vec<String> = model
            .skipped
            .iter()
            .filter(|(k, _)| k.0 == phase)
            .map(|(k, v)| format!("{} {v}", k.1.label()))
            .collect();
        let total: u64 = model
            .skipped
            .iter()
            .filter(|(k, _)| k.0 == phase)
            .map(|(_, v)| v)
            .sum();
        format!("{total} ({})", parts.join(", "))
    };
    let total = |phase: Phase| -> u64 {
        model
            .checks
            .iter()
            .filter(|(k, _)| k.0 == phase)
            .map(|(_, v)| v)
            .sum()
    };
    let summary = format!(
        "kill torture, seed {seed:#x}: {} killed rounds ({} killed early, {} before the \
         store was open, {} mid-line) + 1 clean, {:.1?}\n\
         \x20 answers acknowledged: {} calls ({} keys answered; {} New), {} in flight at a kill; by call: {}\n\
         \x20 during the run, answers checked: {} ({}); skipped as ambiguous: {}\n\
         \x20 after each reopen, keys checked: {} ({}); skipped as ambiguous: {}\n\
         \x20 New twice: {} New answers checked, {} pairs within one TTL window (each with a remove between)\n\
         \x20 attempts: {} Acquired answers checked, {} same-attempt pairs (each with a reset between)\n\
         \x20 store: {} torn tails cut ({} bytes), {} segments at the end ({:.1} MiB, {:.1} MiB of it live), {} hinted segment loads; \
         child maintenance: {} runs, {} compactions, {} segments deleted, {} entries swept (last samples); \
         final compaction: {} segments deleted, {} rewritten\n\
         \x20 violations: {}",
        t.killed,
        t.killed_early,
        t.never_opened,
        t.partial_lines,
        started.elapsed(),
        t.answers,
        t.answered_keys,
        t.new_answers,
        t.in_flight,
        t.by_op
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        total(Phase::Run),
        fmt_map(Phase::Run),
        skipped(Phase::Run),
        total(Phase::Reopen),
        fmt_map(Phase::Reopen),
        skipped(Phase::Reopen),
        model.news_checked,
        model.same_window_pairs,
        model.acquisitions_checked,
        model.same_attempt_pairs,
        t.torn_rounds,
        t.truncated_bytes,
        t.segments,
        t.disk_bytes as f64 / (1 << 20) as f64,
        t.live_bytes as f64 / (1 << 20) as f64,
        t.hinted,
        child_stats.maintenance_runs,
        child_stats.compactions,
        child_stats.segments_deleted,
        child_stats.entries_swept,
        compaction.segments_deleted,
        compaction.segments_written,
        model.violations.len(),
    );
    // Written past the test harness's capture, so that `cargo test` shows it too.
    let _ = writeln!(std::io::stderr(), "{summary}");

    assert_eq!(t.killed, rounds, "every round but the clean one is killed");
    // The workload must have done what the checks are about (given rounds enough for
    // short TTLs to run out across restarts).
    if rounds >= 10 {
        for what in [
            "claimed",
            "removed",
            "expired",
            "done",
            "in flight",
            "abandoned",
        ] {
            let n = model.checks.get(&(Phase::Reopen, what)).copied();
            assert!(
                n.unwrap_or(0) > 0,
                "no key was checked as {what} after a reopen"
            );
        }
    }
    assert!(model.news_checked > 0 && model.acquisitions_checked > 0);
}
