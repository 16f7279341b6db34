//! oncelog-compare: the same insert-if-absent workload against oncelog and its peers
//! (dashmap, sled, redb, fjall, SQLite, Redis) at four durability levels, each case in a
//! fresh directory and a fresh child process. See README.md next to this crate.

mod chart;
mod measure;
mod peers;
mod resp;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peers::{DiskUse, Level, Peer, Res, KEY_LEN, PEERS};

const USAGE: &str = "\
oncelog-compare: insert-if-absent throughput, RAM and disk of oncelog and its peers

usage: bash benches/compare/run.sh [FLAGS]        (starts Redis, then runs this)
       cargo run --release -p oncelog-compare -- [FLAGS]

flags:
  --peers LIST        peers to run (default: oncelog,dashmap,sled,redb,fjall,sqlite,redis)
  --levels LIST       durability levels: os,fsync,fsync-batch,fsync-async (default: all)
  --threads LIST      thread counts (default: 1,2); at fsync-async, tokio worker threads
  --keys N            keys for the os level (default 1000000)
  --fsync-keys N      keys for the fsync level (default 20000)
  --batch-keys N      keys for the fsync-batch level (default 200000)
  --batch N           keys per durable commit at fsync-batch (default 1024)
  --async-keys N      keys for the fsync-async level (default 1000000)
  --in-flight N       requests in flight at fsync-async (default 10000): oncelog runs N
                      tasks, Redis N / P connections of P pipelined commands
  --pipeline P        Redis commands in flight per connection at fsync-async (default
                      100); must divide --in-flight
  --runs R            run each case R times, report the median (default 1)
  --quick             smoke run: 2000 / 200 / 4096 / 20000 keys, 200 fdatasync samples,
                      output to results/quick.md and results/quick.svg
  --sync-samples N    fdatasync probes for the raw disk latency (default 2000)
  --work-dir DIR      root for the case directories (default: $TMPDIR/oncelog-compare)
  --redis HOST:PORT   Redis server (default 127.0.0.1:6399); skipped if unreachable
  --out FILE          markdown report (default: benches/compare/results/results.md)
  --chart FILE        SVG chart (default: benches/compare/results/results.svg)
  -h, --help          this text
";

/// Exit code of a child whose peer gave a wrong answer.
const EXIT_WRONG: i32 = 3;

struct Config {
    peers: Vec<String>,
    levels: Vec<Level>,
    threads: Vec<usize>,
    keys: usize,
    fsync_keys: usize,
    batch_keys: usize,
    batch: usize,
    async_keys: usize,
    in_flight: usize,
    pipeline: usize,
    runs: usize,
    quick: bool,
    sync_samples: usize,
    work_dir: PathBuf,
    redis: String,
    out: PathBuf,
    chart: PathBuf,
    // Child mode (hidden): run one case and print one RESULT line.
    case: Option<String>,
    n: usize,
    dir: Option<PathBuf>,
}

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

fn parse_count(flag: &str, v: &str) -> Res<usize> {
    let clean: String = v.chars().filter(|&c| c != '_' && c != ',').collect();
    let n = match clean.strip_suffix(['k', 'K']) {
        Some(x) => x.parse::<usize>().map(|x| x * 1000),
        None => match clean.strip_suffix(['m', 'M']) {
            Some(x) => x.parse::<usize>().map(|x| x * 1_000_000),
            None => clean.parse::<usize>(),
        },
    };
    n.map_err(|_| format!("{flag}: not a count: {v:?}"))
}

fn parse_args(args: &[String]) -> Res<Config> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut c = Config {
        peers: PEERS.iter().map(|s| s.to_string()).collect(),
        levels: Level::ALL.to_vec(),
        threads: vec![1, 2],
        keys: if quick { 2000 } else { 1_000_000 },
        fsync_keys: if quick { 200 } else { 20_000 },
        batch_keys: if quick { 4096 } else { 200_000 },
        batch: 1024,
        async_keys: if quick { 20_000 } else { 1_000_000 },
        in_flight: 10_000,
        pipeline: 100,
        runs: 1,
        quick,
        sync_samples: if quick { 200 } else { 2000 },
        work_dir: std::env::temp_dir().join("oncelog-compare"),
        redis: "127.0.0.1:6399".into(),
        out: results_dir().join(if quick { "quick.md" } else { "results.md" }),
        chart: results_dir().join(if quick { "quick.svg" } else { "results.svg" }),
        case: None,
        n: 0,
        dir: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let no_value = ["--quick", "-h", "--help"];
        let value = if no_value.contains(&flag) {
            String::new()
        } else {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))?,
            }
        };
        match flag {
            "-h" | "--help" => return Err(String::new()),
            "--quick" => {}
            "--peers" => {
                c.peers = value.split(',').map(|s| s.trim().to_string()).collect();
                for p in &c.peers {
                    if !PEERS.contains(&p.as_str()) {
                        return Err(format!("--peers: unknown peer {p:?} (known: {PEERS:?})"));
                    }
                }
            }
            "--levels" => {
                c.levels = value
                    .split(',')
                    .map(|s| {
                        Level::parse(s.trim()).ok_or_else(|| {
                            format!(
                                "--levels: unknown level {s:?} (os, fsync, fsync-batch, fsync-async)"
                            )
                        })
                    })
                    .collect::<Res<_>>()?;
            }
            "--threads" => {
                c.threads = value
                    .split(',')
                    .map(|s| parse_count("--threads", s.trim()))
                    .collect::<Res<_>>()?;
                if c.threads.contains(&0) {
                    return Err("--threads: must be at least 1".into());
                }
            }
            "--keys" => c.keys = parse_count(flag, &value)?,
            "--fsync-keys" => c.fsync_keys = parse_count(flag, &value)?,
            "--batch-keys" => c.batch_keys = parse_count(flag, &value)?,
            "--batch" => c.batch = parse_count(flag, &value)?.max(1),
            "--async-keys" => c.async_keys = parse_count(flag, &value)?,
            "--in-flight" => c.in_flight = parse_count(flag, &value)?.max(1),
            "--pipeline" => c.pipeline = parse_count(flag, &value)?.max(1),
            "--runs" => c.runs = parse_count(flag, &value)?.max(1),
            "--sync-samples" => c.sync_samples = parse_count(flag, &value)?.max(1),
            "--work-dir" => c.work_dir = PathBuf::from(value),
            "--redis" => c.redis = value,
            "--out" => c.out = PathBuf::from(value),
            "--chart" => c.chart = PathBuf::from(value),
            "--case" => c.case = Some(value),
            "--n" => c.n = parse_count(flag, &value)?,
            "--dir" => c.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if !c.in_flight.is_multiple_of(c.pipeline) {
        return Err(format!(
            "--pipeline {} does not divide --in-flight {}: Redis needs whole connections",
            c.pipeline, c.in_flight
        ));
    }
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cfg.case.is_some() {
        return match child(&cfg) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    match parent(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keys

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62(mut v: u64, out: &mut [u8]) {
    for b in out {
        *b = BASE62[(v % 62) as usize];
        v /= 62;
    }
}

/// Key `i`: "evt_" + 28 base62 characters. The first 11 encode splitmix64(i), a bijection
/// of u64 (62^11 > 2^64), so distinct indices give distinct keys; the other 17 are filler
/// from the same generator.
fn write_key(i: u64, out: &mut [u8]) {
    out[..4].copy_from_slice(b"evt_");
    let a = splitmix64(i ^ 0x6f6e_6365_6c6f_6721);
    base62(a, &mut out[4..15]);
    let b = splitmix64(a);
    base62(b, &mut out[15..25]);
    base62(splitmix64(b), &mut out[25..32]);
}

fn make_keys(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n * KEY_LEN];
    for (i, k) in buf.chunks_exact_mut(KEY_LEN).enumerate() {
        write_key(i as u64, k);
    }
    buf
}

// ---------------------------------------------------------------------------------------
// Child: one case

struct CaseSpec {
    peer: String,
    level: Level,
    threads: usize,
}

fn parse_case(spec: &str) -> Res<CaseSpec> {
    let (mut peer, mut level, mut threads) = (None, None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("peer", v)) => peer = Some(v.to_string()),
            Some(("level", v)) => level = Level::parse(v),
            Some(("threads", v)) => threads = v.parse::<usize>().ok(),
            _ => return Err(format!("--case: bad part {part:?}")),
        }
    }
    match (peer, level, threads) {
        (Some(peer), Some(level), Some(threads)) if threads > 0 => Ok(CaseSpec {
            peer,
            level,
            threads,
        }),
        _ => Err(format!("--case: need peer=,level=,threads= in {spec:?}")),
    }
}

/// "key evt_... answered new, expected present".
fn wrong_answer(key: &[u8], new: bool) -> String {
    let word = |new: bool| if new { "new" } else { "present" };
    format!(
        "key {} answered {}, expected {}",
        String::from_utf8_lossy(key),
        word(new),
        word(!new)
    )
}

struct Worker {
    start: Instant,
    end: Instant,
    wrong: u64,
    example: Option<String>,
}

/// One phase over all keys, split evenly between threads. Returns the wall time and the
/// wrong answers (count and first example).
struct PhaseOut {
    elapsed: Duration,
    wrong: u64,
    example: Option<String>,
}

fn run_phase(
    peer: &dyn Peer,
    keys: &[u8],
    threads: usize,
    batch: Option<usize>,
    expect_new: bool,
    expires_ms: u64,
) -> Res<PhaseOut> {
    let n = keys.len() / KEY_LEN;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let barrier = &barrier;
                let mine = &keys[w * n / threads * KEY_LEN..(w + 1) * n / threads * KEY_LEN];
                scope.spawn(move || -> Res<Worker> {
                    let mut wrong = 0u64;
                    let mut example = None;
                    let mut check = |key: &[u8], new: bool| {
                        if new != expect_new {
                            wrong += 1;
                            example.get_or_insert_with(|| wrong_answer(key, new));
                        }
                    };
                    barrier.wait();
                    let start = Instant::now();
                    match batch {
                        None => {
                            for key in mine.chunks_exact(KEY_LEN) {
                                check(key, peer.insert(w, key, expires_ms)?);
                            }
                        }
                        Some(size) => {
                            let mut refs: Vec<&[u8]> = Vec::with_capacity(size);
                            for chunk in mine.chunks(size * KEY_LEN) {
                                refs.clear();
                                refs.extend(chunk.chunks_exact(KEY_LEN));
                                let answers = peer.insert_batch(w, &refs, expires_ms)?;
                                if answers.len() != refs.len() {
                                    return Err(format!(
                                        "insert_batch gave {} answers for {} keys",
                                        answers.len(),
                                        refs.len()
                                    ));
                                }
                                for (key, new) in refs.iter().zip(answers) {
                                    check(key, new);
                                }
                            }
                        }
                    }
                    Ok(Worker {
                        start,
                        end: Instant::now(),
                        wrong,
                        example,
                    })
                })
            })
            .collect();
        barrier.wait();
        // The phase runs from the first worker's start to the last one's end (timed in the
        // workers: on a busy machine this thread may be scheduled late).
        let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
        let mut out = PhaseOut {
            elapsed: Duration::ZERO,
            wrong: 0,
            example: None,
        };
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(w)) => {
                    first = Some(first.map_or(w.start, |f| f.min(w.start)));
                    last = Some(last.map_or(w.end, |l| l.max(w.end)));
                    out.wrong += w.wrong;
                    if out.example.is_none() {
                        out.example = w.example;
                    }
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| "a worker thread panicked".to_string());
                }
            }
        }
        if let (Some(f), Some(l)) = (first, last) {
            out.elapsed = l.duration_since(f);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

/// The `fsync-async` phase: every key through [`Peer::insert_in_flight`], timed from the
/// call (the tasks are spawned inside it) to the last answer.
fn run_phase_async(
    peer: &dyn Peer,
    rt: &tokio::runtime::Runtime,
    keys: &Arc<[u8]>,
    in_flight: usize,
    expect_new: bool,
) -> Res<PhaseOut> {
    let start = Instant::now();
    let answers = peer.insert_in_flight(rt, keys, in_flight)?;
    let elapsed = start.elapsed();
    let n = keys.len() / KEY_LEN;
    if answers.len() != n {
        return Err(format!("{} answers for {n} keys", answers.len()));
    }
    let mut out = PhaseOut {
        elapsed,
        wrong: 0,
        example: None,
    };
    for (key, new) in keys.chunks_exact(KEY_LEN).zip(answers) {
        if new != expect_new {
            out.wrong += 1;
            out.example.get_or_insert_with(|| wrong_answer(key, new));
        }
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "na".into(), |v| v.to_string())
}

/// Runs one case and prints `RESULT\tkey=value...`; returns the exit code.
fn child(cfg: &Config) -> Res<i32> {
    let spec = parse_case(cfg.case.as_deref().unwrap_or_default())?;
    let dir = cfg.dir.clone().ok_or("--case needs --dir")?;
    let n = cfg.n;
    if n < spec.threads {
        return Err(format!("--n {n} is smaller than the thread count"));
    }
    let what = format!(
        "{} {} threads={}",
        spec.peer,
        spec.level.name(),
        spec.threads
    );
    let keys: Arc<[u8]> = make_keys(n).into();
    let expires_ms = now_ms() + peers::TTL.as_millis() as u64;
    let batch = (spec.level == Level::FsyncBatch).then_some(cfg.batch);
    // At `fsync-async` the case's threads are the runtime's workers (this thread only
    // spawns the tasks and waits).
    let rt = if spec.level == Level::FsyncAsync {
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(spec.threads)
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?,
        )
    } else {
        None
    };

    let t = Instant::now();
    let peer = peers::open(
        &spec.peer,
        &peers::Ctx {
            level: spec.level,
            dir: &dir,
            threads: spec.threads,
            redis: &cfg.redis,
            rt: rt.as_ref(),
            in_flight: cfg.in_flight,
            pipeline: cfg.pipeline,
        },
    )?;
    let open_s = t.elapsed().as_secs_f64();
    let rss0 = measure::rss().map_err(|e| e.to_string())?;
    let srv0 = peer.server_memory()?;

    let mut phases = Vec::new();
    for (name, expect_new) in [("insert", true), ("duplicate", false)] {
        let out = match &rt {
            Some(rt) => run_phase_async(peer.as_ref(), rt, &keys, cfg.in_flight, expect_new),
            None => run_phase(
                peer.as_ref(),
                &keys,
                spec.threads,
                batch,
                expect_new,
                expires_ms,
            ),
        }
        .map_err(|e| format!("{what}: {name} phase: {e}"))?;
        if out.wrong > 0 {
            eprintln!();
            eprintln!("!!!!!!!! WRONG ANSWER: {what}, {name} phase !!!!!!!!");
            eprintln!(
                "!!!!!!!! {} of {n} answers wrong; first: {}",
                out.wrong,
                out.example.unwrap_or_default()
            );
            eprintln!();
            return Ok(EXIT_WRONG);
        }
        phases.push(out.elapsed.as_secs_f64());
    }

    let rss1 = measure::rss().map_err(|e| e.to_string())?;
    let srv1 = peer.server_memory()?;
    let t = Instant::now();
    let disk_use = peer.finish()?;
    let finish_s = t.elapsed().as_secs_f64();
    let disk = match disk_use {
        DiskUse::InDir => Some(measure::allocated_bytes(&dir).map_err(|e| e.to_string())? as i64),
        DiskUse::External(b) => Some(b as i64),
        DiskUse::Unknown => None,
    };
    let (ram, anon) = match (srv0, srv1) {
        (Some(a), Some(b)) => (Some(b as i64 - a as i64), None),
        _ => (
            Some((rss1.anon + rss1.file) as i64 - (rss0.anon + rss0.file) as i64),
            Some(rss1.anon as i64 - rss0.anon as i64),
        ),
    };
    println!(
        "RESULT\tinsert_s={}\tdup_s={}\topen_s={open_s}\tfinish_s={finish_s}\tram={}\tanon={}\tdisk={}",
        phases[0],
        phases[1],
        opt(ram),
        opt(anon),
        opt(disk)
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------
// Parent: orchestration

#[derive(Clone, Copy)]
struct Measured {
    insert_s: f64,
    dup_s: f64,
    finish_s: f64,
    wall_s: f64,
    ram: Option<f64>,
    anon: Option<f64>,
    disk: Option<f64>,
}

enum Outcome {
    Done(Vec<Measured>),
    Failed(String),
    Wrong,
}

struct Row {
    peer: String,
    level: Level,
    threads: usize,
    n: usize,
    outcome: Outcome,
}

impl Row {
    /// Median over runs of f(run).
    fn med(&self, f: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        let Outcome::Done(runs) = &self.outcome else {
            return None;
        };
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| measure::median(&v))
    }

    fn insert_ops(&self) -> Option<f64> {
        self.med(|m| Some(self.n as f64 / m.insert_s))
    }

    fn dup_ops(&self) -> Option<f64> {
        self.med(|m| Some(self.n as f64 / m.dup_s))
    }
}

fn parse_result(stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT\t"))?;
    let get = |k: &str| -> Option<Option<f64>> {
        let v = line
            .split('\t')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))?;
        Some(v.parse::<f64>().ok())
    };
    Some(Measured {
        insert_s: get("insert_s")??,
        dup_s: get("dup_s")??,
        finish_s: get("finish_s")??,
        wall_s: 0.0,
        ram: get("ram")?,
        anon: get("anon")?,
        disk: get("disk")?,
    })
}

fn keys_for(cfg: &Config, level: Level) -> usize {
    match level {
        Level::Os => cfg.keys,
        Level::Fsync => cfg.fsync_keys,
        Level::FsyncBatch => cfg.batch_keys,
        Level::FsyncAsync => cfg.async_keys,
    }
}

fn run_case(cfg: &Config, exe: &Path, peer: &str, level: Level, threads: usize) -> Outcome {
    let n = keys_for(cfg, level);
    let mut runs = Vec::new();
    for run in 0..cfg.runs {
        let dir = match tempfile::Builder::new()
            .prefix(&format!("{peer}-{}-t{threads}-", level.name()))
            .tempdir_in(&cfg.work_dir)
        {
            Ok(d) => d,
            Err(e) => return Outcome::Failed(format!("temp dir: {e}")),
        };
        let t = Instant::now();
        let output = Command::new(exe)
            .arg("--case")
            .arg(format!(
                "peer={peer},level={},threads={threads}",
                level.name()
            ))
            .arg("--n")
            .arg(n.to_string())
            .arg("--dir")
            .arg(dir.path())
            .arg("--redis")
            .arg(&cfg.redis)
            .arg("--batch")
            .arg(cfg.batch.to_string())
            .arg("--in-flight")
            .arg(cfg.in_flight.to_string())
            .arg("--pipeline")
            .arg(cfg.pipeline.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output();
        let wall_s = t.elapsed().as_secs_f64();
        drop(dir);
        let output = match output {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(format!("cannot start child: {e}")),
        };
        if output.status.code() == Some(EXIT_WRONG) {
            return Outcome::Wrong;
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        match parse_result(&stdout) {
            Some(m) if output.status.success() => {
                let m = Measured { wall_s, ..m };
                eprintln!(
                    "    run {}: insert {} ops/s ({:.2} s), duplicate {} ops/s ({:.2} s), finish {:.2} s, process {:.2} s",
                    run + 1,
                    thousands(n as f64 / m.insert_s),
                    m.insert_s,
                    thousands(n as f64 / m.dup_s),
                    m.dup_s,
                    m.finish_s,
                    m.wall_s
                );
                runs.push(m);
            }
            _ => {
                return Outcome::Failed(format!(
                    "child exited with {} and no result",
                    output.status
                ))
            }
        }
    }
    Outcome::Done(runs)
}

fn redis_reachable(addr: &str) -> bool {
    resp::Resp::connect(addr)
        .and_then(|mut c| c.cmd(&[b"PING"]))
        .is_ok_and(|r| matches!(r, resp::Reply::Simple(ref s) if s == "PONG"))
}

fn parent(cfg: &Config) -> Res<bool> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let created_root = !cfg.work_dir.exists();
    fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| format!("work dir {}: {e}", cfg.work_dir.display()))?;

    let machine = measure::machine(&cfg.work_dir);
    eprintln!(
        "machine: {}, {} cores, Linux {}, work dir {} on {}",
        machine.cpu,
        machine.cores,
        machine.kernel,
        cfg.work_dir.display(),
        machine.filesystem
    );
    let lat = measure::fdatasync_latencies(&cfg.work_dir, cfg.sync_samples)
        .map_err(|e| format!("fdatasync probe: {e}"))?;
    let (p50, p99) = (measure::quantile(&lat, 0.5), measure::quantile(&lat, 0.99));
    eprintln!(
        "fdatasync (4 KiB write + fdatasync, {} samples): median {p50:.0} µs, p99 {p99:.0} µs",
        lat.len()
    );

    let mut notes = Vec::new();
    let mut peers_run: Vec<&str> = cfg.peers.iter().map(String::as_str).collect();
    if peers_run.contains(&"redis") && !redis_reachable(&cfg.redis) {
        let msg = format!(
            "redis: skipped (no server at {}; run benches/compare/run.sh to start one)",
            cfg.redis
        );
        eprintln!("{msg}");
        notes.push(msg);
        peers_run.retain(|p| *p != "redis");
    }

    let mut cases = Vec::new();
    for &level in &cfg.levels {
        for &threads in &cfg.threads {
            for p in PEERS {
                if peers_run.contains(&p) && peers::supports(p, level) {
                    cases.push((p, level, threads));
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut all_ok = true;
    for (i, &(peer, level, threads)) in cases.iter().enumerate() {
        let n = keys_for(cfg, level);
        eprintln!(
            "[{}/{}] {peer}, level {}, {threads} thread(s), {n} keys",
            i + 1,
            cases.len(),
            level.name()
        );
        let outcome = run_case(cfg, &exe, peer, level, threads);
        match &outcome {
            Outcome::Done(_) => {}
            Outcome::Failed(e) => {
                all_ok = false;
                eprintln!("    FAILED: {e}");
            }
            Outcome::Wrong => {
                all_ok = false;
                eprintln!("    WRONG ANSWERS (see above): this is a bug");
            }
        }
        rows.push(Row {
            peer: peer.to_string(),
            level,
            threads,
            n,
            outcome,
        });
    }
    if created_root {
        let _ = fs::remove_dir(&cfg.work_dir);
    }

    let total = started.elapsed();
    let report = Report {
        cfg,
        machine: &machine,
        sync_p50: p50,
        sync_p99: p99,
        sync_samples: lat.len(),
        notes: &notes,
        rows: &rows,
        total,
    };
    let md = report.markdown();
    println!("{md}");
    write_file(&cfg.out, &md)?;
    let svg = report.svg();
    write_file(&cfg.chart, &svg)?;
    eprintln!(
        "wrote {} and {} (total {:.1} s)",
        cfg.out.display(),
        cfg.chart.display(),
        total.as_secs_f64()
    );
    if !all_ok {
        eprintln!("some cases failed or answered wrong: exit status 1");
    }
    Ok(all_ok)
}

fn write_file(path: &Path, text: &str) -> Res<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Report

/// 1234567.8 -> "1,234,568".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn per_key(v: Option<f64>, n: usize) -> String {
    match v {
        Some(b) if n > 0 => {
            let x = b / n as f64;
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        }
        _ => "—".into(),
    }
}

fn ratio(oncelog: Option<f64>, peer: Option<f64>) -> String {
    match (oncelog, peer) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 1.0 {
                format!("{r:.1}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "—".into(),
    }
}

fn threads_label(t: usize) -> String {
    if t == 1 {
        "1 thread".into()
    } else {
        format!("{t} threads")
    }
}

struct Report<'a> {
    cfg: &'a Config,
    machine: &'a measure::Machine,
    sync_p50: f64,
    sync_p99: f64,
    sync_samples: usize,
    notes: &'a [String],
    rows: &'a [Row],
    total: Duration,
}

impl Report<'_> {
    fn oncelog_ops(&self, level: Level, threads: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.peer == "oncelog" && r.level == level && r.threads == threads)
            .and_then(Row::insert_ops)
    }

    /// "1,000,000 at `os`, 20,000 at `fsync`, ..." for the levels that ran.
    fn key_counts(&self) -> String {
        self.key_counts_of(|_| true)
    }

    /// The same for the levels that ran and pass `keep`.
    fn key_counts_of(&self, keep: impl Fn(Level) -> bool) -> String {
        self.cfg
            .levels
            .iter()
            .filter(|&&l| keep(l))
            .map(|&l| {
                let extra = match l {
                    Level::FsyncBatch => format!(" ({} keys per durable commit)", self.cfg.batch),
                    Level::FsyncAsync => {
                        format!(" ({} in flight)", thousands(self.cfg.in_flight as f64))
                    }
                    _ => String::new(),
                };
                format!(
                    "{} at `{}`{extra}",
                    thousands(keys_for(self.cfg, l) as f64),
                    l.name()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn markdown(&self) -> String {
        let c = self.cfg;
        let m = self.machine;
        let mut o = String::new();
        let _ = writeln!(o, "# oncelog vs. peers: insert-if-absent\n");
        let _ = writeln!(o, "- Date: {}", measure::utc_now());
        let _ = writeln!(
            o,
            "- Machine: {}, {} cores, Linux {}; work dir on {}",
            m.cpu, m.cores, m.kernel, m.filesystem
        );
        let _ = writeln!(
            o,
            "- Disk: 4 KiB write + fdatasync, median **{:.0} µs** (p99 {:.0} µs, {} samples): one sync per insert caps a single writer near {} ops/s",
            self.sync_p50,
            self.sync_p99,
            self.sync_samples,
            thousands(1e6 / self.sync_p50)
        );
        let _ = writeln!(
            o,
            "- Keys per case: {}; 32-byte keys `evt_` + 28 base62 characters, value = expiry (now + 72 h, 8 bytes LE ms; Redis: `EX 259200`)",
            self.key_counts()
        );
        let _ = writeln!(
            o,
            "- Runs per case: {}{}; every case in a fresh directory and a fresh process{}",
            c.runs,
            if c.runs > 1 { " (medians shown)" } else { "" },
            if c.quick {
                "; **`--quick` smoke run: counts too small for conclusions**"
            } else {
                ""
            }
        );
        if c.levels.contains(&Level::FsyncAsync) {
            let _ = writeln!(
                o,
                "- `fsync-async`: {n} requests in flight from tasks on a tokio runtime with `threads` worker threads; \
                 oncelog: {n} tasks, each awaiting `claim_async` (`Sync`) for its keys in turn; \
                 Redis: {} connections × a pipeline of {} `SET NX EX` (`appendfsync always`)",
                c.in_flight / c.pipeline,
                c.pipeline,
                n = thousands(c.in_flight as f64),
            );
        }
        let _ = writeln!(o, "- Total wall time: {:.1} s", self.total.as_secs_f64());
        for note in self.notes {
            let _ = writeln!(o, "- {note}");
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Insert: first claim of every key (all must answer new). Duplicate: the same keys again (all must answer present). \
             The ratio is oncelog's insert ops/s divided by the peer's at the same level and thread count \
             (at `fsync-async`, the threads are the tokio runtime's worker threads that drive the requests). \
             RAM = growth of RssAnon + RssFile over both phases ÷ keys (Redis: growth of `used_memory`); \
             RSS anon = RssAnon growth alone; disk = allocated bytes (st_blocks × 512) after close ÷ keys \
             (Redis: growth of the AOF directory). oncelog pre-allocates 64 MiB segments, so its disk/key is only meaningful with many keys.\n"
        );
        let _ = writeln!(
            o,
            "| peer | durability | threads | insert ops/s | duplicate ops/s | insert: oncelog ÷ peer | RAM B/key | RSS anon B/key | disk B/key |"
        );
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
        for r in self.rows {
            let (ins, dup, rat, ram, anon, disk) = match &r.outcome {
                Outcome::Done(_) => {
                    let ins = r.insert_ops();
                    (
                        ins.map_or("—".into(), thousands),
                        r.dup_ops().map_or("—".into(), thousands),
                        ratio(self.oncelog_ops(r.level, r.threads), ins),
                        per_key(r.med(|m| m.ram), r.n),
                        per_key(r.med(|m| m.anon), r.n),
                        per_key(r.med(|m| m.disk), r.n),
                    )
                }
                Outcome::Failed(_) => {
                    let f = || "failed".to_string();
                    (f(), f(), f(), f(), f(), f())
                }
                Outcome::Wrong => {
                    let f = || "**WRONG**".to_string();
                    (f(), f(), f(), f(), f(), f())
                }
            };
            let name = if r.peer == "oncelog" {
                "**oncelog**".to_string()
            } else {
                r.peer.clone()
            };
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {ins} | {dup} | {rat} | {ram} | {anon} | {disk} |",
                r.level.name(),
                r.threads
            );
        }
        let _ = writeln!(o);
        if let (Some(dir), Some(name)) = (
            self.cfg.chart.parent(),
            self.cfg.chart.file_name().and_then(|n| n.to_str()),
        ) {
            if self.cfg.out.parent() == Some(dir) {
                let _ = writeln!(o, "![insert ops/s per peer, log scale]({name})\n");
            }
        }
        let _ = writeln!(
            o,
            "<details><summary>Seconds per case (median run): insert phase, duplicate phase, finish (final sync/close, not in the rates), whole child process</summary>\n"
        );
        let _ = writeln!(o, "| peer | durability | threads | keys | insert s | duplicate s | finish s | process s |");
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|");
        for r in self.rows {
            let f = |v: Option<f64>| v.map_or("—".into(), |x| format!("{x:.3}"));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.peer,
                r.level.name(),
                r.threads,
                r.n,
                f(r.med(|m| Some(m.insert_s))),
                f(r.med(|m| Some(m.dup_s))),
                f(r.med(|m| Some(m.finish_s))),
                f(r.med(|m| Some(m.wall_s))),
            );
        }
        let _ = writeln!(o, "\n</details>");
        o
    }

    fn svg(&self) -> String {
        let mut groups = Vec::new();
        for &level in &self.cfg.levels {
            for &threads in &self.cfg.threads {
                let bars: Vec<(String, f64)> = self
                    .rows
                    .iter()
                    .filter(|r| r.level == level && r.threads == threads)
                    .map(|r| (r.peer.clone(), r.insert_ops().unwrap_or(f64::NAN)))
                    .collect();
                if !bars.is_empty() {
                    groups.push(chart::Group {
                        label: format!("{} · {}", level.name(), threads_label(threads)),
                        bars,
                    });
                }
            }
        }
        let mut subtitle = vec![format!(
            "{}, {} cores, Linux {}; fdatasync median {:.0} µs; {}",
            self.machine.cpu,
            self.machine.cores,
            self.machine.kernel,
            self.sync_p50,
            measure::utc_now()
        )];
        // The async level gets a line of its own (one line for all would not fit).
        let blocking = self.key_counts_of(|l| l != Level::FsyncAsync);
        if !blocking.is_empty() {
            subtitle.push(format!("keys: {}", blocking.replace('`', "")));
        }
        if self.cfg.levels.contains(&Level::FsyncAsync) {
            subtitle.push(format!(
                "fsync-async: {} keys, {} in flight: oncelog tasks; Redis {} connections × pipeline {}; threads = tokio workers",
                thousands(self.cfg.async_keys as f64),
                thousands(self.cfg.in_flight as f64),
                self.cfg.in_flight / self.cfg.pipeline,
                self.cfg.pipeline
            ));
        }
        chart::render(
            "Insert-if-absent throughput: oncelog vs. peers",
            &subtitle,
            &groups,
        )
    }
}
