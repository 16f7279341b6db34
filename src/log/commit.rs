//! Group commit: the durable lsn, the callers waiting for it, the committer thread that
//! moves it, and poisoning after a failed sync.
//!
//! A caller that needs its record durable registers as a waiter (a `Waker` keyed by the lsn
//! its record ends at) and sleeps: a thread parks, a task returns `Pending`
//! (`GroupCommit::wait_for`). One committer thread per log (`Committer`) does the syncs:
//! whenever anyone waits, it reads the tail, syncs up to it, moves `durable` there and wakes
//! exactly the waiters that sync covered (the woken help: `help_wake`), then starts the
//! next sync at once if anyone is still waiting. Before a sync it may *gather*: the callers
//! the previous sync woke usually come back with a new record within microseconds, so the
//! committer waits until as many have registered again — for at most half as long as the
//! previous sync took, yielding the CPU for the first 50 µs and sleeping after. A caller
//! with nobody else around never waits for a gathering (it registered; nothing else is
//! coming). After a sync that woke many (an executor with thousands of tasks), a gathering
//! goes on while they keep coming, up to a few syncs' time (`Gathering`): there, fewer and
//! larger syncs leave the busy executor more CPU.
//!
//! Invariants:
//!
//! - `durable` is an lsn below which every byte is on stable storage. Only a completed sync
//!   moves it, to the end of the range it synced; a sync covers `[durable when it started,
//!   tail when it started)`, so the durable prefix never has a hole.
//! - A waiter is woken, and its future resolves, only once `durable` has passed its lsn, or
//!   with an error (the sync that was to cover it failed, or the log is poisoned).
//! - Every waiter is in the queue from its registration until it is woken or dropped:
//!   nothing is left behind by a dropped future (`Durable`'s `Drop`).
//! - Every waiter a sync covered is woken exactly once: the committer moves it from the
//!   queue to the handoff, and either the committer or one helper pops it there, under the
//!   handoff's lock. The committer empties the handoff before it gathers or syncs again.
//! - After a failed sync the log is poisoned for good: the kernel may have dropped the dirty
//!   pages, so nothing more may be appended or acknowledged until the store is reopened.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// What group commit needs of the log it syncs.
pub(crate) trait Syncer {
    /// What a sync needs to know of the tail it read (the segment it is in, say).
    type Tail;
    /// The lsn just past the last byte written now, and what `sync` needs to reach it.
    fn tail(&self) -> (u64, Self::Tail);
    /// Makes the log durable from `from` (everything before it already is) up to `tail`.
    /// A failure must poison the log.
    fn sync(&self, from: u64, tail: Self::Tail) -> Result<()>;
    /// Fails if the log is poisoned.
    fn check(&self) -> Result<()>;
}

/// The longest a gathering may delay a sync, unless loaded (`LOADED`).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// A sync that woke this many callers marks the committer as loaded: its next gathering
/// may go on past the usual half sync while the callers keep registering
/// (`Gathering::extend`). Below it, a gathering is as short as before: two to a few dozen
/// callers come back within the half sync, or are not coming. 64 blocking threads sit at
/// the threshold (a sync covers 62–64 of them): their gatherings are loaded now and then,
/// which measured neither better nor worse. Each command of a pipeline that `oncelog serve`
/// runs waits on its own, so 50 clients pipelining 16 commands each are loaded.
const LOADED: usize = 64;

/// A loaded gathering lasts at most this many times the previous sync, and at most
/// `MAX_LOADED_GATHER`: a sync may then wait 2 ms where it waited at most 1 ms before.
/// Measured with 10,000 tasks on a 2-worker tokio runtime under `Sync` (`cargo bench
/// --bench async_claims`, 2026-12-01, alternating builds): the usual half sync gave
/// 0.95–1.08 M claims/s at 673–835 claims per sync, this 1.20–1.21 M at about 2,800.
const LOADED_GATHER_SYNCS: u32 = 4;
const MAX_LOADED_GATHER: Duration = Duration::from_millis(2);

/// How many waiters a woken waiter wakes in turn (`GroupCommit::help_wake`). Measured with
/// 64 blocking threads under `Sync` (`cargo bench --bench async_claims`): 2 from 8 left
/// gave +17 % claims/s over the committer waking all; 4 from 3 left was slower than both.
const HELP: usize = 2;

/// A woken waiter helps only while this many are left to wake: the committer wakes a few
/// faster than a woken thread gets to run. Waking in lsn order matters too: the committer
/// waking the newest first cost two blocking threads 15 % of their claims/s.
const HELP_FROM: usize = 8;

/// How long a gathering yields the CPU in a loop before it sleeps.
const GATHER_SPIN: Duration = Duration::from_micros(50);

/// What the committer is doing, so that a new waiter knows whether to wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asleep until someone waits.
    Idle,
    /// Waiting for the callers the last sync woke to register again.
    Gathering,
    /// Syncing (new waiters wait for the next round).
    Syncing,
}

struct Queue {
    /// Waiters by (lsn their record ends at, id), with their wakers.
    waiters: Waiters,
    next_id: u64,
    phase: Phase,
    /// Waiters the last sync woke, and registrations since.
    woken: usize,
    arrived: usize,
    /// The sync that failed, once one has.
    failed: Option<Failed>,
    /// The committer is to stop once nobody waits.
    stop: bool,
}

/// The registered waiters, sorted by (lsn, id). Registrations come mostly in lsn order, so
/// an insert lands at or near the back, and a sync takes a prefix from the front; once its
/// room has grown, registering allocates nothing (a tree allocated a node now and then,
/// and freed it on the committer's thread).
#[derive(Default)]
struct Waiters(VecDeque<((u64, u64), Waker)>);

impl Waiters {
    fn position(&self, key: (u64, u64)) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(&key))
    }

    fn insert(&mut self, key: (u64, u64), waker: Waker) {
        // The common case: a new registration, past every waiter there (no search, whose
        // probes into a deque of thousands would each miss the cache).
        if self.0.back().is_none_or(|(k, _)| *k < key) {
            self.0.push_back((key, waker));
            return;
        }
        match self.position(key) {
            Ok(i) => {
                if let Some(e) = self.0.get_mut(i) {
                    e.1 = waker;
                }
            }
            Err(i) => self.0.insert(i, (key, waker)),
        }
    }

    fn get_mut(&mut self, key: (u64, u64)) -> Option<&mut Waker> {
        let i = self.position(key).ok()?;
        self.0.get_mut(i).map(|e| &mut e.1)
    }

    fn remove(&mut self, key: (u64, u64)) -> Option<Waker> {
        let i = self.position(key).ok()?;
        self.0.remove(i).map(|e| e.1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves the waiters for lsns at or below `lsn` to `out`, in order.
    fn take_through(&mut self, lsn: u64, out: &mut Vec<Waker>) {
        while self.0.front().is_some_and(|((l, _), _)| *l <= lsn) {
            if let Some((_, w)) = self.0.pop_front() {
                out.push(w);
            }
        }
    }

    /// Moves every waiter to `out`, in order.
    fn take_all(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.0.drain(..).map(|(_, w)| w));
    }
}

/// How long the committer waits, before a sync, for the callers the previous sync woke to
/// register again.
///
/// The first deadline is half the previous sync (at most `MAX_GATHER`): a caller with
/// other work to do comes back within that, or a sync now costs it little. When the
/// previous sync woke `LOADED` callers or more, an executor is running that many of them;
/// each sync then costs it CPU (writeback write-protecting pages, interrupts, wake-ups),
/// and the callers' waits are set by that busy executor's queue more than by the sync. So
/// while they keep registering (at least one in the last step), the deadline moves on by
/// another step, up to `LOADED_GATHER_SYNCS` previous syncs (at most `MAX_LOADED_GATHER`)
/// after the start: fewer, larger syncs, and more claims per second.
#[derive(Debug)]
struct Gathering {
    deadline: Instant,
    step: Duration,
    last: Instant,
    arrived_at_deadline: usize,
}

impl Gathering {
    fn new(started: Instant, last_sync: Duration, woken: usize) -> Gathering {
        let step = (last_sync / 2).min(MAX_GATHER);
        let deadline = started + step;
        let last = if woken >= LOADED {
            started
                + (last_sync * LOADED_GATHER_SYNCS)
                    .min(MAX_LOADED_GATHER)
                    .max(step)
        } else {
            deadline
        };
        Gathering {
            deadline,
            step,
            last,
            arrived_at_deadline: 0,
        }
    }

    /// At the deadline (`now`, at or after it), with `arrived` registrations since the
    /// sync: whether to go on (the deadline has moved) or sync now. The next step counts
    /// from `now`: a committer that woke late still gives the callers a whole step.
    fn extend(&mut self, arrived: usize, now: Instant) -> bool {
        if self.deadline >= self.last || arrived <= self.arrived_at_deadline {
            return false;
        }
        self.arrived_at_deadline = arrived;
        self.deadline = (self.deadline.max(now) + self.step).min(self.last);
        true
    }
}

/// A failed sync: what its waiters are told.
struct Failed {
    /// The lsn the sync was to reach.
    target: u64,
    /// Waiters registered before the failure (ids below this) whose lsn the sync was to
    /// reach get `error`; everyone else, `poisoned`.
    first_id_after: u64,
    error: Error,
    poisoned: Error,
}

/// The durable lsn of a log and the callers waiting for it to move.
pub(crate) struct GroupCommit {
    durable: AtomicU64,
    /// No waiter for an lsn at or below this is in the queue: the committer took every
    /// such waiter out after a sync, and `durable` was past it before any could register.
    /// A woken waiter that sees this need not take the queue lock to leave.
    cleared: AtomicU64,
    /// Wakers a completed sync covered, not yet woken. The committer wakes them from the
    /// front, in lsn order; while many are left, every waiter that finds itself durable
    /// wakes up to `HELP` of them from the back, so that the wake-ups, one system call
    /// each for a thread, are spread over the woken instead of all made in turn by the
    /// committer.
    handoff: Mutex<VecDeque<Waker>>,
    handoff_len: AtomicUsize,
    syncs: AtomicU64,
    queue: Mutex<Queue>,
    /// The committer sleeps here.
    work: Condvar,
}

impl GroupCommit {
    /// A log durable up to `durable`.
    pub(crate) fn new(durable: u64) -> GroupCommit {
        GroupCommit {
            durable: AtomicU64::new(durable),
            cleared: AtomicU64::new(durable),
            handoff: Mutex::new(VecDeque::new()),
            handoff_len: AtomicUsize::new(0),
            syncs: AtomicU64::new(0),
            queue: Mutex::new(Queue {
                waiters: Waiters::default(),
                next_id: 0,
                phase: Phase::Idle,
                woken: 0,
                arrived: 0,
                failed: None,
                stop: false,
            }),
            work: Condvar::new(),
        }
    }

    /// Everything before this lsn is on stable storage.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Notes that the log is durable up to `lsn` by a sync made outside the committer
    /// (rotation syncs a sealed segment whole). Waiters it covers are woken by the
    /// committer's next round.
    pub(crate) fn advance(&self, lsn: u64) {
        self.durable.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Counts a sync made outside the committer.
    pub(crate) fn count_sync(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Syncs made since the log opened.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Callers waiting now.
    pub(crate) fn waiters(&self) -> usize {
        self.queue.lock().waiters.len()
    }

    /// Resolves once everything up to `lsn_end` is on stable storage (see `Durable`).
    pub(crate) fn wait_for(&self, lsn_end: u64) -> Durable<'_> {
        Durable {
            commit: self,
            lsn: lsn_end,
            id: None,
        }
    }

    /// Returns once everything up to `lsn_end` is on stable storage, parking the thread
    /// meanwhile.
    pub(crate) fn wait(&self, lsn_end: u64) -> Result<()> {
        if self.durable() >= lsn_end {
            return Ok(());
        }
        block_on(self.wait_for(lsn_end))
    }

    /// Registers (or re-registers, with a new waker) the waiter `id` for `lsn`, unless the
    /// answer is known already.
    fn poll_waiter(&self, lsn: u64, id: &mut Option<u64>, waker: &Waker) -> Poll<Result<()>> {
        if self.durable() >= lsn {
            if self.cleared.load(Ordering::Acquire) >= lsn {
                *id = None;
            } else if id.is_some() {
                self.forget(lsn, id);
            }
            self.help_wake();
            return Poll::Ready(Ok(()));
        }
        let mut q = self.queue.lock();
        // Under the queue lock the committer cannot move `durable` and drain between this
        // check and the insert.
        if self.durable() >= lsn || q.failed.is_some() {
            if let Some(i) = *id {
                q.waiters.remove((lsn, i));
            }
            let registered = id.take();
            return Poll::Ready(match &q.failed {
                Some(f) if self.durable() < lsn => Err(f.error_for(lsn, registered)),
                _ => Ok(()),
            });
        }
        match *id {
            Some(i) => match q.waiters.get_mut((lsn, i)) {
                Some(w) => {
                    if !w.will_wake(waker) {
                        w.clone_from(waker);
                    }
                }
                None => {
                    // Woken (and removed) but not yet durable cannot happen: the committer
                    // removes only covered waiters. Register again to be safe.
                    q.waiters.insert((lsn, i), waker.clone());
                }
            },
            None => {
                let i = q.next_id;
                q.next_id += 1;
                q.waiters.insert((lsn, i), waker.clone());
                *id = Some(i);
                q.arrived += 1;
                let wake_committer = match q.phase {
                    Phase::Idle => true,
                    Phase::Gathering => q.arrived >= q.woken,
                    Phase::Syncing => false,
                };
                if wake_committer {
                    self.work.notify_one();
                }
            }
        }
        Poll::Pending
    }

    /// Removes waiter `id` for `lsn`, if it is still queued.
    fn forget(&self, lsn: u64, id: &mut Option<u64>) {
        if let Some(i) = id.take() {
            self.queue.lock().waiters.remove((lsn, i));
        }
    }

    /// The committer's loop: syncs while anyone waits, until `stop` is called and nobody
    /// waits any more.
    fn run<S: Syncer>(&self, log: &S) {
        let mut last_sync = Duration::ZERO;
        // The waiters each sync wakes; kept, so that its room is reused.
        let mut done: Vec<Waker> = Vec::new();
        let mut q = self.queue.lock();
        loop {
            q.phase = Phase::Idle;
            while q.waiters.is_empty() {
                if q.stop {
                    return;
                }
                self.work.wait(&mut q);
            }
            if q.woken > 0 && q.arrived < q.woken && q.failed.is_none() {
                q.phase = Phase::Gathering;
                let started = Instant::now();
                let mut gathering = Gathering::new(started, last_sync, q.woken);
                let spin_until = started + GATHER_SPIN.min(last_sync / 2);
                // First it yields rather than sleeps: a few callers come back within tens
                // of microseconds, and a sleeping committer would add its own wake-up to
                // every sync. Longer, it sleeps, and leaves the CPU to them.
                while q.arrived < q.woken && !q.stop {
                    let now = Instant::now();
                    if now >= gathering.deadline {
                        if gathering.extend(q.arrived, now) {
                            continue;
                        }
                        break;
                    }
                    if now < spin_until {
                        MutexGuard::unlocked(&mut q, std::thread::yield_now);
                    } else {
                        // Woken by the last expected registration, or at the deadline.
                        let _ = self.work.wait_until(&mut q, gathering.deadline);
                    }
                }
            }
            q.phase = Phase::Syncing;
            let started = Instant::now();
            let res = MutexGuard::unlocked(&mut q, || self.sync_once(log));
            last_sync = started.elapsed();
            let durable = self.durable();
            let synced = res.is_ok();
            match res {
                // Everything at or below `durable`.
                Ok(()) => q.waiters.take_through(durable, &mut done),
                Err((target, error)) => {
                    let poisoned = match log.check() {
                        Err(e) => e,
                        Ok(()) => Error::Poisoned {
                            reason: error.to_string(),
                        },
                    };
                    let first_id_after = q.next_id;
                    q.failed.get_or_insert(Failed {
                        target,
                        first_id_after,
                        error,
                        poisoned,
                    });
                    q.waiters.take_all(&mut done);
                }
            }
            if synced {
                self.cleared.fetch_max(durable, Ordering::Release);
            }
            q.woken = done.len();
            q.arrived = 0;
            // Waking a thread is a system call: not under the lock new waiters need.
            MutexGuard::unlocked(&mut q, || self.wake_all(&mut done));
        }
    }

    /// Wakes every waiter in `done`, with the help of the woken (`help_wake`); returns
    /// once all are woken.
    fn wake_all(&self, done: &mut Vec<Waker>) {
        if done.is_empty() {
            return;
        }
        {
            let mut h = self.handoff.lock();
            h.extend(done.drain(..));
            self.handoff_len.store(h.len(), Ordering::Release);
        }
        loop {
            let next = {
                let mut h = self.handoff.lock();
                let w = h.pop_front();
                self.handoff_len.store(h.len(), Ordering::Release);
                w
            };
            match next {
                Some(w) => w.wake(),
                None => return,
            }
        }
    }

    /// Wakes up to `HELP` of the waiters the committer is waking. Not from inside a wake
    /// this thread is making: an executor whose wake polls the future at once would
    /// otherwise nest one help inside another, as deep as there are waiters.
    fn help_wake(&self) {
        thread_local! {
            static HELPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if self.handoff_len.load(Ordering::Acquire) < HELP_FROM || HELPING.get() {
            return;
        }
        let mut taken: [Option<Waker>; HELP] = Default::default();
        {
            let mut h = self.handoff.lock();
            for t in &mut taken {
                *t = h.pop_back();
            }
            self.handoff_len.store(h.len(), Ordering::Release);
        }
        HELPING.set(true);
        for w in taken.into_iter().flatten() {
            w.wake();
        }
        HELPING.set(false);
    }

    /// One sync: reads the tail, syncs up to it and moves `durable` there. On failure,
    /// the lsn it was to reach and the error.
    fn sync_once<S: Syncer>(&self, log: &S) -> Result<(), (u64, Error)> {
        // `durable` is read before the tail: everything below it is durable, and the range
        // synced starts there, so no byte between the two can be missed.
        let from = self.durable();
        let (target, tail) = log.tail();
        log.check().map_err(|e| (target, e))?;
        if from >= target {
            return Ok(());
        }
        log.sync(from, tail).map_err(|e| (target, e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // A sync that raced a failure elsewhere (rotation's) may report success for pages
        // the kernel dropped after that failure: once poisoned, nothing moves `durable`.
        log.check().map_err(|e| (target, e))?;
        self.advance(target);
        Ok(())
    }

    /// Asks the committer to stop once nobody waits.
    fn stop(&self) {
        self.queue.lock().stop = true;
        self.work.notify_all();
    }
}

impl Failed {
    /// What a waiter for `lsn` is told: the sync's own error if it was waiting for that
    /// sync (registered as `id` before it failed, for an lsn it was to reach); that the
    /// log is poisoned otherwise.
    fn error_for(&self, lsn: u64, id: Option<u64>) -> Error {
        match id {
            Some(i) if i < self.first_id_after && lsn <= self.target => copy_error(&self.error),
            _ => copy_error(&self.poisoned),
        }
    }
}

/// The same error again (`io::Error` is not `Clone`: its kind, OS code and message are
/// kept).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { op, path, source } => Error::Io {
            op,
            path: path.clone(),
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        Error::Poisoned { reason } => Error::Poisoned {
            reason: reason.clone(),
        },
        other => Error::Poisoned {
            reason: other.to_string(),
        },
    }
}

/// A future that resolves once everything up to its lsn is on stable storage, or with the
/// error of the sync that was to cover it. Dropping it at any point leaves nothing behind
/// in the queue.
#[must_use = "a durability wait does nothing unless awaited"]
pub(crate) struct Durable<'a> {
    commit: &'a GroupCommit,
    lsn: u64,
    id: Option<u64>,
}

impl Future for Durable<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.commit.poll_waiter(this.lsn, &mut this.id, cx.waker())
    }
}

impl Drop for Durable<'_> {
    fn drop(&mut self) {
        self.commit.forget(self.lsn, &mut self.id);
    }
}

/// Runs a future to completion on this thread, parking it while the future waits.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The committer thread of one log; stops (after the last waiter is served) when dropped.
pub(crate) struct Committer {
    commit: Arc<GroupCommit>,
    handle: Option<JoinHandle<()>>,
    stopped: AtomicBool,
}

impl Committer {
    /// Starts the thread that syncs `log` for the waiters of `commit`.
    pub(crate) fn start<S: Syncer + Send + Sync + 'static>(
        commit: Arc<GroupCommit>,
        log: Arc<S>,
    ) -> std::io::Result<Committer> {
        let c = Arc::clone(&commit);
        let handle = std::thread::Builder::new()
            .name("oncelog-commit".into())
            .spawn(move || c.run(&*log))?;
        Ok(Committer {
            commit,
            handle: Some(handle),
            stopped: AtomicBool::new(false),
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.commit.stop();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Whether the log refuses work after a failure, and why.
#[derive(Default)]
pub(crate) struct Poison {
    poisoned: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    /// Fails with [`Error::Poisoned`] if the log is poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let reason = self
                .reason
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown failure".to_string());
            return Err(Error::Poisoned { reason });
        }
        Ok(())
    }

    /// Poisons the log (the first reason is kept); returns the error for the caller who
    /// hit the failure.
    pub(crate) fn set(&self, reason: String) -> Error {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(reason.clone());
        }
        self.poisoned.store(true, Ordering::Release);
        Error::Poisoned { reason }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use crate::testing::{wait_until, Gate};

    /// A log of counters: `written` is the tail; a sync passes `gate` (the first sync) or
    /// `later_gate` (the others), then fails if `fail` is set (poisoning), else makes the
    /// tail durable in `synced`. `poison_during` poisons
    /// the log while a sync runs (as a failed rotation on another thread would) and lets
    /// the sync itself succeed.
    #[derive(Default)]
    struct FakeLog {
        written: AtomicU64,
        synced: AtomicU64,
        syncs: AtomicU64,
        fail: AtomicBool,
        poison_during: AtomicBool,
        poison: Poison,
        gate: Gate,
        later_gate: Gate,
        calls: AtomicUsize,
    }

    impl FakeLog {
        fn write(&self, bytes: u64) -> u64 {
            self.written.fetch_add(bytes, Ordering::SeqCst) + bytes
        }
    }

    impl Syncer for FakeLog {
        type Tail = u64;

        fn tail(&self) -> (u64, u64) {
            let t = self.written.load(Ordering::SeqCst);
            (t, t)
        }

        fn sync(&self, _from: u64, tail: u64) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.gate.pass();
            } else {
                self.later_gate.pass();
            }
            if self.fail.load(Ordering::SeqCst) {
                self.poison.set("injected sync failure".into());
                let e = std::io::Error::from_raw_os_error(libc::EIO);
                return Err(Error::io("sync segment", "seg", e));
            }
            if self.poison_during.load(Ordering::SeqCst) {
                self.poison.set("rotation failed meanwhile".into());
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.synced.fetch_max(tail, Ordering::SeqCst);
            Ok(())
        }

        fn check(&self) -> Result<()> {
            self.poison.check()
        }
    }

    /// A log with its committer running.
    fn started() -> (Arc<GroupCommit>, Arc<FakeLog>, Committer) {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        let committer = Committer::start(Arc::clone(&gc), Arc::clone(&log)).unwrap();
        (gc, log, committer)
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(f: &mut Durable<'_>, waker: &Waker) -> Poll<Result<()>> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// The deadlines a gathering goes through when `arrivals[i]` callers have registered by
    /// its i-th deadline.
    fn deadlines(last_sync: Duration, woken: usize, arrivals: &[usize]) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut g = Gathering::new(t0, last_sync, woken);
        let mut seen = vec![g.deadline - t0];
        for &a in arrivals {
            let on_time = g.deadline;
            if !g.extend(a, on_time) {
                break;
            }
            seen.push(g.deadline - t0);
        }
        seen
    }

    #[test]
    fn a_gathering_goes_on_past_half_a_sync_only_when_loaded_and_while_callers_come() {
        let us = Duration::from_micros;
        // Few woken: half the last sync, however many keep coming.
        assert_eq!(deadlines(us(300), 2, &[1, 2, 3]), [us(150)]);
        assert_eq!(deadlines(us(300), LOADED - 1, &[10, 20, 30]), [us(150)]);
        // Loaded, callers coming: steps of half a sync, up to four syncs.
        let steps: Vec<_> = (1..=8).map(|i| us(150 * i)).collect();
        assert_eq!(
            deadlines(us(300), LOADED, &[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            steps
        );
        // Loaded, but nobody came in the last step: the sync starts.
        assert_eq!(
            deadlines(us(300), 1000, &[5, 9, 9, 12]),
            [us(150), us(300), us(450)]
        );
        assert_eq!(deadlines(us(300), 1000, &[0, 1]), [us(150)]);
        // Long syncs: the usual cap on the first step, and the loaded cap on the whole.
        assert_eq!(deadlines(us(3000), 2, &[1]), [MAX_GATHER]);
        let long = deadlines(us(3000), 1000, &[1, 2, 3, 4]);
        assert_eq!(long, [MAX_GATHER, MAX_LOADED_GATHER]);
        // A first sync (nothing measured yet) gathers nothing.
        assert_eq!(deadlines(Duration::ZERO, 1000, &[1, 2]), [Duration::ZERO]);
        // A committer that wakes late still gives the callers a whole step, and never
        // goes past the last deadline.
        let t0 = Instant::now();
        let mut g = Gathering::new(t0, us(300), 1000);
        assert!(g.extend(1, t0 + us(400)));
        assert_eq!(g.deadline - t0, us(550));
        assert!(g.extend(2, t0 + us(1100)));
        assert_eq!(g.deadline - t0, us(1200));
        assert!(!g.extend(3, t0 + us(1200)));
    }

    #[test]
    fn a_caller_already_durable_neither_waits_nor_syncs() {
        let (gc, log, _c) = started();
        gc.advance(100);
        log.write(100);
        gc.wait(100).unwrap();
        gc.wait(1).unwrap();
        assert_eq!((log.syncs.load(Ordering::SeqCst), gc.syncs()), (0, 0));
        assert_eq!(gc.waiters(), 0);
    }

    #[test]
    fn a_lone_caller_is_synced_and_returns_durable() {
        let (gc, log, _c) = started();
        let end = log.write(48);
        gc.wait(end).unwrap();
        assert_eq!(log.synced.load(Ordering::SeqCst), end);
        assert!(gc.durable() >= end);
        assert_eq!(gc.syncs(), 1);
        assert_eq!(gc.waiters(), 0);
    }

    /// Durable before acknowledged, and only the covered are woken: while the sync that
    /// covers the first record is held, a caller whose record came after the tail it read
    /// waits, unwoken, for the next sync.
    #[test]
    fn a_sync_wakes_exactly_the_waiters_it_covered() {
        let (gc, log, _c) = started();
        let (first_sync, open_first) = log.gate.close();
        let (second_sync, open_second) = log.later_gate.close();
        let a_waker = Arc::new(CountingWaker::default());
        let b_waker = Arc::new(CountingWaker::default());
        let mut a = gc.wait_for(log.write(40));
        assert!(poll_once(&mut a, &Waker::from(Arc::clone(&a_waker))).is_pending());
        first_sync.recv().unwrap(); // it read the tail (40) and is held
        let mut b = gc.wait_for(log.write(40));
        assert!(poll_once(&mut b, &Waker::from(Arc::clone(&b_waker))).is_pending());
        assert_eq!(gc.waiters(), 2);
        log.gate.open(open_first);
        second_sync.recv().unwrap(); // the first sync is over; the second is held
        assert_eq!(a_waker.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            b_waker.0.load(Ordering::SeqCst),
            0,
            "woken by a sync that missed it"
        );
        assert!(matches!(
            poll_once(&mut a, &Waker::from(Arc::clone(&a_waker))),
            Poll::Ready(Ok(()))
        ));
        assert!(poll_once(&mut b, &Waker::from(Arc::clone(&b_waker))).is_pending());
        log.later_gate.open(open_second);
        wait_until(|| b_waker.0.load(Ordering::SeqCst) == 1);
        assert!(matches!(
            poll_once(&mut b, &Waker::from(b_waker)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(log.syncs.load(Ordering::SeqCst), 2);
        assert_eq!(gc.waiters(), 0);
    }

    /// While a sync is held, more callers write and wait; when it ends, one more sync
    /// covers them all, and none returns before its record is durable.
    #[test]
    fn callers_that_arrive_during_a_sync_share_the_next_one() {
        let (gc, log, _c) = started();
        let (arrived, key) = log.gate.close();
        let waiter = |end: u64| {
            let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
            std::thread::spawn(move || {
                gc.wait(end).unwrap();
                assert!(
                    log.synced.load(Ordering::SeqCst) >= end,
                    "acknowledged early"
                );
            })
        };
        let first = waiter(log.write(40));
        arrived.recv().unwrap(); // the first sync is held
        let others: Vec<_> = (0..4).map(|_| waiter(log.write(40))).collect();
        wait_until(|| gc.waiters() == 5);
        log.gate.open(key);
        first.join().unwrap();
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(
            log.syncs.load(Ordering::SeqCst),
            2,
            "the four did not share a sync"
        );
        assert_eq!(gc.durable(), 200);
    }

    #[test]
    fn many_threads_and_tasks_each_return_durable() {
        let (gc, log, _c) = started();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let end = log.write(40);
                        if t % 2 == 0 {
                            gc.wait(end).unwrap();
                        } else {
                            futures::executor::block_on(gc.wait_for(end)).unwrap();
                        }
                        assert!(log.synced.load(Ordering::SeqCst) >= end);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gc.durable(), 8 * 200 * 40);
        assert_eq!(gc.syncs(), log.syncs.load(Ordering::SeqCst));
        assert_eq!(gc.waiters(), 0);
    }

    #[test]
    fn a_failed_sync_fails_every_waiter_it_covered_and_poisons_for_good() {
        let (gc, log, _c) = started();
        let (arrived, key) = log.gate.close();
        log.fail.store(true, Ordering::SeqCst);
        // All three records are written before the sync reads the tail: it covers them all.
        let ends: Vec<u64> = (0..3).map(|_| log.write(40)).collect();
        let waiters: Vec<_> = ends
            .into_iter()
            .map(|end| {
                let gc = Arc::clone(&gc);
                std::thread::spawn(move || gc.wait(end))
            })
            .collect();
        arrived.recv().unwrap();
        wait_until(|| gc.waiters() == 3);
        log.gate.open(key);
        for t in waiters {
            match t.join().unwrap() {
                Err(Error::Io { op, source, .. }) => {
                    assert_eq!(op, "sync segment");
                    assert_eq!(source.raw_os_error(), Some(libc::EIO));
                }
                other => panic!("a covered waiter got {other:?}"),
            }
        }
        assert_eq!(gc.durable(), 0);
        // Syncs would succeed now, but the log stays poisoned, and later callers are told so.
        log.fail.store(false, Ordering::SeqCst);
        let end = log.write(40);
        assert!(matches!(gc.wait(end), Err(Error::Poisoned { .. })));
        assert_eq!(log.syncs.load(Ordering::SeqCst), 0);
        assert_eq!(gc.waiters(), 0);
    }

    /// A sync that completes after the log was poisoned elsewhere (a failed rotation) may
    /// have synced pages the kernel had already dropped: it acknowledges nothing.
    #[test]
    fn a_sync_that_completes_after_the_log_was_poisoned_acknowledges_nothing() {
        let (gc, log, _c) = started();
        log.poison_during.store(true, Ordering::SeqCst);
        let end = log.write(40);
        assert!(matches!(gc.wait(end), Err(Error::Poisoned { .. })));
        assert_eq!(gc.durable(), 0, "a sync moved durable after a failure");
    }

    #[test]
    fn dropped_waits_leave_no_waiter_behind() {
        let (gc, log, c) = started();
        let (arrived, key) = log.gate.close();
        let noop = Waker::from(Arc::new(CountingWaker::default()));
        let end = log.write(40);
        // Never polled: never registered.
        drop(gc.wait_for(end));
        assert_eq!(gc.waiters(), 0);
        // Registered, then dropped while its sync is held, and dropped after being woken.
        let mut held = gc.wait_for(end);
        assert!(poll_once(&mut held, &noop).is_pending());
        let mut woken = gc.wait_for(end);
        assert!(poll_once(&mut woken, &noop).is_pending());
        arrived.recv().unwrap();
        assert_eq!(gc.waiters(), 2);
        drop(held);
        assert_eq!(gc.waiters(), 1);
        log.gate.open(key);
        wait_until(|| gc.durable() >= end);
        drop(woken);
        assert_eq!(gc.waiters(), 0);
        // And the committer stops when asked, with nobody left waiting.
        drop(c);
    }

    /// Registered out of lsn order (tasks append in one order and register in another),
    /// waiters are still taken by the first sync that covers them, and only by it.
    #[test]
    fn waiters_stay_in_lsn_order_however_they_register() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut w = Waiters::default();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut keys = Vec::new();
        for id in 0..500u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = (rng % 100, id);
            w.insert(key, waker.clone());
            keys.push(key);
        }
        // A registration again (a new waker for the same wait) replaces, never adds.
        w.insert(keys[7], waker.clone());
        assert_eq!(w.len(), 500);
        assert!(w.get_mut(keys[9]).is_some());
        assert!(w.remove(keys[9]).is_some() && w.remove(keys[9]).is_none());
        keys.remove(9);
        let mut done = Vec::new();
        w.take_through(49, &mut done);
        let covered = keys.iter().filter(|k| k.0 <= 49).count();
        assert_eq!(done.len(), covered, "a sync to 49 took other waiters");
        assert_eq!(w.len(), keys.len() - covered);
        assert!(w.0.iter().all(|((l, _), _)| *l > 49));
        assert!(w.0.iter().zip(w.0.iter().skip(1)).all(|(a, b)| a.0 < b.0));
        done.clear();
        w.take_all(&mut done);
        assert_eq!(done.len(), keys.len() - covered);
        assert!(w.is_empty());
    }

    /// A waker whose wake does what a woken waiter does first: polls its wait, which
    /// helps wake the others (`help_wake`), all on the waking thread.
    struct Helping {
        gc: Arc<GroupCommit>,
        lsn: u64,
        wakes: AtomicUsize,
    }

    impl Wake for Helping {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            let noop = Waker::from(Arc::new(CountingWaker::default()));
            let mut again = self.gc.wait_for(self.lsn);
            assert!(
                poll_once(&mut again, &noop).is_ready(),
                "woken before durable"
            );
        }
    }

    /// However the wake-ups are shared between the committer and the woken, every waiter a
    /// sync covered is woken exactly once, and none is left behind; and helping does not
    /// nest (with a wake that polls at once, 20,000 waiters would overflow the stack).
    #[test]
    fn the_woken_help_wake_the_rest_and_each_is_woken_once() {
        let (gc, log, _c) = started();
        let (arrived, key) = log.gate.close();
        let n = 20_000;
        let ends: Vec<u64> = (0..n).map(|_| log.write(40)).collect();
        let wakers: Vec<Arc<Helping>> = ends
            .iter()
            .map(|&lsn| {
                Arc::new(Helping {
                    gc: Arc::clone(&gc),
                    lsn,
                    wakes: AtomicUsize::new(0),
                })
            })
            .collect();
        let mut waits: Vec<Durable<'_>> = ends.iter().map(|&e| gc.wait_for(e)).collect();
        for (w, h) in waits.iter_mut().zip(&wakers) {
            assert!(poll_once(w, &Waker::from(Arc::clone(h))).is_pending());
        }
        arrived.recv().unwrap(); // one sync covers every record
        assert_eq!(gc.waiters(), n);
        log.gate.open(key);
        wait_until(|| wakers.iter().all(|h| h.wakes.load(Ordering::SeqCst) > 0));
        drop(waits);
        for (i, h) in wakers.iter().enumerate() {
            assert_eq!(h.wakes.load(Ordering::SeqCst), 1, "waiter {i}");
        }
        assert_eq!(gc.handoff_len.load(Ordering::SeqCst), 0);
        assert_eq!(gc.waiters(), 0);
        assert_eq!(log.syncs.load(Ordering::SeqCst), 1);
    }

    /// A wait that `durable` passed without the committer (rotation's sync moved it) is
    /// still in the queue: leaving it must take it out, not trust that the committer did.
    #[test]
    fn a_wait_made_durable_outside_the_committer_leaves_the_queue_when_it_ends() {
        let (gc, log, _c) = started();
        gc.wait(log.write(40)).unwrap(); // the committer has cleared a sync's waiters once
        let (arrived, key) = log.later_gate.close();
        let noop = Waker::from(Arc::new(CountingWaker::default()));
        let first = log.write(40);
        let mut held = gc.wait_for(first);
        assert!(poll_once(&mut held, &noop).is_pending());
        arrived.recv().unwrap(); // the committer's sync is held
        let second = log.write(40);
        let mut other = gc.wait_for(second);
        assert!(poll_once(&mut other, &noop).is_pending());
        gc.advance(second);
        assert!(matches!(poll_once(&mut other, &noop), Poll::Ready(Ok(()))));
        drop(other);
        assert_eq!(gc.waiters(), 1, "only the wait for the held sync is left");
        log.later_gate.open(key);
        assert!(matches!(block_on(held), Ok(())));
        assert_eq!(gc.waiters(), 0);
    }

    #[test]
    fn block_on_runs_a_future_that_is_woken_from_another_thread() {
        let (gc, log, _c) = started();
        let end = log.write(8);
        assert!(block_on(gc.wait_for(end)).is_ok());
        assert_eq!(block_on(async { 7 }), 7);
    }

    #[test]
    fn poison_keeps_its_first_reason() {
        let p = Poison::default();
        assert!(p.check().is_ok() && !p.is_set());
        let e = p.set("first".into());
        assert!(matches!(e, Error::Poisoned { ref reason } if reason == "first"));
        p.set("second".into());
        match p.check() {
            Err(Error::Poisoned { reason }) => assert_eq!(reason, "first"),
            other => panic!("{other:?}"),
        }
        assert!(p.is_set());
    }
}
