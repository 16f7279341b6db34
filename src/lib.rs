//! # oncelog
//!
//! An embeddable, persistent dedupe store. A service asks, for every event id it receives,
//! "first time?": [`Store::claim`] answers [`Claim::New`] exactly once per key per TTL
//! window — across threads, crashes and restarts — and [`Claim::Duplicate`] otherwise.
//!
//! ```
//! use std::time::Duration;
//! use oncelog::{Claim, Durability, Options};
//!
//! # let dir = tempfile::tempdir()?;
//! let store = Options::new()
//!     .durability(Durability::Sync) // the default: acknowledged claims survive power loss
//!     .open(dir.path())?;
//!
//! let ttl = Duration::from_secs(72 * 3600); // Stripe retries for three days
//! match store.claim("evt_1NqXyz", ttl)? {
//!     Claim::New => { /* first delivery: fulfil the order */ }
//!     Claim::Duplicate(seen) => {
//!         /* a retry: skip it; seen.first_seen says when the original arrived */
//!         let _ = seen;
//!     }
//! }
//! let answers = store.claim_many(&["evt_2", "evt_3", "evt_2"], ttl)?;
//! assert!(answers[0].is_new() && answers[1].is_new() && !answers[2].is_new());
//! store.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Behind it: a lock-striped in-memory hash index of 16-byte entries (the keys stay on
//! disk), an append-only log of CRC-checked records in pre-allocated, memory-mapped
//! segment files, group commit, crash recovery, and background maintenance that sweeps
//! expired keys, deletes and compacts segments and writes hint files for fast restarts
//! ([`Store::compact`] runs it on demand). `docs/DESIGN.md` describes the design and its
//! invariants, `docs/FORMAT.md` the files.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

mod async_api;
#[doc(hidden)]
pub mod bench;
mod clock;
mod engine;
mod error;
pub mod format;
mod fs;
mod heap;
#[cfg(feature = "http")]
pub mod http;
mod index;
mod iohook;
mod lease;
mod log;
mod maintain;
mod options;
mod recovery;
mod salvage;
mod stats;
mod store;
#[cfg(test)]
mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{KeyState, Seen};
pub use error::{Corruption, CorruptionKind, Error, Result};
pub use format::{MAX_FINGERPRINT_LEN, MAX_KEY_LEN, MAX_OUTCOME_LEN, MAX_VALUE_LEN};
pub use iohook::{IoHook, IoOp};
pub use lease::{fingerprint, Begin, Ticket};
pub use log::MAX_SEGMENTS;
pub use maintain::CompactionReport;
pub use options::{
    Durability, OpenProgress, Options, RecoveryMode, DEFAULT_ATTEMPT_MEMORY,
    DEFAULT_COMPACTION_THRESHOLD, DEFAULT_MAINTENANCE_INTERVAL, DEFAULT_SEGMENT_SIZE,
    DEFAULT_STRIPES, FIRST_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};
pub use salvage::MAX_SALVAGED_PLACES;
pub use stats::Stats;
pub use store::{Claim, ClaimRequest, Store};

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
        assert_send_sync::<Options>();
    }
}
