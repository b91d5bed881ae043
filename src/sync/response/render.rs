//! Small pieces shared by the sections: events in the sync format and what a filter lets
//! through.

use ruma::{
    RoomId,
    api::client::filter::{Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter},
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::SyncView;
use crate::{
    Result,
    rooms::{Pdu, filter, timeline},
    storage::rooms::EventMeta,
};

pub(crate) fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// An event in the sync format: the client format without `room_id`.
pub(crate) fn sync_event(view: &SyncView<'_>, pdu: &Pdu, meta: &EventMeta) -> Result<JsonValue> {
    let sender = view.sender;
    let mut rendered = timeline::render(
        view.storage(),
        pdu,
        meta,
        Some((&sender.user_id, Some(sender.device_id.as_str()))),
    )?;
    if let Some(object) = rendered.as_object_mut() {
        object.remove("room_id");
    }
    Ok(rendered)
}

pub(super) fn room_allowed(filter: &FilterDefinition, room: &RoomId) -> bool {
    !filter.room.not_rooms.iter().any(|excluded| excluded == room)
        && filter
            .room
            .rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|included| included == room))
}

pub(super) fn lazy(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

pub(super) fn allows_kind(filter: &Filter, kind: &str) -> bool {
    filter::allows_type(filter.types.as_deref(), &filter.not_types, kind)
}

/// The events of `events` whose `type` the filter's `types`/`not_types` let through.
pub(super) fn allowed_types(
    types: Option<&[String]>,
    not_types: &[String],
    events: Vec<JsonValue>,
) -> Vec<JsonValue> {
    events
        .into_iter()
        .filter(|event| {
            filter::allows_type(types, not_types, event["type"].as_str().unwrap_or_default())
        })
        .collect()
}
