//! Building this server's own events, in every room version: prev events from the forward
//! extremities, auth events chosen by the room version's rules ([`auth_events_for`]), depth,
//! content hash, signature and the event id: `$<random>:<server>` in room versions 1 and 2
//! (which also name the events they reference by id and reference hash), the reference hash
//! from version 3 on.
//!
//! [`from_template`] completes the membership event another server's `make_join`,
//! `make_leave` or `make_knock` proposes: that server chose its place in the DAG, this one
//! dates, hashes and signs it.

use axum::http::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedUserId, RoomId, UserId,
    api::error::ErrorKind,
    events::{
        MessageLikeEventContent, StateEventContent, StateEventType, TimelineEventType,
        room::member::MembershipState,
    },
    room_version_rules::{
        AuthorizationRules, EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules,
    },
};

use super::pdu::Pdu;
use crate::{Error, Result, federation::SigningKey, limits, storage::Storage};

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
pub fn canonical(content: &impl serde::Serialize) -> Result<CanonicalJsonObject> {
    match ruma::canonical_json::to_canonical_value(content) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::internal("an event content is not a JSON object")),
        Err(error) => {
            Err(Error::internal(format!("an event content is not canonical JSON: {error}")))
        }
    }
}

/// The reference hash of an event a new event names, for room versions 1 and 2 (which
/// reference events as `[id, {"sha256": hash}]`).
pub type ReferenceHash<'a> = &'a dyn Fn(&EventId) -> Result<String>;

/// Where the event goes in the room's DAG.
pub struct Position<'a> {
    /// `None` only for a version-12 create event, whose room id is derived from it.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: &'a [OwnedEventId],
    pub auth_events: Vec<OwnedEventId>,
    /// One more than the deepest prev event; clamped to the largest depth an event can carry.
    pub depth: u64,
    /// How to get the reference hashes room versions 1 and 2 put next to each referenced
    /// id; `None` for callers that only build in later versions, or reference nothing.
    pub reference_hash: Option<ReferenceHash<'a>>,
}

/// `ids` as `prev_events`/`auth_events` in the room version's format.
pub(crate) fn references(
    ids: &[OwnedEventId],
    rules: &RoomVersionRules,
    reference_hash: Option<ReferenceHash<'_>>,
) -> Result<CanonicalJsonValue> {
    let items = ids.iter().map(|id| {
        let id_value = CanonicalJsonValue::String(id.to_string());
        match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                let hash_of = reference_hash.ok_or_else(|| {
                    Error::internal(format!("no reference hash for {id} in a version 1 or 2 room"))
                })?;
                let mut hashes = CanonicalJsonObject::new();
                hashes.insert("sha256".to_owned(), CanonicalJsonValue::String(hash_of(id)?));
                Ok(CanonicalJsonValue::Array(vec![id_value, CanonicalJsonValue::Object(hashes)]))
            }
            _ => Ok(id_value),
        }
    });
    Ok(CanonicalJsonValue::Array(items.collect::<Result<_>>()?))
}

/// A depth as an event carries it: canonical JSON integers stop at 2^53 - 1, and another
/// server's event may already sit there, so a deeper event stays at the bound.
pub(crate) fn clamped_depth(depth: u64) -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::try_from(depth).unwrap_or(ruma::Int::MAX))
}

/// The auth events of an event `template` describes, chosen from the room's current state
/// by the spec's auth events selection for the room version. `current` looks up the
/// current state event of a `(type, state key)`.
pub fn auth_events_for(
    template: &Template,
    rules: &AuthorizationRules,
    current: impl Fn(&StateEventType, &str) -> Result<Option<OwnedEventId>>,
) -> Result<Vec<OwnedEventId>> {
    let content = serde_json::value::to_raw_value(&template.content)?;
    let auth_types = ruma::state_res::auth_types_for_event(
        &template.kind,
        &template.sender,
        template.state_key.as_deref(),
        &content,
        rules,
    )
    .map_err(|error| Error::bad_json(format!("Invalid event content: {error}")))?;
    let mut auth_events = Vec::with_capacity(auth_types.len());
    for (kind, state_key) in auth_types {
        if let Some(event_id) = current(&kind, &state_key)?
            && !auth_events.contains(&event_id)
        {
            auth_events.push(event_id);
        }
    }
    Ok(auth_events)
}

/// The reference hash of a stored event, for [`Position::reference_hash`].
pub fn stored_reference_hash(
    storage: &Storage,
    rules: &RoomVersionRules,
    event_id: &EventId,
) -> Result<String> {
    let (_, pdu) = super::pdu_by_id(storage, event_id)?
        .ok_or_else(|| Error::internal(format!("referenced event {event_id} is not stored")))?;
    pdu.reference_hash(rules)
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
    object.insert(
        "auth_events".to_owned(),
        references(&position.auth_events, rules, position.reference_hash)?,
    );
    object.insert(
        "prev_events".to_owned(),
        references(position.prev_events, rules, position.reference_hash)?,
    );
    object.insert("content".to_owned(), CanonicalJsonValue::Object(template.content));
    object.insert("depth".to_owned(), clamped_depth(position.depth));
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
    sign_and_identify(object, rules, key, server_name)
}

/// Hashes and signs a complete event and gives it its id: a fresh `$<random>:<server>` in
/// room versions 1 and 2 (signed with the event), the reference hash from version 3 on.
/// (A version-12 create event's hash is also the room id: [`Pdu`] derives it.)
fn sign_and_identify(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    key: &SigningKey,
    server_name: &ruma::ServerName,
) -> Result<Pdu> {
    let explicit_id = matches!(rules.event_id_format, EventIdFormatVersion::V1);
    if explicit_id {
        object.insert(
            "event_id".to_owned(),
            CanonicalJsonValue::String(EventId::new_v1(server_name).to_string()),
        );
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
    if !explicit_id {
        let hash = ruma::signatures::reference_hash(&object, rules)
            .map_err(|error| signing_error("hashing", error))?;
        let event_id = EventId::new_v2_or_v3(&hash)
            .map_err(|error| Error::internal(format!("event id: {error}")))?;
        object.insert("event_id".to_owned(), CanonicalJsonValue::String(event_id.to_string()));
    }
    Pdu::from_json(object)
}

/// What a membership template from another server must be: the event this server asked for.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub room_id: &'a RoomId,
    /// The local user joining, leaving or knocking (sender and state key).
    pub user: &'a UserId,
    pub membership: MembershipState,
}

/// The fields of a template this server keeps: the resident decides the event's place in
/// the DAG and its content; everything else (its `origin`, dates, hashes, signatures,
/// unknown fields) is this server's to fill in, or to leave out.
const TEMPLATE_FIELDS: [&str; 8] =
    ["type", "room_id", "sender", "state_key", "content", "prev_events", "auth_events", "depth"];

/// Completes a membership event template another server proposed (`make_join`,
/// `make_leave`, `make_knock`) into an event of this server: checks it is the membership
/// `expected` (the spec's "MUST verify" list: type, room id, sender, state key,
/// membership), adds `content` (profile fields, a reason) over the template's, dates it
/// `now`, sets `origin`, hashes and signs it, and gives it its id for the room version. A
/// template that is not what was asked for, or not a valid event of its version, is the
/// other server's fault: `502`.
pub fn from_template(
    template: CanonicalJsonObject,
    expected: Expected<'_>,
    content: CanonicalJsonObject,
    rules: &RoomVersionRules,
    key: &SigningKey,
    server_name: &ruma::ServerName,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<Pdu> {
    let mut object: CanonicalJsonObject = template
        .into_iter()
        .filter(|(field, _)| TEMPLATE_FIELDS.contains(&field.as_str()))
        .collect();
    let text = |object: &CanonicalJsonObject, field: &str| match object.get(field) {
        Some(CanonicalJsonValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    let want = |field: &str, value: &str, found: Option<String>| match found {
        Some(found) if found == value => Ok(()),
        found => Err(bad_template(format!(
            "`{field}` is {}, not {value}",
            found.map_or_else(|| "missing".to_owned(), |found| format!("`{found}`"))
        ))),
    };
    want("type", "m.room.member", text(&object, "type"))?;
    want("room_id", expected.room_id.as_str(), text(&object, "room_id"))?;
    want("sender", expected.user.as_str(), text(&object, "sender"))?;
    want("state_key", expected.user.as_str(), text(&object, "state_key"))?;
    let Some(CanonicalJsonValue::Object(merged)) = object.get_mut("content") else {
        return Err(bad_template("`content` is not an object"));
    };
    merged.extend(content);
    let membership = text(merged, "membership");
    want("content.membership", expected.membership.as_str(), membership)?;
    object.insert("origin".to_owned(), CanonicalJsonValue::String(server_name.to_string()));
    object.insert("origin_server_ts".to_owned(), CanonicalJsonValue::Integer(now.get().into()));
    // The references and the depth are the resident's: the version's format and the spec's
    // limits are checked on the event as it will be sent.
    for field in ["prev_events", "auth_events"] {
        check_references(&object, field, rules)?;
    }
    let pdu = sign_and_identify(object, rules, key, server_name)?;
    let mut sent = pdu.canonical_json()?;
    if !matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        sent.remove("event_id");
    }
    ruma::state_res::check_pdu_format(&sent, &rules.event_format).map_err(bad_template)?;
    Ok(pdu)
}

/// Whether `field` references events in the room version's format (which the format check
/// leaves to the auth rules).
fn check_references(
    object: &CanonicalJsonObject,
    field: &str,
    rules: &RoomVersionRules,
) -> Result<()> {
    let Some(CanonicalJsonValue::Array(items)) = object.get(field) else {
        return Err(bad_template(format!("`{field}` is not an array")));
    };
    let valid = |id: &CanonicalJsonValue| matches!(id, CanonicalJsonValue::String(id) if EventId::parse(id.as_str()).is_ok());
    let all_valid = items.iter().all(|item| match rules.events_reference_format {
        EventsReferenceFormatVersion::V1 => matches!(
            item,
            CanonicalJsonValue::Array(pair)
                if pair.len() == 2 && valid(&pair[0])
                    && matches!(&pair[1], CanonicalJsonValue::Object(hashes)
                        if matches!(hashes.get("sha256"), Some(CanonicalJsonValue::String(_))))
        ),
        _ => valid(item),
    });
    if all_valid {
        Ok(())
    } else {
        Err(bad_template(format!(
            "`{field}` does not reference events in the room version's format"
        )))
    }
}

fn bad_template(why: impl std::fmt::Display) -> Error {
    Error::matrix(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("The other server's membership event template is invalid: {why}."),
    )
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

    /// Rooms of every event format built with this module, checked with the verifier other
    /// servers' events go through and with the auth rules.
    mod versions {
        use std::{
            collections::{BTreeMap, HashMap},
            sync::Arc,
        };

        use ruma::{
            OwnedRoomId, OwnedServerName, RoomVersionId, ServerName, serde::Base64,
            signatures::Ed25519KeyPair,
        };

        use super::*;
        use crate::{
            federation::{
                events::{EventKeys, Refusal, VerifiedPdu, verify_batch},
                keys::KeyError,
            },
            rooms::state_res::ResEvent,
        };

        const VERSIONS: [RoomVersionId; 7] = [
            RoomVersionId::V1,
            RoomVersionId::V2,
            RoomVersionId::V3,
            RoomVersionId::V6,
            RoomVersionId::V10,
            RoomVersionId::V11,
            RoomVersionId::V12,
        ];

        fn signing_key(server: &str) -> SigningKey {
            let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".to_owned())
                .expect("fresh key");
            SigningKey::new(server.try_into().expect("server name"), pair).expect("key")
        }

        /// The public keys of the servers that signed.
        struct Keys(BTreeMap<OwnedServerName, BTreeMap<String, Base64>>);

        impl Keys {
            fn of(keys: &[(&str, &SigningKey)]) -> Self {
                Self(
                    keys.iter()
                        .map(|(server, key)| {
                            let public = BTreeMap::from([(
                                key.key_id().to_string(),
                                Base64::new(key.pair().public_key().to_vec()),
                            )]);
                            ((*server).try_into().expect("server name"), public)
                        })
                        .collect(),
                )
            }
        }

        impl EventKeys for Keys {
            async fn event_keys(
                &self,
                server: &ServerName,
                _at_ms: u64,
                _enforce_validity: bool,
                _key_ids: &[String],
            ) -> Result<BTreeMap<String, Base64>, KeyError> {
                self.0.get(server).cloned().ok_or_else(|| KeyError(format!("no keys of {server}")))
            }
        }

        async fn verify(
            keys: &Keys,
            version: &RoomVersionId,
            pdus: &[Arc<Pdu>],
        ) -> Vec<Result<VerifiedPdu, Refusal>> {
            let raw = pdus
                .iter()
                .map(|pdu| {
                    serde_json::value::to_raw_value(&pdu.federation_json(version).expect("json"))
                        .expect("raw")
                })
                .collect();
            verify_batch(keys, version, raw).await
        }

        fn object(value: serde_json::Value) -> CanonicalJsonObject {
            match CanonicalJsonValue::try_from(value) {
                Ok(CanonicalJsonValue::Object(object)) => object,
                _ => panic!("an object"),
            }
        }

        /// A room of one server, grown one event at a time on a single head.
        struct Room {
            version: RoomVersionId,
            rules: RoomVersionRules,
            key: SigningKey,
            server: OwnedServerName,
            room_id: Option<OwnedRoomId>,
            events: HashMap<OwnedEventId, Arc<Pdu>>,
            order: Vec<Arc<Pdu>>,
            state: HashMap<(StateEventType, String), OwnedEventId>,
            head: Vec<OwnedEventId>,
            depth: u64,
        }

        impl Room {
            fn create(version: RoomVersionId, creator: &OwnedUserId) -> Self {
                let rules = version.rules().expect("known version");
                let server = creator.server_name().to_owned();
                let mut room = Self {
                    room_id: (!rules.authorization.room_create_event_id_as_room_id)
                        .then(|| RoomId::new_v1(&server)),
                    key: signing_key(server.as_str()),
                    server,
                    version: version.clone(),
                    rules,
                    events: HashMap::new(),
                    order: Vec::new(),
                    state: HashMap::new(),
                    head: Vec::new(),
                    depth: 0,
                };
                let mut content = object(json!({ "room_version": version.as_str() }));
                if !room.rules.authorization.use_room_create_sender {
                    content.insert(
                        "creator".to_owned(),
                        CanonicalJsonValue::String(creator.to_string()),
                    );
                }
                room.send(Template::state(TimelineEventType::RoomCreate, "", creator, content));
                room.send(Template::state(
                    TimelineEventType::RoomMember,
                    creator.as_str(),
                    creator,
                    object(json!({ "membership": "join" })),
                ));
                let users = if room.rules.authorization.explicitly_privilege_room_creators {
                    json!({})
                } else {
                    json!({ creator.as_str(): 100 })
                };
                room.send(Template::state(
                    TimelineEventType::RoomPowerLevels,
                    "",
                    creator,
                    object(json!({ "users": users, "state_default": 50 })),
                ));
                room.send(Template::state(
                    TimelineEventType::RoomJoinRules,
                    "",
                    creator,
                    object(json!({ "join_rule": "public" })),
                ));
                room
            }

            fn current(&self, kind: &StateEventType, state_key: &str) -> Option<OwnedEventId> {
                self.state.get(&(kind.clone(), state_key.to_owned())).cloned()
            }

            fn auth_events(&self, template: &Template) -> Vec<OwnedEventId> {
                auth_events_for(template, &self.rules.authorization, |kind, key| {
                    Ok(self.current(kind, key))
                })
                .expect("auth events")
            }

            /// The spec's auth rules, over the room's current state.
            fn authorize(&self, pdu: &Arc<Pdu>) -> Result<(), String> {
                let event = ResEvent { pdu: Arc::clone(pdu), rejected: false };
                let fetch = |id: &EventId| {
                    self.events.get(id).map(|pdu| ResEvent::in_state(Arc::clone(pdu)))
                };
                ruma::state_res::check_state_independent_auth_rules(
                    &self.rules.authorization,
                    &event,
                    fetch,
                )?;
                ruma::state_res::check_state_dependent_auth_rules(
                    &self.rules.authorization,
                    &event,
                    |kind, key| self.current(kind, key).and_then(|id| fetch(&id)),
                )
            }

            fn build(&self, template: Template) -> Result<Pdu> {
                let auth_events = self.auth_events(&template);
                let hash = |id: &EventId| -> Result<String> {
                    self.events
                        .get(id)
                        .ok_or_else(|| Error::internal("unknown event"))?
                        .reference_hash(&self.rules)
                };
                let position = Position {
                    room_id: self.room_id.as_deref(),
                    prev_events: &self.head,
                    auth_events,
                    depth: self.depth + 1,
                    reference_hash: Some(&hash),
                };
                build(
                    template,
                    position,
                    &self.rules,
                    &self.key,
                    &self.server,
                    MilliSecondsSinceUnixEpoch::now(),
                )
            }

            fn send(&mut self, template: Template) -> Arc<Pdu> {
                let pdu = Arc::new(self.build(template).expect("builds"));
                self.accept(&pdu);
                pdu
            }

            /// Adds an event after checking it with the auth rules.
            fn accept(&mut self, pdu: &Arc<Pdu>) {
                self.authorize(pdu).unwrap_or_else(|error| {
                    panic!("{}: {} refused: {error}", self.version, pdu.kind)
                });
                self.room_id = Some(pdu.room_id.clone());
                if let Some(key) = &pdu.state_key {
                    self.state
                        .insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
                }
                self.head = vec![pdu.event_id.clone()];
                self.depth = self.depth.max(pdu.depth);
                self.events.insert(pdu.event_id.clone(), Arc::clone(pdu));
                self.order.push(Arc::clone(pdu));
            }

            /// What a resident's `make_join`/`make_leave` answers: the membership event on the
            /// current head, unsigned, dated and sent from the resident.
            fn template(&self, user: &UserId, membership: &str) -> CanonicalJsonObject {
                let member = Template::state(
                    TimelineEventType::RoomMember,
                    user.as_str(),
                    &user.to_owned(),
                    object(json!({ "membership": membership })),
                );
                let hash = |id: &EventId| self.events[id].reference_hash(&self.rules);
                let refs = |ids: &[OwnedEventId]| {
                    references(ids, &self.rules, Some(&hash)).expect("references")
                };
                let mut template = object(json!({
                    "type": "m.room.member",
                    "room_id": self.room_id.as_ref().expect("created"),
                    "sender": user,
                    "state_key": user,
                    "content": { "membership": membership },
                    "depth": self.depth + 1,
                    "origin": self.server,
                    "origin_server_ts": 1,
                }));
                template.insert("prev_events".to_owned(), refs(&self.head));
                template.insert("auth_events".to_owned(), refs(&self.auth_events(&member)));
                template
            }
        }

        fn alice(server: &str) -> OwnedUserId {
            format!("@alice:{server}").try_into().expect("user id")
        }

        #[tokio::test]
        async fn events_built_in_every_version_pass_the_verifier_and_the_auth_rules() {
            for version in VERSIONS {
                let creator = alice("a.example");
                let mut room = Room::create(version.clone(), &creator);
                room.send(Template::message(
                    TimelineEventType::RoomMessage,
                    &creator,
                    object(json!({ "msgtype": "m.text", "body": "hello" })),
                ));
                let target = room.order.last().expect("message").event_id.clone();
                let mut redaction = Template::message(
                    TimelineEventType::RoomRedaction,
                    &creator,
                    if room.rules.redaction.content_field_redacts {
                        object(json!({ "redacts": target }))
                    } else {
                        object(json!({}))
                    },
                );
                redaction.redacts = Some(target.clone());
                let redaction = room.send(redaction);
                assert_eq!(redaction.redacts.as_ref(), Some(&target), "{version}");

                let keys = Keys::of(&[("a.example", &room.key)]);
                let results = verify(&keys, &version, &room.order).await;
                let explicit_ids = matches!(room.rules.event_id_format, EventIdFormatVersion::V1);
                for (pdu, result) in room.order.iter().zip(results) {
                    let verified = result.unwrap_or_else(|refusal| {
                        panic!("{version}: {} refused: {refusal}", pdu.kind)
                    });
                    assert!(!verified.redacted, "{version}");
                    assert_eq!(verified.pdu.event_id, pdu.event_id, "{version}: the same id");
                    assert_eq!(verified.pdu.room_id, pdu.room_id, "{version}");
                    assert_eq!(
                        pdu.event_id.server_name().is_some(),
                        explicit_ids,
                        "{version}: {}",
                        pdu.event_id
                    );
                    if !explicit_ids {
                        let hash = pdu.reference_hash(&room.rules).expect("hash");
                        assert_eq!(pdu.event_id.as_str(), format!("${hash}"), "{version}");
                    }
                    // References name the events (and in versions 1 and 2 their hashes).
                    let json = pdu.federation_json(&version).expect("json");
                    let CanonicalJsonValue::Array(prevs) = &json["prev_events"] else {
                        panic!("prev_events is an array");
                    };
                    for (prev, id) in prevs.iter().zip(&pdu.prev_events) {
                        let expected = if explicit_ids {
                            json!([id, { "sha256": room.events[id].reference_hash(&room.rules).expect("hash") }])
                        } else {
                            json!(id)
                        };
                        assert_eq!(serde_json::to_value(prev).expect("json"), expected);
                    }
                    assert_eq!(json.contains_key("event_id"), explicit_ids, "{version}");
                }
                if version == RoomVersionId::V12 {
                    let create = &room.order[0];
                    assert!(create.implicit_room_id);
                    assert_eq!(create.room_id.as_str()[1..], create.event_id.as_str()[1..]);
                }
            }
        }

        #[test]
        fn versions_1_and_2_need_the_reference_hashes_of_what_they_name() {
            let creator = alice("a.example");
            let room = Room::create(RoomVersionId::V1, &creator);
            let template = Template::message(
                TimelineEventType::RoomMessage,
                &creator,
                object(json!({ "body": "x" })),
            );
            let position = Position {
                room_id: room.room_id.as_deref(),
                prev_events: &room.head,
                auth_events: Vec::new(),
                depth: 9,
                reference_hash: None,
            };
            let error = build(
                template,
                position,
                &room.rules,
                &room.key,
                &room.server,
                MilliSecondsSinceUnixEpoch::now(),
            )
            .expect_err("no hashes");
            assert!(error.is_internal(), "{error}");
        }

        #[test]
        fn the_depth_stops_at_the_largest_an_event_can_carry() {
            let creator = alice("a.example");
            let mut room = Room::create(RoomVersionId::V11, &creator);
            for depth in
                [u64::MAX - 1, 1 << 53, u64::try_from(i64::from(ruma::Int::MAX)).expect("positive")]
            {
                room.depth = depth;
                let pdu = room
                    .build(Template::message(
                        TimelineEventType::RoomMessage,
                        &creator,
                        object(json!({ "body": "deep" })),
                    ))
                    .expect("a depth past the bound still builds");
                assert_eq!(pdu.depth, u64::try_from(i64::from(ruma::Int::MAX)).expect("positive"));
                let json = pdu.federation_json(&room.version).expect("json");
                ruma::state_res::check_pdu_format(&json, &room.rules.event_format)
                    .expect("a valid event");
            }
        }

        fn joiner() -> OwnedUserId {
            "@j:joiner.example".try_into().expect("user id")
        }

        fn expected<'a>(
            room_id: &'a RoomId,
            user: &'a UserId,
            membership: MembershipState,
        ) -> Expected<'a> {
            Expected { room_id, user, membership }
        }

        #[tokio::test]
        async fn a_join_template_completes_to_a_join_the_room_accepts_in_every_version() {
            let key = signing_key("joiner.example");
            let user = joiner();
            for version in VERSIONS {
                let mut room = Room::create(version.clone(), &alice("a.example"));
                let room_id = room.room_id.clone().expect("created");
                let mut template = room.template(&user, "join");
                template.insert("unknown_field".to_owned(), CanonicalJsonValue::Bool(true));
                template.insert(
                    "signatures".to_owned(),
                    CanonicalJsonValue::Object(object(
                        json!({"a.example": {"ed25519:x": "bogus"}}),
                    )),
                );
                let before = MilliSecondsSinceUnixEpoch::now();
                let join = from_template(
                    template.clone(),
                    expected(&room_id, &user, MembershipState::Join),
                    object(json!({ "displayname": "J" })),
                    &room.rules,
                    &key,
                    joiner_server(),
                    before,
                )
                .unwrap_or_else(|error| panic!("{version}: {error}"));
                assert_eq!(join.origin_server_ts, before, "{version}: dated here");
                assert_eq!(join.content_str("membership").as_deref(), Some("join"));
                assert_eq!(join.content_str("displayname").as_deref(), Some("J"));
                let json = join.federation_json(&version).expect("json");
                assert_eq!(json["origin"], CanonicalJsonValue::String("joiner.example".into()));
                assert!(!json.contains_key("unknown_field"), "{version}");
                assert_eq!(json["prev_events"], template["prev_events"], "{version}");
                assert_eq!(json["auth_events"], template["auth_events"], "{version}");
                assert_eq!(json["depth"], template["depth"], "{version}");
                let CanonicalJsonValue::Object(signatures) = &json["signatures"] else {
                    panic!("signed");
                };
                assert_eq!(signatures.keys().collect::<Vec<_>>(), ["joiner.example"], "{version}");
                if matches!(room.rules.event_id_format, EventIdFormatVersion::V1) {
                    assert_eq!(
                        join.event_id.server_name().map(ServerName::as_str),
                        Some("joiner.example"),
                        "{version}"
                    );
                }

                let keys = Keys::of(&[("a.example", &room.key), ("joiner.example", &key)]);
                let join = Arc::new(join);
                let verified = verify(&keys, &version, &[Arc::clone(&join)]).await;
                let verified =
                    verified[0].as_ref().unwrap_or_else(|refusal| panic!("{version}: {refusal}"));
                assert_eq!(verified.pdu.event_id, join.event_id, "{version}");
                room.accept(&join);

                // The joined user's message goes on the join.
                let message = room.build(Template::message(
                    TimelineEventType::RoomMessage,
                    &user,
                    object(json!({ "body": "hi" })),
                ));
                room.authorize(&Arc::new(message.expect("builds"))).expect("a member may speak");

                // And leaving the same way.
                let leave = from_template(
                    room.template(&user, "leave"),
                    expected(&room_id, &user, MembershipState::Leave),
                    CanonicalJsonObject::new(),
                    &room.rules,
                    &key,
                    joiner_server(),
                    MilliSecondsSinceUnixEpoch::now(),
                )
                .expect("completes");
                room.accept(&Arc::new(leave));
            }
        }

        fn joiner_server() -> &'static ServerName {
            ruma::server_name!("joiner.example")
        }

        #[test]
        fn a_template_that_is_not_what_was_asked_for_is_the_other_servers_fault() {
            let key = signing_key("joiner.example");
            let user = joiner();
            let room = Room::create(RoomVersionId::V11, &alice("a.example"));
            let room_id = room.room_id.clone().expect("created");
            let other_room = RoomId::new_v1(ruma::server_name!("a.example"));
            let complete = |template: CanonicalJsonObject, expected: Expected<'_>| {
                from_template(
                    template,
                    expected,
                    CanonicalJsonObject::new(),
                    &room.rules,
                    &key,
                    joiner_server(),
                    MilliSecondsSinceUnixEpoch::now(),
                )
            };
            let good = room.template(&user, "join");
            complete(good.clone(), expected(&room_id, &user, MembershipState::Join)).expect("good");

            let changed = |field: &str, value: serde_json::Value| {
                let mut template = good.clone();
                template
                    .insert(field.to_owned(), CanonicalJsonValue::try_from(value).expect("json"));
                template
            };
            let other_user: OwnedUserId = "@other:joiner.example".try_into().expect("user id");
            let cases = [
                (changed("type", json!("m.room.message")), "type"),
                (changed("room_id", json!(other_room)), "room_id"),
                (changed("sender", json!(other_user)), "sender"),
                (changed("state_key", json!(other_user)), "state_key"),
                (changed("content", json!({ "membership": "invite" })), "membership"),
                (changed("content", json!("join")), "content"),
                (changed("prev_events", json!(["not an id"])), "prev_events"),
                (changed("prev_events", json!([["$a:x", { "sha256": "x" }]])), "prev_events"),
                (changed("auth_events", json!("$a")), "auth_events"),
                (changed("depth", json!(-1)), "depth"),
                (
                    changed(
                        "prev_events",
                        json!((0..21).map(|n| format!("$p{n}")).collect::<Vec<_>>()),
                    ),
                    "prev_events",
                ),
            ];
            for (template, what) in cases {
                let error = complete(template, expected(&room_id, &user, MembershipState::Join))
                    .expect_err(what);
                assert_eq!(error.status(), StatusCode::BAD_GATEWAY, "{what}: {error}");
            }
            let mut missing = good.clone();
            missing.remove("state_key");
            let error = complete(missing, expected(&room_id, &user, MembershipState::Join))
                .expect_err("no state key");
            assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
            // A join template is not a leave.
            let error = complete(good, expected(&room_id, &user, MembershipState::Leave))
                .expect_err("not a leave");
            assert!(error.to_string().contains("membership"), "{error}");

            // Versions 1 and 2 name events with their hashes.
            let old = Room::create(RoomVersionId::V2, &alice("a.example"));
            let old_id = old.room_id.clone().expect("created");
            let mut plain_refs = old.template(&user, "join");
            plain_refs.insert(
                "prev_events".to_owned(),
                CanonicalJsonValue::try_from(json!(old.head)).expect("json"),
            );
            let error = from_template(
                plain_refs,
                expected(&old_id, &user, MembershipState::Join),
                CanonicalJsonObject::new(),
                &old.rules,
                &key,
                joiner_server(),
                MilliSecondsSinceUnixEpoch::now(),
            )
            .expect_err("v3 references in a v2 room");
            assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        }
    }
}
