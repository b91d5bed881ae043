//! Paths whose last parameter is empty, written with a trailing slash: the spec's empty
//! state key (`PUT /rooms/{roomId}/state/m.room.name/`, how matrix-js-sdk sends every
//! room-wide state event) and the same form on every other endpoint ending in a parameter.

use serde_json::json;

use crate::{
    common::{TestServer, assert_error},
    rooms::create_room,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_with_an_empty_key_and_a_trailing_slash() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let bob = server.register("bob", "bob-password").await;
    let room = create_room(&server, &alice, json!({})).await;
    let state = |event_type: &str| format!("/_matrix/client/v3/rooms/{room}/state/{event_type}/");

    // Missing state is M_NOT_FOUND, not an unknown endpoint.
    let (status, body) = server.get_as(&alice, &state("m.room.topic")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    for (event_type, content) in [
        ("m.room.name", json!({"name": "Renamed"})),
        ("m.room.topic", json!({"topic": "A topic"})),
        ("m.room.join_rules", json!({"join_rule": "public"})),
        ("m.room.history_visibility", json!({"history_visibility": "world_readable"})),
        ("m.room.guest_access", json!({"guest_access": "can_join"})),
        ("m.room.encryption", json!({"algorithm": "m.megolm.v1.aes-sha2"})),
        ("org.example.custom", json!({"custom": true})),
    ] {
        let (status, body) = server.put_as(&alice, &state(event_type), content.clone()).await;
        assert_eq!(status, 200, "PUT {event_type}/: {body}");
        assert!(body["event_id"].is_string(), "{body}");
        // Both forms read the same event, with and without the slash.
        let (status, read) = server.get_as(&alice, &state(event_type)).await;
        assert_eq!((status, &read), (200, &content), "GET {event_type}/");
        let (status, read) = server
            .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/state/{event_type}"))
            .await;
        assert_eq!((status, &read), (200, &content), "GET {event_type}");
    }

    // Power levels through the slash form; the change is enforced.
    let (status, mut levels) = server.get_as(&alice, &state("m.room.power_levels")).await;
    assert_eq!(status, 200, "{levels}");
    levels["users"][&bob.user_id] = json!(50);
    let (status, body) = server.put_as(&alice, &state("m.room.power_levels"), levels).await;
    assert_eq!(status, 200, "{body}");
    let (status, levels) = server.get_as(&alice, &state("m.room.power_levels")).await;
    assert_eq!((status, &levels["users"][&bob.user_id]), (200, &json!(50)));

    // Not a member: forbidden, as without the slash.
    let (status, body) =
        server.put_as(&bob, &state("m.room.name"), json!({"name": "Not mine"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Bad content is refused and writes nothing.
    let response = server
        .client
        .put(server.url(&state("m.room.name")))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .expect("request");
    let (status, body) = crate::common::status_and_json(response).await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (_, name) = server.get_as(&alice, &state("m.room.name")).await;
    assert_eq!(name, json!({"name": "Renamed"}));
    // Unknown rooms answer as before.
    let (status, body) = server
        .get_as(&alice, "/_matrix/client/v3/rooms/!nowhere:test.local/state/m.room.name/")
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_ending_in_a_parameter_takes_it_empty() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "alice-password").await;
    let room = create_room(&server, &alice, json!({})).await;
    let user = alice.user_id.clone();
    // (method, path with an empty last parameter): each is routed to its endpoint, which
    // judges the empty value like any other instead of the router answering M_UNRECOGNIZED.
    let cases = [
        ("PUT", format!("/_matrix/client/v3/user/{user}/account_data/"), json!({"a": 1})),
        ("GET", format!("/_matrix/client/v3/user/{user}/account_data/"), json!(null)),
        ("PUT", format!("/_matrix/client/v3/user/{user}/rooms/{room}/account_data/"), json!({})),
        ("PUT", format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags/"), json!({})),
        ("DELETE", format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags/"), json!({})),
        ("GET", "/_matrix/client/v3/pushrules/global/override/".to_owned(), json!(null)),
        ("DELETE", "/_matrix/client/v3/pushrules/global/override/".to_owned(), json!({})),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.custom/".to_owned(), json!({"messages": {}})),
        ("GET", format!("/_matrix/client/v3/rooms/{room}/event/"), json!(null)),
        ("GET", "/_matrix/client/v3/devices/".to_owned(), json!(null)),
        ("GET", "/_matrix/client/v3/directory/room/".to_owned(), json!(null)),
    ];
    for (method, path, body) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let body = (!body.is_null()).then_some(body);
        let (status, answer) =
            server.request(method.clone(), &path, Some(&alice.token), body).await;
        assert!(
            answer["errcode"] != "M_UNRECOGNIZED",
            "{method} {path} was not routed: {status} {answer}"
        );
    }
    // The empty account data type is an ordinary key.
    let (status, body) =
        server.get_as(&alice, &format!("/_matrix/client/v3/user/{user}/account_data/")).await;
    assert_eq!((status, body), (200, json!({"a": 1})));
    // An empty push rule id names no rule.
    let (status, body) =
        server.get_as(&alice, "/_matrix/client/v3/pushrules/global/override/").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}
