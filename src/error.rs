//! The one error type of the crate.
//!
//! Every variant names something the caller can act on; the doc comment of each says what.
//! `Display` describes this layer only; the underlying cause, where there is one, is
//! available through [`std::error::Error::source`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in oncelog.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty or longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    ///
    /// Fix the caller: hash long identifiers (for example with SHA-256) before claiming them.
    InvalidKey {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The largest accepted length.
        max: usize,
    },
    /// The TTL is zero, or so large that the expiry time cannot be represented.
    ///
    /// Fix the caller: pass a TTL of at least one millisecond and at most a few centuries.
    InvalidTtl {
        /// The rejected TTL.
        ttl: Duration,
    },
    /// An option given to [`Options`](crate::Options) is out of range.
    InvalidOption {
        /// Which option.
        name: &'static str,
        /// What is accepted.
        expected: &'static str,
    },
    /// Another process (or another `Store` in this process) has the directory open.
    ///
    /// Only one store may own a directory at a time. Close the other one, or use another
    /// directory (one store per partition).
    Locked {
        /// The directory that is locked.
        dir: PathBuf,
    },
    /// A file in the directory does not decode as it must.
    ///
    /// Nothing was changed on disk. Inspect or restore the named file; see
    /// [`RecoveryMode`](crate::RecoveryMode) for what `open` tolerates.
    Corruption(Corruption),
    /// A segment was written by a newer, incompatible version of oncelog.
    ///
    /// Open the directory with the version that wrote it, or upgrade.
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The format version found in its header.
        found: u16,
        /// The newest format version this build reads.
        supported: u16,
    },
    /// An earlier write or fsync failed, so the store refuses further work.
    ///
    /// After a failed fsync the kernel may have dropped dirty pages; continuing could
    /// acknowledge claims that are not on disk. Drop or close the store and open it again:
    /// recovery re-reads what actually reached the disk.
    Poisoned {
        /// What failed first.
        reason: String,
    },
    /// A payload fingerprint passed to
    /// [`begin_with_fingerprint`](crate::Store::begin_with_fingerprint) is empty or longer
    /// than [`MAX_FINGERPRINT_LEN`](crate::MAX_FINGERPRINT_LEN) bytes.
    ///
    /// Fix the caller: pass a digest of the payload, such as [`fingerprint`](crate::fingerprint)
    /// or a SHA-256.
    InvalidFingerprint {
        /// Length of the rejected fingerprint in bytes.
        len: usize,
        /// The largest accepted length.
        max: usize,
    },
    /// The outcome passed to [`complete`](crate::Store::complete) is longer than
    /// [`MAX_OUTCOME_LEN`](crate::MAX_OUTCOME_LEN) bytes. Nothing was changed: the ticket
    /// still holds its lease.
    ///
    /// Fix the caller: store a reference (an id, a URL) to a large result instead.
    OutcomeTooLarge {
        /// Length of the rejected outcome in bytes.
        len: usize,
        /// The largest accepted length.
        max: usize,
    },
    /// The [`Ticket`](crate::Ticket) no longer holds its key, so `complete`, `abandon` or
    /// `extend` did nothing: its lease ran out and another attempt acquired the key, or the
    /// attempt was already completed or abandoned, or the key was removed.
    ///
    /// Whatever this attempt did is not recorded. If its side effect ran, the attempt that
    /// holds the key now must find that out (its ticket's attempt number is higher).
    StaleTicket {
        /// The stale ticket's attempt number.
        attempt: u32,
        /// Why the ticket is stale.
        reason: String,
    },
    /// The store would need more segment files than it can address at once
    /// ([`MAX_SEGMENTS`](crate::MAX_SEGMENTS)). Nothing was written.
    ///
    /// Not a failure of the disk: the store keeps working for keys that need no new
    /// segment. Let maintenance delete expired segments ([`Store::compact`](crate::Store::compact)),
    /// use a larger [`Options::segment_size`](crate::Options::segment_size), or split the
    /// keys over more stores.
    TooManySegments {
        /// Segments the store would have needed.
        needed: usize,
        /// The most one store can hold.
        max: usize,
    },
    /// An operating-system I/O error.
    Io {
        /// What oncelog was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Where and how a file failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub path: PathBuf,
    /// Byte offset of the damaged header or record within the file.
    pub offset: u64,
    /// What is wrong there.
    pub kind: CorruptionKind,
}

/// The kinds of damage the decoders detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The segment header is missing, has the wrong magic, or fails its checksum.
    BadSegmentHeader,
    /// The segment belongs to a different store directory (store ids differ).
    ForeignSegment,
    /// The segment id in the header does not match the file name.
    SegmentIdMismatch,
    /// A record's checksum does not match its bytes.
    Checksum,
    /// A record's lengths or kind are impossible.
    MalformedRecord,
    /// A record runs past the end of the file.
    Truncated,
    /// A segment that is not the newest one lacks its closing seal record.
    Unsealed,
    /// Non-zero bytes follow the last record of a segment.
    TrailingGarbage,
}

impl CorruptionKind {
    fn describe(self) -> &'static str {
        match self {
            CorruptionKind::BadSegmentHeader => "bad segment header",
            CorruptionKind::ForeignSegment => "segment belongs to another store",
            CorruptionKind::SegmentIdMismatch => "segment id does not match file name",
            CorruptionKind::Checksum => "record checksum mismatch",
            CorruptionKind::MalformedRecord => "malformed record",
            CorruptionKind::Truncated => "record truncated",
            CorruptionKind::Unsealed => "segment not sealed but a newer segment exists",
            CorruptionKind::TrailingGarbage => "non-zero bytes after the last record",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidKey { len, max } => {
                write!(
                    f,
                    "invalid key of {len} bytes: keys must be 1 to {max} bytes"
                )
            }
            Error::InvalidTtl { ttl } => {
                write!(
                    f,
                    "invalid ttl {ttl:?}: must be at least 1ms and representable"
                )
            }
            Error::InvalidOption { name, expected } => {
                write!(f, "invalid option {name}: expected {expected}")
            }
            Error::Locked { dir } => {
                write!(f, "directory {} is locked by another store", dir.display())
            }
            Error::Corruption(c) => fmt::Display::fmt(c, f),
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has format version {found}; this build reads up to {supported}",
                path.display()
            ),
            Error::Poisoned { reason } => {
                write!(
                    f,
                    "store is poisoned after an earlier failure ({reason}); reopen it"
                )
            }
            Error::InvalidFingerprint { len, max } => write!(
                f,
                "invalid fingerprint of {len} bytes: fingerprints must be 1 to {max} bytes"
            ),
            Error::OutcomeTooLarge { len, max } => write!(
                f,
                "outcome of {len} bytes is too large: outcomes are at most {max} bytes"
            ),
            Error::StaleTicket { attempt, reason } => {
                write!(f, "ticket of attempt {attempt} is stale: {reason}")
            }
            Error::TooManySegments { needed, max } => {
                write!(f, "{needed} segments needed; one store holds at most {max}")
            }
            Error::Io { op, path, .. } => write!(f, "{op} {}", path.display()),
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corruption in {} at offset {}: {}",
            self.path.display(),
            self.offset,
            self.kind.describe()
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, offset: u64, kind: CorruptionKind) -> Error {
        Error::Corruption(Corruption {
            path: path.into(),
            offset,
            kind,
        })
    }
}
