//! `debug` commands.

use std::sync::Arc;

use clap::Subcommand;

use crate::{Result, Services};

#[derive(Subcommand, Debug)]
pub(super) enum DebugCommand {
    /// Reply with the given text.
    Echo { message: Vec<String> },
    /// The committed stream position and the database path.
    DatabaseStats,
}

pub(super) async fn run(services: &Arc<Services>, command: DebugCommand) -> Result<String> {
    match command {
        DebugCommand::Echo { message } => Ok(message.join(" ")),
        DebugCommand::DatabaseStats => Ok(format!(
            "Database at {}; committed stream position {}.",
            services.storage.engine().path().display(),
            services.storage.writer().committed_position()
        )),
    }
}
