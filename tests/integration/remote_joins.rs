//! Our users joining rooms that live on other servers (issue 23 S10): `make_join` through a
//! resident (a fake server holding a fake-room kit room), the signed join through
//! `send_join`, the answer checked (signatures, the create event, the room) and stored, and
//! the room in our user's `/sync`; a resident that fails or answers something unusable
//! gives way to the next one, and a join that fails everywhere stores nothing.

use ruma::{RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::{
    common::{User, assert_error},
    fake_room::{EventSpec, FakeRoom, FakeRooms, forge},
    sync::sync,
    testbed::{Ca, FakeServer, FedServer},
};

/// A room of `version` on a fake server, with a name and a topic besides the kit's state.
async fn fake_room(
    ca: &Ca,
    version: RoomVersionId,
) -> (std::sync::Arc<FakeRooms>, FakeServer, std::sync::Arc<FakeRoom>) {
    let kit = FakeRooms::new();
    let fake = FakeServer::serving(ca, kit.routes()).await;
    let room = kit.create_room(&fake, version, "alice");
    let alice = fake.user_id("alice");
    room.send(EventSpec::state(&alice, "m.room.name", "", json!({"name": "Far away"})));
    room.send(EventSpec::message(&alice, "before anyone else came"));
    (kit, fake, room)
}

async fn join(server: &FedServer, user: &User, room: &str, query: &str) -> (u16, Value) {
    server.server.post_as(user, &format!("/_matrix/client/v3/join/{room}{query}"), json!({})).await
}

/// The state events of `room` in `user`'s initial `/sync`, by type, and the timeline's ids.
async fn synced(server: &FedServer, user: &User, room: &str) -> Option<(Vec<Value>, Vec<String>)> {
    let body = sync(&server.server, user, None, "").await;
    let joined = body["rooms"]["join"].get(room)?;
    let state = joined["state"]["events"].as_array().cloned().unwrap_or_default();
    let timeline = joined["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
        .collect();
    Some((state, timeline))
}

fn of_type<'a>(state: &'a [Value], kind: &str) -> Option<&'a Value> {
    state.iter().find(|event| event["type"] == kind)
}

/// [`fake_room`] whose home (the server its id names, which signs its events) knows nothing
/// of it, so that only the servers a test names can let our users in: the resident.
async fn homeless_room(
    ca: &Ca,
    version: RoomVersionId,
) -> (std::sync::Arc<FakeRooms>, FakeServer, FakeServer, std::sync::Arc<FakeRoom>) {
    let kit = FakeRooms::new();
    let home = FakeServer::start(ca).await;
    let resident = FakeServer::serving(ca, kit.routes()).await;
    let room = kit.create_room(&home, version, "alice");
    let alice = home.user_id("alice");
    room.send(EventSpec::state(&alice, "m.room.name", "", json!({"name": "Far away"})));
    (kit, resident, home, room)
}

fn room_known(server: &FedServer, room: &str) -> bool {
    let room = RoomId::parse(room).expect("room id");
    tuwunel::rooms::room(&server.services().storage, &room).expect("read").is_some()
}

#[tokio::test]
async fn our_user_joins_a_room_of_another_server_and_sees_it_in_sync() {
    let ca = Ca::new();
    let (kit, fake, room) = fake_room(&ca, RoomVersionId::V11).await;
    let a = FedServer::start(&ca, &[]).await;
    let bob = a.server.register("bob", "pw").await;
    let room_id = room.room_id.to_string();

    let (status, body) = join(&a, &bob, &room_id, &format!("?via={}", fake.name)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id);

    // The resident got our join (signed by us) and took it into its room.
    let sent = kit.requests_to("send_join");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].origin.as_deref(), Some(a.name.as_str()));
    let join_event = sent[0].body.clone().expect("the join");
    assert_eq!(join_event["sender"], bob.user_id);
    assert_eq!(join_event["content"]["membership"], "join");
    assert!(join_event["signatures"][&a.name].is_object(), "{join_event}");
    let join_id = room.heads().pop().expect("a head");
    assert_eq!(room.event(&join_id).expect("stored").pdu()["sender"], bob.user_id);
    // The make_join offered every version we join.
    let made = &kit.requests_to("make_join")[0].path;
    assert!(
        made.contains("ver=1&") && made.contains("ver=11") && made.contains("ver=12"),
        "{made}"
    );

    // Our user sees the room: its state, and their join in the timeline.
    let (state, timeline) = synced(&a, &bob, &room_id).await.expect("the room is in /sync");
    assert_eq!(of_type(&state, "m.room.name").expect("name")["content"]["name"], "Far away");
    assert!(of_type(&state, "m.room.create").is_some(), "{state:?}");
    assert_eq!(timeline.last(), Some(&join_id.to_string()));
    let (status, members) =
        a.server.get_as(&bob, &format!("/_matrix/client/v3/rooms/{room_id}/joined_members")).await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"].get(fake.user_id("alice")).is_some(), "{members}");
    assert!(members["joined"].get(&bob.user_id).is_some(), "{members}");
    let (status, name) = a
        .server
        .get_as(&bob, &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"))
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("Far away")));

    // Our join went to the resident through send_join only, never as a transaction of ours.
    assert!(
        fake.received().iter().all(|txn| {
            txn.body["pdus"]
                .as_array()
                .is_none_or(|pdus| pdus.iter().all(|pdu| pdu["type"] != "m.room.member"))
        }),
        "{:?}",
        fake.received()
    );
    // Joining again changes nothing and asks nobody.
    let (status, _) = join(&a, &bob, &room_id, &format!("?via={}", fake.name)).await;
    assert_eq!(status, 200);
    assert_eq!(kit.requests_to("make_join").len(), 1);
}

#[tokio::test]
async fn a_join_with_the_legacy_server_name_parameter_and_version_12() {
    let ca = Ca::new();
    let (kit, fake, room) = fake_room(&ca, RoomVersionId::V12).await;
    let a = FedServer::start(&ca, &[]).await;
    let bob = a.server.register("bob", "pw").await;
    let room_id = room.room_id.to_string();

    let (status, body) = join(&a, &bob, &room_id, &format!("?server_name={}", fake.name)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kit.requests_to("send_join").len(), 1);
    let (state, _) = synced(&a, &bob, &room_id).await.expect("the room is in /sync");
    assert_eq!(of_type(&state, "m.room.create").expect("create")["content"]["room_version"], "12");
}

#[tokio::test]
async fn badly_signed_and_unauthorised_state_events_are_left_out_and_the_join_still_happens() {
    let ca = Ca::new();
    let (_kit, fake, room) = fake_room(&ca, RoomVersionId::V11).await;
    let alice = fake.user_id("alice");
    let forged = room.build_signed(
        EventSpec::state(&alice, "m.room.topic", "", json!({"topic": "not really"})),
        &[(fake.name.as_str(), &forge::stranger_key())],
    );
    room.add(forged.clone());
    // Well signed, but by a user who is not in the room: the rules reject it.
    let intruder = room.send(EventSpec::state(
        &fake.user_id("carol"),
        "m.room.avatar",
        "",
        json!({"url": "mxc://elsewhere/avatar"}),
    ));
    let a = FedServer::start(&ca, &[]).await;
    let bob = a.server.register("bob", "pw").await;
    let room_id = room.room_id.to_string();

    let (status, body) = join(&a, &bob, &room_id, &format!("?via={}", fake.name)).await;
    assert_eq!(status, 200, "{body}");
    let (state, _) = synced(&a, &bob, &room_id).await.expect("the room is in /sync");
    assert!(of_type(&state, "m.room.name").is_some(), "{state:?}");
    assert!(of_type(&state, "m.room.topic").is_none(), "{state:?}");
    assert!(of_type(&state, "m.room.avatar").is_none(), "{state:?}");
    let storage = &a.services().storage;
    let stored = tuwunel::rooms::event_short(storage, &forged.id).expect("read");
    assert_eq!(stored, None, "the forged event is not stored");
    let short = tuwunel::rooms::event_short(storage, &intruder.id).expect("read").expect("stored");
    let meta =
        tuwunel::rooms::any_event_meta(storage.engine(), short).expect("read").expect("meta");
    assert_eq!(meta.status, tuwunel::storage::rooms::EventStatus::Rejected);
    let (status, _) = a
        .server
        .get_as(&bob, &format!("/_matrix/client/v3/rooms/{room_id}/event/{}", intruder.id))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_resident_with_a_wrong_version_or_another_rooms_state_gives_way_to_the_next() {
    let ca = Ca::new();
    let (kit, fake, _home, room) = homeless_room(&ca, RoomVersionId::V10).await;
    let events: Vec<_> = room.events().into_iter().map(|event| event.json).collect();
    // A resident whose make_join names version 9 for the version-10 room (the two have the
    // same event format and redaction rules, so only the create event can tell).
    let liar = FakeRooms::new();
    let wrong_version = FakeServer::serving(&ca, liar.routes()).await;
    liar.adopt(&wrong_version, RoomVersionId::V9, room.room_id.clone(), events);
    // A resident that answers with another room's events under this room's id.
    let (_other_kit, _other_fake, other) = fake_room(&ca, RoomVersionId::V10).await;
    let mixer = FakeRooms::new();
    let other_room = FakeServer::serving(&ca, mixer.routes()).await;
    let other_events: Vec<_> = other.events().into_iter().map(|event| event.json).collect();
    mixer.adopt(&other_room, RoomVersionId::V10, room.room_id.clone(), other_events);

    let a = FedServer::start(&ca, &[]).await;
    let bob = a.server.register("bob", "pw").await;
    let room_id = room.room_id.to_string();

    // Either alone: an error, nothing stored.
    for (server, kit) in [(&wrong_version, &liar), (&other_room, &mixer)] {
        let (status, body) = join(&a, &bob, &room_id, &format!("?via={}", server.name)).await;
        assert_error(status, &body, 502, "M_UNKNOWN");
        assert_eq!(kit.requests_to("send_join").len(), 1, "it got as far as send_join");
        assert!(!room_known(&a, &room_id));
    }
    let body = sync(&a.server, &bob, None, "").await;
    assert!(body["rooms"]["join"].get(&room_id).is_none(), "{body}");

    // Listed first, they are tried first; the honest one gets us in.
    let query = format!("?via={}&via={}&via={}", wrong_version.name, other_room.name, fake.name);
    let (status, body) = join(&a, &bob, &room_id, &query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(liar.requests_to("make_join").len(), 2);
    assert_eq!(mixer.requests_to("make_join").len(), 2);
    assert_eq!(kit.requests_to("send_join").len(), 1);
    assert!(synced(&a, &bob, &room_id).await.is_some());
}

#[tokio::test]
async fn a_resident_failing_leaves_the_client_an_error_and_nothing_stored() {
    let ca = Ca::new();
    let (kit, fake, home, room) = homeless_room(&ca, RoomVersionId::V11).await;
    let a = FedServer::start(&ca, &[]).await;
    let bob = a.server.register("bob", "pw").await;
    let room_id = room.room_id.to_string();
    // A server answering 500 to everything.
    let broken = FakeServer::serving(
        &ca,
        axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"errcode": "M_UNKNOWN", "error": "broken on purpose"})),
            )
        }),
    )
    .await;

    let (status, body) = join(&a, &bob, &room_id, &format!("?via={}", broken.name)).await;
    assert_error(status, &body, 502, "M_UNKNOWN");
    assert!(!room_known(&a, &room_id));
    let body = sync(&a.server, &bob, None, "").await;
    assert!(body["rooms"]["join"].get(&room_id).is_none(), "{body}");

    // A resident that does not know the room: 404.
    let unknown = RoomId::parse(format!("!nowhere:{}", home.name)).expect("room id");
    let (status, body) = join(&a, &bob, unknown.as_str(), &format!("?via={}", fake.name)).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    assert_eq!(kit.requests_to("send_join").len(), 0);

    // The first candidate down, the second is used.
    let query = format!("?via={}&via={}", broken.name, fake.name);
    let (status, body) = join(&a, &bob, &room_id, &query).await;
    assert_eq!(status, 200, "{body}");
    assert!(synced(&a, &bob, &room_id).await.is_some());
}
