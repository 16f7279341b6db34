//! The `oncelog` command-line tool: claim keys, filter a stream of ids, inspect a store,
//! generate load.
//!
//! Each command is one variant of [`Command`] with its own arguments struct and one arm of
//! [`Command::run`]; a new command is added the same way.

mod bench;
mod measure;
mod tasks;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use oncelog::{
    fingerprint, Begin, Claim, Durability, KeyState, Options, RecoveryMode, Seen, Store,
    MAX_KEY_LEN,
};
use oncelog_cli::progress::with_open_progress;

/// `println!` that fails with an error instead of panicking when stdout is gone (a closed
/// pipe, a full disk).
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(io::stdout(), $($arg)*).map_err(|e| format!("writing to stdout: {e}"))
    };
}

/// oncelog — a persistent dedupe store
#[derive(Parser)]
#[command(
    name = "oncelog",
    version,
    arg_required_else_help = true,
    after_help = "\
Durations: 500ms, 90s, 15m, 72h, 3d, 1w, or sums such as 1h30m.
Keys are 1 to 4096 bytes; put `--` before keys that begin with `-`.
Exit code 2 means an error (printed to stderr). `oncelog COMMAND --help` tells more.
Opening a large store shows its progress on stderr when stderr is a terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Claim each KEY; prints `new KEY` or `duplicate KEY ...`.
    ///
    /// A duplicate's line is `duplicate KEY first_seen=... expires_at=...` (RFC 3339, UTC).
    /// Exit code 0 if every key was new, 1 if any was a duplicate.
    #[command(verbatim_doc_comment)]
    Claim(ClaimArgs),
    /// Read ids from stdin, one per line; print only those seen for the first time.
    ///
    /// Prints the ids seen for the first time (within TTL), in input order: a
    /// persistent `sort -u` for streams. Empty lines are skipped. Ids are claimed
    /// in batches of up to --batch, one durable write per batch; output is flushed
    /// after each batch, so an id is printed only once its claim is acknowledged.
    #[command(verbatim_doc_comment)]
    Filter(FilterArgs),
    /// Show each KEY's state without changing it.
    ///
    /// Prints `claimed`, `completed` (with its attempt and outcome), `in-flight`
    /// (with its attempt and lease deadline), or `absent`. Exit code 0 if all are
    /// claimed, completed or in flight, 1 otherwise.
    #[command(verbatim_doc_comment)]
    Get(GetArgs),
    /// Begin KEY for --lease: take its lease, as a worker would.
    ///
    /// Prints `acquired KEY attempt=N deadline=...`, or `in-flight`, `done` or
    /// `mismatch` (--fingerprint: the payload's text, hashed) as `get` would.
    /// Exit code 0 if acquired, 1 otherwise. The lease is left to run out, as if
    /// the holder had crashed; with --hold the tool keeps it until stdin is
    /// closed, then abandons it.
    #[command(verbatim_doc_comment)]
    Begin(BeginArgs),
    /// Forget each KEY so it can be claimed again.
    ///
    /// Prints `removed KEY`, or `absent KEY` for a key the store did not hold.
    #[command(verbatim_doc_comment)]
    Remove(RemoveArgs),
    /// Print the store's counters and sizes.
    ///
    /// One `name value` line each, or with --json one JSON object with the same
    /// names (durations in milliseconds) and the directory as `dir`.
    /// compactions, segments_deleted and bytes_reclaimed count since this open.
    #[command(verbatim_doc_comment)]
    Stats(StatsArgs),
    /// Run maintenance now and print what it did.
    ///
    /// Sweeps expired keys out of the index, deletes segments nothing needs,
    /// compacts sparse ones and writes hint files.
    #[command(verbatim_doc_comment)]
    Compact(CompactArgs),
    /// Generate load; print claims/s, latency, memory, disk and recovery time.
    ///
    /// Claims generated event-id-like keys from --threads threads until --keys
    /// keys of --key-len bytes are claimed or --duration is up; a fraction
    /// --dup-ratio of claims repeat earlier keys. Prints claims/s, latency
    /// percentiles, what background maintenance did meanwhile, syncs, RAM and disk
    /// per key, then reopens the store and prints the recovery rate and how many
    /// segments were read from hint files (skip with --no-reopen). --batch N > 1
    /// claims through claim_many. --async N: N concurrent tasks claim through
    /// claim_async (claim_many_async with --batch), run on --threads worker
    /// threads by a small built-in executor. Use an empty directory.
    ///
    /// Background maintenance writes hint files as it goes, so the reopen reads
    /// the segments it reached from hints: --hints-before-reopen compacts before
    /// closing so every sealed segment has one; --no-hints writes none, so the
    /// reopen reads every segment.
    #[command(verbatim_doc_comment)]
    Bench(BenchCmd),
    /// Serve the store over the Redis protocol (RESP2, RESP3 after HELLO 3).
    ///
    /// For replicas of a service and programs in any language: every Redis client
    /// works. `SET key value NX EX seconds` answers OK the first time and nil while
    /// the key lives; GET, DEL, EXISTS, TTL, PTTL, DBSIZE, INFO and the connection
    /// commands answer as in Redis; ONCE.BEGIN, ONCE.COMPLETE, ONCE.ABANDON,
    /// ONCE.EXTEND and ONCE.GET are the two-phase operations (README "oncelog
    /// serve"). Every reply is as durable as --durability says, with one group
    /// commit shared by all connections. Prints `listening on ADDR` on stdout once
    /// it accepts connections; logs to stderr. SIGTERM or SIGINT: stop accepting,
    /// finish what is in flight, sync, exit 0.
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
}

impl Command {
    fn run(self) -> Result<ExitCode, String> {
        match self {
            Command::Claim(a) => cmd_claim(a),
            Command::Filter(a) => cmd_filter(a),
            Command::Get(a) => cmd_get(a),
            Command::Begin(a) => cmd_begin(a),
            Command::Remove(a) => cmd_remove(a),
            Command::Stats(a) => cmd_stats(a),
            Command::Compact(a) => cmd_compact(a),
            Command::Bench(a) => cmd_bench(a),
            Command::Serve(a) => cmd_serve(a),
        }
    }
}

fn main() -> ExitCode {
    large_blocks_as_mappings();
    // Usage errors exit with 2 and --help/--version with 0, from clap.
    match Cli::parse().command.run() {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("oncelog: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Makes glibc serve allocations of 64 KiB or more (the index's arrays, which a large
/// store has thousands of) from mappings of their own, returned to the system when freed,
/// unless free room in the heap already fits them. By default glibc raises that threshold
/// as the process frees large blocks, up to 32 MiB, and then keeps the arrays an index
/// outgrew in a thread's arena, whose free top it does not give back: 2–5 B more resident
/// heap per key at 5M and 10M keys, measured with `oncelog bench`. Left alone when
/// `GLIBC_TUNABLES` sets the threshold already.
fn large_blocks_as_mappings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
        if !tuned {
            // SAFETY: mallopt only changes the allocator's settings; it is called before
            // any other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
            }
        }
    }
}

/// The store directory and how to open it: every command but `bench`.
#[derive(Args)]
struct StoreArgs {
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// What opening the store tolerates: tolerate, strict or salvage.
    ///
    /// tolerate: cut a torn tail of the newest segment, refuse damage elsewhere.
    /// strict: refuse any damage, change nothing.
    /// salvage: rewrite damaged segments without what does not decode; what was
    /// dropped is printed to stderr, and `stats` counts it. Salvage loses the
    /// damaged records: a lost remove brings back the claim it hid. Copy the
    /// directory first.
    #[arg(
        long,
        value_name = "MODE",
        value_parser = parse_recovery,
        default_value = "tolerate",
        verbatim_doc_comment
    )]
    recovery: RecoveryMode,
}

/// How writes reach the disk: the commands that write.
#[derive(Args)]
struct WriteArgs {
    /// How writes reach the disk: sync, buffered, or periodic:INTERVAL (e.g. periodic:100ms).
    #[arg(long, value_name = "MODE", value_parser = parse_durability, default_value = "sync")]
    durability: Durability,
}

#[derive(Args)]
struct ClaimArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// How long a claim lasts: e.g. 500ms, 90s, 15m, 72h, 3d, 1w, 1h30m.
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    ttl: Duration,
    /// The keys to claim.
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<String>,
}

#[derive(Args)]
struct FilterArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// How long a claim lasts: e.g. 500ms, 90s, 15m, 72h, 3d, 1w, 1h30m.
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    ttl: Duration,
    /// Most ids per batch (one durable write each).
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1024")]
    batch: usize,
}

#[derive(Args)]
struct GetArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The keys to look up.
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<String>,
}

#[derive(Args)]
struct BeginArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// How long the lease lasts: e.g. 30s, 15m.
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    lease: Duration,
    /// The payload's text: hashed, it must match the fingerprint of earlier attempts.
    #[arg(long, value_name = "TEXT")]
    fingerprint: Option<String>,
    /// Keep the lease until stdin is closed, then abandon it.
    #[arg(long)]
    hold: bool,
    /// The key to begin.
    #[arg(value_name = "KEY")]
    key: String,
}

#[derive(Args)]
struct RemoveArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// The keys to forget.
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<String>,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// Where to listen, HOST:PORT; port 0 picks a free one (printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6390")]
    listen: String,
    /// The password clients must give with AUTH (or HELLO ... AUTH) first.
    #[arg(long, value_name = "PASS")]
    requirepass: Option<String>,
    /// Connections served at once; more are answered with an error and closed.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "10000")]
    max_clients: usize,
    /// At SIGTERM/SIGINT, how long connections may take to finish the commands they
    /// have read and write their replies before they are closed (a second signal closes
    /// them at once); then the store is synced and closed.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, default_value = "5s")]
    drain_timeout: Duration,
    /// Index stripes (rounded up to a power of two). For tens of millions of keys, 4096
    /// shortens the pauses when the index grows; the default costs less memory below that.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1024", verbatim_doc_comment)]
    stripes: usize,
}

#[derive(Args)]
struct CompactArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct BenchCmd {
    /// The store directory: use an empty one.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Claiming threads; with --async, the worker threads that run the tasks.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "2")]
    threads: usize,
    /// N concurrent tasks claim through claim_async (claim_many_async with --batch).
    #[arg(long = "async", value_name = "N", value_parser = positive)]
    tasks: Option<usize>,
    /// Keys to claim.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1000000")]
    keys: usize,
    /// Bytes per key.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "32")]
    key_len: usize,
    /// The fraction of claims that repeat earlier keys (0 <= F < 1).
    #[arg(long, value_name = "F", value_parser = dup_ratio, default_value = "0")]
    dup_ratio: f64,
    /// How long a claim lasts.
    #[arg(long, value_name = "TTL", value_parser = parse_duration, default_value = "72h")]
    ttl: Duration,
    /// How writes reach the disk: sync, buffered, or periodic:INTERVAL (e.g. periodic:100ms).
    #[arg(long, value_name = "MODE", value_parser = parse_durability, default_value = "buffered")]
    durability: Durability,
    /// Keys per claim_many call (1: plain claim).
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1")]
    batch: usize,
    /// Stop claiming after this long even if not every key is claimed.
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Do not reopen the store after the run to measure recovery.
    #[arg(long)]
    no_reopen: bool,
    /// The TTL of the fraction --short-ratio of claims (of batches, with --batch), so
    /// segments turn sparse and background maintenance compacts them during the run.
    #[arg(long, value_name = "TTL", value_parser = parse_duration, verbatim_doc_comment)]
    short_ttl: Option<Duration>,
    /// The fraction of claims that get --short-ttl (0 <= F <= 1).
    #[arg(long, value_name = "F", value_parser = short_ratio, default_value = "0")]
    short_ratio: f64,
    /// After the run, wait until every claim has expired, run compaction, and print
    /// index, resident memory and disk before and after.
    #[arg(long, verbatim_doc_comment)]
    expire: bool,
    /// Compact before closing, so that the reopen reads every sealed segment's hint.
    #[arg(long, conflicts_with = "no_hints")]
    hints_before_reopen: bool,
    /// Write no hint files, so that the reopen reads every segment.
    #[arg(long)]
    no_hints: bool,
    /// Once a second, print how many claims have expired and not yet been swept
    /// (maintenance's lag behind expiry), and its largest value at the end.
    #[arg(long, verbatim_doc_comment)]
    lag: bool,
    /// After the run, run maintenance twice (which gives the heap back once the index
    /// stops changing) and print resident memory again. Writes hint files, like
    /// --hints-before-reopen.
    #[arg(long, verbatim_doc_comment, conflicts_with = "no_hints")]
    settle: bool,
    /// Index stripes (`Options::stripes`: rounded up to a power of two).
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1024")]
    stripes: usize,
}

/// Opens the store as every command but `bench` does, showing progress on a terminal and
/// reporting on stderr what a salvage dropped.
fn cmd_serve(a: ServeArgs) -> Result<ExitCode, String> {
    let mut config = oncelog_cli::serve::Config::new(a.store.dir);
    config.listen = a.listen;
    config.durability = a.write.durability;
    // As in Redis, an empty password means none (an unset variable must not lock
    // every client out).
    config.requirepass = a.requirepass.filter(|p| !p.is_empty());
    config.drain_timeout = a.drain_timeout;
    config.max_clients = a.max_clients;
    // A long-running server: background maintenance on (the default).
    let opts = with_open_progress(
        Options::new()
            .recovery_mode(a.store.recovery)
            .stripes(a.stripes),
    );
    oncelog_cli::serve::run(config, opts)?;
    Ok(ExitCode::SUCCESS)
}

fn open(a: &StoreArgs, durability: Durability) -> Result<Store, String> {
    let dir = &a.dir;
    // One-shot commands: maintenance runs only when asked for (`compact`).
    let opts = Options::new()
        .durability(durability)
        .background_maintenance(false)
        .recovery_mode(a.recovery);
    let store = with_open_progress(opts)
        .open(dir)
        .map_err(|e| error_chain(&e))?;
    let s = store.stats();
    if s.recovery_salvaged_places > 0 {
        eprintln!(
            "oncelog: salvaged {}: dropped {} bytes at {} damaged places, rewrote {} segments",
            dir.display(),
            s.recovery_salvaged_bytes,
            s.recovery_salvaged_places,
            s.recovery_salvaged_segments
        );
        for p in store.salvaged() {
            eprintln!("oncelog:   {p}");
        }
        if s.recovery_salvaged_places > store.salvaged().len() as u64 {
            eprintln!(
                "oncelog:   (the first {} places are listed)",
                store.salvaged().len()
            );
        }
    }
    Ok(store)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn cmd_claim(a: ClaimArgs) -> Result<ExitCode, String> {
    let store = open(&a.store, a.write.durability)?;
    let answers = store
        .claim_many(&a.keys, a.ttl)
        .map_err(|e| error_chain(&e))?;
    let mut any_dup = false;
    let mut out = io::stdout().lock();
    for (key, answer) in a.keys.iter().zip(&answers) {
        let line = match answer {
            Claim::New => format!("new {key}"),
            Claim::Duplicate(seen) => {
                any_dup = true;
                format!(
                    "duplicate {key} first_seen={} expires_at={}",
                    rfc3339(seen.first_seen),
                    rfc3339(seen.expires_at)
                )
            }
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    drop(out);
    store.close().map_err(|e| error_chain(&e))?;
    Ok(if any_dup {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_filter(a: FilterArgs) -> Result<ExitCode, String> {
    let ttl = a.ttl;
    let store = open(&a.store, a.write.durability)?;
    // A reader thread feeds lines through a bounded channel so that a slow trickle of
    // input is still answered promptly: each batch takes what has arrived, up to --batch.
    let max_batch = a.batch;
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(max_batch.saturating_mul(4));
    std::thread::spawn(move || {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if line.is_empty() {
                        continue;
                    }
                    if tx.send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let mut out = io::stdout().lock();
    let mut line_no = 0u64;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first.map_err(|e| format!("reading stdin: {e}"))?);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(line) => batch.push(line.map_err(|e| format!("reading stdin: {e}"))?),
                Err(_) => break,
            }
        }
        for (i, key) in batch.iter().enumerate() {
            if key.len() > MAX_KEY_LEN {
                return Err(format!(
                    "line {}: id of {} bytes is longer than the {MAX_KEY_LEN}-byte limit",
                    line_no + i as u64 + 1,
                    key.len()
                ));
            }
        }
        line_no += batch.len() as u64;
        let answers = store.claim_many(&batch, ttl).map_err(|e| error_chain(&e))?;
        for (key, answer) in batch.iter().zip(&answers) {
            if answer.is_new() {
                out.write_all(key)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| e.to_string())?;
            }
        }
        out.flush().map_err(|e| e.to_string())?;
    }
    drop(out);
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_get(a: GetArgs) -> Result<ExitCode, String> {
    // Nothing is written: the durability mode does not matter.
    let store = open(&a.store, Durability::Sync)?;
    let mut all = true;
    for key in &a.keys {
        match store.get(key).map_err(|e| error_chain(&e))? {
            Some(seen) => say!("{}", describe(key, &seen))?,
            None => {
                all = false;
                say!("absent {key}")?;
            }
        }
    }
    store.close().map_err(|e| error_chain(&e))?;
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line for a key the store has seen: its state, attempt, times and outcome.
fn describe(key: &str, seen: &Seen) -> String {
    let times = format!(
        "attempt={} first_seen={}",
        seen.attempt,
        rfc3339(seen.first_seen)
    );
    match seen.state {
        KeyState::InFlight => format!(
            "in-flight {key} {times} deadline={}",
            rfc3339(seen.expires_at)
        ),
        KeyState::Completed => format!(
            "completed {key} {times} expires_at={} outcome=\"{}\"",
            rfc3339(seen.expires_at),
            seen.outcome.as_deref().unwrap_or(&[]).escape_ascii()
        ),
        _ => format!(
            "claimed {key} {times} expires_at={}",
            rfc3339(seen.expires_at)
        ),
    }
}

fn cmd_begin(a: BeginArgs) -> Result<ExitCode, String> {
    let (key, lease) = (&a.key, a.lease);
    let store = open(&a.store, a.write.durability)?;
    let answer = match &a.fingerprint {
        Some(text) => store.begin_with_fingerprint(key, lease, &fingerprint(text.as_bytes())),
        None => store.begin(key, lease),
    }
    .map_err(|e| error_chain(&e))?;
    let acquired = match answer {
        Begin::Acquired(ticket) => {
            say!(
                "acquired {key} attempt={} deadline={}",
                ticket.attempt(),
                rfc3339(ticket.deadline())
            )?;
            if a.hold {
                // Hold the lease until stdin closes (or the process is killed).
                io::stdout().flush().map_err(|e| e.to_string())?;
                io::copy(&mut io::stdin().lock(), &mut io::sink()).map_err(|e| e.to_string())?;
                store.abandon(&ticket).map_err(|e| error_chain(&e))?;
                say!("abandoned {key} attempt={}", ticket.attempt())?;
            }
            true
        }
        Begin::InFlight { until } => {
            say!("in-flight {key} deadline={}", rfc3339(until))?;
            false
        }
        Begin::Done(seen) => {
            say!("done {}", describe(key, &seen))?;
            false
        }
        Begin::Mismatch(seen) => {
            say!("mismatch {}", describe(key, &seen))?;
            false
        }
    };
    store.close().map_err(|e| error_chain(&e))?;
    Ok(if acquired {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_remove(a: RemoveArgs) -> Result<ExitCode, String> {
    let store = open(&a.store, a.write.durability)?;
    for key in &a.keys {
        let removed = store.remove(key).map_err(|e| error_chain(&e))?;
        say!("{} {key}", if removed { "removed" } else { "absent" })?;
    }
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// A value of `stats`: text as it is, and in JSON a string or a number.
enum Value {
    Text(String),
    Number(String),
}

fn cmd_stats(a: StatsArgs) -> Result<ExitCode, String> {
    let store = open(&a.store, Durability::Sync)?;
    let s = store.stats();
    let n = |v: u64| Value::Number(v.to_string());
    let rows: [(&str, Value); 19] = [
        ("dir", Value::Text(store.path().display().to_string())),
        ("keys", n(s.keys)),
        ("live_keys", n(s.live_keys)),
        ("expired_unswept", n(s.expired_unswept)),
        ("segments", n(s.segments)),
        ("disk_bytes", n(s.disk_bytes)),
        ("live_bytes", n(s.live_bytes)),
        ("index_bytes", n(s.index_bytes)),
        ("recovered_records", n(s.recovered_records)),
        ("recovery_hinted_segments", n(s.recovery_hinted_segments)),
        ("recovery_truncated_bytes", n(s.recovery_truncated_bytes)),
        ("recovery_extended_bytes", n(s.recovery_extended_bytes)),
        (
            "recovery_time_ms",
            Value::Number(format!("{:.3}", s.recovery_time.as_secs_f64() * 1e3)),
        ),
        ("recovery_salvaged_bytes", n(s.recovery_salvaged_bytes)),
        ("recovery_salvaged_places", n(s.recovery_salvaged_places)),
        (
            "recovery_salvaged_segments",
            n(s.recovery_salvaged_segments),
        ),
        ("compactions", n(s.compactions)),
        ("segments_deleted", n(s.segments_deleted)),
        ("bytes_reclaimed", n(s.bytes_reclaimed)),
    ];
    let mut out = io::stdout().lock();
    if a.json {
        let fields: Vec<String> = rows
            .iter()
            .map(|(name, value)| match value {
                Value::Text(t) => format!("\"{name}\":{}", json_string(t)),
                Value::Number(v) => format!("\"{name}\":{v}"),
            })
            .collect();
        writeln!(out, "{{{}}}", fields.join(",")).map_err(|e| e.to_string())?;
    } else {
        for (name, value) in &rows {
            let (Value::Text(v) | Value::Number(v)) = value;
            writeln!(out, "{name:<28}{v}").map_err(|e| e.to_string())?;
        }
        writeln!(
            out,
            "(compactions, segments_deleted and bytes_reclaimed count since this open)"
        )
        .map_err(|e| e.to_string())?;
    }
    drop(out);
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// `s` as a JSON string: quoted, with `"`, `\` and control characters escaped.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cmd_compact(a: CompactArgs) -> Result<ExitCode, String> {
    // Compaction syncs what it writes whatever the mode.
    let store = open(&a.store, Durability::Sync)?;
    let r = store.compact().map_err(|e| error_chain(&e))?;
    let s = store.stats();
    say!("entries_swept             {}", r.entries_swept)?;
    say!("segments_read             {}", r.segments_read)?;
    say!("segments_written          {}", r.segments_written)?;
    say!("segments_deleted          {}", r.segments_deleted)?;
    say!("bytes_read                {}", r.bytes_read)?;
    say!("bytes_written             {}", r.bytes_written)?;
    say!("bytes_reclaimed           {}", r.bytes_reclaimed)?;
    say!("hints_written             {}", r.hints_written)?;
    say!("segments_verified         {}", r.segments_verified)?;
    say!("damaged_found             {}", r.damaged_found)?;
    say!(
        "duration_ms               {:.3}",
        r.duration.as_secs_f64() * 1e3
    )?;
    say!("segments_now              {}", s.segments)?;
    say!("disk_bytes_now            {}", s.disk_bytes)?;
    say!("live_bytes_now            {}", s.live_bytes)?;
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench(a: BenchCmd) -> Result<ExitCode, String> {
    bench::run(&bench::BenchArgs {
        dir: a.dir,
        threads: a.threads,
        tasks: a.tasks.unwrap_or(0),
        keys: a.keys as u64,
        key_len: a.key_len,
        dup_ratio: a.dup_ratio,
        ttl: a.ttl,
        durability: a.durability,
        batch: a.batch,
        duration: a.duration,
        reopen: !a.no_reopen,
        short_ttl: a.short_ttl,
        short_ratio: a.short_ratio,
        expire: a.expire,
        hints_before_reopen: a.hints_before_reopen,
        no_hints: a.no_hints,
        lag: a.lag,
        settle: a.settle,
        stripes: a.stripes,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A count: digits, `_` allowed between them (`10_000_000`), more than 0.
fn positive(v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a positive whole number such as 4 or 10_000".to_string())
}

/// A fraction `0 <= F < 1` (`--dup-ratio`).
fn dup_ratio(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| (0.0..1.0).contains(r))
        .ok_or_else(|| "expected a fraction 0 <= F < 1, such as 0.1".to_string())
}

/// A fraction `0 <= F <= 1` (`--short-ratio`).
fn short_ratio(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| "expected a fraction 0 <= F <= 1, such as 0.6".to_string())
}

/// `--recovery`: `tolerate`, `strict` or `salvage`.
fn parse_recovery(s: &str) -> Result<RecoveryMode, String> {
    match s {
        "tolerate" => Ok(RecoveryMode::TolerateTornTail),
        "strict" => Ok(RecoveryMode::Strict),
        "salvage" => Ok(RecoveryMode::Salvage),
        _ => Err("expected tolerate, strict or salvage".into()),
    }
}

/// `--durability`: `sync`, `buffered` or `periodic:INTERVAL`.
fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => match s.strip_prefix("periodic:") {
            Some(iv) => parse_duration(iv)
                .map(Durability::Periodic)
                .map_err(|e| format!("periodic:INTERVAL: {e}")),
            None => {
                Err("expected sync, buffered or periodic:INTERVAL (e.g. periodic:100ms)".into())
            }
        },
    }
}

/// Parses `500ms`, `90s`, `15m`, `72h`, `3d`, `1w` and sums such as `1h30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    const FORMS: &str = "a number and a unit (ms, s, m, h, d or w), e.g. 500ms, 90s, 72h, 1h30m";
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(format!("empty duration: expected {FORMS}"));
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "expected a number at {rest:?}: a duration is {FORMS}"
            ));
        }
        let (num, tail) = rest.split_at(digits);
        let too_long = || format!("{s:?} is too long a duration");
        let n: u64 = num.parse().map_err(|_| too_long())?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "w" => n.checked_mul(604_800).map(Duration::from_secs),
            "" if tail.is_empty() => {
                return Err(format!("{num} has no unit: a duration is {FORMS}"))
            }
            "" => return Err(format!("unexpected {tail:?}: a duration is {FORMS}")),
            _ => return Err(format!("unknown unit {unit:?}: a duration is {FORMS}")),
        }
        .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a time as RFC 3339 in UTC, to the millisecond.
fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i128);
    let secs = (ms / 1000) as i64;
    let millis = (ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        for bad in ["", "h", "10", "10x", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        // Each error says what is wrong.
        let why = |s: &str| parse_duration(s).unwrap_err();
        assert!(why("5x").starts_with("unknown unit \"x\""), "{}", why("5x"));
        assert!(why("10").starts_with("10 has no unit"), "{}", why("10"));
        assert!(
            why("1.5h").starts_with("unexpected \".5h\""),
            "{}",
            why("1.5h")
        );
        assert!(
            why("-5s").starts_with("expected a number"),
            "{}",
            why("-5s")
        );
        assert!(why("").starts_with("empty duration"), "{}", why(""));
        for long in [
            "99999999999999999999d",
            "99999999999999999w",
            "18446744073709551615s1s",
        ] {
            assert!(why(long).contains("too long"), "{}", why(long));
        }
    }

    #[test]
    fn durability_names() {
        assert_eq!(parse_durability("sync"), Ok(Durability::Sync));
        assert_eq!(parse_durability("buffered"), Ok(Durability::Buffered));
        assert_eq!(
            parse_durability("periodic:100ms"),
            Ok(Durability::Periodic(Duration::from_millis(100)))
        );
        assert!(parse_durability("fast").is_err());
    }

    #[test]
    fn recovery_mode_names() {
        assert_eq!(
            parse_recovery("tolerate"),
            Ok(RecoveryMode::TolerateTornTail)
        );
        assert_eq!(parse_recovery("strict"), Ok(RecoveryMode::Strict));
        assert_eq!(parse_recovery("salvage"), Ok(RecoveryMode::Salvage));
        assert!(parse_recovery("Salvage").is_err());
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["oncelog", "stats", "--dir", "d"].iter().chain(args))
        };
        let Command::Stats(a) = parse(&["--recovery", "salvage"]).unwrap().command else {
            panic!("not stats");
        };
        assert_eq!(a.store.recovery, RecoveryMode::Salvage);
        let Command::Stats(a) = parse(&[]).unwrap().command else {
            panic!("not stats");
        };
        assert_eq!(a.store.recovery, RecoveryMode::TolerateTornTail);
        assert!(parse(&["--recovery"]).is_err());
        assert!(parse(&["--recovery", "lenient"]).is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("/tmp/a b"), r#""/tmp/a b""#);
        assert_eq!(json_string("q\"b\\n\n\t\u{1}é"), r#""q\"b\\n\n\t\u0001é""#);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
