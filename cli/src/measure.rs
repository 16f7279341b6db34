//! Measuring for `oncelog bench`: a latency histogram, resident memory, and nanoseconds
//! printed for people.

/// A log-linear latency histogram: 32 linear sub-buckets per power of two of nanoseconds,
/// so any recorded value is reported within about 3 %.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    /// The largest value recorded.
    pub max: u64,
    total: u64,
}

const SUB: u64 = 32;

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; 64 * SUB as usize],
            max: 0,
            total: 0,
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < SUB {
            return ns as usize;
        }
        let exp = 63 - u64::from(ns.leading_zeros()); // >= 5
        let sub = (ns >> (exp - 5)) & (SUB - 1);
        ((exp - 4) * SUB + sub) as usize
    }

    /// The smallest value that falls in `bucket` (the inverse of `bucket`).
    fn floor(bucket: usize) -> u64 {
        let b = bucket as u64;
        if b < SUB {
            return b;
        }
        let exp = b / SUB + 4;
        let sub = b % SUB;
        (SUB + sub) << (exp - 5)
    }

    pub fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(Self::bucket(ns)) {
            *c += 1;
        }
        self.max = self.max.max(ns);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::floor(i).min(self.max);
            }
        }
        self.max
    }
}

/// Resident memory of this process in bytes (Linux): anonymous (heap: the index) and
/// file-backed (the mapped segments, page cache the kernel can drop), from
/// `/proc/self/status`; zeros if unknown.
pub fn rss_bytes() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("RssAnon:"), field("RssFile:"))
}

pub fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_3_percent() {
        for ns in [
            0u64,
            1,
            31,
            32,
            33,
            100,
            999,
            12_345,
            1 << 40,
            u64::MAX >> 1,
        ] {
            let b = Histogram::bucket(ns);
            let lo = Histogram::floor(b);
            assert!(lo <= ns, "{ns}: floor {lo}");
            assert!(ns - lo <= ns / 32, "{ns}: floor {lo} too far");
            assert!(Histogram::bucket(lo) == b);
        }
        let mut h = Histogram::new();
        for ns in 1..=1000 {
            h.record(ns * 1000);
        }
        let p50 = h.percentile(50.0);
        assert!((484_000..=500_000).contains(&p50), "p50 {p50}");
        assert_eq!(
            h.percentile(100.0),
            Histogram::floor(Histogram::bucket(1_000_000))
        );
        assert_eq!(h.percentile(0.0), Histogram::floor(Histogram::bucket(1000)));
        assert_eq!(h.max, 1_000_000);
    }
}
