//! Membership changes on behalf of users: what a change must satisfy before it goes to the
//! room's actor (which applies the room version's auth rules), the member event's content,
//! and the changes that span all of a user's rooms (leaving them all, a new profile).

use std::{ops::ControlFlow, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedMxcUri, OwnedRoomId, OwnedServerName, RoomId,
    UserId,
    events::{
        TimelineEventType,
        room::member::{MembershipState, RoomMemberEventContent},
    },
};

use super::{
    Rooms,
    actor::Sent,
    builder::Template,
    federation::join::{self, JoinSettings},
};
use crate::{
    Error, Result,
    accounts::{Accounts, profile},
    federation::Federation,
    storage::{
        Direction,
        codec::{Json, Prefix},
        rooms::USER_ROOMS_TABLE,
    },
};

/// What a user asks to do about a membership (their own, or another user's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    Join,
    Invite,
    Leave,
    Kick,
    Ban,
    Unban,
    Knock,
}

impl MembershipChange {
    /// The membership the change writes.
    pub fn membership(self) -> MembershipState {
        match self {
            Self::Join => MembershipState::Join,
            Self::Invite => MembershipState::Invite,
            Self::Leave | Self::Kick | Self::Unban => MembershipState::Leave,
            Self::Ban => MembershipState::Ban,
            Self::Knock => MembershipState::Knock,
        }
    }
}

fn not_a_member() -> Error {
    Error::forbidden("You are not a member of this room.")
}

fn unknown_room() -> Error {
    Error::not_found(
        "This server does not know that room; joining rooms of other servers needs federation.",
    )
}

impl Rooms {
    /// `user`'s current membership of a room, as recorded for the user.
    fn current_membership(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Option<MembershipState>> {
        Ok(super::membership(self.storage().engine(), room_id, user)?
            .map(|record| record.membership))
    }

    /// Checks what a membership change about `target` must satisfy besides the auth rules:
    /// a room this server knows, an invitee that exists, a kicked user in the room, an
    /// unbanned user banned... `Ok(false)` when there is nothing to do (joining a room one
    /// is in, leaving a room one has left).
    pub fn membership_needed(
        &self,
        accounts: &Accounts,
        room_id: &RoomId,
        target: &UserId,
        change: MembershipChange,
    ) -> Result<bool> {
        let storage = self.storage();
        let known = super::room(storage, room_id)?.is_some();
        match change {
            MembershipChange::Join => {
                if !known {
                    return Err(unknown_room());
                }
                Ok(self.current_membership(room_id, target)? != Some(MembershipState::Join))
            }
            MembershipChange::Knock => {
                if !known {
                    return Err(unknown_room());
                }
                match self.current_membership(room_id, target)? {
                    Some(MembershipState::Join) => {
                        Err(Error::forbidden("You are already in this room."))
                    }
                    Some(MembershipState::Ban) => {
                        Err(Error::forbidden("You are banned from this room."))
                    }
                    _ => Ok(true),
                }
            }
            MembershipChange::Leave => {
                if !known {
                    return Err(Error::not_found("Unknown room."));
                }
                match self.current_membership(room_id, target)? {
                    Some(
                        MembershipState::Join | MembershipState::Invite | MembershipState::Knock,
                    ) => Ok(true),
                    Some(MembershipState::Leave) => Ok(false),
                    _ => Err(not_a_member()),
                }
            }
            MembershipChange::Invite => {
                if !known {
                    return Err(not_a_member());
                }
                if target.server_name() != self.server_name {
                    return Err(Error::forbidden(
                        "Inviting users of other servers needs federation, which this server does not offer yet.",
                    ));
                }
                if accounts.record(target)?.is_none_or(|record| record.deactivated) {
                    return Err(Error::not_found(format!("{target} does not exist.")));
                }
                if self.current_membership(room_id, target)? == Some(MembershipState::Join) {
                    return Err(Error::forbidden(format!("{target} is already in the room.")));
                }
                Ok(true)
            }
            MembershipChange::Kick => {
                if !known {
                    return Err(not_a_member());
                }
                match self.current_membership(room_id, target)? {
                    Some(
                        MembershipState::Join | MembershipState::Invite | MembershipState::Knock,
                    ) => Ok(true),
                    _ => Err(Error::forbidden(format!("{target} is not in the room."))),
                }
            }
            MembershipChange::Ban => {
                if !known {
                    return Err(not_a_member());
                }
                Ok(true)
            }
            MembershipChange::Unban => {
                if !known {
                    return Err(not_a_member());
                }
                if self.current_membership(room_id, target)? != Some(MembershipState::Ban) {
                    return Err(Error::forbidden(format!("{target} is not banned.")));
                }
                Ok(true)
            }
        }
    }

    /// Changes `target`'s membership on behalf of `sender`, when
    /// [`membership_needed`](Self::membership_needed) says so; `None` when there was nothing
    /// to do.
    pub async fn change_membership(
        &self,
        accounts: &Accounts,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        change: MembershipChange,
        reason: Option<&str>,
    ) -> Result<Option<Sent>> {
        if !self.membership_needed(accounts, room_id, target, change)? {
            return Ok(None);
        }
        self.send_membership(room_id, sender, target, change.membership(), reason).await.map(Some)
    }

    /// Whether `user` joining `room_id` needs another server: the room is unknown here, or
    /// no user of this server is in it (what this server holds of it may be stale).
    pub fn join_needs_federation(&self, room_id: &RoomId) -> Result<bool> {
        let Some(record) = super::room(self.storage(), room_id)? else { return Ok(true) };
        let joined = super::timeline::joined_members(self.storage(), record.short)?;
        Ok(!joined
            .iter()
            .filter_map(|member| UserId::parse(member.as_str()).ok())
            .any(|member| member.server_name() == self.server_name))
    }

    /// Joins `user` to a room that lives on other servers, through `servers` (then the room
    /// id's server): see [`super::federation::join`].
    pub async fn join_remote(
        &self,
        federation: &Federation,
        settings: &JoinSettings,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<Sent> {
        let content = self.member_content(user, MembershipState::Join, reason)?;
        let content: CanonicalJsonObject = serde_json::from_value(serde_json::to_value(content)?)?;
        join::join_remote(self, federation, settings, room_id, user, servers, content).await
    }

    /// Sends a membership event about `target` by `sender`, without the checks of
    /// [`membership_needed`](Self::membership_needed) (the auth rules still apply).
    pub async fn send_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: MembershipState,
        reason: Option<&str>,
    ) -> Result<Sent> {
        let content = self.member_content(target, membership, reason)?;
        let template = Template::typed(&sender.to_owned(), target.as_str(), &content)?;
        self.send(room_id, template, None).await
    }

    /// Content of a membership event for `user`, with their display name and avatar when
    /// they join.
    pub fn member_content(
        &self,
        user: &UserId,
        membership: MembershipState,
        reason: Option<&str>,
    ) -> Result<RoomMemberEventContent> {
        let profile = |field: &str| profile::profile_string(self.storage(), user, field);
        let joining = membership == MembershipState::Join;
        let mut content = RoomMemberEventContent::new(membership);
        if joining {
            content.displayname = profile("displayname")?;
            content.avatar_url = profile("avatar_url")?.map(OwnedMxcUri::from);
        }
        content.reason = reason.map(str::to_owned);
        Ok(content)
    }

    /// Rooms where `user` has one of `memberships`.
    fn rooms_with(
        &self,
        user: &UserId,
        memberships: &[MembershipState],
    ) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        USER_ROOMS_TABLE.scan(
            self.storage().engine(),
            &Prefix::of(user.as_str()),
            None,
            Direction::Forward,
            |(_, room), Json(record)| {
                if memberships.contains(&record.membership)
                    && let Ok(room) = RoomId::parse(room)
                {
                    rooms.push(room);
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(rooms)
    }

    /// Leaves (or declines) every room `user` is joined to, invited to or knocking on; used
    /// when an account is deactivated. Failures are logged and do not stop the others.
    pub async fn leave_all(&self, user: &UserId) -> Result<()> {
        for room_id in self.rooms_with(
            user,
            &[MembershipState::Join, MembershipState::Invite, MembershipState::Knock],
        )? {
            if let Err(error) =
                self.send_membership(&room_id, user, user, MembershipState::Leave, None).await
            {
                tracing::warn!(%user, room = %room_id, %error, "could not leave a room");
            }
        }
        Ok(())
    }

    /// Sends an updated join event with the current display name and avatar to every room
    /// `user` is joined to, as the spec asks after a profile change.
    pub async fn propagate_profile(self: &Arc<Self>, user: &UserId) -> Result<()> {
        let profile = self.member_content(user, MembershipState::Join, None)?;
        let wanted = |field: &str| {
            match field {
                "displayname" => profile.displayname.clone(),
                _ => profile.avatar_url.as_ref().map(ToString::to_string),
            }
            .map(CanonicalJsonValue::String)
        };
        let mut tasks = Vec::new();
        for room_id in self.rooms_with(user, &[MembershipState::Join])? {
            let current = super::current_state_event(
                self.storage(),
                &room_id,
                "m.room.member",
                user.as_str(),
            )?;
            let Some(current) = current else { continue };
            let Ok(CanonicalJsonValue::Object(mut content)) =
                CanonicalJsonValue::try_from(current.content_value())
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
            let rooms = Arc::clone(self);
            let user = user.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut template =
                    Template::state(TimelineEventType::RoomMember, user.as_str(), &user, content);
                // The join was read above, outside the room's actor: it may have ended since.
                template.only_while_joined = true;
                if let Err(error) = rooms.send(&room_id, template, None).await {
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
}
