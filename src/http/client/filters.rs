//! Filters: stored per user under an id derived from their content, so a client that
//! uploads the same filter every start gets the same id back.

use std::sync::Arc;

use ruma::api::client::filter::{FilterDefinition, create_filter, get_filter};
use sha2::{Digest, Sha256};

use super::require_self;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    http::ruma::{Ruma, route},
    limits,
    storage::{codec::Key, users::FILTERS_TABLE},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, create);
    route(router, get)
}

/// Rejects filters that parse but make no sense.
fn validate(filter: &FilterDefinition) -> Result<()> {
    let limits = [
        filter.room.timeline.limit,
        filter.room.state.limit,
        filter.room.ephemeral.limit,
        filter.room.account_data.limit,
        filter.presence.limit,
        filter.account_data.limit,
    ];
    if limits.iter().flatten().any(|limit| *limit == ruma::UInt::MIN) {
        return Err(Error::invalid_param("A filter limit must be at least 1."));
    }
    crate::http::validate::known_value(
        "event_format",
        filter.event_format.as_str(),
        &["client", "federation"],
    )
}

async fn create(
    services: Arc<Services>,
    request: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "create filters")?;
    validate(&body.filter)?;
    let definition = serde_json::to_vec(&body.filter)?;
    if definition.len() > limits::MAX_FILTER_BYTES {
        return Err(Error::too_large(format!(
            "A filter is limited to {} bytes.",
            limits::MAX_FILTER_BYTES
        )));
    }
    let digest = Sha256::digest(&definition);
    let filter_id: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    let id = filter_id.clone();
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::PutFilter { filter_id: id, definition, reply })
        .await?;
    Ok(create_filter::v3::Response::new(filter_id))
}

/// A stored filter of `user`.
pub(crate) fn load(
    services: &Services,
    user: &ruma::UserId,
    filter_id: &str,
) -> Result<Option<FilterDefinition>> {
    let key = (user.to_owned(), filter_id.to_owned());
    let Some(bytes) = FILTERS_TABLE.get(services.storage.engine(), &key)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(filter) => Ok(Some(filter)),
        Err(error) => {
            // Reported and treated as unknown: the client can create a new one.
            crate::storage::table::report_undecodable(FILTERS_TABLE.id(), &key.encode(), &error);
            Ok(None)
        }
    }
}

async fn get(
    services: Arc<Services>,
    request: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let sender = request.sender()?;
    require_self(sender, &request.body.user_id, "read filters")?;
    let filter = load(&services, &sender.user_id, &request.body.filter_id)?
        .ok_or_else(|| Error::not_found("No such filter."))?;
    Ok(get_filter::v3::Response::new(filter))
}
