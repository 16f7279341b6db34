//! An operation-sequence interpreter for fuzzing: bytes in, a sequence of store operations
//! out, run against the store under test and, side by side, a reference store that is
//! never closed, compacted or crashed. Both share one manual clock.
//!
//! The store under test also reopens (close, open) and loses power (a `PowerSim` cut
//! taken between two operations, then an open of the directory the cut left; that
//! directory is adopted as durable and the run goes on there). It runs under
//! `Durability::Sync`, so every acknowledged operation must survive a cut: after every
//! step, each answer of the store under test must equal the reference's, and after every
//! reopen and cut, every key of the pool must read the same in both.
//!
//! What a violation looks like: a panic whose message names the step and both answers.
//! Used by the `ops_model` fuzz target (`fuzz/`) and by `tests/fuzz_regressions.rs`, which
//! replays the kept inputs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncelog::{
    Begin, Durability, IoHook, IoOp, ManualClock, Options, Store, Ticket, MIN_SEGMENT_SIZE,
};

use super::powercut::{PowerSim, Rng};

/// Steps at most per input: longer inputs are cut, so one execution stays short.
pub const MAX_STEPS: usize = 256;

/// The keys an input chooses from: short and long, text and binary, one at `MAX_KEY_LEN`.
fn pool_key(i: u8) -> Vec<u8> {
    match i % 8 {
        0 => b"evt_0".to_vec(),
        1 => b"evt_1".to_vec(),
        2 => vec![0xff, 0x00, 0xfe],
        3 => vec![b'k'; 200],
        4 => vec![0x80; oncelog::MAX_KEY_LEN],
        5 => b"evt_5".to_vec(),
        6 => vec![7],
        _ => "\u{e9}v\u{e9}nement".as_bytes().to_vec(),
    }
}

/// A short name for a pool key, for the step history.
fn name(i: u8) -> String {
    format!("k{}", i % 8)
}

/// Durations an input chooses from, for TTLs, leases and clock moves.
fn pick_ms(b: u8) -> u64 {
    const MS: [u64; 8] = [1, 7, 100, 999, 1_000, 4_000, 60_000, 3_600_000];
    MS[usize::from(b % 8)]
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub steps: u64,
    pub reopens: u64,
    pub cuts: u64,
    /// Cuts that struck while `open` was recovering from the previous one.
    pub cuts_in_recovery: u64,
    pub compactions: u64,
    pub checks: u64,
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn more(&self) -> bool {
        self.at < self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
}

/// The store under test, and what it needs to go on after a cut.
struct UnderTest {
    store: Option<Store>,
    sim: Arc<PowerSim>,
    dir: PathBuf,
    generation: u32,
}

fn options(clock: &ManualClock) -> Options {
    Options::new()
        .clock(clock.clone())
        .durability(Durability::Sync)
        .segment_size(MIN_SEGMENT_SIZE)
        .stripes(2)
        .background_maintenance(false)
        .attempt_memory(Duration::from_secs(5))
}

fn open(clock: &ManualClock, dir: &Path, sim: &Arc<PowerSim>) -> Store {
    match options(clock).io_hook(sim.clone()).open(dir) {
        Ok(s) => s,
        Err(e) => panic!("open {} failed: {e:?}", dir.display()),
    }
}

/// A base directory for the run: in memory if the machine has `/dev/shm` (every step
/// fsyncs), else the usual temporary directory.
fn base_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// A power cut during `open`: lets `left` file operations through to the simulator, then
/// takes a cut into `out` before the next one and fails it and every later one (the
/// process is gone; what it does after is not in `out`).
struct CutDuring {
    sim: Arc<PowerSim>,
    left: AtomicU32,
    out: PathBuf,
    seed: u64,
    cut: Mutex<Option<String>>,
}

impl CutDuring {
    fn dead(&self) -> bool {
        self.left.load(Ordering::SeqCst) == 0
    }
}

impl IoHook for CutDuring {
    fn before(&self, op: &IoOp<'_>) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("power cut"));
        }
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let cut = self.sim.cut(&self.out, &mut Rng(self.seed ^ 0xdead));
            *self.cut.lock().unwrap() = Some(format!("before {op:?}: {cut:?}"));
            return Err(io::Error::other("power cut"));
        }
        self.sim.before(op)
    }

    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &io::Error>) {
        // Operations failed above never reached the simulator.
        if !self.dead() {
            self.sim.after(op, outcome);
        }
    }
}

/// A `Begin` with the ticket's per-store token left out, for comparing.
fn begin_view(b: &Begin) -> String {
    match b {
        Begin::Acquired(t) => format!(
            "Acquired(attempt {}, first_seen {:?}, deadline {:?})",
            t.attempt(),
            t.first_seen(),
            t.deadline()
        ),
        other => format!("{other:?}"),
    }
}

/// Runs the sequence `data` encodes; panics on the first difference.
pub fn run(data: &[u8]) -> Report {
    let mut input = Input { data, at: 0 };
    let mut report = Report::default();
    let base = base_dir();
    let clock = ManualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let reference = options(&clock)
        .open(base.path().join("reference"))
        .expect("open reference");
    let dir = base.path().join("gen-0");
    let sim = PowerSim::new(&dir);
    let mut ut = UnderTest {
        store: Some(open(&clock, &dir, &sim)),
        sim,
        dir,
        generation: 0,
    };
    // Tickets: (store under test's, reference's), in the order acquired.
    let mut tickets: Vec<(Ticket, Ticket)> = Vec::new();
    let mut history: Vec<String> = Vec::new();
    while input.more() && history.len() < MAX_STEPS {
        let op = input.byte();
        let store = ut.store.as_ref().expect("store");
        let step = history.len();
        let (what, got, want) = match op % 16 {
            0..=2 => {
                let k = input.byte();
                let key = pool_key(k);
                let ttl = Duration::from_millis(pick_ms(input.byte()));
                (
                    format!("claim {} {ttl:?}", name(k)),
                    format!("{:?}", store.claim(&key, ttl)),
                    format!("{:?}", reference.claim(&key, ttl)),
                )
            }
            3 => {
                let n = usize::from(input.byte() % 5);
                let ks: Vec<u8> = (0..n).map(|_| input.byte()).collect();
                let keys: Vec<Vec<u8>> = ks.iter().map(|&k| pool_key(k)).collect();
                let names: Vec<String> = ks.iter().map(|&k| name(k)).collect();
                let ttl = Duration::from_millis(pick_ms(input.byte()));
                (
                    format!("claim_many {names:?} {ttl:?}"),
                    format!("{:?}", store.claim_many(&keys, ttl)),
                    format!("{:?}", reference.claim_many(&keys, ttl)),
                )
            }
            4 => {
                let k = input.byte();
                let key = pool_key(k);
                (
                    format!("remove {}", name(k)),
                    format!("{:?}", store.remove(&key)),
                    format!("{:?}", reference.remove(&key)),
                )
            }
            5 => {
                let k = input.byte();
                let key = pool_key(k);
                (
                    format!("get {}", name(k)),
                    format!("{:?}", store.get(&key)),
                    format!("{:?}", reference.get(&key)),
                )
            }
            6 | 7 => {
                let k = input.byte();
                let key = pool_key(k);
                let lease = Duration::from_millis(pick_ms(input.byte()));
                let fp = input.byte();
                let (a, b) = if fp.is_multiple_of(3) {
                    (store.begin(&key, lease), reference.begin(&key, lease))
                } else {
                    let f = [fp % 3];
                    (
                        store.begin_with_fingerprint(&key, lease, &f),
                        reference.begin_with_fingerprint(&key, lease, &f),
                    )
                };
                let view = (
                    a.as_ref().map(begin_view).map_err(|e| format!("{e:?}")),
                    b.as_ref().map(begin_view).map_err(|e| format!("{e:?}")),
                );
                if let (Ok(Begin::Acquired(x)), Ok(Begin::Acquired(y))) = (a, b) {
                    tickets.push((x, y));
                }
                (
                    format!("begin {} {lease:?} fingerprint {}", name(k), fp % 3),
                    format!("{:?}", view.0),
                    format!("{:?}", view.1),
                )
            }
            8 | 9 => {
                let pick = input.byte();
                let len = usize::from(input.byte() % 4) * 7;
                let ttl = Duration::from_millis(pick_ms(input.byte()));
                let outcome = vec![pick; len];
                match ticket(&tickets, pick) {
                    Some((x, y)) => (
                        format!("complete ticket {pick} outcome {len} bytes {ttl:?}"),
                        format!("{:?}", store.complete(x, &outcome, ttl)),
                        format!("{:?}", reference.complete(y, &outcome, ttl)),
                    ),
                    None => continue,
                }
            }
            10 => {
                let pick = input.byte();
                match ticket(&tickets, pick) {
                    Some((x, y)) => (
                        format!("abandon ticket {pick}"),
                        format!("{:?}", store.abandon(x)),
                        format!("{:?}", reference.abandon(y)),
                    ),
                    None => continue,
                }
            }
            11 => {
                let pick = input.byte();
                let lease = Duration::from_millis(pick_ms(input.byte()));
                match ticket(&tickets, pick) {
                    Some((x, y)) => (
                        format!("extend ticket {pick} {lease:?}"),
                        format!("{:?}", store.extend(x, lease)),
                        format!("{:?}", reference.extend(y, lease)),
                    ),
                    None => continue,
                }
            }
            12 | 13 => {
                let by = Duration::from_millis(pick_ms(input.byte()));
                clock.advance(by);
                history.push(format!("advance {by:?}"));
                continue;
            }
            14 => {
                if let Err(e) = store.compact() {
                    panic!("compact failed: {e:?}\nsteps: {history:#?}");
                }
                report.compactions += 1;
                history.push("compact".into());
                continue;
            }
            _ => {
                if input.byte().is_multiple_of(2) {
                    let store = ut.store.take().expect("store");
                    if let Err(e) = store.close() {
                        panic!("close failed: {e:?}\nsteps: {history:#?}");
                    }
                    ut.store = Some(open(&clock, &ut.dir, &ut.sim));
                    report.reopens += 1;
                    history.push("reopen".into());
                } else {
                    let seed = u64::from(input.byte()) << 8 | u64::from(input.byte());
                    // Odd: a second cut strikes during the reopen, before its n-th file
                    // operation (if it makes that many).
                    let during = input.byte();
                    ut.generation += 1;
                    let next = base.path().join(format!("gen-{}", ut.generation));
                    let cut = ut.sim.cut(&next, &mut Rng(seed ^ 0x5eed));
                    // The process is gone: what it would have written at close is not
                    // in `next`, whatever dropping it does to the old directory.
                    drop(ut.store.take());
                    ut.sim = PowerSim::adopt(&next);
                    ut.dir = next;
                    report.cuts += 1;
                    history.push(format!("power cut (seed {seed}): {cut:?}"));
                    if during % 2 == 1 {
                        ut.generation += 1;
                        let again = base.path().join(format!("gen-{}", ut.generation));
                        let hook = Arc::new(CutDuring {
                            sim: ut.sim.clone(),
                            left: AtomicU32::new(u32::from(during / 2 % 4) + 1),
                            out: again.clone(),
                            seed,
                            cut: Mutex::new(None),
                        });
                        let opened = options(&clock).io_hook(hook.clone()).open(&ut.dir);
                        let second = hook.cut.lock().unwrap().take();
                        match (opened, second) {
                            (Ok(store), None) => {
                                // Recovery made fewer operations: no cut. Go on without
                                // the countdown.
                                hook.left.store(u32::MAX, Ordering::SeqCst);
                                ut.store = Some(store);
                                history.push("reopen (no cut during it)".into());
                            }
                            (opened, Some(cut)) => {
                                drop(opened);
                                ut.sim = PowerSim::adopt(&again);
                                ut.dir = again;
                                report.cuts += 1;
                                report.cuts_in_recovery += 1;
                                history.push(format!("power cut during the reopen: {cut}"));
                            }
                            (Err(e), None) => {
                                panic!("open failed: {e:?}\nsteps: {history:#?}")
                            }
                        }
                    }
                    if ut.store.is_none() {
                        ut.store = Some(open(&clock, &ut.dir, &ut.sim));
                    }
                }
                let store = ut.store.as_ref().expect("store");
                for k in 0..8 {
                    let key = pool_key(k);
                    let got = format!("{:?}", store.get(&key));
                    let want = format!("{:?}", reference.get(&key));
                    report.checks += 1;
                    assert_eq!(
                        got,
                        want,
                        "key {} after {}\nsteps: {history:#?}",
                        name(k),
                        history.last().expect("step")
                    );
                }
                continue;
            }
        };
        report.checks += 1;
        history.push(what);
        assert_eq!(got, want, "step {step}\nsteps: {history:#?}");
    }
    report.steps = history.len() as u64;
    if let Some(store) = ut.store.take() {
        store.close().expect("close");
    }
    reference.close().expect("close reference");
    report
}

fn ticket(tickets: &[(Ticket, Ticket)], pick: u8) -> Option<&(Ticket, Ticket)> {
    if tickets.is_empty() {
        return None;
    }
    tickets.get(usize::from(pick) % tickets.len())
}
