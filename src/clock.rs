//! Time sources. Expiry is wall-clock time stored as absolute milliseconds since the Unix
//! epoch, so it holds across restarts; tests move time with [`ManualClock`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A source of wall-clock time.
///
/// The store asks it once per operation. Implementations must be cheap and thread-safe.
///
/// Each operation judges expiry by the time it reads. A clock that jumps backwards is
/// tolerated, with one ambiguity: a claim whose expiry falls inside the jump (expired by the
/// latest time the clock showed, live by the current one) may be answered either way: still
/// claimed if its index entry is still there, not claimed if the store already dropped it
/// (at a reopen, or when expired entries are swept). Every other answer is exact. The store
/// does not make time monotonic on purpose: one bogus reading far in the future would then
/// expire every key until real time caught up.
///
/// Times are kept as milliseconds since the Unix epoch, so a time before the epoch reads as
/// the epoch itself. No expiry past the end of year 9999 can be stored: while the clock
/// reads later than that, every `claim`, `claim_many`, `begin`, `complete` and `extend`
/// fails with [`Error::InvalidTtl`](crate::Error::InvalidTtl), whatever the TTL; `get`,
/// `remove`, maintenance and reopening go on working.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's real-time clock. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share one time.
///
/// Keep a clone after passing one to [`Options::clock`](crate::Options::clock):
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use oncelog::ManualClock;
///
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let handle = clock.clone();
/// handle.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_060));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves time forward by `by` (saturating at the largest representable time).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        if let Some(next) = now.checked_add(by) {
            *now = next;
        }
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock() = to;
    }

    /// The time the clock stands at.
    pub fn now(&self) -> SystemTime {
        *self.now.lock()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        ManualClock::now(self)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

/// Milliseconds since the Unix epoch; times before the epoch count as 0.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// The inverse of [`to_millis`], saturating at the largest time `SystemTime` holds.
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_time() {
        let a = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10));
        let b = a.clone();
        b.advance(Duration::from_secs(5));
        assert_eq!(a.now(), UNIX_EPOCH + Duration::from_secs(15));
        a.set(UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(b.now(), UNIX_EPOCH + Duration::from_secs(3));
    }

    #[test]
    fn millis_round_trip_and_clamp() {
        let t = UNIX_EPOCH + Duration::from_millis(1_234_567);
        assert_eq!(to_millis(t), 1_234_567);
        assert_eq!(from_millis(1_234_567), t);
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
