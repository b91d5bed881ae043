//! The room directory: aliases, directory visibility, the published room list, and room
//! upgrades (which move aliases and listings to the replacement room).

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

/// `#name:test.local`, encoded for a path.
fn alias_path(name: &str) -> String {
    format!("/_matrix/client/v3/directory/room/%23{name}:test.local")
}

async fn join(server: &TestServer, user: &User, room: &str) {
    let (status, body) =
        server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "join: {body}");
}

fn state_path(room: &str, kind: &str, state_key: &str) -> String {
    if state_key.is_empty() {
        format!("/_matrix/client/v3/rooms/{room}/state/{kind}")
    } else {
        format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{state_key}")
    }
}

async fn put_state(
    server: &TestServer,
    user: &User,
    room: &str,
    kind: &str,
    state_key: &str,
    content: Value,
) -> (u16, Value) {
    server.put_as(user, &state_path(room, kind, state_key), content).await
}

async fn get_state(
    server: &TestServer,
    user: &User,
    room: &str,
    kind: &str,
    state_key: &str,
) -> (u16, Value) {
    server.get_as(user, &state_path(room, kind, state_key)).await
}

/// A first user, who becomes the server admin, and three ordinary users.
async fn users(server: &TestServer) -> (User, User, User, User) {
    let admin = server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    (admin, alice, bob, carol)
}

#[tokio::test]
async fn aliases_are_created_resolved_listed_and_deleted() {
    let mut server = TestServer::with_options(&["forbidden_alias_names=[\"^reserved\"]"]).await;
    let (admin, alice, bob, carol) = users(&server).await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &room).await;

    // Creating: only members, only this server's aliases, only free and allowed names.
    let (status, body) = server.put_as(&alice, &alias_path("pets"), json!({"room_id": room})).await;
    assert_eq!((status, body.clone()), (200, json!({})), "{body}");
    let (status, body) = server.put_as(&bob, &alias_path("pets"), json!({"room_id": room})).await;
    assert_error(status, &body, 409, "M_ROOM_IN_USE");
    let (status, body) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/directory/room/%23pets:elsewhere.example",
            json!({"room_id": room}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .put_as(&alice, "/_matrix/client/v3/directory/room/not-an-alias", json!({"room_id": room}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) =
        server.put_as(&alice, &alias_path("reserved-name"), json!({"room_id": room})).await;
    assert_error(status, &body, 400, "M_EXCLUSIVE");
    let (status, body) = server
        .put_as(&alice, &alias_path("nowhere"), json!({"room_id": "!unknown:test.local"}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.put_as(&carol, &alias_path("intruder"), json!({"room_id": room})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .request(Method::PUT, &alias_path("anonymous"), None, Some(json!({"room_id": room})))
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = server.put_as(&alice, &alias_path("bad"), json!({})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    // Resolving needs no token.
    let (status, body) = server.request(Method::GET, &alias_path("pets"), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"room_id": room, "servers": ["test.local"]}));
    let (status, body) = server.request(Method::GET, &alias_path("unknown"), None, None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/directory/room/%23x:elsewhere.example",
            None,
            None,
        )
        .await;
    // Asked of that server, which cannot be reached (see federation.rs for one that can).
    assert_error(status, &body, 502, "M_UNKNOWN");

    // The local aliases of the room: members only, unless the room is world-readable.
    let (status, body) = server.put_as(&bob, &alias_path("bobs"), json!({"room_id": room})).await;
    assert_eq!(status, 200, "{body}");
    let aliases_path = format!("/_matrix/client/v3/rooms/{room}/aliases");
    let (status, body) = server.get_as(&bob, &aliases_path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"aliases": ["#bobs:test.local", "#pets:test.local"]}));
    let (status, body) = server.get_as(&carol, &aliases_path).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        server.get_as(&carol, "/_matrix/client/v3/rooms/!unknown:test.local/aliases").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, _) = put_state(
        &server,
        &alice,
        &room,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "world_readable"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = server.get_as(&carol, &aliases_path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aliases"].as_array().map(Vec::len), Some(2));

    // Deleting: the creator, a moderator of the room, or a server admin; nobody else.
    let (status, body) = server.delete_as(&carol, &alias_path("bobs"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server.delete_as(&bob, &alias_path("pets"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server.delete_as(&bob, &alias_path("bobs"), json!({})).await;
    assert_eq!((status, body.clone()), (200, json!({})), "{body}");
    let (status, body) = server.delete_as(&bob, &alias_path("bobs"), json!({})).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server.request(Method::GET, &alias_path("bobs"), None, None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.put_as(&bob, &alias_path("bobs2"), json!({"room_id": room})).await;
    let (status, body) = server.delete_as(&alice, &alias_path("bobs2"), json!({})).await;
    assert_eq!(status, 200, "moderator deletes: {body}");
    server.put_as(&bob, &alias_path("bobs3"), json!({"room_id": room})).await;
    let (status, body) = server.delete_as(&admin, &alias_path("bobs3"), json!({})).await;
    assert_eq!(status, 200, "admin deletes: {body}");
    let (status, body) = server
        .delete_as(&admin, "/_matrix/client/v3/directory/room/%23x:elsewhere.example", json!({}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Deleting an alias the canonical alias names takes it out of the event.
    server.put_as(&alice, &alias_path("alt"), json!({"room_id": room})).await;
    let (status, body) = put_state(
        &server,
        &alice,
        &room,
        "m.room.canonical_alias",
        "",
        json!({"alias": "#pets:test.local", "alt_aliases": ["#alt:test.local"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.delete_as(&alice, &alias_path("pets"), json!({})).await;
    assert_eq!(status, 200);
    let (_, canonical) = get_state(&server, &alice, &room, "m.room.canonical_alias", "").await;
    assert_eq!(canonical, json!({"alt_aliases": ["#alt:test.local"]}));
    let (_, body) = server.get_as(&alice, &aliases_path).await;
    assert_eq!(body, json!({"aliases": ["#alt:test.local"]}));

    // The alias created with the room is an ordinary alias too.
    let other = create_room(&server, &alice, json!({"room_alias_name": "withroom"})).await;
    let (_, body) = server.request(Method::GET, &alias_path("withroom"), None, None).await;
    assert_eq!(body["room_id"], other.as_str());
    let (status, body) =
        server.put_as(&alice, &alias_path("withroom"), json!({"room_id": room})).await;
    assert_error(status, &body, 409, "M_ROOM_IN_USE");

    // Aliases survive a restart.
    server.restart().await;
    let (status, body) = server.request(Method::GET, &alias_path("alt"), None, None).await;
    assert_eq!((status, body["room_id"].clone()), (200, json!(room)));
    server.stop().await;
}

#[tokio::test]
async fn a_canonical_alias_names_only_valid_aliases_of_its_room() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"room_alias_name": "hall"})).await;
    let other = create_room(&server, &alice, json!({"room_alias_name": "annex"})).await;
    assert_ne!(room, other);
    // Each refusal is M_BAD_ALIAS (400) and names the field that is wrong.
    for (content, field) in [
        (json!({"alias": "#annex:test.local"}), "alias"),
        (
            json!({"alias": "#hall:test.local", "alt_aliases": ["#x:elsewhere.example", "#nope:test.local"]}),
            "alt_aliases[1]",
        ),
        (json!({"alt_aliases": ["not an alias"]}), "alt_aliases[0]"),
        (json!({"alias": ""}), "alias"),
    ] {
        let (status, body) =
            put_state(&server, &alice, &room, "m.room.canonical_alias", "", content.clone()).await;
        assert_error(status, &body, 400, "M_BAD_ALIAS");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{field}: ")), "{content}: {message}");
    }
    let (status, _) = get_state(&server, &alice, &room, "m.room.canonical_alias", "").await;
    assert_eq!(status, 200, "createRoom's canonical alias is still there");
    // Other servers' aliases cannot be checked, and values that are not strings are no
    // aliases: both are stored as sent.
    let accepted = json!({"alias": "#hall:test.local", "alt_aliases": ["#x:elsewhere.example", 5]});
    let (status, body) =
        put_state(&server, &alice, &room, "m.room.canonical_alias", "", accepted.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (_, stored) = get_state(&server, &alice, &room, "m.room.canonical_alias", "").await;
    assert_eq!(stored, accepted);
    server.stop().await;
}

#[tokio::test]
async fn directory_visibility_is_read_by_anyone_and_set_by_moderators() {
    let mut server = TestServer::start().await;
    let (admin, alice, bob, carol) = users(&server).await;
    let listed = create_room(&server, &alice, json!({"visibility": "public"})).await;
    let unlisted = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &unlisted).await;
    let path = |room: &str| format!("/_matrix/client/v3/directory/list/room/{room}");

    let (status, body) = server.request(Method::GET, &path(&listed), None, None).await;
    assert_eq!((status, body), (200, json!({"visibility": "public"})));
    let (status, body) = server.request(Method::GET, &path(&unlisted), None, None).await;
    assert_eq!((status, body), (200, json!({"visibility": "private"})));
    let (status, body) =
        server.request(Method::GET, &path("!unknown:test.local"), None, None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    let (status, body) =
        server.put_as(&alice, &path("!unknown:test.local"), json!({"visibility": "public"})).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.put_as(&carol, &path(&unlisted), json!({"visibility": "public"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        server.put_as(&bob, &path(&unlisted), json!({"visibility": "public"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        server.put_as(&alice, &path(&unlisted), json!({"visibility": "sideways"})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) =
        server.put_as(&alice, &path(&unlisted), json!({"visibility": "public"})).await;
    assert_eq!((status, body), (200, json!({})));
    let (_, body) = server.request(Method::GET, &path(&unlisted), None, None).await;
    assert_eq!(body, json!({"visibility": "public"}));

    // A server admin need not be in the room.
    let (status, body) =
        server.put_as(&admin, &path(&listed), json!({"visibility": "private"})).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.request(Method::GET, &path(&listed), None, None).await;
    assert_eq!(body, json!({"visibility": "private"}));

    // A member whose power was raised may list the room.
    let (_, mut levels) = get_state(&server, &alice, &unlisted, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(50);
    let (status, body) =
        put_state(&server, &alice, &unlisted, "m.room.power_levels", "", levels).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        server.put_as(&bob, &path(&unlisted), json!({"visibility": "private"})).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

fn room_ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn public_rooms_are_listed_filtered_and_paginated() {
    let mut server = TestServer::start().await;
    let (_admin, alice, bob, carol) = users(&server).await;

    // Rooms with 3, 2 and 1 members, a space, and rooms outside the directory.
    let big = create_room(
        &server,
        &alice,
        json!({"visibility": "public", "preset": "public_chat", "name": "Big Hall",
               "topic": "Everyone talks here", "room_alias_name": "hall"}),
    )
    .await;
    join(&server, &bob, &big).await;
    join(&server, &carol, &big).await;
    let medium = create_room(
        &server,
        &alice,
        json!({"visibility": "public", "preset": "public_chat", "name": "Cooking"}),
    )
    .await;
    join(&server, &bob, &medium).await;
    let space = create_room(
        &server,
        &alice,
        json!({"visibility": "public", "preset": "public_chat", "name": "The Space",
               "creation_content": {"type": "m.space"}}),
    )
    .await;
    put_state(&server, &alice, &space, "m.room.avatar", "", json!({"url": "mxc://test.local/av"}))
        .await;
    put_state(
        &server,
        &alice,
        &space,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "world_readable"}),
    )
    .await;
    let mut small = Vec::new();
    for index in 0..4 {
        small.push(
            create_room(
                &server,
                &bob,
                json!({
                    "visibility": "public",
                    "preset": "public_chat",
                    "name": format!("Small {index}"),
                }),
            )
            .await,
        );
    }
    let invite_only =
        create_room(&server, &alice, json!({"visibility": "public", "preset": "private_chat"}))
            .await;
    create_room(&server, &alice, json!({"preset": "public_chat", "name": "Unlisted"})).await;

    // Without a token, everything at once, largest first, then by room id.
    let (status, body) =
        server.request(Method::GET, "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(status, 200, "{body}");
    let all = room_ids(&body["chunk"]);
    let mut rest: Vec<String> =
        small.iter().cloned().chain([space.clone(), invite_only.clone()]).collect();
    rest.sort();
    let expected: Vec<String> = [big.clone(), medium.clone()].into_iter().chain(rest).collect();
    assert_eq!(all, expected);
    assert_eq!(body["total_room_count_estimate"], 8);
    assert!(body.get("next_batch").is_none() && body.get("prev_batch").is_none(), "{body}");
    let first = &body["chunk"][0];
    assert_eq!(first["name"], "Big Hall");
    assert_eq!(first["topic"], "Everyone talks here");
    assert_eq!(first["canonical_alias"], "#hall:test.local");
    assert_eq!(first["num_joined_members"], 3);
    assert_eq!(first["world_readable"], false);
    assert_eq!(first["guest_can_join"], false);
    assert!(first["join_rule"].is_null() || first["join_rule"] == "public", "{first}");
    assert!(first.get("room_type").is_none(), "{first}");
    let space_chunk = body["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|room| room["room_id"] == space.as_str()))
        .expect("space listed");
    assert_eq!(space_chunk["room_type"], "m.space");
    assert_eq!(space_chunk["avatar_url"], "mxc://test.local/av");
    assert_eq!(space_chunk["world_readable"], true);
    let invite_chunk = body["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|room| room["room_id"] == invite_only.as_str()))
        .expect("invite-only room listed");
    assert_eq!(invite_chunk["join_rule"], "invite");
    assert_eq!(invite_chunk["guest_can_join"], true);

    // Pages of three forwards cover the list exactly once; prev_batch goes back.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &since {
            Some(token) => format!("/_matrix/client/v3/publicRooms?limit=3&since={token}"),
            None => "/_matrix/client/v3/publicRooms?limit=3".to_owned(),
        };
        let (status, body) = server.get_as(&alice, &path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total_room_count_estimate"], 8);
        assert_eq!(body.get("prev_batch").is_some(), since.is_some(), "{body}");
        seen.extend(room_ids(&body["chunk"]));
        pages.push(body.clone());
        match body["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(seen, expected);
    let back = pages[2]["prev_batch"].as_str().expect("prev_batch");
    let (_, body) = server
        .get_as(&alice, &format!("/_matrix/client/v3/publicRooms?limit=3&since={back}"))
        .await;
    assert_eq!(room_ids(&body["chunk"]), room_ids(&pages[1]["chunk"]));

    // The filtered form, with the same tokens.
    let post = |body: Value| server.post_as(&alice, "/_matrix/client/v3/publicRooms", body);
    let (status, body) = post(json!({"limit": 4})).await;
    assert_eq!(status, 200, "{body}");
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, second) = post(json!({"limit": 4, "since": next})).await;
    let both: Vec<String> =
        room_ids(&body["chunk"]).into_iter().chain(room_ids(&second["chunk"])).collect();
    assert_eq!(both, expected);
    assert!(second.get("next_batch").is_none(), "{second}");
    for (term, wanted) in [
        ("big hall", vec![big.clone()]),
        ("EVERYONE", vec![big.clone()]),
        ("#HALL", vec![big.clone()]),
        ("cook", vec![medium.clone()]),
        (space.as_str(), vec![space.clone()]),
        ("nothing like this", vec![]),
    ] {
        let (status, body) = post(json!({"filter": {"generic_search_term": term}})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(room_ids(&body["chunk"]), wanted, "term {term}");
        assert_eq!(body["total_room_count_estimate"], wanted.len());
    }
    let (_, body) = post(json!({"filter": {"room_types": ["m.space"]}})).await;
    assert_eq!(room_ids(&body["chunk"]), vec![space.clone()]);
    let (_, body) = post(json!({"filter": {"room_types": [null]}})).await;
    assert_eq!(room_ids(&body["chunk"]).len(), 7);
    assert!(!room_ids(&body["chunk"]).contains(&space));
    let (_, body) = post(json!({"filter": {"room_types": [null, "m.space"]}})).await;
    assert_eq!(room_ids(&body["chunk"]).len(), 8);
    let (_, body) =
        post(json!({"filter": {"generic_search_term": "small", "room_types": [null]}, "limit": 2}))
            .await;
    let mut sorted_small = small.clone();
    sorted_small.sort();
    assert_eq!(room_ids(&body["chunk"]), sorted_small[..2]);
    assert_eq!(body["total_room_count_estimate"], 4);

    // This server's own name is fine; other servers are asked (this one cannot be reached;
    // see federation_rooms.rs for one that can); tokens must be ours.
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/publicRooms?server=test.local", None, None)
        .await;
    assert_eq!((status, room_ids(&body["chunk"]).len()), (200, 8));
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/publicRooms?server=elsewhere.example", None, None)
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) =
        server.get_as(&alice, "/_matrix/client/v3/publicRooms?server=elsewhere.example").await;
    assert_error(status, &body, 502, "M_UNKNOWN");
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/publicRooms?server=elsewhere.example", json!({}))
        .await;
    assert_error(status, &body, 502, "M_UNKNOWN");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/publicRooms?since=garbage", None, None)
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = post(json!({"since": "n"})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) =
        server.request(Method::POST, "/_matrix/client/v3/publicRooms", None, Some(json!({}))).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (_, body) = post(json!({"third_party_instance_id": "irc"})).await;
    assert_eq!(body["chunk"], json!([]));
    let (_, body) = post(json!({"include_all_networks": true})).await;
    assert_eq!(room_ids(&body["chunk"]).len(), 8);

    // Unpublishing takes a room out; joins reorder the list.
    let (status, _) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/directory/list/room/{invite_only}"),
            json!({"visibility": "private"}),
        )
        .await;
    assert_eq!(status, 200);
    join(&server, &alice, &small[3]).await;
    join(&server, &carol, &small[3]).await;
    join(&server, &bob, &space).await;
    join(&server, &carol, &space).await;
    let (_, body) = server.request(Method::GET, "/_matrix/client/v3/publicRooms", None, None).await;
    let listed = room_ids(&body["chunk"]);
    assert_eq!(listed.len(), 7);
    assert!(!listed.contains(&invite_only));
    let mut three_members = vec![big.clone(), space.clone(), small[3].clone()];
    three_members.sort();
    assert_eq!(listed[..3], three_members);
    assert_eq!(listed[3], medium);
    send_text(&server, &alice, &big, "t", "still here").await;
    server.stop().await;
}

async fn upgrade(server: &TestServer, user: &User, room: &str, body: Value) -> (u16, Value) {
    server.post_as(user, &format!("/_matrix/client/v3/rooms/{room}/upgrade"), body).await
}

async fn state_of(server: &TestServer, user: &User, room: &str) -> Vec<Value> {
    let (status, body) =
        server.get_as(user, &format!("/_matrix/client/v3/rooms/{room}/state")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().expect("state").clone()
}

fn state_content(state: &[Value], kind: &str, state_key: &str) -> Option<Value> {
    state
        .iter()
        .find(|event| event["type"] == kind && event["state_key"] == state_key)
        .map(|event| event["content"].clone())
}

#[tokio::test]
async fn upgrading_a_room_replaces_it_and_moves_its_aliases() {
    let mut server = TestServer::start().await;
    let (_admin, alice, bob, carol) = users(&server).await;
    let old = create_room(
        &server,
        &alice,
        json!({"room_version": "11", "visibility": "public", "preset": "public_chat",
               "name": "Old", "topic": "Before the upgrade", "room_alias_name": "upgrade-me"}),
    )
    .await;
    join(&server, &bob, &old).await;
    server.put_as(&bob, &alias_path("second"), json!({"room_id": old})).await;
    for (kind, content) in [
        ("m.room.avatar", json!({"url": "mxc://test.local/pic"})),
        (
            "m.room.server_acl",
            json!({"allow": ["*"], "deny": ["bad.example"], "allow_ip_literals": false}),
        ),
        (
            "m.room.canonical_alias",
            json!({"alias": "#upgrade-me:test.local", "alt_aliases": ["#second:test.local"]}),
        ),
        ("m.room.pinned_events", json!({"pinned": []})),
    ] {
        let (status, body) = put_state(&server, &alice, &old, kind, "", content).await;
        assert_eq!(status, 200, "{kind}: {body}");
    }
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{old}/ban"),
            json!({"user_id": carol.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let last = send_text(&server, &alice, &old, "m1", "last words").await;

    // Refusals: versions this server cannot create, users without power, outsiders.
    let (status, body) = upgrade(&server, &alice, &old, json!({"new_version": "9"})).await;
    assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let (status, body) = upgrade(&server, &alice, &old, json!({"new_version": "banana"})).await;
    assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let (status, body) = upgrade(&server, &alice, &old, json!({})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = upgrade(&server, &bob, &old, json!({"new_version": "12"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = upgrade(&server, &carol, &old, json!({"new_version": "12"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        upgrade(&server, &alice, "!unknown:test.local", json!({"new_version": "12"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    let (status, body) = upgrade(
        &server,
        &alice,
        &old,
        json!({"new_version": "12", "additional_creators": [bob.user_id]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().expect("replacement_room").to_owned();
    assert_ne!(new, old);

    // The old room: tombstoned, canonical alias cleared, closed to ordinary members.
    let old_state = state_of(&server, &alice, &old).await;
    let tombstone = state_content(&old_state, "m.room.tombstone", "").expect("tombstone");
    assert_eq!(tombstone["replacement_room"], new.as_str());
    assert!(tombstone["body"].is_string());
    assert_eq!(state_content(&old_state, "m.room.canonical_alias", ""), Some(json!({})));
    let levels = state_content(&old_state, "m.room.power_levels", "").expect("power levels");
    assert_eq!(
        (levels["events_default"].clone(), levels["invite"].clone()),
        (json!(50), json!(50))
    );
    let path = format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/late");
    let (status, body) =
        server.put_as(&bob, &path, json!({"msgtype": "m.text", "body": "hello?"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // The new room: predecessor, creators, copied state, the upgrader joined, bans kept.
    let new_state = state_of(&server, &alice, &new).await;
    let create = state_content(&new_state, "m.room.create", "").expect("create");
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(create["predecessor"]["event_id"], last.as_str());
    assert_eq!(create["additional_creators"], json!([bob.user_id]));
    assert!(create.get("creator").is_none(), "{create}");
    assert_eq!(state_content(&new_state, "m.room.name", ""), Some(json!({"name": "Old"})));
    assert_eq!(
        state_content(&new_state, "m.room.topic", "").map(|topic| topic["topic"].clone()),
        Some(json!("Before the upgrade"))
    );
    assert_eq!(
        state_content(&new_state, "m.room.avatar", ""),
        Some(json!({"url": "mxc://test.local/pic"}))
    );
    assert_eq!(
        state_content(&new_state, "m.room.join_rules", ""),
        Some(json!({"join_rule": "public"}))
    );
    assert_eq!(
        state_content(&new_state, "m.room.server_acl", "").map(|acl| acl["deny"].clone()),
        Some(json!(["bad.example"]))
    );
    assert!(state_content(&new_state, "m.room.history_visibility", "").is_some());
    assert!(state_content(&new_state, "m.room.guest_access", "").is_some());
    assert!(state_content(&new_state, "m.room.pinned_events", "").is_none());
    assert_eq!(
        state_content(&new_state, "m.room.member", &alice.user_id).map(|m| m["membership"].clone()),
        Some(json!("join"))
    );
    assert_eq!(
        state_content(&new_state, "m.room.member", &carol.user_id)
            .map(|m| (m["membership"].clone(), m["reason"].clone())),
        Some((json!("ban"), json!("spam")))
    );
    assert!(state_content(&new_state, "m.room.member", &bob.user_id).is_none());
    let levels = state_content(&new_state, "m.room.power_levels", "").expect("power levels");
    assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");
    assert!(levels["users"].get(&bob.user_id).is_none(), "{levels}");
    assert_eq!(
        state_content(&new_state, "m.room.canonical_alias", ""),
        Some(json!({"alias": "#upgrade-me:test.local", "alt_aliases": ["#second:test.local"]}))
    );

    // Aliases and the directory listing moved.
    for name in ["upgrade-me", "second"] {
        let (_, body) = server.request(Method::GET, &alias_path(name), None, None).await;
        assert_eq!(body["room_id"], new.as_str(), "{name}");
    }
    let (_, body) = server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{new}/aliases")).await;
    assert_eq!(body, json!({"aliases": ["#second:test.local", "#upgrade-me:test.local"]}));
    let (_, body) = server.get_as(&alice, &format!("/_matrix/client/v3/rooms/{old}/aliases")).await;
    assert_eq!(body, json!({"aliases": []}));
    let (_, body) = server.request(Method::GET, "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(room_ids(&body["chunk"]), vec![new.clone()]);
    let (_, body) = server
        .request(Method::GET, &format!("/_matrix/client/v3/directory/list/room/{old}"), None, None)
        .await;
    assert_eq!(body["visibility"], "private");

    // Bob, an additional creator, may follow and has unlimited power there.
    join(&server, &bob, &new).await;
    let (status, body) =
        put_state(&server, &bob, &new, "m.room.name", "", json!({"name": "New"})).await;
    assert_eq!(status, 200, "{body}");

    // Downgrading to a version without privileged creators gives the upgrader level 100.
    let (status, body) = upgrade(&server, &alice, &new, json!({"new_version": "10"})).await;
    assert_eq!(status, 200, "{body}");
    let newest = body["replacement_room"].as_str().expect("replacement_room").to_owned();
    let newest_state = state_of(&server, &alice, &newest).await;
    let create = state_content(&newest_state, "m.room.create", "").expect("create");
    assert_eq!(
        (create["room_version"].clone(), create["creator"].clone()),
        (json!("10"), json!(alice.user_id))
    );
    assert!(create.get("additional_creators").is_none(), "{create}");
    let levels = state_content(&newest_state, "m.room.power_levels", "").expect("power levels");
    assert_eq!(levels["users"][&alice.user_id], 100);
    let (_, body) = server.request(Method::GET, &alias_path("upgrade-me"), None, None).await;
    assert_eq!(body["room_id"], newest.as_str());
    server.stop().await;
}

#[tokio::test]
async fn a_moderator_with_tombstone_power_upgrades_with_their_own_level() {
    let mut server = TestServer::start().await;
    let (_admin, alice, bob, _carol) = users(&server).await;
    let old =
        create_room(&server, &alice, json!({"room_version": "10", "preset": "public_chat"})).await;
    join(&server, &bob, &old).await;
    let (status, body) = put_state(
        &server,
        &alice,
        &old,
        "m.room.server_acl",
        "",
        json!({"allow": ["*"], "deny": [], "allow_ip_literals": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, mut levels) = get_state(&server, &alice, &old, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(60);
    levels["events"]["m.room.tombstone"] = json!(60);
    let (status, body) = put_state(&server, &alice, &old, "m.room.power_levels", "", levels).await;
    assert_eq!(status, 200, "{body}");

    // Bob may tombstone but not set the ACL (100); the copy still carries it over.
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{old}/upgrade"),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().expect("replacement_room").to_owned();
    let state = state_of(&server, &bob, &new).await;
    assert!(state_content(&state, "m.room.server_acl", "").is_some());
    let levels = state_content(&state, "m.room.power_levels", "").expect("power levels");
    assert_eq!(levels["users"][&bob.user_id], 60);
    assert_eq!(levels["users"][&alice.user_id], 100);
    let create = state_content(&state, "m.room.create", "").expect("create");
    assert_eq!(
        (create["room_version"].clone(), create["predecessor"]["room_id"].clone()),
        (json!("11"), json!(old))
    );
    assert!(create.get("creator").is_none(), "{create}");

    // Bob could not change the old room's power levels (100 needed): the tombstone is there.
    let (status, tombstone) = get_state(&server, &alice, &old, "m.room.tombstone", "").await;
    assert_eq!((status, tombstone["replacement_room"].clone()), (200, json!(new)));
    server.stop().await;
}
