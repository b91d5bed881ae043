//! The `tuwunel` binary: parse arguments, load configuration, run the server until a signal.

use std::process::ExitCode;

use clap::Parser;
use tuwunel::{
    Config, Server,
    config::{Inputs, args::Args, example},
    logging, memory, storage,
};

/// jemalloc serves every allocation: with dozens of threads allocating and freeing, glibc's
/// malloc kept freed memory in fragmented arenas that `malloc_trim` could not return (see
/// docs/deployment.md, Memory). Caches and actors allocate from arenas of their own
/// (`memory::Allocator`).
#[global_allocator]
static GLOBAL: memory::Allocator = memory::Allocator;

fn main() -> ExitCode {
    let arenas_created = memory::create_arenas();
    let purging = memory::start_background_purging();
    let args = Args::parse();
    if args.generate_config {
        // Written without `print!`, which panics when the reader went away (`| head`).
        let _ = std::io::Write::write_all(&mut std::io::stdout(), example::generate().as_bytes());
        return ExitCode::SUCCESS;
    }

    let inputs = Inputs::from_process(args.config.clone(), args.option.clone());
    let mut config = match Config::load(&inputs) {
        Ok(config) => config,
        Err(error) => {
            logging::stderr_line(format_args!("tuwunel: configuration error: {error}"));
            return ExitCode::from(1);
        }
    };
    config.global_mut().admin_execute.extend(args.execute.iter().cloned());

    logging::init(&config.log);
    if !arenas_created {
        tracing::warn!("jemalloc refused to create the arenas for caches and actors");
    }
    if !purging {
        tracing::warn!("jemalloc refused to start its background threads; freed pages stay longer");
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    if let Some(id) = args.restore_backup {
        let Some(directory) = config.database_backup_path.clone() else {
            logging::stderr_line(format_args!(
                "tuwunel: --restore-backup needs database_backup_path to be set"
            ));
            return ExitCode::from(1);
        };
        match storage::backup::restore(&directory, &config.database_path, id) {
            Ok(info) => tracing::warn!(backup = info.id, "restored the database from a backup"),
            Err(error) => {
                logging::stderr_line(format_args!("tuwunel: restoring the backup failed: {error}"));
                return ExitCode::from(1);
            }
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tuwunel")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            logging::stderr_line(format_args!("tuwunel: cannot start the async runtime: {error}"));
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Signal handlers go in before anything listens, so an early SIGTERM or SIGHUP is
        // handled rather than killing the process.
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => {
                logging::stderr_line(format_args!(
                    "tuwunel: cannot install signal handlers: {error}"
                ));
                return ExitCode::from(1);
            }
        };
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(error) => {
                tracing::error!(%error, "startup failed");
                logging::stderr_line(format_args!("tuwunel: startup failed: {error}"));
                return ExitCode::from(1);
            }
        };
        let shutdown = server.shutdown_handle();
        let services = std::sync::Arc::downgrade(server.services());
        tokio::spawn(async move {
            // However the handler ends, a panic included, the server stops: one that could no
            // longer hear SIGTERM must not keep running unnoticed.
            let _ = tokio::spawn(signals.handle(services)).await;
            shutdown.trigger();
        });
        match server.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                logging::stderr_line(format_args!("tuwunel: {error}"));
                ExitCode::from(1)
            }
        }
    })
}

/// The signals the server reacts to.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    user2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Returns when the server should stop (SIGTERM, SIGINT). SIGUSR2 runs the configured
    /// `admin_signal_execute` commands; SIGHUP is logged and ignored (there is no live
    /// reload).
    async fn handle(mut self, services: std::sync::Weak<tuwunel::Services>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => break,
                _ = self.interrupt.recv() => break,
                _ = self.hangup.recv() => {
                    tracing::warn!("SIGHUP received: configuration is not reloaded; restart the server to apply changes");
                }
                _ = self.user2.recv() => {
                    if let Some(services) = services.upgrade() {
                        Server::signal_commands(&services);
                    }
                }
            }
        }
        tracing::info!("stop signal received");
    }
}
