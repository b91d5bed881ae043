//! One sliding sync request, checked: ruma's `v5` request plus the few filters ruma has no
//! field for (read from the same body), turned into bounded values the computation can
//! trust. Every refusal happens here, before anything is written.
//!
//! This is the one file that knows the wire format: when clients move to the MSC's newer
//! draft (body `pos`, `range`, `required_state` as an object), it is read here too.

use std::{collections::BTreeMap, ops::RangeInclusive, time::Duration};

use ruma::{
    OwnedRoomId, UserId,
    api::client::sync::sync_events::v5::{self, request as wire},
    directory::RoomTypeFilter,
    presence::PresenceState,
};
use serde::Deserialize;

use super::required_state::RequiredState;
use crate::{Error, Result};

/// At most this many lists in one request.
pub const MAX_LISTS: usize = 100;
/// A list's name is at most this long, in bytes (and never empty).
pub const MAX_LIST_NAME: usize = 64;
/// At most this many ranges in one list.
pub const MAX_RANGES: usize = 100;
/// At most this many room subscriptions in one request.
pub const MAX_SUBSCRIPTIONS: usize = 500;
/// At most this many `required_state` entries in one list or subscription.
pub const MAX_REQUIRED_STATE: usize = 100;
/// An event type or state key in `required_state` is at most this long, in bytes.
pub const MAX_STATE_PART: usize = 255;
/// A `conn_id` is at most this long, in bytes.
pub const MAX_CONN_ID: usize = 64;
/// Timelines are capped at this many events, as `/sync`'s are.
pub const MAX_TIMELINE_LIMIT: u64 = 100;
/// The to-device extension sends at most this many messages per response (and this many when
/// the client does not say).
pub const MAX_TO_DEVICE_LIMIT: usize = 100;
/// At most this many spaces, tags or room ids in one filter or extension scope.
pub const MAX_FILTER_ENTRIES: usize = 100;

/// A checked sliding sync request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The client's connection; `""` when it did not name one.
    pub conn_id: String,
    /// The position the client continues from; `None` starts the connection anew.
    pub pos: Option<String>,
    /// Echoed in the response.
    pub txn_id: Option<String>,
    /// How long to wait for news; `None` (or zero) answers at once.
    pub timeout: Option<Duration>,
    pub set_presence: PresenceState,
    pub lists: BTreeMap<String, List>,
    /// Rooms asked for by id, whether or not they are in a list's window.
    pub subscriptions: BTreeMap<OwnedRoomId, RoomConfig>,
    pub extensions: Extensions,
}

/// One list: which rooms (the filters), which part of their order (the ranges), and what of
/// each room to send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct List {
    /// Inclusive, sorted, merged where they overlap or touch.
    pub ranges: Vec<RangeInclusive<u64>>,
    pub config: RoomConfig,
    pub filters: Filters,
}

/// What to send of a room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoomConfig {
    /// At most [`MAX_TIMELINE_LIMIT`]; 0 sends no timeline.
    pub timeline_limit: u64,
    pub required_state: RequiredState,
}

impl RoomConfig {
    /// The config of a room shown by several lists or subscriptions: the longest timeline and
    /// every state any of them asks for.
    pub fn combine(&self, other: &Self) -> Self {
        Self {
            timeline_limit: self.timeline_limit.max(other.timeline_limit),
            required_state: self.required_state.combine(&other.required_state),
        }
    }
}

/// Which rooms a list holds; every filter given must hold (absent: no filter).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// Create types to keep (`None` in the list: rooms without a type); empty keeps all.
    pub room_types: Vec<Option<String>>,
    /// Create types to drop; wins over `room_types`.
    pub not_room_types: Vec<Option<String>>,
    /// Only direct children of these spaces (those the user joined).
    pub spaces: Vec<OwnedRoomId>,
    /// Only rooms with one of these tags; empty keeps all.
    pub tags: Vec<String>,
    /// No room with one of these tags; wins over `tags`.
    pub not_tags: Vec<String>,
}

/// The extensions a request enabled (`enabled: true`); a `None` one is off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extensions {
    pub to_device: Option<ToDevice>,
    pub e2ee: bool,
    pub account_data: Option<Scope>,
    pub receipts: Option<Scope>,
    pub typing: Option<Scope>,
}

/// The to-device extension's page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToDevice {
    /// The stream position the client has everything up to; `None` on its first request.
    pub since: Option<u64>,
    /// At most [`MAX_TO_DEVICE_LIMIT`].
    pub limit: usize,
}

/// The rooms a per-room extension covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    /// The lists whose windows it covers; `None`: all of them.
    pub lists: Option<Vec<String>>,
    /// The subscribed rooms it covers; `None`: all of them.
    pub rooms: Option<RoomScope>,
}

/// The subscriptions an extension covers, when the client named them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomScope {
    /// `"*"`: every subscribed room.
    pub all_subscribed: bool,
    /// These rooms, when subscribed.
    pub rooms: Vec<OwnedRoomId>,
}

/// The filters ruma's `ListFilters` has no field for, read from the raw body.
#[derive(Deserialize, Default)]
struct BodyExtras {
    #[serde(default)]
    lists: BTreeMap<String, ListExtras>,
}

#[derive(Deserialize, Default)]
struct ListExtras {
    #[serde(default)]
    filters: Option<FilterExtras>,
}

#[derive(Deserialize, Default)]
struct FilterExtras {
    #[serde(default)]
    spaces: Vec<OwnedRoomId>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    not_tags: Vec<String>,
    /// The MSC's newer name for `is_invite`.
    #[serde(default)]
    is_invited: Option<bool>,
}

/// Checks `request` (parsed by ruma from `body`) for `user`.
pub fn parse(request: v5::Request, body: &[u8], user: &UserId) -> Result<Request> {
    let conn_id = request.conn_id.unwrap_or_default();
    if conn_id.len() > MAX_CONN_ID {
        return Err(Error::invalid_param(format!("`conn_id` is longer than {MAX_CONN_ID} bytes.")));
    }
    if !matches!(
        request.set_presence,
        PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable
    ) {
        return Err(Error::invalid_param(
            "`set_presence` must be one of \"online\", \"offline\", \"unavailable\".",
        ));
    }
    if request.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!("A request has at most {MAX_LISTS} lists.")));
    }
    if request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!(
            "A request has at most {MAX_SUBSCRIPTIONS} room subscriptions."
        )));
    }
    let extras = if request.lists.is_empty() {
        BodyExtras::default()
    } else {
        serde_json::from_slice::<BodyExtras>(body)
            .map_err(|error| Error::bad_json(format!("Invalid list filters: {error}")))?
    };

    let mut lists = BTreeMap::new();
    for (name, list) in request.lists {
        if name.is_empty() || name.len() > MAX_LIST_NAME {
            return Err(Error::invalid_param(format!(
                "A list name is 1 to {MAX_LIST_NAME} bytes long."
            )));
        }
        let extra = extras
            .lists
            .get(&name)
            .and_then(|list| list.filters.as_ref())
            .map_or_else(|| Ok(None), |filters| check_filter_extras(filters).map(Some))?;
        let list = List {
            ranges: ranges(&list.ranges)?,
            config: room_config(
                &list.room_details.required_state,
                list.room_details.timeline_limit,
                user,
            )?,
            filters: filters(list.filters, extra),
        };
        lists.insert(name, list);
    }

    let mut subscriptions = BTreeMap::new();
    for (room, subscription) in request.room_subscriptions {
        let config = room_config(&subscription.required_state, subscription.timeline_limit, user)?;
        subscriptions.insert(room, config);
    }

    Ok(Request {
        conn_id,
        pos: request.pos,
        txn_id: request.txn_id,
        // Zero and absent both mean "answer at once"; only a real wait is kept.
        timeout: request.timeout.filter(|timeout| !timeout.is_zero()),
        set_presence: request.set_presence,
        lists,
        subscriptions,
        extensions: extensions(request.extensions)?,
    })
}

/// The ranges, checked, sorted and merged.
fn ranges(sent: &[(ruma::UInt, ruma::UInt)]) -> Result<Vec<RangeInclusive<u64>>> {
    if sent.len() > MAX_RANGES {
        return Err(Error::invalid_param(format!("A list has at most {MAX_RANGES} ranges.")));
    }
    let mut ranges = Vec::with_capacity(sent.len());
    for (start, end) in sent {
        let (start, end) = (u64::from(*start), u64::from(*end));
        if start > end {
            return Err(Error::invalid_param(format!(
                "The range [{start}, {end}] ends before it starts."
            )));
        }
        ranges.push(start..=end);
    }
    ranges.sort_by_key(|range| *range.start());
    let mut merged: Vec<RangeInclusive<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if *range.start() <= last.end().saturating_add(1) => {
                *last = *last.start()..=(*last.end()).max(*range.end());
            }
            _ => merged.push(range),
        }
    }
    Ok(merged)
}

fn room_config(
    required_state: &[(ruma::events::StateEventType, String)],
    timeline_limit: ruma::UInt,
    user: &UserId,
) -> Result<RoomConfig> {
    if required_state.len() > MAX_REQUIRED_STATE {
        return Err(Error::invalid_param(format!(
            "`required_state` has at most {MAX_REQUIRED_STATE} entries."
        )));
    }
    for (event_type, state_key) in required_state {
        if event_type.to_string().len() > MAX_STATE_PART || state_key.len() > MAX_STATE_PART {
            return Err(Error::invalid_param(format!(
                "An event type or state key in `required_state` is at most {MAX_STATE_PART} bytes."
            )));
        }
    }
    Ok(RoomConfig {
        timeline_limit: u64::from(timeline_limit).min(MAX_TIMELINE_LIMIT),
        required_state: RequiredState::new(
            required_state.iter().map(|(event_type, state_key)| (event_type, state_key.as_str())),
            user,
        ),
    })
}

fn check_filter_extras(extras: &FilterExtras) -> Result<&FilterExtras> {
    if extras.spaces.len() > MAX_FILTER_ENTRIES
        || extras.tags.len() > MAX_FILTER_ENTRIES
        || extras.not_tags.len() > MAX_FILTER_ENTRIES
    {
        return Err(Error::invalid_param(format!(
            "A filter names at most {MAX_FILTER_ENTRIES} spaces or tags."
        )));
    }
    Ok(extras)
}

fn filters(sent: Option<wire::ListFilters>, extra: Option<&FilterExtras>) -> Filters {
    let room_type = |filter: RoomTypeFilter| match filter {
        RoomTypeFilter::Default => None,
        other => Some(other.as_str().unwrap_or_default().to_owned()),
    };
    let sent = sent.unwrap_or_default();
    Filters {
        is_dm: sent.is_dm,
        is_encrypted: sent.is_encrypted,
        is_invite: sent.is_invite.or_else(|| extra.and_then(|extra| extra.is_invited)),
        room_types: sent.room_types.into_iter().map(room_type).collect(),
        not_room_types: sent.not_room_types.into_iter().map(room_type).collect(),
        spaces: extra.map(|extra| extra.spaces.clone()).unwrap_or_default(),
        tags: extra.map(|extra| extra.tags.clone()).unwrap_or_default(),
        not_tags: extra.map(|extra| extra.not_tags.clone()).unwrap_or_default(),
    }
}

fn extensions(sent: wire::Extensions) -> Result<Extensions> {
    let to_device = match sent.to_device.enabled {
        Some(true) => {
            let since = sent
                .to_device
                .since
                .as_deref()
                .map(|since| {
                    since.parse::<u64>().map_err(|_| {
                        Error::invalid_param("The to-device `since` is not one this server gave.")
                    })
                })
                .transpose()?;
            let limit = sent
                .to_device
                .limit
                .map_or(MAX_TO_DEVICE_LIMIT, |limit| {
                    usize::try_from(u64::from(limit)).unwrap_or(usize::MAX)
                })
                .min(MAX_TO_DEVICE_LIMIT);
            Some(ToDevice { since, limit })
        }
        _ => None,
    };
    Ok(Extensions {
        to_device,
        e2ee: sent.e2ee.enabled == Some(true),
        account_data: scope(
            sent.account_data.enabled,
            sent.account_data.lists,
            sent.account_data.rooms,
        )?,
        receipts: scope(sent.receipts.enabled, sent.receipts.lists, sent.receipts.rooms)?,
        typing: scope(sent.typing.enabled, sent.typing.lists, sent.typing.rooms)?,
    })
}

fn scope(
    enabled: Option<bool>,
    lists: Option<Vec<String>>,
    rooms: Option<Vec<wire::ExtensionRoomConfig>>,
) -> Result<Option<Scope>> {
    if enabled != Some(true) {
        return Ok(None);
    }
    if lists.as_ref().is_some_and(|lists| lists.len() > MAX_LISTS)
        || rooms.as_ref().is_some_and(|rooms| rooms.len() > MAX_SUBSCRIPTIONS)
    {
        return Err(Error::invalid_param("An extension names too many lists or rooms."));
    }
    let rooms = rooms.map(|rooms| {
        let mut scope = RoomScope::default();
        for room in rooms {
            match room {
                wire::ExtensionRoomConfig::AllSubscribed => scope.all_subscribed = true,
                wire::ExtensionRoomConfig::Room(room) => scope.rooms.push(room),
                // A kind added by a newer ruma: nothing this server knows to cover.
                _ => {}
            }
        }
        scope
    });
    Ok(Some(Scope { lists, rooms }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ruma::{api::IncomingRequestExt, user_id};
    use serde_json::{Value, json};

    use super::*;

    /// Parses `body` (and the query) as the handler does: ruma first, then [`parse`].
    fn parse_request(query: &str, body: &Value) -> Result<Request> {
        let bytes = serde_json::to_vec(body).expect("as the test set it up");
        let http = axum::http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://localhost/_matrix/client/unstable/org.matrix.simplified_msc3575/sync{query}"
            ))
            .body(bytes.as_slice())
            .expect("as the test set it up");
        let wire = v5::Request::try_from_http_request(http, &[] as &[&str])
            .map_err(|error| Error::bad_json(error.to_string()))?;
        parse(wire, &bytes, user_id!("@me:example.org"))
    }

    fn errcode(result: Result<Request>) -> String {
        match result {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error.errcode(),
        }
    }

    fn list(fields: Value) -> Value {
        let mut list = json!({ "ranges": [[0, 9]], "timeline_limit": 1 });
        list.as_object_mut()
            .expect("as the test set it up")
            .extend(fields.as_object().expect("as the test set it up").clone());
        list
    }

    #[test]
    fn the_bounds_refuse_what_is_too_big_before_anything_happens() {
        let many_lists: serde_json::Map<String, Value> =
            (0..=MAX_LISTS).map(|index| (format!("l{index}"), list(json!({})))).collect();
        let many_ranges: Vec<Value> = (0..=MAX_RANGES as u64).map(|i| json!([i, i])).collect();
        let many_subscriptions: serde_json::Map<String, Value> = (0..=MAX_SUBSCRIPTIONS)
            .map(|index| (format!("!r{index}:example.org"), json!({ "timeline_limit": 1 })))
            .collect();
        let many_state: Vec<Value> =
            (0..=MAX_REQUIRED_STATE).map(|index| json!(["m.custom", index.to_string()])).collect();
        let long = "x".repeat(MAX_STATE_PART + 1);
        let table: Vec<(&str, &str, Value, &str)> = vec![
            ("a plain request", "", json!({}), "accepted"),
            ("too many lists", "", json!({ "lists": many_lists }), "M_INVALID_PARAM"),
            (
                "an empty list name",
                "",
                json!({ "lists": { "": list(json!({})) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a list name of 65 bytes",
                "",
                json!({ "lists": { "n".repeat(MAX_LIST_NAME + 1): list(json!({})) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a list name of 64 bytes",
                "",
                json!({ "lists": { "n".repeat(MAX_LIST_NAME): list(json!({})) } }),
                "accepted",
            ),
            (
                "too many ranges",
                "",
                json!({ "lists": { "a": list(json!({ "ranges": many_ranges })) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a range that ends before it starts",
                "",
                json!({ "lists": { "a": list(json!({ "ranges": [[5, 4]] })) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a negative range",
                "",
                json!({ "lists": { "a": list(json!({ "ranges": [[-1, 4]] })) } }),
                "M_BAD_JSON",
            ),
            (
                "too many subscriptions",
                "",
                json!({ "room_subscriptions": many_subscriptions }),
                "M_INVALID_PARAM",
            ),
            (
                "a bad room id in room_subscriptions",
                "",
                json!({ "room_subscriptions": { "not a room": { "timeline_limit": 1 } } }),
                "M_BAD_JSON",
            ),
            (
                "too many required_state entries",
                "",
                json!({ "lists": { "a": list(json!({ "required_state": many_state })) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a state key of 256 bytes",
                "",
                json!({ "room_subscriptions": { "!r:example.org": {
                    "timeline_limit": 1, "required_state": [["m.custom", long]] } } }),
                "M_INVALID_PARAM",
            ),
            (
                "an event type of 256 bytes",
                "",
                json!({ "lists": { "a": list(json!({ "required_state": [[long, ""]] })) } }),
                "M_INVALID_PARAM",
            ),
            (
                "a conn_id of 65 bytes",
                "",
                json!({ "conn_id": "c".repeat(MAX_CONN_ID + 1) }),
                "M_INVALID_PARAM",
            ),
            ("an unknown set_presence", "?set_presence=busy", json!({}), "M_INVALID_PARAM"),
            (
                "a to-device since this server never gave",
                "",
                json!({ "extensions": { "to_device": { "enabled": true, "since": "s72_1" } } }),
                "M_INVALID_PARAM",
            ),
            (
                "a wrongly typed timeline_limit",
                "",
                json!({ "lists": { "a": list(json!({ "timeline_limit": "ten" })) } }),
                "M_BAD_JSON",
            ),
            (
                "a space filter that is not a room id",
                "",
                json!({ "lists": { "a": list(json!({ "filters": { "spaces": ["nope"] } })) } }),
                "M_BAD_JSON",
            ),
            (
                "too many tags in a filter",
                "",
                json!({ "lists": { "a": list(json!({ "filters": {
                    "tags": vec!["t"; MAX_FILTER_ENTRIES + 1] } })) } }),
                "M_INVALID_PARAM",
            ),
        ];
        for (what, query, body, expected) in table {
            assert_eq!(errcode(parse_request(query, &body)), expected, "{what}");
        }
    }

    #[test]
    fn limits_are_clamped_and_ranges_merged() {
        let request = parse_request(
            "?pos=12.3&timeout=0",
            &json!({
                "conn_id": "room-list",
                "txn_id": "t1",
                "lists": { "all": {
                    "ranges": [[20, 25], [0, 5], [3, 9], [10, 12]],
                    "timeline_limit": 1000,
                    "required_state": [["m.room.member", "$ME"], ["m.room.member", "$LAZY"]],
                    "filters": { "is_dm": true, "room_types": [null, "m.space"],
                        "spaces": ["!s:example.org"], "tags": ["m.favourite"],
                        "not_tags": ["m.lowpriority"], "is_invited": false },
                } },
                "extensions": { "to_device": { "enabled": true, "limit": 5000, "since": "42" } },
            }),
        )
        .expect("as the test set it up");
        assert_eq!(request.conn_id, "room-list");
        assert_eq!(request.pos.as_deref(), Some("12.3"));
        assert_eq!(request.timeout, None, "a zero timeout answers at once");
        assert_eq!(request.txn_id.as_deref(), Some("t1"));
        let list = &request.lists["all"];
        assert_eq!(list.ranges, vec![0..=12, 20..=25]);
        assert_eq!(list.config.timeline_limit, MAX_TIMELINE_LIMIT);
        assert!(list.config.required_state.lazy_members());
        assert!(list.config.required_state.matches("m.room.member", "@me:example.org"));
        assert_eq!(
            list.filters,
            Filters {
                is_dm: Some(true),
                is_invite: Some(false),
                room_types: vec![None, Some("m.space".to_owned())],
                spaces: vec!["!s:example.org".try_into().expect("as the test set it up")],
                tags: vec!["m.favourite".to_owned()],
                not_tags: vec!["m.lowpriority".to_owned()],
                ..Filters::default()
            }
        );
        assert_eq!(
            request.extensions.to_device,
            Some(ToDevice { since: Some(42), limit: MAX_TO_DEVICE_LIMIT })
        );
        let waiting =
            parse_request("?pos=1.1&timeout=30000", &json!({})).expect("as the test set it up");
        assert_eq!(waiting.timeout, Some(Duration::from_secs(30)));
        assert_eq!(waiting.conn_id, "");
    }

    #[test]
    fn extensions_are_on_only_when_enabled_and_keep_their_scope() {
        let request = parse_request(
            "",
            &json!({ "extensions": {
                "to_device": { "since": "5" },
                "e2ee": { "enabled": true },
                "account_data": { "enabled": true, "lists": [], "rooms": ["*", "!r:example.org"] },
                "receipts": { "enabled": false },
                "typing": { "enabled": true },
                "org.example.unknown": { "enabled": true },
            } }),
        )
        .expect("as the test set it up");
        let extensions = request.extensions;
        assert_eq!(extensions.to_device, None, "not enabled");
        assert!(extensions.e2ee);
        assert_eq!(
            extensions.account_data,
            Some(Scope {
                lists: Some(Vec::new()),
                rooms: Some(RoomScope {
                    all_subscribed: true,
                    rooms: vec!["!r:example.org".try_into().expect("as the test set it up")],
                }),
            })
        );
        assert_eq!(extensions.receipts, None);
        assert_eq!(extensions.typing, Some(Scope::default()), "absent scopes cover everything");
    }

    /// JSON shaped like sliding sync requests, with every kind of wrong value in every place.
    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..120).prop_map(Value::from),
            prop::sample::select(vec![
                "",
                "*",
                "$LAZY",
                "$ME",
                "!r:example.org",
                "m.room.member",
                "m.space",
                "1.2",
                "42",
                "x",
            ])
            .prop_map(Value::from),
        ];
        let keys = prop::sample::select(vec![
            "lists",
            "ranges",
            "required_state",
            "timeline_limit",
            "filters",
            "spaces",
            "tags",
            "not_tags",
            "is_dm",
            "room_types",
            "room_subscriptions",
            "!r:example.org",
            "extensions",
            "to_device",
            "enabled",
            "since",
            "limit",
            "lists",
            "rooms",
            "conn_id",
            "txn_id",
            "a",
        ]);
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|map| {
                    Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn no_body_panics_the_parser(body in arbitrary_json()) {
            // Ok or a client error; never a panic and never an internal error.
            if let Err(error) = parse_request("", &body) {
                prop_assert!(!error.is_internal(), "{error}");
            }
        }
    }
}
