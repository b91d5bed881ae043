//! `POST /user_directory/search`: local users whose id or display name matches, among those
//! the searcher may discover: users sharing a room with them and members of rooms published
//! in the room directory (everyone with `user_directory_search_all_users`). Deactivated and
//! guest accounts are never listed.

use std::{collections::HashSet, ops::ControlFlow, sync::Arc};

use ruma::{
    OwnedRoomId, OwnedUserId, UserId, api::client::user_directory::search_users::v3 as search_users,
};

use crate::http::routes::Routes;
use crate::{
    Result, Services,
    accounts::profile,
    http::ruma::{Ruma, route},
    storage::{
        Direction,
        codec::{Json, Prefix},
        users::USERS_TABLE,
    },
};

/// Results are capped whatever the client asks.
const MAX_RESULTS: usize = 100;

pub(super) fn routes(router: Routes) -> Routes {
    route(router, search)
}

fn profile_string(services: &Services, user: &UserId, field: &str) -> Option<String> {
    profile::profile_string(&services.storage, user, field).ok().flatten()
}

/// The users `searcher` may discover, or `None` when everyone is discoverable.
fn discoverable(services: &Services, searcher: &UserId) -> Result<Option<HashSet<String>>> {
    if services.config.user_directory_search_all_users {
        return Ok(None);
    }
    let mut rooms: Vec<OwnedRoomId> =
        crate::rooms::joined_rooms(services.storage.engine(), searcher)?;
    rooms.extend(services.rooms.aliases.published()?);
    let mut users = HashSet::from([searcher.to_string()]);
    for room in rooms {
        if let Some(record) = crate::rooms::room(&services.storage, &room)? {
            users.extend(crate::rooms::timeline::joined_members(&services.storage, record.short)?);
        }
    }
    Ok(Some(users))
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
    let visible = discoverable(&services, &sender.user_id)?;
    let mut candidates: Vec<OwnedUserId> = Vec::new();
    USERS_TABLE.scan(
        services.storage.engine(),
        &Prefix::all(),
        None,
        Direction::Forward,
        |user, Json(record)| {
            if !record.deactivated && !record.guest {
                candidates.push(user);
            }
            ControlFlow::Continue(())
        },
    )?;
    for user in candidates {
        let display_name = profile_string(&services, &user, "displayname");
        let matches = user.as_str().to_lowercase().contains(&term)
            || display_name.as_ref().is_some_and(|name| name.to_lowercase().contains(&term));
        if !matches || visible.as_ref().is_some_and(|visible| !visible.contains(user.as_str())) {
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
