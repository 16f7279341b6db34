//! A webhook receiver that fulfils each event exactly once, across duplicate deliveries,
//! concurrent retries, crashes and restarts.
//!
//! Senders such as Stripe deliver an event at least once: they retry on timeouts and 5xx,
//! sometimes while the first delivery is still being processed. This server puts
//! [`oncelog::http::IdempotencyLayer`] in front of its fulfilment handler, with the event's
//! id (from the verified body) as the idempotency key; what remains here is the signature
//! check and the fulfilment:
//!
//! | the layer finds the event id | the server | HTTP |
//! |---|---|---|
//! | new | ships; the layer stores the answer | 200, the outcome |
//! | in flight | nothing: another delivery holds the lease | 409, `Retry-After` |
//! | done | nothing: the layer replays the stored answer | 200, `Idempotent-Replayed: true` |
//! | reused for another payload | nothing | 422 |
//! | fulfilment failed (500) | the layer frees the id for the sender's retry | 500 |
//!
//! If the server dies while a delivery holds the id, the lease outlives it: the event
//! answers 409 until the lease runs out, then the next delivery runs as attempt 2
//! (`Idempotency::attempt() > 1`) and first asks the fulfilment system whether the dead
//! attempt shipped. Signatures are checked before the layer touches the store, so a forged
//! request cannot hold an event id hostage.
//!
//! Run it (the store is opened with `Durability::Sync`):
//!
//! ```text
//! cargo run --features http --example webhook -- --dir /tmp/wh
//!   --addr 127.0.0.1:8080   where to listen (port 0 picks one); prints `listening on ADDR`
//!   --lease-ms 30000        how long a delivery holds an event; the layer extends it while
//!                           the fulfilment runs, so this bounds the wait after a crash
//!   --work-ms 50            how long the simulated fulfilment takes
//!   --ledger FILE           the simulated fulfilment system, one line per shipment
//!                           (default: shipments.log next to the store directory)
//! WEBHOOK_SECRET            the signing secret (default `whsec_test`, for trying it out;
//!                           a real deployment must set it)
//! ```
//!
//! Send a signed event, twice:
//!
//! ```text
//! body='{"id":"evt_1","type":"checkout.session.completed"}'
//! t=$(date +%s)
//! sig=$(printf '%s.%s' "$t" "$body" | openssl dgst -sha256 -hmac whsec_test | sed 's/^.* //')
//! for i in 1 2; do
//!   curl -i -H "Stripe-Signature: t=$t,v1=$sig" -d "$body" http://127.0.0.1:8080/webhook
//! done
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use hmac::{Hmac, KeyInit, Mac};
use oncelog::http::{Idempotency, IdempotencyLayer};
use oncelog::{fingerprint, Durability, Options};
use sha2::Sha256;

/// How far a signature's timestamp may be from our clock (Stripe's default).
const TOLERANCE_SECS: u64 = 300;
/// How long a finished event's outcome is kept: longer than the sender retries (Stripe: 3 days).
const OUTCOME_TTL: Duration = Duration::from_secs(72 * 3600);
/// The largest event body accepted.
const MAX_BODY: usize = 1 << 20;

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

struct App {
    secret: Vec<u8>,
    ledger: Ledger,
}

/// Refuses a request whose signature does not check out, before the idempotency layer
/// (inside this one) takes a lease on its event id.
async fn verify(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    if let Err(why) = verify_signature(&parts.headers, &body, &app.secret, now.as_secs()) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// Ships the event (unless an earlier attempt already did) and answers with the outcome,
/// which the layer stores and replays to later deliveries.
async fn webhook(State(app): State<Arc<App>>, Extension(idem): Extension<Idempotency>) -> Response {
    let id = idem.key().to_owned();
    // Attempt 1 knows nobody shipped before; later attempts must ask.
    let reconcile = idem.attempt() > 1;
    // The simulated fulfilment system is blocking file I/O: it runs on the blocking pool.
    let shipped = {
        let (app, id) = (Arc::clone(&app), id.clone());
        tokio::task::spawn_blocking(move || app.ledger.ship(&id, reconcile)).await
    };
    if let Err(e) = shipped.unwrap_or_else(|e| Err(io::Error::other(e))) {
        // A 5xx: the layer frees the event at once so that the sender's retry can try again.
        eprintln!("webhook: fulfilment of {id}: {e}");
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    let outcome = serde_json::json!({ "shipment": format!("shp_{id}"), "attempt": idem.attempt() });
    (StatusCode::OK, JSON, outcome.to_string()).into_response()
}

/// Checks `Stripe-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.
fn verify_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let value = headers
        .get("stripe-signature")
        .ok_or("missing Stripe-Signature")?;
    let value = value.to_str().map_err(|_| "malformed Stripe-Signature")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            // Several v1 entries are sent while the secret is being rolled.
            Some(("v1", sig)) => signatures.push(sig),
            _ => {} // other schemes, such as Stripe's test-mode v0, are ignored
        }
    }
    let t = timestamp.ok_or("malformed Stripe-Signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    // verify_slice compares in constant time.
    let valid = |sig: &&str| decode_hex(sig).is_some_and(|s| mac.clone().verify_slice(&s).is_ok());
    if !signatures.iter().any(valid) {
        return Err("bad signature");
    }
    // Checked after the signature because the timestamp is only trustworthy once signed.
    let t: u64 = t.parse().map_err(|_| "malformed Stripe-Signature")?;
    if t.abs_diff(now) > TOLERANCE_SECS {
        return Err("timestamp outside tolerance");
    }
    Ok(())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(s.get(i..i + 2)?, 16).ok();
    (0..s.len()).step_by(2).map(byte).collect()
}

/// The event's `id`: 1 to 255 ASCII letters, digits, `_` or `-` (Stripe's are `evt_...`),
/// which keeps it a valid store key and a single ledger line.
fn event_id(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = json.get("id")?.as_str()?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!id.is_empty() && id.len() <= 255 && id.chars().all(allowed)).then(|| id.to_owned())
}

/// The simulated fulfilment system: an append-only file with one event id per shipment.
struct Ledger {
    path: PathBuf,
    work: Duration,
    /// Makes "did anyone ship, ship" one step within this process. A real fulfilment
    /// system needs its own guard (an idempotency key of its own) against a delivery of
    /// another process that died after shipping.
    lock: Mutex<()>,
}

impl Ledger {
    fn ship(&self, id: &str, reconcile: bool) -> io::Result<()> {
        std::thread::sleep(self.work); // the slow part of the work
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if reconcile && self.contains(id)? {
            return Ok(()); // a crashed attempt shipped it but did not record the outcome
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(format!("{id}\n").as_bytes())?;
        file.sync_all()
    }

    fn contains(&self, id: &str) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => other?,
        };
        for line in BufReader::new(file).lines() {
            if line? == id {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

struct Args {
    dir: PathBuf,
    addr: String,
    lease: Duration,
    work: Duration,
    ledger: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::new(),
        addr: "127.0.0.1:8080".into(),
        lease: Duration::from_secs(30),
        work: Duration::from_millis(50),
        ledger: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let millis = || {
            value
                .parse()
                .map(Duration::from_millis)
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--dir" => args.dir = value.into(),
            "--addr" => args.addr = value,
            "--lease-ms" => args.lease = millis()?,
            "--work-ms" => args.work = millis()?,
            "--ledger" => args.ledger = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.dir.as_os_str().is_empty() {
        return Err("--dir is required".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhook: {e}");
            eprintln!("usage: webhook --dir DIR [--addr HOST:PORT] [--lease-ms N] [--work-ms N] [--ledger FILE]");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    if args.lease.is_zero() {
        return Err("--lease-ms must be at least 1".into());
    }
    let secret = std::env::var("WEBHOOK_SECRET").unwrap_or_else(|_| {
        eprintln!("webhook: WEBHOOK_SECRET is not set, using the test secret whsec_test");
        "whsec_test".into()
    });
    let store = Options::new()
        .durability(Durability::Sync)
        // Remember a crashed attempt for as long as the sender retries, so that a late
        // retry still sees `attempt() > 1` and reconciles.
        .attempt_memory(OUTCOME_TTL)
        .open(&args.dir)
        .map_err(|e| format!("open {}: {e}", args.dir.display()))?;
    let parent = args.dir.parent().unwrap_or(Path::new(""));
    let ledger = args.ledger.unwrap_or_else(|| parent.join("shipments.log"));
    let app = Arc::new(App {
        secret: secret.into_bytes(),
        ledger: Ledger {
            path: ledger,
            work: args.work,
            lock: Mutex::new(()),
        },
    });
    // The key is the event id from the (already verified) body; the fingerprint is the
    // body alone, so that a resent event with another payload is refused with 422.
    let idempotency = IdempotencyLayer::new(Arc::new(store))
        .key_from(|_, body| event_id(body))
        .fingerprint(|_, body| fingerprint(body).to_vec())
        .lease(args.lease)
        .ttl(OUTCOME_TTL)
        .max_request_body(MAX_BODY);
    // The layer added last runs first: the signature is checked before the store is touched.
    let router = Router::new()
        .route("/webhook", post(webhook))
        .route_layer(idempotency)
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), verify))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|e| format!("bind {}: {e}", args.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    axum::serve(listener, router)
        .await
        .map_err(|e| format!("serve: {e}"))
}
