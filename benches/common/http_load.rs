//! A load generator for the HTTP benchmarks (`benches/http_layer.rs`, and the peer
//! comparison in `benches/compare/src/bin/http.rs`): keep-alive HTTP/1.1 connections over
//! loopback, one `POST /orders` at a time each, every request with a fresh
//! `Idempotency-Key` when asked; requests/s and p99 latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

pub struct Figures {
    pub rate: f64,
    pub p99: Duration,
}

/// Serves the router `make` builds (inside the runtime, for layers whose stores spawn
/// tasks), then drives it from `conns` connections for `secs`.
pub fn run(make: impl FnOnce() -> Router, conns: usize, secs: Duration, keyed: bool) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let router = make();
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
