//! Limits on what clients (and, with federation, other servers) may send, checked at the
//! edge before anything is stored, and the JSON checks that enforce the structural ones.
//!
//! Why a depth limit of our own: serde_json refuses to parse JSON nested 128 levels deep, and
//! every record the server stores wraps what a client sent inside a few levels of its own (a
//! to-device message inside its record, an event's content inside the event). Accepting
//! anything the parser accepts would store records that the server's own readers then
//! refuse. A request body may nest at most [`MAX_JSON_DEPTH`] levels, which leaves ample
//! room for our wrappers, for ruma's push rule evaluation, which re-parses whole events, and
//! for clients that parse a /sync response with serde_json too (matrix-rust-sdk), where an
//! edit's content sits a dozen levels deep.
//!
//! The string bounds follow the spec where it gives one (identifiers, event types and state
//! keys: 255 bytes; an event: 65 535 bytes of canonical JSON) and Synapse where it does not
//! (display names, avatar URLs, device names), so clients that work against Synapse keep
//! working here. `docs/deployment.md` lists them.
//!
//! The checks are functions of bytes and values, not of the client API, so every front door
//! applies the same rules: [`check_body`] on a request body, [`check_pdu`] on an event another
//! server sends. Below them are the bounds on what one account may keep, which the actors
//! owning that data enforce.

use std::{collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as JsonValue;

use crate::Error;

/// The deepest nesting of arrays and objects a request body may have (the body's own object
/// is level 1). serde_json's parser stops at 128.
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting serde_json parses (it refuses 128 levels). ruma re-parses events
/// with it in places that panic instead of failing, so the server checks this bound first.
pub const PARSER_MAX_DEPTH: usize = 127;

/// The largest event, as canonical JSON in the federation format with its signatures. The
/// spec says 65 536; ruma's hashing and format checks refuse anything over 65 535, so that
/// is the limit every server using ruma enforces.
pub const MAX_PDU_BYTES: usize = 65_535;

/// Event types, state keys, room aliases, user, room and event IDs, and other identifiers:
/// the spec's 255 bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Opaque identifiers chosen by clients (device IDs, transaction IDs): the spec's opaque
/// identifier grammar allows 255 characters.
pub const MAX_OPAQUE_ID_BYTES: usize = 255;

/// A user's display name, in characters (Synapse's limit).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;

/// A user's avatar URL, in characters (Synapse's limit).
pub const MAX_AVATAR_URL_CHARS: usize = 1000;

/// A device's display name, in characters (Synapse's limit). Others see it in key lists.
pub const MAX_DEVICE_NAME_CHARS: usize = 100;

/// A presence status message, in characters. The spec and Synapse set none; everyone who
/// shares a room sees it, so it gets a bound in the same spirit as the display name.
pub const MAX_STATUS_MSG_CHARS: usize = 1000;

/// A room tag name, in bytes (the spec's identifier bound; Synapse's limit).
pub const MAX_TAG_BYTES: usize = 255;

/// The reason given with a report, in characters; server admins read it.
pub const MAX_REASON_CHARS: usize = 2000;

/// A push rule's pattern, in characters. ruma turns a pattern with wildcards into a regular
/// expression whose size grows with each `?`; a pattern far longer than any message body it
/// could sensibly match would only cost the room actor time on every event.
pub const MAX_PUSH_PATTERN_CHARS: usize = 1000;

/// A pusher's `pushkey`, in bytes (the spec's limit).
pub const MAX_PUSHKEY_BYTES: usize = 512;

/// A pusher's `app_id`, in characters (the spec's limit).
pub const MAX_APP_ID_CHARS: usize = 64;

// ---------------------------------------------------------------------------------------------
// How much one account may keep. Neither the spec nor Synapse bounds these; each bound is far
// above what a heavy user of Element or a bot reaches, and keeps what one account can make the
// server store, send in every /sync, or evaluate for every event, in proportion. Beyond a count
// the answer is `400 M_USER_LIMIT_EXCEEDED` (the spec's code, since v1.18, for "a maximum
// number of devices or other account-scoped resources"); a single value too large is
// `413 M_TOO_LARGE` like a request body (`400` when it is a field of the body).

/// Push rules a user may define besides the server's defaults. The room actor evaluates every
/// member's rules for every event; muting a room in Element adds one rule.
pub const MAX_PUSH_RULES: usize = 2000;

/// Conditions of one push rule (the spec's default rules have at most three).
pub const MAX_PUSH_RULE_CONDITIONS: usize = 20;

/// Patterns with wildcards (`*`, `?`) in a user's push rules, and their characters together.
/// ruma compiles each such pattern into a regular expression for every event it checks (about
/// 5 ms for a 1000-character one), so they get a budget of their own; keywords without
/// wildcards (Element's) are cheap and not counted.
pub const MAX_PUSH_WILDCARD_PATTERNS: usize = 100;
pub const MAX_PUSH_WILDCARD_CHARS: usize = 2000;

/// One account data value, as JSON. `m.direct` or `m.ignored_user_list` of a heavy user are a
/// few hundred kilobytes.
pub const MAX_ACCOUNT_DATA_BYTES: usize = 1 << 20;

/// All of a user's account data (global and every room's, keys included): an initial /sync
/// sends it all.
pub const MAX_ACCOUNT_DATA_TOTAL_BYTES: u64 = 16 << 20;

/// Global account data types of one user, and room account data types per room.
pub const MAX_GLOBAL_ACCOUNT_DATA_KEYS: usize = 1000;
pub const MAX_ROOM_ACCOUNT_DATA_KEYS: usize = 100;

/// Tags on one room.
pub const MAX_TAGS_PER_ROOM: usize = 100;

/// Filters one user may store (ids come from the content, so re-uploading one costs nothing),
/// and the size of one as JSON.
pub const MAX_FILTERS: usize = 1000;
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Devices of one user (every login without a device id adds one).
pub const MAX_DEVICES: usize = 1000;

/// Unclaimed one-time keys of one device (clients keep about 50 on the server; Synapse
/// refuses uploads past 500 too).
pub const MAX_ONE_TIME_KEYS: usize = 500;

/// Fallback key algorithms of one device (clients use one).
pub const MAX_FALLBACK_KEYS: usize = 16;

/// One one-time or fallback key as JSON (a signed curve25519 key is about 200 bytes).
pub const MAX_ONE_TIME_KEY_BYTES: usize = 4096;

/// A device's identity keys, or one cross-signing key, as JSON (about 700 bytes); everyone
/// who shares a room with the user downloads them.
pub const MAX_DEVICE_KEYS_BYTES: usize = 16 * 1024;

/// Pushers of one user (one per device that gets push notifications), and one pusher's
/// definition as JSON (its `data` goes with every push).
pub const MAX_PUSHERS: usize = 100;
pub const MAX_PUSHER_BYTES: usize = 16 * 1024;

/// Local aliases of one room.
pub const MAX_ROOM_ALIASES: usize = 100;

/// Key backup versions of one user that are not deleted, one version's `algorithm` and
/// `auth_data` as JSON, the sessions in one version, and one session's key data as JSON
/// (typically under 1 KiB).
pub const MAX_BACKUP_VERSIONS: usize = 100;
pub const MAX_BACKUP_VERSION_BYTES: usize = 64 * 1024;
pub const MAX_BACKUP_SESSIONS: u64 = 1_000_000;
pub const MAX_BACKUP_SESSION_BYTES: usize = 16 * 1024;

/// To-device messages one request may queue once `*` is expanded to every device.
pub const MAX_TO_DEVICE_DELIVERIES: usize = 20_000;

/// PDUs in one federation transaction (the spec's bound); more is `400 M_BAD_JSON`.
pub const MAX_TRANSACTION_PDUS: usize = 50;

/// EDUs in one federation transaction (the spec's bound); more is `400 M_BAD_JSON`.
pub const MAX_TRANSACTION_EDUS: usize = 100;

/// Messages (recipient devices) one `m.direct_to_device` EDU may deliver: a wildcard to every
/// device of many users counts each device. An EDU over it is dropped whole, since half of
/// an encrypted key exchange is worse than none.
pub const MAX_EDU_TO_DEVICE_MESSAGES: usize = 10_000;

/// Entries (presence updates, users' receipts) read from one presence or receipt EDU; the
/// rest are ignored.
pub const MAX_EDU_ENTRIES: usize = 1000;

/// What is wrong with a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonProblem {
    /// Not JSON at all (or not one JSON value): `M_NOT_JSON`.
    NotJson(String),
    /// JSON the server refuses to take: nested too deep or with a repeated key. `M_BAD_JSON`.
    Refused(String),
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson(message) | Self::Refused(message) => f.write_str(message),
        }
    }
}

/// Checks that `bytes` are one JSON value nested at most [`MAX_JSON_DEPTH`] levels, with no
/// object repeating a key (serde would keep the last one, other parsers the first: a signed
/// or hashed event must mean the same thing to everyone).
pub fn check_json(bytes: &[u8]) -> Result<(), JsonProblem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let checked =
        Checked { depth: 0 }.deserialize(&mut deserializer).and_then(|()| deserializer.end());
    checked.map_err(|error| match error.classify() {
        serde_json::error::Category::Data => JsonProblem::Refused(error.to_string()),
        _ => JsonProblem::NotJson(format!("Request body is not valid JSON: {error}")),
    })
}

/// The checks every front door (the client API, the federation API, an appservice's) makes
/// on a request body before anything parses it, as the spec's errors: over `max_bytes` is
/// `413 M_TOO_LARGE`, then [`check_json`]: not one JSON value is `400 M_NOT_JSON`, nested
/// deeper than [`MAX_JSON_DEPTH`] or with a repeated key `400 M_BAD_JSON`. The client API runs
/// it on every body (`http::ruma`, with `max_request_size`); a federation handler runs it on
/// the bytes of a transaction or a request, with the bound it chooses.
pub fn check_body(bytes: &[u8], max_bytes: usize) -> Result<(), Error> {
    if bytes.len() > max_bytes {
        return Err(Error::too_large(format!(
            "Request body is larger than the server's limit of {max_bytes} bytes."
        )));
    }
    check_json(bytes).map_err(|problem| match problem {
        JsonProblem::NotJson(message) => Error::not_json(message),
        JsonProblem::Refused(message) => {
            Error::bad_json(format!("Request body refused: {message}"))
        }
    })
}

/// The spec's size limits of one event as received from another server (one PDU of a
/// transaction, a backfilled or fetched event), before anything stores it or hands it to
/// ruma: the whole event [`MAX_PDU_BYTES`] as compact JSON (its canonical form has the same
/// length), `type` and `state_key` [`MAX_ID_BYTES`], `sender`, `room_id` and `event_id` the
/// identifiers' 255 bytes. A string field of the wrong type is left to the event's parser.
/// Run [`check_body`] (or [`check_json`]) on the bytes first: `event` is assumed to be
/// within the depth limit.
pub fn check_pdu(event: &JsonValue) -> Result<(), Error> {
    let size = serde_json::to_vec(event).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_PDU_BYTES {
        return Err(Error::too_large(format!(
            "The event is {size} bytes; events are limited to {MAX_PDU_BYTES} bytes."
        )));
    }
    for field in ["type", "state_key", "sender", "room_id", "event_id"] {
        if event
            .get(field)
            .and_then(JsonValue::as_str)
            .is_some_and(|text| text.len() > MAX_ID_BYTES)
        {
            return Err(Error::too_large(format!(
                "An event's {field} is limited to {MAX_ID_BYTES} bytes."
            )));
        }
    }
    Ok(())
}

/// How deeply `value` nests arrays and objects (a scalar is 0, `{}` is 1). Iterative, so it
/// is safe on values of any depth.
pub fn json_depth(value: &JsonValue) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, depth)) = pending.pop() {
        match value {
            JsonValue::Object(map) => {
                deepest = deepest.max(depth + 1);
                pending.extend(map.values().map(|child| (child, depth + 1)));
            }
            JsonValue::Array(items) => {
                deepest = deepest.max(depth + 1);
                pending.extend(items.iter().map(|child| (child, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Walks a JSON value through serde without building it, refusing depth and repeated keys.
struct Checked {
    /// Levels of arrays and objects around the value being read.
    depth: usize,
}

impl Checked {
    fn enter<E: de::Error>(&self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(E::custom(format!(
                "JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted"
            )));
        }
        Ok(Self { depth })
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while items.next_element_seed(Checked { depth: inner.depth })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let mut keys = HashSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            entries.next_value_seed(Checked { depth: inner.depth })?;
            if let Some(key) = keys.replace(key) {
                return Err(de::Error::custom(format!(
                    "the key \"{}\" appears twice in one object",
                    key.escape_debug()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "{\"a\":".repeat(depth), "1".to_owned() + &"}".repeat(depth))
    }

    #[test]
    fn depth_is_counted_from_the_outer_object() {
        assert_eq!(check_json(nested(MAX_JSON_DEPTH).as_bytes()), Ok(()));
        assert!(matches!(
            check_json(nested(MAX_JSON_DEPTH + 1).as_bytes()),
            Err(JsonProblem::Refused(_))
        ));
        let arrays =
            format!("{}{}", "[".repeat(MAX_JSON_DEPTH + 1), "]".repeat(MAX_JSON_DEPTH + 1));
        assert!(matches!(check_json(arrays.as_bytes()), Err(JsonProblem::Refused(_))));
        // Deeper than serde_json itself accepts: still our refusal, not a parser failure.
        assert!(matches!(check_json(nested(10_000).as_bytes()), Err(JsonProblem::Refused(_))));
    }

    #[test]
    fn repeated_keys_are_refused_at_any_level() {
        assert!(matches!(check_json(br#"{"a":1,"a":2}"#), Err(JsonProblem::Refused(_))));
        assert!(matches!(
            check_json(br#"{"x":[{"b":1,"c":{"d":1,"d":1}}]}"#),
            Err(JsonProblem::Refused(_))
        ));
        // The same key as an escape is the same key.
        assert!(matches!(check_json(br#"{"a":1,"\u0061":2}"#), Err(JsonProblem::Refused(_))));
        assert_eq!(check_json(br#"{"a":{"a":1},"b":{"a":2}}"#), Ok(()));
    }

    #[test]
    fn non_json_is_not_json() {
        for body in [&b"not json"[..], b"{\"a\":", b"{} {}", b"{\"a\":1}x", b"\"\\ud800\""] {
            assert!(matches!(check_json(body), Err(JsonProblem::NotJson(_))), "{body:?}");
        }
    }

    #[test]
    fn a_body_is_checked_for_size_first_and_answered_with_the_spec_errors() {
        assert!(check_body(b"{}", 2).is_ok());
        let refused = |bytes: &[u8], max: usize| check_body(bytes, max).expect_err("refused");
        let too_large = refused(b"{ }", 2);
        assert_eq!((too_large.status().as_u16(), too_large.errcode()), (413, "M_TOO_LARGE".into()));
        assert_eq!(refused(b"{", 100).errcode(), "M_NOT_JSON");
        assert_eq!(refused(br#"{"a":1,"a":2}"#, 100).errcode(), "M_BAD_JSON");
        let deep = nested(MAX_JSON_DEPTH + 1);
        assert_eq!(refused(deep.as_bytes(), 1 << 20).errcode(), "M_BAD_JSON");
    }

    #[test]
    fn an_event_from_another_server_is_held_to_the_spec_sizes() {
        let event = |field: &str, length: usize| {
            let mut event = serde_json::json!({
                "type": "m.room.message", "sender": "@a:example.org",
                "room_id": "!r:example.org", "content": {"body": "hi"},
            });
            event[field] = JsonValue::String("x".repeat(length));
            event
        };
        assert!(check_pdu(&event("state_key", MAX_ID_BYTES)).is_ok());
        for field in ["type", "state_key", "sender", "room_id", "event_id"] {
            let refused = check_pdu(&event(field, MAX_ID_BYTES + 1)).expect_err(field);
            assert_eq!(refused.errcode(), "M_TOO_LARGE");
        }
        let mut big = event("state_key", 1);
        big["content"]["body"] = JsonValue::String("b".repeat(MAX_PDU_BYTES));
        assert_eq!(check_pdu(&big).expect_err("too large").errcode(), "M_TOO_LARGE");
    }

    #[test]
    fn depth_of_values() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({})), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values a few levels deep, with every kind of scalar.
    fn shallow_json() -> impl Strategy<Value = JsonValue> {
        let leaf = prop_oneof![
            Just(JsonValue::Null),
            any::<bool>().prop_map(JsonValue::from),
            any::<i64>().prop_map(JsonValue::from),
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

    /// `value` inside `levels` more arrays or objects.
    fn wrapped(mut value: JsonValue, levels: &[bool]) -> JsonValue {
        for in_array in levels {
            value = if *in_array {
                JsonValue::Array(vec![value])
            } else {
                serde_json::json!({ "w": value })
            };
        }
        value
    }

    /// A key written with every character as a `\u` escape: the same key to a parser.
    fn escaped(key: &str) -> String {
        let mut out = String::from("\"");
        for unit in key.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_bytes_parse(bytes in any::<Vec<u8>>()) {
            if check_json(&bytes).is_ok() {
                let value: JsonValue = serde_json::from_slice(&bytes).expect("accepted bytes parse");
                prop_assert!(json_depth(&value) <= MAX_JSON_DEPTH);
            }
        }

        #[test]
        fn json_is_accepted_exactly_up_to_the_depth_limit(
            value in shallow_json(),
            levels in prop::collection::vec(any::<bool>(), 0..100),
        ) {
            let value = wrapped(value, &levels);
            let bytes = serde_json::to_vec(&value).expect("serialize");
            let accepted = check_json(&bytes);
            if json_depth(&value) <= MAX_JSON_DEPTH {
                prop_assert_eq!(accepted, Ok(()));
            } else {
                prop_assert!(matches!(accepted, Err(JsonProblem::Refused(_))));
            }
        }

        #[test]
        fn a_repeated_key_is_refused_however_it_is_written(
            key in any::<String>(),
            first in shallow_json(),
            second in shallow_json(),
            levels in prop::collection::vec(any::<bool>(), 0..20),
        ) {
            let object = format!(
                "{{{}:{},{}:{}}}",
                serde_json::to_string(&key).expect("key"),
                first,
                escaped(&key),
                second,
            );
            // The object wrapped in arrays and objects, as text.
            let mut text = object;
            for in_array in &levels {
                text = if *in_array { format!("[{text}]") } else { format!("{{\"w\":{text}}}") };
            }
            prop_assert!(matches!(check_json(text.as_bytes()), Err(JsonProblem::Refused(_))));
        }
    }
}
