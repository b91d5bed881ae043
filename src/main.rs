//! The `tuwunel` binary: parse arguments, load configuration, run the server until a signal.

use std::process::ExitCode;

use clap::Parser;
use tuwunel::{
    Config, Server,
    config::{Inputs, args::Args, example},
    logging, storage,
};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.generate_config {
        print!("{}", example::generate());
        return ExitCode::SUCCESS;
    }

    let inputs = Inputs::from_process(args.config.clone(), args.option.clone());
    let mut config = match Config::load(&inputs) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tuwunel: configuration error: {error}");
            return ExitCode::from(1);
        }
    };
    config.global_mut().admin_execute.extend(args.execute.iter().cloned());

    logging::init(&config.log);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    if let Some(id) = args.restore_backup {
        let Some(directory) = config.database_backup_path.clone() else {
            eprintln!("tuwunel: --restore-backup needs database_backup_path to be set");
            return ExitCode::from(1);
        };
        match storage::backup::restore(&directory, &config.database_path, id) {
            Ok(info) => tracing::warn!(backup = info.id, "restored the database from a backup"),
            Err(error) => {
                eprintln!("tuwunel: restoring the backup failed: {error}");
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
            eprintln!("tuwunel: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(error) => {
                tracing::error!(%error, "startup failed");
                eprintln!("tuwunel: startup failed: {error}");
                return ExitCode::from(1);
            }
        };
        let shutdown = server.shutdown_handle();
        let services = std::sync::Arc::downgrade(server.services());
        tokio::spawn(async move {
            handle_signals(services).await;
            shutdown.trigger();
        });
        match server.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tuwunel: {error}");
                ExitCode::from(1)
            }
        }
    })
}

/// Returns when the server should stop (SIGTERM, SIGINT). SIGUSR2 runs the configured
/// `admin_signal_execute` commands; SIGHUP is logged and ignored (there is no live reload).
async fn handle_signals(services: std::sync::Weak<tuwunel::Services>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup), Ok(mut user2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP received: configuration is not reloaded; restart the server to apply changes");
            }
            _ = user2.recv() => {
                if let Some(services) = services.upgrade() {
                    Server::signal_commands(&services);
                }
            }
        }
    }
    tracing::info!("stop signal received");
}
