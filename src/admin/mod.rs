//! Admin commands, with Tuwunel's names: `server backup-database`, `debug echo` and so on.
//!
//! A command line is parsed by clap into [`AdminCommand`] and executed against the running
//! server; the output is Markdown, as the admin room shows it. Startup commands
//! (`admin_execute`, `--execute`) and the admin room's command hook ([`hook`]) use the same
//! path.

mod debug;
mod federation;
pub mod hook;
mod media;
mod rooms;
mod server;
mod token;
mod users;

use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::{Error, Result, Services};

/// `!admin <group> <command> [args]`.
#[derive(Parser, Debug)]
#[command(name = "!admin", no_binary_name = true, disable_version_flag = true)]
pub struct AdminCommand {
    #[command(subcommand)]
    group: Group,
}

#[derive(Subcommand, Debug)]
enum Group {
    /// Server-wide operations: uptime, configuration, backups, shutdown.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Rooms: list, inspect, members, reports.
    #[command(subcommand)]
    Rooms(rooms::RoomsCommand),
    /// Accounts: create, reset passwords, deactivate, admin rights.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Registration tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Media: storage usage, file information, deletion.
    #[command(subcommand)]
    Media(media::MediaCommand),
    /// Federation: the servers this server sends to, transactions received, rooms taken out
    /// of federation.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Diagnostics.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// The command groups (`server`, `rooms`, ...), in the order `!admin --help` lists them.
pub fn group_names() -> Vec<String> {
    AdminCommand::command()
        .get_subcommands()
        .map(|group| group.get_name().to_owned())
        .filter(|name| name != "help")
        .collect()
}

/// Parses and runs one command line; `Ok` carries the output, help text included.
pub async fn execute(services: &Arc<Services>, line: &str) -> Result<String> {
    let words = split_words(line).map_err(Error::invalid_param)?;
    let command = match AdminCommand::try_parse_from(words) {
        Ok(command) => command,
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            return Ok(format!("```\n{}\n```", error.render()));
        }
        Err(error) => return Err(Error::invalid_param(format!("{}", error.render()))),
    };
    match command.group {
        Group::Server(command) => server::run(services, command).await,
        Group::Rooms(command) => rooms::run(services, command).await,
        Group::Users(command) => users::run(services, command).await,
        Group::Token(command) => token::run(services, command).await,
        Group::Media(command) => media::run(services, command).await,
        Group::Federation(command) => federation::run(services, command).await,
        Group::Debug(command) => debug::run(services, command).await,
    }
}

/// Splits a command line into words, honouring single and double quotes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for character in line.chars() {
        match (quote, character) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(character);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".to_owned());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn words_and_quotes() {
        assert_eq!(split_words("server  uptime").expect("ok"), ["server", "uptime"]);
        assert_eq!(
            split_words("debug echo 'a b' \"c\"").expect("ok"),
            ["debug", "echo", "a b", "c"]
        );
        assert_eq!(split_words("debug echo ''").expect("ok"), ["debug", "echo", ""]);
        assert!(split_words("debug echo 'open").is_err());
    }
}
