//! One door for every file-system change the store makes, so that tests can watch and break
//! them: [`IoHook`] sees each operation before and after it runs, and can fail it.
//!
//! Invariants:
//!
//! - Every operation that creates, sizes, writes (through the file API), syncs, renames or
//!   removes a file of a store, or syncs its directory, passes through [`Io::run`] with an
//!   [`IoOp`] naming it. Writes through a segment's memory map make no system call and are
//!   not operations; the sync that makes them durable is ([`IoOp::SyncRange`]).
//! - An error from [`IoHook::before`] is handled exactly as the same error from the
//!   operating system would be; the operation is then not run.
//! - Without a hook, [`Io::run`] costs one branch.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A file-system operation the store is about to make (or has made), as an [`IoHook`] sees
/// it. Paths are those the store uses: the store directory joined with a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp<'a> {
    /// Create a file (empty, replacing any file of that name).
    Create {
        /// The file.
        path: &'a Path,
    },
    /// Give a file `len` bytes of allocated space (segments are allocated whole up front).
    Allocate {
        /// The file.
        path: &'a Path,
        /// Its new length.
        len: u64,
    },
    /// Write `len` bytes at `offset` through the file API (hint files, compacted copies,
    /// repairs during recovery).
    Write {
        /// The file.
        path: &'a Path,
        /// Where the bytes go.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// Make a file's whole content (and its length) durable: `fsync`.
    SyncFile {
        /// The file.
        path: &'a Path,
    },
    /// Make bytes `[offset, offset + len)` of a memory-mapped file (and its length) durable:
    /// `msync`, which on Linux is a data sync of that range.
    SyncRange {
        /// The file.
        path: &'a Path,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make a directory's entries (files created, renamed, removed in it) durable.
    SyncDir {
        /// The directory.
        path: &'a Path,
    },
    /// Rename `from` to `to`, replacing `to`.
    Rename {
        /// Old name.
        from: &'a Path,
        /// New name.
        to: &'a Path,
    },
    /// Remove a file (a file already gone is not an error).
    Remove {
        /// The file.
        path: &'a Path,
    },
}

impl IoOp<'_> {
    /// A short name of the kind of operation, for reports: `create`, `allocate`, `write`,
    /// `sync-file`, `sync-range`, `sync-dir`, `rename`, `remove`.
    pub fn kind(&self) -> &'static str {
        match self {
            IoOp::Create { .. } => "create",
            IoOp::Allocate { .. } => "allocate",
            IoOp::Write { .. } => "write",
            IoOp::SyncFile { .. } => "sync-file",
            IoOp::SyncRange { .. } => "sync-range",
            IoOp::SyncDir { .. } => "sync-dir",
            IoOp::Rename { .. } => "rename",
            IoOp::Remove { .. } => "remove",
        }
    }

    /// The file or directory the operation is on (for a rename, the old name).
    pub fn path(&self) -> &Path {
        match *self {
            IoOp::Create { path }
            | IoOp::Allocate { path, .. }
            | IoOp::Write { path, .. }
            | IoOp::SyncFile { path }
            | IoOp::SyncRange { path, .. }
            | IoOp::SyncDir { path }
            | IoOp::Remove { path } => path,
            IoOp::Rename { from, .. } => from,
        }
    }

    /// Whether the operation makes something durable (an fsync of some kind).
    pub fn is_sync(&self) -> bool {
        matches!(
            self,
            IoOp::SyncFile { .. } | IoOp::SyncRange { .. } | IoOp::SyncDir { .. }
        )
    }
}

/// Watches, and may fail, every file-system change a store makes: for fault-injection and
/// power-loss tests of code that embeds the store, and of the store itself. Set with
/// [`Options::io_hook`](crate::Options::io_hook).
///
/// Both methods run on whatever thread makes the operation (a caller of `claim`, the
/// maintenance thread, the thread that prepares the next segment), possibly while a store
/// lock is held: keep them short, and never call back into the store from them.
///
/// ```
/// use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use oncelog::{Error, IoHook, IoOp, Options, Store};
///
/// /// Counts syncs; once armed, fails the next data sync with EIO.
/// #[derive(Default)]
/// struct Faulty { syncs: AtomicU64, armed: AtomicBool }
///
/// impl IoHook for Faulty {
///     fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
///         if matches!(op, IoOp::SyncRange { .. }) && self.armed.swap(false, Ordering::SeqCst) {
///             return Err(std::io::Error::from_raw_os_error(5));
///         }
///         Ok(())
///     }
///     fn after(&self, op: &IoOp<'_>, outcome: Result<(), &std::io::Error>) {
///         if op.is_sync() && outcome.is_ok() {
///             self.syncs.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// # fn main() -> oncelog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let hook = Arc::new(Faulty::default());
/// let store: Store = Options::new().io_hook(hook.clone()).open(dir.path())?;
/// let ttl = Duration::from_secs(60);
/// assert!(store.claim("evt_1", ttl)?.is_new());
/// assert!(hook.syncs.load(Ordering::Relaxed) > 0);
///
/// // A failed fsync may have dropped written pages: the claim is not acknowledged, and
/// // the store refuses every write until it is reopened.
/// hook.armed.store(true, Ordering::SeqCst);
/// assert!(store.claim("evt_2", ttl).is_err());
/// assert!(matches!(store.claim("evt_3", ttl), Err(Error::Poisoned { .. })));
/// # Ok(()) }
/// ```
pub trait IoHook: Send + Sync {
    /// Called before `op` runs. An error fails the operation with that error, which the
    /// store handles as it would the same error from the operating system; the operation
    /// is then not made.
    fn before(&self, op: &IoOp<'_>) -> io::Result<()> {
        let _ = op;
        Ok(())
    }

    /// Called after `op` ran (it was not run if `before` failed it), with its outcome.
    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &io::Error>) {
        let _ = (op, outcome);
    }
}

/// The store's handle on its hook, if it has one. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Io {
    hook: Option<Arc<dyn IoHook>>,
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.hook.is_some() {
            "Io(hooked)"
        } else {
            "Io"
        })
    }
}

impl Io {
    pub(crate) fn new(hook: Option<Arc<dyn IoHook>>) -> Io {
        Io { hook }
    }

    /// Runs `f`, which makes `op`, between the hook's `before` and `after`.
    pub(crate) fn run<T>(&self, op: IoOp<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match &self.hook {
            None => f(),
            Some(hook) => {
                hook.before(&op)?;
                let out = f();
                hook.after(&op, out.as_ref().map(|_| ()));
                out
            }
        }
    }
}
