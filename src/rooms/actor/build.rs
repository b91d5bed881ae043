//! Building an event on a room's current state and authorising it: the auth rules, the
//! power levels the room actor checks itself, and redactions.

use std::{collections::HashMap, sync::Arc};

use ruma::{EventId, OwnedEventId, UserId, events::StateEventType};
use serde_json::Value as JsonValue;

use super::{Loaded, RoomActor, json_int};
use crate::{
    Error, Result,
    rooms::{
        self, Pdu,
        builder::{self, Position, Template},
    },
};

/// Most forward extremities a new event references.
const MAX_PREV_EVENTS: usize = 20;

impl RoomActor {
    /// Builds an event on the current state of `room`.
    pub(super) fn build(&self, room: &Loaded, template: Template) -> Result<Pdu> {
        let content = serde_json::value::to_raw_value(&template.content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &template.kind,
            &template.sender,
            template.state_key.as_deref(),
            &content,
            &room.rules.authorization,
        )
        .map_err(|error| Error::bad_json(format!("Invalid event content: {error}")))?;
        let mut auth_events = Vec::new();
        for (kind, state_key) in auth_types {
            if let Some(short) =
                room.keys.get(&(kind.to_string(), state_key)).and_then(|key| room.state.get(key))
                && let Some(event_id) = room.event_ids.get(short)
                && !auth_events.contains(event_id)
            {
                auth_events.push(event_id.clone());
            }
        }
        let prev: Vec<OwnedEventId> =
            room.extremities.iter().rev().take(MAX_PREV_EVENTS).cloned().collect();
        let position = Position {
            room_id: Some(&room.room_id),
            prev_events: &prev,
            auth_events,
            depth: room.depth + 1,
        };
        builder::build(template, position, &room.rules, &self.key, &self.server_name)
    }

    /// Checks `pdu` against the auth rules with the room's current state.
    pub(super) fn check(
        &self,
        room: &Loaded,
        pdu: &Pdu,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<()> {
        let fetch_event = |event_id: &EventId| -> Option<Arc<Pdu>> {
            if let Some(pdu) = pending.get(event_id) {
                return Some(Arc::clone(pdu));
            }
            rooms::pdu_by_id(&self.storage, event_id).ok().flatten().map(|(_, pdu)| Arc::new(pdu))
        };
        let fetch_state = |kind: &StateEventType, state_key: &str| -> Option<Arc<Pdu>> {
            let key = room.keys.get(&(kind.to_string(), state_key.to_owned()))?;
            let short = room.state.get(key)?;
            if let Some(pdu) = room.cache.get(short) {
                return Some(Arc::clone(pdu));
            }
            if let Some(pdu) = room.event_ids.get(short).and_then(|id| pending.get(id)) {
                return Some(Arc::clone(pdu));
            }
            rooms::pdu(self.storage.engine(), *short).ok().flatten().map(Arc::new)
        };
        ruma::state_res::check_state_independent_auth_rules(
            &room.rules.authorization,
            pdu,
            fetch_event,
        )
        .and_then(|()| {
            ruma::state_res::check_state_dependent_auth_rules(
                &room.rules.authorization,
                pdu,
                fetch_state,
            )
        })
        .map_err(|reason| {
            Error::forbidden(format!("This event is not allowed in the room: {reason}."))
        })
    }

    pub(super) fn power_level(&self, room: &Loaded, user: &UserId) -> Result<i64> {
        let create = self.current(room, "m.room.create", "")?;
        if room.rules.authorization.explicitly_privilege_room_creators
            && let Some(create) = &create
        {
            let mut creators = vec![create.sender.to_string()];
            if let Some(JsonValue::Array(additional)) =
                create.content_value().get("additional_creators")
            {
                creators.extend(additional.iter().filter_map(JsonValue::as_str).map(str::to_owned));
            }
            if creators.iter().any(|creator| creator == user.as_str()) {
                return Ok(i64::MAX);
            }
        }
        let Some(levels) = self.current(room, "m.room.power_levels", "")? else {
            // Without power levels the creator has 100 and everyone else 0.
            return Ok(if create.is_some_and(|create| create.sender == user) { 100 } else { 0 });
        };
        let content = levels.content_value();
        Ok(content
            .get("users")
            .and_then(|users| users.get(user.as_str()))
            .and_then(json_int)
            .or_else(|| content.get("users_default").and_then(json_int))
            .unwrap_or(0))
    }

    pub(super) fn required_level(&self, room: &Loaded, field: &str, default: i64) -> Result<i64> {
        Ok(self
            .current(room, "m.room.power_levels", "")?
            .and_then(|levels| levels.content_value().get(field).and_then(json_int))
            .unwrap_or(default))
    }

    /// Checks that `sender` may redact `target` and returns the target.
    pub(super) fn check_redaction(
        &self,
        room: &Loaded,
        sender: &UserId,
        target: &EventId,
    ) -> Result<Option<(u64, Pdu)>> {
        let (short, pdu) = rooms::pdu_by_id(&self.storage, target)?
            .filter(|(_, pdu)| pdu.room_id == room.room_id)
            .ok_or_else(|| Error::not_found("The event to redact is not in this room."))?;
        if pdu.sender != sender
            && self.power_level(room, sender)? < self.required_level(room, "redact", 50)?
        {
            return Err(Error::forbidden(
                "You may only redact your own events unless you have the power to redact.",
            ));
        }
        // A second redaction is recorded but changes nothing: the event stays as the first
        // redaction left it.
        let already =
            rooms::event_meta(self.storage.engine(), short)?.is_some_and(|meta| meta.redacted);
        Ok((!already).then_some((short, pdu)))
    }
}
