//! The admin room's command hook: messages starting with `!admin` that an admin sends in the
//! admin room (`rooms::admin_room`) run admin commands, whose output the server user posts
//! back.

use std::sync::Arc;

use ruma::{RoomId, UserId, events::room::message::RoomMessageEventContent};

use crate::{
    Services,
    actors::{contain::contained, tasks},
    rooms::{admin_room, builder::Template},
};

/// Runs `!admin ...` sent by an admin in the admin room and posts the output as the server
/// user. Returns at once; the command runs in the background.
pub fn maybe_run(services: &Arc<Services>, room_id: &RoomId, sender: &UserId, body: &str) {
    let Some(command) = body.trim().strip_prefix("!admin") else {
        return;
    };
    let in_admin_room = admin_room::id(&services.storage)
        .ok()
        .flatten()
        .is_some_and(|admin_room| admin_room == room_id);
    if !in_admin_room || !services.accounts.is_admin(sender) {
        return;
    }
    let command = command.trim().to_owned();
    let services = Arc::clone(services);
    let room_id = room_id.to_owned();
    tasks::spawn("admin_room_command", async move {
        let line = if command.is_empty() { "--help" } else { &command };
        // A command that panics is reported (logged and counted) and answered, so the admin
        // is not left waiting for output that never comes.
        let output = match contained(super::execute(&services, line)).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => format!("Command failed: {error}"),
            Err(panic) => {
                tasks::report_panic("admin_room_command", &panic);
                "Command failed: it panicked; the server log has the details.".to_owned()
            }
        };
        let Ok(server_user) = admin_room::server_user(&services.config) else { return };
        let notice = RoomMessageEventContent::notice_plain(output);
        let sent = match Template::message_typed(&server_user, &notice) {
            Ok(template) => services.rooms.send(&room_id, template, None).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "could not post admin command output");
        }
    });
}
