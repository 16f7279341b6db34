//! A hand-written SVG chart: horizontal bars of insert ops/s, one group per
//! (durability level, threads), one bar per peer, on a log-scale axis.

use std::fmt::Write;

pub struct Group {
    pub label: String,
    /// (peer, insert ops/s); non-finite or non-positive values are skipped.
    pub bars: Vec<(String, f64)>,
}

const WIDTH: f64 = 960.0;
const NAME_W: f64 = 110.0; // peer names, left of the plot
const VALUE_W: f64 = 120.0; // room right of the longest bar for its label
const HEAD: f64 = 36.0; // title
const SUB_LINE: f64 = 17.0;
const GROUP_HEAD: f64 = 24.0;
const BAR_H: f64 = 16.0;
const BAR_GAP: f64 = 5.0;
const GROUP_GAP: f64 = 12.0;
const BOTTOM: f64 = 44.0;

fn color(peer: &str) -> &'static str {
    match peer {
        "oncelog" => "#d94f2b",
        "dashmap" => "#9a9a9a",
        "sled" => "#4c78a8",
        "redb" => "#72b7b2",
        "fjall" => "#54a24b",
        "sqlite" => "#e0b530",
        "redis" => "#b279a2",
        _ => "#666666",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A decade as "1", "10", "100", "1k", ... "10M", "1G".
fn decade(d: i32) -> String {
    let units = [(9, "G"), (6, "M"), (3, "k"), (0, "")];
    for (p, u) in units {
        if d >= p {
            return format!("1{}{u}", "0".repeat((d - p) as usize));
        }
    }
    format!("{}", 10f64.powi(d))
}

/// "950", "12.3k", "1.24M".
pub fn short(v: f64) -> String {
    let (x, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if x >= 100.0 || unit.is_empty() {
        format!("{x:.0}{unit}")
    } else if x >= 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.2}{unit}")
    }
}

pub fn render(title: &str, subtitle: &[String], groups: &[Group]) -> String {
    let values = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        (lo, hi) = (1e3, 1e7);
    }
    let lo_dec = lo.log10().floor() as i32;
    let mut hi_dec = hi.log10().ceil() as i32;
    if hi_dec <= lo_dec {
        hi_dec = lo_dec + 1;
    }
    let x0 = NAME_W;
    let x1 = WIDTH - VALUE_W;
    let x_of = |v: f64| {
        let f = (v.log10() - f64::from(lo_dec)) / f64::from(hi_dec - lo_dec);
        x0 + f.clamp(0.0, 1.0) * (x1 - x0)
    };

    let bars_h: f64 = groups
        .iter()
        .map(|g| GROUP_HEAD + g.bars.len() as f64 * (BAR_H + BAR_GAP) + GROUP_GAP)
        .sum();
    let top = HEAD + SUB_LINE * subtitle.len() as f64 + 12.0;
    let height = top + bars_h + BOTTOM;
    let plot_bottom = top + bars_h;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">"##
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        o,
        r##"<text x="{x0}" y="24" font-size="17" font-weight="bold" fill="#222">{}</text>"##,
        esc(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            o,
            r##"<text x="{x0}" y="{:.1}" font-size="12" fill="#555">{}</text>"##,
            HEAD + 8.0 + SUB_LINE * i as f64,
            esc(line)
        );
    }

    // Decade grid lines, labelled below the plot.
    for d in lo_dec..=hi_dec {
        let v = 10f64.powi(d);
        let x = x_of(v);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{plot_bottom}" stroke="#d8d8d8" stroke-width="1"/>"##
        );
        let _ = writeln!(
            o,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" fill="#444" text-anchor="middle">{}</text>"##,
            plot_bottom + 16.0,
            decade(d)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#444" text-anchor="middle">insert ops/s (log scale, higher is better)</text>"##,
        (x0 + x1) / 2.0,
        plot_bottom + 34.0
    );

    let mut y = top;
    for g in groups {
        let _ = writeln!(
            o,
            r##"<text x="8" y="{:.1}" font-size="13" font-weight="bold" fill="#222">{}</text>"##,
            y + 16.0,
            esc(&g.label)
        );
        y += GROUP_HEAD;
        for (peer, v) in &g.bars {
            let mid = y + BAR_H / 2.0 + 4.0;
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{mid:.1}" font-size="12" fill="#333" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                esc(peer)
            );
            if v.is_finite() && *v > 0.0 {
                let w = (x_of(*v) - x0).max(1.0);
                let weight = if peer == "oncelog" { "bold" } else { "normal" };
                let _ = writeln!(
                    o,
                    r##"<rect x="{x0}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"##,
                    color(peer)
                );
                let _ = writeln!(
                    o,
                    r##"<text x="{:.1}" y="{mid:.1}" font-size="12" font-weight="{weight}" fill="#222">{}</text>"##,
                    x0 + w + 5.0,
                    short(*v)
                );
            } else {
                let _ = writeln!(
                    o,
                    r##"<text x="{:.1}" y="{mid:.1}" font-size="12" fill="#a00">no result</text>"##,
                    x0 + 5.0
                );
            }
            y += BAR_H + BAR_GAP;
        }
        y += GROUP_GAP;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{x0}" y1="{top}" x2="{x0}" y2="{plot_bottom}" stroke="#888" stroke-width="1"/>"##
    );
    o.push_str("</svg>\n");
    o
}
