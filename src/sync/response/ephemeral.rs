//! A joined room's ephemeral events: typing and receipts.

use std::{collections::BTreeMap, ops::ControlFlow};

use ruma::RoomId;
use serde_json::{Value as JsonValue, json};

use super::{SyncContext, SyncView};
use crate::{
    Result,
    storage::{
        Direction,
        codec::{Json, Prefix},
        rooms::{RECEIPT_STREAM_TABLE, RECEIPTS_TABLE},
    },
};

/// `m.typing` when it changed (or `full`), and `m.receipt` when receipts changed.
pub(super) fn events(
    ctx: &SyncContext<'_>,
    room_id: &RoomId,
    room: u64,
    full: bool,
) -> Result<Vec<JsonValue>> {
    let mut ephemeral = Vec::new();
    let since_typing = ctx.params.since.map_or(0, |token| token.typing);
    if let Some(typing) = typing(ctx, room_id, since_typing, full) {
        ephemeral.push(typing);
    }
    if let Some(receipts) = receipts(ctx, room, ctx.since, ctx.upto)? {
        ephemeral.push(receipts);
    }
    Ok(ephemeral)
}

/// `m.typing` of a room when it changed since the typing counter `since_typing` (or
/// `full`, or the counter is from before a restart).
pub(crate) fn typing(
    view: &SyncView<'_>,
    room_id: &RoomId,
    since_typing: u64,
    full: bool,
) -> Option<JsonValue> {
    let (typing_users, version) = view.reader.typing.get(room_id)?;
    let restarted = since_typing > view.typing_now;
    (full || restarted || version > since_typing)
        .then(|| json!({ "type": "m.typing", "content": { "user_ids": typing_users } }))
}

/// `m.receipt` with the receipts that changed in `(lower, upto]`; private receipts only for
/// their owner.
pub(crate) fn receipts(
    view: &SyncView<'_>,
    room: u64,
    lower: u64,
    upto: u64,
) -> Result<Option<JsonValue>> {
    let engine = view.storage().engine();
    if !view.storage().writer().written_since(RECEIPT_STREAM_TABLE.id(), lower) {
        return Ok(None);
    }
    let mut entries = Vec::new();
    RECEIPT_STREAM_TABLE.scan(
        engine,
        &Prefix::of(&room),
        Some(&(room, lower.saturating_add(1))),
        Direction::Forward,
        |(_, position), Json(entry)| {
            if position > upto {
                return ControlFlow::Break(());
            }
            entries.push(entry);
            ControlFlow::Continue(())
        },
    )?;
    let mut content: BTreeMap<String, BTreeMap<String, BTreeMap<String, JsonValue>>> =
        BTreeMap::new();
    for (reader, kind, thread) in entries {
        if kind == "m.read.private" && reader != view.user.as_str() {
            continue;
        }
        let Some(Json(receipt)) = RECEIPTS_TABLE
            .get_readable(engine, &(room, kind.clone(), reader.clone(), thread.clone()))?
        else {
            continue;
        };
        let mut data = json!({ "ts": receipt.ts });
        if !thread.is_empty() {
            data["thread_id"] = json!(thread);
        }
        content
            .entry(receipt.event_id.to_string())
            .or_default()
            .entry(kind)
            .or_default()
            .insert(reader, data);
    }
    Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content })))
}
