//! Internals exposed to `benches/` so that components can be measured on their own.
//!
//! Not part of the API: hidden from the docs, no stability promise, and nothing here is
//! needed to use the store. Each item is a thin wrapper over the real code path, so what the
//! benches time is what `Store` runs.

#![allow(missing_docs)]

use std::path::Path;

use crate::error::Result;
use crate::format::{encode_record, RecordKind};
use crate::index::Entry;
use crate::log::{Location, RecordSpec};
use crate::options::Options;

/// Buckets one sweep slice visits per stripe-lock hold in maintenance.
pub const SWEEP_SLICE: usize = crate::index::SWEEP_SLICE;

/// Encodes a claim record into `out` (exactly `encoded_len(key.len(), 0)` bytes).
pub fn encode_claim(out: &mut [u8], key: &[u8], time: u64, expires: u64) {
    encode_record(out, RecordKind::Claim, key, &[], 0, time, expires);
}

/// The lock-striped index on its own. Keys are stood in for by `id`s kept in the entries'
/// offset field, so no log is involved: this times hashing into stripes, locking and
/// probing, not the key comparison against the log.
pub struct Index(crate::index::Index);

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench::Index")
    }
}

impl Index {
    pub fn new(stripes: usize) -> Index {
        Index(crate::index::Index::new(stripes))
    }

    /// Inserts `id` under `hash` unless present; `true` if inserted.
    pub fn insert(&self, hash: u64, id: u32) -> bool {
        let mut s = self.0.lock(hash);
        let place = s.place(hash, |e| e.offset == id);
        if place.entry().is_some() {
            return false;
        }
        let at = Location {
            slot: 0,
            offset: id,
        };
        place.put(Entry::new(hash as u32, at, u64::MAX, 64));
        true
    }

    /// Whether `id` is present under `hash`.
    pub fn contains(&self, hash: u64, id: u32) -> bool {
        self.0.lock(hash).find(hash, |e| e.offset == id).is_some()
    }

    /// One sweep slice of at most `budget` buckets of stripe `stripe` at `now_ms`, as a
    /// maintenance run takes under one lock hold (entries inserted here never expire, so
    /// this times the visit). `true` when the slice finished the stripe's pass.
    pub fn sweep_slice(&self, stripe: usize, now_ms: u64, budget: usize) -> bool {
        self.0
            .lock_stripe(stripe)
            .sweep_slice(now_ms, budget, |_| false, |_| {})
            .done
    }

    /// Heap bytes of all stripes' tables.
    pub fn heap_bytes(&self) -> usize {
        let mut n = 0;
        self.0.for_each_stripe(|s| n += s.allocation_size());
        n
    }
}

/// The segment log on its own: appends claim records (no index, no stripe locks).
pub struct Log {
    log: std::sync::Arc<crate::log::Log>,
    _committer: crate::log::Committer,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench::Log")
    }
}

impl Log {
    /// Opens (recovering) the log in `dir` with `opts`; the directory should be empty.
    pub fn open(dir: &Path, opts: &Options) -> Result<Log> {
        let (_, log, _) = crate::recovery::recover(dir, opts, 0)?;
        let log = std::sync::Arc::new(log);
        let committer = log.start_committer()?;
        Ok(Log {
            log,
            _committer: committer,
        })
    }

    /// Appends one claim record, as `Store::claim` does once it knows the key is new.
    pub fn append_claim(&self, key: &[u8], time: u64, expires: u64) -> Result<()> {
        self.log
            .append(RecordSpec::plain(RecordKind::Claim, key, time, expires))
            .map(|_| ())
    }

    /// Syncs everything appended so far.
    pub fn sync(&self) -> Result<()> {
        self.log.sync()
    }
}
