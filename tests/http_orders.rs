//! `examples/orders.rs` as a real server process behind `IdempotencyLayer`, killed with
//! SIGKILL and restarted on the same store: every 201 a client saw is replayed identically
//! afterwards, and a handler killed mid-run is answered 409 until its lease runs out, then
//! re-run as attempt 2, which reconciles with the ledger instead of placing the order twice.
//!
//! `cargo test --features http --test http_orders` builds the example first (a no-op when
//! it is fresh).

mod common;
mod http_client;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::example::{example_binary, ledger_lines, ExampleServer};
use http_client::{send, Reply};

const WAIT: Duration = Duration::from_secs(30);

/// Starts the orders example on `dir` and `ledger`.
fn start(bin: &Path, dir: &Path, ledger: &Path, work_ms: u64, lease_ms: u64) -> ExampleServer {
    let mut cmd = Command::new(bin);
    cmd.arg("--dir")
        .arg(dir)
        .arg("--ledger")
        .arg(ledger)
        .args(["--work-ms", &work_ms.to_string()])
        .args(["--lease-ms", &lease_ms.to_string()]);
    ExampleServer::start(cmd, WAIT)
}

fn order(addr: &str, tenant: &str, key: &str) -> Option<Reply> {
    {
        let headers = [("idempotency-key", key), ("x-tenant", tenant)];
        let body = format!(r#"{{"sku":"tea","key":"{key}"}}"#);
        // A connection refused or cut by the kill is no answer.
        std::panic::catch_unwind(|| send(addr, "POST", "/orders", &headers, &body)).ok()
    }
}

#[test]
fn every_answer_seen_before_a_kill_is_replayed_after_restart() {
    let bin = example_binary("orders");
    let tmp = tempfile::tempdir().unwrap();
    let (dir, ledger) = (tmp.path().join("store"), tmp.path().join("orders.log"));
    let mut server = start(&bin, &dir, &ledger, 5, 5000);
    let seen: Mutex<HashMap<(String, String), Reply>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        for client in 0..4 {
            let (addr, seen, stop) = (server.addr.clone(), &seen, &stop);
            scope.spawn(move || {
                let tenant = if client % 2 == 0 { "acme" } else { "globex" };
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("c{client}-{n}");
                    n += 1;
                    if let Some(reply) = order(&addr, tenant, &key) {
                        if reply.status == 201 {
                            seen.lock().unwrap().insert((tenant.into(), key), reply);
                        }
                    }
                }
            });
        }
        let started = Instant::now();
        while seen.lock().unwrap().len() < 40 {
            assert!(started.elapsed() < WAIT, "too few orders answered");
            thread::sleep(Duration::from_millis(5));
        }
        server.kill(); // while the clients are sending
        stop.store(true, Ordering::SeqCst);
    });
    let seen = seen.into_inner().unwrap();
    let server = start(&bin, &dir, &ledger, 5, 5000);
    for ((tenant, key), first) in &seen {
        let again = order(&server.addr, tenant, key).expect("an answer after restart");
        assert!(again.replayed(), "{key}: {again:?}");
        assert_eq!(again.answer(), first.answer(), "{key}");
        assert_eq!(again.header("location"), first.header("location"));
    }
    // Each answered order was placed exactly once.
    let lines = ledger_lines(&ledger);
    for (tenant, key) in seen.keys() {
        let prefix = format!("{tenant} {key} ");
        let placed = lines.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(placed, 1, "{tenant} {key}");
    }
}

#[test]
fn a_handler_killed_mid_run_is_409_until_its_lease_ends_then_attempt_2() {
    let bin = example_binary("orders");
    let tmp = tempfile::tempdir().unwrap();
    let (dir, ledger) = (tmp.path().join("store"), tmp.path().join("orders.log"));
    // The handler takes 30 s, so it is still running when the server is killed; the lease
    // is 3 s, extended every second while it runs.
    let mut server = start(&bin, &dir, &ledger, 30_000, 3000);
    let first = {
        let addr = server.addr.clone();
        thread::spawn(move || {
            let headers = [("idempotency-key", "k1"), ("x-tenant", "acme")];
            let body = r#"{"sku":"tea","key":"k1"}"#;
            std::panic::catch_unwind(|| send(&addr, "POST", "/orders", &headers, body)).ok()
        })
    };
    let started = Instant::now();
    while ledger_lines(&ledger).is_empty() {
        assert!(started.elapsed() < WAIT, "the order was never placed");
        thread::sleep(Duration::from_millis(5));
    }
    // Let a heartbeat or two extend the lease past its first deadline.
    thread::sleep(Duration::from_millis(1500));
    server.kill();
    assert!(
        first.join().unwrap().is_none(),
        "the first client got no answer"
    );
    let placed = ledger_lines(&ledger);
    assert_eq!(placed.len(), 1);
    let placed_order = placed[0].split(' ').nth(2).unwrap().to_owned();

    let server = start(&bin, &dir, &ledger, 10, 3000);
    let busy = order(&server.addr, "acme", "k1").expect("an answer");
    assert_eq!(busy.status, 409, "{busy:?}");
    assert!(busy.header("retry-after").is_some());
    let waiting = Instant::now();
    let answer = loop {
        let reply = order(&server.addr, "acme", "k1").expect("an answer");
        if reply.status != 409 {
            break reply;
        }
        assert!(waiting.elapsed() < WAIT, "still 409");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        waiting.elapsed() < Duration::from_secs(4),
        "{:?}",
        waiting.elapsed()
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(!answer.replayed());
    assert_eq!(
        answer.body,
        format!(r#"{{"order":"{placed_order}","tenant":"acme","attempt":2}}"#),
        "attempt 2 reconciled with the order attempt 1 placed"
    );
    assert_eq!(ledger_lines(&ledger).len(), 1, "placed once");
    let again = order(&server.addr, "acme", "k1").expect("an answer");
    assert!(again.replayed());
    assert_eq!(again.answer(), answer.answer());
    // Another tenant's k1 is its own order.
    let other = order(&server.addr, "globex", "k1").expect("an answer");
    assert_eq!(other.status, 201);
    assert!(!other.replayed());
    assert_eq!(ledger_lines(&ledger).len(), 2);
}
