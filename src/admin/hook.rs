//! The admin room's command hook: a message starting with `!admin` that an admin sends in the
//! admin room (`rooms::admin_room`) runs an admin command, whose output the server user posts
//! back. It listens to the admin room's commits, so a command runs once per committed
//! message, whatever way the message came in (a client's retried send commits nothing new).

use std::sync::{Arc, Weak};

use serde::Deserialize;

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{TimelineEventType, room::message::RoomMessageEventContent},
};

use crate::{
    Result, Services,
    actors::{contain::contained, tasks},
    rooms::{
        Pdu, admin_room,
        builder::Template,
        commits::{CommitListener, Pending, RoomCommit, done},
    },
};

/// Runs the `!admin` commands committed to the admin room.
pub struct CommandHook {
    /// Weak: the hook is held by the rooms service inside `Services`.
    services: Weak<Services>,
    admin_room: OwnedRoomId,
    server_user: OwnedUserId,
}

impl CommandHook {
    /// Subscribes the hook to the commits of `admin_room`, once that room exists.
    pub fn subscribe(services: &Arc<Services>, admin_room: OwnedRoomId) -> Result<()> {
        let hook = Self {
            services: Arc::downgrade(services),
            admin_room,
            server_user: admin_room::server_user(&services.config)?,
        };
        services.rooms.listeners.subscribe(Arc::new(hook));
        Ok(())
    }

    /// The command line of `pdu` if it is an `!admin` message from someone other than the
    /// server user (whose notices never run anything).
    fn command_of(&self, pdu: &Pdu) -> Option<String> {
        /// The one field of a message the hook reads; any other shape is not a command.
        #[derive(Deserialize)]
        struct Message {
            body: serde_json::Value,
        }
        if pdu.kind != TimelineEventType::RoomMessage
            || pdu.state_key.is_some()
            || pdu.sender == self.server_user
        {
            return None;
        }
        let message: Message = serde_json::from_str(pdu.content.get()).ok()?;
        let command = message.body.as_str()?.trim().strip_prefix("!admin")?;
        Some(command.trim().to_owned())
    }
}

impl CommitListener for CommandHook {
    fn committed<'a>(&'a self, commit: &'a RoomCommit) -> Pending<'a> {
        if commit.room_id != self.admin_room {
            return done();
        }
        for event in &commit.events {
            let Some(command) = self.command_of(&event.pdu) else { continue };
            let Some(services) = self.services.upgrade() else { break };
            if services.accounts.is_admin(&event.pdu.sender) {
                run(services, &commit.room_id, &self.server_user, &command);
            }
        }
        done()
    }
}

/// Runs `command` in the background and posts its output (or failure) as the server user.
fn run(services: Arc<Services>, room_id: &RoomId, server_user: &UserId, command: &str) {
    let line = if command.is_empty() { "--help".to_owned() } else { command.to_owned() };
    let room_id = room_id.to_owned();
    let server_user = server_user.to_owned();
    tasks::spawn("admin_room_command", async move {
        // A command that panics is reported (logged and counted) and answered, so the admin
        // is not left waiting for output that never comes.
        let output = match contained(super::execute(&services, &line)).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => format!("Command failed: {error}"),
            Err(panic) => {
                tasks::report_panic("admin_room_command", &panic);
                "Command failed: it panicked; the server log has the details.".to_owned()
            }
        };
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
