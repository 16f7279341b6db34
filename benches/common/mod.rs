//! Shared by the criterion benches: key generation and sizes.
#![allow(dead_code)]

/// Largest store size the benches build, from `ONCELOG_BENCH_MAX_KEYS` (default 10M): set
/// it lower for a quick run, e.g. `ONCELOG_BENCH_MAX_KEYS=1000000 cargo bench`.
pub fn max_keys() -> u64 {
    std::env::var("ONCELOG_BENCH_MAX_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// Store sizes up to `max_keys()`, from `wanted`.
pub fn sizes(wanted: &[u64]) -> Vec<u64> {
    let max = max_keys();
    wanted.iter().copied().filter(|&n| n <= max).collect()
}

/// The `n`th event-id-like key: `evt_` and 28 hex digits of a bijective mix of `n`, so keys
/// are distinct, look random to the hash, and are 32 bytes like Stripe's event ids.
pub fn key(n: u64) -> [u8; 32] {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let hi = n.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut out = *b"evt_0000000000000000000000000000";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..16 {
        out[4 + i] = HEX[((x >> (i * 4)) & 0xf) as usize];
    }
    for i in 0..12 {
        out[20 + i] = HEX[((hi >> (i * 4)) & 0xf) as usize];
    }
    out
}

/// A small, fast PRNG (splitmix64) for picking existing keys.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Claims keys `0..n` in `dir` (buffered, in batches) and closes the store. Without
/// background maintenance, so the store it leaves has no hint files (`open/records` times
/// a store whose every segment must be read).
pub fn fill(dir: &std::path::Path, n: u64, ttl: std::time::Duration) {
    let store = oncelog::Options::new()
        .durability(oncelog::Durability::Buffered)
        .background_maintenance(false)
        .open(dir)
        .expect("open");
    let keys: Vec<[u8; 32]> = (0..n).map(key).collect();
    for chunk in keys.chunks(4096) {
        store.claim_many(chunk, ttl).expect("fill");
    }
    store.close().expect("close");
}

/// Bytes the files directly in `dir` take on disk (allocated blocks, not lengths).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
