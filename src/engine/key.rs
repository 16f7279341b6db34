//! A key's state, read from its newest record.
//!
//! | newest record | `until` vs now | state |
//! |---|---|---|
//! | claim | `expires` > now | held: claimed |
//! | done | `until` > now | held: completed, with its outcome |
//! | lease | `until` > now | held: in flight |
//! | lease | `until` <= now | free; the attempt is remembered, the next one is `attempt + 1` |
//! | done | `until` <= now | free; the next attempt is 1 |
//! | any | `expires` <= now | free, as if there were no record |
//!
//! Four types say it, each at one stage: [`Current`] is the newest record as read under the
//! stripe lock; [`Status`] is what it means now (held, or free with what is remembered of
//! past attempts); [`Seen`] and [`KeyState`] are the public answer about a held key.

use std::time::SystemTime;

use bytes::Bytes;

use crate::clock::from_millis;
use crate::format::{decode_state, RecordHeader, RecordKind, StateValue};

/// What the store knows about a claimed key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Seen {
    /// When the key was claimed, or when its first attempt began (the clock's time).
    pub first_seen: SystemTime,
    /// When the key may be claimed anew: the claim's or the outcome's expiry, or, while
    /// the key is in flight, its lease's deadline.
    pub expires_at: SystemTime,
    /// The outcome stored by [`Store::complete`](crate::Store::complete) or
    /// [`Store::claim_with_outcome`](crate::Store::claim_with_outcome), if any (an empty
    /// outcome reads as `None`, as does a key done by [`Store::claim`](crate::Store::claim)).
    pub outcome: Option<Bytes>,
    /// The attempt that claimed, holds or completed the key: 1 for a key done by `claim`,
    /// and for a first attempt; one more for each earlier attempt whose lease ran out or
    /// was abandoned.
    pub attempt: u32,
    /// Whether the key is done or still being worked on.
    pub state: KeyState,
}

/// Where a key [`Seen`] by the store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Done by [`Store::claim`](crate::Store::claim).
    Claimed,
    /// Held by an attempt of [`Store::begin`](crate::Store::begin) whose lease has not run
    /// out.
    InFlight,
    /// Done by [`Store::complete`](crate::Store::complete), with its outcome.
    Completed,
}

impl Seen {
    /// What a key's newest record says, if it still holds the key (`until > now`).
    fn from_record(h: &RecordHeader, state: Option<&StateValue<'_>>) -> Seen {
        let (kind, until) = match (h.kind, state) {
            (RecordKind::Lease, Some(s)) => (KeyState::InFlight, s.until),
            // A done record without token was written by a claim (of a key with past
            // attempts, or with an outcome), not by `complete`.
            (RecordKind::Done, Some(s)) if s.token == 0 => (KeyState::Claimed, s.until),
            (RecordKind::Done, Some(s)) => (KeyState::Completed, s.until),
            _ => (KeyState::Claimed, h.expires),
        };
        Seen {
            first_seen: from_millis(h.time),
            expires_at: from_millis(until),
            outcome: state
                .filter(|s| !s.outcome.is_empty())
                .map(|s| Bytes::copy_from_slice(s.outcome)),
            attempt: h.attempt.max(1),
            state: kind,
        }
    }

    /// A key claimed by `claim` at `time` until `expires`.
    pub(crate) fn claimed(time: u64, expires: u64) -> Seen {
        Seen {
            first_seen: from_millis(time),
            expires_at: from_millis(expires),
            outcome: None,
            attempt: 1,
            state: KeyState::Claimed,
        }
    }
}

/// A key's newest record, read under its stripe lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current<'t> {
    pub(crate) header: RecordHeader,
    /// The record's value (the encoded `StateValue` of a lease or done record).
    pub(crate) value: &'t [u8],
    /// The lsn the record ends at: an answer based on it waits until the log is durable
    /// up to here (durable before visible).
    pub(crate) end: u64,
}

/// What a free key remembers of its past attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// The attempt number a new attempt gets.
    pub(crate) next_attempt: u32,
    /// The first-seen time a new attempt keeps (that of the chain's first attempt).
    pub(crate) first_seen: u64,
    /// The `expires` of the record remembered: a record replacing it keeps at least this.
    pub(crate) keep: u64,
    /// Where the remembered record's chain began (`StateValue::chain`): a record replacing
    /// it continues the chain.
    pub(crate) chain: u64,
}

/// What a key's newest record means now (see the module table).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Status<'t> {
    /// Free: no record, or one that no longer holds the key; a new attempt continues from
    /// the `Memory`, if any.
    Free(Option<Memory>),
    /// Held: claimed, completed or in flight; `state` is the decoded value of a lease or
    /// done record.
    Held {
        current: Current<'t>,
        state: Option<StateValue<'t>>,
    },
}

impl<'t> Status<'t> {
    /// The status at `now` of a key whose newest record is `current`, if it has one.
    pub(crate) fn of(current: Option<Current<'t>>, now: u64) -> Status<'t> {
        let Some(c) = current else {
            return Status::Free(None);
        };
        let h = &c.header;
        if h.expires <= now {
            return Status::Free(None);
        }
        match h.kind {
            RecordKind::Claim => Status::Held {
                current: c,
                state: None,
            },
            RecordKind::Lease | RecordKind::Done => {
                let Some(s) = decode_state(c.value) else {
                    // Records the index points at were validated when written or replayed.
                    return Status::Free(None);
                };
                if s.until > now {
                    Status::Held {
                        current: c,
                        state: Some(s),
                    }
                } else if h.kind == RecordKind::Lease {
                    Status::Free(Some(Memory {
                        next_attempt: h.attempt.saturating_add(1),
                        first_seen: h.time,
                        keep: h.expires,
                        chain: s.chain,
                    }))
                } else {
                    Status::Free(Some(Memory {
                        next_attempt: 1,
                        first_seen: now,
                        keep: h.expires,
                        chain: s.chain,
                    }))
                }
            }
            RecordKind::Remove | RecordKind::Seal => Status::Free(None),
        }
    }
}

impl Current<'_> {
    /// The public answer about the key this held record stands for.
    pub(crate) fn seen(&self, state: Option<&StateValue<'_>>) -> Seen {
        Seen::from_record(&self.header, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_state;

    fn header(kind: RecordKind, attempt: u32, time: u64, expires: u64) -> RecordHeader {
        RecordHeader {
            kind,
            key_len: 1,
            value_len: 0,
            attempt,
            time,
            expires,
        }
    }

    fn value(token: u64, until: u64) -> Vec<u8> {
        let mut v = Vec::new();
        encode_state(
            &mut v,
            &StateValue {
                token,
                until,
                fingerprint: b"",
                outcome: b"out",
                chain: 0,
            },
        );
        v
    }

    fn status(kind: RecordKind, value: &[u8], now: u64) -> Status<'_> {
        let current = Current {
            header: header(kind, 2, 100, 1_000),
            value,
            end: 7,
        };
        Status::of(Some(current), now)
    }

    #[test]
    fn every_row_of_the_state_table() {
        let held = |s: Status<'_>| matches!(s, Status::Held { .. });
        assert!(matches!(Status::of(None, 0), Status::Free(None)));
        assert!(held(status(RecordKind::Claim, b"", 999)));
        assert!(matches!(
            status(RecordKind::Claim, b"", 1_000),
            Status::Free(None)
        ));
        let lease = value(9, 500);
        assert!(held(status(RecordKind::Lease, &lease, 499)));
        match status(RecordKind::Lease, &lease, 500) {
            Status::Free(Some(m)) => {
                assert_eq!((m.next_attempt, m.first_seen, m.keep), (3, 100, 1_000))
            }
            other => panic!("a lapsed lease: {other:?}"),
        }
        let done = value(9, 600);
        match status(RecordKind::Done, &done, 599) {
            Status::Held { current, state } => {
                let seen = current.seen(state.as_ref());
                assert_eq!(seen.state, KeyState::Completed);
                assert_eq!(seen.outcome.as_deref(), Some(&b"out"[..]));
                assert_eq!((seen.attempt, current.end), (2, 7));
            }
            other => panic!("a live outcome: {other:?}"),
        }
        match status(RecordKind::Done, &done, 600) {
            Status::Free(Some(m)) => assert_eq!((m.next_attempt, m.first_seen), (1, 600)),
            other => panic!("an expired outcome: {other:?}"),
        }
        assert!(matches!(
            status(RecordKind::Lease, &lease, 1_000),
            Status::Free(None)
        ));
        assert!(matches!(
            status(RecordKind::Remove, b"", 0),
            Status::Free(None)
        ));
    }

    #[test]
    fn a_done_record_without_token_reads_as_claimed() {
        let v = value(0, 800);
        match status(RecordKind::Done, &v, 0) {
            Status::Held { current, state } => {
                assert_eq!(current.seen(state.as_ref()).state, KeyState::Claimed)
            }
            other => panic!("{other:?}"),
        }
    }
}
