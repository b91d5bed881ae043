//! Room previews (`GET /v1/room_summary/{roomIdOrAlias}`, MSC3266, and its unstable
//! `im.nheko.summary` path): what a user, or anyone without a token, may see of a room
//! before joining, and `404` for everything else.

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::create_room,
};

/// `#` and `!` escaped for a path segment.
fn segment(room: &str) -> String {
    room.replace('#', "%23").replace('!', "%21").replace(':', "%3A")
}

async fn summary(server: &TestServer, user: Option<&User>, room: &str) -> (u16, Value) {
    let path = format!("/_matrix/client/v1/room_summary/{}", segment(room));
    server.request(reqwest::Method::GET, &path, user.map(|user| user.token.as_str()), None).await
}

#[tokio::test]
async fn previews_show_what_a_visitor_may_see_and_nothing_else() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let public = create_room(
        &server,
        &alice,
        json!({"preset": "public_chat", "name": "Lobby", "topic": "Say hi",
               "room_alias_name": "lobby", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let private = create_room(&server, &alice, json!({"name": "Secret"})).await;
    let knock = create_room(
        &server,
        &alice,
        json!({"name": "Knock", "initial_state": [
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let readable = create_room(
        &server,
        &alice,
        json!({"name": "Readable", "initial_state": [{"type": "m.room.history_visibility",
               "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;
    let restricted_to = |room: &str| {
        json!({"name": "Members only", "initial_state": [{"type": "m.room.join_rules",
               "content": {"join_rule": "restricted",
                           "allow": [{"type": "m.room_membership", "room_id": room}]}}]})
    };
    let via_public = create_room(&server, &alice, restricted_to(&public)).await;
    let via_private = create_room(&server, &alice, restricted_to(&private)).await;
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{public}/join"), json!({})).await;
    assert_eq!(status, 200, "{body}");

    // A public space, by id and by alias, for a member and for nobody in particular.
    let (status, body) = summary(&server, Some(&bob), &public).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], public.as_str());
    assert_eq!((&body["name"], &body["topic"]), (&json!("Lobby"), &json!("Say hi")));
    assert_eq!(body["canonical_alias"], "#lobby:test.local");
    // ruma leaves `join_rule` out when it is `public`, which the spec says it means.
    assert!(body.get("join_rule").is_none_or(|rule| rule == "public"), "{body}");
    assert_eq!(body["room_type"], "m.space");
    assert_eq!(body["num_joined_members"], 2);
    assert_eq!(body["membership"], "join");
    assert_eq!(body["room_version"], "12");
    let (status, by_alias) = summary(&server, Some(&bob), "#lobby:test.local").await;
    assert_eq!((status, &by_alias["room_id"]), (200, &json!(public)));
    let (status, anonymous) = summary(&server, None, &public).await;
    assert_eq!(status, 200, "{anonymous}");
    assert!(anonymous.get("membership").is_none(), "no membership without a token");
    // The unstable path clients still use.
    let path =
        format!("/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary", segment(&public));
    let (status, unstable) = server.get_as(&bob, &path).await;
    assert_eq!((status, &unstable["name"]), (200, &json!("Lobby")));

    // Knockable, world-readable and restricted-to-a-room-bob-is-in: shown, as "leave".
    for room in [&knock, &readable, &via_public] {
        let (status, body) = summary(&server, Some(&bob), room).await;
        assert_eq!(status, 200, "{room}: {body}");
        assert_eq!(body["membership"], "leave");
    }
    assert_eq!(summary(&server, Some(&bob), &via_public).await.1["join_rule"], "restricted");
    // Invite-only, and restricted to a room bob is not in: not found, as for a room that
    // does not exist.
    for room in [&private, &via_private, "!nowhere:test.local", "#nothing:test.local"] {
        let (status, body) = summary(&server, Some(&bob), room).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    // Without a token only public, knockable and world-readable rooms.
    for room in [&knock, &readable] {
        assert_eq!(summary(&server, None, room).await.0, 200, "{room}");
    }
    for room in [&private, &via_public] {
        let (status, body) = summary(&server, None, room).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }

    // An invited user sees the room, as invited; the owner as joined.
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{private}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(summary(&server, Some(&bob), &private).await.1["membership"], "invite");
    assert_eq!(summary(&server, Some(&alice), &private).await.1["membership"], "join");

    // A banned user sees nothing, even of a public room.
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{public}/ban"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = summary(&server, Some(&bob), &public).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Not a room id or alias at all; a bad token.
    let (status, body) = summary(&server, Some(&bob), "lobby").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .request(
            reqwest::Method::GET,
            &format!("/_matrix/client/v1/room_summary/{}", segment(&public)),
            Some("not-a-token"),
            None,
        )
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    server.stop().await;
}
