//! Group commit: the durable lsn, waiting for durability, and poisoning after a failed sync.
//!
//! Invariants:
//!
//! - `durable` is an lsn below which every byte is on stable storage. Only a completed sync
//!   moves it, to the end of the range it synced; a sync covers `[durable when it started,
//!   tail when it started)`, so the durable prefix never has a hole, whatever other syncs
//!   run at the same time.
//! - A caller returns from `GroupCommit::wait` only once `durable` has passed its lsn, or
//!   with an error (the sync that would have covered it failed, or the log is poisoned).
//! - After a failed sync the log is poisoned for good: the kernel may have dropped the dirty
//!   pages, so nothing more may be appended or acknowledged until the store is reopened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Most syncs of one log that may run at once (see `GroupCommit::wait`).
const MAX_SYNCS_IN_FLIGHT: usize = 2;

/// A second sync may start only while at most this many callers wait (see
/// `GroupCommit::wait`).
const OVERLAP_MAX_WAITING: usize = 2;

struct State {
    /// Syncs running now.
    in_flight: usize,
    /// Callers inside `wait`'s slow path.
    waiting: usize,
    /// The highest lsn a running (or finished) sync has promised to cover.
    covering: u64,
}

/// The durable lsn of a log and the callers waiting for it to move.
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    durable: AtomicU64,
    syncs: AtomicU64,
}

impl GroupCommit {
    /// A log durable up to `durable`.
    pub(crate) fn new(durable: u64) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: 0,
                covering: 0,
            }),
            done: Condvar::new(),
            durable: AtomicU64::new(durable),
            syncs: AtomicU64::new(0),
        }
    }

    /// Everything before this lsn is on stable storage.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Notes that the log is durable up to `lsn` by a sync made outside `wait` (rotation
    /// syncs a sealed segment whole).
    pub(crate) fn advance(&self, lsn: u64) {
        self.durable.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Counts a sync made outside `wait`.
    pub(crate) fn count_sync(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Syncs made since the log opened.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Returns once everything up to `lsn_end` is on stable storage, syncing if needed.
    ///
    /// Group commit with overlap at low concurrency. A caller whose record no running sync
    /// will cover starts one at once if none is running — or if fewer than
    /// `MAX_SYNCS_IN_FLIGHT` are and at most `OVERLAP_MAX_WAITING` callers are waiting;
    /// everyone else waits for the sync that covers them. Letting a second sync start while
    /// the first is in flight, rather than queueing behind it, is what lets claims that
    /// arrive during a sync be acknowledged one sync later instead of two.
    pub(crate) fn wait<S: Syncer>(&self, lsn_end: u64, log: &S) -> Result<()> {
        if self.durable() >= lsn_end {
            return Ok(());
        }
        let mut st = self.state.lock();
        st.waiting += 1;
        let res = self.wait_locked(&mut st, lsn_end, log);
        st.waiting -= 1;
        res
    }

    fn wait_locked<S: Syncer>(
        &self,
        st: &mut MutexGuard<'_, State>,
        lsn_end: u64,
        log: &S,
    ) -> Result<()> {
        loop {
            if self.durable() >= lsn_end {
                return Ok(());
            }
            log.check()?;
            // Overlap only at low concurrency: with more waiters, the next sync covers more
            // of them if it starts when the current one ends.
            let may_start = st.in_flight == 0
                || (st.in_flight < MAX_SYNCS_IN_FLIGHT && st.waiting <= OVERLAP_MAX_WAITING);
            if st.covering >= lsn_end || !may_start {
                self.done.wait(st);
                continue;
            }
            st.in_flight += 1;
            // Until this sync has read the tail it covers nothing: others may start their own.
            let res = MutexGuard::unlocked(st, || self.sync_once(log));
            st.in_flight -= 1;
            self.done.notify_all();
            res?;
        }
    }

    /// One sync: reads the tail, announces what it will cover, syncs up to it and moves
    /// `durable` there.
    fn sync_once<S: Syncer>(&self, log: &S) -> Result<()> {
        // `durable` is read before the tail: everything below it is durable, and the range
        // synced starts there, so no byte between the two can be missed.
        let from = self.durable();
        let (target, tail) = log.tail();
        {
            let mut st = self.state.lock();
            st.covering = st.covering.max(target);
        }
        if from >= target {
            return Ok(());
        }
        log.sync(from, tail)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // A sync that overlapped one that failed may report success for pages the kernel
        // dropped after that failure: once poisoned, no sync moves `durable` any more.
        log.check()?;
        self.advance(target);
        Ok(())
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
    use std::sync::Arc;

    use crate::testing::{wait_until, Gate};

    /// A log of counters: `written` is the tail; `sync` makes it durable in `synced`, after
    /// passing the gate (if one is set) and failing if `fail` is set.
    #[derive(Default)]
    struct FakeLog {
        written: AtomicU64,
        synced: AtomicU64,
        syncs: AtomicU64,
        fail: AtomicBool,
        /// Only the first sync fails; the others wait until it has, then succeed.
        fail_first_only: AtomicBool,
        calls: AtomicU64,
        poison: Poison,
        /// Every sync passes it before reading the tail.
        gate: Gate,
        /// Every sync passes it after announcing what it covers, before syncing.
        sync_gate: Gate,
    }

    impl FakeLog {
        fn write(&self, bytes: u64) -> u64 {
            self.written.fetch_add(bytes, Ordering::SeqCst) + bytes
        }
    }

    impl Syncer for FakeLog {
        type Tail = u64;

        fn tail(&self) -> (u64, u64) {
            self.gate.pass();
            let t = self.written.load(Ordering::SeqCst);
            (t, t)
        }

        fn sync(&self, _from: u64, tail: u64) -> Result<()> {
            self.sync_gate.pass();
            if self.fail.load(Ordering::SeqCst) {
                return Err(self.poison.set("injected sync failure".into()));
            }
            if self.fail_first_only.load(Ordering::SeqCst) {
                if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(self.poison.set("injected sync failure".into()));
                }
                wait_until(|| self.poison.is_set());
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.synced.fetch_max(tail, Ordering::SeqCst);
            Ok(())
        }

        fn check(&self) -> Result<()> {
            self.poison.check()
        }
    }

    #[test]
    fn a_caller_already_durable_does_not_sync() {
        let gc = GroupCommit::new(100);
        let log = FakeLog::default();
        log.write(100);
        gc.wait(100, &log).unwrap();
        gc.wait(1, &log).unwrap();
        assert_eq!((log.syncs.load(Ordering::SeqCst), gc.syncs()), (0, 0));
    }

    #[test]
    fn a_lone_caller_syncs_at_once_and_returns_durable() {
        let gc = GroupCommit::new(0);
        let log = FakeLog::default();
        let end = log.write(48);
        gc.wait(end, &log).unwrap();
        assert_eq!(log.synced.load(Ordering::SeqCst), end);
        assert!(gc.durable() >= end);
        assert_eq!(gc.syncs(), 1);
    }

    /// Durable before acknowledged: a caller whose record a running sync covers waits for
    /// that sync to complete, and does not start its own.
    #[test]
    fn a_caller_covered_by_a_running_sync_waits_for_it_to_finish() {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        let (a_end, b_end) = (log.write(40), log.write(40));
        let (entered, key) = log.sync_gate.close();
        let spawn = |end: u64| {
            let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
            std::thread::spawn(move || {
                gc.wait(end, &*log).unwrap();
                assert!(
                    log.synced.load(Ordering::SeqCst) >= end,
                    "acknowledged early"
                );
            })
        };
        let a = spawn(a_end);
        entered.recv().unwrap(); // A's sync read the tail (both records) and is held
        let b = spawn(b_end);
        wait_until(|| gc.state.lock().waiting == 2 || b.is_finished());
        log.sync_gate.open(key);
        a.join().unwrap();
        b.join()
            .expect("B returned before the sync covering it completed");
        assert_eq!(
            log.syncs.load(Ordering::SeqCst),
            1,
            "B started a sync of its own"
        );
    }

    /// While one sync is held before it reads the tail, four more callers write and wait:
    /// the one or two syncs that then run read the tail after all five writes and cover
    /// them, and nobody returns before the sync that covers it has completed.
    #[test]
    fn callers_that_arrive_during_a_sync_share_the_next_one() {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        let (entered, key) = log.gate.close();

        let waiter = |end: u64| {
            let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
            std::thread::spawn(move || {
                gc.wait(end, &*log).unwrap();
                // Durable before acknowledged.
                assert!(log.synced.load(Ordering::SeqCst) >= end);
            })
        };
        let first = waiter(log.write(40));
        entered.recv().unwrap(); // the first sync is held before reading the tail
        let others: Vec<_> = (0..4).map(|_| waiter(log.write(40))).collect();
        wait_until(|| gc.state.lock().waiting == 5);
        assert_eq!(log.synced.load(Ordering::SeqCst), 0, "synced while held");
        log.gate.open(key);
        first.join().unwrap();
        for t in others {
            t.join().unwrap();
        }
        let syncs = log.syncs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&syncs), "{syncs} syncs for 5 callers");
        assert_eq!(gc.durable(), 200);
    }

    #[test]
    fn many_concurrent_callers_each_return_durable() {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let end = log.write(40);
                        gc.wait(end, &*log).unwrap();
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
    }

    #[test]
    fn a_failed_sync_fails_its_callers_and_poisons_for_good() {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        let (entered, key) = log.gate.close();
        log.fail.store(true, Ordering::SeqCst);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let end = log.write(40);
                let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
                std::thread::spawn(move || gc.wait(end, &*log))
            })
            .collect();
        entered.recv().unwrap();
        wait_until(|| gc.state.lock().waiting == 3);
        log.gate.open(key);
        for t in waiters {
            let res = t.join().unwrap();
            assert!(matches!(res, Err(Error::Poisoned { .. })), "{res:?}");
        }
        assert_eq!(gc.durable(), 0);
        // Syncs would succeed now, but the log stays poisoned.
        log.fail.store(false, Ordering::SeqCst);
        let end = log.write(40);
        assert!(matches!(gc.wait(end, &*log), Err(Error::Poisoned { .. })));
        assert_eq!(log.syncs.load(Ordering::SeqCst), 0);
    }

    /// Found in review: of two overlapping syncs, the one that succeeded after the other
    /// failed moved `durable` over the failed range, and its callers were acknowledged.
    #[test]
    fn a_sync_that_succeeds_after_an_overlapping_one_failed_acknowledges_nothing() {
        let gc = Arc::new(GroupCommit::new(0));
        let log = Arc::new(FakeLog::default());
        log.fail_first_only.store(true, Ordering::SeqCst);
        let (entered, key) = log.gate.close();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let end = log.write(40);
                let (gc, log) = (Arc::clone(&gc), Arc::clone(&log));
                std::thread::spawn(move || gc.wait(end, &*log))
            })
            .collect();
        // Both syncs are under way (two may overlap while at most two callers wait).
        entered.recv().unwrap();
        entered.recv().unwrap();
        log.gate.open(key);
        for t in waiters {
            let res = t.join().unwrap();
            assert!(matches!(res, Err(Error::Poisoned { .. })), "{res:?}");
        }
        assert_eq!(
            log.calls.load(Ordering::SeqCst),
            2,
            "the syncs did not overlap"
        );
        assert_eq!(gc.durable(), 0, "a sync moved durable after a failure");
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
