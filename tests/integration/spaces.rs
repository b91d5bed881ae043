//! Spaces: the `/hierarchy` walk over `m.space.child` events, its depth, page size, pages,
//! suggested rooms and who may see which room.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::create_room,
};

async fn add_child(server: &TestServer, user: &User, space: &str, child: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
    let (status, body) = server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "adding {child}: {body}");
}

async fn hierarchy(server: &TestServer, user: &User, room: &str, query: &str) -> (u16, Value) {
    server.get_as(user, &format!("/_matrix/client/v1/rooms/{room}/hierarchy?{query}")).await
}

fn names(rooms: &[&String]) -> Vec<String> {
    rooms.iter().map(|room| (*room).clone()).collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
        .collect()
}

/// The space tree of these tests.
struct Tree {
    space: String,
    a: String,
    sub: String,
    b: String,
    private: String,
    readable: String,
    restricted: String,
    knock: String,
}

async fn build_tree(server: &TestServer, alice: &User) -> Tree {
    let space_room = |name: &str| {
        json!({
            "preset": "public_chat",
            "name": name,
            "creation_content": {"type": "m.space"},
        })
    };
    let space = create_room(server, alice, space_room("Root")).await;
    let a =
        create_room(server, alice, json!({"preset": "public_chat", "name": "A", "topic": "first"}))
            .await;
    let sub = create_room(server, alice, space_room("Sub")).await;
    let b = create_room(server, alice, json!({"preset": "public_chat", "name": "B"})).await;
    let private = create_room(server, alice, json!({"name": "Private"})).await;
    let readable = create_room(
        server,
        alice,
        json!({"name": "Readable", "initial_state": [
            {"type": "m.room.history_visibility",
             "content": {"history_visibility": "world_readable"}}
        ]}),
    )
    .await;
    let restricted = create_room(
        server,
        alice,
        json!({"name": "Restricted", "initial_state": [{"type": "m.room.join_rules", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space}],
        }}]}),
    )
    .await;
    let knock = create_room(
        server,
        alice,
        json!({"name": "Knock", "initial_state": [
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}
        ]}),
    )
    .await;
    let no_via = create_room(server, alice, json!({"preset": "public_chat"})).await;

    let via = |order: &str| json!({"via": ["test.local"], "order": order});
    add_child(
        server,
        alice,
        &space,
        &a,
        json!({"via": ["test.local"], "order": "a", "suggested": true}),
    )
    .await;
    add_child(
        server,
        alice,
        &space,
        &sub,
        json!({"via": ["test.local"], "order": "b", "suggested": true}),
    )
    .await;
    add_child(server, alice, &space, &private, via("c")).await;
    add_child(server, alice, &space, &readable, via("d")).await;
    add_child(server, alice, &space, &restricted, via("e")).await;
    add_child(server, alice, &space, &knock, json!({"via": ["test.local"]})).await;
    add_child(server, alice, &space, &no_via, json!({"via": [], "order": "0"})).await;
    add_child(server, alice, &space, "!ghost:test.local", via("00")).await;
    add_child(server, alice, &sub, &b, via("a")).await;
    // A loop back to the root.
    add_child(server, alice, &sub, &space, via("z")).await;
    Tree { space, a, sub, b, private, readable, restricted, knock }
}

#[tokio::test]
async fn hierarchy_walks_depth_first_and_shows_only_what_the_user_may_see() {
    let mut server = TestServer::start().await;
    let _admin = server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let tree = build_tree(&server, &alice).await;

    // Bob is in none of the rooms: the root is public, the private room and the restricted
    // room (whose allowed room he is not in) stay hidden, the unknown room is left out.
    let (status, body) = hierarchy(&server, &bob, &tree.space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        names(&[&tree.space, &tree.a, &tree.sub, &tree.b, &tree.readable, &tree.knock])
    );
    assert!(body.get("next_batch").is_none(), "{body}");
    let root = &body["rooms"][0];
    assert_eq!(root["name"], "Root");
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["num_joined_members"], 1);
    assert_eq!(root["world_readable"], false);
    assert_eq!(root["guest_can_join"], false);
    assert!(root["join_rule"].is_null() || root["join_rule"] == "public", "{root}");
    assert_eq!(root["room_version"], "12");
    let children: Vec<&str> = root["children_state"]
        .as_array()
        .expect("children_state")
        .iter()
        .filter_map(|child| child["state_key"].as_str())
        .collect();
    assert_eq!(
        children,
        [
            "!ghost:test.local",
            tree.a.as_str(),
            tree.sub.as_str(),
            tree.private.as_str(),
            tree.readable.as_str(),
            tree.restricted.as_str(),
            tree.knock.as_str(),
        ],
        "ordered by `order`, then timestamp; children without `via` left out"
    );
    let first_child = &root["children_state"][1];
    assert_eq!(first_child["type"], "m.space.child");
    assert_eq!(first_child["sender"], alice.user_id.as_str());
    assert_eq!(first_child["content"]["order"], "a");
    assert!(first_child["origin_server_ts"].as_u64().is_some(), "{first_child}");
    let a = &body["rooms"][1];
    assert_eq!((a["name"].clone(), a["topic"].clone()), (json!("A"), json!("first")));
    assert_eq!(a["children_state"], json!([]));
    assert!(a.get("room_type").is_none(), "{a}");
    let readable = &body["rooms"][4];
    assert_eq!(
        (readable["world_readable"].clone(), readable["join_rule"].clone()),
        (json!(true), json!("invite"))
    );
    assert_eq!(body["rooms"][5]["join_rule"], "knock");

    // Joining the space opens the restricted room, which names the space.
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{}", tree.space), json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = hierarchy(&server, &bob, &tree.space, "").await;
    assert_eq!(
        ids(&body),
        names(&[
            &tree.space,
            &tree.a,
            &tree.sub,
            &tree.b,
            &tree.readable,
            &tree.restricted,
            &tree.knock
        ])
    );
    let restricted = &body["rooms"][5];
    assert_eq!(restricted["join_rule"], "restricted");
    assert_eq!(restricted["allowed_room_ids"], json!([tree.space]));
    assert_eq!(body["rooms"][0]["num_joined_members"], 2);

    // Alice, a member of everything, sees the private room too.
    let (_, body) = hierarchy(&server, &alice, &tree.space, "").await;
    assert_eq!(ids(&body).len(), 8);
    assert!(ids(&body).contains(&tree.private));

    // A sub-space as the root.
    let (_, body) = hierarchy(&server, &bob, &tree.sub, "").await;
    assert_eq!(
        ids(&body),
        names(&[
            &tree.sub,
            &tree.b,
            &tree.space,
            &tree.a,
            &tree.readable,
            &tree.restricted,
            &tree.knock
        ])
    );
    server.stop().await;
}

#[tokio::test]
async fn hierarchy_depth_limit_pages_and_errors() {
    let mut server = TestServer::start().await;
    let _admin = server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let tree = build_tree(&server, &alice).await;
    let full = [&tree.space, &tree.a, &tree.sub, &tree.b, &tree.readable, &tree.knock];

    let (_, body) = hierarchy(&server, &bob, &tree.space, "max_depth=1").await;
    assert_eq!(ids(&body), names(&[&tree.space, &tree.a, &tree.sub, &tree.readable, &tree.knock]));
    let (_, body) = hierarchy(&server, &bob, &tree.space, "max_depth=0").await;
    assert_eq!(ids(&body), names(&[&tree.space]));
    let (_, body) = hierarchy(&server, &bob, &tree.space, "suggested_only=true").await;
    assert_eq!(ids(&body), names(&[&tree.space, &tree.a, &tree.sub]));
    let suggested: Vec<&str> = body["rooms"][0]["children_state"]
        .as_array()
        .expect("children_state")
        .iter()
        .filter_map(|child| child["state_key"].as_str())
        .collect();
    assert_eq!(suggested, [tree.a.as_str(), tree.sub.as_str()]);

    // Pages of two: the same rooms, once each, in the same order.
    for (query, expected) in [
        ("", full.to_vec()),
        ("max_depth=1", vec![&tree.space, &tree.a, &tree.sub, &tree.readable, &tree.knock]),
    ] {
        let mut seen = Vec::new();
        let mut from: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut page_query = format!("limit=2&{query}");
            if let Some(token) = &from {
                page_query.push_str(&format!("&from={token}"));
            }
            let (status, body) = hierarchy(&server, &bob, &tree.space, &page_query).await;
            assert_eq!(status, 200, "{body}");
            let page = ids(&body);
            assert!(page.len() <= 2 && !page.is_empty(), "{body}");
            seen.extend(page);
            pages += 1;
            match body["next_batch"].as_str() {
                Some(next) => from = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, names(&expected), "query {query}");
        assert_eq!(pages, expected.len().div_ceil(2));
    }

    // Tokens carry the walk's parameters, which may not change.
    let (_, body) = hierarchy(&server, &bob, &tree.space, "limit=2").await;
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, body) =
        hierarchy(&server, &bob, &tree.space, &format!("limit=2&from={next}&max_depth=1")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) =
        hierarchy(&server, &bob, &tree.space, &format!("limit=2&from={next}&suggested_only=true"))
            .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = hierarchy(&server, &bob, &tree.space, "from=nonsense").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = hierarchy(&server, &bob, &tree.space, "limit=0").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = hierarchy(&server, &bob, &tree.space, "max_depth=-1").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Rooms the user may not see, or that do not exist, cannot be the root.
    let (status, body) = hierarchy(&server, &bob, &tree.private, "").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = hierarchy(&server, &bob, "!nowhere:test.local", "").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{}/hierarchy", tree.space),
            None,
            None,
        )
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    // Banned users see nothing of the room, not even a public one.
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{}/ban", tree.space),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = hierarchy(&server, &bob, &tree.space, "").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (_, body) = hierarchy(&server, &bob, &tree.sub, "").await;
    assert!(!ids(&body).contains(&tree.space), "{body}");

    // A removed child (content without via) drops out.
    add_child(&server, &alice, &tree.space, &tree.a, json!({})).await;
    let (_, body) = hierarchy(&server, &alice, &tree.space, "max_depth=1").await;
    assert!(!ids(&body).contains(&tree.a), "{body}");
    server.stop().await;
}
