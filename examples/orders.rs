//! An order API whose `POST /orders` runs once per `Idempotency-Key`, across retries,
//! concurrent duplicates, crashes and restarts: [`oncelog::http::IdempotencyLayer`] in
//! front of a plain axum handler, keys scoped by the `X-Tenant` header. (A real service
//! takes the scope from what it authenticated, an API key's owner, not from a header any
//! client can set: one who sets another's tenant could replay that tenant's answers.)
//!
//! The handler writes one line per order to a ledger file (the side effect), waits
//! `--work-ms` (the slow part), and answers 201 with a JSON body naming the order. A retry
//! with the same key gets that answer again, with `Idempotent-Replayed: true`.
//!
//! If the server dies after the ledger line but before the answer is stored, the key
//! answers 409 until the lease runs out; the next retry then runs the handler as attempt 2,
//! which finds the line in the ledger and answers with that order instead of placing a
//! second one (reconciliation: the layer guarantees one *completed* run per key, the
//! handler makes a re-run after a crash harmless).
//!
//! ```text
//! cargo run --release --features http --example orders -- --dir /tmp/orders
//!   --addr 127.0.0.1:8080   where to listen (port 0 picks one); prints `listening on ADDR`
//!   --ledger FILE           one line per order (default: orders.log next to the directory)
//!   --work-ms 50            how long placing an order takes
//!   --lease-ms 10000        how long a request holds its key; the layer extends it while
//!                           the handler runs, so this bounds the wait after a crash
//!
//! curl -i -H 'Idempotency-Key: 7c1e' -H 'X-Tenant: acme' -d '{"sku":"tea"}' \
//!   http://127.0.0.1:8080/orders
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, request, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use oncelog::http::{Idempotency, IdempotencyLayer};
use oncelog::{Durability, Options};

struct App {
    ledger: PathBuf,
    work: Duration,
    /// Serialises "look in the ledger, append" within this process.
    lock: Mutex<()>,
}

fn tenant(headers: &HeaderMap) -> String {
    let tenant = headers.get("x-tenant").and_then(|v| v.to_str().ok());
    tenant.unwrap_or("").to_owned()
}

async fn create_order(
    State(app): State<Arc<App>>,
    Extension(idem): Extension<Idempotency>,
    headers: HeaderMap,
) -> Response {
    let tenant = tenant(&headers);
    if tenant.is_empty()
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return (StatusCode::BAD_REQUEST, "X-Tenant: letters, digits and '-'").into_response();
    }
    let order = {
        let (app, tenant) = (Arc::clone(&app), tenant.clone());
        let key = idem.key().to_owned();
        let reconcile = idem.attempt() > 1;
        tokio::task::spawn_blocking(move || app.place(&tenant, &key, reconcile)).await
    };
    let order = match order {
        Ok(Ok(order)) => order,
        Ok(Err(e)) => return server_error(&e),
        Err(e) => return server_error(&e),
    };
    tokio::time::sleep(app.work).await;
    let body = format!(
        r#"{{"order":"{order}","tenant":"{tenant}","attempt":{}}}"#,
        idem.attempt()
    );
    let location = format!("/orders/{order}");
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::LOCATION, location),
        ],
        body,
    )
        .into_response()
}

fn server_error(e: &dyn std::error::Error) -> Response {
    eprintln!("orders: {e}");
    // 5xx: the layer frees the key, and the client's retry runs the handler again.
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "could not place the order",
    )
        .into_response()
}

impl App {
    /// Places the order for `tenant`/`key`, or on a re-run finds the one placed before.
    fn place(&self, tenant: &str, key: &str, reconcile: bool) -> io::Result<String> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if reconcile {
            if let Some(order) = self.find(tenant, key)? {
                return Ok(order);
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let order = format!("ord_{nanos:x}");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ledger)?;
        file.write_all(format!("{tenant} {key} {order}\n").as_bytes())?;
        file.sync_all()?;
        Ok(order)
    }

    fn find(&self, tenant: &str, key: &str) -> io::Result<Option<String>> {
        let file = match File::open(&self.ledger) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        for line in BufReader::new(file).lines() {
            let line = line?;
            let mut fields = line.split(' ');
            if fields.next() == Some(tenant) && fields.next() == Some(key) {
                return Ok(fields.next().map(str::to_owned));
            }
        }
        Ok(None)
    }
}

struct Args {
    dir: PathBuf,
    addr: String,
    ledger: Option<PathBuf>,
    work: Duration,
    lease: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::new(),
        addr: "127.0.0.1:8080".into(),
        ledger: None,
        work: Duration::from_millis(50),
        lease: Duration::from_secs(10),
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
            "--ledger" => args.ledger = Some(value.into()),
            "--work-ms" => args.work = millis()?,
            "--lease-ms" => args.lease = millis()?,
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
            eprintln!("orders: {e}");
            eprintln!("usage: orders --dir DIR [--addr HOST:PORT] [--ledger FILE] [--work-ms N] [--lease-ms N]");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let store = Options::new()
        .durability(Durability::Sync)
        .open(&args.dir)
        .map_err(|e| format!("open {}: {e}", args.dir.display()))?;
    let parent = args.dir.parent().unwrap_or(Path::new(""));
    let app = Arc::new(App {
        ledger: args.ledger.unwrap_or_else(|| parent.join("orders.log")),
        work: args.work,
        lock: Mutex::new(()),
    });
    let layer = IdempotencyLayer::new(Arc::new(store))
        .scope(|req: &request::Parts| tenant(&req.headers))
        .lease(args.lease)
        .ttl(Duration::from_secs(24 * 3600));
    let router = Router::new()
        .route("/orders", post(create_order))
        .route_layer(layer)
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
