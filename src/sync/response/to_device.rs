//! To-device messages for the syncing device, a page at a time.

use std::ops::ControlFlow;

use ruma::{events::AnyToDeviceEvent, serde::Raw};
use serde_json::json;

use super::{SyncView, render::raw};
use crate::{
    Result,
    storage::{Direction, codec::Json, codec::Prefix, ephemeral::TO_DEVICE_TABLE},
};

/// To-device messages handed out per response at most.
pub(crate) const LIMIT: usize = 100;

/// One page of a device's messages.
#[derive(Default)]
pub(crate) struct Page {
    pub(crate) events: Vec<Raw<AnyToDeviceEvent>>,
    /// The position of the last message in the page.
    pub(crate) last_delivered: Option<u64>,
    /// Whether messages up to `upto` were left for the next page.
    pub(crate) more: bool,
}

/// The device's messages after `delivered_through` up to the view's `upto`, at most `limit`.
pub(crate) fn page(view: &SyncView<'_>, delivered_through: u64, limit: usize) -> Result<Page> {
    let mut page = Page::default();
    if !view.storage().writer().written_since(TO_DEVICE_TABLE.id(), delivered_through) {
        return Ok(page);
    }
    let start = (view.user.to_owned(), view.device.to_owned(), delivered_through.saturating_add(1));
    TO_DEVICE_TABLE.scan(
        view.storage().engine(),
        &Prefix::of2(view.user, view.device),
        Some(&start),
        Direction::Forward,
        |(_, _, position), Json(message)| {
            if position > view.upto {
                return ControlFlow::Break(());
            }
            if page.events.len() >= limit {
                page.more = true;
                return ControlFlow::Break(());
            }
            let event = json!({
                "sender": message.sender,
                "type": message.kind,
                "content": message.content,
            });
            if let Ok(event) = raw(&event) {
                page.events.push(event);
            }
            page.last_delivered = Some(position);
            ControlFlow::Continue(())
        },
    )?;
    Ok(page)
}
