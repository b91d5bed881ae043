//! Room previews (peeking) through `GET /rooms/{roomId}/initialSync` and
//! `GET /events?room_id=`, as Element previews a world-readable room; and the small
//! endpoints Element calls on start whose absence it retries forever (`/thirdparty/protocols`,
//! `/voip/turnServer`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{TestServer, assert_error},
    rooms::{create_room, send_text},
};

fn chunk_bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_room_can_be_previewed_and_followed() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let visitor = server.register("visitor", "visitor-password").await;
    let room = create_room(
        &server,
        &alice,
        json!({"preset": "public_chat", "name": "Open", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
        ]}),
    )
    .await;
    send_text(&server, &alice, &room, "p1", "first").await;
    send_text(&server, &alice, &room, "p2", "second").await;

    let (status, snapshot) =
        server.get_as(&visitor, &format!("/_matrix/client/v3/rooms/{room}/initialSync")).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["room_id"], room.as_str());
    assert!(snapshot.get("membership").is_none(), "the visitor is no member: {snapshot}");
    assert_eq!(snapshot["visibility"], "private");
    let state = snapshot["state"].as_array().expect("state");
    assert!(state.iter().any(|event| event["type"] == "m.room.name"), "{snapshot}");
    assert_eq!(chunk_bodies(&snapshot["messages"]["chunk"]), ["first", "second"]);
    let end = snapshot["messages"]["end"].as_str().expect("end token").to_owned();
    // The start token pages back with /messages.
    let start = snapshot["messages"]["start"].as_str();
    if let Some(start) = start {
        let (status, page) = server
            .get_as(
                &visitor,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={start}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
    }

    // /events waits for the next event and hands it over.
    let url =
        server.url(&format!("/_matrix/client/v3/events?room_id={room}&from={end}&timeout=10000"));
    let poll = tokio::spawn({
        let client = server.client.clone();
        let token = visitor.token.clone();
        async move {
            let response = client.get(url).bearer_auth(token).send().await.expect("events");
            (response.status().as_u16(), response.json::<Value>().await.expect("json"))
        }
    });
    // Whether the poll is already waiting or not, it answers with the next event.
    send_text(&server, &alice, &room, "p3", "third").await;
    let (status, events) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("/events answered")
        .expect("task");
    assert_eq!(status, 200, "{events}");
    assert_eq!(chunk_bodies(&events["chunk"]), ["third"]);
    assert_eq!(events["start"], end.as_str());
    let next = events["end"].as_str().expect("end").to_owned();
    // Nothing new: an empty chunk once the timeout passes.
    let (status, events) = server
        .get_as(
            &visitor,
            &format!("/_matrix/client/v3/events?room_id={room}&from={next}&timeout=0"),
        )
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["chunk"], json!([]));
    assert!(events["end"].is_string(), "{events}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_that_are_not_world_readable_cannot_be_peeked() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let visitor = server.register("visitor", "visitor-password").await;
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "visibility": "public"}))
            .await;
    send_text(&server, &alice, &room, "q1", "members only").await;
    for path in [
        format!("/_matrix/client/v3/rooms/{room}/initialSync"),
        format!("/_matrix/client/v3/events?room_id={room}&timeout=0"),
        "/_matrix/client/v3/rooms/!unknown:test.local/initialSync".to_owned(),
        "/_matrix/client/v3/events?room_id=!unknown:test.local&timeout=0".to_owned(),
    ] {
        let (status, body) = server.get_as(&visitor, &path).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    // A member gets their own snapshot, membership included.
    let (status, snapshot) =
        server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/initialSync")).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["membership"], "join");
    assert_eq!(snapshot["visibility"], "public");
    assert!(chunk_bodies(&snapshot["messages"]["chunk"]).contains(&"members only".to_owned()));
    // Without a token: the spec's missing-token error; bad input: the spec's errors.
    let (status, body) = server.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync")).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/events").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .get_as(&alice, &format!("/_matrix/client/v3/events?room_id={room}&from=nonsense"))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_protocols_and_turn_servers_are_empty_answers() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/thirdparty/protocol/irc").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/voip/turnServer").await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = server.get("/_matrix/client/v3/voip/turnServer").await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    server.stop().await;
}
