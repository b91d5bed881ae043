//! Transactions other servers send (`PUT /_matrix/federation/v1/send/{txnId}`), from a
//! server the test controls: applied once however often and however concurrently they are
//! repeated; forged, oversized and malformed ones refused with the spec's errors and
//! nothing stored; PDUs that are not valid events refused; unknown EDUs skipped; each EDU type
//! applied only under the spec's conditions (the sender's server has a member in the room,
//! the user belongs to the sending server), and device lists kept in step by their chain of
//! `stream_id`s with a resynchronisation when a link is missing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::{User, assert_error, client, status_and_json},
    rooms::create_room,
    sync::sync,
    testbed::{Ca, FakeServer, FedServer, inject_member},
};

/// An `m.direct_to_device` EDU from `sender` to every device of `user`.
fn to_device(sender: &str, user: &str, message_id: &str, body: &str) -> Value {
    json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": sender,
            "type": "m.test",
            "message_id": message_id,
            "messages": { user: { "*": { "body": body } } },
        },
    })
}

/// The to-device messages `user` receives in a fresh sync (acknowledging nothing).
async fn to_device_bodies(server: &FedServer, user: &User) -> Vec<String> {
    let body = sync(&server.server, user, None, "").await;
    body["to_device"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// How many received transactions `server` remembers from `origin`.
fn remembered(server: &FedServer, origin: &FakeServer) -> usize {
    let services = server.services();
    let prefix = tuwunel::storage::codec::prefix(&origin.name.as_str());
    tuwunel::storage::federation::INBOUND_TRANSACTIONS_TABLE
        .collect(services.storage.engine(), &prefix, tuwunel::storage::Direction::Forward, 1000)
        .expect("read")
        .len()
}

#[tokio::test]
async fn duplicate_transactions_are_answered_the_same_and_applied_once() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let sender = fake.user_id("friend");

    let first = fake.transaction(vec![], vec![to_device(&sender, &bob.user_id, "m1", "one")]);
    let (status, answer) = fake.send_transaction(&b, "t1", &first).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"pdus": {}}));
    // The same transaction again: the same answer, nothing delivered twice.
    let (status, again) = fake.send_transaction(&b, "t1", &first).await;
    assert_eq!((status, &again), (200, &answer));
    // Another transaction carrying the same message (a sender retrying under a new id).
    let (status, _) = fake.send_transaction(&b, "t2", &first).await;
    assert_eq!(status, 200);
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["one"]);

    // Copies of one new transaction at the same time share one application.
    let second = fake.transaction(vec![], vec![to_device(&sender, &bob.user_id, "m2", "two")]);
    let (one, two, three, four) = tokio::join!(
        fake.send_transaction(&b, "t3", &second),
        fake.send_transaction(&b, "t3", &second),
        fake.send_transaction(&b, "t3", &second),
        fake.send_transaction(&b, "t3", &second),
    );
    for (status, answer) in [one, two, three, four] {
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["one", "two"]);
    assert_eq!(remembered(&b, &fake), 3, "t1, t2 and t3");

    // A repeated transaction does not undo what a later one did.
    let room = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    inject_member(&b.server, &room, &sender, "join").await;
    let presence = |state: &str| {
        json!({"edu_type": "m.presence", "content": {"push": [
            {"user_id": sender, "presence": state, "last_active_ago": 1},
        ]}})
    };
    let online = fake.transaction(vec![], vec![presence("online")]);
    let away = fake.transaction(vec![], vec![presence("unavailable")]);
    for (txn, body) in [("t4", &online), ("t5", &away), ("t4", &online)] {
        let (status, answer) = fake.send_transaction(&b, txn, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let synced = sync(&b.server, &bob, None, "").await;
    let state = synced["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|event| event["sender"] == sender.as_str())
        .map(|event| event["content"]["presence"].clone());
    assert_eq!(state, Some(json!("unavailable")), "{synced}");
}

#[tokio::test]
async fn forged_oversized_and_malformed_transactions_are_refused_and_store_nothing() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let sender = fake.user_id("friend");
    let good = fake.transaction(vec![], vec![to_device(&sender, &bob.user_id, "m1", "x")]);
    let uri = "/_matrix/federation/v1/send/bad";
    let put = |authorization: Option<String>, body: Vec<u8>| {
        let mut request = client().request(Method::PUT, b.server.url(uri));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        async move { status_and_json(request.body(body).send().await.expect("send")).await }
    };
    let bytes = serde_json::to_vec(&good).expect("json");

    // Unsigned, and signed over other bytes than those sent.
    let (status, body) = put(None, bytes.clone()).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    let other = fake.authorization("PUT", uri, &b.name, Some(&json!({"edus": []})), None);
    let (status, body) = put(Some(other), bytes.clone()).await;
    assert_error(status, &body, 401, "M_UNAUTHORIZED");
    // Signed by the fake, claiming to come from another server.
    let mut impostor = good.clone();
    impostor["origin"] = json!("other.example");
    let (status, body) = fake.send_transaction(&b, "bad", &impostor).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // More than 50 PDUs, more than 100 EDUs.
    let pdus: Vec<Value> = (0..51).map(|index| json!({"depth": index})).collect();
    let (status, body) = fake.send_transaction(&b, "bad", &fake.transaction(pdus, vec![])).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let edus: Vec<Value> =
        (0..101).map(|index| to_device(&sender, &bob.user_id, &format!("n{index}"), "x")).collect();
    let (status, body) = fake.send_transaction(&b, "bad", &fake.transaction(vec![], edus)).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    // Not JSON, nested past the limit (no signature can cover what is not JSON; the body
    // is refused for what it is), the wrong shape, too large.
    let over_nothing = || Some(fake.authorization("PUT", uri, &b.name, Some(&json!({})), None));
    let (status, body) = put(over_nothing(), b"{not json".to_vec()).await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, body) = put(over_nothing(), nested.into_bytes()).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let mut wrong = good.clone();
    wrong["edus"] = json!("not a list");
    let (status, body) = fake.send_transaction(&b, "bad", &wrong).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("origin");
    let (status, body) = fake.send_transaction(&b, "bad", &missing).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let huge = vec![b' '; 25 * 1024 * 1024];
    let (status, body) = put(over_nothing(), huge).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");

    assert_eq!(remembered(&b, &fake), 0, "no refused transaction was recorded");
    assert!(to_device_bodies(&b, &bob).await.is_empty(), "nothing was delivered");
    // The same id with a good body is then applied: the refusals left nothing behind.
    let (status, body) = fake.send_transaction(&b, "bad", &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["x"]);
}

#[tokio::test]
async fn invalid_pdus_are_refused_and_unknown_edus_are_skipped() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let room = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    let pdu = json!({
        "room_id": room,
        "sender": fake.user_id("friend"),
        "type": "m.room.message",
        "content": {"body": "hello"},
        "origin_server_ts": 1,
        "depth": 5,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "abc"},
        "signatures": {},
    });
    let edus = vec![
        json!({"edu_type": "org.example.unknown", "content": {"anything": 1}}),
        json!({"edu_type": "m.typing", "content": {"typing": "not even the right shape"}}),
        json!("not an EDU"),
        to_device(&fake.user_id("friend"), &bob.user_id, "m1", "kept"),
    ];
    // One unsigned, one over the spec's size limits: each is told why.
    let mut oversized = pdu.clone();
    oversized["type"] = json!("m.".repeat(200));
    let (status, answer) =
        fake.send_transaction(&b, "t1", &fake.transaction(vec![pdu, oversized], edus)).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["pdus"].as_object().expect("pdus");
    assert_eq!(results.len(), 2, "{answer}");
    let error_of = |wanted: &str| {
        results
            .iter()
            .find(|(_, result)| {
                result["error"].as_str().is_some_and(|error| error.contains(wanted))
            })
            .map(|(event_id, _)| event_id.clone())
    };
    assert!(error_of("Invalid event").is_some(), "{answer}");
    assert!(error_of("Signature check failed").is_some(), "{answer}");
    let services = b.services();
    for event_id in results.keys() {
        assert!(event_id.starts_with('$'), "{answer}");
        let event = ruma::EventId::parse(event_id).expect("event id");
        assert!(
            tuwunel::rooms::event_short(&services.storage, &event).expect("read").is_none(),
            "the PDU was not stored"
        );
    }
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["kept"], "the EDU after the bad ones");
}

#[tokio::test]
async fn huge_edus_are_bounded() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let sender = fake.user_id("friend");
    // One EDU for more devices than one EDU may reach: dropped whole, the others applied.
    let mut messages = serde_json::Map::new();
    let mut devices = serde_json::Map::new();
    for index in 0..10_001 {
        devices.insert(format!("DEV{index}"), json!({"body": "flood"}));
    }
    devices.insert(bob.device_id.clone(), json!({"body": "flood"}));
    messages.insert(bob.user_id.clone(), Value::Object(devices));
    let flood = json!({
        "edu_type": "m.direct_to_device",
        "content": {"sender": sender, "type": "m.test", "message_id": "flood", "messages": messages},
    });
    // Presence EDUs of thousands of entries each, for users nobody shares a room with: read
    // up to the bound, kept nowhere.
    let pushes: Vec<Value> = (0..5_000)
        .map(|index| json!({"user_id": fake.user_id(&format!("u{index}")), "presence": "online", "last_active_ago": 1}))
        .collect();
    let mut edus = vec![flood, to_device(&sender, &bob.user_id, "m1", "small")];
    edus.extend((0..20).map(|_| json!({"edu_type": "m.presence", "content": {"push": pushes}})));
    let started = std::time::Instant::now();
    let (status, body) = fake.send_transaction(&b, "t1", &fake.transaction(vec![], edus)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["small"]);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let services = b.services();
    let stored = tuwunel::storage::ephemeral::PRESENCE_TABLE
        .get(services.storage.engine(), &ruma::UserId::parse(fake.user_id("u1")).expect("user id"))
        .expect("read");
    assert!(stored.is_none(), "presence of users sharing no room is not kept");
}

#[tokio::test]
async fn room_edus_apply_only_from_a_server_with_a_member_in_the_room() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let room = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    let lonely = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    let friend = fake.user_id("friend");
    inject_member(&b.server, &room, &friend, "join").await;
    let event = crate::rooms::send_text(&b.server, &bob, &room, "t1", "hello").await;

    let typing = |room: &str, user: &str| json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": true}});
    let receipt = json!({"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {friend.clone(): {
        "event_ids": [event], "data": {"ts": 1}
    }}}}});
    let presence = json!({"edu_type": "m.presence", "content": {"push": [
        {"user_id": friend, "presence": "online", "status_msg": "here", "last_active_ago": 10},
    ]}});
    let edus = vec![
        // Refused: a room the fake has no member in; a user of another server.
        typing(&lonely, &friend),
        typing(&room, "@someone:elsewhere.example"),
        typing(&room, &friend),
        receipt,
        presence,
    ];
    let (status, body) = fake.send_transaction(&b, "t1", &fake.transaction(vec![], edus)).await;
    assert_eq!(status, 200, "{body}");

    let synced = sync(&b.server, &bob, None, "").await;
    assert_eq!(typing_in(&synced, &room), vec![friend.clone()], "{synced}");
    assert!(read_in(&synced, &room).contains(&friend), "{synced}");
    assert!(typing_in(&synced, &lonely).is_empty(), "{synced}");
    let presence = synced["presence"]["events"].as_array().expect("presence");
    let friend_presence =
        presence.iter().find(|event| event["sender"] == friend.as_str()).expect("presence");
    assert_eq!(friend_presence["content"]["presence"], "online");
    assert_eq!(friend_presence["content"]["status_msg"], "here");

    // Stopping typing ends it at once.
    let stop = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": friend, "typing": false}});
    let (status, _) = fake.send_transaction(&b, "t2", &fake.transaction(vec![], vec![stop])).await;
    assert_eq!(status, 200);
    let synced = sync(&b.server, &bob, None, "").await;
    assert!(typing_in(&synced, &room).is_empty(), "{synced}");

    // With allow_incoming_presence and allow_incoming_typing off, both are ignored.
    let closed =
        FedServer::start(&ca, &["allow_incoming_presence=false", "allow_incoming_typing=false"])
            .await;
    let carol = closed.server.register("carol", "pw").await;
    let room = create_room(&closed.server, &carol, json!({"preset": "public_chat"})).await;
    inject_member(&closed.server, &room, &friend, "join").await;
    let edus = vec![
        typing(&room, &friend),
        json!({"edu_type": "m.presence", "content": {"push": [
            {"user_id": friend, "presence": "online", "last_active_ago": 10},
        ]}}),
    ];
    let (status, _) = fake.send_transaction(&closed, "t1", &fake.transaction(vec![], edus)).await;
    assert_eq!(status, 200);
    let synced = sync(&closed.server, &carol, None, "").await;
    let presence = synced["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(presence.iter().all(|event| event["sender"] != friend.as_str()), "{synced}");
    assert!(typing_in(&synced, &room).is_empty(), "{synced}");
}

#[tokio::test]
async fn a_room_whose_acl_denies_the_origin_takes_none_of_its_room_edus_or_pdus() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    // Its own host name: ACLs match host names, which cannot tell `localhost` servers apart.
    let fake = FakeServer::start_as(&ca, "denied").await;
    let bob = b.server.register("bob", "pw").await;
    let room = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    let friend = fake.user_id("friend");
    inject_member(&b.server, &room, &friend, "join").await;
    let event = crate::rooms::send_text(&b.server, &bob, &room, "t1", "hello").await;
    let acl = json!({"allow": ["*"], "deny": [fake.name.host()]});
    let (status, body) = b
        .server
        .put_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"), acl)
        .await;
    assert_eq!(status, 200, "{body}");

    let typing = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": friend, "typing": true}});
    let receipt = json!({"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {friend.clone(): {
        "event_ids": [event], "data": {"ts": 1}
    }}}}});
    let pdu = json!({
        "room_id": room,
        "sender": friend,
        "type": "m.room.message",
        "content": {"body": "hello"},
        "origin_server_ts": 1,
        "depth": 5,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "abc"},
        "signatures": {},
    });
    let (status, answer) =
        fake.send_transaction(&b, "t1", &fake.transaction(vec![pdu], vec![typing, receipt])).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["pdus"].as_object().expect("pdus");
    assert!(
        results.values().all(|result| result["error"]
            .as_str()
            .is_some_and(|error| error.contains("denied by the room's server ACL"))),
        "{answer}"
    );
    let synced = sync(&b.server, &bob, None, "").await;
    assert!(typing_in(&synced, &room).is_empty(), "{synced}");
    assert!(!read_in(&synced, &room).contains(&friend), "{synced}");
}

/// Who a sync shows typing in `room`.
pub fn typing_in(synced: &Value, room: &str) -> Vec<String> {
    ephemeral(synced, room, "m.typing")
        .iter()
        .flat_map(|content| content["user_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|user| user.as_str().map(str::to_owned))
        .collect()
}

/// Who a sync shows with a public read receipt in `room`.
pub fn read_in(synced: &Value, room: &str) -> Vec<String> {
    ephemeral(synced, room, "m.receipt")
        .iter()
        .flat_map(|content| content.as_object().cloned().unwrap_or_default().into_values())
        .flat_map(|receipt| {
            receipt["m.read"].as_object().map(|read| read.keys().cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}

/// The contents of `room`'s ephemeral events of `kind` in a sync.
fn ephemeral(synced: &Value, room: &str, kind: &str) -> Vec<Value> {
    synced["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == kind)
        .map(|event| event["content"].clone())
        .collect()
}

/// The device list the fake serves for `user`, at `stream_id`, with `devices`.
fn device_list(user: &str, stream_id: u64, devices: &[&str]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|device| {
            json!({
                "device_id": device,
                "keys": {
                    "user_id": user,
                    "device_id": device,
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                    "keys": {format!("ed25519:{device}"): "key"},
                    "signatures": {},
                },
            })
        })
        .collect();
    json!({"user_id": user, "stream_id": stream_id, "devices": devices})
}

fn device_update(user: &str, device: &str, stream_id: u64, prev_id: &[u64]) -> Value {
    json!({"edu_type": "m.device_list_update", "content": {
        "user_id": user,
        "device_id": device,
        "stream_id": stream_id,
        "prev_id": prev_id,
        "keys": {
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("ed25519:{device}"): "key"},
            "signatures": {},
        },
    }})
}

fn stored_list(
    server: &FedServer,
    user: &str,
) -> Option<tuwunel::storage::federation::RemoteDeviceList> {
    tuwunel::storage::federation::REMOTE_DEVICE_LISTS_TABLE
        .get(server.services().storage.engine(), &user.to_owned())
        .expect("read")
        .map(|stored| stored.0)
}

#[tokio::test]
async fn device_lists_follow_their_chain_and_resynchronise_on_a_gap() {
    let ca = Ca::new();
    let b = FedServer::start(&ca, &[]).await;
    let fake = FakeServer::start(&ca).await;
    let bob = b.server.register("bob", "pw").await;
    let friend = fake.user_id("friend");
    let stranger = fake.user_id("stranger");
    let room = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    inject_member(&b.server, &room, &friend, "join").await;
    fake.state
        .devices
        .lock()
        .expect("devices")
        .insert(friend.clone(), device_list(&friend, 5, &["OLD"]));
    let since =
        sync(&b.server, &bob, None, "").await["next_batch"].as_str().expect("token").to_owned();
    let device_requests = || fake.state.device_requests.load(std::sync::atomic::Ordering::SeqCst);

    // Someone nobody here shares a room with: ignored, nothing fetched.
    let send = |txn: &'static str, edus: Vec<Value>| {
        let body = fake.transaction(vec![], edus);
        let (fake, b) = (&fake, &b);
        async move {
            let (status, answer) = fake.send_transaction(b, txn, &body).await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    send("t0", vec![device_update(&stranger, "X", 1, &[])]).await;
    assert!(stored_list(&b, &stranger).is_none());
    assert_eq!(device_requests(), 0);

    // The first update for the friend: the whole list is fetched, then the update applied.
    send("t1", vec![device_update(&friend, "NEW", 6, &[5])]).await;
    assert_eq!(device_requests(), 1);
    let list = stored_list(&b, &friend).expect("stored");
    assert_eq!(list.stream_id, 6);
    assert!(list.devices.contains_key("OLD") && list.devices.contains_key("NEW"), "{list:?}");
    let changed = sync(&b.server, &bob, Some(&since), "").await;
    assert!(
        changed["device_lists"]["changed"]
            .as_array()
            .is_some_and(|users| users.contains(&json!(friend))),
        "{changed}"
    );

    // The next link of the chain: applied without a fetch; a repeat: ignored.
    let deleted = json!({"edu_type": "m.device_list_update", "content": {
        "user_id": friend, "device_id": "OLD", "stream_id": 7, "prev_id": [6], "deleted": true,
    }});
    send("t2", vec![deleted.clone()]).await;
    send("t3", vec![deleted]).await;
    assert_eq!(device_requests(), 1);
    let list = stored_list(&b, &friend).expect("stored");
    assert_eq!(list.stream_id, 7);
    assert!(!list.devices.contains_key("OLD"), "{list:?}");

    // A gap (8 never arrived): fetched again, and carried on from the snapshot.
    fake.state
        .devices
        .lock()
        .expect("devices")
        .insert(friend.clone(), device_list(&friend, 9, &["NEW", "THIRD"]));
    send("t4", vec![device_update(&friend, "THIRD", 9, &[8])]).await;
    assert_eq!(device_requests(), 2);
    let list = stored_list(&b, &friend).expect("stored");
    assert_eq!(list.stream_id, 9);
    assert_eq!(list.devices.keys().cloned().collect::<Vec<_>>(), vec!["NEW", "THIRD"]);

    // Cross-signing keys: the master key is kept; a key claiming another user is not.
    let master = json!({"user_id": friend, "usage": ["master"], "keys": {"ed25519:M": "M"}});
    let forged =
        json!({"user_id": bob.user_id, "usage": ["self_signing"], "keys": {"ed25519:S": "S"}});
    send(
        "t5",
        vec![json!({"edu_type": "m.signing_key_update", "content": {
            "user_id": friend, "master_key": master, "self_signing_key": forged,
        }})],
    )
    .await;
    let list = stored_list(&b, &friend).expect("stored");
    assert_eq!(list.master_key, Some(master));
    assert_eq!(list.self_signing_key, None);

    // When the fetch fails, the update is kept and the list marked stale; the next update
    // fetches again.
    fake.state.devices.lock().expect("devices").clear();
    send("t6", vec![device_update(&friend, "FOURTH", 12, &[11])]).await;
    let list = stored_list(&b, &friend).expect("stored");
    assert!(list.stale && list.devices.contains_key("FOURTH"), "{list:?}");
    fake.state
        .devices
        .lock()
        .expect("devices")
        .insert(friend.clone(), device_list(&friend, 13, &["FIFTH"]));
    send("t7", vec![device_update(&friend, "FIFTH", 13, &[12])]).await;
    let list = stored_list(&b, &friend).expect("stored");
    assert!(!list.stale, "{list:?}");
    assert_eq!(list.devices.keys().cloned().collect::<Vec<_>>(), vec!["FIFTH"]);
}
