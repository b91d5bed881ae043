//! What of a room goes to other servers: its local users' typing notifications (the
//! events and receipts are handed over in their own commits, `accept.rs` and `receipts.rs`),
//! and whether another server is in the room at all.

use ruma::UserId;

use super::{Loaded, RoomActor};
use crate::{Result, federation::outbox, storage::Batch};

impl RoomActor {
    /// Hands a local user's typing notice to the other servers in the room (none: nothing
    /// is written).
    pub(super) async fn federate_typing(
        &self,
        room: &Loaded,
        user: &UserId,
        typing: bool,
    ) -> Result<()> {
        if !self.outbox.typing() || !self.federates(room, user)? {
            return Ok(());
        }
        let item = outbox::typing(&room.room_id, user, typing);
        let outbox = self.outbox.clone();
        self.storage
            .writer()
            .commit_with_positions(1, Batch::new(), move |batch, positions| {
                outbox.put(batch, positions.start, &item);
            })
            .await
            .map(drop)
    }

    /// Whether what `user` does in the room goes to other servers: `user` is one of ours
    /// and a member of another server is joined.
    pub(super) fn federates(&self, room: &Loaded, user: &UserId) -> Result<bool> {
        Ok(self.outbox.enabled()
            && user.server_name() == self.server_name
            && self.has_remote_members(room)?)
    }

    /// Whether a member of another server is joined to the room (as of the last commit).
    pub(super) fn has_remote_members(&self, room: &Loaded) -> Result<bool> {
        Ok(self.joined_members(room)?.iter().any(|member| member.server_name() != self.server_name))
    }
}
