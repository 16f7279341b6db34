//! Helpers shared by the integration tests: clocks, options, keys, a filled store, leases,
//! environment knobs, a seeded generator, directory listings, and a walk over the records
//! of a segment file (through the crate's public decoder). Byte-level surgery on segment
//! files is in `segfile`; the example servers as processes in `example`; the power-loss simulator in `powercut` and the operation-sequence
//! interpreter in `opseq` (both also built into the fuzz targets, so they use nothing from
//! here).
#![allow(dead_code)]

pub mod example;
pub mod opseq;
pub mod powercut;
pub mod segfile;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncelog::format::{decode_record, RecordKind, SEGMENT_HEADER_LEN};
use oncelog::{Begin, Durability, ManualClock, Options, Store, Ticket, MIN_SEGMENT_SIZE};

/// Three days, Stripe's retry window.
pub const TTL: Duration = Duration::from_secs(72 * 3600);

/// The lease of `acquire`, and of the tests' other `begin` calls.
pub const LEASE: Duration = Duration::from_secs(30);

/// A fixed start time, so that tests do not depend on the real clock.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub fn clock() -> ManualClock {
    ManualClock::new(t0())
}

/// Milliseconds since the Unix epoch, the unit of the store's records. Panics for a time
/// before the epoch.
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("a time after the Unix epoch")
        .as_millis() as u64
}

/// Options for a test store: the given clock, small segments (so rotations happen), and
/// `Buffered` so tests run at memory speed unless they are about syncing.
pub fn opts(clock: &ManualClock) -> Options {
    Options::new()
        .clock(clock.clone())
        .segment_size(MIN_SEGMENT_SIZE)
        .durability(Durability::Buffered)
}

/// `opts` without the background maintenance thread: the store changes only through the
/// test's own calls (`compact` included).
pub fn opts_no_bg(clock: &ManualClock) -> Options {
    opts(clock).background_maintenance(false)
}

/// Options for a store on the system clock that syncs every write: small segments, no
/// background maintenance.
pub fn sync_opts() -> Options {
    Options::new()
        .segment_size(MIN_SEGMENT_SIZE)
        .durability(Durability::Sync)
        .background_maintenance(false)
}

/// The segment files of `dir`, in id order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".olog"))
        })
        .collect();
    v.sort();
    v
}

/// The names of the temporary files (`*.tmp`) in `dir`.
pub fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// One record found in a segment file.
#[derive(Debug, Clone)]
pub struct Rec {
    pub offset: usize,
    pub len: usize,
    pub kind: RecordKind,
    pub key: Vec<u8>,
}

/// Walks the records of a segment file up to the first that does not decode.
pub fn records(path: &Path) -> Vec<Rec> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while let Some(rest) = bytes.get(pos..) {
        let Ok(r) = decode_record(rest) else { break };
        out.push(Rec {
            offset: pos,
            len: r.len,
            kind: r.header.kind,
            key: r.key.to_vec(),
        });
        pos += r.len;
    }
    out
}

/// Copies every regular file of `from` into the empty directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// `n` distinct keys, event-id-like, some of them long.
pub fn key(i: u64) -> String {
    if i % 7 == 3 {
        format!("evt_{i:08}_{}", "x".repeat((i % 300) as usize))
    } else {
        format!("evt_{i:08}")
    }
}

/// Key `i`, event-id-like, of exactly `len` bytes (at least 12): every record of such keys
/// has the same size.
pub fn fixed_key(i: u64, len: usize) -> String {
    format!("evt_{i:0w$}", w = len - 4)
}

/// Claims `key(0..n)` for `TTL`, removes every tenth, and closes: several sealed segments,
/// no hints.
pub fn fill(dir: &Path, clock: &ManualClock, n: u64) {
    let store = opts(clock).open(dir).unwrap();
    for i in 0..n {
        assert!(store.claim(key(i), TTL).unwrap().is_new());
    }
    for i in (0..n).step_by(10) {
        assert!(store.remove(key(i)).unwrap());
    }
    store.close().unwrap();
}

/// Begins `key` with a lease of `LEASE`, which must be acquired.
pub fn acquire(store: &Store, key: impl AsRef<[u8]>) -> Ticket {
    let key = key.as_ref();
    match store.begin(key, LEASE).unwrap() {
        Begin::Acquired(t) => t,
        other => panic!("begin {}: {other:?}", String::from_utf8_lossy(key)),
    }
}

/// The environment variable `name` as a number (decimal, or hex after `0x`), if it is set.
/// Panics if it is set to anything else.
pub fn env_opt_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?}: expected a number")))
}

/// The environment variable `name` as a number (see `env_opt_u64`), `default` if unset.
pub fn env_u64(name: &str, default: u64) -> u64 {
    env_opt_u64(name).unwrap_or(default)
}

/// xorshift64* seeded through splitmix64: small, deterministic, good enough to pick
/// operations, mixes and delays. (`powercut::Rng` is another generator, whose exact
/// sequence the kept fuzz inputs and their seeds depend on.)
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point); mix the seed so nearby seeds differ.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
}
