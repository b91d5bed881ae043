//! Membership: join (by id or alias, with the room's join rules), leave, invite, kick, ban,
//! unban, knock, forget, and the list of joined rooms.

use std::{ops::ControlFlow, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_rooms, kick_user, leave_room, unban_user,
        },
    },
    events::room::member::MembershipState,
};

use super::{require_room, resolve, send_membership};
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{Sender, rate_limit::Action},
    http::ruma::{Ruma, route},
    storage::{
        Direction,
        codec::{Json, prefix},
        rooms::USER_ROOMS_TABLE,
    },
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

fn limit(services: &Services, sender: &Sender, action: Action) -> Result<()> {
    if services.accounts.is_admin(&sender.user_id) {
        return Ok(());
    }
    services.accounts.limiter.check(action, sender.user_id.as_str())
}

fn unknown_room() -> Error {
    Error::not_found(
        "This server does not know that room; joining rooms of other servers needs federation.",
    )
}

fn current_membership(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<String>> {
    Ok(crate::rooms::membership(services.storage.engine(), room_id, user)?
        .map(|record| record.membership))
}

async fn join(
    services: &Services,
    sender: &Sender,
    room_id: OwnedRoomId,
    reason: Option<&str>,
) -> Result<OwnedRoomId> {
    require_room(services, &room_id).map_err(|_| unknown_room())?;
    if current_membership(services, &room_id, &sender.user_id)?.as_deref() == Some("join") {
        return Ok(room_id);
    }
    limit(services, sender, Action::Join)?;
    send_membership(
        services,
        &room_id,
        &sender.user_id,
        &sender.user_id,
        MembershipState::Join,
        reason,
    )
    .await?;
    Ok(room_id)
}

async fn join_by_id_or_alias(
    services: Arc<Services>,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = resolve(&services, &body.room_id_or_alias)?;
    let room_id = join(&services, &sender, room_id, body.reason.as_deref()).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn join_by_id(
    services: Arc<Services>,
    request: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = join(&services, &sender, body.room_id, body.reason.as_deref()).await?;
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
    require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if recipient.user_id.server_name() != services.config.server_name {
        return Err(Error::forbidden(
            "Inviting users of other servers needs federation, which this server does not offer yet.",
        ));
    }
    if services.accounts.record(&recipient.user_id)?.is_none_or(|record| record.deactivated) {
        return Err(Error::not_found(format!("{} does not exist.", recipient.user_id)));
    }
    if current_membership(&services, &body.room_id, &recipient.user_id)?.as_deref() == Some("join")
    {
        return Err(Error::forbidden(format!("{} is already in the room.", recipient.user_id)));
    }
    limit(&services, &sender, Action::Invite)?;
    send_membership(
        &services,
        &body.room_id,
        &sender.user_id,
        &recipient.user_id,
        MembershipState::Invite,
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
    require_room(&services, &body.room_id)?;
    match current_membership(&services, &body.room_id, &sender.user_id)?.as_deref() {
        Some("join" | "invite" | "knock") => {}
        Some("leave") => return Ok(leave_room::v3::Response::new()),
        _ => return Err(Error::forbidden("You are not a member of this room.")),
    }
    send_membership(
        &services,
        &body.room_id,
        &sender.user_id,
        &sender.user_id,
        MembershipState::Leave,
        body.reason.as_deref(),
    )
    .await?;
    Ok(leave_room::v3::Response::new())
}

async fn kick(
    services: Arc<Services>,
    request: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if !matches!(
        current_membership(&services, &body.room_id, &body.user_id)?.as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Err(Error::forbidden(format!("{} is not in the room.", body.user_id)));
    }
    send_membership(
        &services,
        &body.room_id,
        &sender.user_id,
        &body.user_id,
        MembershipState::Leave,
        body.reason.as_deref(),
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(
    services: Arc<Services>,
    request: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    send_membership(
        &services,
        &body.room_id,
        &sender.user_id,
        &body.user_id,
        MembershipState::Ban,
        body.reason.as_deref(),
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    services: Arc<Services>,
    request: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if current_membership(&services, &body.room_id, &body.user_id)?.as_deref() != Some("ban") {
        return Err(Error::forbidden(format!("{} is not banned.", body.user_id)));
    }
    send_membership(
        &services,
        &body.room_id,
        &sender.user_id,
        &body.user_id,
        MembershipState::Leave,
        body.reason.as_deref(),
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

async fn knock(
    services: Arc<Services>,
    request: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let room_id = resolve(&services, &body.room_id_or_alias)?;
    require_room(&services, &room_id).map_err(|_| unknown_room())?;
    match current_membership(&services, &room_id, &sender.user_id)?.as_deref() {
        Some("join") => return Err(Error::forbidden("You are already in this room.")),
        Some("ban") => return Err(Error::forbidden("You are banned from this room.")),
        _ => {}
    }
    limit(&services, &sender, Action::Join)?;
    send_membership(
        &services,
        &room_id,
        &sender.user_id,
        &sender.user_id,
        MembershipState::Knock,
        body.reason.as_deref(),
    )
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

/// Rooms where `user` has one of `memberships`.
fn rooms_with(
    services: &Services,
    user: &UserId,
    memberships: &[&str],
) -> Result<Vec<OwnedRoomId>> {
    let mut rooms = Vec::new();
    USER_ROOMS_TABLE.scan(
        services.storage.engine(),
        &prefix(&user.as_str()),
        None,
        Direction::Forward,
        |(_, room), Json(record)| {
            if memberships.contains(&record.membership.as_str())
                && let Ok(room) = RoomId::parse(room)
            {
                rooms.push(room);
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(rooms)
}

/// Leaves (or declines) every room `user` is joined to, invited to or knocking on; used when
/// an account is deactivated. Failures are logged and do not stop the others.
pub(crate) async fn leave_all(services: &Services, user: &UserId) -> Result<()> {
    for room_id in rooms_with(services, user, &["join", "invite", "knock"])? {
        if let Err(error) =
            send_membership(services, &room_id, user, user, MembershipState::Leave, None).await
        {
            tracing::warn!(%user, room = %room_id, %error, "could not leave a room");
        }
    }
    Ok(())
}

/// Sends an updated join event with the current display name and avatar to every room
/// `user` is joined to, as the spec asks after a profile change.
pub(crate) async fn propagate_profile(services: &Arc<Services>, user: &UserId) -> Result<()> {
    let profile = super::member_content(services, user, MembershipState::Join, None)?;
    let wanted = |field: &str| {
        match field {
            "displayname" => profile.displayname.clone(),
            _ => profile.avatar_url.as_ref().map(ToString::to_string),
        }
        .map(ruma::CanonicalJsonValue::String)
    };
    let mut tasks = Vec::new();
    for room_id in rooms_with(services, user, &["join"])? {
        let current = crate::rooms::current_state_event(
            &services.storage,
            &room_id,
            "m.room.member",
            user.as_str(),
        )?;
        let Some(current) = current else { continue };
        let Ok(ruma::CanonicalJsonValue::Object(mut content)) =
            ruma::CanonicalJsonValue::try_from(current.content_value())
        else {
            continue;
        };
        let mut changed = false;
        for field in ["displayname", "avatar_url"] {
            let wanted = wanted(field);
            if content.get(field) != wanted.as_ref() {
                changed = true;
                match wanted {
                    Some(value) => content.insert(field.to_owned(), value),
                    None => content.remove(field),
                };
            }
        }
        // A restricted-join authorisation belongs to the original join only.
        content.remove("join_authorised_via_users_server");
        if !changed {
            continue;
        }
        let services = Arc::clone(services);
        let user = user.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut template = crate::rooms::builder::Template::state(
                ruma::events::TimelineEventType::RoomMember,
                user.as_str(),
                &user,
                content,
            );
            // The join was read above, outside the room's actor: it may have ended since.
            template.only_while_joined = true;
            if let Err(error) = super::send(&services, &room_id, template, None).await {
                tracing::warn!(%user, room = %room_id, %error, "could not update the member event");
            }
        }));
    }
    for task in tasks {
        if let Err(error) = task.await {
            crate::actors::tasks::report_join_error("profile_propagation", error);
        }
    }
    Ok(())
}
