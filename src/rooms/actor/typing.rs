//! Typing notifications: the room actor sets them and expires them on its own timers.

use std::time::Duration;

use ruma::{RoomId, UserId};

use super::{Loaded, RoomActor, RoomMessage};
use crate::{Error, Result, actors::Context};

impl RoomActor {
    /// Starts (`Some(timeout)`, clamped to the configured bounds) or stops `user`'s typing
    /// notification; a joined member only.
    pub(super) async fn set_typing(
        &self,
        context: &Context<Self>,
        room: &Loaded,
        user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if !self.is_member(room, user)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let changed = match timeout {
            Some(timeout) => {
                let (shortest, longest) = self.typing_timeouts;
                let timeout = timeout.clamp(shortest, longest);
                context.send_after(timeout, RoomMessage::TypingExpired { user: user.to_owned() });
                self.typing.set(&room.room_id, user, Some(self.time.now() + timeout))
            }
            None => self.typing.set(&room.room_id, user, None),
        };
        if changed {
            self.hub.room_changed(&room.room_id);
        }
        self.federate_typing(room, user, timeout.is_some()).await
    }

    /// A typing notification may have run out: clears it if its time has come.
    pub(super) fn typing_expired(&self, room_id: &RoomId, user: &UserId) {
        if self.typing.expire(room_id, user, self.time.now()) {
            self.hub.room_changed(room_id);
        }
    }
}
