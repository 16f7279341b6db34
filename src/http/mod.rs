//! Idempotency-Key middleware for tower and axum (cargo feature `http`).
//!
//! [`IdempotencyLayer`] wraps any tower service over `http` requests and makes each request
//! that carries an idempotency key run its handler once: the first request with a key
//! takes a lease on it ([`Store::begin_with_fingerprint_async`]), runs the handler and stores
//! its response as the lease's outcome; later requests with the key get that response back,
//! marked `Idempotent-Replayed: true`. It follows the IETF draft "The Idempotency-Key HTTP
//! Header Field" (draft-ietf-httpapi-idempotency-key-header):
//!
//! | request | answer |
//! |---|---|
//! | method not covered (default: only POST and PATCH are) | the handler's, untouched |
//! | covered, no key | 400 (or, with [`IdempotencyLayer::pass_through_without_key`], the handler's) |
//! | key empty, longer than the limit, or not visible ASCII; two key headers | 400 (checked before the body is read, when the key is in a header) |
//! | body over [`IdempotencyLayer::max_request_body`] | 413 |
//! | first with its key | the handler runs; its answer, stored if final |
//! | same key and fingerprint, done | the stored answer, with `Idempotent-Replayed: true` |
//! | same key, first still running | 409 with `Retry-After` ([`IdempotencyLayer::retry_after`], at most the lease's time left), or the stored answer if it finishes within [`IdempotencyLayer::wait_in_flight`] |
//! | same key, different fingerprint (method, path, query, body) | 422 |
//! | handler answered a non-final status (default: 5xx, 408, 425 and 429) or `Cache-Control: no-store` | the handler's answer; nothing stored, a retry runs the handler again |
//! | stored answer was too large to keep | 500, never a truncated replay (the first client got it as the handler streamed it: the layer buffers at most [`MAX_OUTCOME_LEN`] bytes of a response body, and stores the too-large marker as soon as it has read that much, so a body that fails later in its stream is not run again) |
//! | the store fails | 503; the handler does not run |
//!
//! The layer's own errors are `application/problem+json` (RFC 9457) bodies.
//!
//! A client that disconnects does not cancel the handler: it runs inside the request's
//! future while the server polls it, and if the server drops that future, the rest of the
//! work moves to a tokio task of its own. While it runs the lease is extended every third
//! of the lease time (a heartbeat), so
//! a slow handler is not run a second time. If the process dies mid-handler, the lease
//! outlives it: the key answers 409 until the lease runs out, then the next request runs
//! the handler as attempt 2, which can check whether attempt 1 did its side effect before
//! doing it again ([`Idempotency::attempt`], in the request's extensions).
//!
//! If the handler panics (in its future or in the service's `call`), the answer is 500 and
//! the key is freed, as for a 5xx: a retry runs the handler again as the next attempt.
//!
//! The scope must come from what the server has authenticated (an API key's owner, a
//! verified tenant), not from a header any client can set: a client that can choose
//! another's scope can replay that client's stored responses by reusing its keys.
//!
//! The layer needs a tokio runtime with timers (it spawns what a dropped request left, and
//! times the heartbeat); the store itself needs none.

mod outcome;

use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ::http::header::{self, HeaderName, HeaderValue};
use ::http::{request, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::{fingerprint, Begin, Seen, Store, Ticket, MAX_OUTCOME_LEN};
use outcome::Stored;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type KeyFn = dyn Fn(&request::Parts, &Bytes) -> Option<String> + Send + Sync;
type ScopeFn = dyn Fn(&request::Parts) -> String + Send + Sync;
type FingerprintFn = dyn Fn(&request::Parts, &Bytes) -> Vec<u8> + Send + Sync;
type FinalFn = dyn Fn(StatusCode) -> bool + Send + Sync;
type FailureFn = dyn Fn(&StoreFailure<'_>) + Send + Sync;

/// A store call the layer made for a request whose handler it ran, and which failed: what
/// [`IdempotencyLayer::on_store_error`] is told. The client still gets the handler's
/// answer.
#[derive(Debug)]
#[non_exhaustive]
pub struct StoreFailure<'a> {
    /// The client's key (without the scope).
    pub key: &'a str,
    /// What the layer was doing: `"extend"` (the heartbeat), `"complete"` (storing the
    /// response) or `"abandon"` (freeing the key after a non-final answer).
    pub action: &'static str,
    /// The store's error. [`Error::StaleTicket`](crate::Error::StaleTicket) from
    /// `"complete"` means another request took the key after this one's lease ran out
    /// (the handler ran twice, and the other request's answer is the one kept);
    /// anything else means the response was not stored and the key stays leased until
    /// the lease runs out.
    pub error: &'a crate::Error,
}

/// The header the layer adds to a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// The header the key comes from by default.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How often a request that waits for an in-flight one looks again.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// The longest lease and TTL the layer asks of the store.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest scope: with the longest key (2048 bytes) and the 2-byte length, the store
/// key stays within [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
const MAX_SCOPE_LEN: usize = crate::MAX_KEY_LEN - 2 - 2048;

/// The key under which the layer keeps a request's lease and response in the store: the
/// scope's length (2 bytes, big-endian), the scope, the client's key. For tools and tests
/// that look at the store directly ([`Store::get`]); the layer takes scopes of at most 2046
/// bytes (a longer one is answered 500).
pub fn store_key(scope: &str, key: &str) -> Vec<u8> {
    let len = u16::try_from(scope.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + scope.len() + key.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(scope.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// What the handler of a request that took a lease finds in the request's extensions
/// (axum: `Extension<Idempotency>`). Requests the layer lets through without a key
/// (uncovered methods, [`IdempotencyLayer::pass_through_without_key`]) carry none, so a
/// handler that serves those too takes `Option<Extension<Idempotency>>`, or reads
/// `request.extensions().get::<Idempotency>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    key: String,
    attempt: u32,
}

impl Idempotency {
    /// The idempotency key, as the client sent it (without the scope).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// 1 for the first attempt; above 1, an earlier attempt took the key and did not finish
    /// (its process died, or its lease ran out), so it may have done part of the work:
    /// check before doing it again.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

struct Config {
    methods: Vec<Method>,
    header: HeaderName,
    key_from: Option<Arc<KeyFn>>,
    scope: Option<Arc<ScopeFn>>,
    fingerprint: Option<Arc<FingerprintFn>>,
    is_final: Option<Arc<FinalFn>>,
    on_store_error: Option<Arc<FailureFn>>,
    pass_through_without_key: bool,
    lease: Duration,
    ttl: Duration,
    wait_in_flight: Duration,
    retry_after: Duration,
    keep_headers: Vec<HeaderName>,
    max_request_body: usize,
    max_key_len: usize,
}

/// A tower [`Layer`] that gives the services it wraps Idempotency-Key semantics, backed by a
/// [`Store`]. See the [module docs](self) for the answers.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use oncelog::http::IdempotencyLayer;
/// use oncelog::Store;
///
/// # let dir = tempfile::tempdir()?;
/// let store = Arc::new(Store::open(dir.path())?);
/// let layer = IdempotencyLayer::new(store)
///     .scope(|req| {
///         let tenant = req.headers.get("x-tenant").and_then(|v| v.to_str().ok());
///         tenant.unwrap_or("").to_owned()
///     })
///     .lease(Duration::from_secs(10))
///     .ttl(Duration::from_secs(24 * 3600));
/// // axum: Router::new().route("/orders", post(create)).layer(layer)
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<Store>,
    config: Arc<Config>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("methods", &c.methods)
            .field("header", &c.header)
            .field("lease", &c.lease)
            .field("ttl", &c.ttl)
            .field("wait_in_flight", &c.wait_in_flight)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A layer over `store` with the defaults: POST and PATCH covered, the key from the
    /// `Idempotency-Key` header (at most 255 bytes), no scope, a 30 s lease extended while
    /// the handler runs, responses kept for 24 h, 409 at once for a key in flight (with
    /// `Retry-After: 1`), status codes below 500 final except 408, 425 and 429,
    /// `Content-Type`, `Content-Encoding`, `Content-Language` and `Location` kept, request
    /// bodies up to 1 MiB.
    pub fn new(store: Arc<Store>) -> IdempotencyLayer {
        IdempotencyLayer {
            store,
            config: Arc::new(Config {
                methods: vec![Method::POST, Method::PATCH],
                header: HeaderName::from_static(IDEMPOTENCY_KEY),
                key_from: None,
                scope: None,
                fingerprint: None,
                is_final: None,
                on_store_error: None,
                pass_through_without_key: false,
                lease: Duration::from_secs(30),
                ttl: Duration::from_secs(24 * 3600),
                wait_in_flight: Duration::ZERO,
                retry_after: Duration::from_secs(1),
                keep_headers: vec![
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::CONTENT_LANGUAGE,
                    header::LOCATION,
                ],
                max_request_body: 1 << 20,
                max_key_len: 255,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> IdempotencyLayer {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                let mut config = Config::clone_from(&self.config);
                f(&mut config);
                self.config = Arc::new(config);
            }
        }
        self
    }

    /// The methods the layer covers; requests with other methods pass through untouched.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> IdempotencyLayer {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Reads the key from this header instead of `Idempotency-Key`.
    pub fn header(self, name: HeaderName) -> IdempotencyLayer {
        self.with(|c| c.header = name)
    }

    /// Takes the key from the request instead of a header: `f` sees the request's parts
    /// and its whole body (a webhook's event id is in the body) and returns the key, or
    /// `None` for a request without one. The key must pass the same checks as a header's.
    pub fn key_from(
        self,
        f: impl Fn(&request::Parts, &Bytes) -> Option<String> + Send + Sync + 'static,
    ) -> IdempotencyLayer {
        self.with(|c| c.key_from = Some(Arc::new(f)))
    }

    /// Scopes keys (by tenant, API key, user): two requests share a stored response only if
    /// `f` returns the same scope for both, so one client cannot replay another's.
    pub fn scope(
        self,
        f: impl Fn(&request::Parts) -> String + Send + Sync + 'static,
    ) -> IdempotencyLayer {
        self.with(|c| c.scope = Some(Arc::new(f)))
    }

    /// Replaces the request fingerprint (default: XXH3-128 of method, path, query and body)
    /// with `f`, which must return 1 to [`MAX_FINGERPRINT_LEN`](crate::MAX_FINGERPRINT_LEN)
    /// bytes (otherwise the store refuses the request: 503). A reused key whose fingerprint
    /// differs is answered 422.
    pub fn fingerprint(
        self,
        f: impl Fn(&request::Parts, &Bytes) -> Vec<u8> + Send + Sync + 'static,
    ) -> IdempotencyLayer {
        self.with(|c| c.fingerprint = Some(Arc::new(f)))
    }

    /// Which handler statuses are final, stored and replayed (default: below 500, except
    /// 408 Request Timeout, 425 Too Early and 429 Too Many Requests, which say "try again
    /// later"). A response with another status frees the key, so that a retry runs the
    /// handler again.
    pub fn final_status(
        self,
        f: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> IdempotencyLayer {
        self.with(|c| c.is_final = Some(Arc::new(f)))
    }

    /// Calls `f` when a store call for a request whose handler ran fails: a heartbeat,
    /// storing the response, or freeing the key. The layer answers as before (the
    /// handler's answer goes to the client); `f` is for logs and metrics, and should return
    /// quickly.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use oncelog::http::IdempotencyLayer;
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Arc::new(oncelog::Store::open(dir.path())?);
    /// let layer = IdempotencyLayer::new(store).on_store_error(|failure| {
    ///     eprintln!("idempotency key {}: {} failed: {}", failure.key, failure.action, failure.error);
    /// });
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_store_error(
        self,
        f: impl Fn(&StoreFailure<'_>) + Send + Sync + 'static,
    ) -> IdempotencyLayer {
        self.with(|c| c.on_store_error = Some(Arc::new(f)))
    }

    /// Lets a covered request without a key through to the handler (default: 400).
    pub fn pass_through_without_key(self, yes: bool) -> IdempotencyLayer {
        self.with(|c| c.pass_through_without_key = yes)
    }

    /// How long a request holds its key before the handler answers; the layer extends it
    /// every third of this while the handler runs. After a crash, the key answers 409 for
    /// up to this long. At least 3 ms, at most 100 years (longer values are taken as
    /// those).
    pub fn lease(self, lease: Duration) -> IdempotencyLayer {
        let lease = lease.clamp(Duration::from_millis(3), LONGEST);
        self.with(|c| c.lease = lease)
    }

    /// How long a final response is kept and replayed. At least 1 ms, at most 100 years
    /// (longer values are taken as those).
    pub fn ttl(self, ttl: Duration) -> IdempotencyLayer {
        let ttl = ttl.clamp(Duration::from_millis(1), LONGEST);
        self.with(|c| c.ttl = ttl)
    }

    /// A request whose key is in flight waits up to `bound` for the first request to
    /// finish and gets its stored response (or runs the handler, if the first gave up);
    /// only after that is it answered 409. Default zero: 409 at once.
    pub fn wait_in_flight(self, bound: Duration) -> IdempotencyLayer {
        self.with(|c| c.wait_in_flight = bound)
    }

    /// The `Retry-After` a 409 for a key in flight suggests (default 1 s; never more than
    /// the time left on the first request's lease, never less than 1 s: the header counts
    /// whole seconds).
    pub fn retry_after(self, after: Duration) -> IdempotencyLayer {
        self.with(|c| c.retry_after = after)
    }

    /// The response headers kept and replayed with status and body (default
    /// `Content-Type`, `Content-Encoding`, `Content-Language` and `Location`).
    pub fn keep_headers(self, names: impl IntoIterator<Item = HeaderName>) -> IdempotencyLayer {
        let names = names.into_iter().collect();
        self.with(|c| c.keep_headers = names)
    }

    /// The largest request body the layer buffers (for the fingerprint and `key_from`);
    /// a larger one is answered 413.
    pub fn max_request_body(self, bytes: usize) -> IdempotencyLayer {
        self.with(|c| c.max_request_body = bytes)
    }

    /// The longest key accepted (default 255 bytes, at most 2048).
    pub fn max_key_len(self, bytes: usize) -> IdempotencyLayer {
        let bytes = bytes.min(2048);
        self.with(|c| c.max_key_len = bytes)
    }
}

impl Config {
    fn clone_from(c: &Config) -> Config {
        Config {
            methods: c.methods.clone(),
            header: c.header.clone(),
            key_from: c.key_from.clone(),
            scope: c.scope.clone(),
            fingerprint: c.fingerprint.clone(),
            is_final: c.is_final.clone(),
            on_store_error: c.on_store_error.clone(),
            pass_through_without_key: c.pass_through_without_key,
            lease: c.lease,
            ttl: c.ttl,
            wait_in_flight: c.wait_in_flight,
            retry_after: c.retry_after,
            keep_headers: c.keep_headers.clone(),
            max_request_body: c.max_request_body,
            max_key_len: c.max_key_len,
        }
    }

    fn is_final(&self, status: StatusCode) -> bool {
        match &self.is_final {
            Some(f) => f(status),
            None => !status.is_server_error() && !matches!(status.as_u16(), 408 | 425 | 429),
        }
    }

    fn fingerprint(&self, parts: &request::Parts, body: &Bytes) -> Vec<u8> {
        if let Some(f) = &self.fingerprint {
            return f(parts, body);
        }
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut input = Vec::with_capacity(body.len() + target.len() + 32);
        for part in [parts.method.as_str().as_bytes(), target.as_bytes()] {
            input.extend_from_slice(&(part.len() as u64).to_le_bytes());
            input.extend_from_slice(part);
        }
        input.extend_from_slice(body);
        fingerprint(&input).to_vec()
    }

    /// The key the request's header holds: `Ok(None)` if it has none. Used when the key is
    /// not taken from the body (`key_from`), before the body is read.
    fn header_key(&self, parts: &request::Parts) -> Result<Option<String>, &'static str> {
        let mut values = parts.headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err("more than one idempotency key header");
        }
        let value = value.to_str().map_err(|_| "the key is not visible ASCII")?;
        // The draft's syntax is a structured-field string ("...", RFC 8941); bare keys,
        // as most clients send them, are accepted too.
        let key = if value.starts_with('"') {
            sf_string(value)?
        } else if value
            .bytes()
            .any(|b| matches!(b, b' ' | b'"' | b'\\' | b',' | b';'))
        {
            return Err("an unquoted key has a space, quote, backslash, comma or semicolon");
        } else {
            value.to_owned()
        };
        self.check_key(key).map(Some)
    }

    /// The key `key_from` found in the request: `Ok(None)` if it has none.
    fn body_key(
        &self,
        f: &KeyFn,
        parts: &request::Parts,
        body: &Bytes,
    ) -> Result<Option<String>, &'static str> {
        match f(parts, body) {
            Some(key) => self.check_key(key).map(Some),
            None => Ok(None),
        }
    }

    fn check_key(&self, key: String) -> Result<String, &'static str> {
        if key.is_empty() {
            return Err("the key is empty");
        }
        if key.len() > self.max_key_len {
            return Err("the key is too long");
        }
        if !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err("the key is not visible ASCII");
        }
        Ok(key)
    }

    /// The store key, or `None` if the scope is over `MAX_SCOPE_LEN` bytes.
    fn store_key(&self, parts: &request::Parts, key: &str) -> Option<Vec<u8>> {
        let scope = self.scope.as_ref().map(|f| f(parts)).unwrap_or_default();
        (scope.len() <= MAX_SCOPE_LEN).then(|| store_key(&scope, key))
    }
}

/// A structured-field string (an sf-string of RFC 8941) at the start of `value`, unescaped; the
/// parameters that may follow it (`;name=value`) are ignored.
fn sf_string(value: &str) -> Result<String, &'static str> {
    let mut chars = value.strip_prefix('"').unwrap_or(value).chars();
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated quoted key"),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => return Err("a backslash in a quoted key escapes only a quote or a backslash"),
            },
            Some(c) if c == ' ' || c.is_ascii_graphic() => out.push(c),
            Some(_) => return Err("the key is not visible ASCII"),
        }
    }
    let rest = chars.as_str();
    if rest.is_empty() || rest.starts_with(';') {
        Ok(out)
    } else {
        Err("text after the quoted key")
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> IdempotencyService<S> {
        IdempotencyService {
            inner,
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around a handler.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    store: Arc<Store>,
    config: Arc<Config>,
}

impl<S> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService").finish_non_exhaustive()
    }
}

/// The body of the layer's responses: its own or a buffered one (the handler's, when it fit
/// the outcome limit), or the handler's body as it streams (a request the layer does not
/// cover, or a response too large to keep).
pub type LayerBody<B> = Either<Full<Bytes>, Streamed<B>>;

/// A handler's response body as the layer passes it on: the part the layer read before it
/// saw the body was too large to keep (if any), then the rest as the handler produces it.
#[derive(Debug)]
pub struct Streamed<B> {
    read: std::collections::VecDeque<Bytes>,
    rest: Pin<Box<B>>,
}

impl<B> Streamed<B> {
    fn whole(body: B) -> Streamed<B> {
        Streamed {
            read: std::collections::VecDeque::new(),
            rest: Box::pin(body),
        }
    }
}

impl<B> Body for Streamed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        self.rest
            .as_mut()
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let read: u64 = self.read.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

type Answer<B, E> = Result<Response<LayerBody<B>>, E>;

/// A handler's body, passed on as it is.
fn passed<B>(body: B) -> LayerBody<B> {
    Either::Right(Streamed::whole(body))
}

/// A response of the layer's own, or a buffered one.
fn full<B>(response: Response<Full<Bytes>>) -> Response<LayerBody<B>> {
    response.map(Either::Left)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<ResBody, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.config.methods.contains(req.method()) {
            let answer = inner.call(req);
            return Box::pin(async move { Ok(answer.await?.map(passed)) });
        }
        let (store, config) = (Arc::clone(&self.store), Arc::clone(&self.config));
        Box::pin(handle(inner, store, config, req))
    }
}

async fn handle<S, ReqBody, ResBody>(
    mut inner: S,
    store: Arc<Store>,
    config: Arc<Config>,
    req: Request<ReqBody>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let left = |r: Response<Full<Bytes>>| Ok(r.map(Either::Left));
    let pass = |r: Response<ResBody>| r.map(passed);
    let no_key = || {
        problem(
            StatusCode::BAD_REQUEST,
            "this request has no idempotency key",
        )
    };
    let (parts, body) = req.into_parts();
    // A key in a header is checked before the body is read: a request without a good one
    // is answered, or passed through untouched, without buffering its body.
    let header_key = match &config.key_from {
        Some(_) => None,
        None => match config.header_key(&parts) {
            Ok(Some(key)) => Some(key),
            Ok(None) if config.pass_through_without_key => {
                let req = Request::from_parts(parts, body);
                return Ok(pass(inner.call(req).await?));
            }
            Ok(None) => return left(no_key()),
            Err(why) => return left(problem(StatusCode::BAD_REQUEST, why)),
        },
    };
    let body = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            let why = "the request body is larger than this endpoint buffers";
            return left(problem(StatusCode::PAYLOAD_TOO_LARGE, why));
        }
        Err(_) => return left(problem(StatusCode::BAD_REQUEST, "the request body failed")),
    };
    let key = match (header_key, &config.key_from) {
        (Some(key), _) => key,
        (None, Some(f)) => match config.body_key(f.as_ref(), &parts, &body) {
            Ok(Some(key)) => key,
            Ok(None) if config.pass_through_without_key => {
                let req = Request::from_parts(parts, ReqBody::from(body));
                return Ok(pass(inner.call(req).await?));
            }
            Ok(None) => return left(no_key()),
            Err(why) => return left(problem(StatusCode::BAD_REQUEST, why)),
        },
        (None, None) => return left(no_key()),
    };
    let Some(store_key) = config.store_key(&parts, &key) else {
        return left(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the scope is too long",
        ));
    };
    let fp = config.fingerprint(&parts, &body);
    let waited_until = Instant::now() + config.wait_in_flight;
    let mut request = Unrun { inner, parts, body };
    loop {
        // Each try to take the key, and the handler's run if it took it, is work that a
        // client going away does not cancel: a lease once taken is always completed or
        // freed. The work runs inside this request's future while the server polls it (no
        // task to spawn and wake per request); if the future is dropped first, what is
        // left of the work moves to a task of its own. Waiting between tries is not part
        // of it: a client that gives up while waiting leaves nothing behind.
        let work = Box::pin(attempt(
            Arc::clone(&store),
            Arc::clone(&config),
            store_key.clone(),
            fp.clone(),
            key.clone(),
            request,
        ));
        match (FinishOnDrop { work: Some(work) }).await {
            Some(Attempt::Answered(answer)) => return answer,
            Some(Attempt::InFlight(until, unrun)) => {
                let now = Instant::now();
                if now >= waited_until {
                    return left(in_flight(until, config.retry_after));
                }
                tokio::time::sleep(WAIT_POLL.min(waited_until - now)).await;
                request = unrun;
            }
            None => {
                return left(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request's task failed",
                ))
            }
        }
    }
}

/// A request the handler has not run yet.
struct Unrun<S> {
    inner: S,
    parts: request::Parts,
    body: Bytes,
}

/// What one try to take the key came to.
enum Attempt<S, B, E> {
    /// The answer: the handler's, a replay, or the layer's own.
    Answered(Answer<B, E>),
    /// Another request holds the key until the time given; the request comes back, to
    /// try again or to answer 409.
    InFlight(SystemTime, Unrun<S>),
}

/// Runs `work` as part of the future that polls it; if that future is dropped before the
/// work is done (the client went away and the server dropped the request), the rest of
/// the work is spawned as a task of its own on the current tokio runtime, so it finishes
/// anyway. Resolves to `None` if the work panicked.
struct FinishOnDrop<F: Future + Send + 'static> {
    work: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Future for FinishOnDrop<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                self.work = None;
                Poll::Ready(Some(out))
            }
            Err(_) => {
                self.work = None;
                Poll::Ready(None)
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for FinishOnDrop<F> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Outside a runtime (the server is shutting down) nothing can run it: the
            // lease then runs out, as after a crash.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = work.await;
                });
            }
        }
    }
}

/// Tries to take the key once: runs the handler if it did, or answers from what it found
/// (done, reused, the store failing), or hands the request back if the key is in flight.
async fn attempt<S, ReqBody, ResBody>(
    store: Arc<Store>,
    config: Arc<Config>,
    store_key: Vec<u8>,
    fp: Vec<u8>,
    key: String,
    request: Unrun<S>,
) -> Attempt<S, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: From<Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let begin = store
        .begin_with_fingerprint_async(&store_key, config.lease, &fp)
        .await;
    let answer = match begin {
        Err(_) => {
            let why = "the idempotency store is unavailable; the request was not run";
            full(problem(StatusCode::SERVICE_UNAVAILABLE, why))
        }
        Ok(Begin::Acquired(ticket)) => {
            let Unrun {
                inner,
                mut parts,
                body,
            } = request;
            parts.extensions.insert(Idempotency {
                key,
                attempt: ticket.attempt(),
            });
            let req = Request::from_parts(parts, ReqBody::from(body));
            return Attempt::Answered(run(inner, store, config, req, ticket).await);
        }
        Ok(Begin::InFlight { until }) => return Attempt::InFlight(until, request),
        Ok(Begin::Done(seen)) => full(replay(&seen)),
        Ok(Begin::Mismatch(_)) => {
            let why = "this idempotency key was used for a different request";
            full(problem(StatusCode::UNPROCESSABLE_ENTITY, why))
        }
    };
    Attempt::Answered(Ok(answer))
}

/// A handler's response body as far as the layer read it.
enum Read<B> {
    /// All of it: small enough to be kept, unless its headers push it over.
    Whole(Bytes),
    /// Its start, already over the outcome limit, and the rest, still to be read (by the
    /// client, as it streams).
    TooLarge(std::collections::VecDeque<Bytes>, Pin<Box<B>>),
    /// Reading it failed.
    Failed,
}

/// Reads `body` until it ends or is over what a stored outcome can hold.
async fn read_body<B>(body: B) -> Read<B>
where
    B: Body<Data = Bytes> + Send,
{
    let mut body = Box::pin(body);
    let mut read = std::collections::VecDeque::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Read::Failed;
        };
        // Trailers are not kept.
        if let Ok(data) = frame.into_data() {
            len += data.len();
            read.push_back(data);
            if len > MAX_OUTCOME_LEN {
                return Read::TooLarge(read, body);
            }
        }
    }
    if read.len() == 1 {
        return Read::Whole(read.pop_front().unwrap_or_default());
    }
    let mut whole = Vec::with_capacity(len);
    for data in read {
        whole.extend_from_slice(&data);
    }
    Read::Whole(Bytes::from(whole))
}

type HandlerResult<B, E> = Result<(::http::response::Parts, Read<B>), E>;

/// Runs the handler and supervises it: the lease is extended while the handler runs, then
/// the key is completed or freed. Called from work that a client going away does not
/// cancel (`FinishOnDrop`).
async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    store: Arc<Store>,
    config: Arc<Config>,
    req: Request<ReqBody>,
    ticket: Ticket,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let key = req
        .extensions()
        .get::<Idempotency>()
        .map(|i| i.key.clone())
        .unwrap_or_default();
    // `call` runs inside the supervised future, so that a panic in it frees the key too.
    let handler = async move {
        let (parts, body) = inner.call(req).await?.into_parts();
        Ok::<_, S::Error>((parts, read_body(body).await))
    };
    supervise(handler, store, config, ticket, &key).await
}

type Heartbeat<'a> = Pin<Box<dyn Future<Output = crate::Result<()>> + Send + 'a>>;

async fn supervise<B, E>(
    handler: impl Future<Output = HandlerResult<B, E>> + Send,
    store: Arc<Store>,
    config: Arc<Config>,
    ticket: Ticket,
    key: &str,
) -> Result<Response<LayerBody<B>>, E> {
    let report = |action: &'static str, result: crate::Result<()>| {
        if let (Err(error), Some(f)) = (result, &config.on_store_error) {
            f(&StoreFailure {
                key,
                action,
                error: &error,
            });
        }
    };
    // Frees the key if this work unwinds or is dropped before it completed or freed it.
    let mut release = Release {
        store: Arc::clone(&store),
        ticket: Some(ticket.clone()),
    };
    let every = config.lease / 3;
    let mut handler = pin!(handler);
    let mut tick = pin!(tokio::time::sleep(every));
    let mut heartbeat: Option<Heartbeat<'_>> = None;
    // The handler, the heartbeat's timer and a heartbeat in progress, polled together; a
    // panic in the handler is caught here as a task of its own would catch it. A failed
    // heartbeat is not fatal: the lease still runs until its deadline, and completing may
    // still succeed.
    let joined = poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => return Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => {}
            Err(_) => return Poll::Ready(Err(())),
        }
        if let Some(beat) = heartbeat.as_mut() {
            if let Poll::Ready(result) = beat.as_mut().poll(cx) {
                report("extend", result);
                heartbeat = None;
            }
        }
        if heartbeat.is_none() && tick.as_mut().poll(cx).is_ready() {
            let mut beat: Heartbeat<'_> = Box::pin(store.extend_async(&ticket, config.lease));
            match beat.as_mut().poll(cx) {
                Poll::Ready(result) => report("extend", result),
                Poll::Pending => heartbeat = Some(beat),
            }
            tick.as_mut().reset(tokio::time::Instant::now() + every);
            // Registers the timer again (it cannot be due yet).
            let _ = tick.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await;
    drop(heartbeat);
    // From here on each way out frees or completes the key itself.
    release.ticket = None;
    let failed = |why: &str| full(problem(StatusCode::INTERNAL_SERVER_ERROR, why));
    let (parts, body) = match joined {
        Ok(Ok((_, Read::Failed))) => {
            report("abandon", store.abandon_async(&ticket).await);
            return Ok(failed("the handler's response body failed"));
        }
        Ok(Err(e)) => {
            report("abandon", store.abandon_async(&ticket).await);
            return Err(e);
        }
        Err(()) => {
            report("abandon", store.abandon_async(&ticket).await);
            return Ok(failed("the handler panicked"));
        }
        Ok(Ok((parts, body))) => (parts, body),
    };
    let no_store = parts
        .headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
            })
        });
    if no_store || !config.is_final(parts.status) {
        // If freeing the key fails, the lease runs out instead.
        report("abandon", store.abandon_async(&ticket).await);
    } else {
        let stored = match &body {
            Read::Whole(body) => {
                outcome::encode(parts.status, &parts.headers, &config.keep_headers, body)
                    .filter(|o| o.len() <= MAX_OUTCOME_LEN)
            }
            _ => None,
        }
        .unwrap_or_else(|| outcome::encode_too_large(parts.status));
        // If storing fails, the handler's work is done all the same: its answer goes to
        // the client, and the key stays leased until the lease runs out; a retry after
        // that runs the handler as attempt 2.
        report(
            "complete",
            store.complete_async(&ticket, &stored, config.ttl).await,
        );
    }
    let body = match body {
        Read::Whole(body) => Either::Left(Full::new(body)),
        // Too large to keep: the client gets it as the handler produces it, never
        // buffered whole.
        Read::TooLarge(read, rest) => Either::Right(Streamed { read, rest }),
        Read::Failed => Either::Left(Full::default()),
    };
    Ok(Response::from_parts(parts, body))
}

/// Frees a leased key when dropped while it still holds the ticket: the work that held it
/// unwound (a panic outside the handler's own future) or was dropped unfinished.
struct Release {
    store: Arc<Store>,
    ticket: Option<Ticket>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let store = Arc::clone(&self.store);
        // If freeing fails, or the runtime is shutting down and never runs the task, the
        // lease runs out instead, as after a crash.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { drop(store.abandon_async(&ticket).await) });
            }
            // No runtime to wait on: free it here.
            Err(_) => drop(store.abandon(&ticket)),
        }
    }
}

fn replay(seen: &Seen) -> Response<Full<Bytes>> {
    let mut response = match seen.outcome.as_ref().and_then(outcome::decode) {
        Some(Stored::Full {
            status,
            headers,
            body,
        }) => {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Some(Stored::TooLarge { status }) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "the request was processed (status {}), but its response was too large to \
                 keep and cannot be replayed",
                status.as_u16()
            ),
        ),
        None => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was processed, but its stored response cannot be read",
        ),
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

fn in_flight(until: SystemTime, retry_after: Duration) -> Response<Full<Bytes>> {
    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
    let wait = retry_after.min(left);
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut response = problem(
        StatusCode::CONFLICT,
        "a request with this idempotency key is being processed",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// An `application/problem+json` response (RFC 9457).
fn problem(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":\"{}\",\"status\":{},\"detail\":\"{}\"}}",
        json_escape(status.canonical_reason().unwrap_or("")),
        status.as_u16(),
        json_escape(detail)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut req = Request::post("/orders?x=1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_checked() {
        let layer = IdempotencyLayer::new(Arc::new(
            Store::open(tempfile::tempdir().unwrap().path()).unwrap(),
        ));
        let c = &layer.config;
        let key = |h: &[(&str, &str)]| c.header_key(&parts(h));
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(
            key(&[("idempotency-key", "abc-1")]),
            Ok(Some("abc-1".into()))
        );
        assert_eq!(
            key(&[("idempotency-key", "\"abc-1\"")]),
            Ok(Some("abc-1".into()))
        );
        assert!(key(&[("idempotency-key", "")]).is_err());
        assert!(key(&[("idempotency-key", "\"\"")]).is_err());
        assert!(key(&[("idempotency-key", "a b")]).is_err());
        assert!(key(&[("idempotency-key", "\"ab")]).is_err());
        // Structured-field strings: spaces and escapes inside, parameters after.
        let quoted = |v: &str| key(&[("idempotency-key", v)]);
        assert_eq!(quoted(r#""a b""#), Ok(Some("a b".into())));
        assert_eq!(quoted(r#""a\"b\\c""#), Ok(Some(r#"a"b\c"#.into())));
        assert_eq!(quoted(r#""k-1";exp=1"#), Ok(Some("k-1".into())));
        assert!(quoted(r#""a\b""#).is_err());
        assert!(quoted(r#""ab"x"#).is_err());
        assert!(quoted(r#""ab\""#).is_err());
        // A bare key holds no structure: two keys joined by a proxy are refused.
        assert!(quoted("a,b").is_err());
        assert!(quoted("a;b").is_err());
        assert!(key(&[("idempotency-key", &"k".repeat(255))]).is_ok());
        assert!(key(&[("idempotency-key", &"k".repeat(256))]).is_err());
        assert!(key(&[("idempotency-key", "a"), ("idempotency-key", "b")]).is_err());
    }

    #[test]
    fn scopes_cannot_collide() {
        let layer = IdempotencyLayer::new(Arc::new(
            Store::open(tempfile::tempdir().unwrap().path()).unwrap(),
        ))
        .scope(|p| p.headers["x-tenant"].to_str().unwrap().to_owned());
        let c = &layer.config;
        let a = c.store_key(&parts(&[("x-tenant", "ab")]), "c").unwrap();
        let b = c.store_key(&parts(&[("x-tenant", "a")]), "bc").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_scope_and_key_at_their_limits_fit_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let layer = IdempotencyLayer::new(Arc::clone(&store))
            .max_key_len(usize::MAX)
            .scope(|p| p.headers["x-tenant"].to_str().unwrap().to_owned());
        let c = &layer.config;
        let key = "k".repeat(c.max_key_len);
        let longest = "s".repeat(MAX_SCOPE_LEN);
        let at_limit = c
            .store_key(&parts(&[("x-tenant", &longest)]), &key)
            .unwrap();
        assert_eq!(at_limit.len(), crate::MAX_KEY_LEN);
        assert!(store.begin(&at_limit, Duration::from_secs(1)).is_ok());
        let over = format!("{longest}s");
        assert!(c.store_key(&parts(&[("x-tenant", &over)]), &key).is_none());
    }

    /// A service that answers 201 at once, or whose `call` panics before it returns a
    /// future.
    #[derive(Clone)]
    struct Answers {
        panic_in_call: bool,
    }

    impl Service<Request<Full<Bytes>>> for Answers {
        type Response = Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            assert!(!self.panic_in_call, "call fails (on purpose)");
            let mut response = Response::new(Full::new(Bytes::from_static(b"made")));
            *response.status_mut() = StatusCode::CREATED;
            std::future::ready(Ok(response))
        }
    }

    /// Sends a covered request with the key `k` through the layer over `service`, on
    /// `runtime`; the status it got.
    fn post_k(store: &Arc<Store>, service: Answers, runtime: &tokio::runtime::Runtime) -> u16 {
        let mut service = IdempotencyLayer::new(Arc::clone(store)).layer(service);
        let request = Request::post("/orders")
            .header(IDEMPOTENCY_KEY, "k")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = runtime.block_on(service.call(request)).unwrap();
        response.status().as_u16()
    }

    /// Asserts that the key `k` is free: the next attempt takes it at once, as attempt 2.
    fn assert_k_freed(store: &Store) {
        match store
            .begin(store_key("", "k"), Duration::from_secs(1))
            .unwrap()
        {
            Begin::Acquired(ticket) => assert_eq!(ticket.attempt(), 2),
            other => panic!("the key is still held: {other:?}"),
        }
    }

    #[test]
    fn a_panic_in_the_services_call_frees_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let panics = Answers {
            panic_in_call: true,
        };
        assert_eq!(post_k(&store, panics, &runtime), 500);
        assert_k_freed(&store);
    }

    #[test]
    fn a_panic_around_the_handler_frees_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // Without timers the heartbeat's timer panics, after the key was taken and
        // outside the handler's future.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = Answers {
            panic_in_call: false,
        };
        assert_eq!(post_k(&store, answers, &runtime), 500);
        // The key is freed by a task of the runtime's: let it run.
        let key = store_key("", "k");
        runtime.block_on(async {
            for _ in 0..1000 {
                match store.get(&key).unwrap() {
                    Some(seen) if seen.state == crate::KeyState::InFlight => {
                        tokio::task::yield_now().await;
                    }
                    _ => return,
                }
            }
        });
        assert_k_freed(&store);
    }

    #[test]
    fn lease_and_ttl_stay_within_what_the_store_takes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let layer = IdempotencyLayer::new(Arc::clone(&store))
            .lease(Duration::MAX)
            .ttl(Duration::ZERO);
        let c = &layer.config;
        assert_eq!((c.lease, c.ttl), (LONGEST, Duration::from_millis(1)));
        let begin = store.begin("k", c.lease).unwrap();
        let Begin::Acquired(ticket) = begin else {
            panic!("{begin:?}")
        };
        store.complete(&ticket, b"x", c.ttl).unwrap();
        let layer = layer.ttl(Duration::MAX);
        assert_eq!(layer.config.ttl, LONGEST);
        let Begin::Acquired(ticket) = store.begin("k2", Duration::from_secs(1)).unwrap() else {
            panic!("k2 is new")
        };
        store.complete(&ticket, b"x", layer.config.ttl).unwrap();
    }

    #[test]
    fn default_fingerprint_covers_method_target_and_body() {
        let layer = IdempotencyLayer::new(Arc::new(
            Store::open(tempfile::tempdir().unwrap().path()).unwrap(),
        ));
        let c = &layer.config;
        let p = parts(&[]);
        let fp = c.fingerprint(&p, &Bytes::from_static(b"a"));
        assert_eq!(fp.len(), 16);
        assert_ne!(fp, c.fingerprint(&p, &Bytes::from_static(b"b")));
        let mut q = parts(&[]);
        q.uri = "/orders?x=2".parse().unwrap();
        assert_ne!(fp, c.fingerprint(&q, &Bytes::from_static(b"a")));
        q.uri = "/orders?x=1".parse().unwrap();
        q.method = Method::PATCH;
        assert_ne!(fp, c.fingerprint(&q, &Bytes::from_static(b"a")));
    }

    #[test]
    fn problem_bodies_are_json() {
        let r = problem(StatusCode::BAD_REQUEST, "say \"hi\"\n\\");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = r.into_body();
        let bytes = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["detail"], "say \"hi\"\n\\");
    }
}
