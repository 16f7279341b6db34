//! The engine: the index and the log of one store, and the locking protocol that ties them
//! together. [`Store`](crate::Store) (claims) and the lease operations are thin doors onto
//! it; maintenance uses its segment-level steps.
//!
//! The protocol, which every door follows for a key:
//!
//! 1. hash the key and lock its index stripe ([`Engine::lock`]);
//! 2. find the key's newest record ([`Engine::find`] / [`Engine::find_place`]) and decide
//!    from its [`Status`];
//! 3. append the new record and point the key's entry at it ([`Engine::write`]), still
//!    under the lock;
//! 4. unlock, then wait until the record the answer rests on is durable
//!    ([`Engine::settle`]) before answering.
//!
//! Invariants (docs/DESIGN.md numbers them):
//!
//! 1. Exactly once: a key's lookup, the append of its record and the update of its entry
//!    happen under the key's stripe lock, so two callers on one key are serialized and the
//!    second sees the first's entry.
//! 2. No false duplicates: entries match on hash bits and then on the key bytes in the log
//!    (`Probe`).
//! 3. Acknowledged means kept: under `Sync` an answer waits until the record it reports or
//!    wrote is durable (durable before visible), whether it wrote that record or found it.
//! 4. No resurrection: a record that makes another dead is appended before the entry
//!    changes; what it replaces is retired in its segment's accounting, never reused.
//! 5. Bad input is an error: keys and TTLs are checked before anything is touched.

mod key;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::MutexGuard;

use crate::clock::{to_millis, Clock};
use crate::error::{Error, Result};
use crate::format::{decode_state, encoded_len, Hides, RecordKind, CHAIN_VERSION, MAX_KEY_LEN};
use crate::index::{Counters, Entry, Index, Place, SliceResult, Stripe, SWEEP_SLICE};
use crate::iohook::Io;
use crate::log::{
    lsn, Appended, Committer, Durable, Location, Log, RecordSpec, Segment, SegmentIds,
};
use crate::options::{Durability, Options};

pub(crate) use key::{Current, Memory, Status};
pub use key::{KeyState, Seen};

/// Latest expiry accepted: the last millisecond of year 9999.
const MAX_EXPIRES_MS: u64 = 253_402_300_799_999;

/// The index and log of one open store, with the rules for using them together.
pub(crate) struct Engine {
    durability: Durability,
    clock: Arc<dyn Clock>,
    hasher: fn(&[u8]) -> u64,
    /// Hints store hashes of the default hasher; with another one they are neither read
    /// nor written.
    default_hasher: bool,
    index: Index,
    log: Arc<Log>,
    /// Makes the log durable for whoever waits (see `src/log/commit.rs`).
    _committer: Committer,
    /// `Options::attempt_memory`, ms.
    attempt_memory_ms: u64,
    tokens: Tokens,
    /// The directory's lock, held for as long as the engine lives.
    _lock: File,
}

/// What a write did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// The key had an entry, which now points at the new record.
    pub(crate) replaced: bool,
    /// The lsn the new record ends at (see [`Engine::settle`]).
    pub(crate) lsn_end: u64,
}

/// What has become of a state record (see [`Engine::record_fate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Its key's entry points at it: it is the key's newest record.
    Current,
    /// No entry points at it any more.
    Dead,
    /// It was current but has expired; its entry was dropped just now.
    Expired,
}

/// Figures of the index, for `Stats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexFigures {
    pub(crate) keys: u64,
    pub(crate) heap_bytes: u64,
    pub(crate) expired_unswept: u64,
    pub(crate) counters: Counters,
}

impl Engine {
    /// The engine of a store opened in `dir` with `opts`, whose index and log recovery
    /// rebuilt, holding the directory's `lock`.
    pub(crate) fn new(opts: &Options, lock: File, index: Index, log: Log) -> Result<Engine> {
        let log = Arc::new(log);
        let committer = log.start_committer()?;
        Ok(Engine {
            durability: opts.durability,
            clock: Arc::clone(&opts.clock),
            hasher: opts.hasher,
            default_hasher: opts.default_hasher,
            index,
            log,
            _committer: committer,
            attempt_memory_ms: u64::try_from(opts.attempt_memory.as_millis()).unwrap_or(u64::MAX),
            tokens: Tokens::new(),
            _lock: lock,
        })
    }

    // ---- time and keys ----

    /// The clock's time, ms since the epoch.
    pub(crate) fn now(&self) -> u64 {
        to_millis(self.clock.now())
    }

    /// Now, and the expiry of a claim (or lease) made now for `ttl`, in ms since the epoch.
    pub(crate) fn window(&self, ttl: Duration) -> Result<(u64, u64)> {
        let now = self.now();
        Ok((now, expiry(now, ttl)?))
    }

    /// The key's 64-bit hash: its stripe, and the hash bits its entry keeps.
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        (self.hasher)(key)
    }

    // ---- locking ----

    /// Locks the stripe of the key whose hash is `hash`.
    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Stripe> {
        self.index.lock(hash)
    }

    /// Locks the stripes of all of `hashes` at once, in increasing stripe order (the order
    /// every holder of several stripes uses, so none deadlocks).
    pub(crate) fn lock_all(&self, hashes: &[u64]) -> LockedStripes<'_> {
        let mut ids: Vec<usize> = hashes.iter().map(|&h| self.index.stripe_of(h)).collect();
        ids.sort_unstable();
        ids.dedup();
        let guards = ids.iter().map(|&i| self.index.lock_stripe(i)).collect();
        LockedStripes {
            index: &self.index,
            ids,
            guards,
        }
    }

    // ---- a key's steps, under its stripe lock ----

    /// The key's newest record, if it has an entry.
    pub(crate) fn find<'t>(
        &'t self,
        stripe: &Stripe,
        key: &[u8],
        hash: u64,
    ) -> Option<Current<'t>> {
        let mut probe = Probe::new(&self.log, key);
        stripe.find(hash, |e| probe.matches(e));
        probe.found
    }

    /// The key's place in the stripe (to write or remove its entry) and its newest record.
    pub(crate) fn find_place<'s, 't>(
        &'t self,
        stripe: &'s mut Stripe,
        key: &[u8],
        hash: u64,
    ) -> (Place<'s>, Option<Current<'t>>) {
        let mut probe = Probe::new(&self.log, key);
        let place = stripe.place(hash, |e| probe.matches(e));
        (place, probe.found)
    }

    /// The key's place in the stripe, to write its entry, when its record is not needed
    /// (`claim_many` placing a batch whose keys it has already looked up): the same probe
    /// as `find_place`, comparing key bytes only.
    pub(crate) fn place_of<'s>(&self, stripe: &'s mut Stripe, key: &[u8], hash: u64) -> Place<'s> {
        let probe = Probe::new(&self.log, key);
        stripe.place(hash, |e| probe.is_key(e))
    }

    /// Appends `spec` and points the key's entry (its `place`, found under the stripe lock)
    /// at it; the record the entry pointed at dies.
    pub(crate) fn write(
        &self,
        place: Place<'_>,
        hash: u64,
        spec: &RecordSpec<'_>,
    ) -> Result<Written> {
        let at = self.log.append(*spec)?;
        Ok(Written {
            replaced: self.point(place, hash, at, spec),
            lsn_end: at.lsn_end,
        })
    }

    /// Points the key's entry at the record `spec` appended `at`; the record the entry
    /// pointed at dies. `true` if the key had an entry.
    pub(crate) fn point(
        &self,
        place: Place<'_>,
        hash: u64,
        at: Appended,
        spec: &RecordSpec<'_>,
    ) -> bool {
        let entry = Entry::new(hash as u32, at.loc, spec.expires, spec.len());
        match place.put(entry) {
            Some(old) => {
                self.retire(&old);
                true
            }
            None => false,
        }
    }

    /// Appends one record that no entry points at (a remove).
    pub(crate) fn append(&self, spec: RecordSpec<'_>) -> Result<Appended> {
        self.log.append(spec)
    }

    /// Appends `specs` as one unit (all or none); `done` learns where each went.
    pub(crate) fn append_all(
        &self,
        specs: &[RecordSpec<'_>],
        done: impl FnMut(usize, Appended),
    ) -> Result<()> {
        self.log.append_all(specs, done)
    }

    /// Tells the log that the record `e` pointed at lost its entry (it is dead).
    pub(crate) fn retire(&self, e: &Entry) {
        self.log.table().record_died(e.slot, e.record_len());
    }

    // ---- durability ----

    /// Waits, under `Durability::Sync`, until the log is durable up to `lsn_end` (0: nothing
    /// to wait for).
    pub(crate) fn settle(&self, lsn_end: u64) -> Result<()> {
        match self.durability {
            Durability::Sync if lsn_end > 0 => self.log.wait_durable(lsn_end),
            _ => Ok(()),
        }
    }

    /// Resolves, under `Durability::Sync`, once the log is durable up to `lsn_end` (0:
    /// nothing to wait for); at once under the other modes. The future form of `settle`.
    pub(crate) fn settled(&self, lsn_end: u64) -> Settle<'_> {
        match self.durability {
            Durability::Sync if lsn_end > 0 => Settle::Waiting(self.log.durable(lsn_end)),
            _ => Settle::Done,
        }
    }

    /// Makes everything written so far durable, whatever the durability mode.
    pub(crate) fn sync(&self) -> Result<()> {
        self.log.sync()
    }

    /// Resolves once everything written so far is durable, whatever the durability mode.
    pub(crate) fn synced(&self) -> Durable<'_> {
        self.log.durable(self.log.written())
    }

    /// Callers waiting for durability now.
    pub(crate) fn commit_waiters(&self) -> usize {
        self.log.waiters()
    }

    /// Fails if the store is poisoned.
    pub(crate) fn check_poison(&self) -> Result<()> {
        self.log.check_poison()
    }

    /// Poisons the store; returns the error for the caller who hit the failure.
    pub(crate) fn poison(&self, reason: String) -> Error {
        self.log.poison(reason)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.log.is_poisoned()
    }

    // ---- leases ----

    /// A fresh lease token (see `Tokens`).
    pub(crate) fn new_token(&self) -> u64 {
        self.tokens.next()
    }

    /// Until when a lease whose deadline is `deadline` is remembered
    /// (`Options::attempt_memory` after it), ms: never past the end of year 9999, the
    /// latest `expires` a record may carry (docs/FORMAT.md §3.1), which stands for ever.
    pub(crate) fn attempt_kept_until(&self, deadline: u64) -> u64 {
        deadline
            .saturating_add(self.attempt_memory_ms)
            .min(MAX_EXPIRES_MS)
            .max(deadline)
    }

    // ---- segments, for maintenance ----

    /// The directory this store owns.
    pub(crate) fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// The hook every file-system change goes through.
    pub(crate) fn io(&self) -> &Io {
        self.log.io()
    }

    /// The id every segment of this store carries.
    pub(crate) fn store_id(&self) -> u128 {
        self.log.store_id()
    }

    /// Whether hint files may be written (they hold hashes of the default hasher).
    pub(crate) fn hints_usable(&self) -> bool {
        self.default_hasher
    }

    /// Every sealed segment with its slot, in id order (waits for a rotation's seal job
    /// that still runs).
    pub(crate) fn sealed_segments(&self) -> Vec<(u16, Arc<Segment>)> {
        self.log.sealed_segments()
    }

    /// The ids of every segment of the store, sealed or not.
    pub(crate) fn segment_ids(&self) -> SegmentIds {
        self.log.segment_ids()
    }

    /// What a remove of a key hides, given its entry (pointing at its newest record,
    /// `current`): segments up to the one that record is in, from the one its chain began
    /// in. A plain claim record is written only for a key with no unexpired state
    /// (`store::claim_spec`), so every older record of the key has expired or is hidden by
    /// an earlier remove, and the claim's segment is all there is to hide. A lease or done
    /// record follows the earlier records of its chain, which began in segment
    /// `StateValue::chain` or later (0, anywhere before, if that is not known).
    pub(crate) fn hidden_by_remove(&self, entry: Option<&Entry>, current: &Current<'_>) -> Hides {
        let Some(seg) = entry.and_then(|e| self.log.table().get(e.slot)) else {
            return Hides::ANY;
        };
        let id = seg.id;
        let from = match current.header.kind {
            RecordKind::Claim => id,
            // Before version 4 these bytes were zero: a record there that says otherwise
            // is damaged, and does not know either.
            _ if seg.version < CHAIN_VERSION => 0,
            _ => decode_state(current.value).map_or(0, |s| s.chain.min(id)),
        };
        Hides { from, to: id }
    }

    /// The id of the segment a chain of lease and done records that begins now begins in,
    /// or a lower one (`StateValue::chain`).
    pub(crate) fn chain_start(&self) -> u64 {
        self.log.active_id_at_least()
    }

    /// `sealed_segments` without waiting for a seal job (for `stats()`).
    pub(crate) fn sealed_segments_now(&self) -> Vec<(u16, Arc<Segment>)> {
        self.log.sealed_segments_now()
    }

    /// Number of index stripes (for sweeps).
    pub(crate) fn stripes(&self) -> usize {
        self.index.stripes()
    }

    /// One sweep slice of stripe `i` at `now` (see `Stripe::sweep_slice`), under its lock:
    /// drops expired entries and retires their records. `spare` sees every entry kept. With
    /// `visit_all` unset, a stripe with nothing expired and no pass under way is skipped
    /// (reported as a finished slice).
    pub(crate) fn sweep_slice(
        &self,
        i: usize,
        now: u64,
        visit_all: bool,
        mut keep: impl FnMut(&Entry),
    ) -> SliceResult {
        let mut stripe = self.index.lock_stripe(i);
        if !visit_all && !stripe.may_have_expired(now) && !stripe.sweeping() {
            return SliceResult {
                dropped: 0,
                done: true,
            };
        }
        stripe.sweep_slice(
            now,
            SWEEP_SLICE,
            |e| {
                keep(e);
                false
            },
            |e| self.retire(e),
        )
    }

    /// What has become of the state record at `loc`, of the key whose hash is `hash` (for
    /// compaction, which keeps it only if it is still its key's newest). One that `expired`
    /// loses its entry here (and is retired), so that no entry is left pointing into the
    /// old copy of its segment.
    pub(crate) fn record_fate(&self, hash: u64, loc: Location, expired: bool) -> Fate {
        let mut stripe = self.index.lock(hash);
        if !stripe.points_at(hash, loc) {
            return Fate::Dead;
        }
        if !expired {
            return Fate::Current;
        }
        if let Some(e) = stripe.remove_at_location(hash, loc) {
            self.retire(&e);
        }
        Fate::Expired
    }

    /// Puts `fresh`, a compacted copy of the segment in `old_slot`, in its place: installs
    /// it, moves every entry that still points at a record of the old copy to the same
    /// record in the new one (`moves`: hash, old offset, new offset, record length; a record
    /// whose entry changed meanwhile is dead from the start), waits until no reader is
    /// inside the old copy, and uninstalls it.
    pub(crate) fn replace_segment(
        &self,
        old_slot: u16,
        fresh: Arc<Segment>,
        moves: impl Iterator<Item = (u64, u32, u32, u32)>,
    ) -> Result<()> {
        let new_slot = self.log.table().install(Arc::clone(&fresh))?;
        for (hash, old, new, len) in moves {
            let from = Location {
                slot: old_slot,
                offset: old,
            };
            let to = Location {
                slot: new_slot,
                offset: new,
            };
            if !self.index.lock(hash).repoint(hash, from, to) {
                fresh.usage.died(u64::from(len));
            }
        }
        self.forget_segment(old_slot);
        Ok(())
    }

    /// Takes the segment in `slot` out of the table, once no entry points into it: waits
    /// until every reader that was inside it has left (every stripe lock taken once).
    pub(crate) fn forget_segment(&self, slot: u16) {
        self.index.quiesce();
        self.log.table().uninstall(slot);
    }

    // ---- figures, for `Stats` ----

    /// Keys, heap bytes and counters of the index, and the entries expired at `now` that
    /// no sweep has dropped yet (counted one slice per lock hold, like a sweep: this never
    /// stalls claims for long).
    /// Heap bytes the index tables hold now, and the bytes they have freed since the store
    /// opened (cheap: no slice is visited).
    pub(crate) fn index_heap_bytes(&self) -> (u64, u64) {
        let (mut held, mut freed) = (0u64, 0u64);
        self.index.for_each_stripe(|st| {
            held += st.allocation_size() as u64;
            freed += st.freed_bytes();
        });
        (held, freed)
    }

    pub(crate) fn index_figures(&self, now: u64) -> IndexFigures {
        let mut f = IndexFigures::default();
        self.index.for_each_stripe(|st| {
            f.keys += st.len() as u64;
            f.heap_bytes += st.allocation_size() as u64;
            f.counters.add(&st.counters);
        });
        for i in 0..self.index.stripes() {
            let mut at = Some(0);
            while let Some(start) = at {
                let (n, next) =
                    self.index
                        .lock_stripe(i)
                        .count_expired_slice(now, start, SWEEP_SLICE);
                f.expired_unswept += n as u64;
                at = next;
            }
        }
        f
    }

    /// Segment files, and the bytes they take.
    pub(crate) fn segment_figures(&self) -> (u64, u64) {
        let t = self.log.table();
        (t.len() as u64, t.disk_bytes())
    }

    /// Bytes of records that must be kept at `now` (see `Stats::live_bytes`).
    pub(crate) fn live_bytes(&self, now: u64) -> u64 {
        self.log.live_bytes(now)
    }

    /// Syncs of segment data since open.
    pub(crate) fn syncs(&self) -> u64 {
        self.log.syncs()
    }

    /// The log, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }
}

/// The future of [`Engine::settled`].
#[must_use = "a durability wait does nothing unless awaited"]
pub(crate) enum Settle<'a> {
    /// Nothing to wait for.
    Done,
    /// Waiting for the log to be durable up to an lsn.
    Waiting(Durable<'a>),
}

impl std::future::Future for Settle<'_> {
    type Output = Result<()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        match self.get_mut() {
            Settle::Done => std::task::Poll::Ready(Ok(())),
            Settle::Waiting(d) => std::pin::Pin::new(d).poll(cx),
        }
    }
}

/// Fails with [`Error::InvalidKey`] unless `key` is 1 to [`MAX_KEY_LEN`] bytes.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Tells, for each index entry a lookup meets, whether it is `key`'s (its record's key bytes
/// equal `key`: invariant 2), and keeps that record.
struct Probe<'t, 'k> {
    log: &'t Log,
    key: &'k [u8],
    found: Option<Current<'t>>,
}

impl<'t, 'k> Probe<'t, 'k> {
    fn new(log: &'t Log, key: &'k [u8]) -> Self {
        Probe {
            log,
            key,
            found: None,
        }
    }

    /// Whether `e` is the key's entry (its record holds the same key bytes), without
    /// reading the rest of the record.
    fn is_key(&self, e: &Entry) -> bool {
        self.log
            .table()
            .record(e.location())
            .is_some_and(|(_, k)| k == self.key)
    }

    /// Whether `e` is the key's entry; if it is, its record is kept in `found`.
    fn matches(&mut self, e: &Entry) -> bool {
        let table = self.log.table();
        match table.record_with_value(e.location()) {
            Some((header, k, value)) if k == self.key => {
                let id = table.get(e.slot).map_or(u64::MAX >> 32, |s| s.id);
                let len = encoded_len(usize::from(header.key_len), header.value_len as usize);
                self.found = Some(Current {
                    header,
                    value,
                    end: lsn(id, e.offset as usize + len),
                });
                true
            }
            _ => false,
        }
    }
}

/// The stripes of a batch of keys, locked together (see [`Engine::lock_all`]).
pub(crate) struct LockedStripes<'a> {
    index: &'a Index,
    ids: Vec<usize>,
    guards: Vec<MutexGuard<'a, Stripe>>,
}

impl LockedStripes<'_> {
    /// The locked stripe of the key whose hash is `hash` (`None` only if it was not among
    /// the hashes locked).
    pub(crate) fn get(&mut self, hash: u64) -> Option<&mut Stripe> {
        let at = self.ids.binary_search(&self.index.stripe_of(hash)).ok()?;
        self.guards.get_mut(at).map(|g| &mut **g)
    }
}

/// Lease tokens: never 0, and unique among one store's leases with overwhelming
/// probability (a random seed per open, mixed with a counter).
struct Tokens {
    seed: u64,
    next: AtomicU64,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            seed: crate::log::random_u64(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed).max(1)
    }
}

/// When a claim made at `now` (ms) for `ttl` expires: `ttl` rounded up to whole
/// milliseconds; [`Error::InvalidTtl`] for a zero TTL or an expiry past `MAX_EXPIRES_MS`.
pub(crate) fn expiry(now: u64, ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::InvalidTtl { ttl });
    }
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .ok()
        .and_then(|ttl_ms| now.checked_add(ttl_ms))
        .filter(|&e| e <= MAX_EXPIRES_MS)
        .ok_or(Error::InvalidTtl { ttl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::MIN_SEGMENT_SIZE;

    /// An engine on a fresh directory whose hasher sends every key to one hash: every
    /// lookup meets every other key's entry, and only the key bytes tell them apart.
    fn colliding(dir: &std::path::Path) -> Engine {
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let opts = Options::new()
            .durability(Durability::Buffered)
            .segment_size(MIN_SEGMENT_SIZE)
            .clock(crate::clock::ManualClock::new(start))
            .hasher(|_| 42);
        let lock = crate::fs::lock_dir(&opts.io, dir).unwrap();
        let (index, log, _) = crate::recovery::recover(dir, &opts, 1_000).unwrap();
        Engine::new(&opts, lock, index, log).unwrap()
    }

    fn put(e: &Engine, key: &[u8], expires: u64) -> Written {
        let hash = e.hash(key);
        let mut stripe = e.lock(hash);
        let (place, _) = e.find_place(&mut stripe, key, hash);
        e.write(
            place,
            hash,
            &RecordSpec::plain(RecordKind::Claim, key, 1, expires),
        )
        .unwrap()
    }

    #[test]
    fn keys_with_one_hash_are_told_apart_by_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let e = colliding(dir.path());
        assert!(!put(&e, b"a", 5_000).replaced);
        assert!(!put(&e, b"b", 6_000).replaced, "b found a's entry");
        assert!(put(&e, b"a", 7_000).replaced);
        let mut stripe = e.lock(42);
        let a = e.find(&stripe, b"a", 42).expect("a");
        assert_eq!(a.header.expires, 7_000);
        assert_eq!(
            e.find(&stripe, b"b", 42).map(|c| c.header.expires),
            Some(6_000)
        );
        assert!(e.find(&stripe, b"c", 42).is_none());
        assert!(e.place_of(&mut stripe, b"b", 42).entry().is_some());
        assert!(e.place_of(&mut stripe, b"c", 42).entry().is_none());
        assert_eq!(stripe.len(), 2);
    }

    #[test]
    fn a_current_record_knows_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let e = colliding(dir.path());
        let w = put(&e, b"key", 9_000);
        let stripe = e.lock(42);
        assert_eq!(e.find(&stripe, b"key", 42).map(|c| c.end), Some(w.lsn_end));
    }

    /// Where the one entry of the colliding engine points.
    fn only_location(e: &Engine) -> Location {
        let stripe = e.lock(42);
        let mut at = None;
        stripe.find(42, |en| {
            at = Some(en.location());
            true
        });
        at.expect("an entry")
    }

    #[test]
    fn the_fate_of_a_record_follows_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let e = colliding(dir.path());
        put(&e, b"old", 9_000);
        let loc = only_location(&e);
        assert_eq!(e.record_fate(42, loc, false), Fate::Current);
        put(&e, b"old", 9_500); // a newer record: the first one is dead now
        assert_eq!(e.record_fate(42, loc, false), Fate::Dead);
        let newer = only_location(&e);
        assert_eq!(e.record_fate(42, newer, true), Fate::Expired);
        assert!(
            e.find(&e.lock(42), b"old", 42).is_none(),
            "the expired entry stayed"
        );
    }

    /// Found in review: `attempt_memory(Duration::MAX)` wrote leases whose `expires` was
    /// u64::MAX, past the format's bound of year 9999.
    #[test]
    fn an_endless_attempt_memory_stays_within_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::new().attempt_memory(Duration::MAX);
        let lock = crate::fs::lock_dir(&opts.io, dir.path()).unwrap();
        let (index, log, _) = crate::recovery::recover(dir.path(), &opts, 1_000).unwrap();
        let e = Engine::new(&opts, lock, index, log).unwrap();
        assert_eq!(e.attempt_kept_until(5_000), MAX_EXPIRES_MS);
        assert_eq!(e.attempt_kept_until(MAX_EXPIRES_MS), MAX_EXPIRES_MS);
    }

    #[test]
    fn windows_follow_the_ttl_rules() {
        let dir = tempfile::tempdir().unwrap();
        let e = colliding(dir.path());
        let now = e.now();
        assert!(matches!(
            e.window(Duration::ZERO),
            Err(Error::InvalidTtl { .. })
        ));
        assert_eq!(e.window(Duration::from_nanos(1)).unwrap(), (now, now + 1));
        assert_eq!(e.window(Duration::from_micros(1_500)).unwrap().1, now + 2);
        assert!(matches!(
            e.window(Duration::from_secs(u64::MAX)),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(check_key(b"").is_err() && check_key(&[0u8; MAX_KEY_LEN + 1]).is_err());
        assert!(check_key(&[0u8; MAX_KEY_LEN]).is_ok());
        assert_eq!(e.attempt_kept_until(now), now + 72 * 3600 * 1000);
        let (t1, t2) = (e.new_token(), e.new_token());
        assert!(t1 != 0 && t2 != 0 && t1 != t2);
    }
}
