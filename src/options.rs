//! Store configuration. Every setter documents its default, and a test checks each one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::format::{MAX_RECORD_LEN, SEAL_LEN, SEGMENT_HEADER_LEN};
use crate::iohook::{Io, IoHook};

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
    /// Never sync on the caller's behalf except in [`Store::sync`](crate::Store::sync) and [`Store::close`](crate::Store::close).
    Buffered,
}

/// What `open` does when a segment does not decode: damage is cut as a torn tail (the
/// newest segment, by default), reported with its file and offset (`Strict`, and the
/// default anywhere else), or dropped with a count (`Salvage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
    /// Keep everything that can still be read, and drop the rest with a count: the
    /// operator's explicit choice for a directory that the other modes refuse.
    ///
    /// Before the index is rebuilt, every segment that `Strict` would refuse is rewritten
    /// (under a temporary name, synced, renamed over the original; its hint file deleted):
    /// a header that does not decode is rebuilt, records that do not decode are skipped —
    /// the scan resynchronises at the next 8-aligned offset where a record decodes — and a
    /// missing seal is written. What was dropped is reported in
    /// [`Stats::recovery_salvaged_bytes`](crate::Stats),
    /// [`recovery_salvaged_places`](crate::Stats) and
    /// [`recovery_salvaged_segments`](crate::Stats), and the first few places (file and
    /// offset in the original file) by [`Store::salvaged`]. After a salvage open the
    /// directory is clean: any mode opens it, with the same answers. A torn tail of the
    /// newest segment (nothing that decodes after it) is cut as in the default mode. Every
    /// segment is read in full, hints or not. A segment of another store or of a newer
    /// format version, or a file over 1 GiB, still fails `open`: that is not damage.
    ///
    /// **What salvage costs.** A dropped record is lost, and with it what it said about its
    /// key. Every key none of whose records was damaged answers exactly as before. A key
    /// that lost a record answers from its other records, which can break the invariants
    /// for that key:
    ///
    /// - a lost claim, lease or done record lets the key be claimed (or begun) anew, so its
    ///   work may be done twice (exactly once);
    /// - a lost remove record lets the claim it hid come back, until that claim's own
    ///   expiry (no resurrection);
    /// - a lost done record after a lease brings back the lease, and its attempt history.
    ///
    /// Resynchronisation trusts any bytes that form a record with a valid checksum. Inside
    /// a damaged region that is random data with odds of 2⁻³² per offset tried — but a key
    /// or outcome can itself contain the bytes of a whole record, and if the header of the
    /// record that carries it is damaged, salvage replays that embedded record as if it were
    /// real. Where keys or outcomes come from parties who may craft them, that is a claim
    /// (no false duplicates) or a remove (no resurrection) of any key they choose; such a
    /// directory is better restored from a backup than salvaged. In the newest segment,
    /// records that a power cut left beyond a torn write are kept too; they were never
    /// acknowledged, like the tail of a partial `claim_many` batch.
    ///
    /// Copy the directory first if the damaged bytes may be wanted later: the rewrite
    /// replaces them.
    ///
    /// [`Store::salvaged`]: crate::Store::salvaged
    Salvage,
}

/// Smallest accepted segment size.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest accepted segment size (record offsets are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// The size of a store's first segment (1 MiB), unless
/// [`Options::segment_size`] is smaller: each later segment is twice the size of the one
/// before, up to `segment_size`, so that an empty or small store takes little disk and
/// opens fast.
pub const FIRST_SEGMENT_SIZE: u64 = 1 << 20;
/// Default number of index stripes.
pub const DEFAULT_STRIPES: usize = 1024;

const _: () = assert!(
    (SEGMENT_HEADER_LEN + MAX_RECORD_LEN + SEAL_LEN) as u64 <= MIN_SEGMENT_SIZE,
    "the smallest segment must hold the largest record"
);

/// Builder for opening a [`Store`](crate::Store).
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
    pub(crate) default_hasher: bool,
    pub(crate) background_maintenance: bool,
    pub(crate) maintenance_interval: Duration,
    pub(crate) compaction_threshold: f64,
    pub(crate) hints: bool,
    pub(crate) open_progress: Option<ProgressFn>,
    pub(crate) attempt_memory: Duration,
    pub(crate) io: Io,
}

/// The callback of [`Options::open_progress`].
pub(crate) type ProgressFn = Arc<dyn Fn(&OpenProgress) + Send + Sync>;

/// How far `open` has got, passed to the callback set with [`Options::open_progress`]
/// after each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenProgress {
    /// Segments replayed so far.
    pub segments_done: u64,
    /// Segments to replay.
    pub segments_total: u64,
    /// Of those done, segments read from their hint file rather than scanned.
    pub segments_hinted: u64,
    /// Records replayed so far.
    pub records: u64,
}

/// Default pause between background maintenance runs.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`Options::attempt_memory`]: three days, as long as Stripe retries a webhook.
pub const DEFAULT_ATTEMPT_MEMORY: Duration = Duration::from_secs(72 * 3600);
/// Default compaction threshold: a sealed segment is rewritten once less than half of it
/// must be kept.
pub const DEFAULT_COMPACTION_THRESHOLD: f64 = 0.5;

fn xxh3(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Options {
    /// The defaults: `Durability::Sync`, the system clock, 64 MiB segments,
    /// `RecoveryMode::TolerateTornTail`, 1024 index stripes, xxh3 key hashing, background
    /// maintenance every second, compaction threshold 0.5, hint files on.
    pub fn new() -> Options {
        Options {
            durability: Durability::Sync,
            clock: Arc::new(SystemClock),
            segment_size: DEFAULT_SEGMENT_SIZE,
            recovery: RecoveryMode::TolerateTornTail,
            stripes: DEFAULT_STRIPES,
            hasher: xxh3,
            default_hasher: true,
            background_maintenance: true,
            maintenance_interval: DEFAULT_MAINTENANCE_INTERVAL,
            compaction_threshold: DEFAULT_COMPACTION_THRESHOLD,
            hints: true,
            open_progress: None,
            attempt_memory: DEFAULT_ATTEMPT_MEMORY,
            io: Io::default(),
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

    /// A hook that sees, and may fail, every file-system change the store makes (see
    /// [`IoHook`]): for fault-injection and power-loss tests. Default: none.
    pub fn io_hook(mut self, hook: Arc<dyn IoHook>) -> Options {
        self.io = Io::new(Some(hook));
        self
    }

    /// Size of a full segment file in bytes; each file is allocated in full when created.
    /// A store starts with a segment of [`FIRST_SEGMENT_SIZE`] (1 MiB, or `bytes` if that
    /// is smaller) and each new segment doubles the last one's size until it reaches
    /// `bytes`. Default: 64 MiB ([`DEFAULT_SEGMENT_SIZE`]); accepted: 64 KiB to 1 GiB.
    /// Existing segments keep the size they were created with.
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
    /// less lock contention and smaller pauses when a stripe's table grows; fewer, less
    /// memory for a small store (each stripe takes 256 bytes besides its table). Default: 1024. For tens of millions of keys, 4096 cut the
    /// tail (at 10M keys p99.9 by about a third, p99.99 by about a fifth) at the same memory
    /// per key, while at 1M keys it cost 4 bytes a key (README, "The engine on its own").
    pub fn stripes(mut self, n: usize) -> Options {
        self.stripes = n;
        self
    }

    /// Replaces the 64-bit key hash (default: xxh3). Meant for tests that force hash
    /// collisions — correctness never depends on the hash, only speed does. Hint files
    /// store default (xxh3) hashes, so a store with another hasher neither reads nor writes
    /// them; otherwise nothing hashed is stored, and a store may be reopened with a
    /// different hasher.
    pub fn hasher(mut self, hash: fn(&[u8]) -> u64) -> Options {
        self.hasher = hash;
        self.default_hasher = false;
        self
    }

    /// Whether the store runs maintenance in a background thread: sweeping expired entries
    /// out of the index, deleting segments nothing needs, compacting sparse ones, writing
    /// hint files. Default: `true`. With `false`, only [`Store::compact`](crate::Store::compact) does that work
    /// (expired keys are still answered as absent at once, but memory and disk are not
    /// reclaimed until it is called).
    pub fn background_maintenance(mut self, on: bool) -> Options {
        self.background_maintenance = on;
        self
    }

    /// Pause between background maintenance runs. Default: 1 s
    /// ([`DEFAULT_MAINTENANCE_INTERVAL`]); must be non-zero. A run sweeps each index stripe
    /// that may hold expired entries (in slices of 1024 buckets, one stripe-lock hold per
    /// slice, so claims never wait long behind it), then deletes and compacts
    /// segments; expired entries therefore leave memory within about one interval.
    pub fn maintenance_interval(mut self, every: Duration) -> Options {
        self.maintenance_interval = every;
        self
    }

    /// Compact a sealed segment once the bytes that must be kept (claims still in the
    /// index, removes whose hidden claim has not expired) fall below this fraction of its
    /// data. Default: 0.5 ([`DEFAULT_COMPACTION_THRESHOLD`]); accepted: 0.0 to 1.0, where
    /// 0.0 turns compaction off (segments are then only deleted once nothing in them is
    /// needed). Higher means less disk and more rewriting.
    pub fn compaction_threshold(mut self, fraction: f64) -> Options {
        self.compaction_threshold = fraction;
        self
    }

    /// How long a lease's attempt is remembered after the lease's deadline (its holder
    /// crashed, or abandoned it), so that the next [`begin`](crate::Store::begin) of the key
    /// reports the next attempt number, and the handler knows an earlier attempt may have
    /// got half way. Default: [`DEFAULT_ATTEMPT_MEMORY`] (72 hours). Keep it at least as long as
    /// senders retry: a retry that comes later sees attempt 1 and cannot tell that an earlier
    /// attempt may have done part of the work.
    ///
    /// The cost: a key that was ever leased stays on disk and in the index for at least
    /// this long after its lease's deadline, even if its outcome's TTL is shorter. Stores
    /// that only use [`claim`](crate::Store::claim) are not affected. Any duration is
    /// accepted: one that reaches past the end of year 9999 means for ever.
    pub fn attempt_memory(mut self, d: Duration) -> Options {
        self.attempt_memory = d;
        self
    }

    /// Whether maintenance writes a hint file next to each sealed segment, so that `open`
    /// rebuilds the index from it instead of reading the whole segment. Default: `true`.
    /// A missing or damaged hint only costs a scan. Existing hints are read either way
    /// (except in [`RecoveryMode::Strict`], which always scans).
    pub fn hints(mut self, on: bool) -> Options {
        self.hints = on;
        self
    }

    /// Calls `f` after each segment `open` replays, to show progress on a large directory.
    /// Default: none.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use oncelog::Options;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let s = Arc::clone(&seen);
    /// let store = Options::new()
    ///     .open_progress(move |p| s.store(p.segments_done, Ordering::Relaxed))
    ///     .open(dir.path())?;
    /// # drop(store);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_progress(mut self, f: impl Fn(&OpenProgress) + Send + Sync + 'static) -> Options {
        self.open_progress = Some(Arc::new(f));
        self
    }

    /// Checks every option against its documented range (`Options::open` calls it).
    pub(crate) fn validate(&self) -> Result<()> {
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
        if self.maintenance_interval.is_zero() {
            return Err(Error::InvalidOption {
                name: "maintenance_interval",
                expected: "a non-zero duration",
            });
        }
        if !(0.0..=1.0).contains(&self.compaction_threshold) {
            return Err(Error::InvalidOption {
                name: "compaction_threshold",
                expected: "a fraction from 0.0 to 1.0",
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
            .field("background_maintenance", &self.background_maintenance)
            .field("maintenance_interval", &self.maintenance_interval)
            .field("compaction_threshold", &self.compaction_threshold)
            .field("hints", &self.hints)
            .field("attempt_memory", &self.attempt_memory)
            .field("io", &self.io)
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
        assert!(o.default_hasher);
        assert!(!Options::new().hasher(|_| 0).default_hasher);
        assert!(o.background_maintenance);
        assert_eq!(o.maintenance_interval, Duration::from_secs(1));
        assert_eq!(o.compaction_threshold, 0.5);
        assert!(o.hints);
        assert!(o.open_progress.is_none());
        assert_eq!(o.attempt_memory, Duration::from_secs(72 * 3600));
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
        for bad in [-0.1, 1.1, f64::NAN] {
            let e = Options::new().compaction_threshold(bad).validate();
            assert!(
                matches!(
                    e,
                    Err(Error::InvalidOption {
                        name: "compaction_threshold",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let e = Options::new()
            .maintenance_interval(Duration::ZERO)
            .validate();
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                name: "maintenance_interval",
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
