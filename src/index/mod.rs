//! The in-memory index: lock-striped hash tables of fixed-size entries.
//!
//! Invariants:
//!
//! - An entry is 16 bytes whatever the key length: it holds 32 bits of the key's hash, where
//!   the key's newest record lives, and a coarse expiry. The key itself stays in the log.
//! - Two different keys are never confused (DESIGN invariant 2): entries are matched by
//!   hash bits *and* by comparing the key bytes stored in the log, which the caller does in
//!   the `eq` closures it passes in.
//! - A key's stripe is chosen from the top bits of its 64-bit hash; the hash bits kept in the
//!   entry are the low 32, so the two are independent. Everything that reads or changes a
//!   key's entry, and appends that key's records, holds that stripe's lock.
//! - At most one live entry per key: callers look up before inserting, under the lock.

use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use parking_lot::{Mutex, MutexGuard};

use crate::log::Location;

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

impl Entry {
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
    /// which is rounded up, so never early).
    pub(crate) fn expired_at(&self, now_ms: u64) -> bool {
        u64::from(self.expiry_secs) * 1000 <= now_ms
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

/// The table's own hash of an entry, derived only from the stored hash bits so that a table
/// can grow without going back to the keys.
fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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

/// One lock's worth of the index.
pub(crate) struct Stripe {
    table: HashTable<Entry>,
    pub(crate) counters: Counters,
    /// No entry expires before this second (a lower bound: entries replaced or removed since
    /// the last sweep may have held it). Lets a sweep skip stripes with nothing expired.
    min_expiry_secs: u32,
}

/// A found entry, ready to be read, replaced or removed.
pub(crate) enum Slot<'a> {
    /// The key has an entry.
    Occupied(hashbrown::hash_table::OccupiedEntry<'a, Entry>),
    /// The key has none; inserting here is one probe.
    Vacant(hashbrown::hash_table::VacantEntry<'a, Entry>, u32),
}

impl Stripe {
    /// Finds the entry of the key whose hash is `hash`; `same_key` compares an entry's key
    /// (read from the log) with the one looked for.
    pub(crate) fn slot(&mut self, hash: u64, mut same_key: impl FnMut(&Entry) -> bool) -> Slot<'_> {
        let h = hash as u32;
        match self.table.entry(
            table_hash(h),
            |e| e.hash == h && same_key(e),
            |e| table_hash(e.hash),
        ) {
            TableEntry::Occupied(o) => Slot::Occupied(o),
            TableEntry::Vacant(v) => Slot::Vacant(v, h),
        }
    }

    /// Looks up without the intent to insert.
    pub(crate) fn find(
        &self,
        hash: u64,
        mut same_key: impl FnMut(&Entry) -> bool,
    ) -> Option<&Entry> {
        let h = hash as u32;
        self.table
            .find(table_hash(h), |e| e.hash == h && same_key(e))
    }

    /// Removes the key's entry, if any.
    pub(crate) fn remove(
        &mut self,
        hash: u64,
        mut same_key: impl FnMut(&Entry) -> bool,
    ) -> Option<Entry> {
        let h = hash as u32;
        match self
            .table
            .find_entry(table_hash(h), |e| e.hash == h && same_key(e))
        {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// The entry pointing at `loc`, for the key whose hash is `hash`: found by location, so
    /// without reading any key.
    pub(crate) fn at_location(&mut self, hash: u64, loc: Location) -> Option<&mut Entry> {
        let h = hash as u32;
        self.table
            .find_mut(table_hash(h), |e| e.hash == h && e.location() == loc)
    }

    /// Removes the entry pointing at `loc`, if the key whose hash is `hash` has one.
    pub(crate) fn remove_at_location(&mut self, hash: u64, loc: Location) -> Option<Entry> {
        let h = hash as u32;
        match self
            .table
            .find_entry(table_hash(h), |e| e.hash == h && e.location() == loc)
        {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Drops every entry that has expired at `now_ms`, and every entry `drop_also` picks;
    /// `dropped` sees each entry dropped. Shrinks the table when it has become sparse.
    /// Returns the number of entries dropped.
    pub(crate) fn sweep(
        &mut self,
        now_ms: u64,
        mut drop_also: impl FnMut(&Entry) -> bool,
        mut dropped: impl FnMut(&Entry),
    ) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        let before = self.table.len();
        let mut min = u32::MAX;
        self.table.retain(|e| {
            if e.expired_at(now_ms) || drop_also(e) {
                dropped(e);
                false
            } else {
                min = min.min(e.expiry_secs);
                true
            }
        });
        self.min_expiry_secs = min;
        let len = self.table.len();
        // Shrink when three quarters of the room is unused: after mass expiry the memory
        // goes back, and a table that is merely breathing (grow, shrink, grow) is left alone.
        if len < self.table.capacity() / 4 {
            self.table.shrink_to(len * 2, |e| table_hash(e.hash));
        }
        before - len
    }

    /// Whether a sweep at `now_ms` could find anything expired here.
    pub(crate) fn may_have_expired(&self, now_ms: u64) -> bool {
        !self.table.is_empty() && u64::from(self.min_expiry_secs) * 1000 <= now_ms
    }

    /// Notes the expiry of an entry being inserted (keeps `may_have_expired` exact enough).
    pub(crate) fn note_expiry(&mut self, e: &Entry) {
        self.min_expiry_secs = self.min_expiry_secs.min(e.expiry_secs);
    }

    /// Entries that have expired at `now_ms` and are still here.
    pub(crate) fn count_expired(&self, now_ms: u64) -> usize {
        if !self.may_have_expired(now_ms) {
            return 0;
        }
        self.table.iter().filter(|e| e.expired_at(now_ms)).count()
    }

    /// Entries in this stripe.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Heap bytes the table occupies.
    pub(crate) fn allocation_size(&self) -> usize {
        self.table.allocation_size()
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
                .map(|_| {
                    Padded(Mutex::new(Stripe {
                        table: HashTable::new(),
                        counters: Counters::default(),
                        min_expiry_secs: u32::MAX,
                    }))
                })
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

    #[test]
    fn equal_hashes_stay_apart_when_keys_differ() {
        // Two "keys" identified by offset share one hash; the closure decides identity.
        let index = Index::new(4);
        let hash = 0xdead_beef_u64;
        let mut s = index.lock(hash);
        for key in [1u32, 2] {
            match s.slot(hash, |e| e.offset == key) {
                Slot::Vacant(v, h) => {
                    v.insert(Entry::new(h, loc(key), 5000, 40));
                }
                Slot::Occupied(_) => panic!("key {key} confused with another"),
            }
        }
        assert_eq!(s.len(), 2);
        assert!(s.find(hash, |e| e.offset == 2).is_some());
        assert!(s.remove(hash, |e| e.offset == 1).is_some());
        assert!(s.find(hash, |e| e.offset == 1).is_none());
        assert!(s.find(hash, |e| e.offset == 2).is_some());
    }

    #[test]
    fn single_stripe_index_works() {
        let index = Index::new(1);
        let mut s = index.lock(u64::MAX);
        assert!(matches!(s.slot(1, |_| true), Slot::Vacant(..)));
    }
}
