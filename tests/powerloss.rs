//! Simulated power loss (`tests/common/powercut.rs` has the model): a workload of claim,
//! claim_many, remove, begin/complete/abandon, compaction, clock moves and syncs runs on a
//! store whose every file-system operation goes through the simulator, and before every
//! operation (or a sample of them) a power cut is taken: the directory it could leave is
//! written aside, with random fates for unsynced bytes and pending directory entries.
//!
//! Each cut directory is then opened (it must open: a power cut must never leave a store
//! that refuses to start) and every key is compared with a reference store that replayed
//! the same operations without any cut:
//!
//! - under `Durability::Sync`, each key must be as after every operation acknowledged
//!   before the cut, or as after the one in flight too (invariants 1, 3, 4 of docs/DESIGN.md: nothing
//!   acknowledged is lost, nothing removed or expired comes back);
//! - under `Periodic` and `Buffered`, the same, for some prefix of the operations no
//!   shorter than what the last completed sync covered: loss is bounded by the syncs, and
//!   what survives is always a prefix — never a later operation without an earlier one.
//!
//! `ONCELOG_POWERCUT_SEEDS` (default 3) sets the workloads per durability mode;
//! `ONCELOG_POWERCUT_OPS` (default 300) their length; `ONCELOG_POWERCUT_SEED=N` runs only
//! workload N. When a cut fails, `ONCELOG_POWERCUT_KEEP=DIR` keeps its directory (as cut
//! in `DIR.raw`, as recovered in `DIR`), and `ONCELOG_POWERCUT_TRACE=1` prints every
//! file-system operation. The long run:
//! `ONCELOG_POWERCUT_SEEDS=100 cargo test --release --test powerloss -- --nocapture`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::powercut::{PowerSim, Rng};
use common::{clock, copy_dir, env_opt_u64, env_u64, ms};
use oncelog::{
    Begin, Claim, Durability, IoHook, IoOp, KeyState, ManualClock, Options, RecoveryMode, Seen,
    Store, Ticket, MIN_SEGMENT_SIZE,
};

const KEYS: usize = 40;

/// Key `i`: every other is long, so that 64 KiB segments rotate every few dozen records
/// and maintenance has sealed segments to compact, delete and hint.
fn key(i: usize) -> Vec<u8> {
    if i.is_multiple_of(2) {
        let mut k = format!("long_{i}_").into_bytes();
        k.resize(2500 + i * 37, b'a' + (i % 26) as u8);
        k
    } else {
        format!("evt_{i}").into_bytes()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Claim(usize, u64),
    ClaimMany(Vec<usize>, u64),
    Remove(usize),
    Begin(usize, u64),
    /// Complete the `n`th ticket acquired so far (modulo their number).
    Complete(usize, Vec<u8>, u64),
    Abandon(usize),
    Advance(u64),
    Compact,
    Sync,
}

fn gen_ops(rng: &mut Rng, n: usize) -> Vec<Op> {
    let ttl = |rng: &mut Rng| match rng.below(3) {
        0 => 500 + rng.below(3_000),
        _ => 60_000 + rng.below(600_000),
    };
    (0..n)
        .map(|_| match rng.below(20) {
            0..=5 => Op::Claim(rng.below(KEYS as u64) as usize, ttl(rng)),
            6 => {
                let n = 1 + rng.below(6) as usize;
                let keys = (0..n).map(|_| rng.below(KEYS as u64) as usize).collect();
                Op::ClaimMany(keys, ttl(rng))
            }
            7 | 8 => Op::Remove(rng.below(KEYS as u64) as usize),
            9..=11 => Op::Begin(rng.below(KEYS as u64) as usize, 200 + rng.below(5_000)),
            12 | 13 => {
                let outcome = vec![b'o'; rng.below(40) as usize];
                Op::Complete(rng.next() as usize, outcome, ttl(rng))
            }
            14 => Op::Abandon(rng.next() as usize),
            15 | 16 => Op::Advance(1 + rng.below(2_500)),
            17 => Op::Compact,
            _ => Op::Sync,
        })
        .collect()
}

/// The comparable part of a `Seen`: state, first seen, expiry, attempt, outcome.
type View = Option<(KeyState, u64, u64, u32, Option<Vec<u8>>)>;

fn view(s: Option<Seen>) -> View {
    s.map(|s| {
        (
            s.state,
            ms(s.first_seen),
            ms(s.expires_at),
            s.attempt,
            s.outcome.map(|b| b.to_vec()),
        )
    })
}

/// A view as it would read at `now_ms`: what has expired by then is gone.
fn at(v: &View, now_ms: u64) -> View {
    v.clone().filter(|s| s.2 > now_ms)
}

/// Runs `op` on `store`; returns a summary of the answer, to compare runs by.
fn run_op(store: &Store, clock: &ManualClock, tickets: &mut Vec<Ticket>, op: &Op) -> String {
    let d = Duration::from_millis;
    match op {
        Op::Claim(k, ttl) => match store.claim(key(*k), d(*ttl)) {
            Ok(Claim::New) => "new".into(),
            Ok(Claim::Duplicate(s)) => format!("dup {:?}", view(Some(s))),
            Err(e) => format!("err {e}"),
        },
        Op::ClaimMany(ks, ttl) => {
            let keys: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
            match store.claim_many(&keys, d(*ttl)) {
                Ok(v) => format!("{:?}", v.iter().map(Claim::is_new).collect::<Vec<_>>()),
                Err(e) => format!("err {e}"),
            }
        }
        Op::Remove(k) => format!("{:?}", store.remove(key(*k)).map_err(|e| e.to_string())),
        Op::Begin(k, lease) => match store.begin(key(*k), d(*lease)) {
            Ok(Begin::Acquired(t)) => {
                let s = format!("acquired {}", t.attempt());
                tickets.push(t);
                s
            }
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("err {e}"),
        },
        Op::Complete(n, outcome, ttl) => {
            if tickets.is_empty() {
                return "no ticket".into();
            }
            let t = &tickets[n % tickets.len()];
            format!(
                "{:?}",
                store
                    .complete(t, outcome, d(*ttl))
                    .map_err(|e| e.to_string())
            )
        }
        Op::Abandon(n) => {
            if tickets.is_empty() {
                return "no ticket".into();
            }
            let t = &tickets[n % tickets.len()];
            format!("{:?}", store.abandon(t).map_err(|e| e.to_string()))
        }
        Op::Advance(by) => {
            clock.advance(d(*by));
            String::new()
        }
        Op::Compact => store
            .compact()
            .map(|_| String::new())
            .unwrap_or_else(|e| format!("err {e}")),
        Op::Sync => format!("{:?}", store.sync().map_err(|e| e.to_string())),
    }
}

fn options(clock: &ManualClock, d: Durability) -> Options {
    Options::new()
        .clock(clock.clone())
        .segment_size(MIN_SEGMENT_SIZE)
        .durability(d)
        .background_maintenance(false)
        .attempt_memory(Duration::from_secs(30))
}

/// One cut taken during the run.
struct CutRecord {
    dir: PathBuf,
    /// Operations that had returned when the cut ended. Other threads run on while a cut
    /// reads the files, so it may see the records of operations up to `done + 1`.
    done: usize,
    /// Operations certainly durable at the cut (under `Sync`, `done`).
    lo: usize,
    now_ms: u64,
    what: String,
}

/// The store's hook: the simulator, plus the bookkeeping of when to cut and what was
/// durable then.
struct Harness {
    sim: Arc<PowerSim>,
    mode: Durability,
    clock: ManualClock,
    cuts_dir: PathBuf,
    done: AtomicUsize,
    /// Operations covered by the last explicit `sync()` that returned.
    synced: AtomicUsize,
    /// Flusher bookkeeping: operations done when its previous sync ended, and what its
    /// syncs certainly cover (see `after`).
    flush_prev: AtomicUsize,
    flush_lo: AtomicUsize,
    every: u64,
    rng: Mutex<Rng>,
    cuts: Mutex<Vec<CutRecord>>,
    events: AtomicU64,
    kinds: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Harness {
    fn lo(&self, done: usize) -> usize {
        match self.mode {
            Durability::Sync => done,
            Durability::Periodic(_) => self
                .synced
                .load(Ordering::SeqCst)
                .max(self.flush_lo.load(Ordering::SeqCst)),
            _ => self.synced.load(Ordering::SeqCst),
        }
    }

    /// Takes cut number `n` (unique: threads may cut at once).
    fn take_cut(&self, n: u64, why: &str) {
        let done = self.done.load(Ordering::SeqCst);
        let lo = self.lo(done);
        let dir = self.cuts_dir.join(format!("cut-{n}"));
        let cut = self.sim.cut(&dir, &mut self.rng.lock().unwrap());
        let done = done.max(self.done.load(Ordering::SeqCst));
        self.cuts.lock().unwrap().push(CutRecord {
            dir,
            done,
            lo,
            now_ms: ms(oncelog::Clock::now(&self.clock)),
            what: format!("{why}; {cut:?}"),
        });
    }
}

impl IoHook for Harness {
    fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        *self.kinds.lock().unwrap().entry(op.kind()).or_default() += 1;
        if std::env::var("ONCELOG_POWERCUT_TRACE").is_ok() {
            eprintln!("event {n} done {} {op:?}", self.done.load(Ordering::SeqCst));
        }
        if n.is_multiple_of(self.every) {
            self.take_cut(n, &format!("before {} {}", op.kind(), op.path().display()));
        }
        self.sim.before(op)
    }

    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &std::io::Error>) {
        self.sim.after(op, outcome);
        // The flusher's syncs run one after another on its own thread, each covering what
        // was appended before it read the tail — so at least every operation that had
        // returned when the previous one ended.
        if matches!(op, IoOp::SyncRange { .. })
            && outcome.is_ok()
            && std::thread::current().name() == Some("oncelog-flush")
        {
            let prev = self
                .flush_prev
                .swap(self.done.load(Ordering::SeqCst), Ordering::SeqCst);
            self.flush_lo.fetch_max(prev, Ordering::SeqCst);
        }
    }
}

#[derive(Default)]
struct Totals {
    workloads: u64,
    ops: u64,
    events: u64,
    cuts: u64,
    keys_checked: u64,
    prefix_not_last: u64,
    /// Cuts whose salvage open answered as an allowed prefix, and those (not under `Sync`)
    /// where it kept records beyond one.
    salvage_matched: u64,
    salvage_beyond_prefix: u64,
    kinds: std::collections::BTreeMap<&'static str, u64>,
}

/// One workload under `mode`: run it with cuts, replay it on a reference store, check
/// every cut. Returns what it did; panics on a violation.
fn workload(mode: Durability, seed: u64, n_ops: usize, every: u64, totals: &mut Totals) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cuts_dir = tmp.path().join("cuts");
    let ops = gen_ops(
        &mut Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        n_ops,
    );

    // The run under test.
    let clock = clock();
    let harness = Arc::new(Harness {
        sim: PowerSim::new(&dir),
        mode,
        clock: clock.clone(),
        cuts_dir: cuts_dir.clone(),
        done: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        flush_prev: AtomicUsize::new(0),
        flush_lo: AtomicUsize::new(0),
        every,
        rng: Mutex::new(Rng(seed ^ 0x5eed)),
        cuts: Mutex::new(Vec::new()),
        events: AtomicU64::new(0),
        kinds: Mutex::default(),
    });
    let store = options(&clock, mode)
        .io_hook(harness.clone())
        .open(&dir)
        .expect("open under test");
    let mut tickets = Vec::new();
    let mut answers = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        answers.push(run_op(&store, &clock, &mut tickets, op));
        harness.done.store(i + 1, Ordering::SeqCst);
        if matches!(op, Op::Sync) {
            harness.synced.store(i + 1, Ordering::SeqCst);
        }
    }
    harness.take_cut(u64::MAX, "after the last operation");
    // Dropped without close: what close would sync is not what this test is about.
    std::mem::forget(store);

    // The reference: the same operations, no cuts. Its answers must be the same.
    let ref_clock = common::clock();
    let ref_dir = tmp.path().join("reference");
    let reference = options(&ref_clock, Durability::Buffered)
        .open(&ref_dir)
        .expect("open reference");
    let mut ref_tickets = Vec::new();
    let snapshot =
        |s: &Store| -> Vec<View> { (0..KEYS).map(|k| view(s.get(key(k)).unwrap())).collect() };
    let mut states = vec![snapshot(&reference)];
    for (i, op) in ops.iter().enumerate() {
        let a = run_op(&reference, &ref_clock, &mut ref_tickets, op);
        assert_eq!(
            a, answers[i],
            "seed {seed}: op {i} {op:?} answered differently"
        );
        states.push(snapshot(&reference));
    }
    reference.close().unwrap();

    // Every cut.
    let cuts = std::mem::take(&mut *harness.cuts.lock().unwrap());
    for cut in &cuts {
        let c = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_millis(cut.now_ms));
        if let Ok(keep) = std::env::var("ONCELOG_POWERCUT_KEEP") {
            let raw = PathBuf::from(format!("{keep}.raw"));
            let _ = std::fs::remove_dir_all(&raw);
            std::fs::create_dir_all(&raw).unwrap();
            for e in std::fs::read_dir(&cut.dir).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), raw.join(e.file_name())).unwrap();
            }
        }
        // A copy for `RecoveryMode::Salvage`, taken before the default open cuts anything.
        let salvage_dir = cut.dir.with_extension("salvage");
        std::fs::create_dir_all(&salvage_dir).unwrap();
        copy_dir(&cut.dir, &salvage_dir);
        let store = match options(&c, Durability::Buffered).open(&cut.dir) {
            Ok(s) => s,
            Err(e) => panic!(
                "seed {seed} {mode:?}: a power cut left a store that does not open: {e}\n  cut: {}",
                cut.what
            ),
        };
        let actual: Vec<View> = (0..KEYS)
            .map(|k| view(store.get(key(k)).unwrap()))
            .collect();
        // Some prefix of the operations, no shorter than what was durable, survived: the
        // first `j` whole, and of operation `j` (a batch, say) any part.
        let hi = cut.done.min(ops.len());
        let find_prefix = |actual: &[View]| {
            (cut.lo..=hi).rev().find(|&j| {
                let next = &states[(j + 1).min(ops.len())];
                (0..KEYS).all(|k| {
                    at(&states[j][k], cut.now_ms) == actual[k]
                        || at(&next[k], cut.now_ms) == actual[k]
                })
            })
        };
        let matching = find_prefix(&actual);
        let Some(j) = matching else {
            if let Ok(keep) = std::env::var("ONCELOG_POWERCUT_KEEP") {
                drop(store);
                let _ = std::fs::remove_dir_all(&keep);
                std::fs::rename(&cut.dir, &keep).unwrap();
            }
            let diffs: Vec<String> = (0..KEYS)
                .filter(|&k| at(&states[cut.lo][k], cut.now_ms) != actual[k])
                .map(|k| {
                    format!(
                        "  key {k}: want {:?} (after {} ops), got {:?}",
                        at(&states[cut.lo][k], cut.now_ms),
                        cut.lo,
                        actual[k]
                    )
                })
                .collect();
            let per_prefix: Vec<String> = (cut.lo..=hi)
                .map(|j| {
                    let next = &states[(j + 1).min(ops.len())];
                    let bad: Vec<usize> = (0..KEYS)
                        .filter(|&k| {
                            at(&states[j][k], cut.now_ms) != actual[k]
                                && at(&next[k], cut.now_ms) != actual[k]
                        })
                        .collect();
                    format!("  prefix {j} ({:?}): keys {bad:?} differ", ops.get(j))
                })
                .collect();
            panic!(
                "seed {seed} {mode:?}: cut after {} ops (durable at least {}) matches no \
                 allowed prefix\n  cut: {}\n  next op: {:?}\n{}\n{}",
                cut.done,
                cut.lo,
                cut.what,
                ops.get(cut.done),
                per_prefix.join("\n"),
                diffs.join("\n")
            );
        };
        if j < cut.done {
            totals.prefix_not_last += 1;
        }
        // The recovered store takes new work.
        assert!(store
            .claim("after-the-cut", Duration::from_secs(60))
            .unwrap()
            .is_new());
        store.close().unwrap();
        totals.keys_checked += KEYS as u64;
        let _ = std::fs::remove_dir_all(&cut.dir);

        // Salvage opens every cut too. A power cut leaves no damage but a torn tail of the
        // newest segment, so salvage must answer as a prefix would. (Under `Periodic` and
        // `Buffered` salvage may also keep unsynced records beyond a torn hole, which no
        // prefix explains: FORMAT.md §7.7. There it must open, and take new work.)
        let salvaged = options(&c, Durability::Buffered)
            .recovery_mode(RecoveryMode::Salvage)
            .open(&salvage_dir);
        let store = match salvaged {
            Ok(s) => s,
            Err(e) => panic!(
                "seed {seed} {mode:?}: salvage does not open a power cut's directory: {e}\n  cut: {}",
                cut.what
            ),
        };
        let actual: Vec<View> = (0..KEYS)
            .map(|k| view(store.get(key(k)).unwrap()))
            .collect();
        match find_prefix(&actual) {
            Some(_) => totals.salvage_matched += 1,
            None if mode == Durability::Sync => panic!(
                "seed {seed} {mode:?}: after salvage, cut after {} ops (durable at least {}) \
                 matches no allowed prefix\n  cut: {}\n  salvaged: {:?}",
                cut.done,
                cut.lo,
                cut.what,
                store.salvaged()
            ),
            None => totals.salvage_beyond_prefix += 1,
        }
        assert!(store
            .claim("after-the-cut", Duration::from_secs(60))
            .unwrap()
            .is_new());
        store.close().unwrap();
        let _ = std::fs::remove_dir_all(&salvage_dir);
    }
    totals.workloads += 1;
    totals.ops += ops.len() as u64;
    totals.events += harness.sim.events();
    for (k, n) in harness.kinds.lock().unwrap().iter() {
        *totals.kinds.entry(k).or_default() += n;
    }
    totals.cuts += cuts.len() as u64;
}

fn run_mode(mode: Durability, name: &str, every: u64) {
    let seeds = env_u64("ONCELOG_POWERCUT_SEEDS", 3);
    let n_ops = env_u64("ONCELOG_POWERCUT_OPS", 300) as usize;
    let mut t = Totals::default();
    let only = env_opt_u64("ONCELOG_POWERCUT_SEED");
    for seed in 1..=seeds {
        if only.is_none_or(|o| o == seed) {
            workload(mode, seed, n_ops, every, &mut t);
        }
    }
    println!(
        "powerloss {name}: {} workloads, {} operations, {} file-system operations, {} power \
         cuts checked ({} keys compared; {} cuts kept less than everything done), 0 violations\n  \
         salvage opened every cut: {} as an allowed prefix, {} with unsynced records beyond one\n  \
         operations cut before, by kind: {:?}",
        t.workloads,
        t.ops,
        t.events,
        t.cuts,
        t.keys_checked,
        t.prefix_not_last,
        t.salvage_matched,
        t.salvage_beyond_prefix,
        t.kinds
    );
    assert!(t.cuts > 0);
}

#[test]
fn power_cuts_under_sync_lose_nothing_acknowledged() {
    run_mode(Durability::Sync, "sync", 1);
}

#[test]
fn power_cuts_under_periodic_keep_a_prefix_no_shorter_than_the_last_sync() {
    run_mode(
        Durability::Periodic(Duration::from_millis(2)),
        "periodic",
        1,
    );
}

#[test]
fn power_cuts_under_buffered_keep_a_prefix_no_shorter_than_the_last_sync() {
    run_mode(Durability::Buffered, "buffered", 1);
}
