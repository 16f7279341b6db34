//! The `Store`: opening and closing a store, and the claim operations (`claim`,
//! `claim_many`, `get`, `remove`), each a thin door onto the engine (`crate::engine`), which
//! owns the locking protocol and the invariants. The lease operations are the other door,
//! in `lease.rs`.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::{Condvar, Mutex};

use crate::engine::{check_key, expiry, Engine, Memory, Seen, Status};
use crate::error::{Error, Result};
use crate::format::{encode_state, RecordKind, StateValue, MAX_OUTCOME_LEN};
use crate::index::Stripe;
use crate::log::{Appended, RecordSpec};
use crate::maintain::{CompactionReport, Maintenance};
use crate::options::{Durability, Options};
use crate::recovery::{self, RecoveryStats};
use crate::stats::Stats;

/// The answer to [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a claim's answer says whether to do the work"]
pub enum Claim {
    /// First time in the TTL window: do the work.
    New,
    /// Already claimed: skip the work.
    Duplicate(Seen),
}

impl Claim {
    /// Is this the first claim of the key?
    pub fn is_new(&self) -> bool {
        matches!(self, Claim::New)
    }
}

/// One claim of a [`Store::claim_batch`]: a key, its TTL and the outcome to store with it
/// (empty for a plain claim, as [`Store::claim`] makes). Made with
/// [`new`](ClaimRequest::new) and [`with_outcome`](ClaimRequest::with_outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimRequest<'a> {
    /// The key, 1 to [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    pub key: &'a [u8],
    /// The outcome, at most [`MAX_OUTCOME_LEN`] bytes.
    pub outcome: &'a [u8],
    /// How long the claim holds, at least 1 ms.
    pub ttl: Duration,
}

impl<'a> ClaimRequest<'a> {
    /// A plain claim of `key` for `ttl`.
    pub fn new(key: &'a (impl AsRef<[u8]> + ?Sized), ttl: Duration) -> ClaimRequest<'a> {
        ClaimRequest {
            key: key.as_ref(),
            outcome: &[],
            ttl,
        }
    }

    /// The same claim, storing `outcome` with it.
    #[must_use]
    pub fn with_outcome(self, outcome: &'a [u8]) -> ClaimRequest<'a> {
        ClaimRequest { outcome, ..self }
    }
}

/// A checked claim of a batch: its key, outcome and expiry (ms since the epoch).
struct Item<'a> {
    key: &'a [u8],
    outcome: &'a [u8],
    expires: u64,
}

/// An open dedupe store. `Send + Sync`: share it between threads with `Arc`.
///
/// ```
/// use std::time::Duration;
/// use oncelog::{Claim, Store};
///
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let ttl = Duration::from_secs(72 * 3600);
/// assert_eq!(store.claim("evt_1", ttl)?, Claim::New);
/// assert!(matches!(store.claim("evt_1", ttl)?, Claim::Duplicate(_)));
/// store.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    engine: Arc<Engine>,
    maint: Arc<Maintenance>,
    recovery: RecoveryStats,
    flusher: Option<Background>,
    maintainer: Option<Background>,
    closed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.engine.dir())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Store> {
        self.validate()?;
        Store::open_with(self, dir.as_ref())
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Options::new().open(dir)
    }

    fn open_with(opts: Options, dir: &Path) -> Result<Store> {
        let lock = crate::fs::lock_dir(&opts.io, dir)?;
        let now = crate::clock::to_millis(opts.clock.now());
        let (index, log, recovery) = recovery::recover(dir, &opts, now)?;
        let engine = Arc::new(Engine::new(&opts, lock, index, log)?);
        let maint = Arc::new(Maintenance::new(opts.compaction_threshold, opts.hints));
        let mut store = Store {
            engine,
            maint,
            recovery,
            flusher: None,
            maintainer: None,
            closed: false,
        };
        if let Durability::Periodic(interval) = opts.durability {
            // A failed sync poisons the log; callers see it on their next write.
            let engine = Arc::clone(&store.engine);
            store.flusher = Some(Background::spawn(
                dir,
                "oncelog-flush",
                interval,
                move || engine.sync().is_ok(),
            )?);
        }
        if opts.background_maintenance {
            let (engine, maint) = (Arc::clone(&store.engine), Arc::clone(&store.maint));
            store.maintainer = Some(Background::spawn(
                dir,
                "oncelog-maintain",
                opts.maintenance_interval,
                move || maintenance_round(&engine, &maint),
            )?);
        }
        Ok(store)
    }

    /// Claims `key` for `ttl`: [`Claim::New`] exactly once per key per TTL window, across
    /// threads, crashes and restarts; [`Claim::Duplicate`] otherwise.
    ///
    /// Keys are 1 to [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes, any bytes (a key is its
    /// bytes: no encoding, no normalisation). The TTL must be at least 1 ms (it is rounded
    /// up to whole milliseconds), and the expiry, now plus the TTL, at most the last
    /// millisecond of year 9999; otherwise the call fails with [`Error::InvalidTtl`] before
    /// the key is looked up, even if the key is claimed. Under [`Durability::Sync`] the call
    /// returns once the claim is on stable storage.
    ///
    /// If it returns an error, nothing was claimed — except after a failed sync (the store is
    /// then poisoned), when the record may or may not have reached the disk: reopen and ask
    /// again.
    pub fn claim(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Claim> {
        let (answer, wait) = self.claim_now(key.as_ref(), ttl)?;
        self.engine.settle(wait)?;
        Ok(answer)
    }

    /// `claim` up to the wait for durability: the answer, and the lsn to settle before
    /// giving it.
    pub(crate) fn claim_now(&self, key: &[u8], ttl: Duration) -> Result<(Claim, u64)> {
        self.claim_with_outcome_now(key, &[], ttl)
    }

    /// Claims `key` for `ttl` as [`claim`](Store::claim) does, and stores `outcome` (at most
    /// [`MAX_OUTCOME_LEN`](crate::MAX_OUTCOME_LEN) bytes) with the claim, in the same single
    /// record: a later duplicate gets it back in [`Seen::outcome`], as do [`get`](Store::get)
    /// and a [`begin`](Store::begin) of the key ([`Begin::Done`](crate::Begin::Done)); the
    /// key's state is [`Claimed`](crate::KeyState::Claimed). For a dedupe store that also
    /// answers "what happened the first time" (Redis's `SET key value NX`). An empty outcome
    /// is a plain claim.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use oncelog::{Claim, Store};
    ///
    /// let store = Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(3600);
    /// assert!(store.claim_with_outcome("order-7", b"shipped", ttl)?.is_new());
    /// match store.claim_with_outcome("order-7", b"again", ttl)? {
    ///     Claim::Duplicate(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"shipped"[..])),
    ///     Claim::New => unreachable!("the key is claimed"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Fails as `claim` does, and with [`Error::OutcomeTooLarge`] (before anything is
    /// claimed) if `outcome` is too long.
    pub fn claim_with_outcome(
        &self,
        key: impl AsRef<[u8]>,
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<Claim> {
        let (answer, wait) = self.claim_with_outcome_now(key.as_ref(), outcome, ttl)?;
        self.engine.settle(wait)?;
        Ok(answer)
    }

    /// `claim_with_outcome` up to the wait for durability.
    pub(crate) fn claim_with_outcome_now(
        &self,
        key: &[u8],
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<(Claim, u64)> {
        check_key(key)?;
        if outcome.len() > MAX_OUTCOME_LEN {
            return Err(Error::OutcomeTooLarge {
                len: outcome.len(),
                max: MAX_OUTCOME_LEN,
            });
        }
        let engine = &*self.engine;
        let (now, expires) = engine.window(ttl)?;
        let hash = engine.hash(key);
        let mut stripe = engine.lock(hash);
        claim_locked(engine, &mut stripe, key, outcome, hash, now, expires)
    }

    /// Claims many keys with one durable write: the answers are in the order of `keys`, as
    /// if each key were claimed in turn (a key repeated in `keys` is `New` at most once).
    ///
    /// All keys are validated first; an invalid one fails the call before anything is
    /// claimed. The batch's records are appended as one unit, so an I/O error such as a full
    /// disk also leaves every key unclaimed (a failed sync poisons the store, as for
    /// [`claim`](Store::claim)). While the batch runs it holds the index stripes of its keys.
    pub fn claim_many<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<Vec<Claim>> {
        let (answers, wait) = self.claim_many_now(keys, ttl)?;
        self.engine.settle(wait)?;
        Ok(answers)
    }

    /// `claim_many` up to the wait for durability: the answers, and the lsn to settle
    /// before giving them.
    pub(crate) fn claim_many_now<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
    ) -> Result<(Vec<Claim>, u64)> {
        for k in keys {
            check_key(k.as_ref())?;
        }
        let (now, expires) = self.engine.window(ttl)?;
        let items: Vec<Item<'_>> = keys
            .iter()
            .map(|k| Item {
                key: k.as_ref(),
                outcome: &[],
                expires,
            })
            .collect();
        self.claim_items(&items, now)
    }

    /// Claims each request's key for its own TTL, with its own outcome, in one durable
    /// write: [`claim_many`](Store::claim_many) for claims that differ, such as a pipeline
    /// of Redis `SET key value NX EX n` commands. The answers are in the order of
    /// `requests`, as if each were made in turn by
    /// [`claim_with_outcome`](Store::claim_with_outcome): a key repeated in the batch is
    /// `New` at most once, and its repeats get what the first one stored.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use oncelog::{Claim, ClaimRequest, Store};
    ///
    /// let store = Store::open(dir.path())?;
    /// let hour = Duration::from_secs(3600);
    /// let batch = [
    ///     ClaimRequest::new("order-7", hour).with_outcome(b"shipped"),
    ///     ClaimRequest::new("evt_1", 24 * hour),
    ///     ClaimRequest::new("order-7", hour).with_outcome(b"again"),
    /// ];
    /// let answers = store.claim_batch(&batch)?;
    /// assert!(answers[0].is_new() && answers[1].is_new());
    /// match &answers[2] {
    ///     Claim::Duplicate(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"shipped"[..])),
    ///     Claim::New => unreachable!("the batch claimed the key before"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Every request is checked first (its key, TTL and outcome, as `claim_with_outcome`
    /// checks them); one that fails fails the call before anything is claimed. Otherwise
    /// it fails, and holds stripes, as `claim_many` does.
    pub fn claim_batch(&self, requests: &[ClaimRequest<'_>]) -> Result<Vec<Claim>> {
        let (answers, wait) = self.claim_batch_now(requests)?;
        self.engine.settle(wait)?;
        Ok(answers)
    }

    /// `claim_batch` up to the wait for durability.
    pub(crate) fn claim_batch_now(
        &self,
        requests: &[ClaimRequest<'_>],
    ) -> Result<(Vec<Claim>, u64)> {
        let now = self.engine.now();
        let mut items = Vec::with_capacity(requests.len());
        for r in requests {
            check_key(r.key)?;
            if r.outcome.len() > MAX_OUTCOME_LEN {
                return Err(Error::OutcomeTooLarge {
                    len: r.outcome.len(),
                    max: MAX_OUTCOME_LEN,
                });
            }
            items.push(Item {
                key: r.key,
                outcome: r.outcome,
                expires: expiry(now, r.ttl)?,
            });
        }
        self.claim_items(&items, now)
    }

    /// Claims checked items at `now`, in one append: the answers, and the lsn to settle
    /// before giving them.
    fn claim_items(&self, items: &[Item<'_>], now: u64) -> Result<(Vec<Claim>, u64)> {
        let engine = &*self.engine;
        if items.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let key = |i: usize| items.get(i).map_or(&[][..], |it| it.key);
        let hashes: Vec<u64> = items.iter().map(|it| engine.hash(it.key)).collect();
        let hash = |i: usize| hashes.get(i).copied().unwrap_or(0);
        let mut stripes = engine.lock_all(&hashes);
        // Each key's first index slot is a cache miss: ask for all of them before the
        // lookups, so that the misses overlap instead of following one another.
        for &h in &hashes {
            if let Some(stripe) = stripes.get(h) {
                stripe.prefetch(h);
            }
        }

        let mut wait = 0u64;
        let mut answers: Vec<Option<Claim>> = vec![None; items.len()];
        // Keys answered New in this batch, to answer their repeats within it.
        let mut fresh: HashTable<usize> = HashTable::new();
        let mut repeats: Vec<usize> = Vec::new();
        // Duplicates, counted once the batch is written (a failed append answers nothing).
        let mut duplicates: Vec<usize> = Vec::new();
        let mut to_write: Vec<(usize, Option<Memory>)> = Vec::new();
        for (i, answer) in answers.iter_mut().enumerate() {
            let Some(stripe) = stripes.get(hash(i)) else {
                continue;
            };
            if fresh.find(hash(i), |&j| key(j) == key(i)).is_some() {
                repeats.push(i);
                continue;
            }
            match Status::of(engine.find(stripe, key(i), hash(i)), now) {
                Status::Held { current, state } => {
                    wait = wait.max(current.end);
                    duplicates.push(i);
                    *answer = Some(Claim::Duplicate(current.seen(state.as_ref())));
                }
                Status::Free(memory) => {
                    fresh.insert_unique(hash(i), i, |&j| hash(j));
                    to_write.push((i, memory));
                }
            }
        }
        let mut values: Vec<Vec<u8>> = vec![Vec::new(); to_write.len()];
        let chain = || engine.chain_start();
        let specs: Vec<RecordSpec<'_>> = to_write
            .iter()
            .zip(values.iter_mut())
            .map(|(&(i, memory), value)| {
                let it = &items[i];
                claim_spec(it.key, it.outcome, memory, now, it.expires, chain, value)
            })
            .collect();
        let mut written: Vec<Appended> = Vec::with_capacity(specs.len());
        engine.append_all(&specs, |_, a| written.push(a))?;
        for ((&(i, _), &at), spec) in to_write.iter().zip(&written).zip(&specs) {
            let Some(stripe) = stripes.get(hash(i)) else {
                continue;
            };
            let place = engine.place_of(stripe, spec.key, hash(i));
            let replaced = engine.point(place, hash(i), at, spec);
            let c = &mut stripe.counters;
            c.new += 1;
            c.expired_reclaimed += u64::from(replaced);
            wait = wait.max(at.lsn_end);
            answers[i] = Some(Claim::New);
        }
        // A repeat gets what a claim made after the batch's first one would: that one's
        // record, now in the index (and held: it expires after `now`).
        for &i in &repeats {
            let Some(stripe) = stripes.get(hash(i)) else {
                continue;
            };
            let seen = match Status::of(engine.find(stripe, key(i), hash(i)), now) {
                Status::Held { current, state } => current.seen(state.as_ref()),
                Status::Free(_) => {
                    debug_assert!(false, "a key claimed in this batch is not held");
                    Seen::claimed(now, items[i].expires)
                }
            };
            answers[i] = Some(Claim::Duplicate(seen));
        }
        for i in duplicates.into_iter().chain(repeats) {
            if let Some(stripe) = stripes.get(hash(i)) {
                stripe.counters.duplicates += 1;
            }
        }
        drop(stripes);
        let answers = answers
            .into_iter()
            .map(|a| a.unwrap_or(Claim::New))
            .collect();
        Ok((answers, wait))
    }

    /// What the store knows about `key`, without claiming it: `None` if it is not claimed
    /// (never was, expired, or removed).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Seen>> {
        let (seen, wait) = self.get_now(key.as_ref())?;
        self.engine.settle(wait)?;
        Ok(seen)
    }

    /// `get` up to the wait for durability: the answer, and the lsn to settle before giving
    /// it (0 when the key is free).
    pub(crate) fn get_now(&self, key: &[u8]) -> Result<(Option<Seen>, u64)> {
        check_key(key)?;
        let engine = &*self.engine;
        engine.check_poison()?;
        let now = engine.now();
        let hash = engine.hash(key);
        let found = {
            let stripe = engine.lock(hash);
            match Status::of(engine.find(&stripe, key, hash), now) {
                Status::Held { current, state } => {
                    Some((current.seen(state.as_ref()), current.end))
                }
                Status::Free(_) => None,
            }
        };
        Ok(match found {
            Some((seen, end)) => (Some(seen), end),
            None => (None, 0),
        })
    }

    /// Forgets `key` so that it can be claimed again; `true` if it was claimed, completed or
    /// in flight (a lease's ticket is then stale). The removal is durable as the store's
    /// [`Durability`] says, and is never undone by a restart. It also forgets the key's past
    /// attempts.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let (held, wait) = self.remove_now(key.as_ref())?;
        self.engine.settle(wait)?;
        Ok(held)
    }

    /// `remove` up to the wait for durability: the answer, and the lsn to settle before
    /// giving it (0 if nothing was written).
    pub(crate) fn remove_now(&self, key: &[u8]) -> Result<(bool, u64)> {
        check_key(key)?;
        let engine = &*self.engine;
        let now = engine.now();
        let hash = engine.hash(key);
        let (wait, held) = {
            let mut stripe = engine.lock(hash);
            let (place, current) = engine.find_place(&mut stripe, key, hash);
            let Some(current) = current else {
                return Ok((false, 0));
            };
            let h = current.header;
            if h.expires <= now {
                // Already expired: recovery would not bring it back either.
                if let Some(old) = place.take() {
                    engine.retire(&old);
                }
                stripe.give_back_if_empty();
                return Ok((false, 0));
            }
            let held = matches!(Status::of(Some(current), now), Status::Held { .. });
            // The tombstone hides the record until that record's own `expires`, and only
            // as long as a segment that may hold it is left.
            let hides = engine.hidden_by_remove(place.entry(), &current).encode();
            let a = engine.append(RecordSpec::remove(key, now, h.expires, &hides))?;
            if let Some(old) = place.take() {
                engine.retire(&old);
            }
            stripe.give_back_if_empty();
            stripe.counters.removes += u64::from(held);
            (a.lsn_end, held)
        };
        Ok((held, wait))
    }

    /// Makes everything acknowledged so far durable, whatever the store's [`Durability`].
    pub fn sync(&self) -> Result<()> {
        self.engine.sync()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        Stats::collect(&self.engine, &self.maint, &self.recovery)
    }

    /// Runs maintenance now, in the calling thread, and reports what it did: sweeps expired
    /// entries out of the index, deletes segments nothing needs any more, compacts segments
    /// whose kept bytes fell below `Options::compaction_threshold`, and writes missing hint
    /// files. Claims keep running meanwhile; a background run in progress is waited for.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oncelog::{ManualClock, Options};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let clock = ManualClock::new(std::time::SystemTime::now());
    /// let store = Options::new().clock(clock.clone()).segment_size(64 << 10).open(dir.path())?;
    /// for i in 0..5000 {
    ///     let _ = store.claim(format!("evt_{i}"), Duration::from_secs(60))?;
    /// }
    /// clock.advance(Duration::from_secs(61));
    /// let report = store.compact()?;
    /// assert_eq!(report.entries_swept, 5000);
    /// assert!(report.segments_deleted > 0);
    /// assert_eq!(store.stats().live_keys, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<CompactionReport> {
        self.maint.run(&self.engine)
    }

    /// Where a [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage) open found damage,
    /// in the order it was found: the first [`MAX_SALVAGED_PLACES`](crate::MAX_SALVAGED_PLACES)
    /// places, each with the segment file, the offset in that file as it was before the
    /// rewrite, and what was wrong there ([`CorruptionKind::Unsealed`](crate::CorruptionKind)
    /// for a missing seal, written anew; `Truncated` for a sealed segment cut short; the
    /// decoding error of the first bytes of a damaged region otherwise). Empty in the
    /// other modes and for an undamaged directory. All places are counted in
    /// [`Stats::recovery_salvaged_places`].
    pub fn salvaged(&self) -> &[crate::error::Corruption] {
        &self.recovery.salvaged.first
    }

    /// The directory this store owns.
    pub fn path(&self) -> &Path {
        self.engine.dir()
    }

    /// Syncs everything, stops background work and releases the directory. Dropping the
    /// store does the same, ignoring errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if let Some(m) = self.maintainer.take() {
            if !m.stop() {
                return Err(self.engine.poison("maintenance thread panicked".into()));
            }
        }
        if let Some(f) = self.flusher.take() {
            if !f.stop() {
                return Err(self.engine.poison("background flusher panicked".into()));
            }
        }
        self.engine.check_poison()?;
        self.engine.sync()
    }

    /// The engine, for the other doors onto it (the lease operations).
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The single-key claim, under the key's stripe lock: the answer, and the lsn to settle.
fn claim_locked(
    engine: &Engine,
    stripe: &mut Stripe,
    key: &[u8],
    outcome: &[u8],
    hash: u64,
    now: u64,
    expires: u64,
) -> Result<(Claim, u64)> {
    let (place, current) = engine.find_place(stripe, key, hash);
    let memory = match Status::of(current, now) {
        Status::Held { current, state } => {
            stripe.counters.duplicates += 1;
            return Ok((Claim::Duplicate(current.seen(state.as_ref())), current.end));
        }
        Status::Free(memory) => memory,
    };
    let mut value = Vec::new();
    let chain = || engine.chain_start();
    let spec = claim_spec(key, outcome, memory, now, expires, chain, &mut value);
    let w = engine.write(place, hash, &spec)?;
    stripe.counters.new += 1;
    stripe.counters.expired_reclaimed += u64::from(w.replaced);
    Ok((Claim::New, w.lsn_end))
}

/// A claim of a key that is free: a plain claim record; or a done record, if the claim
/// carries an outcome or the key remembers past attempts (a done record keeps that memory's
/// attempt, first sighting and `expires`: retention is monotone, see `lease`; and it
/// continues that memory's chain, or begins one in segment `chain_start()`). `value`
/// holds the done record's value.
fn claim_spec<'a>(
    key: &'a [u8],
    outcome: &[u8],
    memory: Option<Memory>,
    now: u64,
    expires: u64,
    chain_start: impl FnOnce() -> u64,
    value: &'a mut Vec<u8>,
) -> RecordSpec<'a> {
    if memory.is_none() && outcome.is_empty() {
        return RecordSpec::plain(RecordKind::Claim, key, now, expires);
    }
    encode_state(
        value,
        &StateValue {
            token: 0,
            until: expires,
            fingerprint: &[],
            outcome,
            chain: memory.map_or_else(chain_start, |m| m.chain),
        },
    );
    let (attempt, first_seen, keep) =
        memory.map_or((1, now, 0), |m| (m.next_attempt, m.first_seen, m.keep));
    RecordSpec {
        kind: RecordKind::Done,
        key,
        value,
        attempt,
        time: first_seen,
        expires: expires.max(keep),
    }
}

/// A background thread (flusher or maintenance) and the flag that stops it.
struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Background {
    /// Runs `round` every `interval` until stopped; `round` returns `false` to stop early.
    fn spawn(
        dir: &Path,
        name: &str,
        interval: Duration,
        mut round: impl FnMut() -> bool + Send + 'static,
    ) -> Result<Background> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let (flag, cv) = &*thread_stop;
                loop {
                    {
                        let mut stopped = flag.lock();
                        if !*stopped {
                            cv.wait_for(&mut stopped, interval);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    if !round() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("spawn background thread", dir, e))?;
        Ok(Background { stop, handle })
    }

    /// Stops the thread and waits for it; `false` if it panicked.
    fn stop(self) -> bool {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        self.handle.join().is_ok()
    }
}

/// One background maintenance round. A panic poisons the store, so that callers learn
/// of it instead of the store silently never expiring anything again; the thread stops.
fn maintenance_round(engine: &Engine, maint: &Maintenance) -> bool {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maint.run(engine)));
    match run {
        Ok(Ok(_)) => true,
        // Counted in `Stats::maintenance_errors`; a poisoned store ends the thread.
        Ok(Err(_)) => !engine.is_poisoned(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            engine.poison(format!("maintenance thread panicked: {what}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iohook::{IoHook, IoOp};
    use crate::options::MIN_SEGMENT_SIZE;
    use crate::testing::{wait_until, Gate};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    /// Faults for the tests below, through the store's one fault-injection door: fails
    /// every data sync of a segment while `fail_syncs` is set, holds each one while `gate`
    /// is closed, and panics in the maintenance thread while `panic_in_maintenance` is set.
    #[derive(Default)]
    struct Faults {
        fail_syncs: AtomicBool,
        gate: Gate,
        panic_in_maintenance: AtomicBool,
    }

    impl IoHook for Faults {
        fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
            if self.panic_in_maintenance.load(Ordering::SeqCst)
                && std::thread::current().name() == Some("oncelog-maintain")
            {
                panic!("injected maintenance panic");
            }
            // Data syncs of the log's segments; a new segment's header sync (under its
            // temporary name) is left alone.
            let data_sync = matches!(op, IoOp::SyncRange { path, .. }
                if path.extension().is_some_and(|e| e == "olog"));
            if !data_sync {
                return Ok(());
            }
            self.gate.pass();
            if self.fail_syncs.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }

    fn faulty(opts: Options, dir: &Path) -> (Store, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let store = opts.io_hook(faults.clone()).open(dir).unwrap();
        (store, faults)
    }

    /// Durable before visible, end to end. How many syncs claims share is checked more
    /// closely in `log::commit`, where a sync can be held before it reads the tail.
    #[test]
    fn duplicate_waits_for_the_first_claims_sync_and_claimers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, faults) = faulty(Options::new().durability(Durability::Sync), dir.path());
        let store = Arc::new(store);
        let ttl = Duration::from_secs(60);
        let (entered, key) = faults.gate.close();
        let syncs_before = store.stats().syncs;

        let s = Arc::clone(&store);
        let first = std::thread::spawn(move || s.claim("k", ttl).unwrap());
        entered.recv().unwrap(); // the first claim's sync is in progress, and held

        // A second claimer of the same key must not be told Duplicate yet: the record it
        // would be based on is not durable.
        let (dup_tx, dup_rx) = mpsc::channel();
        let s = Arc::clone(&store);
        let second = std::thread::spawn(move || {
            let answer = s.claim("k", ttl).unwrap();
            dup_tx.send(()).unwrap();
            answer
        });
        // Three more claimers of other keys append and queue behind the held sync.
        let others: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|k| {
                let s = Arc::clone(&store);
                std::thread::spawn(move || s.claim(k, ttl).unwrap())
            })
            .collect();
        wait_until(|| {
            let st = store.stats();
            st.new == 4 && st.duplicates == 1
        });
        // Must not happen while the sync is held; a correct store never answers here, so
        // this bounded wait times out (a buggy one would answer within microseconds).
        assert!(
            dup_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "Duplicate was answered before the record it is based on was durable"
        );
        faults.gate.open(key);

        assert_eq!(first.join().unwrap(), Claim::New);
        assert!(matches!(second.join().unwrap(), Claim::Duplicate(_)));
        for t in others {
            assert_eq!(t.join().unwrap(), Claim::New);
        }
        // The first sync covered "k"; at most one more ran beside it while it was held,
        // and one after: four claims, fewer syncs.
        let syncs = store.stats().syncs - syncs_before;
        assert!((1..=3).contains(&syncs), "{syncs} syncs for 4 claims");
    }

    #[test]
    fn a_panic_in_background_maintenance_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, faults) = faulty(
            Options::new()
                .durability(Durability::Buffered)
                .segment_size(MIN_SEGMENT_SIZE)
                .maintenance_interval(Duration::from_millis(1)),
            dir.path(),
        );
        let ttl = Duration::from_secs(60);
        assert!(store.claim("before", ttl).unwrap().is_new());
        faults.panic_in_maintenance.store(true, Ordering::SeqCst);
        // Enough claims to seal a segment: maintenance then writes its hint, and panics at
        // the first file operation.
        for i in 0..2_000 {
            assert!(store.claim(format!("k{i:05}"), ttl).unwrap().is_new());
        }
        wait_until(|| store.stats().poisoned);
        match store.claim("after", ttl) {
            Err(Error::Poisoned { reason }) => {
                assert!(reason.contains("maintenance thread panicked"), "{reason}");
                assert!(reason.contains("injected maintenance panic"), "{reason}");
            }
            other => panic!("claim after the maintenance panic: {other:?}"),
        }
        assert!(matches!(store.close(), Err(Error::Poisoned { .. })));
        // Reopening works, and what was acknowledged before is there.
        let store = Options::new().open(dir.path()).unwrap();
        assert!(!store.claim("before", ttl).unwrap().is_new());
    }

    #[test]
    fn buffered_claims_do_not_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Options::new()
            .durability(Durability::Buffered)
            .open(dir.path())
            .unwrap();
        let before = store.stats().syncs;
        for i in 0..100 {
            assert!(store
                .claim(format!("k{i}"), Duration::from_secs(9))
                .unwrap()
                .is_new());
        }
        assert_eq!(store.stats().syncs, before);
        store.sync().unwrap();
        assert_eq!(store.stats().syncs, before + 1);
    }

    #[test]
    fn a_failed_sync_poisons_the_store_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(60);
        let (store, faults) = faulty(Options::new(), dir.path());
        assert!(store.claim("before", ttl).unwrap().is_new());
        faults.fail_syncs.store(true, Ordering::SeqCst);
        // The claim whose sync failed is not acknowledged: the caller gets the I/O error.
        match store.claim("k", ttl) {
            Err(Error::Io { op, source, .. }) => {
                assert_eq!(op, "sync segment");
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("claim during a failing sync: {other:?}"),
        }
        // From now on the store refuses work, even once syncs would succeed again: the
        // kernel may have dropped the pages that failed to write.
        faults.fail_syncs.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.claim("k2", ttl),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            store.claim_many(&["k3"], ttl),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            store.remove("before"),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(store.get("before"), Err(Error::Poisoned { .. })));
        assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
        let e = store.claim("k2", ttl).unwrap_err();
        assert!(e.to_string().contains("reopen"), "{e}");
        assert!(store.stats().poisoned);
        assert!(matches!(store.close(), Err(Error::Poisoned { .. })));
        // Reopening re-reads what is on disk and works normally.
        let store = Options::new().open(dir.path()).unwrap();
        assert!(!store.stats().poisoned);
        assert!(!store.claim("before", ttl).unwrap().is_new());
        assert!(store.claim("k2", ttl).unwrap().is_new());
        store.close().unwrap();
    }

    #[test]
    fn a_failed_sync_during_rotation_poisons_too() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(60);
        let (store, faults) = faulty(
            Options::new()
                .durability(Durability::Buffered)
                .segment_size(MIN_SEGMENT_SIZE),
            dir.path(),
        );
        faults.fail_syncs.store(true, Ordering::SeqCst);
        // Buffered claims do not sync, until one needs a new segment and the old one is
        // sealed and synced. That happens beside the appenders: the claims that come after
        // the failure see it.
        let mut failed = None;
        for i in 0..10_000 {
            if let Err(e) = store.claim(format!("key-{i:05}"), ttl) {
                failed = Some((i, e));
                break;
            }
        }
        let (i, e) = failed.expect("rotation never synced");
        assert!(i > 100, "failed at claim {i}, before the segment was full");
        let said = match &e {
            Error::Poisoned { reason } => reason.clone(),
            Error::Io { op, .. } => op.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(said.contains("sync sealed segment"), "{e:?}");
        faults.fail_syncs.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.claim("next", ttl),
            Err(Error::Poisoned { .. })
        ));
        drop(store);
        let store = Options::new().open(dir.path()).unwrap();
        for j in 0..i {
            assert!(
                store.get(format!("key-{j:05}")).unwrap().is_some(),
                "key {j}"
            );
        }
    }

    /// Found by tests/torture.rs: with one descriptor per segment, a store of ~20k segments
    /// ran out of them (EMFILE) while syncing the directory during a rotation, and the error
    /// said only "fsync directory <dir>": the cause was lost on the way to the poison reason.
    #[test]
    fn a_failed_directory_sync_during_rotation_reports_its_cause() {
        struct FailDirSyncs(std::sync::atomic::AtomicBool);
        impl IoHook for FailDirSyncs {
            fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
                if matches!(op, IoOp::SyncDir { .. }) && self.0.load(Ordering::SeqCst) {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailDirSyncs(std::sync::atomic::AtomicBool::new(false)));
        let store = Options::new()
            .durability(Durability::Buffered)
            .segment_size(MIN_SEGMENT_SIZE)
            .background_maintenance(false)
            .io_hook(hook.clone())
            .open(dir.path())
            .unwrap();
        hook.0.store(true, Ordering::SeqCst);
        let ttl = Duration::from_secs(60);
        // Buffered claims touch no directory until one needs a new segment; the rotation's
        // seal job syncs it beside the appenders, and the claims after see its failure.
        let (i, e) = (0..10_000)
            .find_map(|i| {
                store
                    .claim(format!("key-{i:05}"), ttl)
                    .err()
                    .map(|e| (i, e))
            })
            .expect("no rotation happened");
        assert!(i > 100, "failed at claim {i}, before the segment was full");
        let cause = std::io::Error::from_raw_os_error(libc::EMFILE).to_string();
        match &e {
            Error::Io { op, source, .. } => {
                assert_eq!(*op, "fsync directory");
                assert_eq!(source.raw_os_error(), Some(libc::EMFILE));
            }
            Error::Poisoned { reason } => {
                assert!(reason.contains("fsync directory"), "{reason}");
                assert!(reason.contains(&cause), "{reason}");
            }
            other => panic!("the first claim refused: {other:?}"),
        }
        match store.claim("next", ttl) {
            Err(Error::Poisoned { reason }) => {
                assert!(reason.contains("fsync directory"), "{reason}");
                assert!(reason.contains(&cause), "{reason}");
            }
            other => panic!("the claim after: {other:?}"),
        }
    }

    #[test]
    fn open_syncs_the_newest_segment_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Options::new()
            .durability(Durability::Buffered)
            .open(dir.path())
            .unwrap();
        assert!(store.recovery.synced, "a new store");
        assert!(store.claim("k", Duration::from_secs(60)).unwrap().is_new());
        store.close().unwrap();
        let store = Options::new().open(dir.path()).unwrap();
        assert!(store.recovery.synced, "a reopened store");
    }

    #[test]
    fn periodic_durability_syncs_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = Options::new()
            .durability(Durability::Periodic(Duration::from_millis(5)))
            .open(dir.path())
            .unwrap();
        let before = store.stats().syncs;
        // Returns without syncing: the record is only in the page cache.
        assert!(store.claim("k", Duration::from_secs(9)).unwrap().is_new());
        let tail = store.engine.log().tail_lsn();
        // The flusher makes it durable on its own (bounded wait for its next round).
        wait_until(|| store.stats().syncs > before);
        assert!(store.engine.log().durable_lsn() >= tail);
        store.close().unwrap();
    }
}
