//! Building an event on a room's current state and authorising it: the auth rules, the
//! power levels the room actor checks itself, and redactions.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use ruma::{
    EventId, OwnedEventId, UserId, events::StateEventType, room_version_rules::AuthorizationRules,
};

use super::{Loaded, RoomActor, resolve};
use crate::{
    Error, Result,
    rooms::{
        self, Pdu,
        builder::{self, Position, Template},
        power_levels::Powers,
        state_res::{ResEvent, res_event},
    },
};

/// Most forward extremities a new event references.
const MAX_PREV_EVENTS: usize = 20;

impl RoomActor {
    /// Builds an event on the current state of `room`.
    pub(super) fn build(&self, room: &Loaded, template: Template) -> Result<Pdu> {
        let auth_events =
            builder::auth_events_for(&template, &room.rules.authorization, |kind, state_key| {
                Ok(room
                    .keys
                    .get(&(kind.to_string(), state_key.to_owned()))
                    .and_then(|key| room.state.get(key))
                    .and_then(|short| room.event_ids.get(short))
                    .cloned())
            })?;
        let prev: Vec<OwnedEventId> = resolve::prev_events_for(&room.heads, MAX_PREV_EVENTS);
        let reference_hash =
            |id: &EventId| builder::stored_reference_hash(&self.storage, &room.rules, id);
        let position = Position {
            room_id: Some(&room.room_id),
            prev_events: &prev,
            auth_events,
            depth: room.depth.saturating_add(1),
            reference_hash: Some(&reference_hash),
        };
        builder::build(
            template,
            position,
            &room.rules,
            &self.key,
            &self.server_name,
            self.time.timestamp(),
        )
    }

    /// Checks `pdu` against the auth rules with the room's current state (and `pending`,
    /// the events of the same commit).
    pub(super) fn authorize(
        &self,
        room: &Loaded,
        pdu: &Arc<Pdu>,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<()> {
        let fetch_event = |event_id: &EventId| -> Result<Option<ResEvent>> {
            if let Some(pdu) = pending.get(event_id) {
                // Events of the same commit: each passed its check before this one.
                return Ok(Some(ResEvent { pdu: Arc::clone(pdu), rejected: false }));
            }
            match rooms::event_short(&self.storage, event_id)? {
                Some(short) => res_event(&self.storage, short),
                None => Ok(None),
            }
        };
        let fetch_state = |kind: &StateEventType, state_key: &str| -> Result<Option<ResEvent>> {
            let Some(short) = room
                .keys
                .get(&(kind.to_string(), state_key.to_owned()))
                .and_then(|key| room.state.get(key))
            else {
                return Ok(None);
            };
            let pdu = match room.cache.get(short) {
                Some(pdu) => Arc::clone(pdu),
                None => match room.event_ids.get(short).and_then(|id| pending.get(id)) {
                    Some(pdu) => Arc::clone(pdu),
                    None => match rooms::pdu(self.storage.engine(), *short)? {
                        Some(pdu) => Arc::new(pdu),
                        None => return Ok(None),
                    },
                },
            };
            Ok(Some(ResEvent::in_state(pdu)))
        };
        // The event being checked is not rejected yet: that is what this decides.
        let event = ResEvent { pdu: Arc::clone(pdu), rejected: false };
        authorize(&room.rules.authorization, &event, fetch_event, fetch_state)
    }

    /// The room's current power levels.
    pub(super) fn powers(&self, room: &Loaded) -> Result<Powers> {
        let create = self.current(room, "m.room.create", "")?;
        let power_levels = self.current(room, "m.room.power_levels", "")?;
        Ok(Powers::from_events(&room.rules.authorization, create.as_ref(), power_levels.as_deref()))
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
            && !self.powers(room)?.levels().user_can_redact_event_of_other(sender)
        {
            return Err(Error::forbidden(
                "You may only redact your own events unless you have the power to redact.",
            ));
        }
        // A second redaction is recorded but changes nothing: the event stays as the first
        // redaction left it.
        let already =
            rooms::any_event_meta(self.storage.engine(), short)?.is_some_and(|meta| meta.redacted);
        Ok((!already).then_some((short, pdu)))
    }
}

/// Checks `pdu` against the auth rules, reading the events they need through the fetches.
/// A fetch that fails is an error of this server, not a verdict on the event: the first
/// such error is returned (500) instead of the "not allowed" the missing event would cause.
pub(super) fn authorize(
    rules: &AuthorizationRules,
    pdu: &ResEvent,
    fetch_event: impl Fn(&EventId) -> Result<Option<ResEvent>>,
    fetch_state: impl Fn(&StateEventType, &str) -> Result<Option<ResEvent>>,
) -> Result<()> {
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let record = |fetched: Result<Option<ResEvent>>| match fetched {
        Ok(pdu) => pdu,
        Err(error) => {
            failure.borrow_mut().get_or_insert(error);
            None
        }
    };
    let verdict = ruma::state_res::check_state_independent_auth_rules(rules, pdu, |event_id| {
        record(fetch_event(event_id))
    })
    .and_then(|()| {
        ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |kind, state_key| {
            record(fetch_state(kind, state_key))
        })
    });
    if let Some(error) = failure.into_inner() {
        return Err(error);
    }
    verdict.map_err(|reason| {
        Error::forbidden(format!("This event is not allowed in the room: {reason}."))
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use ruma::{CanonicalJsonValue, RoomVersionId};

    use super::*;

    fn event(json: serde_json::Value) -> ResEvent {
        let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(json) else {
            panic!("test event is canonical");
        };
        ResEvent::in_state(Arc::new(Pdu::from_json(object).expect("test event parses")))
    }

    fn create() -> ResEvent {
        event(serde_json::json!({
            "event_id": "$create:example.org", "room_id": "!r:example.org",
            "sender": "@a:example.org", "type": "m.room.create", "state_key": "",
            "origin_server_ts": 1, "depth": 1, "content": { "room_version": "11" },
            "prev_events": [], "auth_events": [],
        }))
    }

    /// A message from a user who never joined: the rules refuse it.
    fn message() -> ResEvent {
        event(serde_json::json!({
            "event_id": "$m:example.org", "room_id": "!r:example.org",
            "sender": "@a:example.org", "type": "m.room.message",
            "origin_server_ts": 2, "depth": 2, "content": { "body": "hi" },
            "prev_events": ["$create:example.org"], "auth_events": ["$create:example.org"],
        }))
    }

    fn rules() -> AuthorizationRules {
        RoomVersionId::V11.rules().expect("known version").authorization
    }

    fn storage_failure() -> Error {
        Error::internal("the disk is on fire")
    }

    #[test]
    fn with_every_event_readable_the_verdict_is_the_rules() {
        let error = authorize(
            &rules(),
            &message(),
            |_| Ok(Some(create())),
            |kind, _| Ok((*kind == StateEventType::RoomCreate).then(create)),
        )
        .expect_err("a message from a non-member is refused");
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn an_auth_event_that_cannot_be_read_is_a_server_error_not_a_refusal() {
        let error =
            authorize(&rules(), &message(), |_| Err(storage_failure()), |_, _| Ok(Some(create())))
                .expect_err("the fetch failed");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.to_string().contains("the disk is on fire"), "{error}");
    }

    #[test]
    fn state_that_cannot_be_read_is_a_server_error_not_a_refusal() {
        let error = authorize(
            &rules(),
            &message(),
            |_| Ok(Some(create())),
            |kind, _| {
                if *kind == StateEventType::RoomCreate {
                    Ok(Some(create()))
                } else {
                    Err(storage_failure())
                }
            },
        )
        .expect_err("the fetch failed");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
