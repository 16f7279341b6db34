//! A webhook receiver that fulfils each event exactly once, across duplicate deliveries,
//! concurrent retries, crashes and restarts.
//!
//! Senders such as Stripe deliver an event at least once: they retry on timeouts and 5xx,
//! sometimes while the first delivery is still being processed. This server takes a lease
//! on the event id with [`Store::begin_with_fingerprint_async`] before it ships anything
//! (the async methods wait for their fsync without holding a worker thread):
//!
//! | store answers | the server | HTTP |
//! |---|---|---|
//! | `Acquired` | ships, then stores the outcome with `complete` | 200, the outcome |
//! | `InFlight` | nothing: another delivery holds the lease | 409, `Retry-After` |
//! | `Done` | nothing: replays the stored outcome | 200, `Idempotent-Replayed: true` |
//! | `Mismatch` | nothing: the id was reused for another payload | 422 |
//!
//! If the server dies between `begin` and `complete`, the lease outlives it: the event
//! answers 409 until the lease runs out, then the next delivery acquires it with
//! `attempt() > 1` and first asks the fulfilment system whether the dead attempt shipped.
//! Signatures are checked before the store is touched, so a forged request cannot hold an
//! event id hostage.
//!
//! Run it (the store is opened with `Durability::Sync`):
//!
//! ```text
//! cargo run --example webhook -- --dir /tmp/wh
//!   --addr 127.0.0.1:8080   where to listen (port 0 picks one); prints `listening on ADDR`
//!   --lease-ms 30000        how long a delivery holds an event; keep it well above the
//!                           slowest fulfilment, or two deliveries may both ship
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

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use oncelog::{fingerprint, Begin, Durability, Options, Store, Ticket};
use sha2::Sha256;

/// How far a signature's timestamp may be from our clock (Stripe's default).
const TOLERANCE_SECS: u64 = 300;
/// How long a finished event's outcome is kept: longer than the sender retries (Stripe: 3 days).
const OUTCOME_TTL: Duration = Duration::from_secs(72 * 3600);

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

struct App {
    store: Store,
    secret: Vec<u8>,
    lease: Duration,
    ledger: Ledger,
}

async fn webhook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    if let Err(why) = verify_signature(&headers, &body, &app.secret, now.as_secs()) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let Some(id) = event_id(&body) else {
        return (StatusCode::BAD_REQUEST, "no usable event id").into_response();
    };
    // The store's async methods wait for their fsync without blocking a worker: thousands
    // of deliveries in flight share each sync.
    handle_event(&app, &id, &body).await
}

async fn handle_event(app: &Arc<App>, id: &str, body: &[u8]) -> Response {
    let fp = fingerprint(body);
    let begin = match app
        .store
        .begin_with_fingerprint_async(id, app.lease, &fp)
        .await
    {
        Ok(begin) => begin,
        Err(e) => return internal_error("begin", &e),
    };
    match begin {
        Begin::Acquired(ticket) => fulfil(app, id, &ticket).await,
        Begin::InFlight { until } => {
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let retry_after = secs.max(1).to_string();
            let headers = [(header::RETRY_AFTER, retry_after)];
            (StatusCode::CONFLICT, headers, "event in flight").into_response()
        }
        Begin::Done(seen) => {
            let replayed = [("idempotent-replayed", "true")];
            (
                StatusCode::OK,
                JSON,
                replayed,
                seen.outcome.unwrap_or_default(),
            )
                .into_response()
        }
        Begin::Mismatch(_) => {
            let why = "event id reused with a different payload";
            (StatusCode::UNPROCESSABLE_ENTITY, why).into_response()
        }
    }
}

/// Ships the event (unless an earlier attempt already did), then records the outcome.
async fn fulfil(app: &Arc<App>, id: &str, ticket: &Ticket) -> Response {
    // Attempt 1 knows nobody shipped before; later attempts must ask.
    let reconcile = ticket.attempt() > 1;
    // The simulated fulfilment system is blocking file I/O: it, not the store, runs on the
    // blocking pool.
    let shipped = {
        let (app, id, deadline) = (Arc::clone(app), id.to_owned(), ticket.deadline());
        tokio::task::spawn_blocking(move || app.ledger.ship(&id, reconcile, deadline)).await
    };
    let shipped = shipped.unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(e) = shipped {
        // Free the event at once so that the sender's retry can try again.
        if let Err(e) = app.store.abandon_async(ticket).await {
            eprintln!("webhook: abandon {id}: {e}");
        }
        return internal_error("fulfilment", &e);
    }
    let outcome =
        serde_json::json!({ "shipment": format!("shp_{id}"), "attempt": ticket.attempt() });
    let outcome = outcome.to_string();
    // If this fails the shipment still happened: the lease runs out, and the next attempt
    // finds the shipment when it reconciles.
    if let Err(e) = app
        .store
        .complete_async(ticket, outcome.as_bytes(), OUTCOME_TTL)
        .await
    {
        return internal_error("complete", &e);
    }
    (StatusCode::OK, JSON, outcome).into_response()
}

fn internal_error(what: &str, e: &dyn std::error::Error) -> Response {
    eprintln!("webhook: {what}: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
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
    /// Makes "is the lease still ours, did anyone ship, ship" one step, so that a delivery
    /// that overran its lease cannot ship alongside the one that took over. This only
    /// works within one process: a real fulfilment system needs its own guard (an
    /// idempotency key of its own), or a lease far longer than the slowest work.
    lock: Mutex<()>,
}

impl Ledger {
    fn ship(&self, id: &str, reconcile: bool, deadline: SystemTime) -> io::Result<()> {
        std::thread::sleep(self.work); // the slow part of the work
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Past the deadline another delivery may hold the event: do not race it.
        if SystemTime::now() >= deadline {
            return Err(io::Error::other("lease ran out before shipping"));
        }
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
    let app = App {
        store,
        secret: secret.into_bytes(),
        lease: args.lease,
        ledger: Ledger {
            path: ledger,
            work: args.work,
            lock: Mutex::new(()),
        },
    };
    let router = Router::new()
        .route("/webhook", post(webhook))
        .with_state(Arc::new(app));
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
