//! Helpers shared by the integration tests: clocks, directory listings, and a walk over the
//! records of a segment file (through the crate's public decoder).
#![allow(dead_code)]

pub mod opseq;
pub mod powercut;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncelog::format::{decode_record, RecordKind, SEGMENT_HEADER_LEN};
use oncelog::{Durability, ManualClock, Options, MIN_SEGMENT_SIZE};

/// Three days, Stripe's retry window.
pub const TTL: Duration = Duration::from_secs(72 * 3600);

/// A fixed start time, so that tests do not depend on the real clock.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub fn clock() -> ManualClock {
    ManualClock::new(t0())
}

/// Options for a test store: the given clock, small segments (so rotations happen), and
/// `Buffered` so tests run at memory speed unless they are about syncing.
pub fn opts(clock: &ManualClock) -> Options {
    Options::new()
        .clock(clock.clone())
        .segment_size(MIN_SEGMENT_SIZE)
        .durability(Durability::Buffered)
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
