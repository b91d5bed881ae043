//! Logging: `tracing` to standard output with the filter from the `log` key.
//!
//! Standard output may be a pipe that closes while the server runs (`tuwunel | head`, a log
//! collector that restarts). Writing to it then fails with `EPIPE` (Rust ignores `SIGPIPE`);
//! the lines are dropped and nothing else may fail. tracing-subscriber would report each
//! failed write with `eprintln!`, which panics when standard error is closed too, in
//! whichever thread was logging: a signal handler that logged its signal would die and the
//! server would ignore SIGTERM. So those reports are off.

use std::io::{IsTerminal, Write};

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls (a second server in one process) keep the
/// first one.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal())
        .log_internal_errors(false)
        .try_init();
}

/// Writes a line to standard error, ignoring a closed stream (unlike `eprintln!`, which
/// panics then).
pub fn stderr_line(line: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(line);
    let _ = stderr.write_all(b"\n");
}
