//! Other servers reading our rooms' history (issue 23 S9): `event`, `state`, `state_ids`,
//! `event_auth`, `backfill`, `get_missing_events`, `timestamp_to_event`, with the room's
//! history visibility for servers, server ACLs and the spec's limits.
//!
//! Remote joins do not exist yet: the asking fake server's user is made a member with
//! `inject_member` (S10 replaces it with real joins).

use std::collections::BTreeSet;

use reqwest::Method;
use ruma::RoomVersionId;
use serde_json::{Value, json};
use tuwunel::federation::events::verify_batch;

use crate::{
    common::{User, assert_error},
    federation::send,
    rooms::{create_room, send_text},
    testbed::{Ca, FakeServer, FedServer, inject_member},
};

/// GETs a signed federation path on `server` as `origin`.
async fn get(server: &FedServer, origin: &FakeServer, path: &str) -> (u16, Value) {
    let path = format!("/_matrix/federation{path}");
    let header = origin.authorization("GET", &path, &server.name, None, None);
    send(server, Method::GET, &path, Some(header), None).await
}

/// POSTs a signed federation path on `server` as `origin`.
async fn post(server: &FedServer, origin: &FakeServer, path: &str, body: &Value) -> (u16, Value) {
    let path = format!("/_matrix/federation{path}");
    let header = origin.authorization("POST", &path, &server.name, Some(body), None);
    let bytes = serde_json::to_vec(body).expect("json");
    send(server, Method::POST, &path, Some(header), Some(bytes)).await
}

fn encode(id: &str) -> String {
    id.replace('$', "%24").replace(':', "%3A").replace('!', "%21")
}

async fn put_state(
    server: &FedServer,
    user: &User,
    room: &str,
    kind: &str,
    content: Value,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/{kind}/");
    let (status, body) = server.server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "{kind}: {body}");
    body["event_id"].as_str().expect("event id").to_owned()
}

fn bodies(pdus: &Value) -> Vec<String> {
    pdus.as_array()
        .expect("a list of events")
        .iter()
        .filter_map(|pdu| pdu["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn types(pdus: &Value) -> BTreeSet<String> {
    pdus.as_array()
        .expect("a list of events")
        .iter()
        .filter_map(|pdu| pdu["type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn other_servers_read_a_rooms_history_within_the_limits() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let room =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    inject_member(&a.server, &room, &fake.user_id("friend"), "join").await;
    let encoded = encode(&room);
    let mut messages = Vec::new();
    for index in 0..110 {
        messages.push(
            send_text(&a.server, &alice, &room, &format!("t{index}"), &format!("m{index}")).await,
        );
    }
    let topic = put_state(&a, &alice, &room, "m.room.topic", json!({"topic": "history"})).await;
    let after_topic = send_text(&a.server, &alice, &room, "after", "after topic").await;

    // event: the federation form, which verifies with this server's key.
    let (status, body) = get(&a, &fake, &format!("/v1/event/{}", encode(&messages[7]))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["origin"], a.name.as_str());
    let pdu = &body["pdus"][0];
    assert_eq!(pdu["content"]["body"], "m7");
    assert!(pdu.get("event_id").is_none() && pdu.get("unsigned").is_none(), "{pdu}");
    let raw = serde_json::value::to_raw_value(pdu).expect("raw");
    let verified =
        verify_batch(&a.services().federation.keys, &RoomVersionId::V11, vec![raw]).await;
    let verified = verified.into_iter().next().expect("one").expect("our own event verifies");
    assert_eq!(verified.pdu.event_id.as_str(), messages[7]);

    // state_ids / state: the state *before* the event.
    let (status, before_topic) =
        get(&a, &fake, &format!("/v1/state_ids/{encoded}?event_id={}", encode(&topic))).await;
    assert_eq!(status, 200, "{before_topic}");
    let ids = |body: &Value| -> BTreeSet<String> {
        body["pdu_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect()
    };
    assert!(!ids(&before_topic).contains(&topic), "the topic is not in the state before it");
    let (status, after) =
        get(&a, &fake, &format!("/v1/state_ids/{encoded}?event_id={}", encode(&after_topic))).await;
    assert_eq!(status, 200, "{after}");
    assert!(ids(&after).contains(&topic));
    assert_eq!(ids(&after).len(), ids(&before_topic).len() + 1);
    let chain: BTreeSet<String> = after["auth_chain_ids"]
        .as_array()
        .expect("chain")
        .iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    assert!(!chain.is_empty() && chain.is_subset(&ids(&after)), "a linear room's chain is state");
    let (status, state) =
        get(&a, &fake, &format!("/v1/state/{encoded}?event_id={}", encode(&after_topic))).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["pdus"].as_array().map(Vec::len), Some(ids(&after).len()));
    assert!(types(&state["pdus"]).contains("m.room.topic"));

    // event_auth: the event's auth chain (TestEventAuth).
    let (status, body) =
        get(&a, &fake, &format!("/v1/event_auth/{encoded}/{}", encode(&messages[3]))).await;
    assert_eq!(status, 200, "{body}");
    let kinds = types(&body["auth_chain"]);
    for kind in ["m.room.create", "m.room.member", "m.room.power_levels"] {
        assert!(kinds.contains(kind), "{kinds:?}");
    }
    assert!(!kinds.contains("m.room.message"), "{kinds:?}");

    // backfill: from the given event back, deepest first, at most 100.
    let (status, body) =
        get(&a, &fake, &format!("/v1/backfill/{encoded}?v={}&limit=3", encode(&messages[50])))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bodies(&body["pdus"]), ["m50", "m49", "m48"]);
    let (status, body) =
        get(&a, &fake, &format!("/v1/backfill/{encoded}?v={}&limit=1000", encode(&after_topic)))
            .await;
    assert_eq!(status, 200);
    assert_eq!(body["pdus"].as_array().map(Vec::len), Some(100), "capped");

    // get_missing_events: between earliest and latest, oldest first, at most 20.
    let gme = |limit: u64| json!({"earliest_events": [messages[10]], "latest_events": [messages[40]], "limit": limit});
    let path = format!("/v1/get_missing_events/{encoded}");
    let (status, body) = post(&a, &fake, &path, &gme(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bodies(&body["events"]), ["m37", "m38", "m39"]);
    let (_, body) = post(&a, &fake, &path, &gme(500)).await;
    let expected: Vec<String> = (20..40).map(|index| format!("m{index}")).collect();
    assert_eq!(bodies(&body["events"]), expected, "capped at 20");

    // At most 100 listed event ids, each of which would be looked up: more is refused.
    let listed = |count: usize, real: &str| -> Vec<String> {
        let mut ids: Vec<String> =
            (1..count).map(|index| format!("$unknown{index}:x.example")).collect();
        ids.push(real.to_owned());
        ids
    };
    let query = |ids: &[String]| -> String {
        ids.iter().map(|id| format!("v={}", encode(id))).collect::<Vec<_>>().join("&")
    };
    let (status, body) = get(
        &a,
        &fake,
        &format!("/v1/backfill/{encoded}?{}&limit=3", query(&listed(100, &messages[50]))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bodies(&body["pdus"]), ["m50", "m49", "m48"], "unknown ids are skipped");
    let (status, body) = get(
        &a,
        &fake,
        &format!("/v1/backfill/{encoded}?{}&limit=3", query(&listed(101, &messages[50]))),
    )
    .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    for field in ["earliest_events", "latest_events"] {
        let mut request = gme(3);
        request[field] =
            json!(listed(100, &messages[if field == "latest_events" { 40 } else { 10 }]));
        let (status, body) = post(&a, &fake, &path, &request).await;
        assert_eq!(status, 200, "{field}: {body}");
        assert_eq!(bodies(&body["events"]), ["m37", "m38", "m39"], "{field}");
        request[field] = json!(listed(101, &messages[40]));
        let (status, body) = post(&a, &fake, &path, &request).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }

    // timestamp_to_event, both directions.
    let (status, body) =
        get(&a, &fake, &format!("/v1/timestamp_to_event/{encoded}?ts=4000000000000&dir=b")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], after_topic.as_str());
    let (status, body) =
        get(&a, &fake, &format!("/v1/timestamp_to_event/{encoded}?ts=0&dir=f")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].is_string());

    // Unknown rooms and events, events of another room, rooms the server has no member in.
    let other = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let elsewhere = send_text(&a.server, &alice, &other, "o", "other room").await;
    let (status, body) = get(&a, &fake, "/v1/event/%24nothing").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        get(&a, &fake, &format!("/v1/event_auth/{encoded}/{}", encode(&elsewhere))).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        get(&a, &fake, &format!("/v1/state_ids/{encoded}?event_id={}", encode(&elsewhere))).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = get(
        &a,
        &fake,
        &format!("/v1/state_ids/{}?event_id={}", encode(&other), encode(&elsewhere)),
    )
    .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = get(
        &a,
        &fake,
        &format!("/v1/backfill/{}?v={}&limit=3", encode("!nowhere:x.example"), encode(&topic)),
    )
    .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn history_visibility_and_acls_decide_what_a_server_sees() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let member = FakeServer::start_as(&ca, "member").await;
    let stranger = FakeServer::start_as(&ca, "stranger").await;
    let alice = a.server.register("alice", "pw").await;
    let room = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    inject_member(&a.server, &room, &member.user_id("friend"), "join").await;
    let encoded = encode(&room);
    let shared = send_text(&a.server, &alice, &room, "s", "shared secret").await;
    put_state(
        &a,
        &alice,
        &room,
        "m.room.history_visibility",
        json!({"history_visibility": "joined"}),
    )
    .await;
    let joined_only = send_text(&a.server, &alice, &room, "j", "members only").await;

    // Under `shared`, any server sees the event; under `joined` only a server with a member.
    let (status, body) = get(&a, &stranger, &format!("/v1/event/{}", encode(&shared))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["content"]["body"], "shared secret");
    let (status, body) = get(&a, &stranger, &format!("/v1/event/{}", encode(&joined_only))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["content"], json!({}), "redacted: {body}");
    assert!(body["pdus"][0]["signatures"].is_object(), "still signed, the DAG stays walkable");
    let (status, body) = get(&a, &member, &format!("/v1/event/{}", encode(&joined_only))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["content"]["body"], "members only");

    // A server without a member may not walk the room at all.
    let (status, body) =
        get(&a, &stranger, &format!("/v1/state_ids/{encoded}?event_id={}", encode(&joined_only)))
            .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        get(&a, &stranger, &format!("/v1/backfill/{encoded}?v={}&limit=5", encode(&joined_only)))
            .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // A server the ACL denies gets nothing, even with a member.
    put_state(
        &a,
        &alice,
        &room,
        "m.room.server_acl",
        json!({"allow": ["*"], "deny": [member.name.host()]}),
    )
    .await;
    let (status, body) = get(&a, &member, &format!("/v1/event/{}", encode(&shared))).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        get(&a, &member, &format!("/v1/backfill/{encoded}?v={}&limit=5", encode(&joined_only)))
            .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}
