//! `m.receipt`: read receipts of another server's users, applied through each room's actor
//! like a local user's public receipt (the actor checks the user is joined and the event is
//! in the room). At most `limits::MAX_EDU_ENTRIES` receipts are read from one EDU.

use std::time::Duration;

use ruma::{
    ServerName, api::federation::transactions::edu::ReceiptContent, events::receipt::ReceiptThread,
};

use super::from_origin;
use crate::{Result, federation::intake::Intake, limits, rooms::actor::RoomMessage};

pub async fn receive(intake: &Intake, origin: &ServerName, content: ReceiptContent) -> Result<()> {
    let mut budget = limits::MAX_EDU_ENTRIES;
    for (room, receipts) in content.receipts {
        if !intake.origin_in_room(origin, &room)? {
            tracing::debug!(%origin, %room, "receipts for a room the origin has no member in");
            continue;
        }
        for (user, receipt) in receipts.read {
            if budget == 0 {
                return Ok(());
            }
            budget -= 1;
            if from_origin(&user, origin).is_err() {
                continue;
            }
            let Some(event_id) = receipt.event_ids.into_iter().next() else { continue };
            let thread = match receipt.data.thread {
                ReceiptThread::Main => Some("main".to_owned()),
                ReceiptThread::Thread(root) => Some(root.to_string()),
                _ => None,
            };
            let kind = "m.read".to_owned();
            let applied = intake
                .rooms
                .call(
                    &room,
                    |reply| RoomMessage::Receipt {
                        user: user.clone(),
                        kind,
                        event_id,
                        thread,
                        reply,
                    },
                    Duration::from_secs(30),
                )
                .await
                .and_then(|result| result);
            if let Err(error) = applied {
                tracing::debug!(%origin, %room, %user, %error, "a receipt was not applied");
            }
        }
    }
    Ok(())
}
