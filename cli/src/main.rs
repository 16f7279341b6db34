//! The `oncelog` command-line tool: claim keys, filter a stream of ids, inspect a store,
//! generate load.

mod bench;
mod measure;
mod tasks;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncelog::{
    fingerprint, Begin, Claim, Durability, KeyState, Options, RecoveryMode, Seen, Store,
    MAX_KEY_LEN,
};

const USAGE: &str = "\
oncelog — a persistent dedupe store

USAGE:
    oncelog claim  --dir DIR --ttl TTL [--durability MODE] KEY...
    oncelog filter --dir DIR --ttl TTL [--durability MODE] [--batch N]
    oncelog get    --dir DIR KEY...
    oncelog begin  --dir DIR --lease TTL [--fingerprint TEXT] [--hold] KEY
    oncelog remove --dir DIR [--durability MODE] KEY...
    oncelog stats  --dir DIR
    oncelog compact --dir DIR
    oncelog bench  --dir DIR [--threads N] [--async N] [--keys N] [--key-len N] [--dup-ratio F]
                   [--ttl TTL] [--durability MODE] [--batch N] [--duration TTL] [--no-reopen]
                   [--short-ttl TTL --short-ratio F] [--expire]
                   [--hints-before-reopen | --no-hints]

COMMANDS:
    claim    Claim each KEY; prints `new KEY` or `duplicate KEY ...`.
             Exit code 0 if every key was new, 1 if any was a duplicate.
    filter   Read ids from stdin, one per line; print only those seen for the first time
             (within TTL), in input order. A persistent `sort -u` for streams. Empty
             lines are skipped. Ids are claimed in batches of up to N (default 1024),
             one durable write per batch; output is flushed after each batch.
    get      Show each KEY's state without changing it: `claimed`, `completed` (with its
             attempt and outcome), `in-flight` (with its attempt and lease deadline), or
             `absent`. Exit code 0 if all are claimed, completed or in flight, 1 otherwise.
    begin    Begin KEY for --lease: prints `acquired KEY attempt=N deadline=...`, or
             `in-flight`, `done` or `mismatch` (--fingerprint: the payload's text, hashed)
             as `get` would. Exit code 0 if acquired, 1 otherwise. The lease is left to
             run out, as if the holder had crashed; with --hold the tool keeps it until
             stdin is closed, then abandons it.
    remove   Forget each KEY so it can be claimed again.
    stats    Print the store's counters and sizes.
    compact  Run maintenance now: sweep expired keys out of the index, delete segments
             nothing needs, compact sparse ones, write hint files. Prints what it did.
    bench    Claim generated event-id-like keys from N threads (default 2) until N keys
             (default 1000000) of --key-len bytes (default 32) are claimed or --duration
             is up; a fraction --dup-ratio (default 0) of claims repeat earlier keys.
             Prints claims/s, latency percentiles, what background maintenance did
             meanwhile, syncs, RAM and disk per key, then reopens the store and prints
             the recovery rate and how many segments were read from hint files (skip
             with --no-reopen). --batch N > 1 claims through claim_many. --async N:
             N concurrent tasks claim through claim_async (claim_many_async with
             --batch), run on --threads worker threads by a small built-in executor.
             Defaults:
             --ttl 72h, --durability buffered. Use an empty directory.
             --short-ttl TTL --short-ratio F: a fraction F (default 0) of claims (of
             batches, with --batch) get the short TTL instead, so segments turn sparse
             and background maintenance compacts them during the run.
             --expire: after the run, wait until every claim has expired, run
             compaction, and print index, resident memory and disk before and after.
             Background maintenance writes hint files as it goes, so the reopen reads
             the segments it reached from hints: --hints-before-reopen compacts before
             closing so every sealed segment has one; --no-hints writes none, so the
             reopen reads every segment.

OPTIONS:
    --dir DIR           The store directory (created if missing).
    --ttl TTL           How long a claim lasts: e.g. 500ms, 90s, 15m, 72h, 3d, 1w, 1h30m.
    --lease TTL         begin: how long the lease lasts.
    --durability MODE   sync (default), buffered, or periodic:INTERVAL (e.g. periodic:100ms).
    --recovery MODE     What opening the store tolerates (every command but bench):
                        tolerate (default: cut a torn tail of the newest segment, refuse
                        damage elsewhere), strict (refuse any damage, change nothing), or
                        salvage (rewrite damaged segments without what does not decode;
                        what was dropped is printed to stderr, and `stats` counts it).
                        Salvage loses the damaged records: a lost remove brings back the
                        claim it hid. Copy the directory first.
    --batch N           filter: most ids per batch (default 1024); bench: keys per
                        claim_many call (default 1: plain claim).

Keys are 1 to 4096 bytes. Exit code 2 means an error (printed to stderr).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("oncelog: {msg}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    dir: Option<PathBuf>,
    ttl: Option<Duration>,
    durability: Option<Durability>,
    batch: Option<usize>,
    threads: usize,
    tasks: usize,
    keys: u64,
    key_len: usize,
    dup_ratio: f64,
    duration: Option<Duration>,
    reopen: bool,
    short_ttl: Option<Duration>,
    short_ratio: f64,
    expire: bool,
    hints_before_reopen: bool,
    no_hints: bool,
    lease: Option<Duration>,
    fingerprint: Option<String>,
    hold: bool,
    recovery: Option<RecoveryMode>,
    rest: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        dir: None,
        ttl: None,
        durability: None,
        batch: None,
        threads: 2,
        tasks: 0,
        keys: 1_000_000,
        key_len: 32,
        dup_ratio: 0.0,
        duration: None,
        reopen: true,
        short_ttl: None,
        short_ratio: 0.0,
        expire: false,
        hints_before_reopen: false,
        no_hints: false,
        lease: None,
        fingerprint: None,
        hold: false,
        recovery: None,
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--dir" => out.dir = Some(PathBuf::from(value("--dir")?)),
            "--ttl" => out.ttl = Some(parse_duration(&value("--ttl")?)?),
            "--durability" => out.durability = Some(parse_durability(&value("--durability")?)?),
            "--batch" => out.batch = Some(positive("--batch", &value("--batch")?)?),
            "--threads" => out.threads = positive("--threads", &value("--threads")?)?,
            "--async" => out.tasks = positive("--async", &value("--async")?)?,
            "--keys" => out.keys = positive("--keys", &value("--keys")?)? as u64,
            "--key-len" => out.key_len = positive("--key-len", &value("--key-len")?)?,
            "--dup-ratio" => {
                let v = value("--dup-ratio")?;
                out.dup_ratio = v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..1.0).contains(r))
                    .ok_or_else(|| format!("--dup-ratio: expected 0 <= F < 1, got {v:?}"))?;
            }
            "--duration" => out.duration = Some(parse_duration(&value("--duration")?)?),
            "--no-reopen" => out.reopen = false,
            "--short-ttl" => out.short_ttl = Some(parse_duration(&value("--short-ttl")?)?),
            "--short-ratio" => {
                let v = value("--short-ratio")?;
                out.short_ratio = v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("--short-ratio: expected 0 <= F <= 1, got {v:?}"))?;
            }
            "--expire" => out.expire = true,
            "--hints-before-reopen" => out.hints_before_reopen = true,
            "--no-hints" => out.no_hints = true,
            "--lease" => out.lease = Some(parse_duration(&value("--lease")?)?),
            "--fingerprint" => out.fingerprint = Some(value("--fingerprint")?),
            "--hold" => out.hold = true,
            "--recovery" => out.recovery = Some(parse_recovery(&value("--recovery")?)?),
            "--" => out.rest.extend(it.by_ref().cloned()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n\n{USAGE}")),
            _ => out.rest.push(a.clone()),
        }
    }
    Ok(out)
}

fn positive(name: &str, v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{name}: expected a positive number, got {v:?}"))
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if cmd == "serve" {
        return cmd_serve(rest);
    }
    let a = parse_args(rest)?;
    match cmd.as_str() {
        "claim" => cmd_claim(&a),
        "filter" => cmd_filter(&a),
        "get" => cmd_get(&a),
        "begin" => cmd_begin(&a),
        "remove" => cmd_remove(&a),
        "stats" => cmd_stats(&a),
        "compact" => cmd_compact(&a),
        "bench" => cmd_bench(&a),
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

fn open(a: &Args) -> Result<Store, String> {
    let dir = a.dir.as_ref().ok_or("--dir is required")?;
    // One-shot commands: maintenance runs only when asked for (`compact`).
    let store = Options::new()
        .durability(a.durability.unwrap_or(Durability::Sync))
        .background_maintenance(false)
        .recovery_mode(a.recovery.unwrap_or_default())
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

fn need_ttl(a: &Args) -> Result<Duration, String> {
    a.ttl
        .ok_or_else(|| "--ttl is required (e.g. --ttl 72h)".to_string())
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

fn cmd_claim(a: &Args) -> Result<ExitCode, String> {
    let ttl = need_ttl(a)?;
    if a.rest.is_empty() {
        return Err("claim: give at least one KEY".into());
    }
    let store = open(a)?;
    let answers = store
        .claim_many(&a.rest, ttl)
        .map_err(|e| error_chain(&e))?;
    let mut any_dup = false;
    let mut out = io::stdout().lock();
    for (key, answer) in a.rest.iter().zip(&answers) {
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

fn cmd_filter(a: &Args) -> Result<ExitCode, String> {
    let ttl = need_ttl(a)?;
    if !a.rest.is_empty() {
        return Err("filter reads ids from stdin and takes no KEY arguments".into());
    }
    let store = open(a)?;
    // A reader thread feeds lines through a bounded channel so that a slow trickle of
    // input is still answered promptly: each batch takes what has arrived, up to --batch.
    let max_batch = a.batch.unwrap_or(1024);
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(max_batch * 4);
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

fn cmd_get(a: &Args) -> Result<ExitCode, String> {
    if a.rest.is_empty() {
        return Err("get: give at least one KEY".into());
    }
    let store = open(a)?;
    let mut all = true;
    for key in &a.rest {
        match store.get(key).map_err(|e| error_chain(&e))? {
            Some(seen) => println!("{}", describe(key, &seen)),
            None => {
                all = false;
                println!("absent {key}");
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

fn cmd_begin(a: &Args) -> Result<ExitCode, String> {
    let [key] = a.rest.as_slice() else {
        return Err("begin: give exactly one KEY".into());
    };
    let lease = a
        .lease
        .ok_or_else(|| "--lease is required (e.g. --lease 30s)".to_string())?;
    let store = open(a)?;
    let answer = match &a.fingerprint {
        Some(text) => store.begin_with_fingerprint(key, lease, &fingerprint(text.as_bytes())),
        None => store.begin(key, lease),
    }
    .map_err(|e| error_chain(&e))?;
    let acquired = match answer {
        Begin::Acquired(ticket) => {
            println!(
                "acquired {key} attempt={} deadline={}",
                ticket.attempt(),
                rfc3339(ticket.deadline())
            );
            if a.hold {
                // Hold the lease until stdin closes (or the process is killed).
                io::stdout().flush().map_err(|e| e.to_string())?;
                io::copy(&mut io::stdin().lock(), &mut io::sink()).map_err(|e| e.to_string())?;
                store.abandon(&ticket).map_err(|e| error_chain(&e))?;
                println!("abandoned {key} attempt={}", ticket.attempt());
            }
            true
        }
        Begin::InFlight { until } => {
            println!("in-flight {key} deadline={}", rfc3339(until));
            false
        }
        Begin::Done(seen) => {
            println!("done {}", describe(key, &seen));
            false
        }
        Begin::Mismatch(seen) => {
            println!("mismatch {}", describe(key, &seen));
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

fn cmd_remove(a: &Args) -> Result<ExitCode, String> {
    if a.rest.is_empty() {
        return Err("remove: give at least one KEY".into());
    }
    let store = open(a)?;
    for key in &a.rest {
        let removed = store.remove(key).map_err(|e| error_chain(&e))?;
        println!("{} {key}", if removed { "removed" } else { "absent" });
    }
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_stats(a: &Args) -> Result<ExitCode, String> {
    let store = open(a)?;
    let s = store.stats();
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    let rows: [(&str, String); 18] = [
        ("dir", store.path().display().to_string()),
        ("keys", s.keys.to_string()),
        ("live_keys", s.live_keys.to_string()),
        ("expired_unswept", s.expired_unswept.to_string()),
        ("segments", s.segments.to_string()),
        ("disk_bytes", s.disk_bytes.to_string()),
        ("live_bytes", s.live_bytes.to_string()),
        ("index_bytes", s.index_bytes.to_string()),
        ("recovered_records", s.recovered_records.to_string()),
        (
            "recovery_hinted_segments",
            s.recovery_hinted_segments.to_string(),
        ),
        (
            "recovery_truncated_bytes",
            s.recovery_truncated_bytes.to_string(),
        ),
        ("recovery_time_ms", ms(s.recovery_time)),
        (
            "recovery_salvaged_bytes",
            s.recovery_salvaged_bytes.to_string(),
        ),
        (
            "recovery_salvaged_places",
            s.recovery_salvaged_places.to_string(),
        ),
        (
            "recovery_salvaged_segments",
            s.recovery_salvaged_segments.to_string(),
        ),
        ("compactions", s.compactions.to_string()),
        ("segments_deleted", s.segments_deleted.to_string()),
        ("bytes_reclaimed", s.bytes_reclaimed.to_string()),
    ];
    for (name, value) in rows {
        println!("{name:<28}{value}");
    }
    println!("(compactions, segments_deleted and bytes_reclaimed count since this open)");
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_compact(a: &Args) -> Result<ExitCode, String> {
    let store = open(a)?;
    let r = store.compact().map_err(|e| error_chain(&e))?;
    let s = store.stats();
    println!("entries_swept             {}", r.entries_swept);
    println!("segments_read             {}", r.segments_read);
    println!("segments_written          {}", r.segments_written);
    println!("segments_deleted          {}", r.segments_deleted);
    println!("bytes_read                {}", r.bytes_read);
    println!("bytes_written             {}", r.bytes_written);
    println!("bytes_reclaimed           {}", r.bytes_reclaimed);
    println!("hints_written             {}", r.hints_written);
    println!(
        "duration_ms               {:.3}",
        r.duration.as_secs_f64() * 1e3
    );
    println!("segments_now              {}", s.segments);
    println!("disk_bytes_now            {}", s.disk_bytes);
    println!("live_bytes_now            {}", s.live_bytes);
    store.close().map_err(|e| error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench(a: &Args) -> Result<ExitCode, String> {
    let dir = a.dir.clone().ok_or("--dir is required")?;
    if a.hints_before_reopen && a.no_hints {
        return Err("--hints-before-reopen and --no-hints contradict each other".into());
    }
    bench::run(&bench::BenchArgs {
        dir,
        threads: a.threads,
        tasks: a.tasks,
        keys: a.keys,
        key_len: a.key_len,
        dup_ratio: a.dup_ratio,
        ttl: a.ttl.unwrap_or(Duration::from_secs(72 * 3600)),
        durability: a.durability.unwrap_or(Durability::Buffered),
        batch: a.batch.unwrap_or(1),
        duration: a.duration,
        reopen: a.reopen,
        short_ttl: a.short_ttl,
        short_ratio: a.short_ratio,
        expire: a.expire,
        hints_before_reopen: a.hints_before_reopen,
        no_hints: a.no_hints,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_recovery(s: &str) -> Result<RecoveryMode, String> {
    match s {
        "tolerate" => Ok(RecoveryMode::TolerateTornTail),
        "strict" => Ok(RecoveryMode::Strict),
        "salvage" => Ok(RecoveryMode::Salvage),
        _ => Err(format!(
            "--recovery: expected tolerate, strict or salvage, got {s:?}"
        )),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => match s.strip_prefix("periodic:") {
            Some(iv) => Ok(Durability::Periodic(parse_duration(iv)?)),
            None => Err(format!(
                "--durability: expected sync, buffered or periodic:INTERVAL, got {s:?}"
            )),
        },
    }
}

/// Parses `500ms`, `90s`, `15m`, `72h`, `3d`, `1w` and sums such as `1h30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 500ms, 90s, 15m, 72h, 3d, 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "w" => n.checked_mul(604_800).map(Duration::from_secs),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
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

fn cmd_serve(args: &[String]) -> Result<ExitCode, String> {
    let mut dir = None;
    let mut config = oncelog_cli::serve::Config::new("");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--listen" => config.listen = value.clone(),
            "--durability" => config.durability = parse_durability(value)?,
            "--requirepass" => config.requirepass = Some(value.clone()),
            "--max-clients" => config.max_clients = positive("--max-clients", value)?,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    config.dir = dir.ok_or("--dir is required")?;
    oncelog_cli::serve::run(config, Options::new())?;
    Ok(ExitCode::SUCCESS)
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
        for bad in ["", "h", "10", "10x", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
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
        let a = parse_args(&["--recovery".into(), "salvage".into()]).unwrap();
        assert_eq!(a.recovery, Some(RecoveryMode::Salvage));
        assert!(parse_args(&["--recovery".into()]).is_err());
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
