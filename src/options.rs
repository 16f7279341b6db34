//! Store configuration. Every setter documents its default, and a test checks each one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::format::{MAX_RECORD_LEN, SEAL_LEN, SEGMENT_HEADER_LEN};
use crate::store::Store;

/// When a claim counts as acknowledged, and so which crashes it survives.
///
/// | mode | `claim` returns after | survives |
/// |---|---|---|
/// | `Sync` (default) | the record is on stable storage (concurrent claims share one sync) | process crash and power loss |
/// | `Periodic(interval)` | the record is in the OS page cache; a background sync runs every interval | process crash; power loss loses at most the last interval |
/// | `Buffered` | the record is in the OS page cache | process crash |
///
/// Under every mode, *durable before visible* holds: a caller is never told
/// [`Duplicate`](crate::Claim::Duplicate) because of a record that the mode could still lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Sync before acknowledging; group commit shares one sync among concurrent callers.
    #[default]
    Sync,
    /// Sync in the background every `interval` (must be non-zero).
    Periodic(Duration),
    /// Never sync on the caller's behalf except in [`Store::sync`] and [`Store::close`].
    Buffered,
}

/// What `open` does when a segment does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// The default. The newest segment may end in a torn write left by a crash: from its first
    /// record that fails to decode, the rest is cut (zeroed), and the number of bytes cut is
    /// reported in [`Stats::recovery_truncated_bytes`](crate::Stats). Damage anywhere else —
    /// any older segment, any segment header — fails `open` with
    /// [`Error::Corruption`] naming the file and offset.
    ///
    /// Nothing acknowledged is lost by the cut: a record is acknowledged (under `Sync`) only
    /// once it and everything before it are on stable storage, so a torn write can only hit
    /// records that were never acknowledged. A byte flipped by the disk *inside* the newest
    /// segment looks the same as a torn write and is cut too; that is the price of starting
    /// after every crash without an operator.
    #[default]
    TolerateTornTail,
    /// Refuse to open if anything at all fails to decode, torn tail included, or if a
    /// segment has bytes after its data or is shorter than it was created. An open that
    /// fails on damage ([`Error::Corruption`], in either mode) has changed no segment and
    /// deleted no file; one that succeeds goes on as usual. For inspecting a directory
    /// after a crash before letting the default mode cut anything.
    Strict,
}

/// Smallest accepted segment size.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest accepted segment size (record offsets are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default number of index stripes.
pub const DEFAULT_STRIPES: usize = 1024;

const _: () = assert!(
    (SEGMENT_HEADER_LEN + MAX_RECORD_LEN + SEAL_LEN) as u64 <= MIN_SEGMENT_SIZE,
    "the smallest segment must hold the largest record"
);

/// Builder for opening a [`Store`].
///
/// ```
/// use std::time::Duration;
/// use oncelog::{Durability, Options};
///
/// # let dir = tempfile::tempdir()?;
/// let store = Options::new()
///     .durability(Durability::Periodic(Duration::from_millis(100)))
///     .segment_size(16 << 20)
///     .open(dir.path())?;
/// # store.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) segment_size: u64,
    pub(crate) recovery: RecoveryMode,
    pub(crate) stripes: usize,
    pub(crate) hasher: fn(&[u8]) -> u64,
}

fn xxh3(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Options {
    /// The defaults: `Durability::Sync`, the system clock, 64 MiB segments,
    /// `RecoveryMode::TolerateTornTail`, 1024 index stripes, xxh3 key hashing.
    pub fn new() -> Options {
        Options {
            durability: Durability::Sync,
            clock: Arc::new(SystemClock),
            segment_size: DEFAULT_SEGMENT_SIZE,
            recovery: RecoveryMode::TolerateTornTail,
            stripes: DEFAULT_STRIPES,
            hasher: xxh3,
        }
    }

    /// When claims are acknowledged. Default: [`Durability::Sync`].
    pub fn durability(mut self, d: Durability) -> Options {
        self.durability = d;
        self
    }

    /// The time source for first-seen and expiry times. Default: [`SystemClock`].
    /// Tests pass a [`ManualClock`](crate::ManualClock) to move time without sleeping.
    pub fn clock(mut self, c: impl Clock + 'static) -> Options {
        self.clock = Arc::new(c);
        self
    }

    /// Size of each segment file in bytes; the file is allocated in full when created.
    /// Default: 64 MiB ([`DEFAULT_SEGMENT_SIZE`]); accepted: 64 KiB to 1 GiB. Existing
    /// segments keep the size they were created with.
    pub fn segment_size(mut self, bytes: u64) -> Options {
        self.segment_size = bytes;
        self
    }

    /// What `open` tolerates. Default: [`RecoveryMode::TolerateTornTail`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Options {
        self.recovery = mode;
        self
    }

    /// Number of index stripes (rounded up to a power of two, at least 1). More stripes mean
    /// less lock contention and smaller pauses when a stripe's table grows. Default: 1024.
    pub fn stripes(mut self, n: usize) -> Options {
        self.stripes = n;
        self
    }

    /// Replaces the 64-bit key hash (default: xxh3). Meant for tests that force hash
    /// collisions — correctness never depends on the hash, only speed does. Hashes are not
    /// stored on disk, so a store may be reopened with a different hasher.
    pub fn hasher(mut self, hash: fn(&[u8]) -> u64) -> Options {
        self.hasher = hash;
        self
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Store> {
        self.validate()?;
        Store::open_with(self, dir.as_ref())
    }

    fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidOption {
                name: "segment_size",
                expected: "64 KiB to 1 GiB",
            });
        }
        if self.durability == Durability::Periodic(Duration::ZERO) {
            return Err(Error::InvalidOption {
                name: "durability",
                expected: "a non-zero Periodic interval",
            });
        }
        if self.stripes > 1 << 20 {
            return Err(Error::InvalidOption {
                name: "stripes",
                expected: "at most 1048576",
            });
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("clock", &"<dyn Clock>")
            .field("segment_size", &self.segment_size)
            .field("recovery", &self.recovery)
            .field("stripes", &self.stripes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults() {
        let o = Options::new();
        assert_eq!(o.durability, Durability::Sync);
        assert_eq!(Durability::default(), Durability::Sync);
        assert_eq!(o.segment_size, 64 * 1024 * 1024);
        assert_eq!(o.recovery, RecoveryMode::TolerateTornTail);
        assert_eq!(o.stripes, 1024);
        assert_eq!((o.hasher)(b"abc"), xxhash_rust::xxh3::xxh3_64(b"abc"));
        let d = Options::default();
        assert_eq!(d.durability, o.durability);
        assert_eq!(d.segment_size, o.segment_size);
    }

    #[test]
    fn out_of_range_options_are_errors() {
        for size in [0, MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1] {
            let e = Options::new().segment_size(size).validate();
            assert!(matches!(
                e,
                Err(Error::InvalidOption {
                    name: "segment_size",
                    ..
                })
            ));
        }
        let e = Options::new()
            .durability(Durability::Periodic(Duration::ZERO))
            .validate();
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                name: "durability",
                ..
            })
        ));
        let e = Options::new().stripes(1 << 21).validate();
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                name: "stripes",
                ..
            })
        ));
    }
}
