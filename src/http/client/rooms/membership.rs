//! Membership: join (by id or alias, with the room's join rules), leave, invite, kick, ban,
//! unban, knock, forget, and the list of joined rooms. The checks and the member events are
//! the domain's (`rooms::membership`); what stays here is the rate limit, which spares
//! server admins.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, UserId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_rooms, kick_user, leave_room, unban_user,
        },
    },
};

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{Sender, rate_limit::Action},
    http::ruma::{Ruma, route},
    rooms::{federation::join::JoinSettings, membership::MembershipChange},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, join_by_id_or_alias);
    let router = route(router, join_by_id);
    let router = route(router, invite);
    let router = route(router, leave);
    let router = route(router, kick);
    let router = route(router, ban);
    let router = route(router, unban);
    let router = route(router, knock);
    let router = route(router, forget);
    route(router, joined)
}

/// The rate limit of `action`, which spares server admins.
fn limit(services: &Services, sender: &Sender, action: Option<Action>) -> Result<()> {
    let Some(action) = action else {
        return Ok(());
    };
    if services.accounts.is_admin(&sender.user_id) {
        return Ok(());
    }
    services.accounts.limiter.check(action, sender.user_id.as_str())
}

/// Changes `target`'s membership on behalf of the sender: the domain's checks, then the rate
/// limit of `action` (only for a change that happens), then the member event.
async fn change(
    services: &Services,
    sender: &Sender,
    room_id: &RoomId,
    target: &UserId,
    change: MembershipChange,
    action: Option<Action>,
    reason: Option<&str>,
) -> Result<()> {
    let rooms = &services.rooms;
    if !rooms.membership_needed(&services.accounts, room_id, target, change)? {
        return Ok(());
    }
    limit(services, sender, action)?;
    rooms.send_membership(room_id, &sender.user_id, target, change.membership(), reason).await?;
    Ok(())
}

/// Joins the sender to a room: here when a user of this server is in it, else through
/// `servers` (the client's `via`) or the room id's server.
async fn join(
    services: &Services,
    sender: &Sender,
    room_id: OwnedRoomId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<OwnedRoomId> {
    let user = &sender.user_id;
    let rooms = &services.rooms;
    if !rooms.join_needs_federation(&room_id)? {
        change(
            services,
            sender,
            &room_id,
            user,
            MembershipChange::Join,
            Some(Action::Join),
            reason,
        )
        .await?;
        return Ok(room_id);
    }
    limit(services, sender, Some(Action::Join))?;
    let settings = JoinSettings::from_config(&services.config);
    rooms.join_remote(&services.federation, &settings, &room_id, user, servers, reason).await?;
    Ok(room_id)
}

async fn join_by_id_or_alias(
    services: Arc<Services>,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = services.rooms.aliases.resolve_room(&body.room_id_or_alias)?;
    let room_id = join(&services, &sender, room_id, &body.via, body.reason.as_deref()).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn join_by_id(
    services: Arc<Services>,
    request: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = join(&services, &sender, body.room_id, &[], body.reason.as_deref()).await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

async fn invite(
    services: Arc<Services>,
    request: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let invite_user::v3::InvitationRecipient::UserId(recipient) = body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported by this server."));
    };
    change(
        &services,
        &sender,
        &body.room_id,
        &recipient.user_id,
        MembershipChange::Invite,
        Some(Action::Invite),
        recipient.reason.as_deref(),
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

async fn leave(
    services: Arc<Services>,
    request: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let user = &sender.user_id;
    let reason = body.reason.as_deref();
    change(&services, &sender, &body.room_id, user, MembershipChange::Leave, None, reason).await?;
    Ok(leave_room::v3::Response::new())
}

async fn kick(
    services: Arc<Services>,
    request: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let reason = body.reason.as_deref();
    change(&services, &sender, &body.room_id, &body.user_id, MembershipChange::Kick, None, reason)
        .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(
    services: Arc<Services>,
    request: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let reason = body.reason.as_deref();
    change(&services, &sender, &body.room_id, &body.user_id, MembershipChange::Ban, None, reason)
        .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    services: Arc<Services>,
    request: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let reason = body.reason.as_deref();
    let target = &body.user_id;
    change(&services, &sender, &body.room_id, target, MembershipChange::Unban, None, reason)
        .await?;
    Ok(unban_user::v3::Response::new())
}

async fn knock(
    services: Arc<Services>,
    request: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = services.rooms.aliases.resolve_room(&body.room_id_or_alias)?;
    let user = &sender.user_id;
    let reason = body.reason.as_deref();
    change(&services, &sender, &room_id, user, MembershipChange::Knock, Some(Action::Join), reason)
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

async fn forget(
    services: Arc<Services>,
    request: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let sender = request.sender()?.clone();
    require_room(&services, &request.body.room_id)?;
    services.rooms.forget(&request.body.room_id, &sender.user_id).await?;
    Ok(forget_room::v3::Response::new())
}

async fn joined(
    services: Arc<Services>,
    request: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let sender = request.sender()?;
    Ok(joined_rooms::v3::Response::new(crate::rooms::joined_rooms(
        services.storage.engine(),
        &sender.user_id,
    )?))
}
