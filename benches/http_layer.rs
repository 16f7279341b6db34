//! What `oncelog::http::IdempotencyLayer` costs an HTTP service, side by side in one run.
//!
//! `cargo bench --features http --bench http_layer` serves one small axum handler (201 with
//! a short JSON body) on loopback twice: bare, and behind the layer over a store under
//! `Durability::Sync`, every request with a fresh `Idempotency-Key` (the costly path: a
//! lease and a stored response, two durable writes, per request); and the same under
//! `Durability::Buffered`, which separates the cost of the syncs from the layer's own. A load generator in the
//! same process keeps 1, 64 and 1024 keep-alive HTTP/1.1 connections busy, one request at a
//! time each, for a few seconds per workload, and prints requests/s, p99 latency and the
//! layer's rate as a fraction of the bare handler's.
//!
//! Knobs: `ONCELOG_HTTP_SECS` (3 per workload), `ONCELOG_HTTP_CONNS` (one connection count
//! instead of all three, for profiling one workload), `ONCELOG_BENCH_DIR` (where the store goes;
//! the default is the system's temporary directory, which may be a RAM disk). Server and
//! load generator share the machine's cores, as they do on a developer's laptop; the
//! figures are for comparing the two servers, not absolute capacities.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use oncelog::http::IdempotencyLayer;
use oncelog::{Durability, Options};

#[path = "common/http_load.rs"]
mod http_load;
use http_load::run;

async fn create() -> (StatusCode, &'static str) {
    (
        StatusCode::CREATED,
        r#"{"order":"ord_1","status":"placed"}"#,
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a `cargo test --benches` run passes nothing: keep it short.
    let bench = std::env::args().any(|a| a == "--bench");
    let secs = Duration::from_secs(if bench {
        env_u64("ONCELOG_HTTP_SECS", 3)
    } else {
        0
    })
    .max(Duration::from_millis(300));
    let base = std::env::var_os("ONCELOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("POST /orders over loopback, each workload {secs:?}; through the layer: a new key per request");
    println!(
        "{:>11} | {:>11} {:>9} | {:>11} {:>9} {:>10} | {:>11} {:>9} {:>10}",
        "connections",
        "bare req/s",
        "p99",
        "Sync req/s",
        "p99",
        "Sync/bare",
        "Buff. req/s",
        "p99",
        "Buff./bare"
    );
    let counts = match std::env::var("ONCELOG_HTTP_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![1, 64, 1024],
    };
    for conns in counts {
        let bare = run(
            || Router::new().route("/orders", post(create)),
            conns,
            secs,
            false,
        );
        let mut layered = Vec::new();
        for durability in [Durability::Sync, Durability::Buffered] {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let store = Options::new()
                .durability(durability)
                .open(dir.path())
                .expect("open");
            let router = Router::new()
                .route("/orders", post(create))
                .route_layer(IdempotencyLayer::new(Arc::new(store)));
            layered.push(run(|| router, conns, secs, true));
        }
        let (sync, buffered) = (&layered[0], &layered[1]);
        println!(
            "{:>11} | {:>11.0} {:>9.2?} | {:>11.0} {:>9.2?} {:>9.2}x | {:>11.0} {:>9.2?} {:>9.2}x",
            conns,
            bare.rate,
            bare.p99,
            sync.rate,
            sync.p99,
            sync.rate / bare.rate,
            buffered.rate,
            buffered.p99,
            buffered.rate / bare.rate
        );
    }
}
