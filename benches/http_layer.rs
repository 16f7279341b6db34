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
//! Knobs: `ONCELOG_HTTP_SECS` (3 per workload), `ONCELOG_BENCH_DIR` (where the store goes;
//! the default is the system's temporary directory, which may be a RAM disk). Server and
//! load generator share the machine's cores, as they do on a developer's laptop; the
//! figures are for comparing the two servers, not absolute capacities.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use oncelog::http::IdempotencyLayer;
use oncelog::{Durability, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Reads one response (headers, then a Content-Length body) from `conn`, keeping any
/// bytes past it in `buf`; returns its status.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
            let status = head[9..12].parse().expect("status");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(conn, buf).await;
            }
            buf.drain(..total);
            return status;
        }
        read_more(conn, buf).await;
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).await.expect("read");
    assert!(n > 0, "server closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

struct Figures {
    rate: f64,
    p99: Duration,
}

/// Serves `router`, then drives it from `conns` connections for `secs`.
fn run(router: Router, conns: usize, secs: Duration, keyed: bool) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let stop = Arc::new(AtomicBool::new(false));
        let next_key = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..conns {
            let (stop, next_key) = (Arc::clone(&stop), Arc::clone(&next_key));
            clients.push(tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                let mut buf = Vec::new();
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = next_key.fetch_add(1, Ordering::Relaxed);
                    let key_header = if keyed {
                        format!("Idempotency-Key: bench-{key:016x}\r\n")
                    } else {
                        String::new()
                    };
                    let req = format!(
                        "POST /orders HTTP/1.1\r\nHost: bench\r\n{key_header}\
                         Content-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"qty\":1234}}"
                    );
                    let started = Instant::now();
                    conn.write_all(req.as_bytes()).await.expect("write");
                    let status = read_response(&mut conn, &mut buf).await;
                    assert_eq!(status, 201);
                    latencies.push(started.elapsed());
                }
                latencies
            }));
        }
        // Counted from when every connection is up and sending.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = next_key.load(Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(secs).await;
        let done = next_key.load(Ordering::Relaxed) - before;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for c in clients {
            latencies.extend(c.await.expect("client"));
        }
        server.abort();
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        Figures {
            rate: done as f64 / elapsed.as_secs_f64(),
            p99,
        }
    })
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
    for conns in [1, 64, 1024] {
        let bare = run(
            Router::new().route("/orders", post(create)),
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
            layered.push(run(router, conns, secs, true));
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
