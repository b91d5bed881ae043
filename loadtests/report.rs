//! Results: the per-scenario data model, the table printed at the end, the JSON report, and
//! `--compare` of two reports.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    sampler::Resources,
    stats::{Summary, summarize},
};

/// One measured operation of a scenario (sends, deliveries, joins, uploads...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Measurement {
    pub(crate) name: String,
    /// What `count` counts ("events", "deliveries", "rooms"...).
    pub(crate) unit: String,
    /// Successful operations.
    pub(crate) count: u64,
    pub(crate) errors: u64,
    /// Wall-clock seconds of the measured phase.
    pub(crate) duration_s: f64,
    /// `count / duration_s`.
    pub(crate) rate_per_s: f64,
    pub(crate) latency_ms: Option<Summary>,
    /// Scenario-specific numbers (MB/s, bytes, missed deliveries, CPU...).
    pub(crate) extra: BTreeMap<String, f64>,
    #[serde(skip)]
    pub(crate) samples_ms: Vec<f64>,
}

impl Measurement {
    pub(crate) fn new(
        name: &str,
        unit: &str,
        errors: u64,
        duration_s: f64,
        samples_ms: Vec<f64>,
    ) -> Self {
        let count = samples_ms.len() as u64;
        Self {
            name: name.to_owned(),
            unit: unit.to_owned(),
            count,
            errors,
            duration_s,
            rate_per_s: if duration_s > 0.0 { count as f64 / duration_s } else { 0.0 },
            latency_ms: summarize(&samples_ms),
            extra: BTreeMap::new(),
            samples_ms,
        }
    }

    /// Sets `count` (and the rate) for measurements without per-operation latencies.
    pub(crate) fn counting(mut self, count: u64) -> Self {
        self.count = count;
        self.rate_per_s = if self.duration_s > 0.0 { count as f64 / self.duration_s } else { 0.0 };
        self
    }

    pub(crate) fn with(mut self, key: &str, value: f64) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

/// Whether acknowledged events reached the members' /sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Verification {
    /// Members (or polls) whose /sync was checked.
    pub(crate) members_checked: u64,
    /// (member, event) pairs that had to be found.
    pub(crate) expected: u64,
    pub(crate) found_in_sync: u64,
    /// Found by paging `/messages` back from a `limited` timeline's `prev_batch`.
    pub(crate) found_via_messages: u64,
    pub(crate) missing: u64,
    /// Checks that could not be made (request failed).
    pub(crate) check_errors: u64,
    pub(crate) examples: Vec<String>,
}

impl Verification {
    pub(crate) fn ok(&self) -> bool {
        self.missing == 0 && self.check_errors == 0
    }

    pub(crate) fn example(&mut self, text: String) {
        if self.examples.len() < 10 {
            self.examples.push(text);
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ScenarioResult {
    pub(crate) name: String,
    pub(crate) params: Value,
    /// Seconds spent creating or checking users, rooms and history before measuring.
    pub(crate) setup_s: f64,
    pub(crate) measurements: Vec<Measurement>,
    /// Deliveries a live long poll had not seen by the end of the drain period.
    pub(crate) missed_deliveries: u64,
    pub(crate) verification: Verification,
    /// Server resources during the measured phase (`--server-pid`).
    pub(crate) resources: Option<Resources>,
    /// Server CPU seconds per 1,000 events of the measured phase.
    pub(crate) cpu_s_per_1000_events: Option<f64>,
    /// 429 answers that were waited out and retried (whole run, setup included).
    pub(crate) rate_limited_retries: u64,
    /// Failed operations of the measured phase.
    pub(crate) errors: u64,
    pub(crate) notes: Vec<String>,
}

impl ScenarioResult {
    pub(crate) fn passed(&self) -> bool {
        self.verification.ok() && self.missed_deliveries == 0
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ServerInfo {
    /// `GET /_matrix/client/versions` → `versions`.
    pub(crate) versions: Vec<String>,
    /// `GET /_matrix/federation/v1/version` → `server.name` / `server.version`, if answered.
    pub(crate) name: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) pid: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) harness: String,
    pub(crate) harness_version: String,
    pub(crate) url: String,
    pub(crate) timestamp_unix: u64,
    pub(crate) timestamp: String,
    pub(crate) command_line: Vec<String>,
    pub(crate) server: ServerInfo,
    pub(crate) scenarios: Vec<ScenarioResult>,
}

/// RFC 3339 UTC for a Unix time (civil-from-days, no date crate).
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let seconds = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

fn ms(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

/// The human-readable summary printed at the end of a run.
pub(crate) fn table(report: &Report) -> String {
    let mut out = String::new();
    let server = match (&report.server.name, &report.server.version) {
        (Some(name), Some(version)) => format!("{name} {version}"),
        (Some(name), None) => name.clone(),
        _ => "unknown server".to_owned(),
    };
    let _ = writeln!(
        out,
        "\n{} {} against {} ({server})",
        report.harness, report.harness_version, report.url
    );
    for scenario in &report.scenarios {
        let _ = writeln!(out, "\n== {} (setup {:.1} s) ==", scenario.name, scenario.setup_s);
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>7} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
            "measurement",
            "count",
            "errors",
            "secs",
            "rate/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        for m in &scenario.measurements {
            let (p50, p90, p99, max) = m.latency_ms.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()),
                |l| (ms(l.p50_ms), ms(l.p90_ms), ms(l.p99_ms), ms(l.max_ms)),
            );
            let _ = writeln!(
                out,
                "{:<32} {:>9} {:>7} {:>9.2} {:>11.1} {:>9} {:>9} {:>9} {:>9}",
                format!("{} ({})", m.name, m.unit),
                m.count,
                m.errors,
                m.duration_s,
                m.rate_per_s,
                p50,
                p90,
                p99,
                max
            );
            for (key, value) in &m.extra {
                let _ = writeln!(out, "    {key}: {value:.3}");
            }
        }
        let v = &scenario.verification;
        let _ = writeln!(
            out,
            "verification: {} — {} members checked, {} expected, {} in sync, {} via /messages, {} missing, {} check errors",
            if v.ok() { "OK" } else { "FAILED" },
            v.members_checked,
            v.expected,
            v.found_in_sync,
            v.found_via_messages,
            v.missing,
            v.check_errors
        );
        for example in &v.examples {
            let _ = writeln!(out, "    {example}");
        }
        let _ = writeln!(
            out,
            "missed live deliveries: {}; rate-limited retries: {}; errors: {}",
            scenario.missed_deliveries, scenario.rate_limited_retries, scenario.errors
        );
        if let Some(r) = &scenario.resources {
            let _ = writeln!(
                out,
                "server pid {}: RSS start {:.1} MB, end {:.1} MB, peak {:.1} MB; CPU {:.2} s over {:.1} s ({:.2} cores){}",
                r.pid,
                r.rss_start_mb,
                r.rss_end_mb,
                r.rss_peak_mb,
                r.cpu_s,
                r.duration_s,
                r.cpu_cores_avg,
                scenario
                    .cpu_s_per_1000_events
                    .map(|cpu| format!("; {cpu:.3} CPU s per 1,000 events"))
                    .unwrap_or_default()
            );
        }
        for note in &scenario.notes {
            let _ = writeln!(out, "note: {note}");
        }
    }
    out
}

pub(crate) fn write_json(report: &Report, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .map_err(|error| Error::new(format!("{}: {error}", path.display())))
}

fn load(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::new(format!("{}: {error}", path.display())))?;
    serde_json::from_str(&text).map_err(|error| Error::new(format!("{}: {error}", path.display())))
}

/// Whether a bigger value of a metric is better, worse, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Higher,
    Lower,
    Neutral,
}

/// Every comparable number of a report, keyed `scenario/measurement/metric`.
fn metrics(report: &Report) -> BTreeMap<String, (f64, Direction)> {
    let mut out = BTreeMap::new();
    for s in &report.scenarios {
        for m in &s.measurements {
            let key = |metric: &str| format!("{}/{}/{metric}", s.name, m.name);
            out.insert(key("count"), (m.count as f64, Direction::Neutral));
            out.insert(key("errors"), (m.errors as f64, Direction::Lower));
            out.insert(key("rate_per_s"), (m.rate_per_s, Direction::Higher));
            if let Some(l) = &m.latency_ms {
                for (name, value) in [
                    ("p50_ms", l.p50_ms),
                    ("p90_ms", l.p90_ms),
                    ("p99_ms", l.p99_ms),
                    ("max_ms", l.max_ms),
                    ("mean_ms", l.mean_ms),
                ] {
                    out.insert(key(name), (value, Direction::Lower));
                }
            }
            for (name, value) in &m.extra {
                let direction = if name.contains("per_s") && !name.contains("cpu") {
                    Direction::Higher
                } else if name.contains("cpu")
                    || name.contains("bytes")
                    || name.contains("missed")
                    || name.contains("early")
                    || name.contains("rss")
                    || name.ends_with("_ms")
                    || name.ends_with("_s")
                {
                    Direction::Lower
                } else {
                    Direction::Neutral
                };
                out.insert(key(name), (*value, direction));
            }
        }
        let key = |metric: &str| format!("{}/{metric}", s.name);
        out.insert(key("missed_deliveries"), (s.missed_deliveries as f64, Direction::Lower));
        out.insert(key("verification_missing"), (s.verification.missing as f64, Direction::Lower));
        if let Some(r) = &s.resources {
            out.insert(key("server_rss_peak_mb"), (r.rss_peak_mb, Direction::Lower));
            out.insert(key("server_rss_end_mb"), (r.rss_end_mb, Direction::Lower));
            out.insert(key("server_cpu_s"), (r.cpu_s, Direction::Lower));
        }
        if let Some(cpu) = s.cpu_s_per_1000_events {
            out.insert(key("cpu_s_per_1000_events"), (cpu, Direction::Lower));
        }
    }
    out
}

fn label(report: &Report) -> String {
    match (&report.server.name, &report.server.version) {
        (Some(name), Some(version)) => format!("{name} {version} @ {}", report.url),
        _ => report.url.clone(),
    }
}

/// `--compare A B`: every metric of both reports, the ratio B/A, and which one is better.
pub(crate) fn compare(a_path: &Path, b_path: &Path) -> Result<String> {
    let (a, b) = (load(a_path)?, load(b_path)?);
    let (ma, mb) = (metrics(&a), metrics(&b));
    let mut out = String::new();
    let _ = writeln!(out, "A = {} ({}, {})", a_path.display(), label(&a), a.timestamp);
    let _ = writeln!(out, "B = {} ({}, {})", b_path.display(), label(&b), b.timestamp);
    let _ = writeln!(
        out,
        "ratio = B/A. 'better' says which side wins and by how much, knowing whether higher \
         (rates, MB/s) or lower (latencies, CPU, RSS, errors) is better.\n"
    );
    let _ = writeln!(out, "{:<52} {:>12} {:>12} {:>9}  better", "metric", "A", "B", "B/A");
    for (key, &(va, direction)) in &ma {
        let Some(&(vb, _)) = mb.get(key) else { continue };
        let ratio = if va != 0.0 { format!("{:.3}", vb / va) } else { "-".to_owned() };
        let verdict = match direction {
            Direction::Neutral => String::new(),
            _ if (va - vb).abs() <= f64::EPSILON * va.abs().max(vb.abs()) => "same".to_owned(),
            Direction::Higher | Direction::Lower => {
                let b_wins = (direction == Direction::Higher) == (vb > va);
                let (win, lose) = if b_wins { (vb, va) } else { (va, vb) };
                let factor = if direction == Direction::Higher {
                    (lose > 0.0).then(|| win / lose)
                } else {
                    (win > 0.0).then(|| lose / win)
                };
                let side = if b_wins { "B" } else { "A" };
                factor.map_or_else(|| side.to_owned(), |factor| format!("{side} {factor:.2}x"))
            }
        };
        let _ = writeln!(out, "{key:<52} {va:>12.3} {vb:>12.3} {ratio:>9}  {verdict}");
    }
    let only: Vec<&String> = ma
        .keys()
        .filter(|k| !mb.contains_key(*k))
        .chain(mb.keys().filter(|k| !ma.contains_key(*k)))
        .collect();
    if !only.is_empty() {
        let _ = writeln!(
            out,
            "\nin one report only: {}",
            only.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
