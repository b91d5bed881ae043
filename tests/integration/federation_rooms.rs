//! Rooms between servers without federated joins: the published room directory of one
//! server listed by clients of another (and the settings that close it), the space
//! hierarchy of a space on one server walked from another, and server ACLs refusing the
//! servers a room denies.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::{User, assert_error},
    federation::send,
    rooms::create_room,
    testbed::{Ca, FakeServer, FedServer},
};

fn room_ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("a list of rooms")
        .iter()
        .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
        .collect()
}

/// Creates a room published in the directory of `server`.
async fn published_room(server: &FedServer, user: &User, name: &str, topic: &str) -> String {
    create_room(
        &server.server,
        user,
        json!({"preset": "public_chat", "visibility": "public", "name": name, "topic": topic}),
    )
    .await
}

#[tokio::test]
async fn the_published_directory_of_another_server_is_listed_when_it_shares_it() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &["allow_public_room_directory_over_federation=true"]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let alice2 = a.server.register("alice2", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let big = published_room(&a, &alice, "Big room", "many people").await;
    let (status, body) =
        a.server.post_as(&alice2, &format!("/_matrix/client/v3/join/{big}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let small = published_room(&a, &alice, "Small room", "cats only").await;
    let _unlisted = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let _bobs_own = published_room(&b, &bob, "Bob's room", "B's").await;

    // GET, through B: A's rooms only, the biggest first.
    let (status, body) =
        b.server.get_as(&bob, &format!("/_matrix/client/v3/publicRooms?server={}", a.name)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["chunk"]), vec![big.clone(), small.clone()]);
    assert_eq!(body["chunk"][0]["name"], "Big room");
    assert_eq!(body["chunk"][0]["num_joined_members"], 2);
    assert_eq!(body["total_room_count_estimate"], 2);
    // Pages.
    let (status, body) = b
        .server
        .get_as(&bob, &format!("/_matrix/client/v3/publicRooms?server={}&limit=1", a.name))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["chunk"]), vec![big.clone()]);
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, body) = b
        .server
        .get_as(
            &bob,
            &format!("/_matrix/client/v3/publicRooms?server={}&limit=1&since={next}", a.name),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["chunk"]), vec![small.clone()]);
    // POST with a filter goes to A's filtered directory.
    let (status, body) = b
        .server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/publicRooms?server={}", a.name),
            json!({"filter": {"generic_search_term": "CATS"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["chunk"]), vec![small]);
    // A bad token is A's to refuse, and its error comes back.
    let (status, body) = b
        .server
        .get_as(&bob, &format!("/_matrix/client/v3/publicRooms?server={}&since=zzz", a.name))
        .await;
    assert_eq!(status, 502, "{body}");
    // Anyone may read B's directory, but only B's users make B ask another server.
    let (status, body) =
        b.server.get(&format!("/_matrix/client/v3/publicRooms?server={}", a.name)).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    // B's own directory is still B's.
    let (status, body) = b.server.get_as(&bob, "/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn directories_are_not_shared_against_the_operators_settings() {
    let ca = Ca::new();
    // A keeps its directory to itself (the default).
    let closed = FedServer::start(&ca, &[]).await;
    // A shares it, but not with servers named like B.
    let choosy = FedServer::start(
        &ca,
        &[
            "allow_public_room_directory_over_federation=true",
            "forbidden_remote_room_directory_server_names=[\"^localhost$\"]",
        ],
    )
    .await;
    // B does not browse the directories of servers named like A.
    let shy =
        FedServer::start(&ca, &["forbidden_remote_room_directory_server_names=[\"^localhost$\"]"])
            .await;
    let open = FedServer::start(&ca, &["allow_public_room_directory_over_federation=true"]).await;
    let b = FedServer::start(&ca, &[]).await;
    let bob = b.server.register("bob", "pw").await;
    let shy_user = shy.server.register("shy", "pw").await;
    for server in [&closed, &choosy] {
        let (status, body) = b
            .server
            .get_as(&bob, &format!("/_matrix/client/v3/publicRooms?server={}", server.name))
            .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    let before = open.front().connections.load(std::sync::atomic::Ordering::SeqCst);
    let (status, body) = shy
        .server
        .post_as(
            &shy_user,
            &format!("/_matrix/client/v3/publicRooms?server={}", open.name),
            json!({}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let after = open.front().connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, after, "the forbidden server is not even asked");
    // The same server lists its own directory as ever.
    let (status, body) = shy
        .server
        .get_as(&shy_user, &format!("/_matrix/client/v3/publicRooms?server={}", shy.name))
        .await;
    assert_eq!(status, 200, "{body}");
    // A server that is not there: a gateway error.
    let (status, body) =
        b.server.get_as(&bob, "/_matrix/client/v3/publicRooms?server=nowhere.invalid").await;
    assert_error(status, &body, 502, "M_UNKNOWN");
}

async fn add_child(server: &FedServer, user: &User, space: &str, child: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
    let (status, body) = server.server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "adding {child}: {body}");
}

async fn set_state(server: &FedServer, user: &User, room: &str, kind: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/{kind}");
    let (status, body) = server.server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "{kind}: {body}");
}

fn space(name: &str, version: &str) -> Value {
    json!({
        "preset": "public_chat",
        "name": name,
        "room_version": version,
        "creation_content": {"type": "m.space"},
    })
}

/// A space on `a` (version 11, so its id names `a`) with a public room, a private room and
/// a sub-space holding another public room.
struct Tree {
    space: String,
    public: String,
    private: String,
    sub: String,
    inner: String,
}

async fn build_tree(a: &FedServer, alice: &User) -> Tree {
    let space_id = create_room(&a.server, alice, space("Root", "11")).await;
    let public =
        create_room(&a.server, alice, json!({"preset": "public_chat", "name": "Public"})).await;
    let private = create_room(&a.server, alice, json!({"name": "Private"})).await;
    let sub = create_room(&a.server, alice, space("Sub", "12")).await;
    let inner =
        create_room(&a.server, alice, json!({"preset": "public_chat", "name": "Inner"})).await;
    let via = json!([a.name]);
    add_child(a, alice, &space_id, &public, json!({"via": via, "order": "a", "suggested": true}))
        .await;
    add_child(a, alice, &space_id, &private, json!({"via": via, "order": "b"})).await;
    add_child(a, alice, &space_id, &sub, json!({"via": via, "order": "c"})).await;
    add_child(a, alice, &sub, &inner, json!({"via": via})).await;
    Tree { space: space_id, public, private, sub, inner }
}

async fn hierarchy(server: &FedServer, user: &User, room: &str, query: &str) -> (u16, Value) {
    server.server.get_as(user, &format!("/_matrix/client/v1/rooms/{room}/hierarchy?{query}")).await
}

fn hierarchy_ids(body: &Value) -> Vec<String> {
    room_ids(&body["rooms"])
}

#[tokio::test]
async fn a_space_on_another_server_is_walked_through_federation() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start(&ca, &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let tree = build_tree(&a, &alice).await;

    let (status, body) = hierarchy(&b, &bob, &tree.space, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        hierarchy_ids(&body),
        vec![tree.space.clone(), tree.public.clone(), tree.sub.clone(), tree.inner.clone()],
        "depth first, the private room left out: {body}"
    );
    let rooms = body["rooms"].as_array().expect("rooms");
    assert_eq!(rooms[0]["name"], "Root");
    assert_eq!(rooms[0]["room_type"], "m.space");
    assert_eq!(rooms[0]["children_state"].as_array().map(Vec::len), Some(3));
    assert_eq!(rooms[1]["name"], "Public");
    assert_eq!(rooms[1]["children_state"], json!([]));
    assert_eq!(rooms[2]["children_state"][0]["state_key"], tree.inner.as_str());
    assert_eq!(rooms[3]["name"], "Inner");
    // Pages: the walk is the same on every page.
    let (status, body) = hierarchy(&b, &bob, &tree.space, "limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![tree.space.clone(), tree.public.clone()]);
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, body) = hierarchy(&b, &bob, &tree.space, &format!("limit=2&from={next}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![tree.sub.clone(), tree.inner.clone()]);
    // Suggested rooms only, and a depth limit.
    let (status, body) = hierarchy(&b, &bob, &tree.space, "suggested_only=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![tree.space.clone(), tree.public.clone()]);
    let (status, body) = hierarchy(&b, &bob, &tree.space, "max_depth=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![tree.space.clone()]);

    // A space on B whose child is on A: the child is described by A.
    let local = create_room(&b.server, &bob, space("Bob's space", "12")).await;
    add_child(&b, &bob, &local, &tree.public, json!({"via": [a.name]})).await;
    add_child(&b, &bob, &local, &tree.private, json!({"via": [a.name]})).await;
    let (status, body) = hierarchy(&b, &bob, &local, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![local.clone(), tree.public.clone()]);
    assert_eq!(body["rooms"][1]["name"], "Public");

    // A private space on A: B's user may not see it.
    let closed = create_room(
        &a.server,
        &alice,
        json!({"name": "Closed", "room_version": "11", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let (status, body) = hierarchy(&b, &bob, &closed, "").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

/// GETs a signed federation path on `server` from `origin`.
async fn signed_get(server: &FedServer, origin: &FakeServer, path: &str) -> (u16, Value) {
    let header = origin.authorization("GET", path, &server.name, None, None);
    send(server, Method::GET, path, Some(header), None).await
}

#[tokio::test]
async fn other_servers_see_what_they_may_of_a_space() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let origin = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let tree = build_tree(&a, &alice).await;

    let (status, body) =
        signed_get(&a, &origin, &format!("/_matrix/federation/v1/hierarchy/{}", tree.space)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"]["room_id"], tree.space.as_str());
    assert_eq!(body["room"]["children_state"].as_array().map(Vec::len), Some(3));
    assert_eq!(room_ids(&body["children"]), vec![tree.public.clone(), tree.sub.clone()]);
    assert_eq!(body["inaccessible_children"], json!([tree.private]));
    let (status, body) = signed_get(
        &a,
        &origin,
        &format!("/_matrix/federation/v1/hierarchy/{}?suggested_only=true", tree.space),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["children"]), vec![tree.public.clone()]);
    assert_eq!(body["room"]["children_state"].as_array().map(Vec::len), Some(1));
    // A room that is not a space: itself, no children.
    let (status, body) =
        signed_get(&a, &origin, &format!("/_matrix/federation/v1/hierarchy/{}", tree.public)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["children"].clone(), body["room"]["children_state"].clone()),
        (json!([]), json!([]))
    );
    // Unknown, private, and not room ids at all.
    for room in ["!unknown:example.org".to_owned(), tree.private.clone()] {
        let (status, body) =
            signed_get(&a, &origin, &format!("/_matrix/federation/v1/hierarchy/{room}")).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    let (status, body) = signed_get(
        &a,
        &origin,
        &format!("/_matrix/federation/v1/hierarchy/{}", "x".repeat(10_000)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Unsigned.
    let path = format!("/_matrix/federation/v1/hierarchy/{}", tree.space);
    let (status, body) = send(&a, Method::GET, &path, None, None).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn server_acls_deny_the_servers_they_name() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let denied = FakeServer::start_as(&ca, "denied").await;
    let allowed = FakeServer::start_as(&ca, "allowed").await;
    let denied_host = denied.name.host().to_owned();
    let alice = a.server.register("alice", "pw").await;
    let tree = build_tree(&a, &alice).await;
    let acl = json!({"allow": ["*"], "deny": [denied_host], "allow_ip_literals": false});
    // The sub-space denies the server; the root does not yet.
    set_state(&a, &alice, &tree.sub, "m.room.server_acl", acl.clone()).await;
    let root = format!("/_matrix/federation/v1/hierarchy/{}", tree.space);
    let (status, body) = signed_get(&a, &denied, &root).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["children"]), vec![tree.public.clone()]);
    let mut inaccessible: Vec<String> = body["inaccessible_children"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|room| room.as_str().map(str::to_owned))
        .collect();
    inaccessible.sort();
    let mut expected = vec![tree.private.clone(), tree.sub.clone()];
    expected.sort();
    assert_eq!(inaccessible, expected, "the denied child is inaccessible: {body}");
    let (status, body) =
        signed_get(&a, &denied, &format!("/_matrix/federation/v1/hierarchy/{}", tree.sub)).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Now the root too; other servers are not affected.
    set_state(&a, &alice, &tree.space, "m.room.server_acl", acl).await;
    let (status, body) = signed_get(&a, &denied, &root).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = signed_get(&a, &allowed, &root).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body["children"]), vec![tree.public.clone(), tree.sub.clone()]);
    // An ACL that allows nobody shuts everyone out, and one that cannot be read does too.
    set_state(&a, &alice, &tree.public, "m.room.server_acl", json!({"deny": "*"})).await;
    let public = format!("/_matrix/federation/v1/hierarchy/{}", tree.public);
    let (status, body) = signed_get(&a, &allowed, &public).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn a_denied_server_cannot_walk_a_space_for_its_users() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let b = FedServer::start_as(&ca, "walker", &[]).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    let tree = build_tree(&a, &alice).await;
    let acl = json!({"allow": ["*"], "deny": [b.host()]});
    set_state(&a, &alice, &tree.space, "m.room.server_acl", acl).await;
    let (status, body) = hierarchy(&b, &bob, &tree.space, "").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn one_walk_asks_other_servers_a_bounded_number_of_times() {
    let ca = Ca::new();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&requests);
    // A server that knows none of the rooms it is asked about.
    let routes = axum::Router::new().route(
        "/_matrix/federation/v1/hierarchy/{room}",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "Unknown room"})),
                )
            }
        }),
    );
    let remote = FakeServer::serving(&ca, routes).await;
    let b = FedServer::start(&ca, &[]).await;
    let bob = b.server.register("bob", "pw").await;
    let local = create_room(&b.server, &bob, space("Many remote children", "12")).await;
    for index in 0..30 {
        let child = format!("!child{index}:{}", remote.name);
        add_child(&b, &bob, &local, &child, json!({"via": [remote.name]})).await;
    }
    let (status, body) = hierarchy(&b, &bob, &local, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hierarchy_ids(&body), vec![local.clone()], "rooms nobody describes are left out");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 20, "at most 20 per walk");
    // The next page walk reuses the failures it learnt instead of asking again.
    let (status, _) = hierarchy(&b, &bob, &local, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        30,
        "only the ten not asked yet"
    );
}
