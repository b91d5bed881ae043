//! Peeking (room previews): `GET /rooms/{roomId}/initialSync` and `GET /events?room_id=`.
//! The spec keeps both, deprecated, for reading a room one is not a member of; Element
//! previews world-readable rooms with them. Both read through the history visibility
//! rules, so they show only what `/messages` would show the same user.

use std::{sync::Arc, time::Duration};

use crate::http::routes::Routes;
use ruma::{
    OwnedRoomId,
    api::client::peeking::{get_current_state, listen_to_new_events},
};
use serde_json::{Value as JsonValue, json};

use super::require_room;
use crate::{
    Error, Result, Services,
    accounts::Sender,
    http::ruma::{Ruma, route_raw},
    rooms::{
        self, state,
        timeline::{self, Token, Viewer},
    },
    storage::Direction,
};

/// Messages an initial snapshot carries, as Synapse's default.
const INITIAL_MESSAGES: usize = 20;
/// Most events one `/events` answer carries.
const EVENTS_LIMIT: usize = 100;
/// How long `/events` waits for news when the client does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait `/events` grants.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn routes(router: Routes) -> Routes {
    let router = route_raw(router, initial_sync);
    route_raw(router, events)
}

fn forbidden() -> Error {
    Error::forbidden("You are not a member of this room and it is not world-readable.")
}

fn render(services: &Services, sender: &Sender, short: u64) -> Result<Option<JsonValue>> {
    let engine = services.storage.engine();
    let (Some(pdu), Some(meta)) = (rooms::pdu(engine, short)?, rooms::event_meta(engine, short)?)
    else {
        return Ok(None);
    };
    timeline::render(
        &services.storage,
        &pdu,
        &meta,
        Some((&sender.user_id, Some(sender.device_id.as_str()))),
    )
    .map(Some)
}

/// `GET /rooms/{roomId}/initialSync`: the state the user may read and the latest messages.
async fn initial_sync(
    services: Arc<Services>,
    request: Ruma<get_current_state::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let sender = request.sender()?.clone();
    let room_id = request.body.room_id;
    let record = require_room(&services, &room_id).map_err(|_| forbidden())?;
    let snapshot =
        timeline::readable_snapshot(&services.storage, &record, &room_id, &sender.user_id)
            .map_err(|_| forbidden())?;
    let upto = services.storage.writer().committed_position();

    let mut state_events = Vec::new();
    for short in state::load(&services.storage, snapshot)?.into_values() {
        if let Some(event) = render(&services, &sender, short)? {
            state_events.push(event);
        }
    }
    let mut viewer = Viewer::new(&services.storage, &room_id, &sender.user_id)?;
    let page = timeline::paginate(
        &services.storage,
        record.short,
        None,
        Direction::Reverse,
        INITIAL_MESSAGES,
        &mut viewer,
        |_| true,
    )?;
    let mut chunk = Vec::with_capacity(page.events.len());
    for (_, pdu, meta) in page.events.iter().rev() {
        chunk.push(timeline::render(
            &services.storage,
            pdu,
            meta,
            Some((&sender.user_id, Some(sender.device_id.as_str()))),
        )?);
    }
    let mut messages = json!({ "chunk": chunk, "end": Token(upto).to_string() });
    if let Some(start) = page.next {
        messages["start"] = JsonValue::String(start.to_string());
    }
    let published = services.rooms.aliases.is_published(&room_id)?;
    let mut response = json!({
        "room_id": room_id,
        "state": state_events,
        "messages": messages,
        "visibility": if published { "public" } else { "private" },
        "account_data": [],
    });
    if let Some(membership) =
        rooms::membership(services.storage.engine(), &room_id, &sender.user_id)?
            .filter(|record| !record.forgotten)
    {
        response["membership"] = JsonValue::String(membership.membership.to_string());
    }
    Ok(axum::Json(response))
}

/// `GET /events?room_id=`: the room's events after `from` that the user may see, waiting up
/// to `timeout` for some when there are none yet.
async fn events(
    services: Arc<Services>,
    request: Ruma<listen_to_new_events::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id: OwnedRoomId = body.room_id;
    let record = require_room(&services, &room_id).map_err(|_| forbidden())?;
    timeline::readable_snapshot(&services.storage, &record, &room_id, &sender.user_id)
        .map_err(|_| forbidden())?;
    let from = match body.from.as_deref() {
        Some(from) => Token::parse(from)?,
        None => Token(services.storage.writer().committed_position()),
    };
    let timeout = body.timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    // Registered before the first look, so an event committed in between still wakes us.
    let registration = services.hub.register(&sender.user_id, std::slice::from_ref(&room_id));
    loop {
        // Everything up to `upto` is committed; read it first so the scan misses nothing below.
        let upto = services.storage.writer().committed_position();
        let mut viewer = Viewer::new(&services.storage, &room_id, &sender.user_id)?;
        let page = timeline::paginate(
            &services.storage,
            record.short,
            Some(from),
            Direction::Forward,
            EVENTS_LIMIT,
            &mut viewer,
            |_| true,
        )?;
        let mut chunk = Vec::with_capacity(page.events.len());
        let mut end = Token(upto.max(from.0));
        for (_, pdu, meta) in &page.events {
            if meta.position > upto {
                break;
            }
            chunk.push(timeline::render(
                &services.storage,
                pdu,
                meta,
                Some((&sender.user_id, Some(sender.device_id.as_str()))),
            )?);
            if chunk.len() == EVENTS_LIMIT {
                end = Token(meta.position);
            }
        }
        let now = tokio::time::Instant::now();
        if !chunk.is_empty() || now >= deadline || services.shutdown.is_triggered() {
            return Ok(axum::Json(json!({
                "chunk": chunk,
                "start": from.to_string(),
                "end": end.to_string(),
            })));
        }
        tokio::select! {
            () = registration.waiter().woken() => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = services.shutdown.clone().wait() => {}
        }
    }
}
