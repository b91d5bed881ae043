//! `federation` commands, with Tuwunel's names (`incoming-federation`, `disable-room`,
//! `enable-room`, `fetch-support-well-known`, `remote-user-in-rooms`) and two of ours for
//! the senders: `destinations` and `reset-backoff`. Each calls the federation domain; none
//! holds a rule of its own.

use std::{fmt::Write, sync::Arc, time::Instant};

use clap::Subcommand;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId};

use crate::{
    Error, Result, Services,
    federation::{disabled_rooms, sender::status::Phase},
    rooms,
};

#[derive(Subcommand, Debug)]
pub(super) enum FederationCommand {
    /// List the transactions from other servers being applied now.
    IncomingFederation,
    /// Take a room out of federation: nothing about it is accepted from other servers or
    /// sent to them until `enable-room`. Its `m.federate` is not changed.
    DisableRoom { room_id: OwnedRoomId },
    /// Let a room disabled with `disable-room` federate again.
    EnableRoom { room_id: OwnedRoomId },
    /// Fetch `/.well-known/matrix/support` from a server name (served at the name itself,
    /// not found through server discovery): who to contact there.
    FetchSupportWellKnown { server_name: OwnedServerName },
    /// List the rooms this server shares with a user of another server.
    RemoteUserInRooms { user_id: OwnedUserId },
    /// List the servers this server sends to: state, backoff, queue, transactions.
    Destinations,
    /// Forget a server's failures and send what is queued for it now.
    ResetBackoff { server_name: OwnedServerName },
}

pub(super) async fn run(services: &Arc<Services>, command: FederationCommand) -> Result<String> {
    let federation = &services.federation;
    match command {
        FederationCommand::IncomingFederation => {
            let running = federation.intake.running();
            if running.is_empty() {
                return Ok("No transactions are being applied.".to_owned());
            }
            let mut out = format!("Transactions being applied ({}):\n", running.len());
            for (origin, txn_id, elapsed) in running {
                let _ = writeln!(out, "- {txn_id} from {origin}, for {} ms", elapsed.as_millis());
            }
            Ok(out)
        }
        FederationCommand::DisableRoom { room_id } => {
            rooms::room(&services.storage, &room_id)?
                .ok_or_else(|| Error::not_found("Unknown room."))?;
            Ok(if disabled_rooms::set_disabled(&services.storage, &room_id, true).await? {
                format!("Federation is disabled for {room_id}.")
            } else {
                format!("Federation was already disabled for {room_id}.")
            })
        }
        FederationCommand::EnableRoom { room_id } => {
            Ok(if disabled_rooms::set_disabled(&services.storage, &room_id, false).await? {
                format!("Federation is enabled again for {room_id}.")
            } else {
                format!("{room_id} was not disabled for federation.")
            })
        }
        FederationCommand::FetchSupportWellKnown { server_name } => {
            federation.policy.check(&server_name)?;
            let document = federation
                .client
                .discovery()
                .fetch_support(&server_name)
                .await
                .map_err(|error| Error::not_found(format!("{server_name}: {error}")))?;
            let text = serde_json::to_string_pretty(&document)?;
            Ok(format!("`/.well-known/matrix/support` of {server_name}:\n```json\n{text}\n```"))
        }
        FederationCommand::RemoteUserInRooms { user_id } => {
            if user_id.server_name() == services.config.server_name {
                return Err(Error::invalid_param("That user is one of this server's."));
            }
            let joined = rooms::joined_rooms(services.storage.engine(), &user_id)?;
            if joined.is_empty() {
                return Ok(format!("{user_id} shares no room with this server."));
            }
            let mut out = format!("Rooms {user_id} is joined to here ({}):\n", joined.len());
            for room in joined {
                let _ = writeln!(out, "- {room}");
            }
            Ok(out)
        }
        FederationCommand::Destinations => destinations(services),
        FederationCommand::ResetBackoff { server_name } => {
            if server_name == services.config.server_name {
                return Err(Error::invalid_param("That is this server."));
            }
            let queued = federation.sender.reset_backoff(&server_name).await?;
            Ok(if queued {
                format!("Backoff of {server_name} reset; sending what is queued now.")
            } else {
                format!("Backoff of {server_name} reset; nothing is queued for it.")
            })
        }
    }
}

/// The destinations known since the start, and those with work left from before it.
fn destinations(services: &Services) -> Result<String> {
    let sender = &services.federation.sender;
    let mut statuses = sender.statuses().all();
    for server in sender.destinations_with_work()? {
        if !statuses.iter().any(|(known, _)| *known == server) {
            statuses.push((server, Default::default()));
        }
    }
    if statuses.is_empty() {
        return Ok("No destinations.".to_owned());
    }
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    let now = Instant::now();
    let mut out = format!("Destinations ({}):\n", statuses.len());
    for (server, status) in statuses {
        let state = match status.phase {
            Phase::Idle if status.queued > 0 => "waiting".to_owned(),
            Phase::Idle => "idle".to_owned(),
            Phase::Sending => "sending".to_owned(),
            Phase::Backoff(until) => format!(
                "backing off for {} s after {} failures",
                until.saturating_duration_since(now).as_secs(),
                status.failures
            ),
        };
        let _ = write!(
            out,
            "- {server}: {state}; {} queued, {} transactions sent, {} failed",
            status.queued, status.sent, status.failed
        );
        match &status.last_error {
            Some(error) => {
                let _ = writeln!(out, "; last error: {error}");
            }
            None => out.push('\n'),
        }
    }
    Ok(out)
}
