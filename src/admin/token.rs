//! `token` commands: registration tokens admins hand out.

use std::{fmt::Write, ops::ControlFlow, sync::Arc, time::Duration};

use clap::Subcommand;

use crate::{
    Error, Result, Services,
    accounts::tokens,
    storage::{
        Batch, Direction,
        codec::{Json, Prefix},
        users::{REGISTRATION_TOKENS_TABLE, RegistrationTokenRecord},
    },
};

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// Issue a new registration token.
    Issue {
        /// How many registrations it allows (unlimited when absent).
        #[arg(long)]
        max_uses: Option<u32>,
        /// How long it stays valid, e.g. 30s, 5m, 12h, 7d (forever when absent).
        #[arg(long)]
        max_age: Option<String>,
        /// Shorthand for --max-uses 1.
        #[arg(long)]
        once: bool,
    },
    /// Revoke an issued token (tokens from the configuration cannot be revoked here).
    Revoke { token: String },
    /// List the configured and issued tokens.
    List,
}

fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 =
        number.parse().map_err(|_| Error::invalid_param(format!("'{text}' is not a duration")))?;
    let seconds = match unit {
        "s" | "" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        "w" => number * 604_800,
        _ => {
            return Err(Error::invalid_param(format!(
                "unknown duration unit in '{text}' (use s, m, h, d, w)"
            )));
        }
    };
    Ok(Duration::from_secs(seconds))
}

pub(super) async fn run(services: &Arc<Services>, command: TokenCommand) -> Result<String> {
    let accounts = &services.accounts;
    match command {
        TokenCommand::Issue { max_uses, max_age, once } => {
            let uses_allowed = if once { Some(1) } else { max_uses };
            let expiry_ms = match max_age {
                Some(age) => Some(
                    services.time.now_ms().saturating_add(parse_duration(&age)?.as_millis() as u64),
                ),
                None => None,
            };
            let token = tokens::generate("reg");
            let record =
                RegistrationTokenRecord { uses_allowed, completed: 0, expiry_ms, bootstrap: false };
            let _registering = accounts.registration.lock().await;
            let mut batch = Batch::new();
            REGISTRATION_TOKENS_TABLE.put(&mut batch, &token, &Json(record));
            services.storage.writer().commit(batch).await?;
            Ok(format!("New registration token: `{token}`"))
        }
        TokenCommand::Revoke { token } => {
            let _registering = accounts.registration.lock().await;
            if REGISTRATION_TOKENS_TABLE.get(services.storage.engine(), &token)?.is_none() {
                return Err(Error::not_found("No such issued token."));
            }
            let mut batch = Batch::new();
            REGISTRATION_TOKENS_TABLE.delete(&mut batch, &token);
            services.storage.writer().commit(batch).await?;
            Ok(format!("Revoked `{token}`."))
        }
        TokenCommand::List => {
            let mut out = String::new();
            if services.config.registration_token.is_some() {
                out.push_str("- `registration_token` from the configuration (unlimited)\n");
            }
            if let Some(path) = &services.config.registration_token_file {
                let _ = writeln!(out, "- tokens in {} (unlimited)", path.display());
            }
            REGISTRATION_TOKENS_TABLE.scan(
                services.storage.engine(),
                &Prefix::all(),
                None,
                Direction::Forward,
                |token, Json(record)| {
                    let uses = record.uses_allowed.map_or_else(
                        || "unlimited".to_owned(),
                        |allowed| format!("{}/{allowed} used", record.completed),
                    );
                    let expiry = record.expiry_ms.map_or_else(
                        || "no expiry".to_owned(),
                        |expiry| format!("expires at {expiry} ms"),
                    );
                    let state =
                        if record.usable(services.time.now_ms()) { "valid" } else { "spent" };
                    let _ = writeln!(out, "- `{token}`: {uses}, {expiry}, {state}");
                    ControlFlow::Continue(())
                },
            )?;
            if out.is_empty() {
                out.push_str("No registration tokens.");
            }
            Ok(out)
        }
    }
}
