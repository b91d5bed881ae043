//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186, simplified
//! sliding sync, what Element X speaks): parses and checks the request, finds its connection,
//! and long-polls on the SyncHub as `/sync` does until the response has news, the timeout
//! passes, a newer request on the same connection retires this one, or the server stops.
//! What a response holds is `sync::sliding`'s business.

use std::{sync::Arc, time::Duration};

use ruma::{api::client::sync::sync_events::v5, presence::PresenceState};

use super::sync::{reader, register_for_wakes, wait_for_news};
use crate::{
    Error, Result, Services,
    http::{
        routes::Routes,
        ruma::{Ruma, route},
    },
    sync::sliding::{self, connections::ConnKey, request},
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, sliding_sync)
}

async fn sliding_sync(services: Arc<Services>, request: Ruma<v5::Request>) -> Result<v5::Response> {
    let sender = request.sender()?.clone();
    let body = request::parse(request.body, &request.raw_body, &sender.user_id)?;
    let key = ConnKey {
        user: sender.user_id.clone(),
        device: sender.device_id.clone(),
        conn_id: body.conn_id.clone(),
    };
    let begun = services.sliding.begin(&key, body.pos.as_deref())?;

    match body.set_presence {
        PresenceState::Offline => {}
        PresenceState::Unavailable => {
            services.presence.set(&sender.user_id, "unavailable", None).await?
        }
        _ => services.presence.active(&sender.user_id).await?,
    }

    // Wait only when continuing a connection and asked to (the MSC: no timeout answers at
    // once), never longer than /sync would.
    let timeout = body
        .timeout
        .filter(|_| body.pos.is_some())
        .map(|timeout| timeout.min(Duration::from_millis(services.config.client_sync_timeout_max)));
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let registration =
        deadline.map(|_| register_for_wakes(&services, &sender.user_id)).transpose()?;
    let mut superseded = begun.superseded.clone();
    let computed = loop {
        let computed = compute(&services, &sender, &body, &begun.state).await?;
        let (Some(registration), Some(deadline)) = (&registration, deadline) else {
            break computed;
        };
        if computed.has_news || begun.is_superseded() || tokio::time::Instant::now() >= deadline {
            break computed;
        }
        tokio::select! {
            woken = wait_for_news(&services, registration, deadline) => {
                if !woken {
                    break compute(&services, &sender, &body, &begun.state).await?;
                }
            }
            _ = superseded.changed() => break computed,
        }
    };
    let mut response = computed.response;
    response.pos = services.sliding.finish(&key, &begun, computed.delta)?;
    response.txn_id = body.txn_id;
    metrics::counter!(
        "tuwunel_sliding_sync_responses_total",
        "kind" => if body.pos.is_some() { "incremental" } else { "initial" }
    )
    .increment(1);
    Ok(response)
}

/// Computes a response: a small one right here, any other on the blocking pool.
async fn compute(
    services: &Arc<Services>,
    sender: &crate::accounts::Sender,
    body: &request::Request,
    state: &sliding::state::ConnState,
) -> Result<sliding::Computed> {
    let committed = services.storage.writer().committed_position();
    let rooms = crate::rooms::cached_memberships(&services.storage, &sender.user_id)?.len();
    if super::sync::is_small_size((!state.is_new()).then_some(state.since), committed, rooms, false)
    {
        metrics::counter!("tuwunel_sync_computations_total", "pool" => "inline", "api" => "sliding")
            .increment(1);
        return sliding::compute(&reader(services), body, state, sender);
    }
    metrics::counter!("tuwunel_sync_computations_total", "pool" => "blocking", "api" => "sliding")
        .increment(1);
    let services = Arc::clone(services);
    let sender = sender.clone();
    let body = body.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        sliding::compute(&reader(&services), &body, &state, &sender)
    })
    .await
    .map_err(|error| Error::internal(format!("sliding sync computation failed: {error}")))?
}
