//! The persistent data unit: an event as the room DAG knows it, with its signatures and
//! hashes, and its client-facing rendering.
//!
//! The stored form is the federation JSON plus `event_id` (which room versions 3+ leave
//! implicit), so one read gives everything; [`Pdu::federation_json`] strips it again. A
//! version-12 create event has no `room_id`: its id with `!` for `$` is the room id.
//!
//! State resolution and the auth rules see an event through
//! [`super::state_res::ResEvent`], which carries whether it was rejected: a `Pdu` alone is
//! not a `ruma::state_res::Event`, so no check can forget that.
//!
//! A parsed event keeps its stored form as text, not as a canonical JSON tree: the tree's
//! map nodes and strings made a cached event weigh about 4.5 KB (a 10,000-room server held
//! 45 MB of them), the text about 1.3 KB (see [`Pdu::memory_size`]); the few users of the
//! tree (redaction, federation) parse it again.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use crate::{Error, Result};

/// An event of a room.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    /// The redacted event, from `content.redacts` (v11+) or the top-level field.
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// The room id is not in the event (a version-12 create event defines it).
    pub implicit_room_id: bool,
    /// `unsigned.redacted_because` of the stored form: the redaction that stripped this
    /// event, in federation form.
    pub redacted_because: Option<Box<RawJsonValue>>,
    /// The stored form (federation JSON plus `event_id`).
    stored: Box<str>,
}

fn field<'a>(json: &'a CanonicalJsonObject, name: &str) -> Result<&'a CanonicalJsonValue> {
    json.get(name).ok_or_else(|| Error::bad_json(format!("event has no `{name}`")))
}

fn string<'a>(json: &'a CanonicalJsonObject, name: &str) -> Result<&'a str> {
    match field(json, name)? {
        CanonicalJsonValue::String(value) => Ok(value),
        _ => Err(Error::bad_json(format!("event field `{name}` is not a string"))),
    }
}

fn event_ids(json: &CanonicalJsonObject, name: &str) -> Result<Vec<OwnedEventId>> {
    let Some(value) = json.get(name) else {
        return Ok(Vec::new());
    };
    let CanonicalJsonValue::Array(items) = value else {
        return Err(Error::bad_json(format!("event field `{name}` is not an array")));
    };
    items
        .iter()
        .map(|item| {
            match item {
                // Room versions 1 and 2 reference events as [event_id, hashes].
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(id)) => EventId::parse(id.as_str()),
                    _ => EventId::parse(""),
                },
                CanonicalJsonValue::String(id) => EventId::parse(id.as_str()),
                _ => EventId::parse(""),
            }
            .map_err(|_| Error::bad_json(format!("event field `{name}` holds an invalid event id")))
        })
        .collect()
}

impl Pdu {
    /// Parses a stored or freshly built event.
    pub fn from_json(json: CanonicalJsonObject) -> Result<Self> {
        Self::from_parsed(json, None)
    }

    /// Parses the stored bytes of an event.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let json: CanonicalJsonObject = serde_json::from_slice(bytes)?;
        // The parse succeeded, so the bytes are UTF-8.
        let stored =
            std::str::from_utf8(bytes).map_err(|_| Error::bad_json("event is not UTF-8"))?;
        Self::from_parsed(json, Some(stored.into()))
    }

    /// Builds the event from its parsed form and, when the caller has it, its text.
    fn from_parsed(json: CanonicalJsonObject, stored: Option<Box<str>>) -> Result<Self> {
        let event_id = EventId::parse(string(&json, "event_id")?)
            .map_err(|_| Error::bad_json("invalid event_id"))?;
        let kind = TimelineEventType::from(string(&json, "type")?);
        let (room_id, implicit_room_id) = match json.get("room_id") {
            Some(CanonicalJsonValue::String(room_id)) => (
                RoomId::parse(room_id.as_str()).map_err(|_| Error::bad_json("invalid room_id"))?,
                false,
            ),
            // Version 12: the create event's id, with `!` for `$`, is the room id.
            None if kind == TimelineEventType::RoomCreate => (
                RoomId::new_v2(event_id.as_str().trim_start_matches('$'))
                    .map_err(|_| Error::bad_json("create event without a usable room id"))?,
                true,
            ),
            _ => return Err(Error::bad_json("event has no valid `room_id`")),
        };
        let sender = UserId::parse(string(&json, "sender")?)
            .map_err(|_| Error::bad_json("invalid sender"))?;
        let origin_server_ts = match field(&json, "origin_server_ts")? {
            CanonicalJsonValue::Integer(ts) => UInt::try_from(i64::from(*ts))
                .map(MilliSecondsSinceUnixEpoch)
                .map_err(|_| Error::bad_json("negative origin_server_ts"))?,
            _ => return Err(Error::bad_json("origin_server_ts is not an integer")),
        };
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(depth)) => {
                u64::try_from(i64::from(*depth)).unwrap_or(0)
            }
            _ => 0,
        };
        let content_value = match field(&json, "content")? {
            value @ CanonicalJsonValue::Object(_) => value,
            _ => return Err(Error::bad_json("event content is not an object")),
        };
        let content = serde_json::value::to_raw_value(content_value)?;
        let state_key = match json.get("state_key") {
            Some(CanonicalJsonValue::String(key)) => Some(key.clone()),
            Some(_) => return Err(Error::bad_json("state_key is not a string")),
            None => None,
        };
        let redacts = match (json.get("redacts"), content_value) {
            (Some(CanonicalJsonValue::String(id)), _) => EventId::parse(id.as_str()).ok(),
            (_, CanonicalJsonValue::Object(content)) => match content.get("redacts") {
                Some(CanonicalJsonValue::String(id)) => EventId::parse(id.as_str()).ok(),
                _ => None,
            },
            _ => None,
        };
        let prev_events = event_ids(&json, "prev_events")?;
        let auth_events = event_ids(&json, "auth_events")?;
        let redacted_because = match json.get("unsigned") {
            Some(CanonicalJsonValue::Object(unsigned)) => {
                unsigned.get("redacted_because").map(serde_json::value::to_raw_value).transpose()?
            }
            _ => None,
        };
        let stored = match stored {
            Some(stored) => stored,
            None => serde_json::to_string(&json)?.into_boxed_str(),
        };
        Ok(Self {
            redacts: (kind == TimelineEventType::RoomRedaction).then_some(redacts).flatten(),
            event_id,
            room_id,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key,
            prev_events,
            auth_events,
            depth,
            implicit_room_id,
            redacted_because,
            stored,
        })
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.stored.as_bytes().to_vec()
    }

    /// The stored form, as text.
    pub fn stored_text(&self) -> &str {
        &self.stored
    }

    /// The stored form as a canonical JSON tree.
    pub fn canonical_json(&self) -> Result<CanonicalJsonObject> {
        Ok(serde_json::from_str(&self.stored)?)
    }

    /// Roughly the bytes this event holds in memory once shared behind an `Arc`, for caches
    /// that bound their size: the contents of each heap allocation plus what the allocator
    /// adds to it.
    pub fn memory_size(&self) -> usize {
        // jemalloc rounds each allocation up to its size class: by up to a quarter, about 16
        // bytes for the short strings most of these are.
        const PER_ALLOCATION: usize = 16;
        let referenced = self.prev_events.iter().chain(&self.auth_events).chain(&self.redacts);
        let ids: usize = referenced.map(|id| id.as_str().len() + PER_ALLOCATION).sum();
        let lists = (self.prev_events.len() + self.auth_events.len()) * size_of::<OwnedEventId>();
        let optional = [
            self.state_key.as_ref().map(String::len),
            self.redacted_because.as_ref().map(|because| because.get().len()),
        ];
        let optional: usize = optional.iter().flatten().map(|len| len + PER_ALLOCATION).sum();
        // The Arc (with its two counts), the stored text, the content, three ids, two lists.
        let allocations = 8 * PER_ALLOCATION;
        2 * size_of::<usize>()
            + size_of::<Self>()
            + self.stored.len()
            + self.content.get().len()
            + self.event_id.as_str().len()
            + self.room_id.as_str().len()
            + self.sender.as_str().len()
            + lists
            + ids
            + optional
            + allocations
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> JsonValue {
        serde_json::from_str(self.content.get()).unwrap_or(JsonValue::Null)
    }

    /// The content as a typed value (`Err` if it does not have that shape).
    pub fn content_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_str(self.content.get())?)
    }

    /// A string field of the content.
    pub fn content_str(&self, name: &str) -> Option<String> {
        self.content_value().get(name).and_then(JsonValue::as_str).map(str::to_owned)
    }

    /// The event as other servers must see it.
    pub fn federation_json(&self, version: &RoomVersionId) -> Result<CanonicalJsonObject> {
        let mut json = self.canonical_json()?;
        let rules = version.rules();
        let explicit_event_id = rules.as_ref().is_some_and(|rules| {
            matches!(rules.event_id_format, ruma::room_version_rules::EventIdFormatVersion::V1)
        });
        if !explicit_event_id {
            json.remove("event_id");
        }
        json.remove("unsigned");
        Ok(json)
    }

    /// The reference hash other events of a room version 1 or 2 name this one by (and, from
    /// version 3 on, its id without the `$`).
    pub fn reference_hash(&self, rules: &RoomVersionRules) -> Result<String> {
        let mut json = self.canonical_json()?;
        if !matches!(rules.event_id_format, ruma::room_version_rules::EventIdFormatVersion::V1) {
            json.remove("event_id");
        }
        ruma::signatures::reference_hash(&json, rules)
            .map_err(|error| Error::internal(format!("hashing {}: {error}", self.event_id)))
    }

    /// The event as clients see it (the spec's ClientEvent), with `unsigned` filled in by the
    /// caller.
    pub fn client_json(&self, unsigned: serde_json::Map<String, JsonValue>) -> JsonValue {
        let mut event = serde_json::Map::new();
        event.insert("content".to_owned(), self.content_value());
        event.insert("event_id".to_owned(), JsonValue::String(self.event_id.to_string()));
        event.insert(
            "origin_server_ts".to_owned(),
            JsonValue::from(u64::from(self.origin_server_ts.get())),
        );
        event.insert("room_id".to_owned(), JsonValue::String(self.room_id.to_string()));
        event.insert("sender".to_owned(), JsonValue::String(self.sender.to_string()));
        event.insert("type".to_owned(), JsonValue::String(self.kind.to_string()));
        if let Some(state_key) = &self.state_key {
            event.insert("state_key".to_owned(), JsonValue::String(state_key.clone()));
        }
        if let Some(redacts) = &self.redacts {
            event.insert("redacts".to_owned(), JsonValue::String(redacts.to_string()));
        }
        let mut unsigned = unsigned;
        // The system clock: rendering has no server at hand, and `age` is only a hint to the
        // client (which compares it with its own clock).
        let age =
            MilliSecondsSinceUnixEpoch::now().get().saturating_sub(self.origin_server_ts.get());
        unsigned.insert("age".to_owned(), JsonValue::from(u64::from(age)));
        if let Some(because) = &self.redacted_because {
            // Stored in federation form; clients get the client form.
            let because: JsonValue = serde_json::from_str(because.get()).unwrap_or_default();
            let mut client = serde_json::Map::new();
            for field in
                ["content", "event_id", "origin_server_ts", "room_id", "sender", "type", "redacts"]
            {
                if let Some(value) = because.get(field) {
                    client.insert(field.to_owned(), value.clone());
                }
            }
            client.insert("unsigned".to_owned(), JsonValue::Object(serde_json::Map::new()));
            unsigned.insert("redacted_because".to_owned(), JsonValue::Object(client));
        }
        event.insert("unsigned".to_owned(), JsonValue::Object(unsigned));
        JsonValue::Object(event)
    }

    /// The stripped form used for invite and knock previews.
    pub fn stripped_json(&self) -> JsonValue {
        serde_json::json!({
            "content": self.content_value(),
            "sender": self.sender,
            "state_key": self.state_key.clone().unwrap_or_default(),
            "type": self.kind.to_string(),
        })
    }

    /// The redacted form of this event under `rules`.
    pub fn redacted(&self, rules: &RoomVersionRules, because: &Pdu) -> Result<Self> {
        let because_object = because.canonical_json()?;
        let mut json = self.canonical_json()?;
        let event_id = json.remove("event_id");
        json.remove("unsigned");
        let mut redacted = ruma::canonical_json::redact(
            json,
            &rules.redaction,
            Some(ruma::canonical_json::RedactedBecause::from_json(because_object)),
        )
        .map_err(|error| Error::internal(format!("redacting {}: {error}", self.event_id)))?;
        if let Some(event_id) = event_id {
            redacted.insert("event_id".to_owned(), event_id);
        }
        Self::from_json(redacted)
    }
}

/// Converts client-supplied JSON content into canonical JSON, refusing what canonical JSON
/// cannot carry (floats, integers beyond 2^53).
pub fn canonical_content(content: JsonValue) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(content) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::bad_json("Event content must be a JSON object.")),
        Err(error) => Err(Error::bad_json(format!(
            "Event content is not valid canonical JSON ({error}): use integers, not floats."
        ))),
    }
}

/// The state key interned for `(event type, state key)`.
pub fn state_key_bytes(kind: &str, state_key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(kind.len() + 1 + state_key.len());
    bytes.extend_from_slice(kind.as_bytes());
    bytes.push(0xFF);
    bytes.extend_from_slice(state_key.as_bytes());
    bytes
}

/// Splits bytes made by [`state_key_bytes`].
pub fn split_state_key(bytes: &[u8]) -> Option<(String, String)> {
    let separator = bytes.iter().position(|byte| *byte == 0xFF)?;
    let kind = std::str::from_utf8(&bytes[..separator]).ok()?;
    let key = std::str::from_utf8(&bytes[separator + 1..]).ok()?;
    Some((kind.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_json() -> CanonicalJsonObject {
        let json = serde_json::json!({
            "event_id": "$m:example.org",
            "room_id": "!r:example.org",
            "sender": "@a:example.org",
            "type": "m.room.message",
            "origin_server_ts": 1,
            "content": { "body": "hello", "msgtype": "m.text" },
            "prev_events": ["$p:example.org"],
            "auth_events": ["$c:example.org"],
            "hashes": { "sha256": "abc" },
            "signatures": { "example.org": { "ed25519:k": "sig" } },
            "depth": 2,
        });
        match CanonicalJsonValue::try_from(json) {
            Ok(CanonicalJsonValue::Object(object)) => object,
            _ => panic!("test event is canonical"),
        }
    }

    #[test]
    fn the_stored_form_is_canonical_and_read_back_as_stored() {
        let built = Pdu::from_json(message_json()).expect("parses");
        let canonical = serde_json::to_vec(&message_json()).expect("serializes");
        assert_eq!(built.to_bytes(), canonical);
        let read = Pdu::from_bytes(&canonical).expect("parses");
        assert_eq!(read.to_bytes(), canonical);
        assert_eq!(read.canonical_json().expect("parses"), message_json());
        assert!(read.redacted_because.is_none());
        assert!(read.memory_size() > canonical.len());
    }

    #[test]
    fn a_redacted_event_carries_and_shows_its_redaction() {
        let rules = RoomVersionId::V11.rules().expect("known version");
        let target = Pdu::from_json(message_json()).expect("parses");
        let mut redaction = message_json();
        redaction
            .insert("event_id".to_owned(), CanonicalJsonValue::String("$x:example.org".into()));
        redaction.insert("type".to_owned(), CanonicalJsonValue::String("m.room.redaction".into()));
        let because = Pdu::from_json(redaction).expect("parses");

        let redacted = target.redacted(&rules, &because).expect("redacts");
        assert_eq!(redacted.content_str("body"), None);
        let stored = redacted.canonical_json().expect("parses");
        assert_eq!(
            stored.get("event_id"),
            Some(&CanonicalJsonValue::String("$m:example.org".into()))
        );
        let reread = Pdu::from_bytes(&redacted.to_bytes()).expect("parses");
        assert!(reread.redacted_because.is_some());
        let client = reread.client_json(serde_json::Map::new());
        assert_eq!(client["unsigned"]["redacted_because"]["event_id"], "$x:example.org");
        assert_eq!(client["unsigned"]["redacted_because"]["type"], "m.room.redaction");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values with every kind of number, including ones canonical JSON refuses.
    fn any_json() -> impl Strategy<Value = JsonValue> {
        let leaf = prop_oneof![
            Just(JsonValue::Null),
            any::<bool>().prop_map(JsonValue::from),
            any::<i64>().prop_map(JsonValue::from),
            (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(JsonValue::from),
            any::<u64>().prop_map(JsonValue::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(JsonValue::from),
            any::<String>().prop_map(JsonValue::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(JsonValue::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|map| JsonValue::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Whether every number in `value` is an integer canonical JSON can hold.
    fn canonical_numbers(value: &JsonValue) -> bool {
        const MAX: i64 = (1 << 53) - 1;
        match value {
            JsonValue::Number(number) => number.as_i64().is_some_and(|n| (-MAX..=MAX).contains(&n)),
            JsonValue::Array(items) => items.iter().all(canonical_numbers),
            JsonValue::Object(map) => map.values().all(canonical_numbers),
            _ => true,
        }
    }

    proptest! {
        #[test]
        fn content_is_canonical_exactly_when_its_numbers_are(
            fields in prop::collection::btree_map(any::<String>(), any_json(), 0..6),
        ) {
            let content = JsonValue::Object(fields.into_iter().collect());
            match canonical_content(content.clone()) {
                Ok(object) => {
                    prop_assert!(canonical_numbers(&content));
                    // The canonical text means the same JSON, and is its own canonical form.
                    let text = serde_json::to_string(&object).expect("serialize");
                    let back: JsonValue = serde_json::from_str(&text).expect("parse");
                    prop_assert_eq!(&back, &content);
                    let again = canonical_content(back).expect("still canonical");
                    prop_assert_eq!(serde_json::to_string(&again).expect("serialize"), text);
                }
                Err(error) => {
                    prop_assert!(!canonical_numbers(&content));
                    prop_assert_eq!(error.errcode(), "M_BAD_JSON");
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_event_parser(bytes in any::<Vec<u8>>()) {
            let _ = Pdu::from_bytes(&bytes);
        }

        #[test]
        fn arbitrary_objects_never_panic_the_event_parser(
            fields in prop::collection::btree_map(
                prop_oneof![
                    Just("event_id".to_owned()), Just("type".to_owned()),
                    Just("room_id".to_owned()), Just("sender".to_owned()),
                    Just("content".to_owned()), Just("prev_events".to_owned()),
                    Just("auth_events".to_owned()), Just("state_key".to_owned()),
                    Just("depth".to_owned()), Just("origin_server_ts".to_owned()),
                    any::<String>(),
                ],
                any_json(),
                0..12,
            ),
        ) {
            let bytes = serde_json::to_vec(&fields).expect("serialize");
            let _ = Pdu::from_bytes(&bytes);
        }
    }
}
