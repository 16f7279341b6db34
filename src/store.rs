//! The `Store`: public operations, wiring the index, the log and the clock together.
//!
//! Invariants (DESIGN.md numbers them):
//!
//! 1. Exactly once: a key's lookup, the append of its record and the update of its entry
//!    happen under the key's stripe lock, so two claimers of one key are serialized and the
//!    second sees the first's entry.
//! 2. No false duplicates: entries match on hash bits and then on the key bytes in the log.
//! 3. Acknowledged means kept: under `Sync`, `claim` returns `New` only after its record is
//!    durable, and `Duplicate` only after the record it is based on is durable (durable
//!    before visible).
//! 4. No resurrection: `remove` appends a remove record before dropping the entry; recovery
//!    replays it. Expired claims are not replayed.
//! 5. Bad input is an error: keys and TTLs are checked before anything is touched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hashbrown::HashTable;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::clock::{from_millis, to_millis, Clock};
use crate::error::{Error, Result};
use crate::format::{encode_state, encoded_len, RecordHeader, RecordKind, StateValue, MAX_KEY_LEN};
use crate::index::{Counters, Entry, Index, Slot, Stripe, SWEEP_SLICE};
use crate::lease::{classify, find_current, KeyStatus, Memory};
use crate::log::{Appended, Log, RecordSpec, SegmentTable};
use crate::maintain::{self, CompactionReport, MaintConfig, Maintenance};
use crate::options::{Durability, Options};
use crate::recovery::{self, RecoveryStats};

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

/// What the store knows about a claimed key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Seen {
    /// When the key was claimed, or when its first attempt began (the clock's time).
    pub first_seen: SystemTime,
    /// When the key may be claimed anew: the claim's or the outcome's expiry, or, while
    /// the key is in flight, its lease's deadline.
    pub expires_at: SystemTime,
    /// The outcome stored by [`Store::complete`], if any (an empty outcome reads as
    /// `None`, as does a key done by [`Store::claim`]).
    pub outcome: Option<Bytes>,
    /// The attempt that claimed, holds or completed the key: 1 for a key done by `claim`,
    /// and for a first attempt; one more for each earlier attempt whose lease ran out or
    /// was abandoned.
    pub attempt: u32,
    /// Whether the key is done or still being worked on.
    pub state: KeyState,
}

/// Where a key [`Seen`] by the store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Done by [`Store::claim`].
    Claimed,
    /// Held by an attempt of [`Store::begin`] whose lease has not run out.
    InFlight,
    /// Done by [`Store::complete`], with its outcome.
    Completed,
}

impl Seen {
    /// What a key's newest record says, if it still holds the key (`until > now`).
    pub(crate) fn from_record(h: &RecordHeader, state: Option<&StateValue<'_>>) -> Seen {
        let (kind, until) = match (h.kind, state) {
            (RecordKind::Lease, Some(s)) => (KeyState::InFlight, s.until),
            // A done record without token was written by `claim` (of a key with past
            // attempts), not by `complete`.
            (RecordKind::Done, Some(s)) if s.token == 0 => (KeyState::Claimed, s.until),
            (RecordKind::Done, Some(s)) => (KeyState::Completed, s.until),
            _ => (KeyState::Claimed, h.expires),
        };
        Seen {
            first_seen: from_millis(h.time),
            expires_at: from_millis(until),
            outcome: state
                .filter(|s| !s.outcome.is_empty())
                .map(|s| Bytes::copy_from_slice(s.outcome)),
            attempt: h.attempt.max(1),
            state: kind,
        }
    }

    fn claimed(time: u64, expires: u64) -> Seen {
        Seen {
            first_seen: from_millis(time),
            expires_at: from_millis(expires),
            outcome: None,
            attempt: 1,
            state: KeyState::Claimed,
        }
    }
}

/// Counters and sizes, from [`Store::stats`]. Counters count since `open`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys in the index (live, or expired and not yet reclaimed).
    pub keys: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes of segment files on disk (segments are allocated in full when created).
    pub disk_bytes: u64,
    /// Heap bytes held by the index tables.
    pub index_bytes: u64,
    /// Claim answers given (`new + duplicates`), counting each key of `claim_many`.
    pub claims: u64,
    /// Claims answered `New`.
    pub new: u64,
    /// Claims answered `Duplicate`.
    pub duplicates: u64,
    /// `New` claims that replaced an expired entry of the same key.
    pub expired: u64,
    /// Keys removed by `remove` (that were held).
    pub removes: u64,
    /// Leases acquired by `begin`.
    pub acquired: u64,
    /// Attempts completed by `complete`.
    pub completed: u64,
    /// Attempts abandoned by `abandon`.
    pub abandoned: u64,
    /// Leases extended by `extend`.
    pub extended: u64,
    /// Syncs (fsync-equivalents) of segment data since open.
    pub syncs: u64,
    /// Records replayed when the store opened.
    pub recovered_records: u64,
    /// Bytes of a torn tail cut from the newest segment when the store opened (0 after a
    /// clean shutdown).
    pub recovery_truncated_bytes: u64,
    /// How long `open` took to rebuild the index.
    pub recovery_time: Duration,
    /// Segments that `open` rebuilt from their hint files instead of reading them.
    pub recovery_hinted_segments: u64,
    /// Bytes that a [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage) open dropped
    /// because they did not decode: damaged segment headers, damaged records and the bytes
    /// around them up to the next record that decodes, garbage after a seal. 0 in the other
    /// modes, and when there was nothing to drop.
    pub recovery_salvaged_bytes: u64,
    /// Damaged places that a `Salvage` open skipped or mended: damaged headers, damaged
    /// regions, missing seals, garbage after a seal, sealed segments cut short. The first
    /// few are listed by [`Store::salvaged`].
    pub recovery_salvaged_places: u64,
    /// Segments that a `Salvage` open rewrote without their damage.
    pub recovery_salvaged_segments: u64,
    /// The store refuses writes after a failed sync, or after its maintenance thread
    /// panicked; reopen it.
    pub poisoned: bool,
    /// Keys claimed and not expired (`keys - expired_unswept`).
    pub live_keys: u64,
    /// Entries whose claim has expired but that maintenance has not yet swept out of the
    /// index (they already answer as absent). Counting them walks the index.
    pub expired_unswept: u64,
    /// Bytes of records that must be kept: claims the index points at, and removes whose
    /// hidden claim has not yet expired. `disk_bytes` minus this is what maintenance can
    /// still reclaim (plus the unused room of the active segment).
    pub live_bytes: u64,
    /// Maintenance runs since open (background and [`Store::compact`]).
    pub maintenance_runs: u64,
    /// Maintenance runs that failed (an I/O error, say); the next run tries again.
    pub maintenance_errors: u64,
    /// Expired entries swept out of the index by maintenance.
    pub entries_swept: u64,
    /// Segments rewritten by compaction.
    pub compactions: u64,
    /// Segments deleted because nothing in them was needed any more.
    pub segments_deleted: u64,
    /// Disk bytes freed by deletion and compaction.
    pub bytes_reclaimed: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    durability: Durability,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hasher: fn(&[u8]) -> u64,
    /// Hints store hashes of the default hasher; with another one they are neither read
    /// nor written.
    pub(crate) default_hasher: bool,
    pub(crate) index: Index,
    pub(crate) log: Log,
    recovery: RecoveryStats,
    pub(crate) maint: Maintenance,
    pub(crate) maint_config: MaintConfig,
    /// `Options::attempt_memory`, ms.
    pub(crate) attempt_memory_ms: u64,
    /// Seed and counter of lease tokens (see `new_token`).
    token_seed: u64,
    tokens: std::sync::atomic::AtomicU64,
    /// Test failpoint: the next maintenance run panics.
    #[cfg(test)]
    pub(crate) panic_in_maintenance: std::sync::atomic::AtomicBool,
    _lock: File,
}

impl Inner {
    /// A fresh lease token: never 0, and unique among this store's leases with
    /// overwhelming probability (a random seed per open, mixed with a counter).
    pub(crate) fn new_token(&self) -> u64 {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        let t = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.token_seed);
        t.max(1)
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
        inner: &Arc<Inner>,
        name: &str,
        interval: Duration,
        mut round: impl FnMut(&Inner) -> bool + Send + 'static,
    ) -> Result<Background> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let thread_inner = Arc::clone(inner);
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
                    if !round(&thread_inner) {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("spawn background thread", &inner.dir, e))?;
        Ok(Background { stop, handle })
    }

    /// Stops the thread and waits for it; `false` if it panicked.
    fn stop(self) -> bool {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        self.handle.join().is_ok()
    }
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
    inner: Arc<Inner>,
    flusher: Option<Background>,
    maintainer: Option<Background>,
    closed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

/// Latest expiry accepted: the last millisecond of year 9999.
const MAX_EXPIRES_MS: u64 = 253_402_300_799_999;

impl Store {
    /// Opens (creating if needed) the store in `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Options::new().open(dir)
    }

    pub(crate) fn open_with(opts: Options, dir: &Path) -> Result<Store> {
        let lock = crate::fs::lock_dir(&opts.io, dir)?;
        let index = Index::new(opts.stripes);
        let now = to_millis(opts.clock.now());
        let (log, recovery) = recovery::recover(dir, &opts, &index, now)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            durability: opts.durability,
            clock: Arc::clone(&opts.clock),
            hasher: opts.hasher,
            default_hasher: opts.default_hasher,
            index,
            log,
            recovery,
            maint: Maintenance::default(),
            attempt_memory_ms: u64::try_from(opts.attempt_memory.as_millis()).unwrap_or(u64::MAX),
            token_seed: recovery::random_u64(),
            tokens: std::sync::atomic::AtomicU64::new(0),
            maint_config: MaintConfig {
                threshold: opts.compaction_threshold,
                hints: opts.hints,
            },
            #[cfg(test)]
            panic_in_maintenance: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        });
        let mut store = Store {
            inner,
            flusher: None,
            maintainer: None,
            closed: false,
        };
        if let Durability::Periodic(interval) = opts.durability {
            // A failed sync poisons the log; callers see it on their next write.
            store.flusher = Some(Background::spawn(
                &store.inner,
                "oncelog-flush",
                interval,
                |inner| inner.log.sync().is_ok(),
            )?);
        }
        if opts.background_maintenance {
            store.maintainer = Some(Background::spawn(
                &store.inner,
                "oncelog-maintain",
                opts.maintenance_interval,
                maintenance_round,
            )?);
        }
        Ok(store)
    }

    /// Claims `key` for `ttl`: [`Claim::New`] exactly once per key per TTL window, across
    /// threads, crashes and restarts; [`Claim::Duplicate`] otherwise.
    ///
    /// Keys are 1 to [`MAX_KEY_LEN`] bytes, any bytes (a key is its bytes: no encoding,
    /// no normalisation). The TTL must be at least 1 ms (it is rounded up to whole
    /// milliseconds), and the expiry, now plus the TTL, at most the last millisecond of year
    /// 9999; otherwise the call fails with [`Error::InvalidTtl`] before the key is looked
    /// up, even if the key is claimed. Under [`Durability::Sync`] the call returns once the
    /// claim is on stable storage.
    ///
    /// If it returns an error, nothing was claimed — except after a failed sync (the store is
    /// then poisoned), when the record may or may not have reached the disk: reopen and ask
    /// again.
    pub fn claim(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Claim> {
        let key = key.as_ref();
        check_key(key)?;
        let (now, expires) = self.window(ttl)?;
        let inner = &*self.inner;
        let hash = (inner.hasher)(key);
        let mut wait = 0u64;
        let answer = {
            let mut stripe = inner.index.lock(hash);
            claim_locked(inner, &mut stripe, key, hash, now, expires, &mut wait)?
        };
        self.settle(wait)?;
        Ok(answer)
    }

    /// Claims many keys with one durable write: the answers are in the order of `keys`, as
    /// if each key were claimed in turn (a key repeated in `keys` is `New` at most once).
    ///
    /// All keys are validated first; an invalid one fails the call before anything is
    /// claimed. The batch's records are appended as one unit, so an I/O error such as a full
    /// disk also leaves every key unclaimed (a failed sync poisons the store, as for
    /// [`claim`](Store::claim)). While the batch runs it holds the index stripes of its keys.
    pub fn claim_many<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<Vec<Claim>> {
        for k in keys {
            check_key(k.as_ref())?;
        }
        let (now, expires) = self.window(ttl)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &*self.inner;
        let hashes: Vec<u64> = keys.iter().map(|k| (inner.hasher)(k.as_ref())).collect();
        let mut stripe_ids: Vec<usize> = hashes.iter().map(|&h| inner.index.stripe_of(h)).collect();
        stripe_ids.sort_unstable();
        stripe_ids.dedup();
        // Lock in increasing stripe order (the order every multi-stripe holder uses).
        let mut guards: Vec<MutexGuard<'_, Stripe>> = stripe_ids
            .iter()
            .map(|&i| inner.index.lock_stripe(i))
            .collect();
        let guard_of = |hash: u64| {
            stripe_ids
                .binary_search(&inner.index.stripe_of(hash))
                .unwrap_or(0)
        };

        let mut wait = 0u64;
        let mut answers: Vec<Option<Claim>> = vec![None; keys.len()];
        // Keys answered New in this batch, to answer their repeats within it.
        let mut fresh: HashTable<usize> = HashTable::new();
        let mut to_write: Vec<(usize, Option<Memory>)> = Vec::new();
        let table = &inner.log.table;
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let hash = hashes.get(i).copied().unwrap_or(0);
            let repeat = fresh
                .find(hash, |&j| keys.get(j).is_some_and(|k| k.as_ref() == key))
                .is_some();
            let Some(stripe) = guards.get_mut(guard_of(hash)) else {
                continue;
            };
            if repeat {
                stripe.counters.duplicates += 1;
                answers[i] = Some(Claim::Duplicate(Seen::claimed(now, expires)));
                continue;
            }
            match lookup(table, stripe, key, hash, now) {
                Found::Live(seen, lsn_end) => {
                    wait = wait.max(lsn_end);
                    stripe.counters.duplicates += 1;
                    answers[i] = Some(Claim::Duplicate(seen));
                }
                Found::Free(memory) => {
                    fresh.insert_unique(hash, i, |&j| hashes.get(j).copied().unwrap_or(0));
                    to_write.push((i, memory));
                }
            }
        }
        let mut values: Vec<Vec<u8>> = vec![Vec::new(); to_write.len()];
        let specs: Vec<RecordSpec<'_>> = to_write
            .iter()
            .zip(values.iter_mut())
            .filter_map(|(&(i, memory), value)| {
                let key = keys.get(i)?.as_ref();
                Some(claim_spec(key, memory, now, expires, value))
            })
            .collect();
        let mut written: Vec<Appended> = Vec::with_capacity(specs.len());
        inner.log.append_all(&specs, |_, a| written.push(a))?;
        for ((&(i, _), a), spec) in to_write.iter().zip(&written).zip(&specs) {
            let key = spec.key;
            let hash = hashes.get(i).copied().unwrap_or(0);
            let Some(stripe) = guards.get_mut(guard_of(hash)) else {
                continue;
            };
            let replaced = install(table, stripe, key, hash, *a, spec);
            let c = &mut stripe.counters;
            c.new += 1;
            c.expired_reclaimed += u64::from(replaced);
            wait = wait.max(a.lsn_end);
            answers[i] = Some(Claim::New);
        }
        drop(guards);
        self.settle(wait)?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Claim::New))
            .collect())
    }

    /// What the store knows about `key`, without claiming it: `None` if it is not claimed
    /// (never was, expired, or removed).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Seen>> {
        let key = key.as_ref();
        check_key(key)?;
        let inner = &*self.inner;
        inner.log.check_poison()?;
        let now = to_millis(inner.clock.now());
        let hash = (inner.hasher)(key);
        let found = {
            let mut stripe = inner.index.lock(hash);
            lookup(&inner.log.table, &mut stripe, key, hash, now)
        };
        match found {
            Found::Live(seen, lsn_end) => {
                self.settle(lsn_end)?;
                Ok(Some(seen))
            }
            Found::Free(_) => Ok(None),
        }
    }

    /// Forgets `key` so that it can be claimed again; `true` if it was claimed, completed or
    /// in flight (a lease's ticket is then stale). The removal is durable as the store's
    /// [`Durability`] says, and is never undone by a restart. It also forgets the key's past
    /// attempts.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let inner = &*self.inner;
        let now = to_millis(inner.clock.now());
        let hash = (inner.hasher)(key);
        let table = &inner.log.table;
        let (wait, held) = {
            let mut stripe = inner.index.lock(hash);
            let mut current = None;
            let slot = stripe.slot(hash, |e| match table.record_with_value(e.location()) {
                Some((h, k, v)) if k == key => {
                    current = Some((h, v));
                    true
                }
                _ => false,
            });
            let Slot::Occupied(entry) = slot else {
                return Ok(false);
            };
            let Some((h, v)) = current.filter(|(h, _)| h.expires > now) else {
                // Already expired: recovery would not bring it back either.
                table.retire(&entry.remove().0);
                return Ok(false);
            };
            let held = matches!(classify(&h, v, now), KeyStatus::Held(..));
            // The tombstone hides the record until that record's own `expires`.
            let a = inner
                .log
                .append(RecordSpec::plain(RecordKind::Remove, key, now, h.expires))?;
            table.retire(&entry.remove().0);
            stripe.counters.removes += u64::from(held);
            (a.lsn_end, held)
        };
        self.settle(wait)?;
        Ok(held)
    }

    /// Makes everything acknowledged so far durable, whatever the store's [`Durability`].
    pub fn sync(&self) -> Result<()> {
        self.inner.log.sync()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let mut s = Stats::default();
        let mut c = Counters::default();
        let mut keys = 0u64;
        let mut index_bytes = 0u64;
        let mut expired = 0u64;
        let now = to_millis(inner.clock.now());
        inner.index.for_each_stripe(|st| {
            keys += st.len() as u64;
            index_bytes += st.allocation_size() as u64;
            c.new += st.counters.new;
            c.duplicates += st.counters.duplicates;
            c.expired_reclaimed += st.counters.expired_reclaimed;
            c.removes += st.counters.removes;
            c.acquired += st.counters.acquired;
            c.completed += st.counters.completed;
            c.abandoned += st.counters.abandoned;
            c.extended += st.counters.extended;
        });
        // Counted one slice per lock hold, like a sweep: stats never stall claims for long.
        for i in 0..inner.index.stripes() {
            let mut at = Some(0);
            while let Some(start) = at {
                let (n, next) =
                    inner
                        .index
                        .lock_stripe(i)
                        .count_expired_slice(now, start, SWEEP_SLICE);
                expired += n as u64;
                at = next;
            }
        }
        s.keys = keys;
        s.index_bytes = index_bytes;
        s.segments = inner.log.table.len() as u64;
        s.disk_bytes = inner.log.table.disk_bytes();
        s.new = c.new;
        s.duplicates = c.duplicates;
        s.claims = c.new + c.duplicates;
        s.expired = c.expired_reclaimed;
        s.removes = c.removes;
        s.acquired = c.acquired;
        s.completed = c.completed;
        s.abandoned = c.abandoned;
        s.extended = c.extended;
        s.syncs = inner.log.syncs();
        s.recovered_records = inner.recovery.records;
        s.recovery_truncated_bytes = inner.recovery.truncated_bytes;
        s.recovery_time = inner.recovery.duration;
        s.recovery_hinted_segments = inner.recovery.hinted_segments;
        s.recovery_salvaged_bytes = inner.recovery.salvaged.bytes;
        s.recovery_salvaged_places = inner.recovery.salvaged.places;
        s.recovery_salvaged_segments = inner.recovery.salvaged.segments;
        s.poisoned = inner.log.is_poisoned();
        s.expired_unswept = expired;
        s.live_keys = keys.saturating_sub(expired);
        s.live_bytes = self.live_bytes(now);
        let m = &inner.maint;
        s.maintenance_runs = m.runs.load(Ordering::Relaxed);
        s.maintenance_errors = m.errors.load(Ordering::Relaxed);
        s.entries_swept = m.swept.load(Ordering::Relaxed);
        s.compactions = m.compactions.load(Ordering::Relaxed);
        s.segments_deleted = m.segments_deleted.load(Ordering::Relaxed);
        s.bytes_reclaimed = m.bytes_reclaimed.load(Ordering::Relaxed);
        s
    }

    /// Bytes of records that must be kept (see `Stats::live_bytes`).
    fn live_bytes(&self, now: u64) -> u64 {
        let tombs = |u: &crate::log::Usage, bytes: u64| {
            if u.tomb_max_expires.load(Ordering::Relaxed) > now {
                bytes
            } else {
                0
            }
        };
        let (active_totals, active) = self.inner.log.active_totals();
        let mut live = 0u64;
        for (_, seg) in self.inner.log.table.segments() {
            let u = &seg.usage;
            if seg.id == active.id {
                let dead = u.dead_bytes.load(Ordering::Relaxed);
                live += active_totals.claim_bytes.saturating_sub(dead);
                if active_totals.tomb_max_expires > now {
                    live += active_totals.tomb_bytes;
                }
            } else if u.is_sealed() {
                live += u.live_bytes() + tombs(u, u.tomb_bytes.load(Ordering::Relaxed));
            }
        }
        live
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
        maintain::run(&self.inner)
    }

    /// Where a [`RecoveryMode::Salvage`](crate::RecoveryMode::Salvage) open found damage,
    /// in the order it was found: the first [`MAX_SALVAGED_PLACES`](crate::MAX_SALVAGED_PLACES)
    /// places, each with the segment file, the offset in that file as it was before the
    /// rewrite, and what was wrong there ([`CorruptionKind::Unsealed`](crate::CorruptionKind)
    /// for a missing seal, written anew; `Truncated` for a sealed segment cut short; the
    /// decoding error of the first bytes of a damaged region otherwise). Empty in the
    /// other modes and for an undamaged directory. All places are counted in
    /// [`Stats::recovery_salvaged_places`].
    pub fn salvaged(&self) -> &[crate::Corruption] {
        &self.inner.recovery.salvaged.first
    }

    /// The directory this store owns.
    pub fn path(&self) -> &Path {
        &self.inner.dir
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
                return Err(self.inner.log.poison("maintenance thread panicked".into()));
            }
        }
        if let Some(f) = self.flusher.take() {
            if !f.stop() {
                return Err(self.inner.log.poison("background flusher panicked".into()));
            }
        }
        if self.inner.log.is_poisoned() {
            return self.inner.log.check_poison();
        }
        self.inner.log.sync()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Now, and the expiry of a claim made now with `ttl`, in ms since the epoch.
    pub(crate) fn window(&self, ttl: Duration) -> Result<(u64, u64)> {
        if ttl.is_zero() {
            return Err(Error::InvalidTtl { ttl });
        }
        let ttl_ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
            .map_err(|_| Error::InvalidTtl { ttl })?;
        let now = to_millis(self.inner.clock.now());
        let expires = now
            .checked_add(ttl_ms)
            .filter(|&e| e <= MAX_EXPIRES_MS)
            .ok_or(Error::InvalidTtl { ttl })?;
        Ok((now, expires))
    }

    /// Waits, under `Sync`, until the log is durable up to `lsn_end`.
    pub(crate) fn settle(&self, lsn_end: u64) -> Result<()> {
        match self.inner.durability {
            Durability::Sync if lsn_end > 0 => self.inner.log.wait_durable(lsn_end),
            _ => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

enum Found {
    /// Held (claimed, completed or in flight); the record ends at this lsn.
    Live(Seen, u64),
    /// Free, remembering past attempts or not.
    Free(Option<Memory>),
}

/// The lsn at which the record `e` points at ends.
pub(crate) fn record_end(table: &SegmentTable, e: &Entry, h: &RecordHeader) -> u64 {
    let id = table.get(e.slot).map_or(u64::MAX >> 32, |s| s.id);
    let len = encoded_len(usize::from(h.key_len), h.value_len as usize);
    crate::log::lsn(id, e.offset as usize + len)
}

fn lookup(table: &SegmentTable, stripe: &mut Stripe, key: &[u8], hash: u64, now: u64) -> Found {
    let mut current = None;
    stripe.find(hash, |e| match table.record_with_value(e.location()) {
        Some((h, k, v)) if k == key => {
            current = Some((h, v, record_end(table, e, &h)));
            true
        }
        _ => false,
    });
    let Some((h, v, end)) = current else {
        return Found::Free(None);
    };
    match classify(&h, v, now) {
        KeyStatus::Held(h, s) => Found::Live(Seen::from_record(&h, s.as_ref()), end),
        KeyStatus::Free(m) => Found::Free(Some(m)),
        KeyStatus::Absent => Found::Free(None),
    }
}

/// A claim of a key that is free: a plain claim record, or, if the key remembers past
/// attempts, a done record that keeps that memory's `expires` (retention is monotone, see
/// `lease`). `value` holds the done record's value.
fn claim_spec<'a>(
    key: &'a [u8],
    memory: Option<Memory>,
    now: u64,
    expires: u64,
    value: &'a mut Vec<u8>,
) -> RecordSpec<'a> {
    let Some(m) = memory else {
        return RecordSpec::plain(RecordKind::Claim, key, now, expires);
    };
    encode_state(
        value,
        &StateValue {
            token: 0,
            until: expires,
            fingerprint: &[],
            outcome: &[],
        },
    );
    RecordSpec {
        kind: RecordKind::Done,
        key,
        value,
        attempt: m.next_attempt,
        time: m.first_seen,
        expires: expires.max(m.keep),
    }
}

/// Appends `spec` and points the key's entry (found under its stripe lock as `slot`) at
/// it; the record the entry pointed at dies. Returns the entry, whether it replaced one,
/// and the lsn the record ends at. The caller then notes the entry's expiry in the stripe.
pub(crate) fn write_entry(
    inner: &Inner,
    slot: Slot<'_>,
    hash: u64,
    spec: &RecordSpec<'_>,
) -> Result<(Entry, bool, u64)> {
    let a = inner.log.append(*spec)?;
    let entry = Entry::new(hash as u32, a.loc, spec.expires, spec.len());
    let replaced = match slot {
        Slot::Occupied(mut o) => {
            inner.log.table.retire(o.get());
            *o.get_mut() = entry;
            true
        }
        Slot::Vacant(v, _) => {
            v.insert(entry);
            false
        }
    };
    Ok((entry, replaced, a.lsn_end))
}

/// Points the key's entry at its new record; `true` if it replaced an entry.
fn install(
    table: &SegmentTable,
    stripe: &mut Stripe,
    key: &[u8],
    hash: u64,
    a: Appended,
    spec: &RecordSpec<'_>,
) -> bool {
    let same_key = |e: &Entry| table.record(e.location()).is_some_and(|(_, k)| k == key);
    let entry = Entry::new(hash as u32, a.loc, spec.expires, spec.len());
    let replaced = match stripe.slot(hash, same_key) {
        Slot::Occupied(mut o) => {
            table.retire(o.get());
            *o.get_mut() = entry;
            true
        }
        Slot::Vacant(v, _) => {
            v.insert(entry);
            false
        }
    };
    stripe.note_expiry(&entry);
    replaced
}

/// The single-key claim, under the key's stripe lock.
fn claim_locked(
    inner: &Inner,
    stripe: &mut Stripe,
    key: &[u8],
    hash: u64,
    now: u64,
    expires: u64,
    wait: &mut u64,
) -> Result<Claim> {
    let (slot, current) = find_current(inner, stripe, key, hash);
    let status = current.map_or(KeyStatus::Absent, |(h, v, _)| classify(&h, v, now));
    let memory = match status {
        KeyStatus::Held(h, s) => {
            *wait = current.map_or(0, |c| c.2);
            stripe.counters.duplicates += 1;
            return Ok(Claim::Duplicate(Seen::from_record(&h, s.as_ref())));
        }
        KeyStatus::Free(m) => Some(m),
        KeyStatus::Absent => None,
    };
    let mut value = Vec::new();
    let spec = claim_spec(key, memory, now, expires, &mut value);
    let (entry, replaced, lsn_end) = write_entry(inner, slot, hash, &spec)?;
    *wait = lsn_end;
    stripe.note_expiry(&entry);
    stripe.counters.new += 1;
    stripe.counters.expired_reclaimed += u64::from(replaced);
    Ok(Claim::New)
}

/// One background maintenance round. A panic poisons the store, so that callers learn
/// of it instead of the store silently never expiring anything again; the thread stops.
fn maintenance_round(inner: &Inner) -> bool {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maintain::run(inner)));
    match run {
        Ok(Ok(_)) => true,
        // Counted in `Stats::maintenance_errors`; a poisoned log ends the thread.
        Ok(Err(_)) => !inner.log.is_poisoned(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            inner
                .log
                .poison(format!("maintenance thread panicked: {what}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    /// Blocks every sync until the test drops the returned sender, so that the test can see
    /// who waits.
    fn gate(store: &Store) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let entered_tx = Mutex::new(entered_tx);
        let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = entered_tx.lock().send(());
            let _ = go_rx.lock().recv();
        });
        *store.inner.log.before_sync.lock() = Some(hook);
        (entered_rx, go_tx)
    }

    fn wait_until(mut cond: impl FnMut() -> bool) {
        // Polls a condition the other threads will make true; bounded so a bug fails the
        // test instead of hanging it.
        let start = std::time::Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "condition never became true"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn duplicate_waits_for_the_first_claims_sync_and_claimers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Options::new()
                .durability(Durability::Sync)
                .open(dir.path())
                .unwrap(),
        );
        let ttl = Duration::from_secs(60);
        let (entered, go) = gate(&store);
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
        *store.inner.log.before_sync.lock() = None;
        drop(go);

        assert_eq!(first.join().unwrap(), Claim::New);
        assert!(matches!(second.join().unwrap(), Claim::Duplicate(_)));
        for t in others {
            assert_eq!(t.join().unwrap(), Claim::New);
        }
        // The held syncs (one, or two overlapping) read the tail after all five operations
        // had appended, so together they covered all four claims.
        let syncs = store.stats().syncs - syncs_before;
        assert!((1..=2).contains(&syncs), "{syncs} syncs for 4 claims");
    }

    #[test]
    fn a_panic_in_background_maintenance_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Options::new()
            .maintenance_interval(Duration::from_millis(1))
            .open(dir.path())
            .unwrap();
        let ttl = Duration::from_secs(60);
        assert!(store.claim("before", ttl).unwrap().is_new());
        store
            .inner
            .panic_in_maintenance
            .store(true, Ordering::Relaxed);
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
        let store = Options::new().open(dir.path()).unwrap();
        assert!(store.claim("before", ttl).unwrap().is_new());
        store.inner.log.fail_syncs.store(true, Ordering::Relaxed);
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
        store.inner.log.fail_syncs.store(false, Ordering::Relaxed);
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
        let store = Options::new()
            .durability(Durability::Buffered)
            .segment_size(crate::MIN_SEGMENT_SIZE)
            .open(dir.path())
            .unwrap();
        store.inner.log.fail_syncs.store(true, Ordering::Relaxed);
        // Buffered claims do not sync, until one needs a new segment and the old one is
        // sealed and synced.
        let mut failed = None;
        for i in 0..10_000 {
            if let Err(e) = store.claim(format!("key-{i:05}"), ttl) {
                failed = Some((i, e));
                break;
            }
        }
        let (i, e) = failed.expect("rotation never synced");
        assert!(i > 100, "failed at claim {i}, before the segment was full");
        assert!(
            matches!(
                e,
                Error::Io {
                    op: "sync sealed segment",
                    ..
                }
            ),
            "{e:?}"
        );
        store.inner.log.fail_syncs.store(false, Ordering::Relaxed);
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
        impl crate::IoHook for FailDirSyncs {
            fn before(&self, op: &crate::IoOp<'_>) -> std::io::Result<()> {
                if matches!(op, crate::IoOp::SyncDir { .. }) && self.0.load(Ordering::SeqCst) {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailDirSyncs(std::sync::atomic::AtomicBool::new(false)));
        let store = Options::new()
            .durability(Durability::Buffered)
            .segment_size(crate::MIN_SEGMENT_SIZE)
            .background_maintenance(false)
            .io_hook(hook.clone())
            .open(dir.path())
            .unwrap();
        hook.0.store(true, Ordering::SeqCst);
        let ttl = Duration::from_secs(60);
        // Buffered claims touch no directory until one needs a new segment.
        let (i, e) = (0..10_000)
            .find_map(|i| {
                store
                    .claim(format!("key-{i:05}"), ttl)
                    .err()
                    .map(|e| (i, e))
            })
            .expect("no rotation happened");
        assert!(i > 100, "failed at claim {i}, before the segment was full");
        match &e {
            Error::Io { op, source, .. } => {
                assert_eq!(*op, "fsync directory");
                assert_eq!(source.raw_os_error(), Some(libc::EMFILE));
            }
            other => panic!("the claim that rotated: {other:?}"),
        }
        let cause = std::io::Error::from_raw_os_error(libc::EMFILE).to_string();
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
        assert!(store.inner.recovery.synced, "a new store");
        assert!(store.claim("k", Duration::from_secs(60)).unwrap().is_new());
        store.close().unwrap();
        let store = Options::new().open(dir.path()).unwrap();
        assert!(store.inner.recovery.synced, "a reopened store");
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
        let tail = store.inner.log.tail_lsn();
        // The flusher makes it durable on its own (bounded wait for its next round).
        wait_until(|| store.stats().syncs > before);
        assert!(store.inner.log.durable_lsn() >= tail);
        store.close().unwrap();
    }
}
