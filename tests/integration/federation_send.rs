//! Other servers' room events in their transactions (`/send`, issue 23 S8): each PDU goes to
//! its room's actor and is answered with its verdict; forgeries are refused or kept as the
//! spec says; rooms are processed in parallel and each room's events in order; events not
//! done by the deadline are staged and processed exactly once, across a restart too; and
//! only our own events go back out.

use std::time::{Duration, Instant};

use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Map, Value, json};
use tuwunel::storage::{
    Batch, Direction,
    codec::Json,
    dag::{INBOUND_PDUS_TABLE, InboundPdu},
    rooms::EventStatus,
};

use crate::{
    common::{User, wait_until},
    fake_room::{EventSpec, FakeEvent, FakeRoom, FakeRooms, forge},
    federation_intake::{
        adopt, adopt_version, heads, our_event, received_pdus, set, status_of, timeline,
        wait_received,
    },
    rooms::{create_room, send_text},
    testbed::{Ca, FakeServer, FedServer},
};

/// Sends `events` from `fake` in one transaction; the answer's per-PDU results.
async fn push(
    server: &FedServer,
    fake: &FakeServer,
    txn: &str,
    events: &[&FakeEvent],
) -> Map<String, Value> {
    let pdus = events.iter().map(|event| event.pdu()).collect();
    let (status, answer) =
        fake.send_transaction(server, txn, &fake.transaction(pdus, vec![])).await;
    assert_eq!(status, 200, "{answer}");
    answer["pdus"].as_object().expect("pdus").clone()
}

/// `id`'s error in `results` (`None`: accepted, `{}`).
fn error_of(results: &Map<String, Value>, id: &EventId) -> Option<String> {
    let result = results.get(id.as_str()).unwrap_or_else(|| panic!("{id} answered: {results:?}"));
    match result.get("error") {
        Some(error) => Some(error.as_str().expect("error text").to_owned()),
        None => {
            assert_eq!(result, &json!({}), "{results:?}");
            None
        }
    }
}

fn all_accepted(results: &Map<String, Value>, events: &[&FakeEvent]) {
    for event in events {
        assert_eq!(error_of(results, &event.id), None, "{}: {results:?}", event.id);
    }
}

/// The event ids of `room`'s timeline in `user`'s initial `/sync` (up to 100 events).
async fn synced(server: &FedServer, user: &User, room: &str) -> Vec<String> {
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A100%7D%7D%7D";
    let (status, body) =
        server.server.get_as(user, &format!("/_matrix/client/v3/sync?filter={filter}")).await;
    assert_eq!(status, 200, "{body}");
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Whether `ids` appear in `list` in this order.
fn in_order(list: &[String], ids: &[&OwnedEventId]) -> bool {
    let positions: Vec<Option<usize>> = ids
        .iter()
        .map(|id| list.iter().position(|listed| listed.as_str() == id.as_str()))
        .collect();
    positions.iter().all(Option::is_some) && positions.windows(2).all(|pair| pair[0] < pair[1])
}

fn count(list: &[String], id: &EventId) -> usize {
    list.iter().filter(|listed| listed.as_str() == id.as_str()).count()
}

/// A room of ours (version 11) adopted by `fake`'s kit, with `bob` of `fake` joined through a
/// transaction.
async fn shared_room(
    server: &FedServer,
    alice: &User,
    kit: &std::sync::Arc<FakeRooms>,
    fake: &FakeServer,
    bob: &str,
) -> (String, std::sync::Arc<FakeRoom>) {
    let room_id =
        create_room(&server.server, alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let room = adopt(server, alice, kit, fake, &room_id).await;
    let join = room.send(EventSpec::member(bob, "join"));
    let results = push(server, fake, &format!("join-{room_id}"), &[&join]).await;
    all_accepted(&results, &[&join]);
    (room_id, room)
}

#[tokio::test]
async fn a_transactions_events_reach_sync_in_order_and_forgeries_are_refused() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let victim = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let bob = fake.user_id("bob");
    let room_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let room = adopt(&a, &alice, &kit, &fake, &room_id).await;

    // A join and three messages in one transaction: in /sync, in order.
    let join = room.send(EventSpec::member(&bob, "join"));
    let messages: Vec<FakeEvent> =
        (1..=3).map(|n| room.send(EventSpec::message(&bob, &format!("m{n}")))).collect();
    let mut sent: Vec<&FakeEvent> = vec![&join];
    sent.extend(messages.iter());
    let results = push(&a, &fake, "t1", &sent).await;
    all_accepted(&results, &sent);
    let ids: Vec<&OwnedEventId> = sent.iter().map(|event| &event.id).collect();
    let shown = synced(&a, &alice, &room_id).await;
    assert!(in_order(&shown, &ids), "{shown:?}");
    assert_eq!(heads(&a, &room_id), set(&[&messages[2].id]));

    // A v3+ event carrying an `event_id` field: its id is its reference hash all the same.
    let labelled = room.send(EventSpec::message(&bob, "labelled"));
    let mut json = labelled.pdu();
    json["event_id"] = json!(format!("$not-its-id:{}", fake.name));
    let (status, answer) =
        fake.send_transaction(&a, "t1b", &fake.transaction(vec![json], vec![])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"], json!({labelled.id.as_str(): {}}), "{answer}");
    assert_eq!(status_of(&a, &labelled.id), Some(EventStatus::Timeline));

    // The same event again (a new transaction): answered, stored once.
    let results = push(&a, &fake, "t2", &[&messages[1], &messages[1]]).await;
    all_accepted(&results, &[&messages[1]]);
    assert_eq!(count(&timeline(&a, &alice, &room_id).await, &messages[1].id), 1);

    // A bad signature: refused, nothing stored.
    let genuine = room.build(EventSpec::message(&bob, "genuine"));
    let tampered = forge::changed_field(&genuine, "origin_server_ts", json!(1));
    let tampered = room.wrap(tampered.json);
    // A message of the victim's user that only the fake signed (the sender's server did not).
    let victims = victim.user_id("vic");
    let impersonation = room.build(EventSpec::message(&victims, "from the victim"));
    assert!(impersonation.json["signatures"].as_object().is_some_and(|signatures| {
        signatures.contains_key(fake.name.as_str())
            && !signatures.contains_key(victim.name.as_str())
    }));
    // A message from a user who never joined: fails the auth rules.
    let intruder = room.build(EventSpec::message(&fake.user_id("carol"), "let me in"));
    let results = push(&a, &fake, "t3", &[&tampered, &impersonation, &intruder]).await;
    let refusal = error_of(&results, &tampered.id).expect("a bad signature is refused");
    assert!(refusal.contains("Signature"), "{refusal}");
    assert_eq!(status_of(&a, &tampered.id), None);
    let refusal = error_of(&results, &impersonation.id).expect("an unsigned sender is refused");
    assert!(refusal.contains("Signature"), "{refusal}");
    assert_eq!(status_of(&a, &impersonation.id), None);
    // Rejected: kept as such, never shown anywhere.
    let rejection = error_of(&results, &intruder.id).expect("rejected");
    assert!(rejection.contains("rejected"), "{rejection}");
    assert_eq!(status_of(&a, &intruder.id), Some(EventStatus::Rejected));
    assert!(!synced(&a, &alice, &room_id).await.contains(&intruder.id.to_string()));
    assert!(!timeline(&a, &alice, &room_id).await.contains(&intruder.id.to_string()));
    for path in [
        format!("/_matrix/client/v3/rooms/{room_id}/event/{}", intruder.id),
        format!("/_matrix/client/v3/rooms/{room_id}/context/{}", intruder.id),
    ] {
        let (status, body) = a.server.get_as(&alice, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(heads(&a, &room_id), set(&[&labelled.id]));

    // A bad content hash: kept, shown redacted.
    let original = room.send(EventSpec::message(&bob, "original"));
    let altered = forge::changed_content(&original, json!({"msgtype": "m.text", "body": "evil"}));
    let results = push(&a, &fake, "t4", &[&altered]).await;
    assert_eq!(error_of(&results, &altered.id), None);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{}", altered.id);
    let (status, body) = a.server.get_as(&alice, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], json!({}), "{body}");
    assert!(synced(&a, &alice, &room_id).await.contains(&altered.id.to_string()));

    // An event of a room this server does not know: an error, nothing stored.
    let elsewhere = kit.create_room(&fake, RoomVersionId::V11, "erin");
    let stray = elsewhere.send(EventSpec::message(&fake.user_id("erin"), "stray"));
    let results = push(&a, &fake, "t5", &[&stray]).await;
    assert!(error_of(&results, &stray.id).is_some_and(|error| error.contains("not in the room")));
    assert_eq!(status_of(&a, &stray.id), None);

    // A room this server knows but has no member in any more.
    let left_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let left = adopt(&a, &alice, &kit, &fake, &left_id).await;
    let (status, body) = a
        .server
        .post_as(&alice, &format!("/_matrix/client/v3/rooms/{left_id}/leave"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let leave = heads(&a, &left_id).pop_first().expect("the leave");
    left.add(left.wrap(our_event(&a, &leave)));
    let late_join = left.send(EventSpec::member(&bob, "join"));
    let results = push(&a, &fake, "t6", &[&late_join]).await;
    assert!(error_of(&results, &late_join.id).is_some_and(|error| error.contains("no member")));
    assert_eq!(status_of(&a, &late_join.id), None);
}

/// Version 12 leaves the create event out of `auth_events` (the room id names it): another
/// server's join and message in our room of the default version are accepted all the same.
#[tokio::test]
async fn events_of_a_version_12_room_are_accepted_without_the_create_event_listed() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let bob = fake.user_id("bob");
    let room_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "12"}))
            .await;
    let room = adopt_version(&a, &alice, &kit, &fake, &room_id, RoomVersionId::V12).await;
    let join = room.send(EventSpec::member(&bob, "join"));
    let message = room.send(EventSpec::message(&bob, "hello from a v12 room"));
    let sent = [&join, &message];
    let results = push(&a, &fake, "v12", &sent).await;
    all_accepted(&results, &sent);
    let shown = synced(&a, &alice, &room_id).await;
    assert!(in_order(&shown, &[&join.id, &message.id]), "{shown:?}");
}

#[tokio::test]
async fn soft_fails_acls_and_what_goes_back_out() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let denied = FakeServer::start_as(&ca, "denied").await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let (bob, carol) = (fake.user_id("bob"), fake.user_id("carol"));
    let (room_id, room) = shared_room(&a, &alice, &kit, &fake, &bob).await;
    let carol_join = room.send(EventSpec::member(&carol, "join"));
    let hello = room.send(EventSpec::message(&bob, "hello"));
    all_accepted(&push(&a, &fake, "t1", &[&carol_join, &hello]).await, &[&carol_join, &hello]);
    let fork_point = hello.id.clone();

    // Carol is banned here; her message on an older prev, where she was still joined, is
    // soft-failed: answered, kept, not shown, not a head.
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
    assert_eq!(error_of(&push(&a, &fake, "t2", &[&late]).await, &late.id), None);
    assert_eq!(status_of(&a, &late.id), Some(EventStatus::SoftFailed));
    assert_eq!(heads(&a, &room_id), set(&[&ban_id]));
    assert!(!synced(&a, &alice, &room_id).await.contains(&late.id.to_string()));
    // A later event referencing it is still accepted.
    let after = room.send(EventSpec::message(&bob, "after").prevs(&[&late.id, &ban_id]));
    assert_eq!(error_of(&push(&a, &fake, "t3", &[&after]).await, &after.id), None);
    assert_eq!(heads(&a, &room_id), set(&[&after.id]));

    // Our client's message reaches the fake once; none of the fake's own events comes back.
    let ours = send_text(&a.server, &alice, &room_id, "ours", "to the fake").await;
    let ours = EventId::parse(&ours).expect("id");
    room.add(room.wrap(our_event(&a, ours.as_str())));
    wait_received(&fake, &ours).await;
    let received = received_pdus(&fake);
    assert_eq!(received.iter().filter(|id| **id == ours).count(), 1, "{received:?}");
    for theirs in [&carol_join.id, &hello.id, &late.id, &after.id] {
        assert!(!received.contains(theirs), "{theirs} sent back: {received:?}");
    }
    assert!(received.contains(&ban_id), "our ban went out: {received:?}");

    // A server the room's ACL denies: neither its own events nor events of its users that
    // another server sends are taken.
    let acl = json!({"allow": ["*"], "deny": [denied.name.host()], "allow_ip_literals": true});
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl/");
    let (status, body) = a.server.put_as(&alice, &path, acl).await;
    assert_eq!(status, 200, "{body}");
    let acl_id = heads(&a, &room_id).pop_first().expect("the ACL");
    room.add(room.wrap(our_event(&a, &acl_id)));
    let dora = denied.user_id("dora");
    let from_denied = {
        let key = denied.key.lock().expect("key");
        room.build_signed(EventSpec::member(&dora, "join"), &[(denied.name.as_str(), &*key)])
    };
    for (sender, txn) in [(&denied, "d1"), (&fake, "t4")] {
        let results = push(&a, sender, txn, &[&from_denied]).await;
        let refusal = error_of(&results, &from_denied.id).expect("denied");
        assert!(refusal.contains("server ACL"), "{refusal}");
    }
    assert_eq!(status_of(&a, &from_denied.id), None);
}

#[tokio::test]
async fn fifty_events_over_three_rooms_are_processed_in_parallel_each_room_in_order() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let bob = fake.user_id("bob");
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(shared_room(&a, &alice, &kit, &fake, &bob).await);
    }
    let events: Vec<FakeEvent> =
        (0..50).map(|n| rooms[n % 3].1.send(EventSpec::message(&bob, &format!("m{n}")))).collect();
    let started = Instant::now();
    let results = push(&a, &fake, "fifty", &events.iter().collect::<Vec<_>>()).await;
    let took = started.elapsed();
    all_accepted(&results, &events.iter().collect::<Vec<_>>());
    // Within the deadline (20 s), so every one was processed before the answer.
    assert!(took < Duration::from_secs(20), "{took:?}");
    for (index, (room_id, _)) in rooms.iter().enumerate() {
        let ids: Vec<&OwnedEventId> =
            events.iter().skip(index).step_by(3).map(|event| &event.id).collect();
        let shown = timeline(&a, &alice, room_id).await;
        assert!(in_order(&shown, &ids), "room {index}: {shown:?}");
    }
}

#[tokio::test]
async fn events_past_the_deadline_are_staged_and_processed_exactly_once_across_a_restart() {
    let ca = Ca::new();
    let mut a = FedServer::start(&ca, &["federation_transaction_deadline_ms=1"]).await;
    let fake = FakeServer::start(&ca).await;
    let kit = FakeRooms::new();
    let alice = a.server.register("alice", "pw").await;
    let bob = fake.user_id("bob");
    let room_id =
        create_room(&a.server, &alice, json!({"preset": "public_chat", "room_version": "11"}))
            .await;
    let room = adopt(&a, &alice, &kit, &fake, &room_id).await;
    let join = room.send(EventSpec::member(&bob, "join"));
    let messages: Vec<FakeEvent> =
        (1..=5).map(|n| room.send(EventSpec::message(&bob, &format!("m{n}")))).collect();
    let mut sent: Vec<&FakeEvent> = vec![&join];
    sent.extend(messages.iter());
    // One that fails the auth rules: past the deadline it too is answered as received.
    let intruder = room.build(EventSpec::message(&fake.user_id("carol"), "let me in"));
    let mut pushed = sent.clone();
    pushed.push(&intruder);
    // Nothing can be done in a millisecond: each answered as received.
    let results = push(&a, &fake, "t1", &pushed).await;
    all_accepted(&results, &pushed);
    a.restart().await;
    let ids: Vec<&OwnedEventId> = sent.iter().map(|event| &event.id).collect();
    let alice = a.server.login("alice", "pw").await;
    let arrived = wait_until(Duration::from_secs(30), || async {
        in_order(&timeline(&a, &alice, &room_id).await, &ids)
    })
    .await;
    let shown = timeline(&a, &alice, &room_id).await;
    assert!(arrived, "{shown:?}");
    for id in &ids {
        assert_eq!(count(&shown, id), 1, "{id}: {shown:?}");
    }
    assert!(staged_rows(&a).await, "every staged row is deleted once processed");
    assert_eq!(status_of(&a, &intruder.id), Some(EventStatus::Rejected));
    assert!(!shown.contains(&intruder.id.to_string()));

    // A row a stop left behind (staged, never processed) is processed at the next start.
    let left_behind = room.send(EventSpec::message(&bob, "left behind"));
    let services = a.services();
    let short = tuwunel::rooms::room(&services.storage, &RoomId::parse(&room_id).expect("id"))
        .expect("read")
        .expect("room")
        .short;
    let mut batch = Batch::new();
    let row = InboundPdu {
        origin: fake.name.to_string(),
        pdu: left_behind.pdu().to_string(),
        received_ms: 1,
    };
    INBOUND_PDUS_TABLE.put(&mut batch, &(short, 1), &Json(row));
    services.storage.writer().commit(batch).await.expect("stage");
    drop(services);
    a.restart().await;
    let alice = a.server.login("alice", "pw").await;
    let arrived = wait_until(Duration::from_secs(30), || async {
        timeline(&a, &alice, &room_id).await.iter().any(|shown| shown == left_behind.id.as_str())
    })
    .await;
    assert!(arrived, "the staged event was replayed");
    assert_eq!(count(&timeline(&a, &alice, &room_id).await, &left_behind.id), 1);
    assert!(staged_rows(&a).await);
}

/// Waits (bounded) until `server` has no staged PDU left; whether it got there.
async fn staged_rows(server: &FedServer) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let services = server.services();
        INBOUND_PDUS_TABLE
            .collect(services.storage.engine(), b"", Direction::Forward, 1)
            .expect("read")
            .is_empty()
    })
    .await
}
