//! Account data: global and per room, all of it or what changed since the token.

use std::{collections::HashMap, ops::ControlFlow};

use ruma::api::client::sync::sync_events::v3::Response;
use serde_json::{Value as JsonValue, json};

use super::{
    SyncContext, SyncView,
    render::{allows_kind, raw},
};
use crate::{
    Result,
    push::rules as push_rules,
    storage::{
        Direction,
        account_data::{ACCOUNT_DATA_STREAM_TABLE, ACCOUNT_DATA_TABLE},
        codec::{Json, Prefix},
    },
};

/// The latest account data of the user in `room` (`""`: global) as events.
pub(crate) fn all(view: &SyncView<'_>, room: &str) -> Result<Vec<JsonValue>> {
    Ok(ACCOUNT_DATA_TABLE
        .collect(
            view.storage().engine(),
            &Prefix::of2(view.user, room),
            Direction::Forward,
            usize::MAX,
        )?
        .into_iter()
        .map(|((_, _, kind), Json(record))| json!({ "type": kind, "content": record.content }))
        .collect())
}

/// Account data that changed in the view's `(since, upto]`, by room (`""`: global).
pub(crate) fn changed(view: &SyncView<'_>) -> Result<HashMap<String, Vec<JsonValue>>> {
    let (storage, user, since, upto) = (view.storage(), view.user, view.since, view.upto);
    let mut changed: HashMap<String, Vec<JsonValue>> = HashMap::new();
    if !storage.writer().written_since(ACCOUNT_DATA_STREAM_TABLE.id(), since) {
        return Ok(changed);
    }
    let start = (user.to_owned(), since.saturating_add(1));
    let mut entries = Vec::new();
    ACCOUNT_DATA_STREAM_TABLE.scan(
        storage.engine(),
        &Prefix::of(user),
        Some(&start),
        Direction::Forward,
        |(_, position), Json((room, kind))| {
            if position > upto {
                return ControlFlow::Break(());
            }
            entries.push((room, kind));
            ControlFlow::Continue(())
        },
    )?;
    for (room, kind) in entries {
        let key = (user.to_owned(), room.clone(), kind.clone());
        if let Some(Json(record)) = ACCOUNT_DATA_TABLE.get_readable(storage.engine(), &key)? {
            changed
                .entry(room)
                .or_default()
                .push(json!({ "type": kind, "content": record.content }));
        }
    }
    Ok(changed)
}

/// Global account data into `response`: all of it initially (push rules included, the
/// defaults until the user changes one), else what changed. True when there was any.
pub(super) fn global(
    ctx: &SyncContext<'_>,
    changes: &HashMap<String, Vec<JsonValue>>,
    response: &mut Response,
) -> Result<bool> {
    let global = if ctx.initial {
        let mut global = all(ctx, "")?;
        if !global.iter().any(|event| event["type"] == push_rules::PUSH_RULES) {
            let ruleset = push_rules::load(ctx.storage(), ctx.user)?;
            global.push(json!({ "type": push_rules::PUSH_RULES, "content": push_rules::content(&ruleset, None)? }));
        }
        global
    } else {
        changes.get("").cloned().unwrap_or_default()
    };
    let mut any = false;
    for event in global {
        if allows_kind(&ctx.params.filter.account_data, event["type"].as_str().unwrap_or_default())
        {
            response.account_data.events.push(raw(&event)?);
            any = true;
        }
    }
    Ok(any)
}
