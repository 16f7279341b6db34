//! One stripe's hash table: an ordered linear-probing table of 16-byte entries that grows
//! and shrinks a slice at a time, so no lock hold ever rehashes a whole table.
//!
//! Layout. A table of capacity `cap` has `cap + slack(cap)` slots. The home slot of an entry
//! is `(hash * cap) >> 32` (its 32 stored hash bits scaled to `0..cap`), so homes are in hash
//! order, and an entry whose run of neighbours passes the last home slot spills into the
//! slack instead of wrapping to the front. An empty slot is `Entry::EMPTY`; there are no
//! control bytes and no tombstones: 16 bytes a slot, nothing else.
//!
//! Invariants (`Table::check` verifies them in tests):
//!
//! 1. **Probing**: an entry in slot `i` has its home at or before `i`, and every slot from
//!    its home to `i` is occupied.
//! 2. **Order**: in a run of occupied slots the stored hashes never decrease. With (1), a
//!    lookup scans from the home slot and stops at the first empty slot or larger hash, so
//!    a miss costs about as much as a hit. (An ordered table in the sense of Amble and
//!    Knuth; removal shifts the rest of the run back, so no tombstones are needed.)
//! 3. **Growth is incremental**: when the table outgrows its load limit, a larger one is
//!    allocated and the old one is *drained* into it `MIGRATE_SLOTS` slots at a time, in
//!    slot order, by later operations. Meanwhile every entry is in exactly one of the two,
//!    new entries go to the new one, the old one's slots below `next` are empty, and (1)
//!    and (2) hold for the rest of it with lookups starting at `max(home, next)`.
//! 4. `len` counts occupied slots.
//! 5. **Spare**: a table close to its load limit may hold the empty slots of its next
//!    growth step, made before they are needed and written a few pages per insert, so that
//!    starting the growth faults no page in under the lock (`Table::prepare_growth`). It
//!    holds none during a growth, nor once removes took it well away from the limit, and
//!    any other change of size drops it.
//!
//! Capacities grow by a third at a load of 0.85, so a table's load stays between 0.64 and
//! 0.85 (16 / 0.64 = 25 bytes a key at worst, before slack). Stripes start at different
//! capacities (`Table::new`'s phase) so that they do not all grow at once: a store's
//! memory per key is then close to the average over that range, not its worst.

use super::Entry;

/// Load limit: a table grows when `len > cap * MAX_LOAD_NUM / MAX_LOAD_DEN`.
const MAX_LOAD_NUM: usize = 85;
const MAX_LOAD_DEN: usize = 100;

/// Smallest capacity (homes) of a table.
const MIN_CAP: usize = 16;

/// Old slots each migration step drains: 128 slots are 2 KiB of entries and about a
/// microsecond of work, and draining a whole old table takes `cap / 128` steps, well
/// before the new table (a third larger) can fill up.
pub(crate) const MIGRATE_SLOTS: usize = 128;

/// A table starts preparing its next growth step's slots when it is `cap / SPARE_LEAD`
/// entries short of its load limit, and writes `SPARE_PAGES` of their pages per insert:
/// those slots take about `cap * 4/3 * 16 / 4096 = cap / 192` pages, all written within
/// `cap / 768` inserts, half the lead. A shorter lead keeps fewer spares alive at a time
/// (memory); more pages per insert make each insert's share of faults larger.
#[cfg(not(test))]
const SPARE_LEAD: usize = 384;
#[cfg(test)]
const SPARE_LEAD: usize = 8;
const SPARE_PAGES: usize = 4;

/// Smaller arrays come from the allocator's heap, already in memory. (Unit tests make
/// spares at every size, and with a longer lead, so that the model tests reach every
/// path a spare takes.)
#[cfg(not(test))]
const SPARE_MIN_BYTES: usize = 64 * 1024;
#[cfg(test)]
const SPARE_MIN_BYTES: usize = 1;

/// Slots past the last home, so that the last runs need not wrap: a full run there is
/// rare (a longer one makes the table grow early instead).
fn slack(cap: usize) -> usize {
    16 + cap / 64
}

/// Capacity grows by this factor a step. Smaller steps keep the load higher (less memory a
/// key) but move every entry more often (1 / (GROWTH - 1) times over its life): with 1.2,
/// draining took 11 % of a 2-thread claim run's CPU and claims/s fell 10-20 % against 4/3
/// (`oncelog bench --threads 2 --keys 1000000`), for 0.5 B/key less.
const GROWTH: f64 = 4.0 / 3.0;

/// The capacity of growth step `level` for a table of phase `phase` (`0.0..1.0`):
/// `MIN_CAP * GROWTH^(level + phase)`, so that tables of evenly spread phases have evenly
/// spread capacities at every size.
fn cap_at(level: u32, phase: f64) -> usize {
    (MIN_CAP as f64 * GROWTH.powf(f64::from(level) + phase)).round() as usize
}

fn home(hash: u32, cap: usize) -> usize {
    ((u64::from(hash) * cap as u64) >> 32) as usize
}

/// One array of slots.
struct Slots {
    slots: Box<[Entry]>,
    /// Home slots (the rest is slack).
    cap: usize,
    /// Occupied slots.
    len: usize,
}

impl Slots {
    /// No slots at all: a table that has never held an entry allocates nothing.
    fn none() -> Slots {
        Slots {
            slots: Box::new([]),
            cap: 0,
            len: 0,
        }
    }

    fn with_cap(cap: usize) -> Slots {
        Slots {
            slots: vec![Entry::EMPTY; cap + slack(cap)].into_boxed_slice(),
            cap,
            len: 0,
        }
    }

    /// Empty slots for `cap` homes whose pages the system supplies only as they are first
    /// written (`Spare`).
    fn lazy(cap: usize) -> Slots {
        Slots {
            slots: crate::heap::zeroed_slice(cap + slack(cap)),
            cap,
            len: 0,
        }
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val::<[Entry]>(&self.slots)
    }

    fn limit(&self) -> usize {
        self.cap * MAX_LOAD_NUM / MAX_LOAD_DEN
    }

    fn home(&self, hash: u32) -> usize {
        home(hash, self.cap)
    }

    /// Scans for the entry with `hash` that `eq` accepts, from slot `from` (at or after the
    /// home): `Ok(slot)` if found, else `Err(slot)`, where an entry with `hash` would go
    /// (the first empty slot or larger hash; `slots.len()` if the run reaches the end).
    fn scan(
        &self,
        hash: u32,
        from: usize,
        mut eq: impl FnMut(&Entry) -> bool,
    ) -> Result<usize, usize> {
        let mut i = from;
        while let Some(e) = self.slots.get(i) {
            if e.is_empty() || e.hash > hash {
                return Err(i);
            }
            if e.hash == hash && eq(e) {
                return Ok(i);
            }
            i += 1;
        }
        Err(i)
    }

    /// Puts `e` in slot `at` (where `scan` said it goes), moving the rest of the run up one
    /// slot. `false`, changing nothing, if the run already reaches the last slot.
    fn insert_at(&mut self, at: usize, e: Entry) -> bool {
        let Some(gap) = self
            .slots
            .get(at..)
            .and_then(|s| s.iter().position(Entry::is_empty))
        else {
            return false;
        };
        let end = at + gap;
        self.slots.copy_within(at..end, at + 1);
        self.slots[at] = e;
        self.len += 1;
        true
    }

    /// Inserts `e`, which must not be in the table; `false` if the run would overflow.
    fn insert(&mut self, e: Entry) -> bool {
        let at = match self.scan(e.hash, self.home(e.hash), |_| false) {
            Ok(i) | Err(i) => i,
        };
        self.insert_at(at, e)
    }

    /// Empties slot `at` and moves back the entries after it that are past their homes, so
    /// that (1) and (2) hold again without a tombstone. Entries never move below `floor`.
    /// Calls `moved(from)` for each entry moved from slot `from` to `from - 1`.
    fn remove_at(
        &mut self,
        at: usize,
        floor: usize,
        mut moved: impl FnMut(usize, &Entry),
    ) -> Entry {
        let removed = std::mem::replace(&mut self.slots[at], Entry::EMPTY);
        self.len -= 1;
        let mut hole = at;
        while let Some(&e) = self.slots.get(hole + 1) {
            if e.is_empty() || self.home(e.hash).max(floor) > hole {
                break;
            }
            self.slots[hole] = e;
            moved(hole + 1, &e);
            hole += 1;
        }
        self.slots[hole] = Entry::EMPTY;
        removed
    }
}

/// Where `Table::find` found an entry, or where a new one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pos {
    /// In the current table's slot.
    Cur(usize),
    /// In the slot of the table being drained.
    Old(usize),
    /// Absent; it would go in this slot of the current table (`slots()` if that run is
    /// full up to the end).
    Vacant(usize),
}

/// A table being drained into the current one.
struct Old {
    slots: Slots,
    /// Slots below this one have been drained.
    next: usize,
}

/// The slots of the next growth step, made shortly before the table reaches its load
/// limit and written a few pages per insert from then on, so that the growth itself finds
/// them in memory (`Table::prepare_growth`).
struct Spare {
    slots: Slots,
    level: u32,
    /// Pages written so far, from the front.
    pages: usize,
}

/// One stripe's table.
pub(crate) struct Table {
    cur: Slots,
    old: Option<Old>,
    spare: Option<Spare>,
    /// Counts every new current table, so that a sweep pass can tell that slot numbers
    /// changed under it.
    generation: u64,
    /// The current table's growth step (see `cap_at`).
    level: u32,
    /// Where in a growth step this table's capacities fall, `0.0..1.0`.
    phase: f64,
    /// Bytes of slot arrays this table has given back to the allocator so far.
    freed: u64,
}

impl Table {
    /// An empty table whose capacities are `phase` (`0.0..1.0`) of the way through one
    /// growth step: tables given evenly spread phases grow at evenly spread sizes. It has
    /// no slots until its first insert (a store has a thousand stripes, most of them empty
    /// while it is small), which makes it growth step 0.
    pub(crate) fn new(phase: f64) -> Table {
        let phase = if (0.0..1.0).contains(&phase) {
            phase
        } else {
            0.0
        };
        Table {
            cur: Slots::none(),
            old: None,
            spare: None,
            generation: 0,
            level: 0,
            phase,
            freed: 0,
        }
    }

    /// The lowest growth step whose capacity is at least `cap`.
    fn level_for(&self, cap: usize) -> u32 {
        let mut level = 0;
        while cap_at(level, self.phase) < cap && level < 200 {
            level += 1;
        }
        level
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.cur.len + self.old.as_ref().map_or(0, |o| o.slots.len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the slots.
    pub(crate) fn allocation_size(&self) -> usize {
        self.cur.bytes()
            + self.old.as_ref().map_or(0, |o| o.slots.bytes())
            + self.spare.as_ref().map_or(0, |s| s.slots.bytes())
    }

    /// Drops the spare slots, if any (the table is changing size some other way).
    fn drop_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            self.freed += spare.slots.bytes() as u64;
        }
    }

    /// How far short of its load limit a table starts making its spare.
    fn spare_lead(&self) -> usize {
        self.cur.cap / SPARE_LEAD + 1
    }

    /// Drops the spare once removes (a caller's or a sweep's) took the table well away
    /// from its limit: it may not be needed for a long time, and after mass expiry its
    /// memory goes back with the rest. Four times the lead, so that a table whose size
    /// wavers near the limit does not make and drop spares over and over.
    fn drop_spare_if_far(&mut self) {
        if self.spare.is_some() && self.cur.len + 4 * self.spare_lead() < self.cur.limit() {
            self.drop_spare();
        }
    }

    /// Near the load limit, makes the next growth step's slots and writes `SPARE_PAGES`
    /// of their pages per call, so that none is first written (a page fault, several
    /// microseconds each on some virtual machines) all at once under the stripe's lock
    /// when the growth starts.
    fn prepare_growth(&mut self) {
        if self.old.is_some() || self.cur.len + self.spare_lead() < self.cur.limit() {
            return;
        }
        let level = self.level + 1;
        match &mut self.spare {
            None => {
                let cap = cap_at(level, self.phase);
                if (cap + slack(cap)) * std::mem::size_of::<Entry>() < SPARE_MIN_BYTES {
                    return;
                }
                self.spare = Some(Spare {
                    slots: Slots::lazy(cap),
                    level,
                    pages: 0,
                });
            }
            Some(spare) => {
                const PER_PAGE: usize = 4096 / std::mem::size_of::<Entry>();
                let slots = &mut spare.slots.slots;
                for _ in 0..SPARE_PAGES {
                    let Some(slot) = slots.get_mut(spare.pages * PER_PAGE) else {
                        return;
                    };
                    crate::heap::touch(slot, Entry::EMPTY);
                    spare.pages += 1;
                }
            }
        }
    }

    /// Bytes of slot arrays this table has given back to the allocator so far.
    pub(crate) fn freed_bytes(&self) -> u64 {
        self.freed
    }

    /// Slots of the current table (a sweep's range).
    pub(crate) fn slots(&self) -> usize {
        self.cur.slots.len()
    }

    /// See `generation`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether an old table is still being drained.
    pub(crate) fn migrating(&self) -> bool {
        self.old.is_some()
    }

    /// The entry in slot `i` of the current table, if occupied.
    pub(crate) fn slot(&self, i: usize) -> Option<&Entry> {
        self.cur.slots.get(i).filter(|e| !e.is_empty())
    }

    /// Occupied slots of the old table (still to be drained), in any order.
    pub(crate) fn old_entries(&self) -> impl Iterator<Item = &Entry> {
        self.old
            .iter()
            .flat_map(|o| o.slots.slots.get(o.next..).unwrap_or_default())
            .filter(|e| !e.is_empty())
    }

    /// Finds the entry with `hash` that `eq` accepts.
    pub(crate) fn find(&self, hash: u32, mut eq: impl FnMut(&Entry) -> bool) -> Pos {
        let vacant = match self.cur.scan(hash, self.cur.home(hash), &mut eq) {
            Ok(i) => return Pos::Cur(i),
            Err(i) => i,
        };
        if let Some(old) = &self.old {
            let from = old.slots.home(hash).max(old.next);
            if let Ok(i) = old.slots.scan(hash, from, &mut eq) {
                return Pos::Old(i);
            }
        }
        Pos::Vacant(vacant)
    }

    /// Hints the CPU to fetch the slot where a lookup of `hash` starts.
    pub(crate) fn prefetch(&self, hash: u32) {
        if let Some(e) = self.cur.slots.get(self.cur.home(hash)) {
            crate::heap::prefetch(e);
        }
    }

    /// The entry at `pos` (`None` for `Vacant`).
    pub(crate) fn get(&self, pos: Pos) -> Option<&Entry> {
        match pos {
            Pos::Cur(i) => self.cur.slots.get(i),
            Pos::Old(i) => self.old.as_ref().and_then(|o| o.slots.slots.get(i)),
            Pos::Vacant(_) => None,
        }
    }

    /// The entry at `pos`, to change in place (its hash must stay the same).
    pub(crate) fn get_mut(&mut self, pos: Pos) -> Option<&mut Entry> {
        match pos {
            Pos::Cur(i) => self.cur.slots.get_mut(i),
            Pos::Old(i) => self.old.as_mut().and_then(|o| o.slots.slots.get_mut(i)),
            Pos::Vacant(_) => None,
        }
    }

    /// Inserts `e` where `find` said (`Pos::Vacant`), with nothing changed in between.
    /// Starts a growth when the table is over its load limit, and falls back to a rebuild
    /// in the one case incremental growth cannot cover (a run overflowing the slack while
    /// an old table is still draining), so an insert always succeeds.
    pub(crate) fn insert(&mut self, at: usize, e: Entry) {
        let full = self.old.is_none() && self.cur.len >= self.cur.limit();
        if !full && self.cur.insert_at(at, e) {
            self.prepare_growth();
            return;
        }
        if self.cur.cap == 0 && self.old.is_none() {
            // The first entry: the slots of step 0, with nothing to drain into them.
            self.cur = Slots::with_cap(cap_at(self.level, self.phase));
            self.generation += 1;
            if self.cur.insert(e) {
                return;
            }
        }
        // Over the load limit, or the run overflowed the slack (then grow early).
        if self.old.is_none() {
            self.start_migration(self.level + 1);
            if self.cur.insert(e) {
                return;
            }
        }
        self.rebuild(Some(e));
    }

    /// Makes the current table old and starts draining it into a new one of growth step
    /// `level`.
    fn start_migration(&mut self, level: u32) {
        debug_assert!(self.old.is_none());
        self.level = level;
        let fresh = match self.spare.take() {
            Some(spare) if spare.level == level => spare.slots,
            other => {
                self.spare = other;
                self.drop_spare();
                Slots::with_cap(cap_at(level, self.phase))
            }
        };
        let cur = std::mem::replace(&mut self.cur, fresh);
        self.old = Some(Old {
            slots: cur,
            next: 0,
        });
        self.generation += 1;
    }

    /// Drains up to `budget` slots of the old table into the current one; `true` when no
    /// old table is left.
    pub(crate) fn migrate(&mut self, budget: usize) -> bool {
        let Some(old) = &mut self.old else {
            return true;
        };
        let end = old.next.saturating_add(budget).min(old.slots.slots.len());
        for i in old.next..end {
            let e = std::mem::replace(&mut old.slots.slots[i], Entry::EMPTY);
            if e.is_empty() {
                continue;
            }
            old.slots.len -= 1;
            if !self.cur.insert(e) {
                // Put it back and rebuild everything at once (see `insert`).
                old.slots.slots[i] = e;
                old.slots.len += 1;
                old.next = i;
                self.rebuild(None);
                return true;
            }
        }
        old.next = end;
        if end == old.slots.slots.len() {
            debug_assert_eq!(old.slots.len, 0);
            self.freed += old.slots.bytes() as u64;
            self.old = None;
            return true;
        }
        false
    }

    /// Rebuilds everything into one new table, `e` included: the slow path for a run
    /// overflowing while a migration is under way, which the load limit and slack make
    /// rare.
    fn rebuild(&mut self, e: Option<Entry>) {
        let mut level = self.level + 1;
        loop {
            let mut fresh = Slots::with_cap(cap_at(level, self.phase));
            if self.all().chain(e).all(|x| fresh.insert(x)) {
                self.install(fresh, level);
                return;
            }
            level += 1;
        }
    }

    fn install(&mut self, fresh: Slots, level: u32) {
        self.drop_spare();
        self.freed += (self.cur.bytes() + self.old.as_ref().map_or(0, |o| o.slots.bytes())) as u64;
        self.cur = fresh;
        self.old = None;
        self.level = level;
        self.generation += 1;
    }

    /// Every entry, current and old.
    fn all(&self) -> impl Iterator<Item = Entry> + '_ {
        self.cur
            .slots
            .iter()
            .filter(|e| !e.is_empty())
            .chain(self.old_entries())
            .copied()
    }

    /// Removes the entry at `pos` (`Cur` or `Old`). `moved_back(entry)` sees each entry of
    /// the current table that moved from slot `watch` to `watch - 1` meanwhile (a sweep
    /// pass at `watch` would miss it).
    pub(crate) fn remove(
        &mut self,
        pos: Pos,
        watch: usize,
        mut moved_back: impl FnMut(&Entry),
    ) -> Option<Entry> {
        match pos {
            Pos::Cur(i) => {
                let e = self.cur.remove_at(i, 0, |from, e| {
                    if from == watch {
                        moved_back(e);
                    }
                });
                self.drop_spare_if_far();
                Some(e)
            }
            Pos::Old(i) => {
                let old = self.old.as_mut()?;
                let floor = old.next;
                Some(old.slots.remove_at(i, floor, |_, _| {}))
            }
            Pos::Vacant(_) => None,
        }
    }

    /// Gives every slot back if the table holds no entry, also in the middle of a growth
    /// (the old slots left to drain are all empty then); `true` if it did.
    pub(crate) fn release_if_empty(&mut self) -> bool {
        if !self.is_empty() || (self.cur.cap == 0 && self.old.is_none()) {
            return false;
        }
        self.freed += self.allocation_size() as u64;
        self.spare = None;
        self.cur = Slots::none();
        self.old = None;
        self.level = 0;
        self.generation += 1;
        true
    }

    /// Starts shrinking the table if it is mostly empty (a quarter full or less), to a
    /// load of about 0.6; `false` if it is not worth it or a migration is under way. An
    /// empty table gives its slots back at once, as a new one has none.
    pub(crate) fn shrink_if_sparse(&mut self) -> bool {
        if self.old.is_none() && self.cur.len == 0 && self.cur.cap > 0 {
            self.drop_spare();
            self.freed += self.cur.bytes() as u64;
            self.cur = Slots::none();
            self.level = 0;
            self.generation += 1;
            return true;
        }
        if self.old.is_some() || self.cur.cap <= MIN_CAP || self.cur.len > self.cur.cap / 4 {
            return false;
        }
        let level = self.level_for(self.cur.len * 5 / 3);
        if level >= self.level {
            return false;
        }
        self.start_migration(level);
        true
    }

    /// Makes room for `n` entries at once, if the table has less: recovery, which knows
    /// roughly how many entries are coming and serves no one yet, rebuilds each table a
    /// few times in all instead of growing it a third at a time. The one operation that
    /// moves every entry under one lock hold.
    pub(crate) fn reserve(&mut self, n: usize) {
        if n <= self.cur.limit() {
            return;
        }
        // Land the expected count mid-way through the load range.
        let mut level = self.level_for(n.saturating_mul(4) / 3).max(self.level);
        loop {
            let mut fresh = Slots::with_cap(cap_at(level, self.phase));
            if self.all().all(|x| fresh.insert(x)) {
                self.install(fresh, level);
                return;
            }
            level += 1;
        }
    }

    /// The spare slots, if any: where they are, and pages written of all their pages
    /// (tests only).
    #[cfg(test)]
    pub(crate) fn spare(&self) -> Option<(*const Entry, usize, usize)> {
        self.spare.as_ref().map(|spare| {
            let pages = (spare.slots.bytes()).div_ceil(4096);
            (spare.slots.slots.as_ptr(), spare.pages, pages)
        })
    }

    /// Where the current slots are (tests only).
    #[cfg(test)]
    pub(crate) fn current_slots(&self) -> *const Entry {
        self.cur.slots.as_ptr()
    }

    /// Checks invariant 5 but for the spare's contents, cheaply enough to run after every
    /// operation (tests only).
    #[cfg(test)]
    pub(crate) fn check_spare(&self) {
        let Some(spare) = &self.spare else {
            return;
        };
        assert!(self.old.is_none(), "a spare beside a growth under way");
        assert!(
            self.cur.len + 4 * self.spare_lead() >= self.cur.limit(),
            "a spare kept far from the load limit"
        );
        assert_eq!(spare.level, self.level + 1, "a spare for another step");
        assert_eq!(spare.slots.cap, cap_at(spare.level, self.phase));
        assert_eq!(spare.slots.len, 0);
    }

    /// Checks invariants 1–5 (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        fn check_slots(s: &Slots, floor: usize) {
            let mut len = 0;
            for (i, e) in s.slots.iter().enumerate() {
                if e.is_empty() {
                    continue;
                }
                assert!(i >= floor, "entry in drained slot {i}");
                len += 1;
                let h = s.home(e.hash);
                assert!(h <= i, "entry before its home: slot {i}, home {h}");
                for j in h.max(floor)..i {
                    assert!(!s.slots[j].is_empty(), "gap at {j} before entry in {i}");
                }
                if i > 0 && !s.slots[i - 1].is_empty() {
                    assert!(s.slots[i - 1].hash <= e.hash, "run out of order at {i}");
                }
            }
            assert_eq!(len, s.len, "len counts occupied slots");
        }
        check_slots(&self.cur, 0);
        if let Some(o) = &self.old {
            check_slots(&o.slots, o.next);
        }
        self.check_spare();
        if let Some(spare) = &self.spare {
            assert!(
                spare.slots.slots.iter().all(Entry::is_empty),
                "a spare holds entries"
            );
        }
    }
}
