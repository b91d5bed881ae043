//! `GET /sync`: computes what changed since the token and, when nothing did, waits on the
//! SyncHub until something the user can see commits, the timeout passes or the server stops.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use ruma::events::room::member::MembershipState;
use ruma::{
    DeviceId, UserId,
    api::client::{filter::FilterDefinition, sync::sync_events::v3 as sync_v3},
    presence::PresenceState,
};

use super::filters;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    http::{
        ruma::{Ruma, route},
        validate,
    },
    storage::{Direction, Engine, codec::Prefix, ephemeral::TO_DEVICE_TABLE},
    sync::{
        hub::Registration,
        response::{self, SyncParams, SyncReader},
        token::SyncToken,
    },
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, sync)
}

/// Whether the device's to-device queue holds a message at or below `upto`; the first
/// message is the oldest.
fn first_queued_by(engine: &Engine, user: &UserId, device: &DeviceId, upto: u64) -> Result<bool> {
    let mut pending = false;
    TO_DEVICE_TABLE.scan_keys(
        engine,
        &Prefix::of2(user, device),
        None,
        Direction::Forward,
        |(_, _, position)| {
            pending = position <= upto;
            ControlFlow::Break(())
        },
    )?;
    Ok(pending)
}

/// A client presenting a token has received everything it covers: the device's to-device
/// messages up to there are deleted before the response is computed, so a retried old token
/// cannot see them again. Only a queue that holds such messages costs a trip to the user actor,
/// and only a device whose queue is not known to be empty costs a read.
async fn acknowledge_to_device(
    services: &Services,
    user: &UserId,
    device: &DeviceId,
    upto: u64,
) -> Result<()> {
    let engine = services.storage.engine();
    let queued = services
        .storage
        .coherent()
        .to_device_queued
        .get(&(user.to_owned(), device.to_owned()), || {
            first_queued_by(engine, user, device, u64::MAX)
        })?;
    if !*queued || !first_queued_by(engine, user, device, upto)? {
        return Ok(());
    }
    let device = device.to_owned();
    services.accounts.call(user, |reply| UserMessage::AckToDevice { device, upto, reply }).await
}

/// Whether a sync from `since` can have nothing to show without looking: every stream but
/// typing advances the committed position, and typing has its own counter. A client polling
/// again right after a response presents exactly such a token, so its wait starts without a
/// response being computed and thrown away.
fn nothing_new_since(services: &Services, since: Option<SyncToken>) -> bool {
    since.is_some_and(|token| {
        token.to_device.is_none()
            && token.position == services.storage.writer().committed_position()
            && token.typing == services.rooms.typing.counter()
    })
}

fn resolve_filter(
    services: &Services,
    user: &UserId,
    filter: Option<sync_v3::Filter>,
) -> Result<FilterDefinition> {
    match filter {
        None => Ok(FilterDefinition::default()),
        Some(sync_v3::Filter::FilterDefinition(definition)) => Ok(definition),
        Some(sync_v3::Filter::FilterId(id)) => filters::load(services, user, &id)?
            .ok_or_else(|| Error::invalid_param(format!("Unknown filter id '{id}'."))),
        Some(_) => Ok(FilterDefinition::default()),
    }
}

async fn sync(
    services: Arc<Services>,
    request: Ruma<sync_v3::Request>,
) -> Result<sync_v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    validate::known_param(
        "set_presence",
        body.set_presence.as_str(),
        &["online", "offline", "unavailable"],
    )?;
    let since = body.since.as_deref().map(SyncToken::parse).transpose()?;
    let filter = resolve_filter(&services, &sender.user_id, body.filter)?;

    match body.set_presence {
        PresenceState::Offline => {}
        PresenceState::Unavailable => {
            services.presence.set(&sender.user_id, "unavailable", None).await?
        }
        _ => services.presence.active(&sender.user_id).await?,
    }

    if let Some(token) = since {
        acknowledge_to_device(
            &services,
            &sender.user_id,
            &sender.device_id,
            token.to_device_position(),
        )
        .await?;
    }

    let config = &services.config;
    let timeout =
        body.timeout.unwrap_or(Duration::from_millis(config.client_sync_timeout_default)).clamp(
            Duration::from_millis(config.client_sync_timeout_min),
            Duration::from_millis(
                config.client_sync_timeout_max.max(config.client_sync_timeout_min),
            ),
        );
    let wait =
        since.is_some() && !body.full_state && body.timeout.is_none_or(|asked| !asked.is_zero());
    let deadline = tokio::time::Instant::now() + timeout;
    // Register before looking, so a commit between the look and the wait still wakes us. One
    // registration serves the whole request: a wake that arrives while a response is being
    // computed is kept for the next wait. A room joined meanwhile wakes the user directly,
    // and that join is news, so the request answers before it would need the new room.
    let registration = wait.then(|| register_for_wakes(&services, &sender.user_id)).transpose()?;
    let computed = loop {
        if let Some(registration) = &registration
            && nothing_new_since(&services, since)
            && tokio::time::Instant::now() < deadline
        {
            metrics::counter!("tuwunel_sync_skipped_computations_total").increment(1);
            if !wait_for_news(&services, registration, deadline).await {
                break compute(&services, &sender, since, false, &filter).await?;
            }
            continue;
        }
        let computed = compute(&services, &sender, since, body.full_state, &filter).await?;
        let Some(registration) = &registration else { break computed };
        if computed.has_news || tokio::time::Instant::now() >= deadline {
            break computed;
        }
        if !wait_for_news(&services, registration, deadline).await {
            // One last look, then answer whatever there is.
            break compute(&services, &sender, since, false, &filter).await?;
        }
    };

    metrics::counter!("tuwunel_sync_responses_total", "kind" => if since.is_some() { "incremental" } else { "initial" }).increment(1);
    Ok(computed.response)
}

/// Waits until the registration is woken; false when the deadline passed or the server is
/// stopping instead.
/// Registers `user` on the SyncHub for their joined rooms (and for themselves), before a
/// request looks for news, so a commit between the look and the wait still wakes it.
pub(super) fn register_for_wakes(services: &Services, user: &UserId) -> Result<Registration> {
    let memberships = crate::rooms::cached_memberships(&services.storage, user)?;
    let joined: Vec<_> = memberships
        .iter()
        .filter(|(_, record)| record.membership == MembershipState::Join)
        .map(|(room, _)| room.clone())
        .collect();
    Ok(services.hub.register(user, &joined))
}

pub(super) async fn wait_for_news(
    services: &Services,
    registration: &Registration,
    deadline: tokio::time::Instant,
) -> bool {
    tokio::select! {
        () = registration.waiter().woken() => {}
        () = tokio::time::sleep_until(deadline) => {}
        () = services.shutdown.clone().wait() => {}
    }
    !services.shutdown.is_triggered() && tokio::time::Instant::now() < deadline
}

/// Incremental syncs at most this many stream positions behind, for users in at most
/// `INLINE_MAX_ROOMS` rooms, are computed on the request's own task.
const INLINE_MAX_GAP: u64 = 256;
const INLINE_MAX_ROOMS: usize = 64;

/// Whether a response is small enough to compute without leaving the async worker. Such a
/// sync is a handful of cached reads (tens of microseconds); handing it to the blocking pool
/// cost two thread switches and a pool that grew to one thread per waiting member when a
/// message woke a whole room at once. Initial, full-state, far-behind and many-room syncs
/// read much more, so they still go to the blocking pool.
fn is_small(
    services: &Services,
    sender: &crate::accounts::Sender,
    since: Option<SyncToken>,
    full_state: bool,
) -> Result<bool> {
    let Some(since) = since else { return Ok(false) };
    let committed = services.storage.writer().committed_position();
    if !is_small_size(Some(since.position), committed, 0, full_state) {
        return Ok(false);
    }
    let rooms = crate::rooms::cached_memberships(&services.storage, &sender.user_id)?.len();
    Ok(is_small_size(Some(since.position), committed, rooms, full_state))
}

/// The size rule of [`is_small`], on what it measured.
pub(super) fn is_small_size(
    since: Option<u64>,
    committed: u64,
    rooms: usize,
    full_state: bool,
) -> bool {
    since.is_some_and(|since| {
        !full_state
            && committed.saturating_sub(since) <= INLINE_MAX_GAP
            && rooms <= INLINE_MAX_ROOMS
    })
}

/// What a response reads, from the server's services.
pub(super) fn reader(services: &Services) -> SyncReader<'_> {
    SyncReader {
        storage: &services.storage,
        hub: &services.hub,
        typing: &services.rooms.typing,
        time: &services.time,
        presence_enabled: services.config.allow_local_presence,
    }
}

/// Computes a response: a small one right here, any other on the blocking pool.
async fn compute(
    services: &Arc<Services>,
    sender: &crate::accounts::Sender,
    since: Option<SyncToken>,
    full_state: bool,
    filter: &FilterDefinition,
) -> Result<response::Computed> {
    if is_small(services, sender, since, full_state)? {
        metrics::counter!("tuwunel_sync_computations_total", "pool" => "inline", "api" => "v3")
            .increment(1);
        return response::compute(
            &reader(services),
            &SyncParams { sender, since, full_state, filter },
        );
    }
    metrics::counter!("tuwunel_sync_computations_total", "pool" => "blocking", "api" => "v3")
        .increment(1);
    let services = Arc::clone(services);
    let sender = sender.clone();
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || {
        response::compute(
            &reader(&services),
            &SyncParams { sender: &sender, since, full_state, filter: &filter },
        )
    })
    .await
    .map_err(|error| Error::internal(format!("sync computation failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_near_incremental_syncs_of_few_rooms_are_small() {
        assert!(is_small_size(Some(100), 100 + INLINE_MAX_GAP, INLINE_MAX_ROOMS, false));
        assert!(!is_small_size(None, 0, 1, false), "an initial sync");
        assert!(!is_small_size(Some(100), 101, 1, true), "a full-state sync");
        assert!(!is_small_size(Some(100), 101 + INLINE_MAX_GAP, 1, false), "far behind");
        assert!(!is_small_size(Some(100), 101, INLINE_MAX_ROOMS + 1, false), "many rooms");
    }
}
