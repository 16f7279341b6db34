//! End-to-end test of `examples/webhook.rs`: the real server process, real HTTP, SIGKILL.
//!
//! Several sender threads deliver the same signed events concurrently and repeatedly, the
//! way a webhook sender retries, while the server is killed with SIGKILL twice (each time
//! just after a 409 showed that a delivery held a lease) and restarted on the same store
//! and ledger. Senders retry 409s and connection errors until every delivery got a 200.
//!
//! Checked: every event was shipped exactly once (one ledger line per id), every 200 for
//! an event carried the same outcome, concurrency happened (some 409), an event whose
//! attempt shipped and then "crashed" before `complete` is reconciled rather than shipped
//! again, and bad signatures, stale timestamps and reused ids are refused.
//!
//! The example and this test need the `http` feature (the example is built on
//! `oncelog::http::IdempotencyLayer`); `cargo test --features http --test webhook` alone
//! does not build examples, so this test runs `cargo build --features http --example
//! webhook` first (a no-op when it is fresh).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::example::{example_binary, ledger_lines, ExampleServer};
use hmac::{Hmac, KeyInit, Mac};
use oncelog::{fingerprint, Begin, Durability, Options};
use sha2::Sha256;

const SECRET: &str = "whsec_integration";
const EVENTS: usize = 20;
const SENDERS: usize = 4;
const KILLS: usize = 2;
const LEASE_MS: u64 = 1000;
const WORK_MS: u64 = 60;
/// Everything must be delivered by then, restarts included.
const DEADLINE: Duration = Duration::from_secs(30);
/// A sender's pause after a 409 or a connection error. Real senders honour Retry-After
/// (at least a second); the test retries faster to stay short.
const BACKOFF: Duration = Duration::from_millis(20);
/// The event that a simulated earlier attempt shipped without recording its outcome.
const SHIPPED_BEFORE: &str = "evt_shipped_before_crash";

/// Starts the webhook example on `dir` and `ledger`.
fn start(bin: &Path, dir: &Path, ledger: &Path) -> ExampleServer {
    let mut cmd = Command::new(bin);
    cmd.arg("--dir")
        .arg(dir)
        .arg("--ledger")
        .arg(ledger)
        .args(["--lease-ms", &LEASE_MS.to_string()])
        .args(["--work-ms", &WORK_MS.to_string()])
        .env("WEBHOOK_SECRET", SECRET);
    ExampleServer::start(cmd, Duration::from_secs(20))
}

fn url(server: &ExampleServer) -> String {
    format!("http://{}/webhook", server.addr)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

fn event(id: &str, amount: u32) -> String {
    format!(r#"{{"id":"{id}","type":"checkout.session.completed","data":{{"amount":{amount}}}}}"#)
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    replayed: bool,
    body: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    sig: Option<&str>,
    body: &str,
) -> Result<Reply, ureq::Error> {
    let mut req = agent.post(url).content_type("application/json");
    if let Some(sig) = sig {
        req = req.header("Stripe-Signature", sig);
    }
    let mut resp = req.send(body)?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    Ok(Reply {
        status: resp.status().as_u16(),
        retry_after,
        replayed,
        body: resp.body_mut().read_to_string()?,
    })
}

#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    ok: AtomicUsize,
    conflicts: AtomicUsize,
    server_errors: AtomicUsize,
    conn_errors: AtomicUsize,
    /// Set on every 409; the killer clears it, so it kills while a lease is held.
    conflict_seen: AtomicBool,
    /// Every 200 body, by event id.
    outcomes: Mutex<HashMap<String, Vec<String>>>,
}

/// Delivers one event until it gets a 200, as a sender does: 409, 5xx (a delivery too slow
/// for its lease gives up with 500) and connection errors (the server is down or was
/// killed mid-request) are retried.
fn deliver(agent: &ureq::Agent, addr: &RwLock<String>, tally: &Tally, id: &str, started: Instant) {
    let body = event(id, 100);
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "{id} not delivered within {DEADLINE:?}"
        );
        let url = format!("http://{}/webhook", addr.read().expect("addr lock"));
        let sig = signature(SECRET, unix_now(), &body);
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match post(agent, &url, Some(&sig), &body) {
            Ok(reply) => reply,
            Err(_) => {
                tally.conn_errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(BACKOFF);
                continue;
            }
        };
        match reply.status {
            200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let mut outcomes = tally.outcomes.lock().expect("outcomes lock");
                outcomes.entry(id.to_owned()).or_default().push(reply.body);
                return;
            }
            409 => {
                let secs: Option<u64> = reply.retry_after.and_then(|s| s.parse().ok());
                assert!(
                    secs.is_some_and(|s| s >= 1),
                    "409 without a usable Retry-After"
                );
                tally.conflicts.fetch_add(1, Ordering::Relaxed);
                tally.conflict_seen.store(true, Ordering::Relaxed);
                thread::sleep(BACKOFF);
            }
            500 => {
                tally.server_errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(BACKOFF);
            }
            other => panic!("{id}: unexpected {other}: {}", reply.body),
        }
    }
}

#[test]
fn every_event_ships_exactly_once_across_kills() {
    let bin = example_binary("webhook");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let ledger = tmp.path().join("shipments.log");

    // An earlier attempt that shipped SHIPPED_BEFORE and died before `complete`: its lease
    // (1 ms) has run out by the time the server opens the store.
    {
        let store = Options::new()
            .durability(Durability::Sync)
            .open(&dir)
            .expect("open");
        let fp = fingerprint(event(SHIPPED_BEFORE, 100).as_bytes());
        // The key the idempotency layer keeps the event under (no scope).
        let key = oncelog::http::store_key("", SHIPPED_BEFORE);
        let begin = store.begin_with_fingerprint(key, Duration::from_millis(1), &fp);
        assert!(matches!(begin, Ok(Begin::Acquired(_))), "{begin:?}");
        std::fs::write(&ledger, format!("{SHIPPED_BEFORE}\n")).expect("write ledger");
    }

    let mut ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_{i:02}")).collect();
    ids.push(SHIPPED_BEFORE.to_owned());
    let mut server = start(&bin, &dir, &ledger);
    let addr = Arc::new(RwLock::new(server.addr.clone()));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();

    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (ids, addr, tally) = (ids.clone(), Arc::clone(&addr), Arc::clone(&tally));
            thread::spawn(move || {
                let agent = agent();
                // All senders walk the events in the same order, so they collide. Each
                // event is delivered twice per sender: the second is a duplicate.
                for id in &ids {
                    deliver(&agent, &addr, &tally, id, started);
                    deliver(&agent, &addr, &tally, id, started);
                }
            })
        })
        .collect();

    // Kill after a third and after two thirds of the deliveries, just after a 409: then a
    // delivery holds a lease, most likely inside its simulated work.
    let total = ids.len() * SENDERS * 2;
    let mut kills = 0;
    while kills < KILLS {
        assert!(
            started.elapsed() < DEADLINE,
            "no 409 to kill on within {DEADLINE:?}"
        );
        let due = tally.ok.load(Ordering::Relaxed) >= total * (kills + 1) / (KILLS + 1);
        // Cleared on every look, so that only a 409 of the last few milliseconds counts.
        let conflict = tally.conflict_seen.swap(false, Ordering::Relaxed);
        if due && conflict {
            server.kill();
            kills += 1;
            server = start(&bin, &dir, &ledger);
            *addr.write().expect("addr lock") = server.addr.clone();
        } else {
            thread::sleep(Duration::from_millis(2));
        }
    }
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let delivery_time = started.elapsed();

    // Exactly one shipment per event.
    let lines = ledger_lines(&ledger);
    let mut shipped: HashMap<&str, usize> = HashMap::new();
    for line in &lines {
        *shipped.entry(line.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            shipped.get(id.as_str()),
            Some(&1),
            "{id} shipments; ledger {lines:?}"
        );
    }
    assert_eq!(lines.len(), ids.len(), "unexpected ledger lines: {lines:?}");

    // One outcome per event, whichever delivery and whichever server process answered.
    let outcomes = tally.outcomes.lock().expect("outcomes lock");
    for id in &ids {
        let bodies = outcomes.get(id.as_str()).expect("every event answered");
        assert_eq!(bodies.len(), SENDERS * 2);
        assert!(bodies.iter().all(|b| b == &bodies[0]), "{id}: {bodies:?}");
        let json: serde_json::Value = serde_json::from_str(&bodies[0]).expect("JSON outcome");
        assert_eq!(json["shipment"], format!("shp_{id}"));
    }
    // The reconciled event completed on a later attempt without shipping again.
    let reconciled: serde_json::Value =
        serde_json::from_str(&outcomes[SHIPPED_BEFORE][0]).expect("JSON outcome");
    assert_eq!(reconciled["attempt"], 2, "{reconciled}");
    // Events whose lease outlived a killed server and were finished by a later attempt
    // (reported, not asserted: where the kills land is up to scheduling).
    let later_attempts = ids
        .iter()
        .filter(|id| {
            id.as_str() != SHIPPED_BEFORE && !outcomes[id.as_str()][0].contains(r#""attempt":1"#)
        })
        .count();
    let conflicts = tally.conflicts.load(Ordering::Relaxed);
    assert!(conflicts > 0, "no 409: the senders never overlapped");

    // Refused before the store: nothing shipped, and the id stays usable.
    let agent = agent();
    let url = url(&server);
    let fresh = event("evt_refused", 100);
    let now = unix_now();
    let refused = [
        ("no signature", None),
        ("garbage header", Some("nonsense".to_owned())),
        ("wrong secret", Some(signature("whsec_test", now, &fresh))),
        (
            "signature of another body",
            Some(signature(SECRET, now, &event("evt_refused", 1))),
        ),
        ("too old", Some(signature(SECRET, now - 301, &fresh))),
        ("too new", Some(signature(SECRET, now + 301, &fresh))),
    ];
    for (what, sig) in &refused {
        let reply = post(&agent, &url, sig.as_deref(), &fresh).expect("server up");
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
    }
    let no_id = r#"{"type":"ping"}"#;
    let reply = post(&agent, &url, Some(&signature(SECRET, now, no_id)), no_id).expect("up");
    assert_eq!(reply.status, 400, "no id: {}", reply.body);
    assert!(!ledger_lines(&ledger).contains(&"evt_refused".to_owned()));

    // The refused requests did not touch the store: the id is still new.
    let reply = post(&agent, &url, Some(&signature(SECRET, now, &fresh)), &fresh).expect("up");
    assert_eq!(
        (reply.status, reply.replayed),
        (200, false),
        "{}",
        reply.body
    );
    let reply = post(&agent, &url, Some(&signature(SECRET, now, &fresh)), &fresh).expect("up");
    assert_eq!(
        (reply.status, reply.replayed),
        (200, true),
        "{}",
        reply.body
    );

    // The same id with another payload.
    let reused = event("evt_00", 999);
    let reply = post(
        &agent,
        &url,
        Some(&signature(SECRET, now, &reused)),
        &reused,
    )
    .expect("up");
    assert_eq!(reply.status, 422, "{}", reply.body);

    eprintln!(
        "webhook: {} requests, {} x 200, {} x 409, 1 x 422, {} x 500, {} connection errors, \
         {kills} kills ({later_attempts} events finished by a later attempt), delivered in \
         {delivery_time:.1?}",
        tally.requests.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        conflicts,
        tally.server_errors.load(Ordering::Relaxed),
        tally.conn_errors.load(Ordering::Relaxed),
    );
}
