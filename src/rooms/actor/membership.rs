//! Membership work in the room actor: restricted joins, forgetting a room, the stripped
//! state of invites and knocks, and who is joined.

use ruma::events::room::member::MembershipState;
use ruma::{
    CanonicalJsonValue, RoomId, UserId,
    events::{TimelineEventType, room::power_levels::PowerLevelAction},
    room::JoinRule,
};
use serde_json::Value as JsonValue;

use super::{Loaded, RoomActor};
use crate::{
    Error, Result,
    rooms::{self, builder::Template, content},
    storage::{Batch, codec::Json, rooms::USER_ROOMS_TABLE},
};

impl RoomActor {
    /// Marks a left room as forgotten for `user`.
    pub(super) async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let key = (user.to_string(), room_id.to_string());
        let Some(Json(mut record)) = USER_ROOMS_TABLE.get(self.storage.engine(), &key)? else {
            return Err(Error::not_found("You have never been in this room."));
        };
        if matches!(
            record.membership,
            MembershipState::Join | MembershipState::Invite | MembershipState::Knock
        ) {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Leave the room before forgetting it.",
            ));
        }
        record.forgotten = true;
        let mut batch = Batch::new();
        USER_ROOMS_TABLE.put(&mut batch, &key, &Json(record));
        let _writing = self.storage.coherent().memberships.begin(vec![user.to_owned()]);
        self.storage.writer().commit(batch).await
    }

    /// Fills in what a membership event needs from the room: the authorising user of a
    /// restricted join.
    pub(super) fn complete_membership(
        &self,
        room: &Loaded,
        mut template: Template,
    ) -> Result<Template> {
        if template.kind != TimelineEventType::RoomMember {
            return Ok(template);
        }
        let membership = template
            .content
            .get("membership")
            .and_then(CanonicalJsonValue::as_str)
            .map(MembershipState::from);
        if membership != Some(MembershipState::Join)
            || template.content.contains_key("join_authorised_via_users_server")
        {
            return Ok(template);
        }
        let user = &template.sender;
        let current = self
            .current(room, "m.room.member", user.as_str())?
            .and_then(|member| content::membership(&member));
        if template.only_while_joined && current != Some(MembershipState::Join) {
            return Err(Error::forbidden("The sender is no longer joined to this room."));
        }
        if matches!(current, Some(MembershipState::Join | MembershipState::Invite)) {
            return Ok(template);
        }
        let rule = content::join_rule(self.current(room, "m.room.join_rules", "")?.as_deref());
        if !matches!(rule, JoinRule::Restricted(_) | JoinRule::KnockRestricted(_)) {
            return Ok(template);
        }
        let mut allowed = false;
        for room_id in &content::allowed_rooms(&rule) {
            if rooms::is_joined(self.storage.engine(), room_id, user)? {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Err(Error::forbidden(
                "You need to be a member of one of the rooms this room's join rules allow, or be invited.",
            ));
        }
        let powers = self.powers(room)?;
        let invite_level = powers.for_action(PowerLevelAction::Invite);
        let local_members = room
            .keys
            .iter()
            .filter(|((kind, _), _)| kind == "m.room.member")
            .filter_map(|((_, member), key)| {
                Some((UserId::parse(member.as_str()).ok()?, room.state.get(key)?))
            })
            .filter(|(member, _)| member.server_name() == self.server_name);
        let mut authoriser = None;
        for (member, short) in local_members {
            let joined = rooms::pdu(self.storage.engine(), *short)?
                .is_some_and(|pdu| content::membership(&pdu) == Some(MembershipState::Join));
            if joined && powers.for_user(&member) >= invite_level {
                authoriser = Some(member);
                break;
            }
        }
        let authoriser = authoriser
            .ok_or_else(|| Error::forbidden("No member of this server can authorise your join."))?;
        template.content.insert(
            "join_authorised_via_users_server".to_owned(),
            CanonicalJsonValue::String(authoriser.to_string()),
        );
        Ok(template)
    }

    /// The stripped state shown with invites and knocks.
    pub(super) fn stripped_state(&self, room: &Loaded) -> Result<Vec<JsonValue>> {
        let mut stripped = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(pdu) = self.current(room, kind, "")? {
                stripped.push(pdu.stripped_json());
            }
        }
        Ok(stripped)
    }

    /// Whether `user` is joined to the room now.
    pub(super) fn is_member(&self, room: &Loaded, user: &UserId) -> Result<bool> {
        Ok(self
            .current(room, "m.room.member", user.as_str())?
            .is_some_and(|member| content::membership(&member) == Some(MembershipState::Join)))
    }
}
