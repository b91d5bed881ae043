//! The key endpoints: `GET /_matrix/key/v2/server` (this server's keys, self-signed) and the
//! notary service, `GET /_matrix/key/v2/query/{serverName}` and `POST /_matrix/key/v2/query`:
//! other servers' key documents as their servers signed them, countersigned by us.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedServerName,
    api::federation::discovery::{
        ServerSigningKeys, get_remote_server_keys, get_remote_server_keys_batch, get_server_keys,
    },
    serde::Raw,
};

use crate::{Result, Services, federation::keys::to_raw, http::ruma::Ruma};

/// Servers one batch query may make us fetch; the others are answered from what is stored.
const MAX_FETCHES_PER_QUERY: usize = 100;

pub(super) async fn server_keys(
    services: Arc<Services>,
    _request: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    let document = services.federation.keys.own_document()?;
    Ok(get_server_keys::v2::Response::new(to_raw(&document)?))
}

pub(super) async fn query(
    services: Arc<Services>,
    request: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    let minimum = u64::from(request.body.minimum_valid_until_ts.get());
    let documents = vouch(&services, vec![(request.body.server_name, minimum)]).await?;
    Ok(get_remote_server_keys::v2::Response::new(documents))
}

pub(super) async fn query_batch(
    services: Arc<Services>,
    request: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    let now = services.time.now_ms();
    let wanted = request
        .body
        .server_keys
        .into_iter()
        .map(|(server, criteria)| {
            // The spec: without a timestamp, "now"; several key ids may ask for different ones.
            let minimum = criteria
                .values()
                .filter_map(|criteria| criteria.minimum_valid_until_ts)
                .map(|ts| u64::from(ts.get()))
                .max()
                .unwrap_or(now);
            (server, minimum)
        })
        .collect();
    let documents = vouch(&services, wanted).await?;
    Ok(get_remote_server_keys_batch::v2::Response::new(documents))
}

/// The countersigned documents of `wanted` servers, fetching those whose stored documents
/// are not valid long enough (at most [`MAX_FETCHES_PER_QUERY`], all at once). Servers with
/// nothing known are left out, as the spec says.
async fn vouch(
    services: &Arc<Services>,
    wanted: Vec<(OwnedServerName, u64)>,
) -> Result<Vec<Raw<ServerSigningKeys>>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (server, minimum)) in wanted.into_iter().enumerate() {
        let services = Arc::clone(services);
        // Past the fetch budget, whatever is stored is the answer.
        let may_fetch = index < MAX_FETCHES_PER_QUERY;
        tasks.spawn(async move {
            let document =
                services.federation.keys.notary_document(&server, minimum, may_fetch).await;
            (server, document)
        });
    }
    let mut found = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((server, document)) = joined else { continue };
        match document {
            Ok(Some(document)) => {
                found.insert(server, document);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%server, %error, "notary: reading stored keys failed"),
        }
    }
    let mut documents = Vec::with_capacity(found.len());
    for (_, mut document) in found {
        services.federation.keys.countersign(&mut document)?;
        documents.push(to_raw(&document)?);
    }
    Ok(documents)
}
