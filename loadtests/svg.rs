//! Hand-written SVG latency histograms: log-scale buckets (ten per decade), bars, axes with
//! labels, and p50/p99 markers. One file per measurement with latencies.

use std::{fmt::Write as _, path::Path};

use crate::{
    error::Result,
    report::{Measurement, ScenarioResult},
    stats::LogBuckets,
};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn duration_label(ms: f64) -> String {
    if ms >= 1000.0 { format!("{} s", trim(ms / 1000.0)) } else { format!("{} ms", trim(ms)) }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The histogram of one measurement's latencies.
pub(crate) fn histogram(title: &str, subtitle: &str, m: &Measurement) -> Option<String> {
    let summary = m.latency_ms.as_ref()?;
    let buckets = LogBuckets::of(&m.samples_ms, 10);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = buckets.counts.len() as f64;
    let tallest = buckets.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    // x position of a latency on the log axis.
    let decades = n / buckets.per_decade as f64;
    let x_of = |ms: f64| {
        let fraction = (ms.max(buckets.low_ms) / buckets.low_ms).log10() / decades;
        LEFT + fraction.clamp(0.0, 1.0) * plot_w
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let _ = writeln!(svg, r##"<text x="{LEFT}" y="38" fill="#555">{}</text>"##, escape(subtitle));
    // Bars.
    let bar_w = plot_w / n;
    for (index, &count) in buckets.counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let h = count as f64 / tallest * plot_h;
        let x = LEFT + index as f64 * bar_w;
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{h:.2}" fill="#4a7fc1"><title>{} – {}: {count}</title></rect>"##,
            TOP + plot_h - h,
            (bar_w - 1.0).max(0.5),
            duration_label(buckets.edge(index)),
            duration_label(buckets.edge(index + 1)),
        );
    }
    // Axes.
    let bottom = TOP + plot_h;
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>"##,
        LEFT + plot_w
    );
    for decade in 0..=(decades as usize) {
        let ms = buckets.low_ms * 10f64.powi(i32::try_from(decade).unwrap_or(0));
        let x = x_of(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{:.2}" stroke="black"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            duration_label(ms)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.2}" y="{:.2}" text-anchor="middle">latency (log scale, 10 buckets per decade)</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    for step in 0..=4 {
        let value = tallest * f64::from(step) / 4.0;
        let y = bottom - plot_h * f64::from(step) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{:.2}" y1="{y:.2}" x2="{LEFT}" y2="{y:.2}" stroke="black"/><text x="{:.2}" y="{:.2}" text-anchor="end">{value:.0}</text>"##,
            LEFT - 5.0,
            LEFT - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text transform="translate(16 {:.2}) rotate(-90)" text-anchor="middle">{} per bucket</text>"##,
        TOP + plot_h / 2.0,
        escape(&m.unit)
    );
    // Percentile markers.
    for (name, value, colour) in
        [("p50", summary.p50_ms, "#2a9d3a"), ("p99", summary.p99_ms, "#d03030")]
    {
        let x = x_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{bottom}" stroke="{colour}" stroke-width="2" stroke-dasharray="5,3"/><text x="{:.2}" y="{:.2}" fill="{colour}">{name} {}</text>"##,
            x + 4.0,
            TOP + if name == "p50" { 12.0 } else { 26.0 },
            duration_label(value)
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Writes `<scenario>-<measurement>.svg` for every measurement with latencies; returns the
/// paths written.
pub(crate) fn write_all(
    dir: &Path,
    server: &str,
    scenario: &ScenarioResult,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for m in &scenario.measurements {
        let title = format!("{} / {} latency", scenario.name, m.name);
        let subtitle = match &m.latency_ms {
            Some(l) => format!(
                "{server} · {} {} · p50 {} · p90 {} · p99 {} · max {}",
                l.count,
                m.unit,
                duration_label(l.p50_ms),
                duration_label(l.p90_ms),
                duration_label(l.p99_ms),
                duration_label(l.max_ms)
            ),
            None => continue,
        };
        let Some(svg) = histogram(&title, &subtitle, m) else { continue };
        let name: String = format!("{}-{}.svg", scenario.name, m.name)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, svg)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
