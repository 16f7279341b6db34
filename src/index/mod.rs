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
    /// What the key's state is (`STATE_*`).
    pub(crate) state: u16,
    /// Expiry in whole seconds since the epoch, rounded up (saturating): if the current
    /// second is past it, the entry has certainly expired. The exact expiry is in the record.
    pub(crate) expiry_secs: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

impl Entry {
    pub(crate) fn new(hash: u32, loc: Location, expires_ms: u64) -> Entry {
        Entry {
            hash,
            offset: loc.offset,
            slot: loc.slot,
            state: STATE_CLAIMED,
            expiry_secs: coarse_secs(expires_ms),
        }
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
}

/// One lock's worth of the index.
pub(crate) struct Stripe {
    table: HashTable<Entry>,
    pub(crate) counters: Counters,
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
                    v.insert(Entry::new(h, loc(key), 5000));
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
