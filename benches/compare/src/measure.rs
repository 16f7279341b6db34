//! What the harness measures besides time: RSS, allocated disk bytes, raw fdatasync
//! latency, and a description of the machine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Resident memory of this process, from /proc/self/status, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub anon: u64,
    pub file: u64,
}

pub fn rss() -> io::Result<Rss> {
    let status = fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    Ok(Rss {
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    })
}

/// Allocated bytes (st_blocks × 512) of a file, or of every file under a directory.
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.blocks() * 512);
    }
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        // A file may vanish while we walk (an engine's temporary file): skip it.
        match allocated_bytes(&entry.path()) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Latencies of `samples` × (write 4 KiB at the next offset of a preallocated file, then
/// fdatasync), in microseconds, sorted.
pub fn fdatasync_latencies(dir: &Path, samples: usize) -> io::Result<Vec<f64>> {
    const BLOCK: usize = 4096;
    let path = dir.join(format!("fdatasync-probe-{}", std::process::id()));
    let result = (|| -> io::Result<Vec<f64>> {
        let mut f: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Preallocate with real blocks (zeros written and synced), so that the timed syncs
        // only flush data, as an engine's pre-allocated log does.
        let zeros = vec![0u8; 1 << 20];
        let mut left = samples * BLOCK;
        while left > 0 {
            let n = left.min(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n;
        }
        f.sync_all()?;
        let block = vec![0xA5u8; BLOCK];
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples {
            let t = Instant::now();
            f.write_all_at(&block, (i * BLOCK) as u64)?;
            f.sync_data()?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(out)
    })();
    let _ = fs::remove_file(&path);
    let mut out: Vec<f64> = result?;
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The value at quantile `q` (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// CPU model, core count, kernel, and the file system holding `work_dir`.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub filesystem: String,
}

pub fn machine(work_dir: &Path) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Machine {
        cpu,
        cores,
        kernel,
        filesystem: filesystem_of(work_dir).unwrap_or_else(|| "unknown".into()),
    }
}

/// "ext4 on /dev/vda" for the mount that holds `path` (longest mount-point prefix).
fn filesystem_of(path: &Path) -> Option<String> {
    let path: PathBuf = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut parts = line.split_whitespace();
        let (dev, mnt, fstype) = (parts.next()?, parts.next()?, parts.next()?);
        // Mount points escape spaces as \040.
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(len, _)| mnt.len() >= *len) {
            best = Some((mnt.len(), format!("{fstype} on {dev} (mounted at {mnt})")));
        }
    }
    best.map(|(_, s)| s)
}

/// "2026-05-01 12:34 UTC", from the system clock.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (the era-based method: 400-year eras of 146 097 days, years starting in March).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
