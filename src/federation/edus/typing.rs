//! `m.typing`: another server's user started or stopped typing in a room; applied through
//! the room's actor, which checks that the user is joined and ends the notice after
//! `typing_federation_timeout_s` unless the server ends it sooner.

use std::time::Duration;

use ruma::{ServerName, api::federation::transactions::edu::TypingContent};

use super::from_origin;
use crate::{Error, Result, federation::intake::Intake, rooms::actor::RoomMessage};

pub async fn receive(intake: &Intake, origin: &ServerName, content: TypingContent) -> Result<()> {
    if !intake.settings.typing {
        return Ok(());
    }
    from_origin(&content.user_id, origin)?;
    if !intake.origin_in_room(origin, &content.room_id)? {
        return Err(Error::forbidden(format!("{origin} has no member in {}", content.room_id)));
    }
    let timeout = content.typing.then_some(intake.settings.typing_timeout);
    let user = content.user_id;
    intake
        .rooms
        .call(
            &content.room_id,
            |reply| RoomMessage::Typing { user, timeout, reply },
            Duration::from_secs(30),
        )
        .await?
}
