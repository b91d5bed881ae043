//! Other servers' users joining rooms here: `make_join` and `send_join` (v2), answered by
//! `rooms::federation::serve_join`. `send_join` is heavy (it answers the room's state): at
//! most `federation::HEAVY_REQUESTS_PER_ORIGIN` at a time per asking server.

use std::{sync::Arc, time::Duration};

use ruma::api::federation::membership::{create_join_event, prepare_join_event};

use super::Signed;
use crate::{Error, Result, Services, rooms::federation::serve_join};

pub(super) async fn make_join(
    services: Arc<Services>,
    request: Signed<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    let Signed { origin, body, .. } = request;
    let storage = Arc::clone(&services.storage);
    let server_name = services.federation.server_name.clone();
    let now = services.time.timestamp();
    let template = tokio::task::spawn_blocking(move || {
        serve_join::make_join(
            &storage,
            &server_name,
            &origin,
            &body.room_id,
            &body.user_id,
            &body.ver,
            now,
        )
    })
    .await
    .map_err(|error| Error::internal(format!("make_join failed: {error}")))??;
    let mut response = prepare_join_event::v1::Response::new(template.event);
    response.room_version = Some(template.version);
    Ok(response)
}

pub(super) async fn send_join(
    services: Arc<Services>,
    request: Signed<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = services
        .federation
        .heavy_requests
        .try_enter(&origin)
        .ok_or_else(|| Error::limit_exceeded(Duration::from_secs(1)))?;
    let answer = serve_join::send_join(
        &services.storage,
        &services.rooms,
        &services.federation.keys,
        &origin,
        &body.room_id,
        &body.event_id,
        body.pdu,
        body.omit_members,
    )
    .await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.state = answer.state;
    state.auth_chain = answer.auth_chain;
    state.members_omitted = answer.members_omitted;
    state.servers_in_room = Some(answer.servers_in_room);
    Ok(create_join_event::v2::Response::new(state))
}
