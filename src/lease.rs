//! Two-phase claims: `begin` takes a lease on a key, `complete` stores the outcome,
//! `abandon` frees the key, `extend` moves the deadline. A door onto the engine, beside
//! `store.rs`: a key's state is its newest record, read as the table in
//! `src/engine/key.rs` says (in flight while a lease's deadline has not passed, done while
//! an outcome has not expired, free otherwise, remembering lapsed attempts).
//!
//! Invariants:
//!
//! - **Retention is monotone.** A record that takes over a key from a record whose
//!   `expires` has not passed gets an `expires` at least as late (removes copy theirs). So
//!   whatever expired records recovery skips, compaction drops or sweeps forget, the newest
//!   record still kept of a key is its newest record: no older state can come back.
//! - **Fencing.** A ticket acts (`complete`, `abandon`, `extend`) only while the key's newest
//!   record is a lease with the ticket's token; otherwise it fails with
//!   [`Error::StaleTicket`] and writes nothing. Tokens are random per attempt; an
//!   abandoned lease keeps the attempt number with token 0, so no ticket matches it.
//! - **Durable before visible** as for claims: `Acquired`, `InFlight` and `Done` answers,
//!   and the `Ok` of `complete`, `abandon` and `extend`, wait under `Durability::Sync` for the
//!   record they report or wrote.

use std::time::{Duration, SystemTime};

use crate::clock::from_millis;
use crate::engine::{check_key, Current, Seen, Status};
use crate::error::{Error, Result};
use crate::format::{
    decode_state, encode_state, RecordHeader, RecordKind, StateValue, MAX_FINGERPRINT_LEN,
    MAX_OUTCOME_LEN,
};
use crate::index::Place;
use crate::log::RecordSpec;
use crate::store::Store;

/// The answer to [`Store::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "begin's answer says whether to do the work"]
pub enum Begin {
    /// You hold the key until the lease runs out: do the work, then
    /// [`complete`](Store::complete) or [`abandon`](Store::abandon) with the ticket.
    Acquired(Ticket),
    /// Another attempt holds a live lease on the key until `until`: answer "try again
    /// later" (HTTP 409), do not start a second copy of the work.
    InFlight {
        /// When that lease runs out, unless its holder extends or completes it.
        until: SystemTime,
    },
    /// The key is done: the work ran (or was claimed with [`Store::claim`]). `Seen` carries
    /// the stored outcome, to answer the duplicate with the first delivery's result.
    Done(Seen),
    /// The key was begun with a different payload fingerprint (see
    /// [`Store::begin_with_fingerprint`]) and is in flight or done: the key is being reused
    /// for a different request, which is the caller's error (HTTP 422).
    Mismatch(Seen),
}

/// One attempt's hold on a key, from [`Begin::Acquired`]. Pass it to
/// [`complete`](Store::complete), [`abandon`](Store::abandon) or [`extend`](Store::extend).
///
/// A ticket identifies its attempt: once the lease ran out and another attempt acquired the
/// key (or the key was completed, abandoned or removed), the ticket is stale and those calls
/// fail with [`Error::StaleTicket`] without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    key: Box<[u8]>,
    attempt: u32,
    token: u64,
    first_seen: u64,
    deadline: u64,
}

impl Ticket {
    /// The key this ticket holds.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The attempt number: 1 for the first attempt, and one more for each earlier attempt
    /// whose lease ran out or that was abandoned (as far as the store remembers, see
    /// [`Options::attempt_memory`](crate::Options::attempt_memory)). Above 1, an earlier
    /// attempt may have done part of the work: check before doing it again.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the lease runs out, as acquired (`extend` moves the deadline but cannot change
    /// this copy).
    pub fn deadline(&self) -> SystemTime {
        from_millis(self.deadline)
    }

    /// When the key's first attempt began.
    pub fn first_seen(&self) -> SystemTime {
        from_millis(self.first_seen)
    }

    /// The ticket as text without its key, for holders in another process (a client of a
    /// server built on the store): `attempt.token.first_seen.deadline`, the fencing token in
    /// hex and the times in Unix milliseconds. Treat it as opaque; [`Ticket::from_text`]
    /// with the same key turns it back into the ticket.
    ///
    /// The token comes from a seed drawn at random when the store opened, so it cannot be
    /// worked out from the key and the attempt; still, it is a fencing token, not a secret
    /// credential: whoever has the text and the key holds the attempt, so hand it only to
    /// the holder.
    pub fn to_text(&self) -> String {
        format!(
            "{}.{:016x}.{}.{}",
            self.attempt, self.token, self.first_seen, self.deadline
        )
    }

    /// The ticket that [`to_text`](Ticket::to_text) wrote for `key`; `None` if `text` is not
    /// in that form or `key` is not a valid key. A ticket made up or given for another key
    /// parses but is stale: the store's calls refuse it with [`Error::StaleTicket`].
    pub fn from_text(key: impl AsRef<[u8]>, text: &str) -> Option<Ticket> {
        let key = key.as_ref();
        check_key(key).ok()?;
        let mut parts = text.split('.');
        let attempt = parts.next()?.parse().ok()?;
        let token = parts.next()?;
        if token.len() != 16 {
            return None;
        }
        let token = u64::from_str_radix(token, 16).ok()?;
        let first_seen = parts.next()?.parse().ok()?;
        let deadline = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Ticket {
            key: key.into(),
            attempt,
            token,
            first_seen,
            deadline,
        })
    }
}

/// A 16-byte fingerprint of a request payload, for
/// [`begin_with_fingerprint`](Store::begin_with_fingerprint): XXH3-128 of `payload`. Not a
/// cryptographic hash: it tells honest requests apart, it does not stop a client that
/// crafts collisions against its own idempotency keys. Pass a SHA-256 digest instead if
/// that matters.
pub fn fingerprint(payload: &[u8]) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes()
}

/// Whether an answer about a held key must be `Mismatch`: both sides have a fingerprint and
/// they differ.
fn mismatched(stored: Option<&StateValue<'_>>, given: Option<&[u8]>) -> bool {
    match (stored.map(|s| s.fingerprint), given) {
        (Some(stored), Some(given)) => !stored.is_empty() && stored != given,
        _ => false,
    }
}

fn encode_value(token: u64, until: u64, fingerprint: &[u8], outcome: &[u8], chain: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(32 + fingerprint.len() + outcome.len());
    encode_state(
        &mut value,
        &StateValue {
            token,
            until,
            fingerprint,
            outcome,
            chain,
        },
    );
    value
}

/// A ticket's own lease, checked to be the key's newest record: its place, header and value.
struct OwnLease<'s, 't> {
    place: Place<'s>,
    header: RecordHeader,
    state: StateValue<'t>,
}

impl Store {
    /// Begins work on `key`: acquires a lease for `lease`, unless another attempt holds a
    /// live one or the key is done. See [`Begin`] for the answers; the pattern is
    ///
    /// ```
    /// use std::time::Duration;
    /// use oncelog::{Begin, Store};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let outcome = match store.begin("evt_1", Duration::from_secs(30))? {
    ///     Begin::Acquired(ticket) => {
    ///         // ... do the work; on failure: store.abandon(&ticket)?
    ///         store.complete(&ticket, b"order 17 shipped", Duration::from_secs(72 * 3600))?;
    ///         "done now".to_string()
    ///     }
    ///     Begin::Done(seen) => format!("done before: {:?}", seen.outcome),
    ///     Begin::InFlight { .. } => "busy, retry later".to_string(),
    ///     Begin::Mismatch(_) => "key reused for another request".to_string(),
    /// };
    /// assert_eq!(outcome, "done now");
    /// match store.begin("evt_1", Duration::from_secs(30))? {
    ///     Begin::Done(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"order 17 shipped"[..])),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A lease that runs out (its holder crashed, or is too slow) frees the key: the next
    /// `begin` acquires it with the next attempt number, and the old ticket is stale. An
    /// in-flight lease survives a restart with its deadline. Under
    /// [`Durability::Sync`](crate::Durability::Sync) `Acquired` is returned once the lease
    /// is durable.
    ///
    /// `lease` follows the rules of a claim's TTL (at least 1 ms).
    pub fn begin(&self, key: impl AsRef<[u8]>, lease: Duration) -> Result<Begin> {
        let (answer, wait) = self.begin_now(key.as_ref(), lease, None)?;
        self.engine().settle(wait)?;
        Ok(answer)
    }

    /// [`begin`](Store::begin), recording a fingerprint of the request's payload: a later
    /// `begin_with_fingerprint` of the same key with a *different* fingerprint, while the key
    /// is in flight or done, gets [`Begin::Mismatch`] instead of `InFlight` or `Done` (an
    /// idempotency key reused for another request). A `begin` without fingerprint, or a key
    /// done by [`claim`](Store::claim), is not checked. Fingerprints are 1 to
    /// [`MAX_FINGERPRINT_LEN`](crate::MAX_FINGERPRINT_LEN) bytes; [`fingerprint`] makes one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oncelog::{fingerprint, Begin, Store};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let lease = Duration::from_secs(30);
    /// let fp = fingerprint(br#"{"amount": 100}"#);
    /// let Begin::Acquired(ticket) = store.begin_with_fingerprint("idem_1", lease, &fp)? else {
    ///     unreachable!()
    /// };
    /// store.complete(&ticket, b"ch_1", Duration::from_secs(3600))?;
    /// let other = fingerprint(br#"{"amount": 999}"#);
    /// assert!(matches!(store.begin_with_fingerprint("idem_1", lease, &other)?, Begin::Mismatch(_)));
    /// assert!(matches!(store.begin_with_fingerprint("idem_1", lease, &fp)?, Begin::Done(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_with_fingerprint(
        &self,
        key: impl AsRef<[u8]>,
        lease: Duration,
        fingerprint: &[u8],
    ) -> Result<Begin> {
        let (answer, wait) = self.begin_now(key.as_ref(), lease, Some(fingerprint))?;
        self.engine().settle(wait)?;
        Ok(answer)
    }

    /// `begin` (with a fingerprint, if given) up to the wait for durability: the answer,
    /// and the lsn to settle before giving it.
    pub(crate) fn begin_now(
        &self,
        key: &[u8],
        lease: Duration,
        fp: Option<&[u8]>,
    ) -> Result<(Begin, u64)> {
        if let Some(fingerprint) = fp {
            if fingerprint.is_empty() || fingerprint.len() > MAX_FINGERPRINT_LEN {
                return Err(Error::InvalidFingerprint {
                    len: fingerprint.len(),
                    max: MAX_FINGERPRINT_LEN,
                });
            }
        }
        check_key(key)?;
        let engine = self.engine();
        let (now, deadline) = engine.window(lease)?;
        let hash = engine.hash(key);
        let (answer, wait) = {
            let mut stripe = engine.lock(hash);
            let (place, current) = engine.find_place(&mut stripe, key, hash);
            let memory = match Status::of(current, now) {
                Status::Held { current, state } => {
                    let seen = current.seen(state.as_ref());
                    let answer = if mismatched(state.as_ref(), fp) {
                        Begin::Mismatch(seen)
                    } else if current.header.kind == RecordKind::Lease {
                        Begin::InFlight {
                            until: seen.expires_at,
                        }
                    } else {
                        Begin::Done(seen)
                    };
                    return Ok((answer, current.end));
                }
                Status::Free(memory) => memory,
            };
            let attempt = memory.map_or(1, |m| m.next_attempt);
            let first_seen = memory.map_or(now, |m| m.first_seen);
            let keep = engine
                .attempt_kept_until(deadline)
                .max(memory.map_or(0, |m| m.keep));
            let token = engine.new_token();
            // A free key with a memory continues its chain; one without begins a chain.
            let chain = memory.map_or_else(|| engine.chain_start(), |m| m.chain);
            let value = encode_value(token, deadline, fp.unwrap_or(&[]), &[], chain);
            let spec = RecordSpec {
                kind: RecordKind::Lease,
                key,
                value: &value,
                attempt,
                time: first_seen,
                expires: keep,
            };
            let w = engine.write(place, hash, &spec)?;
            stripe.counters.acquired += 1;
            let ticket = Ticket {
                key: key.into(),
                attempt,
                token,
                first_seen,
                deadline,
            };
            (Begin::Acquired(ticket), w.lsn_end)
        };
        Ok((answer, wait))
    }

    /// Marks the ticket's key done and stores `outcome` (at most
    /// [`MAX_OUTCOME_LEN`](crate::MAX_OUTCOME_LEN) bytes), which every later `begin` of the
    /// key gets back in [`Begin::Done`] until `ttl` runs out; then the key may be begun
    /// anew. Under `Durability::Sync` it returns once the outcome is durable.
    ///
    /// A ticket whose lease ran out may still complete, as long as no other attempt has
    /// acquired the key since. Fails with [`Error::StaleTicket`] (and changes nothing) if
    /// the ticket no longer holds the key, with [`Error::OutcomeTooLarge`] if the outcome is
    /// too long (the lease is kept), and with [`Error::InvalidTtl`] (the lease is kept too) if
    /// `ttl` breaks the rules of a claim's TTL.
    pub fn complete(&self, ticket: &Ticket, outcome: &[u8], ttl: Duration) -> Result<()> {
        let wait = self.complete_now(ticket, outcome, ttl)?;
        self.engine().settle(wait)
    }

    /// `complete` up to the wait for durability: the lsn to settle.
    pub(crate) fn complete_now(
        &self,
        ticket: &Ticket,
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<u64> {
        if outcome.len() > MAX_OUTCOME_LEN {
            return Err(Error::OutcomeTooLarge {
                len: outcome.len(),
                max: MAX_OUTCOME_LEN,
            });
        }
        let (now, until) = self.engine().window(ttl)?;
        self.act(ticket, now, Act::Complete { until, outcome })
    }

    /// Gives up the ticket's attempt: the key is free at once, and the next `begin`
    /// acquires it as the next attempt. For work that failed cleanly and may be retried.
    /// Fails with [`Error::StaleTicket`] (and changes nothing) if the ticket no longer holds
    /// the key.
    pub fn abandon(&self, ticket: &Ticket) -> Result<()> {
        let wait = self.abandon_now(ticket)?;
        self.engine().settle(wait)
    }

    /// `abandon` up to the wait for durability: the lsn to settle.
    pub(crate) fn abandon_now(&self, ticket: &Ticket) -> Result<u64> {
        let now = self.engine().now();
        self.act(ticket, now, Act::Abandon)
    }

    /// Heartbeat for long work: the ticket's lease now runs out `lease` from now (which may
    /// be earlier than before). A ticket whose lease ran out may extend it as long as no
    /// other attempt has acquired the key since. Fails with [`Error::StaleTicket`] (and
    /// changes nothing) if the ticket no longer holds the key, and with
    /// [`Error::InvalidTtl`] (ditto) if `lease` breaks the rules of a claim's TTL.
    pub fn extend(&self, ticket: &Ticket, lease: Duration) -> Result<()> {
        let wait = self.extend_now(ticket, lease)?;
        self.engine().settle(wait)
    }

    /// `extend` up to the wait for durability: the lsn to settle.
    pub(crate) fn extend_now(&self, ticket: &Ticket, lease: Duration) -> Result<u64> {
        let (now, deadline) = self.engine().window(lease)?;
        self.act(ticket, now, Act::Extend { deadline })
    }

    /// Checks that `ticket` still holds its key and writes the record `act` asks for;
    /// returns the lsn to settle.
    fn act(&self, ticket: &Ticket, now: u64, act: Act<'_>) -> Result<u64> {
        let engine = self.engine();
        let key: &[u8] = &ticket.key;
        check_key(key)?;
        let hash = engine.hash(key);
        let wait = {
            let mut stripe = engine.lock(hash);
            let (place, current) = engine.find_place(&mut stripe, key, hash);
            let held = check_ticket(ticket, place, current, now)?;
            let h = held.header;
            let fp = held.state.fingerprint;
            // The chain goes on.
            let chain = held.state.chain;
            let (kind, value, expires) = match act {
                Act::Complete { until, outcome } => (
                    RecordKind::Done,
                    encode_value(ticket.token, until, fp, outcome, chain),
                    until.max(h.expires),
                ),
                Act::Abandon => (
                    RecordKind::Lease,
                    encode_value(0, now, fp, &[], chain),
                    h.expires,
                ),
                Act::Extend { deadline } => (
                    RecordKind::Lease,
                    encode_value(ticket.token, deadline, fp, &[], chain),
                    engine.attempt_kept_until(deadline).max(h.expires),
                ),
            };
            let spec = RecordSpec {
                kind,
                key,
                value: &value,
                attempt: h.attempt,
                time: h.time,
                expires,
            };
            let w = engine.write(held.place, hash, &spec)?;
            let c = &mut stripe.counters;
            match act {
                Act::Complete { .. } => c.completed += 1,
                Act::Abandon => c.abandoned += 1,
                Act::Extend { .. } => c.extended += 1,
            }
            w.lsn_end
        };
        Ok(wait)
    }
}

/// What a ticket asks for.
#[derive(Clone, Copy)]
enum Act<'a> {
    Complete { until: u64, outcome: &'a [u8] },
    Abandon,
    Extend { deadline: u64 },
}

/// The ticket's lease if it is still the key's newest record; otherwise why not.
fn check_ticket<'s, 't>(
    ticket: &Ticket,
    place: Place<'s>,
    current: Option<Current<'t>>,
    now: u64,
) -> Result<OwnLease<'s, 't>> {
    let stale = |reason: String| Error::StaleTicket {
        attempt: ticket.attempt,
        reason,
    };
    let Some(Current { header, value, .. }) = current.filter(|c| c.header.expires > now) else {
        return Err(stale(
            "the key has no state any more (removed, or forgotten after its lease ran out)".into(),
        ));
    };
    let state = decode_state(value).filter(|_| header.kind != RecordKind::Claim);
    match (header.kind, state) {
        (RecordKind::Lease, Some(state)) if state.token == ticket.token => Ok(OwnLease {
            place,
            header,
            state,
        }),
        (RecordKind::Lease, Some(state))
            if state.token == 0 && header.attempt == ticket.attempt =>
        {
            Err(stale("the attempt was abandoned".into()))
        }
        (RecordKind::Lease, _) if header.attempt != ticket.attempt => Err(stale(format!(
            "its lease ran out and attempt {} acquired the key",
            header.attempt
        ))),
        (RecordKind::Done, Some(state)) if state.token == ticket.token => {
            Err(stale("the attempt was already completed".into()))
        }
        (RecordKind::Done, _) => Err(stale(format!(
            "attempt {} completed the key",
            header.attempt
        ))),
        (RecordKind::Claim, _) => Err(stale(
            "its lease ran out and the key was claimed with `claim`".into(),
        )),
        _ => Err(stale("the key is held by another attempt".into())),
    }
}
