//! Room endpoints of the Client-Server API, one file per family.

mod create;
mod directory;
mod hierarchy;
pub(crate) mod membership;
mod peek;
mod read;
mod relations;
mod reports;
mod send;
mod upgrade;

use ruma::{
    OwnedMxcUri, OwnedRoomId, RoomId, RoomOrAliasId, UserId,
    events::room::member::{MembershipState, RoomMemberEventContent},
};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    rooms::actor::{SendRequest, Sent, Transaction},
    rooms::builder::Template,
    storage::users::PROFILES_TABLE,
};

pub(in crate::http) fn routes(router: Routes) -> Routes {
    let router = create::routes(router);
    let router = membership::routes(router);
    let router = send::routes(router);
    let router = directory::routes(router);
    let router = hierarchy::routes(router);
    let router = upgrade::routes(router);
    let router = reports::routes(router);
    let router = relations::routes(router);
    let router = peek::routes(router);
    read::routes(router)
}

/// A room id as given, or the room an alias of this server points to.
pub(crate) fn resolve(services: &Services, target: &RoomOrAliasId) -> Result<OwnedRoomId> {
    services.rooms.aliases.resolve_room(target)
}

/// Fails with `M_NOT_FOUND` unless this server knows the room.
pub(crate) fn require_room(
    services: &Services,
    room_id: &RoomId,
) -> Result<crate::storage::rooms::RoomRecord> {
    crate::rooms::require_room(&services.storage, room_id)
}

/// Content of a membership event for `user`, with their display name and avatar when they
/// join.
pub(crate) fn member_content(
    services: &Services,
    user: &UserId,
    membership: MembershipState,
    reason: Option<&str>,
) -> Result<RoomMemberEventContent> {
    let profile = |field: &str| -> Result<Option<String>> {
        let bytes =
            PROFILES_TABLE.get(services.storage.engine(), &(user.to_owned(), field.to_owned()))?;
        Ok(bytes.and_then(|bytes| match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::String(value)) => Some(value),
            _ => None,
        }))
    };
    let joining = membership == MembershipState::Join;
    let mut content = RoomMemberEventContent::new(membership);
    if joining {
        content.displayname = profile("displayname")?;
        content.avatar_url = profile("avatar_url")?.map(OwnedMxcUri::from);
    }
    content.reason = reason.map(str::to_owned);
    Ok(content)
}

/// Sends an event through the room's actor, failing fast for unknown rooms.
pub(crate) async fn send(
    services: &Services,
    room_id: &RoomId,
    template: Template,
    transaction: Option<Transaction>,
) -> Result<Sent> {
    require_room(services, room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if let Some(transaction) = &transaction {
        crate::http::validate::max_bytes(
            "A transaction ID",
            &transaction.txn_id,
            crate::limits::MAX_OPAQUE_ID_BYTES,
        )?;
    }
    services.rooms.send(room_id, SendRequest { template, transaction }).await
}

/// Sends a membership event about `target` by `sender`.
pub(crate) async fn send_membership(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: MembershipState,
    reason: Option<&str>,
) -> Result<Sent> {
    let content = member_content(services, target, membership, reason)?;
    let template = Template::typed(&sender.to_owned(), target.as_str(), &content)?;
    send(services, room_id, template, None).await
}
