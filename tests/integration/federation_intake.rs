//! Other servers' events entering our rooms (issue 23 S7): the checks on receipt of a PDU in
//! the spec's order, and what each verdict leaves behind (timeline, soft fail, rejection,
//! or nothing at all), with forks among the forward extremities resolved; and other
//! servers' users joining through `make_join` / `send_join`, relayed to the room's other
//! servers.
//!
//! The fake server's room is ours, adopted by the fake-room kit from our stored events so
//! that its users build on our DAG.

use std::collections::BTreeSet;

use reqwest::Method;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Value, json};
use tuwunel::{
    federation::events::verify_batch,
    rooms::actor::{Arrival, Ingested},
    storage::rooms::EventStatus,
};

use crate::{
    common::{User, assert_error},
    fake_room::{self, EventSpec, FakeEvent, FakeKeys, FakeRoom, FakeRooms},
    federation::send,
    rooms::{create_room, send_text},
    testbed::{Ca, FakeServer, FedServer},
};

/// One of our stored events in federation form.
pub(crate) fn our_event(server: &FedServer, id: &str) -> CanonicalJsonObject {
    let services = server.services();
    let event_id = EventId::parse(id).expect("event id");
    let (_, pdu) =
        tuwunel::rooms::pdu_by_id(&services.storage, &event_id).expect("read").expect("stored");
    let version =
        tuwunel::rooms::room(&services.storage, &pdu.room_id).expect("read").expect("room").version;
    pdu.federation_json(&version).expect("federation form")
}

/// The ids of `room`'s timeline as `user` pages it, oldest first.
pub(crate) async fn timeline(server: &FedServer, user: &User, room: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1000");
    let (status, body) = server.server.get_as(user, &path).await;
    assert_eq!(status, 200, "{body}");
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Our room `room` as a fake-room kit room on `fake`.
pub(crate) async fn adopt(
    server: &FedServer,
    user: &User,
    kit: &std::sync::Arc<FakeRooms>,
    fake: &FakeServer,
    room: &str,
) -> std::sync::Arc<FakeRoom> {
    adopt_version(server, user, kit, fake, room, RoomVersionId::V11).await
}

/// [`adopt`] for a room of `version`.
pub(crate) async fn adopt_version(
    server: &FedServer,
    user: &User,
    kit: &std::sync::Arc<FakeRooms>,
    fake: &FakeServer,
    room: &str,
    version: RoomVersionId,
) -> std::sync::Arc<FakeRoom> {
    let events =
        timeline(server, user, room).await.iter().map(|id| our_event(server, id)).collect();
    kit.adopt(fake, version, RoomId::parse(room).expect("room id"), events)
}

/// Hands `event` to our server as if `fake` had pushed it, verified as the edge would.
async fn ingest(
    server: &FedServer,
    fake: &FakeServer,
    room: &FakeRoom,
    event: &FakeEvent,
) -> Ingested {
    let verified = verify_batch(&FakeKeys::of(fake), &room.version, vec![event.raw()]).await;
    let pdu = verified.into_iter().next().expect("one").expect("the kit's events verify").pdu;
    server.services().rooms.ingest(pdu, fake.name.clone(), Arrival::Pushed).await.expect("ingest")
}

pub(crate) fn status_of(server: &FedServer, id: &EventId) -> Option<EventStatus> {
    let services = server.services();
    let short = tuwunel::rooms::event_short(&services.storage, id).expect("read")?;
    tuwunel::rooms::any_event_meta(services.storage.engine(), short)
        .expect("read")
        .map(|meta| meta.status)
}

/// The room's forward extremities as stored.
pub(crate) fn heads(server: &FedServer, room: &str) -> BTreeSet<String> {
    let services = server.services();
    let record = tuwunel::rooms::room(&services.storage, &RoomId::parse(room).expect("room id"))
        .expect("read")
        .expect("room");
    tuwunel::rooms::heads(services.storage.engine(), record.short)
        .expect("read")
        .expect("heads")
        .extremities
        .iter()
        .map(ToString::to_string)
        .collect()
}

pub(crate) fn set(ids: &[&OwnedEventId]) -> BTreeSet<String> {
    ids.iter().map(ToString::to_string).collect()
}

pub(crate) async fn joined(server: &FedServer, user: &User, room: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    let (status, body) = server.server.get_as(user, &path).await;
    assert_eq!(status, 200, "{body}");
    body["joined"].clone()
}

#[tokio::test]
async fn another_servers_events_are_checked_in_order_and_kept_with_their_verdict() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let room_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let room = adopt(&a, &alice, &kit, &fake, &room_id).await;
    let bob = fake.user_id("bob");

    // A join and a message: into the timeline, seen by our client.
    let join = room.send(EventSpec::member(&bob, "join"));
    assert_eq!(ingest(&a, &fake, &room, &join).await, Ingested::Accepted);
    assert!(joined(&a, &alice, &room_id).await.get(&bob).is_some());
    let hello = room.send(EventSpec::message(&bob, "hello"));
    assert_eq!(ingest(&a, &fake, &room, &hello).await, Ingested::Accepted);
    assert_eq!(timeline(&a, &alice, &room_id).await.last(), Some(&hello.id.to_string()));
    assert_eq!(heads(&a, &room_id), set(&[&hello.id]));
    // The same event again changes nothing.
    assert_eq!(ingest(&a, &fake, &room, &hello).await, Ingested::Known);

    // A message from a user who never joined fails the auth rules: kept as rejected, never
    // shown, not a head.
    let intruder = room.build(EventSpec::message(&fake.user_id("carol"), "let me in"));
    assert!(
        matches!(ingest(&a, &fake, &room, &intruder).await, Ingested::Rejected(_)),
        "a non-member's message"
    );
    assert_eq!(status_of(&a, &intruder.id), Some(EventStatus::Rejected));
    assert!(!timeline(&a, &alice, &room_id).await.contains(&intruder.id.to_string()));
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{}", intruder.id);
    assert_eq!(a.server.get_as(&alice, &path).await.0, 404);
    assert_eq!(heads(&a, &room_id), set(&[&hello.id]));
    // An event naming the rejected one among its auth events is rejected too.
    let mut auth = room.build(EventSpec::message(&bob, "x")).references("auth_events");
    auth.push(intruder.id.clone());
    let tainted =
        room.build(EventSpec::message(&bob, "tainted").auth(&auth.iter().collect::<Vec<_>>()));
    assert!(matches!(ingest(&a, &fake, &room, &tainted).await, Ingested::Rejected(_)));

    // Unknown prev events or auth events: refused, nothing stored.
    let unseen = room.build(EventSpec::member(&fake.user_id("dave"), "join"));
    let orphan = room.build(EventSpec::message(&bob, "orphan").prevs(&[&unseen.id]));
    match ingest(&a, &fake, &room, &orphan).await {
        Ingested::Dropped(reason) => assert!(reason.contains("missing prev_events"), "{reason}"),
        other => panic!("an event on unknown prevs: {other:?}"),
    }
    assert_eq!(status_of(&a, &orphan.id), None);
    let mut auth = room.build(EventSpec::message(&bob, "x")).references("auth_events");
    auth.push(unseen.id.clone());
    let unauthorised =
        room.build(EventSpec::message(&bob, "unknown auth").auth(&auth.iter().collect::<Vec<_>>()));
    match ingest(&a, &fake, &room, &unauthorised).await {
        Ingested::Dropped(reason) => assert!(reason.contains("missing auth_events"), "{reason}"),
        other => panic!("an event on unknown auth events: {other:?}"),
    }
    assert_eq!(status_of(&a, &unauthorised.id), None);

    // An event of a room we do not know is dropped.
    let elsewhere = kit.create_room(&fake, RoomVersionId::V11, "erin");
    let stray = elsewhere.send(EventSpec::message(&fake.user_id("erin"), "stray"));
    assert!(matches!(ingest(&a, &fake, &elsewhere, &stray).await, Ingested::Dropped(_)));
    assert_eq!(status_of(&a, &stray.id), None);
    assert_eq!(timeline(&a, &alice, &room_id).await.last(), Some(&hello.id.to_string()));
}

#[tokio::test]
async fn forks_are_resolved_and_merged_and_late_events_soft_fail() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let room_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let room = adopt(&a, &alice, &kit, &fake, &room_id).await;
    let (bob, carol) = (fake.user_id("bob"), fake.user_id("carol"));
    for user in [&bob, &carol] {
        let join = room.send(EventSpec::member(user, "join"));
        assert_eq!(ingest(&a, &fake, &room, &join).await, Ingested::Accepted);
    }
    let fork_point = room.heads().pop().expect("a head");

    // Our user and the fake's user both build on the fork point: two heads.
    let local = send_text(&a.server, &alice, &room_id, "t1", "local").await;
    room.add(room.wrap(our_event(&a, &local)));
    let side = room.send(EventSpec::message(&bob, "side").prevs(&[&fork_point]));
    assert_eq!(ingest(&a, &fake, &room, &side).await, Ingested::Accepted);
    let local_id = EventId::parse(&local).expect("id");
    assert_eq!(heads(&a, &room_id), set(&[&local_id, &side.id]));
    // Our next event refers to both and is the one head again.
    let merge = send_text(&a.server, &alice, &room_id, "t2", "merge").await;
    let merged = room.wrap(our_event(&a, &merge));
    assert_eq!(merged.references("prev_events").into_iter().collect::<BTreeSet<_>>().len(), 2);
    room.add(merged.clone());
    assert_eq!(heads(&a, &room_id), set(&[&merged.id]));

    // State changed on a fork: the resolved current state holds it.
    let rename = room.send(
        EventSpec::state(
            &bob,
            "m.room.member",
            &bob,
            json!({"membership": "join", "displayname": "Bobby"}),
        )
        .prevs(&[&fork_point]),
    );
    assert_eq!(ingest(&a, &fake, &room, &rename).await, Ingested::Accepted);
    assert_eq!(heads(&a, &room_id), set(&[&merged.id, &rename.id]));
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{bob}");
    let (status, member) = a.server.get_as(&alice, &path).await;
    assert_eq!((status, member["displayname"].as_str()), (200, Some("Bobby")), "{member}");

    // Carol is banned here; her message on the fork point, where she was still joined,
    // passes against its auth events and the state before it, and fails against the
    // current state: soft-failed, not shown, not a head.
    let (status, body) = a
        .server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room_id}/ban"),
            json!({"user_id": carol}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ban = heads(&a, &room_id).pop_first().expect("the ban is the one head");
    room.add(room.wrap(our_event(&a, &ban)));
    let ban_id = EventId::parse(&ban).expect("id");
    let late = room.send(EventSpec::message(&carol, "late").prevs(&[&fork_point]));
    assert_eq!(ingest(&a, &fake, &room, &late).await, Ingested::SoftFailed);
    assert_eq!(status_of(&a, &late.id), Some(EventStatus::SoftFailed));
    assert_eq!(heads(&a, &room_id), set(&[&ban_id]));
    assert!(!timeline(&a, &alice, &room_id).await.contains(&late.id.to_string()));
    // A later event referencing it is still accepted.
    let after = room.send(EventSpec::message(&bob, "after").prevs(&[&late.id, &ban_id]));
    assert_eq!(ingest(&a, &fake, &room, &after).await, Ingested::Accepted);
    assert_eq!(heads(&a, &room_id), set(&[&after.id]));
    let shown = timeline(&a, &alice, &room_id).await;
    assert_eq!(shown.last(), Some(&after.id.to_string()));
    assert!(shown.contains(&side.id.to_string()) && shown.contains(&rename.id.to_string()));
}

/// `make_join` for `user` of `fake` in `room` with `ver`.
async fn make_join(
    server: &FedServer,
    fake: &FakeServer,
    room: &str,
    user: &str,
    ver: &str,
) -> (u16, Value) {
    let path =
        format!("/_matrix/federation/v1/make_join/{}/{}?ver={ver}", encode(room), encode(user));
    let header = fake.authorization("GET", &path, &server.name, None, None);
    send(server, Method::GET, &path, Some(header), None).await
}

/// `send_join` (v2) of `event` as `fake`.
async fn send_join(
    server: &FedServer,
    fake: &FakeServer,
    room: &str,
    event: &CanonicalJsonObject,
    omit_members: bool,
) -> (u16, Value) {
    let rules = RoomVersionId::V11.rules().expect("rules");
    let id = fake_room::event_id(event, &rules);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}?omit_members={omit_members}",
        encode(room),
        encode(id.as_str())
    );
    let body = serde_json::to_value(event).expect("json");
    let header = fake.authorization("PUT", &path, &server.name, Some(&body), None);
    send(server, Method::PUT, &path, Some(header), Some(serde_json::to_vec(&body).expect("json")))
        .await
}

/// A `make_join` template for `user`, with `change` applied, hashed and signed by `signer`.
async fn signed_join(
    server: &FedServer,
    asker: &FakeServer,
    signer: &FakeServer,
    room: &str,
    user: &str,
    change: impl FnOnce(&mut Value),
) -> CanonicalJsonObject {
    let (status, body) = make_join(server, asker, room, user, "11").await;
    assert_eq!(status, 200, "make_join: {body}");
    assert_eq!(body["room_version"], "11");
    let mut template = body["event"].clone();
    change(&mut template);
    let mut object: CanonicalJsonObject = serde_json::from_value(template).expect("object");
    let rules = RoomVersionId::V11.rules().expect("rules");
    let key = signer.key.lock().expect("key");
    ruma::signatures::hash_and_sign_event(
        signer.name.as_str(),
        &*key,
        &mut object,
        &rules.redaction,
    )
    .expect("sign");
    object
}

fn encode(id: &str) -> String {
    id.replace('$', "%24").replace(':', "%3A").replace('!', "%21").replace('@', "%40")
}

/// The ids of the PDUs `fake` received, in order.
pub(crate) fn received_pdus(fake: &FakeServer) -> Vec<OwnedEventId> {
    let rules = RoomVersionId::V11.rules().expect("rules");
    fake.state
        .transactions
        .lock()
        .expect("transactions")
        .iter()
        .flat_map(|received| received.body["pdus"].as_array().cloned().unwrap_or_default())
        .map(|pdu| fake_room::event_id(&serde_json::from_value(pdu).expect("object"), &rules))
        .collect()
}

/// Waits (bounded) until `fake` received `id`.
pub(crate) async fn wait_received(fake: &FakeServer, id: &EventId) {
    for _ in 0..200 {
        if received_pdus(fake).iter().any(|received| received == id) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{id} never reached {}", fake.name);
}

#[tokio::test]
async fn a_fake_servers_user_joins_through_make_join_and_send_join() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let (first, second) = (FakeServer::start(&ca).await, FakeServer::start(&ca).await);
    let alice = a.server.register("alice", "pw").await;
    let room = create_room(
        &a.server,
        &alice,
        json!({"preset": "public_chat", "room_version": "11", "name": "Intake"}),
    )
    .await;

    // The second server's user joins with the full state.
    let bob = second.user_id("bob");
    let join = signed_join(&a, &second, &second, &room, &bob, |_| {}).await;
    let (status, answer) = send_join(&a, &second, &room, &join, false).await;
    assert_eq!(status, 200, "{answer}");
    let kinds: BTreeSet<&str> = answer["state"]
        .as_array()
        .expect("state")
        .iter()
        .filter_map(|pdu| pdu["type"].as_str())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
    ] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
    assert!(answer["members_omitted"].as_bool() != Some(true), "{answer}");
    assert!(!answer["auth_chain"].as_array().expect("chain").is_empty());
    let rules = RoomVersionId::V11.rules().expect("rules");
    let bob_join = fake_room::event_id(&join, &rules);
    // The state is the state before the join.
    assert!(
        answer["state"]
            .as_array()
            .expect("state")
            .iter()
            .all(|pdu| pdu["state_key"] != bob.as_str())
    );
    assert!(joined(&a, &alice, &room).await.get(&bob).is_some());
    let (status, sync) = a.server.get_as(&alice, "/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{sync}");
    let shown: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    assert!(shown.contains(&bob_join.as_str()), "{shown:?}");

    // The first server's user joins asking for a reduced answer: no members (the room has
    // a name, so no heroes), and the servers in the room before the join.
    let carol = first.user_id("carol");
    let join = signed_join(&a, &first, &first, &room, &carol, |_| {}).await;
    let (status, answer) = send_join(&a, &first, &room, &join, true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["members_omitted"], true, "{answer}");
    assert!(
        answer["state"].as_array().expect("state").iter().all(|pdu| pdu["type"] != "m.room.member")
    );
    let servers: BTreeSet<&str> = answer["servers_in_room"]
        .as_array()
        .expect("servers_in_room")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(servers, BTreeSet::from([a.name.as_str(), second.name.as_str()]));
    let carol_join = fake_room::event_id(&join, &rules);
    // Sending it again is answered the same way (a retry).
    assert_eq!(send_join(&a, &first, &room, &join, true).await.0, 200);

    // The join is relayed to the second server, never back to the first.
    wait_received(&second, &carol_join).await;
    let after = send_text(&a.server, &alice, &room, "after", "after the joins").await;
    let after = EventId::parse(&after).expect("id");
    wait_received(&first, &after).await;
    assert!(!received_pdus(&first).contains(&carol_join), "{:?}", received_pdus(&first));
    assert_eq!(received_pdus(&second).iter().filter(|id| **id == carol_join).count(), 1);
}

#[tokio::test]
async fn send_join_takes_only_a_join_of_the_asking_servers_user_who_may_join() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let other = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let room =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let mallory = fake.user_id("mallory");

    // A room version the asking server does not speak.
    let (status, body) = make_join(&a, &fake, &room, &mallory, "1").await;
    assert_error(status, &body, 400, "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(body["room_version"], "11", "{body}");
    // A user of another server.
    let (status, body) = make_join(&a, &fake, &room, &other.user_id("olga"), "11").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // An unknown room.
    let unknown = format!("!unknown:{}", a.name);
    let (status, body) = make_join(&a, &fake, &unknown, &mallory, "11").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Not a join (TestCannotSendNonJoinViaSendJoinV2), or a join of someone else.
    let leave = signed_join(&a, &fake, &fake, &room, &mallory, |event| {
        event["content"]["membership"] = json!("leave")
    })
    .await;
    let (status, body) = send_join(&a, &fake, &room, &leave, false).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let other_key = fake.user_id("someone");
    let mismatched = signed_join(&a, &fake, &fake, &room, &mallory, |event| {
        event["state_key"] = json!(other_key)
    })
    .await;
    let (status, body) = send_join(&a, &fake, &room, &mismatched, false).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    // A join of another server's user, signed by that server, sent by this one.
    let olga = other.user_id("olga");
    let foreign = signed_join(&a, &other, &other, &room, &olga, |_| {}).await;
    let (status, body) = send_join(&a, &fake, &room, &foreign, false).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    for refused in [&leave, &mismatched, &foreign] {
        let id = fake_room::event_id(refused, &RoomVersionId::V11.rules().expect("rules"));
        assert_eq!(status_of(&a, &id), None, "a refused join is not stored");
    }

    // A banned user (TestBannedUserCannotSendJoin): make_join refuses, and a join built
    // before the ban is refused by send_join.
    let early = signed_join(&a, &fake, &fake, &room, &mallory, |_| {}).await;
    let (status, body) = a
        .server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            json!({"user_id": mallory}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = make_join(&a, &fake, &room, &mallory, "11").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = send_join(&a, &fake, &room, &early, false).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(joined(&a, &alice, &room).await.get(&mallory).is_none());

    // A server the room's ACL denies.
    let denied = FakeServer::start_as(&ca, "denied").await;
    let denied_user = denied.user_id("dora");
    let early = signed_join(&a, &denied, &denied, &room, &denied_user, |_| {}).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/");
    let acl = json!({"allow": ["*"], "deny": [denied.name.as_str().split(':').next().expect("host")], "allow_ip_literals": true});
    let (status, body) = a.server.put_as(&alice, &path, acl).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = make_join(&a, &denied, &room, &denied_user, "11").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = send_join(&a, &denied, &room, &early, false).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(joined(&a, &alice, &room).await.get(&denied_user).is_none());
}
