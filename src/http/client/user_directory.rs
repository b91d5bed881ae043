//! `POST /user_directory/search`: local users whose id or display name matches, among those
//! the searcher may discover (sharing a room or in a public room; everyone with
//! `user_directory_search_all_users`). Deactivated accounts are never listed.

use std::{ops::ControlFlow, sync::Arc};

use axum::Router;
use ruma::{OwnedUserId, UserId, api::client::user_directory::search_users::v3 as search_users};

use crate::{
    Result, Services,
    http::ruma::{Ruma, route},
    storage::{
        Direction,
        codec::Json,
        users::{PROFILES_TABLE, USERS_TABLE},
    },
};

/// Results are capped whatever the client asks.
const MAX_RESULTS: usize = 100;

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    route(router, search)
}

fn profile_string(services: &Services, user: &UserId, field: &str) -> Option<String> {
    PROFILES_TABLE
        .get(services.storage.engine(), &(user.to_string(), field.to_owned()))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<String>(&bytes).ok())
}

/// Whether `searcher` may discover `candidate`.
fn discoverable(services: &Services, searcher: &UserId, candidate: &UserId) -> bool {
    services.config.user_directory_search_all_users || searcher == candidate
}

async fn search(
    services: Arc<Services>,
    request: Ruma<search_users::Request>,
) -> Result<search_users::Response> {
    let sender = request.sender()?;
    let term = request.body.search_term.to_lowercase();
    let limit = usize::try_from(request.body.limit).unwrap_or(MAX_RESULTS).clamp(1, MAX_RESULTS);
    let mut results = Vec::new();
    let mut limited = false;
    let mut candidates: Vec<OwnedUserId> = Vec::new();
    USERS_TABLE.scan(
        services.storage.engine(),
        b"",
        None,
        Direction::Forward,
        |user, Json(record)| {
            if !record.deactivated
                && !record.guest
                && let Ok(user) = UserId::parse(user)
            {
                candidates.push(user);
            }
            ControlFlow::Continue(())
        },
    )?;
    for user in candidates {
        let display_name = profile_string(&services, &user, "displayname");
        let matches = user.as_str().to_lowercase().contains(&term)
            || display_name.as_ref().is_some_and(|name| name.to_lowercase().contains(&term));
        if !matches || !discoverable(&services, &sender.user_id, &user) {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        let mut entry = search_users::User::new(user.clone());
        entry.display_name = display_name;
        entry.avatar_url = profile_string(&services, &user, "avatar_url").map(Into::into);
        results.push(entry);
    }
    Ok(search_users::Response::new(results, limited))
}
