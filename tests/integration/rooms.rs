//! Rooms: creation, membership, messages, state, history and their permission failures.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, User, assert_error};

pub async fn create_room(server: &TestServer, user: &User, body: Value) -> String {
    let (status, response) = server.post_as(user, "/_matrix/client/v3/createRoom", body).await;
    assert_eq!(status, 200, "createRoom: {response}");
    response["room_id"].as_str().expect("room_id").to_owned()
}

pub async fn send_text(
    server: &TestServer,
    user: &User,
    room: &str,
    txn: &str,
    text: &str,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, response) =
        server.put_as(user, &path, json!({"msgtype": "m.text", "body": text})).await;
    assert_eq!(status, 200, "send: {response}");
    response["event_id"].as_str().expect("event_id").to_owned()
}

#[tokio::test]
async fn create_send_and_read_back_in_every_room_version() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    for version in ["10", "11", "12"] {
        let room = create_room(
            &server,
            &alice,
            json!({"room_version": version, "name": "Test", "topic": "About"}),
        )
        .await;
        if version == "12" {
            assert!(!room.contains(':'), "version 12 room ids have no server name: {room}");
        } else {
            assert!(room.ends_with(":test.local"), "{room}");
        }
        let event = send_text(&server, &alice, &room, "t1", "hello").await;
        let (status, body) = server
            .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"))
            .await;
        assert_eq!(status, 200, "{body}");
        let chunk = body["chunk"].as_array().expect("chunk");
        assert_eq!(chunk[0]["event_id"], event.as_str(), "{body}");
        assert_eq!(chunk[0]["content"]["body"], "hello");
        assert_eq!(chunk[0]["unsigned"]["transaction_id"], "t1");
        let (status, state) =
            server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state")).await;
        assert_eq!(status, 200, "{state}");
        let kinds: Vec<&str> =
            state.as_array().expect("state").iter().filter_map(|e| e["type"].as_str()).collect();
        for kind in [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.name",
            "m.room.topic",
        ] {
            assert!(kinds.contains(&kind), "{version}: {kind} missing from {kinds:?}");
        }
        let (status, name) = server
            .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"))
            .await;
        assert_eq!((status, name["name"].clone()), (200, json!("Test")));
    }
    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/createRoom", json!({"room_version": "9"})).await;
    assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
    server.stop().await;
}

#[tokio::test]
async fn joining_public_rooms_and_permission_failures() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let public = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let private = create_room(&server, &alice, json!({})).await;

    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{private}/join"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{public}/send/m.room.message/x"),
            json!({"body": "hi", "msgtype": "m.text"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{public}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    send_text(&server, &bob, &public, "b1", "I'm in").await;
    let (_, rooms) = server.get_as(&bob, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(rooms["joined_rooms"], json!([public]));

    // Bob may not change the name (power level 50 needed).
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{public}/state/m.room.name"),
            json!({"name": "mine"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // Invite to the private room, then join works.
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{private}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{private}/join"), json!({})).await;
    assert_eq!(status, 200, "{body}");

    // Kick and ban.
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{public}/ban"),
            json!({"user_id": bob.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{public}/join"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{public}/ban"),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/join/!unknown:test.local", json!({})).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let _ = server.request(Method::GET, "/", None, None).await;
    server.stop().await;
}

async fn room_messages(server: &TestServer, user: &User, room: &str, query: &str) -> Value {
    let (status, body) =
        server.get_as(user, &format!("/_matrix/client/v3/rooms/{room}/messages?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn event_ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn invites_knocks_kicks_unbans_and_forgetting() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&server, &alice, json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]})).await;

    // Knock, then the invite lets the knocker in.
    let (status, body) = server
        .post_as(&bob, &format!("/_matrix/client/v3/knock/{room}"), json!({"reason": "let me in"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_eq!(status, 200);

    // Only those with power may invite others, kick and ban; targets must be in the room.
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@ghost:test.local"}),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            json!({"user_id": bob.user_id, "reason": "bye"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, members) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/members?membership=leave"))
        .await;
    let left: Vec<&str> = members["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(left, [bob.user_id.as_str()]);
    assert_eq!(members["chunk"][0]["content"]["reason"], "bye");

    server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(status, 200);

    // Forgetting needs leaving first.
    let (status, body) =
        server.post_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/forget"), json!({})).await;
    assert_error(status, &body, 400, "M_UNKNOWN");
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/forget"), json!({})).await;
    assert_eq!(status, 200);

    // Joined members.
    let (status, body) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/joined_members")).await;
    assert_eq!(status, 200);
    assert_eq!(body["joined"].as_object().expect("joined").len(), 1);
    assert_eq!(body["joined"][alice.user_id.as_str()]["display_name"], "alice 💕");
    let (status, body) =
        server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/joined_members")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn restricted_rooms_admit_members_of_allowed_rooms() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let space = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let restricted = create_room(
        &server,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
    )
    .await;
    let (status, body) = server
        .post_as(&bob, &format!("/_matrix/client/v3/rooms/{restricted}/join"), json!({}))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{space}/join"), json!({})).await;
    let (status, body) = server
        .post_as(&bob, &format!("/_matrix/client/v3/rooms/{restricted}/join"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, member) = server
        .get_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{restricted}/state/m.room.member/{}", bob.user_id),
        )
        .await;
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id.as_str());
    server.stop().await;
}

#[tokio::test]
async fn idempotent_retransmits_and_state_permissions() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let other = create_room(&server, &alice, json!({})).await;
    let first = send_text(&server, &alice, &room, "txn-1", "once").await;
    let again = send_text(&server, &alice, &room, "txn-1", "once").await;
    assert_eq!(first, again, "a retransmit returns the same event");
    let elsewhere = send_text(&server, &alice, &other, "txn-1", "once").await;
    assert_ne!(first, elsewhere, "transaction ids are per room");
    let second_device = server.login("alice", "pw").await;
    let from_other_device = send_text(&server, &second_device, &room, "txn-1", "once").await;
    assert_ne!(first, from_other_device, "transaction ids are per device");
    let body = room_messages(&server, &alice, &room, "dir=b&limit=10").await;
    let texts = body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .count();
    assert_eq!(texts, 2, "the retransmit did not create a second event");

    // State reads: missing state is 404; floats are refused.
    let (status, body) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/org.example.float"),
            json!({"value": 1.5}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
            json!({"alias": "#nope:test.local"}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_ALIAS");
    let (status, event) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/org.example.thing/key"),
            json!({"a": 1}),
        )
        .await;
    assert_eq!(status, 200, "{event}");
    let (status, full) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/org.example.thing/key?format=event"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(full["event_id"], event["event_id"]);
    assert_eq!(full["content"]["a"], 1);
    server.stop().await;
}

#[tokio::test]
async fn redactions_follow_each_room_versions_rules() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    for version in ["10", "11", "12"] {
        let room =
            create_room(&server, &alice, json!({"room_version": version, "preset": "public_chat"}))
                .await;
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        let own = send_text(&server, &bob, &room, "r1", "secret").await;
        let others = send_text(&server, &alice, &room, "r2", "alice's").await;

        let (status, body) = server
            .put_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/redact/{others}/x1"), json!({}))
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
        let (status, body) = server
            .put_as(
                &bob,
                &format!("/_matrix/client/v3/rooms/{room}/redact/{own}/x2"),
                json!({"reason": "oops"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let redaction = body["event_id"].as_str().expect("redaction id").to_owned();
        // A moderator (the creator) may redact others.
        let (status, _) = server
            .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{own}/x3"), json!({}))
            .await;
        assert_eq!(status, 200);

        let (_, event) =
            server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{own}")).await;
        assert_eq!(event["content"], json!({}), "{version}: content stripped: {event}");
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"],
            redaction.as_str(),
            "{event}"
        );
        let (_, redaction_event) = server
            .get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{redaction}"))
            .await;
        assert_eq!(redaction_event["redacts"], own.as_str());
        assert_eq!(redaction_event["content"]["reason"], "oops");
        if version == "10" {
            assert!(
                redaction_event["content"].get("redacts").is_none(),
                "v10 keeps redacts at the top level"
            );
        } else {
            assert_eq!(
                redaction_event["content"]["redacts"],
                own.as_str(),
                "v11+ carries redacts in content"
            );
        }
        // The original is kept for admins.
        let services = server.server().services().clone();
        let short = tuwunel::rooms::event_short(
            &services.storage,
            &ruma::EventId::parse(&own).expect("id"),
        )
        .expect("read")
        .expect("short");
        let kept = tuwunel::storage::rooms::UNREDACTED_TABLE
            .get(services.storage.engine(), &short)
            .expect("read");
        assert!(kept.is_some_and(|tuwunel::storage::codec::Json(record)| {
            record.original.contains("secret")
        }));
        // Power levels survive redaction with their meaning (the version's rules).
        let (_, levels) = server
            .get_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels?format=event"),
            )
            .await;
        let levels_id = levels["event_id"].as_str().expect("id").to_owned();
        let (status, _) = server
            .put_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/redact/{levels_id}/x4"),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, redacted_levels) = server
            .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/event/{levels_id}"))
            .await;
        assert!(
            redacted_levels["content"].get("users_default").is_some(),
            "{version}: power levels keep their keys: {redacted_levels}"
        );
        if version != "10" {
            assert!(
                redacted_levels["content"].get("invite").is_some(),
                "v11+ keeps invite: {redacted_levels}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn pagination_crosses_many_pages_without_gaps_or_duplicates() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let mut sent = Vec::new();
    for index in 0..57 {
        sent.push(
            send_text(&server, &alice, &room, &format!("p{index}"), &format!("message {index}"))
                .await,
        );
    }
    let filter = urlencoding(r#"{"types":["m.room.message"]}"#);
    // Backwards from the end.
    let mut seen = Vec::new();
    let mut from = None::<String>;
    for _ in 0..100 {
        let query = match &from {
            Some(token) => format!("dir=b&limit=7&filter={filter}&from={token}"),
            None => format!("dir=b&limit=7&filter={filter}"),
        };
        let body = room_messages(&server, &alice, &room, &query).await;
        seen.extend(event_ids(&body["chunk"]));
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let mut expected = sent.clone();
    expected.reverse();
    assert_eq!(seen, expected, "backwards pagination");
    // Forwards from the start.
    let mut seen = Vec::new();
    let mut from = "t0".to_owned();
    for _ in 0..100 {
        let body = room_messages(
            &server,
            &alice,
            &room,
            &format!("dir=f&limit=5&filter={filter}&from={from}"),
        )
        .await;
        seen.extend(event_ids(&body["chunk"]));
        match body["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, sent, "forwards pagination");
    // `to` bounds a page.
    let first =
        room_messages(&server, &alice, &room, &format!("dir=f&limit=100&filter={filter}&from=t0"))
            .await;
    assert_eq!(event_ids(&first["chunk"]).len(), 57);

    // Context around the middle event.
    let middle = &sent[28];
    let (status, context) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/context/{middle}?limit=4&filter={filter}"),
        )
        .await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["event"]["event_id"], middle.as_str());
    assert_eq!(event_ids(&context["events_before"]), [sent[27].clone(), sent[26].clone()]);
    assert_eq!(event_ids(&context["events_after"]), [sent[29].clone(), sent[30].clone()]);
    let after = room_messages(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=1&filter={filter}&from={}", context["end"].as_str().expect("end")),
    )
    .await;
    assert_eq!(
        event_ids(&after["chunk"]),
        [sent[31].clone()],
        "context's end token continues without a gap"
    );
    let before = room_messages(
        &server,
        &alice,
        &room,
        &format!(
            "dir=b&limit=1&filter={filter}&from={}",
            context["start"].as_str().expect("start")
        ),
    )
    .await;
    assert_eq!(
        event_ids(&before["chunk"]),
        [sent[25].clone()],
        "context's start token continues without a gap"
    );

    // Timestamp lookup.
    let (_, event) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/event/{}", sent[10])).await;
    let ts = event["origin_server_ts"].as_u64().expect("ts");
    let (status, found) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir=f"),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["origin_server_ts"].as_u64(), Some(ts));
    let (status, body) = server
        .get_as(
            &alice,
            &format!(
                "/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={}&dir=f",
                ts + 10_000_000
            ),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn history_visibility_is_enforced_on_every_read() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    for (visibility, bob_sees_before_join, carol_sees_without_joining) in [
        ("joined", false, false),
        ("invited", false, false),
        ("shared", true, false),
        ("world_readable", true, true),
    ] {
        let room = create_room(
            &server,
            &alice,
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}]}),
        )
        .await;
        let early = send_text(&server, &alice, &room, "early", "before bob").await;
        server
            .post_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                json!({"user_id": bob.user_id}),
            )
            .await;
        let invited = send_text(&server, &alice, &room, "invited", "bob is invited").await;
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
        let joined = send_text(&server, &alice, &room, "joined", "bob is here").await;

        let (status, _) =
            server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{early}")).await;
        assert_eq!(status == 200, bob_sees_before_join, "{visibility}: event before the invite");
        let (status, _) =
            server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{invited}")).await;
        assert_eq!(status == 200, visibility != "joined", "{visibility}: event while invited");
        let (status, _) =
            server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{joined}")).await;
        assert_eq!(status, 200, "{visibility}: event after joining");
        let page = room_messages(&server, &bob, &room, "dir=b&limit=50").await;
        assert_eq!(
            event_ids(&page["chunk"]).contains(&early),
            bob_sees_before_join,
            "{visibility}: /messages"
        );

        let (status, _) =
            server.get_as(&carol, &format!("/_matrix/client/v3/rooms/{room}/event/{early}")).await;
        assert_eq!(status == 200, carol_sees_without_joining, "{visibility}: outsider");

        // After leaving, later events are hidden (unless world-readable).
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
        let after_leave = send_text(&server, &alice, &room, "later", "bob left").await;
        let (status, _) = server
            .get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{after_leave}"))
            .await;
        assert_eq!(
            status == 200,
            visibility == "world_readable",
            "{visibility}: event after leaving"
        );
        let (status, _) =
            server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/event/{joined}")).await;
        assert_eq!(status, 200, "{visibility}: events from while joined stay visible");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_make_one_linear_timeline() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let mut users = Vec::new();
    for index in 0..8 {
        let user = server.register(&format!("sender{index}"), "pw").await;
        server.post_as(&user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        users.push(user);
    }
    let base = server.url("");
    let mut tasks = Vec::new();
    for (index, user) in users.iter().cloned().enumerate() {
        let client = server.client.clone();
        let base = base.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for message in 0..25 {
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/c{index}-{message}"
                );
                let response = client
                    .put(url)
                    .bearer_auth(&user.token)
                    .json(&json!({"msgtype": "m.text", "body": format!("{index}:{message}")}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.expect("json");
                ids.push(body["event_id"].as_str().expect("id").to_owned());
            }
            ids
        }));
    }
    let mut sent = std::collections::HashSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(sent.insert(id), "an event id was returned twice");
        }
    }
    assert_eq!(sent.len(), 200);
    // The timeline holds every event once, each building on the previous one.
    let services = server.server().services().clone();
    let record =
        tuwunel::rooms::room(&services.storage, &ruma::RoomId::parse(&room).expect("room"))
            .expect("read")
            .expect("room");
    let rows = tuwunel::storage::rooms::TIMELINE_TABLE
        .collect(
            services.storage.engine(),
            &record.short.to_be_bytes(),
            tuwunel::storage::Direction::Forward,
            10_000,
        )
        .expect("timeline");
    let mut previous: Option<ruma::OwnedEventId> = None;
    let mut messages = 0;
    for (_, short) in rows {
        let pdu =
            tuwunel::rooms::pdu(services.storage.engine(), short).expect("read").expect("pdu");
        if let Some(previous) = &previous {
            assert_eq!(
                pdu.prev_events,
                std::slice::from_ref(previous),
                "the timeline forked at {}",
                pdu.event_id
            );
        }
        if pdu.kind.to_string() == "m.room.message" {
            assert!(sent.contains(pdu.event_id.as_str()));
            messages += 1;
        }
        previous = Some(pdu.event_id.clone());
    }
    assert_eq!(messages, 200);
    drop(services);
    server.stop().await;
}

#[tokio::test]
async fn a_passivated_or_restarted_room_comes_back_identical() {
    let mut server = TestServer::with_options(&["actor_idle_timeout_s=1"]).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"name": "Persistent"})).await;
    send_text(&server, &alice, &room, "a", "before").await;
    let (_, state_before) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state")).await;
    let registry = server.server().services().rooms.actors.clone();
    let room_id = ruma::RoomId::parse(&room).expect("room id");
    assert!(
        crate::common::wait_until(std::time::Duration::from_secs(10), || async {
            !registry.is_live(&room_id)
        })
        .await,
        "room did not passivate"
    );
    let (_, state_after) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state")).await;
    assert_eq!(without_age(&state_before), without_age(&state_after));
    // Sending again builds on the same head.
    let next = send_text(&server, &alice, &room, "b", "after").await;
    let (_, event) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/event/{next}")).await;
    assert_eq!(event["content"]["body"], "after");
    drop(registry);
    server.restart().await;
    let (_, state_restarted) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state")).await;
    assert_eq!(without_age(&state_before), without_age(&state_restarted));
    let page = room_messages(&server, &alice, &room, "dir=b&limit=2").await;
    assert_eq!(event_ids(&page["chunk"])[0], next);
    server.stop().await;
}

/// State events without their `unsigned.age` (which grows with time).
fn without_age(state: &Value) -> Value {
    let mut state = state.clone();
    for event in state.as_array_mut().into_iter().flatten() {
        if let Some(unsigned) = event.get_mut("unsigned").and_then(Value::as_object_mut) {
            unsigned.remove("age");
        }
    }
    state
}

#[tokio::test]
async fn originals_of_redactions_expire_after_the_retention_period() {
    let mut server = TestServer::with_options(&["redaction_retention_seconds=0"]).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let event = send_text(&server, &alice, &room, "m", "regret").await;
    server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{event}/r"), json!({}))
        .await;
    let services = server.server().services().clone();
    let table = tuwunel::storage::rooms::UNREDACTED_TABLE;
    let before = table
        .collect(services.storage.engine(), b"", tuwunel::storage::Direction::Forward, 10)
        .expect("scan")
        .len();
    assert_eq!(before, 1);
    let purged = tuwunel::rooms::purge_unredacted(&services.storage, 0, services.time.now_ms())
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert!(
        table
            .collect(services.storage.engine(), b"", tuwunel::storage::Direction::Forward, 10)
            .expect("scan")
            .is_empty()
    );
    drop(services);
    server.stop().await;
}

#[tokio::test]
async fn a_forgotten_room_cannot_be_read_any_more() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let message = send_text(&server, &alice, &room, "f1", "before bob left").await;
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, 200);
    let reads = [
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{room}/context/{message}"),
        format!("/_matrix/client/v3/rooms/{room}/event/{message}"),
        format!("/_matrix/client/v3/rooms/{room}/state"),
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"),
        format!("/_matrix/client/v3/rooms/{room}/members"),
        format!("/_matrix/client/v3/rooms/{room}/initialSync"),
    ];
    // Having left, Bob still reads what he saw.
    let history = room_messages(&server, &bob, &room, "dir=b").await;
    assert!(event_ids(&history["chunk"]).contains(&message), "{history}");
    for path in &reads {
        let (status, body) = server.get_as(&bob, path).await;
        assert_eq!(status, 200, "{path} before forgetting: {body}");
    }
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/forget"), json!({})).await;
    assert_eq!(status, 200);
    for path in &reads {
        let (status, body) = server.get_as(&bob, path).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    // Joining again makes it readable again.
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let history = room_messages(&server, &bob, &room, "dir=b").await;
    assert!(event_ids(&history["chunk"]).contains(&message), "{history}");
    server.stop().await;
}
