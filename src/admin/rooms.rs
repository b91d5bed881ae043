//! `rooms` commands: list rooms, inspect one, list its members, read users' reports.

use std::{fmt::Write, ops::ControlFlow, sync::Arc};

use clap::Subcommand;
use ruma::{RoomId, RoomOrAliasId};

use crate::{
    Error, Result, Services, rooms,
    storage::{
        Direction,
        codec::Json,
        rooms::{REPORTS_TABLE, ROOMS_TABLE},
    },
};

#[derive(Subcommand, Debug)]
pub(super) enum RoomsCommand {
    /// List the rooms this server knows, with their joined member counts.
    List,
    /// Show a room's version, creator, name and members count.
    Info { room: String },
    /// List the joined members of a room.
    ListJoinedMembers { room: String },
    /// Show the most recent reports of events, rooms and users.
    ListReports {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

fn resolve(services: &Services, room: &str) -> Result<ruma::OwnedRoomId> {
    let target = RoomOrAliasId::parse(room)
        .map_err(|error| Error::invalid_param(format!("{room}: {error}")))?;
    services.rooms.aliases.resolve_room(&target)
}

fn name(services: &Services, room: &RoomId) -> String {
    rooms::current_state_event(&services.storage, room, "m.room.name", "")
        .ok()
        .flatten()
        .and_then(|pdu| pdu.content_str("name"))
        .unwrap_or_default()
}

pub(super) async fn run(services: &Arc<Services>, command: RoomsCommand) -> Result<String> {
    match command {
        RoomsCommand::List => {
            let mut rows = Vec::new();
            ROOMS_TABLE.scan(
                services.storage.engine(),
                b"",
                None,
                Direction::Forward,
                |room, Json(record)| {
                    rows.push((room, record.short));
                    ControlFlow::Continue(())
                },
            )?;
            let mut out = format!("Rooms ({}):\n", rows.len());
            for (room, short) in rows {
                let members = rooms::timeline::joined_members(&services.storage, short)?.len();
                let room_id = RoomId::parse(room.as_str())
                    .map_err(|error| Error::internal(error.to_string()))?;
                let _ = writeln!(out, "- {room} ({members} joined) {}", name(services, &room_id));
            }
            Ok(out)
        }
        RoomsCommand::Info { room } => {
            let room_id = resolve(services, &room)?;
            let record = rooms::room(&services.storage, &room_id)?
                .ok_or_else(|| Error::not_found("Unknown room."))?;
            let members = rooms::timeline::joined_members(&services.storage, record.short)?.len();
            Ok(format!(
                "{room_id}\n- name: {}\n- version: {}\n- creator: {}\n- joined members: {members}",
                name(services, &room_id),
                record.version,
                record.creator
            ))
        }
        RoomsCommand::ListJoinedMembers { room } => {
            let room_id = resolve(services, &room)?;
            let record = rooms::room(&services.storage, &room_id)?
                .ok_or_else(|| Error::not_found("Unknown room."))?;
            let members = rooms::timeline::joined_members(&services.storage, record.short)?;
            Ok(format!(
                "Joined members of {room_id} ({}):\n- {}",
                members.len(),
                members.join("\n- ")
            ))
        }
        RoomsCommand::ListReports { limit } => {
            let mut out = String::new();
            let mut count = 0usize;
            REPORTS_TABLE.scan(
                services.storage.engine(),
                b"",
                None,
                Direction::Reverse,
                |(received, _), Json(report)| {
                    count += 1;
                    let target = match (&report.event_id, &report.room_id, &report.user_id) {
                        (Some(event), Some(room), _) => format!("event {event} in {room}"),
                        (None, Some(room), _) => format!("room {room}"),
                        (_, _, Some(user)) => format!("user {user}"),
                        _ => "nothing".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "- at {received} ms, {} reported {target}: {}",
                        report.reporter,
                        report.reason.as_deref().unwrap_or("(no reason)")
                    );
                    if count >= limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                },
            )?;
            if out.is_empty() {
                out.push_str("No reports.");
            }
            Ok(out)
        }
    }
}
