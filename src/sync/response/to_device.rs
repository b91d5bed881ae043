//! To-device messages for the syncing device, a page at a time.

use std::ops::ControlFlow;

use ruma::api::client::sync::sync_events::v3::Response;
use serde_json::json;

use super::{SyncContext, render::raw};
use crate::{
    Result,
    storage::{Direction, codec::Json, codec::Prefix, ephemeral::TO_DEVICE_TABLE},
    sync::token::SyncToken,
};

/// To-device messages handed out per sync.
const TO_DEVICE_LIMIT: usize = 100;

/// Puts the device's next page of messages into `response`. When the page fills, `next`
/// records how far delivery got so the rest is neither skipped nor acknowledged unseen.
pub(super) fn page(
    ctx: &SyncContext<'_>,
    response: &mut Response,
    next: &mut SyncToken,
) -> Result<()> {
    let delivered_through = ctx.params.since.map_or(0, |token| token.to_device_position());
    let start = (ctx.user.to_owned(), ctx.device.to_owned(), delivered_through.saturating_add(1));
    let mut last_delivered = None;
    if !ctx.storage().writer().written_since(TO_DEVICE_TABLE.id(), delivered_through) {
        return Ok(());
    }
    TO_DEVICE_TABLE.scan(
        ctx.storage().engine(),
        &Prefix::of2(ctx.user, ctx.device),
        Some(&start),
        Direction::Forward,
        |(_, _, position), Json(message)| {
            if position > ctx.upto {
                return ControlFlow::Break(());
            }
            if response.to_device.events.len() >= TO_DEVICE_LIMIT {
                next.to_device = last_delivered;
                return ControlFlow::Break(());
            }
            let event = json!({
                "sender": message.sender,
                "type": message.kind,
                "content": message.content,
            });
            if let Ok(event) = raw(&event) {
                response.to_device.events.push(event);
            }
            last_delivered = Some(position);
            ControlFlow::Continue(())
        },
    )?;
    Ok(())
}
