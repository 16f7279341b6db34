//! Model test of two-phase claims: random sequences of begin (with and without payload
//! fingerprints), complete, abandon, extend, claim, remove, get, clock moves (so leases run
//! out and attempts are forgotten), compaction and reopens, against a model of the state
//! machine in `src/lease.rs`. Every answer must match exactly: state, attempt, times,
//! outcome, and which tickets are stale.
//!
//! `PROPTEST_CASES` sets the number of runs (default below).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{clock, ms, opts_no_bg};
use oncelog::{Begin, Claim, Error, KeyState, ManualClock, Seen, Store, Ticket};
use proptest::prelude::*;

/// How long the stores under test remember a lapsed attempt, ms.
const MEMORY_MS: u64 = 5_000;
const POOL: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Begin(usize, u64, Option<u8>),
    Complete(usize, Vec<u8>, u64),
    Abandon(usize),
    Extend(usize, u64),
    Claim(usize, u64),
    Remove(usize),
    Get(usize),
    Advance(u64),
    Compact,
    Reopen,
}

fn pool_key(i: usize) -> Vec<u8> {
    match i % 3 {
        0 => format!("evt_{i}").into_bytes(),
        1 => vec![i as u8; 1 + i * 397 % 4096],
        _ => vec![0xff, i as u8],
    }
}

fn ms_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..2_000, 2_000u64..20_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..POOL, ms_strategy(), prop::option::of(0u8..2)).prop_map(|(k, l, f)| Op::Begin(k, l, f)),
        4 => (any::<usize>(), prop::collection::vec(any::<u8>(), 0..24), ms_strategy())
            .prop_map(|(t, o, ttl)| Op::Complete(t, o, ttl)),
        2 => any::<usize>().prop_map(Op::Abandon),
        2 => (any::<usize>(), ms_strategy()).prop_map(|(t, l)| Op::Extend(t, l)),
        2 => (0..POOL, ms_strategy()).prop_map(|(k, t)| Op::Claim(k, t)),
        1 => (0..POOL).prop_map(Op::Remove),
        2 => (0..POOL).prop_map(Op::Get),
        4 => prop_oneof![1u64..500, 500u64..10_000].prop_map(Op::Advance),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Claim,
    Lease,
    Done,
}

/// A key's newest record, as the model sees it.
#[derive(Debug, Clone)]
struct Rec {
    kind: Kind,
    attempt: u32,
    first_seen: u64,
    until: u64,
    keep: u64,
    /// The ticket (index into the run's tickets) whose attempt this is; `None` once
    /// abandoned, and for keys done by `claim`.
    ticket: Option<usize>,
    fingerprint: Option<u8>,
    outcome: Vec<u8>,
}

/// What a key's record says now (as `Status::of` in `src/engine/key.rs`).
enum Status {
    Absent,
    /// Free: next attempt number, its first-seen, and the `keep` to carry on.
    Free(u32, u64, u64),
    Held(Rec),
}

/// The comparable part of a `Seen`.
type SeenKey = (KeyState, u64, u64, u32, Option<Vec<u8>>);

fn seen_key(s: &Seen) -> SeenKey {
    (
        s.state,
        ms(s.first_seen),
        ms(s.expires_at),
        s.attempt,
        s.outcome.as_ref().map(|b| b.to_vec()),
    )
}

impl Rec {
    fn seen(&self) -> SeenKey {
        let state = match (self.kind, self.ticket) {
            (Kind::Lease, _) => KeyState::InFlight,
            (Kind::Done, Some(_)) => KeyState::Completed,
            _ => KeyState::Claimed,
        };
        let outcome = Some(self.outcome.clone()).filter(|o| !o.is_empty());
        (state, self.first_seen, self.until, self.attempt, outcome)
    }
}

#[derive(Default)]
struct Model {
    keys: HashMap<Vec<u8>, Rec>,
}

impl Model {
    fn status(&self, key: &[u8], now: u64) -> Status {
        let Some(r) = self.keys.get(key).filter(|r| r.keep > now) else {
            return Status::Absent;
        };
        if r.until > now {
            Status::Held(r.clone())
        } else if r.kind == Kind::Lease {
            Status::Free(r.attempt + 1, r.first_seen, r.keep)
        } else {
            Status::Free(1, now, r.keep)
        }
    }

    /// Which ticket (if any) may act on `key` now; `Err` if the ticket is stale.
    fn holder(&self, key: &[u8], ticket: usize, now: u64) -> Result<Rec, ()> {
        match self.keys.get(key).filter(|r| r.keep > now) {
            Some(r) if r.kind == Kind::Lease && r.ticket == Some(ticket) => Ok(r.clone()),
            _ => Err(()),
        }
    }
}

/// An answer to begin, in comparable form: acquired (attempt, first seen, deadline), in
/// flight until, done or mismatch.
#[derive(Debug, PartialEq)]
enum Expect {
    Acquired(u32, u64, u64),
    InFlight(u64),
    Done(SeenKey),
    Mismatch(SeenKey),
}

fn fp_bytes(f: u8) -> [u8; 4] {
    [f; 4]
}

/// The model says the ticket is stale: the store must have refused with `StaleTicket`.
fn stale(got: &oncelog::Result<()>, step: usize, op: &Op) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(got, Err(Error::StaleTicket { .. })),
        "step {}: {:?}: {:?}",
        step,
        op,
        got
    );
    Ok(())
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> Store {
    opts_no_bg(clock)
        .attempt_memory(Duration::from_millis(MEMORY_MS))
        .open(dir)
        .expect("open")
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut store = open(dir.path(), &clock);
    let mut model = Model::default();
    // Tickets handed out, with their keys.
    let mut tickets: Vec<Ticket> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let now = ms(clock.now());
        match op {
            Op::Begin(k, lease, fp) => {
                let key = pool_key(*k);
                let lease_d = Duration::from_millis(*lease);
                let got = match fp {
                    Some(f) => store.begin_with_fingerprint(&key, lease_d, &fp_bytes(*f)),
                    None => store.begin(&key, lease_d),
                }
                .unwrap();
                let expect = match model.status(&key, now) {
                    Status::Held(r) => {
                        let mismatch = matches!((r.fingerprint, fp), (Some(a), Some(b)) if a != *b);
                        if mismatch {
                            Expect::Mismatch(r.seen())
                        } else if r.kind == Kind::Lease {
                            Expect::InFlight(r.until)
                        } else {
                            Expect::Done(r.seen())
                        }
                    }
                    status => {
                        let (attempt, first_seen, keep) = match status {
                            Status::Free(a, f, keep) => (a, f, keep),
                            _ => (1, now, 0),
                        };
                        let until = now + lease;
                        model.keys.insert(
                            key.clone(),
                            Rec {
                                kind: Kind::Lease,
                                attempt,
                                first_seen,
                                until,
                                keep: (until + MEMORY_MS).max(keep),
                                ticket: Some(tickets.len()),
                                fingerprint: *fp,
                                outcome: Vec::new(),
                            },
                        );
                        Expect::Acquired(attempt, first_seen, until)
                    }
                };
                let got_key = match &got {
                    Begin::Acquired(t) => {
                        Expect::Acquired(t.attempt(), ms(t.first_seen()), ms(t.deadline()))
                    }
                    Begin::InFlight { until } => Expect::InFlight(ms(*until)),
                    Begin::Done(s) => Expect::Done(seen_key(s)),
                    Begin::Mismatch(s) => Expect::Mismatch(seen_key(s)),
                };
                prop_assert_eq!(&got_key, &expect, "step {}: {:?}", step, op);
                if let Begin::Acquired(t) = got {
                    prop_assert_eq!(t.key(), &key[..]);
                    tickets.push(t);
                }
            }
            Op::Complete(t, outcome, ttl) => {
                if tickets.is_empty() {
                    continue;
                }
                let id = t % tickets.len();
                let ticket = &tickets[id];
                let got = store.complete(ticket, outcome, Duration::from_millis(*ttl));
                match model.holder(ticket.key(), id, now) {
                    Ok(r) => {
                        prop_assert!(got.is_ok(), "step {}: {:?}: {:?}", step, op, got);
                        let until = now + ttl;
                        model.keys.insert(
                            ticket.key().to_vec(),
                            Rec {
                                kind: Kind::Done,
                                until,
                                keep: until.max(r.keep),
                                outcome: outcome.clone(),
                                ..r
                            },
                        );
                    }
                    Err(()) => stale(&got, step, op)?,
                }
            }
            Op::Abandon(t) | Op::Extend(t, _) => {
                if tickets.is_empty() {
                    continue;
                }
                let id = t % tickets.len();
                let ticket = &tickets[id];
                let got = match op {
                    Op::Extend(_, lease) => store.extend(ticket, Duration::from_millis(*lease)),
                    _ => store.abandon(ticket),
                };
                match model.holder(ticket.key(), id, now) {
                    Ok(r) => {
                        prop_assert!(got.is_ok(), "step {}: {:?}: {:?}", step, op, got);
                        let next = match op {
                            Op::Extend(_, lease) => Rec {
                                until: now + lease,
                                keep: (now + lease + MEMORY_MS).max(r.keep),
                                ..r
                            },
                            _ => Rec {
                                until: now,
                                ticket: None,
                                ..r
                            },
                        };
                        model.keys.insert(ticket.key().to_vec(), next);
                    }
                    Err(()) => stale(&got, step, op)?,
                }
            }
            Op::Claim(k, ttl) => {
                let key = pool_key(*k);
                let got = store.claim(&key, Duration::from_millis(*ttl)).unwrap();
                let until = now + ttl;
                let expect = match model.status(&key, now) {
                    Status::Held(r) => Some(r.seen()),
                    Status::Free(attempt, first_seen, keep) => {
                        model.keys.insert(
                            key.clone(),
                            Rec {
                                kind: Kind::Done,
                                attempt,
                                first_seen,
                                until,
                                keep: until.max(keep),
                                ticket: None,
                                fingerprint: None,
                                outcome: Vec::new(),
                            },
                        );
                        None
                    }
                    Status::Absent => {
                        model.keys.insert(
                            key.clone(),
                            Rec {
                                kind: Kind::Claim,
                                attempt: 1,
                                first_seen: now,
                                until,
                                keep: until,
                                ticket: None,
                                fingerprint: None,
                                outcome: Vec::new(),
                            },
                        );
                        None
                    }
                };
                let got = match &got {
                    Claim::New => None,
                    Claim::Duplicate(s) => Some(seen_key(s)),
                };
                prop_assert_eq!(got, expect, "step {}: {:?}", step, op);
            }
            Op::Remove(k) => {
                let key = pool_key(*k);
                let got = store.remove(&key).unwrap();
                let held = matches!(model.status(&key, now), Status::Held(_));
                model.keys.remove(&key);
                prop_assert_eq!(got, held, "step {}: {:?}", step, op);
            }
            Op::Get(k) => {
                let key = pool_key(*k);
                let got = store.get(&key).unwrap().map(|s| seen_key(&s));
                let expect = match model.status(&key, now) {
                    Status::Held(r) => Some(r.seen()),
                    _ => None,
                };
                prop_assert_eq!(got, expect, "step {}: {:?}", step, op);
            }
            Op::Advance(d) => clock.advance(Duration::from_millis(*d)),
            Op::Compact => {
                store.compact().unwrap();
            }
            Op::Reopen => {
                store.close().unwrap();
                store = open(dir.path(), &clock);
            }
        }
    }
    // A final reopen agrees with the model on every key.
    store.close().unwrap();
    let store = open(dir.path(), &clock);
    let now = ms(clock.now());
    for k in 0..POOL {
        let key = pool_key(k);
        let got = store.get(&key).unwrap().map(|s| seen_key(&s));
        let expect = match model.status(&key, now) {
            Status::Held(r) => Some(r.seen()),
            _ => None,
        };
        prop_assert_eq!(got, expect, "final reopen, key {}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    })]

    #[test]
    fn leases_match_a_model(ops in prop::collection::vec(op(), 1..160)) {
        run(&ops)?;
    }
}
