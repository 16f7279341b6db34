//! The peers: one small trait for "insert if absent, tell me whether it was new", and one
//! implementation per engine, each opened for a durability level in a case directory.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::measure;
use crate::resp::{AsyncResp, Reply, Resp};

/// Errors are plain messages: the harness only reports them.
pub type Res<T> = Result<T, String>;

/// Claims expire after 72 hours (Stripe retries for three days).
pub const TTL: Duration = Duration::from_secs(72 * 3600);

/// Every key is this long: `evt_` + 28 base62 characters.
pub const KEY_LEN: usize = 32;

/// When an insert counts as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// In the OS page cache (or the engine's nearest equivalent); no sync per operation.
    Os,
    /// Durable before acknowledged, one operation per durable commit.
    Fsync,
    /// Durable before acknowledged, one durable commit per batch of keys.
    FsyncBatch,
    /// Durable before acknowledged, one operation per request, many requests in flight at
    /// once from tasks on a tokio runtime (the case's threads are its worker threads).
    FsyncAsync,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Os,
        Level::Fsync,
        Level::FsyncBatch,
        Level::FsyncAsync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Os => "os",
            Level::Fsync => "fsync",
            Level::FsyncBatch => "fsync-batch",
            Level::FsyncAsync => "fsync-async",
        }
    }

    /// Whether an insert is acknowledged only once durable.
    pub fn durable(self) -> bool {
        self != Level::Os
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// Every peer, in table order (oncelog first: the others are compared to it).
pub const PEERS: [&str; 7] = [
    "oncelog", "dashmap", "sled", "redb", "fjall", "sqlite", "redis",
];

/// dashmap is the in-memory ceiling: it has no durable levels. `fsync-async` needs an
/// async client: oncelog's `claim_async`, and Redis over non-blocking sockets; the embedded
/// peers have only blocking calls (on a thread pool they would be the `fsync` level again).
pub fn supports(peer: &str, level: Level) -> bool {
    match level {
        Level::Os => true,
        Level::Fsync | Level::FsyncBatch => peer != "dashmap",
        Level::FsyncAsync => matches!(peer, "oncelog" | "redis"),
    }
}

/// One engine, opened for one level. `worker` is the calling thread's index (0..threads),
/// for peers that keep one connection per thread.
pub trait Peer: Send + Sync {
    /// Inserts `key` if it is absent; `Ok(true)` if this call inserted it.
    fn insert(&self, worker: usize, key: &[u8], expires_ms: u64) -> Res<bool>;

    /// The same for each key, with one durable commit for the whole batch.
    fn insert_batch(&self, worker: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>>;

    /// The same for every key of `keys` (`KEY_LEN` bytes each), one durable operation per
    /// key, with `in_flight` requests outstanding at any time, driven by tasks on `rt`; the
    /// answers in key order. Only the peers that [`supports`] `fsync-async` implement it.
    fn insert_in_flight(&self, rt: &Runtime, keys: &Arc<[u8]>, in_flight: usize) -> Res<Vec<bool>> {
        let _ = (rt, keys, in_flight);
        Err("this peer has no async client".into())
    }

    /// Memory reported by the peer itself, for peers whose data lives in another process
    /// (Redis `used_memory`); `None` means "measure this process's RSS".
    fn server_memory(&self) -> Res<Option<u64>> {
        Ok(None)
    }

    /// Makes everything durable and closes; says where to measure the data on disk.
    fn finish(self: Box<Self>) -> Res<DiskUse>;
}

/// Where a peer's data is on disk, as told by [`Peer::finish`].
pub enum DiskUse {
    /// In the case directory: measure that.
    InDir,
    /// Outside it (Redis: growth of the server's AOF), in allocated bytes.
    External(u64),
    /// Not measurable from here (for example a Redis server on another machine).
    Unknown,
}

/// Where and how to open a peer.
pub struct Ctx<'a> {
    pub level: Level,
    pub dir: &'a Path,
    pub threads: usize,
    pub redis: &'a str,
    /// At `fsync-async`: the runtime whose tasks drive the peer, the requests in flight,
    /// and (Redis) the pipeline depth per connection: in_flight / pipeline connections.
    pub rt: Option<&'a Runtime>,
    pub in_flight: usize,
    pub pipeline: usize,
}

pub fn open(peer: &str, ctx: &Ctx<'_>) -> Res<Box<dyn Peer>> {
    Ok(match peer {
        "oncelog" => Box::new(Oncelog::open(ctx)?),
        "dashmap" => Box::new(Dash::default()),
        "sled" => Box::new(Sled::open(ctx)?),
        "redb" => Box::new(Redb::open(ctx)?),
        "fjall" => Box::new(Fjall::open(ctx)?),
        "sqlite" => Box::new(Sqlite::open(ctx)?),
        "redis" => Box::new(Redis::open(ctx)?),
        other => return Err(format!("unknown peer {other:?}")),
    })
}

fn err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Part `i` of `parts` of `0..n` (contiguous, sizes differing by at most one).
pub fn share(n: usize, parts: usize, i: usize) -> Range<usize> {
    i * n / parts..(i + 1) * n / parts
}

fn key_at(keys: &[u8], i: usize) -> &[u8] {
    &keys[i * KEY_LEN..(i + 1) * KEY_LEN]
}

/// Spawns every task on `rt` and joins them: their answers, concatenated in task order.
fn run_tasks<F>(rt: &Runtime, tasks: Vec<F>) -> Res<Vec<bool>>
where
    F: Future<Output = Res<Vec<bool>>> + Send + 'static,
{
    rt.block_on(async move {
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let mut answers = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.await {
                Ok(Ok(a)) => answers.extend(a),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert_with(|| format!("a task failed: {e}"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(answers),
        }
    })
}

// ---------------------------------------------------------------------------------------
// oncelog

struct Oncelog {
    // Shared with the tasks of `fsync-async`.
    store: Arc<oncelog::Store>,
}

impl Oncelog {
    fn open(ctx: &Ctx<'_>) -> Res<Oncelog> {
        let durability = if ctx.level.durable() {
            oncelog::Durability::Sync
        } else {
            oncelog::Durability::Buffered
        };
        let store = oncelog::Options::new()
            .durability(durability)
            .open(ctx.dir.join("oncelog"))
            .map_err(s)
            .map_err(err("oncelog open"))?;
        Ok(Oncelog {
            store: Arc::new(store),
        })
    }
}

impl Peer for Oncelog {
    // oncelog computes the expiry itself from the TTL (now + 72 h, the same value).
    fn insert(&self, _: usize, key: &[u8], _expires_ms: u64) -> Res<bool> {
        self.store.claim(key, TTL).map(|c| c.is_new()).map_err(s)
    }

    fn insert_batch(&self, _: usize, keys: &[&[u8]], _expires_ms: u64) -> Res<Vec<bool>> {
        let answers = self.store.claim_many(keys, TTL).map_err(s)?;
        Ok(answers.iter().map(|c| c.is_new()).collect())
    }

    /// One task per request in flight, each claiming its share of the keys one after
    /// another with `claim_async`; the commit thread's syncs wake them.
    fn insert_in_flight(&self, rt: &Runtime, keys: &Arc<[u8]>, in_flight: usize) -> Res<Vec<bool>> {
        let n = keys.len() / KEY_LEN;
        let syncs = self.store.stats().syncs;
        let tasks = (0..in_flight)
            .map(|t| {
                let (store, keys) = (Arc::clone(&self.store), Arc::clone(keys));
                let mine = share(n, in_flight, t);
                async move {
                    let mut answers = Vec::with_capacity(mine.len());
                    for i in mine {
                        let claim = store.claim_async(key_at(&keys, i), TTL).await;
                        answers.push(claim.map_err(s)?.is_new());
                    }
                    Ok(answers)
                }
            })
            .collect();
        let answers = run_tasks(rt, tasks)?;
        let syncs = self.store.stats().syncs - syncs;
        if syncs > 0 {
            eprintln!(
                "    oncelog: {syncs} syncs, {:.0} claims per sync",
                n as f64 / syncs as f64
            );
        }
        Ok(answers)
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        let store = Arc::try_unwrap(self.store).map_err(|_| "oncelog: store still shared")?;
        store.close().map_err(s)?;
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// dashmap: the in-memory ceiling

#[derive(Default)]
struct Dash {
    map: dashmap::DashMap<Box<[u8]>, u64>,
}

impl Peer for Dash {
    fn insert(&self, _: usize, key: &[u8], expires_ms: u64) -> Res<bool> {
        // A present key stays present, so a shared-lock look first is exact; the entry
        // (write lock) decides between racing inserts of an absent key.
        if self.map.contains_key(key) {
            return Ok(false);
        }
        Ok(match self.map.entry(Box::from(key)) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(expires_ms);
                true
            }
        })
    }

    fn insert_batch(&self, w: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        keys.iter().map(|k| self.insert(w, k, expires_ms)).collect()
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// sled 0.34

struct Sled {
    db: sled::Db,
    level: Level,
}

impl Sled {
    fn open(ctx: &Ctx<'_>) -> Res<Sled> {
        let db = sled::Config::new()
            .path(ctx.dir.join("sled"))
            .flush_every_ms(None)
            .open()
            .map_err(s)
            .map_err(err("sled open"))?;
        Ok(Sled {
            db,
            level: ctx.level,
        })
    }

    /// Insert-if-absent is a compare-and-swap from "no value".
    fn cas(&self, key: &[u8], expires_ms: u64) -> Res<bool> {
        let value = expires_ms.to_le_bytes();
        let r = self
            .db
            .compare_and_swap(key, None::<&[u8]>, Some(&value[..]))
            .map_err(s)?;
        Ok(r.is_ok())
    }
}

impl Peer for Sled {
    fn insert(&self, _: usize, key: &[u8], expires_ms: u64) -> Res<bool> {
        let new = self.cas(key, expires_ms)?;
        if new && self.level == Level::Fsync {
            self.db.flush().map_err(s)?;
        }
        Ok(new)
    }

    fn insert_batch(&self, _: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        let answers = keys
            .iter()
            .map(|k| self.cas(k, expires_ms))
            .collect::<Res<Vec<bool>>>()?;
        if answers.iter().any(|&n| n) {
            self.db.flush().map_err(s)?;
        }
        Ok(answers)
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        self.db.flush().map_err(s)?;
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// redb

const REDB_TABLE: redb::TableDefinition<&[u8], u64> = redb::TableDefinition::new("dedupe");

struct Redb {
    db: redb::Database,
    durability: redb::Durability,
}

impl Redb {
    fn open(ctx: &Ctx<'_>) -> Res<Redb> {
        let db = redb::Database::create(ctx.dir.join("redb.db"))
            .map_err(s)
            .map_err(err("redb open"))?;
        let tx = db.begin_write().map_err(s)?;
        tx.open_table(REDB_TABLE).map_err(s)?;
        tx.commit().map_err(s)?;
        let durability = if ctx.level.durable() {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        Ok(Redb { db, durability })
    }

    /// One write transaction for `keys`: committed if anything was inserted, else aborted.
    fn txn(&self, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        use redb::ReadableTable;
        let mut tx = self.db.begin_write().map_err(s)?;
        tx.set_durability(self.durability).map_err(s)?;
        let mut answers = Vec::with_capacity(keys.len());
        {
            let mut table = tx.open_table(REDB_TABLE).map_err(s)?;
            for &key in keys {
                let present = table.get(key).map_err(s)?.is_some();
                if !present {
                    table.insert(key, expires_ms).map_err(s)?;
                }
                answers.push(!present);
            }
        }
        if answers.iter().any(|&n| n) {
            tx.commit().map_err(s)?;
        } else {
            tx.abort().map_err(s)?;
        }
        Ok(answers)
    }
}

impl Peer for Redb {
    fn insert(&self, _: usize, key: &[u8], expires_ms: u64) -> Res<bool> {
        Ok(self.txn(&[key], expires_ms)?[0])
    }

    fn insert_batch(&self, _: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        self.txn(keys, expires_ms)
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        // Under `os` the inserts were committed with Durability::None: one Immediate commit
        // makes them durable (timed as "finish", outside the insert rate).
        let mut tx = self.db.begin_write().map_err(s)?;
        tx.set_durability(redb::Durability::Immediate).map_err(s)?;
        tx.commit().map_err(s)?;
        drop(self.db);
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// fjall 3 (single-writer transactions make the look-then-insert atomic)

struct Fjall {
    db: fjall::SingleWriterTxDatabase,
    ks: fjall::SingleWriterTxKeyspace,
    level: Level,
}

impl Fjall {
    fn open(ctx: &Ctx<'_>) -> Res<Fjall> {
        // Default (manual_journal_persist = false): every commit is written through to the
        // OS ("PersistMode::Buffer"), which is the `os` level. The fsync levels persist
        // explicitly with SyncData, so they turn the automatic flush off.
        let db = fjall::SingleWriterTxDatabase::builder(ctx.dir.join("fjall"))
            .manual_journal_persist(ctx.level != Level::Os)
            .open()
            .map_err(s)
            .map_err(err("fjall open"))?;
        let ks = db
            .keyspace("dedupe", fjall::KeyspaceCreateOptions::default)
            .map_err(s)?;
        Ok(Fjall {
            db,
            ks,
            level: ctx.level,
        })
    }

    fn txn(&self, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        use fjall::Readable;
        let mut tx = self.db.write_tx();
        if self.level != Level::Os {
            tx = tx.durability(Some(fjall::PersistMode::SyncData));
        }
        let value = expires_ms.to_le_bytes();
        let mut answers = Vec::with_capacity(keys.len());
        for &key in keys {
            let present = tx.get(&self.ks, key).map_err(s)?.is_some();
            if !present {
                tx.insert(&self.ks, key, &value[..]);
            }
            answers.push(!present);
        }
        if answers.iter().any(|&n| n) {
            tx.commit().map_err(s)?;
        } else {
            tx.rollback();
        }
        Ok(answers)
    }
}

impl Peer for Fjall {
    fn insert(&self, _: usize, key: &[u8], expires_ms: u64) -> Res<bool> {
        Ok(self.txn(&[key], expires_ms)?[0])
    }

    fn insert_batch(&self, _: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        self.txn(keys, expires_ms)
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        self.db.persist(fjall::PersistMode::SyncAll).map_err(s)?;
        let Fjall { db, ks, .. } = *self;
        drop(ks);
        drop(db); // stops and joins the background workers
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// SQLite (rusqlite, bundled). One connection behind a mutex: SQLite has one writer at a
// time anyway, and a second connection would only add busy-wait retries.

const SQLITE_INSERT: &str = "INSERT OR IGNORE INTO dedupe (k, exp) VALUES (?1, ?2)";

struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
}

impl Sqlite {
    fn open(ctx: &Ctx<'_>) -> Res<Sqlite> {
        let conn = rusqlite::Connection::open(ctx.dir.join("sqlite.db"))
            .map_err(s)
            .map_err(err("sqlite open"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(s)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("sqlite: journal_mode is {mode}, not wal"));
        }
        let sync = if ctx.level.durable() {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync};
             CREATE TABLE IF NOT EXISTS dedupe (k BLOB PRIMARY KEY, exp INTEGER) WITHOUT ROWID;"
        ))
        .map_err(s)?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Res<std::sync::MutexGuard<'_, rusqlite::Connection>> {
        self.conn
            .lock()
            .map_err(|_| "sqlite: poisoned lock".to_string())
    }
}

fn sqlite_exp(expires_ms: u64) -> i64 {
    i64::try_from(expires_ms).unwrap_or(i64::MAX)
}

impl Peer for Sqlite {
    fn insert(&self, _: usize, key: &[u8], expires_ms: u64) -> Res<bool> {
        let conn = self.lock()?;
        let mut st = conn.prepare_cached(SQLITE_INSERT).map_err(s)?;
        st.execute(rusqlite::params![key, sqlite_exp(expires_ms)])
            .map_err(s)?;
        Ok(conn.changes() == 1)
    }

    fn insert_batch(&self, _: usize, keys: &[&[u8]], expires_ms: u64) -> Res<Vec<bool>> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(s)?;
        let mut answers = Vec::with_capacity(keys.len());
        {
            let mut st = tx.prepare_cached(SQLITE_INSERT).map_err(s)?;
            for &key in keys {
                st.execute(rusqlite::params![key, sqlite_exp(expires_ms)])
                    .map_err(s)?;
                answers.push(tx.changes() == 1);
            }
        }
        tx.commit().map_err(s)?;
        Ok(answers)
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        let conn = self
            .conn
            .into_inner()
            .map_err(|_| "sqlite: poisoned lock".to_string())?;
        // Closing the last connection checkpoints the WAL into the database and deletes it.
        conn.close().map_err(|(_, e)| e.to_string())?;
        Ok(DiskUse::InDir)
    }
}

// ---------------------------------------------------------------------------------------
// Redis: SET k v NX EX 259200, one connection per worker thread; at `fsync-async`,
// in_flight / pipeline connections, each keeping `pipeline` commands in flight.

const REDIS_TTL_SECS: &[u8] = b"259200";

struct Redis {
    conns: Vec<Mutex<Resp>>,
    /// `fsync-async` only: the pipelined connections (one task drives each).
    pipes: Vec<Arc<tokio::sync::Mutex<AsyncResp>>>,
    pipeline: usize,
    aof: Option<PathBuf>,
    aof_before: u64,
}

/// The Redis server's AOF directory (Redis 7: `dir/appenddirname`), if it is on this
/// machine's file system.
fn redis_aof_path(c: &mut Resp) -> Res<Option<PathBuf>> {
    let dir = c.config_get("dir")?;
    let Some(dir) = dir else { return Ok(None) };
    let sub = c.config_get("appenddirname")?;
    let file = c.config_get("appendfilename")?;
    let base = PathBuf::from(dir);
    for name in [sub, file].into_iter().flatten() {
        let p = base.join(name);
        if p.exists() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Waits until no AOF rewrite is running or scheduled.
fn redis_wait_rewrite(c: &mut Resp) -> Res<()> {
    let start = Instant::now();
    loop {
        let info = c.info("persistence")?;
        let busy = ["aof_rewrite_in_progress", "aof_rewrite_scheduled"]
            .iter()
            .any(|f| info_field(&info, f).is_some_and(|v| v != "0"));
        if !busy {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err("redis: AOF rewrite did not finish in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

impl Redis {
    fn open(ctx: &Ctx<'_>) -> Res<Redis> {
        let mut conns = Vec::with_capacity(ctx.threads);
        for _ in 0..ctx.threads.max(1) {
            conns.push(Resp::connect(ctx.redis)?);
        }
        let c = &mut conns[0];
        let fsync = if ctx.level.durable() {
            "always"
        } else {
            "everysec"
        };
        c.ok(&[b"FLUSHALL"])?;
        c.ok(&[b"CONFIG", b"SET", b"appendonly", b"yes"])?;
        c.ok(&[b"CONFIG", b"SET", b"appendfsync", fsync.as_bytes()])?;
        // Start from a compact AOF so that its growth is this case's data. A rewrite may
        // already be under way (turning appendonly on starts one): wait for it first.
        redis_wait_rewrite(c)?;
        match c.cmd(&[b"BGREWRITEAOF"])? {
            Reply::Simple(_) => {}
            Reply::Error(e) => return Err(format!("redis BGREWRITEAOF: {e}")),
            other => return Err(format!("redis BGREWRITEAOF: unexpected {other:?}")),
        }
        redis_wait_rewrite(c)?;
        // Old AOF files are deleted in the background: give that a moment.
        std::thread::sleep(Duration::from_millis(200));
        let aof = redis_aof_path(c)?;
        let aof_before = match &aof {
            Some(p) => measure::allocated_bytes(p).map_err(s)?,
            None => 0,
        };
        let mut pipes = Vec::new();
        if ctx.level == Level::FsyncAsync {
            let rt = ctx.rt.ok_or("redis: fsync-async needs a runtime")?;
            let count = ctx.in_flight / ctx.pipeline.max(1);
            pipes = rt.block_on(async {
                let mut pipes = Vec::with_capacity(count);
                for _ in 0..count.max(1) {
                    let c = AsyncResp::connect(ctx.redis).await?;
                    pipes.push(Arc::new(tokio::sync::Mutex::new(c)));
                }
                Ok::<_, String>(pipes)
            })?;
        }
        Ok(Redis {
            conns: conns.into_iter().map(Mutex::new).collect(),
            pipes,
            pipeline: ctx.pipeline.max(1),
            aof,
            aof_before,
        })
    }

    fn conn(&self, worker: usize) -> Res<std::sync::MutexGuard<'_, Resp>> {
        self.conns[worker % self.conns.len()]
            .lock()
            .map_err(|_| "redis: poisoned lock".to_string())
    }
}

fn redis_set_nx(key: &[u8]) -> [&[u8]; 6] {
    [b"SET", key, b"1", b"NX", b"EX", REDIS_TTL_SECS]
}

/// `SET .. NX` answers OK when it set the key and a null reply when the key was there.
fn redis_answer(r: Reply) -> Res<bool> {
    match r {
        Reply::Simple(ok) if ok == "OK" => Ok(true),
        Reply::Bulk(None) | Reply::Array(None) => Ok(false),
        other => Err(format!("redis SET NX: unexpected reply {other:?}")),
    }
}

impl Peer for Redis {
    fn insert(&self, worker: usize, key: &[u8], _expires_ms: u64) -> Res<bool> {
        let mut c = self.conn(worker)?;
        redis_answer(c.cmd(&redis_set_nx(key))?)
    }

    fn insert_batch(&self, worker: usize, keys: &[&[u8]], _expires_ms: u64) -> Res<Vec<bool>> {
        let mut c = self.conn(worker)?;
        for &key in keys {
            c.send(&redis_set_nx(key)).map_err(s)?;
        }
        c.flush().map_err(s)?;
        let mut answers = Vec::with_capacity(keys.len());
        for _ in keys {
            answers.push(redis_answer(c.read()?)?);
        }
        Ok(answers)
    }

    /// One task per connection, each over its share of the keys with a sliding window:
    /// `pipeline` commands outstanding, one more queued per reply (the queued ones go out
    /// together when the buffered replies run out).
    fn insert_in_flight(&self, rt: &Runtime, keys: &Arc<[u8]>, in_flight: usize) -> Res<Vec<bool>> {
        if self.pipes.len() * self.pipeline != in_flight {
            return Err(format!(
                "redis: {} connections × pipeline {} is not {in_flight} in flight",
                self.pipes.len(),
                self.pipeline
            ));
        }
        let n = keys.len() / KEY_LEN;
        let depth = self.pipeline;
        let tasks = self
            .pipes
            .iter()
            .enumerate()
            .map(|(t, pipe)| {
                let (pipe, keys) = (Arc::clone(pipe), Arc::clone(keys));
                let mine = share(n, self.pipes.len(), t);
                async move {
                    let mut c = pipe.lock().await;
                    let mut answers = Vec::with_capacity(mine.len());
                    let mut next = mine.start;
                    while answers.len() < mine.len() {
                        let outstanding = next - mine.start - answers.len();
                        let top = mine.end.min(next + depth - outstanding);
                        while next < top {
                            c.queue(&redis_set_nx(key_at(&keys, next)));
                            next += 1;
                        }
                        answers.push(redis_answer(c.read().await?)?);
                    }
                    Ok(answers)
                }
            })
            .collect();
        run_tasks(rt, tasks)
    }

    fn server_memory(&self) -> Res<Option<u64>> {
        let info = self.conn(0)?.info("memory")?;
        let used = info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .ok_or("redis: no used_memory in INFO memory")?;
        Ok(Some(used))
    }

    fn finish(self: Box<Self>) -> Res<DiskUse> {
        // Every acknowledged SET is already written to the AOF (and, under `always`,
        // fsynced); nothing to close but the connections.
        let after = match &self.aof {
            Some(p) => measure::allocated_bytes(p).map_err(s)?,
            None => return Ok(DiskUse::Unknown),
        };
        Ok(DiskUse::External(after.saturating_sub(self.aof_before)))
    }
}
