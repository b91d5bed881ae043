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
