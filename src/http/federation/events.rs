//! Other servers reading a room's history: `event`, `state`, `state_ids`, `event_auth`,
//! `backfill`, `get_missing_events` and `timestamp_to_event`, answered by
//! `rooms::federation::serve` on the blocking pool (they walk the DAG in storage).
//!
//! The heavy ones (`state`, `state_ids`, `backfill`, `get_missing_events`, `event_auth`)
//! run at most `federation::HEAVY_REQUESTS_PER_ORIGIN` at a time per asking server; more
//! are answered `429 M_LIMIT_EXCEEDED`, so one server cannot occupy the pool.

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedServerName,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{
            get_event, get_event_by_timestamp, get_missing_events, get_room_state,
            get_room_state_ids,
        },
    },
};

use super::Signed;
use crate::{
    Error, Result, Services, federation::flight::Slot, rooms::federation::serve, storage::Storage,
};

/// A slot for a heavy request of `origin`, or `429`.
fn heavy_slot<'a>(
    services: &'a Services,
    origin: &OwnedServerName,
) -> Result<Slot<'a, OwnedServerName>> {
    services
        .federation
        .heavy_requests
        .try_enter(origin)
        .ok_or_else(|| Error::limit_exceeded(Duration::from_secs(1)))
}

/// Runs a storage walk on the blocking pool.
async fn blocking<T: Send + 'static>(
    services: &Services,
    work: impl FnOnce(&Storage) -> Result<T> + Send + 'static,
) -> Result<T> {
    let storage = Arc::clone(&services.storage);
    tokio::task::spawn_blocking(move || work(&storage))
        .await
        .map_err(|error| Error::internal(format!("serving history failed: {error}")))?
}

pub(super) async fn event(
    services: Arc<Services>,
    request: Signed<get_event::v1::Request>,
) -> Result<get_event::v1::Response> {
    let Signed { origin, body, .. } = request;
    let pdu =
        blocking(&services, move |storage| serve::event(storage, &origin, &body.event_id)).await?;
    Ok(get_event::v1::Response::new(
        services.federation.server_name.clone(),
        services.time.timestamp(),
        pdu,
    ))
}

pub(super) async fn state_ids(
    services: Arc<Services>,
    request: Signed<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = heavy_slot(&services, &origin)?;
    let answer = blocking(&services, move |storage| {
        serve::state_ids(storage, &origin, &body.room_id, &body.event_id)
    })
    .await?;
    Ok(get_room_state_ids::v1::Response::new(answer.auth_chain_ids, answer.pdu_ids))
}

pub(super) async fn state(
    services: Arc<Services>,
    request: Signed<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = heavy_slot(&services, &origin)?;
    let answer = blocking(&services, move |storage| {
        serve::state_events(storage, &origin, &body.room_id, &body.event_id)
    })
    .await?;
    Ok(get_room_state::v1::Response::new(answer.auth_chain, answer.pdus))
}

pub(super) async fn event_auth(
    services: Arc<Services>,
    request: Signed<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = heavy_slot(&services, &origin)?;
    let chain = blocking(&services, move |storage| {
        serve::event_auth(storage, &origin, &body.room_id, &body.event_id)
    })
    .await?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

pub(super) async fn backfill(
    services: Arc<Services>,
    request: Signed<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = heavy_slot(&services, &origin)?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let pdus = blocking(&services, move |storage| {
        serve::backfill(storage, &origin, &body.room_id, &body.v, limit)
    })
    .await?;
    Ok(get_backfill::v1::Response::new(
        services.federation.server_name.clone(),
        services.time.timestamp(),
        pdus,
    ))
}

pub(super) async fn missing_events(
    services: Arc<Services>,
    request: Signed<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    let Signed { origin, body, .. } = request;
    let _slot = heavy_slot(&services, &origin)?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let min_depth = u64::from(body.min_depth);
    let events = blocking(&services, move |storage| {
        serve::missing_events(
            storage,
            &origin,
            &body.room_id,
            &body.earliest_events,
            &body.latest_events,
            limit,
            min_depth,
        )
    })
    .await?;
    Ok(get_missing_events::v1::Response::new(events))
}

pub(super) async fn timestamp_to_event(
    services: Arc<Services>,
    request: Signed<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let Signed { origin, body, .. } = request;
    let (event_id, ts) = blocking(&services, move |storage| {
        serve::event_by_timestamp(storage, &origin, &body.room_id, body.ts, body.dir)
    })
    .await?;
    Ok(get_event_by_timestamp::v1::Response::new(event_id, ts))
}
