//! `oncelog::http::IdempotencyLayer` over real HTTP on loopback: an axum server in the test
//! process, a plain HTTP/1.1 client, one row of the semantics table per test.
//!
//! The handler behind the layer counts its runs and is steered by request headers that the
//! fingerprint does not cover (`x-status`, `x-work-ms`, `x-gate`, `x-cache-control`,
//! `x-big`), so that a retry with the same key and body can ask for another behaviour.
//! Crashes of the server process are in `tests/http_orders.rs`.

mod http_client;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http_client::{open, read, send, Reply};
use oncelog::http::{Idempotency, IdempotencyLayer};
use oncelog::{IoHook, IoOp, Options, Store};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Handler {
    runs: AtomicUsize,
    finished: AtomicUsize,
    gate_open: AtomicBool,
    /// Requests that reached the server, and those the server dropped unanswered (their
    /// client went away), counted outside the layer.
    arrived: AtomicUsize,
    dropped: AtomicUsize,
}

/// Counts requests as they reach the server and as the server drops them unanswered.
async fn count_requests(
    State(h): State<Arc<Handler>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    struct Unanswered(Option<Arc<Handler>>);
    impl Drop for Unanswered {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                h.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    h.arrived.fetch_add(1, Ordering::SeqCst);
    let mut unanswered = Unanswered(Some(h));
    let response = next.run(req).await;
    unanswered.0 = None;
    response
}

impl Handler {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn orders(State(h): State<Arc<Handler>>, req: Request) -> Response {
    let run = h.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let (req, _body) = req.into_parts();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("x-gate").is_some() {
        let started = Instant::now();
        while !h.gate_open.load(Ordering::SeqCst) && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if header("x-panic").is_some() {
        panic!("the handler fails (on purpose)");
    }
    if header("x-stream").is_some() {
        // 64 KiB at once, then the rest once the gate opens.
        let gate = Arc::clone(&h);
        let parts = futures::stream::unfold(0, move |i| {
            let gate = Arc::clone(&gate);
            async move {
                let chunk = match i {
                    0..4 => vec![b'x'; 16 << 10],
                    4 => {
                        while !gate.gate_open.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        b"end".to_vec()
                    }
                    _ => return None,
                };
                Some((Ok::<_, io::Error>(axum::body::Bytes::from(chunk)), i + 1))
            }
        });
        return Response::new(Body::from_stream(parts));
    }
    if let Some(ms) = header("x-work-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let (key, attempt) = match req.extensions.get::<Idempotency>() {
        Some(i) => (i.key().to_owned(), i.attempt()),
        None => (String::new(), 0),
    };
    let status = header("x-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(201);
    let mut body = format!(r#"{{"run":{run},"attempt":{attempt},"key":"{key}"}}"#);
    if let Some(n) = header("x-big").and_then(|v| v.parse().ok()) {
        body.push_str(&"x".repeat(n));
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "location",
        HeaderValue::from_str(&format!("/orders/{run}")).unwrap(),
    );
    headers.insert("x-not-kept", HeaderValue::from_static("1"));
    if let Some(cc) = header("x-cache-control") {
        headers.insert("cache-control", HeaderValue::from_str(&cc).unwrap());
    }
    if let Some(encoding) = header("x-content-encoding") {
        headers.insert(
            "content-encoding",
            HeaderValue::from_str(&encoding).unwrap(),
        );
    }
    h.finished.fetch_add(1, Ordering::SeqCst);
    response
}

/// An axum server on a loopback port, in its own thread and runtime.
struct Server {
    addr: String,
    handler: Arc<Handler>,
    _dir: Option<tempfile::TempDir>,
}

fn serve_with(
    store: Arc<Store>,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> Server {
    let handler = Arc::new(Handler::default());
    let layer = configure(IdempotencyLayer::new(store));
    let router = Router::new()
        .route("/orders", post(orders).get(orders).put(orders))
        .route("/other", post(orders))
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&handler),
            count_requests,
        ))
        .with_state(Arc::clone(&handler));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    let addr = rx.recv_timeout(WAIT).expect("server address");
    Server {
        addr,
        handler,
        _dir: None,
    }
}

fn serve(configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut server = serve_with(store, configure);
    server._dir = Some(dir);
    server
}

impl Server {
    fn post(&self, headers: &[(&str, &str)], body: &str) -> Reply {
        send(&self.addr, "POST", "/orders", headers, body)
    }
}

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{reply:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&reply.body).expect("problem JSON");
    assert_eq!(v["status"], status);
    assert!(v["detail"].is_string());
}

/// Polls `f` until it holds, for at most `WAIT`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn first_request_runs_then_replays_with_kept_headers() {
    let s = serve(|l| l);
    let first = s.post(&[("idempotency-key", "k1")], "{\"qty\":1}");
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(first.body, r#"{"run":1,"attempt":1,"key":"k1"}"#);
    assert_eq!(first.header("x-not-kept"), Some("1"));
    for _ in 0..3 {
        let again = s.post(&[("idempotency-key", "k1")], "{\"qty\":1}");
        assert_eq!(again.answer(), first.answer());
        assert!(again.replayed(), "{again:?}");
        assert_eq!(again.header("location"), Some("/orders/1"));
        assert_eq!(again.header("content-type"), Some("application/json"));
        assert_eq!(again.header("x-not-kept"), None);
    }
    // The draft's quoted form names the same key.
    let quoted = s.post(&[("idempotency-key", "\"k1\"")], "{\"qty\":1}");
    assert!(quoted.replayed());
    assert_eq!(s.handler.runs(), 1);
    // A body encoded by a layer inside this one is replayed with its encoding.
    let key = [
        ("idempotency-key", "k2"),
        ("x-content-encoding", "identity"),
    ];
    assert_eq!(
        s.post(&key, "{}").header("content-encoding"),
        Some("identity")
    );
    let again = s.post(&[("idempotency-key", "k2")], "{}");
    assert!(again.replayed());
    assert_eq!(again.header("content-encoding"), Some("identity"));
}

#[test]
fn uncovered_methods_pass_through_and_methods_are_configurable() {
    let s = serve(|l| l);
    for _ in 0..2 {
        let r = send(&s.addr, "GET", "/orders", &[("idempotency-key", "g")], "");
        assert_eq!(r.status, 201);
        assert!(!r.replayed());
        let r = send(&s.addr, "PUT", "/orders", &[], "");
        assert_eq!(r.status, 201);
    }
    assert_eq!(s.handler.runs(), 4);

    let s = serve(|l| l.methods([Method::PUT]));
    for _ in 0..2 {
        let r = send(&s.addr, "PUT", "/orders", &[("idempotency-key", "p")], "");
        assert_eq!(r.status, 201);
        let r = send(&s.addr, "POST", "/orders", &[], "");
        assert_eq!(r.status, 201, "POST is no longer covered");
    }
    assert_eq!(s.handler.runs(), 3);
}

#[test]
fn missing_key_is_400_unless_passed_through() {
    // The key is checked before the body is read: a keyless request is 400, not 413,
    // whatever its body.
    let s = serve(|l| l.max_request_body(10));
    assert_problem(&s.post(&[], "{}"), 400);
    assert_problem(&s.post(&[], &"x".repeat(100)), 400);
    assert_problem(
        &s.post(&[("idempotency-key", "a b")], &"x".repeat(100)),
        400,
    );
    assert_eq!(s.handler.runs(), 0);

    // Passed through, a keyless request's body reaches the handler untouched, even one
    // over the size the layer buffers.
    let s = serve(|l| l.pass_through_without_key(true).max_request_body(10));
    assert_eq!(s.post(&[], "{}").status, 201);
    assert_eq!(s.post(&[], &"x".repeat(100)).status, 201);
    assert_eq!(s.handler.runs(), 2);
}

#[test]
fn malformed_keys_are_400() {
    let s = serve(|l| l);
    let long = "k".repeat(256);
    for bad in ["\"\"", "a\tb", "\"abc", "a\"b", long.as_str()] {
        assert_problem(&s.post(&[("idempotency-key", bad)], "{}"), 400);
    }
    let two = [("idempotency-key", "a"), ("idempotency-key", "b")];
    assert_problem(&s.post(&two, "{}"), 400);
    // Not visible ASCII: raw bytes above 0x7f in the header.
    assert_problem(&s.post(&[("idempotency-key", "caf\u{e9}")], "{}"), 400);
    assert_eq!(s.handler.runs(), 0);
    let ok = "k".repeat(255);
    assert_eq!(s.post(&[("idempotency-key", &ok)], "{}").status, 201);
}

#[test]
fn reused_key_for_another_request_is_422() {
    let s = serve(|l| l);
    let key = [("idempotency-key", "k")];
    assert_eq!(s.post(&key, "{\"qty\":1}").status, 201);
    assert_problem(&s.post(&key, "{\"qty\":2}"), 422);
    assert_problem(&send(&s.addr, "POST", "/other", &key, "{\"qty\":1}"), 422);
    assert_problem(&send(&s.addr, "PATCH", "/orders", &key, "{\"qty\":1}"), 422);
    assert_eq!(s.handler.runs(), 1);
    assert!(s.post(&key, "{\"qty\":1}").replayed());
}

#[test]
fn in_flight_is_409_with_retry_after_then_replays() {
    let s = serve(|l| l);
    let key = [("idempotency-key", "k"), ("x-gate", "1")];
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    let busy = s.post(&key, "{}");
    assert_problem(&busy, 409);
    assert_eq!(busy.header("retry-after"), Some("1"), "the default hint");
    s.handler.gate_open.store(true, Ordering::SeqCst);
    let first = read(first);
    assert_eq!(first.status, 201);
    let again = s.post(&key, "{}");
    assert!(again.replayed());
    assert_eq!(again.answer(), first.answer());
    assert_eq!(s.handler.runs(), 1);

    // The hint is configurable, and never past the lease's end.
    let s = serve(|l| l.retry_after(Duration::from_secs(7)));
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    assert_eq!(s.post(&key, "{}").header("retry-after"), Some("7"));
    s.handler.gate_open.store(true, Ordering::SeqCst);
    assert_eq!(read(first).status, 201);
    let s = serve(|l| l.retry_after(Duration::from_secs(3600)));
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    let hint: u64 = s
        .post(&key, "{}")
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&hint), "{hint}: the lease is 30 s");
    s.handler.gate_open.store(true, Ordering::SeqCst);
    assert_eq!(read(first).status, 201);
}

#[test]
fn wait_in_flight_replays_the_first_answer() {
    let s = serve(|l| l.wait_in_flight(Duration::from_secs(10)));
    let key = [("idempotency-key", "k"), ("x-work-ms", "300")];
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    let waited = s.post(&key, "{}");
    let first = read(first);
    assert_eq!(first.status, 201);
    assert!(waited.replayed(), "{waited:?}");
    assert_eq!(waited.answer(), first.answer());
    assert_eq!(s.handler.runs(), 1);

    // The bound is kept: a short wait still answers 409.
    let s = serve(|l| l.wait_in_flight(Duration::from_millis(50)));
    let key = [("idempotency-key", "k"), ("x-gate", "1")];
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    assert_problem(&s.post(&key, "{}"), 409);
    s.handler.gate_open.store(true, Ordering::SeqCst);
    assert_eq!(read(first).status, 201);
}

#[test]
fn server_errors_and_no_store_free_the_key() {
    let s = serve(|l| l);
    let failing = [("idempotency-key", "k"), ("x-status", "503")];
    let r = s.post(&failing, "{}");
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("\"run\":1"),
        "the handler's own answer: {r:?}"
    );
    let r = s.post(
        &[
            ("idempotency-key", "k"),
            ("x-cache-control", "private, No-Store"),
        ],
        "{}",
    );
    assert_eq!(r.status, 201);
    assert!(!r.replayed());
    let ok = s.post(&[("idempotency-key", "k")], "{}");
    assert_eq!(ok.status, 201);
    assert!(!ok.replayed());
    // The attempt number counts the abandoned attempts.
    assert_eq!(ok.body, r#"{"run":3,"attempt":3,"key":"k"}"#);
    let again = s.post(&[("idempotency-key", "k"), ("x-status", "500")], "{}");
    assert!(again.replayed());
    assert_eq!(again.answer(), ok.answer());
    assert_eq!(s.handler.runs(), 3);

    // A 4xx is final by default, but for those that say "try again later"; the statuses
    // are configurable.
    for later in ["408", "425", "429"] {
        let key = format!("later-{later}");
        let r = s.post(&[("idempotency-key", &key), ("x-status", later)], "{}");
        assert_eq!(r.status.to_string(), later);
        let retried = s.post(&[("idempotency-key", &key)], "{}");
        assert_eq!(retried.status, 201, "{later} was stored");
        assert!(!retried.replayed());
    }
    let r = s.post(&[("idempotency-key", "four"), ("x-status", "404")], "{}");
    assert_eq!(r.status, 404);
    assert!(s.post(&[("idempotency-key", "four")], "{}").replayed());
    let s = serve(|l| l.final_status(|st| st.is_success()));
    assert_eq!(
        s.post(&[("idempotency-key", "four"), ("x-status", "404")], "{}")
            .status,
        404
    );
    assert_eq!(s.post(&[("idempotency-key", "four")], "{}").status, 201);
    assert_eq!(s.handler.runs(), 2);
}

#[test]
fn quoted_keys_follow_the_structured_field_syntax() {
    let s = serve(|l| l);
    let first = s.post(&[("idempotency-key", r#""order 7\"b";v=1"#)], "{}");
    assert_eq!(first.status, 201);
    assert!(first.body.contains(r#""key":"order 7"b""#), "{first:?}");
    // The same key, without the parameter.
    let again = s.post(&[("idempotency-key", r#""order 7\"b""#)], "{}");
    assert!(again.replayed());
    for bad in [r#""a\b""#, r#""ab"x"#, "a,b"] {
        assert_problem(&s.post(&[("idempotency-key", bad)], "{}"), 400);
    }
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn thirty_two_concurrent_requests_run_the_handler_once() {
    let s = serve(|l| l.wait_in_flight(Duration::from_secs(10)));
    let key = [("idempotency-key", "one"), ("x-work-ms", "100")];
    let replies: Vec<Reply> = thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| scope.spawn(|| s.post(&key, "{\"qty\":3}")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.handler.runs(), 1);
    let fresh: Vec<_> = replies.iter().filter(|r| !r.replayed()).collect();
    assert_eq!(fresh.len(), 1, "{replies:?}");
    for r in &replies {
        assert_eq!(r.answer(), fresh[0].answer());
    }

    // Without waiting, the others are 409 or replays, never a second run.
    let s = serve(|l| l);
    let key = [("idempotency-key", "one"), ("x-work-ms", "100")];
    let replies: Vec<Reply> = thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| scope.spawn(|| s.post(&key, "{\"qty\":3}")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.handler.runs(), 1);
    let created = replies.iter().filter(|r| r.status == 201).count();
    let busy = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(created + busy, 32, "{replies:?}");
    assert!(busy > 0);
}

#[test]
fn handler_finishes_and_is_stored_after_the_client_disconnects() {
    let s = serve(|l| l);
    let key = [("idempotency-key", "gone"), ("x-gate", "1")];
    let conn = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the handler runs", || s.handler.runs() == 1);
    drop(conn); // the client goes away mid-request
    thread::sleep(Duration::from_millis(50));
    s.handler.gate_open.store(true, Ordering::SeqCst);
    eventually("the handler finishes", || {
        s.handler.finished.load(Ordering::SeqCst) == 1
    });
    let started = Instant::now();
    let replay = loop {
        let r = s.post(&key, "{}");
        if r.status != 409 {
            break r;
        }
        assert!(started.elapsed() < WAIT, "still in flight");
        thread::sleep(Duration::from_millis(5));
    };
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, r#"{"run":1,"attempt":1,"key":"gone"}"#);
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn a_waiting_request_whose_client_leaves_leaves_nothing_behind() {
    let s = serve(|l| l.wait_in_flight(Duration::from_secs(10)));
    // The first request holds the key until the gate opens, then gives it up (a 503).
    let gated = [
        ("idempotency-key", "w"),
        ("x-gate", "1"),
        ("x-status", "503"),
    ];
    let first = open(&s.addr, "POST", "/orders", &gated, "{}");
    eventually("the first request runs", || s.handler.runs() == 1);
    // A second one waits for it (it looks again every 20 ms); its client goes away while
    // it waits, and the server drops the request.
    let waiting = open(
        &s.addr,
        "POST",
        "/orders",
        &[("idempotency-key", "w")],
        "{}",
    );
    eventually("the second request arrives", || {
        s.handler.arrived.load(Ordering::SeqCst) == 2
    });
    thread::sleep(Duration::from_millis(100));
    drop(waiting);
    eventually("the server drops the waiting request", || {
        s.handler.dropped.load(Ordering::SeqCst) == 1
    });
    // A try to take the key that was under way when the request was dropped finishes on
    // its own, and finds the key in flight: give it time to end before the key is freed.
    thread::sleep(Duration::from_millis(100));
    s.handler.gate_open.store(true, Ordering::SeqCst);
    assert_eq!(read(first).status, 503);
    // Had the wait gone on without its client, it would take the freed key within its
    // 20 ms poll and run the handler for nobody. The next request runs it instead.
    thread::sleep(Duration::from_millis(100));
    let next = s.post(&[("idempotency-key", "w")], "{}");
    assert_eq!(next.status, 201, "{next:?}");
    assert!(!next.replayed());
    assert_eq!(next.body, r#"{"run":2,"attempt":2,"key":"w"}"#);
    assert_eq!(s.handler.runs(), 2);
}

#[test]
fn heartbeat_keeps_a_slow_handler_from_running_twice() {
    // The lease is 300 ms, the handler takes 1.2 s: without the heartbeat a retry after
    // 300 ms would take the key over and run the handler again.
    let s = serve(|l| l.lease(Duration::from_millis(300)));
    let key = [("idempotency-key", "slow"), ("x-work-ms", "1200")];
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the handler runs", || s.handler.runs() == 1);
    let mut busy = 0;
    while s.handler.finished.load(Ordering::SeqCst) == 0 {
        let r = s.post(&key, "{}");
        if r.status == 409 {
            busy += 1;
        } else {
            assert!(r.replayed(), "{r:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(busy >= 10, "{busy} retries answered 409");
    assert_eq!(read(first).status, 201);
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn scopes_keep_tenants_apart() {
    let s = serve(|l| {
        l.scope(|req| {
            let tenant = req.headers.get("x-tenant").and_then(|v| v.to_str().ok());
            tenant.unwrap_or("").to_owned()
        })
    });
    let a = s.post(&[("idempotency-key", "k"), ("x-tenant", "acme")], "{}");
    let b = s.post(&[("idempotency-key", "k"), ("x-tenant", "globex")], "{}");
    assert_eq!((a.status, b.status), (201, 201));
    assert!(!b.replayed());
    assert_ne!(a.body, b.body);
    // Another tenant's body under the same key is no mismatch either.
    let c = s.post(
        &[("idempotency-key", "k"), ("x-tenant", "initech")],
        "{\"x\":1}",
    );
    assert_eq!(c.status, 201);
    let a2 = s.post(&[("idempotency-key", "k"), ("x-tenant", "acme")], "{}");
    assert!(a2.replayed());
    assert_eq!(a2.answer(), a.answer());
    assert_eq!(s.handler.runs(), 3);
}

#[test]
fn key_from_the_body() {
    let s = serve(|l| {
        l.key_from(|_, body| {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            Some(v.get("id")?.as_str()?.to_owned())
        })
    });
    let first = s.post(&[], r#"{"id":"evt_1"}"#);
    assert_eq!(first.body, r#"{"run":1,"attempt":1,"key":"evt_1"}"#);
    let again = s.post(&[("idempotency-key", "ignored")], r#"{"id":"evt_1"}"#);
    assert!(again.replayed());
    assert_problem(&s.post(&[], r#"{"no":"id"}"#), 400);
    assert_problem(&s.post(&[], r#"{"id":""}"#), 400);
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn responses_too_large_to_keep_are_never_replayed_truncated() {
    let s = serve(|l| l);
    let key = [("idempotency-key", "big"), ("x-big", "20000")];
    let first = s.post(&key, "{}");
    assert_eq!(first.status, 201);
    assert!(first.body.len() > 20000, "the first answer is whole");
    let again = s.post(&key, "{}");
    assert_problem(&again, 500);
    assert!(again.replayed());
    assert!(again.body.contains("status 201"), "{again:?}");
    assert_eq!(s.handler.runs(), 1);
    // Just under the limit is replayed whole.
    let key = [("idempotency-key", "fits"), ("x-big", "15000")];
    let first = s.post(&key, "{}");
    let again = s.post(&key, "{}");
    assert!(again.replayed());
    assert_eq!(again.answer(), first.answer());
}

#[test]
fn responses_too_large_to_keep_stream_to_the_client() {
    use std::io::{Read, Write};
    let s = serve(|l| l);
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(
        b"POST /orders HTTP/1.1\r\nHost: t\r\nIdempotency-Key: st\r\nX-Stream: 1\r\n\
          Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .unwrap();
    // The first 64 KiB arrive while the rest of the body waits for the gate: a body
    // over the outcome limit is passed on as it comes, not buffered whole.
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while got.iter().filter(|&&b| b == b'x').count() < 64 << 10 {
        let n = c
            .read(&mut buf)
            .expect("the start of the body, before the gate opens");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..64])
    );
    s.handler.gate_open.store(true, Ordering::SeqCst);
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("end\r\n"),
        "the whole body: {}",
        &text[text.len() - 40..]
    );
    // Not kept, so never replayed truncated: a retry is told so.
    let again = s.post(&[("idempotency-key", "st"), ("x-stream", "1")], "{}");
    assert_problem(&again, 500);
    assert!(again.replayed());
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn request_bodies_over_the_limit_are_413() {
    let s = serve(|l| l.max_request_body(1000));
    assert_problem(&s.post(&[("idempotency-key", "k")], &"x".repeat(1001)), 413);
    assert_eq!(
        s.post(&[("idempotency-key", "k")], &"x".repeat(1000))
            .status,
        201
    );
    assert_eq!(s.handler.runs(), 1);
}

/// Fails every sync once armed, as a dying disk would.
#[derive(Default)]
struct FailingSyncs {
    armed: AtomicBool,
}

impl IoHook for FailingSyncs {
    fn before(&self, op: &IoOp<'_>) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) && op.is_sync() {
            return Err(io::Error::other("injected EIO"));
        }
        Ok(())
    }
}

#[test]
fn store_failures_are_503_and_the_handler_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailingSyncs::default());
    let store = Options::new()
        .io_hook(hook.clone())
        .open(dir.path())
        .unwrap();
    let s = serve_with(Arc::new(store), |l| l);
    assert_eq!(s.post(&[("idempotency-key", "before")], "{}").status, 201);
    hook.armed.store(true, Ordering::SeqCst);
    for key in ["new", "other", "new"] {
        assert_problem(&s.post(&[("idempotency-key", key)], "{}"), 503);
    }
    // A stored answer already on disk needs no write: it is still replayed.
    assert!(s.post(&[("idempotency-key", "before")], "{}").replayed());
    assert_eq!(s.handler.runs(), 1);
}

#[test]
fn a_response_the_store_refuses_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let s = serve_with(Arc::clone(&store), move |l| {
        l.on_store_error(move |f| {
            let stale = matches!(f.error, oncelog::Error::StaleTicket { .. });
            log.lock()
                .unwrap()
                .push((f.key.to_owned(), f.action, stale));
        })
    });
    let key = [("idempotency-key", "lost"), ("x-gate", "1")];
    let first = open(&s.addr, "POST", "/orders", &key, "{}");
    eventually("the handler runs", || s.handler.runs() == 1);
    // The key is taken from under the running handler (as when its lease ran out and
    // another request took it): storing its response is refused, and reported.
    assert!(store.remove(oncelog::http::store_key("", "lost")).unwrap());
    s.handler.gate_open.store(true, Ordering::SeqCst);
    assert_eq!(read(first).status, 201, "the client still gets the answer");
    assert_eq!(
        *heard.lock().unwrap(),
        [("lost".to_owned(), "complete", true)]
    );
    // Nothing is reported when all goes well.
    assert_eq!(s.post(&[("idempotency-key", "fine")], "{}").status, 201);
    assert_eq!(heard.lock().unwrap().len(), 1);
}

#[test]
fn a_handler_that_panics_frees_the_key() {
    let s = serve(|l| l);
    let r = s.post(&[("idempotency-key", "boom"), ("x-panic", "1")], "{}");
    assert_problem(&r, 500);
    assert!(!r.replayed());
    let ok = s.post(&[("idempotency-key", "boom")], "{}");
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(ok.body, r#"{"run":2,"attempt":2,"key":"boom"}"#);
    assert!(s.post(&[("idempotency-key", "boom")], "{}").replayed());
}
