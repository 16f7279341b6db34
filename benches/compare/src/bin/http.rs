//! oncelog's HTTP layer against the `idempotent` crate's, side by side in one run.
//!
//! ```sh
//! cargo run --release -p oncelog-compare --features idempotent --ignore-rust-version --bin http
//! ```
//!
//! One small axum handler (201 with a short JSON body) is served over loopback bare, behind
//! `oncelog::http::IdempotencyLayer` over a store under `Durability::Sync` and under
//! `Durability::Buffered`, and behind `idempotent::middleware::IdempotencyLayer` (1.0.0)
//! over its `MemoryStore`, which keeps nothing across a restart. The load generator of
//! `benches/http_layer.rs` keeps 1, 64 and 1024 keep-alive connections busy, one request at
//! a time each, every layered request with a fresh `Idempotency-Key` (the costly path: a
//! lease taken and a response stored per request). Knobs: `ONCELOG_HTTP_SECS` (3 per
//! workload), `ONCELOG_BENCH_DIR` (where oncelog's stores go).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use idempotent::store::memory::MemoryStore;
use oncelog::{Durability, Options};

#[path = "../../../common/http_load.rs"]
mod http_load;
use http_load::run;

async fn create() -> (StatusCode, &'static str) {
    (
        StatusCode::CREATED,
        r#"{"order":"ord_1","status":"placed"}"#,
    )
}

fn routes() -> Router {
    Router::new().route("/orders", post(create))
}

fn main() {
    let secs = Duration::from_secs(
        std::env::var("ONCELOG_HTTP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    );
    let base = std::env::var_os("ONCELOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "POST /orders over loopback, each workload {secs:?}, a new key per layered request; \
         requests/s (p99)"
    );
    println!(
        "{:>5} | {:>17} | {:>17} | {:>17} | {:>17} | {:>9} {:>9}",
        "conns",
        "bare",
        "oncelog Sync",
        "oncelog Buffered",
        "idempotent memory",
        "Sync/idem",
        "Buff/idem"
    );
    for conns in [1, 64, 1024] {
        let bare = run(routes, conns, secs, false);
        let mut ours = Vec::new();
        for durability in [Durability::Sync, Durability::Buffered] {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let store = Options::new()
                .durability(durability)
                .open(dir.path())
                .expect("open");
            let layer = oncelog::http::IdempotencyLayer::new(Arc::new(store));
            ours.push(run(|| routes().route_layer(layer), conns, secs, true));
        }
        let theirs = run(
            || {
                // The store's actor task is spawned on the runtime `run` builds.
                let store = MemoryStore::builder().try_build().expect("memory store");
                routes().route_layer(idempotent::middleware::IdempotencyLayer::new(store))
            },
            conns,
            secs,
            true,
        );
        let cell = |f: &http_load::Figures| format!("{:>8.0} ({:>6.2?})", f.rate, f.p99);
        println!(
            "{:>5} | {} | {} | {} | {} | {:>8.2}x {:>8.2}x",
            conns,
            cell(&bare),
            cell(&ours[0]),
            cell(&ours[1]),
            cell(&theirs),
            ours[0].rate / theirs.rate,
            ours[1].rate / theirs.rate
        );
    }
}
