//! Sending: messages (idempotent per device and transaction id), state events, redactions;
//! and reading current state.

use std::sync::Arc;

use ruma::{
    CanonicalJsonValue,
    api::client::{
        message::send_message_event,
        redact::redact_event,
        state::{get_state_event_for_key, get_state_events, send_state_event},
    },
    events::{TimelineEventType, room::redaction::RoomRedactionEventContent},
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{Sender, rate_limit::Action},
    http::{
        held::Held,
        ruma::{Ruma, RumaResponse, route, route_raw, route_with_paths},
    },
    rooms::actor::Transaction,
    rooms::{self, builder::Template, pdu::canonical_content, state, timeline},
    sync::hub::Hold,
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route_raw(router, send_message);
    let router = route_with_paths(
        router,
        send_state,
        &[
            "/_matrix/client/v3/rooms/{room_id}/state/{event_type}",
            "/_matrix/client/r0/rooms/{room_id}/state/{event_type}",
        ],
    );
    let router = route_raw(router, redact);
    let router = route_with_paths(
        router,
        get_state_event,
        &[
            "/_matrix/client/v3/rooms/{room_id}/state/{event_type}",
            "/_matrix/client/r0/rooms/{room_id}/state/{event_type}",
        ],
    );
    route(router, get_state)
}

fn limit_messages(services: &Services, sender: &Sender) -> Result<()> {
    if services.accounts.is_admin(&sender.user_id) {
        return Ok(());
    }
    services.accounts.limiter.check(Action::Message, sender.user_id.as_str())
}

fn content_of<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get())
        .map_err(|error| Error::bad_json(format!("Invalid event content: {error}")))
}

/// The answer to a send with a transaction id: the sender's own syncs do not see the event
/// before this answer has been sent (see `SyncHub::hold`).
type HeldAnswer<T> = Held<RumaResponse<T>, Hold>;

fn hold_sender(services: &Services, sender: &Sender) -> Hold {
    services.hub.hold(&sender.user_id, services.storage.writer().committed_position())
}

async fn send_message(
    services: Arc<Services>,
    request: Ruma<send_message_event::v3::Request>,
) -> Result<HeldAnswer<send_message_event::v3::Response>> {
    let sender = request.sender()?.clone();
    let body = request.body;
    limit_messages(&services, &sender)?;
    let guard = hold_sender(&services, &sender);
    let content = canonical_content(content_of(&body.body)?)?;
    let kind = TimelineEventType::from(body.event_type.to_string());
    let mut template = Template::message(kind.clone(), &sender.user_id, content);
    if kind == TimelineEventType::RoomRedaction {
        template.redacts = template
            .content
            .get("redacts")
            .and_then(CanonicalJsonValue::as_str)
            .and_then(|id| ruma::EventId::parse(id).ok());
        if template.redacts.is_none() {
            return Err(Error::bad_json(
                "A redaction needs `redacts` in its content; use the /redact endpoint.",
            ));
        }
    }
    let transaction =
        Some(Transaction { device: sender.device_id.to_string(), txn_id: body.txn_id.to_string() });
    let sent = services.rooms.send(&body.room_id, template, transaction).await?;
    let response = RumaResponse(send_message_event::v3::Response::new(sent.event_id));
    Ok(Held { response, guard })
}

async fn send_state(
    services: Arc<Services>,
    request: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let content = content_of(&body.body)?;
    let kind = body.event_type.to_string();
    if kind == "m.room.canonical_alias" {
        services.rooms.aliases.check_canonical_alias(&body.room_id, &content)?;
    }
    if kind == "m.room.create" {
        return Err(Error::forbidden("The create event cannot be replaced."));
    }
    let template = Template::state(
        TimelineEventType::from(kind),
        &body.state_key,
        &sender.user_id,
        canonical_content(content)?,
    );
    let sent = services.rooms.send(&body.room_id, template, None).await?;
    Ok(send_state_event::v3::Response::new(sent.event_id))
}

async fn redact(
    services: Arc<Services>,
    request: Ruma<redact_event::v3::Request>,
) -> Result<HeldAnswer<redact_event::v3::Response>> {
    let sender = request.sender()?.clone();
    let body = request.body;
    limit_messages(&services, &sender)?;
    let guard = hold_sender(&services, &sender);
    let record = require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    let rules = record.version.rules().ok_or_else(|| Error::internal("room version rules"))?;
    let mut content = if rules.redaction.content_field_redacts {
        RoomRedactionEventContent::new_v11(body.event_id.clone())
    } else {
        RoomRedactionEventContent::new_v1()
    };
    if let Some(reason) = &body.reason {
        content = content.with_reason(reason.clone());
    }
    let mut template = Template::message_typed(&sender.user_id, &content)?;
    template.redacts = Some(body.event_id.clone());
    let transaction =
        Some(Transaction { device: sender.device_id.to_string(), txn_id: body.txn_id.to_string() });
    let sent = services.rooms.send(&body.room_id, template, transaction).await?;
    let response = RumaResponse(redact_event::v3::Response::new(sent.event_id));
    Ok(Held { response, guard })
}

async fn get_state_event(
    services: Arc<Services>,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    let snapshot =
        timeline::readable_snapshot(&services.storage, &record, &body.room_id, &sender.user_id)?;
    let pdu = rooms::state_event(
        &services.storage,
        snapshot,
        &body.event_type.to_string(),
        &body.state_key,
    )?
    .ok_or_else(|| Error::not_found("The room has no state event of this type and key."))?;
    let rendered = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            let short = rooms::event_short(&services.storage, &pdu.event_id)?
                .ok_or_else(|| Error::internal("state event without short id"))?;
            let meta = rooms::event_meta(services.storage.engine(), short)?
                .ok_or_else(|| Error::internal("state event without metadata"))?;
            timeline::render(
                &services.storage,
                &pdu,
                &meta,
                Some((&sender.user_id, Some(sender.device_id.as_str()))),
            )?
        }
        _ => pdu.content_value(),
    };
    Ok(get_state_event_for_key::v3::Response::new(serde_json::value::to_raw_value(&rendered)?))
}

async fn get_state(
    services: Arc<Services>,
    request: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let sender = request.sender()?.clone();
    let room_id = request.body.room_id;
    let record = require_room(&services, &room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    let snapshot =
        timeline::readable_snapshot(&services.storage, &record, &room_id, &sender.user_id)?;
    let mut events = Vec::new();
    for short in state::load(&services.storage, snapshot)?.into_values() {
        let (Some(pdu), Some(meta)) = (
            rooms::readable_pdu(services.storage.engine(), short)?,
            rooms::readable_event_meta(services.storage.engine(), short)?,
        ) else {
            continue;
        };
        let rendered = timeline::render(
            &services.storage,
            &pdu,
            &meta,
            Some((&sender.user_id, Some(sender.device_id.as_str()))),
        )?;
        events.push(Raw::from_json(serde_json::value::to_raw_value(&rendered)?));
    }
    Ok(get_state_events::v3::Response::new(events))
}
