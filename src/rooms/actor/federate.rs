//! What of a room goes to other servers: its local users' typing notifications (the
//! events and receipts are handed over in their own commits, `accept.rs` and `receipts.rs`),
//! and whether another server is in the room at all.

use ruma::{UserId, events::TimelineEventType};

use super::{Loaded, RoomActor, accept::Prepared};
use crate::{
    Result,
    federation::outbox,
    storage::{Batch, federation::OutboxItem},
};

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

    /// The outbox row of an event committed in a room shared with other servers: this
    /// server's own events go to the room's other servers, another server's event only when
    /// this server relays it (a join taken through `send_join`), never back to its origin.
    /// Another server's membership event that is not relayed changes who is in the room:
    /// its row only tells the fan-out so.
    pub(super) fn outbox_item(&self, prepared: &Prepared) -> Option<OutboxItem> {
        let room = &prepared.pdu.room_id;
        // Our join through a resident: the resident relays it; who is in the room changed.
        if prepared.unsent {
            return Some(outbox::members_changed(room));
        }
        if let Some(origin) = &prepared.relay_except {
            return Some(outbox::relay(room, prepared.short, origin));
        }
        if prepared.pdu.sender.server_name() == self.server_name {
            return Some(outbox::pdu(room, prepared.short));
        }
        (prepared.pdu.kind == TimelineEventType::RoomMember).then(|| outbox::members_changed(room))
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
