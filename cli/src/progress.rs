//! A progress line on stderr while [`Options::open`] replays a large directory.
//!
//! Opening tens of millions of records takes seconds; meanwhile a person at a terminal sees
//! one line, rewritten in place about ten times a second:
//!
//! ```text
//! opening: segment 7/10 (6 from hints), 3.1M records, 1.2 s
//! ```
//!
//! An open that is done within half a second prints nothing, and nothing is ever
//! printed when stderr is not a terminal (a pipe, a file, a service's log).

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oncelog::{OpenProgress, Options};

/// How long `open` runs before the line appears.
const QUIET_FOR: Duration = Duration::from_millis(500);
/// The least time between two updates of the line.
const EVERY: Duration = Duration::from_millis(100);

/// `opts` with a progress line on stderr for the `open` that consumes them, if stderr is a
/// terminal; `opts` unchanged otherwise.
///
/// The clock starts now: call it right before `open`. The line is finished with a newline
/// when `open` returns, successful or not (the callback holding it is dropped then), so
/// whatever is printed next starts on a line of its own.
///
/// ```no_run
/// let store = oncelog_cli::progress::with_open_progress(oncelog::Options::new())
///     .open("/var/lib/dedupe")?;
/// # Ok::<(), oncelog::Error>(())
/// ```
pub fn with_open_progress(opts: Options) -> Options {
    if io::stderr().is_terminal() {
        open_progress_to(opts, io::stderr(), QUIET_FOR)
    } else {
        opts
    }
}

/// Like [`with_open_progress`], to any writer and whether or not it is a terminal, once
/// `open` has run for `quiet_for`.
pub fn open_progress_to(
    opts: Options,
    out: impl Write + Send + 'static,
    quiet_for: Duration,
) -> Options {
    let line = Line(Mutex::new(State {
        out,
        start: Instant::now(),
        quiet_for,
        last: None,
        width: 0,
    }));
    opts.open_progress(move |p| line.update(p))
}

struct Line<W: Write>(Mutex<State<W>>);

struct State<W> {
    out: W,
    start: Instant,
    quiet_for: Duration,
    /// When the line was last written; `None` until it first is.
    last: Option<Instant>,
    /// The length of the text last written, to blank out what a shorter one leaves.
    width: usize,
}

impl<W: Write> Line<W> {
    fn update(&self, p: &OpenProgress) {
        let Ok(mut s) = self.0.lock() else { return };
        let now = Instant::now();
        let elapsed = now.duration_since(s.start);
        let last_segment = p.segments_done >= p.segments_total;
        let too_soon = s
            .last
            .is_some_and(|t| now.duration_since(t) < EVERY && !last_segment);
        if elapsed < s.quiet_for || too_soon {
            return;
        }
        let text = describe(p, elapsed);
        let pad = s.width.saturating_sub(text.len());
        // Errors are ignored: progress is a courtesy, and must never fail the open.
        let _ = write!(s.out, "\r{text}{:pad$}", "");
        let _ = s.out.flush();
        s.last = Some(now);
        s.width = text.len();
    }
}

impl<W: Write> Drop for Line<W> {
    fn drop(&mut self) {
        let Ok(s) = self.0.get_mut() else { return };
        if s.last.is_some() {
            let _ = s.out.write_all(b"\n");
            let _ = s.out.flush();
        }
    }
}

/// The line's text, e.g. `opening: segment 7/10, 3.1M records, 1.2 s`.
fn describe(p: &OpenProgress, elapsed: Duration) -> String {
    let hinted = match p.segments_hinted {
        0 => String::new(),
        n => format!(" ({n} from hints)"),
    };
    format!(
        "opening: segment {}/{}{hinted}, {} records, {:.1} s",
        p.segments_done,
        p.segments_total,
        count(p.records),
        elapsed.as_secs_f64()
    )
}

/// A count in three significant figures or so: `999`, `12.3k`, `3.1M`, `1.2G`.
fn count(n: u64) -> String {
    let x = n as f64;
    if n < 1_000 {
        n.to_string()
    } else if x < 999_950.0 {
        format!("{:.1}k", x / 1e3)
    } else if x < 999_950_000.0 {
        format!("{:.1}M", x / 1e6)
    } else {
        format!("{:.1}G", x / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A directory of several small segments holding `keys` keys.
    fn filled(keys: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = Options::new()
            .segment_size(oncelog::MIN_SEGMENT_SIZE)
            .durability(oncelog::Durability::Buffered)
            .background_maintenance(false)
            .open(dir.path())
            .unwrap();
        let keys: Vec<String> = (0..keys).map(|i| format!("evt_{i:08}")).collect();
        store.claim_many(&keys, Duration::from_secs(3600)).unwrap();
        store.close().unwrap();
        dir
    }

    #[test]
    fn the_line_ends_with_the_last_segment_and_a_newline_when_open_returns() {
        let dir = filled(20_000);
        let out = Shared::default();
        let opts = Options::new()
            .segment_size(oncelog::MIN_SEGMENT_SIZE)
            .background_maintenance(false);
        let store = open_progress_to(opts, out.clone(), Duration::ZERO)
            .open(dir.path())
            .unwrap();
        let s = store.stats();
        assert!(s.segments > 2, "{s:?}");
        let text = out.text();
        assert!(text.starts_with("\ropening: segment 1/"), "{text:?}");
        assert!(text.ends_with('\n'), "{text:?}");
        // The last update, left on screen, shows every segment and every record.
        let last = text.trim_end().rsplit('\r').next().unwrap().trim_end();
        let want = format!(
            "opening: segment {n}/{n}, {} records, ",
            count(s.recovered_records),
            n = s.segments
        );
        assert!(last.starts_with(&want), "{last:?} is not {want:?}...");
        assert!(last.ends_with(" s"), "{last:?}");
        store.close().unwrap();
    }

    #[test]
    fn a_quick_open_prints_nothing() {
        let dir = filled(20_000);
        let out = Shared::default();
        let store = open_progress_to(Options::new(), out.clone(), Duration::from_secs(3600))
            .open(dir.path())
            .unwrap();
        store.close().unwrap();
        assert_eq!(out.text(), "");
    }

    #[test]
    fn counts_are_short() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1.0k");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(999_949), "999.9k");
        assert_eq!(count(999_950), "1.0M");
        assert_eq!(count(3_100_000), "3.1M");
        assert_eq!(count(1_234_000_000), "1.2G");
    }
}
