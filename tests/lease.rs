//! Two-phase claims: begin / complete / abandon / extend, fencing, fingerprints, the
//! interplay with `claim`, and all of it across reopen, compaction and hints.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{acquire, clock, LEASE};
use oncelog::{
    Begin, Claim, Error, KeyState, ManualClock, Options, Store, Ticket, MAX_OUTCOME_LEN,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn open(dir: &std::path::Path, clock: &ManualClock) -> Store {
    Options::new()
        .clock(clock.clone())
        .background_maintenance(false)
        .segment_size(64 << 10)
        .open(dir)
        .unwrap()
}

fn stale(r: oncelog::Result<()>) -> String {
    match r {
        Err(Error::StaleTicket { reason, .. }) => reason,
        other => panic!("expected a stale ticket, got {other:?}"),
    }
}

#[test]
fn begin_complete_and_duplicates_get_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t = acquire(&store, "evt_1");
    assert_eq!(t.attempt(), 1);
    assert_eq!(t.key(), b"evt_1");
    assert_eq!(t.deadline(), clock.now() + LEASE);
    // While it is in flight, another begin is told so, with the deadline.
    match store.begin("evt_1", LEASE).unwrap() {
        Begin::InFlight { until } => assert_eq!(until, t.deadline()),
        other => panic!("{other:?}"),
    }
    // claim sees an in-flight key as a duplicate that says so.
    match store.claim("evt_1", DAY).unwrap() {
        Claim::Duplicate(seen) => {
            assert_eq!(seen.state, KeyState::InFlight);
            assert_eq!(seen.expires_at, t.deadline());
            assert_eq!(seen.attempt, 1);
            assert_eq!(seen.outcome, None);
        }
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_secs(5));
    store.complete(&t, b"shipped", DAY).unwrap();
    let done_at = clock.now();
    for _ in 0..2 {
        match store.begin("evt_1", LEASE).unwrap() {
            Begin::Done(seen) => {
                assert_eq!(seen.state, KeyState::Completed);
                assert_eq!(seen.outcome.as_deref(), Some(&b"shipped"[..]));
                assert_eq!(seen.expires_at, done_at + DAY);
                assert_eq!(seen.first_seen, t.first_seen());
                assert_eq!(seen.attempt, 1);
            }
            other => panic!("{other:?}"),
        }
    }
    let seen = store.get("evt_1").unwrap().unwrap();
    assert_eq!(seen.outcome.as_deref(), Some(&b"shipped"[..]));
    assert!(!store.claim("evt_1", DAY).unwrap().is_new());
    // The ticket is spent.
    assert!(stale(store.complete(&t, b"again", DAY)).contains("already completed"));
    assert!(stale(store.abandon(&t)).contains("already completed"));
    // Once the outcome's TTL runs out the key starts over, as attempt 1.
    clock.advance(DAY);
    let t2 = acquire(&store, "evt_1");
    assert_eq!(t2.attempt(), 1);
    assert_eq!(t2.first_seen(), clock.now());
    let s = store.stats();
    assert_eq!((s.acquired, s.completed), (2, 1));
}

#[test]
fn abandon_frees_the_key_for_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t1 = acquire(&store, "k");
    store.abandon(&t1).unwrap();
    assert_eq!(store.get("k").unwrap(), None);
    assert!(stale(store.abandon(&t1)).contains("abandoned"));
    assert!(stale(store.complete(&t1, b"", DAY)).contains("abandoned"));
    assert!(stale(store.extend(&t1, LEASE)).contains("abandoned"));
    let t2 = acquire(&store, "k");
    assert_eq!(t2.attempt(), 2);
    assert_eq!(t2.first_seen(), t1.first_seen());
    assert!(stale(store.complete(&t1, b"", DAY)).contains("attempt 2"));
    store.complete(&t2, b"ok", DAY).unwrap();
    match store.begin("k", LEASE).unwrap() {
        Begin::Done(seen) => assert_eq!(seen.attempt, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lease_that_runs_out_fences_its_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t1 = acquire(&store, "k");
    clock.advance(LEASE - Duration::from_millis(1));
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    clock.advance(Duration::from_millis(1));
    // Ran out: the key is free, and get says so.
    assert_eq!(store.get("k").unwrap(), None);
    let t2 = acquire(&store, "k");
    assert_eq!(t2.attempt(), 2);
    // The first holder wakes up: everything it tries fails and changes nothing.
    let why = stale(store.complete(&t1, b"late", DAY));
    assert!(why.contains("attempt 2 acquired"), "{why}");
    stale(store.extend(&t1, LEASE));
    stale(store.abandon(&t1));
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    store.complete(&t2, b"second", DAY).unwrap();
    match store.begin("k", LEASE).unwrap() {
        Begin::Done(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"second"[..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_late_holder_may_still_finish_if_nobody_took_over() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t = acquire(&store, "k");
    clock.advance(LEASE * 2);
    store.extend(&t, LEASE).unwrap();
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    clock.advance(LEASE * 2);
    store.complete(&t, b"late but fine", DAY).unwrap();
    assert!(matches!(store.begin("k", LEASE).unwrap(), Begin::Done(_)));
}

#[test]
fn extend_is_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t = acquire(&store, "k");
    for _ in 0..10 {
        clock.advance(LEASE / 2);
        store.extend(&t, LEASE).unwrap();
        match store.begin("k", LEASE).unwrap() {
            Begin::InFlight { until } => assert_eq!(until, clock.now() + LEASE),
            other => panic!("{other:?}"),
        }
    }
    // Extending to a shorter lease is allowed, and takes effect.
    store.extend(&t, Duration::from_millis(10)).unwrap();
    clock.advance(Duration::from_millis(10));
    assert_eq!(acquire(&store, "k").attempt(), 2);
    assert_eq!(store.stats().extended, 11);
}

#[test]
fn fingerprints_tell_a_reused_key_apart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let a = oncelog::fingerprint(b"amount=100");
    let b = oncelog::fingerprint(b"amount=999");
    assert_ne!(a, b);
    let Begin::Acquired(t) = store.begin_with_fingerprint("k", LEASE, &a).unwrap() else {
        panic!()
    };
    // In flight: a different payload is a mismatch, the same one is in flight, none is
    // not checked.
    match store.begin_with_fingerprint("k", LEASE, &b).unwrap() {
        Begin::Mismatch(seen) => assert_eq!(seen.state, KeyState::InFlight),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.begin_with_fingerprint("k", LEASE, &a).unwrap(),
        Begin::InFlight { .. }
    ));
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    store.complete(&t, b"r", DAY).unwrap();
    match store.begin_with_fingerprint("k", LEASE, &b).unwrap() {
        Begin::Mismatch(seen) => {
            assert_eq!(seen.state, KeyState::Completed);
            assert_eq!(seen.outcome.as_deref(), Some(&b"r"[..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.begin_with_fingerprint("k", LEASE, &a).unwrap(),
        Begin::Done(_)
    ));
    // A key done by claim has no fingerprint to compare.
    assert!(store.claim("c", DAY).unwrap().is_new());
    assert!(matches!(
        store.begin_with_fingerprint("c", LEASE, &b).unwrap(),
        Begin::Done(_)
    ));
    // Bad fingerprints are errors.
    for bad in [&[][..], &[7u8; 65][..]] {
        match store.begin_with_fingerprint("x", LEASE, bad) {
            Err(Error::InvalidFingerprint { len, max: 64 }) => assert_eq!(len, bad.len()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(store.get("x").unwrap(), None);
}

#[test]
fn claim_and_begin_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    // Done by claim: Done for begin.
    assert!(store.claim("c", DAY).unwrap().is_new());
    match store.begin("c", LEASE).unwrap() {
        Begin::Done(seen) => {
            assert_eq!(seen.state, KeyState::Claimed);
            assert_eq!(seen.outcome, None);
        }
        other => panic!("{other:?}"),
    }
    // A lease that ran out: claim takes the key over, counting the attempt, and the old
    // ticket is stale.
    let t = acquire(&store, "l");
    clock.advance(LEASE);
    assert!(store.claim("l", DAY).unwrap().is_new());
    match store.begin("l", LEASE).unwrap() {
        Begin::Done(seen) => {
            assert_eq!(seen.state, KeyState::Claimed);
            assert_eq!(seen.attempt, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(stale(store.complete(&t, b"", DAY)).contains("completed"));
    // The same through claim_many, and a repeat within the batch.
    let t = acquire(&store, "m");
    let answers = store.claim_many(&["m", "n", "n"], DAY).unwrap();
    assert!(matches!(&answers[0], Claim::Duplicate(s) if s.state == KeyState::InFlight));
    assert!(answers[1].is_new() && !answers[2].is_new());
    clock.advance(LEASE);
    let answers = store.claim_many(&["m"], DAY).unwrap();
    assert!(answers[0].is_new());
    stale(store.extend(&t, LEASE));
    // remove makes a held ticket stale, and forgets the attempts.
    let t = acquire(&store, "r");
    assert!(store.remove("r").unwrap());
    assert!(stale(store.complete(&t, b"", DAY)).contains("no state"));
    assert_eq!(acquire(&store, "r").attempt(), 1);
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    assert!(matches!(
        store.begin("", LEASE),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        store.begin("k", Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        store.begin("k", Duration::MAX),
        Err(Error::InvalidTtl { .. })
    ));
    let t = acquire(&store, "k");
    let big = vec![0u8; MAX_OUTCOME_LEN + 1];
    match store.complete(&t, &big, DAY) {
        Err(Error::OutcomeTooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_OUTCOME_LEN + 1, MAX_OUTCOME_LEN))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.complete(&t, b"", Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        store.extend(&t, Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
    // Still held by the ticket; the largest outcome fits.
    assert!(matches!(
        store.begin("k", LEASE).unwrap(),
        Begin::InFlight { .. }
    ));
    let max = vec![0xabu8; MAX_OUTCOME_LEN];
    store.complete(&t, &max, DAY).unwrap();
    match store.begin("k", LEASE).unwrap() {
        Begin::Done(seen) => assert_eq!(seen.outcome.as_deref(), Some(&max[..])),
        other => panic!("{other:?}"),
    }
}

/// Everything a key can be, written before a reopen (with and without compaction and
/// hints), and checked after it.
#[test]
fn states_survive_reopen_compaction_and_hints() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let fp = oncelog::fingerprint(b"payload");
    let (in_flight, lapsed) = {
        let store = open(dir.path(), &clock);
        // Enough traffic to fill a few 64 KiB segments, so that compaction and hints have
        // sealed segments to work on.
        for i in 0..3000 {
            let t = acquire(&store, format!("done-{i}"));
            store
                .complete(&t, format!("out-{i}").as_bytes(), DAY)
                .unwrap();
        }
        let in_flight = acquire(&store, "in-flight");
        let Begin::Acquired(lapsed) = store
            .begin_with_fingerprint("lapsed", Duration::from_secs(1), &fp)
            .unwrap()
        else {
            panic!()
        };
        let abandoned = acquire(&store, "abandoned");
        store.abandon(&abandoned).unwrap();
        assert!(store.claim("claimed", DAY).unwrap().is_new());
        let gone = acquire(&store, "removed");
        assert!(store.remove("removed").unwrap());
        drop(gone);
        for i in 0..3000 {
            assert!(store
                .claim(format!("filler-{i}"), Duration::from_secs(2))
                .unwrap()
                .is_new());
        }
        store.close().unwrap();
        (in_flight, lapsed)
    };
    clock.advance(Duration::from_secs(3));
    let check = |store: &Store, round: &str| {
        for i in (0..3000).step_by(97) {
            match store.begin(format!("done-{i}"), LEASE).unwrap() {
                Begin::Done(seen) => {
                    assert_eq!(
                        seen.outcome.as_deref(),
                        Some(format!("out-{i}").as_bytes()),
                        "{round}"
                    )
                }
                other => panic!("{round}: done-{i}: {other:?}"),
            }
        }
        match store.begin("in-flight", LEASE).unwrap() {
            Begin::InFlight { until } => assert_eq!(until, in_flight.deadline(), "{round}"),
            other => panic!("{round}: {other:?}"),
        }
        assert!(
            matches!(store.begin("claimed", LEASE).unwrap(), Begin::Done(_)),
            "{round}"
        );
        assert_eq!(store.get("lapsed").unwrap(), None, "{round}");
        assert_eq!(store.get("abandoned").unwrap(), None, "{round}");
        assert_eq!(store.get("removed").unwrap(), None, "{round}");
        assert_eq!(store.get("filler-1").unwrap(), None, "{round}");
    };
    // Reopen by scanning, then compact (drops the expired fillers, writes hints), then
    // reopen from hints: the same answers every time. Answers that acquire are made on
    // a copy of the directory so the original stays as written.
    let store = open(dir.path(), &clock);
    check(&store, "scan");
    let report = store.compact().unwrap();
    assert!(report.hints_written > 0, "{report:?}");
    check(&store, "compacted");
    store.close().unwrap();
    let store = open(dir.path(), &clock);
    assert!(store.stats().recovery_hinted_segments > 0);
    check(&store, "hinted");
    // The lapsed and abandoned keys remember their attempt; the old tickets are stale.
    let t = acquire(&store, "lapsed");
    assert_eq!((t.attempt(), t.first_seen()), (2, lapsed.first_seen()));
    assert!(stale(store.complete(&lapsed, b"", DAY)).contains("attempt 2"));
    assert_eq!(acquire(&store, "abandoned").attempt(), 2);
    assert_eq!(acquire(&store, "removed").attempt(), 1);
    // The in-flight ticket still works after the restart.
    store
        .complete(&in_flight, b"finished after restart", DAY)
        .unwrap();
    drop(store);
    let store = open(dir.path(), &clock);
    match store.begin("in-flight", LEASE).unwrap() {
        Begin::Done(seen) => assert_eq!(
            seen.outcome.as_deref(),
            Some(&b"finished after restart"[..])
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn attempts_are_forgotten_after_the_attempt_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Options::new()
        .clock(clock.clone())
        .background_maintenance(false)
        .attempt_memory(Duration::from_secs(60))
        .open(dir.path())
        .unwrap();
    let _crashed = acquire(&store, "k");
    clock.advance(LEASE + Duration::from_secs(59));
    let t = acquire(&store, "k");
    assert_eq!(t.attempt(), 2);
    // One second more than the memory: the index sweeps by whole seconds.
    clock.advance(LEASE + Duration::from_secs(61));
    // Forgotten by the index once swept, and by the log once compacted.
    store.compact().unwrap();
    assert_eq!(store.stats().keys, 0);
    drop(store);
    let store = Options::new()
        .clock(clock.clone())
        .background_maintenance(false)
        .open(dir.path())
        .unwrap();
    assert_eq!(acquire(&store, "k").attempt(), 1);
}

/// `threads` threads begin `key` at once (released together by a barrier).
fn begin_together(store: &Arc<Store>, key: &str, threads: usize) -> Vec<Begin> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, barrier, key) = (Arc::clone(store), Arc::clone(&barrier), key.to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                store.begin(&key, LEASE).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn many_threads_begin_one_key_exactly_one_acquires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Options::new().open(dir.path()).unwrap());
    let threads = 8;
    for round in 0..20 {
        let key = format!("key-{round}");
        let answers = begin_together(&store, &key, threads);
        let acquired: Vec<&Ticket> = answers
            .iter()
            .filter_map(|a| match a {
                Begin::Acquired(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(acquired.len(), 1, "round {round}: {answers:?}");
        assert!(answers
            .iter()
            .all(|a| matches!(a, Begin::Acquired(_) | Begin::InFlight { .. })));
        // After an abandon, exactly one more.
        store.abandon(acquired[0]).unwrap();
        let again = begin_together(&store, &key, threads);
        let winners: Vec<u32> = again
            .iter()
            .filter_map(|a| match a {
                Begin::Acquired(t) => Some(t.attempt()),
                _ => None,
            })
            .collect();
        assert_eq!(winners, vec![2], "round {round}: {again:?}");
    }
}

#[test]
fn a_claim_with_an_outcome_keeps_it_for_duplicates_and_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    assert!(store
        .claim_with_outcome("k", b"first", DAY)
        .unwrap()
        .is_new());
    let Claim::Duplicate(seen) = store.claim_with_outcome("k", b"second", DAY).unwrap() else {
        panic!("the key is claimed");
    };
    assert_eq!(seen.outcome.as_deref(), Some(&b"first"[..]));
    assert_eq!(seen.state, KeyState::Claimed);
    assert_eq!(seen.attempt, 1);
    assert_eq!(seen.expires_at, clock.now() + DAY);
    // A plain claim and a begin see the same key done, with the first outcome.
    assert!(!store.claim("k", DAY).unwrap().is_new());
    match store.begin("k", LEASE).unwrap() {
        Begin::Done(seen) => assert_eq!(seen.outcome.as_deref(), Some(&b"first"[..])),
        other => panic!("expected done, got {other:?}"),
    }
    // An empty outcome is a plain claim.
    assert!(store
        .claim_with_outcome("plain", b"", DAY)
        .unwrap()
        .is_new());
    assert_eq!(
        store.get("plain").unwrap().unwrap().state,
        KeyState::Claimed
    );
    // Too long: refused before anything is claimed.
    let big = vec![0u8; MAX_OUTCOME_LEN + 1];
    assert!(matches!(
        store.claim_with_outcome("big", &big, DAY),
        Err(Error::OutcomeTooLarge { .. })
    ));
    assert!(store.get("big").unwrap().is_none());
    drop(store);

    let store = open(dir.path(), &clock);
    let seen = store.get("k").unwrap().unwrap();
    assert_eq!(seen.outcome.as_deref(), Some(&b"first"[..]));
    assert_eq!(seen.state, KeyState::Claimed);
    // It expires like any claim, and the key is new again.
    clock.advance(DAY);
    assert!(store.get("k").unwrap().is_none());
    assert!(store
        .claim_with_outcome("k", b"third", DAY)
        .unwrap()
        .is_new());
}

#[test]
fn a_claim_with_an_outcome_keeps_the_attempt_memory_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t = acquire(&store, "k");
    store.abandon(&t).unwrap();
    assert!(store
        .claim_with_outcome("k", b"done", DAY)
        .unwrap()
        .is_new());
    let seen = store.get("k").unwrap().unwrap();
    assert_eq!(seen.attempt, 2, "the abandoned attempt is remembered");
    assert_eq!(seen.outcome.as_deref(), Some(&b"done"[..]));
}

#[test]
fn a_ticket_as_text_holds_the_key_in_another_hand() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let t = acquire(&store, "k");
    let text = t.to_text();
    let back = Ticket::from_text("k", &text).expect("parses");
    assert_eq!(back, t);
    // Malformed text and invalid keys do not parse.
    for bad in [
        "",
        "1",
        "1.2.3",
        "x.0000000000000001.0.0",
        "1.01.0.0",
        &format!("{text}.9"),
    ] {
        assert!(Ticket::from_text("k", bad).is_none(), "{bad:?}");
    }
    assert!(Ticket::from_text("", &text).is_none());
    // The same text for another key, or with another token, is stale.
    let other = acquire(&store, "other");
    let forged = Ticket::from_text("other", &text).unwrap();
    assert!(!stale(store.complete(&forged, b"x", DAY)).is_empty());
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    parts[1] = format!("{:016x}", u64::from_str_radix(&parts[1], 16).unwrap() ^ 1);
    let wrong_token = Ticket::from_text("k", &parts.join(".")).unwrap();
    assert!(!stale(store.abandon(&wrong_token)).is_empty());
    // The real text completes the key.
    store.complete(&back, b"out", DAY).unwrap();
    store.complete(&other, b"y", DAY).unwrap();
    assert_eq!(
        store.get("k").unwrap().unwrap().outcome.as_deref(),
        Some(&b"out"[..])
    );
}
