//! The async API (`claim_async`, `begin_async`, … `sync_async`): exactly once across
//! thousands of tasks, durable before acknowledged under power cuts and kill -9, every
//! pending future failed by a failed sync, cancellation at every await point, and the same
//! futures on more than one executor (tokio, futures' own, smol).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::powercut::{PowerSim, Rng};
use oncelog::{Begin, Claim, ClaimRequest, Durability, Error, IoHook, IoOp, Options, Store};

const TTL: Duration = Duration::from_secs(3600);
const LEASE: Duration = Duration::from_secs(600);

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .unwrap()
}

/// Runs `f` on `rt`, failing instead of hanging if it has not finished in two minutes (a
/// lost wake-up would otherwise hang the test).
fn bounded<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), f)
            .await
            .expect("the workload did not finish: a future was never woken")
    })
}

fn sync_store(dir: &Path) -> Store {
    Options::new()
        .durability(Durability::Sync)
        .segment_size(oncelog::MIN_SEGMENT_SIZE)
        .open(dir)
        .unwrap()
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

/// Which way task `i` claims its key: each async method that can take a key first.
async fn first_time(store: &Store, i: usize, key: &str) -> oncelog::Result<bool> {
    Ok(match i % 5 {
        0 => store.claim_async(key, TTL).await?.is_new(),
        1 => store.claim_many_async(&[key, key], TTL).await?[0].is_new(),
        4 => {
            let request = ClaimRequest::new(key, TTL).with_outcome(b"first");
            let answers = store.claim_batch_async(&[request, request]).await?;
            // The repeat is a duplicate of the first, whoever claimed the key.
            let Claim::Duplicate(seen) = &answers[1] else {
                panic!("a repeat within a batch answered New");
            };
            if answers[0].is_new() {
                assert_eq!(seen.outcome.as_deref(), Some(&b"first"[..]));
            }
            answers[0].is_new()
        }
        2 => match store.begin_async(key, LEASE).await? {
            Begin::Acquired(t) => {
                store.extend_async(&t, LEASE).await?;
                store.complete_async(&t, b"done", TTL).await?;
                true
            }
            _ => false,
        },
        _ => match store
            .begin_with_fingerprint_async(key, LEASE, &oncelog::fingerprint(key.as_bytes()))
            .await?
        {
            Begin::Acquired(t) => {
                store.complete_async(&t, b"done", TTL).await?;
                true
            }
            _ => false,
        },
    })
}

#[test]
fn thousands_of_tasks_claim_each_key_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(sync_store(dir.path()));
    let firsts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let rt = runtime(2);
    bounded(&rt, async {
        let mut tasks = Vec::new();
        for i in 0..4000usize {
            let (store, firsts) = (Arc::clone(&store), Arc::clone(&firsts));
            let key = format!("evt_{:04}", (i * 7919) % 600);
            tasks.push(tokio::spawn(assert_send(async move {
                if first_time(&store, i, &key).await.unwrap() {
                    *firsts.lock().unwrap().entry(key).or_default() += 1;
                }
            })));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let firsts = firsts.lock().unwrap();
    assert_eq!(firsts.len(), 600, "some key was never claimed");
    for (key, n) in firsts.iter() {
        assert_eq!(*n, 1, "{key} was claimed {n} times");
    }
    let s = store.stats();
    assert_eq!(s.new + s.acquired, 600);
    assert_eq!(store.stats().durability_waiters, 0);
    // Removing and claiming again, asynchronously too.
    bounded(&rt, async {
        assert!(store.remove_async("evt_0000").await.unwrap());
        assert!(store.claim_async("evt_0000", TTL).await.unwrap().is_new());
        store.sync_async().await.unwrap();
    });
}

#[test]
fn the_same_futures_run_on_other_executors() {
    let dir = tempfile::tempdir().unwrap();
    let store = sync_store(dir.path());
    futures::executor::block_on(async {
        assert_eq!(store.claim_async("a", TTL).await.unwrap(), Claim::New);
        assert!(!store.claim_async("a", TTL).await.unwrap().is_new());
        let many = store.claim_many_async(&["b", "c", "b"], TTL).await.unwrap();
        assert_eq!(many.iter().filter(|c| c.is_new()).count(), 2);
        let Begin::Acquired(t) = store.begin_async("d", LEASE).await.unwrap() else {
            panic!("d was free")
        };
        store.abandon_async(&t).await.unwrap();
        assert!(store.remove_async("a").await.unwrap());
        assert!(store.get_async("a").await.unwrap().is_none());
        assert!(store
            .claim_with_outcome_async("e", b"out", TTL)
            .await
            .unwrap()
            .is_new());
        let seen = store.get_async("e").await.unwrap().expect("e is claimed");
        assert_eq!(seen.outcome.as_deref(), Some(&b"out"[..]));
        store.sync_async().await.unwrap();
    });
    // A current-thread tokio runtime: the commit thread wakes its tasks from outside.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    bounded(&rt, async {
        let Begin::Acquired(t) = store.begin_async("d", LEASE).await.unwrap() else {
            panic!("d was abandoned")
        };
        assert_eq!(t.attempt(), 2);
        assert!(store.claim_async("a", TTL).await.unwrap().is_new());
    });
    // smol's executor, from several threads of its own.
    let store = Arc::new(store);
    let ex = smol::Executor::new();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            ex.spawn(async move { store.claim_async(format!("s{i}"), TTL).await })
        })
        .collect();
    let all_new = std::thread::scope(|scope| {
        let (stop, done) = smol::channel::unbounded::<()>();
        for _ in 0..2 {
            let (ex, done) = (&ex, done.clone());
            scope.spawn(move || smol::block_on(ex.run(done.recv())));
        }
        let answers = smol::block_on(ex.run(async {
            let mut news = 0;
            for t in tasks {
                news += usize::from(t.await.unwrap().is_new());
            }
            news
        }));
        drop(stop);
        answers
    });
    assert_eq!(all_new, 64);
    let store = Arc::try_unwrap(store).expect("one owner left");
    drop(store);
    let store = sync_store(dir.path());
    for k in ["a", "b", "c", "d", "s0", "s63"] {
        assert!(store.get(k).unwrap().is_some(), "{k} lost");
    }
}

/// Power cuts taken while thousands of claims are in flight: every claim whose future had
/// resolved `New` before a cut began is in the directory that cut leaves.
#[test]
fn a_resolved_claim_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let sim = PowerSim::new(dir.path());
    let store = Arc::new(
        Options::new()
            .durability(Durability::Sync)
            .segment_size(oncelog::MIN_SEGMENT_SIZE)
            .background_maintenance(false)
            .io_hook(sim.clone())
            .open(dir.path())
            .unwrap(),
    );
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let rt = runtime(2);
    let work = {
        let (store, acked, done) = (Arc::clone(&store), Arc::clone(&acked), Arc::clone(&done));
        rt.spawn(async move {
            let mut tasks = Vec::new();
            for t in 0..200u32 {
                let (store, acked) = (Arc::clone(&store), Arc::clone(&acked));
                tasks.push(tokio::spawn(async move {
                    for i in 0..60u32 {
                        let key = format!("k{t:03}_{i:02}");
                        if store.claim_async(&key, TTL).await.unwrap().is_new() {
                            acked.lock().unwrap().push(key);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = Rng(7);
    let mut cuts = 0;
    let mut checked = 0;
    while !done.load(Ordering::SeqCst) || cuts < 3 {
        let before: Vec<String> = acked.lock().unwrap().clone();
        let out = root.path().join(format!("cut{cuts}"));
        sim.cut(&out, &mut rng);
        let reopened = Options::new()
            .background_maintenance(false)
            .open(&out)
            .unwrap();
        for k in &before {
            assert!(
                reopened.get(k).unwrap().is_some(),
                "cut {cuts}: {k} was acknowledged, then lost"
            );
        }
        checked += before.len();
        cuts += 1;
    }
    bounded(&rt, work).unwrap();
    assert_eq!(acked.lock().unwrap().len(), 12_000);
    eprintln!("{cuts} cuts, {checked} acknowledged claims checked");
}

/// Set in the child process of the kill test.
const CHILD: &str = "ONCELOG_TEST_ASYNC_KILL_DIR";

fn kill_child(dir: &str) -> ! {
    let store = Arc::new(sync_store(Path::new(dir)));
    let rt = runtime(2);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    bounded(&rt, async {
        let mut tasks = Vec::new();
        for t in 0..64u32 {
            let (store, out) = (Arc::clone(&store), Arc::clone(&out));
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("k{t:02}_{i:06}");
                    if store.claim_async(&key, TTL).await.unwrap().is_new() {
                        use std::io::Write;
                        let mut o = out.lock().unwrap();
                        let _ = writeln!(o, "acked {key}");
                        let _ = o.flush();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    std::process::exit(0);
}

/// A child claims asynchronously from 64 tasks and prints each key once its future
/// resolved; it is killed with SIGKILL mid-stream. Every printed key is claimed after reopen.
#[test]
fn a_resolved_claim_survives_kill_9() {
    if let Ok(dir) = std::env::var(CHILD) {
        kill_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_resolved_claim_survives_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The test harness prints lines of its own: only `acked KEY` lines count.
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| l.strip_prefix("acked ").map(str::to_string));
    let mut acked: Vec<String> = lines.by_ref().take(3000).collect();
    // SIGKILL: no destructors, no syncs.
    child.kill().unwrap();
    // What the child printed before it died was acknowledged before it was printed.
    acked.extend(lines);
    child.wait().unwrap();
    assert!(acked.len() >= 3000, "the child stopped early");
    let store = sync_store(dir.path());
    for k in &acked {
        assert!(
            store.get(k).unwrap().is_some(),
            "{k} was acknowledged, then lost"
        );
    }
    eprintln!("{} acknowledged claims survived kill -9", acked.len());
}

/// Fails every data sync of a segment once armed.
#[derive(Default)]
struct FailSyncs(AtomicBool);

impl IoHook for FailSyncs {
    fn before(&self, op: &IoOp<'_>) -> std::io::Result<()> {
        let data_sync = matches!(op, IoOp::SyncRange { path, .. }
            if path.extension().is_some_and(|e| e == "olog"));
        if data_sync && self.0.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

#[test]
fn a_failed_sync_fails_every_pending_future_and_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailSyncs::default());
    let store = Arc::new(
        Options::new()
            .io_hook(hook.clone())
            .open(dir.path())
            .unwrap(),
    );
    let rt = runtime(2);
    bounded(&rt, async {
        assert!(store.claim_async("before", TTL).await.unwrap().is_new());
        hook.0.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.claim_async(format!("k{i}"), TTL).await })
            })
            .collect();
        let mut io = 0;
        for t in tasks {
            match t.await.unwrap() {
                Err(Error::Io { source, .. }) => {
                    assert_eq!(source.raw_os_error(), Some(libc::EIO));
                    io += 1;
                }
                Err(Error::Poisoned { .. }) => {}
                other => panic!("a claim during failing syncs: {other:?}"),
            }
        }
        assert!(io >= 1, "nobody got the sync's own error");
        hook.0.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.claim_async("after", TTL).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            store.sync_async().await,
            Err(Error::Poisoned { .. })
        ));
    });
    assert_eq!(store.stats().durability_waiters, 0);
    drop(store);
    let store = Options::new().open(dir.path()).unwrap();
    assert!(store.get("before").unwrap().is_some());
}

/// Futures dropped before their first poll, at their wait for durability, and raced
/// against a ready branch: nothing hangs, no waiter is left behind, and every claim that
/// was answered is there after a reopen.
#[test]
fn cancelled_futures_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(sync_store(dir.path()));
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let dropped = Arc::new(AtomicU64::new(0));
    let rt = runtime(2);
    bounded(&rt, async {
        // Never polled: nothing happens.
        drop(store.claim_async("never", TTL));
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let (store, answered, dropped) = (
                Arc::clone(&store),
                Arc::clone(&answered),
                Arc::clone(&dropped),
            );
            tasks.push(tokio::spawn(async move {
                let key = format!("c{i:05}");
                let outcome = match i % 3 {
                    // A timeout of zero: polled once (the claim is made), then dropped.
                    0 => tokio::time::timeout(Duration::ZERO, store.claim_async(&key, TTL))
                        .await
                        .ok(),
                    // Raced against a branch that is ready at once.
                    1 => tokio::select! {
                        biased;
                        _ = std::future::ready(()) => None,
                        c = store.claim_async(&key, TTL) => Some(c),
                    },
                    // Raced against a branch that is ready after its first poll.
                    _ => tokio::select! {
                        c = store.claim_async(&key, TTL) => Some(c),
                        _ = tokio::task::yield_now() => None,
                    },
                };
                match outcome {
                    Some(c) => {
                        assert!(c.unwrap().is_new());
                        answered.lock().unwrap().push(key);
                    }
                    None => {
                        dropped.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // More work after all that, and a sync that covers whatever the dropped made.
        assert!(store.claim_async("after", TTL).await.unwrap().is_new());
        store.sync_async().await.unwrap();
    });
    assert_eq!(
        store.stats().durability_waiters,
        0,
        "a dropped future left a waiter"
    );
    assert!(dropped.load(Ordering::SeqCst) > 0, "nothing was cancelled");
    let answered = answered.lock().unwrap().clone();
    drop(store);
    let store = sync_store(dir.path());
    assert!(
        store.get("never").unwrap().is_none(),
        "an unpolled future claimed"
    );
    assert!(store.get("after").unwrap().is_some());
    for k in &answered {
        assert!(
            store.get(k).unwrap().is_some(),
            "{k} was answered, then lost"
        );
    }
    eprintln!(
        "{} answered, {} dropped mid-way",
        answered.len(),
        dropped.load(Ordering::SeqCst)
    );
}
