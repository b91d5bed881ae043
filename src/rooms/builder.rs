//! Building this server's own events: prev events from the forward extremities, auth events
//! chosen by the room version's rules, depth, content hash, signature and the reference-hash
//! event id.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId,
    events::{MessageLikeEventContent, StateEventContent, TimelineEventType},
    room_version_rules::RoomVersionRules,
};

use super::pdu::Pdu;
use crate::{Error, Result, federation::SigningKey, limits};

/// What a local user (or the server) wants to send.
#[derive(Debug, Clone)]
pub struct Template {
    pub kind: TimelineEventType,
    pub content: CanonicalJsonObject,
    pub state_key: Option<String>,
    pub sender: OwnedUserId,
    /// For redactions: the event to redact.
    pub redacts: Option<OwnedEventId>,
    /// Client-chosen timestamp (application services); the builder's `now` when absent.
    pub timestamp: Option<MilliSecondsSinceUnixEpoch>,
    /// A member event that restates a join (a profile change carried to the room): sent only
    /// if the sender is still joined when the room's actor builds it, so one computed before
    /// a leave or a kick cannot join the sender again.
    pub only_while_joined: bool,
}

impl Template {
    /// A state event from its typed content: the type comes from the content.
    pub fn typed<C: StateEventContent>(
        sender: &OwnedUserId,
        state_key: &str,
        content: &C,
    ) -> Result<Self> {
        Ok(Self::state(content.event_type().into(), state_key, sender, canonical(content)?))
    }

    /// A message-like event from its typed content: the type comes from the content.
    pub fn message_typed<C: MessageLikeEventContent>(
        sender: &OwnedUserId,
        content: &C,
    ) -> Result<Self> {
        Ok(Self::message(content.event_type().into(), sender, canonical(content)?))
    }

    pub fn state(
        kind: TimelineEventType,
        state_key: &str,
        sender: &OwnedUserId,
        content: CanonicalJsonObject,
    ) -> Self {
        Self {
            kind,
            content,
            state_key: Some(state_key.to_owned()),
            sender: sender.clone(),
            redacts: None,
            timestamp: None,
            only_while_joined: false,
        }
    }

    pub fn message(
        kind: TimelineEventType,
        sender: &OwnedUserId,
        content: CanonicalJsonObject,
    ) -> Self {
        Self {
            kind,
            content,
            state_key: None,
            sender: sender.clone(),
            redacts: None,
            timestamp: None,
            only_while_joined: false,
        }
    }
}

/// A typed content as the canonical JSON object an event carries.
fn canonical(content: &impl serde::Serialize) -> Result<CanonicalJsonObject> {
    match ruma::canonical_json::to_canonical_value(content) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::internal("an event content is not a JSON object")),
        Err(error) => {
            Err(Error::internal(format!("an event content is not canonical JSON: {error}")))
        }
    }
}

/// Where the event goes in the room's DAG.
pub struct Position<'a> {
    /// `None` only for a version-12 create event, whose room id is derived from it.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
}

fn ids(ids: &[OwnedEventId]) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(
        ids.iter().map(|id| CanonicalJsonValue::String(id.to_string())).collect(),
    )
}

/// Builds, hashes and signs an event; returns it with its event id (and, for a version-12
/// create event, the room id it defines). It is dated `now` (the server's clock) unless the
/// template carries its own timestamp.
pub fn build(
    template: Template,
    position: Position<'_>,
    rules: &RoomVersionRules,
    key: &SigningKey,
    server_name: &ruma::ServerName,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<Pdu> {
    check_limits(&template)?;
    let timestamp = template.timestamp.unwrap_or(now);
    let mut object = CanonicalJsonObject::new();
    object.insert("auth_events".to_owned(), ids(&position.auth_events));
    object.insert("prev_events".to_owned(), ids(position.prev_events));
    object.insert("content".to_owned(), CanonicalJsonValue::Object(template.content));
    object.insert(
        "depth".to_owned(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(position.depth).map_err(|_| Error::internal("depth overflow"))?,
        ),
    );
    object
        .insert("origin_server_ts".to_owned(), CanonicalJsonValue::Integer(timestamp.get().into()));
    object.insert("sender".to_owned(), CanonicalJsonValue::String(template.sender.to_string()));
    object.insert("type".to_owned(), CanonicalJsonValue::String(template.kind.to_string()));
    if let Some(state_key) = &template.state_key {
        object.insert("state_key".to_owned(), CanonicalJsonValue::String(state_key.clone()));
    }
    if let Some(room_id) = position.room_id {
        object.insert("room_id".to_owned(), CanonicalJsonValue::String(room_id.to_string()));
    }
    if let Some(redacts) = &template.redacts {
        // Before version 11 the target is a top-level field; from 11 it lives in the content
        // (the caller puts it there) and the top-level copy is left out.
        if !rules.redaction.content_field_redacts {
            object.insert("redacts".to_owned(), CanonicalJsonValue::String(redacts.to_string()));
        }
    }

    ruma::signatures::hash_and_sign_event(
        server_name.as_str(),
        key.pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|error| signing_error("signing", error))?;
    // The limit applies to the whole event with its hashes and signatures, as other servers
    // will receive it.
    let size = serde_json::to_vec(&object).map_or(usize::MAX, |bytes| bytes.len());
    if size > limits::MAX_PDU_BYTES {
        return Err(too_large(size));
    }
    let hash = ruma::signatures::reference_hash(&object, rules)
        .map_err(|error| signing_error("hashing", error))?;
    let event_id = EventId::new_v2_or_v3(&hash)
        .map_err(|error| Error::internal(format!("event id: {error}")))?;
    let room_id: OwnedRoomId = match position.room_id {
        Some(room_id) => room_id.to_owned(),
        None => {
            RoomId::new_v2(&hash).map_err(|error| Error::internal(format!("room id: {error}")))?
        }
    };
    object.insert("event_id".to_owned(), CanonicalJsonValue::String(event_id.to_string()));
    let pdu = Pdu::from_json(object)?;
    debug_assert_eq!(pdu.room_id, room_id);
    Ok(pdu)
}

/// The spec's limits on an event's fields, and Synapse's on a member event's profile, so
/// nothing this server sends is refused by another server or breaks a client.
fn check_limits(template: &Template) -> Result<()> {
    let kind = template.kind.to_string();
    if kind.len() > limits::MAX_ID_BYTES {
        return Err(Error::too_large(format!(
            "Event types are limited to {} bytes.",
            limits::MAX_ID_BYTES
        )));
    }
    if template.state_key.as_ref().is_some_and(|key| key.len() > limits::MAX_ID_BYTES) {
        return Err(Error::too_large(format!(
            "State keys are limited to {} bytes.",
            limits::MAX_ID_BYTES
        )));
    }
    if template.kind == TimelineEventType::RoomMember {
        let text = |field: &str| match template.content.get(field) {
            Some(CanonicalJsonValue::String(text)) => text.chars().count(),
            _ => 0,
        };
        if text("displayname") > limits::MAX_DISPLAYNAME_CHARS {
            return Err(Error::bad_json(format!(
                "Display names are limited to {} characters.",
                limits::MAX_DISPLAYNAME_CHARS
            )));
        }
        if text("avatar_url") > limits::MAX_AVATAR_URL_CHARS {
            return Err(Error::bad_json(format!(
                "Avatar URLs are limited to {} characters.",
                limits::MAX_AVATAR_URL_CHARS
            )));
        }
    }
    Ok(())
}

fn too_large(size: usize) -> Error {
    Error::too_large(format!(
        "The event would be {size} bytes; events are limited to {} bytes.",
        limits::MAX_PDU_BYTES
    ))
}

fn signing_error(step: &str, error: ruma::signatures::JsonError) -> Error {
    match error {
        ruma::signatures::JsonError::PduTooLarge => too_large(limits::MAX_PDU_BYTES + 1),
        error => Error::internal(format!("{step} an event: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        events::room::{
            canonical_alias::RoomCanonicalAliasEventContent,
            guest_access::{GuestAccess, RoomGuestAccessEventContent},
            history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
            join_rules::{JoinRule, RoomJoinRulesEventContent},
            member::{MembershipState, RoomMemberEventContent},
            message::RoomMessageEventContent,
            redaction::RoomRedactionEventContent,
            tombstone::RoomTombstoneEventContent,
        },
        owned_event_id, owned_room_alias_id, owned_room_id, owned_user_id,
    };
    use serde_json::json;

    use super::*;

    fn json(template: &Template) -> serde_json::Value {
        serde_json::to_value(&template.content).expect("serializes")
    }

    #[test]
    fn typed_state_takes_its_type_from_the_content_and_writes_what_is_set() {
        let sender = owned_user_id!("@a:x");
        let mut member = RoomMemberEventContent::new(MembershipState::Join);
        member.displayname = Some("A".to_owned());
        let template = Template::typed(&sender, sender.as_str(), &member).expect("builds");
        assert_eq!(template.kind, TimelineEventType::RoomMember);
        assert_eq!(template.state_key.as_deref(), Some("@a:x"));
        assert_eq!(json(&template), json!({ "membership": "join", "displayname": "A" }));
    }

    #[test]
    fn typed_contents_write_what_the_hand_built_ones_did() {
        let sender = owned_user_id!("@a:x");
        let cases = [
            (
                Template::typed(&sender, "", &RoomJoinRulesEventContent::new(JoinRule::Public)),
                json!({ "join_rule": "public" }),
            ),
            (
                Template::typed(
                    &sender,
                    "",
                    &RoomHistoryVisibilityEventContent::new(HistoryVisibility::Shared),
                ),
                json!({ "history_visibility": "shared" }),
            ),
            (
                Template::typed(
                    &sender,
                    "",
                    &RoomGuestAccessEventContent::new(GuestAccess::CanJoin),
                ),
                json!({ "guest_access": "can_join" }),
            ),
            (
                Template::typed(&sender, "", &{
                    let mut content = RoomCanonicalAliasEventContent::new();
                    content.alias = Some(owned_room_alias_id!("#a:x"));
                    content
                }),
                json!({ "alias": "#a:x" }),
            ),
            (
                Template::typed(
                    &sender,
                    "",
                    &RoomTombstoneEventContent::new("gone".to_owned(), owned_room_id!("!n:x")),
                ),
                json!({ "body": "gone", "replacement_room": "!n:x" }),
            ),
            (
                Template::message_typed(&sender, &RoomMessageEventContent::notice_plain("out")),
                json!({ "msgtype": "m.notice", "body": "out" }),
            ),
        ];
        for (template, expected) in cases {
            assert_eq!(json(&template.expect("builds")), expected);
        }
    }

    #[test]
    fn typed_redactions_match_the_room_version() {
        let sender = owned_user_id!("@a:x");
        let target = owned_event_id!("$t:x");
        let old = RoomRedactionEventContent::new_v1().with_reason("spam".to_owned());
        let template = Template::message_typed(&sender, &old).expect("builds");
        assert_eq!(template.kind, TimelineEventType::RoomRedaction);
        assert_eq!(template.state_key, None);
        assert_eq!(json(&template), json!({ "reason": "spam" }));
        let new = RoomRedactionEventContent::new_v11(target);
        let template = Template::message_typed(&sender, &new).expect("builds");
        assert_eq!(json(&template), json!({ "redacts": "$t:x" }));
    }
}
