//! A progress line on stderr: rewritten in place on a terminal, one line every few seconds
//! otherwise (logs, tests). No extra crate.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug)]
pub(crate) struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    errors: AtomicU64,
    started: Instant,
    finished: AtomicBool,
}

impl Progress {
    /// Starts a progress line that a background task refreshes until `finish`.
    pub(crate) fn start(label: impl Into<String>, total: usize) -> Arc<Self> {
        let progress = Arc::new(Self {
            label: label.into(),
            total: u64::try_from(total).unwrap_or(u64::MAX),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
        });
        let ticker = Arc::downgrade(&progress);
        tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let period = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
            loop {
                tokio::time::sleep(period).await;
                let Some(progress) = ticker.upgrade() else { break };
                if progress.finished.load(Ordering::Acquire) {
                    break;
                }
                progress.print(terminal, false);
            }
        });
        progress
    }

    pub(crate) fn add(&self, ok: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.print(std::io::stderr().is_terminal(), true);
        }
    }

    fn print(&self, terminal: bool, last: bool) {
        let done = self.done.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
        let line = format!(
            "{}: {done}/{} ({rate:.0}/s, {elapsed:.1} s{})",
            self.label,
            self.total,
            if errors > 0 { format!(", {errors} errors") } else { String::new() }
        );
        let mut stderr = std::io::stderr().lock();
        // Progress output is best effort; a closed stderr must not stop the run.
        let _ignored = if terminal {
            write!(stderr, "\r\x1b[2K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(stderr, "{line}")
        };
        let _ignored = stderr.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A one-off status line (phase changes, notes).
pub(crate) fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ignored = writeln!(stderr, "{text}");
}
