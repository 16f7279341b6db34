//! `oncelog serve`: the store behind the Redis protocol, for services in other processes
//! and other languages.
//!
//! One tokio runtime serves every connection. A connection reads what its client sent,
//! parses every complete request in it (up to [`Config::max_pipeline`]), and runs them as
//! one batch: each request's index work happens in order, then the batch waits for the
//! durability of all of them at once (the store's async API), then the replies go out in
//! order. Batches of all connections meet in the store's group commit, so a thousand
//! clients each waiting for one reply share a sync, and so do the sixteen commands of a
//! pipeline. Under `sync`, consecutive `SET ... NX` of a batch are one `claim_batch` call:
//! one append and one waiter for the run instead of one each.
//!
//! The invariants:
//! - a reply is written only after what it reports is as durable as the store's
//!   durability mode says (a `SET` answered `OK` under `sync` survives `kill -9` and power
//!   loss);
//! - requests of one connection take effect in the order they were sent;
//! - a client cannot make the server hold more than [`Config::max_query_buffer`] bytes of
//!   its input, [`Config::max_pipeline`] requests in a batch, and about
//!   [`Config::max_output_buffer`] bytes of replies it has not read, and holds no buffers
//!   while it is idle;
//! - a client that sends without reading its replies (a pipeline sent whole before any
//!   reply is read, as redis-py's and Jedis's are) is served while its unread replies and
//!   unrun requests fit those two limits: the server reads and runs on while replies wait
//!   to be written;
//! - no input crashes the server: a malformed frame gets `-ERR Protocol error: ...` and the
//!   connection is closed.
//!
//! Shutdown (SIGTERM, SIGINT): stop accepting, let every connection finish the batch it is
//! running and write its replies, then close the store (a final sync) and return.

mod commands;
mod docs;

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BufMut as _;
use oncelog::{Durability, Options, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::resp::{self, Limits, Reply};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store's directory.
    pub dir: PathBuf,
    /// Where to listen, `host:port` (port 0: any free port).
    pub listen: String,
    /// The store's durability mode (shown by `INFO`; the store is opened with it).
    pub durability: Durability,
    /// The password `AUTH` must give before any other command, if set.
    pub requirepass: Option<String>,
    /// Connections served at once; one more is answered with an error and closed.
    pub max_clients: usize,
    /// What one request may announce.
    pub limits: Limits,
    /// Requests of one connection run as one batch, at most.
    pub max_pipeline: usize,
    /// Bytes of a client's input held while a request is incomplete, at most.
    pub max_query_buffer: usize,
    /// How long shutdown waits for connections to finish their batches (and write their
    /// replies) before it closes them and the store.
    pub drain_timeout: Duration,
    /// Bytes of replies one batch of a connection may produce, at most (estimated from
    /// each command's largest reply): a batch ends early rather than exceed it.
    pub max_batch_reply: usize,
    /// Bytes of replies a client has not read yet that the server holds before it stops
    /// running the client's requests (it runs them again as the client reads).
    pub max_output_buffer: usize,
}

impl Config {
    /// The defaults for `dir`: loopback port 6390, `sync`, no password, 10,000 clients,
    /// batches of up to 1024 requests and 1 MiB of replies, 16 MiB of input and 64 MiB of
    /// unread replies per client, 5 s to drain at shutdown.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            listen: "127.0.0.1:6390".into(),
            durability: Durability::Sync,
            requirepass: None,
            max_clients: 10_000,
            limits: Limits::default(),
            max_pipeline: 1024,
            max_query_buffer: 16 << 20,
            drain_timeout: Duration::from_secs(5),
            max_batch_reply: 1 << 20,
            max_output_buffer: 64 << 20,
        }
    }
}

/// What every connection shares.
struct Shared {
    store: Store,
    config: Config,
    started: Instant,
    port: u16,
    clients: AtomicUsize,
    next_client_id: AtomicU64,
    /// Set when the store failed for good (a failed sync poisons it): the server stops.
    failed: AtomicBool,
    failure: Notify,
}

impl Shared {
    /// Records that the store is poisoned: the server shuts down and exits non-zero, so
    /// that whatever supervises it restarts it (reopening recovers the store).
    fn fail(&self) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            eprintln!("oncelog serve: the store failed; shutting down");
        }
        self.failure.notify_one();
    }
}

/// Opens the store at `config.dir` with `options` (whose durability should be
/// `config.durability`), serves until SIGTERM or SIGINT, then closes the store. Prints
/// `listening on ADDR` on stdout once it accepts connections; logs to stderr.
pub fn run(config: Config, options: Options) -> Result<(), String> {
    let opened = Instant::now();
    let store = options
        .durability(config.durability)
        .open(&config.dir)
        .map_err(|e| format!("open {}: {e}", config.dir.display()))?;
    let stats = store.stats();
    if stats.recovery_salvaged_places > 0 {
        eprintln!(
            "oncelog serve: salvaged {}: dropped {} bytes at {} damaged places",
            config.dir.display(),
            stats.recovery_salvaged_bytes,
            stats.recovery_salvaged_places
        );
        for place in store.salvaged() {
            eprintln!("oncelog serve:   {place}");
        }
    }
    eprintln!(
        "oncelog serve: opened {} in {:.3} s: {} records replayed, {} keys",
        config.dir.display(),
        opened.elapsed().as_secs_f64(),
        stats.recovered_records,
        stats.keys
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("oncelog-serve")
        .build()
        .map_err(|e| format!("start the runtime: {e}"))?;
    let outcome = runtime.block_on(serve(store, config));
    runtime.shutdown_timeout(Duration::from_secs(1));
    let shared = outcome?;
    let failed = shared.failed.load(Ordering::SeqCst);
    match Arc::try_unwrap(shared) {
        Ok(shared) => shared
            .store
            .close()
            .map_err(|e| format!("close the store: {e}"))?,
        Err(shared) => shared
            .store
            .sync()
            .map_err(|e| format!("sync the store: {e}"))?,
    }
    if failed {
        return Err("the store failed (see above); restart to recover".into());
    }
    eprintln!("oncelog serve: stopped");
    Ok(())
}

async fn serve(store: Store, config: Config) -> Result<Arc<Shared>, String> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let shared = Arc::new(Shared {
        store,
        port: addr.port(),
        config,
        started: Instant::now(),
        clients: AtomicUsize::new(0),
        next_client_id: AtomicU64::new(1),
        failed: AtomicBool::new(false),
        failure: Notify::new(),
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("handle SIGTERM: {e}"))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("handle SIGINT: {e}"))?;
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = shared.failure.notified() => break,
            accepted = listener.accept() => {
                let (socket, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: say so, let others finish.
                        eprintln!("oncelog serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.config.max_clients {
                    shared.clients.fetch_sub(1, Ordering::SeqCst);
                    connections.spawn(refuse(socket));
                    continue;
                }
                let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
                connections.spawn(async move {
                    // Counted out however the task ends: returned, panicked or aborted.
                    let _counted = Counted(&shared.clients);
                    connection(&shared, socket, stopped).await;
                });
            }
        }
    }
    drop(listener);
    eprintln!(
        "oncelog serve: shutting down; {} connections finishing",
        shared.clients.load(Ordering::SeqCst)
    );
    let _ = stop.send(true);
    // Connections finish their batches; a client that does not read its replies could
    // hold one up for ever, so the wait is bounded, and a second signal cuts it short.
    let drained = async { while connections.join_next().await.is_some() {} };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(shared.config.drain_timeout) => {
            eprintln!("oncelog serve: connections still busy after the drain timeout; closing them");
        }
        _ = terminate.recv() => eprintln!("oncelog serve: second signal; closing connections"),
        _ = interrupt.recv() => eprintln!("oncelog serve: second signal; closing connections"),
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(shared)
}

/// One connection in `Shared::clients`, until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Over `--max-clients`: Redis's answer, then close.
async fn refuse(mut socket: TcpStream) {
    let mut out = Vec::new();
    Reply::err("max number of clients reached").write(&mut out, false);
    let _ = socket.write_all(&out).await;
}

/// One client's state.
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) authenticated: bool,
    pub(crate) resp3: bool,
    pub(crate) name: Option<Vec<u8>>,
    /// After `MULTI`, until `EXEC` or `DISCARD`: commands are refused, not run.
    pub(crate) in_multi: bool,
}

/// What an unauthenticated client may send, when a password is set (Redis's limits): a
/// client without the password cannot make the server buffer large requests.
const UNAUTHENTICATED: Limits = Limits {
    max_args: 10,
    max_bulk: 16 << 10,
    max_inline: 64 << 10,
};

/// Serves one connection until the client leaves, sends `QUIT` or a malformed frame, or the
/// server stops.
///
/// One loop reads, runs and writes: it runs the requests the input holds while the replies
/// not yet written stay under `max_output_buffer`, and otherwise waits until it can write
/// some of those replies or read more input (while the input stays under
/// `max_query_buffer`), whichever comes first.
async fn connection(shared: &Shared, mut socket: TcpStream, mut stopped: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.split();
    let mut client = Client {
        id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        authenticated: shared.config.requirepass.is_none(),
        resp3: false,
        name: None,
        in_multi: false,
    };
    // Both buffers start empty and are given back when they grew past what an idle client
    // should pin. `input[ran..]` is what has not been run yet, `out[written..]` what the
    // client has not been sent yet; the parts before are dropped once they are as large as
    // the rest, so each byte is moved at most once on average.
    let mut input: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let (mut ran, mut written) = (0, 0);
    let (max_input, max_output) = (
        shared.config.max_query_buffer,
        shared.config.max_output_buffer,
    );
    // The client closed its side: what it sent is still run and answered.
    let mut sent_all = false;
    // The connection ends once `out` is written: QUIT, a malformed frame, shutdown.
    let mut closing = false;
    loop {
        // Shutting down: the batch that ran is answered; no other starts.
        closing |= *stopped.borrow();
        if !closing && out.len() - written < max_output {
            match next_batch(shared, &mut client, &input[ran..], &mut out).await {
                Batch::Ran { quit, used } => {
                    ran += used;
                    closing |= quit;
                    continue;
                }
                Batch::Malformed => closing = true,
                Batch::None { used } => {
                    ran += used;
                    if input.len() - ran >= max_input {
                        Reply::err("Protocol error: client query buffer limit reached")
                            .write(&mut out, false);
                        closing = true;
                    }
                    closing |= sent_all;
                }
            }
        }
        if ran > 0 && ran >= input.len() - ran {
            input.drain(..ran);
            ran = 0;
        }
        if written > 0 && written >= out.len() - written {
            out.drain(..written);
            written = 0;
        }
        if out.is_empty() {
            if out.capacity() > 64 << 10 {
                out = Vec::new();
            }
            if closing {
                if !*stopped.borrow() {
                    let _ = tokio::time::timeout(LINGER, linger(&mut reader, &mut writer)).await;
                }
                return;
            }
            // Give back what a large request grew the input to, once it is gone.
            if input.is_empty() && input.capacity() > 16 << 10 {
                input = Vec::new();
            } else if input.capacity() > 64 << 10 && input.len() < 16 << 10 {
                input.shrink_to(16 << 10);
            }
        }
        let pending = written < out.len();
        if pending {
            // Most replies go out at once: only wait (and read meanwhile) if they do not.
            match writer.try_write(&out[written..]) {
                Ok(0) => return,
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        let room = max_input.saturating_sub(input.len() - ran).min(16 << 10);
        let read = !closing && !sent_all && room > 0;
        if read {
            input.reserve(room);
        }
        // At most `room` bytes are read, whatever the spare capacity.
        let mut limited = (&mut input).limit(room);
        // Both are cancel safe: a write that loses the race wrote nothing, and a read that
        // loses it read nothing.
        tokio::select! {
            sent = writer.write(&out[written..]), if pending => match sent {
                Ok(0) | Err(_) => return,
                Ok(n) => written += n,
            },
            got = reader.read_buf(&mut limited), if read => match got {
                Ok(0) => sent_all = true,
                Ok(_) => {}
                Err(_) => return,
            },
            _ = stopped.changed(), if !pending => return,
            // Unreachable: with nothing to write, the shutdown branch is enabled.
            else => return,
        }
    }
}

/// How long a connection the server ends waits for its client to close too.
const LINGER: Duration = Duration::from_secs(1);

/// Ends the connection gently: says the server is done writing, then reads and drops what
/// the client still sends until it closes its side. Closing a socket with unread input
/// resets the connection, and a reset can make the client lose the last replies (a
/// `QUIT`'s `OK`, a protocol error) before it reads them.
async fn linger(
    reader: &mut tokio::net::tcp::ReadHalf<'_>,
    writer: &mut tokio::net::tcp::WriteHalf<'_>,
) {
    if writer.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 16 << 10];
    while let Ok(n) = reader.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// What the input held.
enum Batch {
    /// A batch of requests, run and answered into `out`, from the first `used` bytes of the
    /// input; `quit` if it ended with `QUIT`.
    Ran { quit: bool, used: usize },
    /// A malformed request, answered with a protocol error: the connection is to close.
    Malformed,
    /// No complete request; the first `used` bytes were requests to ignore (blank lines,
    /// empty arrays).
    None { used: usize },
}

/// Runs the requests at the front of `input` as one batch (up to `max_pipeline` of them, or
/// as many as may produce `max_batch_reply` bytes of replies) and appends their replies to
/// `out`.
async fn next_batch(
    shared: &Shared,
    client: &mut Client,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Batch {
    // Before `AUTH`, Redis's limits for unauthenticated clients. A request sent after a
    // pipelined `AUTH` that only the full limits allow ends the batch there, and is read
    // again once `AUTH` has run.
    let limits = if client.authenticated {
        shared.config.limits
    } else {
        UNAUTHENTICATED
    };
    // The batch: every request's arguments in one list, and how many each has.
    let mut args: Vec<std::ops::Range<usize>> = Vec::new();
    let mut requests: Vec<usize> = Vec::new();
    let mut used = 0;
    let mut malformed = None;
    let mut reply_bytes = 0;
    // A batch also ends once it holds as many arguments as one request may: its argument
    // lists stay within what one large request needs.
    while requests.len() < shared.config.max_pipeline
        && reply_bytes < shared.config.max_batch_reply
        && args.len() < limits.max_args
    {
        match resp::parse(&input[used..], &limits) {
            Ok(Some(request)) => {
                let first = args.len();
                args.extend(request.args.iter().map(|a| a.start + used..a.end + used));
                used += request.len;
                if args.len() > first {
                    reply_bytes += commands::reply_bound(input, &args[first..], &limits);
                    requests.push(args.len() - first);
                }
            }
            Ok(None) => break,
            Err(e) => {
                malformed = Some(e);
                break;
            }
        }
    }
    if !requests.is_empty() {
        let quit = run_batch(shared, client, input, &args, &requests, out).await;
        return Batch::Ran { quit, used };
    }
    let Some(e) = malformed else {
        return Batch::None { used };
    };
    // Refused only for want of a password: say so, as Redis does.
    let by_limits = || resp::parse(&input[used..], &shared.config.limits) != Err(e);
    let e = match e {
        resp::ProtocolError::ArrayLength if !client.authenticated && by_limits() => {
            "Protocol error: unauthenticated multibulk length".to_string()
        }
        resp::ProtocolError::BulkLength if !client.authenticated && by_limits() => {
            "Protocol error: unauthenticated bulk length".to_string()
        }
        e => e.to_string(),
    };
    Reply::err(e).write(out, client.resp3);
    Batch::Malformed
}

/// A boxed future of a connection's batch.
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reply that is ready, or the future that will give it.
pub(crate) type Pending<'a> = Boxed<'a, Reply>;

/// What a request turned into when it was read.
pub(crate) enum Step<'a> {
    /// The reply, computed at once (connection commands, errors).
    Now(Reply),
    /// A store operation: its future.
    Later(Pending<'a>),
    /// `SET key value NX` with an expiry: run with the `SET`s next to it in the batch.
    SetNx(commands::SetNx<'a>),
    /// `QUIT`: reply `OK`, run nothing after it, close.
    Quit,
}

/// Runs one batch of requests (`requests[i]` arguments each, in turn, from `args`, ranges
/// into `input`) and appends their replies to `out`, in order. The store operations are
/// polled in request order, so each one's index work happens in that order; then they wait
/// for durability together. Returns whether the client asked to quit.
async fn run_batch(
    shared: &Shared,
    client: &mut Client,
    input: &[u8],
    args: &[std::ops::Range<usize>],
    requests: &[usize],
    out: &mut Vec<u8>,
) -> bool {
    // Every argument of the batch, once: each request's arguments are a slice of it.
    let argv: Vec<&[u8]> = args
        .iter()
        .map(|a| input.get(a.clone()).unwrap_or_default())
        .collect();
    let mut steps: Vec<Running<'_>> = Vec::with_capacity(requests.len());
    // Consecutive `SET ... NX`, not yet made a step.
    let mut sets: Vec<commands::SetNx<'_>> = Vec::new();
    // The protocol each reply is written in: `HELLO` may change it within the batch.
    let mut protocols = Vec::with_capacity(requests.len());
    let mut quit = false;
    let mut at = 0;
    for &n in requests {
        let request = argv.get(at..at + n).unwrap_or_default();
        at += n;
        let step = commands::dispatch(shared, client, request);
        protocols.push(client.resp3);
        if let Step::SetNx(set) = step {
            sets.push(set);
            continue;
        }
        flush_sets(shared, &mut sets, &mut steps);
        match step {
            Step::Now(reply) => steps.push(Running::Done(reply)),
            Step::Later(future) => steps.push(Running::One(future)),
            Step::SetNx(_) => {}
            Step::Quit => {
                steps.push(Running::Done(Reply::OK));
                quit = true;
                break;
            }
        }
    }
    flush_sets(shared, &mut sets, &mut steps);
    run_in_order(&mut steps).await;
    let mut protocols = protocols.into_iter();
    for step in &steps {
        let replies = match step {
            Running::Done(reply) => std::slice::from_ref(reply),
            Running::Many(replies) => replies.as_slice(),
            Running::One(_) | Running::Group(_) => &[],
        };
        for (reply, resp3) in replies.iter().zip(protocols.by_ref()) {
            reply.write(out, resp3);
        }
    }
    quit
}

/// A step of a batch while it runs.
enum Running<'a> {
    /// Answered.
    Done(Reply),
    /// One request's future.
    One(Pending<'a>),
    /// The future of consecutive `SET ... NX` (one reply each).
    Group(Boxed<'a, Vec<Reply>>),
    /// Their replies.
    Many(Vec<Reply>),
}

/// Makes the `SET`s gathered so far steps: one group under `sync`, where they then share
/// one wait for durability (a pipeline of 16 `SET`s under `redis-benchmark -P 16` answered
/// 1.2–1.3× as many requests per second so); each alone under the other modes, where
/// nothing waits and a group only costs more (0.8–0.95× as many).
fn flush_sets<'a>(
    shared: &'a Shared,
    sets: &mut Vec<commands::SetNx<'a>>,
    steps: &mut Vec<Running<'a>>,
) {
    if sets.len() > 1 && shared.config.durability == Durability::Sync {
        steps.push(Running::Group(commands::set_group(
            shared,
            std::mem::take(sets),
        )));
    } else {
        steps.extend(
            sets.drain(..)
                .map(|set| Running::One(commands::set_one(shared, set))),
        );
    }
}

/// Polls every step, in order, until all are answered.
async fn run_in_order(steps: &mut [Running<'_>]) {
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for step in steps.iter_mut() {
            match step {
                Running::One(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(reply) => *step = Running::Done(reply),
                    Poll::Pending => waiting = true,
                },
                Running::Group(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(replies) => *step = Running::Many(replies),
                    Poll::Pending => waiting = true,
                },
                Running::Done(_) | Running::Many(_) => {}
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
}

/// Runs `futures` together, polled in order, and gives their outputs in order.
pub(crate) async fn join_in_order<'a, T: Send + 'a>(futures: Vec<Boxed<'a, T>>) -> Vec<T> {
    let mut slots: Vec<(Option<Boxed<'a, T>>, Option<T>)> =
        futures.into_iter().map(|f| (Some(f), None)).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, out) in slots.iter_mut() {
            if let Some(f) = future {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *future = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().filter_map(|(_, v)| v).collect()
}
