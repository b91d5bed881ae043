//! Resource sampling of the server process (same machine, `--server-pid`): VmRSS from
//! `/proc/<pid>/status` and utime+stime from `/proc/<pid>/stat`, every 200 ms.

use std::{
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) rss_kb: u64,
    /// User plus system CPU time in seconds.
    pub(crate) cpu_s: f64,
}

/// What the sampler saw between start and stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Resources {
    pub(crate) pid: u32,
    pub(crate) duration_s: f64,
    pub(crate) samples: usize,
    pub(crate) rss_start_mb: f64,
    pub(crate) rss_end_mb: f64,
    pub(crate) rss_peak_mb: f64,
    /// CPU seconds (user + system) the process consumed between start and stop.
    pub(crate) cpu_s: f64,
    /// `cpu_s / duration_s`: average cores busy.
    pub(crate) cpu_cores_avg: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Reads RSS and CPU time of `pid` now.
pub(crate) fn read(pid: u32) -> Result<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|error| Error::new(format!("/proc/{pid}/stat: {error}")))?;
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(Error::new(format!("/proc/{pid}/stat: unexpected format")));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|error| Error::new(format!("/proc/{pid}/status: {error}")))?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Reading { rss_kb, cpu_s: (utime + stime) as f64 / ticks_per_second() })
}

/// A background sampler of one process.
#[derive(Debug)]
pub(crate) struct Sampler {
    pid: u32,
    started: Instant,
    first: Reading,
    stop: Arc<AtomicBool>,
    readings: Arc<Mutex<Vec<Reading>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `pid` every 200 ms; fails if the process cannot be read.
    pub(crate) fn start(pid: u32) -> Result<Self> {
        let first = read(pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let readings = Arc::new(Mutex::new(vec![first]));
        let task = {
            let stop = Arc::clone(&stop);
            let readings = Arc::clone(&readings);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(200));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.load(Ordering::Acquire) {
                    interval.tick().await;
                    let Ok(reading) = read(pid) else { break };
                    readings.lock().unwrap_or_else(PoisonError::into_inner).push(reading);
                }
            })
        };
        Ok(Self { pid, started: Instant::now(), first, stop, readings, task })
    }

    /// Stops sampling and summarises (with one last reading).
    pub(crate) async fn stop(self) -> Resources {
        self.stop.store(true, Ordering::Release);
        // The task ends within one tick; waiting is bounded by that.
        let _ended = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        let mut readings =
            std::mem::take(&mut *self.readings.lock().unwrap_or_else(PoisonError::into_inner));
        if let Ok(last) = read(self.pid) {
            readings.push(last);
        }
        let last = readings.last().copied().unwrap_or(self.first);
        let duration_s = self.started.elapsed().as_secs_f64();
        let mb = |kb: u64| kb as f64 / 1024.0;
        let cpu_s = (last.cpu_s - self.first.cpu_s).max(0.0);
        Resources {
            pid: self.pid,
            duration_s,
            samples: readings.len(),
            rss_start_mb: mb(self.first.rss_kb),
            rss_end_mb: mb(last.rss_kb),
            rss_peak_mb: mb(readings.iter().map(|reading| reading.rss_kb).max().unwrap_or(0)),
            cpu_s,
            cpu_cores_avg: if duration_s > 0.0 { cpu_s / duration_s } else { 0.0 },
        }
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Established TCP connections whose local port is `port` (the server's side of each
/// loopback connection), from `/proc/net/tcp` and `/proc/net/tcp6`.
pub(crate) fn established_to_port(port: u16) -> Option<usize> {
    let mut count = 0;
    let mut readable = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else { continue };
        readable = true;
        for line in table.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            let local_port =
                local.rsplit_once(':').and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if state == "01" && local_port == Some(port) {
                count += 1;
            }
        }
    }
    readable.then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let reading = read(std::process::id()).expect("own /proc entry");
        assert!(reading.rss_kb > 0);
        assert!(reading.cpu_s >= 0.0);
        assert!(open_files_limit().is_some_and(|limit| limit > 0));
    }
}
