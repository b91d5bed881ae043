//! Rooms an admin took out of federation (`!admin federation disable-room`): nothing about
//! them is accepted from other servers (their EDUs are ignored) or sent to them, until
//! `enable-room`. The room's `m.federate` is not touched; this is the operator's switch.

use ruma::RoomId;

use crate::{
    Result,
    storage::{Batch, Storage, federation::DISABLED_ROOMS_TABLE},
};

/// Whether `room` is disabled for federation.
pub fn is_disabled(storage: &Storage, room: &RoomId) -> Result<bool> {
    DISABLED_ROOMS_TABLE.contains(storage.engine(), &room.to_string())
}

/// Disables (`true`) or enables `room` for federation; answers whether that changed anything.
pub async fn set_disabled(storage: &Storage, room: &RoomId, disabled: bool) -> Result<bool> {
    if is_disabled(storage, room)? == disabled {
        return Ok(false);
    }
    let mut batch = Batch::new();
    if disabled {
        DISABLED_ROOMS_TABLE.put(&mut batch, &room.to_string(), &());
    } else {
        DISABLED_ROOMS_TABLE.delete(&mut batch, &room.to_string());
    }
    storage.writer().commit(batch).await?;
    Ok(true)
}
