//! Read receipts: recording one moves the reader's unread counts in the same commit.

use ruma::{EventId, UserId};

use super::{Loaded, RoomActor};
use crate::{
    Error, Result,
    federation::outbox,
    push::counts as push_counts,
    rooms,
    storage::{
        Batch,
        codec::Json,
        rooms::{RECEIPT_STREAM_TABLE, RECEIPTS_TABLE, ReceiptRecord},
    },
};

impl RoomActor {
    /// Records `user`'s receipt of `kind` up to `event_id` (in `thread`, if given).
    pub(super) async fn receipt(
        &self,
        room: &Loaded,
        user: &UserId,
        kind: String,
        event_id: &EventId,
        thread: Option<String>,
    ) -> Result<()> {
        if !self.is_member(room, user)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let short = rooms::event_short(&self.storage, event_id)?;
        let meta = match short {
            Some(short) => rooms::event_meta(self.storage.engine(), short)?
                .filter(|meta| meta.room == room.short),
            None => None,
        };
        let Some(meta) = meta else {
            return Err(Error::not_found("That event is not in this room."));
        };
        let thread_key = thread.unwrap_or_default();
        let key = (room.short, kind.clone(), user.to_string(), thread_key.clone());
        let mut batch = Batch::new();
        if let Some(Json(previous)) = RECEIPTS_TABLE.get(self.storage.engine(), &key)? {
            if previous.event_id == event_id {
                return Ok(());
            }
            RECEIPT_STREAM_TABLE.delete(&mut batch, &(room.short, previous.position));
        }
        // Reading up to an event clears the notifications it covers (a threaded receipt only
        // its thread's).
        let threaded = (!thread_key.is_empty()).then_some(thread_key.as_str());
        let counts = push_counts::read_up_to(
            self.storage.engine(),
            user,
            room.short,
            meta.position,
            threaded,
            &mut batch,
        )?;
        let event_id = event_id.to_owned();
        let room_short = room.short;
        let reader = user.to_owned();
        let ts = self.time.now_ms();
        // Public receipts of our users go to the other servers in the room.
        let federated = (kind == "m.read" && self.federates(room, user)?).then(|| {
            outbox::receipt(&room.room_id, user, &event_id, ts, Some(thread_key.as_str()))
        });
        let outbox = self.outbox.clone();
        let stream_entry = (user.to_string(), kind.clone(), thread_key);
        let _writing =
            self.storage.coherent().unread_counts.begin(vec![(user.to_owned(), room_short)]);
        self.storage
            .writer()
            .commit_with_positions(1, batch, move |batch, positions| {
                let position = positions.start;
                push_counts::write_counts(batch, &reader, room_short, counts, position);
                RECEIPTS_TABLE.put(batch, &key, &Json(ReceiptRecord { event_id, ts, position }));
                RECEIPT_STREAM_TABLE.put(batch, &(room_short, position), &Json(stream_entry));
                if let Some(item) = federated {
                    outbox.put(batch, position, &item);
                }
            })
            .await?;
        if kind == "m.read.private" {
            self.hub.user_changed(user);
        } else {
            self.hub.room_changed(&room.room_id);
        }
        Ok(())
    }
}
