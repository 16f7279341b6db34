//! The in-memory index: lock-striped hash tables of fixed-size entries.
//!
//! Invariants:
//!
//! - An entry is 16 bytes whatever the key length: it holds 32 bits of the key's hash, where
//!   the key's newest record lives, and a coarse expiry. The key itself stays in the log.
//! - Two different keys are never confused (invariant 2 of docs/DESIGN.md): entries are matched by
//!   hash bits *and* by comparing the key bytes stored in the log, which the caller does in
//!   the `eq` closures it passes in.
//! - A key's stripe is chosen from the top bits of its 64-bit hash; the hash bits kept in the
//!   entry are the low 32, so the two are independent. Everything that reads or changes a
//!   key's entry, and appends that key's records, holds that stripe's lock.
//! - At most one live entry per key: callers look up before inserting, under the lock.

mod table;

use parking_lot::{Mutex, MutexGuard};

use crate::log::Location;
use table::{Pos, Table};

/// Entry state: the key is claimed (format version 1 knows no other).
pub(crate) const STATE_CLAIMED: u16 = 1;

/// The record length is kept in the low bits of `Entry::meta`, in units of 8 bytes (records
/// are 8-aligned); the state in the bits above.
const LEN_BITS: u32 = 13;
const LEN_MASK: u16 = (1 << LEN_BITS) - 1;
const _: () = assert!(crate::format::MAX_RECORD_LEN / 8 <= LEN_MASK as usize);

/// One key's place in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Entry {
    /// Low 32 bits of the key's hash.
    pub(crate) hash: u32,
    /// Byte offset of the key's newest record in its segment.
    pub(crate) offset: u32,
    /// Segment-table slot of that record.
    pub(crate) slot: u16,
    /// The key's state (`STATE_*`, top bits) and its record's length in 8-byte units (low
    /// `LEN_BITS` bits), so that dropping the entry can tell its segment how many bytes died
    /// without reading the record.
    meta: u16,
    /// Expiry in whole seconds since the epoch, rounded up (saturating): if the current
    /// second is past it, the entry has certainly expired. The exact expiry is in the record.
    pub(crate) expiry_secs: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

// SAFETY: `Entry` is `#[repr(C)]` with integer fields only, 4 + 4 + 2 + 2 + 4 = 16 bytes
// (asserted above), so it has no padding and all-zero bytes are a valid value (`EMPTY`).
#[allow(unsafe_code)]
unsafe impl crate::heap::Zeroable for Entry {}

impl Entry {
    /// An empty table slot. No entry is all zeros: `meta` holds a non-zero state.
    pub(crate) const EMPTY: Entry = Entry {
        hash: 0,
        offset: 0,
        slot: 0,
        meta: 0,
        expiry_secs: 0,
    };

    /// Whether this is `EMPTY`.
    pub(crate) fn is_empty(&self) -> bool {
        self.meta == 0
    }

    /// An entry for a claimed key whose newest record, `len` bytes long, is at `loc`.
    pub(crate) fn new(hash: u32, loc: Location, expires_ms: u64, len: usize) -> Entry {
        let len8 = u16::try_from(len / 8).unwrap_or(LEN_MASK).min(LEN_MASK);
        Entry {
            hash,
            offset: loc.offset,
            slot: loc.slot,
            meta: (STATE_CLAIMED << LEN_BITS) | len8,
            expiry_secs: coarse_secs(expires_ms),
        }
    }

    /// Bytes of the record the entry points at.
    pub(crate) fn record_len(&self) -> u64 {
        u64::from(self.meta & LEN_MASK) * 8
    }

    /// Whether the claim has certainly expired at `now_ms` (judged on the coarse expiry,
    /// which is rounded up, so never early). A saturated coarse expiry — a claim expiring
    /// after February 2106, which 32-bit seconds cannot hold — says nothing: such an entry
    /// has never certainly expired, whatever the clock says, and only the exact expiry in
    /// its record decides (on lookup, and when compaction reads the record).
    pub(crate) fn expired_at(&self, now_ms: u64) -> bool {
        self.expiry_secs != u32::MAX && u64::from(self.expiry_secs) * 1000 <= now_ms
    }

    pub(crate) fn location(&self) -> Location {
        Location {
            slot: self.slot,
            offset: self.offset,
        }
    }
}

/// Seconds since the epoch, rounded up, saturating at `u32::MAX` (the year 2106).
pub(crate) fn coarse_secs(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// Per-stripe counters, updated under the stripe lock (no shared atomics on the hot path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) new: u64,
    pub(crate) duplicates: u64,
    pub(crate) expired_reclaimed: u64,
    pub(crate) removes: u64,
    pub(crate) acquired: u64,
    pub(crate) completed: u64,
    pub(crate) abandoned: u64,
    pub(crate) extended: u64,
}

impl Counters {
    /// Adds another stripe's counters to these.
    pub(crate) fn add(&mut self, o: &Counters) {
        self.new += o.new;
        self.duplicates += o.duplicates;
        self.expired_reclaimed += o.expired_reclaimed;
        self.removes += o.removes;
        self.acquired += o.acquired;
        self.completed += o.completed;
        self.abandoned += o.abandoned;
        self.extended += o.extended;
    }
}

/// One lock's worth of the index.
pub(crate) struct Stripe {
    table: Table,
    pub(crate) counters: Counters,
    bounds: Bounds,
}

/// What a stripe knows of its entries' expiry, kept true by every write (`Place::put`).
#[derive(Debug, Default, Clone, Copy)]
struct Bounds {
    /// No entry expires before this second (a lower bound: entries replaced or removed since
    /// the last sweep may have held it). Lets a sweep skip stripes with nothing expired.
    min_expiry_secs: u32,
    /// The sweep pass under way, if `pass.active`.
    pass: Pass,
}

impl Bounds {
    /// Notes the expiry of an entry being inserted or rewritten, or moved where a sweep
    /// pass under way will not see it (keeps `may_have_expired` a true lower bound, also
    /// across that pass).
    fn note(&mut self, e: &Entry) {
        self.min_expiry_secs = self.min_expiry_secs.min(e.expiry_secs);
        self.pass.min = self.pass.min.min(e.expiry_secs);
    }

    /// The slot a removal must watch: an entry moved back from it lands behind the cursor
    /// of the pass under way (no slot is watched when no pass is).
    fn watch(&self) -> usize {
        if self.pass.active {
            self.pass.cursor
        } else {
            usize::MAX
        }
    }
}

/// Where a stripe's sweep pass has got to, between slices.
#[derive(Debug, Default, Clone, Copy)]
struct Pass {
    /// Next slot to visit.
    cursor: usize,
    /// A pass is under way (its cursor may still be 0: a slice that dropped the entry in
    /// slot 0 looks at that slot again next time).
    active: bool,
    /// The table's generation when the pass started.
    generation: u64,
    /// Lowest expiry among entries kept or written during the pass.
    min: u32,
    /// The table was replaced during the pass: entries may have been missed.
    disturbed: bool,
}

/// What one sweep slice did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SliceResult {
    /// Entries dropped.
    pub(crate) dropped: usize,
    /// The slice finished the stripe's pass.
    pub(crate) done: bool,
}

/// Slots a sweep or count visits per lock hold: 16 KiB of table, 2 to 3 µs of work on
/// the project machine (`cargo bench --bench components -- sweep_lock_hold`), against
/// 0.2 ms for a whole stripe of 100k entries. A 10M-key store (1024 stripes of about 12k
/// slots) takes 12k slices per full sweep.
pub(crate) const SWEEP_SLICE: usize = 1024;

/// A key's place in its stripe, found by `Stripe::place`: its entry if it has one, or where
/// one goes (inserting there needs no second search). Consumed by `put` or `take`.
pub(crate) struct Place<'a> {
    table: &'a mut Table,
    pos: Pos,
    bounds: &'a mut Bounds,
}

impl Place<'_> {
    /// The key's entry, if it has one.
    pub(crate) fn entry(&self) -> Option<&Entry> {
        self.table.get(self.pos)
    }

    /// Makes `entry` the key's entry; returns the one it replaced, if any.
    pub(crate) fn put(self, entry: Entry) -> Option<Entry> {
        self.bounds.note(&entry);
        match self.pos {
            Pos::Vacant(at) => {
                self.table.insert(at, entry);
                None
            }
            pos => self.table.get_mut(pos).map(|e| std::mem::replace(e, entry)),
        }
    }

    /// Removes the key's entry, if it has one, and returns it.
    pub(crate) fn take(self) -> Option<Entry> {
        let bounds = self.bounds;
        let watch = bounds.watch();
        self.table.remove(self.pos, watch, |e| bounds.note(e))
    }
}

impl Stripe {
    fn new(phase: f64) -> Stripe {
        Stripe {
            table: Table::new(phase),
            counters: Counters::default(),
            bounds: Bounds {
                min_expiry_secs: u32::MAX,
                pass: Pass::default(),
            },
        }
    }

    /// Finds the entry of the key whose hash is `hash`; `same_key` compares an entry's key
    /// (read from the log) with the one looked for. Also drains a step of a growth under
    /// way, so that growth finishes while the stripe is in use.
    pub(crate) fn place(&mut self, hash: u64, same_key: impl FnMut(&Entry) -> bool) -> Place<'_> {
        if self.table.migrating() {
            self.table.migrate(table::MIGRATE_SLOTS);
        }
        let pos = self.table.find(hash as u32, same_key);
        Place {
            table: &mut self.table,
            pos,
            bounds: &mut self.bounds,
        }
    }

    /// Hints the CPU to fetch where the lookup of `hash` will start.
    pub(crate) fn prefetch(&self, hash: u64) {
        self.table.prefetch(hash as u32);
    }

    /// Looks up without the intent to insert.
    pub(crate) fn find(&self, hash: u64, same_key: impl FnMut(&Entry) -> bool) -> Option<&Entry> {
        self.table.get(self.table.find(hash as u32, same_key))
    }

    /// Removes the key's entry, if any.
    pub(crate) fn remove(
        &mut self,
        hash: u64,
        same_key: impl FnMut(&Entry) -> bool,
    ) -> Option<Entry> {
        self.place(hash, same_key).take()
    }

    /// Whether the key whose hash is `hash` has an entry pointing at `loc`: found by
    /// location, so without reading any key.
    pub(crate) fn points_at(&self, hash: u64, loc: Location) -> bool {
        self.find(hash, |e| e.location() == loc).is_some()
    }

    /// Points the entry that points at `from` at `to` instead (the record moved: its copy
    /// is at `to`); `false` if no entry of the key whose hash is `hash` points at `from`.
    pub(crate) fn repoint(&mut self, hash: u64, from: Location, to: Location) -> bool {
        let pos = self.table.find(hash as u32, |e| e.location() == from);
        match self.table.get_mut(pos) {
            Some(e) => {
                e.slot = to.slot;
                e.offset = to.offset;
                true
            }
            None => false,
        }
    }

    /// Removes the entry pointing at `loc`, if the key whose hash is `hash` has one.
    pub(crate) fn remove_at_location(&mut self, hash: u64, loc: Location) -> Option<Entry> {
        self.remove(hash, |e| e.location() == loc)
    }

    /// One slice of a sweep pass: visits at most `budget` slots, from where the previous
    /// slice of this stripe's pass stopped (a new pass starts at slot 0), and drops every
    /// entry that has expired at `now_ms` and every entry `drop_also` picks; `dropped` sees
    /// each entry dropped. The caller takes the stripe lock for one slice at a time, so no
    /// lock is held for longer than `budget` slots take, however large the stripe. While
    /// the table is growing, a slice drains `budget` slots of the growth instead.
    ///
    /// Removing an entry moves the rest of its run back one slot; an entry that moves from
    /// the cursor to behind it between slices has its expiry noted in the pass's bound, so
    /// the bound stays true (the next pass drops it if expired). A growth or shrink during
    /// the pass renumbers the slots: the pass still ends, but may miss entries (the next
    /// pass finds them) and then does not raise the stripe's expiry lower bound. At the end
    /// of a pass the table starts shrinking if it has become sparse.
    pub(crate) fn sweep_slice(
        &mut self,
        now_ms: u64,
        budget: usize,
        mut drop_also: impl FnMut(&Entry) -> bool,
        mut dropped: impl FnMut(&Entry),
    ) -> SliceResult {
        let budget = budget.max(1);
        if self.table.migrating() {
            // The pass (if any) goes on once the growth is over.
            self.table.migrate(budget);
            return SliceResult {
                dropped: 0,
                done: false,
            };
        }
        let generation = self.table.generation();
        if !self.bounds.pass.active {
            self.bounds.pass = Pass {
                cursor: 0,
                active: true,
                generation,
                min: u32::MAX,
                disturbed: false,
            };
        } else if self.bounds.pass.generation != generation {
            self.bounds.pass.disturbed = true;
            self.bounds.pass.generation = generation;
        }
        let slots = self.table.slots();
        let mut i = self.bounds.pass.cursor.min(slots);
        let mut visited = 0;
        let mut n = 0;
        while visited < budget && i < slots {
            visited += 1;
            let Some(&e) = self.table.slot(i) else {
                i += 1;
                continue;
            };
            if e.expired_at(now_ms) || drop_also(&e) {
                dropped(&e);
                // The rest of the run moves back into slot `i`: look at it again.
                self.table.remove(Pos::Cur(i), usize::MAX, |_| {});
                n += 1;
            } else {
                self.bounds.pass.min = self.bounds.pass.min.min(e.expiry_secs);
                i += 1;
            }
        }
        if i < slots {
            self.bounds.pass.cursor = i;
            return SliceResult {
                dropped: n,
                done: false,
            };
        }
        // The pass is over. Undisturbed, it saw every entry that was here when it started
        // and `Place::put` and `Bounds::note` lowered `pass.min` for every one written or
        // moved behind the cursor since.
        if !self.bounds.pass.disturbed {
            self.bounds.min_expiry_secs = self.bounds.pass.min;
        }
        self.bounds.pass.cursor = 0;
        self.bounds.pass.active = false;
        // After mass expiry the memory goes back (a slice at a time, like growth).
        self.table.shrink_if_sparse();
        SliceResult {
            dropped: n,
            done: true,
        }
    }

    /// Whether a sweep pass is under way (started and not finished), or a growth that
    /// sweep slices drain.
    pub(crate) fn sweeping(&self) -> bool {
        self.bounds.pass.active || self.table.migrating()
    }

    /// Whether a sweep at `now_ms` could find anything expired here.
    pub(crate) fn may_have_expired(&self, now_ms: u64) -> bool {
        !self.table.is_empty() && u64::from(self.bounds.min_expiry_secs) * 1000 <= now_ms
    }

    /// Counts the entries expired at `now_ms` among at most `budget` slots from `start`;
    /// returns the count and where the next slice starts (`None`: the table is done). The
    /// entries of a growth still draining are counted with the first slice.
    pub(crate) fn count_expired_slice(
        &self,
        now_ms: u64,
        start: usize,
        budget: usize,
    ) -> (usize, Option<usize>) {
        if !self.may_have_expired(now_ms) {
            return (0, None);
        }
        let slots = self.table.slots();
        let end = start.saturating_add(budget.max(1)).min(slots);
        let mut n = (start.min(end)..end)
            .filter_map(|i| self.table.slot(i))
            .filter(|e| e.expired_at(now_ms))
            .count();
        if start == 0 {
            n += self
                .table
                .old_entries()
                .filter(|e| e.expired_at(now_ms))
                .count();
        }
        (n, (end < slots).then_some(end))
    }

    /// Entries in this stripe.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Heap bytes the table occupies.
    pub(crate) fn allocation_size(&self) -> usize {
        self.table.allocation_size()
    }

    /// Heap bytes the table has freed so far (growing and shrinking replace its arrays).
    pub(crate) fn freed_bytes(&self) -> u64 {
        self.table.freed_bytes()
    }

    /// Gives the table's slots back if its last entry is gone (a `remove` emptied it), as
    /// a sweep pass that ends on an empty table does; a later insert allocates anew.
    pub(crate) fn give_back_if_empty(&mut self) {
        self.table.release_if_empty();
    }

    /// Makes room for `n` entries if the stripe is empty.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.table.reserve(n);
    }
}

/// Keeps each stripe on its own cache lines so that two threads working on different
/// stripes do not slow each other down.
#[repr(align(128))]
struct Padded(Mutex<Stripe>);

/// The whole index.
pub(crate) struct Index {
    stripes: Box<[Padded]>,
    shift: u32,
}

impl Index {
    /// An index of `stripes` stripes (a power of two).
    pub(crate) fn new(stripes: usize) -> Index {
        let stripes = stripes.max(1).next_power_of_two();
        Index {
            stripes: (0..stripes)
                .map(|i| Padded(Mutex::new(Stripe::new(i as f64 / stripes as f64))))
                .collect(),
            shift: 64 - stripes.trailing_zeros(),
        }
    }

    /// The stripe number of the key whose hash is `hash`.
    pub(crate) fn stripe_of(&self, hash: u64) -> usize {
        // With one stripe the shift is 64, which `checked_shr` maps to stripe 0.
        hash.checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// Locks the stripe of the key whose hash is `hash`.
    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Stripe> {
        self.lock_stripe(self.stripe_of(hash))
    }

    /// Locks stripe `i` (which `stripe_of` returned). To hold several stripes at once, lock
    /// them in increasing order: that is the order every caller uses, so none deadlocks.
    pub(crate) fn lock_stripe(&self, i: usize) -> MutexGuard<'_, Stripe> {
        let n = self.stripes.len();
        // `i < n` always; the modulo only keeps a bug from becoming a panic.
        self.stripes[i % n].0.lock()
    }

    /// Number of stripes.
    pub(crate) fn stripes(&self) -> usize {
        self.stripes.len()
    }

    /// Takes and releases every stripe lock once: whoever was reading through an index
    /// entry when this started has finished when it returns.
    pub(crate) fn quiesce(&self) {
        for s in self.stripes.iter() {
            drop(s.0.lock());
        }
    }

    /// Makes room for `n` entries spread over the stripes, in stripes still empty.
    pub(crate) fn reserve(&self, n: usize) {
        let each = n / self.stripes.len();
        for s in self.stripes.iter() {
            s.0.lock().reserve(each);
        }
    }

    /// Visits every stripe in turn, each under its lock.
    pub(crate) fn for_each_stripe(&self, mut f: impl FnMut(&mut Stripe)) {
        for s in self.stripes.iter() {
            f(&mut s.0.lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(offset: u32) -> Location {
        Location { slot: 0, offset }
    }

    #[test]
    fn coarse_expiry_rounds_up_and_saturates() {
        assert_eq!(coarse_secs(0), 0);
        assert_eq!(coarse_secs(1), 1);
        assert_eq!(coarse_secs(1000), 1);
        assert_eq!(coarse_secs(1001), 2);
        assert_eq!(coarse_secs(u64::MAX), u32::MAX);
    }

    /// Regression: with the clock past February 2106, an entry whose coarse expiry had
    /// saturated counted as expired, and the sweep dropped live claims.
    #[test]
    fn a_saturated_coarse_expiry_never_counts_as_expired() {
        let loc = Location {
            slot: 0,
            offset: 64,
        };
        let far = Entry::new(1, loc, 253_402_300_799_999, 40);
        assert_eq!(far.expiry_secs, u32::MAX);
        assert!(!far.expired_at(u64::MAX));
        let last = u64::from(u32::MAX - 1) * 1000;
        let near = Entry::new(1, loc, last, 40);
        assert!(!near.expired_at(last - 1));
        assert!(near.expired_at(last));
    }

    #[test]
    fn equal_hashes_stay_apart_when_keys_differ() {
        // Two "keys" identified by offset share one hash; the closure decides identity.
        let index = Index::new(4);
        let hash = 0xdead_beef_u64;
        let mut s = index.lock(hash);
        for key in [1u32, 2] {
            let place = s.place(hash, |e| e.offset == key);
            assert!(place.entry().is_none(), "key {key} confused with another");
            assert_eq!(place.put(Entry::new(hash as u32, loc(key), 5000, 40)), None);
        }
        assert_eq!(s.len(), 2);
        assert!(s.find(hash, |e| e.offset == 2).is_some());
        assert!(s.remove(hash, |e| e.offset == 1).is_some());
        assert!(s.find(hash, |e| e.offset == 1).is_none());
        assert!(s.find(hash, |e| e.offset == 2).is_some());
    }

    /// Inserts `n` entries into `s` with hashes from `first`, expiring at `expires_ms`.
    fn key_hash(k: u64) -> u64 {
        k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16
    }

    fn fill(s: &mut Stripe, first: u64, n: u64, expires_ms: u64) {
        for k in first..first + n {
            let h = key_hash(k);
            let e = Entry::new(h as u32, loc(k as u32), expires_ms, 40);
            let replaced = s.place(h, |e| e.offset == k as u32).put(e);
            assert!(replaced.is_none(), "entry {k} inserted twice");
        }
    }

    /// Runs one whole pass in slices of `budget`; returns (entries dropped, slices taken),
    /// checking that no slice looked at more than `budget` entries.
    fn pass(s: &mut Stripe, now: u64, budget: usize) -> (usize, usize) {
        let (mut dropped, mut slices) = (0, 0);
        loop {
            let mut seen = 0;
            let mut seen_dropped = 0;
            let r = s.sweep_slice(
                now,
                budget,
                |_| {
                    seen += 1;
                    false
                },
                |_| seen_dropped += 1,
            );
            assert!(
                seen + seen_dropped <= budget,
                "a slice visited more than its budget"
            );
            assert_eq!(seen_dropped, r.dropped);
            dropped += r.dropped;
            slices += 1;
            if r.done {
                return (dropped, slices);
            }
        }
    }

    #[test]
    fn sweep_runs_in_bounded_slices_and_shrinks_at_the_end() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        let empty = s.allocation_size();
        fill(&mut s, 0, 10_000, 5_000);
        fill(&mut s, 10_000, 10, 60_000);
        settle(&mut s);
        let full = s.allocation_size();
        let slots = s.table.slots();
        assert!(!s.may_have_expired(4_000));
        assert!(s.may_have_expired(5_000));

        let (dropped, slices) = pass(&mut s, 5_000, 1000);
        assert_eq!(dropped, 10_000);
        // Every slot once, and each slot an entry left again (the run moved back).
        assert_eq!(slices, (slots + dropped).div_ceil(1000));
        assert_eq!(s.len(), 10);
        for k in 10_000..10_010u64 {
            let h = key_hash(k);
            assert!(
                s.find(h, |e| e.offset == k as u32).is_some(),
                "kept entry {k} lost"
            );
        }
        // The undisturbed pass raised the lower bound to the survivors' expiry.
        assert!(!s.may_have_expired(59_000));
        assert!(s.may_have_expired(60_000));
        // The shrink drains a slice at a time, like growth.
        assert!(s.sweeping(), "the sparse table is not shrinking");
        settle(&mut s);
        assert!(s.allocation_size() < full / 16, "sparse table not shrunk");

        pass(&mut s, 60_000, 1000);
        assert_eq!(s.len(), 0);
        settle(&mut s);
        assert!(s.allocation_size() <= empty.max(1024));
    }

    /// Finishes a growth or shrink under way.
    fn settle(s: &mut Stripe) {
        while !s.table.migrate(usize::MAX) {}
        s.table.check();
    }

    #[test]
    fn writes_between_slices_keep_the_expiry_bound_true() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        s.reserve(8_000);
        fill(&mut s, 0, 4_000, 100_000);
        let slots = s.table.slots();
        let generation = s.table.generation();
        // Most of a pass, then entries with an early expiry land (most of them behind the
        // cursor), then the pass ends: the bound must still see them.
        let r = s.sweep_slice(1_000, slots - 8, |_| false, |_| {});
        assert!(!r.done && s.sweeping());
        fill(&mut s, 4_000, 50, 2_000);
        assert_eq!(
            s.table.generation(),
            generation,
            "the test needs no growth here"
        );
        pass(&mut s, 1_000, 512);
        assert!(
            s.may_have_expired(2_000),
            "early entries hidden from the next sweep"
        );
        assert_eq!(pass(&mut s, 2_000, 512).0, 50);
        assert_eq!(s.len(), 4_000);
    }

    fn put(s: &mut Stripe, hash: u64, id: u32, expires_ms: u64) {
        let e = Entry::new(hash as u32, loc(id), expires_ms, 40);
        let replaced = s.place(hash, |e| e.offset == id).put(e);
        assert!(replaced.is_none(), "entry {id} inserted twice");
    }

    /// Regression (found by the model test): a slice of budget 1 that dropped the entry in
    /// slot 0 left the cursor at 1, which also meant "pass under way", so the entry that
    /// moved back into slot 0 was never looked at and the bound rose over it.
    #[test]
    fn a_slice_that_drops_slot_zero_looks_at_it_again() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        put(&mut s, 0, 1, 1_000);
        put(&mut s, 0, 2, 1_000);
        put(&mut s, 0, 3, 9_000);
        assert_eq!(pass(&mut s, 1_000, 1).0, 2);
        assert_eq!(s.len(), 1);
        assert!(s.may_have_expired(9_000));
    }

    #[test]
    fn an_entry_moved_back_behind_the_cursor_stays_under_the_bound() {
        // Removing entries moves the rest of their run back: one can move from the cursor
        // of a pass to behind it, where the pass will not see it.
        let index = Index::new(1);
        let mut s = index.lock(0);
        s.reserve(8_000);
        fill(&mut s, 0, 2_000, 50_000);
        let h = 0x4000_0000u64;
        for id in 0..100 {
            put(&mut s, h, 10_000 + id, 50_000);
        }
        let early = 20_000;
        put(&mut s, h + 1, early, 1_000);
        let generation = s.table.generation();
        let Pos::Cur(at) = s.table.find(h as u32 + 1, |e| e.offset == early) else {
            panic!("entry lost");
        };
        assert!(!s.sweep_slice(0, at, |_| false, |_| {}).done);
        for id in 0..100 {
            assert!(s.place(h, |e| e.offset == 10_000 + id).take().is_some());
        }
        let Pos::Cur(now_at) = s.table.find(h as u32 + 1, |e| e.offset == early) else {
            panic!("entry lost");
        };
        assert!(now_at < at, "the test needs the entry behind the cursor");
        assert_eq!(s.table.generation(), generation, "the test needs no growth");
        pass(&mut s, 0, 256);
        assert!(
            s.may_have_expired(1_000),
            "the pass raised the bound over an entry it missed"
        );
        assert_eq!(pass(&mut s, 1_000, 256).0, 1);
    }

    #[test]
    fn a_pass_that_a_growth_disturbs_keeps_the_expiry_bound_low() {
        // A growth renumbers the slots under a pass; entries only move forward with it,
        // but the old table is drained a slice at a time, and an entry whose run shrinks
        // meanwhile can land behind the cursor. Build that case on purpose: a run of 300
        // entries sharing one hash, and an early-expiring entry right after it.
        let index = Index::new(1);
        let mut s = index.lock(0);
        fill(&mut s, 0, 4_000, 50_000);
        let h = 0x0800_0000u64;
        for id in 0..300 {
            put(&mut s, h, 10_000 + id, 50_000);
        }
        let early = 20_000;
        put(&mut s, h + 1, early, 1_000);
        settle(&mut s);
        let Pos::Cur(at) = s.table.find(h as u32 + 1, |e| e.offset == early) else {
            panic!("entry lost");
        };
        // A slice up to it (nothing expires at 0): the cursor is at the early entry.
        let r = s.sweep_slice(0, at, |_| false, |_| {});
        assert!(!r.done);
        // A growth starts, and the run goes away while the growth drains.
        let generation = s.table.generation();
        let mut n = 4_000;
        while s.table.generation() == generation {
            fill(&mut s, n, 1, 50_000);
            n += 1;
        }
        for id in 0..300 {
            assert!(s.place(h, |e| e.offset == 10_000 + id).take().is_some());
        }
        settle(&mut s);
        let Pos::Cur(now_at) = s.table.find(h as u32 + 1, |e| e.offset == early) else {
            panic!("entry lost in growth");
        };
        assert!(now_at < at, "the test needs the entry behind the cursor");
        pass(&mut s, 0, 256);
        assert!(
            s.may_have_expired(1_000),
            "a disturbed pass raised the bound over an entry it missed"
        );
        // Whatever the disturbed pass missed, the next pass drops.
        assert_eq!(pass(&mut s, 1_000, 256).0, 1);
        assert_eq!(s.len(), n as usize);
    }

    #[test]
    fn counting_expired_in_slices_matches_the_truth() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        fill(&mut s, 0, 3_000, 1_000);
        fill(&mut s, 3_000, 777, 9_000);
        let mut total = 0;
        let mut at = Some(0);
        while let Some(start) = at {
            let (n, next) = s.count_expired_slice(1_000, start, 300);
            total += n;
            at = next;
        }
        assert_eq!(total, 3_000);
        assert_eq!(s.count_expired_slice(999, 0, usize::MAX), (0, None));
    }

    #[test]
    fn a_stripe_allocates_nothing_until_its_first_entry() {
        let index = Index::new(1024);
        let total = |index: &Index| {
            (0..1024)
                .map(|i| index.lock_stripe(i).allocation_size())
                .sum::<usize>()
        };
        assert_eq!(total(&index), 0);
        let mut s = index.lock(0);
        assert!(s.place(5, |_| true).entry().is_none());
        assert_eq!(s.allocation_size(), 0, "a lookup allocated");
        s.place(5, |_| false).put(Entry::new(5, loc(64), 9_000, 40));
        assert!(s.allocation_size() > 0);
        assert!(s.place(5, |_| true).entry().is_some());
        drop(s);
        assert_eq!(total(&index), index.lock(0).allocation_size());
    }

    #[test]
    fn a_stripe_emptied_in_the_middle_of_a_growth_gives_both_tables_back() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        // Distinct hashes spread over the table; stop as soon as a growth is under way.
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut n = 0;
        while !s.table.migrating() {
            let h = hash(n);
            let e = Entry::new(h as u32, loc(64 * n as u32), 9_000, 40);
            s.place(h, |_| false).put(e);
            n += 1;
        }
        assert!(s.allocation_size() > 0);
        // Removed without the growth step each `place` takes (as sweeps and removes that
        // meet a long growth leave it unfinished).
        for i in 0..n {
            let h = hash(i);
            let offset = 64 * i as u32;
            let pos = s.table.find(h as u32, |e| e.offset == offset);
            assert!(
                s.table.remove(pos, usize::MAX, |_| {}).is_some(),
                "entry {i}"
            );
            if i + 1 < n {
                s.give_back_if_empty();
                assert!(s.allocation_size() > 0, "given back with entries left");
            }
        }
        assert!(s.table.migrating(), "the growth is still under way");
        s.give_back_if_empty();
        assert_eq!(s.allocation_size(), 0);
        // It works as a new stripe does.
        let e = Entry::new(7, loc(64), 9_000, 40);
        s.place(7, |_| false).put(e);
        assert_eq!(s.place(7, |_| true).entry(), Some(&e));
        assert_eq!(s.len(), 1);
    }

    /// The docs of `Stats::index_bytes` and `Options::stripes`, and README, name this size:
    /// what each stripe takes besides its table, from `open` on.
    #[test]
    fn a_stripe_takes_256_bytes() {
        assert_eq!(std::mem::size_of::<Padded>(), 256);
    }

    #[test]
    fn a_table_near_its_load_limit_writes_its_next_slots_before_it_grows() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let put = |s: &mut Stripe, i: u64| {
            let h = hash(i);
            s.place(h, |_| false)
                .put(Entry::new(h as u32, loc(64 * i as u32), 9_000, 40));
        };
        // Small tables come from the allocator's heap and get no spare; grow past them.
        let mut n = 0;
        let mut last_spare = None;
        let grown = loop {
            let before = s.allocation_size();
            let freed = s.freed_bytes();
            let was_migrating = s.table.migrating();
            put(&mut s, n);
            n += 1;
            s.table.check();
            if let Some((at, _, _)) = s.table.spare() {
                if last_spare.is_none() {
                    let (_, _, pages) = s.table.spare().unwrap();
                    assert!(
                        s.allocation_size() >= before + (pages - 1) * 4096,
                        "the spare is not counted in the stripe's bytes"
                    );
                }
                last_spare = s.table.spare();
                assert_eq!(last_spare.map(|(p, ..)| p), Some(at));
            } else if !was_migrating && s.table.migrating() {
                if let Some(spare) = last_spare {
                    // Nothing was given back: the spare became the current slots (an
                    // address alone could be a new array where the spare was).
                    assert_eq!(s.freed_bytes(), freed, "the growth did not take the spare");
                    break spare;
                }
            }
            assert!(n < 20_000, "no growth with a spare");
        };
        let (at, written, pages) = grown;
        assert_eq!(written, pages, "pages left unwritten when the growth began");
        assert_eq!(
            s.table.current_slots(),
            at,
            "the growth did not take the spare"
        );
        // The next spare goes once removes take the table well below its limit (three
        // quarters of the entries gone is enough), before the stripe is emptied.
        while s.table.spare().is_none() {
            put(&mut s, n);
            n += 1;
        }
        let freed = s.freed_bytes();
        for i in 0..n {
            let h = hash(i);
            let offset = 64 * i as u32;
            let pos = s.table.find(h as u32, |e| e.offset == offset);
            assert!(s.table.remove(pos, usize::MAX, |_| {}).is_some());
            s.table.check_spare();
            if i == n * 3 / 4 {
                assert!(s.table.spare().is_none(), "a spare outlived most entries");
                assert!(s.freed_bytes() > freed, "the dropped spare is not counted");
            }
        }
        s.give_back_if_empty();
        assert_eq!(s.allocation_size(), 0);
        assert!(s.table.spare().is_none());
    }

    #[test]
    fn single_stripe_index_works() {
        let index = Index::new(1);
        let mut s = index.lock(u64::MAX);
        assert!(s.place(1, |_| true).entry().is_none());
    }

    #[test]
    fn a_put_replaces_the_keys_entry_and_lowers_the_expiry_bound() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        let hash = 0x1234_5678_9abc_u64;
        let first = Entry::new(hash as u32, loc(64), 90_000, 40);
        assert_eq!(s.place(hash, |_| true).put(first), None);
        assert!(!s.may_have_expired(80_000));
        let second = Entry::new(hash as u32, loc(128), 50_000, 48);
        assert_eq!(s.place(hash, |_| true).put(second), Some(first));
        assert_eq!(s.len(), 1);
        assert!(s.may_have_expired(50_000), "the bound missed the rewrite");
        assert_eq!(s.place(hash, |_| true).entry(), Some(&second));
        assert_eq!(s.place(hash, |_| true).take(), Some(second));
        assert_eq!(s.place(hash, |_| true).take(), None);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn entries_are_found_and_moved_by_location() {
        let index = Index::new(1);
        let mut s = index.lock(0);
        let hash = 77u64;
        let (a, b) = (
            loc(64),
            Location {
                slot: 3,
                offset: 64,
            },
        );
        s.place(hash, |_| false)
            .put(Entry::new(hash as u32, a, 9_000, 40));
        assert!(s.points_at(hash, a) && !s.points_at(hash, b));
        assert!(!s.points_at(hash + 1, a), "another key's hash");
        assert!(s.repoint(hash, a, b));
        assert!(!s.points_at(hash, a) && s.points_at(hash, b));
        assert!(!s.repoint(hash, a, b), "nothing points at the old place");
        assert_eq!(s.remove_at_location(hash, b).map(|e| e.location()), Some(b));
        assert_eq!(s.len(), 0);
    }

    mod model {
        //! The stripe against a `HashMap` model: random writes, removals, moves and sweep
        //! slices, with hashes spread or forced to collide, the table's invariants checked
        //! as it grows and shrinks.

        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Op {
            Put(u32, u64),
            Take(u32),
            Find(u32),
            Repoint(u32),
            Sweep(u64, usize),
            Reserve(usize),
        }

        fn op(ids: u32) -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (0..ids, 1..40u64).prop_map(|(k, e)| Op::Put(k, e * 1000)),
                3 => (0..ids).prop_map(Op::Take),
                2 => (0..ids).prop_map(Op::Find),
                1 => (0..ids).prop_map(Op::Repoint),
                2 => (0..40u64, 1..300usize).prop_map(|(t, b)| Op::Sweep(t * 1000, b)),
                1 => (0..4000usize).prop_map(Op::Reserve),
            ]
        }

        #[derive(Debug, Clone, Copy)]
        enum Hashes {
            Spread,
            /// Seven hash values for all keys: long runs of equal hashes.
            Seven,
            /// Seven hash values at the very end of the range: the runs spill into the
            /// slack and overflow it, which makes the table grow early or rebuild.
            SevenAtTheEnd,
        }

        fn run(ops: Vec<Op>, hashes: Hashes) {
            let hash = |k: u32| -> u64 {
                match hashes {
                    Hashes::Spread => key_hash(u64::from(k)),
                    Hashes::Seven => u64::from(k % 7) << 29,
                    Hashes::SevenAtTheEnd => u64::from(u32::MAX - k % 7),
                }
            };
            let index = Index::new(1);
            let mut s = index.lock(0);
            let mut model: HashMap<u32, Entry> = HashMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Put(k, exp) => {
                        let (h, at) = (hash(k), Location { slot: 1, offset: k });
                        let e = Entry::new(h as u32, at, exp, 40);
                        let old = s.place(h, |e| e.offset == k).put(e);
                        assert_eq!(old, model.insert(k, e), "put {k}");
                    }
                    Op::Take(k) => {
                        let got = s.place(hash(k), |e| e.offset == k).take();
                        assert_eq!(got, model.remove(&k), "take {k}");
                    }
                    Op::Find(k) => {
                        let got = s.find(hash(k), |e| e.offset == k).copied();
                        assert_eq!(got, model.get(&k).copied(), "find {k}");
                    }
                    Op::Repoint(k) => {
                        let h = hash(k);
                        let Some(e) = model.get_mut(&k) else {
                            assert!(!s.repoint(h, Location { slot: 1, offset: k }, loc(k)));
                            continue;
                        };
                        let to = Location {
                            slot: e.slot + 1,
                            offset: k,
                        };
                        assert!(s.repoint(h, e.location(), to), "repoint {k}");
                        e.slot = to.slot;
                        assert!(s.points_at(h, to));
                    }
                    Op::Sweep(now, budget) => {
                        let mut gone = Vec::new();
                        s.sweep_slice(now, budget, |_| false, |e| gone.push(*e));
                        for e in gone {
                            assert!(e.expired_at(now), "dropped a live entry");
                            assert_eq!(model.remove(&e.offset), Some(e), "dropped twice");
                        }
                    }
                    Op::Reserve(r) => s.reserve(r),
                }
                assert_eq!(s.len(), model.len());
                // The bound never hides an expired entry.
                for e in model.values() {
                    assert!(s.may_have_expired(u64::from(e.expiry_secs) * 1000));
                }
                s.table.check_spare();
                if n % 64 == 0 {
                    s.table.check();
                }
            }
            s.table.check();
            for (k, e) in &model {
                assert_eq!(s.find(hash(*k), |x| x.offset == *k), Some(e));
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn spread_hashes(ops in proptest::collection::vec(op(3000), 1..3000)) {
                run(ops, Hashes::Spread);
            }

            #[test]
            fn colliding_hashes(ops in proptest::collection::vec(op(400), 1..1500)) {
                run(ops, Hashes::Seven);
            }

            #[test]
            fn colliding_hashes_that_overflow(ops in proptest::collection::vec(op(400), 1..1500)) {
                run(ops, Hashes::SevenAtTheEnd);
            }
        }
    }
}
